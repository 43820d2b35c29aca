// The products of one forward of the default target alone: every linear of SmolLM2-135M's 30 layers (q, k, v, o,
// gate, up from K = 576, down from K = 1536, as Q4_1 blocks with float16 scales) and the Q8_0 LM head
// (49152 x 576), with the kernel's own AVX-512 register tiles (kernels/skinny_linear.h), every weight streamed from
// memory (~96 MB, as in a real forward), for M rows of x. What the fused forward would cost if it were nothing
// but its products: compare with bench/bench_verify.py's `fused` column (the rest is attention, norms, rotary and
// the phases' hand-offs). Random weights and inputs: timing only.
//
//   g++ -O3 -fopenmp -ffp-contract=off -Icsrc bench/bench_products.cpp csrc/skinny_linear_avx512.cpp \
//       csrc/amx_linear.cpp csrc/vnni_linear.cpp -o build/bench_products
//   build/bench_products [THREADS=2] [--narrow]      (--narrow: 4-row tiles only, _C.set_wide_tiles(False))
//
// Prints the median of 7 passes per M, ms. Each product is one OpenMP region over chunks of 8 four-row blocks.
#include "kernels/avx512_target.h"
#include "kernels/skinny_linear.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

using namespace radar_ext::kernels;

namespace {

struct Weight {
  std::vector<uint8_t> q;
  std::vector<uint16_t> d, m;  // float16 bits
  int64_t N, K;
  bool q8;
};

Weight make_weight(int64_t N, int64_t K, bool q8, std::mt19937& rng) {
  Weight w{{}, {}, {}, N, K, q8};
  w.q.resize(q8 ? N * K : N * K / 2);
  for (auto& b : w.q) b = static_cast<uint8_t>(rng());
  w.d.resize(N * K / 32);
  for (auto& x : w.d) x = static_cast<uint16_t>(0x2000 + (rng() & 0x3ff));  // small positive halves
  if (!q8) {
    w.m.resize(N * K / 32);
    for (auto& x : w.m) x = static_cast<uint16_t>(0xa000 + (rng() & 0x3ff));  // small negative halves
  }
  return w;
}

SkinnyLinearParams params(const Weight& w, const float* x, float* y, int64_t M) {
  SkinnyLinearParams p{x, nullptr, nullptr, y, M, w.N, w.K};
  p.wq = w.q.data();
  p.wd = reinterpret_cast<const float*>(w.d.data());
  p.wm = w.q8 ? nullptr : reinterpret_cast<const float*>(w.m.data());
  p.scales_f16 = true;
  return p;
}

}  // namespace

int main(int argc, char** argv) {
  int threads = 2;
  bool narrow = false;
  for (int i = 1; i < argc; ++i) {
    if (!strcmp(argv[i], "--narrow")) {
      narrow = true;
    } else if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
      printf("usage: %s [THREADS=2] [--narrow]\n", argv[0]);
      return 0;
    } else {
      threads = atoi(argv[i]);
      if (threads < 1) {
        fprintf(stderr, "THREADS must be a positive integer, got '%s'\n", argv[i]);
        return 2;
      }
    }
  }
  skinny_set_wide_tiles(!narrow);
  std::mt19937 rng(0);
  std::vector<Weight> ws;
  for (int l = 0; l < 30; ++l) {
    for (int64_t n : {576, 192, 192, 576, 1536, 1536}) ws.push_back(make_weight(n, 576, false, rng));
    ws.push_back(make_weight(576, 1536, false, rng));
  }
  ws.push_back(make_weight(49152, 576, true, rng));
  std::vector<float> x(64 * 1536), y(64 * 49152);
  for (auto& v : x) v = static_cast<float>(rng() % 1000) / 1000.0f - 0.5f;
  printf("products of one forward (30 layers + LM head), %d thread(s), %s tiles, median of 7 passes\n", threads,
         narrow ? "4-row" : "up to 6-row");
  for (int M : {1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 16, 24, 32}) {
    std::vector<double> total, head;
    for (int rep = 0; rep < 7; ++rep) {
      const auto t0 = std::chrono::steady_clock::now();
      double h = 0.0;
      for (size_t i = 0; i < ws.size(); ++i) {
        const SkinnyLinearParams p = params(ws[i], x.data(), y.data(), M);
        const int64_t nb = skinny_linear_blocks(p);
        const auto a = std::chrono::steady_clock::now();
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
        for (int64_t b = 0; b < nb; b += 8) skinny_linear_blocks_native(p, b, std::min(nb, b + 8));
        if (i + 1 == ws.size()) h = std::chrono::duration<double>(std::chrono::steady_clock::now() - a).count();
      }
      total.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
      head.push_back(h);
    }
    std::sort(total.begin(), total.end());
    std::sort(head.begin(), head.end());
    printf("M = %2d: %7.2f ms (LM head %6.2f ms)\n", M, total[3] * 1e3, head[3] * 1e3);
  }
  return 0;
}
