"""Times one target verify forward (radar_ext.verifier.verify) over a tree of M tokens on the real
default target, plus HF's own one-token decoding step, in these settings: `off` (plain HF forward,
MKL sgemm), `linear` (radar_ext.fast_linear's skinny_linear only, sdpa_gqa=False), `fast`
(fast_linear: skinny_linear + sdpa attention without the K/V copies, through the model's forward),
`lean` (fast_linear inside radar_ext.lean_forward), `quant-py` (lean, with the weights read from their
exact Q4_1 / Q8_0 blocks, skinny_linear_quant, the layer loop in Python) and `quant` (the same with the
layer loop in C++, radar_ext::llama_layers_quant), `fused` (the whole forward as one torch-free C++
call, radar_ext::llama_forward: as RadarDecoder verifies by default; its Q4_1 / Q8_0 products on the AMX
tile unit where the CPU has one), `fused-avx512` (the same with the AMX path turned off: the AVX-512
register tiles), `fused-narrow` (fused with the AVX-512 tiles of the Q4_1 / Q8_0 products at most 4 rows
of x tall instead of up to 6, _C.set_wide_tiles(False): the same bits, the layout before the wider tiles) and
`fused-greedy` (fused with the greedy head, verify(greedy=True): each node's argmax without all the LM head's
logits, as RadarDecoder verifies at temperature 0; checked by its argmax mismatches against `off` only), and
`fused-f32` / `fused-greedy-f32` (the same two with the integer VNNI products of the Q4_1 layers turned off,
_C.set_vnni_linear(False): the float32 register tiles; on CPUs with AVX512-VNNI and no AMX the fused forward
runs its Q4_1 layers in integers, csrc/kernels/vnni_linear.h).

Each sample: verify the tree on top of a fixed prefix in the target's DynamicCache, then crop the
cache back to the prefix; the lean and fused settings with the target pinned (lean_forward.pinned), as
RadarDecoder pins it for a generate call, so their model checks run once per sample outside the timing.
The settings alternate sample by sample so that load from other processes hits them alike (all but `off`,
whose half-gigabyte of float32 weights flushes the caches for whatever runs next: it is timed on its own after
them). Validates first: reports the max logit difference to `off` and the number of nodes whose argmax differs (0 unless a genuine fp tie). Prints median and p10-p90 in ms; writes JSON.

    python bench/bench_verify.py [--json PATH] [--repeats 30] [--threads 2] [--prefix 256]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import time

import torch

from radar_ext import _C, kv_cache, lean_forward
from radar_ext.fast_linear import DEFAULT_MAX_ROWS, fast_linear, fast_linear_available
from radar_ext.tree import make_tree
from radar_ext.verifier import prefill, verify

SIZES = (1, 2, 4, 8, 16, 24, 32, 48, 64)


def random_tree(M: int, vocab: int, seed: int):
    """A tree of M nodes shaped like a drafted one: a few chains branching near the root."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab, (1, M), generator=g)
    parents = torch.full((1, M), -1, dtype=torch.int64)
    for i in range(1, M):  # parent: the previous node, or (1 in 4) a random earlier one
        parents[0, i] = i - 1 if torch.rand((), generator=g) < 0.75 else int(torch.randint(0, i, (), generator=g))
    return make_tree(tokens, parents, torch.tensor([M]))


def percentiles(ts):
    ms = sorted(t * 1e3 for t in ts)
    q = statistics.quantiles(ms, n=10, method="inclusive")
    return {"median": statistics.median(ms), "p10": q[0], "p90": q[-1], "n": len(ms)}


def time_settings(run, settings, repeats, warmup=3):
    """run(setting) -> seconds; the settings other than `off` alternate within each repeat (rotating)."""
    for _ in range(warmup):
        for s in settings:
            run(s)
    times = {s: [] for s in settings}
    # `off` (MKL on the float32 weights, ~0.5 GB) flushes the caches: the setting run right after it was
    # ~3 ms slower at 1-4 tree tokens. So the others alternate among themselves (each repeat starting at
    # the next one), and `off` is timed after them.
    fast = [s for s in settings if s != "off"]
    for i in range(repeats):
        k = i % len(fast) if fast else 0
        for s in fast[k:] + fast[:k]:
            times[s].append(run(s))
    if "off" in settings:
        for _ in range(repeats):
            times["off"].append(run("off"))
    return {s: percentiles(t) for s, t in times.items()}


