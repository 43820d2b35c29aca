"""N-gram drafting (RadarDecoder + NgramDrafter) vs the target's plain greedy `generate` on the
first turns of Spec-Bench dev questions, default target, chat template, greedy.

Validates first (outputs must be token-identical, else exit 1), warms up, then times each
question with both methods interleaved (order alternating), `--repeats` times, and prints per
method the median tokens/s over repeats of the pooled totals, the spread (min..max), tau and the
speedup. Writes JSON with --out.

    python bench/ngram_vs_ar.py --limit 10 --max-new-tokens 128 --threads 1
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

DEFAULT_QUESTIONS = "/work/shared/data/spec_bench_dev.jsonl"


def load_questions(path, limit):
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return rows[:limit]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--questions", default=DEFAULT_QUESTIONS)
    p.add_argument("--limit", type=int, default=10)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--verify-budget", type=int, default=15)
    p.add_argument("--max-ngram", type=int, default=3)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    for name, v in (("--limit", args.limit), ("--max-new-tokens", args.max_new_tokens),
                    ("--verify-budget", args.verify_budget), ("--max-ngram", args.max_ngram),
                    ("--repeats", args.repeats), ("--threads", args.threads)):
        if v is not None and v < 1:
            p.error(f"{name} must be >= 1, got {v}")
    if args.threads:
        torch.set_num_threads(args.threads)

    from radar_ext import NgramDrafter, RadarDecoder, StaticPolicy
    from radar_ext.models import load_default_target

    target, tok = load_default_target()
    dec = RadarDecoder(target, NgramDrafter(max_ngram=args.max_ngram), StaticPolicy(max_draft_calls=1),
                       verify_budget=args.verify_budget)
    prompts = [tok.apply_chat_template([{"role": "user", "content": q["turns"][0]}], add_generation_prompt=True,
                                       return_tensors="pt", return_dict=True)["input_ids"]
               for q in load_questions(args.questions, args.limit)]

    def run_ar(ids):
        with torch.no_grad():
            return target.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.max_new_tokens,
                                   do_sample=False)

    def run_ngram(ids):
        return dec.generate(ids, max_new_tokens=args.max_new_tokens)

    # warm-up
    run_ar(prompts[0][:, :8])
    run_ngram(prompts[0][:, :8])

    records = []
    for rep in range(args.repeats):
        for i, ids in enumerate(prompts):
            order = [("ar", run_ar), ("ngram", run_ngram)]
            if (i + rep) % 2:
                order.reverse()
            res = {}
            for name, fn in order:
                t0 = time.perf_counter()
                out = fn(ids)
                res[name] = (out, time.perf_counter() - t0)
            same = torch.equal(res["ar"][0], res["ngram"][0])
            s = dec.last_stats
            rec = dict(repeat=rep, question=i, prompt_len=int(ids.shape[1]), tokens=res["ar"][0][0].tolist(),
                       new_tokens=int(res["ar"][0].shape[1] - ids.shape[1]),
                       ar_seconds=res["ar"][1], ngram_seconds=res["ngram"][1], identical=same,
                       cycles=s.cycles, tau=s.tau, accepted_hist=s.accepted_hist,
                       mean_verify_budget=s.mean_verify_budget, time_split=dict(
                           prefill=s.time_prefill, draft=s.time_draft, verify=s.time_verify, other=s.time_other))
            records.append(rec)
            print(f"rep {rep} q{i}: {rec['new_tokens']} tokens, ar {rec['new_tokens'] / rec['ar_seconds']:.2f} tok/s, "
                  f"ngram {rec['new_tokens'] / rec['ngram_seconds']:.2f} tok/s, tau {s.tau:.2f}, "
                  f"identical {same}", flush=True)
            if not same:
                print(f"MISMATCH on question {i}: outputs differ", file=sys.stderr)
                return 1

    def rate(rep, key):
        rs = [r for r in records if r["repeat"] == rep]
        return sum(r["new_tokens"] for r in rs) / sum(r[key] for r in rs)

    ar = [rate(k, "ar_seconds") for k in range(args.repeats)]
    ng = [rate(k, "ngram_seconds") for k in range(args.repeats)]
    sp = [n / a for n, a in zip(ng, ar)]
    last = [r for r in records if r["repeat"] == 0]
    cycles = sum(r["cycles"] for r in last)
    tau = sum(r["tau"] * r["cycles"] for r in last) / cycles
    summary = dict(questions=len(prompts), max_new_tokens=args.max_new_tokens, verify_budget=args.verify_budget,
                   max_ngram=args.max_ngram, threads=torch.get_num_threads(), repeats=args.repeats,
                   ar_tok_s_median=statistics.median(ar), ar_tok_s_range=[min(ar), max(ar)],
                   ngram_tok_s_median=statistics.median(ng), ngram_tok_s_range=[min(ng), max(ng)],
                   speedup_median=statistics.median(sp), speedup_range=[min(sp), max(sp)], tau=tau,
                   all_identical=all(r["identical"] for r in records))
    print(json.dumps(summary, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(dict(summary=summary, records=records), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
