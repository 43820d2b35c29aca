// skinny_linear: y[M, N] = x[M, K] @ w[N, K]^T (+ bias[N]) for a few rows M (1..64), float32 on the
// CPU. This is the target forward of tree verification: M = V+1 tree tokens against weights of
// thousands of rows, where a general sgemm is tuned for large M and wastes most of its time.
// Layout: x [M, K], w [N, K], y [M, N], row-major and contiguous; bias [N] or null. w is float32, or
// 16-bit (w16: bfloat16 or float16 bits): the weights are widened to float32 as they are loaded
// (exact), and the sums are the float32 path's, so 16-bit weights give the same bits as their float32
// values while only half the bytes stream from memory (a draft head saved in fp16 or bf16 holds
// exactly such weights).
// w may also be block-quantized (wq set, K % 32 == 0; GGUF's Q4_1 and Q8_0 block layouts with the
// scales already widened to float32): per row n and block b of 32 consecutive k,
//   Q4_1 (wm set): wq [N, K/2] bytes, byte 16b + j holds element 32b + j in its low nibble and
//        32b + 16 + j in its high one; w = wd[n, b] * q + wm[n, b] (q in 0..15),
//   Q8_0 (wm null): wq [N, K] int8; w = wd[n, b] * q.
// The scales wd / wm are float32, or float16 bits (scales_f16: GGUF keeps them so; 4 instead of 8
// bytes per Q4_1 block of 16 bytes, so 1/5 less to stream) widened exactly as they are read.
// Both are decoded to float32 as they are loaded, with one rounding (d * q is exact in float32, so a
// fused d * q + m rounds like the separate product and add of GGUF's dequantization): a model loaded
// from such a file and dequantized to float32 gives the float32 path's bits from 1/6 (Q4_1) or 1/4
// (Q8_0) of the bytes.
// Blocking: the N rows of w are cut into blocks of kSkinnyNR rows. One block reads its rows of w
// once and computes them against every row of x in register tiles of kSkinnyNR x kSkinnyMR dot
// products, so w (the large operand) streams from memory exactly once per call while x (M*K floats)
// stays in cache. Parallel split: blocks of w rows (the caller hands out ranges of blocks).
// Numerics: float32 accumulation, no fast-math. Every y[m, n] is one dot product summed in an order
// fixed by K alone (lane k % L, then a fixed sum of the L lanes, then + bias), so it does not depend
// on M, on the tile slot it falls in or on the thread split. The AVX-512 path (L = 16, fused
// multiply-add) exists when the including translation unit targets AVX-512 (RADAR_SKINNY_AVX512,
// see below), the plain path (L = 8, separate multiply and add) always; the two round differently.
// Host only: on GPUs the op is a cuBLAS matrix product (csrc/cuda/dispatch.cpp).
// All functions have internal linkage (static): this header is compiled both for the baseline ISA
// and, in csrc/skinny_linear_avx512.cpp, for AVX-512; shared inline definitions would let the linker
// keep the AVX-512 copy for everyone (an ODR violation that crashes CPUs without AVX-512).
#pragma once

#include <stdint.h>

#include <vector>

// RADAR_SKINNY_AVX512: this translation unit is compiled for AVX-512, by -mavx512f (__AVX512F__) or
// by `#pragma GCC target("avx512f")` in kernels/avx512_target.h, which defines it too
// (GCC's C++ front end does not define __AVX512F__ for a target pragma).
#if defined(__AVX512F__) && !defined(RADAR_SKINNY_AVX512)
#define RADAR_SKINNY_AVX512 1
#endif
#if defined(RADAR_SKINNY_AVX512)
#include <immintrin.h>
#endif

