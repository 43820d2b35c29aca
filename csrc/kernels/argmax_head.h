// The greedy token of each row of a Q8_0 LM head without all its logits: the same index as the argmax of
// the logits the fused forward computes (kernels/llama_forward.h), for about a third of the head's work.
//
// 1. Each row h of the final hidden state is rounded to int8 per block of 32: s_b = max|h_b| / 127,
//    hq = round(h / s_b). Every logit's approximation a_j = sum_b s_b d_jb sum_i q_ji hq_i is then an
//    integer dot product per block (AVX512-VNNI: 64 multiply-adds an instruction, against 16 for the
//    float32 products of the exact path, and no decoding: the weights stay bytes).
// 2. A rigorous bound: |h_i - s_b hq_i| <= s_b (1/2 + 1e-4), so |a_j - h . w_j| <= sum_b s_b A_jb / 2 with
//    A_jb = |d_jb| sum_i |q_ji| (taken rounded up); float32 rounding in computing a_j (~20 u on terms
//    <= 127 s_b A_jb) and in the exact path's own logit (a dot product of K terms: K u sum |h_i w_ji| <=
//    K u 127 sum_b s_b A_jb, 4.4e-3 of it at K = 576) add less than 1% more. So
//    e_j (the exact path's logit) lies in [a_j - B_j, a_j + B_j], B_j = kArgmaxBoundScale sum_b s_b A_jb,
//    with kArgmaxBoundScale = 0.51 (valid for K <= 2048; ops.cpp checks).
// 3. L = max_j (a_j - B_j) <= e_argmax, so the argmax is among the candidates a_j + B_j >= L: their exact
//    logits come from the same skinny_linear tiles as the full head's (every dot product is reduced alone
//    in a fixed order, so one row of w and x gives the full product's bits), and the first largest wins,
//    as torch.argmax picks. On the default target 3 candidates a row at the median, p99 ~32 (of 49152).
// A row of h with a non-finite value takes every logit exactly (NaN counts as the largest, as in torch).
//
// Weights in the grouped layout (argmax_pack in radar_ext/quant.py): 16 vocabulary rows per group, one per
// 32-bit lane; for group g and block b, 8 chunks of 64 bytes, chunk t holding bytes 4t..4t+3 of the block of
// each of the 16 rows (q XOR 0x80: the unsigned operand of vpdpbusd, corrected by -128 sum hq per block).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "kernels/skinny_linear.h"

