// llama_forward: the whole verify forward of a plain Llama decoder on the CPU, torch-free: token
// embedding, per layer RMSNorm -> q/k/v -> rotary -> the new K/V into the cache -> attention over the
// cache under the caller's additive (tree) mask -> o-proj + residual -> RMSNorm -> gate/up -> SiLU * up
// -> down-proj + residual, then the final RMSNorm and the LM head. Every product is a skinny_linear
// product (kernels/skinny_linear.h) on float32, 16-bit or exact Q4_1 / Q8_0 weights.
// Layout: R = B * M rows (batch row b, tree node m at row b * M + m), every activation row-major
// [R, width]; cos / sin [B, M, D] (the model's own rotary embedding, so any rope scaling is the
// model's); mask [B, M, mask_cols] additive float (0 = visible, a large negative = hidden), column t is
// cache position t, so per-row cache lengths and left padding are the mask's business; K/V caches
// [B, Hkv, capacity, D] per layer, entries [0, past_len) valid, the new ones go to [past_len, past_len + M).
// Parallel split: the caller opens one parallel region for the whole forward and calls
// llama_forward_thread on every thread. The forward is a chain of phases (embedding, 6 per layer, LM
// head) whose work items the threads claim in chunks from atomic counters (llama_phase: no barrier,
// so a descheduled thread does not hold the other one up). Products: chunks of 4-row blocks of their
// output columns (every output is summed by one thread in the kernel's fixed order, so the result does
// not depend on the thread count or the split); rotary: (row, head) pairs; attention: (batch row,
// query head) pairs in contiguous ranges, one per thread (the query heads of a K/V head mostly on one
// thread, which reads that head's cache once from memory). Each thread that takes product work first
// normalizes all R rows into its own buffer (R * H flops, cheaper than another phase).
// Numerics: float32 accumulation everywhere, no fast-math, no contraction (setup.py); logits differ
// from the HF forward's by summation order only (python_tests/test_fused_forward.py).
// All functions have internal linkage (static): this header is compiled for the baseline ISA in
// csrc/ops.cpp and for AVX-512 in csrc/llama_forward_avx512.cpp, as skinny_linear.h.
#pragma once

#include <stdint.h>
#include <string.h>

#include <atomic>
#include <thread>

#include "kernels/argmax_head.h"
#include "kernels/common.h"
#include "kernels/skinny_linear.h"

