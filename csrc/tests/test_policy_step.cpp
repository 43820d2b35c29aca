// policy_cell_elem and softmax_row against direct double formulas.
#include <cmath>
#include <random>
#include <vector>

#include "check.h"
#include "kernels/policy_step.h"

using namespace radar_ext::kernels;

static double sig(double x) { return 1.0 / (1.0 + std::exp(-x)); }

int main() {
  const int64_t B = 3, H = 5, F = 4;
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  std::vector<float> gates(B * 4 * H), c(B * H), feats(B * F), h_new(B * H), c_new(B * H), z(B * (H + F));
  for (auto* v : {&gates, &c, &feats})
    for (auto& x : *v) x = normal(rng);
  gates[3] = 60.0f;   // saturated gates stay finite
  gates[H] = -60.0f;
  const PolicyCellParams p{gates.data(), c.data(), feats.data(), h_new.data(), c_new.data(), z.data(), B, H, F};
  for (int64_t b = 0; b < B; ++b)
    for (int64_t k = 0; k < H + F; ++k) policy_cell_elem(p, b, k);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t k = 0; k < H; ++k) {
      const float* g = gates.data() + b * 4 * H;
      const double cw = sig(g[H + k]) * c[b * H + k] + sig(g[k]) * std::tanh(double(g[2 * H + k]));
      const double hw = sig(g[3 * H + k]) * std::tanh(cw);
      CHECK(std::fabs(c_new[b * H + k] - cw) < 1e-5 && std::fabs(h_new[b * H + k] - hw) < 1e-5);
      CHECK(z[b * (H + F) + k] == h_new[b * H + k]);
    }
    for (int64_t f = 0; f < F; ++f) CHECK(z[b * (H + F) + H + f] == feats[b * F + f]);
  }
  const float in[4] = {1.0f, 1000.0f, -3.0f, 999.0f};
  float out[4];
  softmax_row(in, out, 4);
  const double e = std::exp(-1.0);
  CHECK(std::fabs(out[1] - 1.0 / (1.0 + e)) < 1e-6 && std::fabs(out[3] - e / (1.0 + e)) < 1e-6);
  CHECK(out[0] == 0.0f && out[2] == 0.0f);
  float one[1];
  softmax_row(in, one, 1);
  CHECK(one[0] == 1.0f);
  TEST_MAIN_END();
}
