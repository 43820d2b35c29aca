"""CostModel (radar_ext/calibration.py) and `radar calibrate`: a real calibration on a tiny random
Llama + untrained EAGLE head (structure and consistency, no timed assertions), JSON round trip,
interpolation and cost composition on a hand-made model, load errors, CLI help and argument errors."""
import dataclasses
import json

import pytest
import torch

from radar_ext import EagleDrafter, StaticPolicy
from radar_ext.calibration import (SCHEMA, CalibrationError, CostModel, Stat, calibrate, check_lists, interp,
                                   isotonic, plot)
from radar_ext.cli import main
from radar_ext.commands import calibrate as calibrate_cmd
from test_decoder import tiny_llama


def s(x):
    return Stat(x, 0.9 * x, 1.1 * x, 5)


def hand_model(**kw) -> CostModel:
    """verify = 10 ms + 1 ms per V at prefix 100, twice that at prefix 300."""
    d = dict(name="hand", target="t", drafter="d", prefix_lens=[100, 300], v_set=[1, 5, 9], tree_topks=[4, 8],
             verify_tree_topk=8, max_draft_calls=4, pending=3,
             verify={100: {V: s(0.010 + 0.001 * V) for V in (1, 5, 9)},
                     300: {V: s(0.020 + 0.002 * V) for V in (1, 5, 9)}},
             tree_build={p: {V: s(0.0001) for V in (1, 5, 9)} for p in (100, 300)},
             overhead={p: {V: s(0.0002) for V in (1, 5, 9)} for p in (100, 300)},
             draft_first={4: {100: s(0.003), 300: s(0.005)}, 8: {100: s(0.004), 300: s(0.006)}},
             draft_next={4: {100: s(0.001), 300: s(0.001)}, 8: {100: s(0.002), 300: s(0.002)}},
             ar_step={100: s(0.008), 300: s(0.012)}, ar_generate={100: s(0.009), 300: s(0.013)},
             policy_decision=s(1e-5), policy_budget=None)
    d.update(kw)
    return CostModel(**d)


def test_interp_points_between_and_ends():
    xs, ys = [1, 3, 7], [10.0, 20.0, 60.0]
    assert [interp(xs, ys, x) for x in xs] == ys
    assert interp(xs, ys, 2) == 15.0 and interp(xs, ys, 5) == 40.0
    assert interp(xs, ys, 0) == 10.0          # below the first point: the first value
    assert interp(xs, ys, 9) == 80.0          # above: the last segment extended
    assert interp([4], [2.0], 100) == 2.0
    with pytest.raises(CalibrationError, match="as many xs as ys"):
        interp([1, 2], [1.0], 1)


def test_isotonic_fit():
    assert isotonic([1.0, 2.0, 3.0]) == [1.0, 2.0, 3.0]                 # already non-decreasing: kept
    assert isotonic([3.0, 1.0, 2.0, 5.0, 4.0, 6.0]) == [2.0, 2.0, 2.0, 4.5, 4.5, 6.0]
    assert isotonic([5.0]) == [5.0] and isotonic([]) == []


def test_verify_curve_read_through_a_monotone_fit():
    """A dip in the measured medians (V=5 'cheaper' than V=1) is pooled away; other V keep theirs."""
    m = hand_model(verify={100: {1: s(0.012), 5: s(0.010), 9: s(0.019)},
                           300: {V: s(0.020 + 0.002 * V) for V in (1, 5, 9)}})
    assert m.t_verify(1, 100) == pytest.approx(0.011) and m.t_verify(5, 100) == pytest.approx(0.011)
    assert m.t_verify(9, 100) == pytest.approx(0.019)
    assert m.t_verify(3, 100) == pytest.approx(0.011)                   # flat between the pooled points
    assert m.t_verify(5, 300) == pytest.approx(0.030)                   # the monotone curve is untouched
    ts = [m.t_verify(v, 200) for v in range(0, 12)]
    assert ts == sorted(ts)


