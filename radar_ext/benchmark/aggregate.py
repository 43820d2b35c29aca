"""Records -> summary. Pure functions on the raw records, so a saved run can be re-analysed.

Per method and per category (and overall), per repeat r:
  tokens_per_s[r] = sum(new_tokens) / sum(seconds)           (throughput over the same answers)
  decode_tokens_per_s[r] = sum(new_tokens - 1) / sum(seconds - prefill_seconds)   (the decode-only rate: the
                    tokens after the first over the time after the prefill, as llama-bench's tg rate counts;
                    answers of one token or without a prefill time are left out)
  speedup[r]      = tokens_per_s[r] / baseline tokens_per_s[r] on the same (question, turn) answers
  speedup_vs_ar_fast[r] = the same ratio over our own plain decoding (`ar-fast`) when it ran: the
                    speculation's own gain, beside `speedup` (vs HF generate), which also holds the forward's
The reported value is the mean over repeats, with min, max and std (ddof=0) as the spread.
tau = mean(accepted_len + 1) over cycles, from the summed accepted-length histogram;
draft_calls and verify_budget are means per cycle; skip_share = the share of cycles without a draft call
(RadarDecoder's skipped_cycles: the policy's plain steps and lookup steps, our methods only); lookup_step_share = the
share of cycles that were lookup steps (lookup nodes verified without a draft call); policy_share = policy seconds / total seconds;
lookup_share = the share of accepted draft tokens only a context lookup proposed (hybrid methods; shared_share:
those both the EAGLE head and a lookup proposed);
exact_match = fraction of answers token-identical to the baseline (T = 0 only); time_split =
the decoder's own time split as shares of the wall time (our methods only).
A cycle is a target forward after the prefill (RadarDecoder's definition; for HF methods it is
derived from the positions of the target forwards, see runner.ForwardCounter).
"""
from __future__ import annotations

import math
from collections import OrderedDict, defaultdict

from radar_ext.benchmark.methods import BASELINE, OWN_BASELINE

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


def _throughput(recs) -> float:
    secs = sum(r["seconds"] for r in recs)
    return sum(r["new_tokens"] for r in recs) / secs if secs > 0 else float("nan")


def _decode_throughput(recs) -> float | None:
    rs = [r for r in recs if r.get("prefill_seconds") is not None and r["new_tokens"] > 1]
    secs = sum(r["seconds"] - r["prefill_seconds"] for r in rs)
    return sum(r["new_tokens"] - 1 for r in rs) / secs if rs and secs > 0 else None


def _speedups(by_repeat: dict, ref_records) -> list:
    """Per repeat: tokens/s over the reference's tokens/s on the same answers (a repeat missing any is skipped)."""
    ref_by_key = {_key(r): r for r in ref_records}
    out = []
    for rep in sorted(by_repeat):
        recs = by_repeat[rep]
        paired = [ref_by_key[_key(r)] for r in recs if _key(r) in ref_by_key]
        if len(paired) == len(recs) and paired:
            bt = _throughput(paired)
            out.append(_throughput(recs) / bt if bt > 0 else float("nan"))
    return out


