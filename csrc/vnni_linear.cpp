// The AVX512-VNNI build of the integer Q4_1 products (kernels/vnni_linear.h), torch-free. This file alone is
// compiled for AVX512 F / BW / DQ / VNNI and F16C (the target pragma below, GCC on x86-64); the callers enter it
// only where vnni_linear_supported().
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vnni,f16c")
#define RADAR_VNNI_LINEAR 1
#endif

#include "kernels/vnni_linear.h"

#include "kernels/argmax_head.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <atomic>
#include <type_traits>
#include <vector>

#if defined(RADAR_VNNI_LINEAR)
#include <immintrin.h>
#endif

namespace radar_ext {
namespace kernels {

#if defined(RADAR_VNNI_LINEAR)
// GCC 12 reports the _mm512_undefined_ps() inside its own conversion and reduction intrinsics as uninitialized.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
namespace {

bool detect() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("f16c");
}

bool env_enabled() {
  const char* e = getenv("RADAR_EXT_VNNI_LINEAR");
  return !(e && (strcmp(e, "0") == 0 || strcmp(e, "off") == 0 || strcmp(e, "false") == 0));
}

const bool g_supported = detect();
std::atomic<bool> g_enabled{env_enabled()};

// One thread's split of x (kernels/vnni_linear.h): per row m and block b, 96 bytes of digits (a[32], b[32],
// c[32], input order) at limbs[(m * nb + b) * 96], the scale 2^(e - 16) and the block's float32 sum X.
struct XSplit {
  std::vector<int8_t> limbs;
  std::vector<float> scale, sum;
  XSplitOf of;
};
thread_local XSplit tls;

// 2^n as a float (ldexpf(1, n)), from its bits where that is a normal number.
inline float pow2f(int n) {
  if (n < -126 || n > 127) return ldexpf(1.0f, n);
  const uint32_t bits = static_cast<uint32_t>(n + 127) << 23;
  float f;
  memcpy(&f, &bits, sizeof f);
  return f;
}

// The block's exponent: the smallest e with max |x| = mx <= 126 * 2^e (0 for an all-zero block, or mx non-finite or
// above 3e38: non-finite x are the caller's business (llama_forward checks its outputs); they give some e and
// garbage, never a crash). A normal mx = f 2^k, f in [1, 2), from its bits: 126 = 1.96875 * 2^6, so e = k - 6
// unless f > 1.96875 (mantissa bits above 0x7C0000), then k - 5; a subnormal mx by search.
inline int block_exponent(float mx) {
  if (!(mx > 0.0f) || mx > 3.0e38f) return 0;
  uint32_t bits;
  memcpy(&bits, &mx, sizeof bits);
  const int k = static_cast<int>(bits >> 23) - 127;
  if (k > -127) return (bits & 0x7FFFFFu) > 0x7C0000u ? k - 5 : k - 6;
  int e;
  frexpf(mx / 126.0f, &e);  // mx / 126 in [2^(e-1), 2^e)
  while (e > -149 && ldexpf(126.0f, e - 1) >= mx) --e;
  while (ldexpf(126.0f, e) < mx) ++e;
  return e;
}

void split_x(const SkinnyLinearParams& p, XSplit& s) {
  const int64_t M = p.M, K = p.K, nb = K / 32;
  s.limbs.resize(static_cast<size_t>(M * nb * 96));
  s.scale.resize(static_cast<size_t>(M * nb));
  s.sum.resize(static_cast<size_t>(M * nb));
  const __m512i c128 = _mm512_set1_epi32(128), m255 = _mm512_set1_epi32(255);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t b = 0; b < nb; ++b) {
      const float* xb = p.x + m * K + 32 * b;
      const __m512 x0 = _mm512_loadu_ps(xb), x1 = _mm512_loadu_ps(xb + 16);
      const float mx = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(x0), _mm512_abs_ps(x1)));
      s.sum[m * nb + b] = _mm512_reduce_add_ps(_mm512_add_ps(x0, x1));
      const int e = block_exponent(mx);
      s.scale[m * nb + b] = pow2f(e - 16);
      // x * 2^(16 - e) in two exact steps (2^(16 - e) alone may overflow a float for a block of tiny x)
      const int half = (16 - e) / 2;
      const __m512 up1 = _mm512_set1_ps(pow2f(16 - e - half)), up2 = _mm512_set1_ps(pow2f(half));
      int8_t* L = s.limbs.data() + (m * nb + b) * 96;
      for (int h = 0; h < 2; ++h) {
        const __m512i T = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_mul_ps(h ? x1 : x0, up1), up2));  // nearest even
        const __m512i c = _mm512_sub_epi32(_mm512_and_si512(_mm512_add_epi32(T, c128), m255), c128);
        const __m512i T1 = _mm512_srai_epi32(_mm512_sub_epi32(T, c), 8);
        const __m512i bb = _mm512_sub_epi32(_mm512_and_si512(_mm512_add_epi32(T1, c128), m255), c128);
        const __m512i a = _mm512_srai_epi32(_mm512_sub_epi32(T1, bb), 8);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(L + 16 * h), _mm512_cvtepi32_epi8(a));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(L + 32 + 16 * h), _mm512_cvtepi32_epi8(bb));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(L + 64 + 16 * h), _mm512_cvtepi32_epi8(c));
      }
    }
  x_split_set(s.of, p);
}

