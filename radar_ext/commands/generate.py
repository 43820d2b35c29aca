"""Generate text with RadarDecoder on the default target (SmolLM2-135M-Instruct): the text is
streamed, then one stats line. `--compare` also runs the target's plain greedy `generate` and
reports whether both outputs are identical, with both speeds."""
from __future__ import annotations

import argparse
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompt", required=True, help="user message (the chat template is applied)")
    p.add_argument("--raw", action="store_true", help="use the prompt as is, without the chat template")
    p.add_argument("--drafter", choices=("hybrid", "eagle", "ngram", "none"), default="hybrid",
                   help="hybrid (default): the shipped EAGLE-3 head (or --head) and context lookups in one tree (lookup "
                        "scores beside the head, or --lookup-scores); eagle: the head alone; ngram: prompt lookup; none: "
                        "our own plain decoding, one token per forward through the fast verify path")
    p.add_argument("--lookup-scores", default=None, help="calibrated lookup scores JSON (with --drafter hybrid)")
    p.add_argument("--head", default=None, help="EAGLE-3 head directory (with --drafter eagle)")
    p.add_argument("--policy", default=None,
                   help="draft controller: static, radar or ltd (the policies shipped for the default target and head), "
                        "or a saved policy directory from `radar train-policy` (with --drafter eagle). Default: ltd with "
                        "--drafter eagle, static otherwise")
    p.add_argument("--costs", default=None,
                   help="this machine's `radar calibrate` JSON for a learned --policy, in place of the calibration "
                        "stored with it (an LTD policy reads its cost features from it)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--max-draft-calls", type=int, default=None, help="static policy depth (eagle 8, ngram 1)")
    p.add_argument("--tree-topk", type=int, default=None,
                   help="beams per level W (eagle; default: the learned policy's, else 10)")
    p.add_argument("--verify-budget", type=int, default=None, help="draft tokens verified per cycle (eagle 60, ngram 15)")
    p.add_argument("--max-ngram", type=int, default=3, help="longest suffix looked up (ngram)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); > 0 samples")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--compare", action="store_true", help="also run plain greedy generate and compare")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--no-stream", action="store_true", help="print the text at the end instead of streaming")


def _check(args) -> None:
    for name, v, lo in (("--max-new-tokens", args.max_new_tokens, 1), ("--max-draft-calls", args.max_draft_calls, 1),
                        ("--tree-topk", args.tree_topk, 1), ("--verify-budget", args.verify_budget, 1),
                        ("--max-ngram", args.max_ngram, 1), ("--threads", args.threads, 1), ("--top-k", args.top_k, 0)):
        if v is not None and v < lo:
            raise ValueError(f"{name} must be >= {lo}, got {v}")
    if not args.temperature >= 0:
        raise ValueError(f"--temperature must be >= 0, got {args.temperature}")
    if not 0 < args.top_p <= 1:
        raise ValueError(f"--top-p must be in (0, 1], got {args.top_p}")
    if args.compare and args.temperature > 0:
        raise ValueError(f"--compare needs greedy decoding (--temperature 0), got --temperature {args.temperature}")
    eagle_side = args.drafter in ("eagle", "hybrid")
    if args.policy is None:
        args.policy = "ltd" if eagle_side else "static"
    if args.head is not None and not eagle_side:
        raise ValueError(f"--head needs --drafter eagle or hybrid, got --drafter {args.drafter}")
    if args.lookup_scores is not None and args.drafter != "hybrid":
        raise ValueError(f"--lookup-scores needs --drafter hybrid, got --drafter {args.drafter}")
    if not args.prompt.strip():
        raise ValueError("--prompt must not be empty")
    if args.policy != "static":
        if not eagle_side:
            raise ValueError(f"--policy {args.policy} needs --drafter eagle or hybrid, got --drafter {args.drafter}")
        if args.max_draft_calls is not None:
            raise ValueError("--max-draft-calls sets the static policy's depth; a learned --policy has its own")
    elif args.costs is not None:
        raise ValueError("--costs needs a learned --policy (radar, ltd or a saved policy directory)")


