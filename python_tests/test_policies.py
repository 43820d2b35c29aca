"""RadarPolicy / LtdPolicy: greedy decoding stays token-identical to the target's greedy generate, the
fused policy_step path equals a plain torch LSTM/MLP forward, save/load round trips, config errors."""
import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from radar_ext import EagleDrafter, RadarDecoder
from radar_ext.policies import BudgetStep, CostInfo, DraftStep, LtdPolicy, PolicyCosts, RadarPolicy, load_policy
from radar_ext.policies import StaticPolicy
from radar_ext.policies.base import CycleOutcome
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
    assert a.t_verify(128) == pytest.approx(0.02 + 0.008 * 64 / 48) and a.t_verify(0) == pytest.approx(0.01 - 0.002 / 15)
    # a noisy curve whose last segment falls: beyond it no cheaper than its last point (not ~0 at large V)
    noisy = PolicyCosts.load({"t_draft": 0.002, "t_policy": 1e-4, "t_ar": 0.01, "T_verify": {"1": 0.01, "4": 0.014, "8": 0.012}})
    assert noisy.t_verify(6) == pytest.approx(0.013) and noisy.t_verify(64) == pytest.approx(0.012)
    with pytest.raises(ValueError, match=r"missing key\(s\) \['t_ar'\]"):
        PolicyCosts.load({"t_draft": 1, "t_policy": 1, "t_verify": {1: 1}})
    with pytest.raises(ValueError, match="t_ar must be > 0"):
        PolicyCosts.load({**COSTS, "t_ar": 0})
    with pytest.raises(FileNotFoundError, match="radar calibrate"):
        PolicyCosts.load(tmp_path / "nope.json")
    assert a.t_plain is None and a.plain_step() == a.t_ar and "t_plain" not in a.to_dict()
    p = PolicyCosts.load({**COSTS, "t_plain": 0.004})
    assert p.plain_step() == 0.004 and PolicyCosts.load(p.to_dict()) == p
    with pytest.raises(ValueError, match="t_plain must be None or a finite number > 0"):
        PolicyCosts.load({**COSTS, "t_plain": 0})


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
        # a skipped cycle's plain step: the calibration's measured root-only cycle (not HF's generate step) and
        # the decode loop's own time around it (our plain decoding per token minus that cycle, >= 0)
        assert pc.plain_step() == pc.t_plain == pytest.approx(cm.t_plain() + cm.t_loop()) and cm.t_plain() > 0
        assert cm.decode_step and cm.t_loop() >= 0.0
        assert PolicyCosts.load(pc.to_dict()) == pc
        for n in (1, 3):
            for V in (1, 4, 8):
                assert n * pc.t_draft + pc.t_verify(V) + n * pc.t_policy == pytest.approx(
                    cm.t_cycle(n, V, 3) + _clamp_excess(cm, 3))
    # a calibration from before the plain-step measurement: the smallest V's cycle without draft calls
    old = dataclasses.replace(cm, plain_step={})
    assert old.t_plain() is None
    assert PolicyCosts.load(old, tree_topk=3).t_plain == pytest.approx(cm.t_verify(1) + cm.t_overhead(1))


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
    cheapest = min(base.values())  # (on a tiny model V = 4 can time below V = 1)
    for first, later in ((1e-4, 1e-4 + 0.25 * cheapest), (1e-4, 0.5)):
        d = cm.to_dict()
        for w in d["draft_first"]:
            for p in d["draft_first"][w]:
                d["draft_first"][w][p].update(median=first, p10=first, p90=first)
                d["draft_next"][w][p].update(median=later, p10=later, p90=later)
        slow = CostModel.from_dict(d)
        excess = max(0.0, (later - first) - 0.5 * cheapest)
        assert _clamp_excess(slow, 3) == pytest.approx(excess)
        assert (excess > 0) == (later == 0.5)
        pc = PolicyCosts.load(slow, tree_topk=3)
        assert pc.t_draft == pytest.approx(later)
        for V in (1, 4):
            assert pc.t_verify(V) >= 0.5 * cheapest - 1e-12
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


# ------------------------------------------------------------------ shipped format-1 policies

FORMAT1 = Path(__file__).parent / "data" / "format1_policies"

