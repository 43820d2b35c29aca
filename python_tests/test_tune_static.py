"""The static-tree grid search (radar_ext/static_search.py, `radar tune-static`): accepted lengths
from a full pool on a hand-made case, the replay reproducing RadarDecoder's real cycle counts on a
tiny random Llama + untrained EAGLE head, the cost-model ranking on synthetic replays, the whole
search end to end (static_tree.json readable by the benchmark), CLI help and argument errors."""
import json

import numpy as np
import pytest
import torch

from radar_ext import EagleDrafter, RadarDecoder, StaticPolicy
from radar_ext.benchmark.methods import read_static_gs
from radar_ext.cli import main
from radar_ext.static_search import (GridRow, Replay, StaticSetting, accepted_lengths, greedy_answers, make_grid,
                                     pick_distinct, pool_size, rank_settings, replay_answer, simulate, tune_static)
from test_calibration import hand_model, s
from test_decoder import tiny_llama

VOCAB = 8  # a small vocabulary: the random head's top-W often holds the target's argmax


def test_pool_size_and_grid_dedupes_budgets_above_the_pool():
    assert [pool_size(3, c) for c in (1, 2, 3)] == [3, 12, 21]
    g = make_grid([1, 2], [2], [1, 4, 8])
    # calls 1: pool 2 -> V 1, 2 (4 and 8 collapse to 2); calls 2: pool 6 -> V 1, 4, 6
    assert g == [StaticSetting(1, 2, 1), StaticSetting(1, 2, 2), StaticSetting(2, 2, 1), StaticSetting(2, 2, 4),
                 StaticSetting(2, 2, 6)]


def test_accepted_lengths_hand_made_pool():
    # W = 2. Call 1: nodes 0 (tok 5, -0.1), 1 (tok 6, -0.5). Call 2: children of 0: 2 (tok 7, -0.3),
    # 3 (tok 8, -0.9); children of 1: 4 (tok 7, -0.6), 5 (tok 9, -0.7).
    tok = [5, 6, 7, 8, 7, 9]
    par = [-1, -1, 0, 0, 1, 1]
    sc = [-0.1, -0.5, -0.3, -0.9, -0.6, -0.7]
    v_grid = [1, 2, 3, 6]
    # greedy continuation 5, 7: chain = nodes 0 (rank 0), 2 (rank 1 among 6, not in the pool after 1 call)
    got = accepted_lengths(tok, par, sc, [5, 7, 1], 2, 2, v_grid)
    assert got.tolist() == [[1, 1, 1, 1], [1, 2, 2, 2]]
    # continuation 6, 9: node 1 ranks 1 after call 1, 2 after call 2 (behind -0.1, -0.3); node 5 ranks 4
    got = accepted_lengths(tok, par, sc, [6, 9], 2, 2, v_grid)
    assert got.tolist() == [[0, 1, 1, 1], [0, 0, 1, 2]]
    # no match at the root, and a tie: equal scores rank by index (the older node first)
    assert accepted_lengths(tok, par, sc, [4], 2, 2, v_grid).tolist() == [[0] * 4] * 2
    tied = accepted_lengths([5, 6], [-1, -1], [-0.2, -0.2], [6], 2, 1, [1, 2])
    assert tied.tolist() == [[0, 1]]


@pytest.fixture(scope="module")
def tiny():
    m = tiny_llama(vocab=VOCAB)
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(0, VOCAB, (1, n), generator=g) for n in (3, 9)]
    return m, EagleDrafter.init_random(m, seed=1), prompts


def test_replay_reproduces_the_decoder(tiny):
    """Cycles from the replay == RadarDecoder's real cycles, for every setting tried."""
    target, drafter, prompts = tiny
    answers = greedy_answers(target, prompts, 30, None)
    v_grid = [1, 2, 3, 5, 30]
    some_accepted = False
    for W in (2, 3):
        reps = [replay_answer(target, drafter, p, a, W, 3, v_grid) for p, a in zip(prompts, answers)]
        for r in reps:
            assert r.accepted.shape == (29, 3, len(v_grid))
            some_accepted |= bool((r.accepted > 0).any())
        cycles = set()
        for calls in (1, 3):
            for V in v_grid:
                dec = RadarDecoder(target, drafter, StaticPolicy(calls), tree_topk=W, verify_budget=V)
                for p, a, r in zip(prompts, answers, reps):
                    out = dec.generate(p, max_new_tokens=30)
                    assert torch.equal(out[:, p.shape[1]:], a)
                    assert simulate(r, calls, V)[0] == dec.last_stats.cycles, (W, calls, V)
                    cycles.add(dec.last_stats.cycles)
        assert len(cycles) > 2  # the settings really differ
    assert some_accepted


