"""Offline: how LTD policies do when moved to other cost curves. Each policy is given a curve's costs
as `LtdPolicy.from_pretrained(path, costs=curve)` does and scored on the validation cycles of `radar
collect` episodes (radar_ext.training.train_policy.evaluate: expected tokens/s from the recorded
accepted-length distributions and the curve's cycle times) against that curve's own best static
(n, V). Curves: the calibrated one, four with one factor changed (flat / steep per-token verify cost,
dear draft calls, cheap fixed verify cost) and `--random` draws of the train-policy --cost-curves family
from a seed no training run uses. Prints a Markdown table.

    python bench/ltd_cost_curves.py --episodes T0 T1 T1VAL --costs CALIBRATION.json \
        --policy "one curve=RUN1/best" --policy "24 curves=RUN24/best" [--random 4 --jitter 1.0 --seed 12345]
"""
from __future__ import annotations

import argparse
import sys


def curves(home, n_random: int, jitter: float, seed: int) -> list:
    from radar_ext.training.train_policy import cost_curves, perturbed_costs
    out = [("calibrated (this machine)", home), ("flat verify (slope x0.2)", perturbed_costs(home, 1, 1, 0.2)),
           ("steep verify (slope x3)", perturbed_costs(home, 1, 1, 3.0)),
           ("dear draft calls (x3)", perturbed_costs(home, 3, 1, 1)),
           ("cheap verify base (x0.4)", perturbed_costs(home, 1, 0.4, 1))]
    return out + cost_curves(home, n_random + 1, jitter, seed)[1:]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--episodes", nargs="+", required=True, help="`radar collect` directories (as for train-policy)")
    p.add_argument("--costs", required=True, help="the `radar calibrate` JSON the policies were trained on")
    p.add_argument("--policy", action="append", required=True, metavar="NAME=DIR",
                   help="a saved LTD policy directory, with the column name to print (repeatable)")
    p.add_argument("--random", type=int, default=4, help="random curves after the hand-made ones (default: 4)")
    p.add_argument("--jitter", type=float, default=1.0, help="their log-scale half-width (default: 1.0)")
    p.add_argument("--seed", type=int, default=12345)
    p.add_argument("--prefix-len", type=float, default=None,
                   help="context length the calibration is read at (default: the training cycles' mean)")
    args = p.parse_args(argv)
    pols = []
    for spec in args.policy:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            p.error(f"--policy must be NAME=DIR, got {spec!r}")
        pols.append((name, path))
    if args.random < 0 or not args.jitter >= 0:
        p.error("--random must be >= 0 and --jitter >= 0")

    from radar_ext.policies import LtdPolicy, PolicyCosts
    from radar_ext.training.episodes import load_episodes
    from radar_ext.training.train_policy import at_curve

    train_ep, val = load_episodes(args.episodes, "train"), load_episodes(args.episodes, "val")
    prefix = args.prefix_len or float(train_ep["seq_len"].double().mean())
    home = PolicyCosts.load(args.costs, tree_topk=val.meta["tree_topk"], prefix_len=prefix)
    policies = [(name, LtdPolicy.from_pretrained(path)) for name, path in pols]
    print("| cost curve | best static (n, V) | " + " | ".join(f"LTD: {n}" for n, _ in policies) + " |")
    print("|---|---|" + "---|" * len(policies))
    for name, c in curves(home, args.random, args.jitter, args.seed):
        rows = [at_curve(pol, val, c) for _, pol in policies]
        b = rows[0]["best_static"]
        cells = [f"{r['gain_over_best_static']:+.1%} (n {r['policy']['mean_draft_calls']:.2f}, "
                 f"V {r['policy']['mean_verify_budget']:.1f})" for r in rows]
        print(f"| {name} | {b['max_draft_calls']}, {b['verify_budget']} ({b['throughput']:.1f} tok/s) | "
              + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
