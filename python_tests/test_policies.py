"""RadarPolicy / LtdPolicy: greedy decoding stays token-identical to the target's greedy generate, the
fused policy_step path equals a plain torch LSTM/MLP forward, save/load round trips, config errors."""
import json
import shutil

import pytest
import torch
from torch import nn

from radar_ext import EagleDrafter, RadarDecoder
from radar_ext.policies import BudgetStep, CostInfo, DraftStep, LtdPolicy, PolicyCosts, RadarPolicy, load_policy
from radar_ext.policies import StaticPolicy
from radar_ext.policies.learned import SCORE_FLOOR, temperature_feature
from test_decoder import prompts, reference, tiny_llama

COSTS = {"t_draft": 0.002, "t_policy": 1e-4, "t_ar": 0.01, "t_verify": {"V": [1, 16, 64], "seconds": [0.01, 0.012, 0.02]}}
BUDGETS = (2, 4, 7, 12)


@pytest.fixture(scope="module")
def model():
    return tiny_llama()


def make(kind, seed=0, W=3, N=4):
    if kind == "radar":
        return RadarPolicy(tree_topk=W, max_draft_calls=N, seed=seed)
    return LtdPolicy(tree_topk=W, max_draft_calls=N, budgets=BUDGETS, costs=COSTS, pool_topk=8, seed=seed)


def _bias(policy, continue_margin):
    """Shift the stop/continue output bias so a random policy mostly continues (or stops)."""
    net = policy.net if isinstance(policy, RadarPolicy) else policy.depth_net
    with torch.no_grad():
        net.fc2.bias[1] += continue_margin
    policy.refresh()


@pytest.mark.parametrize("kind", ["radar", "ltd"])
@pytest.mark.parametrize("margin", [0.0, 3.0])
def test_greedy_exact(model, kind, margin):
    policy = make(kind, seed=3)
    _bias(policy, margin)
    dec = RadarDecoder(model, EagleDrafter.init_random(model, seed=1), policy, tree_topk=3, verify_budget=7)
    calls = []
    for ids, n in zip(prompts(), (1, 9, 30)):
        out = dec.generate(ids, max_new_tokens=n)
        assert torch.equal(out, reference(model, ids, n)), (kind, n)
        calls.append(dec.last_stats.mean_draft_calls)
    if margin:
        assert max(calls) > 1.5  # the policy really made deeper trees


def test_sample_option_is_reproducible(model):
    outs = []
    for _ in range(2):
        policy = RadarPolicy(tree_topk=3, max_draft_calls=4, sample=True, seed=5)
        dec = RadarDecoder(model, EagleDrafter.init_random(model, seed=1), policy, tree_topk=3, verify_budget=7)
        ids = prompts()[2]
        assert torch.equal(dec.generate(ids, max_new_tokens=20), reference(model, ids, 20))
        outs.append(dec.last_stats.draft_calls)
    assert outs[0] == outs[1]