namespace radar_ext {
namespace kernels {

// One linear's weights, in any format skinny_linear takes (exactly one of w, w16, wq set).
struct LinearWeights {
  const float* w = nullptr;       // [N, K] float32
  const uint16_t* w16 = nullptr;  // [N, K] bfloat16 / float16 bits
  bool w16_is_f16 = false;
  const uint8_t* wq = nullptr;    // Q4_1 [N, K/2] (wm set) or Q8_0 [N, K] int8
  const float* wd = nullptr;      // [N, K/32]
  const float* wm = nullptr;      // [N, K/32] or nullptr
  bool scales_f16 = false;        // wd / wm hold float16 bits (SkinnyLinearParams::scales_f16)
  bool amx_packed = false;        // wq / wd / wm in the AMX layout (kernels/amx_linear.h)
  bool vnni_packed = false;       // wq / wd / wm in the VNNI layout (kernels/vnni_linear.h)
  bool q8_draft = false;          // draft-grade Q8_0 products (kernels/vnni_linear.h: a draft head's weights only)
  const float* bias = nullptr;    // [N] or nullptr
  int64_t N = 0, K = 0;
};

struct LlamaLayerWeights {
  const float* input_norm;  // [H]
  const float* post_norm;   // [H]
  LinearWeights q, k, v, o, gate, up, down;
};

struct LlamaForwardParams {
  int64_t B, M, H, n_layers, n_heads, n_kv_heads, head_dim, inter, vocab;  // inter: the largest layer's (gate.N)
  float eps, scaling;
  const int64_t* tokens;      // [B, M], each in [0, embed rows)
  const float* embed;         // [embed rows, H]
  const float* cos;           // [B, M, D]
  const float* sin;           // [B, M, D]
  const float* mask;          // [B, M, mask_cols] additive
  int64_t mask_cols, past_len;
  const LlamaLayerWeights* layers;  // [n_layers]
  float* const* k_cache;      // [n_layers] -> [B, Hkv, cache_cap, D]
  float* const* v_cache;
  int64_t cache_cap;
  const float* final_norm;    // [H]
  LinearWeights lm_head;      // N = vocab
  float* logits;              // [R, vocab]
  // captured hidden states: slot s < n_layers is the input of layer s, n_layers the last layer's
  // output before the final norm, n_layers + 1 after it. capture_slots[i] -> capture_out[i] [R, H].
  const int64_t* capture_slots;
  float* const* capture_out;
  int64_t n_capture;
  // EAGLE-3 draft head mode (hidden set; radar_ext::eagle_forward): the residual stream x starts as
  // fc(hidden) (fc.N > 0: hidden [R, fc.K], the target's features) or as hidden [R, H] itself (the
  // head's own previous output), the tokens' embeddings go aside, and layer 0's attention input is
  // [RMSNorm(embedding; input_norm) | RMSNorm(x; hidden_norm)], so its q/k/v take K = 2H. Layers 1..
  // and the rest are a plain Llama's; logits cover the head's (draft) vocabulary.
  const float* hidden = nullptr;
  LinearWeights fc;                  // N = 0: none
  const float* hidden_norm = nullptr;
  // logits of each batch row's last tree row only ([B, vocab]; a head call over a prompt wants one).
  // Capture slot n_layers + 1 is not available then.
  bool logits_last_only = false;
  // Nonzero: a number unique to this forward, at least llama_n_phases apart from any other forward's; the
  // products of phase i get x_key = x_key_base + i (SkinnyLinearParams::x_key: one split of x per phase).
  uint64_t x_key_base = 0;
  // Greedy mode (argmax set; radar_ext::llama_forward_argmax): no logits, the LM head's argmax per head row
  // instead (kernels/argmax_head.h; lm_head is its Q8_0 blocks, not in the AMX layout), into argmax_out [R'] and
  // its candidate count into argmax_cand [R'] (R' = B with logits_last_only, else R). Scratch from the caller:
  // a_h [R', H] normed rows, a_hq [R', H], a_s / a_t / a_c [R', H/32], a_bad [R'] (a non-finite row),
  // a_hi [R', 16 G], a_lo [ceil(G / a_chunk), R', 16] (each chunk of a_chunk groups its own lane maxima).
  const ArgmaxHead* argmax = nullptr;
  int64_t* argmax_out = nullptr;
  int64_t* argmax_cand = nullptr;
  float *a_h = nullptr, *a_s = nullptr, *a_c = nullptr, *a_hi = nullptr, *a_lo = nullptr;
  int8_t* a_hq = nullptr;
  int32_t* a_t = nullptr;
  uint8_t* a_bad = nullptr;
  int64_t a_chunk = 1;
};

// Width of layer 0's attention input: 2H in EAGLE mode, else H.
static inline int64_t llama_attn_in0(const LlamaForwardParams& p) { return p.hidden ? 2 * p.H : p.H; }

// Scratch, shared by the threads (each writes disjoint parts) plus per-thread parts at stride.
struct LlamaForwardWorkspace {
  float *x, *q, *k, *v, *attn, *tmp, *gate, *up, *act;  // [R, H], [R, Hq*D], [R, Hkv*D] x2, [R, Hq*D], [R, H], [R, I] x3
  float* emb;            // [R, H] the tokens' embeddings (EAGLE mode only)
  float* per_thread;     // nthreads * thread_floats
  int64_t thread_floats;
};

static inline int64_t llama_thread_floats(const LlamaForwardParams& p) {
  const int64_t R = p.B * p.M, T = p.past_len + p.M;
  return R * llama_attn_in0(p) + p.M * p.head_dim + p.M * T + p.M * p.head_dim + 64;  // normed x, q of a head, scores, output
}

static inline int64_t llama_shared_floats(const LlamaForwardParams& p) {
  const int64_t R = p.B * p.M, QD = p.n_heads * p.head_dim, KD = p.n_kv_heads * p.head_dim;
  return R * (p.H + QD + 2 * KD + QD + p.H + 3 * p.inter + p.H);
}

static inline void llama_workspace_carve(LlamaForwardWorkspace& ws, const LlamaForwardParams& p, float* shared,
                                         float* per_thread) {
  const int64_t R = p.B * p.M, QD = p.n_heads * p.head_dim, KD = p.n_kv_heads * p.head_dim;
  float* s = shared;
  ws.x = s, s += R * p.H;
  ws.q = s, s += R * QD;
  ws.k = s, s += R * KD;
  ws.v = s, s += R * KD;
  ws.attn = s, s += R * QD;
  ws.tmp = s, s += R * p.H;
  ws.gate = s, s += R * p.inter;
  ws.up = s, s += R * p.inter;
  ws.act = s, s += R * p.inter;
  ws.emb = s;
  ws.per_thread = per_thread;
  ws.thread_floats = llama_thread_floats(p);
}

static inline SkinnyLinearParams linear_params(const LinearWeights& w, const float* x, float* y, int64_t rows,
                                               uint64_t x_key = 0) {
  SkinnyLinearParams s{x, w.w, w.bias, y, rows, w.N, w.K};
  s.x_key = x_key;
  s.w16 = w.w16;
  s.w16_is_f16 = w.w16_is_f16;
  s.wq = w.wq;
  s.wd = w.wd;
  s.wm = w.wm;
  s.scales_f16 = w.scales_f16;
  s.amx_packed = w.amx_packed;
  s.vnni_packed = w.vnni_packed;
  s.q8_draft = w.q8_draft;
  return s;
}

// Phase synchronisation without barriers. Each phase has n_items work items; a thread claims chunks
// of them from the phase's `claimed` counter and adds what it finished to `done`; it enters the next
// phase once every item of this one is done, not once every thread has arrived. On a loaded machine
// a thread that the OS has descheduled between phases costs nothing: the running one takes all the
// items (an OpenMP barrier would wait a whole time slice for it, ~150 times a forward). Waiting only
// happens for chunks another thread has claimed and not finished.
struct LlamaPhaseCounters {
  std::atomic<int64_t> claimed{0}, done{0};
  char pad[64 - 2 * sizeof(std::atomic<int64_t>)];  // one cache line per phase
};

static inline void llama_wait_done(LlamaPhaseCounters& c, int64_t n_items) {
  for (int spins = 0; c.done.load(std::memory_order_acquire) < n_items; ++spins) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
    if (spins > 2000) std::this_thread::yield();  // the owner of the last chunk may be descheduled
  }
}

// Claims chunks of `chunk` items of a phase until none is left: body(lo, hi) for each.
template <typename Body>
static inline void llama_phase(LlamaPhaseCounters& c, int64_t n_items, int64_t chunk, Body&& body) {
  for (;;) {
    const int64_t lo = c.claimed.fetch_add(chunk, std::memory_order_relaxed);
    if (lo >= n_items) break;
    const int64_t hi = lo + chunk < n_items ? lo + chunk : n_items;
    body(lo, hi);
    c.done.fetch_add(hi - lo, std::memory_order_acq_rel);
  }
  llama_wait_done(c, n_items);
}

// Chunk of 4-row blocks a thread claims at once: about 8 chunks per thread (load balance), at least
// kSkinnyPrefetchBlocks * 2 blocks so the prefetch ahead within a chunk pays. Products of `rows` rows of x
// on the AMX path (block-quantized weights, rows >= kAmxMinRows) take 2 chunks per thread, whole groups of
// 16 weight rows: each call of it decodes its first group without overlap and sets up the tile unit.
// Weights in the AMX layout (`packed`) always run there. Weights in the VNNI layout (`vnni`, kernels/vnni_linear.h)
// take whole groups of 16 weight rows, about 8 chunks per thread.
static inline int64_t llama_block_chunk(int64_t blocks, int nth, int64_t rows = 0, bool packed = false,
                                        bool vnni = false) {
  if (vnni) {
    const int64_t c = blocks / (8 * nth);
    return c < 4 ? 4 : (c + 3) / 4 * 4;
  }
  bool amx = packed;
#if defined(RADAR_SKINNY_AVX512)
  amx = amx || (rows >= kAmxMinRows && amx_linear_usable());
#else
  (void)rows;
#endif
  if (amx) {
    const int64_t c = (blocks + 2 * nth - 1) / (2 * nth);
    return c < 4 ? 4 : (c + 3) / 4 * 4;
  }
  const int64_t c = blocks / (8 * nth);
  return c > 2 * kSkinnyPrefetchBlocks ? c : 2 * kSkinnyPrefetchBlocks;
}

// The chunk for products on weights w (their layout decides: AMX units, VNNI units or GGUF blocks).
static inline int64_t llama_block_chunk(int64_t blocks, int nth, int64_t rows, const LinearWeights& w) {
  return llama_block_chunk(blocks, nth, rows, w.amx_packed, w.vnni_packed || w.q8_draft);
}

// Blocks [lo, hi) of the products ps[0..n) (all on the same x) taken as one range.
static inline void llama_products(const SkinnyLinearParams* ps, int n, int64_t lo, int64_t hi) {
  int64_t start = 0;
  for (int i = 0; i < n; ++i) {
    const int64_t nb = skinny_linear_blocks(ps[i]);
    const int64_t a = lo > start ? lo - start : 0, b = hi - start < nb ? hi - start : nb;
    if (a < b) skinny_linear_blocks_native(ps[i], a, b);
    start += nb;
  }
}

// out[r] = w * (x[r] * rsqrt(mean(x[r]^2) + eps)), LlamaRMSNorm in float32; the sum of squares in 16
// lanes (lane k % 16), then the lanes pairwise. Output rows out_stride apart (0: H).
static inline void llama_rms_norm(const float* x, const float* w, float* out, int64_t rows, int64_t H, float eps,
                                  int64_t out_stride = 0) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * H;
    float acc[16] = {};
    int64_t k = 0;
    for (; k + 16 <= H; k += 16)
      for (int l = 0; l < 16; ++l) acc[l] += xr[k + l] * xr[k + l];
    for (; k < H; ++k) acc[k % 16] += xr[k] * xr[k];
    for (int s = 8; s >= 1; s /= 2)
      for (int l = 0; l < s; ++l) acc[l] += acc[l + s];
    const float inv = 1.0f / sqrtf(acc[0] / static_cast<float>(H) + eps);
    float* o = out + r * (out_stride ? out_stride : H);
    for (int64_t j = 0; j < H; ++j) o[j] = w[j] * (xr[j] * inv);
  }
}