def test_replay_copies_to_the_host_before_numpy(tiny, monkeypatch):
    """A GPU tensor has no .numpy(): every host array replay_answer makes must come from .cpu(). Emulated
    here: .numpy() refuses any tensor that was not just returned by .cpu()."""
    target, drafter, prompts = tiny
    answer = greedy_answers(target, prompts[:1], 6, None)[0]
    want = replay_answer(target, drafter, prompts[0], answer, 2, 2, [1, 3])
    real_cpu, real_numpy = torch.Tensor.cpu, torch.Tensor.numpy

    def cpu(self, *args, **kwargs):
        out = real_cpu(self, *args, **kwargs).view_as(self)   # a fresh tensor object, to tag
        out._host_copy = True
        return out

    def numpy(self, *args, **kwargs):
        if not getattr(self, "_host_copy", False):
            raise TypeError("can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() to copy the "
                            "tensor to host memory first.")
        return real_numpy(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "cpu", cpu)
    monkeypatch.setattr(torch.Tensor, "numpy", numpy)
    got = replay_answer(target, drafter, prompts[0], answer, 2, 2, [1, 3])
    assert np.array_equal(got.accepted, want.accepted)


def synthetic_replay(per_depth: int, v_grid) -> Replay:
    """An answer of 41 tokens on which any tree of depth >= d with V >= d * per_depth accepts d."""
    K = 4
    acc = np.zeros((40, K, len(v_grid)), dtype=np.int64)
    for c in range(1, K + 1):
        for vi, V in enumerate(v_grid):
            acc[:, c - 1, vi] = min(c, V // per_depth)
    return Replay(2, 100, 41, v_grid, acc)


def test_rank_settings_picks_the_model_best():
    settings = make_grid([1, 2, 4], [2], [2, 4, 8, 16])
    reps = {2: [synthetic_replay(2, sorted({x.verify_budget for x in settings}))]}
    # verify cost flat in V, cheap drafts: the deepest, biggest tree wins
    flat = hand_model(verify={p: {V: s(0.010) for V in (1, 5, 9)} for p in (100, 300)},
                      draft_first={2: {100: s(0.0005), 300: s(0.0005)}},
                      draft_next={2: {100: s(0.0005), 300: s(0.0005)}})
    rows = rank_settings(reps, settings, flat, 100)
    assert rows[0].setting == StaticSetting(4, 2, 8) and rows[0].tau == pytest.approx(40 / 8)
    assert [r.predicted_tokens_per_s for r in rows] == sorted((r.predicted_tokens_per_s for r in rows), reverse=True)
    # each extra draft call costs as much as a whole verify: one call wins
    costly = hand_model(verify={p: {V: s(0.010) for V in (1, 5, 9)} for p in (100, 300)},
                        draft_first={2: {100: s(0.0005), 300: s(0.0005)}},
                        draft_next={2: {100: s(0.050), 300: s(0.050)}})
    best = rank_settings(reps, settings, costly, 100)[0]
    assert best.setting.max_draft_calls == 1 and best.setting.verify_budget == 2
    assert best.predicted_speedup == pytest.approx(best.predicted_tokens_per_s * costly.t_ar(100))
    with pytest.raises(ValueError, match="verify_budget 3 is not in the replay's v_grid"):
        simulate(reps[2][0], 1, 3)
    with pytest.raises(ValueError, match="no replay for tree_topk 3"):
        rank_settings(reps, [StaticSetting(1, 3, 2)], flat, 100)


def test_paired_speed_ratio():
    """Geometric mean of per-answer speed ratios and a 95% interval on their logs (paired t, normal)."""
    import math

    from radar_ext.benchmark.aggregate import paired_speed_ratio
    ref = [10.0, 20.0, 30.0, 40.0]
    r = paired_speed_ratio([x * 0.9 for x in ref], ref)
    assert r["ratio"] == pytest.approx(0.9) and r["ci95"] == pytest.approx([0.9, 0.9]) and r["answers"] == 4
    logs = [math.log(q) for q in (0.8, 1.0, 0.9, 1.1)]
    m = sum(logs) / 4
    half = 1.96 * math.sqrt(sum((x - m) ** 2 for x in logs) / 3) / 2
    r = paired_speed_ratio([a * q for a, q in zip(ref, (0.8, 1.0, 0.9, 1.1))], ref)
    assert r["ratio"] == pytest.approx(math.exp(m))
    assert r["ci95"] == pytest.approx([math.exp(m - half), math.exp(m + half)])
    assert math.isnan(paired_speed_ratio([5.0], [4.0])["ci95"][0])
    with pytest.raises(ValueError, match="the same non-empty answers, got 1 and 2"):
        paired_speed_ratio([1.0], [1.0, 2.0])


def test_pick_distinct_skips_identical_trees():
    rows = [GridRow(StaticSetting(1, W, 4), 1.5, 10, 9.0 - 0.1 * i, 1.0) for i, W in enumerate((10, 8, 4))]
    rows += [GridRow(StaticSetting(2, 4, 4), 1.6, 9, 8.0, 1.0), GridRow(StaticSetting(2, 8, 4), 1.7, 8, 7.0, 1.0)]
    got = pick_distinct(rows, 3)
    assert [r.setting for r in got] == [StaticSetting(1, 10, 4), StaticSetting(2, 4, 4), StaticSetting(2, 8, 4)]
    assert pick_distinct(rows, 1) == rows[:1]


def test_tune_static_end_to_end(tiny, tmp_path):
    target, drafter, prompts = tiny
    cm = hand_model(prefix_lens=[4, 40], verify={p: {V: s(0.01 + 0.001 * V) for V in (1, 5, 9)} for p in (4, 40)},
                    tree_build={p: {V: s(1e-4) for V in (1, 5, 9)} for p in (4, 40)},
                    overhead={p: {V: s(1e-4) for V in (1, 5, 9)} for p in (4, 40)},
                    draft_first={2: {4: s(0.001)}, 3: {4: s(0.001)}}, draft_next={2: {4: s(0.001)}, 3: {4: s(0.001)}},
                    ar_step={4: s(0.008)}, ar_generate={4: s(0.009)})
    res = tune_static(target, drafter, cm, prompts, calls_list=[1, 2, 3], topk_list=[2, 3], budget_list=[2, 6],
                      max_new_tokens=20, top=2, time_prompts=1, repeats=1, warmup=0)
    assert len(res["timed"]) == 2 and len(res["table"]) == len(make_grid([1, 2, 3], [2, 3], [2, 6]))
    keys = ("max_draft_calls", "tree_topk", "verify_budget")
    table_keys = [[r[k] for k in keys] for r in res["table"]]
    where = [table_keys.index([t[k] for k in keys]) for t in res["timed"]]
    assert where[0] == 0 and where == sorted(where)   # the model's best, then the next distinct trees
    for t in res["timed"]:
        m = t["measured"]
        assert m["exact"] and m["answers"] == 1 and m["replay_cycles"] == m["cycles"]
    best = {k: res[k] for k in ("max_draft_calls", "tree_topk", "verify_budget")}
    assert best in [{k: t[k] for k in best} for t in res["timed"]]
    assert res["ar"]["exact"] and res["search"]["prompts"] == 2
    # paired against the pick, per timed answer; the pick against itself is exactly 1
    picked = next(t for t in res["timed"] if {k: t[k] for k in best} == best)
    assert picked["measured"]["vs_best"]["ratio"] == pytest.approx(1.0)
    for t in res["timed"]:
        v = t["measured"]["vs_best"]
        assert v["answers"] == 1 == len(t["measured"]["answer_tokens_per_s"])
        assert v["ratio"] <= 1.0 + 1e-12                          # the pick has the highest mean
    assert res["separated"] is False                               # one timed answer cannot separate them
    assert [{k: t[k] for k in best} for t in res["not_separated_from"]] == \
        [{k: t[k] for k in best} for t in res["timed"] if {k: t[k] for k in best} != best]
    path = tmp_path / "static_tree.json"
    path.write_text(json.dumps(res, default=str))
    assert {k: read_static_gs(path)[k] for k in best} == best
    with pytest.raises(ValueError, match=r"budget_list must be a non-empty list of ints >= 1, got \[0\]"):
        tune_static(target, drafter, cm, prompts, calls_list=[1], topk_list=[2], budget_list=[0])
    with pytest.raises(ValueError, match="prompts must not be empty"):
        tune_static(target, drafter, cm, [], calls_list=[1], topk_list=[2], budget_list=[2])


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["tune-static", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for opt in ("--calibration", "--max-draft-calls", "--verify-budget", "--tree-topk", "--install", "--top"):
        assert opt in out


@pytest.mark.parametrize("argv, message", [
    (["--verify-budget", "8,x"], "--verify-budget must be a comma-separated list of ints >= 1, got '8,x'"),
    (["--max-draft-calls", "0"], "--max-draft-calls must be a comma-separated list of ints >= 1, got '0'"),
    (["--tree-topk", "4,4"], "--tree-topk must not repeat values"),
    (["--top", "0"], "--top must be >= 1, got 0"),
    (["--max-new-tokens", "1"], "--max-new-tokens must be >= 2, got 1"),
    (["--prompts", "4", "--time-prompts", "5"], "--time-prompts must be <= --prompts (4), got 5"),
    (["--calibration", "/nonexistent/c.json"], "no calibration file '/nonexistent/c.json'; measure one with `radar calibrate`"),
    (["--temperature", "1"], "--temperature 1 needs --episodes recorded at that temperature"),
    (["--temperature", "-0.5"], "--temperature must be >= 0, got -0.5"),
    (["--episodes", "/tmp/x"], "--episodes is read only above --temperature 0"),
])
def test_cli_errors(capsys, argv, message):
    assert main(["tune-static"] + argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("radar tune-static: error: ") and message in err


def test_cli_bad_head(capsys, tmp_path):
    cal = hand_model().save(tmp_path / "c.json")
    assert main(["tune-static", "--calibration", str(cal), "--head", str(tmp_path)]) == 2
    assert "has no config.json" in capsys.readouterr().err


def _tiny_cost_model():
    """A hand-made calibration of the tiny model's W = 2 trees at this run's thread count."""
    return hand_model(prefix_lens=[4, 40], verify={p: {V: s(0.01 + 0.001 * V) for V in (1, 5, 9)} for p in (4, 40)},
                      tree_build={p: {V: s(1e-4) for V in (1, 5, 9)} for p in (4, 40)},
                      overhead={p: {V: s(1e-4) for V in (1, 5, 9)} for p in (4, 40)},
                      draft_first={2: {4: s(0.001)}}, draft_next={2: {4: s(0.001)}},
                      ar_step={4: s(0.008)}, ar_generate={4: s(0.009)}, machine={"torch_threads": torch.get_num_threads()})


def test_cli_run_writes_and_installs(tiny, tmp_path, monkeypatch, capsys):
    """`radar tune-static` end to end on the tiny model: --out and --install write the same
    static_tree.json, which the benchmark's static-gs reader accepts."""
    import types

    import radar_ext.models
    from radar_ext.commands import tune_static as cmd
    target, drafter, prompts = tiny
    head = tmp_path / "head"
    drafter.save_pretrained(head)
    monkeypatch.setattr(radar_ext.models, "load_default_target", lambda: (target, types.SimpleNamespace(eos_token_id=None)))
    monkeypatch.setattr(cmd, "sharegpt_prompts", lambda tok, n, split, max_tokens, seed: prompts[:n])
    cm = _tiny_cost_model()
    cal = cm.save(tmp_path / "cal.json")
    out = tmp_path / "out" / "static_tree.json"
    rc = main(["tune-static", "--calibration", str(cal), "--head", str(head), "--max-draft-calls", "1,2",
               "--tree-topk", "2", "--verify-budget", "2,4", "--prompts", "2", "--time-prompts", "1",
               "--max-new-tokens", "12", "--top", "2", "--repeats", "1", "--warmup", "0", "--out", str(out),
               "--install", "--no-progress"])
    assert rc == 0
    cap = capsys.readouterr()
    printed = cap.out
    assert "model ranking" in printed and "best: max_draft_calls=" in printed and "vs best [95%]" in printed
    # one timed answer per tree cannot tell two trees apart: said, with the rival's paired ratio
    assert "the pick is not separated from " in cap.err and "(1 timed answers)" in cap.err
    written = json.loads(out.read_text())
    assert json.loads((head / "static_tree.json").read_text()) == written
    assert written["search"]["calibration_file"] == str(cal) and written["search"]["head"] == str(head)
    got = read_static_gs(head / "static_tree.json")
    assert {k: got[k] for k in ("max_draft_calls", "tree_topk", "verify_budget")} == \
        {k: written["best"][k] for k in ("max_draft_calls", "tree_topk", "verify_budget")}


def synthetic_episodes(temperature=1.0, W=2, N=3, budgets=(1, 2, 4, 8), C=6, seed=0):
    """Episodes whose expected (accepted + 1) at (n, V) is known: E = 1 + 0.1 n + 0.05 * budget index."""
    from radar_ext.training.episodes import Episodes
    nV = len(budgets)
    dist = torch.zeros(C, N, nV, N + 1)
    for n in range(N):
        for v in range(nV):
            p1 = 0.1 * (n + 1) + 0.05 * v          # P(L = 1); else L = 0
            dist[:, n, v, 1], dist[:, n, v, 0] = p1, 1 - p1
    g = torch.Generator().manual_seed(seed)
    meta = {"tree_topk": W, "max_draft_calls": N, "budgets": list(budgets), "temperature": temperature}
    return Episodes(meta, {"accept_dist": dist, "seq_len": torch.randint(5, 40, (C,), generator=g),
                           "temperature": torch.full((C,), float(temperature))})


def test_rank_from_episodes():
    """tau = mean expected (accepted + 1) at (n, V) (a V at or above the pool reads the smallest budget covering it),
    ranked by the same cost model; a grid the episodes cannot answer is refused by name."""
    from radar_ext.static_search import rank_from_episodes
    ep = synthetic_episodes()
    flat = hand_model(verify={p: {V: s(0.010) for V in (1, 5, 9)} for p in (10, 40)},
                      draft_first={2: {10: s(0.0005), 40: s(0.0005)}}, draft_next={2: {10: s(0.0005), 40: s(0.0005)}})
    settings = make_grid([1, 2, 3], [2], [1, 2, 8])    # V cut to the pool: 2 nodes after 1 call, 6 after 2
    rows = rank_from_episodes(ep, settings, flat, 20)
    by = {(r.setting.max_draft_calls, r.setting.verify_budget): r for r in rows}
    assert set(by) == {(1, 1), (1, 2), (2, 1), (2, 2), (2, 6), (3, 1), (3, 2), (3, 8)}
    assert by[(1, 2)].tau == pytest.approx(1 + 0.1 + 0.05)                 # budget 2 is index 1
    assert by[(2, 6)].tau == pytest.approx(1 + 0.2 + 0.15)                 # the whole pool: read at budget 8
    assert by[(3, 8)].tau == pytest.approx(1 + 0.3 + 0.15)
    assert by[(3, 1)].tau == pytest.approx(1 + 0.3)
    assert all(r.cycles == 6 for r in rows)
    assert [r.predicted_tokens_per_s for r in rows] == sorted((r.predicted_tokens_per_s for r in rows), reverse=True)
    with pytest.raises(ValueError, match="tree_topk 3: the episodes were recorded at tree_topk 2"):
        rank_from_episodes(ep, [StaticSetting(1, 3, 2)], flat, 20)
    with pytest.raises(ValueError, match="max_draft_calls 4 is above the episodes' 3"):
        rank_from_episodes(ep, [StaticSetting(4, 2, 2)], flat, 20)
    with pytest.raises(ValueError, match=r"verify_budget 3 is not among the episodes' budgets \[1, 2, 4, 8\]"):
        rank_from_episodes(ep, [StaticSetting(2, 2, 3)], flat, 20)


def test_tune_static_at_a_temperature(tiny):
    """T > 0: ranked on episodes, timed by sampling (no exactness, every timed tree eligible), the pick and
    the protocol say so; the episodes must be there and at that temperature."""
    target, drafter, prompts = tiny
    cm = hand_model(prefix_lens=[4, 40], verify={p: {V: s(0.01 + 0.001 * V) for V in (1, 5, 9)} for p in (4, 40)},
                    tree_build={p: {V: s(1e-4) for V in (1, 5, 9)} for p in (4, 40)},
                    overhead={p: {V: s(1e-4) for V in (1, 5, 9)} for p in (4, 40)},
                    draft_first={2: {4: s(0.001)}}, draft_next={2: {4: s(0.001)}},
                    ar_step={4: s(0.008)}, ar_generate={4: s(0.009)})
    ep = synthetic_episodes()
    res = tune_static(target, drafter, cm, prompts, calls_list=[1, 2], topk_list=[2], budget_list=[1, 2],
                      max_new_tokens=12, top=2, time_prompts=2, repeats=1, warmup=0, temperature=1.0, episodes=ep)
    assert res["temperature"] == 1.0 and res["search"]["ranked_on"] == "episodes"
    assert "at temperature 1" in res["chosen_by"] and len(res["timed"]) == 2
    for t in res["timed"]:
        m = t["measured"]
        assert m["exact"] is None and m["answers"] == 2 and "replay_cycles" not in m
    best = {k: res[k] for k in ("max_draft_calls", "tree_topk", "verify_budget")}
    picked = next(t for t in res["timed"] if {k: t[k] for k in best} == best)
    assert picked["measured"]["tokens_per_s_mean"] == max(t["measured"]["tokens_per_s_mean"] for t in res["timed"])
    assert res["ar"]["exact"] is None
    with pytest.raises(ValueError, match="temperature 1 needs episodes recorded at that temperature"):
        tune_static(target, drafter, cm, prompts, calls_list=[1], topk_list=[2], budget_list=[1], temperature=1.0)
    with pytest.raises(ValueError, match=r"the episodes were recorded at temperature\(s\) \[0.5\], not 1"):
        tune_static(target, drafter, cm, prompts, calls_list=[1], topk_list=[2], budget_list=[1], temperature=1.0,
                    episodes=synthetic_episodes(temperature=0.5))


# ------------------------------------------------------------------------- --policy: the training-free opponents
@pytest.mark.parametrize("argv, message", [
    (["--policy", "pmin", "--values", "0.2,x"], "--values must be a comma-separated list of numbers, got '0.2,x'"),
    (["--policy", "ema", "--max-draft-calls", "4,8"], "--max-draft-calls with --policy is the one cap on draft calls"),
    (["--policy", "goodput"], "--policy goodput needs --episodes"),
    (["--policy", "goodput", "--episodes", "/tmp/x", "--values", "1"], "goodput has no knob grid of its own"),
    (["--policy", "goodput", "--episodes", "/tmp/x", "--verify-budget", "8,16"], "the one cap on V"),
    (["--policy", "pmin", "--episodes", "/tmp/x"], "--episodes is read by --policy goodput only"),
    (["--values", "0.3"], "--values is the knob grid of --policy pmin / ema"),
])
def test_cli_policy_errors(capsys, argv, message):
    assert main(["tune-static"] + argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("radar tune-static: error: ") and message in err


@pytest.mark.parametrize("kind, extra", [("pmin", ["--values", "0.1,0.9"]), ("ema", ["--values", "0,2"])])
def test_cli_policy_run_writes_a_setting_the_bench_reads(tiny, tmp_path, monkeypatch, capsys, kind, extra):
    """`radar tune-static --policy KIND` on the tiny model: every candidate timed and exact, the best written and
    installed beside the head, and the bench method builds the same policy from it."""
    import types

    import radar_ext.models
    from radar_ext.benchmark.methods import METHODS, BenchContext, BenchOptions
    from radar_ext.commands import tune_static as cmd
    target, drafter, prompts = tiny
    head = tmp_path / "head"
    drafter.save_pretrained(head)
    monkeypatch.setattr(radar_ext.models, "load_default_target", lambda: (target, types.SimpleNamespace(eos_token_id=None)))
    monkeypatch.setattr(cmd, "sharegpt_prompts", lambda tok, n, split, max_tokens, seed: prompts[:n])
    out = tmp_path / f"{kind}.json"
    rc = main(["tune-static", "--policy", kind, "--head", str(head), "--tree-topk", "2", "--verify-budget", "3",
               "--max-draft-calls", "3", "--prompts", "2", "--time-prompts", "2", "--max-new-tokens", "12",
               "--repeats", "1", "--warmup", "0", "--out", str(out), "--install", "--no-progress", *extra])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "vs best [95%]" in printed and "best: " in printed
    written = json.loads(out.read_text())
    assert json.loads((head / f"{kind}.json").read_text()) == written
    assert written["policy"] == kind and len(written["timed"]) == 2
    assert all(r["measured"]["exact"] for r in written["timed"]) and written["ar"]["exact"]
    knob = "p_min" if kind == "pmin" else "margin"
    assert written["policy_kwargs"][knob] in (float(extra[1].split(",")[0]), float(extra[1].split(",")[1]))
    assert written["policy_kwargs"]["max_draft_calls"] == 3 and (written["tree_topk"], written["verify_budget"]) == (2, 3)
    ctx = BenchContext(target, None, None, 0, BenchOptions(drafter_path=str(head)))
    m = METHODS[kind](ctx)
    assert getattr(m.decoder.policy, knob) == written["policy_kwargs"][knob]
    assert (m.decoder.tree_topk, m.decoder.verify_budget) == (2, 3)


def test_cli_at_a_temperature_defaults_to_the_episodes_budgets(tiny, tmp_path, monkeypatch, capsys):
    """Above --temperature 0 without --verify-budget the grid is the episodes' own budgets (the default static
    grid holds budgets the episodes never recorded, which could only be refused)."""
    import types

    import radar_ext.models
    import radar_ext.training.episodes
    from radar_ext.commands import tune_static as cmd
    target, drafter, prompts = tiny
    head = tmp_path / "head"
    drafter.save_pretrained(head)
    monkeypatch.setattr(radar_ext.models, "load_default_target", lambda: (target, types.SimpleNamespace(eos_token_id=None)))
    monkeypatch.setattr(cmd, "sharegpt_prompts", lambda tok, n, split, max_tokens, seed: prompts[:n])
    monkeypatch.setattr(radar_ext.training.episodes, "load_episodes",
                        lambda dirs, split: synthetic_episodes(temperature=1.0, W=2, N=3, budgets=(1, 2, 4, 8)))
    cm = _tiny_cost_model()
    cal = cm.save(tmp_path / "cal.json")
    out = tmp_path / "static_tree.json"
    rc = main(["tune-static", "--calibration", str(cal), "--head", str(head), "--temperature", "1", "--episodes", "ep",
               "--tree-topk", "2", "--max-draft-calls", "1,2", "--prompts", "2", "--time-prompts", "1",
               "--max-new-tokens", "12", "--top", "1", "--repeats", "1", "--warmup", "0", "--out", str(out), "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    assert json.loads(out.read_text())["search"]["verify_budget"] == [1, 2, 4, 8]


def _batched_cost_model():
    """_tiny_cost_model plus a batched verify: 2 rows cost 1.5x one row's plain step, 1.2x-3x one row's verify."""
    return _tiny_cost_model().__class__(**{**vars(_tiny_cost_model()), "batch": {
        1: {"plain": 0.010, "verify": {1: 0.010, 9: 0.020}}, 2: {"plain": 0.015, "verify": {1: 0.012, 9: 0.060}}}})


def test_batched_cost_model_and_ranking():
    """At B rows a cycle costs B times a row's drafting, building and committing plus the batched verify
    (T_verify(V) x the calibrated ratio); tokens/s counts the B rows; an uncalibrated B is refused by name."""
    from radar_ext.calibration import CalibrationError
    cm = _batched_cost_model()
    assert cm.verify_ratio(5, 1) == 1.0 and cm.verify_ratio(1, 2) == pytest.approx(1.2)
    assert cm.verify_ratio(5, 2) == pytest.approx(1.2 + (3.0 - 1.2) * 4 / 8)
    row = cm.t_cycle(2, 5, 2, 10) - cm.t_verify(5, 10)
    assert cm.t_cycle(2, 5, 2, 10, batch_size=2) == pytest.approx(2 * row + cm.t_verify(5, 10) * cm.verify_ratio(5, 2))
    assert cm.predicted_tokens_per_second(1.5, 2, 5, 2, 10, 2) == pytest.approx(3.0 / cm.t_cycle(2, 5, 2, 10, 2))
    with pytest.raises(CalibrationError, match=r"batch size 4 was not calibrated \(calibrated: \[1, 2\]\)"):
        cm.verify_ratio(5, 4)
    # a steep batched verify moves the pick to a smaller tree
    settings = make_grid([1, 2, 4], [2], [2, 4, 8])
    reps = {2: [synthetic_replay(2, sorted({x.verify_budget for x in settings}))]}
    one = rank_settings(reps, settings, cm, 10)[0]
    two = rank_settings(reps, settings, cm, 10, batch_size=2)[0]
    assert one.setting.verify_budget > two.setting.verify_budget, (one, two)
    assert two.predicted_tokens_per_s == pytest.approx(cm.predicted_tokens_per_second(
        two.tau, two.setting.max_draft_calls, two.setting.verify_budget, 2, 10, 2))


def test_tune_static_for_a_batch(tiny, tmp_path):
    """--batch-size 2: ranked with the batched costs, timed on batches of 2 prompts, every row of ours checked
    against its single-row greedy answer (HF's batched rows are not checked); the result installs under
    by_batch, which static-gs-b reads per B (the top-level tree at B = 1)."""
    from radar_ext.benchmark.methods import MethodUnavailable, read_static_gs_batch
    from radar_ext.commands.tune_static import merge_installed
    target, drafter, prompts = tiny
    three = prompts + [prompts[1][:, :5]]
    cm = _batched_cost_model()
    res = tune_static(target, drafter, cm, three, calls_list=[1, 2], topk_list=[2], budget_list=[2, 6],
                      max_new_tokens=12, top=2, repeats=1, warmup=0, batch_size=2)
    assert res["batch_size"] == 2 == res["search"]["batch_size"]
    for t in res["timed"]:
        m = t["measured"]
        assert m["exact"] is True and m["answers"] == 2 and m["replay_cycles"] == m["cycles"]  # batches of 2, then 1
    assert res["ar"]["exact"] is None and res["ar"]["answers"] == 2
    path = tmp_path / "static_tree.json"
    with pytest.raises(ValueError, match="holds no B = 1 tree yet"):
        merge_installed(path, res, 2)
    one = dict(res, max_draft_calls=1, tree_topk=2, verify_budget=2, batch_size=1)
    path.write_text(json.dumps(merge_installed(path, one, 1)))
    path.write_text(json.dumps(merge_installed(path, res, 2)))
    installed = json.loads(path.read_text())
    assert "table" not in installed["by_batch"]["2"] and installed["max_draft_calls"] == 1
    keys = ("max_draft_calls", "tree_topk", "verify_budget")
    assert {k: read_static_gs_batch(path, 2)[k] for k in keys} == {k: res[k] for k in keys}
    assert {k: read_static_gs_batch(path, 1)[k] for k in keys} == {"max_draft_calls": 1, "tree_topk": 2, "verify_budget": 2}
    path.write_text(json.dumps(merge_installed(path, one, 1)))  # re-installing B = 1 keeps by_batch
    assert "2" in json.loads(path.read_text())["by_batch"]
    with pytest.raises(MethodUnavailable, match=r"no tree tuned for batch size 4 \(tuned: \[2\]\)"):
        read_static_gs_batch(path, 4)
    with pytest.raises(ValueError, match="batch_size must be an int >= 1, got 0"):
        tune_static(target, drafter, cm, three, calls_list=[1], topk_list=[2], budget_list=[2], batch_size=0)
    with pytest.raises(ValueError, match="batch size 4 was not calibrated"):
        tune_static(target, drafter, cm, three, calls_list=[1], topk_list=[2], budget_list=[2], batch_size=4)
