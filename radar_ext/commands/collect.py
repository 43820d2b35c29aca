"""Record offline episodes for the learned controllers: the EAGLE drafter drafts at full depth on
ShareGPT first turns (chat template of the target; prompts after the head's training prompts, never
the dev benchmark) and, per cycle, the exact accepted-length distribution of every (draft calls n,
verify budget V) tree is measured with one target verification of their union. Resumable: shards
already written are skipped. Train the policies from the result with `radar train-policy`."""
from __future__ import annotations

import sys
from pathlib import Path


def add_arguments(p) -> None:
    from radar_ext.models import cache_dir
    from radar_ext.training.episodes import DEFAULT_BUDGETS

    p.add_argument("--out-dir", type=Path, default=cache_dir() / "episodes" / "default",
                   help="episode shards + episodes_meta.json (default: %(default)s)")
    p.add_argument("--head", default=None, help="EAGLE-3 head directory (default: the shipped head)")
    p.add_argument("--num-prompts", type=int, default=64)
    p.add_argument("--prompt-offset", type=int, default=4096,
                   help="skip this many prompts of the seed-0 ShareGPT shuffle (the head's training prompts)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="share of prompts held out for validation")
    p.add_argument("--prompts-per-shard", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--max-draft-calls", type=int, default=12, help="full drafting depth N")
    p.add_argument("--tree-topk", type=int, default=10, help="beams per level W")
    p.add_argument("--budgets", default=",".join(str(v) for v in DEFAULT_BUDGETS),
                   help="verify budgets V, comma separated increasing (default: %(default)s)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); > 0 samples")
    p.add_argument("--pool-topk", type=int, default=64, help="best pool scores recorded per call (LTD size input)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    p.add_argument("--drafter", choices=("eagle", "hybrid"), default="eagle",
                   help="hybrid: the head's pool merged with context lookups (radar_ext.drafters.hybrid); the "
                        "episodes record the merged pool and the lookup features")
    p.add_argument("--lookup-scores", default=None,
                   help="with --drafter hybrid: calibrated lookup scores (default: lookup_scores.json beside the head)")
    p.add_argument("--questions", default=None,
                   help="a Spec-Bench .jsonl: record the first turns of its first --num-prompts questions (round-robin "
                        "over categories, as `radar bench --limit`) instead of ShareGPT, to measure the controllers "
                        "on the benchmark's own cycles (bench/controller_ceiling.py --split all); "
                        "`radar train-policy` refuses these episodes")


def parse_budgets(text: str) -> tuple:
    try:
        b = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ValueError(f"--budgets must be comma separated integers, got {text!r}") from None
    if not b or list(b) != sorted(set(b)) or b[0] < 1:
        raise ValueError(f"--budgets must be distinct increasing integers >= 1, got {text!r}")
    return b


def run(args) -> int:
    from radar_ext.training.episodes import CollectConfig, check_config, collect

    try:
        if args.threads < 0:
            raise ValueError(f"--threads must be >= 0, got {args.threads}")
        cfg = CollectConfig(out_dir=args.out_dir, num_prompts=args.num_prompts, prompt_offset=args.prompt_offset,
                            val_fraction=args.val_fraction, prompts_per_shard=args.prompts_per_shard,
                            max_new_tokens=args.max_new_tokens, max_draft_calls=args.max_draft_calls,
                            tree_topk=args.tree_topk, budgets=parse_budgets(args.budgets),
                            temperature=args.temperature, pool_topk=args.pool_topk, seed=args.seed,
                            threads=args.threads, head=args.head, drafter=args.drafter,
                            lookup_scores=args.lookup_scores, questions=args.questions)
        check_config(cfg)
    except ValueError as e:
        msg = str(e)
        for name in ("num_prompts", "prompt_offset", "val_fraction", "prompts_per_shard", "max_new_tokens",
                     "max_draft_calls", "tree_topk", "temperature", "pool_topk", "lookup_scores", "questions"):
            if msg.startswith(name + " "):
                msg = "--" + name.replace("_", "-") + msg[len(name):]
        print(f"radar collect: error: {msg}", file=sys.stderr)
        return 2
    meta = collect(cfg)
    print(f"[radar] episodes in {meta.parent}")
    return 0