def test_cost_model_interpolates_v_and_prefix():
    m = hand_model()
    assert m.t_verify(5, 100) == pytest.approx(0.015)
    assert m.t_verify(3, 100) == pytest.approx(0.013)                 # between measured V
    assert m.t_verify(5, 200) == pytest.approx((0.015 + 0.030) / 2)   # between prefix lengths
    assert m.t_verify(5) == pytest.approx(m.t_verify(5, 200))         # default: mean prefix
    assert m.t_verify(13, 100) == pytest.approx(0.023)                # extrapolated above the curve
    assert m.t_verify(5, 50) == pytest.approx(0.015)                  # clamped below the shortest prefix
    assert m.t_draft(1, 8, 100) == pytest.approx(0.004)
    assert m.t_draft(4, 8, 100) == pytest.approx(0.004 + 3 * 0.002)
    assert m.t_draft(4, 6, 100) == pytest.approx(0.0035 + 3 * 0.0015)  # W interpolated
    assert m.t_draft(0) == 0.0
    assert m.t_ar(100) == pytest.approx(0.009) and m.t_ar_step(300) == pytest.approx(0.012)
    # a generate difference that noise took to 0 (tiny models, few tokens) is not a cost: the bare step
    zeroed = dict(m.ar_generate)
    zeroed[max(zeroed)] = Stat(0.0, 0.0, 0.0, 1)
    m0 = dataclasses.replace(m, ar_generate=zeroed)
    assert m0.t_ar(100) == m0.t_ar_step(100) and m0.t_ar(300) == m0.t_ar_step(300)
    assert m.t_policy() == pytest.approx(1e-5)
    cyc = m.t_cycle(4, 9, 8, 100)
    assert cyc == pytest.approx(0.004 + 3 * 0.002 + 4e-5 + 0.0001 + 0.019 + 0.0002)
    assert m.predicted_tokens_per_second(3.0, 4, 9, 8, 100) == pytest.approx(3.0 / cyc)
    info = m.cost_info(9, 8, 100)
    assert info.draft_call == pytest.approx(0.002) and info.verify == pytest.approx(0.019)
    assert info.mean_verify_budget == 9.0
    with pytest.raises(CalibrationError, match="V must be >= 0"):
        m.t_verify(-1)


def test_json_round_trip(tmp_path):
    m = hand_model(machine={"cpu": "x", "torch_threads": 2}, settings={"repeats": 5})
    path = m.save(tmp_path / "sub" / "c.json")
    d = json.loads(path.read_text())
    assert d["schema"] == SCHEMA and set(d["verify"]) == {"100", "300"}
    # plain_step is optional: calibrations written before it load with {} and t_plain() None
    assert "plain_step" in d and d["plain_step"] == {}
    assert CostModel.from_dict({k: v for k, v in d.items() if k != "plain_step"}).t_plain() is None
    mp = hand_model(plain_step={100: s(0.0095), 300: s(0.019)})
    assert CostModel.from_dict(json.loads(json.dumps(mp.to_dict()))) == mp
    assert mp.t_plain(100) == pytest.approx(0.0095) and mp.t_plain(200) == pytest.approx(0.01425)
    assert "plain step (skipped cycle) P=100" in mp.format_table()
    # decode_step (our plain decoding per token) is optional too; the loop's own time is what it adds to the plain step
    assert d["decode_step"] == {} and mp.t_loop(100) == 0.0 and m.t_loop() == 0.0
    ml = hand_model(plain_step={100: s(0.0095), 300: s(0.019)}, decode_step={100: s(0.0115), 300: s(0.020)})
    assert CostModel.from_dict(json.loads(json.dumps(ml.to_dict()))) == ml
    assert ml.t_loop(100) == pytest.approx(0.002) and ml.t_loop(300) == pytest.approx(0.001)
    assert ml.t_cycle(2, 5, 4, 100) == pytest.approx(mp.t_cycle(2, 5, 4, 100) + 0.002)
    assert "our plain decoding P=100" in ml.format_table()
    from radar_ext.policies.costs import PolicyCosts
    pl, pm = PolicyCosts.from_cost_model(ml, 4, 100), PolicyCosts.from_cost_model(mp, 4, 100)
    assert pl.t_plain == pytest.approx(0.0115) and pm.t_plain == pytest.approx(0.0095)
    assert pl.verify_seconds == pytest.approx([v + 0.002 for v in pm.verify_seconds])
    back = CostModel.load(path)
    assert back == m
    assert back.t_verify(7, 250) == m.t_verify(7, 250)