// Block b of R consecutive rows (r: the first row's index row * nb + b): acc[j] += d * scale * S + m * X for
// row j, S its exact sum of digits x nibbles (the three digits' int32 sums, joined in one float32 rounding).
template <int R>
inline void row_block(const XSplit& s, int64_t r, int64_t nb, const __m512i (&w)[8], __m512 d, __m512 mn, __m512* acc) {
  const __m512 k256 = _mm512_set1_ps(256.0f), k65536 = _mm512_set1_ps(65536.0f);
  __m512i ia[R], ib[R], ic[R];
  const int8_t* L[R];
  for (int j = 0; j < R; ++j) {
    ia[j] = ib[j] = ic[j] = _mm512_setzero_si512();
    L[j] = s.limbs.data() + (r + j * nb) * 96;
  }
  for (int v = 0; v < 8; ++v)
    for (int j = 0; j < R; ++j) {
      int32_t qa, qb, qc;
      memcpy(&qa, L[j] + 4 * v, 4);
      memcpy(&qb, L[j] + 32 + 4 * v, 4);
      memcpy(&qc, L[j] + 64 + 4 * v, 4);
      ia[j] = _mm512_dpbusd_epi32(ia[j], w[v], _mm512_set1_epi32(qa));
      ib[j] = _mm512_dpbusd_epi32(ib[j], w[v], _mm512_set1_epi32(qb));
      ic[j] = _mm512_dpbusd_epi32(ic[j], w[v], _mm512_set1_epi32(qc));
    }
  for (int j = 0; j < R; ++j) {
    const __m512 low = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ib[j]), k256, _mm512_cvtepi32_ps(ic[j]));  // exact
    const __m512 S = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ia[j]), k65536, low);
    acc[j] = _mm512_fmadd_ps(_mm512_mul_ps(d, _mm512_set1_ps(s.scale[r + j * nb])), S, acc[j]);
    acc[j] = _mm512_fmadd_ps(mn, _mm512_set1_ps(s.sum[r + j * nb]), acc[j]);
  }
}

