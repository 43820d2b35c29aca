"""Own plain decoding (RadarDecoder(target, drafter=None)) and the training-free adaptive controllers
(PminPolicy, EmaPolicy, GoodputPolicy): their decisions on hand-made draft steps, the per-sequence
feedback hook, the acceptance calibration fit, greedy exactness on the tiny random Llama, and errors."""
import math

import pytest
import torch

from radar_ext import EagleDrafter, NgramDrafter, RadarDecoder
from radar_ext.policies import CostInfo, CycleOutcome, DraftStep, EmaPolicy, GoodputPolicy, PminPolicy, Policy
from radar_ext.policies.adaptive import AcceptanceMap, fit_acceptance, from_setting, read_setting
from radar_ext.policies.base import BudgetStep
from python_tests.test_decoder import prompts, reference, tiny_llama

COSTS = {"t_draft": 0.002, "t_policy": 0.0, "t_ar": 0.02,
         "t_verify": {"V": [1, 2, 4, 8, 16, 64], "seconds": [0.02, 0.021, 0.023, 0.03, 0.045, 0.12]}}
ACCEPT = {"0": {"a": 1.0, "b": 0.0}}


@pytest.fixture(scope="module")
def model():
    return tiny_llama("sdpa")


def step(calls, beams, children, temperature=0.0):
    return DraftStep(calls, torch.tensor([beams]), torch.tensor([children]), 10, CostInfo(), temperature)


# ------------------------------------------------------------------------------------------ own plain decoding
def test_plain_decoding_is_exact_and_drafts_nothing(model):
    dec = RadarDecoder(model)  # drafter=None
    for ids, n in zip(prompts(), (1, 9, 30)):
        assert torch.equal(dec.generate(ids, max_new_tokens=n), reference(model, ids, n))
        s = dec.last_stats
        assert s.draft_calls == 0 and s.verify_tokens == 0 and s.cycles == n - 1 and s.tau == (1.0 if n > 1 else 0.0)
    assert repr(dec.drafter) == "PlainDrafter()" and dec.drafter.feature_layers is None


def test_plain_decoding_with_eos_and_sampling(model):
    ids = prompts()[2]
    ref = reference(model, ids, 20)
    eos = int(ref[0, ids.shape[1] + 4])
    out = RadarDecoder(model, None).generate(ids, max_new_tokens=20, eos_token_id=eos)
    assert torch.equal(out, reference(model, ids, 20, eos=eos))
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a = RadarDecoder(model).generate(ids, max_new_tokens=12, do_sample=True, generator=g1)
    b = RadarDecoder(model).generate(ids, max_new_tokens=12, do_sample=True, generator=g2)
    assert torch.equal(a, b) and a.shape == (1, ids.shape[1] + 12)


# ------------------------------------------------------------------------------------------ the feedback hook
class Recorder(Policy):
    max_draft_calls = 2

    def __init__(self):
        self.starts, self.outcomes = 0, []

    def start_sequence(self):
        self.starts += 1

    def should_continue(self, step):
        return True

    def observe(self, outcome):
        self.outcomes.append(outcome)


def test_observe_reports_every_cycle(model):
    pol = Recorder()
    dec = RadarDecoder(model, EagleDrafter.init_random(model, seed=1), pol, tree_topk=2, verify_budget=3)
    ids = prompts()[1]
    assert torch.equal(dec.generate(ids, max_new_tokens=10), reference(model, ids, 10))
    s = dec.last_stats
    assert pol.starts == 1 and len(pol.outcomes) == s.cycles
    assert sorted(o.accepted_len for o in pol.outcomes) == [n for n, c in enumerate(s.accepted_hist) for _ in range(c)]
    assert all(o.draft_calls == 2 and o.verify_budget == 3 for o in pol.outcomes)
    dec.generate(ids, max_new_tokens=4)
    assert pol.starts == 2


# ------------------------------------------------------------------------------------------ p-min
def test_pmin_reads_the_best_beams_last_step_probability():
    pol = PminPolicy(p_min=0.5, max_draft_calls=4)
    pol.reset()
    # call 1: root children log p = log .6, log .3 -> best .6 >= .5: continue
    s1 = step(1, [math.log(.6), math.log(.3)], [[math.log(.6), math.log(.3)]])
    assert pol.last_step_prob(s1) == pytest.approx(.6)
    assert pol.should_continue(s1)
    # call 2: parent 1 (score log .3) has the best child overall, log(.3 * .9): its step probability is .9
    s2 = step(2, [math.log(.27), math.log(.24)], [[math.log(.6 * .4), math.log(.6 * .1)], [math.log(.3 * .9), -math.inf]])
    assert pol.last_step_prob(s2) == pytest.approx(.9)
    assert pol.should_continue(s2)
    # call 3: best child's step probability .2 < .5: stop
    s3 = step(3, [math.log(.27 * .2), math.log(.24 * .1)], [[math.log(.27 * .2), math.log(.27 * .1)],
                                                             [math.log(.24 * .1), -math.inf]])
    assert pol.last_step_prob(s3) == pytest.approx(.2)
    assert not pol.should_continue(s3)
    # a new cycle forgets the old beams; the cap stops at max_draft_calls whatever p says
    pol.reset()
    assert PminPolicy(p_min=0.0, max_draft_calls=1).should_continue(s1) is False