namespace radar_ext {
namespace kernels {

constexpr int64_t kArgmaxGroup = 16;        // vocabulary rows per group (one 32-bit lane each)
constexpr float kArgmaxBoundScale = 0.51f;  // see the top of the file
constexpr int64_t kArgmaxMaxK = 2048;       // the bound's rounding allowance holds up to this K

struct ArgmaxHead {
  const uint8_t* q = nullptr;   // [G, K/32, 8, 16, 4] (see the top of the file)
  const uint16_t* d = nullptr;  // [G, K/32, 16] float16 block scales, Q8_0's own (padded rows 0)
  const float* a = nullptr;     // [G, K/32, 16] upper bounds of |d| sum |q| per block (padded rows 0)
  int64_t N = 0, K = 0;         // real vocabulary rows (G = ceil(N / 16)) and K
  bool vnni = false;            // run the groups with AVX512-VNNI (argmax_groups_vnni; ops.cpp checks the CPU)
};

// h's rows rounded per block: hq [R, K] int8, and per row and block: s, -128 sum hq, kArgmaxBoundScale * s.
struct ArgmaxRows {
  const int8_t* hq;
  const float* s;
  const int32_t* t128;
  const float* c;
  int64_t K;
};

static inline int64_t argmax_groups(int64_t N) { return (N + kArgmaxGroup - 1) / kArgmaxGroup; }

static inline float argmax_half(uint16_t bits) {
  F16 h{bits};
  return load_weight(&h);
}

// Row h [K] -> hq, s, t128, c (nb = K / 32 blocks; c may be null: vnni_q8_draft_rows rounds its rows of x so too).
// False (nothing usable) if h holds a non-finite value.
static inline bool argmax_quantize_row(const float* h, int64_t K, int8_t* hq, float* s, int32_t* t128, float* c) {
  for (int64_t b = 0; b < K / 32; ++b) {
    const float* x = h + 32 * b;
    float mx = 0.0f;
    for (int i = 0; i < 32; ++i) {
      if (!std::isfinite(x[i])) return false;
      mx = std::fmax(mx, std::fabs(x[i]));
    }
    const float sb = mx / 127.0f, inv = mx > 0.0f ? 127.0f / mx : 0.0f;
    int32_t sum = 0;
    for (int i = 0; i < 32; ++i) {
      float v = std::nearbyint(x[i] * inv);
      v = v > 127.0f ? 127.0f : (v < -127.0f ? -127.0f : v);
      hq[32 * b + i] = static_cast<int8_t>(v);
      sum += static_cast<int32_t>(v);
    }
    s[b] = sb;
    t128[b] = -128 * sum;
    if (c != nullptr) c[b] = kArgmaxBoundScale * sb;
  }
  return true;
}

// Group g for row r (x's row r): hi[16] = a_j + B_j, lo[16] = max(lo, a_j - B_j) lane by lane. The
// reference of the per-lane arithmetic: argmax_groups_vnni computes the same integers and the same float32
// operations in the same order (so the same bits).
static inline void argmax_group_row(const ArgmaxHead& w, const ArgmaxRows& x, int64_t g, int64_t r, float* hi,
                                    float* lo) {
  const int64_t nb = w.K / 32;
  float acc[kArgmaxGroup] = {}, bnd[kArgmaxGroup] = {};
  const int8_t* hq = x.hq + r * w.K;
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* qb = w.q + (g * nb + b) * 512;
    const uint16_t* db = w.d + (g * nb + b) * kArgmaxGroup;
    const float* ab = w.a + (g * nb + b) * kArgmaxGroup;
    const float sb = x.s[r * nb + b], cb = x.c[r * nb + b];
    for (int lane = 0; lane < kArgmaxGroup; ++lane) {
      int32_t S = x.t128[r * nb + b];
      for (int t = 0; t < 8; ++t)
        for (int u = 0; u < 4; ++u)
          S += static_cast<int32_t>(qb[t * 64 + lane * 4 + u]) * static_cast<int32_t>(hq[32 * b + 4 * t + u]);
      const float ds = argmax_half(db[lane]) * sb;
      acc[lane] = std::fma(static_cast<float>(S), ds, acc[lane]);
      bnd[lane] = std::fma(ab[lane], cb, bnd[lane]);
    }
  }
  for (int lane = 0; lane < kArgmaxGroup; ++lane) {
    hi[lane] = acc[lane] + bnd[lane];
    lo[lane] = std::fmax(lo[lane], acc[lane] - bnd[lane]);
  }
}

// The AVX512-VNNI build of groups [g0, g1) for rows [0, R): hi rows at stride hi_stride (hi[r * hi_stride +
// 16 g + lane]), lo [R, 16] updated. Defined in csrc/argmax_head_vnni.cpp; argmax_vnni_compiled() says whether
// that file got the VNNI path (the caller also checks the running CPU).
bool argmax_vnni_compiled();
void argmax_groups_vnni(const ArgmaxHead& w, const ArgmaxRows& x, int64_t R, int64_t g0, int64_t g1, float* hi,
                        int64_t hi_stride, float* lo);

// Groups [g0, g1) for rows [0, R), by the VNNI build where w.vnni, else row by row as argmax_group_row.
static inline void argmax_groups(const ArgmaxHead& w, const ArgmaxRows& x, int64_t R, int64_t g0, int64_t g1,
                                 float* hi, int64_t hi_stride, float* lo) {
  if (w.vnni) {
    argmax_groups_vnni(w, x, R, g0, g1, hi, hi_stride, lo);
    return;
  }
  for (int64_t g = g0; g < g1; ++g)
    for (int64_t r = 0; r < R; ++r) argmax_group_row(w, x, g, r, hi + r * hi_stride + g * kArgmaxGroup, lo + r * kArgmaxGroup);
}

// One exact logit, row j of the head on x [K], as the full product computes it (head: the fused forward's
// Q8_0 LM head params; M = 1, N = 1: the same per-dot-product order as any tile).
static inline float argmax_exact_logit(const SkinnyLinearParams& head, const float* x, int64_t j) {
  SkinnyLinearParams p = head;
  float y = 0.0f;
  p.x = x;
  p.y = &y;
  p.M = 1;
  p.N = 1;
  p.x_key = 0;
  p.wq = head.wq + j * head.K;  // Q8_0: K bytes a row
  const int64_t nb = head.K / 32;
  p.wd = head.scales_f16 ? reinterpret_cast<const float*>(reinterpret_cast<const uint16_t*>(head.wd) + j * nb)
                         : head.wd + j * nb;
  p.bias = head.bias ? head.bias + j : nullptr;
  skinny_linear_blocks_native(p, 0, 1);
  return y;
}

// The first index of the largest value, NaN counting as the largest (torch.argmax on the CPU).
static inline bool argmax_better(float v, float best) { return std::isnan(v) ? !std::isnan(best) : v > best; }

// Row r's greedy token from its candidates: hi [Npad] (a_j + B_j), L = max_j (a_j - B_j); x: the normed row.
// Returns the token and sets *n_cand.
static inline int64_t argmax_resolve_row(const SkinnyLinearParams& head, const float* x, const float* hi, int64_t N,
                                         float L, int64_t* n_cand) {
  int64_t best = -1, n = 0;
  float best_v = 0.0f;
  for (int64_t j0 = 0; j0 < N; j0 += kArgmaxGroup) {
    bool any = false;  // (a branch-free test of 16 at once: the compiler vectorizes it)
    for (int64_t l = 0; l < kArgmaxGroup; ++l) any |= hi[j0 + l] >= L;  // (hi holds G * 16 entries)
    if (!any) continue;
    for (int64_t j = j0; j < j0 + kArgmaxGroup && j < N; ++j) {
      if (!(hi[j] >= L)) continue;
      ++n;
      const float v = argmax_exact_logit(head, x, j);
      if (best < 0 || argmax_better(v, best_v)) best = j, best_v = v;
    }
  }
  *n_cand = n;
  return best;
}

// Every logit of a row exactly (a row whose h is not finite), then its argmax as torch takes it.
static inline int64_t argmax_full_row(const SkinnyLinearParams& head, const float* x, int64_t N) {
  int64_t best = 0;
  float best_v = argmax_exact_logit(head, x, 0);
  for (int64_t j = 1; j < N; ++j) {
    const float v = argmax_exact_logit(head, x, j);
    if (argmax_better(v, best_v)) best = j, best_v = v;
  }
  return best;
}

}  // namespace kernels
}  // namespace radar_ext
