"""Offline: how much any draft controller could gain over the best static tree on recorded cycles, and
how much the shipped (or given) RADAR and LTD policies do, per temperature, under one machine's costs.

From `radar collect` episodes (every cycle's exact expected accepted length for every stopping point n
and verify budget V) and a `radar calibrate` JSON (T_draft, T_verify(V), T_policy, t_ar), all in expected
tokens/s = sum E[L + 1] / sum T_cycle (radar_ext.training.train_policy):
- best static: the single (n, V) that is best on these cycles (the grid-searched opponent, chosen here
  with hindsight on the same cycles, so it is if anything too strong a baseline for the policies and
  exactly the baseline for the ceiling);
- plain: plain decoding, one token per forward (1 / t_ar): what a controller that never drafts gets;
- oracle: the best per-cycle (n, V) knowing each cycle's expected accepted lengths (Dinkelbach's exact
  maximum of the ratio), paying a controller's decision time as the policies do: no controller that
  decides from what it sees before verifying can beat it; "oracle + skip" may also make plain steps
  (1 token in t_ar), paying the pre-draft decision on every cycle;
- RADAR (at its trained V, against the best static and the oracle at that V) and LTD (given these costs
  as its cost features, as `LtdPolicy.from_pretrained(costs=...)` does), each labelled by its options
  (+hist: history features, +skip: the pre-draft skip): its gain over the best static, its share of
  skipped cycles, and `room`, the share of the gain of the oracle with its own action set that it gets.
  Pass several directories per kind (e.g. trained with and without --history) to see what the history
  features recover.

    python bench/controller_ceiling.py --episodes T0_DIR T1_DIR --costs CALIBRATION.json [--split all]
        [--radar DIR [DIR ...]] [--ltd DIR [DIR ...]] [--json OUT]

On episodes recorded on benchmark questions (`radar collect --questions FILE`), --by-category adds a row
per category under each temperature's overall row, and --versus-plain gives every gain over plain
decoding instead of over the best static tree (the benchmark's speedups are over `ar-fast`).
"""
from __future__ import annotations

import argparse
import json
import sys

import torch


def label(policy) -> str:
    return policy.kind + ("+hist" if policy.history else "") + ("+skip" if policy.skip else "")


def _as_list(p) -> list:
    return [] if p is None else list(p) if isinstance(p, (list, tuple)) else [p]


def categories(ep) -> list:
    """[(category, mask [C])] of episodes recorded on benchmark questions (prompt ids "category/question id"),
    in first-seen order."""
    ids = ep.meta.get("prompt_ids") or []
    if not ep.meta.get("questions") or not all("/" in i for i in ids):
        raise ValueError("--by-category needs episodes recorded on benchmark questions (`radar collect "
                         "--questions FILE`); these were recorded on ShareGPT prompts")
    cat_of = [i.split("/", 1)[0] for i in ids]
    cycle_cat = [cat_of[j] for j in ep["prompt_index"].tolist()]
    names = list(dict.fromkeys(cycle_cat))
    return [(c, torch.tensor([x == c for x in cycle_cat], dtype=torch.bool)) for c in names]