def load_learned_policy(name: str, costs=None, drafter: str = "eagle"):
    """`radar` / `ltd`: the policy shipped for the default target and head (and `drafter`: eagle or hybrid,
    models.default_policy_path); otherwise a directory (e.g. <cache>/policy_runs/radar/best from
    `radar train-policy`)."""
    from pathlib import Path

    from radar_ext.models import default_policy_path
    from radar_ext.policies import load_policy

    if name in ("radar", "ltd"):
        path = default_policy_path(name, drafter if drafter in ("eagle", "hybrid") else "eagle")
        if not (path / "config.json").is_file():
            raise ValueError(f"--policy {name}: this installation has no shipped {name} policy at {path}; "
                             f"train one with `radar train-policy --kind {name}` and pass its directory")
    else:
        path = Path(name)
        if not path.is_dir():
            raise ValueError(f"--policy must be static, radar, ltd or a saved policy directory, got {name!r}")
    if costs is not None and not Path(costs).is_file():
        raise ValueError(f"--costs {costs!r} is not a file (a `radar calibrate` JSON)")
    return load_policy(path, costs=costs)


def build(args, policy=None):
    """(target, tokenizer, RadarDecoder) for the arguments; `policy`: a loaded learned policy or None."""
    from radar_ext.decoder import RadarDecoder
    from radar_ext.drafters import EagleDrafter, HybridDrafter, LookupScores, NgramDrafter
    from radar_ext.drafters.hybrid import default_scores_path
    from radar_ext.models import load_default, load_default_target
    from radar_ext.policies import StaticPolicy

    if args.drafter == "none":
        target, tok = load_default_target()
        drafter, calls, budget = None, 1, 1
    elif args.drafter == "ngram":
        target, tok = load_default_target()
        drafter = NgramDrafter(max_ngram=args.max_ngram)
        calls, budget = args.max_draft_calls or 1, args.verify_budget or 15
    else:
        if args.head is not None:
            target, tok = load_default_target()
            drafter = EagleDrafter.from_pretrained(args.head, target)
        else:
            target, tok, drafter = load_default()
        calls, budget = args.max_draft_calls or 8, args.verify_budget or getattr(policy, "trained_verify_budget", None) or 60
        if args.drafter == "hybrid":
            drafter = HybridDrafter(drafter, None, LookupScores.load(args.lookup_scores or default_scores_path(args.head)))
    topk = args.tree_topk or getattr(policy, "tree_topk", None) or 10
    dec = RadarDecoder(target, drafter, policy=policy or StaticPolicy(max_draft_calls=calls),
                       tree_topk=topk, verify_budget=budget)
    return target, tok, dec


def run(args) -> int:
    import time

    import torch
    from transformers import TextStreamer

    try:
        _check(args)
        policy = None if args.policy == "static" else load_learned_policy(args.policy, args.costs, args.drafter)
        if policy is not None and args.tree_topk is not None and policy.tree_topk != args.tree_topk:
            raise ValueError(f"--tree-topk must match the policy's tree_topk = {policy.tree_topk}, got {args.tree_topk}")
    except (ValueError, FileNotFoundError) as e:
        print(f"radar generate: error: {e}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    target, tok, dec = build(args, policy)
    if args.raw:
        ids = tok(args.prompt, return_tensors="pt")["input_ids"]
    else:
        ids = tok.apply_chat_template([{"role": "user", "content": args.prompt}], add_generation_prompt=True,
                                      return_tensors="pt", return_dict=True)["input_ids"]
    sampling = dict(do_sample=True, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                    generator=torch.Generator().manual_seed(args.seed)) if args.temperature > 0 else dict(do_sample=False)
    streamer = None if args.no_stream else TextStreamer(tok, skip_prompt=True, skip_special_tokens=True)
    out = dec.generate(ids, max_new_tokens=args.max_new_tokens, streamer=streamer, **sampling)
    if args.no_stream:
        print(tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
    s = dec.last_stats
    label = "no drafter (own plain decoding)" if args.drafter == "none" else f"{args.drafter} drafter"
    print(f"[radar] {label}, {dec.policy!r}, tree_topk={dec.tree_topk}, "
          f"verify_budget={dec.verify_budget}: {s.summary()}")
    if args.compare:
        t0 = time.perf_counter()
        with torch.no_grad():
            ref = target.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.max_new_tokens,
                                  do_sample=False)
        t_ar = time.perf_counter() - t0
        n_ar = ref.shape[1] - ids.shape[1]
        same = ref.shape == out.shape and bool(torch.equal(ref, out))
        print(f"[radar] plain greedy generate: {n_ar} tokens in {t_ar:.2f}s = {n_ar / t_ar:.2f} tok/s | "
              f"RadarDecoder {s.tokens_per_second:.2f} tok/s | speedup {s.tokens_per_second / (n_ar / t_ar):.2f}x | "
              f"outputs identical: {'yes' if same else 'NO'}")
        if not same:
            return 1
    return 0