# Decisions and fused-head outputs (float.hex) of the shipped policies on fixed steps, recorded with the
# code before the history features and the skip action (format 1) on the current kernels (policy_step's
# libm-free exp/tanh); they must stay bit-identical.
SHIPPED_RADAR = ([True, False, False, False, False, False, False],
    [["0x1.37515c0000000p-18", "0x1.ffff640000000p-1"],
     ["0x1.0000000000000p+0", "0x1.375f120000000p-27"],
     ["0x1.0000000000000p+0", "0x1.52d8280000000p-47"],
     ["0x1.0000000000000p+0", "0x1.a75fe20000000p-57"],
     ["0x1.0000000000000p+0", "0x1.0700b20000000p-60"],
     ["0x1.0000000000000p+0", "0x1.9e014e0000000p-61"],
     ["0x1.0000000000000p+0", "0x1.6329660000000p-61"]])
SHIPPED_LTD = ([False, False, False, True, False, True, False, 1, 3, 3, 3],
    [["0x1.007dfe0000000p-1", "0x1.ff04020000000p-2"],
     ["0x1.bdc8bc0000000p-1", "0x1.08dd0e0000000p-3"],
     ["0x1.d2b5b80000000p-1", "0x1.6a523e0000000p-4"],
     ["0x1.a90b4c0000000p-2", "0x1.2b7a5a0000000p-1"],
     ["0x1.b25d180000000p-1", "0x1.368ba40000000p-3"],
     ["0x1.eedfc60000000p-2", "0x1.08901e0000000p-1"],
     ["0x1.18e3400000000p-1", "0x1.ce39820000000p-2"],
     ["0x1.19377a0000000p-3", "0x1.00a00c0000000p-3", "0x1.f67d2c0000000p-4", "0x1.38f3440000000p-4", "0x1.3e212e0000000p-4", "0x1.4284040000000p-4", "0x1.47a9ee0000000p-4", "0x1.42c5ba0000000p-4", "0x1.3b08620000000p-4", "0x1.3358f40000000p-4", "0x1.236a540000000p-4"],
     ["0x1.e69c000000000p-4", "0x1.06f7f80000000p-3", "0x1.12ea640000000p-3", "0x1.cc7f1a0000000p-4", "0x1.904dba0000000p-4", "0x1.91d26c0000000p-4", "0x1.781bcc0000000p-4", "0x1.51c8d60000000p-4", "0x1.fd82320000000p-5", "0x1.6534300000000p-5", "0x1.ef00d80000000p-6"],
     ["0x1.cc88220000000p-4", "0x1.117fe00000000p-3", "0x1.12bb7c0000000p-3", "0x1.b8993c0000000p-4", "0x1.9c514e0000000p-4", "0x1.95498e0000000p-4", "0x1.837f020000000p-4", "0x1.5d89ee0000000p-4", "0x1.0962b40000000p-4", "0x1.7bbac20000000p-5", "0x1.62101c0000000p-6"],
     ["0x1.9c317e0000000p-4", "0x1.e99c940000000p-4", "0x1.111a4c0000000p-3", "0x1.c89b840000000p-4", "0x1.a5b9800000000p-4", "0x1.acd07e0000000p-4", "0x1.8c25f80000000p-4", "0x1.6ce9360000000p-4", "0x1.14e3640000000p-4", "0x1.957fc60000000p-5", "0x1.9095780000000p-6"]])


def _shipped_steps(W, n, seed, history=None):
    g = torch.Generator().manual_seed(seed)
    out = []
    for t in range(n):
        beams = torch.sort(-torch.rand(1, W, generator=g) * 8, descending=True).values
        rows = 1 if t == 0 else W
        out.append(DraftStep(t + 1, beams, -torch.rand(1, rows, W, generator=g) * 10, 40 + 13 * t, CostInfo(),
                             temperature=(0.0, 1.0, 0.7)[t % 3], history=history))
    return out


def _recording(policy, attr):
    head, seen = getattr(policy, attr), []

    def call(x):
        seen.append(head(x))
        return seen[-1]
    setattr(policy, attr, call)
    return seen