def ceiling_rows(ep, costs, radar=None, ltd=None, by_category: bool = False) -> list:
    """One dict per temperature: best static, plain decoding, the oracle without and with skip, and every
    policy's expected tokens/s and gains (`policies`, in the order given, LTD first; `ltd` / `radar`: the
    first of each kind). radar, ltd: a policy, a list of them, or None. by_category: after each
    temperature's row, one per category (`category` set) of the same temperature (see categories)."""
    if by_category:
        from radar_ext.training.train_policy import subset, temperatures
        cats = categories(ep)
        rows = []
        for t in temperatures(ep):
            at_t = ep["temperature"] == t
            rows += ceiling_rows(subset(ep, at_t), costs, radar, ltd)
            for name, mask in cats:
                if bool((mask & at_t).any()):
                    rows += [dict(r, category=name) for r in ceiling_rows(subset(ep, mask & at_t), costs, radar, ltd)]
        return rows
    from radar_ext.training.train_policy import (_AtCosts, best_static_throughput, evaluate, oracle_room,
                                                 oracle_throughput, plain_throughput, static_grid, subset,
                                                 temperatures)
    budgets = ep.meta["budgets"]
    rows = []
    for t in temperatures(ep):
        sub = subset(ep, ep["temperature"] == t)
        grid = static_grid(sub, costs)
        bn, bv = divmod(int(grid.argmax()), len(budgets))
        best = float(grid[bn, bv])
        oracle, oracle_skip = oracle_throughput(sub, costs), oracle_throughput(sub, costs, skip=True)
        plain = plain_throughput(costs)
        row = {"temperature": t, "cycles": sub.cycles,
               "best_static": {"max_draft_calls": bn + 1, "verify_budget": budgets[bv], "tokens_per_s": best},
               "plain": {"tokens_per_s": plain, "gain": plain / best - 1},
               "oracle": {"tokens_per_s": oracle["throughput"], "gain": oracle["throughput"] / best - 1,
                          "mean_draft_calls": oracle["mean_draft_calls"]},
               "oracle_skip": {"tokens_per_s": oracle_skip["throughput"], "gain": oracle_skip["throughput"] / best - 1,
                               "mean_draft_calls": oracle_skip["mean_draft_calls"],
                               "skip_share": oracle_skip["skip_share"]},
               "policies": []}
        for pol in _as_list(ltd):
            with _AtCosts(pol, costs):
                r = evaluate(pol, sub, costs)
            ceiling = oracle_skip if pol.skip else oracle
            row["policies"].append({"kind": "ltd", "label": label(pol), "history": pol.history, "skip": pol.skip,
                                    "tokens_per_s": r["throughput"], "gain": r["throughput"] / best - 1,
                                    "room": oracle_room(r["throughput"], best, ceiling["throughput"]),
                                    "skip_share": r["skip_share"], "mean_draft_calls": r["mean_draft_calls"],
                                    "mean_verify_budget": r["mean_verify_budget"]})
        for pol in _as_list(radar):
            V = pol.trained_verify_budget
            if V not in budgets:
                raise ValueError(f"--radar: the policy's verify budget {V} is not among the episodes' budgets {budgets}")
            vi = budgets.index(V)
            r = evaluate(pol, sub, costs, v_idx_fixed=vi)
            best_v = best_static_throughput(sub, costs, vi)
            o_v = oracle_throughput(sub, costs, vi, skip=pol.skip)["throughput"]
            row["policies"].append({"kind": "radar", "label": label(pol), "history": pol.history, "skip": pol.skip,
                                    "verify_budget": V, "tokens_per_s": r["throughput"], "gain": r["throughput"] / best - 1,
                                    "gain_at_V": r["throughput"] / best_v - 1, "oracle_gain_at_V": o_v / best_v - 1,
                                    "room": oracle_room(r["throughput"], best_v, o_v), "skip_share": r["skip_share"],
                                    "mean_draft_calls": r["mean_draft_calls"]})
        for kind in ("ltd", "radar"):
            first = next((p for p in row["policies"] if p["kind"] == kind), None)
            if first is not None:
                row[kind] = first
        rows.append(row)
    return rows


def _gain(tokens_per_s: float, row, versus_plain: bool) -> str:
    """A rate as a gain over the best static tree (default) or, versus_plain, as a ratio over plain decoding."""
    if versus_plain:
        return f"{tokens_per_s / row['plain']['tokens_per_s']:.2f}x"
    return f"{tokens_per_s / row['best_static']['tokens_per_s'] - 1:+.1%}"


def _policy_cell(p, row=None, versus_plain: bool = False) -> str:
    room = "-" if p["room"] is None else f"{p['room']:.0%}"
    g = _gain(p["tokens_per_s"], row, True) if versus_plain else f"{p['gain']:+.1%}"
    s = f"{g} (room {room}, skip {p['skip_share']:.0%}, n {p['mean_draft_calls']:.2f}"
    if p["kind"] == "ltd":
        return s + f", V {p['mean_verify_budget']:.1f})"
    return s + f"; V {p['verify_budget']}: {p['gain_at_V']:+.1%} / {p['oracle_gain_at_V']:+.1%})"