// Rotary embedding of one head row in place: t * cos + rotate_half(t) * sin, rotate_half = (-t2, t1).
static inline void llama_rotary(float* t, const float* cos, const float* sin, int64_t D) {
  const int64_t half = D / 2;
  float tmp[512];
  for (int64_t d = 0; d < D; ++d) tmp[d] = t[d];
  for (int64_t d = 0; d < half; ++d) t[d] = tmp[d] * cos[d] + (-tmp[d + half]) * sin[d];
  for (int64_t d = half; d < D; ++d) t[d] = tmp[d] * cos[d] + tmp[d - half] * sin[d];
}

#if defined(RADAR_SKINNY_AVX512)
// exp_accurate on 16 lanes: the same operations in the same order (separate multiplies and adds, as
// the scalar code compiles under -ffp-contract=off), so the same bits lane by lane.
static inline __m512 llama_exp16(__m512 x) {
  const __m512 lo = _mm512_set1_ps(-87.33654f), hi = _mm512_set1_ps(88.0f), shift = _mm512_set1_ps(12582912.0f);
  const __mmask16 above_lo = _mm512_cmp_ps_mask(x, lo, _CMP_GT_OQ);  // false for NaN
  __m512 xc = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, hi, _CMP_LT_OQ), hi, x);
  xc = _mm512_mask_blend_ps(above_lo, lo, xc);
  const __m512 n = _mm512_sub_ps(_mm512_add_ps(_mm512_mul_ps(xc, _mm512_set1_ps(1.44269504088896341f)), shift), shift);
  __m512 r = _mm512_sub_ps(xc, _mm512_mul_ps(n, _mm512_set1_ps(0.693359375f)));
  r = _mm512_sub_ps(r, _mm512_mul_ps(n, _mm512_set1_ps(-2.12194440e-4f)));
  __m512 q = _mm512_set1_ps(1.9875691500e-4f);
  q = _mm512_add_ps(_mm512_mul_ps(q, r), _mm512_set1_ps(1.3981999507e-3f));
  q = _mm512_add_ps(_mm512_mul_ps(q, r), _mm512_set1_ps(8.3334519073e-3f));
  q = _mm512_add_ps(_mm512_mul_ps(q, r), _mm512_set1_ps(4.1665795894e-2f));
  q = _mm512_add_ps(_mm512_mul_ps(q, r), _mm512_set1_ps(1.6666665459e-1f));
  q = _mm512_add_ps(_mm512_mul_ps(q, r), _mm512_set1_ps(5.0000001201e-1f));
  const __m512 y = _mm512_add_ps(_mm512_add_ps(_mm512_mul_ps(_mm512_mul_ps(q, r), r), r), _mm512_set1_ps(1.0f));
  const __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvttps_epi32(n), _mm512_set1_epi32(127)), 23);
  return _mm512_maskz_mov_ps(above_lo, _mm512_mul_ps(y, _mm512_castsi512_ps(e)));
}

