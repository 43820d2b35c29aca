// skinny_linear blocks (plain path, and the AVX-512 path when this CPU has it) against a float64
// dot product, over odd sizes; every output must also be bitwise independent of M, of the tile it
// falls in and of how the blocks are split (the property that makes the op thread-count invariant).
#include <cmath>
#include <cstring>
#include <cstdio>
#include <vector>

#include "check.h"
#include "kernels/skinny_linear.h"

using namespace radar_ext::kernels;

// Deterministic values in [-2, 2) with a few exact zeros and large ones, no inf/nan.
static float value(uint32_t& s) {
  s = s * 1664525u + 1013904223u;
  const float u = static_cast<float>(s >> 8) / 16777216.0f;
  if ((s & 63u) == 0) return 0.0f;
  if ((s & 63u) == 1) return 1e4f * (u - 0.5f);
  return 4.0f * u - 2.0f;
}

typedef void (*BlocksFn)(const SkinnyLinearParams&, int64_t, int64_t);

// w16: run on these 16-bit weights (bfloat16, or float16 if f16) instead of w.
static std::vector<float> run(BlocksFn fn, const std::vector<float>& x, const std::vector<float>& w,
                              const float* bias, int64_t M, int64_t N, int64_t K, int64_t split,
                              const std::vector<uint16_t>* w16 = nullptr, bool f16 = false) {
  std::vector<float> y(M * N, -7.0f);
  SkinnyLinearParams p{x.data(), w.data(), bias, y.data(), M, N, K};
  if (w16) {
    p.w = nullptr;
    p.w16 = w16->data();
    p.w16_is_f16 = f16;
  }
  const int64_t nb = skinny_linear_blocks(p);
  for (int64_t b = 0; b < nb; b += split) fn(p, b, b + split < nb ? b + split : nb);
  return y;
}

