"""Grid-search the static tree (max_draft_calls x verify_budget x tree_topk) for the default target
on ShareGPT prompts, greedy: every setting's exact tau from one replay of the target's greedy
answers, a predicted tokens/s from the calibrated CostModel (`radar calibrate` first), then the
model's top few decoded for real, paired against the target's greedy generate and checked
token-identical. With --temperature T > 0 the tau comes from `radar collect` episodes recorded at T
(--episodes) and the timing samples at T. Writes static_tree.json (read by `radar bench --methods
static-gs` and `radar demo`). Never uses the dev benchmark questions.

With --policy pmin|ema|goodput it tunes a training-free adaptive controller instead
(radar_ext.policies.adaptive): every knob value x tree in the grid is decoded for real on the same
ShareGPT prompts, paired against the target's own generate, and the fastest exact one is written as
<policy>.json (read by `radar bench --methods <policy>`). goodput fits its acceptance calibration on
--episodes first."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from radar_ext.commands.calibrate import parse_int_list


def add_arguments(p) -> None:
    from radar_ext.models import DEFAULT_TARGET_NAME
    p.add_argument("--calibration", default=None,
                   help=f"CostModel JSON from `radar calibrate` (default: <cache>/calibration/{DEFAULT_TARGET_NAME}.json)")
    p.add_argument("--head", default=None, help="EAGLE-3 head directory (default: the shipped head)")
    p.add_argument("--max-draft-calls", default=None,
                   help=f"grid of draft calls (default: {STATIC_GRID['max_draft_calls']}; with --policy: the cap, "
                        f"{POLICY_MAX_CALLS})")
    p.add_argument("--verify-budget", default=None,
                   help=f"grid of verify budgets V (default: {STATIC_GRID['verify_budget']}; above --temperature 0: the "
                        "--episodes' budgets; with --policy pmin / ema: "
                        "the shipped static tree's V and twice it; goodput chooses V itself, this caps it (default 64))")
    p.add_argument("--tree-topk", default=None,
                   help=f"grid of tree_topk W (default: {STATIC_GRID['tree_topk']}; with --policy pmin / ema: the shipped "
                        f"static tree's W; goodput: {POLICY_GRID['goodput']['tree_topk']})")
    p.add_argument("--policy", choices=("pmin", "ema", "goodput"), default=None,
                   help="tune this training-free controller's knob instead of the static tree")
    p.add_argument("--values", default=None,
                   help="with --policy pmin / ema: the knob's grid, comma separated (pmin: p_min, default "
                        f"{POLICY_GRID['pmin']['values']}; ema: margin in draft calls, default {POLICY_GRID['ema']['values']})")
    p.add_argument("--prompts", type=int, default=16, help="ShareGPT prompts for the replay (default: %(default)s)")
    p.add_argument("--time-prompts", type=int, default=8,
                   help="of those, prompts decoded for the real timing (default: %(default)s)")
    p.add_argument("--prompt-split", choices=("heldout", "train"), default="heldout",
                   help="ShareGPT prompts the shipped head was not trained on (heldout, default) or the others")
    p.add_argument("--max-prompt-tokens", type=int, default=384, help="skip longer prompts (default: %(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--top", type=int, default=3, help="settings of the model's ranking timed for real (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=2, help="timed rounds over the prompts (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--seed", type=int, default=0, help="prompt sampling seed (and, above --temperature 0, the draws')")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (use the calibration's)")
    p.add_argument("--out", default=None, help="write static_tree.json here (default: <cache>/tune_static/static_tree.json)")
    p.add_argument("--install", action="store_true",
                   help="also write static_tree.json beside the head (the shipped one without --head)")
    p.add_argument("--temperature", type=float, default=0.0,
                   help="tune for sampling at this temperature (default 0: greedy). Above 0 the ranking reads "
                        "--episodes recorded at it and the timing samples (no exactness check)")
    p.add_argument("--episodes", nargs="+", default=None,
                   help="`radar collect` directories recorded at --temperature (needed above 0; they fix tree_topk)")
    p.add_argument("--batch-size", type=int, default=1,
                   help="tune the tree for batches of B rows: ranked with the calibration's batched verify (`radar "
                        "calibrate --batch-sizes 1,B`), timed on batches of B prompts (HF's left padding), every row "
                        "checked against its single-row greedy answer; --install stores it under by_batch[B] of the "
                        "head's static_tree.json (read by `radar bench --batch-sizes ... --methods static-gs-b`) "
                        "(default: %(default)s)")
    p.add_argument("--no-progress", action="store_true")


STATIC_GRID = {"max_draft_calls": "1,2,3,4,5,6,7,8", "verify_budget": "4,8,12,16,20,24,32,40,48,64",
               "tree_topk": "4,6,8,10"}
POLICY_MAX_CALLS = 8
POLICY_GRID = {"pmin": {"values": "0.2,0.4,0.6,0.8"}, "ema": {"values": "0.5,1,2"},
               "goodput": {"tree_topk": "4,6,10", "verify_budget": "64"}}


def _fail(msg: str) -> int:
    print(f"radar tune-static: error: {msg}", file=sys.stderr)
    return 2


def check_args(args) -> dict:
    if args.policy is not None:
        return check_policy_args(args)
    if args.values is not None:
        raise ValueError("--values is the knob grid of --policy pmin / ema; the static search has no knob")
    out = dict(calls_list=parse_int_list(args.max_draft_calls or STATIC_GRID["max_draft_calls"], "--max-draft-calls"),
               budget_list=parse_int_list(args.verify_budget or STATIC_GRID["verify_budget"], "--verify-budget"),
               topk_list=parse_int_list(args.tree_topk or STATIC_GRID["tree_topk"], "--tree-topk"))
    _common_checks(args)
    if args.temperature > 0 and not args.episodes:
        raise ValueError(f"--temperature {args.temperature:g} needs --episodes recorded at that temperature "
                         "(radar collect --temperature ...): greedy replays say nothing about sampled acceptance")
    if args.temperature == 0 and args.episodes:
        raise ValueError("--episodes is read only above --temperature 0 (greedy ranks on exact replays)")
    return out


def _common_checks(args) -> None:
    for name, v, lo in (("--prompts", args.prompts, 1), ("--time-prompts", args.time_prompts, 1),
                        ("--max-prompt-tokens", args.max_prompt_tokens, 1), ("--max-new-tokens", args.max_new_tokens, 2),
                        ("--top", args.top, 1), ("--repeats", args.repeats, 1), ("--warmup", args.warmup, 0),
                        ("--threads", args.threads, 1)):
        if v is not None and v < lo:
            raise ValueError(f"{name} must be >= {lo}, got {v}")
    if not args.temperature >= 0:
        raise ValueError(f"--temperature must be >= 0, got {args.temperature}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.batch_size > 1 and args.policy is not None:
        raise ValueError("--batch-size tunes the static tree; --policy pmin / ema / goodput are tuned at B = 1")
    if args.time_prompts > args.prompts:
        raise ValueError(f"--time-prompts must be <= --prompts ({args.prompts}), got {args.time_prompts}")


def check_policy_args(args) -> dict:
    """--policy: the candidate grid's parts, checked before any model is loaded."""
    _common_checks(args)
    kind = args.policy
    static = _shipped_static(args.head)
    grid = POLICY_GRID[kind]
    cap = parse_int_list(args.max_draft_calls or str(POLICY_MAX_CALLS), "--max-draft-calls")
    if len(cap) != 1:
        raise ValueError(f"--max-draft-calls with --policy is the one cap on draft calls, got {args.max_draft_calls!r}")
    out = dict(max_draft_calls=cap[0])
    if kind == "goodput":
        if args.values is not None:
            raise ValueError("--values: goodput has no knob grid of its own (its grid is --tree-topk)")
        if not args.episodes:
            raise ValueError("--policy goodput needs --episodes (`radar collect` directories) to fit its acceptance "
                             "calibration")
        out.update(topk_list=parse_int_list(args.tree_topk or grid["tree_topk"], "--tree-topk"),
                   budget_list=parse_int_list(args.verify_budget or grid["verify_budget"], "--verify-budget"))
        if len(out["budget_list"]) != 1:
            raise ValueError(f"--verify-budget with --policy goodput is the one cap on V, got {args.verify_budget!r}")
        return out
    if args.episodes:
        raise ValueError(f"--episodes is read by --policy goodput only, not {kind}")
    values = [float(x) for x in _floats(args.values or grid["values"], "--values")]
    out.update(values=values,
               topk_list=parse_int_list(args.tree_topk or str(static["tree_topk"]), "--tree-topk"),
               budget_list=parse_int_list(args.verify_budget or f"{static['verify_budget']},{2 * static['verify_budget']}",
                                          "--verify-budget"))
    return out