def steps(W, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for t in range(n):
        beams = torch.sort(-torch.rand(1, W, generator=g) * 8, descending=True).values
        beams[0, -1] = -float("inf") if t == 1 else beams[0, -1]          # a dead beam is clamped
        rows = 1 if t == 0 else W
        out.append(DraftStep(t + 1, beams, -torch.rand(1, rows, W, generator=g) * 10, 50 + t, CostInfo(),
                             temperature=(0.0, 1.0, 0.7, 3.0)[t % 4]))
    return out


def test_radar_fused_path_equals_torch_lstm():
    policy = make("radar", seed=1, W=10, N=8)
    net = policy.net
    lstm = nn.LSTM(11, 128, batch_first=True)
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(lstm, name + "_l0").copy_(getattr(net.lstm, name))
    seq = steps(10, 7)
    # features: the clamped beam scores, then the temperature clamped to [0, 2]
    x = torch.stack([torch.cat([s.beam_scores[0].clamp(min=SCORE_FLOOR), torch.tensor([min(s.temperature, 2.0)])])
                     for s in seq]).unsqueeze(0)                                          # [1, T, 11]
    assert x[0, 3, -1] == 2.0 and x[0, 1, -1] == 1.0
    h, _ = lstm(x)
    want = torch.softmax(net.fc2(torch.relu(net.fc1(torch.cat([h[0], x[0]], 1)))), 1)    # [T, 2]
    policy.reset()
    got = torch.cat([policy.head(x[0, i:i + 1]) for i in range(len(seq))])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    # and the decisions of should_continue are its argmax
    policy.reset()
    assert [policy.should_continue(s) for s in seq] == (want[:, 1] > want[:, 0]).tolist()
    assert sum(p.numel() for p in net.parameters()) == 90_370  # METHOD.md 5: about 90k


def test_ltd_fused_path_equals_torch_mlp():
    policy = make("ltd", seed=2)
    cost = torch.tensor(PolicyCosts.load(COSTS).features(BUDGETS))
    for s in steps(3, 4, seed=4):
        cs = torch.sort(s.child_scores.reshape(-1), descending=True).values.clamp(min=SCORE_FLOOR)
        cs = torch.cat([cs, torch.full((9 - cs.shape[0],), SCORE_FLOOR)])
        x = torch.cat([cs / 10, torch.tensor([torch.log1p(torch.tensor(float(s.seq_len))) / 8, s.draft_calls / 4,
                                              min(s.temperature, 2.0)]), cost])
        mlp = nn.Sequential(policy.depth_net.fc1, nn.ReLU(), policy.depth_net.fc2)
        want = torch.softmax(mlp(x.view(1, -1)), 1)
        assert policy.should_continue(s) == bool(want[0, 1] > want[0, 0])
        torch.testing.assert_close(policy.depth_head.__call__(x.view(1, -1)), want, rtol=1e-5, atol=1e-6)
    pool = -torch.rand(1, 13) * 6
    for temp in (0.0, 1.0):
        x = torch.cat([torch.sort(pool[0], descending=True).values[:8] / 10,
                       torch.tensor([torch.log1p(torch.tensor(77.0)) / 8, 3 / 4, temp]), cost])
        want = torch.softmax(nn.Sequential(policy.size_net.fc1, nn.ReLU(), policy.size_net.fc2)(x.view(1, -1)), 1)
        got = policy.verify_budget(BudgetStep(pool, 3, 77, 60, CostInfo(), temperature=temp))
        assert got == BUDGETS[int(want.argmax())]


def test_ltd_inference_features_equal_the_training_layout():
    """The reused feature rows of LtdPolicy hold bit for bit what train_policy feeds the nets
    (depth_features / size_features), decision after decision (the rows are overwritten each time)."""
    from radar_ext.policies.learned import seq_len_feature, sorted_padded
    from radar_ext.policies.ltd import depth_features, size_features
    policy = make("ltd", seed=5)
    cost = policy.cost_tensor()
    for s in steps(3, 4, seed=6):
        temp = temperature_feature(torch.tensor([s.temperature]))
        got = policy._features(s.child_scores.reshape(1, -1), 9, s.seq_len, s.draft_calls, s.temperature).clone()
        want = depth_features(sorted_padded(s.child_scores.reshape(1, -1), 9), torch.tensor([seq_len_feature(s.seq_len)]),
                              torch.tensor([s.draft_calls / 4]), temp, cost)
        assert torch.equal(got, want)
        pool = -torch.rand(1, 5 + s.draft_calls * 3) * 8
        got = policy._features(pool, 8, s.seq_len, s.draft_calls, s.temperature).clone()
        want = size_features(sorted_padded(pool, 8), torch.tensor([seq_len_feature(s.seq_len)]),
                             torch.tensor([s.draft_calls / 4]), temp, cost)
        assert torch.equal(got, want)


def test_radar_inference_features_equal_the_training_layout():
    """RadarPolicy's host-built feature row is radar_features' row bit for bit (the training input)."""
    from radar_ext.policies.radar import radar_features
    policy = make("radar", seed=5, W=3)
    seen = []
    policy.head = lambda x: seen.append(x.clone()) or torch.tensor([[0.4, 0.6]])
    for s in steps(3, 4, seed=6):
        assert policy.should_continue(s)
        assert torch.equal(seen[-1], radar_features(s.beam_scores, torch.tensor([s.temperature])))
        assert torch.equal(seen[-1], radar_features(s.beam_scores, s.temperature))


class _Recording(StaticPolicy):
    def __init__(self):
        super().__init__(3)
        self.temps = []

    def should_continue(self, step):
        self.temps.append(step.temperature)
        return super().should_continue(step)

    def verify_budget(self, step):
        self.temps.append(step.temperature)
        return super().verify_budget(step)


@pytest.mark.parametrize("kwargs, want", [({}, 0.0), (dict(do_sample=True, temperature=0.7), 0.7),
                                           (dict(do_sample=False, temperature=0.7), 0.0)])
def test_decoder_tells_the_policy_the_temperature(model, kwargs, want):
    policy = _Recording()
    dec = RadarDecoder(model, EagleDrafter.init_random(model, seed=1), policy, tree_topk=3, verify_budget=5)
    dec.generate(prompts()[0], max_new_tokens=6, generator=torch.Generator().manual_seed(0), **kwargs)
    assert policy.temps and set(policy.temps) == {want}


@pytest.mark.parametrize("kind", ["radar", "ltd"])
def test_save_load_round_trip(kind, tmp_path):
    policy = make(kind, seed=7)
    policy.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    loaded = load_policy(tmp_path)
    assert type(loaded) is type(policy)
    for name, net in policy.nets().items():
        for k, v in net.state_dict().items():
            assert torch.equal(loaded.nets()[name].state_dict()[k], v), (name, k)
    policy.reset(), loaded.reset()
    for s in steps(3, 4, seed=9):
        assert policy.should_continue(s) == loaded.should_continue(s)
    if kind == "ltd":
        assert loaded.costs == policy.costs and loaded.budgets == list(BUDGETS)


def test_config_errors(tmp_path):
    make("radar").save_pretrained(tmp_path / "r")
    make("ltd").save_pretrained(tmp_path / "l")
    with pytest.raises(ValueError, match="holds a 'radar' policy, not 'ltd'"):
        LtdPolicy.from_pretrained(tmp_path / "r")
    with pytest.raises(FileNotFoundError, match="is not a saved policy"):
        load_policy(tmp_path / "missing")
    # a config that does not match its weights
    shutil.copytree(tmp_path / "r", tmp_path / "r2")
    cfg = json.loads((tmp_path / "r2" / "config.json").read_text())
    cfg["lstm_hidden"] = 64
    (tmp_path / "r2" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"net.lstm.weight_ih has shape \[512, 4\], the config"):
        load_policy(tmp_path / "r2")
    cfg = json.loads((tmp_path / "l" / "config.json").read_text())
    cfg["depth_features"] = cfg["depth_features"][:-1]
    (tmp_path / "l" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="depth_features = .* does not match the features"):
        load_policy(tmp_path / "l")
    # tree_topk mismatch at decision time
    policy = make("radar", W=3)
    policy.reset()
    with pytest.raises(ValueError, match="built for tree_topk = 3, the drafter gives 10"):
        policy.should_continue(steps(10, 1)[0])
    with pytest.raises(ValueError, match="costs are required"):
        LtdPolicy(tree_topk=3, costs=None)
    with pytest.raises(ValueError, match="tree_topk must be an int >= 1, got 0"):
        RadarPolicy(tree_topk=0)


def test_costs_formats_and_errors(tmp_path):
    a = PolicyCosts.load(COSTS)
    b = PolicyCosts.load({"t_draft": 0.002, "t_policy": 1e-4, "t_ar": 0.01, "T_verify": {"64": 0.02, "1": 0.01, "16": 0.012}})
    c = PolicyCosts.load({"t_draft": 0.002, "t_policy": 1e-4, "t_ar": 0.01, "t_verify": [[16, 0.012], [1, 0.01], [64, 0.02]]})
    (tmp_path / "c.json").write_text(json.dumps({"costs": COSTS}))
    d = PolicyCosts.load(tmp_path / "c.json")
    assert a == b == c == d
    assert a.t_verify(16) == pytest.approx(0.012) and a.t_verify(40) == pytest.approx(0.016)
    with pytest.raises(ValueError, match=r"missing key\(s\) \['t_ar'\]"):
        PolicyCosts.load({"t_draft": 1, "t_policy": 1, "t_verify": {1: 1}})
    with pytest.raises(ValueError, match="t_ar must be > 0"):
        PolicyCosts.load({**COSTS, "t_ar": 0})
    with pytest.raises(FileNotFoundError, match="radar calibrate"):
        PolicyCosts.load(tmp_path / "nope.json")


def _clamp_excess(cm, W, P=None):
    """What PolicyCosts adds to every cycle when timing noise made a later draft call so much slower
    than call 1 that T_verify would go below half the cheapest V's cost (where call 1's negative
    extra cost is floored), else 0."""
    first = cm.t_draft(1, W, P)
    extra = first - (cm.t_draft(2, W, P) - first)
    floor = -0.5 * min(cm.t_verify(v, P) + cm.t_tree(v, P) + cm.t_overhead(v, P) for v in cm.v_set)
    return max(0.0, floor - extra)


def test_costs_from_calibration_cost_model(model, tmp_path):
    """A `radar calibrate` CostModel (object or its JSON) -> PolicyCosts whose cycle time
    n * t_draft + T_verify(V) + n * t_policy is CostModel.t_cycle (plus the clamp's excess when noise
    timed a later draft call slower than call 1)."""
    from radar_ext.calibration import calibrate

    cm = calibrate(model, EagleDrafter.init_random(model, seed=1), RadarPolicy(tree_topk=3, max_draft_calls=3),
                   name="tiny", v_set=[1, 4, 8], prefix_lens=[8], tree_topks=[3], max_draft_calls=3, pending=2,
                   warmup=1, repeats=2, ar_tokens=2, ar_repeats=1)
    path = cm.save(tmp_path / "cal.json")
    for src in (cm, path, str(path)):
        pc = PolicyCosts.load(src, tree_topk=3)
        assert pc.verify_budgets == [1, 4, 8] and pc.t_ar == pytest.approx(cm.t_ar())
        for n in (1, 3):
            for V in (1, 4, 8):
                assert n * pc.t_draft + pc.t_verify(V) + n * pc.t_policy == pytest.approx(
                    cm.t_cycle(n, V, 3) + _clamp_excess(cm, 3))


def test_costs_from_calibration_with_a_slow_later_draft_call(model):
    """A later draft call timed slower than call 1 (call 1 runs on one row, later calls on W beams) is
    exact; timed so much slower that T_verify(V) would go negative (tiny model, CPU noise; the
    calibration was then refused), call 1's extra cost is floored at minus half the cheapest V's
    cost: T_verify stays positive and each cycle is overestimated by exactly the rest."""
    from radar_ext.calibration import CostModel, calibrate

    cm = calibrate(model, EagleDrafter.init_random(model, seed=1), None, name="tiny", v_set=[1, 4],
                   prefix_lens=[8], tree_topks=[3], max_draft_calls=2, pending=2, warmup=1, repeats=2,
                   ar_tokens=0)
    base = {V: cm.t_verify(V) + cm.t_tree(V) + cm.t_overhead(V) for V in (1, 4)}
    for first, later in ((1e-4, 1e-4 + 0.25 * base[1]), (1e-4, 0.5)):
        d = cm.to_dict()
        for w in d["draft_first"]:
            for p in d["draft_first"][w]:
                d["draft_first"][w][p].update(median=first, p10=first, p90=first)
                d["draft_next"][w][p].update(median=later, p10=later, p90=later)
        slow = CostModel.from_dict(d)
        excess = max(0.0, (later - first) - 0.5 * base[1])
        assert _clamp_excess(slow, 3) == pytest.approx(excess)
        assert (excess > 0) == (later == 0.5)
        pc = PolicyCosts.load(slow, tree_topk=3)
        assert pc.t_draft == pytest.approx(later)
        for V in (1, 4):
            assert pc.t_verify(V) >= 0.5 * base[1] - 1e-12
            for n in (1, 2):
                assert n * pc.t_draft + pc.t_verify(V) + n * pc.t_policy == pytest.approx(
                    slow.t_cycle(n, V, 3) + excess)


def test_costs_from_calibration_at_a_prefix_length(model, tmp_path):
    """PolicyCosts read at prefix_len is the CostModel's cycle at that prefix (T_verify grows with the
    context), and a bad prefix_len is refused by name."""
    from radar_ext.calibration import calibrate

    cm = calibrate(model, EagleDrafter.init_random(model, seed=1), None, name="tiny", v_set=[1, 4],
                   prefix_lens=[8, 40], tree_topks=[3], max_draft_calls=2, pending=2, warmup=1, repeats=2,
                   ar_tokens=0)
    path = cm.save(tmp_path / "cal.json")
    for P in (8, 20, 40):
        pc = PolicyCosts.load(path, tree_topk=3, prefix_len=P)
        assert pc.t_ar == pytest.approx(cm.t_ar(P))
        for n in (1, 2):
            for V in (1, 4):
                assert n * pc.t_draft + pc.t_verify(V) + n * pc.t_policy == pytest.approx(
                    cm.t_cycle(n, V, 3, P) + _clamp_excess(cm, 3, P))
    # the default is the mean calibrated prefix (24 here)
    assert PolicyCosts.load(cm, tree_topk=3).t_verify(4) == pytest.approx(
        PolicyCosts.load(cm, tree_topk=3, prefix_len=24).t_verify(4))
    for bad in (0, -5, float("nan"), "long"):
        with pytest.raises(ValueError, match="prefix_len"):
            PolicyCosts.load(cm, tree_topk=3, prefix_len=bad)
