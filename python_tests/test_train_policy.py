"""Offline controller training on synthetic episodes where continuing is clearly better (or clearly
worse): REINFORCE (RADAR) and the LTD rounds learn it; expected throughput is computed exactly;
resume; CLI help and errors."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import load_bench_script
from radar_ext.cli import main
from radar_ext.policies import PolicyCosts, load_policy
from radar_ext.training.episodes import FORMAT, load_episodes
from radar_ext.training.train_policy import (TrainPolicyConfig, evaluate, expected_tokens, ltd_choices,
                                             oracle_throughput, policy_throughput, radar_choices, static_grid, subset,
                                             train, _check)

N, W, BUDGETS, K = 4, 3, (4, 8, 16), 8
COSTS = {"t_draft": 0.002, "t_policy": 1e-5, "t_ar": 0.02, "t_verify": {"V": [1, 16], "seconds": [0.02, 0.02]}}


def write_episodes(path, continue_pays, cycles=(192, 64), seed=0, temperature=0.0, fmt=FORMAT):
    """Continue pays: every draft call adds one accepted token (L = n). Otherwise nothing is accepted
    beyond the first call's level. "mixed": even cycles are the first kind, odd ones the second, and
    only the history features tell them apart (the previous cycle accepted 4 tokens of its best guess,
    or none). Beam scores are noise the policy must learn to ignore. fmt 1: the fields of format 1 only."""
    g = torch.Generator().manual_seed(seed)
    path.mkdir(parents=True, exist_ok=True)
    meta = {"format": fmt, "tree_topk": W, "max_draft_calls": N, "budgets": list(BUDGETS), "temperature": temperature,
            "pool_topk": K, "head": "synthetic", "target": "synthetic"}
    (path / "episodes_meta.json").write_text(json.dumps(meta))
    for split, C in zip(("train", "val"), cycles):
        good = (torch.arange(C) % 2 == 0) if continue_pays == "mixed" else torch.full((C,), bool(continue_pays))
        dist = torch.zeros(C, N, len(BUDGETS), N + 1)
        for n in range(N):
            dist[good, n, :, n + 1] = 1.0
            dist[~good, n, :, 0] = 1.0
        child = torch.full((C, N, W, W), -float("inf"))
        child[:, 0, 0] = -torch.rand(C, W, generator=g)
        child[:, 1:] = -torch.rand(C, N - 1, W, W, generator=g) * 5
        t = {"beam_scores": -torch.rand(C, N, W, generator=g).sort(-1).values * 4, "child_scores": child,
             "pool_top": -torch.rand(C, N, K, generator=g).sort(-1).values * 6, "accept_dist": dist,
             "t_draft": torch.full((C, N), 0.002), "t_verify": torch.full((C,), 0.02),
             "verify_nodes": torch.full((C,), 30), "seq_len": torch.randint(10, 300, (C,), generator=g),
             "accepted_len": dist[:, -1, -1].argmax(-1), "prompt": torch.zeros(C, dtype=torch.int64)}
        if fmt >= 2:
            if continue_pays == "mixed":
                gf = good.float()
                hist = dict(hist_accept_ema=gf * 3, hist_accept_last=gf * 4, hist_best_prob=0.2 + 0.6 * gf,
                            hist_best_accepted=gf)
            else:
                hist = {k: torch.rand(C, generator=g) * 4 for k in ("hist_accept_ema", "hist_accept_last")}
                hist.update(hist_best_prob=torch.rand(C, generator=g),
                            hist_best_accepted=(torch.rand(C, generator=g) > 0.5).float())
            t.update(hist, hist_drafted=torch.randint(1, 50, (C,), generator=g), batch_size=torch.ones(C, dtype=torch.int64),
                     lookup_match_len=torch.zeros(C, dtype=torch.int64), lookup_count=torch.zeros(C, dtype=torch.int64),
                     lookup_best_score=torch.zeros(C))
        save_file(t, str(path / f"{split}_00000.safetensors"))
    (path / "costs.json").write_text(json.dumps(COSTS))
    return path


def test_expected_throughput_is_exact(tmp_path):
    ep = load_episodes(write_episodes(tmp_path / "e", True, cycles=(8, 4)), "val")
    costs = PolicyCosts.load(dict(COSTS, t_verify={"V": [1, 16], "seconds": [0.02, 0.05]}))

    def t_verify(n, v):  # the pool after n calls has W + (n - 1) W^2 nodes: a bigger V verifies them all
        return costs.t_verify(min(v, W + (n - 1) * W * W))

    grid = static_grid(ep, costs)
    # static (n, V): L = n always -> (n + 1) / (n t_draft + T_verify(V))
    for n in range(1, N + 1):
        for k, v in enumerate(BUDGETS):
            assert float(grid[n - 1, k]) == pytest.approx((n + 1) / (n * 0.002 + t_verify(n, v)))
    assert t_verify(1, 16) < costs.t_verify(16)
    n = torch.tensor([1, 2, 4, 4])
    v = torch.tensor([0, 2, 2, 1])
    res = policy_throughput(ep, costs, n, v, size_decision=True)
    tokens = 2 + 3 + 5 + 5
    secs = sum(k * 0.002 + t_verify(k, BUDGETS[j]) + (min(k, N - 1) + 1) * 1e-5 for k, j in zip(n.tolist(), v.tolist()))
    assert res["throughput"] == pytest.approx(tokens / secs) and res["mean_draft_calls"] == 2.75


def test_oracle_is_the_best_assignment(tmp_path):
    """oracle_throughput equals the best of every per-cycle assignment of (n, V), found by brute force
    on a few cycles with random accepted-length distributions; with v_idx only n is chosen."""
    import itertools
    ep_dir = write_episodes(tmp_path / "e", True, cycles=(8, 4))
    ep = load_episodes(ep_dir, "val")
    g = torch.Generator().manual_seed(3)
    d = torch.rand(ep["accept_dist"].shape, generator=g) ** 4
    ep.tensors["accept_dist"] = d / d.sum(-1, keepdim=True)
    costs = PolicyCosts.load(dict(COSTS, t_verify={"V": [1, 16], "seconds": [0.02, 0.05]}))
    E = expected_tokens(ep)
    nV = len(BUDGETS)
    actions = [(n, v) for n in range(1, N + 1) for v in range(nV)]
    best = max(policy_throughput(ep, costs, torch.tensor([a[0] for a in ch]), torch.tensor([a[1] for a in ch]),
                                 True)["throughput"] for ch in itertools.product(actions, repeat=ep.cycles))
    assert oracle_throughput(ep, costs)["throughput"] == pytest.approx(best, rel=1e-12)
    assert best > float(static_grid(ep, costs).max())  # the cycles differ, so knowing them pays
    best_n = max(policy_throughput(ep, costs, torch.tensor(ch), torch.full((ep.cycles,), 1), False)["throughput"]
                 for ch in itertools.product(range(1, N + 1), repeat=ep.cycles))
    assert oracle_throughput(ep, costs, v_idx=1)["throughput"] == pytest.approx(best_n, rel=1e-12)
    assert E.shape[0] == 4


@pytest.mark.parametrize("continue_pays", [True, False])
def test_radar_reinforce_learns_when_to_stop(tmp_path, continue_pays):
    ep_dir = write_episodes(tmp_path / "e", continue_pays)
    cfg = TrainPolicyConfig(episodes=ep_dir, out_dir=tmp_path / "run", kind="radar", costs=str(ep_dir / "costs.json"),
                            epochs=25, batch_size=32, lr=3e-3, verify_budget=8, seed=1)
    best = train(cfg, log=lambda *_: None)
    policy = load_policy(best)
    n = radar_choices(policy, load_episodes(ep_dir, "val"))
    want = N if continue_pays else 1
    assert (n == want).float().mean() > 0.95, n.tolist()
    rep = json.loads((tmp_path / "run" / "report.json").read_text())
    assert rep["best_static_at_V"]["max_draft_calls"] == want
    assert rep["policy"]["throughput"] >= 0.99 * rep["best_static_at_V"]["throughput"]


@pytest.mark.parametrize("continue_pays", [True, False])
def test_ltd_rounds_learn_depth_and_budget(tmp_path, continue_pays):
    ep_dir = write_episodes(tmp_path / "e", continue_pays)
    costs = dict(COSTS, t_verify={"V": [1, 16], "seconds": [0.02, 0.05]})  # verifying more costs more: V=4 is best
    (ep_dir / "costs.json").write_text(json.dumps(costs))
    cfg = TrainPolicyConfig(episodes=ep_dir, out_dir=tmp_path / "run", kind="ltd", costs=str(ep_dir / "costs.json"),
                            epochs=8, batch_size=32, lr=1e-2, seed=1)
    best = train(cfg, log=lambda *_: None)
    policy = load_policy(best)
    res = evaluate(policy, load_episodes(ep_dir, "val"), PolicyCosts.load(costs))
    assert res["mean_draft_calls"] == (N if continue_pays else 1)
    assert res["mean_verify_budget"] == BUDGETS[0]
    rep = json.loads((tmp_path / "run" / "report.json").read_text())
    assert rep["policy"]["throughput"] >= 0.99 * rep["best_static"]["throughput"]


def test_resume_and_changed_settings(tmp_path):
    ep_dir = write_episodes(tmp_path / "e", True, cycles=(64, 16))
    cfg = TrainPolicyConfig(episodes=ep_dir, out_dir=tmp_path / "run", kind="radar", costs=str(ep_dir / "costs.json"),
                            epochs=2, batch_size=32, verify_budget=8)
    train(cfg, log=lambda *_: None)
    first = load_file(str(tmp_path / "run" / "best" / "model.safetensors"))
    logs = []
    train(cfg, log=logs.append)
    assert any("resumed" in m for m in logs)
    again = load_file(str(tmp_path / "run" / "best" / "model.safetensors"))
    assert first.keys() == again.keys() and all(torch.equal(first[k], again[k]) for k in first)
    cfg.lr = 0.5
    with pytest.raises(ValueError, match="written with other settings"):
        train(cfg, log=lambda *_: None)
    cfg.lr, cfg.verify_budget = None, 5
    with pytest.raises(ValueError, match=r"--verify-budget 5 is not in the episodes' budget set \[4, 8, 16\]"):
        train(TrainPolicyConfig(episodes=ep_dir, out_dir=tmp_path / "run2", kind="radar",
                                costs=str(ep_dir / "costs.json"), verify_budget=5), log=lambda *_: None)


@pytest.mark.parametrize("command", ["collect", "train-policy"])
def test_cli_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    assert "usage: radar " + command in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["collect", "--budgets", "8,4"], "--budgets must be distinct increasing integers >= 1, got '8,4'"),
    (["collect", "--budgets", "4,x"], "--budgets must be comma separated integers"),
    (["collect", "--max-draft-calls", "0"], "--max-draft-calls must be an int >= 1, got 0"),
    (["collect", "--val-fraction", "1.5"], "--val-fraction must be in [0, 1), got 1.5"),
    (["collect", "--temperature", "-1"], "--temperature must be >= 0 (0 = greedy), got -1.0"),
    (["collect", "--questions", "/nonexistent/q.jsonl"],
     "--questions must be a Spec-Bench .jsonl file, got '/nonexistent/q.jsonl' (no such file)"),
    (["train-policy", "--kind", "radar", "--episodes", "/nonexistent/eps"], "is not an episodes directory"),
    (["train-policy", "--kind", "ltd", "--epochs", "0"], "--epochs must be an int >= 1, got 0"),
    (["train-policy", "--kind", "radar", "--gamma", "2"], "--gamma must be in (0, 1], got 2.0"),
    (["train-policy", "--kind", "ltd", "--entropy", "-0.1"], "--entropy must be a finite number >= 0, got -0.1"),
    (["train-policy", "--kind", "ltd", "--prefix-len", "0"], "--prefix-len must be a finite number of tokens > 0"),
    (["generate", "--prompt", "hi", "--drafter", "ngram", "--policy", "radar"], "--policy radar needs --drafter eagle"),
    (["generate", "--prompt", "hi", "--drafter", "eagle", "--policy", "/nonexistent/policy"],
     "--policy must be static, radar, ltd or a saved policy directory"),
    (["generate", "--prompt", "hi", "--drafter", "eagle", "--policy", "ltd", "--max-draft-calls", "3"],
     "--max-draft-calls sets the static policy's depth"),
])
def test_cli_errors(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_cli_train_policy_writes_policy(tmp_path, capsys):
    ep_dir = write_episodes(tmp_path / "e", False, cycles=(32, 16))
    rc = main(["train-policy", "--kind", "ltd", "--episodes", str(ep_dir), "--out-dir", str(tmp_path / "run"),
               "--costs", str(ep_dir / "costs.json"), "--epochs", "1", "--rounds", "1"])
    out = capsys.readouterr().out
    assert rc == 0 and "best static: n=" in out and "learned ltd:" in out
    assert load_policy(tmp_path / "run" / "best").kind == "ltd"


def test_episodes_of_several_collections_merge(tmp_path):
    """Two collections (say T=0 and T=1) with the same W, N and budgets train together: their cycles
    concatenate in the order given; collections that differ in the tree shape are refused by name."""
    a = write_episodes(tmp_path / "a", True, cycles=(8, 4), seed=1)
    b = write_episodes(tmp_path / "b", False, cycles=(6, 2), seed=2)
    meta_b = json.loads((b / "episodes_meta.json").read_text())
    (b / "episodes_meta.json").write_text(json.dumps(dict(meta_b, temperature=1.0)))
    ep_a, ep_b = load_episodes(a, "train"), load_episodes(b, "train")
    both = load_episodes([a, b], "train")
    assert both.cycles == 14 and both.meta["temperature"] == [0.0, 1.0]
    for k in ("accept_dist", "beam_scores", "child_scores", "seq_len"):
        assert torch.equal(both[k], torch.cat([ep_a[k], ep_b[k]]))
    assert both["temperature"].tolist() == [0.0] * 8 + [1.0] * 6
    assert load_episodes([a, b], "val").cycles == 6
    (b / "episodes_meta.json").write_text(json.dumps(dict(meta_b, budgets=[4, 8, 32])))
    with pytest.raises(ValueError, match=r"cannot be merged with .*budgets \(\[4, 8, 32\] vs \[4, 8, 16\]\)"):
        load_episodes([a, b], "train")
    with pytest.raises(ValueError, match="at least one"):
        load_episodes([], "train")


@pytest.mark.parametrize("kind", ["radar", "ltd"])
def test_policies_learn_a_rule_per_temperature(tmp_path, kind):
    """Deeper drafting pays in the T=0 collection and not in the T=1 one, with the same score
    statistics: only the temperature feature tells them apart, and each trained policy must follow
    its temperature's best static depth; the report scores each temperature on its own."""
    a = write_episodes(tmp_path / "t0", True, cycles=(192, 64), seed=1, temperature=0.0)
    b = write_episodes(tmp_path / "t1", False, cycles=(192, 64), seed=2, temperature=1.0)
    costs = dict(COSTS, t_verify={"V": [1, 16], "seconds": [0.02, 0.05]})
    (a / "costs.json").write_text(json.dumps(costs))
    extra = dict(epochs=30, lr=3e-3, verify_budget=8) if kind == "radar" else dict(epochs=8, lr=1e-2)
    cfg = TrainPolicyConfig(episodes=[a, b], out_dir=tmp_path / "run", kind=kind, costs=str(a / "costs.json"),
                            batch_size=32, seed=1, **extra)
    policy = load_policy(train(cfg, log=lambda *_: None))
    val = load_episodes([a, b], "val")
    res = evaluate(policy, val, PolicyCosts.load(costs), v_idx_fixed=BUDGETS.index(8))
    by_t = res["by_temperature"]
    assert set(by_t) == {"0", "1"} and by_t["0"]["cycles"] == by_t["1"]["cycles"] == 64
    assert by_t["0"]["mean_draft_calls"] == N and by_t["1"]["mean_draft_calls"] == 1
    assert min(r["ratio"] for r in by_t.values()) >= 0.99
    assert res["score"] == pytest.approx((by_t["0"]["ratio"] * by_t["1"]["ratio"]) ** 0.5)
    rep = json.loads((tmp_path / "run" / "report.json").read_text())
    assert set(rep["policy"]["by_temperature"]) == {"0", "1"}


