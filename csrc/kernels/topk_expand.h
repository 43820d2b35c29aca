// topk_expand: fused log-softmax + per-beam top-W + score accumulation + global top-W.
// Layout: logits [B, N, Vd] row-major float32, one "row" = one beam (b, n); outputs [B, N, W] and [B, W].
// Parallel split: rows are independent (CPU: at::parallel_for over rows; CUDA: one block per row),
// then one sequential selection per batch element b over its N*W children.
// Per row: pass 1 keeps the top W raw logits (no exp; the first entry is the row max), pass 2 sums
// exp((x - max) / T) in double lanes, then the W log-probs are (x - max) / T - log(sum).
// Ranking: ranks_before (common.h), torch.topk's order: NaN above +inf, ties to the lower id. A row
// with a NaN has a NaN max, so all its log-probs (and its children's scores) are NaN, as
// log_softmax gives; its top-W ids are its NaNs first, by id, then the rest by value.
// Same bits on CPU and CUDA: the ids are comparisons only; the sum adds lane k = i mod kSumLanes
// in increasing i, then the lanes in order 0..kSumLanes-1, on both devices (CPU: vector lanes,
// CUDA: kSumLanes threads); exp_accurate and log_accurate are libm-free, and nothing is contracted.
#pragma once

#include "common.h"

