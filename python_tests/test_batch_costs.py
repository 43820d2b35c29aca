"""Costs that know the batch (`radar calibrate --batch-sizes`): the batched verify forward timed per B, the
ratios over B = 1 a policy stores, a row's share of the batch's costs as LTD cost features (batch_costs),
and the B = 1 features (and so the shipped policies) unchanged."""
import json

import pytest
import torch

from radar_ext.policies import LtdPolicy, PolicyCosts
from test_decoder import tiny_llama

COSTS = {"t_draft": 0.002, "t_policy": 1e-4, "t_ar": 0.01, "t_verify": {"V": [1, 16, 64], "seconds": [0.01, 0.012, 0.02]}}
PER_BATCH = {"2": {"plain": 1.2, "V": [1, 64], "verify": [1.3, 1.9]}, "8": {"plain": 2.0, "V": [1, 64], "verify": [2.5, 7.0]}}
BUDGETS = (2, 4, 7, 12)


def test_batch_features_are_a_rows_share_in_units_of_its_plain_step():
    plain = PolicyCosts.load(COSTS)
    pc = PolicyCosts.load(dict(COSTS, per_batch=PER_BATCH))
    assert pc.batch_features(BUDGETS, 1) == plain.features(BUDGETS) == pc.features(BUDGETS)
    assert plain.batch_features(BUDGETS, 8) == plain.features(BUDGETS)  # nothing calibrated: B = 1's
    for B, lo, hi in ((2, 2, 2), (3, 2, 8), (7, 2, 8), (8, 8, 8), (32, 8, 8)):  # calibrated, between two, above
        a = 0.0 if lo == hi else (B - lo) / (hi - lo)
        e_lo, e_hi = PER_BATCH[str(lo)], PER_BATCH[str(hi)]
        t_ar = 0.01 * ((1 - a) * e_lo["plain"] + a * e_hi["plain"])

        def ratio(v, e):
            (v0, v1), (r0, r1) = e["V"], e["verify"]
            return r0 + (r1 - r0) * (v - v0) / (v1 - v0)
        ratios = [(1 - a) * ratio(v, e_lo) + a * ratio(v, e_hi) for v in BUDGETS]
        want = [B * 0.002 / t_ar, B * 1e-4 / t_ar] + [plain.t_verify(v) * r / t_ar for v, r in zip(BUDGETS, ratios)]
        assert pc.batch_features(BUDGETS, B) == pytest.approx(want, rel=1e-12), B
    # below the smallest calibrated B the line runs from B = 1 (every ratio 1)
    only8 = PolicyCosts.load(dict(COSTS, per_batch={"8": PER_BATCH["8"]}))
    e3 = only8.batch_entry(3)
    assert e3["plain"] == pytest.approx(1 + 2 / 7 * (2.0 - 1)) and e3["verify"][0] == pytest.approx(1 + 2 / 7 * (2.5 - 1))
    assert only8.batch_entry(1) is None and only8.batch_entry(8) is only8.per_batch[8]
    # between two calibrated sizes a row's features lie between theirs
    f2, f5, f8 = (pc.batch_features(BUDGETS, B) for B in (2, 5, 8))
    assert all(min(x, z) <= y <= max(x, z) for x, y, z in zip(f2[2:], f5[2:], f8[2:]))
    # a row's verify share grows with B here: at B = 8 verifying 12 tokens costs more plain steps than at B = 1
    assert pc.batch_features(BUDGETS, 8)[-1] > pc.batch_features(BUDGETS, 1)[-1]
    again = PolicyCosts.from_dict(json.loads(json.dumps(pc.to_dict())))
    assert again == pc and "per_batch" not in plain.to_dict()


def test_at_batch_is_a_rows_curve_whose_features_are_batch_features():
    """PolicyCosts.at_batch(B), what `train-policy --batch-costs` scores a batch with: a B = 1 curve whose
    features are batch_features(B), whose draft call is B calls and whose verify and plain step are the
    batched forward's; an uncalibrated B is refused by name."""
    pc = PolicyCosts.load(dict(COSTS, per_batch=PER_BATCH, t_plain=0.009))
    assert pc.at_batch(1) is pc
    for B in (2, 8):
        c = pc.at_batch(B, BUDGETS)
        assert c.features(BUDGETS) == pytest.approx(pc.batch_features(BUDGETS, B), rel=1e-12), B
        assert c.t_draft == pytest.approx(B * 0.002) and c.plain_step() == pytest.approx(0.009 * PER_BATCH[str(B)]["plain"])
        assert c.t_verify(64) == pytest.approx(0.02 * PER_BATCH[str(B)]["verify"][-1]) and c.per_batch is None
    with pytest.raises(ValueError, match=r"batch size 4 was not calibrated \(calibrated: \[2, 8\]\)"):
        pc.at_batch(4)
    with pytest.raises(ValueError, match="batch size 2 was not calibrated"):
        PolicyCosts.load(COSTS).at_batch(2)