def test_cli_train_policy_on_two_collections(tmp_path, capsys):
    a = write_episodes(tmp_path / "a", True, cycles=(32, 16), seed=1)
    b = write_episodes(tmp_path / "b", True, cycles=(32, 16), seed=2)
    rc = main(["train-policy", "--kind", "ltd", "--episodes", str(a), str(b), "--out-dir", str(tmp_path / "run"),
               "--costs", str(a / "costs.json"), "--epochs", "1", "--rounds", "1"])
    assert rc == 0 and "learned ltd:" in capsys.readouterr().out
    assert load_policy(tmp_path / "run" / "best").kind == "ltd"


def write_cost_sensitive_episodes(path, cycles=(192, 64), seed=0):
    """Accepted length L = min(n, j + 1) at stopping point n and budget index j: a deeper and bigger
    tree accepts more, so which (n, V) is best depends only on the cost curve (at COSTS' curve
    n = 2, V = 8; with a flat verify curve n = 3, V = 16; with a steep one n = 1)."""
    path = write_episodes(path, True, cycles=cycles, seed=seed)
    for split, C in zip(("train", "val"), cycles):
        f = path / f"{split}_00000.safetensors"
        t = load_file(str(f))
        dist = torch.zeros(C, N, len(BUDGETS), N + 1)
        for n in range(1, N + 1):
            for j in range(len(BUDGETS)):
                dist[:, n - 1, j, min(n, j + 1)] = 1.0
        t["accept_dist"], t["accepted_len"] = dist, dist[:, -1, -1].argmax(-1)
        save_file(t, str(f))
    return path