def test_load_errors(tmp_path):
    with pytest.raises(CalibrationError, match="no calibration file .*radar calibrate"):
        CostModel.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(CalibrationError, match="not valid JSON"):
        CostModel.load(bad)
    d = hand_model().to_dict()
    bad.write_text(json.dumps({**d, "schema": "other/1"}))
    with pytest.raises(CalibrationError, match="schema must be"):
        CostModel.load(bad)
    d2 = dict(d)
    del d2["verify"]
    bad.write_text(json.dumps(d2))
    with pytest.raises(CalibrationError, match="missing field.*verify"):
        CostModel.load(bad)
    d3 = dict(d, verify={"100": {"1": {"median": 1.0}}})
    bad.write_text(json.dumps(d3))
    with pytest.raises(CalibrationError, match=r"verify\[100\]\[1\] must be an object with median, p10, p90, n"):
        CostModel.load(bad)


def test_stat_of():
    st = Stat.of([3.0, 1.0, 2.0, 4.0, 5.0])
    assert st.median == 3.0 and st.p10 < st.median < st.p90 and st.n == 5
    with pytest.raises(CalibrationError, match="no timing samples"):
        Stat.of([])


@pytest.fixture(scope="module")
def tiny():
    m = tiny_llama()
    return m, EagleDrafter.init_random(m, seed=1)


def test_calibrate_tiny_model(tiny, tmp_path):
    target, drafter = tiny
    seen = []

    def decide(step):  # a plain callable policy: must be timed on real draft steps
        seen.append(step.draft_calls)
        return True

    m = calibrate(target, drafter, decide, name="tiny", v_set=[4, 1, 2], prefix_lens=[16, 8], tree_topks=[3, 2],
                  max_draft_calls=3, pending=3, warmup=1, repeats=3, ar_tokens=2, ar_repeats=2)
    assert m.v_set == [1, 2, 4] and m.prefix_lens == [8, 16] and m.verify_tree_topk == 3
    assert set(m.verify) == {8, 16} and all(set(c) == {1, 2, 4} for c in m.verify.values())
    assert set(m.draft_first) == set(m.draft_next) == {2, 3}
    assert set(m.ar_step) == set(m.ar_generate) == set(m.plain_step) == set(m.decode_step) == {8, 16}
    assert all(st.n == 2 and st.median >= 0 for st in m.decode_step.values()) and m.t_loop(12) >= 0.0
    assert all(st.n == 3 and 0 < st.p10 <= st.median <= st.p90 for st in m.plain_step.values())
    assert m.t_plain(12) == pytest.approx((m.plain_step[8].median + m.plain_step[16].median) / 2)
    # every draft call 2..3 of each timed draft was split out: 2 later calls x 3 repeats
    assert all(m.draft_next[W][p].n == 2 * 3 and m.draft_first[W][p].n == 3 for W in (2, 3) for p in (8, 16))
    for table in (m.verify, m.tree_build, m.overhead):
        for curve in table.values():
            for st in curve.values():
                assert st.n == 3 and 0 < st.p10 <= st.median <= st.p90
    assert sorted(set(seen)) == [1, 2, 3] and m.policy_decision.n > 0 and m.policy_budget is None
    assert 1 <= m.pending <= 3
    assert m.machine["torch_threads"] == torch.get_num_threads() and "date" in m.machine and "cpu" in m.machine
    assert m.t_cycle(3, 2) > m.t_verify(2) > 0
    path = m.save(tmp_path / "tiny.json")
    assert CostModel.load(path) == m
    plot(m, tmp_path / "c.png")
    assert (tmp_path / "c.png").stat().st_size > 1000


