"""Exact tau of NgramDrafter settings without running the target: greedy acceptance depends only
on the final greedy sequence, so the greedy answers recorded by bench/ngram_vs_ar.py (--out) can be
replayed cycle by cycle for any drafter setting. Prints tau, the fraction of cycles that draft
anything, mean V, and a speedup estimate under a cost model where a tree forward costs
`--tree-cost` one-token forwards (measure it on your machine).

    python bench/ngram_vs_ar.py --limit 10 --out results/ngram.json
    python bench/ngram_replay.py results/ngram.json --tree-cost 1.47
"""
from __future__ import annotations

import argparse
import itertools
import json

import torch

from radar_ext import NgramDrafter, StaticPolicy
from radar_ext.drafters import DraftRequest
from radar_ext.policies import CostInfo


def replay(seqs, make_drafter, verify_budget):
    """seqs: [(prompt_len, tokens)]. Returns (tau, fraction of cycles drafting, mean V)."""
    cycles = emitted = drafting = v_sum = 0
    for P, toks in seqs:
        d = make_drafter()
        d.start(torch.tensor([toks[:P]]), None, torch.tensor([toks[P]]))
        pos = P  # index of the root
        while pos < len(toks) - 1:
            req = DraftRequest(torch.tensor([toks[pos]]), pos + 1, 1, verify_budget, StaticPolicy(1), CostInfo())
            tree = d.draft(req)
            tt, pp = tree.tokens[0].tolist(), tree.parents[0].tolist()
            node = n = 0
            while pos + 1 + n < len(toks):
                kids = [i for i in range(len(tt)) if pp[i] == node and tt[i] == toks[pos + 1 + n]]
                if not kids:
                    break
                node, n = kids[0], n + 1
            n_emit = min(n + 1, len(toks) - 1 - pos)
            d.commit(torch.tensor([toks[pos + 1:pos + 1 + n_emit]]), n_emit, None)
            pos += n_emit
            cycles, emitted = cycles + 1, emitted + n_emit
            drafting += tree.verify_budget > 0
            v_sum += tree.verify_budget
    return emitted / cycles, drafting / cycles, v_sum / cycles


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", help="JSON written by bench/ngram_vs_ar.py --out")
    p.add_argument("--tree-cost", type=float, default=1.47, help="tree forward / one-token forward time")
    p.add_argument("--min-ngram", default="1,2,3")
    p.add_argument("--max-ngram", default="3,4")
    p.add_argument("--max-depth", default="8,12")
    p.add_argument("--verify-budget", default="4,8,15")
    args = p.parse_args(argv)
    recs = [r for r in json.load(open(args.results))["records"] if r["repeat"] == 0]
    seqs = [(r["prompt_len"], r["tokens"]) for r in recs]
    ints = lambda s: [int(x) for x in s.split(",")]  # noqa: E731
    for mn, mx, dep, V in itertools.product(ints(args.min_ngram), ints(args.max_ngram), ints(args.max_depth),
                                            ints(args.verify_budget)):
        if mn > mx:
            continue
        tau, frac, mean_v = replay(seqs, lambda: NgramDrafter(max_ngram=mx, min_ngram=mn, max_depth=dep), V)
        est = tau / (1 + (args.tree_cost - 1) * frac)
        print(f"min_ngram {mn} max_ngram {mx} max_depth {dep:2d} V {V:2d}: tau {tau:.3f} drafting {frac:.2f} "
              f"mean V {mean_v:.1f} est. speedup {est:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
