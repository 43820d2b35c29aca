"""Times the fused controller ops against the same computation written with plain torch ops.

Per-call controller work of one draft call = topk_expand (expand the W beams by their top-W children,
keep the best W) + policy_step (RADAR: LSTM H=128 over the W sorted beam scores, MLP 138->128->2)
+ tree update (ancestor mask, depth and paths of the beam tree so far, M = 1 + 4W nodes).
Validates that fused and plain agree, warms up, repeats, and prints median and p10/p90 in microseconds.

    python bench/bench_ops.py [--json PATH] [--repeats 200] [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from radar_ext import ops

W = 10          # tree_topk
HIDDEN = 128    # RADAR LSTM hidden size
MLP = 128       # RADAR MLP width
DRAFT_CALLS = 4  # beam tree depth for the tree update: M = 1 + DRAFT_CALLS * W


# ---- the plain-torch composition ----------------------------------------------------------------

def plain_topk_expand(logits, beam_scores, tree_topk, temperature=1.0):
    logp = torch.log_softmax(logits / temperature, dim=-1)                 # [B, N, Vd]
    child_logp, child_ids = logp.topk(tree_topk, dim=-1)                    # [B, N, W]
    child_scores = beam_scores.unsqueeze(-1) + child_logp
    next_scores, flat = child_scores.flatten(1).topk(tree_topk, dim=-1)     # [B, W]
    return (child_logp, child_ids, child_scores, next_scores, flat // tree_topk,
            child_ids.flatten(1).gather(1, flat))


class PlainPolicy(torch.nn.Module):
    def __init__(self, features, hidden, width, outputs):
        super().__init__()
        self.cell = torch.nn.LSTMCell(features, hidden)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(hidden + features, width), torch.nn.ReLU(),
                                       torch.nn.Linear(width, outputs))

    def forward(self, features, h, c):
        h, c = self.cell(features, (h, c))
        return torch.softmax(self.mlp(torch.cat([h, features], dim=1)), dim=1), h, c

    def fused_args(self):
        cell, l1, l2 = self.cell, self.mlp[0], self.mlp[2]
        return (cell.weight_ih, cell.weight_hh, cell.bias_ih + cell.bias_hh, l1.weight, l1.bias, l2.weight, l2.bias)


def plain_build_tree(parents, n_nodes):
    B, M = parents.shape
    node = torch.arange(M)
    valid = node < n_nodes[:, None]                                        # [B, M]
    mask = torch.eye(M, dtype=torch.bool).expand(B, M, M) & valid[:, :, None]
    depth = torch.where(valid, 0, -1)
    cur = torch.where(valid & (node > 0), parents, -1)                     # current ancestor of each node
    while True:
        has = cur >= 0
        if not has.any():                                                  # host sync per tree level
            break
        idx = cur.clamp(min=0).unsqueeze(-1)
        mask.scatter_(2, idx, mask.gather(2, idx) | has.unsqueeze(-1))
        depth = depth + has
        cur = torch.where(has, torch.where(idx.squeeze(-1) > 0, parents.gather(1, idx.squeeze(-1)), -1), -1)
    has_child = torch.zeros(B, M + 1, dtype=torch.bool)
    has_child.scatter_(1, torch.where(valid & (node > 0), parents, M), True)
    leaf = valid & ~has_child[:, :M]
    rank = leaf.cumsum(1) - 1
    b_idx, i_idx, j_idx = (mask & leaf[:, :, None]).nonzero(as_tuple=True)
    paths = torch.full((B, M, M), -1, dtype=torch.int64)
    paths[b_idx, rank[b_idx, i_idx], depth[b_idx, j_idx]] = j_idx
    return mask, depth, paths, leaf.sum(1)


# ---- inputs --------------------------------------------------------------------------------------

def make_inputs(B, Vd, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, W, Vd, generator=g) * 3
    beam_scores = -torch.rand(B, W, generator=g).sort(dim=1, descending=True).values * 5
    M = 1 + DRAFT_CALLS * W
    parents = torch.full((B, M), -1, dtype=torch.int64)                    # beam tree: level k picks parents in level k-1
    for k in range(DRAFT_CALLS):
        lo, hi = (0, 1) if k == 0 else (1 + (k - 1) * W, 1 + k * W)
        parents[:, 1 + k * W: 1 + (k + 1) * W] = torch.randint(lo, hi, (B, W), generator=g).sort(dim=1).values
    n_nodes = torch.full((B,), M, dtype=torch.int64)
    torch.manual_seed(seed)
    policy = PlainPolicy(W, HIDDEN, MLP, 2).requires_grad_(False)
    h, c = torch.randn(B, HIDDEN, generator=g) * 0.1, torch.randn(B, HIDDEN, generator=g) * 0.1
    return logits, beam_scores, parents, n_nodes, policy, h, c


def controller_fused(logits, beam_scores, parents, n_nodes, weights, h, c):
    out = ops.topk_expand(logits, beam_scores, W)
    probs, h, c = ops.policy_step(out.next_scores, h, c, *weights)          # next_scores come sorted
    return out, (probs, h, c), ops.build_tree(parents, n_nodes)


def controller_plain(logits, beam_scores, parents, n_nodes, policy, h, c):
    out = plain_topk_expand(logits, beam_scores, W)
    step = policy(out[3], h, c)
    return out, step, plain_build_tree(parents, n_nodes)


def check_same(fused, plain, what):
    for k, (a, b) in enumerate(zip(fused, plain)):
        if isinstance(a, (tuple, list)):
            check_same(a, b, f"{what}[{k}]")
        elif a.is_floating_point():
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4, msg=lambda m: f"{what}[{k}]: {m}")
        elif not torch.equal(a, b):
            raise AssertionError(f"{what}[{k}]: fused and plain differ")


def time_us(fn, repeats, warmup):
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - t0) / 1e3)
    q = statistics.quantiles(samples, n=10)
    return {"median_us": statistics.median(samples), "p10_us": q[0], "p90_us": q[-1]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1: stable "
                        "figures on a shared machine; the decoder's per-call work is latency bound)")
    args = parser.parse_args(argv)
    if args.repeats < 10:
        parser.error(f"--repeats must be >= 10, got {args.repeats}")
    torch.set_num_threads(args.threads)
    if not ops.HAS_EXTENSION:
        print(f"WARNING: radar_ext._C is not built ({ops.IMPORT_ERROR}); 'fused' is the Python reference")

    rows = []
    for B in (1, 8):
        for Vd in (8192, 49152):
            logits, beam_scores, parents, n_nodes, policy, h, c = make_inputs(B, Vd)
            weights = policy.fused_args()
            features = beam_scores
            check_same(controller_fused(logits, beam_scores, parents, n_nodes, weights, h, c),
                       controller_plain(logits, beam_scores, parents, n_nodes, policy, h, c), f"B={B} Vd={Vd}")
            cases = {
                "topk_expand": (lambda: ops.topk_expand(logits, beam_scores, W),
                                lambda: plain_topk_expand(logits, beam_scores, W)),
                "policy_step": (lambda: ops.policy_step(features, h, c, *weights), lambda: policy(features, h, c)),
                "build_tree": (lambda: ops.build_tree(parents, n_nodes), lambda: plain_build_tree(parents, n_nodes)),
                "controller": (lambda: controller_fused(logits, beam_scores, parents, n_nodes, weights, h, c),
                               lambda: controller_plain(logits, beam_scores, parents, n_nodes, policy, h, c)),
            }
            for name, (fused, plain) in cases.items():
                if name in ("policy_step", "build_tree") and Vd != 8192:
                    continue  # independent of Vd
                f = time_us(fused, args.repeats, args.warmup)
                p = time_us(plain, args.repeats, args.warmup)
                rows.append({"op": name, "B": B, "Vd": Vd if name not in ("policy_step", "build_tree") else None,
                             "fused": f, "plain": p, "speedup": p["median_us"] / f["median_us"]})

    print(f"W={W} LSTM H={HIDDEN} MLP {W + HIDDEN}->{MLP}->2 tree M={1 + DRAFT_CALLS * W} threads={args.threads} "
          f"extension={ops.HAS_EXTENSION} repeats={args.repeats}")
    print(f"{'op':<12} {'B':>2} {'Vd':>6} | {'fused us (p10-p90)':>24} | {'plain us (p10-p90)':>24} | speedup")
    for r in rows:
        f, p = r["fused"], r["plain"]
        print(f"{r['op']:<12} {r['B']:>2} {r['Vd'] or '-':>6} | {f['median_us']:>8.1f} ({f['p10_us']:>6.1f}-{f['p90_us']:>7.1f}) "
              f"| {p['median_us']:>8.1f} ({p['p10_us']:>6.1f}-{p['p90_us']:>7.1f}) | {r['speedup']:6.2f}x")
    if args.json:
        meta = {"torch": torch.__version__, "threads": args.threads, "machine": platform.processor() or platform.machine(),
                "extension": ops.HAS_EXTENSION, "built_with_cuda": ops.built_with_cuda(), "W": W, "hidden": HIDDEN}
        with open(args.json, "w") as fh:
            json.dump({"meta": meta, "rows": rows}, fh, indent=1)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