namespace radar_ext {
namespace kernels {

struct SkinnyLinearParams {
  const float* x;     // [M, K]
  const float* w;     // [N, K] float32, or nullptr when w16 is set
  const float* bias;  // [N] or nullptr
  float* y;           // [M, N]
  int64_t M, N, K;
  const uint16_t* w16 = nullptr;  // [N, K] 16-bit weights instead of w: bfloat16, or float16 if w16_is_f16
  bool w16_is_f16 = false;
  const uint8_t* wq = nullptr;    // block-quantized weights instead of w (see above): Q4_1 [N, K/2] or Q8_0 [N, K]
  const float* wd = nullptr;      // [N, K/32] block scales
  const float* wm = nullptr;      // [N, K/32] block minima (Q4_1), or nullptr (Q8_0)
  bool scales_f16 = false;        // wd / wm hold float16 bits ([N, K/32] uint16 each), not float32
  // Nonzero: calls with the same x_key, x, M and K see the same x (the AMX path reuses its split of x).
  uint64_t x_key = 0;
  // wq / wd / wm in the AMX layout (kernels/amx_linear.h, amx_pack; N % 16 == 0, float16 scales): only
  // the AMX path reads it.
  bool amx_packed = false;
  // wq / wd / wm in the VNNI layout (kernels/vnni_linear.h, vnni_pack; Q4_1, N % 16 == 0, float16 scales): only
  // the VNNI path reads it.
  bool vnni_packed = false;
  // Q8_0 weights in the greedy head's group layout, x rounded to int8 (kernels/vnni_linear.h, vnni_q8_draft_rows):
  // draft-grade, not exact; only a draft head's weights come so.
  bool q8_draft = false;
};

// Which x a thread's split of x belongs to (SkinnyLinearParams::x_key; the AMX and VNNI paths keep one per thread
// beside their split): x_split_stale is true until x_split_set(p), then for any call with another key (or none), x,
// M or K. Free static functions, not members: this header is compiled for several ISAs (see the top of the file).
struct XSplitOf {
  uint64_t key = 0;
  const float* x = nullptr;
  int64_t M = 0, K = 0;
};
static inline bool x_split_stale(const XSplitOf& s, const SkinnyLinearParams& p) {
  return !(p.x_key != 0 && s.key == p.x_key && s.x == p.x && s.M == p.M && s.K == p.K);
}
static inline void x_split_set(XSplitOf& s, const SkinnyLinearParams& p) {
  s.key = p.x_key, s.x = p.x, s.M = p.M, s.K = p.K;
}

// The two 16-bit weight formats, as distinct types for the templates below.
struct Bf16 { uint16_t bits; };
struct F16 { uint16_t bits; };

static inline float bits_to_float(uint32_t u) {
  union { uint32_t u; float f; } v;
  v.u = u;
  return v.f;
}
// bfloat16 -> float32: the top half of the float (exact).
static inline float load_weight(const Bf16* w) { return bits_to_float(static_cast<uint32_t>(w->bits) << 16); }
// IEEE half -> float32 (exact: normals rebias the exponent, subnormals are man * 2^-24, inf/nan kept).
static inline float load_weight(const F16* w) {
  const uint32_t h = w->bits, sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
  if (exp == 0x1fu) return bits_to_float(sign | 0x7f800000u | (man << 13));
  if (exp != 0) return bits_to_float(sign | ((exp + 112u) << 23) | (man << 13));
  const float f = static_cast<float>(man) * (1.0f / 16777216.0f);
  return sign ? -f : f;
}
static inline float load_weight(const float* w) { return *w; }

// Weight formats as row sources for the tiles: row(n) is a cheap handle of row n, weight_at(row, k)
// its k-th weight as float32 (load16 / prefetch_row below are the AVX-512 versions).
template <typename T>
struct DenseRows {
  using Row = const T*;
  const T* w;
  int64_t K;
  Row row(int64_t n) const { return w + n * K; }
};
template <typename T>
static inline float weight_at(const T* r, int64_t k) { return load_weight(r + k); }

// Block scales as float32 or float16 (S = float or F16), widened exactly.
static inline float scale_at(const float* s, int64_t b) { return s[b]; }
static inline float scale_at(const F16* s, int64_t b) { return load_weight(s + b); }

template <typename S> struct Q41Row { const uint8_t* q; const S* d; const S* m; };
template <typename S> struct Q41Rows {
  using Row = Q41Row<S>;
  const uint8_t* q;
  const S* d;
  const S* m;
  int64_t K;
  Row row(int64_t n) const { return {q + n * (K / 2), d + n * (K / 32), m + n * (K / 32)}; }
};
template <typename S>
static inline float weight_at(const Q41Row<S>& r, int64_t k) {
  const int64_t b = k >> 5, j = k & 31;
  const uint8_t byte = r.q[16 * b + (j & 15)];
  return scale_at(r.d, b) * static_cast<float>(j < 16 ? byte & 15 : byte >> 4) + scale_at(r.m, b);
}

template <typename S> struct Q80Row { const int8_t* q; const S* d; };
template <typename S> struct Q80Rows {
  using Row = Q80Row<S>;
  const int8_t* q;
  const S* d;
  int64_t K;
  Row row(int64_t n) const { return {q + n * K, d + n * (K / 32)}; }
};
template <typename S>
static inline float weight_at(const Q80Row<S>& r, int64_t k) { return scale_at(r.d, k >> 5) * static_cast<float>(r.q[k]); }

template <typename Fmt> struct IsBlockQuant { static constexpr bool value = false; };
template <typename S> struct IsBlockQuant<Q41Rows<S>> { static constexpr bool value = true; };
template <typename S> struct IsBlockQuant<Q80Rows<S>> { static constexpr bool value = true; };

constexpr int64_t kSkinnyNR = 4;  // rows of w per block (and per register tile)
constexpr int64_t kSkinnyMR = 4;  // rows of x per register tile
// The AVX-512 path prefetches w this many blocks ahead into L2 (~37 KB at K = 576). On the 2-core
// AVX-512 Xeon, all linears of one forward of the default target get 1.10 / 1.18 / 1.12 / 1.20x faster
// at M = 3 / 4 / 8 / 16 rows than without the prefetch, same bits (bench/bench_skinny_ab.py, paired in
// one process); a 1-block prefetch into L1 from each block's first tile alone gained about half that.
constexpr int64_t kSkinnyPrefetchBlocks = 4;

// Whether block-quantized products of 5+ rows of x use the AVX-512 tiles of up to 6 rows (skinny_block_wide,
// the default) or 4-row tiles only: the same bits either way, a switch for paired timing
// (radar_ext._C.set_wide_tiles; bench/bench_verify.py's `fused-narrow`). Defined in csrc/skinny_linear_avx512.cpp.
bool skinny_wide_tiles();
bool skinny_set_wide_tiles(bool on);  // returns the previous setting

// Number of w blocks: the parallel work items.
static inline int64_t skinny_linear_blocks(const SkinnyLinearParams& p) {
  return (p.N + kSkinnyNR - 1) / kSkinnyNR;
}

// ---- plain C++ path ---------------------------------------------------------------------------

constexpr int kSkinnyPlainLanes = 8;

// Tile of NR rows of w (from n0) x MR rows of x (from m0). Lane l sums the products at k = l mod 8
// in increasing k; the lanes are then summed pairwise ((0+4) + (2+6)) + ((1+5) + (3+7)).
// (pf_n, pf_rows: rows of a later block of w to prefetch, used by the AVX-512 tile only.)
template <int NR, int MR, typename Fmt, typename PfFmt>
static inline void skinny_tile_plain(const SkinnyLinearParams& p, const Fmt& f, int64_t n0, int64_t m0,
                                     const PfFmt& pf, int64_t pf_n, int64_t pf_rows) {
  (void)pf;
  (void)pf_n;
  (void)pf_rows;
  constexpr int L = kSkinnyPlainLanes;
  const int64_t K = p.K, K_main = K - K % L;
  typename Fmt::Row wr[NR];
  for (int j = 0; j < NR; ++j) wr[j] = f.row(n0 + j);
  float acc[MR][NR][L] = {};
  for (int64_t k = 0; k < K_main; k += L)
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NR; ++j)
        for (int l = 0; l < L; ++l) acc[i][j][l] += p.x[(m0 + i) * K + k + l] * weight_at(wr[j], k + l);
  for (int64_t k = K_main; k < K; ++k)
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NR; ++j) acc[i][j][k - K_main] += p.x[(m0 + i) * K + k] * weight_at(wr[j], k);
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) {
      const float* a = acc[i][j];
      float s = ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]));
      if (p.bias) s += p.bias[n0 + j];
      p.y[(m0 + i) * p.N + n0 + j] = s;
    }
}

