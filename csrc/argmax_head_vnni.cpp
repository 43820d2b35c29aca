// The AVX512-VNNI build of kernels/argmax_head.h's groups: vpdpbusd multiplies the head's bytes (q XOR 0x80,
// unsigned) by a broadcast group of 4 of h's int8 values, 64 multiply-adds an instruction, the integer sum of a
// block exact in each 32-bit lane; then the same float32 operations as argmax_group_row, lane by lane.
// This file alone is compiled for AVX512-VNNI (GCC's target pragma); csrc/ops.cpp calls in here only after
// checking the running CPU.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#pragma GCC target("avx512f,avx512bw,avx512vnni")
#define RADAR_ARGMAX_VNNI 1
#include <immintrin.h>
#endif

#include "kernels/argmax_head.h"

namespace radar_ext {
namespace kernels {

#if defined(RADAR_ARGMAX_VNNI)

bool argmax_vnni_compiled() { return true; }

namespace {

// Rows [r0, r0 + MR) of group g.
template <int MR>
inline void group_rows(const ArgmaxHead& w, const ArgmaxRows& x, int64_t g, int64_t r0, float* hi, int64_t hi_stride,
                       float* lo) {
  const int64_t nb = w.K / 32;
  __m512 acc[MR], bnd[MR];
  for (int i = 0; i < MR; ++i) acc[i] = bnd[i] = _mm512_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* qb = w.q + (g * nb + b) * 512;
    __m512i q[8];
    for (int t = 0; t < 8; ++t) q[t] = _mm512_loadu_si512(qb + 64 * t);
    const __m512 d = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w.d + (g * nb + b) * 16)));
    const __m512 a = _mm512_loadu_ps(w.a + (g * nb + b) * 16);
    __m512i S[MR];
    for (int i = 0; i < MR; ++i) S[i] = _mm512_set1_epi32(x.t128[(r0 + i) * nb + b]);
    for (int t = 0; t < 8; ++t)  // rows inner: MR independent chains of vpdpbusd
      for (int i = 0; i < MR; ++i) {
        int32_t four;
        memcpy(&four, x.hq + (r0 + i) * w.K + 32 * b + 4 * t, 4);
        S[i] = _mm512_dpbusd_epi32(S[i], q[t], _mm512_set1_epi32(four));
      }
    for (int i = 0; i < MR; ++i) {
      const int64_t r = r0 + i;
      const __m512 ds = _mm512_mul_ps(d, _mm512_set1_ps(x.s[r * nb + b]));
      acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(S[i]), ds, acc[i]);
      bnd[i] = _mm512_fmadd_ps(a, _mm512_set1_ps(x.c[r * nb + b]), bnd[i]);
    }
  }
  for (int i = 0; i < MR; ++i) {
    const int64_t r = r0 + i;
    _mm512_storeu_ps(hi + r * hi_stride + g * kArgmaxGroup, _mm512_add_ps(acc[i], bnd[i]));
    float* l = lo + r * kArgmaxGroup;
    _mm512_storeu_ps(l, _mm512_max_ps(_mm512_loadu_ps(l), _mm512_sub_ps(acc[i], bnd[i])));
  }
}

}  // namespace

void argmax_groups_vnni(const ArgmaxHead& w, const ArgmaxRows& x, int64_t R, int64_t g0, int64_t g1, float* hi,
                        int64_t hi_stride, float* lo) {
  for (int64_t g = g0; g < g1; ++g) {
    if (g + 4 < g1) _mm_prefetch(reinterpret_cast<const char*>(w.q + (g + 4) * (w.K / 32) * 512), _MM_HINT_T0);
    int64_t r = 0;
    for (; r + 4 <= R; r += 4) group_rows<4>(w, x, g, r, hi, hi_stride, lo);
    switch (R - r) {
      case 3: group_rows<3>(w, x, g, r, hi, hi_stride, lo); break;
      case 2: group_rows<2>(w, x, g, r, hi, hi_stride, lo); break;
      case 1: group_rows<1>(w, x, g, r, hi, hi_stride, lo); break;
      default: break;
    }
  }
}

#else

bool argmax_vnni_compiled() { return false; }

void argmax_groups_vnni(const ArgmaxHead& w, const ArgmaxRows& x, int64_t R, int64_t g0, int64_t g1, float* hi,
                        int64_t hi_stride, float* lo) {
  ArgmaxHead scalar = w;
  scalar.vnni = false;
  argmax_groups(scalar, x, R, g0, g1, hi, hi_stride, lo);
}

#endif

}  // namespace kernels
}  // namespace radar_ext
