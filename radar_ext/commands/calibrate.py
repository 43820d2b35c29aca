"""Measure what a decoding cycle costs on this machine and save it as a CostModel JSON (read by the
learned policies and by `radar tune-static`): one EAGLE draft call per tree_topk W (call 1 and the
later calls), the target's verify time T_verify(V) over real draft trees at each prefix length, one
policy decision, and the target's own 1-token decode step. Warm-up first; median and p10/p90 over
the repeats. Close other work on the machine first: every figure is wall time."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def parse_int_list(text: str, option: str) -> list:
    """'1,2,4' -> [1, 2, 4]: ints >= 1, no repeats; errors name the option."""
    parts = [s.strip() for s in (text or "").split(",") if s.strip()]
    try:
        values = [int(s) for s in parts]
    except ValueError:
        raise ValueError(f"{option} must be a comma-separated list of ints >= 1, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise ValueError(f"{option} must be a comma-separated list of ints >= 1, got {text!r}")
    if len(set(values)) != len(values):
        raise ValueError(f"{option} must not repeat values, got {text!r}")
    return sorted(values)


def add_arguments(p) -> None:
    from radar_ext.calibration import DEFAULT_PREFIX_LENS, DEFAULT_TREE_TOPKS, DEFAULT_V_SET
    from radar_ext.models import DEFAULT_TARGET_NAME
    j = lambda xs: ",".join(map(str, xs))  # noqa: E731
    p.add_argument("--name", default=DEFAULT_TARGET_NAME,
                   help="calibration name: the default --out is <cache>/calibration/NAME.json (default: %(default)s)")
    p.add_argument("--out", default=None, help="write the CostModel JSON here instead")
    p.add_argument("--head", default=None, help="EAGLE-3 head directory (default: the shipped head)")
    p.add_argument("--v-set", default=j(DEFAULT_V_SET), help="verify budgets V of the curve (default: %(default)s)")
    p.add_argument("--prefix-lens", default=j(DEFAULT_PREFIX_LENS),
                   help="prefix lengths the costs are taken at (default: %(default)s)")
    p.add_argument("--tree-topk", default=j(DEFAULT_TREE_TOPKS),
                   help="tree_topk W values of the draft-call timings; verify trees use the largest (default: %(default)s)")
    p.add_argument("--max-draft-calls", type=int, default=8, help="draft calls per timed draft (default: %(default)s)")
    p.add_argument("--pending", type=int, default=3,
                   help="tokens draft call 1 re-encodes (a cycle's accepted length + 1; default: %(default)s)")
    p.add_argument("--policy", choices=("static", "radar", "ltd"), default="static",
                   help="policy whose decision is timed (radar/ltd: shipped weights or --policy-path)")
    p.add_argument("--policy-path", default=None, help="weights of the radar/ltd policy")
    p.add_argument("--batch-sizes", default=None, metavar="B1,B2,...",
                   help="also time the batched verify forward at these batch sizes, e.g. 1,2,4,8 (root alone and "
                        "each V per row; the LTD policy's batch cost features read them)")
    p.add_argument("--decoding", action="store_true",
                   help="also time whole cycles of real decoding with static trees of 1-3 draft calls and V up to 12 "
                        "and with plain steps (~2 min; the learned policies' costs are then scaled to them)")
    p.add_argument("--decoding-tree-topk", type=int, default=4,
                   help="tree_topk W of --decoding's trees (the shipped learned policies draft at 4; default: %(default)s)")
    p.add_argument("--decoding-tokens", type=int, default=48,
                   help="new tokens per prompt of --decoding (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=3, help="untimed rounds first (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=20, help="timed rounds (default: %(default)s)")
    p.add_argument("--ar-tokens", type=int, default=32,
                   help="tokens of the HF generate per-token measurement, 0 = skip (default: %(default)s)")
    p.add_argument("--ar-repeats", type=int, default=5, help="timed HF generate pairs (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--no-fast-linear", dest="fast_linear", action="store_false",
                   help="time verify without radar_ext.fast_linear (match RadarDecoder(fast_linear=False))")
    p.add_argument("--fused-forward", action=argparse.BooleanOptionalAction, default=True,
                   help="time verify through the fused C++ forward, as RadarDecoder verifies by default; "
                        "--no-fused-forward matches RadarDecoder(fused_forward=False) (default: on)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random prefix")
    p.add_argument("--plot", default=None, help="also draw the curves into this PNG")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _fail(msg: str) -> int:
    print(f"radar calibrate: error: {msg}", file=sys.stderr)
    return 2


def check_args(args) -> dict:
    """Parsed lists; ValueError naming the option on bad input (before any model is loaded)."""
    out = dict(v_set=parse_int_list(args.v_set, "--v-set"),
               prefix_lens=parse_int_list(args.prefix_lens, "--prefix-lens"),
               tree_topks=parse_int_list(args.tree_topk, "--tree-topk"))
    if getattr(args, "batch_sizes", None) is not None:
        out["batch_sizes"] = parse_int_list(args.batch_sizes, "--batch-sizes")
    for name, v, lo in (("--max-draft-calls", args.max_draft_calls, 1), ("--pending", args.pending, 1),
                        ("--warmup", args.warmup, 0), ("--repeats", args.repeats, 1),
                        ("--ar-tokens", args.ar_tokens, 0), ("--ar-repeats", args.ar_repeats, 1),
                        ("--threads", args.threads, 1), ("--decoding-tree-topk", args.decoding_tree_topk, 1),
                        ("--decoding-tokens", args.decoding_tokens, 2)):
        if v is not None and v < lo:
            raise ValueError(f"{name} must be >= {lo}, got {v}")
    if args.pending > args.max_draft_calls + 1:
        raise ValueError(f"--pending must be <= --max-draft-calls + 1 = {args.max_draft_calls + 1}, got {args.pending}")
    if args.policy_path is not None and args.policy == "static":
        raise ValueError("--policy-path needs --policy radar or ltd, got --policy static")
    if not args.name or "/" in args.name or args.name.startswith("."):
        raise ValueError(f"--name must be a plain file name (no '/', not starting with '.'), got {args.name!r}")
    if args.plot is not None and not args.plot.lower().endswith(".png"):
        raise ValueError(f"--plot must name a .png file, got {args.plot!r}")
    return out


def load_models(args):
    """(target, drafter) for the arguments: the default target with --head or the shipped head."""
    from radar_ext.drafters import EagleDrafter
    from radar_ext.models import load_default, load_default_target
    if args.head is not None:
        if not (Path(args.head) / "config.json").is_file():
            raise ValueError(f"--head {args.head!r} has no config.json (an EAGLE-3 head directory)")
        target, _ = load_default_target()
        return target, EagleDrafter.from_pretrained(args.head, target)
    target, _, drafter = load_default()
    return target, drafter


def make_policy(args, max_draft_calls: int):
    from radar_ext import policies
    if args.policy == "static":
        return policies.StaticPolicy(max_draft_calls)
    cls_name = {"radar": "RadarPolicy", "ltd": "LtdPolicy"}[args.policy]
    cls = getattr(policies, cls_name, None)
    if cls is None:
        raise ValueError(f"--policy {args.policy}: radar_ext.policies.{cls_name} is not available in this version")
    try:
        return cls.from_pretrained(args.policy_path) if args.policy_path else cls.from_pretrained()
    except (FileNotFoundError, TypeError) as e:
        raise ValueError(f"--policy {args.policy}: cannot load {cls_name} weights "
                         f"({type(e).__name__}: {e}); pass --policy-path") from None


def run(args) -> int:
    import torch

    from radar_ext.calibration import CalibrationError, calibrate, default_path, plot
    try:
        lists = check_args(args)
    except ValueError as e:
        return _fail(str(e))
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        target, drafter = load_models(args)
        policy = make_policy(args, args.max_draft_calls)
    except ValueError as e:
        return _fail(str(e))
    out = Path(args.out) if args.out else default_path(args.name)
    print(f"[calibrate] {torch.get_num_threads()} torch thread(s); V {lists['v_set']}, prefix lengths "
          f"{lists['prefix_lens']}, tree_topk {lists['tree_topks']}; {args.warmup} warm-up + {args.repeats} "
          "timed rounds", file=sys.stderr)
    try:
        model = calibrate(target, drafter, policy, name=args.name, max_draft_calls=args.max_draft_calls,
                          pending=args.pending, warmup=args.warmup, repeats=args.repeats,
                          ar_tokens=args.ar_tokens, ar_repeats=args.ar_repeats, seed=args.seed,
                          progress=not args.no_progress, log=lambda s: print(s, file=sys.stderr),
                          fast_linear=args.fast_linear, batch_sizes=lists.pop("batch_sizes", ()),
                          fused_forward=args.fused_forward, **lists)
        if args.decoding:
            model.decoding = _measure_decoding(args, target, drafter, min(lists["prefix_lens"]))
    except CalibrationError as e:
        return _fail(str(e))
    print(model.format_table())
    model.save(out)
    print(f"[calibrate] wrote {out}", file=sys.stderr)
    if args.plot:
        plot(model, args.plot)
        print(f"[calibrate] wrote {args.plot}", file=sys.stderr)
    return 0


def _measure_decoding(args, target, drafter, prefix_len: int) -> dict:
    from radar_ext.calibration import decoding_settings, measure_decoding
    repeats = 3
    bar = None
    if not args.no_progress:
        from tqdm import tqdm
        bar = tqdm(total=len(decoding_settings(args.decoding_tree_topk)) * (repeats + 1),  # settings x (warm-up + rounds)
                   desc="calibrate decoding", unit="setting", leave=False)
    try:
        return measure_decoding(target, drafter, prefix_len=prefix_len, new_tokens=args.decoding_tokens,
                                tree_topk=args.decoding_tree_topk, repeats=repeats, seed=args.seed,
                                fused_forward=args.fused_forward, tick=(lambda: bar.update(1)) if bar is not None else None)
    finally:
        if bar is not None:
            bar.close()
