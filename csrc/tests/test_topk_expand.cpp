// topk_expand row passes against a brute-force double computation (sort with the tie rule).
#include <algorithm>
#include <cmath>
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

int main() {
  std::mt19937 rng(1234);
  const int64_t sizes[][4] = {{1, 1, 1, 1}, {2, 3, 17, 5}, {1, 10, 8192, 10}, {3, 2, 100, 100}, {2, 4, 65, 16}};
  for (const auto& s : sizes)
    for (float t : {1.0f, 0.5f, 2.0f})
      for (bool grid : {false, true}) check_case(s[0], s[1], s[2], s[3], t, rng, grid);
  // All -inf row: ids 0..W-1, log-probs -inf.
  std::vector<float> dead(8, -INFINITY), zero(1, 0.0f);
  const Out o = run(dead, zero, 1, 1, 8, 3, 1.0f);
  CHECK(o.child_ids[0] == 0 && o.child_ids[1] == 1 && o.child_ids[2] == 2);
  CHECK(o.child_logp[0] == -INFINITY && o.next_scores[2] == -INFINITY);
  TEST_MAIN_END();
}
