"""The embedded default end to end: SmolLM2-135M-Instruct answers one prompt with plain greedy
`generate` and with RadarDecoder (EAGLE-3 head trained here, static tree), both streamed; then
tokens/s of both, the speedup, tau, draft calls and whether the two outputs are identical."""
from __future__ import annotations

DEFAULT_PROMPT = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in "
                  "May. How many clips did Natalia sell altogether in April and May?")


def add_arguments(p) -> None:
    p.add_argument("--prompt", default=DEFAULT_PROMPT, help="user message (chat template applied)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--max-draft-calls", type=int, default=None, help="static tree depth (default: shipped best)")
    p.add_argument("--tree-topk", type=int, default=None)
    p.add_argument("--verify-budget", type=int, default=None)
    p.add_argument("--no-stream", action="store_true", help="do not stream the text")


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


def run(args) -> int:
    import time

    import torch
    from transformers import TextStreamer

    from ..decoder import RadarDecoder
    from ..models import load_default
    from ..policies import StaticPolicy

    if args.max_new_tokens < 1:
        raise SystemExit(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    setting = shipped_static_setting()
    for k in setting:
        v = getattr(args, k)
        if v is not None:
            if v < 1:
                raise SystemExit(f"--{k.replace('_', '-')} must be >= 1, got {v}")
            setting[k] = v
    t0 = time.time()
    target, tok, drafter = load_default()
    print(f"[demo] loaded SmolLM2-135M-Instruct + EAGLE-3 head in {time.time() - t0:.1f}s; "
          f"torch threads {torch.get_num_threads()}; static tree {setting}")
    enc = tok.apply_chat_template([{"role": "user", "content": args.prompt}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    dec = RadarDecoder(target, drafter, policy=StaticPolicy(max_draft_calls=setting["max_draft_calls"]),
                       tree_topk=setting["tree_topk"], verify_budget=setting["verify_budget"])
    with torch.no_grad():  # warm-up: first calls pay allocator and kernel set-up costs
        target.generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=False)
        dec.generate(ids, attention_mask=mask, max_new_tokens=4)
    print(f"\nUser: {args.prompt}\n")
    streamer = None if args.no_stream else TextStreamer(tok, skip_prompt=True, skip_special_tokens=True)
    print("--- plain greedy generate ---")
    t0 = time.perf_counter()
    with torch.no_grad():
        ar = target.generate(ids, attention_mask=mask, max_new_tokens=args.max_new_tokens, do_sample=False,
                             streamer=streamer)
    t_ar = time.perf_counter() - t0
    streamer = None if args.no_stream else TextStreamer(tok, skip_prompt=True, skip_special_tokens=True)
    print("\n--- RadarDecoder (EAGLE-3 head, static tree) ---")
    t0 = time.perf_counter()
    out = dec.generate(ids, attention_mask=mask, max_new_tokens=args.max_new_tokens, streamer=streamer)
    t_sd = time.perf_counter() - t0
    n_ar, n_sd = ar.shape[1] - ids.shape[1], out.shape[1] - ids.shape[1]
    same = ar.shape == out.shape and bool(torch.equal(ar, out))
    s = dec.last_stats
    print(f"\n[demo] plain greedy: {n_ar} tokens in {t_ar:.2f}s = {n_ar / t_ar:.2f} tok/s")
    print(f"[demo] RadarDecoder: {n_sd} tokens in {t_sd:.2f}s = {n_sd / t_sd:.2f} tok/s | speedup "
          f"{(n_sd / t_sd) / (n_ar / t_ar):.2f}x | tau {s.tau:.2f} | draft calls/cycle {s.mean_draft_calls:.2f} "
          f"| V {s.mean_verify_budget:.1f}")
    print(f"[demo] outputs identical: {'yes' if same else 'NO'}")
    return 0 if same else 1