// scores[t] = q . k_t for t < T over D % 16 == 0, 16 keys per step: the skinny product's sums (lane
// d % 16, then skinny_reduce16's fixed lane order), so the same bits as skinny_linear on one row,
// without its 4-key tiles that leave 12 of the 16 reduction slots empty at 1 query row.
static inline void llama_scores_row16(const float* q, const float* kc, int64_t T, int64_t D, float* scores) {
  const SkinnyLinearParams row{q, kc, nullptr, scores, 1, T, D};  // one query row against T keys
  int64_t t0 = 0;
  for (; t0 + 16 <= T; t0 += 16) {
    __m512 acc[1][16];
    for (int j = 0; j < 16; ++j) acc[0][j] = _mm512_setzero_ps();
    for (int64_t d = 0; d < D; d += 16) {
      const __m512 qv = _mm512_loadu_ps(q + d);
      for (int j = 0; j < 16; ++j) acc[0][j] = _mm512_fmadd_ps(qv, _mm512_loadu_ps(kc + (t0 + j) * D + d), acc[0][j]);
    }
    skinny_tile_store<16, 1>(row, acc, t0, 0, 1);  // scores[t0 + j] = key j's sum
  }
  if (t0 < T) {
    SkinnyLinearParams s{q, kc + t0 * D, nullptr, scores + t0, 1, T - t0, D};
    skinny_linear_blocks_native(s, 0, skinny_linear_blocks(s));
  }
}

// out = inv * sum_t e_t v_t over the T value rows (D = 16 * ND floats each), 16 dims per step in t order;
// entries e_t == 0 (masked) add nothing. The ND accumulators stay in registers (a runtime ND kept them on the
// stack, each step a store-to-load round trip).
template <int ND>
static inline void llama_value_sum_nd(const float* e, const float* vc, int64_t T, float inv, float* out) {
  __m512 acc[ND];
#pragma GCC unroll 16
  for (int c = 0; c < ND; ++c) acc[c] = _mm512_setzero_ps();
  for (int64_t u = 0; u < T; ++u) {
    if (e[u] == 0.0f) continue;
    const __m512 ev = _mm512_set1_ps(e[u]);
    const float* vr = vc + u * 16 * ND;
#pragma GCC unroll 16
    for (int c = 0; c < ND; ++c) acc[c] = _mm512_add_ps(acc[c], _mm512_mul_ps(ev, _mm512_loadu_ps(vr + 16 * c)));
  }
  const __m512 iv = _mm512_set1_ps(inv);
#pragma GCC unroll 16
  for (int c = 0; c < ND; ++c) _mm512_storeu_ps(out + 16 * c, _mm512_mul_ps(acc[c], iv));
}