# ------------------------------------------------------------------------------------------ EMA
def test_ema_depth_follows_accepted_lengths_with_hysteresis():
    pol = EmaPolicy(margin=1.0, weight=0.2, hysteresis=0.5, max_draft_calls=6, start_draft_calls=2)
    assert pol.depth == 2
    pol.observe(CycleOutcome(4, 2, 3))       # ema 4 -> target 5: far from 2, move
    assert pol.ema == 4 and pol.depth == 5
    pol.observe(CycleOutcome(3, 5, 3))       # ema 3.8 -> target 4.8: within 0.5 of 5, stay
    assert pol.ema == pytest.approx(3.8) and pol.depth == 5
    for _ in range(10):
        pol.observe(CycleOutcome(0, 5, 3))   # ema decays toward 0: target toward 1
    assert pol.depth == 1
    assert pol.should_continue(step(1, [0.0], [[0.0]])) is False
    pol.start_sequence()
    assert pol.depth == 2 and pol.ema is None
    assert pol.should_continue(step(1, [0.0], [[0.0]])) is True
    for _ in range(30):
        pol.observe(CycleOutcome(20, 6, 3))  # capped at max_draft_calls
    assert pol.depth == 6


def test_ema_resets_per_generate_call(model):
    pol = EmaPolicy(margin=2.0, max_draft_calls=4, start_draft_calls=1)
    dec = RadarDecoder(model, NgramDrafter(max_ngram=3, min_ngram=1), pol, tree_topk=2, verify_budget=4)
    ids = prompts()[2]
    for n in (5, 25):
        assert torch.equal(dec.generate(ids, max_new_tokens=n), reference(model, ids, n))
    pol.observe(CycleOutcome(3, 1, 4))
    dec.generate(ids, max_new_tokens=1)  # no cycle: the start state again
    assert pol.depth == 1 and pol.ema is None


# ------------------------------------------------------------------------------------------ goodput
def test_goodput_budget_is_the_argmax_of_expected_rate():
    pol = GoodputPolicy(COSTS, ACCEPT, max_draft_calls=4, max_verify_budget=8)
    scores = [-0.1, -0.2, -3.0, -0.5, -6.0]
    got = pol.verify_budget(BudgetStep(torch.tensor([scores]), 2, 10, 60, CostInfo(), 0.0))
    s = sorted(scores, reverse=True)
    reach = [1 / (1 + math.exp(-x)) for x in s]
    rate = [(1 + sum(reach[:v])) / (2 * 0.002 + pol.costs.t_verify(v)) for v in range(1, len(s) + 1)]
    assert got == max(range(len(rate)), key=rate.__getitem__) + 1
    # a steeper calibration trusts fewer nodes
    steep = GoodputPolicy(COSTS, {"0": {"a": 6.0, "b": -4.0}}, max_draft_calls=4, max_verify_budget=8)
    assert steep.verify_budget(BudgetStep(torch.tensor([scores]), 2, 10, 60, CostInfo(), 0.0)) < got


def test_goodput_drafts_while_the_best_rate_grows():
    pol = GoodputPolicy(COSTS, ACCEPT, max_draft_calls=4, max_verify_budget=16)
    pol.reset()
    # confident root children: the best rate beats a plain forward's -> continue
    assert pol.should_continue(step(1, [-0.05, -0.1], [[-0.05, -0.1]]))
    # a level of hopeless children adds nothing but a draft call's cost -> stop
    assert not pol.should_continue(step(2, [-30.0, -31.0], [[-30.0, -31.0], [-32.0, -33.0]]))
    pol.reset()
    # hopeless root children: drafting does not pay even once
    assert not pol.should_continue(step(1, [-20.0, -21.0], [[-20.0, -21.0]]))


def test_acceptance_map_picks_the_nearest_temperature():
    m = AcceptanceMap({"0": {"a": 1, "b": 0}, "1": {"a": 2, "b": -1}})
    assert m.at(0.0) == (1.0, 0.0) and m.at(0.9) == (2.0, -1.0) and m.at(0.5) == (1.0, 0.0)
    assert AcceptanceMap(m.to_dict()).params == m.params
    with pytest.raises(ValueError, match="needs finite numbers 'a' and 'b'"):
        AcceptanceMap({"0": {"a": 1}})