def _floats(spec: str, flag: str) -> list:
    try:
        vals = [float(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        vals = []
    if not vals:
        raise ValueError(f"{flag} must be a comma-separated list of numbers, got {spec!r}")
    return vals


def _shipped_static(head) -> dict:
    from radar_ext.benchmark.methods import MethodUnavailable, read_static_gs
    from radar_ext.models import default_head_path
    path = (Path(head) if head else default_head_path()) / "static_tree.json"
    try:
        return read_static_gs(path)
    except MethodUnavailable:
        return {"max_draft_calls": 8, "tree_topk": 10, "verify_budget": 60}


def sharegpt_prompts(tokenizer, n: int, split: str, max_tokens: int, seed: int) -> list:
    """n chat-templated ShareGPT first user turns [1, P] (training data, never the dev benchmark),
    from the held-out bucket or the training bucket of radar_ext.training.data, in a seeded order."""
    import random

    from radar_ext.benchmark.runner import encode_chat
    from radar_ext.training.data import first_user_turns, is_heldout
    import torch

    turns = [(cid, q) for cid, q in first_user_turns() if is_heldout(cid) == (split == "heldout")]
    random.Random(seed).shuffle(turns)
    out = []
    for _, q in turns:
        ids = encode_chat(tokenizer, [{"role": "user", "content": q}])
        if len(ids) <= max_tokens:
            out.append(torch.tensor([ids], dtype=torch.long))
            if len(out) == n:
                return out
    raise ValueError(f"--prompts: only {len(out)} ShareGPT {split} prompts have <= {max_tokens} tokens, asked for {n}")


def write(obj: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    os.replace(tmp, path)


def run(args) -> int:
    import torch

    from radar_ext.calibration import CalibrationError, CostModel, default_path
    from radar_ext.models import DEFAULT_TARGET_NAME, cache_dir, default_head_path
    from radar_ext.static_search import format_rows, tune_static
    try:
        grid = check_args(args)
        if args.policy is not None:
            return run_policy(args, grid)
        cal_path = Path(args.calibration) if args.calibration else default_path(DEFAULT_TARGET_NAME)
        cost_model = CostModel.load(cal_path)
        head = Path(args.head) if args.head else default_head_path()
        if not (head / "config.json").is_file():
            raise ValueError(f"--head {str(head)!r} has no config.json (an EAGLE-3 head directory)")
    except (ValueError, CalibrationError) as e:
        return _fail(str(e))
    threads = cost_model.machine.get("torch_threads")
    if args.threads:
        torch.set_num_threads(args.threads)
    if threads and threads != torch.get_num_threads():
        print(f"[tune-static] warning: the calibration was measured with {threads} torch thread(s), this run "
              f"uses {torch.get_num_threads()} (pass --threads {threads})", file=sys.stderr)
    try:
        target, drafter, prompts, eos = load_parts(args, head)
    except ValueError as e:
        return _fail(str(e))
    episodes = None
    if args.episodes:
        from radar_ext.training.episodes import load_episodes
        try:
            episodes = load_episodes(args.episodes, "all")
        except (OSError, ValueError) as e:
            return _fail(f"--episodes: {e}")
        if args.verify_budget is None:  # the episodes fix which budgets can be ranked: default to all of them
            grid["budget_list"] = [int(v) for v in episodes.meta["budgets"]]
    try:
        result = tune_static(target, drafter, cost_model, prompts, max_new_tokens=args.max_new_tokens, eos_token_id=eos,
                             top=args.top, time_prompts=args.time_prompts, repeats=args.repeats, warmup=args.warmup,
                             progress=not args.no_progress, log=lambda s: print(s, file=sys.stderr),
                             temperature=args.temperature, episodes=episodes, seed=args.seed,
                             batch_size=args.batch_size, **grid)
    except ValueError as e:  # the grid against the episodes (tree_topk, depth, budgets)
        return _fail(str(e))
    result["search"].update(prompt_source=f"ShareGPT first user turns ({args.prompt_split} split), chat template",
                            calibration_file=str(cal_path), head=str(head), seed=args.seed)
    print("model ranking (top 15):")
    print(format_rows(result["table"]))
    print(f"\ntimed (paired vs ar, mean over repeats{', T = %g' % args.temperature if args.temperature else ''}):")
    print(format_rows(result["timed"]))
    ar = result["ar"]
    print(f"ar: {ar['tokens_per_s_mean']:.1f} tok/s | best: max_draft_calls={result['max_draft_calls']} "
          f"tree_topk={result['tree_topk']} verify_budget={result['verify_budget']}")
    best = result["best"]["measured"]
    if result["separated"] is False:
        print("[tune-static] note: the pick is not separated from " + ", ".join(
              f"{r['max_draft_calls']}/{r['tree_topk']}/{r['verify_budget']} ({r['measured']['vs_best']['ratio']:.3f}x "
              f"[{r['measured']['vs_best']['ci95'][0]:.3f}-{r['measured']['vs_best']['ci95'][1]:.3f}])"
              for r in result["not_separated_from"])
              + f" at this timing budget ({best['answers']} timed answers); more --time-prompts or --repeats "
              "would tell them apart", file=sys.stderr)
    if best["speedup_mean"] < 1.0:
        print(f"[tune-static] note: even the best static tree is slower than plain greedy generate here "
              f"({best['speedup_mean']:.2f}x, tau {result['best']['tau']:.2f}): the head accepts too little for "
              "this machine's verify cost", file=sys.stderr)
    B = args.batch_size
    default_out = cache_dir() / "tune_static" / ("static_tree.json" if B == 1 else f"static_tree_b{B}.json")
    out = Path(args.out) if args.out else default_out
    write(result, out)
    print(f"[tune-static] wrote {out}", file=sys.stderr)
    if args.install:
        installed = head / "static_tree.json"
        write(merge_installed(installed, result, B), installed)
        print(f"[tune-static] installed {installed}" + (f" (by_batch[{B}])" if B > 1 else ""), file=sys.stderr)
    return 0


def merge_installed(path: Path, result: dict, batch_size: int) -> dict:
    """The head's static_tree.json after installing `result`: at B = 1 the result itself (keeping the trees
    installed for other batch sizes under by_batch); at B > 1 the file as it is with by_batch[B] = the result
    (without its full ranking table)."""
    old = json.loads(path.read_text()) if path.is_file() else {}
    by_batch = dict(old.get("by_batch", {}))
    if batch_size == 1:
        return {**result, **({"by_batch": by_batch} if by_batch else {})}
    if not old:
        raise ValueError(f"{path} holds no B = 1 tree yet; install one first (`radar tune-static --install`)")
    by_batch[str(batch_size)] = {k: v for k, v in result.items() if k != "table"}
    return {**old, "by_batch": dict(sorted(by_batch.items(), key=lambda kv: int(kv[0])))}


def load_parts(args, head):
    """(target, EagleDrafter, ShareGPT prompts, eos id) of a tuning run; ValueError when too few prompts qualify."""
    from radar_ext.drafters import EagleDrafter
    from radar_ext.models import load_default_target
    target, tok = load_default_target()
    drafter = EagleDrafter.from_pretrained(head, target)
    prompts = sharegpt_prompts(tok, args.prompts, args.prompt_split, args.max_prompt_tokens, args.seed)
    eos = getattr(target.generation_config, "eos_token_id", None)
    return target, drafter, prompts, tok.eos_token_id if eos is None else eos


def policy_candidates(kind: str, grid: dict, costs=None, acceptance=None) -> list:
    """The timed candidates of --policy KIND: {"label", "policy_kwargs", "tree_topk", "verify_budget"}."""
    out = []
    for W in grid["topk_list"]:
        for V in grid["budget_list"]:
            if kind == "goodput":
                kw = dict(costs=costs, acceptance=acceptance, max_draft_calls=grid["max_draft_calls"],
                          max_verify_budget=V)
                out.append(dict(label=f"W={W}", policy_kwargs=kw, tree_topk=W, verify_budget=V))
                continue
            for x in grid["values"]:
                knob = "p_min" if kind == "pmin" else "margin"
                kw = {knob: x, "max_draft_calls": grid["max_draft_calls"]}
                out.append(dict(label=f"{knob}={x:g} W={W} V={V}", policy_kwargs=kw, tree_topk=W, verify_budget=V))
    return out


def run_policy(args, grid: dict) -> int:
    """--policy: time the knob grid of one training-free controller and write <policy>.json."""
    import torch

    from radar_ext.calibration import CalibrationError, default_path
    from radar_ext.models import DEFAULT_TARGET_NAME, cache_dir, default_head_path
    from radar_ext.static_search import format_adaptive_rows, tune_adaptive
    kind = args.policy
    head = Path(args.head) if args.head else default_head_path()
    if not (head / "config.json").is_file():
        return _fail(f"--head {str(head)!r} has no config.json (an EAGLE-3 head directory)")
    if args.threads:
        torch.set_num_threads(args.threads)
    costs = acceptance = None
    if kind == "goodput":
        from radar_ext.policies.adaptive import fit_acceptance
        from radar_ext.policies.costs import PolicyCosts
        from radar_ext.training.episodes import load_episodes
        try:
            cal_path = Path(args.calibration) if args.calibration else default_path(DEFAULT_TARGET_NAME)
            PolicyCosts.load(cal_path)  # a `radar calibrate` JSON or any cost source a learned policy reads
            acceptance = {}
            for d in args.episodes:
                ep = load_episodes(d, "train")
                fit = fit_acceptance(ep)
                t = sorted({float(x) for x in ep["temperature"].tolist()})
                print(f"[tune-static] goodput acceptance fit on {d} (T = {t}): a={fit['a']:.3f} b={fit['b']:.3f} "
                      f"rmse {fit['rmse']:.3f} over {fit['cycles']} cycles", file=sys.stderr)
                for temp in t:
                    acceptance[f"{temp:g}"] = {"a": fit["a"], "b": fit["b"]}
        except (OSError, ValueError, CalibrationError) as e:
            return _fail(str(e))
    try:
        target, drafter, prompts, eos = load_parts(args, head)
    except ValueError as e:
        return _fail(str(e))
    if kind == "goodput":
        mean_len = float(sum(p.shape[1] for p in prompts) / len(prompts)) + args.max_new_tokens / 2
        costs = {W: PolicyCosts.load(cal_path, tree_topk=W, prefix_len=mean_len).to_dict() for W in grid["topk_list"]}
    cands = policy_candidates(kind, grid, acceptance=acceptance)
    if kind == "goodput":
        for c in cands:
            c["policy_kwargs"]["costs"] = costs[c["tree_topk"]]
    result = tune_adaptive(target, drafter, kind, cands, prompts[:args.time_prompts], max_new_tokens=args.max_new_tokens,
                           eos_token_id=eos, repeats=args.repeats, warmup=args.warmup, progress=not args.no_progress,
                           log=lambda s: print(s, file=sys.stderr), temperature=args.temperature, seed=args.seed)
    result["search"].update(prompt_source=f"ShareGPT first user turns ({args.prompt_split} split), chat template",
                            head=str(head), seed=args.seed, episodes=args.episodes,
                            calibration=str(cal_path) if kind == "goodput" else None)
    print(format_adaptive_rows(result["timed"]))
    ar = result["ar"]
    print(f"ar: {ar['tokens_per_s_mean']:.1f} tok/s | best: {result['label']}")
    if result["separated"] is False:
        print(f"[tune-static] note: the pick is not separated from {', '.join(result['not_separated_from'])} at this "
              "timing budget; more --time-prompts or --repeats would tell them apart", file=sys.stderr)
    out = Path(args.out) if args.out else cache_dir() / "tune_static" / f"{kind}.json"
    write(result, out)
    print(f"[tune-static] wrote {out}", file=sys.stderr)
    if args.install:
        write(result, head / f"{kind}.json")
        print(f"[tune-static] installed {head / f'{kind}.json'}", file=sys.stderr)
    return 0
