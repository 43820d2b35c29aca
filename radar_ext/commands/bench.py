"""End-to-end benchmark of radar_ext's decoders against the peers (HF generate, HF prompt lookup)
on Spec-Bench style questions: a table per category, JSON with every raw answer record, and a plot.

Protocol: one process, warm-up first, methods interleaved per question in a carryover-balanced order,
tokens/s = new tokens / wall time of the whole generate call; speedup = tokens/s over ar's tokens/s
on the same answers; at temperature 0 every answer is checked token by token against ar."""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    from radar_ext.benchmark.methods import METHODS
    p.add_argument("--questions", required=True,
                   help="Spec-Bench .jsonl file (question_id, category, turns) or 'humaneval'")
    p.add_argument("--categories", default=None, help="comma-separated categories to keep (default: all)")
    p.add_argument("--limit", type=int, default=None,
                   help="at most N questions, taken round-robin over categories (default: all)")
    p.add_argument("--max-turns", type=int, default=None,
                   help="keep only the first N turns of each question (1 = first turns only; default: all)")
    p.add_argument("--methods", default="all",
                   help=f"comma-separated, from {', '.join(METHODS)}; 'all' = every available one "
                        "(ar is always run: it is the baseline)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="run the questions' first turns in left-padded batches of B (every method on the same "
                        "batches; radar_ext.benchmark.batch); default: one question at a time, every turn")
    p.add_argument("--batch-sizes", default=None, metavar="B1,B2,...",
                   help="a sweep of batch sizes, e.g. 1,4,8 (paired in one process; JSON and a plot of tokens/s "
                        "against B per method)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (exactness is checked)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0, help="sampling seed (per repeat, question and turn)")
    p.add_argument("--warmup", type=int, default=1, help="untimed warm-up rounds over all methods")
    p.add_argument("--out", default=None, help="write the results JSON here")
    p.add_argument("--plot", default=None, help="write a PNG here (speedup per category, accepted lengths)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--drafter", default=None, help="EAGLE-3 head directory (default: the shipped head)")
    p.add_argument("--static-gs", default=None, help="grid-searched static setting JSON with max_draft_calls, "
                   "tree_topk, verify_budget (default: static_tree.json beside the head)")
    p.add_argument("--static-tree", default=None, metavar="CALLS,W,V",
                   help="the `static` method's max_draft_calls, tree_topk, verify_budget (default: 8,10,60, "
                        "the EAGLE-3 default), e.g. the full-depth tree a learned stop rule is compared with")
    p.add_argument("--radar-policy", default=None, help="RadarPolicy weights (default: shipped)")
    p.add_argument("--ltd-policy", default=None, help="LtdPolicy weights (default: shipped)")
    p.add_argument("--policy-costs", default=None,
                   help="a `radar calibrate` JSON the learned policies (radar, ltd) read instead of the calibration "
                        "stored with them, e.g. this machine's or this thread count's")
    for kind, what in (("pmin", "p-min stop rule"), ("ema", "EMA depth rule"), ("goodput", "expected-goodput rule")):
        p.add_argument(f"--{kind}", default=None, metavar="FILE",
                       help=f"tuned setting of the `{kind}` method's {what} (default: {kind}.json beside the head, "
                            f"written by `radar tune-static --policy {kind} --install`)")
    p.add_argument("--lookup-scores", default=None, metavar="FILE",
                   help="hybrid methods: calibrated lookup scores (default: lookup_scores.json beside the head)")
    p.add_argument("--hybrid-static", default=None, metavar="CALLS,W,V",
                   help="the `hybrid-static` method's max_draft_calls, tree_topk, verify_budget (default: the grid-searched "
                        "static setting, static_tree.json beside the head)")
    p.add_argument("--pld-tokens", type=int, default=10, help="hf-pld prompt_lookup_num_tokens")
    p.add_argument("--ngram-budget", type=int, default=15, help="ngram: verify_budget (draft tokens per cycle)")
    p.add_argument("--fused-forward", action=argparse.BooleanOptionalAction, default=True,
                   help="our methods (ar-fast included) verify through the fused C++ forward, as RadarDecoder does "
                        "by default (radar_ext::llama_forward); --no-fused-forward: the lean forward with its C++ "
                        "layer loop, RadarDecoder(fused_forward=False) (default: on)")
    p.add_argument("--lookup-steps", action=argparse.BooleanOptionalAction, default=True,
                   help="our methods with a context lookup (hybrid-*) and a policy with calibrated costs verify the "
                        "lookup's best nodes without a draft call where they pay, at temperature 0 (RadarDecoder"
                        "(lookup_steps=True)); --no-lookup-steps: the policy decides every cycle (default: on)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--generate-kwargs", default=None, metavar="JSON",
                   help="more generate() arguments for every method, HF's and ours, as a JSON object, e.g. "
                        "'{\"repetition_penalty\": 1.2}' (lengths, EOS and sampling come from the flags above)")


def _fail(msg: str) -> int:
    print(f"radar bench: error: {msg}", file=sys.stderr)
    return 2


def _check_args(args):
    for name, value, lo in (("--max-new-tokens", args.max_new_tokens, 1), ("--repeats", args.repeats, 1),
                            ("--warmup", args.warmup, 0), ("--pld-tokens", args.pld_tokens, 1),
                            ("--ngram-budget", args.ngram_budget, 1),
                            ("--limit", args.limit, 1), ("--threads", args.threads, 1),
                            ("--max-turns", args.max_turns, 1), ("--batch-size", args.batch_size, 1)):
        if value is not None and value < lo:
            raise ValueError(f"{name} must be >= {lo}, got {value}")
    if not args.temperature >= 0:
        raise ValueError(f"--temperature must be >= 0, got {args.temperature}")
    if args.policy_costs is not None and not Path(args.policy_costs).is_file():
        raise ValueError(f"--policy-costs {args.policy_costs!r} is not a file (a `radar calibrate` JSON)")
    return parse_static_tree(args.static_tree)


# generate() arguments the runner sets itself (from --max-new-tokens / --temperature, the target's EOS),
# or that would change what a method returns
_RUNNER_SET = ("max_new_tokens", "max_length", "do_sample", "temperature", "top_k", "top_p", "eos_token_id",
               "pad_token_id", "generation_config", "return_dict_in_generate", "num_return_sequences", "streamer")


def parse_generate_kwargs(spec):
    """--generate-kwargs JSON -> dict of generate() keyword arguments (None: {})."""
    import json
    if spec is None:
        return {}
    try:
        kw = json.loads(spec)
    except json.JSONDecodeError as e:
        raise ValueError(f"--generate-kwargs must be a JSON object, got {spec!r} ({e})") from None
    if not isinstance(kw, dict):
        raise ValueError(f"--generate-kwargs must be a JSON object, got {spec!r}")
    taken = sorted(k for k in kw if k in _RUNNER_SET)
    if taken:
        raise ValueError(f"--generate-kwargs: {taken} are set by the runner (use --max-new-tokens / --temperature)")
    from transformers import GenerationConfig
    try:
        unused = GenerationConfig().update(**kw)
    except ValueError as e:
        raise ValueError(f"--generate-kwargs: {e}") from None
    if unused:
        raise ValueError(f"--generate-kwargs: {sorted(unused)} are not HF generation config fields")
    return kw


def parse_static_tree(spec, flag: str = "--static-tree"):
    """'CALLS,W,V' -> {max_draft_calls, tree_topk, verify_budget} (None stays None: the default). `flag`
    names the option in the error."""
    if spec is None:
        return None
    from radar_ext.benchmark.methods import STATIC_GS_KEYS

    try:
        values = [int(x) for x in spec.split(",")]
    except ValueError:
        values = []
    if len(values) != 3 or min(values) < 1:
        raise ValueError(f"{flag} must be three ints >= 1 'CALLS,W,V' (max_draft_calls, tree_topk, "
                         f"verify_budget), got {spec!r}")
    return dict(zip(STATIC_GS_KEYS, values))


# the methods a batched run compares by default (`--methods all` with --batch-size / --batch-sizes)
BATCH_METHODS = ("ar", "ar-fast", "static", "static-gs", "radar", "ltd")
# HF's assisted generation (prompt lookup) refuses batches: "assisted generate is only supported for batch_size = 1"
NOT_BATCHED = {"hf-pld": "HF's prompt lookup (assisted generate) is only supported for batch_size = 1"}


def parse_batch_sizes(batch_size, batch_sizes) -> list:
    """--batch-size B / --batch-sizes B1,B2 -> sorted distinct sizes ([] = the per-question protocol)."""
    if batch_size is not None and batch_sizes is not None:
        raise ValueError("pass --batch-size or --batch-sizes, not both")
    if batch_size is not None:
        sizes = [batch_size]
    elif batch_sizes is not None:
        try:
            sizes = [int(x) for x in batch_sizes.split(",") if x.strip()]
        except ValueError:
            sizes = []
        if not sizes:
            raise ValueError(f"--batch-sizes must be comma-separated ints >= 1, e.g. 1,4,8, got {batch_sizes!r}")
    else:
        return []
    if min(sizes) < 1:
        raise ValueError(f"batch sizes must be >= 1, got {sizes}")
    return sorted(set(sizes))


def resolve_methods(spec: str, options, batched: bool = False) -> list:
    """--methods -> names (ar first if missing). Unknown or unavailable names raise with the reason."""
    from radar_ext.benchmark.methods import BASELINE, METHODS, availability, parse_methods
    if batched:
        names = [n for n in BATCH_METHODS if availability(options).get(n) is None] if spec.strip() == "all" \
            else parse_methods(spec)
        for n in names:
            if n in NOT_BATCHED:
                raise ValueError(f"method {n!r} cannot run batched: {NOT_BATCHED[n]}")
            METHODS[n].check(options)
        return names if BASELINE in names else [BASELINE] + names
    if spec.strip() == "all":
        avail = availability(options)
        for name, why in avail.items():
            if why:
                print(f"[bench] skipping {name}: {why}", file=sys.stderr)
        return [n for n, why in avail.items() if why is None]
    names = parse_methods(spec)
    for n in names:
        METHODS[n].check(options)
    if BASELINE not in names:
        print(f"[bench] adding {BASELINE!r}: it is the baseline for speedup and exactness", file=sys.stderr)
        names = [BASELINE] + names
    return names


def busy_warning():
    """Other processes on the cores make tokens/s noisy (and with more torch threads than free cores,
    erratic): say so before timing. The load average is also recorded in the JSON."""
    import os

    import torch
    if not hasattr(os, "getloadavg"):
        return None
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if load > 0.5 * cores:
        return (f"[bench] warning: load average {load:.1f} on {cores} cores before the run: timings will be "
                f"noisy; {torch.get_num_threads()} torch threads (--threads 1 is steadier on a busy machine)")
    return None


def load_target():
    """(target, tokenizer): the default SmolLM2 target (the EAGLE head is loaded by the methods
    that use it, from --drafter or the shipped one)."""
    from radar_ext.models import load_default_target
    return load_default_target()


def make_context(target, tokenizer, options, drafter=None):
    from radar_ext.benchmark.methods import BenchContext
    eos = getattr(getattr(target, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if getattr(tokenizer, "pad_token_id", None) is not None else (
        eos[0] if isinstance(eos, (list, tuple)) else eos)
    return BenchContext(target, tokenizer, eos, pad, options, drafter)


def run(args) -> int:
    import torch

    from radar_ext.benchmark import (BenchOptions, MethodUnavailable, QuestionFileError, RunConfig,
                                     UnknownMethod, aggregate, build_report, format_table, load_questions,
                                     machine_info, mismatches, plot, run_benchmark, select_questions,
                                     write_json)
    try:
        static_tree = _check_args(args)
        generate_kwargs = parse_generate_kwargs(args.generate_kwargs)
        hybrid_static = parse_static_tree(getattr(args, "hybrid_static", None), "--hybrid-static")
        options = BenchOptions(drafter_path=args.drafter, static_gs_path=args.static_gs, static_tree=static_tree,
                               lookup_scores_path=getattr(args, "lookup_scores", None), hybrid_static=hybrid_static,
                               radar_policy_path=args.radar_policy, ltd_policy_path=args.ltd_policy,
                               policy_costs=args.policy_costs,
                               pld_tokens=args.pld_tokens, ngram_budget=args.ngram_budget,
                               adaptive_paths={k: getattr(args, k) for k in ("pmin", "ema", "goodput")
                                               if getattr(args, k, None)},
                               generate_kwargs=generate_kwargs, fused_forward=args.fused_forward,
                               lookup_steps=args.lookup_steps)
        batch_sizes = parse_batch_sizes(args.batch_size, args.batch_sizes)
        methods = resolve_methods(args.methods, options, batched=bool(batch_sizes))
        cats = [c.strip() for c in args.categories.split(",") if c.strip()] if args.categories else None
        questions = select_questions(load_questions(args.questions), cats, args.limit)
        if args.max_turns is not None:
            questions = [dataclasses.replace(q, turns=q.turns[:args.max_turns]) for q in questions]
    except (ValueError, QuestionFileError, UnknownMethod, MethodUnavailable) as e:
        return _fail(str(e))
    if args.threads:
        torch.set_num_threads(args.threads)
    import os
    args._loadavg_start = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    busy = busy_warning()
    if busy:
        print(busy, file=sys.stderr)
    print(f"[bench] {len(questions)} question(s), {sum(len(q.turns) for q in questions)} turn(s), "
          f"methods {', '.join(methods)}, repeats {args.repeats}", file=sys.stderr)
    target, tok = load_target()
    ctx = make_context(target, tok, options)
    if batch_sizes:
        return run_batches(ctx, questions, methods, batch_sizes, args)
    cfg = RunConfig(methods=methods, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                    repeats=args.repeats, seed=args.seed, warmup=args.warmup)
    try:
        result = run_benchmark(ctx, questions, cfg, progress=not args.no_progress,
                               log=lambda s: print(s, file=sys.stderr))
    except MethodUnavailable as e:
        return _fail(str(e))
    return finish(result, methods, questions, args, ctx)


def run_batches(ctx, questions, methods, batch_sizes, args) -> int:
    """The batched protocol (radar_ext.benchmark.batch): first turns, batches of each B, paired."""
    import dataclasses as dc
    import json

    from radar_ext.benchmark import machine_info
    from radar_ext.benchmark.batch import format_batch_table, plot_throughput, run_batch_benchmark, summarize

    from radar_ext.benchmark import MethodUnavailable
    try:
        records = run_batch_benchmark(ctx, questions, methods, batch_sizes, args.max_new_tokens, args.temperature,
                                      repeats=args.repeats, warmup=args.warmup > 0, seed=args.seed,
                                      log=lambda s: print(s, file=sys.stderr))
    except MethodUnavailable as e:
        return _fail(str(e))
    summary = summarize(records, methods)
    print(format_batch_table(summary))
    bad = [(r.method, r.batch_size, q) for r in records if r.exact for q, e in zip(r.question_ids, r.exact) if not e]
    if bad:
        print(f"\n[bench] {len(bad)} row(s) differ from their single-row greedy output (method, B, question): "
              f"{bad[:20]}")
    config = {k: v for k, v in vars(args).items() if k not in ("func", "command") and not k.startswith("_")}
    config.update(methods=methods, batch_sizes=batch_sizes, questions_run=len(questions),
                  eos_token_id=ctx.eos_token_id, target=getattr(ctx.target.config, "_name_or_path", None),
                  timing="wall time of each batched generate call; tokens/s = sum of the rows' new tokens (to "
                         "their EOS) / sum of the call times per B; latency per sequence = mean call time")
    report = {"config": config, "machine": machine_info(), "summary": {str(B): c for B, c in summary.items()},
              "records": [dc.asdict(r) for r in records]}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1))
        print(f"[bench] wrote {args.out}", file=sys.stderr)
    if args.plot:
        plot_throughput(summary, args.plot, f"{len(questions)} first turns, {args.max_new_tokens} new tokens, "
                                            f"T={args.temperature}")
        print(f"[bench] wrote {args.plot}", file=sys.stderr)
    return 1 if bad and args.temperature == 0 else 0


def finish(result, methods, questions, args, ctx) -> int:
    from radar_ext.benchmark import aggregate, build_report, format_table, machine_info, mismatches, plot, write_json
    if not result.records:
        print("[bench] no complete question, nothing to report", file=sys.stderr)
        return 130 if result.interrupted else 1
    summary = aggregate(result.records, methods)
    config = {k: v for k, v in vars(args).items() if k not in ("func", "command") and not k.startswith("_")}
    config.update(methods=methods, questions_run=result.questions_done, questions_selected=len(questions),
                  eos_token_id=ctx.eos_token_id, target=getattr(ctx.target.config, "_name_or_path", None),
                  timing="wall time of the whole generate call per answer; tokens/s = sum(new tokens) / "
                         "sum(seconds) per repeat; speedup per repeat vs ar on the same answers")
    machine = machine_info()
    machine["loadavg_start"] = getattr(args, "_loadavg_start", None)
    report = build_report(summary, config, machine, result.records, result.interrupted,
                          result.settings)
    print(format_table(summary))
    bad = mismatches(result.records)
    if bad:
        print(f"\n[bench] {len(bad)} answer(s) differ from ar (method, repeat, question, turn, first diff):")
        for b in bad[:20]:
            print("   ", b)
    if args.out:
        write_json(report, args.out)
        print(f"[bench] wrote {args.out}", file=sys.stderr)
    if args.plot:
        plot(report, args.plot)
        print(f"[bench] wrote {args.plot}", file=sys.stderr)
    return 130 if result.interrupted else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bench_e2e", description=__doc__)
    add_arguments(p)
    return run(p.parse_args(argv))