def format_rows(rows, versus_plain: bool = False) -> str:
    """A markdown table; gains over the best static tree, or (versus_plain) rates over plain decoding."""
    labels = []
    for r in rows:
        for p in r["policies"]:
            if p["label"] not in labels:
                labels.append(p["label"])
    cat = any("category" in r for r in rows)
    base = "plain: tok/s" if versus_plain else "plain"
    head = (["T"] + ["category"] * cat + ["cycles", "best static (n, V): tok/s", base, "oracle", "oracle + skip"]
            + labels)
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        b, o, os_ = r["best_static"], r["oracle"], r["oracle_skip"]
        g = lambda x: _gain(x, r, versus_plain)  # noqa: E731
        cells = ([f"{r['temperature']:g}"] + [r.get("category", "all")] * cat +
                 [str(r["cycles"]), f"{b['max_draft_calls']}, {b['verify_budget']}: {b['tokens_per_s']:.1f}"
                  + (f" ({g(b['tokens_per_s'])})" if versus_plain else ""),
                  f"{r['plain']['tokens_per_s']:.1f}" if versus_plain else f"{r['plain']['gain']:+.1%}",
                  f"{g(o['tokens_per_s'])} (n {o['mean_draft_calls']:.2f})",
                  f"{g(os_['tokens_per_s'])} (skip {os_['skip_share']:.0%}, n {os_['mean_draft_calls']:.2f})"])
        by_label = {p["label"]: p for p in r["policies"]}
        cells += [_policy_cell(by_label[l], r, versus_plain) if l in by_label else "-" for l in labels]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--episodes", nargs="+", required=True, help="`radar collect` directories (as for train-policy)")
    p.add_argument("--costs", required=True, help="a `radar calibrate` JSON of the machine to score for")
    p.add_argument("--split", choices=("all", "train", "val"), default="all",
                   help="which recorded cycles to score (default: all; the ceiling needs no training)")
    p.add_argument("--prefix-len", type=float, default=None,
                   help="context length the calibration is read at (default: the scored cycles' mean)")
    p.add_argument("--radar", nargs="+", default=["shipped"],
                   help="RADAR policy directories, 'shipped' (default) or 'none'")
    p.add_argument("--ltd", nargs="+", default=["shipped"], help="LTD policy directories, 'shipped' (default) or 'none'")
    p.add_argument("--json", default=None, help="also write the rows here")
    p.add_argument("--by-category", action="store_true",
                   help="also a row per category (episodes of `radar collect --questions`)")
    p.add_argument("--versus-plain", action="store_true",
                   help="rates over plain decoding (as the benchmark's speedups over ar-fast) instead of gains "
                        "over the best static tree")
    args = p.parse_args(argv)
    if args.prefix_len is not None and not args.prefix_len > 0:
        p.error(f"--prefix-len must be > 0, got {args.prefix_len}")

    from radar_ext.policies import LtdPolicy, PolicyCosts, RadarPolicy
    from radar_ext.training.episodes import load_episodes

    ep = load_episodes(args.episodes, args.split)
    prefix = args.prefix_len or float(ep["seq_len"].double().mean())
    costs = PolicyCosts.load(args.costs, tree_topk=ep.meta["tree_topk"], prefix_len=prefix)

    def policies(cls, specs):
        return [cls.from_pretrained(None if s == "shipped" else s) for s in specs if s != "none"]

    try:
        rows = ceiling_rows(ep, costs, radar=policies(RadarPolicy, args.radar), ltd=policies(LtdPolicy, args.ltd),
                            by_category=args.by_category)
    except ValueError as e:
        p.error(str(e))
    print(f"expected tokens/s on {ep.cycles} recorded cycles ({args.split}), costs {args.costs} at prefix {prefix:.0f}:")
    print(format_rows(rows, args.versus_plain))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"episodes": args.episodes, "costs": args.costs, "split": args.split, "prefix_len": prefix,
                       "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