SETTINGS = ("off", "linear", "fast", "lean", "quant-py", "quant", "fused", "fused-avx512", "fused-narrow",
            "fused-greedy", "fused-f32", "fused-greedy-f32")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", metavar="PATH", default=None, help="write the results as JSON (default: print only)")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prefix", type=int, default=256, help="tokens already in the cache")
    ap.add_argument("--max-rows", type=int, default=64,
                    help="fast_linear row limit while timing (64: the kernel at every M; the shipped "
                         f"default is {DEFAULT_MAX_ROWS})")
    ap.add_argument("--sizes", type=int, nargs="*", default=list(SIZES))
    ap.add_argument("--settings", default=",".join(SETTINGS),
                    help="comma-separated settings to time (`off` always runs: it is the reference); "
                         f"default: all of {','.join(SETTINGS)}")
    args = ap.parse_args()
    picked = [s.strip() for s in args.settings.split(",") if s.strip()]
    unknown = [s for s in picked if s not in SETTINGS]
    if unknown:
        ap.error(f"--settings: unknown {', '.join(unknown)}; expected a comma-separated subset of {','.join(SETTINGS)}")
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()

    from radar_ext.models import load_default_target
    target, _ = load_default_target(verbose=False)
    vocab = target.config.vocab_size
    cache = kv_cache.new_target_cache(target)
    prompt = torch.randint(0, vocab, (1, args.prefix), generator=torch.Generator().manual_seed(0))
    prefill(target, cache, prompt)
    P = args.prefix
    print(f"fast_linear available: {fast_linear_available()}  threads={args.threads}  prefix={P}  "
          f"load average {load_start[0]:.2f}")

    settings = ("off", *[s for s in SETTINGS[1:] if s in picked])

    def ctx(setting):
        return fast_linear(target, max_rows=args.max_rows, enabled=setting != "off", sdpa_gqa=setting == "fast",
                           quantized=setting.startswith("quant"))

    amx_default = _C.amx_enabled()
    print(f"AMX path for the Q4_1 / Q8_0 products: {'on' if amx_default else 'off (not on this CPU)'}")
    vnni_default = _C.vnni_linear_enabled()
    print(f"VNNI integer products for the Q4_1 layers (where AMX is off): {'on' if vnni_default else 'off'}")

    def run_verify(tree, setting):
        _C.set_amx_enabled(amx_default and setting != "fused-avx512")
        _C.set_wide_tiles(setting != "fused-narrow")
        _C.set_vnni_linear(vnni_default and not setting.endswith("-f32"))
        fused = setting.startswith("fused")
        lean, native = fused or setting in ("lean", "quant-py", "quant"), setting == "quant"
        # pinned, as RadarDecoder pins the target for one generate call: the checks that the model still
        # qualifies and its weights are unchanged run once on entry, outside the timed verify
        with ctx(setting), lean_forward.pinned(target, native=native, fused=fused) if lean else contextlib.nullcontext():
            t0 = time.perf_counter()
            out = verify(target, cache, tree, P, lean=lean, native=native, fused=fused,
                         greedy=setting.startswith("fused-greedy"))
            dt = time.perf_counter() - t0
        _C.set_amx_enabled(amx_default)
        _C.set_wide_tiles(True)
        _C.set_vnni_linear(vnni_default)
        kv_cache.crop(cache, P)
        return dt, (out.logits if out.logits is not None else out.argmax)

    rows = []
    for M in args.sizes:
        tree = random_tree(M, vocab, seed=M)
        ref = run_verify(tree, "off")[1]
        check = {}
        for s in settings[1:]:
            got = run_verify(tree, s)[1]
            if got.dim() == 2:  # the greedy head's argmax [1, M]
                check[s] = {"max_logit_diff": None, "argmax_mismatches": int((ref.argmax(-1) != got).sum())}
                continue
            check[s] = {"max_logit_diff": float((ref - got).abs().max()),
                        "argmax_mismatches": int((ref.argmax(-1) != got.argmax(-1)).sum())}
        stats = time_settings(lambda s: run_verify(tree, s)[0], settings, args.repeats)
        rows.append({"M": M, **stats, "check": check})
        print(f"M={M:3d}  " + "  ".join(f"{s} {stats[s]['median']:7.2f} ms" for s in settings) + "  " +
              "  ".join(f"{s}: " + (f"max |dlogit| {c['max_logit_diff']:.2e}, " if c["max_logit_diff"] is not None else "")
                        + f"argmax mismatches {c['argmax_mismatches']}" for s, c in check.items()), flush=True)

    # HF's own decoding step: one token, no attention mask, through the model's forward.
    token = prompt[:, -1:]

    def hf_step(setting):
        with ctx(setting):
            t0 = time.perf_counter()
            with torch.no_grad():
                target(input_ids=token, past_key_values=cache, use_cache=True)
            dt = time.perf_counter() - t0
        kv_cache.crop(cache, P)
        return dt

    hf = time_settings(hf_step, [s for s in settings if s in ("off", "linear", "fast")], args.repeats)
    load_end = os.getloadavg()

    print(f"\nverify forward, ms (median [p10-p90]), SmolLM2-135M fp32, {args.threads} threads, prefix {P}")
    cell = lambda st: f"{st['median']:7.2f} [{st['p10']:6.2f}-{st['p90']:6.2f}]"  # noqa: E731
    titles = {"off": "off (MKL)", "linear": "linear (skinny only)", "fast": "fast (skinny + gqa)",
              "lean": "lean (fast + lean fwd)", "quant-py": "quant-py (+ Q blocks)", "quant": "quant (+ C++ layers)",
              "fused": "fused (C++ forward)", "fused-avx512": "fused, AMX off", "fused-narrow": "fused, 4-row tiles",
              "fused-greedy": "fused, greedy head", "fused-f32": "fused, float32 tiles",
              "fused-greedy-f32": "greedy head, f32 tiles"}
    ratios = [s for s in ("lean", "quant", "fused", "fused-avx512", "fused-narrow", "fused-greedy", "fused-f32",
                          "fused-greedy-f32") if s in settings]
    print(f"{'M':>4} | " + " | ".join(f"{titles[s]:>24}" for s in settings) + "".join(f" | off/{s}" for s in ratios))
    for r in rows:
        print(f"{r['M']:>4} | " + " | ".join(cell(r[s]) for s in settings)
              + "".join(f" | {r['off']['median'] / r[s]['median']:.2f}x" for s in ratios))
    print("HF 1-token step | " + " | ".join(cell(hf[s]) for s in hf) + " |")
    print(f"load average: {load_start[0]:.2f} at start, {load_end[0]:.2f} at end"
          + ("  (busy machine: figures are noisy)" if max(load_start[0], load_end[0]) > 0.5 + args.threads else ""))
    report = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
              "torch": torch.__version__, "threads": args.threads, "prefix": P, "repeats": args.repeats,
              "max_rows": args.max_rows, "fast_linear_available": fast_linear_available(),
              "load_average": {"start": load_start, "end": load_end},
              "verify": rows, "hf_step": hf}
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=1)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
