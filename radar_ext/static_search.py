"""Grid search of the static tree: max_draft_calls x verify_budget (x tree_topk), for `radar tune-static`.

Cheap protocol, exact at temperature 0:
1. Replay. The greedy answer y of each prompt is fixed (the target's own greedy `generate`). With a
   static policy the drafter's state at every answer position is the same whatever the setting (its
   cache holds the target's features of the true prefix), so one full-depth draft per position, kept
   whole (the full candidate pool), gives the accepted length of every (calls, V) tree there: the
   greedy path is the chain of pool nodes matching y, and a node is in the best-V tree of the pool
   after c calls iff its stable descending score rank among the first W + (c-1)W^2 nodes is < V.
   Walking the answer cycle by cycle then gives each setting's exact cycle count and tau (METHOD.md 5).
2. Model. predicted tokens/s = tau / t_cycle(calls, V, W) from the calibrated CostModel
   (draft calls + policy + tree build + T_verify(V) + acceptance/commit overhead).
3. Timing. The model's top few (distinct trees) are decoded for real with RadarDecoder, paired against the target's
   own greedy generate, interleaved per prompt with a rotated order; every answer is checked
   token-identical to the target's. The best measured tokens/s wins; every timed tree gets its speed
   against the pick paired per answer (geometric mean ratio, 95% interval), and `separated` says whether
   the pick's lead over each rival is outside the noise of this timing budget.
Sampling (temperature > 0): no replay is exact, so step 1 reads `radar collect` episodes recorded at
that temperature (each cycle's exact expected accepted length for every (calls, V) at their tree_topk,
rank_from_episodes), and step 3 samples (seeded draws, nothing to check for exactness).
Offline tooling: nothing in the decoding loop imports this module.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from radar_ext.benchmark.aggregate import paired_speed_ratio
from radar_ext.policies.base import Policy

SCHEMA = "radar_ext.static_tree/1"
SETTING_KEYS = ("max_draft_calls", "tree_topk", "verify_budget")


@dataclass(frozen=True)
class StaticSetting:
    max_draft_calls: int
    tree_topk: int
    verify_budget: int

    def as_dict(self) -> dict:
        return asdict(self)


def pool_size(tree_topk: int, calls: int) -> int:
    """Candidate pool after `calls` draft calls: W root children, then W*W per later call."""
    return tree_topk + (calls - 1) * tree_topk * tree_topk


def make_grid(calls_list, topk_list, budget_list) -> list:
    """Every (calls, W, V) with V cut to the pool size; settings that give the same tree (V above
    the pool) are kept once, with V = the pool size."""
    out = {}
    for W in sorted(topk_list):
        for c in sorted(calls_list):
            for V in sorted(budget_list):
                s = StaticSetting(c, W, min(V, pool_size(W, c)))
                out[s] = None
    return list(out)


# ------------------------------------------------------------------------------------ replay
def accepted_lengths(pool_tokens, pool_parents, pool_scores, future, tree_topk: int, max_calls: int,
                     v_grid) -> np.ndarray:
    """Accepted length of every (calls, V) tree at one position, from the full pool of a
    `max_calls`-call draft. pool_tokens, pool_parents [C] (creation order; parent -1 = the root,
    else a pool index), pool_scores [C]; future [<= max_calls] the target's next greedy tokens after
    the root. Returns int [max_calls, len(v_grid)]."""
    tok = np.asarray(pool_tokens)
    par = np.asarray(pool_parents)
    s = np.asarray(pool_scores, dtype=np.float64)
    chain, prev = [], -1
    for want in list(future)[:max_calls]:
        hit = np.flatnonzero((par == prev) & (tok == int(want)))  # siblings have distinct tokens: <= 1 hit
        if hit.size == 0:
            break
        prev = int(hit[0])
        chain.append(prev)
    out = np.zeros((max_calls, len(v_grid)), dtype=np.int64)
    v = np.asarray(v_grid)
    for c in range(1, max_calls + 1):
        C = min(pool_size(tree_topk, c), s.size)
        sc = s[:C]
        ranks = []
        for d, i in enumerate(chain[:c]):
            if i >= C:
                break
            # stable descending order: ties go to the lower (older) index, as CandidatePool.best
            ranks.append(int((sc > sc[i]).sum() + (sc[:i] == sc[i]).sum()))
        for vi, V in enumerate(v):
            n = 0
            while n < len(ranks) and ranks[n] < V:
                n += 1
            out[c - 1, vi] = n
    return out


class _FullPool(Policy):
    """Drafts exactly `calls` calls and records the pool scores; the returned budget keeps the
    whole pool in the tree (so tree node k + 1 is pool node k)."""

    def __init__(self, calls: int):
        self.max_draft_calls = calls
        self.pool_scores = None

    def should_continue(self, step):
        return step.draft_calls < self.max_draft_calls

    def verify_budget(self, step):
        self.pool_scores = step.pool_scores
        return step.pool_scores.shape[1]


@dataclass
class Replay:
    """Accepted lengths of every (calls, V) tree at every root position of one greedy answer."""
    tree_topk: int
    prompt_len: int
    answer_len: int
    v_grid: list
    accepted: np.ndarray  # [answer_len - 1, max_calls, len(v_grid)] int, root = answer[t]


@torch.no_grad()
def replay_answer(target, drafter, prompt_ids, answer_ids, tree_topk: int, max_calls: int, v_grid) -> Replay:
    """prompt_ids [1, P], answer_ids [1, N] the target's greedy answer. One teacher-forced target pass
    for the features, then one full `max_calls`-call draft per root position."""
    from radar_ext import kv_cache
    from radar_ext.drafters.base import DraftRequest
    from radar_ext.policies.base import CostInfo
    from radar_ext.verifier import prefill

    P, N = prompt_ids.shape[1], answer_ids.shape[1]
    feats = prefill(target, kv_cache.new_target_cache(target), torch.cat([prompt_ids, answer_ids], 1),
                    drafter.feature_layers).features                       # [1, P + N, F] or None
    drafter.start(prompt_ids, feats[:, :P] if feats is not None else None, answer_ids[:, 0])
    policy = _FullPool(max_calls)
    y = answer_ids[0].tolist()
    acc = np.zeros((max(N - 1, 0), max_calls, len(v_grid)), dtype=np.int64)
    for t in range(N - 1):
        req = DraftRequest(root=answer_ids[:, t], seq_len=P + t + 1, tree_topk=tree_topk,
                           verify_budget=pool_size(tree_topk, max_calls), policy=policy, costs=CostInfo())
        tree = drafter.draft(req)
        C = tree.tokens.shape[1] - 1
        # host copies (.cpu() first: the tree lives on the target's device, a GPU's tensors have no .numpy())
        acc[t] = accepted_lengths(tree.tokens[0, 1:].cpu().numpy(), (tree.parents[0, 1:] - 1).cpu().numpy(),
                                  policy.pool_scores[0, :C].float().cpu().numpy(), y[t + 1:t + 1 + max_calls],
                                  tree_topk, max_calls, v_grid)
        drafter.commit(answer_ids[:, t + 1:t + 2], 1, feats[:, P + t:P + t + 1] if feats is not None else None)
    return Replay(tree_topk, P, N, list(v_grid), acc)


def simulate(replay: Replay, calls: int, verify_budget: int) -> tuple:
    """(cycles, emitted_by_cycles) of the static setting on this answer: the decoder's loop on the
    recorded accepted lengths (the first token comes from the prefill)."""
    if verify_budget not in replay.v_grid:
        raise ValueError(f"verify_budget {verify_budget} is not in the replay's v_grid {replay.v_grid}")
    vi = replay.v_grid.index(verify_budget)
    t = cycles = emitted = 0
    while t + 1 < replay.answer_len:
        L = int(replay.accepted[t, calls - 1, vi])
        t += L + 1
        emitted += L + 1
        cycles += 1
    return cycles, emitted


# ------------------------------------------------------------------------------------- model
@dataclass
class GridRow:
    setting: StaticSetting
    tau: float                       # mean (accepted + 1) per cycle, replayed
    cycles: int                      # summed over the answers
    predicted_tokens_per_s: float    # tau / t_cycle
    predicted_speedup: float         # over the calibrated AR per-token cost
    measured: dict = field(default_factory=dict)  # filled for the timed settings

    def as_dict(self) -> dict:
        return {**self.setting.as_dict(), "tau": self.tau, "cycles": self.cycles,
                "predicted_tokens_per_s": self.predicted_tokens_per_s,
                "predicted_speedup": self.predicted_speedup, **({"measured": self.measured} if self.measured else {})}


def rank_settings(replays: dict, settings, cost_model, prefix_len: float, batch_size: int = 1) -> list:
    """replays {tree_topk: [Replay]} -> GridRows sorted by predicted tokens/s (best first; ties:
    fewer calls, then smaller V, then smaller W, i.e. the cheaper tree). batch_size B: the batch's tokens/s
    with B rows per verify (CostModel.t_cycle at B; at T = 0 a row's cycles do not depend on its batch)."""
    rows = []
    for s in settings:
        reps = replays.get(s.tree_topk)
        if not reps:
            raise ValueError(f"no replay for tree_topk {s.tree_topk}")
        cycles = emitted = 0
        for r in reps:
            c, e = simulate(r, s.max_draft_calls, s.verify_budget)
            cycles += c
            emitted += e
        tau = emitted / cycles if cycles else 0.0
        tps = cost_model.predicted_tokens_per_second(tau, s.max_draft_calls, s.verify_budget, s.tree_topk,
                                                     prefix_len, batch_size) if cycles else 0.0
        rows.append(GridRow(s, tau, cycles, tps, tps * cost_model.t_ar(prefix_len)))
    return _best_first(rows)


def _best_first(rows: list) -> list:
    rows.sort(key=lambda r: (-r.predicted_tokens_per_s, r.setting.max_draft_calls, r.setting.verify_budget,
                             r.setting.tree_topk))
    return rows


def rank_from_episodes(ep, settings, cost_model, prefix_len: float, batch_size: int = 1) -> list:
    """Sampling (T > 0), where no replay is exact: each setting's tau is the mean expected (accepted + 1)
    over the cycles of `radar collect` episodes recorded at that temperature (their exact per-(n, V)
    accepted-length distributions), then the same cost model. The episodes fix tree_topk. GridRow.cycles
    is the number of recorded cycles."""
    from radar_ext.training.train_policy import expected_tokens

    E = expected_tokens(ep)                                               # [C, N, nV]
    W, N, budgets = ep.meta["tree_topk"], ep.meta["max_draft_calls"], list(ep.meta["budgets"])
    rows = []
    for s in settings:
        if s.tree_topk != W:
            raise ValueError(f"tree_topk {s.tree_topk}: the episodes were recorded at tree_topk {W} (pass --tree-topk {W})")
        if s.max_draft_calls > N:
            raise ValueError(f"max_draft_calls {s.max_draft_calls} is above the episodes' {N}")
        # a budget at or above the pool verifies the whole pool: the smallest such budget is the same tree
        vi = next((i for i, b in enumerate(budgets) if b >= s.verify_budget), None)
        if vi is None or (budgets[vi] != s.verify_budget and s.verify_budget < pool_size(W, s.max_draft_calls)):
            raise ValueError(f"verify_budget {s.verify_budget} is not among the episodes' budgets {budgets}")
        tau = float(E[:, s.max_draft_calls - 1, vi].mean()) if E.shape[0] else 0.0
        tps = cost_model.predicted_tokens_per_second(tau, s.max_draft_calls, s.verify_budget, W, prefix_len, batch_size)
        rows.append(GridRow(s, tau, int(E.shape[0]), tps, tps * cost_model.t_ar(prefix_len)))
    return _best_first(rows)


def pick_distinct(rows: list, n: int) -> list:
    """The first n rows whose (calls, V, replayed cycles) differ: settings equal on all three draw
    the same trees (one draft call keeps the same best V root children for every W >= V), so
    timing more than one of them would only re-measure the noise."""
    seen, out = set(), []
    for r in rows:
        key = (r.setting.max_draft_calls, r.setting.verify_budget, r.cycles)
        if key not in seen:
            seen.add(key)
            out.append(r)
            if len(out) == n:
                break
    return out


# ------------------------------------------------------------------------------------ timing
def greedy_answers(target, prompts, max_new_tokens: int, eos_token_id) -> list:
    """The target's own greedy answers [1, N] (the replay references and the exactness check)."""
    out = []
    with torch.no_grad():
        for ids in prompts:
            g = target.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                do_sample=False, eos_token_id=eos_token_id, pad_token_id=_pad(eos_token_id))
            out.append(g[:, ids.shape[1]:])
    return out