// ---- AVX-512 path -----------------------------------------------------------------------------
#if defined(RADAR_SKINNY_AVX512)
// GCC 12 reports the _mm512_undefined_ps() inside its own shuffle intrinsics as uninitialized.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

// Sums the 16 lanes of each of the 16 accumulators v[4 * i + j] at once (a transposing reduction:
// 15 adds and 30 shuffles instead of 16 separate horizontal sums). Lane 4 * j + i of the result is
// the sum of v[4 * i + j]. Every accumulator's lanes are added in the same order whatever its slot,
// ((l0 + l8) + (l4 + l12)) + ((l1 + l9) + (l5 + l13)) + ... with the pairs (0,1) and (2,3) of the
// four partial sums added first: the result of one dot product does not depend on its tile slot.
static inline __m512 skinny_reduce16(const __m512 v[16]) {
  __m512 r[8], s[4], u[2];
  for (int q = 0; q < 8; ++q)  // blocks of 128 bits: [a0 + a2, a1 + a3, b0 + b2, b1 + b3]
    r[q] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * q], v[2 * q + 1], 0x44),
                         _mm512_shuffle_f32x4(v[2 * q], v[2 * q + 1], 0xEE));
  for (int q = 0; q < 4; ++q)  // block k = accumulator 4 * q + k, 4 partial sums each
    s[q] = _mm512_add_ps(_mm512_shuffle_f32x4(r[2 * q], r[2 * q + 1], 0x88),
                         _mm512_shuffle_f32x4(r[2 * q], r[2 * q + 1], 0xDD));
  for (int q = 0; q < 2; ++q)  // within each block: [p0 + p1, p2 + p3] of two accumulators
    u[q] = _mm512_add_ps(_mm512_shuffle_ps(s[2 * q], s[2 * q + 1], 0x88),
                         _mm512_shuffle_ps(s[2 * q], s[2 * q + 1], 0xDD));
  return _mm512_add_ps(_mm512_shuffle_ps(u[0], u[1], 0x88), _mm512_shuffle_ps(u[0], u[1], 0xDD));
}

// Same tile with 16 lanes and fused multiply-add; the K % 16 tail is a masked load (zeros beyond K).
// Prefetch: each k step reads one 64-byte line of each w row, and also asks (into L2) for the same
// line of the pf_rows rows at pf (rows of a block further on, K floats apart), so w streams in from
// memory while the tiles compute out of L1. Without it, at M > 4 the memory sits idle
// during the later tiles of a block and the kernel costs about compute + memory instead of the larger
// of the two. Prefetches never change a result.
static inline __m512 load16(const float* w) { return _mm512_loadu_ps(w); }
static inline __m512 load16(const Bf16* w) {  // 16 bf16 -> float32: zero-extend, shift into the top half
  const __m512i u = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w)));
  return _mm512_castsi512_ps(_mm512_slli_epi32(u, 16));
}
static inline __m512 load16(const F16* w) {  // 16 halves -> float32 (vcvtph2ps, exact)
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w)));
}
// Weights k..k+15 of a row (k % 16 == 0).
template <typename T>
static inline __m512 load16(const T* r, int64_t k) { return load16(r + k); }
static inline __m512 scale16(const float* s, int64_t b) { return _mm512_set1_ps(s[b]); }
static inline __m512 scale16(const F16* s, int64_t b) {  // (vcvtph2ps of a broadcast half: exact)
  return _mm512_cvtph_ps(_mm256_set1_epi16(static_cast<short>(s[b].bits)));
}
template <typename S>
static inline __m512 load16(const Q41Row<S>& r, int64_t k) {  // 16 nibbles -> d * q + m (one rounding)
  const int64_t b = k >> 5;
  __m512i q = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(r.q + 16 * b)));
  if (k & 16) q = _mm512_srli_epi32(q, 4);
  q = _mm512_and_si512(q, _mm512_set1_epi32(15));
  return _mm512_fmadd_ps(scale16(r.d, b), _mm512_cvtepi32_ps(q), scale16(r.m, b));
}
template <typename S>
static inline __m512 load16(const Q80Row<S>& r, int64_t k) {  // 16 int8 -> d * q (exact)
  const __m512i q = _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(r.q + k)));
  return _mm512_mul_ps(scale16(r.d, k >> 5), _mm512_cvtepi32_ps(q));
}
// The first n < 16 weights from k, zeros after.
static inline __m512 load16_tail(const float* r, int64_t k, int64_t n) {
  return _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << n) - 1u), r + k);
}
template <typename Row>
static inline __m512 load16_tail(const Row& r, int64_t k, int64_t n) {  // (a 16-bit masked load needs AVX512BW)
  float part[16] = {};
  for (int64_t i = 0; i < n; ++i) part[i] = weight_at(r, k + i);
  return _mm512_loadu_ps(part);
}
// Ask for the line holding weights k.. of a row (into L2).
template <typename T>
static inline void prefetch_row(const T* r, int64_t k) {
  _mm_prefetch(reinterpret_cast<const char*>(r + k), _MM_HINT_T1);
}
template <typename S>
static inline void prefetch_row(const Q41Row<S>& r, int64_t k) {
  _mm_prefetch(reinterpret_cast<const char*>(r.q + k / 2), _MM_HINT_T1);
  if ((k & 511) == 0) {  // one line of each scale row covers 16 blocks
    _mm_prefetch(reinterpret_cast<const char*>(r.d + k / 32), _MM_HINT_T1);
    _mm_prefetch(reinterpret_cast<const char*>(r.m + k / 32), _MM_HINT_T1);
  }
}
template <typename S>
static inline void prefetch_row(const Q80Row<S>& r, int64_t k) {
  _mm_prefetch(reinterpret_cast<const char*>(r.q + k), _MM_HINT_T1);
  if ((k & 511) == 0) _mm_prefetch(reinterpret_cast<const char*>(r.d + k / 32), _MM_HINT_T1);
}

