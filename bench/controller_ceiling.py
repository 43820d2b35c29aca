"""Offline: how much any draft controller could gain over the best static tree on recorded cycles, and
how much the shipped (or given) RADAR and LTD policies do, per temperature, under one machine's costs.

From `radar collect` episodes (every cycle's exact expected accepted length for every stopping point n
and verify budget V) and a `radar calibrate` JSON (T_draft, T_verify(V), T_policy), all in expected
tokens/s = sum E[L + 1] / sum T_cycle (radar_ext.training.train_policy):
- best static: the single (n, V) that is best on these cycles (the grid-searched opponent, chosen here
  with hindsight on the same cycles, so it is if anything too strong a baseline for the policies and
  exactly the baseline for the ceiling);
- oracle: the best per-cycle (n, V) knowing each cycle's expected accepted lengths (Dinkelbach's exact
  maximum of the ratio), paying a controller's decision time as the policies do: no controller that
  decides from what it sees before verifying can beat it;
- RADAR (at its trained V, against the best static and the oracle at that V) and LTD (given these costs
  as its cost features, as `LtdPolicy.from_pretrained(costs=...)` does).

    python bench/controller_ceiling.py --episodes T0_DIR T1_DIR --costs CALIBRATION.json [--split all]
        [--radar DIR] [--ltd DIR] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import sys


def ceiling_rows(ep, costs, radar=None, ltd=None) -> list:
    """One dict per temperature: best static, oracle and the policies' expected tokens/s and gains."""
    from radar_ext.training.train_policy import (_AtCosts, best_static_throughput, evaluate, oracle_throughput,
                                                 static_grid, subset, temperatures)
    budgets = ep.meta["budgets"]
    rows = []
    for t in temperatures(ep):
        sub = subset(ep, ep["temperature"] == t)
        grid = static_grid(sub, costs)
        bn, bv = divmod(int(grid.argmax()), len(budgets))
        best = float(grid[bn, bv])
        oracle = oracle_throughput(sub, costs)
        row = {"temperature": t, "cycles": sub.cycles,
               "best_static": {"max_draft_calls": bn + 1, "verify_budget": budgets[bv], "tokens_per_s": best},
               "oracle": {"tokens_per_s": oracle["throughput"], "gain": oracle["throughput"] / best - 1,
                          "mean_draft_calls": oracle["mean_draft_calls"]}}
        if ltd is not None:
            with _AtCosts(ltd, costs):
                r = evaluate(ltd, sub, costs)
            row["ltd"] = {"tokens_per_s": r["throughput"], "gain": r["throughput"] / best - 1,
                          "mean_draft_calls": r["mean_draft_calls"], "mean_verify_budget": r["mean_verify_budget"]}
        if radar is not None:
            V = radar.trained_verify_budget
            if V not in budgets:
                raise ValueError(f"--radar: the policy's verify budget {V} is not among the episodes' budgets {budgets}")
            vi = budgets.index(V)
            r = evaluate(radar, sub, costs, v_idx_fixed=vi)
            best_v = best_static_throughput(sub, costs, vi)
            o_v = oracle_throughput(sub, costs, vi)["throughput"]
            row["radar"] = {"verify_budget": V, "tokens_per_s": r["throughput"], "gain": r["throughput"] / best - 1,
                            "gain_at_V": r["throughput"] / best_v - 1, "oracle_gain_at_V": o_v / best_v - 1,
                            "mean_draft_calls": r["mean_draft_calls"]}
        rows.append(row)
    return rows


def format_rows(rows) -> str:
    out = ["| T | cycles | best static (n, V): tok/s | oracle | LTD | RADAR (its V: gain / oracle at V) |",
           "|---|---|---|---|---|---|"]
    for r in rows:
        b, o = r["best_static"], r["oracle"]
        ltd = r.get("ltd")
        rad = r.get("radar")
        ltd_s = (f"{ltd['gain']:+.1%} (n {ltd['mean_draft_calls']:.2f}, V {ltd['mean_verify_budget']:.1f})"
                 if ltd else "-")
        rad_s = (f"{rad['gain']:+.1%} (V {rad['verify_budget']}: {rad['gain_at_V']:+.1%} / {rad['oracle_gain_at_V']:+.1%}, "
                 f"n {rad['mean_draft_calls']:.2f})" if rad else "-")
        out.append(f"| {r['temperature']:g} | {r['cycles']} | {b['max_draft_calls']}, {b['verify_budget']}: "
                   f"{b['tokens_per_s']:.1f} | {o['gain']:+.1%} (n {o['mean_draft_calls']:.2f}) | {ltd_s} | {rad_s} |")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--episodes", nargs="+", required=True, help="`radar collect` directories (as for train-policy)")
    p.add_argument("--costs", required=True, help="a `radar calibrate` JSON of the machine to score for")
    p.add_argument("--split", choices=("all", "train", "val"), default="all",
                   help="which recorded cycles to score (default: all; the ceiling needs no training)")
    p.add_argument("--prefix-len", type=float, default=None,
                   help="context length the calibration is read at (default: the scored cycles' mean)")
    p.add_argument("--radar", default="shipped", help="RADAR policy directory, 'shipped' (default) or 'none'")
    p.add_argument("--ltd", default="shipped", help="LTD policy directory, 'shipped' (default) or 'none'")
    p.add_argument("--json", default=None, help="also write the rows here")
    args = p.parse_args(argv)
    if args.prefix_len is not None and not args.prefix_len > 0:
        p.error(f"--prefix-len must be > 0, got {args.prefix_len}")

    from radar_ext.policies import LtdPolicy, PolicyCosts, RadarPolicy
    from radar_ext.training.episodes import load_episodes

    ep = load_episodes(args.episodes, args.split)
    prefix = args.prefix_len or float(ep["seq_len"].double().mean())
    costs = PolicyCosts.load(args.costs, tree_topk=ep.meta["tree_topk"], prefix_len=prefix)

    def policy(cls, spec):
        if spec == "none":
            return None
        return cls.from_pretrained(None if spec == "shipped" else spec)

    rows = ceiling_rows(ep, costs, radar=policy(RadarPolicy, args.radar), ltd=policy(LtdPolicy, args.ltd))
    print(f"expected tokens/s on {ep.cycles} recorded cycles ({args.split}), costs {args.costs} at prefix {prefix:.0f}:")
    print(format_rows(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"episodes": args.episodes, "costs": args.costs, "split": args.split, "prefix_len": prefix,
                       "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
