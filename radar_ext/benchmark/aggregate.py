"""Records -> summary. Pure functions on the raw records, so a saved run can be re-analysed.

Per method and per category (and overall), per repeat r:
  tokens_per_s[r] = sum(new_tokens) / sum(seconds)           (throughput over the same answers)
  speedup[r]      = tokens_per_s[r] / baseline tokens_per_s[r] on the same (question, turn) answers
The reported value is the mean over repeats, with min, max and std (ddof=0) as the spread.
tau = mean(accepted_len + 1) over cycles, from the summed accepted-length histogram;
draft_calls and verify_budget are means per cycle; policy_share = policy seconds / total seconds;
exact_match = fraction of answers token-identical to the baseline (T = 0 only); time_split =
the decoder's own time split as shares of the wall time (our methods only).
A cycle is a target forward after the prefill (RadarDecoder's definition; for HF methods it is
derived from the positions of the target forwards, see runner.ForwardCounter).
"""
from __future__ import annotations

import math
from collections import OrderedDict, defaultdict

from radar_ext.benchmark.methods import BASELINE

OVERALL = "overall"


def paired_interval(diffs) -> tuple[float, float, float]:
    """Mean of paired per-item differences and its 95% interval (normal approximation of the paired t;
    nan bounds for fewer than two items)."""
    diffs = [float(d) for d in diffs]
    if not diffs:
        raise ValueError("paired_interval needs at least one difference")
    m = sum(diffs) / len(diffs)
    if len(diffs) < 2:
        return m, float("nan"), float("nan")
    sd = math.sqrt(sum((d - m) ** 2 for d in diffs) / (len(diffs) - 1))
    half = 1.96 * sd / math.sqrt(len(diffs))
    return m, m - half, m + half


def _spread(values) -> dict:
    if not values:
        return {"mean": None, "min": None, "max": None, "std": None}
    m = sum(values) / len(values)
    return {"mean": m, "min": min(values), "max": max(values),
            "std": math.sqrt(sum((v - m) ** 2 for v in values) / len(values))}


def _key(r):
    return (r["repeat"], str(r["question_id"]), r["turn"])


def _sum_hist(records):
    hist = []
    for r in records:
        h = r.get("accepted_hist")
        if h:
            if len(h) > len(hist):
                hist += [0] * (len(h) - len(hist))
            for i, c in enumerate(h):
                hist[i] += c
    return hist


def summarize(records, baseline_records) -> dict:
    """One cell of the table: `records` of one method (one category or all), paired with the
    baseline's records (same filter)."""
    base_by_key = {_key(r): r for r in baseline_records}
    by_repeat = defaultdict(list)
    for r in records:
        by_repeat[r["repeat"]].append(r)
    tps, speedups = [], []
    for rep in sorted(by_repeat):
        recs = by_repeat[rep]
        secs = sum(r["seconds"] for r in recs)
        t = sum(r["new_tokens"] for r in recs) / secs if secs > 0 else float("nan")
        tps.append(t)
        paired = [base_by_key[_key(r)] for r in recs if _key(r) in base_by_key]
        if len(paired) == len(recs) and paired:
            bsecs = sum(b["seconds"] for b in paired)
            bt = sum(b["new_tokens"] for b in paired) / bsecs if bsecs > 0 else float("nan")
            speedups.append(t / bt if bt > 0 else float("nan"))
    hist = _sum_hist(records)
    cycles = sum(hist)
    with_cycles = [r for r in records if r.get("cycles")]
    ncyc = sum(r["cycles"] for r in with_cycles)

    def per_cycle(key):
        rs = [r for r in with_cycles if r.get(key) is not None]
        n = sum(r["cycles"] for r in rs)
        return sum(r[key] for r in rs) / n if rs and n else None

    pol = [r for r in records if r.get("policy_seconds") is not None]
    exact = [r["exact"] for r in records if r.get("exact") is not None]
    split = [r for r in records if r.get("time_split")]
    split_secs = sum(r["seconds"] for r in split)
    time_split = ({k: sum(r["time_split"].get(k, 0.0) for r in split) / split_secs
                   for k in split[0]["time_split"]} if split and split_secs > 0 else None)
    tps_s, sp_s = _spread(tps), _spread(speedups)
    return {
        "tokens_per_s": tps_s["mean"], "tokens_per_s_min": tps_s["min"],
        "tokens_per_s_max": tps_s["max"], "tokens_per_s_std": tps_s["std"],
        "speedup": sp_s["mean"], "speedup_min": sp_s["min"], "speedup_max": sp_s["max"],
        "speedup_std": sp_s["std"],
        "tau": (sum((k + 1) * c for k, c in enumerate(hist)) / cycles) if cycles else None,
        "draft_calls": per_cycle("draft_calls") if ncyc else None,
        "verify_budget": per_cycle("verify_tokens") if ncyc else None,
        "policy_share": (sum(r["policy_seconds"] for r in pol) / sum(r["seconds"] for r in pol)
                         if pol and sum(r["seconds"] for r in pol) > 0 else None),
        "exact_match": (sum(exact) / len(exact)) if exact else None,
        "exact_checked": len(exact),
        "time_split": time_split,
        "answers": len(records),
        "new_tokens": sum(r["new_tokens"] for r in records),
        "seconds": sum(r["seconds"] for r in records),
        "target_forwards": sum(r.get("target_forwards", 0) for r in records),
        "repeats": len(by_repeat),
        "accepted_hist": hist,
    }


def aggregate(records, methods, baseline=BASELINE) -> dict:
    """{"methods": {name: {...overall..., "per_category": {cat: {...}}}}, "categories": [...]}"""
    categories = list(OrderedDict.fromkeys(r["category"] for r in records))
    by = defaultdict(list)
    for r in records:
        by[(r["method"], r["category"])].append(r)
    out = OrderedDict()
    for m in methods:
        mine = [r for r in records if r["method"] == m]
        base = [r for r in records if r["method"] == baseline]
        cell = summarize(mine, base)
        cell["per_category"] = OrderedDict(
            (c, summarize(by[(m, c)], by[(baseline, c)])) for c in categories)
        out[m] = cell
    return {"methods": out, "categories": categories}


def mismatches(records) -> list:
    """(method, repeat, question_id, turn, first differing position) of every inexact answer."""
    base = {_key(r): r["output_ids"] for r in records if r["method"] == BASELINE}
    out = []
    for r in records:
        if r.get("exact") is False:
            b = base.get(_key(r), [])
            o = r["output_ids"]
            pos = next((i for i, (x, y) in enumerate(zip(o, b)) if x != y), min(len(o), len(b)))
            out.append((r["method"], r["repeat"], r["question_id"], r["turn"], pos))
    return out