def test_perturbed_cost_curves():
    from radar_ext.training.train_policy import cost_curves, perturbed_costs
    home = PolicyCosts.load(dict(COSTS, t_verify={"V": [1, 4, 16], "seconds": [0.02, 0.026, 0.05]}))
    c = perturbed_costs(home, 2.0, 0.5, 3.0)
    assert c.t_draft == pytest.approx(0.004) and c.t_ar == home.t_ar and c.t_policy == home.t_policy
    assert c.verify_seconds == pytest.approx([0.01, 0.01 + 0.018, 0.01 + 0.09])
    curves = cost_curves(home, 5, 1.0, seed=3)
    assert len(curves) == 5 and curves[0][1] is home and curves[0][0] == "calibrated"
    assert [n for n, _ in curves] == [n for n, _ in cost_curves(home, 5, 1.0, seed=3)]  # seeded
    for _, cc in curves[1:]:
        assert 0.999 / 2.72 < cc.t_draft / home.t_draft < 2.72 * 1.001
    assert cost_curves(home, 1, 1.0, seed=3) == [("calibrated", home)]


def test_ltd_trained_on_cost_curves_follows_this_machines_curve(tmp_path):
    """An LTD policy trained on perturbed cost curves takes each curve's best depth when its cost
    features are set to that curve (LtdPolicy.from_pretrained(costs=...)): two draft calls at the
    calibrated curve, one where verifying is steep, at least two where it is flat."""
    from radar_ext.training.train_policy import perturbed_costs
    ep_dir = write_cost_sensitive_episodes(tmp_path / "e")
    home = dict(COSTS, t_verify={"V": [1, 16], "seconds": [0.02, 0.05]})
    (ep_dir / "costs.json").write_text(json.dumps(home))
    home_c = PolicyCosts.load(home)
    flat, steep = perturbed_costs(home_c, 1.0, 1.0, 0.25), perturbed_costs(home_c, 1.0, 1.0, 4.0)
    val = load_episodes(ep_dir, "val")
    want = {"home": (2, 8), "flat": (3, 16), "steep": (1, None)}
    for name, c in (("home", home_c), ("flat", flat), ("steep", steep)):  # the synthetic design holds
        g = static_grid(val, c)
        bn, bv = divmod(int(g.argmax()), len(BUDGETS))
        assert bn + 1 == want[name][0] and (want[name][1] is None or BUDGETS[bv] == want[name][1]), name
    cfg = TrainPolicyConfig(episodes=ep_dir, out_dir=tmp_path / "run12", kind="ltd", costs=str(ep_dir / "costs.json"),
                            epochs=30, batch_size=32, lr=3e-3, seed=1, cost_curves=12, cost_jitter=1.6)
    best = train(cfg, log=lambda *_: None)
    res = {}
    for name, c in (("home", home_c), ("flat", flat), ("steep", steep)):
        r = evaluate(load_policy(best, costs=c), val, c)
        res[name] = (r["mean_draft_calls"], r["throughput"] / float(static_grid(val, c).max()))
    assert res["home"][0] == 2 and res["home"][1] >= 0.98, res
    assert res["steep"][0] == 1 and res["steep"][1] >= 0.98, res
    assert res["flat"][0] >= 2 and res["flat"][1] >= 0.9, res
    rep = json.loads((tmp_path / "run12" / "report.json").read_text())
    assert len(rep["cost_curves"]) == 12 and rep["cost_curves"][0]["curve"] == "calibrated"


def test_ltd_with_batch_costs_drafts_alone_and_skips_in_a_batch(tmp_path):
    """`--batch-costs --skip`: one policy trained on the calibrated curve and a row's curve at B = 8, where
    drafting pays alone (each call adds a token) but a row of 8 pays 8 draft calls and a verify 20x dearer:
    it drafts the four calls at B = 1 and skips at B = 8, read from its cost features."""
    from radar_ext.policies import CostInfo, History, PreDraftStep
    ep_dir = write_episodes(tmp_path / "e", True)
    costs = dict(COSTS, per_batch={"8": {"plain": 1.5, "V": [1, 16], "verify": [20.0, 20.0]}})
    (ep_dir / "batch.json").write_text(json.dumps(costs))
    cfg = TrainPolicyConfig(episodes=ep_dir, out_dir=tmp_path / "run", kind="ltd", costs=str(ep_dir / "batch.json"),
                            epochs=8, lr=1e-2, batch_size=32, seed=1, skip=True, batch_costs=True)
    policy = load_policy(train(cfg, log=lambda *_: None))
    assert policy.batch_costs and policy.costs.per_batch
    val = load_episodes(ep_dir, "val")
    assert evaluate(policy, val, policy.costs)["mean_draft_calls"] == N
    alone, batch = (PreDraftStep(100, CostInfo(), History(), 0.0, batch_size=B) for B in (1, 8))
    assert policy.should_draft(alone) and not policy.should_draft(batch)
    rep = json.loads((tmp_path / "run" / "report.json").read_text())
    assert [c["curve"] for c in rep["cost_curves"]] == ["calibrated", "B=8 calibrated"]
    with pytest.raises(ValueError, match="batch_costs needs a calibration with batched verify times"):
        train(TrainPolicyConfig(episodes=ep_dir, out_dir=tmp_path / "r2", kind="ltd", costs=str(ep_dir / "costs.json"),
                                batch_costs=True), log=lambda *_: None)
    with pytest.raises(ValueError, match="batch_costs needs kind 'ltd'"):
        train(TrainPolicyConfig(episodes=ep_dir, out_dir=tmp_path / "r3", kind="radar", batch_costs=True),
              log=lambda *_: None)