@pytest.mark.parametrize("with_history", [False, True])
def test_shipped_format1_policies_decide_as_before(with_history):
    """The first shipped policies (config format 1, kept in python_tests/data/format1_policies) load and give the same decisions and the same head outputs,
    bit for bit, as before format 2 existed; a History handed to their decisions changes nothing, and
    they never skip."""
    from radar_ext.policies import History, PreDraftStep
    from radar_ext.policies.base import CycleOutcome
    hist = None
    if with_history:
        hist = History()
        for L in (3, 0, 5):
            hist.observe(CycleOutcome(L, 2, 4, best_draft_prob=0.7, best_guess_accepted=L > 0))
    r = RadarPolicy.from_pretrained(FORMAT1 / "radar")
    assert r.config_dict()["format"] == 2 and not r.history and not r.skip
    assert r.should_draft(PreDraftStep(50, CostInfo(), hist or History()))
    r.reset()
    seen = _recording(r, "head")
    dec = [r.should_continue(s) for s in _shipped_steps(4, 7, seed=11, history=hist)]
    assert dec == SHIPPED_RADAR[0]
    assert [[x.hex() for x in p[0].tolist()] for p in seen] == SHIPPED_RADAR[1]
    l = LtdPolicy.from_pretrained(FORMAT1 / "ltd")
    assert not l.history and not l.skip
    assert l.should_draft(PreDraftStep(50, CostInfo(), hist or History()))
    d, sz = _recording(l, "depth_head"), _recording(l, "size_head")
    g = torch.Generator().manual_seed(12)
    dec = [l.should_continue(s) for s in _shipped_steps(4, 7, seed=12, history=hist)]
    dec += [l.verify_budget(BudgetStep(-torch.rand(1, 4 + 16 * k, generator=g) * 12, k + 1, 60 + k, 3, CostInfo(),
                                       temperature=(0.0, 1.0)[k % 2], history=hist)) for k in range(4)]
    assert dec == SHIPPED_LTD[0]
    assert [[x.hex() for x in p[0].tolist()] for p in d + sz] == SHIPPED_LTD[1]


# ------------------------------------------------------------------ format 2: history features, skip action

def _history(*outcomes):
    from radar_ext.policies import History
    from radar_ext.policies.base import CycleOutcome
    h = History()
    for L, p, hit, skipped in outcomes:
        h.observe(CycleOutcome(L, 0 if skipped else 2, 0 if skipped else 4, skipped, p, hit))
    return h


def test_history_features_from_outcomes():
    """EMA (weight 0.2) from the first drafted cycle, the last accepted length, the best guess's
    probability and hit; skipped cycles only count towards skip_run."""
    from radar_ext.policies import History
    assert History().features() == [0.0, 0.0, 0.0, 0.0, 1.0]
    h = _history((4, 0.9, True, False), (0, 0.0, False, True), (2, 0.5, False, False), (0, 0.0, False, True),
                 (0, 0.0, False, True))
    assert h.ema == pytest.approx(0.8 * 4 + 0.2 * 2) and h.last == 2 and h.drafted == 2 and h.skip_run == 2
    assert h.features() == pytest.approx([(0.8 * 4 + 0.2 * 2) / 8, 2 / 8, 0.5, 0.0, 0.0])
    h.start()
    assert h.features() == [0.0, 0.0, 0.0, 0.0, 1.0] and h.skip_run == 0


def make2(kind, history=True, skip=True, seed=0, W=3, N=4, **kw):
    if kind == "radar":
        return RadarPolicy(tree_topk=W, max_draft_calls=N, seed=seed, history=history, skip=skip, **kw)
    return LtdPolicy(tree_topk=W, max_draft_calls=N, budgets=BUDGETS, costs=COSTS, pool_topk=8, seed=seed,
                     history=history, skip=skip, **kw)


def test_history_layouts_inference_equals_training():
    """With history the inference rows (after a draft call, for the budget, and before the first call)
    hold bit for bit what train_policy feeds the nets."""
    from radar_ext.policies import PreDraftStep
    from radar_ext.policies.base import history_features
    from radar_ext.policies.learned import PRE_DRAFT_SCORE, seq_len_feature, sorted_padded
    from radar_ext.policies.ltd import depth_features, size_features
    from radar_ext.policies.radar import radar_features
    from radar_ext.training.train_policy import radar_skip_input
    h = _history((3, 0.61, True, False), (1, 0.27, False, False))
    hf = history_features(torch.tensor([h.ema], dtype=torch.float32), torch.tensor([h.last], dtype=torch.float32),
                          torch.tensor([h.best_prob], dtype=torch.float32),
                          torch.tensor([h.best_accepted], dtype=torch.float32), torch.tensor([h.drafted]))
    ltd = make2("ltd", seed=5)
    cost = ltd.cost_tensor()
    for s in steps(3, 4, seed=6):
        temp = temperature_feature(torch.tensor([s.temperature]))
        sl = torch.tensor([seq_len_feature(s.seq_len)])
        got = ltd._features(s.child_scores.reshape(1, -1), 9, s.seq_len, s.draft_calls, s.temperature, h)
        want = depth_features(sorted_padded(s.child_scores.reshape(1, -1), 9), sl, torch.tensor([s.draft_calls / 4]),
                              temp, cost, hf)
        assert torch.equal(got, want)
        pool = -torch.rand(1, 5 + s.draft_calls * 3) * 8
        got = ltd._features(pool, 8, s.seq_len, s.draft_calls, s.temperature, h)
        want = size_features(sorted_padded(pool, 8), sl, torch.tensor([s.draft_calls / 4]), temp, cost, hf)
        assert torch.equal(got, want)
        seen = []
        ltd.depth_head = lambda x: seen.append(x) or torch.tensor([[0.3, 0.7]])
        assert ltd.should_draft(PreDraftStep(s.seq_len, CostInfo(), h, s.temperature))
        want = depth_features(torch.full((1, 9), PRE_DRAFT_SCORE), sl, torch.zeros(1), temp, cost, hf)
        assert torch.equal(seen[0], want)
        ltd.refresh()
    radar = make2("radar", seed=5)
    seen = []
    radar.head = lambda x: seen.append(x.clone()) or torch.tensor([[0.4, 0.6]])
    radar.head.reset = lambda batch: None
    for s in steps(3, 4, seed=6):
        s.history = h
        extra = torch.cat([torch.tensor([[seq_len_feature(s.seq_len)]]), hf], 1)
        assert radar.should_continue(s)
        assert torch.equal(seen[-1], radar_features(s.beam_scores, torch.tensor([s.temperature]), extra))
        assert radar.should_draft(PreDraftStep(s.seq_len, CostInfo(), h, s.temperature))
        assert torch.equal(seen[-1], radar_skip_input(s.beam_scores.unsqueeze(1), torch.tensor([s.temperature]), extra))