@pytest.mark.parametrize("bad", [{"plain": 0, "V": [1], "verify": [1.0]}, {"plain": 1.0, "V": [4, 1], "verify": [1, 1]},
                                 {"plain": 1.0, "V": [1], "verify": []}, "fast"])
def test_bad_batch_entries_are_refused_by_name(bad):
    with pytest.raises(ValueError, match=r"costs: per_batch\[4\] must be"):
        PolicyCosts.load(dict(COSTS, per_batch={"4": bad}))


def test_ltd_reads_the_batch_only_with_batch_costs():
    costs = dict(COSTS, per_batch=PER_BATCH)
    scores = torch.randn(1, 9)
    off = LtdPolicy(tree_topk=3, max_draft_calls=4, budgets=BUDGETS, costs=costs, pool_topk=8, seed=1)
    on = LtdPolicy(tree_topk=3, max_draft_calls=4, budgets=BUDGETS, costs=costs, pool_topk=8, seed=1, batch_costs=True)
    feats = lambda p, B: p._features(scores, 9, 100, 2, 0.0, None, B)  # noqa: E731
    assert torch.equal(feats(off, 8), feats(off, 1)) and torch.equal(feats(on, 1), feats(off, 1))
    x = feats(on, 8)
    assert not torch.equal(x, feats(on, 1))
    assert x[0, -len(BUDGETS) - 2:].tolist() == torch.tensor(on.costs.batch_features(BUDGETS, 8)).float().tolist()
    assert "batch_costs" not in off.config_dict() and on.config_dict()["batch_costs"] is True
    assert LtdPolicy.from_config(on.config_dict()).batch_costs and not LtdPolicy.from_config(off.config_dict()).batch_costs
    with pytest.raises(ValueError, match="batch_costs must be True or False"):
        LtdPolicy(tree_topk=3, costs=costs, batch_costs=1)


def test_calibration_measures_the_batched_forward():
    from radar_ext import EagleDrafter
    from radar_ext.calibration import CostModel, calibrate

    model = tiny_llama()
    cm = calibrate(model, EagleDrafter.init_random(model, seed=1), None, name="tiny", v_set=[1, 4], prefix_lens=[8],
                   tree_topks=[3], max_draft_calls=2, pending=2, warmup=1, repeats=2, ar_tokens=0, batch_sizes=[2, 4])
    assert sorted(cm.batch) == [1, 2, 4]
    for e in cm.batch.values():
        assert e["plain"] > 0 and sorted(e["verify"]) == [1, 4] and all(t > 0 for t in e["verify"].values())
    ratios = cm.batch_ratios()
    assert sorted(ratios) == [2, 4] and ratios[2]["V"] == [1, 4]
    assert ratios[4]["plain"] == pytest.approx(cm.batch[4]["plain"] / cm.batch[1]["plain"])
    again = CostModel.from_dict(json.loads(json.dumps(cm.to_dict())))
    assert again.batch == cm.batch
    pc = PolicyCosts.load(again, tree_topk=3)
    assert sorted(pc.per_batch) == [2, 4]
    plain = calibrate(model, EagleDrafter.init_random(model, seed=1), None, name="tiny", v_set=[1, 4], prefix_lens=[8],
                      tree_topks=[3], max_draft_calls=2, pending=2, warmup=1, repeats=1, ar_tokens=0)
    assert plain.batch == {} and PolicyCosts.load(plain, tree_topk=3).per_batch is None


def test_calibrate_cli_batch_sizes_errors(capsys):
    from radar_ext.cli import main
    assert main(["calibrate", "--batch-sizes", "0,2"]) == 2
    assert "--batch-sizes must be a comma-separated list of ints >= 1" in capsys.readouterr().err
