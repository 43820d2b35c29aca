// policy_step_row_host (and so each phase's element function) against direct double formulas, with
// and without an LSTM; dot_f32's fixed summation order; softmax_row.
#include <cmath>
#include <random>
#include <vector>

#include "check.h"
#include "kernels/policy_step.h"

using namespace radar_ext::kernels;

static double sig(double x) { return 1.0 / (1.0 + std::exp(-x)); }

static double dot(const float* w, const std::vector<double>& x) {
  double s = 0.0;
  for (size_t k = 0; k < x.size(); ++k) s += double(w[k]) * x[k];
  return s;
}

// One configuration: B rows, F features, H hidden (0: no LSTM), G, O. Checks every output.
static void check_rows(int64_t B, int64_t F, int64_t H, int64_t G, int64_t O, std::mt19937& rng) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(B * F), h(B * H), c(B * H), w_ih(4 * H * F), w_hh(4 * H * H), b(4 * H), w1(G * (H + F)),
      b1(G), w2(O * G), b2(O), probs(B * O), h_new(B * H), c_new(B * H);
  for (auto* v : {&x, &h, &c, &w_ih, &w_hh, &b, &w1, &b1, &w2, &b2})
    for (auto& e : *v) e = normal(rng) * 0.5f;
  if (H) b[0] = 60.0f;  // a saturated gate stays finite
  const PolicyStepParams p{x.data(), h.data(), c.data(), w_ih.data(), w_hh.data(), b.data(), w1.data(), b1.data(),
                           w2.data(), b2.data(), probs.data(), h_new.data(), c_new.data(), B, F, H, G, O};
  std::vector<float> scratch(policy_scratch_floats(p));
  CHECK(policy_scratch_floats(p) == 4 * H + H + F + G + O);
  for (int64_t r = 0; r < B; ++r) policy_step_row_host(p, r, scratch.data());
  for (int64_t r = 0; r < B; ++r) {
    const std::vector<double> xr(x.begin() + r * F, x.begin() + (r + 1) * F), hr(h.begin() + r * H, h.begin() + (r + 1) * H);
    std::vector<double> z;
    for (int64_t k = 0; k < H; ++k) {
      double g4[4];
      for (int q = 0; q < 4; ++q) {
        const int64_t j = q * H + k;
        g4[q] = b[j] + dot(&w_ih[j * F], xr) + dot(&w_hh[j * H], hr);
      }
      const double cw = sig(g4[1]) * c[r * H + k] + sig(g4[0]) * std::tanh(g4[2]);
      const double hw = sig(g4[3]) * std::tanh(cw);
      CHECK(std::fabs(c_new[r * H + k] - cw) < 1e-5 && std::fabs(h_new[r * H + k] - hw) < 1e-5);
      z.push_back(h_new[r * H + k]);  // the MLP sees the float32 h_new, as the kernel does
    }
    z.insert(z.end(), xr.begin(), xr.end());
    std::vector<double> hidden(G), logits(O);
    for (int64_t g = 0; g < G; ++g) hidden[g] = std::max(0.0, b1[g] + dot(&w1[g * (H + F)], z));
    double m = -1e300, sum = 0.0;
    for (int64_t o = 0; o < O; ++o) m = std::max(m, logits[o] = b2[o] + dot(&w2[o * G], hidden));
    for (int64_t o = 0; o < O; ++o) sum += std::exp(logits[o] - m);
    double total = 0.0;
    for (int64_t o = 0; o < O; ++o) {
      CHECK(std::fabs(probs[r * O + o] - std::exp(logits[o] - m) / sum) < 2e-6);
      total += probs[r * O + o];
    }
    CHECK(std::fabs(total - 1.0) < 1e-5);
  }
}

int main() {
  std::mt19937 rng(7);
  check_rows(3, 6, 5, 7, 2, rng);      // LSTM (RADAR-shaped, small), odd sizes: dot tails
  check_rows(2, 49, 0, 128, 9, rng);   // no LSTM (LTD's depth/size heads)
  check_rows(1, 10, 128, 128, 2, rng); // RADAR's shipped shape at W = 10
  check_rows(1, 1, 0, 1, 1, rng);      // smallest: one output, softmax of one value is 1

  // dot_f32: 8 partial sums by k mod 8, combined ((0+4)+(2+6))+((1+5)+(3+7)), then the tail in order.
  std::vector<float> w(19), v(19);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  for (int k = 0; k < 19; ++k) w[k] = normal(rng), v[k] = normal(rng);
  float acc[8];
  for (int l = 0; l < 8; ++l) acc[l] = std::fma(w[8 + l], v[8 + l], w[l] * v[l]);
  float want = ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
  for (int k = 16; k < 19; ++k) want = std::fma(w[k], v[k], want);
  CHECK(dot_f32(w.data(), v.data(), 19) == want);
  CHECK(dot_f32(w.data(), v.data(), 0) == 0.0f);

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
