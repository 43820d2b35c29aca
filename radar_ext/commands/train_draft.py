"""Build self-distillation data with the default target and train an EAGLE-3 head for it.

Stages (each resumable; run them all with `--stage all`):
  gen       the target answers ShareGPT first turns itself (batched greedy generation, bfloat16)
  ref       ShareGPT's own first answers to other prompts, as extra data (no generation)
  features  one teacher-forced target pass records the 3 feature layers + its top-k next-token distribution
  train     training-time-test training of the head (checkpoints, resume, held-out acceptance per epoch)
Data and checkpoints live in the radar_ext cache directory ($RADAR_EXT_CACHE or ~/.cache/radar_ext).
"""
from __future__ import annotations

from pathlib import Path


def add_arguments(p) -> None:
    from ..training.data import default_data_dir
    from ..training.train_head import add_train_arguments
    p.add_argument("--stage", choices=["gen", "ref", "features", "train", "all"], default="all",
                   help="all = gen, ref, features, train")
    p.add_argument("--data-dir", type=Path, default=default_data_dir(),
                   help="where generated sequences and features are written (default: %(default)s)")
    p.add_argument("--out-dir", type=Path, default=None,
                   help="checkpoints and the trained head (default: <cache>/head_runs/default)")
    p.add_argument("--num-prompts", type=int, default=4096, help="ShareGPT prompts to answer (gen)")
    p.add_argument("--start-prompt", type=int, default=0,
                   help="gen: first prompt of the shuffled ShareGPT order, a multiple of --gen-batch-size "
                        "(a later round takes fresh prompts: the shipped head's rounds used 0-4095)")
    p.add_argument("--ref-skip", type=int, default=None,
                   help="ref: start this far into the shuffled conversations, a multiple of 64, past every gen "
                        "prompt (default: the end of the gen range rounded up to 64, at least 4096)")
    p.add_argument("--ref-exclude-gen-prompts", type=int, default=None,
                   help="ref: drop every conversation whose question is among the first N gen prompts "
                        "(default: the larger of the gen range's end and --ref-skip, so a low --ref-skip "
                        "never repeats a prompt gen answered)")
    p.add_argument("--ref-prompts", type=int, default=640,
                   help="ShareGPT conversations whose own first answer is added as extra data (ref; 0: none)")
    p.add_argument("--gen-batch-size", type=int, default=96)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--gen-dtype", choices=["bfloat16", "float32"], default="bfloat16",
                   help="target dtype while generating answers")
    p.add_argument("--ref-answer-tokens", type=int, default=256,
                   help="ref: tokens kept of each ShareGPT answer")
    p.add_argument("--features-dtype", choices=["bfloat16", "float32"], default="float32",
                   help="target dtype of the teacher-forced features pass (bfloat16: ~2.7x faster on AMX CPUs)")
    add_train_arguments(p)  # --draft-vocab-size ... --init-from, as train_head's own CLI (--threads serves every stage)


def run(args) -> int:
    from ..training.data import FeatureConfig, GenConfig, extract_features, generate_shards
    from ..training.train_head import train, train_config_from_args

    for name in ("num_prompts", "gen_batch_size", "max_new_tokens", "draft_vocab_size", "unroll_steps",
                 "tokens_per_batch", "ref_answer_tokens"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.epochs <= 0 or args.lr <= 0:
        raise SystemExit(f"--epochs and --lr must be > 0, got {args.epochs} and {args.lr}")
    if args.ref_prompts < 0:
        raise SystemExit(f"--ref-prompts must be >= 0, got {args.ref_prompts}")
    if args.start_prompt < 0 or args.start_prompt % args.gen_batch_size:
        raise SystemExit(f"--start-prompt must be a non-negative multiple of --gen-batch-size "
                         f"({args.gen_batch_size}), got {args.start_prompt}")
    gen_end = args.start_prompt + args.num_prompts
    ref_skip = args.ref_skip if args.ref_skip is not None else max(4096, -(-gen_end // 64) * 64)
    if ref_skip < 0 or ref_skip % 64:
        raise SystemExit(f"--ref-skip must be a non-negative multiple of 64, got {ref_skip}")
    ref_exclude = (max(gen_end, ref_skip) if args.ref_exclude_gen_prompts is None
                   else args.ref_exclude_gen_prompts)
    if ref_exclude < 0:
        raise SystemExit(f"--ref-exclude-gen-prompts must be >= 0, got {ref_exclude}")
    stages = ["gen", "ref", "features", "train"] if args.stage == "all" else [args.stage]
    train_cfg = train_config_from_args(args) if "train" in stages else None  # its checks run before gen
    if "gen" in stages:
        generate_shards(GenConfig(out_dir=args.data_dir, num_prompts=args.num_prompts, start_prompt=args.start_prompt,
                                  batch_size=args.gen_batch_size, max_new_tokens=args.max_new_tokens,
                                  threads=args.threads, dtype=args.gen_dtype))
    if "ref" in stages and args.ref_prompts:
        from ..models import load_default_tokenizer
        from ..training.data import write_reference_shards
        write_reference_shards(args.data_dir, load_default_tokenizer(), num_prompts=args.ref_prompts, skip_prompts=ref_skip,
                               max_answer_tokens=args.ref_answer_tokens, exclude_gen_prompts=ref_exclude)
    if "features" in stages:
        extract_features(FeatureConfig(data_dir=args.data_dir, threads=args.threads, dtype=args.features_dtype))
    if "train" in stages:
        best = train(train_cfg)
        print(f"trained head: {best}")
    return 0