template <int ND = 16>
static inline void llama_value_sum(const float* e, const float* vc, int64_t T, int64_t D, float inv, float* out) {
  if constexpr (ND > 1) {
    if (D < 16 * ND) return llama_value_sum<ND - 1>(e, vc, T, D, inv, out);
  }
  llama_value_sum_nd<ND>(e, vc, T, inv, out);
}
#endif

// Attention of query head h of batch row b, all M tree rows, over cache positions [0, past_len + M):
// scores = q . k (a skinny product, the keys as weight rows) * scaling + mask, softmax with
// exp_accurate, out = sum_t p_t v_t. Writes ws.attn[b * M + m, h * D : (h + 1) * D].
// The AVX-512 build computes the same values in the same order 16 lanes at a time (scores of fewer
// than 4 rows 16 keys per step, the softmax 16 positions per step, the value sums 16 dims per step).
static inline void llama_attention_head(const LlamaForwardParams& p, const LlamaForwardWorkspace& ws, int64_t layer,
                                        int64_t b, int64_t h, float* qh, float* scores, float* oh) {
  const int64_t M = p.M, D = p.head_dim, T = p.past_len + M, QD = p.n_heads * D;
  const int64_t g = h / (p.n_heads / p.n_kv_heads);
  const float* kc = p.k_cache[layer] + (b * p.n_kv_heads + g) * p.cache_cap * D;
  const float* vc = p.v_cache[layer] + (b * p.n_kv_heads + g) * p.cache_cap * D;
  for (int64_t m = 0; m < M; ++m) memcpy(qh + m * D, ws.q + (b * M + m) * QD + h * D, D * sizeof(float));
#if defined(RADAR_SKINNY_AVX512)
  const bool vec = D % 16 == 0 && D <= 256;
#else
  const bool vec = false;
#endif
  if (vec && M < kSkinnyMR) {
#if defined(RADAR_SKINNY_AVX512)
    for (int64_t m = 0; m < M; ++m) llama_scores_row16(qh + m * D, kc, T, D, scores + m * T);
#endif
  } else {
    SkinnyLinearParams s{qh, kc, nullptr, scores, M, T, D};
    skinny_linear_blocks_native(s, 0, skinny_linear_blocks(s));
  }
  for (int64_t m = 0; m < M; ++m) {
    float* sr = scores + m * T;
    const float* mr = p.mask + (b * M + m) * p.mask_cols;
    float* out = ws.attn + (b * M + m) * QD + h * D;
#if defined(RADAR_SKINNY_AVX512)
    if (vec) {
      const __m512 sc = _mm512_set1_ps(p.scaling);
      __m512 mxv = _mm512_set1_ps(kNegInf);
      int64_t t = 0;
      for (; t + 16 <= T; t += 16) {
        const __m512 v = _mm512_add_ps(_mm512_mul_ps(_mm512_loadu_ps(sr + t), sc), _mm512_loadu_ps(mr + t));
        _mm512_storeu_ps(sr + t, v);
        mxv = _mm512_max_ps(mxv, v);
      }
      float mx = _mm512_reduce_max_ps(mxv);
      for (; t < T; ++t) {
        sr[t] = sr[t] * p.scaling + mr[t];
        mx = sr[t] > mx ? sr[t] : mx;
      }
      const __m512 mv = _mm512_set1_ps(mx);
      __m512 lanes = _mm512_setzero_ps();
      for (t = 0; t + 16 <= T; t += 16) {
        const __m512 e = llama_exp16(_mm512_sub_ps(_mm512_loadu_ps(sr + t), mv));
        _mm512_storeu_ps(sr + t, e);
        lanes = _mm512_add_ps(lanes, e);
      }
      if (t < T) {  // the last T % 16 positions in lanes 0.. (t % 16 == 0 here), the other lanes + 0
        const __mmask16 tail = static_cast<__mmask16>((1u << (T - t)) - 1u);
        const __m512 e = _mm512_maskz_mov_ps(tail, llama_exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(tail, sr + t), mv)));
        _mm512_mask_storeu_ps(sr + t, tail, e);
        lanes = _mm512_add_ps(lanes, e);
      }
      float ls[16];
      _mm512_storeu_ps(ls, lanes);
      for (int w = 8; w >= 1; w /= 2)
        for (int l = 0; l < w; ++l) ls[l] += ls[l + w];
      llama_value_sum(sr, vc, T, D, 1.0f / ls[0], out);
      continue;
    }