// Rows [m0, m0 + MR) of group g.
template <int MR>
inline void group_tile(const SkinnyLinearParams& p, const XSplit& s, int64_t g, int64_t m0) {
  const int64_t nb = p.K / 32;
  const uint8_t* units = p.wq + g * nb * 256;
  const uint16_t* wd = reinterpret_cast<const uint16_t*>(p.wd) + g * nb * 16;
  const uint16_t* wm = reinterpret_cast<const uint16_t*>(p.wm) + g * nb * 16;
  __m512 acc[MR];
  for (int i = 0; i < MR; ++i) acc[i] = _mm512_setzero_ps();
  const __m512i lo4 = _mm512_set1_epi8(15);
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* u = units + b * 256;
    if (b + 2 < nb) _mm_prefetch(reinterpret_cast<const char*>(u + 512), _MM_HINT_T0),
                    _mm_prefetch(reinterpret_cast<const char*>(u + 576), _MM_HINT_T0),
                    _mm_prefetch(reinterpret_cast<const char*>(u + 640), _MM_HINT_T0),
                    _mm_prefetch(reinterpret_cast<const char*>(u + 704), _MM_HINT_T0);
    __m512i w[8];
    for (int v = 0; v < 4; ++v) {
      const __m512i z = _mm512_loadu_si512(u + 64 * v);
      w[v] = _mm512_and_si512(z, lo4);
      w[v + 4] = _mm512_and_si512(_mm512_srli_epi16(z, 4), lo4);
    }
    const __m512 d = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(wd + 16 * b)));
    const __m512 mn = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(wm + 16 * b)));
    // Two rows at a time: six independent vpdpbusd chains in flight instead of three.
#pragma GCC unroll 8
    for (int i = 0; i < MR; i += 2) {
      if (i + 1 < MR)
        row_block<2>(s, (m0 + i) * nb + b, nb, w, d, mn, acc + i);
      else
        row_block<1>(s, (m0 + i) * nb + b, nb, w, d, mn, acc + i);
    }
  }
  const __m512 bias = p.bias ? _mm512_loadu_ps(p.bias + 16 * g) : _mm512_setzero_ps();
  for (int i = 0; i < MR; ++i) _mm512_storeu_ps(p.y + (m0 + i) * p.N + 16 * g, _mm512_add_ps(acc[i], bias));
}

// The M rows of x in ceil(M / 8) tiles of near-equal size (M = 11: 6 + 5), each one pass over a group's
// weights: tile(std::integral_constant<int, rows>, m0). (Tiles of 8, 4, 2 and 1 took up to three passes at
// M = 7; the timings could not tell the two apart.)
template <int R, typename Tile>
inline void row_tile_of(int rows, int64_t m0, Tile& tile) {
  if constexpr (R > 1) {
    if (rows < R) return row_tile_of<R - 1>(rows, m0, tile);
  }
  tile(std::integral_constant<int, R>(), m0);
}

template <typename Tile>
inline void each_row_tile(int64_t M, Tile&& tile) {
  const int64_t tiles = (M + 7) / 8, base = M / std::max<int64_t>(tiles, 1), longer = M - base * tiles;
  int64_t m0 = 0;
  for (int64_t t = 0; t < tiles; ++t) {
    const int rows = static_cast<int>(base + (t < longer ? 1 : 0));
    row_tile_of<8>(rows, m0, tile);
    m0 += rows;
  }
}

// ---- the draft-grade products: Q8_0 weights and x rounded to one int8 digit per block (not exact) ----
// x's rows rounded as the greedy head rounds its rows (argmax_quantize_row): digits [M, K], per row and block the
// scale max |x| / 127 and -128 times the digits' sum (the correction of the weights' XOR 0x80).
struct XDigit {
  std::vector<int8_t> digits;  // [M, K]
  std::vector<float> scale;    // [M, nb]
  std::vector<int32_t> t128;   // [M, nb]
  XSplitOf of;
};
thread_local XDigit tls_digit;

void digit_x(const SkinnyLinearParams& p, XDigit& s) {
  const int64_t M = p.M, K = p.K, nb = K / 32;
  s.digits.resize(static_cast<size_t>(M * K));
  s.scale.resize(static_cast<size_t>(M * nb));
  s.t128.resize(static_cast<size_t>(M * nb));
  for (int64_t m = 0; m < M; ++m)
    if (!argmax_quantize_row(p.x + m * K, K, s.digits.data() + m * K, s.scale.data() + m * nb,
                             s.t128.data() + m * nb, nullptr))
      for (int64_t b = 0; b < nb; ++b) s.scale[m * nb + b] = 0.0f, s.t128[m * nb + b] = 0;  // a non-finite row: 0
  x_split_set(s.of, p);
}

