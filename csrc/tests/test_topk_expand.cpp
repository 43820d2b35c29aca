// topk_expand row passes against a brute-force double computation (sort with the tie rule), NaN rows,
// and the CUDA kernel's algorithm (W arg-best rounds, one thread per sum lane) run here on the same
// header functions: it must give the host path's bits.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "check.h"
#include "kernels/topk_expand.h"

using namespace radar_ext::kernels;

struct Out {
  std::vector<float> child_logp, child_scores, next_scores;
  std::vector<int64_t> child_ids, next_parent, next_ids;
};

Out run(const std::vector<float>& logits, const std::vector<float>& beams, int64_t B, int64_t N, int64_t Vd,
        int64_t W, float temperature) {
  Out o{std::vector<float>(B * N * W), std::vector<float>(B * N * W), std::vector<float>(B * W),
        std::vector<int64_t>(B * N * W), std::vector<int64_t>(B * W), std::vector<int64_t>(B * W)};
  TopkExpandParams p{logits.data(), beams.data(), B, N, Vd, W, 1.0f / temperature, o.child_logp.data(),
                     o.child_ids.data(), o.child_scores.data(), o.next_scores.data(), o.next_parent.data(),
                     o.next_ids.data()};
  for (int64_t r = 0; r < B * N; ++r) topk_expand_row_host(p, r);
  for (int64_t b = 0; b < B; ++b) topk_expand_select(p, b);
  return o;
}

void check_case(int64_t B, int64_t N, int64_t Vd, int64_t W, float temperature, std::mt19937& rng, bool grid) {
  std::normal_distribution<float> normal(0.0f, 3.0f);
  std::uniform_int_distribution<int> level(-8, 8);
  std::vector<float> logits(B * N * Vd), beams(B * N);
  for (auto& v : logits) v = grid ? (level(rng) == 8 ? -INFINITY : level(rng) * 0.5f) : normal(rng);
  for (auto& v : beams) v = grid ? -std::abs(level(rng) * 0.5f) : -std::abs(normal(rng));
  const Out o = run(logits, beams, B, N, Vd, W, temperature);
  for (int64_t row = 0; row < B * N; ++row) {
    const float* x = logits.data() + row * Vd;
    std::vector<int64_t> order(Vd);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return x[a] > x[b]; });
    const double m = x[order[0]];
    double s = 0.0;
    for (int64_t i = 0; i < Vd; ++i) s += std::exp((x[i] - m) / temperature);
    for (int64_t j = 0; j < W; ++j) {
      CHECK(o.child_ids[row * W + j] == order[j]);
      const double want = m == -INFINITY ? -INFINITY : (x[order[j]] - m) / temperature - std::log(s);
      const double got = o.child_logp[row * W + j];
      CHECK(got == want || std::fabs(got - want) <= 1e-5 + 1e-5 * std::fabs(want));
    }
  }
  for (int64_t b = 0; b < B; ++b) {
    std::vector<int64_t> flat(N * W);
    std::iota(flat.begin(), flat.end(), 0);
    const float* sc = o.child_scores.data() + b * N * W;
    std::stable_sort(flat.begin(), flat.end(), [&](int64_t a, int64_t c) { return sc[a] > sc[c]; });
    for (int64_t k = 0; k < W; ++k) {
      CHECK(o.next_parent[b * W + k] == flat[k] / W);
      CHECK(o.next_ids[b * W + k] == o.child_ids[b * N * W + flat[k]]);
      CHECK(o.next_scores[b * W + k] == sc[flat[k]]);
    }
  }
}