#endif
    float mx = kNegInf;
    for (int64_t t = 0; t < T; ++t) {
      sr[t] = sr[t] * p.scaling + mr[t];
      mx = sr[t] > mx ? sr[t] : mx;
    }
    float lanes[16] = {};
    int64_t t = 0;
    for (; t + 16 <= T; t += 16)
      for (int l = 0; l < 16; ++l) {
        const float e = exp_accurate(sr[t + l] - mx);
        sr[t + l] = e;
        lanes[l] += e;
      }
    for (; t < T; ++t) {
      sr[t] = exp_accurate(sr[t] - mx);
      lanes[t % 16] += sr[t];
    }
    for (int w = 8; w >= 1; w /= 2)
      for (int l = 0; l < w; ++l) lanes[l] += lanes[l + w];
    for (int64_t d = 0; d < D; ++d) oh[d] = 0.0f;
    for (int64_t u = 0; u < T; ++u) {
      const float e = sr[u];
      if (e == 0.0f) continue;  // hidden (masked) entries: exactly nothing to add
      const float* vr = vc + u * D;
      for (int64_t d = 0; d < D; ++d) oh[d] += e * vr[d];
    }
    const float inv = 1.0f / lanes[0];
    for (int64_t d = 0; d < D; ++d) out[d] = oh[d] * inv;
  }
}

// silu(g) * u = g / (1 + exp(-g)) * u; exp_accurate saturates at exp(88), where the quotient is ~0 anyway.
static inline float llama_silu_mul(float g, float u) { return g / (1.0f + exp_accurate(-g)) * u; }

// x[:, c0:c1] += y[:, c0:c1] for rows of N columns.
static inline void llama_residual(float* x, const float* y, int64_t rows, int64_t N, int64_t c0, int64_t c1) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = c0; c < c1; ++c) x[r * N + c] = x[r * N + c] + y[r * N + c];
}

static inline int64_t llama_block_col(const SkinnyLinearParams& s, int64_t block) {
  return block * kSkinnyNR < s.N ? block * kSkinnyNR : s.N;
}

// Phases of one forward: embedding, EAGLE's fc (no work items elsewhere), 6 per layer (q/k/v, rotary,
// attention, o, gate/up, down), the LM head.
static inline int64_t llama_n_phases(const LlamaForwardParams& p) { return 5 + 6 * p.n_layers; }

// Greedy mode's LM head (p.argmax): three phases. 1: per row, the final norm, the captures and the int8 rows;
// 2: the groups' bounds (kernels/argmax_head.h) in chunks of a_chunk groups; 3: per head row, its candidates'
// exact logits and the first largest.
static inline void llama_argmax_head(const LlamaForwardParams& p, const LlamaForwardWorkspace& ws,
                                     LlamaPhaseCounters* ph) {
  const int64_t R = p.B * p.M, H = p.H, M = p.M, nb = H / 32;
  const ArgmaxHead& w = *p.argmax;
  const int64_t G = argmax_groups(w.N), RH = p.logits_last_only ? p.B : R, stride = G * kArgmaxGroup;
  const ArgmaxRows rows{p.a_hq, p.a_s, p.a_t, p.a_c, H};
  llama_phase(*ph++, R, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) {
      for (int64_t i = 0; i < p.n_capture; ++i)
        if (p.capture_slots[i] == p.n_layers) memcpy(p.capture_out[i] + r * H, ws.x + r * H, H * sizeof(float));
      if (p.logits_last_only && r % M != M - 1) continue;
      const int64_t rh = p.logits_last_only ? r / M : r;
      float* hr = p.a_h + rh * H;
      llama_rms_norm(ws.x + r * H, p.final_norm, hr, 1, H, p.eps);
      if (!p.logits_last_only)
        for (int64_t i = 0; i < p.n_capture; ++i)
          if (p.capture_slots[i] == p.n_layers + 1) memcpy(p.capture_out[i] + r * H, hr, H * sizeof(float));
      const bool ok = argmax_quantize_row(hr, H, p.a_hq + rh * H, p.a_s + rh * nb, p.a_t + rh * nb, p.a_c + rh * nb);
      p.a_bad[rh] = !ok;
      if (!ok) {  // its bounds are not used: zeros keep the groups' arithmetic finite
        memset(p.a_hq + rh * H, 0, H);
        for (int64_t b = 0; b < nb; ++b) p.a_s[rh * nb + b] = p.a_c[rh * nb + b] = 0.0f, p.a_t[rh * nb + b] = 0;
      }
    }
  });
  llama_phase(*ph++, G, p.a_chunk, [&](int64_t lo, int64_t hi) {
    float* lo16 = p.a_lo + (lo / p.a_chunk) * RH * kArgmaxGroup;
    for (int64_t i = 0; i < RH * kArgmaxGroup; ++i) lo16[i] = -INFINITY;
    argmax_groups(w, rows, RH, lo, hi, p.a_hi, stride, lo16);
  });
  const SkinnyLinearParams head = linear_params(p.lm_head, p.a_h, nullptr, 1);
  const int64_t n_chunks = (G + p.a_chunk - 1) / p.a_chunk;
  llama_phase(*ph++, RH, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) {
      const float* x = p.a_h + r * H;
      if (p.a_bad[r]) {
        p.argmax_out[r] = argmax_full_row(head, x, w.N);
        p.argmax_cand[r] = w.N;
        continue;
      }
      float L = -INFINITY;
      for (int64_t k = 0; k < n_chunks; ++k)
        for (int64_t l = 0; l < kArgmaxGroup; ++l) L = std::fmax(L, p.a_lo[(k * RH + r) * kArgmaxGroup + l]);
      p.argmax_out[r] = argmax_resolve_row(head, x, p.a_hi + r * stride, w.N, L, p.argmax_cand + r);
    }
  });
}