def test_calibrate_policy_object_and_errors(tiny):
    target, drafter = tiny
    m = calibrate(target, drafter, StaticPolicy(2), v_set=[1], prefix_lens=[8], tree_topks=[2], max_draft_calls=2,
                  pending=2, warmup=0, repeats=1, ar_tokens=0)
    assert m.policy_name == "StaticPolicy(max_draft_calls=2)" and m.policy_budget is not None
    assert m.ar_generate == {} and m.t_ar(8) == m.t_ar_step(8)   # no generate measurement: the bare step
    with pytest.raises(TypeError, match="policy must be a radar_ext Policy or a callable"):
        calibrate(target, drafter, 3, v_set=[1], prefix_lens=[8], tree_topks=[2], repeats=1)
    with pytest.raises(CalibrationError, match="repeats must be an int >= 1, got 0"):
        calibrate(target, drafter, v_set=[1], prefix_lens=[8], tree_topks=[2], repeats=0)
    with pytest.raises(CalibrationError, match="max_position_embeddings = 256"):
        calibrate(target, drafter, v_set=[64], prefix_lens=[200], tree_topks=[2], repeats=1)
    with pytest.raises(CalibrationError, match=r"v_set must be a non-empty list of ints >= 1, got \[0\]"):
        check_lists([0], [8], [2])
    with pytest.raises(CalibrationError, match="tree_topks must not repeat"):
        check_lists([1], [8], [2, 2])


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["calibrate", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--v-set" in out and "--prefix-lens" in out and "--plot" in out and "--threads" in out


@pytest.mark.parametrize("argv, message", [
    (["--v-set", "1,a"], "--v-set must be a comma-separated list of ints >= 1, got '1,a'"),
    (["--v-set", "0,4"], "--v-set must be a comma-separated list of ints >= 1, got '0,4'"),
    (["--v-set", ""], "--v-set must be a comma-separated list of ints >= 1, got ''"),
    (["--v-set", "4,4"], "--v-set must not repeat values, got '4,4'"),
    (["--prefix-lens", "256,x"], "--prefix-lens must be a comma-separated list"),
    (["--tree-topk", "-1"], "--tree-topk must be a comma-separated list"),
    (["--repeats", "0"], "--repeats must be >= 1, got 0"),
    (["--threads", "0"], "--threads must be >= 1, got 0"),
    (["--pending", "12"], "--pending must be <= --max-draft-calls + 1 = 9, got 12"),
    (["--policy-path", "x.pt"], "--policy-path needs --policy radar or ltd"),
    (["--name", "a/b"], "--name must be a plain file name"),
    (["--plot", "out.pdf"], "--plot must name a .png file"),
])
def test_cli_errors(capsys, argv, message):
    assert main(["calibrate"] + argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("radar calibrate: error: ") and message in err


def test_cli_run_writes_json_and_plot(tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(calibrate_cmd, "load_models", lambda args: tiny)
    out, png = tmp_path / "c.json", tmp_path / "c.png"
    rc = main(["calibrate", "--v-set", "1,3", "--prefix-lens", "8", "--tree-topk", "2", "--max-draft-calls", "2",
               "--pending", "2", "--warmup", "0", "--repeats", "2", "--ar-tokens", "0", "--out", str(out),
               "--plot", str(png), "--no-progress"])
    assert rc == 0
    table = capsys.readouterr().out
    assert "verify P=8 ms" in table and "draft call W=2" in table
    m = CostModel.load(out)
    assert m.v_set == [1, 3] and m.name == "smollm2-135m-instruct" and png.stat().st_size > 1000


def test_verify_draft_shape():
    """Each V is timed after the smallest draft whose pool holds V nodes (W + (calls - 1) W^2 >= V)."""
    from radar_ext.calibration import verify_draft_shape
    assert verify_draft_shape([4, 6, 8, 10], 8, 1) == (4, 1)
    assert verify_draft_shape([4, 6, 8, 10], 8, 4) == (4, 1)
    assert verify_draft_shape([4, 6, 8, 10], 8, 5) == (4, 2)
    assert verify_draft_shape([4, 6, 8, 10], 8, 64) == (4, 5)
    assert verify_draft_shape([2, 3], 3, 10) == (2, 3)   # the narrowest W that can hold V first
    assert verify_draft_shape([2], 2, 50) == (2, 2)   # no draft holds 50: the widest, every call


# ----------------------------------------------------------------------------- whole cycles of real decoding
def _tiny_calibration(**kw):
    from radar_ext import EagleDrafter
    from radar_ext.calibration import calibrate
    from test_decoder import tiny_llama
    model = tiny_llama()
    drafter = EagleDrafter.init_random(model, seed=1)
    cm = calibrate(model, drafter, None, name="tiny", v_set=[1, 2, 4, 8], prefix_lens=[8], tree_topks=[2, 3],
                   max_draft_calls=3, pending=2, warmup=1, repeats=2, ar_tokens=4, ar_repeats=1, **kw)
    return model, drafter, cm


def test_measure_decoding_times_whole_cycles_of_the_settings_whose_pool_holds_V():
    import json

    from radar_ext.calibration import CostModel, measure_decoding, pool_holds
    model, drafter, cm = _tiny_calibration()
    d = measure_decoding(model, drafter, prefix_len=8, new_tokens=6, tree_topk=2, calls=(1, 2, 3), v_set=(1, 2, 4, 8),
                         prompts=2, repeats=1)
    assert d["prefix_len"] == 8 and d["new_tokens"] == 6 and d["tree_topk"] == 2 and d["plain"] > 0
    # W = 2: 1 call drafts 2 nodes, 2 calls 6, 3 calls 10
    assert {c: sorted(row) for c, row in d["cycles"].items()} == {1: [1, 2], 2: [1, 2, 4], 3: [1, 2, 4, 8]}
    assert all(pool_holds(2, c, V) and t > 0 for c, row in d["cycles"].items() for V, t in row.items())
    assert not pool_holds(2, 1, 3) and pool_holds(3, 2, 12) and not pool_holds(3, 2, 13)
    cm.decoding = d
    again = CostModel.from_dict(json.loads(json.dumps(cm.to_dict())))
    assert again.decoding == d
    assert "decoding (P=8, 6 new tokens, W=2)" in again.format_table()
    with pytest.raises(CalibrationError, match="no \\(calls, V\\)"):
        measure_decoding(model, drafter, prefix_len=8, tree_topk=2, calls=(1,), v_set=(5,))
    with pytest.raises(CalibrationError, match="new_tokens must be an int >= 2"):
        measure_decoding(model, drafter, new_tokens=1)


def test_decoding_factors_scale_the_policy_costs_to_the_measured_cycles():
    """Made-up decoding times built from the part-by-part model: a later call 2x, the rest of a cycle 1.5x at
    every V, the plain step 1.25x; the factors come back and PolicyCosts' cycles are the measured ones."""
    from radar_ext.policies import PolicyCosts
    _, _, cm = _tiny_calibration()
    P, W = 8, 3
    base = PolicyCosts.from_cost_model(cm, tree_topk=W, prefix_len=P)
    t_next = base.t_draft
    cycles = {c: {V: 1.5 * base.t_verify(V) + c * 2 * t_next for V in (1, 2, 4, 8) if W + (c - 1) * W * W >= V}
              for c in (1, 2, 3)}
    cm.decoding = {"prefix_len": P, "new_tokens": 6, "tree_topk": W, "plain": 1.25 * base.plain_step(), "cycles": cycles}
    f = cm.decoding_factors()
    assert f["next"] == pytest.approx(2.0) and f["plain"] == pytest.approx(1.25)
    assert f["V"] == [1, 2, 4, 8] and f["verify"] == pytest.approx([1.5] * 4)
    pc = PolicyCosts.from_cost_model(cm, tree_topk=W, prefix_len=P)
    assert pc.t_draft == pytest.approx(2 * t_next) and pc.plain_step() == pytest.approx(1.25 * base.plain_step())
    for c, row in cycles.items():
        for V, t in row.items():
            assert c * pc.t_draft + pc.t_verify(V) == pytest.approx(t)
    # outside the measured V the nearest measured factor; at another prefix the same factors
    assert pc.t_verify(64) == pytest.approx(1.5 * base.t_verify(64))
    cm.decoding = {}
    assert cm.decoding_factors() is None and PolicyCosts.from_cost_model(cm, tree_topk=W, prefix_len=P) == base


@pytest.mark.parametrize("bad", [{"prefix_len": 8}, {"prefix_len": 8, "new_tokens": 6, "tree_topk": 2, "plain": 0.01,
                                                     "cycles": {}},
                                 {"prefix_len": 8, "new_tokens": 6, "tree_topk": 2, "plain": -1.0,
                                  "cycles": {"1": {"1": 0.01}}}])
def test_bad_decoding_entries_are_refused_by_name(bad):
    from radar_ext.calibration import check_decoding
    with pytest.raises(CalibrationError, match="decoding"):
        check_decoding(bad, "cal.json")


def test_calibrate_cli_decoding_options_are_checked(capsys):
    assert main(["calibrate", "--decoding", "--decoding-tokens", "1"]) == 2
    assert "--decoding-tokens must be >= 2, got 1" in capsys.readouterr().err
    assert main(["calibrate", "--decoding", "--decoding-tree-topk", "0"]) == 2
    assert "--decoding-tree-topk must be >= 1, got 0" in capsys.readouterr().err