def test_ltd_trained_on_two_machines_reads_which_it_runs_on(tmp_path):
    """`--extra-costs`: one skipping LTD trained on this machine's curve (drafting pays) and another machine's,
    given as a policy's config.json (a verify 20x dearer and slow draft calls: it does not). With each machine's
    costs it decides as that machine's own curve wants; the policy stores the --costs curve. Refused by name:
    a missing file and a RADAR policy."""
    from radar_ext.policies import CostInfo, History, PreDraftStep
    ep_dir = write_episodes(tmp_path / "e", True)
    dear = dict(COSTS, t_draft=0.02, t_verify={"V": [1, 16], "seconds": [0.2, 0.2]})
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text(json.dumps({"kind": "ltd", "costs": dear}))
    cfg = TrainPolicyConfig(episodes=ep_dir, out_dir=tmp_path / "run", kind="ltd", costs=str(ep_dir / "costs.json"),
                            epochs=8, lr=1e-2, batch_size=32, seed=1, skip=True,
                            extra_costs=[str(tmp_path / "other" / "config.json")])
    best = train(cfg, log=lambda *_: None)
    here, there = load_policy(best), load_policy(best, costs=dear)
    assert here.costs.t_draft == COSTS["t_draft"]
    step = PreDraftStep(100, CostInfo(), History(), 0.0)
    assert here.should_draft(step) and not there.should_draft(step)
    rep = json.loads((tmp_path / "run" / "report.json").read_text())
    assert [c["curve"] for c in rep["cost_curves"]] == ["calibrated", "machine 2: calibrated"]
    with pytest.raises(FileNotFoundError, match="extra_costs: .* is not a file"):
        _check(TrainPolicyConfig(episodes=ep_dir, out_dir=tmp_path / "r2", kind="ltd", extra_costs=[str(tmp_path / "no")]))
    with pytest.raises(ValueError, match="extra_costs .* needs --kind ltd"):
        _check(TrainPolicyConfig(episodes=ep_dir, out_dir=tmp_path / "r3", kind="radar",
                                 extra_costs=[str(ep_dir / "costs.json")]))


