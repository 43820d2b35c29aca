"""Paired comparison of EAGLE-3 draft heads on the default target: the same questions, the same static
tree, the heads alternating question by question in one process (their order rotated per question).

For each head it reports tau (mean accepted length + 1 per cycle, the bonus token counted, as
RadarDecoder's DecodeStats) overall and per category, and the mean per-question difference against the
first head with a 95% interval (paired t, per-question tau). At temperature 0 every head's answer must be
the same token sequence (each is lossless, so each equals plain greedy decoding); a mismatch is reported
and makes the exit status 1. Tokens/s are printed too, but a head comparison is about tau: the heads
share the verify and draft costs.

    python bench/bench_heads.py --heads radar_ext/data/heads/smollm2-135m-instruct <new head dir> \\
        --questions ../shared/data/spec_bench_dev.jsonl --max-turns 1 --limit 36 --json out.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from radar_ext.benchmark.aggregate import paired_interval
from radar_ext.commands.bench import parse_static_tree

TREE_DEFAULT = "8,10,60"


def parse_tree(text: str) -> tuple[int, int, int]:
    """'CALLS,W,V' -> (max_draft_calls, tree_topk, verify_budget), checked as `radar bench --static-tree` is."""
    try:
        tree = parse_static_tree(text, flag="--tree")
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return tree["max_draft_calls"], tree["tree_topk"], tree["verify_budget"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="bench_heads", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--heads", nargs="+", type=Path, required=True,
                    help="two or more EAGLE-3 head directories; the first is the reference")
    ap.add_argument("--questions", required=True, help="Spec-Bench .jsonl file or 'humaneval'")
    ap.add_argument("--max-turns", type=int, default=1, help="first N turns of each question (default 1)")
    ap.add_argument("--limit", type=int, default=None, help="at most N questions, round-robin over categories")
    ap.add_argument("--tree", type=parse_tree, default=parse_tree(TREE_DEFAULT),
                    help=f"static tree max_draft_calls,tree_topk,verify_budget (default {TREE_DEFAULT})")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None, help="write per-question records and the summary here")
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args(argv)
    if len(a.heads) < 2:
        ap.error("--heads needs at least two head directories to compare")
    for h in a.heads:
        if not (h / "config.json").is_file():
            ap.error(f"--heads: {h} is not an EAGLE-3 head directory (no config.json)")
    if a.max_new_tokens < 1 or a.max_turns < 1 or a.threads < 1:
        ap.error("--max-new-tokens, --max-turns and --threads must be >= 1")

    from tqdm import tqdm

    from radar_ext.benchmark.questions import load_questions, select_questions
    from radar_ext.benchmark.runner import encode_chat
    from radar_ext.decoder import RadarDecoder
    from radar_ext.drafters import EagleDrafter
    from radar_ext.models import load_default_target
    from radar_ext.policies import StaticPolicy

    torch.set_num_threads(a.threads)
    questions = select_questions(load_questions(a.questions), limit=a.limit)
    target, tok = load_default_target(verbose=False)
    calls, topk, budget = a.tree
    decoders = [RadarDecoder(target, EagleDrafter.from_pretrained(h, target), StaticPolicy(max_draft_calls=calls),
                             tree_topk=topk, verify_budget=budget) for h in a.heads]
    names = [str(h) if [str(x) for x in a.heads].count(str(h)) == 1 else f"{h} (#{i + 1})"
             for i, h in enumerate(a.heads)]  # the same directory twice: an A/A check, kept apart

    # warm-up: one short answer per head
    warm = torch.tensor([encode_chat(tok, [{"role": "user", "content": "Hello!"}])])
    for d in decoders:
        d.generate(warm, max_new_tokens=8, do_sample=False)

    records, mismatches = [], 0
    items = [(q, t) for q in questions for t in q.turns[:a.max_turns]]
    for i, (q, turn) in enumerate(tqdm(items, desc="questions", disable=a.no_progress)):
        ids = torch.tensor([encode_chat(tok, [{"role": "user", "content": turn}])])
        rec = {"question_id": q.question_id, "category": q.category, "heads": {}}
        outs = {}
        order = [(i + k) % len(decoders) for k in range(len(decoders))]  # rotate who goes first
        for k in order:
            d = decoders[k]
            t0 = time.perf_counter()
            out = d.generate(ids, max_new_tokens=a.max_new_tokens, do_sample=False)
            dt = time.perf_counter() - t0
            s = d.last_stats
            outs[k] = out[0, ids.shape[1]:].tolist()
            rec["heads"][names[k]] = {"tau": s.tau, "cycles": s.cycles, "tokens": s.tokens, "seconds": dt,
                                      "accepted_hist": list(s.accepted_hist)}
        same = all(outs[k] == outs[0] for k in outs)
        rec["identical"] = same
        mismatches += not same
        records.append(rec)

    def tau_of(recs, name):  # cycle-weighted, as DecodeStats over the whole set
        acc = sum(sum((n + 1) * c for n, c in enumerate(r["heads"][name]["accepted_hist"])) for r in recs)
        cyc = sum(r["heads"][name]["cycles"] for r in recs)
        return acc / cyc if cyc else 0.0

    cats = sorted({r["category"] for r in records})
    summary = {"tree": list(a.tree), "questions": len(records), "mismatches": mismatches, "heads": {}}
    print(f"\ntree {calls}/{topk}/{budget}, {len(records)} answers, max_new_tokens {a.max_new_tokens}, "
          f"answers identical across heads: {len(records) - mismatches}/{len(records)}")
    header = "| head | " + " | ".join(cats) + " | overall tau | tok/s | d tau vs first [95%] |"
    print(header + "\n|" + "---|" * (header.count("|") - 1))
    for j, name in enumerate(names):
        per_cat = {c: tau_of([r for r in records if r["category"] == c], name) for c in cats}
        overall = tau_of(records, name)
        toks = sum(r["heads"][name]["tokens"] for r in records)
        secs = sum(r["heads"][name]["seconds"] for r in records)
        diffs = [r["heads"][name]["tau"] - r["heads"][names[0]]["tau"] for r in records]
        m, lo, hi = paired_interval(diffs)
        summary["heads"][name] = {"tau": overall, "tau_per_category": per_cat, "tok_s": toks / secs,
                                  "d_tau_mean": m, "d_tau_95": [lo, hi]}
        delta = "-" if j == 0 else f"{m:+.3f} [{lo:+.3f}, {hi:+.3f}]"
        print(f"| {name} | " + " | ".join(f"{per_cat[c]:.2f}" for c in cats)
              + f" | {overall:.3f} | {toks / secs:.1f} | {delta} |")
    if a.json:
        a.json.write_text(json.dumps({"summary": summary, "records": records}, indent=1))
    if mismatches:
        print(f"ERROR: {mismatches} answers differ between heads (a lossless decoder must not)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