// The whole forward, as thread tid of nth (every thread calls it; see the top of the file). phases:
// llama_n_phases(p) zeroed counters shared by the threads.
static inline void llama_forward_thread(const LlamaForwardParams& p, const LlamaForwardWorkspace& ws,
                                        LlamaPhaseCounters* phases, int tid, int nth) {
  const int64_t R = p.B * p.M, H = p.H, D = p.head_dim, M = p.M, T = p.past_len + M;
  const int64_t QD = p.n_heads * D, KD = p.n_kv_heads * D;
  float* h = ws.per_thread + tid * ws.thread_floats;  // [R, H] this thread's normed x ([R, 2H] at EAGLE's layer 0)
  float* qh = h + R * llama_attn_in0(p);              // [M, D]
  float* scores = qh + M * D;                         // [M, T]
  float* oh = scores + M * T;                         // [D]
  LlamaPhaseCounters* ph = phases;
  // the x_key of the products of the phase at ph (0: no reuse of the AMX split of x)
  const auto key = [&](const LlamaPhaseCounters* at) -> uint64_t {
    return p.x_key_base ? p.x_key_base + static_cast<uint64_t>(at - phases) : 0;
  };
  // Phase results that every later phase reads are complete when llama_phase returns; captures and
  // norms are recomputed by each thread that claims work in a phase needing them (norm: R * H flops).
  const bool eagle = p.hidden != nullptr, eagle_fc = eagle && p.fc.N > 0;
  llama_phase(*ph++, R, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) {
      memcpy((eagle ? ws.emb : ws.x) + r * H, p.embed + p.tokens[r] * H, H * sizeof(float));
      if (eagle && !eagle_fc) memcpy(ws.x + r * H, p.hidden + r * H, H * sizeof(float));
    }
  });
  {
    const SkinnyLinearParams fc = linear_params(p.fc, p.hidden, ws.x, R, key(ph));
    const int64_t nb = eagle_fc ? skinny_linear_blocks(fc) : 0;
    llama_phase(*ph++, nb, llama_block_chunk(nb, nth, R, p.fc), [&](int64_t lo, int64_t hi) { llama_products(&fc, 1, lo, hi); });
  }
  for (int64_t l = 0; l < p.n_layers; ++l) {
    const LlamaLayerWeights& L = p.layers[l];
    const SkinnyLinearParams qkv[3] = {linear_params(L.q, h, ws.q, R, key(ph)), linear_params(L.k, h, ws.k, R, key(ph)),
                                       linear_params(L.v, h, ws.v, R, key(ph))};
    const int64_t qkv_blocks = skinny_linear_blocks(qkv[0]) + skinny_linear_blocks(qkv[1]) + skinny_linear_blocks(qkv[2]);
    bool normed = false;
    llama_phase(*ph++, qkv_blocks, llama_block_chunk(qkv_blocks, nth, R, L.q), [&](int64_t lo, int64_t hi) {
      if (!normed) {
        if (lo == 0)  // the thread that takes the first chunk also keeps the layer's input
          for (int64_t i = 0; i < p.n_capture; ++i)
            if (p.capture_slots[i] == l) memcpy(p.capture_out[i], ws.x, R * H * sizeof(float));
        if (eagle && l == 0) {  // [RMSNorm(embedding) | RMSNorm(x)]
          llama_rms_norm(ws.emb, L.input_norm, h, R, H, p.eps, 2 * H);
          llama_rms_norm(ws.x, p.hidden_norm, h + H, R, H, p.eps, 2 * H);
        } else {
          llama_rms_norm(ws.x, L.input_norm, h, R, H, p.eps);
        }
        normed = true;
      }
      llama_products(qkv, 3, lo, hi);
    });
    // rotary on q (in place) and k, then k and v into the cache: items (row, head) over Hq + Hkv heads
    const int64_t heads = p.n_heads + p.n_kv_heads;
    llama_phase(*ph++, R * heads, heads, [&](int64_t lo, int64_t hi) {
      for (int64_t it = lo; it < hi; ++it) {
        const int64_t r = it / heads, hd = it % heads, b = r / M, m = r % M;
        const float* cs = p.cos + r * D;
        const float* sn = p.sin + r * D;
        if (hd < p.n_heads) {
          llama_rotary(ws.q + r * QD + hd * D, cs, sn, D);
          continue;
        }
        const int64_t g = hd - p.n_heads;
        float* kr = ws.k + r * KD + g * D;
        llama_rotary(kr, cs, sn, D);
        const int64_t slot = ((b * p.n_kv_heads + g) * p.cache_cap + p.past_len + m) * D;
        memcpy(p.k_cache[l] + slot, kr, D * sizeof(float));
        memcpy(p.v_cache[l] + slot, ws.v + r * KD + g * D, D * sizeof(float));
      }
    });
    // Contiguous heads per thread: the query heads of one K/V head mostly on one thread, which reads that
    // head's cache from memory once and then from its own cache (chunks of 1 spread them over both threads).
    llama_phase(*ph++, p.B * p.n_heads, (p.B * p.n_heads + nth - 1) / nth, [&](int64_t lo, int64_t hi) {
      for (int64_t it = lo; it < hi; ++it) llama_attention_head(p, ws, l, it / p.n_heads, it % p.n_heads, qh, scores, oh);
    });
    {
      const SkinnyLinearParams o = linear_params(L.o, ws.attn, ws.tmp, R, key(ph));
      const int64_t nb = skinny_linear_blocks(o);
      llama_phase(*ph++, nb, llama_block_chunk(nb, nth, R, L.o), [&](int64_t lo, int64_t hi) {
        skinny_linear_blocks_native(o, lo, hi);
        llama_residual(ws.x, ws.tmp, R, H, llama_block_col(o, lo), llama_block_col(o, hi));
      });
    }
    {
      // gate and up blocks claimed together, so one thread holds both halves of its act columns
      const SkinnyLinearParams g = linear_params(L.gate, h, ws.gate, R, key(ph)), u = linear_params(L.up, h, ws.up, R, key(ph));
      const int64_t nb = skinny_linear_blocks(g), I = L.gate.N;
      normed = false;
      llama_phase(*ph++, nb, llama_block_chunk(2 * nb, nth, R, L.gate), [&](int64_t lo, int64_t hi) {
        if (!normed) {
          llama_rms_norm(ws.x, L.post_norm, h, R, H, p.eps);
          normed = true;
        }
        skinny_linear_blocks_native(g, lo, hi);
        skinny_linear_blocks_native(u, lo, hi);
        const int64_t c0 = llama_block_col(g, lo), c1 = llama_block_col(g, hi);
        for (int64_t r = 0; r < R; ++r)
          for (int64_t c = c0; c < c1; ++c) ws.act[r * I + c] = llama_silu_mul(ws.gate[r * I + c], ws.up[r * I + c]);
      });
    }
    {
      const SkinnyLinearParams dn = linear_params(L.down, ws.act, ws.tmp, R, key(ph));
      const int64_t nb = skinny_linear_blocks(dn);
      llama_phase(*ph++, nb, llama_block_chunk(nb, nth, R, L.down), [&](int64_t lo, int64_t hi) {
        skinny_linear_blocks_native(dn, lo, hi);
        llama_residual(ws.x, ws.tmp, R, H, llama_block_col(dn, lo), llama_block_col(dn, hi));
      });
    }
  }
  if (p.argmax) {
    llama_argmax_head(p, ws, ph);
    return;
  }
  const SkinnyLinearParams head = linear_params(p.lm_head, h, p.logits, p.logits_last_only ? p.B : R, key(ph));
  const int64_t nb = skinny_linear_blocks(head);
  bool normed = false;
  llama_phase(*ph++, nb, llama_block_chunk(nb, nth, head.M, p.lm_head), [&](int64_t lo, int64_t hi) {
    if (!normed) {
      if (lo == 0)
        for (int64_t i = 0; i < p.n_capture; ++i)
          if (p.capture_slots[i] == p.n_layers) memcpy(p.capture_out[i], ws.x, R * H * sizeof(float));
      if (p.logits_last_only) {  // each batch row's last tree row, into h's first B rows
        for (int64_t b = 0; b < p.B; ++b) llama_rms_norm(ws.x + (b * M + M - 1) * H, p.final_norm, h + b * H, 1, H, p.eps);
      } else {
        llama_rms_norm(ws.x, p.final_norm, h, R, H, p.eps);
        if (lo == 0)
          for (int64_t i = 0; i < p.n_capture; ++i)
            if (p.capture_slots[i] == p.n_layers + 1) memcpy(p.capture_out[i], h, R * H * sizeof(float));
      }
      normed = true;
    }
    llama_products(&head, 1, lo, hi);
  });
}

// The AVX-512 build, in csrc/llama_forward_avx512.cpp (call only where skinny_linear_uses_avx512()).
void llama_forward_thread_avx512(const LlamaForwardParams& p, const LlamaForwardWorkspace& ws,
                                 LlamaPhaseCounters* phases, int tid, int nth);

}  // namespace kernels
}  // namespace radar_ext