namespace radar_ext {
namespace kernels {

struct TopkExpandParams {
  const float* logits;       // [B, N, Vd]
  const float* beam_scores;  // [B, N], -inf = dead beam
  int64_t B, N, Vd, W;
  float inv_temperature;
  float* child_logp;         // [B, N, W]
  int64_t* child_ids;        // [B, N, W]
  float* child_scores;       // [B, N, W]
  float* next_scores;        // [B, W]
  int64_t* next_parent;      // [B, W]
  int64_t* next_ids;         // [B, W]
};

// Inserts (v, i) into the sorted list vals/ids of `count` <= W entries; returns the new count.
RADAR_HD RADAR_HOST_INLINE int64_t topw_insert(float* vals, int64_t* ids, int64_t count, int64_t W, float v, int64_t i) {
  if (count == W) {
    if (!ranks_before(v, i, vals[W - 1], ids[W - 1])) return count;
    --count;  // the last entry drops out
  }
  int64_t k = count;
  while (k > 0 && ranks_before(v, i, vals[k - 1], ids[k - 1])) {
    vals[k] = vals[k - 1];
    ids[k] = ids[k - 1];
    --k;
  }
  vals[k] = v;
  ids[k] = i;
  return count + 1;
}

// Log-prob of a child with raw logit x in a row with max m and log(sum exp((x - m) * inv_t)).
// A row whose max is -inf (all logits -inf) has no distribution: every child gets -inf.
// A row with a NaN has m = NaN (NaN ranks first), so x - m is NaN: every child gets NaN.
RADAR_HD RADAR_HOST_INLINE float child_log_prob(float x, float m, float inv_t, double log_sum) {
  if (m == kNegInf) return kNegInf;
  return static_cast<float>(static_cast<double>((x - m) * inv_t) - log_sum);
}

// Lanes of the row sum: lane k adds the elements i = k mod kSumLanes in increasing i.
constexpr int kSumLanes = 16;

// log of the row sum from its lane sums, added in lane order (both devices).
RADAR_HD inline double log_of_lanes(const double* lanes) {
  double s = 0.0;
  for (int k = 0; k < kSumLanes; ++k) s += lanes[k];
  return log_accurate(s);
}

// Lane k of the sum of exp((x - m) * inv_t) over one row (the CUDA path: one thread per lane).
RADAR_HD inline double exp_sum_lane(const float* x, int64_t Vd, float m, float inv_t, int k) {
  double acc = 0.0;
  for (int64_t i = k; i < Vd; i += kSumLanes) acc += static_cast<double>(exp_accurate((x[i] - m) * inv_t));
  return acc;
}

// Writes child_logp / child_scores of one row from its top-W ids (child_ids already filled).
RADAR_HD RADAR_HOST_INLINE void topk_expand_finish_row(const TopkExpandParams& p, int64_t row, float m, double log_sum) {
  const float* x = p.logits + row * p.Vd;
  const float beam = p.beam_scores[row];
  for (int64_t j = 0; j < p.W; ++j) {
    const int64_t o = row * p.W + j;
    const float lp = child_log_prob(x[p.child_ids[o]], m, p.inv_temperature, log_sum);
    p.child_logp[o] = lp;
    p.child_scores[o] = beam + lp;  // float32 sum, as in the reference
  }
}

// The best W of batch element b's N*W children by score, ties to the lower flat index n*W + j.
RADAR_HD inline void topk_expand_select(const TopkExpandParams& p, int64_t b) {
  const int64_t NW = p.N * p.W;
  const float* scores = p.child_scores + b * NW;
  float* vals = p.next_scores + b * p.W;
  int64_t* flat = p.next_parent + b * p.W;  // holds flat indices until the end
  int64_t count = 0;
  for (int64_t k = 0; k < NW; ++k) count = topw_insert(vals, flat, count, p.W, scores[k], k);
  for (int64_t k = 0; k < p.W; ++k) {
    const int64_t f = flat[k];
    p.next_ids[b * p.W + k] = p.child_ids[b * NW + f];
    flat[k] = f / p.W;
  }
}

// ---- host-only row passes, written in 16-lane blocks so the compiler vectorizes them ----------
#if !defined(__CUDA_ARCH__)
constexpr int kLanes = 16;

// Pass 1: top-W raw logits of one row into vals/ids (sorted by ranks_before). Blocks of 64 whose
// values are all <= the current W-th value are skipped after one vectorized count: nothing there
// can enter (an equal value has a higher id than the kept one).
RADAR_HOST_INLINE void topw_scan_row(const float* x, int64_t Vd, int64_t W, float* vals, int64_t* ids) {
  constexpr int64_t kBlock = 64;
  int64_t count = 0, i = 0;
  for (; i < W; ++i) count = topw_insert(vals, ids, count, W, x[i], i);
  for (; i + kBlock <= Vd; i += kBlock) {
    const float threshold = vals[W - 1];
    int above = 0;
    // !(x <= threshold): a NaN can enter (it ranks above any number); if the threshold is NaN,
    // nothing later can (a later NaN has a higher id), but the block is then just not skipped.
    for (int64_t k = 0; k < kBlock; ++k) above += !(x[i + k] <= threshold);
    if (above)
      for (int64_t k = 0; k < kBlock; ++k) count = topw_insert(vals, ids, count, W, x[i + k], i + k);
  }
  for (; i < Vd; ++i) count = topw_insert(vals, ids, count, W, x[i], i);
}

// Pass 2: log of the sum of exp((x - m) * inv_t) over one row, m = row max. Lane k accumulates
// the elements i = k mod kSumLanes in double (exp_sum_lane's order, vectorized), then log_of_lanes.
RADAR_HOST_INLINE double log_exp_sum_row(const float* x, int64_t Vd, float m, float inv_t) {
  static_assert(kLanes == kSumLanes, "the host's vector lanes are the sum's lanes");
  double acc[kLanes] = {0};
  int64_t i = 0;
  for (; i + kLanes <= Vd; i += kLanes)
    for (int k = 0; k < kLanes; ++k) acc[k] += static_cast<double>(exp_accurate((x[i + k] - m) * inv_t));
  const int64_t tail = Vd - i;
  for (int64_t k = 0; k < tail; ++k) acc[k] += static_cast<double>(exp_accurate((x[i + k] - m) * inv_t));
  return log_of_lanes(acc);
}

// One full row on the host: both passes, then the W log-probs and scores.
RADAR_HOST_INLINE void topk_expand_row_host(const TopkExpandParams& p, int64_t row) {
  const float* x = p.logits + row * p.Vd;
  float* vals = p.child_logp + row * p.W;  // raw top-W logits until topk_expand_finish_row
  int64_t* ids = p.child_ids + row * p.W;
  topw_scan_row(x, p.Vd, p.W, vals, ids);
  const float m = vals[0];
  const double log_sum = m == kNegInf ? 0.0 : log_exp_sum_row(x, p.Vd, m, p.inv_temperature);
  topk_expand_finish_row(p, row, m, log_sum);
}
#endif

}  // namespace kernels
}  // namespace radar_ext