// What every AVX-512 tile starts with: its x rows (rows past m_valid, a padded tile, repeat the last
// valid x row; their sums are not stored), its NR rows of w and the pf_rows rows it prefetches, into the
// tile's own arrays (locals, so the compiler keeps them in registers).
template <int NR, int MR, typename Fmt, typename PfFmt>
static inline void skinny_tile_rows(const SkinnyLinearParams& p, const Fmt& f, int64_t n0, int64_t m0, const PfFmt& pf,
                                    int64_t pf_n, int64_t pf_rows, int m_valid, const float* (&xr)[MR],
                                    typename Fmt::Row (&wr)[NR], typename PfFmt::Row (&pr)[kSkinnyNR]) {
  for (int i = 0; i < MR; ++i) xr[i] = p.x + (m0 + (i < m_valid ? i : m_valid - 1)) * p.K;
  for (int j = 0; j < NR; ++j) wr[j] = f.row(n0 + j);
  for (int64_t j = 0; j < pf_rows; ++j) pr[j] = pf.row(pf_n + j);
}

// What every AVX-512 tile ends with: its MR x NR accumulators reduced 16 at a time (slot i * NR + j; slot s
// goes to reduction s / 16, and skinny_reduce16 puts slot q's sum in lane 4 * (q % 4) + q / 4, in the same lane
// order for every slot, so the slot does not change a result), + bias, stored for the m_valid valid rows.
template <int NR, int MR>
static inline void skinny_tile_store(const SkinnyLinearParams& p, const __m512 (&acc)[MR][NR], int64_t n0, int64_t m0,
                                     int m_valid) {
  constexpr int kSlots = MR * NR, kParts = (kSlots + 15) / 16;
  float sums[kParts * 16];
  for (int part = 0; part < kParts; ++part) {
    __m512 all[16];  // slots outside the tile stay zero and are not stored
    for (int q = 0; q < 16; ++q) {
      const int slot = 16 * part + q;
      all[q] = slot < kSlots ? acc[slot / NR][slot % NR] : _mm512_setzero_ps();
    }
    float lanes[16];
    _mm512_storeu_ps(lanes, skinny_reduce16(all));
    for (int q = 0; q < 16; ++q) sums[16 * part + q] = lanes[4 * (q % 4) + q / 4];
  }
  for (int i = 0; i < m_valid; ++i)
    for (int j = 0; j < NR; ++j) {
      float s = sums[i * NR + j];
      if (p.bias) s += p.bias[n0 + j];
      p.y[(m0 + i) * p.N + n0 + j] = s;
    }
}

template <int NR, int MR, typename Fmt, typename PfFmt>
static inline void skinny_tile_avx512(const SkinnyLinearParams& p, const Fmt& f, int64_t n0, int64_t m0,
                                      const PfFmt& pf, int64_t pf_n, int64_t pf_rows, int m_valid = MR) {
  const int64_t K = p.K, K_main = K - K % 16;
  const float* xr[MR];
  typename Fmt::Row wr[NR];
  typename PfFmt::Row pr[kSkinnyNR];
  skinny_tile_rows<NR, MR>(p, f, n0, m0, pf, pf_n, pf_rows, m_valid, xr, wr, pr);
  __m512 acc[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K_main; k += 16) {
    for (int64_t j = 0; j < pf_rows; ++j) prefetch_row(pr[j], k);
    __m512 wv[NR];
    for (int j = 0; j < NR; ++j) wv[j] = load16(wr[j], k);
    for (int i = 0; i < MR; ++i) {
      const __m512 xv = _mm512_loadu_ps(xr[i] + k);
      for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_fmadd_ps(xv, wv[j], acc[i][j]);
    }
  }
  if (K_main < K) {
    const __mmask16 tail = static_cast<__mmask16>((1u << (K - K_main)) - 1u);
    __m512 wv[NR];
    for (int j = 0; j < NR; ++j) wv[j] = load16_tail(wr[j], K_main, K - K_main);
    for (int i = 0; i < MR; ++i) {
      const __m512 xv = _mm512_maskz_loadu_ps(tail, xr[i] + K_main);
      for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_fmadd_ps(xv, wv[j], acc[i][j]);
    }
  }
  skinny_tile_store<NR, MR>(p, acc, n0, m0, m_valid);
}

