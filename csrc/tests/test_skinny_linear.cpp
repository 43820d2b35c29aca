// skinny_linear blocks (plain path, and the AVX-512 path when this CPU has it) against a float64
// dot product, over odd sizes; every output must also be bitwise independent of M, of the tile it
// falls in and of how the blocks are split (the property that makes the op thread-count invariant).
#include <cmath>
#include <cstring>
#include <cstdio>
#include <vector>

#include "check.h"
#include "kernels/amx_linear.h"
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

// Block-quantized weights (kernels/skinny_linear.h): bytes, scales and minima (empty for Q8_0).
struct Quant {
  std::vector<uint8_t> q;
  std::vector<float> d, m;
};

// w16: run on these 16-bit weights (bfloat16, or float16 if f16) instead of w; wq: on these blocks.
static std::vector<float> run(BlocksFn fn, const std::vector<float>& x, const std::vector<float>& w,
                              const float* bias, int64_t M, int64_t N, int64_t K, int64_t split,
                              const std::vector<uint16_t>* w16 = nullptr, bool f16 = false,
                              const Quant* wq = nullptr) {
  std::vector<float> y(M * N, -7.0f);
  SkinnyLinearParams p{x.data(), w.data(), bias, y.data(), M, N, K};
  if (w16) {
    p.w = nullptr;
    p.w16 = w16->data();
    p.w16_is_f16 = f16;
  }
  if (wq) {
    p.w = nullptr;
    p.wq = wq->q.data();
    p.wd = wq->d.data();
    p.wm = wq->m.empty() ? nullptr : wq->m.data();
  }
  const int64_t nb = skinny_linear_blocks(p);
  for (int64_t b = 0; b < nb; b += split) fn(p, b, b + split < nb ? b + split : nb);
  return y;
}

// Random Q4_1 and Q8_0 blocks, dequantized as GGUF does (float32 d * q, then + m for Q4_1; the
// product is exact): the quantized weights must give the float32 path's bits on those values.
static void check_quant(BlocksFn fn, const std::vector<float>& x, const float* b, int64_t M, int64_t N, int64_t K,
                        uint32_t& s) {
  const int64_t nb = K / 32;
  Quant q4{std::vector<uint8_t>(N * K / 2), std::vector<float>(N * nb), std::vector<float>(N * nb)};
  Quant q8{std::vector<uint8_t>(N * K), std::vector<float>(N * nb), {}};
  std::vector<float> w4(N * K), w8(N * K);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t blk = 0; blk < nb; ++blk) {
      // scales with 11 significant bits (as float16 has), minima anywhere in [-2, 2)
      const float d = std::ldexp(std::round(std::fabs(value(s)) * 512.0f) + 1024.0f, -16);
      const float mn = value(s);
      q4.d[n * nb + blk] = d;
      q4.m[n * nb + blk] = mn;
      q8.d[n * nb + blk] = d;
      for (int j = 0; j < 32; ++j) {
        s = s * 1664525u + 1013904223u;
        const uint32_t v4 = (s >> 20) & 15u;
        const int32_t v8 = static_cast<int32_t>((s >> 9) % 255u) - 127;
        const int64_t k = blk * 32 + j;
        uint8_t& byte = q4.q[n * (K / 2) + blk * 16 + (j & 15)];
        byte = static_cast<uint8_t>(j < 16 ? (byte & 0xf0u) | v4 : (byte & 0x0fu) | (v4 << 4));
        q8.q[n * K + k] = static_cast<uint8_t>(static_cast<int8_t>(v8));
        const volatile float prod4 = d * static_cast<float>(v4);  // volatile: no fused multiply-add here
        w4[n * K + k] = prod4 + mn;
        w8[n * K + k] = d * static_cast<float>(v8);
      }
    }
  const std::vector<float> y4 = run(fn, x, w4, b, M, N, K, 3), y8 = run(fn, x, w8, b, M, N, K, 3);
  if (fn == skinny_linear_blocks_avx512 && amx_linear_usable() && M >= kAmxMinRows) {
    // the AMX tile unit (kernels/amx_linear.h): exact parts, float32 sums in another order. Close to the
    // float32 path (the bound of check_path), and the same bits whatever the split.
    const std::vector<float> a4 = run(fn, x, w4, b, M, N, K, 1 << 20, nullptr, false, &q4);
    const std::vector<float> a8 = run(fn, x, w8, b, M, N, K, 1 << 20, nullptr, false, &q8);
    CHECK(run(fn, x, w4, b, M, N, K, 1, nullptr, false, &q4) == a4);
    CHECK(run(fn, x, w8, b, M, N, K, 1, nullptr, false, &q8) == a8);
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n) {
        double mag4 = b ? std::fabs(b[n]) : 0.0, mag8 = mag4;
        for (int64_t k = 0; k < K; ++k) {
          mag4 += std::fabs(static_cast<double>(x[m * K + k]) * w4[n * K + k]);
          mag8 += std::fabs(static_cast<double>(x[m * K + k]) * w8[n * K + k]);
        }
        CHECK(std::fabs(static_cast<double>(a4[m * N + n]) - y4[m * N + n]) <= 2e-6 * mag4 * (K + 1) + 1e-30);
        CHECK(std::fabs(static_cast<double>(a8[m * N + n]) - y8[m * N + n]) <= 2e-6 * mag8 * (K + 1) + 1e-30);
      }
    return;
  }
  CHECK(run(fn, x, w4, b, M, N, K, 1 << 20, nullptr, false, &q4) == y4);
  CHECK(run(fn, x, w4, b, M, N, K, 1, nullptr, false, &q4) == y4);
  CHECK(run(fn, x, w8, b, M, N, K, 1 << 20, nullptr, false, &q8) == y8);
  CHECK(run(fn, x, w8, b, M, N, K, 1, nullptr, false, &q8) == y8);
}

static void check_path(const char* name, BlocksFn fn) {
  const int64_t Ms[] = {1, 2, 3, 5, 7, 16, 33};
  const int64_t NKs[][2] = {{1, 1}, {3, 5}, {4, 16}, {9, 17}, {13, 31}, {6, 100}, {37, 576}, {70, 48}, {5, 64}, {23, 96}};
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
        if (K % 32 == 0) check_quant(fn, x, b, M, N, K, s);
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
  if (skinny_linear_avx512_compiled() && cpu_avx512) {
    const bool amx = amx_linear_set_enabled(false);  // the AVX-512 tiles alone: the float32 path's bits
    check_path("avx512", skinny_linear_blocks_avx512);
    amx_linear_set_enabled(amx);
    if (amx_linear_usable())
      check_path("avx512 + amx", skinny_linear_blocks_avx512);
    else
      std::printf("avx512 + amx: skipped (no AMX on this CPU, or RADAR_EXT_AMX=0)\n");
  } else
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