@pytest.mark.parametrize("kind", ["radar", "ltd"])
def test_skip_decision_and_forced_probe(kind):
    """A policy whose head always stops skips before the first call, until max_skip_run plain steps ran
    in a row; without skip=True it never asks its head before drafting."""
    from radar_ext.policies import History, PreDraftStep
    policy = make2(kind, max_skip_run=3)
    _bias(policy, -50.0)
    h = History()
    got = []
    for _ in range(9):
        d = policy.should_draft(PreDraftStep(60, CostInfo(), h))
        got.append(d)
        h.observe(CycleOutcome(0, 1 if d else 0, 2 if d else 0, skipped=not d))
    assert got == [False, False, False, True] * 2 + [False]
    # without the history features a probe tells the policy nothing: it keeps skipping
    policy = make2(kind, history=False, max_skip_run=3)
    _bias(policy, -50.0)
    h = History()
    for _ in range(9):
        assert not policy.should_draft(PreDraftStep(60, CostInfo(), h))
        h.observe(CycleOutcome(0, 0, 0, skipped=True))
    assert h.skip_run == 9
    # its decision reads no history: the same at every step, and refresh() (new weights) clears what was kept
    _bias(policy, 100.0)  # refresh()es
    assert policy.should_draft(PreDraftStep(60, CostInfo(), h)) and policy.should_draft(PreDraftStep(61, CostInfo(), h))
    policy = make2(kind, skip=False)
    _bias(policy, -50.0)
    assert policy.should_draft(PreDraftStep(60, CostInfo(), History()))
    policy = make2(kind)
    _bias(policy, 50.0)
    assert policy.should_draft(PreDraftStep(60, CostInfo(), History()))


@pytest.mark.parametrize("kind", ["radar", "ltd"])
def test_format2_config_round_trip_and_errors(kind, tmp_path):
    from radar_ext.policies import History, PreDraftStep
    policy = make2(kind, seed=4, max_skip_run=5)
    policy.save_pretrained(tmp_path / "p")
    cfg = json.loads((tmp_path / "p" / "config.json").read_text())
    assert cfg["format"] == 2 and cfg["history"] and cfg["skip"] and cfg["max_skip_run"] == 5
    names = cfg["features"] if kind == "radar" else cfg["depth_features"]
    assert [x for x in names if x in ("accept_ema", "accept_last", "prev_best_prob", "prev_best_accepted",
                                      "history_empty")] == ["accept_ema", "accept_last", "prev_best_prob",
                                                            "prev_best_accepted", "history_empty"]
    loaded = load_policy(tmp_path / "p")
    assert (loaded.history, loaded.skip, loaded.max_skip_run) == (True, True, 5)
    h = _history((2, 0.4, True, False))
    for s in steps(3, 3, seed=2):
        s.history = h
        pre = PreDraftStep(s.seq_len, CostInfo(), h, s.temperature)
        assert policy.should_draft(pre) == loaded.should_draft(pre)
        policy.reset(), loaded.reset()
        assert policy.should_continue(s) == loaded.should_continue(s)
    # a format-2 config stating no history but holding the history layout is refused (and the reverse)
    key = "features" if kind == "radar" else "depth_features"
    for change, msg in ((dict(history=False), f"{key} = .* does not match the features"),
                        ({"skip": None}, "skip must be true or false, got None")):
        bad = dict(cfg, **change)
        shutil.copytree(tmp_path / "p", tmp_path / "bad", dirs_exist_ok=True)
        (tmp_path / "bad" / "config.json").write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=msg):
            load_policy(tmp_path / "bad")
    del cfg["max_skip_run"]
    (tmp_path / "bad" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="missing 'max_skip_run'"):
        load_policy(tmp_path / "bad")
    (tmp_path / "bad" / "config.json").write_text(json.dumps(dict(cfg, format=3)))
    with pytest.raises(ValueError, match=r"policy format 3 is not supported \(expected one of \[1, 2\]\)"):
        load_policy(tmp_path / "bad")
    with pytest.raises(ValueError, match="max_skip_run must be an int >= 1, got 0"):
        make2(kind, max_skip_run=0)
    with pytest.raises(ValueError, match="skip must be True or False, got 1"):
        make2(kind, skip=1)


