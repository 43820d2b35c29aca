"""Paired A/B of two builds of the skinny_linear kernel (csrc/kernels/skinny_linear.h) in one process.

Kernel changes that do not change a result (prefetching, loop order) move a verify forward by a few
percent, less than this machine's drift between two runs, so the two builds are timed side by side:
the header at a git revision (`--base`, default HEAD) and the one in the working tree are each
compiled (g++ -O3, AVX-512 path, OpenMP over the block ranges as at::parallel_for splits them) into a
small torch-free shared library and called through ctypes on the linears of one forward of a Llama
target (default: SmolLM2-135M, the embedded default: 30 layers of q, k, v, o, gate, up, down and the
LM head, random float32 weights so that they stream from memory as the real ones do). The two builds
alternate forward by forward; prints the median ms per forward for each M and their ratio, and
checks that both builds give the same bits.

    python bench/bench_skinny_ab.py [--base REV] [--sizes 1 2 3 4 8 16] [--repeats 12] [--threads 2]
"""
from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADER = "csrc/kernels/skinny_linear.h"

WRAPPER = r"""
#pragma GCC target("avx512f")
#define RADAR_SKINNY_AVX512 1
#include "skinny_linear.h"
#include <omp.h>
using namespace radar_ext::kernels;
extern "C" void run(const float* x, const float* w, float* y, long M, long N, long K, int threads) {
  const SkinnyLinearParams p{x, w, nullptr, y, M, N, K};
  const long nb = skinny_linear_blocks(p);
#pragma omp parallel num_threads(threads)
  {
    const long t = omp_get_thread_num(), n = omp_get_num_threads(), per = (nb + n - 1) / n;
    const long b0 = t * per, b1 = b0 + per < nb ? b0 + per : nb;
    if (b0 < b1) skinny_linear_blocks_native(p, b0, b1);
  }
}
"""


def build(header_text: str, out_dir: str) -> ctypes.CDLL:
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "skinny_linear.h"), "w") as f:
        f.write(header_text)
    src = os.path.join(out_dir, "wrapper.cpp")
    with open(src, "w") as f:
        f.write(WRAPPER)
    lib = os.path.join(out_dir, "libskinny.so")
    subprocess.run(["g++", "-O3", "-fno-fast-math", "-fno-trapping-math", "-fopenmp", "-shared", "-fPIC",
                    f"-I{out_dir}", src, "-o", lib], check=True)
    fn = ctypes.CDLL(lib).run
    fn.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_long] * 3 + [ctypes.c_int]
    return fn


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default="HEAD", help="git revision of the baseline header (default HEAD)")
    ap.add_argument("--sizes", type=int, nargs="*", default=[1, 2, 3, 4, 6, 8, 12, 16])
    ap.add_argument("--repeats", type=int, default=12)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--hidden", type=int, default=576)
    ap.add_argument("--intermediate", type=int, default=1536)
    ap.add_argument("--kv-dim", type=int, default=192, help="num_key_value_heads * head_dim")
    ap.add_argument("--vocab", type=int, default=49152)
    args = ap.parse_args()
    for name in ("repeats", "threads", "layers", "hidden", "intermediate", "kv_dim", "vocab"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not args.sizes or min(args.sizes) < 1:
        ap.error(f"--sizes must be ints >= 1, got {args.sizes}")

    try:
        base_text = subprocess.run(["git", "-C", ROOT, "show", f"{args.base}:{HEADER}"], check=True,
                                   capture_output=True, text=True).stdout
    except subprocess.CalledProcessError as e:
        sys.exit(f"--base {args.base!r}: cannot read {HEADER} at that revision: {e.stderr.strip()}")
    with open(os.path.join(ROOT, HEADER)) as f:
        work_text = f.read()
    tmp = tempfile.mkdtemp(prefix="skinny_ab_")
    fns = {"base": build(base_text, os.path.join(tmp, "base")), "work": build(work_text, os.path.join(tmp, "work"))}

    H, I, KV = args.hidden, args.intermediate, args.kv_dim
    shapes = [(H, H), (KV, H), (KV, H), (H, H), (I, H), (I, H), (H, I)]
    rng = np.random.default_rng(0)
    weights = [rng.standard_normal(s, dtype=np.float32) for _ in range(args.layers) for s in shapes]
    weights.append(rng.standard_normal((args.vocab, H), dtype=np.float32))
    print(f"{len(weights)} matrices, {sum(w.nbytes for w in weights) / 2**20:.0f} MiB float32; "
          f"base = {args.base}:{HEADER}, work = working tree; {args.threads} threads", flush=True)

    def forward(fn, M, outs=None):
        t0 = time.perf_counter()
        for i, w in enumerate(weights):
            x = np.ones((M, w.shape[1]), np.float32) * 0.01 * (i % 7 + 1)
            y = np.empty((M, w.shape[0]), np.float32)
            fn(x.ctypes.data, w.ctypes.data, y.ctypes.data, M, w.shape[0], w.shape[1], args.threads)
            if outs is not None:
                outs.append(y)
        return time.perf_counter() - t0

    print(f"{'M':>3} | {'base ms':>8} | {'work ms':>8} | base/work | same bits")
    for M in args.sizes:
        ya, yb = [], []
        forward(fns["base"], M, ya)
        forward(fns["work"], M, yb)
        same = all(np.array_equal(a, b) for a, b in zip(ya, yb))
        times = {"base": [], "work": []}
        for _ in range(args.repeats):
            for k, fn in fns.items():
                times[k].append(forward(fn, M))
        med = {k: 1e3 * statistics.median(v) for k, v in times.items()}
        print(f"{M:3d} | {med['base']:8.1f} | {med['work']:8.1f} | {med['base'] / med['work']:9.3f} | {same}",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