def summarize(records, baseline_records, own_records=None) -> dict:
    """One cell of the table: `records` of one method (one category or all), paired with the
    baseline's records (same filter) and, when given, our own plain decoding's (speedup_vs_ar_fast)."""
    by_repeat = defaultdict(list)
    for r in records:
        by_repeat[r["repeat"]].append(r)
    tps = [_throughput(by_repeat[rep]) for rep in sorted(by_repeat)]
    speedups = _speedups(by_repeat, baseline_records)
    own = _spread(_speedups(by_repeat, own_records)) if own_records else _spread([])
    hist = _sum_hist(records)
    cycles = sum(hist)
    with_cycles = [r for r in records if r.get("cycles")]
    ncyc = sum(r["cycles"] for r in with_cycles)

    def per_cycle(key):
        rs = [r for r in with_cycles if r.get(key) is not None]
        n = sum(r["cycles"] for r in rs)
        return sum(r[key] for r in rs) / n if rs and n else None

    hyb = [r for r in records if r.get("lookup_accepted") is not None and r.get("accepted_hist")]
    hyb_accepted = sum(k * c for r in hyb for k, c in enumerate(r["accepted_hist"]))
    pol = [r for r in records if r.get("policy_seconds") is not None]
    exact = [r["exact"] for r in records if r.get("exact") is not None]
    split = [r for r in records if r.get("time_split")]
    split_secs = sum(r["seconds"] for r in split)
    time_split = ({k: sum(r["time_split"].get(k, 0.0) for r in split) / split_secs
                   for k in split[0]["time_split"]} if split and split_secs > 0 else None)
    tps_s, sp_s = _spread(tps), _spread(speedups)
    decode = [d for d in (_decode_throughput(by_repeat[rep]) for rep in sorted(by_repeat)) if d is not None]
    dec_s = _spread(decode)
    return {
        "decode_tokens_per_s": dec_s["mean"], "decode_tokens_per_s_min": dec_s["min"],
        "decode_tokens_per_s_max": dec_s["max"], "decode_tokens_per_s_std": dec_s["std"],
        "tokens_per_s": tps_s["mean"], "tokens_per_s_min": tps_s["min"],
        "tokens_per_s_max": tps_s["max"], "tokens_per_s_std": tps_s["std"],
        "speedup": sp_s["mean"], "speedup_min": sp_s["min"], "speedup_max": sp_s["max"],
        "speedup_std": sp_s["std"],
        "speedup_vs_ar_fast": own["mean"], "speedup_vs_ar_fast_min": own["min"],
        "speedup_vs_ar_fast_max": own["max"], "speedup_vs_ar_fast_std": own["std"],
        "tau": (sum((k + 1) * c for k, c in enumerate(hist)) / cycles) if cycles else None,
        "draft_calls": per_cycle("draft_calls") if ncyc else None,
        "verify_budget": per_cycle("verify_tokens") if ncyc else None,
        "skip_share": per_cycle("skipped_cycles") if ncyc else None,
        "lookup_step_share": per_cycle("lookup_steps") if ncyc else None,
        "lookup_share": (sum(r["lookup_accepted"] for r in hyb) / hyb_accepted) if hyb_accepted else None,
        "shared_share": (sum(r["shared_accepted"] for r in hyb) / hyb_accepted) if hyb_accepted else None,
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


def aggregate(records, methods, baseline=BASELINE, own_baseline=OWN_BASELINE) -> dict:
    """{"methods": {name: {...overall..., "per_category": {cat: {...}}}}, "categories": [...],
    "comparisons": paired_comparisons(...)}"""
    categories = list(OrderedDict.fromkeys(r["category"] for r in records))
    by = defaultdict(list)
    for r in records:
        by[(r["method"], r["category"])].append(r)
    out = OrderedDict()
    base = [r for r in records if r["method"] == baseline]
    own = [r for r in records if r["method"] == own_baseline]
    for m in methods:
        mine = [r for r in records if r["method"] == m]
        cell = summarize(mine, base, own)
        cell["per_category"] = OrderedDict(
            (c, summarize(by[(m, c)], by[(baseline, c)], by[(own_baseline, c)])) for c in categories)
        out[m] = cell
    return {"methods": out, "categories": categories, "comparisons": paired_comparisons(records, out)}


LEARNED = ("radar", "ltd")
# The opponents a learned controller must beat (METHOD.md 9): the grid-searched static tree and the
# training-free adaptive controllers.
OPPONENTS = ("static-gs", "pmin", "ema", "goodput")


def paired_speed_ratio(tokens_per_s, ref_tokens_per_s) -> dict:
    """A method's speed against a reference over the same answers, paired per answer: the geometric mean
    of the per-answer tokens/s ratios and its 95% interval (normal approximation on the log ratios).
    Below 1 is slower than the reference."""
    if len(tokens_per_s) != len(ref_tokens_per_s) or not tokens_per_s:
        raise ValueError(f"paired_speed_ratio needs the same non-empty answers, got {len(tokens_per_s)} and "
                         f"{len(ref_tokens_per_s)}")
    m, lo, hi = paired_interval([math.log(a / b) for a, b in zip(tokens_per_s, ref_tokens_per_s)])
    return {"ratio": math.exp(m), "ci95": [math.exp(lo), math.exp(hi)], "answers": len(tokens_per_s)}


def paired_ratio(records, method: str, ref: str) -> dict | None:
    """paired_speed_ratio of `method` against `ref` over the answers both gave; None when they share none."""
    ref_tps = {_key(r): r["new_tokens"] / r["seconds"] for r in records if r["method"] == ref and r["seconds"] > 0}
    pairs = [(r["new_tokens"] / r["seconds"], ref_tps[_key(r)]) for r in records
             if r["method"] == method and r["seconds"] > 0 and ref_tps.get(_key(r), 0) > 0 and r["new_tokens"] > 0]
    if not pairs:
        return None
    return paired_speed_ratio([a for a, _ in pairs], [b for _, b in pairs])


def paired_comparisons(records, cells: dict) -> dict:
    """Each learned method present against each opponent present and against the best of them (the one with
    the highest overall tokens/s): {"best_opponent": name, "<learned>": {"vs <opponent>": paired_ratio}}."""
    present = [m for m in OPPONENTS if m in cells and cells[m]["tokens_per_s"] is not None]
    if not present:
        return {}
    best = max(present, key=lambda m: cells[m]["tokens_per_s"])
    out = {"best_opponent": best}
    for m in LEARNED:
        if m in cells:
            out[m] = {f"vs {o}": paired_ratio(records, m, o) for o in present}
            out[m]["vs best"] = out[m][f"vs {best}"]
    return out


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