// Rows [m0, m0 + MR) of group g (units of 512 bytes: 8 vectors of 16 rows x 4 inputs, q XOR 0x80).
template <int MR>
inline void q8_group_tile(const SkinnyLinearParams& p, const XDigit& s, int64_t g, int64_t m0) {
  const int64_t nb = p.K / 32;
  const uint8_t* units = p.wq + g * nb * 512;
  const uint16_t* wd = reinterpret_cast<const uint16_t*>(p.wd) + g * nb * 16;
  __m512 acc[MR];
  for (int i = 0; i < MR; ++i) acc[i] = _mm512_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* u = units + b * 512;
    if (b + 1 < nb)
      for (int v = 0; v < 8; ++v) _mm_prefetch(reinterpret_cast<const char*>(u + 512 + 64 * v), _MM_HINT_T0);
    __m512i w[8];
    for (int v = 0; v < 8; ++v) w[v] = _mm512_loadu_si512(u + 64 * v);
    const __m512 d = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(wd + 16 * b)));
    for (int i = 0; i < MR; ++i) {
      const int64_t r = (m0 + i) * nb + b;
      int32_t four[8];
      memcpy(four, s.digits.data() + (m0 + i) * p.K + 32 * b, 32);
      __m512i ia = _mm512_set1_epi32(s.t128[r]);
      for (int v = 0; v < 8; ++v) ia = _mm512_dpbusd_epi32(ia, w[v], _mm512_set1_epi32(four[v]));
      acc[i] = _mm512_fmadd_ps(_mm512_mul_ps(d, _mm512_set1_ps(s.scale[r])), _mm512_cvtepi32_ps(ia), acc[i]);
    }
  }
  const __m512 bias = p.bias ? _mm512_loadu_ps(p.bias + 16 * g) : _mm512_setzero_ps();
  for (int i = 0; i < MR; ++i) _mm512_storeu_ps(p.y + (m0 + i) * p.N + 16 * g, _mm512_add_ps(acc[i], bias));
}

}  // namespace

void vnni_q8_draft_rows(const SkinnyLinearParams& p, int64_t n0, int64_t n1) {
  if (p.M <= 0 || n1 <= n0) return;
  XDigit& s = tls_digit;
  if (x_split_stale(s.of, p)) digit_x(p, s);
  for (int64_t g = n0 / 16; g < n1 / 16; ++g)
    each_row_tile(p.M, [&](auto rows, int64_t m0) { q8_group_tile<decltype(rows)::value>(p, s, g, m0); });
}

bool vnni_linear_supported() { return g_supported; }
bool vnni_linear_usable() { return g_supported && g_enabled.load(std::memory_order_relaxed); }
bool vnni_linear_set_enabled(bool on) { return g_enabled.exchange(on); }

void vnni_linear_packed_rows(const SkinnyLinearParams& p, int64_t n0, int64_t n1) {
  if (p.M <= 0 || n1 <= n0) return;
  XSplit& s = tls;
  if (x_split_stale(s.of, p)) split_x(p, s);
  for (int64_t g = n0 / 16; g < n1 / 16; ++g)
    each_row_tile(p.M, [&](auto rows, int64_t m0) { group_tile<decltype(rows)::value>(p, s, g, m0); });
}

#pragma GCC diagnostic pop
#else  // no VNNI build

bool vnni_linear_supported() { return false; }
bool vnni_linear_usable() { return false; }
bool vnni_linear_set_enabled(bool) { return false; }
void vnni_linear_packed_rows(const SkinnyLinearParams&, int64_t, int64_t) {}
void vnni_q8_draft_rows(const SkinnyLinearParams&, int64_t, int64_t) {}

#endif

}  // namespace kernels
}  // namespace radar_ext
