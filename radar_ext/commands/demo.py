"""The embedded default end to end: SmolLM2-135M-Instruct answers one prompt three ways, streamed: HF's own
greedy `generate`, our own plain decoding (`RadarDecoder(target, drafter=None)`: one token per forward through
the fast verify path) and the product's main path (the shipped EAGLE-3 head with the shipped LTD policy).
Then tokens/s of each, the speculative decoder's speedup over HF and over our own plain decoding, tau, draft
calls, V, and whether all three outputs are identical."""
from __future__ import annotations

DEFAULT_PROMPT = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in "
                  "May. How many clips did Natalia sell altogether in April and May?")


def add_arguments(p) -> None:
    p.add_argument("--prompt", default=DEFAULT_PROMPT, help="user message (chat template applied)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--drafter", choices=("hybrid", "eagle"), default="hybrid",
                   help="hybrid (default): the shipped head and context lookups in one tree; eagle: the head alone")
    p.add_argument("--policy", choices=("ltd", "radar", "static"), default="ltd",
                   help="the controller of the speculative run: the shipped LTD (default) or RADAR policy, or the "
                        "shipped grid-searched static tree")
    p.add_argument("--costs", default=None,
                   help="this machine's `radar calibrate` JSON for a learned --policy, in place of the calibration "
                        "stored with it")
    p.add_argument("--max-draft-calls", type=int, default=None, help="--policy static: tree depth (default: shipped best)")
    p.add_argument("--tree-topk", type=int, default=None, help="--policy static: beams per level")
    p.add_argument("--verify-budget", type=int, default=None, help="--policy static: draft tokens verified per cycle")
    p.add_argument("--no-stream", action="store_true", help="do not stream the text")
    p.add_argument("--repeats", type=int, default=3,
                   help="timed runs of own plain decoding and RadarDecoder after the streamed ones, alternating, "
                        "their median reported (one run drifts with the machine by 10%% and more); 0: the streamed "
                        "runs alone (default: %(default)s)")


def shipped_static_setting() -> dict:
    """The best static tree found for the default (grid search shipped with the head), or the
    EAGLE-3 default when none is shipped."""
    import json
    from ..models import default_head_path
    f = default_head_path() / "static_tree.json"
    if f.is_file():
        d = json.loads(f.read_text())
        return {k: int(d[k]) for k in ("max_draft_calls", "tree_topk", "verify_budget")}
    return {"max_draft_calls": 8, "tree_topk": 10, "verify_budget": 60}


def _speculative_parts(args):
    """(policy, tree_topk, verify_budget, description) of the speculative run; errors name the argument."""
    from ..policies import StaticPolicy
    keys = ("max_draft_calls", "tree_topk", "verify_budget")
    if args.policy != "static":
        given = [k for k in keys if getattr(args, k) is not None]
        if given:
            raise SystemExit(f"--{given[0].replace('_', '-')} sets the static tree; use it with --policy static "
                             f"(the {args.policy} policy chooses its own)")
        from .generate import load_learned_policy
        try:
            policy = load_learned_policy(args.policy, args.costs, args.drafter)
        except (ValueError, FileNotFoundError) as e:
            raise SystemExit(str(e)) from None
        return (policy, policy.tree_topk, getattr(policy, "trained_verify_budget", None) or 60,
                f"shipped {args.policy} policy, costs {policy.costs_source}")
    if args.costs is not None:
        raise SystemExit("--costs needs a learned --policy (ltd or radar)")
    setting = shipped_static_setting()
    for k in keys:
        v = getattr(args, k)
        if v is not None:
            if v < 1:
                raise SystemExit(f"--{k.replace('_', '-')} must be >= 1, got {v}")
            setting[k] = v
    return (StaticPolicy(max_draft_calls=setting["max_draft_calls"]), setting["tree_topk"], setting["verify_budget"],
            f"static tree {setting}")


def run(args) -> int:
    import time

    import torch
    from transformers import TextStreamer

    from ..decoder import RadarDecoder
    from ..models import load_default

    if args.max_new_tokens < 1:
        raise SystemExit(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if args.repeats < 0:
        raise SystemExit(f"--repeats must be >= 0, got {args.repeats}")
    policy, tree_topk, verify_budget, what = _speculative_parts(args)
    t0 = time.time()
    target, tok, drafter = load_default(drafter=args.drafter)
    print(f"[demo] loaded SmolLM2-135M-Instruct + EAGLE-3 head ({args.drafter}) in {time.time() - t0:.1f}s; "
          f"torch threads {torch.get_num_threads()}; {what}")
    enc = tok.apply_chat_template([{"role": "user", "content": args.prompt}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    plain = RadarDecoder(target)  # drafter=None: our own plain decoding
    spec = RadarDecoder(target, drafter, policy=policy, tree_topk=tree_topk, verify_budget=verify_budget)

    def hf(**kw):
        return target.generate(ids, attention_mask=mask, do_sample=False, **kw)

    runs = [("HF generate (greedy)", hf), ("own plain decoding (RadarDecoder, drafter=None)",
                                            lambda **kw: plain.generate(ids, attention_mask=mask, **kw)),
            (f"RadarDecoder ({'EAGLE-3 head + context lookups' if args.drafter == 'hybrid' else 'EAGLE-3 head'}, {what})",
             lambda **kw: spec.generate(ids, attention_mask=mask, **kw))]
    with torch.no_grad():  # warm-up: first calls pay allocator and kernel set-up costs
        for _, fn in runs:
            fn(max_new_tokens=4)
    print(f"\nUser: {args.prompt}\n")
    results = []
    for name, fn in runs:
        streamer = None if args.no_stream else TextStreamer(tok, skip_prompt=True, skip_special_tokens=True)
        print(f"--- {name} ---")
        t0 = time.perf_counter()
        with torch.no_grad():
            out = fn(max_new_tokens=args.max_new_tokens, streamer=streamer)
        secs = time.perf_counter() - t0
        results.append((name, out, (out.shape[1] - ids.shape[1]) / secs))
        print()
    (_, ref, hf_tps), (_, own, own_tps), (_, sd, sd_tps) = results
    same = all(o.shape == ref.shape and bool(torch.equal(o, ref)) for o in (own, sd))
    s = spec.last_stats
    timed = ""
    if args.repeats:  # own plain and RadarDecoder alternating, the streamed runs counted too: medians
        import statistics
        rates = {1: [own_tps], 2: [sd_tps]}
        for r in range(args.repeats):
            for i in ((1, 2) if r % 2 else (2, 1)):
                t0 = time.perf_counter()
                with torch.no_grad():
                    out = runs[i][1](max_new_tokens=args.max_new_tokens)
                rates[i].append((out.shape[1] - ids.shape[1]) / (time.perf_counter() - t0))
                same = same and out.shape == ref.shape and bool(torch.equal(out, ref))
        own_tps, sd_tps = statistics.median(rates[1]), statistics.median(rates[2])
        timed = f" (medians of {args.repeats + 1} alternating runs)"
    print(f"[demo] HF generate: {hf_tps:.2f} tok/s")
    print(f"[demo] own plain decoding: {own_tps:.2f} tok/s ({own_tps / hf_tps:.2f}x HF){timed}")
    print(f"[demo] RadarDecoder: {sd_tps:.2f} tok/s | {sd_tps / hf_tps:.2f}x HF | {sd_tps / own_tps:.2f}x own plain "
          f"decoding | tau {s.tau:.2f} | draft calls/cycle {s.mean_draft_calls:.2f} | V {s.mean_verify_budget:.1f}")
    print(f"[demo] outputs identical: {'yes' if same else 'NO'}")
    return 0 if same else 1