static void check_path(const char* name, BlocksFn fn) {
  const int64_t Ms[] = {1, 2, 3, 5, 7, 16, 33};
  const int64_t NKs[][2] = {{1, 1}, {3, 5}, {4, 16}, {9, 17}, {13, 31}, {6, 100}, {37, 576}, {70, 48}};
  int bad = 0;
  for (const auto& nk : NKs)
    for (const int64_t M : Ms) {
      const int64_t N = nk[0], K = nk[1];
      uint32_t s = static_cast<uint32_t>(M * 1000 + N * 10 + K);
      std::vector<float> x(M * K), w(N * K), bias(N);
      for (float& v : x) v = value(s);
      for (float& v : w) v = value(s);
      for (float& v : bias) v = value(s);
      for (int with_bias = 0; with_bias < 2; ++with_bias) {
        const float* b = with_bias ? bias.data() : nullptr;
        const std::vector<float> y = run(fn, x, w, b, M, N, K, 1);
        for (int64_t m = 0; m < M; ++m)
          for (int64_t n = 0; n < N; ++n) {
            double want = b ? b[n] : 0.0, mag = b ? std::fabs(b[n]) : 0.0;
            for (int64_t k = 0; k < K; ++k) {
              want += static_cast<double>(x[m * K + k]) * w[n * K + k];
              mag += std::fabs(static_cast<double>(x[m * K + k]) * w[n * K + k]);
            }
            // float32 summation error bound ~ K * eps * sum |terms| (loose; a wrong index is far off)
            if (std::fabs(y[m * N + n] - want) > 1e-6 * mag * (K + 1) + 1e-30) ++bad;
          }
        // Same numbers when the blocks are handed out 3 at a time or all in one range (ranges longer
        // than kSkinnyPrefetchBlocks run the prefetching path), and row m alone (M = 1) gives the
        // same bits as row m inside the M-row call.
        CHECK(run(fn, x, w, b, M, N, K, 3) == y);
        CHECK(run(fn, x, w, b, M, N, K, 1 << 20) == y);
        for (int64_t m = 0; m < M; m += 4) {
          const std::vector<float> xm(x.begin() + m * K, x.begin() + (m + 1) * K);
          const std::vector<float> ym = run(fn, xm, w, b, 1, N, K, 2);
          for (int64_t n = 0; n < N; ++n) CHECK(ym[n] == y[m * N + n]);
        }
        // 16-bit weights give the bits of their float32 values: bf16 = the top half of w's bits;
        // f16 = w's bits with the exponent rebased and the mantissa cut (values within half range;
        // the exponent bits are kept in [1, 30] so every f16 is normal, plus the zeros)
        std::vector<float> wb(w.size()), wh(w.size());
        std::vector<uint16_t> b16(w.size()), h16(w.size());
        for (size_t i = 0; i < w.size(); ++i) {
          uint32_t u;
          std::memcpy(&u, &w[i], 4);
          b16[i] = static_cast<uint16_t>(u >> 16);
          const Bf16 bb{b16[i]};
          wb[i] = load_weight(&bb);
          const uint32_t e = (u >> 23) & 0xffu;
          const uint32_t he = e == 0 ? 0 : (e < 113 ? 1 : (e > 142 ? 30 : e - 112));
          h16[i] = static_cast<uint16_t>(((u >> 16) & 0x8000u) | (he << 10) | ((u >> 13) & 0x3ffu));
          if (w[i] == 0.0f) h16[i] = 0;
          const F16 hh{h16[i]};
          wh[i] = load_weight(&hh);
        }
        const std::vector<float> yb = run(fn, x, wb, b, M, N, K, 3), yh = run(fn, x, wh, b, M, N, K, 3);
        CHECK(run(fn, x, wb, b, M, N, K, 1 << 20, &b16) == yb);
        CHECK(run(fn, x, wb, b, M, N, K, 1, &b16) == yb);
        CHECK(run(fn, x, wh, b, M, N, K, 1 << 20, &h16, true) == yh);
        CHECK(run(fn, x, wh, b, M, N, K, 1, &h16, true) == yh);
      }
    }
  std::printf("%s: %d values off\n", name, bad);
  CHECK(bad == 0);
}

int main() {
  check_path("plain", skinny_linear_blocks_native);  // this file is compiled for the baseline ISA
#if defined(__GNUC__) && defined(__x86_64__)
  const bool cpu_avx512 = __builtin_cpu_supports("avx512f");
#else
  const bool cpu_avx512 = false;
#endif
  if (skinny_linear_avx512_compiled() && cpu_avx512)
    check_path("avx512", skinny_linear_blocks_avx512);
  else
    std::printf("avx512: skipped (compiled %d, cpu %d)\n", skinny_linear_avx512_compiled(), cpu_avx512);
  // The half decoder against known values: 1, -2, 65504 (max), 2^-14 (min normal), 2^-24 (min
  // subnormal), 3 * 2^-24, -0, inf.
  const uint16_t halves[] = {0x3c00, 0xc000, 0x7bff, 0x0400, 0x0001, 0x0003, 0x8000, 0x7c00};
  const float want[] = {1.0f, -2.0f, 65504.0f, std::ldexp(1.0f, -14), std::ldexp(1.0f, -24), 3 * std::ldexp(1.0f, -24),
                        -0.0f, INFINITY};
  for (int i = 0; i < 8; ++i) {
    const F16 h{halves[i]};
    CHECK(load_weight(&h) == want[i] && std::signbit(load_weight(&h)) == std::signbit(want[i]));
  }
  // K = 0: the sums are empty (y = bias, or 0).
  const std::vector<float> none;
  const float bias[2] = {1.5f, -2.0f};
  CHECK(run(skinny_linear_blocks_native, none, none, bias, 3, 2, 0, 1) ==
        std::vector<float>({1.5f, -2.0f, 1.5f, -2.0f, 1.5f, -2.0f}));
  TEST_MAIN_END();
}