def _pad(eos):
    if eos is None:
        return 0
    return eos[0] if isinstance(eos, (list, tuple)) else eos


def time_settings(target, drafter, prompts, answers, settings, max_new_tokens: int, eos_token_id,
                  repeats: int = 2, warmup: int = 1, progress: bool = False, temperature: float = 0.0,
                  seed: int = 0, batch_size: int = 1) -> dict:
    """time_decoders over one StaticPolicy RadarDecoder per StaticSetting, named str(setting)."""
    from radar_ext.decoder import RadarDecoder
    from radar_ext.policies import StaticPolicy

    decoders = {str(s): RadarDecoder(target, drafter, StaticPolicy(s.max_draft_calls), tree_topk=s.tree_topk,
                                     verify_budget=s.verify_budget) for s in settings}
    return time_decoders(target, decoders, prompts, answers, max_new_tokens, eos_token_id, repeats=repeats,
                         warmup=warmup, progress=progress, temperature=temperature, seed=seed, batch_size=batch_size)


def time_decoders(target, decoders: dict, prompts, answers, max_new_tokens: int, eos_token_id,
                  repeats: int = 2, warmup: int = 1, progress: bool = False, temperature: float = 0.0,
                  seed: int = 0, batch_size: int = 1) -> dict:
    """Real tokens/s of each RadarDecoder in `decoders` {name: decoder} and of the target's own generate
    ("ar"), interleaved per prompt with the order rotated. Greedy (temperature 0): every answer is checked
    against `answers`. Sampling: plain temperature sampling for all (top_k 0, top_p 1), each answer's draws
    seeded from `seed`, the (repeat, prompt) and the method; `exact` is None (nothing to compare).
    batch_size B > 1: consecutive prompts go in batches of B (HF's left padding; the last may be smaller),
    every call decodes a batch, a row's tokens count up to and including its EOS, and every row of ours is
    checked against its single-row greedy answer (HF's batched rows are not: padding may change them).
    Returns {name: {"tokens_per_s": [per repeat], "speedup": [per repeat], "tau", "cycles", "exact"}}."""
    from radar_ext.benchmark.batch import _eos_set, left_pad, row_answers
    from radar_ext.benchmark.methods import sampling_kwargs

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    names = ["ar"] + list(decoders)
    pad = _pad(eos_token_id)
    eos_ids = _eos_set(eos_token_id)
    if batch_size > 1:  # one "prompt" per batch: (ids [B, P], mask), its answers the rows' single-row ones
        groups = [list(range(i, min(i + batch_size, len(prompts)))) for i in range(0, len(prompts), batch_size)]
        inputs = [left_pad([prompts[j][0].tolist() for j in g], pad) for g in groups]
        refs = [[answers[j][0].tolist() for j in g] for g in groups] if answers is not None else [None] * len(groups)
    else:
        inputs = [(p, torch.ones_like(p)) for p in prompts]
        refs = answers if answers is not None else [None] * len(prompts)

    sampling = sampling_kwargs(temperature)  # the same plain sampling as `radar bench`

    def run(name, ids, mask, draw=0):
        t0 = time.perf_counter()
        with torch.no_grad():
            if name == "ar":
                torch.manual_seed(seed + draw)  # HF samples from the global generator
                out = target.generate(ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                      eos_token_id=eos_token_id, pad_token_id=pad, **sampling)
            else:
                gen = torch.Generator().manual_seed(seed + draw) if temperature > 0 else None
                out = decoders[name].generate(ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                              eos_token_id=eos_token_id, generator=gen, **sampling)
        return out, time.perf_counter() - t0

    for _ in range(warmup):
        for name in names:
            ids, mask = inputs[0]
            run(name, ids[:, -min(ids.shape[1], 64):], mask[:, -min(ids.shape[1], 64):])
    res = {n: {"tokens": [0] * repeats, "seconds": [0.0] * repeats, "cycles": 0, "emitted": 0,
               "exact": True if temperature == 0 else None, "answers": 0, "answer_tokens_per_s": []} for n in names}
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=repeats * len(inputs) * len(names), desc="time", unit="call", leave=False)
    k = 0
    for r in range(repeats):
        for i, ((ids, mask), ans) in enumerate(zip(inputs, refs)):
            order = names[k % len(names):] + names[:k % len(names)]
            k += 1
            for name in order:
                out, secs = run(name, ids, mask, draw=1000 * (r * len(inputs) + i) + names.index(name))
                rec = res[name]
                if batch_size > 1:
                    rows = row_answers(out, ids.shape[1], eos_ids)
                    n_new = sum(len(a) for a in rows)
                    if temperature == 0 and name != "ar":
                        rec["exact"] = rec["exact"] and rows == ans
                    elif name == "ar":
                        rec["exact"] = None
                else:
                    new = out[:, ids.shape[1]:]
                    n_new = new.shape[1]
                    if temperature == 0:
                        rec["exact"] = rec["exact"] and new.shape == ans.shape and bool(torch.equal(new, ans))
                rec["tokens"][r] += n_new
                rec["seconds"][r] += secs
                rec["answers"] += 1
                rec["answer_tokens_per_s"].append(n_new / secs)  # (repeat, prompt or batch) order for every name
                if name != "ar":
                    st = decoders[name].last_stats
                    rec["cycles"] += st.cycles
                    rec["emitted"] += sum((n + 1) * c for n, c in enumerate(st.accepted_hist))
                if bar is not None:
                    bar.update(1)
    if bar is not None:
        bar.close()
    ar_tps = [t / s for t, s in zip(res["ar"]["tokens"], res["ar"]["seconds"])]
    out = {}
    for name, rec in res.items():
        tps = [t / s for t, s in zip(rec["tokens"], rec["seconds"])]
        out[name] = {"tokens_per_s": tps, "tokens_per_s_mean": float(np.mean(tps)),
                     "speedup": [a / b for a, b in zip(tps, ar_tps)],
                     "speedup_mean": float(np.mean([a / b for a, b in zip(tps, ar_tps)])),
                     "exact": rec["exact"], "answers": rec["answers"],
                     "answer_tokens_per_s": rec["answer_tokens_per_s"]}
        if name != "ar":
            out[name].update(cycles=rec["cycles"] // repeats, tau=rec["emitted"] / rec["cycles"] if rec["cycles"] else 0.0)
    return out


# -------------------------------------------------------------------------------------- all
def tune_static(target, drafter, cost_model, prompts, *, calls_list, topk_list, budget_list,
                max_new_tokens: int = 128, eos_token_id=None, top: int = 3, time_prompts: int | None = None,
                repeats: int = 2, warmup: int = 1, progress: bool = False, log=None, temperature: float = 0.0,
                episodes=None, seed: int = 0, batch_size: int = 1) -> dict:
    """The whole search (module docstring). prompts: list of [1, P] int64 (chat-templated).
    temperature > 0: the ranking comes from `episodes` (`radar collect` at that temperature,
    rank_from_episodes) and the timing samples (time_settings). batch_size B > 1: the tree for batches
    of B rows: ranked with the calibration's batched verify (`radar calibrate --batch-sizes`) and timed on
    batches of B prompts (a row's greedy cycles, and so the replay, do not depend on its batch). Returns
    the static_tree.json object: the best setting's three keys at the top level, the timed rows, the
    model's full table and the protocol."""
    say = log or (lambda s: None)
    for name, xs in (("calls_list", calls_list), ("topk_list", topk_list), ("budget_list", budget_list)):
        if not xs or any(isinstance(x, bool) or not isinstance(x, int) or x < 1 for x in xs):
            raise ValueError(f"{name} must be a non-empty list of ints >= 1, got {list(xs)!r}")
    for name, v, lo in (("top", top, 1), ("repeats", repeats, 1), ("warmup", warmup, 0),
                        ("max_new_tokens", max_new_tokens, 2)):
        if v < lo:
            raise ValueError(f"{name} must be >= {lo}, got {v}")
    if not prompts:
        raise ValueError("prompts must not be empty")
    if not (isinstance(temperature, (int, float)) and temperature >= 0):
        raise ValueError(f"temperature must be a number >= 0, got {temperature!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    cost_model.verify_ratio(1, batch_size)  # an uncalibrated batch size is refused before any work
    sampled = temperature > 0
    if sampled:
        _check_episodes(episodes, temperature)
    t_start = time.perf_counter()
    settings = make_grid(calls_list, topk_list, budget_list)
    n_time = len(prompts) if time_prompts is None else max(1, min(time_prompts, len(prompts)))
    if sampled:
        answers, replays = None, None
        mean_len = float(episodes["seq_len"].double().mean())
        rows = rank_from_episodes(episodes, settings, cost_model, mean_len, batch_size)
        say(f"[tune-static] T = {temperature:g}: {len(settings)} settings ranked on {episodes.cycles} recorded cycles")
    else:
        answers, replays = _replay_all(target, drafter, prompts, settings, calls_list, topk_list, max_new_tokens,
                                       eos_token_id, progress, say)
        mean_len = float(np.mean([p.shape[1] + a.shape[1] / 2 for p, a in zip(prompts, answers)]))
        rows = rank_settings(replays, settings, cost_model, mean_len, batch_size)
    t_rank = time.perf_counter() - t_start
    timed = pick_distinct(rows, top)
    say(f"[tune-static] model's top {len(timed)}: " + "; ".join(
        f"{r.setting} tau {r.tau:.2f} pred {r.predicted_tokens_per_s:.1f} tok/s" for r in timed))
    meas = time_settings(target, drafter, prompts[:n_time], answers[:n_time] if answers else None,
                         [r.setting for r in timed], max_new_tokens, eos_token_id, repeats=repeats, warmup=warmup,
                         progress=progress, temperature=temperature, seed=seed, batch_size=batch_size)
    for r in timed:
        r.measured = meas[str(r.setting)]
        if not sampled:  # the replay must reproduce the real decoder's cycles (greedy: deterministic)
            r.measured["replay_cycles"] = sum(simulate(rep, r.setting.max_draft_calls, r.setting.verify_budget)[0]
                                              for rep in replays[r.setting.tree_topk][:n_time])
    eligible = timed if sampled else [r for r in timed if r.measured["exact"]]
    if not eligible:
        raise RuntimeError("no timed setting reproduced the target's greedy output; refusing to pick one")
    best = max(eligible, key=lambda r: r.measured["tokens_per_s_mean"])
    for r in timed:
        r.measured["vs_best"] = paired_speed_ratio(r.measured["answer_tokens_per_s"],
                                                   best.measured["answer_tokens_per_s"])
    rivals = [r for r in eligible if r is not best]
    tied = [r.as_dict() for r in rivals if not r.measured["vs_best"]["ci95"][1] < 1.0]
    chosen = (f"highest measured tokens/s at temperature {temperature:g} among the cost model's top {len(timed)}"
              if sampled else f"highest measured tokens/s among the cost model's top {len(timed)} (exact outputs only)")
    return {
        **best.setting.as_dict(),
        "schema": SCHEMA,
        "temperature": float(temperature),
        "batch_size": batch_size,
        "chosen_by": chosen,
        "separated": not tied if rivals else None,  # every other eligible timed tree's 95% interval vs the pick lies below 1 (None: no rival)
        "not_separated_from": tied,  # the eligible timed trees whose interval vs the pick reaches 1
        "best": best.as_dict(),
        "ar": meas["ar"],
        "timed": [r.as_dict() for r in timed],
        "table": [r.as_dict() for r in rows],
        "search": {"calls": sorted(calls_list), "tree_topk": sorted(topk_list), "verify_budget": sorted(budget_list),
                   "prompts": len(prompts), "time_prompts": n_time, "max_new_tokens": max_new_tokens,
                   "repeats": repeats, "warmup": warmup, "mean_prefix_len": mean_len, "temperature": float(temperature),
                   "batch_size": batch_size,
                   "ranked_on": "episodes" if sampled else "greedy replay",
                   "rank_seconds": t_rank, "seconds": time.perf_counter() - t_start,
                   "threads": torch.get_num_threads(), "calibration": cost_model.name,
                   "calibration_machine": cost_model.machine},
    }


def _check_episodes(episodes, temperature: float) -> None:
    if episodes is None:
        raise ValueError(f"temperature {temperature:g} needs episodes recorded at that temperature (`radar collect "
                         f"--temperature {temperature:g}`): greedy replays say nothing about sampled acceptance")
    temps = sorted({float(t) for t in episodes["temperature"].tolist()})
    if temps != [float(temperature)]:
        raise ValueError(f"the episodes were recorded at temperature(s) {temps}, not {float(temperature):g}")


def _replay_all(target, drafter, prompts, settings, calls_list, topk_list, max_new_tokens, eos_token_id, progress,
                say):
    """The target's greedy answers and their replays {W: [Replay]} at max(calls_list) draft calls."""
    v_grid = sorted({s.verify_budget for s in settings})
    K = max(calls_list)
    answers = greedy_answers(target, prompts, max_new_tokens, eos_token_id)
    say(f"[tune-static] {len(prompts)} prompt(s), {sum(a.shape[1] for a in answers)} greedy tokens; "
        f"{len(settings)} settings; replaying W in {sorted(topk_list)} at {K} draft calls")
    replays = {}
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(topk_list) * len(prompts), desc="replay", unit="answer", leave=False)
    for W in sorted(topk_list):
        replays[W] = []
        for ids, ans in zip(prompts, answers):
            replays[W].append(replay_answer(target, drafter, ids, ans, W, K, v_grid))
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    return answers, replays


def format_rows(rows: list, n: int = 15) -> str:
    """The top of the table (rows: dicts as in static_tree.json 'table' / 'timed')."""
    head = ("calls", "W", "V", "tau", "pred tok/s", "pred x", "meas tok/s", "meas x", "vs best [95%]", "exact")
    lines = [head]
    for r in rows[:n]:
        m = r.get("measured") or {}
        lines.append((str(r["max_draft_calls"]), str(r["tree_topk"]), str(r["verify_budget"]), f"{r['tau']:.2f}",
                      f"{r['predicted_tokens_per_s']:.1f}", f"{r['predicted_speedup']:.2f}",
                      f"{m['tokens_per_s_mean']:.1f}" if m else "-", f"{m['speedup_mean']:.2f}" if m else "-",
                      _vs_best(m.get("vs_best")), {True: "yes", False: "NO"}.get(m.get("exact"), "-")))
    return _render(lines)


def _vs_best(v) -> str:
    if not v:
        return "-"
    lo, hi = v["ci95"]
    return f"{v['ratio']:.3f}" + ("" if math.isnan(lo) else f" [{lo:.3f}-{hi:.3f}]")


# ------------------------------------------------------------------------- training-free adaptive policies
def tune_adaptive(target, drafter, kind: str, candidates: list, prompts, *, max_new_tokens: int = 128,
                  eos_token_id=None, repeats: int = 2, warmup: int = 1, progress: bool = False, log=None,
                  temperature: float = 0.0, seed: int = 0) -> dict:
    """The knob of a training-free controller (radar_ext.policies.adaptive), by real timing: every candidate
    {"label", "policy_kwargs", "tree_topk", "verify_budget"} decodes `prompts` (ShareGPT, never the benchmark)
    paired against the target's own generate, interleaved as in time_decoders; greedy answers must be
    token-identical to the target's. The best measured tokens/s wins; every candidate's speed against it is
    paired per answer (vs_best). Returns the setting JSON that `radar bench --methods KIND` reads."""
    from radar_ext.decoder import RadarDecoder
    from radar_ext.policies.adaptive import ADAPTIVE, SETTING_SCHEMA

    say = log or (lambda s: None)
    if kind not in ADAPTIVE:
        raise ValueError(f"kind must be one of {sorted(ADAPTIVE)}, got {kind!r}")
    if not candidates:
        raise ValueError("candidates must not be empty")
    if not prompts:
        raise ValueError("prompts must not be empty")
    t_start = time.perf_counter()
    decoders = {}
    for c in candidates:
        if c["label"] in decoders:
            raise ValueError(f"candidate labels must be distinct, {c['label']!r} is repeated")
        decoders[c["label"]] = RadarDecoder(target, drafter, ADAPTIVE[kind](**c["policy_kwargs"]),
                                            tree_topk=c["tree_topk"], verify_budget=c["verify_budget"])
    answers = None if temperature > 0 else greedy_answers(target, prompts, max_new_tokens, eos_token_id)
    say(f"[tune-static] {kind}: timing {len(candidates)} candidate(s) on {len(prompts)} prompt(s) x {repeats} repeat(s)")
    meas = time_decoders(target, decoders, prompts, answers, max_new_tokens, eos_token_id, repeats=repeats,
                         warmup=warmup, progress=progress, temperature=temperature, seed=seed)
    rows = [{**{k: c[k] for k in ("label", "tree_topk", "verify_budget")},
             "knob": {k: v for k, v in c["policy_kwargs"].items() if k not in ("costs", "acceptance")},
             "measured": meas[c["label"]]} for c in candidates]
    eligible = [r for r in rows if r["measured"]["exact"] is not False]
    if not eligible:
        raise RuntimeError(f"no {kind} candidate reproduced the target's greedy output; refusing to pick one")
    best = max(eligible, key=lambda r: r["measured"]["tokens_per_s_mean"])
    for r in rows:
        r["measured"]["vs_best"] = paired_speed_ratio(r["measured"]["answer_tokens_per_s"],
                                                      best["measured"]["answer_tokens_per_s"])
    tied = [r["label"] for r in eligible if r is not best and not r["measured"]["vs_best"]["ci95"][1] < 1.0]
    chosen = next(c for c in candidates if c["label"] == best["label"])
    return {"schema": SETTING_SCHEMA, "policy": kind, "policy_kwargs": chosen["policy_kwargs"],
            "tree_topk": chosen["tree_topk"], "verify_budget": chosen["verify_budget"], "label": best["label"],
            "temperature": float(temperature),
            "chosen_by": f"highest measured tokens/s of {len(rows)} candidate(s)"
                         + (" (exact outputs only)" if temperature == 0 else f" at temperature {temperature:g}"),
            "separated": (not tied) if len(eligible) > 1 else None, "not_separated_from": tied,
            "ar": meas["ar"], "timed": rows,
            "search": {"prompts": len(prompts), "max_new_tokens": max_new_tokens, "repeats": repeats,
                       "warmup": warmup, "temperature": float(temperature), "seconds": time.perf_counter() - t_start,
                       "threads": torch.get_num_threads()}}


def format_adaptive_rows(rows: list) -> str:
    """The timed candidates of tune_adaptive, best measured first."""
    head = ("candidate", "W", "V", "tau", "meas tok/s", "meas x", "vs best [95%]", "exact")
    lines = [head]
    for r in sorted(rows, key=lambda r: -r["measured"]["tokens_per_s_mean"]):
        m = r["measured"]
        lines.append((r["label"], str(r["tree_topk"]), str(r["verify_budget"]), f"{m.get('tau', 0.0):.2f}",
                      f"{m['tokens_per_s_mean']:.1f}", f"{m['speedup_mean']:.2f}", _vs_best(m.get("vs_best")),
                      {True: "yes", False: "NO"}.get(m.get("exact"), "-")))
    return _render(lines)


def _render(lines: list) -> str:
    """Rows of strings (the first is the header) -> right-aligned columns with a rule under the header."""
    w = [max(len(x[i]) for x in lines) for i in range(len(lines[0]))]
    out = ["  ".join(s.rjust(k) for s, k in zip(x, w)) for x in lines]
    out.insert(1, "  ".join("-" * k for k in w))
    return "\n".join(out)