// ---- block-quantized tiles (AVX-512): 32 weights (one block) per step ----
// The generic tile above decodes 16 weights per load16 call and widens the block's scales at every
// call (a broadcast and a conversion each, twice per block for Q4_1), so at 1-4 rows it spends more
// vector instructions on decoding than on the products and runs below the memory's speed. These tiles
// take one whole block per step with the same values in the same order, so the same bits:
//   Q4_1: the block's 16 possible weights d * j + m (j = 0..15, one fused multiply-add: exactly the
//         value load16 computes for q = j) form a table; each nibble selects its weight with one
//         permute (vpermps reads only an index's low 4 bits, so the low nibbles need no mask);
//   Q8_0: d * q as load16 computes it.
// The scales are widened 16 blocks at a time into small arrays and broadcast from there.
template <typename S>
static inline void scales16(const S* s, int64_t b0, int64_t nb, float* out) {  // out[i] = s[b0 + i], i < nb <= 16
  for (int64_t i = 0; i < nb; ++i) out[i] = scale_at(s, b0 + i);
}
static inline void scales16(const F16* s, int64_t b0, int64_t nb, float* out) {
  if (nb == 16) {
    _mm512_storeu_ps(out, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + b0))));
    return;
  }
  scales16<F16>(s, b0, nb, out);
}
template <typename S>
static inline void row_scales16(const Q41Row<S>& r, int64_t b0, int64_t nb, float* d, float* m) {
  scales16(r.d, b0, nb, d);
  scales16(r.m, b0, nb, m);
}
template <typename S>
static inline void row_scales16(const Q80Row<S>& r, int64_t b0, int64_t nb, float* d, float*) {
  scales16(r.d, b0, nb, d);
}
// The 32 weights of block b: lo = elements 0..15, hi = 16..31.
template <typename S>
static inline void load_block32(const Q41Row<S>& r, int64_t b, float d, float m, __m512& lo, __m512& hi) {
  const __m512 iota = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512 table = _mm512_fmadd_ps(_mm512_set1_ps(d), iota, _mm512_set1_ps(m));
  const __m512i q = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(r.q + 16 * b)));
  lo = _mm512_permutexvar_ps(q, table);
  hi = _mm512_permutexvar_ps(_mm512_srli_epi32(q, 4), table);
}
template <typename S>
static inline void load_block32(const Q80Row<S>& r, int64_t b, float d, float, __m512& lo, __m512& hi) {
  const __m512 dv = _mm512_set1_ps(d);
  const int8_t* q = r.q + 32 * b;
  lo = _mm512_mul_ps(dv, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q)))));
  hi = _mm512_mul_ps(dv, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q + 16)))));
}