// The CUDA rows kernel (csrc/cuda/kernels.cu) with its block reductions done sequentially: a total
// order has one best element, whatever order a block compares them in.
void cuda_like_row(const TopkExpandParams& p, int64_t row) {
  const float* x = p.logits + row * p.Vd;
  float prev_v = NAN, m = -INFINITY;
  int64_t prev_i = -1;
  for (int64_t r = 0; r < p.W; ++r) {
    float best_v = -INFINITY;
    int64_t best_i = INT64_MAX;
    for (int64_t i = 0; i < p.Vd; ++i)
      if (ranks_before(prev_v, prev_i, x[i], i) && ranks_before(x[i], i, best_v, best_i)) best_v = x[i], best_i = i;
    prev_v = best_v, prev_i = best_i;
    if (r == 0) m = best_v;
    p.child_ids[row * p.W + r] = best_i;
  }
  if (m == -INFINITY) return topk_expand_finish_row(p, row, m, 0.0);
  double lanes[kSumLanes];
  for (int k = 0; k < kSumLanes; ++k) lanes[k] = exp_sum_lane(x, p.Vd, m, p.inv_temperature, k);
  topk_expand_finish_row(p, row, m, log_of_lanes(lanes));
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// Host path == the CUDA algorithm, bit for bit (ids, log-probs, scores, selection).
void check_cuda_algorithm(const std::vector<float>& logits, const std::vector<float>& beams, int64_t B, int64_t N,
                          int64_t Vd, int64_t W, float temperature) {
  const Out host = run(logits, beams, B, N, Vd, W, temperature);
  Out dev{std::vector<float>(B * N * W), std::vector<float>(B * N * W), std::vector<float>(B * W),
          std::vector<int64_t>(B * N * W), std::vector<int64_t>(B * W), std::vector<int64_t>(B * W)};
  TopkExpandParams p{logits.data(), beams.data(), B, N, Vd, W, 1.0f / temperature, dev.child_logp.data(),
                     dev.child_ids.data(), dev.child_scores.data(), dev.next_scores.data(), dev.next_parent.data(),
                     dev.next_ids.data()};
  for (int64_t r = 0; r < B * N; ++r) cuda_like_row(p, r);
  for (int64_t b = 0; b < B; ++b) topk_expand_select(p, b);
  CHECK(dev.child_ids == host.child_ids);
  CHECK(same_bits(dev.child_logp, host.child_logp));
  CHECK(same_bits(dev.child_scores, host.child_scores));
  CHECK(same_bits(dev.next_scores, host.next_scores));
  CHECK(dev.next_parent == host.next_parent && dev.next_ids == host.next_ids);
}

// Rows with NaNs: ids are the NaNs first (by id), then the rest by value, ties to the lower id; every
// id is a real one; log-probs and scores are NaN; NaN scores win the selection, lower flat index first.
void check_nan_rows(std::mt19937& rng) {
  const int64_t B = 2, N = 3, Vd = 300, W = 6;
  std::normal_distribution<float> normal(0.0f, 3.0f);
  std::vector<float> logits(B * N * Vd), beams(B * N, -1.0f);
  for (auto& v : logits) v = normal(rng);
  for (int64_t i = 0; i < Vd; ++i) logits[0 * Vd + i] = NAN;  // (0, 0): all NaN
  logits[1 * Vd + 200] = NAN;                                    // (0, 1): two NaNs past the first block
  logits[1 * Vd + 130] = NAN;
  for (int64_t i = 0; i < Vd; i += 7) logits[3 * Vd + i] = NAN;   // (1, 0): a NaN every 7
  logits[4 * Vd + 5] = NAN;                                       // (1, 1): one NaN
  for (int64_t i = 0; i < Vd; ++i) logits[5 * Vd + i] = -static_cast<float>(i);  // (1, 2): decreasing, so the
  logits[5 * Vd + 150] = NAN;  // blocks past the first W are all below the W-th: only a NaN-aware skip sees this
  const Out o = run(logits, beams, B, N, Vd, W, 0.7f);
  for (int64_t row = 0; row < B * N; ++row) {
    const float* x = logits.data() + row * Vd;
    std::vector<int64_t> order(Vd);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
      return (std::isnan(x[a]) && !std::isnan(x[b])) || x[a] > x[b];
    });
    const bool has_nan = std::any_of(x, x + Vd, [](float v) { return std::isnan(v); });
    for (int64_t j = 0; j < W; ++j) {
      CHECK(o.child_ids[row * W + j] == order[j]);
      CHECK(o.child_ids[row * W + j] >= 0 && o.child_ids[row * W + j] < Vd);
      CHECK(std::isnan(o.child_logp[row * W + j]) == has_nan);
      CHECK(std::isnan(o.child_scores[row * W + j]) == has_nan);
    }
  }
  CHECK(o.child_ids[0] == 0 && o.child_ids[5] == 5);                 // all NaN: ids 0..W-1
  CHECK(o.child_ids[W] == 130 && o.child_ids[W + 1] == 200);         // the NaNs, lower id first
  CHECK(o.child_ids[5 * W] == 150 && o.child_ids[5 * W + 1] == 0);
  for (int64_t k = 0; k < W; ++k) CHECK(o.next_parent[k] == 0 && o.next_ids[k] == k);  // batch 0: beam 0's NaNs
  check_cuda_algorithm(logits, beams, B, N, Vd, W, 0.7f);
}

int main() {
  std::mt19937 rng(1234);
  const int64_t sizes[][4] = {{1, 1, 1, 1}, {2, 3, 17, 5}, {1, 10, 8192, 10}, {3, 2, 100, 100}, {2, 4, 65, 16}};
  for (const auto& s : sizes)
    for (float t : {1.0f, 0.5f, 2.0f})
      for (bool grid : {false, true}) check_case(s[0], s[1], s[2], s[3], t, rng, grid);
  // The CUDA kernel's algorithm gives the host's bits, on random and on tie-heavy grid rows.
  for (const auto& s : sizes)
    for (bool grid : {false, true}) {
      std::normal_distribution<float> normal(0.0f, 3.0f);
      std::uniform_int_distribution<int> level(-8, 8);
      std::vector<float> logits(s[0] * s[1] * s[2]), beams(s[0] * s[1]);
      for (auto& v : logits) v = grid ? (level(rng) == 8 ? -INFINITY : level(rng) * 0.5f) : normal(rng);
      for (auto& v : beams) v = -std::abs(normal(rng));
      check_cuda_algorithm(logits, beams, s[0], s[1], s[2], s[3], 0.6f);
    }
  check_nan_rows(rng);
  // All -inf row: ids 0..W-1, log-probs -inf.
  std::vector<float> dead(8, -INFINITY), zero(1, 0.0f);
  const Out o = run(dead, zero, 1, 1, 8, 3, 1.0f);
  CHECK(o.child_ids[0] == 0 && o.child_ids[1] == 1 && o.child_ids[2] == 2);
  CHECK(o.child_logp[0] == -INFINITY && o.next_scores[2] == -INFINITY);
  TEST_MAIN_END();
}