def test_ltd_pre_draft_memo_equals_one_row_at_a_time():
    """LTD without history or lookup keeps its greedy pre-draft decisions per block of positions (one
    policy_step over the block's rows): every kept decision equals the one its own row gives, across
    positions, temperatures, block edges and batch sizes (batch costs on), and the position moves it."""
    from radar_ext.policies import History, PreDraftStep
    from radar_ext.policies.learned import decide
    from radar_ext.policies.ltd import CONTINUE, PRE_DRAFT_BLOCK
    seen = set()
    for seed in range(4):
        policy = make2("ltd", history=False, seed=seed, batch_costs=True)
        with torch.no_grad():  # a decision that changes along the position: its weight on log(1 + seq_len)
            policy.depth_net.fc1.weight[:, policy.tree_topk ** 2] *= 40.0
        policy.refresh()
        for T in (0.0, 1.0):
            for B in (1, 4):
                for L in list(range(1, 40)) + [PRE_DRAFT_BLOCK - 1, PRE_DRAFT_BLOCK, 3 * PRE_DRAFT_BLOCK + 5, 2000]:
                    x = policy._features(None, policy.tree_topk ** 2, L, 0, T, None, B, None)
                    want = decide(policy.depth_head(x), False, None) == CONTINUE
                    assert policy.should_draft(PreDraftStep(L, CostInfo(), History(), T, B)) == want
                    seen.add(want)
        assert policy._pre_draft and all(len(v) == PRE_DRAFT_BLOCK for v in policy._pre_draft.values())
        policy.refresh()
        assert not policy._pre_draft
    assert seen == {True, False}


def test_ltd_pre_draft_memo_with_lookup_equals_one_row_at_a_time():
    """A hybrid's LTD (lookup features, no history) keeps its greedy pre-draft decisions per block of positions and
    per lookup finding: every kept decision equals the one its own row gives, the finding moves it, and a policy
    that samples its decisions keeps none."""
    from radar_ext.policies import History, PreDraftStep
    from radar_ext.policies.base import LookupInfo
    from radar_ext.policies.learned import decide
    from radar_ext.policies.ltd import CONTINUE
    seen = set()
    findings = [None, LookupInfo(), LookupInfo(1, 1, -2.5), LookupInfo(3, 2, -0.4), LookupInfo(4, 8, -0.05)]
    for seed in range(4):
        policy = make2("ltd", history=False, seed=seed, lookup=True)
        with torch.no_grad():  # a decision that turns on the lookup's best probability
            policy.depth_net.fc1.weight[:, policy.tree_topk ** 2 + 3 + 2] *= 60.0
        policy.refresh()
        for T in (0.0, 1.0):
            for L in (1, 17, 300, 2000):
                for info in findings:
                    x = policy._features(None, policy.tree_topk ** 2, L, 0, T, None, 1, info)
                    want = decide(policy.depth_head(x), False, None) == CONTINUE
                    assert policy.should_draft(PreDraftStep(L, CostInfo(), History(), T, 1, info)) == want
                    seen.add(want)
        assert len({k[3] for k in policy._pre_draft}) == len(findings) - 1  # None and no occurrence: (0, 0, 0.0)
    assert seen == {True, False}
    sampling = make2("ltd", history=False, lookup=True, sample=True)
    sampling.should_draft(PreDraftStep(5, CostInfo(), History(), 1.0, 1, findings[3]))
    assert not sampling._pre_draft