class _Ep:
    def __init__(self, meta, tensors):
        self.meta, self.tensors = meta, tensors

    def __getitem__(self, k):
        return self.tensors[k]


def synthetic_episodes(a, b, cycles=300, seed=0):
    """Episodes whose recorded expected accepted lengths are exactly sum of sigmoid(a s + b) over the best V."""
    g = torch.Generator().manual_seed(seed)
    N, K, budgets = 3, 16, [1, 2, 4, 8, 16]
    top = (-6 * torch.rand(cycles, N, K, generator=g)).sort(dim=2, descending=True).values
    top[:, 0, 10:] = -math.inf                             # call 1 has fewer nodes
    reach = torch.sigmoid(a * top.double() + b) * torch.isfinite(top)
    EL = torch.stack([reach[:, :, :v].sum(-1) for v in budgets], -1)  # [C, N, nV]
    # accept_dist with the right mean: P(L = floor) and P(L = ceil) mixing
    D = K + 1
    lo = EL.floor().long().clamp(max=D - 2)
    frac = EL - lo
    dist = torch.zeros(cycles, N, len(budgets), D, dtype=torch.float64)
    dist.scatter_(3, lo.unsqueeze(3), (1 - frac).unsqueeze(3))
    dist.scatter_add_(3, (lo + 1).unsqueeze(3), frac.unsqueeze(3))
    tensors = {"pool_top": top.float(), "accept_dist": dist.float(), "temperature": torch.zeros(cycles)}
    return _Ep({"budgets": budgets}, tensors)


def test_fit_acceptance_recovers_the_calibration():
    ep = synthetic_episodes(1.5, 0.5)
    fit = fit_acceptance(ep)
    assert fit["a"] == pytest.approx(1.5, abs=0.05) and fit["b"] == pytest.approx(0.5, abs=0.05)
    assert fit["rmse"] < 1e-3 and fit["cycles"] == 300
    with pytest.raises(ValueError, match="need pool_topk >= that"):
        fit_acceptance(_Ep({"budgets": [1, 32]}, ep.tensors))


# ------------------------------------------------------------------------------------------ exactness, settings
@pytest.mark.parametrize("make", [
    lambda: PminPolicy(p_min=0.05, max_draft_calls=4),
    lambda: EmaPolicy(margin=1.0, max_draft_calls=4),
    lambda: GoodputPolicy(COSTS, {"0": {"a": 0.5, "b": 1.0}}, max_draft_calls=4, max_verify_budget=12),
])
def test_adaptive_policies_are_exact(model, make):
    dec = RadarDecoder(model, EagleDrafter.init_random(model, seed=1), make(), tree_topk=3, verify_budget=5)
    for ids, n in zip(prompts(), (1, 9, 30)):
        assert torch.equal(dec.generate(ids, max_new_tokens=n), reference(model, ids, n))


def test_settings_round_trip_and_errors(tmp_path):
    import json
    f = tmp_path / "pmin.json"
    f.write_text(json.dumps({"policy": "pmin", "policy_kwargs": {"p_min": 0.3, "max_draft_calls": 5},
                             "tree_topk": 6, "verify_budget": 4}))
    pol, W, V = from_setting(read_setting(f, "pmin"))
    assert isinstance(pol, PminPolicy) and pol.p_min == 0.3 and pol.max_draft_calls == 5 and (W, V) == (6, 4)
    with pytest.raises(ValueError, match="is not a tuned ema setting"):
        read_setting(f, "ema")
    with pytest.raises(FileNotFoundError, match="run `radar tune-static --policy goodput`"):
        read_setting(tmp_path / "goodput.json", "goodput")
    g = tmp_path / "goodput.json"
    g.write_text(json.dumps({"policy": "goodput", "policy_kwargs": {"costs": COSTS, "acceptance": ACCEPT},
                             "tree_topk": 4, "verify_budget": 64}))
    other = dict(COSTS, t_ar=0.05)
    pol, W, V = from_setting(read_setting(g, "goodput"), costs=other)
    assert pol.costs.t_ar == 0.05


@pytest.mark.parametrize("make, msg", [
    (lambda: PminPolicy(p_min=1.5), "p_min must be a finite number >= 0.0 and <= 1.0, got 1.5"),
    (lambda: EmaPolicy(weight=0.0), "weight must be a finite number > 0.0"),
    (lambda: EmaPolicy(start_draft_calls=9, max_draft_calls=8), "start_draft_calls must be <= max_draft_calls = 8"),
    (lambda: GoodputPolicy(COSTS, ACCEPT, max_verify_budget=0), "max_verify_budget must be an int >= 1, got 0"),
    (lambda: GoodputPolicy(COSTS, {}), "acceptance map must be a non-empty"),
])
def test_constructor_errors(make, msg):
    with pytest.raises(ValueError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        make()