// skinny_tile_avx512 for a block-quantized Fmt (K % 32 == 0): the same sums, bit for bit.
template <int NR, int MR, typename Fmt, typename PfFmt>
static inline void skinny_tile_blocks_avx512(const SkinnyLinearParams& p, const Fmt& f, int64_t n0, int64_t m0,
                                             const PfFmt& pf, int64_t pf_n, int64_t pf_rows, int m_valid = MR) {
  const int64_t nblocks = p.K / 32;
  const float* xr[MR];
  typename Fmt::Row wr[NR];
  typename PfFmt::Row pr[kSkinnyNR];
  skinny_tile_rows<NR, MR>(p, f, n0, m0, pf, pf_n, pf_rows, m_valid, xr, wr, pr);
  __m512 acc[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_setzero_ps();
  alignas(64) float ds[NR][16], ms[NR][16];
  for (int64_t c0 = 0; c0 < nblocks; c0 += 16) {
    const int64_t nb = nblocks - c0 < 16 ? nblocks - c0 : 16;
    for (int j = 0; j < NR; ++j) row_scales16(wr[j], c0, nb, ds[j], ms[j]);
    for (int64_t b = c0; b < c0 + nb; ++b) {
      const int64_t k = 32 * b;
      for (int64_t j = 0; j < pf_rows; ++j) prefetch_row(pr[j], k);  // (one 64-byte line holds 2-4 blocks)
      __m512 lo[NR], hi[NR];
      for (int j = 0; j < NR; ++j) load_block32(wr[j], b, ds[j][b - c0], ms[j][b - c0], lo[j], hi[j]);
      for (int i = 0; i < MR; ++i) {
        const __m512 x0 = _mm512_loadu_ps(xr[i] + k), x1 = _mm512_loadu_ps(xr[i] + k + 16);
        for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_fmadd_ps(x1, hi[j], _mm512_fmadd_ps(x0, lo[j], acc[i][j]));
      }
    }
  }
  skinny_tile_store<NR, MR>(p, acc, n0, m0, m_valid);
}

// The tile for a format: the block tile for Q4_1 / Q8_0, the generic one otherwise.
template <int NR, int MR, typename Fmt, typename PfFmt>
static inline void skinny_tile_any_avx512(const SkinnyLinearParams& p, const Fmt& f, int64_t n0, int64_t m0,
                                          const PfFmt& pf, int64_t pf_n, int64_t pf_rows, int m_valid = MR) {
  if constexpr (IsBlockQuant<Fmt>::value)
    skinny_tile_blocks_avx512<NR, MR>(p, f, n0, m0, pf, pf_n, pf_rows, m_valid);
  else
    skinny_tile_avx512<NR, MR>(p, f, n0, m0, pf, pf_n, pf_rows, m_valid);
}

#pragma GCC diagnostic pop
#define RADAR_SKINNY_TILE skinny_tile_any_avx512
#else
#define RADAR_SKINNY_TILE skinny_tile_plain
#endif

#if defined(RADAR_SKINNY_AVX512)
// Most rows of x one register tile of a block-quantized block takes (kSkinnyNR x 6 = 24 accumulators, 8
// decoded weight vectors and 2 of x: every register but two). Each tile decodes the block's weights again,
// so fewer, taller tiles decode less: the default target's products of one forward (bench/bench_products.cpp,
// 2 threads, 2-core AMD EPYC), M = 5 / 6 / 10 / 12 rows 16.2 / 17.3 / 25.9 / 28.6 ms in 4-row tiles against
// 12.6 / 14.4 / 22.3 / 25.7 ms in tiles of 5-6.
constexpr int64_t kSkinnyWideMR = 6;

// skinny_block for block-quantized w in registers: the M rows of x in ceil(M / 6) tiles as even as possible
// (5 rows: one tile of 5; 7: 4 + 3; 8: 4 + 4; 9: 5 + 4; 13: 5 + 4 + 4). Every dot product is summed and
// reduced alone in the same order whatever its tile, so the same bits as 4-row tiles.
template <int NR, typename Fmt, typename PfFmt>
static inline void skinny_block_wide(const SkinnyLinearParams& p, const Fmt& f, int64_t n0, const PfFmt& pf,
                                     int64_t pf_n, int64_t pf_rows) {
  const int64_t tiles = (p.M + kSkinnyWideMR - 1) / kSkinnyWideMR;
  for (int64_t t = 0, m0 = 0; t < tiles; ++t) {
    const int64_t rows = p.M * (t + 1) / tiles - p.M * t / tiles;  // sizes differ by at most one
    const int64_t r0 = pf_rows * t / tiles, r1 = pf_rows * (t + 1) / tiles;
    const int64_t q = pf_n + r0;
    switch (rows) {
      case 6: skinny_tile_blocks_avx512<NR, 6>(p, f, n0, m0, pf, q, r1 - r0); break;
      case 5: skinny_tile_blocks_avx512<NR, 5>(p, f, n0, m0, pf, q, r1 - r0); break;
      case 4: skinny_tile_blocks_avx512<NR, 4>(p, f, n0, m0, pf, q, r1 - r0); break;
      case 3: skinny_tile_blocks_avx512<NR, 3>(p, f, n0, m0, pf, q, r1 - r0); break;
      case 2: skinny_tile_blocks_avx512<NR, 2>(p, f, n0, m0, pf, q, r1 - r0); break;
      case 1: skinny_tile_blocks_avx512<NR, 1>(p, f, n0, m0, pf, q, r1 - r0); break;
      default: break;
    }
    m0 += rows;
  }
}
#endif

// One block of NR (or, for the last block, fewer) rows of w against all M rows of x. Its tiles share
// the prefetch of a later block's pf_rows rows at pf between them, a few rows each (spread out, the
// requests keep the memory busy through the whole block instead of queueing up in its first tile).
// kPadPartial (the AVX-512 tiles on a decoded block, w in L1, where the tile is compute-bound): a last
// tile of 2 or 3 x rows runs as a full 4-row tile with the last valid row repeated and only the valid
// rows stored. Every dot product accumulates and reduces alone (skinny_reduce16), so the bits do not
// change; the 2- and 3-row tiles cost ~2x per row what the full one does (the default target's verify,
// 2 threads: 6 and 7 rows 22.8 / 25.9 ms against 21.7 for 8 rows, bench/bench_verify.py).
// wide: block-quantized w in registers runs skinny_block_wide's tiles of up to 6 rows (skinny_wide_tiles()).
template <int NR, typename Fmt, typename PfFmt, bool kPadPartial = false>
static inline void skinny_block(const SkinnyLinearParams& p, const Fmt& f, int64_t n0, const PfFmt& pf, int64_t pf_n,
                                int64_t pf_rows, bool wide = false) {
#if defined(RADAR_SKINNY_AVX512)
  if constexpr (IsBlockQuant<Fmt>::value && !kPadPartial) {
    if (wide) {
      skinny_block_wide<NR>(p, f, n0, pf, pf_n, pf_rows);
      return;
    }
  }
#else
  (void)wide;
#endif
  const int64_t tiles = (p.M + kSkinnyMR - 1) / kSkinnyMR;
  for (int64_t t = 0, m0 = 0; m0 < p.M; ++t, m0 += kSkinnyMR) {
    const int64_t r0 = pf_rows * t / tiles, r1 = pf_rows * (t + 1) / tiles;
    const int64_t q = pf_n + r0;
    switch (p.M - m0 >= kSkinnyMR ? kSkinnyMR : p.M - m0) {
      case 4: RADAR_SKINNY_TILE<NR, 4>(p, f, n0, m0, pf, q, r1 - r0); break;
#if defined(RADAR_SKINNY_AVX512)
      case 3:
        if (kPadPartial) RADAR_SKINNY_TILE<NR, 4>(p, f, n0, m0, pf, q, r1 - r0, 3);
        else RADAR_SKINNY_TILE<NR, 3>(p, f, n0, m0, pf, q, r1 - r0);
        break;
      case 2:
        if (kPadPartial) RADAR_SKINNY_TILE<NR, 4>(p, f, n0, m0, pf, q, r1 - r0, 2);
        else RADAR_SKINNY_TILE<NR, 2>(p, f, n0, m0, pf, q, r1 - r0);
        break;
#else
      case 3: RADAR_SKINNY_TILE<NR, 3>(p, f, n0, m0, pf, q, r1 - r0); break;
      case 2: RADAR_SKINNY_TILE<NR, 2>(p, f, n0, m0, pf, q, r1 - r0); break;
#endif
      case 1: RADAR_SKINNY_TILE<NR, 1>(p, f, n0, m0, pf, q, r1 - r0); break;
      default: break;
    }
  }
}

// Rows n0.. of a block decoded to float32 (row n at w + (n - n0) * K).
struct DecodedRows {
  using Row = const float*;
  const float* w;
  int64_t n0, K;
  Row row(int64_t n) const { return w + (n - n0) * K; }
};

template <typename Row>
static inline void decode_row(const Row& r, float* out, int64_t K) {
#if defined(RADAR_SKINNY_AVX512)
  alignas(64) float ds[16], ms[16];  // K % 32 == 0 for blocks
  for (int64_t c0 = 0; c0 < K / 32; c0 += 16) {
    const int64_t nb = K / 32 - c0 < 16 ? K / 32 - c0 : 16;
    row_scales16(r, c0, nb, ds, ms);
    for (int64_t b = c0; b < c0 + nb; ++b) {
      __m512 lo, hi;
      load_block32(r, b, ds[b - c0], ms[b - c0], lo, hi);
      _mm512_storeu_ps(out + 32 * b, lo);
      _mm512_storeu_ps(out + 32 * b + 16, hi);
    }
  }
#else
  for (int64_t k = 0; k < K; ++k) out[k] = weight_at(r, k);
#endif
}

// With more than kSkinnyDecodeOnceRows rows of x, a block-quantized block is decoded once into buf (NR * K
// floats, in L1/L2) and its tiles run on the float32 values (the same values, so the same bits) instead
// of each tile decoding it again; the prefetch still streams the blocks ahead in their packed form.
template <int NR, typename Fmt>
static inline void skinny_block_decoded(const SkinnyLinearParams& p, const Fmt& f, int64_t n0, int64_t pf_n,
                                        int64_t pf_rows, float* buf) {
  for (int j = 0; j < NR; ++j) decode_row(f.row(n0 + j), buf + j * p.K, p.K);
  skinny_block<NR, DecodedRows, Fmt, true>(p, DecodedRows{buf, n0, p.K}, n0, f, pf_n, pf_rows);
}


// Rows of x above which a block-quantized block is decoded once into a float32 buffer for its tiles
// (skinny_block_decoded) instead of in registers by each tile. The AVX-512 block tiles decode a block
// in ~5 instructions per 32 weights, so re-decoding per 4-row tile wins up to 16 rows: one thread, a
// 1536 x 576 Q4_1 weight (in L2), 5 / 8 / 16 / 32 rows 126 / 163 / 315 / 629 us in registers against
// 176 / 206 / 325 / 564 us through the buffer.
#if defined(RADAR_SKINNY_AVX512)
constexpr int64_t kSkinnyDecodeOnceRows = 16;
#else
constexpr int64_t kSkinnyDecodeOnceRows = kSkinnyMR;
#endif

template <typename Fmt>
static inline void skinny_blocks_typed(const SkinnyLinearParams& p, const Fmt& f, int64_t b0, int64_t b1) {
  static_assert(kSkinnyNR == 4 && kSkinnyMR == 4, "the tile dispatch below is written for 4 x 4");
  const bool decode_once = IsBlockQuant<Fmt>::value && p.M > kSkinnyDecodeOnceRows;
  const bool wide = IsBlockQuant<Fmt>::value && p.M > kSkinnyMR && skinny_wide_tiles();
  std::vector<float> buf(decode_once ? kSkinnyNR * p.K : 0);
  for (int64_t b = b0; b < b1; ++b) {
    // prefetch the block kSkinnyPrefetchBlocks ahead in this range (other ranges are other threads')
    const int64_t n0 = b * kSkinnyNR, n1 = n0 + kSkinnyPrefetchBlocks * kSkinnyNR;
    const int64_t pf_rows = b + kSkinnyPrefetchBlocks < b1 ? (p.N - n1 >= kSkinnyNR ? kSkinnyNR : p.N - n1) : 0;
    const int64_t pf_n = pf_rows ? n1 : 0;
    const int64_t nr = p.N - n0 >= kSkinnyNR ? kSkinnyNR : p.N - n0;
    if constexpr (IsBlockQuant<Fmt>::value) if (decode_once) {
      switch (nr) {
        case 4: skinny_block_decoded<4>(p, f, n0, pf_n, pf_rows, buf.data()); break;
        case 3: skinny_block_decoded<3>(p, f, n0, pf_n, pf_rows, buf.data()); break;
        case 2: skinny_block_decoded<2>(p, f, n0, pf_n, pf_rows, buf.data()); break;
        case 1: skinny_block_decoded<1>(p, f, n0, pf_n, pf_rows, buf.data()); break;
        default: break;
      }
      continue;
    }
    switch (nr) {
      case 4: skinny_block<4>(p, f, n0, f, pf_n, pf_rows, wide); break;
      case 3: skinny_block<3>(p, f, n0, f, pf_n, pf_rows, wide); break;
      case 2: skinny_block<2>(p, f, n0, f, pf_n, pf_rows, wide); break;
      case 1: skinny_block<1>(p, f, n0, f, pf_n, pf_rows, wide); break;
      default: break;
    }
  }
}

// The AMX path for block-quantized weights (kernels/amx_linear.h, csrc/amx_linear.cpp), from
// kAmxMinRows rows of x: below that the AVX-512 tiles are faster. The AMX path pays a fixed ~200-290 cycles
// per 16 x 32 weights whatever M (decoding them into a tile, three tile products, the scaling), the
// AVX-512 tiles ~55 cycles per x row for the same weights. One thread, a 12288 x 576 Q4_1 weight in cache,
// M = 1 / 4 / 8 / 16: AMX 1.05 / 1.10 / 1.19 / 1.42 ms, AVX-512 0.57 / 0.92 / 1.72 / 3.30 ms; the default
// target's fused verify forward (2 threads, prefix 256), M = 6 / 8 / 12 / 16 / 32: AMX 22.0 / 22.6 / 25.8 /
// 25.8 / 44.0 ms, AVX-512 20.5 / 23.1 / 32.5 / 39.6 / 71.9 ms. So a product's bits depend on whether M
// reaches kAmxMinRows (each side is M-independent on its own).
constexpr int64_t kAmxMinRows = 8;
bool amx_linear_usable();
void amx_linear_rows(const SkinnyLinearParams& p, int64_t n0, int64_t n1);
void amx_linear_packed_rows(const SkinnyLinearParams& p, int64_t n0, int64_t n1);
void vnni_linear_packed_rows(const SkinnyLinearParams& p, int64_t n0, int64_t n1);  // kernels/vnni_linear.h
void vnni_q8_draft_rows(const SkinnyLinearParams& p, int64_t n0, int64_t n1);       // kernels/vnni_linear.h

// Blocks [b0, b1) of w rows: y[:, 4*b0 : min(4*b1, N)], from w, w16 or wq. The widest path this
// translation unit was compiled for (see the top of the file); block-quantized weights on the AMX tile
// unit where the CPU has one (amx_linear_usable()).
static inline void skinny_linear_blocks_native(const SkinnyLinearParams& p, int64_t b0, int64_t b1) {
  if (p.amx_packed) {  // (made only where the CPU has AMX: ops.cpp checks)
    amx_linear_packed_rows(p, b0 * kSkinnyNR, b1 * kSkinnyNR < p.N ? b1 * kSkinnyNR : p.N);
    return;
  }
  if (p.vnni_packed || p.q8_draft) {  // (made only where the CPU has AVX512-VNNI: ops.cpp checks; b0, b1 % 4 == 0)
    const int64_t n1 = b1 * kSkinnyNR < p.N ? b1 * kSkinnyNR : p.N;
    if (p.vnni_packed)
      vnni_linear_packed_rows(p, b0 * kSkinnyNR, n1);
    else
      vnni_q8_draft_rows(p, b0 * kSkinnyNR, n1);
    return;
  }
#if defined(RADAR_SKINNY_AVX512)
  if (p.wq && p.M >= kAmxMinRows && amx_linear_usable()) {
    amx_linear_rows(p, b0 * kSkinnyNR, b1 * kSkinnyNR < p.N ? b1 * kSkinnyNR : p.N);
    return;
  }
#endif
  const F16* d16 = reinterpret_cast<const F16*>(p.wd);
  const F16* m16 = reinterpret_cast<const F16*>(p.wm);
  if (p.wq && p.wm && p.scales_f16)
    skinny_blocks_typed(p, Q41Rows<F16>{p.wq, d16, m16, p.K}, b0, b1);
  else if (p.wq && p.scales_f16)
    skinny_blocks_typed(p, Q80Rows<F16>{reinterpret_cast<const int8_t*>(p.wq), d16, p.K}, b0, b1);
  else if (p.wq && p.wm)
    skinny_blocks_typed(p, Q41Rows<float>{p.wq, p.wd, p.wm, p.K}, b0, b1);
  else if (p.wq)
    skinny_blocks_typed(p, Q80Rows<float>{reinterpret_cast<const int8_t*>(p.wq), p.wd, p.K}, b0, b1);
  else if (!p.w16)
    skinny_blocks_typed(p, DenseRows<float>{p.w, p.K}, b0, b1);
  else if (p.w16_is_f16)
    skinny_blocks_typed(p, DenseRows<F16>{reinterpret_cast<const F16*>(p.w16), p.K}, b0, b1);
  else
    skinny_blocks_typed(p, DenseRows<Bf16>{reinterpret_cast<const Bf16*>(p.w16), p.K}, b0, b1);
}

#undef RADAR_SKINNY_TILE

// The AVX-512 entry points, defined in csrc/skinny_linear_avx512.cpp (compiled for AVX-512 there).
// skinny_linear_avx512_compiled(): whether that file got the AVX-512 path (false on compilers or
// architectures where it could not); the caller must also check the running CPU
// (__builtin_cpu_supports("avx512f")) before calling skinny_linear_blocks_avx512.
bool skinny_linear_avx512_compiled();
void skinny_linear_blocks_avx512(const SkinnyLinearParams& p, int64_t b0, int64_t b1);

}  // namespace kernels
}  // namespace radar_ext
