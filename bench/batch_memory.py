"""Peak memory of a batched generate per method, each method in a fresh process.

`radar bench --batch-sizes` reports each call's RSS growth in one shared process, where the allocator keeps
the pages an earlier method freed, so a later method's growth can read 0. Here every method runs in its own
new process: load the target (and the method's drafter and policy), then one batched generate of the first
B questions (left padding, T = 0), the resident set size sampled every 2 ms during the call. Reported per
method: the process's RSS before the call, its peak during the call (what the machine must hold), and the
peak's ratio to HF batched generate's (`ar`).

    python bench/batch_memory.py --batch-size 8 --methods ar,ar-fast,static-gs,ltd \\
        --policy-costs ~/.cache/radar_ext/calibration/<name>.json --out results/batch_memory.json
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

DEFAULT_QUESTIONS = str(Path(__file__).resolve().parents[2] / "shared" / "data" / "spec_bench_dev.jsonl")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--questions", default=DEFAULT_QUESTIONS, help="Spec-Bench .jsonl file (first turns are used)")
    ap.add_argument("--batch-size", type=int, default=8, help="rows of the one batched call (the first B questions)")
    ap.add_argument("--methods", default="ar,ar-fast,static-gs,ltd", help="comma-separated `radar bench` methods")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--policy-costs", default=None, help="a `radar calibrate` JSON the learned policies read")
    ap.add_argument("--threads", type=int, default=2, help="torch threads in each child process")
    ap.add_argument("--out", default=None, help="write the results JSON here")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)  # internal: measure this one method
    args = ap.parse_args(argv)
    if args.batch_size < 1:
        ap.error(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.max_new_tokens < 1:
        ap.error(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if not Path(args.questions).is_file():
        ap.error(f"--questions {args.questions!r} is not a file")
    if args.policy_costs and not Path(args.policy_costs).expanduser().is_file():
        ap.error(f"--policy-costs {args.policy_costs!r} is not a file (a `radar calibrate` JSON)")
    return args


def child(args) -> dict:
    """One method in this (fresh) process: RSS before and peak during one batched generate."""
    import torch

    from radar_ext.benchmark.batch import _PeakRss, left_pad
    from radar_ext.benchmark.methods import BenchOptions
    from radar_ext.benchmark.questions import load_questions
    from radar_ext.benchmark.runner import build_methods, encode_chat
    from radar_ext.commands.bench import load_target, make_context

    torch.set_num_threads(args.threads)
    target, tok = load_target()
    options = BenchOptions(policy_costs=str(Path(args.policy_costs).expanduser()) if args.policy_costs else None)
    ctx = make_context(target, tok, options)
    method = build_methods(ctx, [args.child])[args.child]
    questions = load_questions(args.questions)[:args.batch_size]
    if len(questions) < args.batch_size:
        raise SystemExit(f"--questions holds {len(questions)} questions, fewer than --batch-size {args.batch_size}")
    rows = [encode_chat(tok, [{"role": "user", "content": q.turns[0]}]) for q in questions]
    ids, mask = left_pad(rows, ctx.pad_token_id if ctx.pad_token_id is not None else 0)
    with _PeakRss() as mem:
        out = method.generate(ids, args.max_new_tokens, 0.0, None, attention_mask=mask)
    return {"method": args.child, "batch_size": args.batch_size, "rss_before_mb": mem.start / 2**20,
            "peak_mb": mem.peak / 2**20, "growth_mb": mem.growth_mb, "new_tokens": int(out.shape[1] - ids.shape[1])}


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(child(args)), flush=True)
        return 0
    from tqdm import tqdm
    results = []
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in tqdm(methods, desc="batch memory", unit="method"):
        cmd = [sys.executable, __file__, "--child", m, "--questions", args.questions, "--batch-size",
               str(args.batch_size), "--max-new-tokens", str(args.max_new_tokens), "--threads", str(args.threads)]
        if args.policy_costs:
            cmd += ["--policy-costs", args.policy_costs]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            sys.stderr.write(proc.stderr[-4000:])
            raise SystemExit(f"method {m!r}: the child process failed (exit {proc.returncode})")
        results.append(json.loads(line[len("RESULT "):]))
    ref = next((r["peak_mb"] for r in results if r["method"] == "ar"), None)
    print(f"{'method':<12} {'RSS before':>11} {'peak':>9} {'growth':>9} {'peak / ar':>10}")
    for r in results:
        ratio = f"{r['peak_mb'] / ref:.2f}x" if ref else "-"
        r["peak_vs_ar"] = r["peak_mb"] / ref if ref else None
        print(f"{r['method']:<12} {r['rss_before_mb']:>8.0f} MiB {r['peak_mb']:>5.0f} MiB {r['growth_mb']:>5.0f} MiB "
              f"{ratio:>10}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens,
                                              "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