def test_machine_costs_are_read_by_the_machine_profile(tmp_path, monkeypatch, capsys):
    """`--machine-costs`: the policy stores a calibration per machine profile and, loaded without costs, reads
    the one of ops.cost_profile() (a profile it has none for: its stored --costs ones; given costs always win);
    a calibration that records its profile is stored without the flag. Bad profiles, files and specs are
    refused by name."""
    from radar_ext import ops
    from radar_ext.policies import CostInfo, History, PreDraftStep
    ep_dir = write_episodes(tmp_path / "e", True)
    dear = dict(COSTS, t_draft=0.02, t_verify={"V": [1, 16], "seconds": [0.2, 0.2]})
    (tmp_path / "dear.json").write_text(json.dumps(dear))
    cfg = TrainPolicyConfig(episodes=ep_dir, out_dir=tmp_path / "run", kind="ltd", costs=str(ep_dir / "costs.json"),
                            epochs=8, lr=1e-2, batch_size=32, seed=1, skip=True, extra_costs=[str(tmp_path / "dear.json")],
                            machine_costs={"cpu-amx": str(ep_dir / "costs.json"), "cpu": str(tmp_path / "dear.json")})
    best = train(cfg, log=lambda *_: None)
    assert set(json.loads((best / "config.json").read_text())["machine_costs"]) == {"cpu", "cpu-amx"}
    step = PreDraftStep(100, CostInfo(), History(), 0.0)
    got = {}
    for prof in ("cpu-amx", "cpu", "cpu-vnni", "gpu-someday"):
        monkeypatch.setattr(ops, "cost_profile", lambda prof=prof: prof)
        p = load_policy(best)
        got[prof] = (p.costs.t_draft, p.costs_source, p.should_draft(step))
    assert got["cpu-amx"] == (COSTS["t_draft"], "stored for cpu-amx", True)
    assert got["cpu"] == (0.02, "stored for cpu", False)
    assert got["cpu-vnni"] == (0.02, "stored for cpu", False)  # no calibration of its own: the float32 CPU's
    assert got["gpu-someday"] == (COSTS["t_draft"], "stored", True)
    monkeypatch.setattr(ops, "cost_profile", lambda: "cpu")
    given = load_policy(best, costs=ep_dir / "costs.json")
    assert given.costs_source == "given" and given.should_draft(step)
    # a calibration that records its machine's profile is stored under it without --machine-costs
    cal = {"schema": "radar_ext.calibration/1", "machine": {"cost_profile": "cpu"}}
    (tmp_path / "cal.json").write_text(json.dumps(cal))
    from radar_ext.training.train_policy import _recorded_profile
    assert _recorded_profile(tmp_path / "cal.json") == "cpu" and _recorded_profile(tmp_path / "dear.json") is None
    base = dict(episodes=ep_dir, out_dir=tmp_path / "r2", kind="ltd", costs=str(ep_dir / "costs.json"))
    with pytest.raises(ValueError, match=r"--machine-costs: unknown cost profile 'amx', expected one of \['cpu-amx', 'cpu-vnni', 'cpu'\]"):
        _check(TrainPolicyConfig(**base, machine_costs={"amx": str(tmp_path / "dear.json")}))
    with pytest.raises(FileNotFoundError, match="--machine-costs cpu=.*nope.json: no such file"):
        _check(TrainPolicyConfig(**base, machine_costs={"cpu": str(tmp_path / "nope.json")}))
    with pytest.raises(ValueError, match="machine_costs needs kind 'ltd'"):
        _check(TrainPolicyConfig(**dict(base, kind="radar"), machine_costs={"cpu": str(tmp_path / "dear.json")}))
    assert main(["train-policy", "--kind", "ltd", "--episodes", str(ep_dir), "--machine-costs", "cpu"]) == 2
    assert "--machine-costs takes PROFILE=PATH, got 'cpu'" in capsys.readouterr().err
    bad = json.loads((best / "config.json").read_text())
    bad["machine_costs"] = {"cpu": [1, 2]}
    (best / "config.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="machine_costs must map a cost profile name to a costs object"):
        load_policy(best)


def test_cost_profile_names_this_machines_forward():
    from radar_ext import ops
    assert ops.cost_profile() in ops.COST_PROFILES
    assert (ops.cost_profile() == "cpu-amx") == bool(ops.HAS_EXTENSION and ops._C.amx_enabled())
    if ops.HAS_EXTENSION and not ops._C.amx_enabled() and ops.vnni_linear_supported():
        assert ops.cost_profile() == "cpu-vnni"
        prev = ops._C.set_vnni_linear(False)  # the float32 tiles: the plain AVX-512 profile
        try:
            assert ops.cost_profile() == "cpu"
        finally:
            ops._C.set_vnni_linear(prev)


def test_from_pretrained_with_this_machines_costs(tmp_path):
    """costs= replaces the stored calibration (and so an LTD policy's cost features); bad costs are
    refused by name; generate's --costs needs a learned policy and an existing file."""
    ep_dir = write_episodes(tmp_path / "e", True, cycles=(32, 16))
    cfg = TrainPolicyConfig(episodes=ep_dir, out_dir=tmp_path / "run", kind="ltd", costs=str(ep_dir / "costs.json"),
                            epochs=1, rounds=1, batch_size=32)
    best = train(cfg, log=lambda *_: None)
    stored = load_policy(best)
    other = dict(COSTS, t_draft=0.004, t_verify={"V": [1, 16], "seconds": [0.03, 0.09]})
    (tmp_path / "other.json").write_text(json.dumps(other))
    moved = load_policy(best, costs=tmp_path / "other.json")
    assert moved.costs.t_draft == 0.004 and stored.costs.t_draft == COSTS["t_draft"]
    assert moved.cost_tensor().tolist() != stored.cost_tensor().tolist()
    assert moved._cost_list == pytest.approx(moved.cost_tensor().tolist())   # refreshed for decoding
    with pytest.raises(FileNotFoundError, match="costs file"):
        load_policy(best, costs=tmp_path / "missing.json")
    with pytest.raises(ValueError, match="t_ar"):
        load_policy(best, costs={"t_draft": 0.1, "t_policy": 0.0, "t_verify": {1: 0.1}})


@pytest.mark.parametrize("argv, message", [
    (["generate", "--prompt", "hi", "--policy", "static", "--costs", "c.json"], "--costs needs a learned --policy"),
    (["generate", "--prompt", "hi", "--drafter", "eagle", "--policy", "ltd", "--costs", "/nonexistent/c.json"],
     "--costs '/nonexistent/c.json' is not a file"),
    (["train-policy", "--kind", "radar", "--cost-curves", "3"], "--cost-curves > 1 needs kind 'ltd'"),
    (["train-policy", "--kind", "ltd", "--cost-curves", "0"], "--cost-curves must be an int >= 1, got 0"),
    (["train-policy", "--kind", "ltd", "--cost-jitter", "-1"], "--cost-jitter must be a finite number >= 0"),
])
def test_cli_cost_errors(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_rate_reward_maximises_tokens_per_second_not_the_mean_ratio(tmp_path):
    """Two kinds of cycle, told apart by their child scores; a draft call costs 1 s and nothing else
    does. A: 1 token after one call, 3 after two. B: 2 tokens after one call, 3.9 after two (ratio
    1.95 < 2, but the second call adds 1.9 tokens per second, above the decoding's rate). The ratio
    reward's best action stops B after one call, the rate reward's continues; trained on it the policy
    reaches the oracle's throughput, which the ratio reward's per-cycle best misses."""
    ep_dir = write_episodes(tmp_path / "e", True, cycles=(128, 64))
    for split, C in zip(("train", "val"), (128, 64)):
        f = ep_dir / f"{split}_00000.safetensors"
        t = load_file(str(f))
        is_b = torch.arange(C) % 2 == 1
        dist = torch.zeros(C, N, len(BUDGETS), N + 1)
        dist[:, :, :, 0] = 1.0                                   # n >= 3: nothing accepted
        dist[~is_b, 0], dist[~is_b, 1] = 0.0, 0.0
        dist[~is_b, 0, :, 0] = 1.0                               # A, n=1: L+1 = 1
        dist[~is_b, 1, :, 2] = 1.0                               # A, n=2: L+1 = 3
        dist[is_b, 0], dist[is_b, 1] = 0.0, 0.0
        dist[is_b, 0, :, 1] = 1.0                                # B, n=1: L+1 = 2
        dist[is_b, 1, :, 2], dist[is_b, 1, :, 3] = 0.1, 0.9      # B, n=2: E[L+1] = 3.9
        child = t["child_scores"]
        child[:, 0, 0] = torch.where(is_b.view(C, 1), -0.1, -3.0)
        t.update(accept_dist=dist, child_scores=child, accepted_len=dist[:, -1, -1].argmax(-1))
        save_file(t, str(f))
    costs = {"t_draft": 1.0, "t_policy": 0.0, "t_ar": 1.0, "t_verify": {"V": [1, 16], "seconds": [1e-6, 1e-6]}}
    (ep_dir / "costs.json").write_text(json.dumps(costs))
    val, c = load_episodes(ep_dir, "val"), PolicyCosts.load(costs)
    from radar_ext.training.train_policy import _ltd_rewards, ltd_choices
    best_n = {r: _ltd_rewards(val, c, r)[:, :, 0].argmax(1) + 1 for r in ("ratio", "rate")}
    assert best_n["ratio"][::2].unique().tolist() == [2] and best_n["ratio"][1::2].unique().tolist() == [1]
    assert best_n["rate"].unique().tolist() == [2]
    cfg = TrainPolicyConfig(episodes=ep_dir, out_dir=tmp_path / "rate", kind="ltd", costs=str(ep_dir / "costs.json"),
                            epochs=10, batch_size=32, lr=1e-2, seed=1, reward="rate")
    policy = load_policy(train(cfg, log=lambda *_: None))
    n, _ = ltd_choices(policy, val)
    assert n.unique().tolist() == [2]
    oracle = oracle_throughput(val, c)["throughput"]
    assert evaluate(policy, val, c)["throughput"] == pytest.approx(oracle, rel=1e-6)
    ratio_choice = policy_throughput(val, c, best_n["ratio"], torch.zeros_like(n), True)["throughput"]
    assert ratio_choice < 0.98 * oracle
    with pytest.raises(ValueError, match="reward must be 'ratio' or 'rate'"):
        train(TrainPolicyConfig(episodes=ep_dir, out_dir=tmp_path / "x", kind="ltd", reward="mean"), log=lambda *_: None)


def test_bench_ltd_cost_curves_table(tmp_path, capsys):
    """bench/ltd_cost_curves.py prints one row per curve (calibrated + 4 hand-made + --random) with each
    policy's gain over that curve's best static; a malformed --policy is refused."""
    mod = load_bench_script("ltd_cost_curves")
    ep_dir = write_cost_sensitive_episodes(tmp_path / "e", cycles=(32, 16))
    (ep_dir / "costs.json").write_text(json.dumps(dict(COSTS, t_verify={"V": [1, 16], "seconds": [0.02, 0.05]})))
    best = train(TrainPolicyConfig(episodes=ep_dir, out_dir=tmp_path / "run", kind="ltd", costs=str(ep_dir / "costs.json"),
                                   epochs=1, rounds=1, batch_size=32), log=lambda *_: None)
    assert mod.main(["--episodes", str(ep_dir), "--costs", str(ep_dir / "costs.json"), "--policy", f"a={best}",
                     "--random", "2"]) == 0
    rows = [l for l in capsys.readouterr().out.splitlines() if l.startswith("| ")]
    assert rows[0].startswith("| cost curve | best static (n, V) | LTD: a |") and len(rows) == 1 + 5 + 2
    assert rows[1].startswith("| calibrated (this machine) |") and all("%" in r for r in rows[1:])
    with pytest.raises(SystemExit):
        mod.main(["--episodes", str(ep_dir), "--costs", str(ep_dir / "costs.json"), "--policy", "nodir"])


def test_bench_controller_ceiling(tmp_path, capsys):
    """bench/controller_ceiling.py: per temperature, the best static (n, V), the oracle's gain over it and
    the policies' gains, equal to train_policy's own static_grid / oracle_throughput / evaluate on the
    same cycles (train + val with --split all)."""
    mod = load_bench_script("controller_ceiling")
    dirs = [write_episodes(tmp_path / f"t{t}", continue_pays=bool(t), seed=t, temperature=float(t)) for t in (0, 1)]
    cost_file = tmp_path / "costs.json"
    cost_file.write_text(json.dumps(dict(COSTS, t_verify={"V": [1, 16], "seconds": [0.02, 0.05]})))
    radar = train(TrainPolicyConfig(episodes=dirs, out_dir=tmp_path / "r", kind="radar", costs=str(cost_file),
                                    verify_budget=8, epochs=1, batch_size=64), log=lambda *_: None)
    ltd = train(TrainPolicyConfig(episodes=dirs, out_dir=tmp_path / "l", kind="ltd", costs=str(cost_file),
                                  epochs=1, rounds=1, batch_size=64), log=lambda *_: None)
    out = tmp_path / "ceiling.json"
    assert mod.main(["--episodes", *map(str, dirs), "--costs", str(cost_file), "--radar", str(radar), "--ltd", str(ltd),
                     "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "expected tokens/s on 512 recorded cycles (all)" in printed
    rows = json.loads(out.read_text())["rows"]
    assert [r["temperature"] for r in rows] == [0.0, 1.0] and [r["cycles"] for r in rows] == [256, 256]
    from radar_ext.policies import LtdPolicy, RadarPolicy
    from radar_ext.training.train_policy import _AtCosts, subset
    for t, r in zip((0, 1), rows):
        ep = load_episodes(dirs[t], "all")
        assert ep.cycles == load_episodes(dirs[t], "train").cycles + load_episodes(dirs[t], "val").cycles
        costs = PolicyCosts.load(str(cost_file), tree_topk=W, prefix_len=float(ep["seq_len"].double().mean()))
        grid = static_grid(ep, costs)
        assert r["best_static"]["tokens_per_s"] == pytest.approx(float(grid.max()))
        assert r["oracle"]["tokens_per_s"] == pytest.approx(oracle_throughput(ep, costs)["throughput"])
        assert r["oracle"]["gain"] >= r["ltd"]["gain"] - 1e-9
        pol = LtdPolicy.from_pretrained(ltd)
        with _AtCosts(pol, costs):
            want = evaluate(pol, ep, costs)["throughput"]
        assert r["ltd"]["tokens_per_s"] == pytest.approx(want)
        rp = RadarPolicy.from_pretrained(radar)
        assert r["radar"]["verify_budget"] == 8
        assert r["radar"]["tokens_per_s"] == pytest.approx(evaluate(rp, ep, costs, BUDGETS.index(8))["throughput"])
        assert r["radar"]["gain_at_V"] <= r["radar"]["oracle_gain_at_V"] + 1e-9
    # every synthetic cycle of a collection is alike (T = 0: nothing accepted past call 1; T = 1: each call adds
    # a token), so one static tree is already the per-cycle best; the oracle, like any controller, pays its
    # decisions' time and trails it by that alone
    assert rows[0]["best_static"]["max_draft_calls"] == 1 and rows[1]["best_static"]["max_draft_calls"] == N
    assert [-1e-2 < r["oracle"]["gain"] <= 0.0 for r in rows] == [True, True], [r["oracle"] for r in rows]
    table = [l for l in printed.splitlines() if l.startswith("| ")]
    assert table[0] == "| T | cycles | best static (n, V): tok/s | plain | oracle | oracle + skip | ltd | radar |"
    assert len(table) == 3 and all(len(l.split(" | ")) == 8 for l in table[1:])
    with pytest.raises(SystemExit):
        mod.main(["--episodes", str(dirs[0]), "--costs", str(cost_file), "--prefix-len", "0"])


# ----------------------------------------------------------------------------- skip action, history features

STEEP = dict(COSTS, t_verify={"V": [1, 16], "seconds": [0.02, 0.05]})  # a drafted cycle always costs more than t_ar


def test_throughput_and_oracle_with_skip_are_exact(tmp_path):
    """A skipped cycle (n = 0) earns 1 token in t_ar + t_policy; with skip every drafted cycle pays one
    more decision; the oracle with skip is the best per-cycle choice among the plain step and every (n, V)."""
    import itertools
    from radar_ext.training.train_policy import cycle_times, skip_time
    ep = load_episodes(write_episodes(tmp_path / "e", "mixed", cycles=(8, 4)), "val")
    g = torch.Generator().manual_seed(5)
    d = torch.rand(ep["accept_dist"].shape, generator=g) ** 4
    ep.tensors["accept_dist"] = d / d.sum(-1, keepdim=True)
    costs = PolicyCosts.load(STEEP)
    E = expected_tokens(ep)
    T = cycle_times(ep, costs, skip=True)
    assert torch.allclose(T - cycle_times(ep, costs), torch.full_like(T, costs.t_policy))
    n, v = torch.tensor([0, 2, 0, 4]), torch.tensor([1, 1, 2, 0])
    res = policy_throughput(ep, costs, n, v, True, skip=True)
    tokens = 1 + float(E[1, 1, 1]) + 1 + float(E[3, 3, 0])
    secs = 2 * (0.02 + 1e-5) + float(T[1, 1, 1]) + float(T[3, 3, 0])
    assert skip_time(costs) == 0.02 + 1e-5
    assert res["throughput"] == pytest.approx(tokens / secs) and res["skip_share"] == 0.5
    assert res["mean_verify_budget"] == pytest.approx((BUDGETS[1] + BUDGETS[0]) / 4)
    with pytest.raises(ValueError, match="n: a stopping point 0"):
        policy_throughput(ep, costs, n, v, True)
    # a calibration's plain step (our own verify path) replaces t_ar as the skipped cycle's time
    fast = PolicyCosts.load(dict(STEEP, t_plain=0.01))
    assert skip_time(fast) == 0.01 + 1e-5 and fast.features(BUDGETS) == costs.features(BUDGETS)
    secs_fast = 2 * (0.01 + 1e-5) + float(T[1, 1, 1]) + float(T[3, 3, 0])
    assert policy_throughput(ep, fast, n, v, True, skip=True)["throughput"] == pytest.approx(tokens / secs_fast)
    sub = subset(ep, torch.tensor([True, True, False, True]))
    actions = [(0, 0)] + [(k, j) for k in range(1, N + 1) for j in range(len(BUDGETS))]
    best = max(policy_throughput(sub, costs, torch.tensor([a[0] for a in ch]), torch.tensor([a[1] for a in ch]),
                                 True, skip=True)["throughput"] for ch in itertools.product(actions, repeat=3))
    o = oracle_throughput(sub, costs, skip=True)
    assert o["throughput"] == pytest.approx(best, rel=1e-12)
    assert o["throughput"] >= oracle_throughput(sub, costs)["throughput"] * (1 - 1e-3)


@pytest.mark.parametrize("kind", ["radar", "ltd"])
@pytest.mark.parametrize("continue_pays", [True, False])
def test_skip_is_learned_where_drafting_does_not_pay(tmp_path, kind, continue_pays):
    """Nothing is ever accepted and a drafted cycle costs more than a plain forward: the policy learns to
    skip every cycle (plain decoding's throughput, less its decision); where drafting pays it never skips."""
    ep_dir = write_episodes(tmp_path / "e", continue_pays)
    (ep_dir / "costs.json").write_text(json.dumps(STEEP))
    extra = dict(epochs=25, lr=3e-3, verify_budget=8) if kind == "radar" else dict(epochs=8, lr=1e-2)
    cfg = TrainPolicyConfig(episodes=ep_dir, out_dir=tmp_path / "run", kind=kind, costs=str(ep_dir / "costs.json"),
                            batch_size=32, seed=1, skip=True, **extra)
    policy = load_policy(train(cfg, log=lambda *_: None))
    assert policy.skip and not policy.history
    res = evaluate(policy, load_episodes(ep_dir, "val"), PolicyCosts.load(STEEP), v_idx_fixed=BUDGETS.index(8))
    rep = json.loads((tmp_path / "run" / "report.json").read_text())
    oracle = rep["oracle"]["0"]["with_skip"]
    if continue_pays:
        assert res["skip_share"] == 0.0 and oracle["skip_share"] == 0.0
    else:
        assert res["skip_share"] > 0.95 and oracle["skip_share"] == 1.0
        assert res["throughput"] >= 0.99 / (0.02 + 1e-5)
        assert rep["plain"]["throughput"] == pytest.approx(1 / 0.02) and rep["plain"]["gain_over_best_static"] > 0.3
    assert res["throughput"] >= 0.98 * oracle["throughput"]
    assert rep["policy"]["skip_share"] == pytest.approx(res["skip_share"])


@pytest.mark.parametrize("kind", ["radar", "ltd"])
def test_history_features_tell_good_cycles_from_bad(tmp_path, kind):
    """Half the cycles accept a token per draft call, half accept nothing, and only the history features
    tell them apart: with history the policy drafts to the cap on the first and skips the second, close
    to the oracle with skip; without history it cannot, and stays well below."""
    ep_dir = write_episodes(tmp_path / "e", "mixed")
    (ep_dir / "costs.json").write_text(json.dumps(STEEP))
    extra = dict(epochs=30, lr=3e-3, verify_budget=4) if kind == "radar" else dict(epochs=8, lr=1e-2)
    val = load_episodes(ep_dir, "val")
    good = torch.arange(val.cycles) % 2 == 0
    got = {}
    for history in (True, False):
        cfg = TrainPolicyConfig(episodes=ep_dir, out_dir=tmp_path / f"run{history}", kind=kind, batch_size=32, seed=1,
                                costs=str(ep_dir / "costs.json"), skip=True, history=history, **extra)
        policy = load_policy(train(cfg, log=lambda *_: None))
        assert policy.history == history
        n = radar_choices(policy, val) if kind == "radar" else ltd_choices(policy, val)[0]
        got[history] = (n, json.loads((tmp_path / f"run{history}" / "report.json").read_text()))
    n, rep = got[True]
    assert (n[good] == N).float().mean() > 0.95 and (n[~good] == 0).float().mean() > 0.95, n.tolist()
    assert rep["oracle"]["0"]["policy_room"] > 0.9
    assert rep["policy"]["throughput"] >= 0.97 * rep["oracle"]["0"]["with_skip"]["throughput"]
    assert got[False][1]["policy"]["throughput"] < 0.9 * rep["policy"]["throughput"]


def test_format1_episodes_load_and_history_training_is_refused(tmp_path):
    ep_dir = write_episodes(tmp_path / "e", True, cycles=(16, 8), fmt=1)
    ep = load_episodes(ep_dir, "train")
    assert ep.cycles == 16 and not ep.has_history and "hist_accept_ema" not in ep.tensors
    with pytest.raises(ValueError, match="episodes format 1 records no history features; collect them again"):
        train(TrainPolicyConfig(episodes=ep_dir, out_dir=tmp_path / "run", kind="ltd", costs=str(ep_dir / "costs.json"),
                                history=True, epochs=1, rounds=1), log=lambda *_: None)
    best = train(TrainPolicyConfig(episodes=ep_dir, out_dir=tmp_path / "run2", kind="ltd", costs=str(ep_dir / "costs.json"),
                                   skip=True, epochs=1, rounds=1), log=lambda *_: None)
    assert load_policy(best).skip
    v2 = write_episodes(tmp_path / "v2", True, cycles=(16, 8))
    with pytest.raises(ValueError, match=r"cannot be merged .*format \(2 vs 1\)"):
        load_episodes([ep_dir, v2], "train")
    with pytest.raises(ValueError, match="max_skip_run must be an int >= 1, got 0"):
        train(TrainPolicyConfig(episodes=ep_dir, out_dir=tmp_path / "run3", kind="ltd", skip=True, max_skip_run=0),
              log=lambda *_: None)


def test_bench_controller_ceiling_with_skip_and_history(tmp_path, capsys):
    """Several policies per kind: each labelled by its options, with its gain, skip share and room (the
    share of the gain of the oracle with its own action set), equal to evaluate / oracle_room; plain
    decoding and the oracle with skip beside the oracle without."""
    from radar_ext.training.train_policy import oracle_room, plain_throughput
    mod = load_bench_script("controller_ceiling")
    ep_dir = write_episodes(tmp_path / "e", "mixed")
    cost_file = tmp_path / "costs.json"
    cost_file.write_text(json.dumps(STEEP))
    runs = [train(TrainPolicyConfig(episodes=ep_dir, out_dir=tmp_path / f"l{h}", kind="ltd", costs=str(cost_file),
                                    epochs=8, lr=1e-2, batch_size=32, seed=1, skip=True, history=h), log=lambda *_: None)
            for h in (True, False)]
    out = tmp_path / "c.json"
    assert mod.main(["--episodes", str(ep_dir), "--costs", str(cost_file), "--ltd", *map(str, runs), "--radar", "none",
                     "--json", str(out)]) == 0
    header = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("| T"))
    assert header.endswith("| plain | oracle | oracle + skip | ltd+hist+skip | ltd+skip |")
    (row,) = json.loads(out.read_text())["rows"]
    ep = load_episodes(ep_dir, "all")
    costs = PolicyCosts.load(str(cost_file), tree_topk=W, prefix_len=float(ep["seq_len"].double().mean()))
    best = float(static_grid(ep, costs).max())
    assert row["plain"]["tokens_per_s"] == pytest.approx(plain_throughput(costs))
    o_skip = oracle_throughput(ep, costs, skip=True)
    assert row["oracle_skip"]["tokens_per_s"] == pytest.approx(o_skip["throughput"])
    assert row["oracle_skip"]["gain"] > row["oracle"]["gain"] and row["oracle_skip"]["skip_share"] == 0.5
    hist, plain_skip = row["policies"]
    assert [p["label"] for p in row["policies"]] == ["ltd+hist+skip", "ltd+skip"] and row["ltd"] == hist
    for p, run in zip(row["policies"], runs):
        r = evaluate(load_policy(run), ep, costs)
        assert p["tokens_per_s"] == pytest.approx(r["throughput"]) and p["skip_share"] == r["skip_share"]
        assert p["room"] == pytest.approx(oracle_room(r["throughput"], best, o_skip["throughput"]))
    assert hist["room"] > 0.9 and hist["skip_share"] == pytest.approx(0.5, abs=0.03)
    assert plain_skip["room"] < 0.5


def test_bench_controller_ceiling_by_category(tmp_path, capsys):
    """--by-category on episodes recorded on benchmark questions: after the overall row, one row per category
    with the ceiling of that category's cycles alone; --versus-plain prints rates over plain decoding.
    Episodes of ShareGPT prompts have no categories: a clear error."""
    mod = load_bench_script("controller_ceiling")
    ep_dir = write_episodes(tmp_path / "e", "mixed")
    cost_file = tmp_path / "costs.json"
    cost_file.write_text(json.dumps(STEEP))
    with pytest.raises(SystemExit):
        mod.main(["--episodes", str(ep_dir), "--costs", str(cost_file), "--ltd", "none", "--radar", "none",
                  "--by-category"])
    assert "--by-category needs episodes recorded on benchmark questions" in capsys.readouterr().err
    # the same cycles as recorded on 3 questions of 2 categories (prompt: its index in the shard's conv ids)
    for shard in ep_dir.glob("*.safetensors"):
        t = load_file(str(shard))
        t["prompt"] = torch.arange(t["prompt"].shape[0]) * 3 // t["prompt"].shape[0]
        save_file(t, str(shard), metadata={"conv_ids": json.dumps(["math/1", "code/2", "math/3"])})
    meta = json.loads((ep_dir / "episodes_meta.json").read_text())
    (ep_dir / "episodes_meta.json").write_text(json.dumps(dict(meta, questions="q.jsonl")))
    out = tmp_path / "c.json"
    assert mod.main(["--episodes", str(ep_dir), "--costs", str(cost_file), "--ltd", "none", "--radar", "none",
                     "--by-category", "--versus-plain", "--json", str(out)]) == 0
    lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("| ")]
    assert lines[0].startswith("| T | category | cycles |") and "| plain: tok/s |" in lines[0]
    assert [l.split(" | ")[1] for l in lines[1:]] == ["all", "math", "code"]
    rows = json.loads(out.read_text())["rows"]
    ep = load_episodes(ep_dir, "all")
    costs = PolicyCosts.load(str(cost_file), tree_topk=W, prefix_len=float(ep["seq_len"].double().mean()))
    cat = [("code" if ep.meta["prompt_ids"][i].startswith("code/") else "math") for i in ep["prompt_index"].tolist()]
    assert rows[0]["cycles"] == ep.cycles and "category" not in rows[0]
    for r in rows[1:]:
        sub = subset(ep, torch.tensor([c == r["category"] for c in cat]))
        assert r["cycles"] == sub.cycles and sub.cycles > 0
        assert r["oracle"]["tokens_per_s"] == pytest.approx(oracle_throughput(sub, costs)["throughput"])
    r = rows[1]
    assert f"{r['oracle']['tokens_per_s'] / r['plain']['tokens_per_s']:.2f}x (n" in lines[2]


@pytest.mark.parametrize("kind", ["radar", "ltd"])
def test_offline_choices_are_the_inference_decisions(tmp_path, kind):
    """radar_choices / ltd_choices (batched torch, what training scores) decide what the policy decides
    through the Policy interface on the same recorded cycles: should_draft, then reset and should_continue
    after every call, then verify_budget, with a History holding the recorded state."""
    from radar_ext.policies import BudgetStep, CostInfo, DraftStep, History, LtdPolicy, PreDraftStep, RadarPolicy
    ep = load_episodes(write_episodes(tmp_path / "e", "mixed", cycles=(8, 48)), "val")
    if kind == "radar":
        policy = RadarPolicy(W, N, lstm_hidden=16, mlp_hidden=16, seed=3, history=True, skip=True)
    else:
        policy = LtdPolicy(W, N, BUDGETS, STEEP, pool_topk=K, mlp_hidden=16, seed=3, history=True, skip=True)

    def offline():
        return (radar_choices(policy, ep), None) if kind == "radar" else ltd_choices(policy, ep)
    # shift the continue output so that the random net skips some cycles and drafts others: between two
    # cycles' pre-draft margins (its outputs differ little between inputs), else on a grid
    net = policy.net if kind == "radar" else policy.depth_net
    base = net.fc2.bias.detach().clone()
    with torch.no_grad():
        net.fc2.weight.mul_(50.0)  # decisions that turn on small differences of the inputs and the state
        if kind == "radar":
            from radar_ext.training.train_policy import radar_extra, radar_skip_input
            x0 = radar_skip_input(ep["beam_scores"], ep["temperature"], radar_extra(policy, ep))
        else:
            from radar_ext.training.train_policy import _ltd_inputs
            x0 = _ltd_inputs(policy, ep)[2]
        lg = net.step(x0, *net.zero_state(x0.shape[0]))[0]
    margin = (lg[:, 0] - lg[:, 1]).sort().values                      # stop - continue before the first call
    shifts = ((margin[1:] + margin[:-1]) / 2).tolist() + torch.linspace(-8, 8, 161).tolist()  # between two cycles
    spread = []
    for b in shifts:
        with torch.no_grad():
            net.fc2.bias.copy_(base + torch.tensor([0.0, b]))
        got = set(offline()[0].tolist())
        spread.append(((0 in got) + bool(got - {0}), len(got), -abs(b), b))
    with torch.no_grad():
        net.fc2.bias.copy_(base + torch.tensor([0.0, max(spread)[3]]))
    policy.refresh()
    n_off, v_off = offline()
    if kind == "radar":
        from radar_ext.training.train_policy import radar_logits
        pre, calls = radar_logits(policy, ep)
        head = policy.head

        def recording(x):
            seen.append(head(x))
            return seen[-1]
        recording.reset = head.reset
        policy.head = recording
    assert 0 in set(n_off.tolist()) and len(set(n_off.tolist())) >= 2, n_off.tolist()  # skipped and drafted cycles
    for c in range(ep.cycles):
        h = History()
        h.ema, h.last = float(ep["hist_accept_ema"][c]), float(ep["hist_accept_last"][c])
        h.best_prob, h.best_accepted = float(ep["hist_best_prob"][c]), float(ep["hist_best_accepted"][c])
        h.drafted = int(ep["hist_drafted"][c])
        seq_len, temp = int(ep["seq_len"][c]), float(ep["temperature"][c])
        n, seen = 0, []
        if policy.should_draft(PreDraftStep(seq_len, CostInfo(), h, temp)):
            policy.reset()
            n = N
            for t in range(N - 1):
                step = DraftStep(t + 1, ep["beam_scores"][c, t][None], ep["child_scores"][c, t][None], seq_len,
                                 CostInfo(), temp, h)
                if not policy.should_continue(step):
                    n = t + 1
                    break
        assert n == int(n_off[c]), c
        if kind == "radar":  # and every head output equals the offline logits' softmax
            want = ([pre[c]] if pre is not None else []) + list(calls[c, :len(seen) - (pre is not None)])
            torch.testing.assert_close(torch.cat(seen), torch.softmax(torch.stack(want), 1), rtol=1e-5, atol=1e-6)
        if kind == "ltd" and n > 0:
            V = policy.verify_budget(BudgetStep(ep["pool_top"][c, n - 1][None], n, seq_len, 8, CostInfo(), temp, h))
            assert V == BUDGETS[int(v_off[c])], c


def test_lookup_features_need_hybrid_episodes(tmp_path):
    """--lookup (LTD reads the cycle's context lookup): refused by name on EAGLE-only episodes or for RADAR; on a
    hybrid collection the trained policy carries the flag and reads the lookup features the episodes recorded."""
    ep_dir = write_episodes(tmp_path / "e", "mixed", cycles=(32, 16))
    costs = str(ep_dir / "costs.json")
    with pytest.raises(ValueError, match="lookup features need --kind ltd and episodes collected with --drafter hybrid"):
        train(TrainPolicyConfig(episodes=ep_dir, out_dir=tmp_path / "r0", kind="ltd", costs=costs, lookup=True,
                                epochs=1, rounds=1), log=lambda *_: None)
    meta = json.loads((ep_dir / "episodes_meta.json").read_text())
    (ep_dir / "episodes_meta.json").write_text(json.dumps({**meta, "drafter": "hybrid"}))
    with pytest.raises(ValueError, match="got --kind radar"):
        train(TrainPolicyConfig(episodes=ep_dir, out_dir=tmp_path / "r1", kind="radar", costs=costs, lookup=True,
                                verify_budget=4, epochs=1), log=lambda *_: None)
    best = train(TrainPolicyConfig(episodes=ep_dir, out_dir=tmp_path / "r2", kind="ltd", costs=costs, lookup=True,
                                   skip=True, epochs=1, rounds=1), log=lambda *_: None)
    policy = load_policy(best)
    assert policy.lookup and policy.skip
    assert main(["train-policy", "--kind", "ltd", "--episodes", str(ep_dir), "--out-dir", str(tmp_path / "r3"),
                 "--costs", costs, "--epochs", "1", "--rounds", "1", "--lookup"]) == 0
    assert load_policy(tmp_path / "r3" / "best").lookup


def test_hybrid_cycles_pay_for_their_own_pool():
    """A hybrid collection's pool holds the lookup nodes too, so a budget verifies min(V, that cycle's pool)
    nodes (pool_top's finite entries), not the EAGLE pool's W + (n - 1) W^2; EAGLE collections keep the
    formula, the same for every cycle."""
    from radar_ext.training.episodes import Episodes
    from radar_ext.training.train_policy import cycle_times, verify_times
    costs = PolicyCosts.load(dict(COSTS, t_verify={"V": [1, 16], "seconds": [0.01, 0.025]}))
    C = 3
    pool_top = torch.full((C, N, K), -float("inf"))
    for c, nodes in enumerate((2, 3, 4)):   # cycle c: `nodes` pool nodes after call 1, one more per call
        for n in range(N):
            pool_top[c, n, :nodes + n] = -torch.arange(1.0, nodes + n + 1)
    meta = {"tree_topk": W, "max_draft_calls": N, "budgets": list(BUDGETS), "pool_topk": K}
    hyb = Episodes(dict(meta, drafter="hybrid"), {"pool_top": pool_top})
    T = cycle_times(hyb, costs, policy=False)
    assert T.shape == (C, N, len(BUDGETS))
    for c, nodes in enumerate((2, 3, 4)):
        for n in range(N):
            for j, v in enumerate(BUDGETS):
                assert float(T[c, n, j]) == pytest.approx((n + 1) * costs.t_draft + costs.t_verify(min(v, nodes + n)))
    eagle = Episodes(meta, {"pool_top": pool_top})
    Te = cycle_times(eagle, costs, policy=False)
    want = torch.arange(1, N + 1, dtype=torch.float64).view(N, 1) * costs.t_draft + verify_times(costs, W, N, BUDGETS)
    assert all(torch.equal(Te[c], want) for c in range(C))
    full = torch.zeros(1, N, K)  # K scores after every call: the pool may hold more, every budget is verified whole
    Tf = cycle_times(Episodes(dict(meta, drafter="hybrid"), {"pool_top": full}), costs, policy=False)
    assert float(Tf[0, 0, -1]) == pytest.approx(costs.t_draft + costs.t_verify(BUDGETS[-1]))


def test_ltd_learns_the_skip_in_a_last_phase_of_its_own(tmp_path):
    """With skip, LTD's (size, depth) rounds train and are scored with every cycle drafted, and the pre-draft
    decision is learned in one last depth phase ("skip") against the fitted heads, whose best state is the
    policy saved (its selection starts afresh: the earlier phases' scores had no skip action)."""
    ep_dir = write_episodes(tmp_path / "e", False)
    (ep_dir / "costs.json").write_text(json.dumps(STEEP))
    cfg = TrainPolicyConfig(episodes=ep_dir, out_dir=tmp_path / "run", kind="ltd", costs=str(ep_dir / "costs.json"),
                            epochs=3, rounds=2, lr=1e-2, batch_size=32, seed=1, skip=True)
    policy = load_policy(train(cfg, log=lambda *_: None))
    hist = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["state"]["history"]
    assert [h["phase"] for h in hist] == ["size"] * 3 + ["depth"] * 3 + ["size"] * 3 + ["depth"] * 3 + ["skip"] * 3
    assert all(h["skip_share"] == 0.0 and not h["skip"] for h in hist[:12])   # drafting always: the heads are scored
    assert all(h["skip"] for h in hist[12:]) and max(h["skip_share"] for h in hist[12:]) > 0.95
    assert policy.skip and evaluate(policy, load_episodes(ep_dir, "val"), PolicyCosts.load(STEEP))["skip_share"] > 0.95
