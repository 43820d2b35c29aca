// exp_accurate / exp_float / tanh_float / log_accurate against libm in double, and ranks_before's
// total order (torch.topk's: NaN above +inf, ties to the lower index).
#include <cmath>
#include <cstdlib>

#include "check.h"
#include "kernels/common.h"

using namespace radar_ext::kernels;

int main() {
  double worst = 0.0;
  for (int k = 0; k <= 2000000; ++k) {
    const float x = -87.0f + 87.5f * static_cast<float>(k) / 2000000.0f;  // [-87, 0.5]
    const double want = std::exp(static_cast<double>(x));
    const double rel = std::fabs(exp_accurate(x) - want) / want;
    worst = rel > worst ? rel : worst;
  }
  std::printf("exp_accurate max relative error on [-87, 0.5]: %.3g\n", worst);
  CHECK(worst < 3e-7);  // ~2.5 float ulp
  CHECK(exp_accurate(0.0f) == 1.0f);
  CHECK(exp_accurate(-INFINITY) == 0.0f);
  CHECK(exp_accurate(-100.0f) == 0.0f);
  CHECK(exp_accurate(NAN) == 0.0f);
  CHECK(ranks_before(2.0f, 5, 1.0f, 0));
  CHECK(ranks_before(1.0f, 0, 1.0f, 1));
  CHECK(!ranks_before(1.0f, 1, 1.0f, 0));
  CHECK(!ranks_before(1.0f, 3, 1.0f, 3));
  CHECK(ranks_before(-INFINITY, 0, -INFINITY, 1));
  // NaN ranks above everything, +inf included; two NaNs tie, the lower index first.
  CHECK(ranks_before(NAN, 7, INFINITY, 0));
  CHECK(!ranks_before(INFINITY, 0, NAN, 7));
  CHECK(ranks_before(NAN, 2, NAN, 3));
  CHECK(!ranks_before(NAN, 3, NAN, 2));
  CHECK(!ranks_before(NAN, 3, NAN, 3));
  CHECK(!ranks_before(-INFINITY, 0, NAN, 9));
  CHECK(ranks_before(NAN, -1, NAN, 0));  // the CUDA rounds' "before everything" start

  // exp_float: exp_accurate's bits where that is defined, the whole range beyond it.
  CHECK(exp_float(-3.5f) == exp_accurate(-3.5f));
  CHECK(std::isnan(exp_float(NAN)));
  CHECK(exp_float(89.0f) == INFINITY && exp_float(INFINITY) == INFINITY);
  CHECK(std::fabs(exp_float(88.5f) / std::exp(88.5) - 1.0) < 1e-6);
  double worst_tanh = 0.0;
  for (int k = -200000; k <= 200000; ++k) {
    const float x = 12.0f * static_cast<float>(k) / 200000.0f;
    const double want = std::tanh(static_cast<double>(x));
    const double err = std::fabs(tanh_float(x) - want) / (std::fabs(want) > 1e-30 ? std::fabs(want) : 1.0);
    worst_tanh = err > worst_tanh ? err : worst_tanh;
    CHECK(tanh_float(-x) == -tanh_float(x));
  }
  std::printf("tanh_float max relative error on [-12, 12]: %.3g\n", worst_tanh);
  CHECK(worst_tanh < 1e-6);
  CHECK(std::isnan(tanh_float(NAN)) && tanh_float(INFINITY) == 1.0f && tanh_float(-INFINITY) == -1.0f);
  CHECK(tanh_float(1e-30f) == 1e-30f);

  double worst_log = 0.0;
  for (double s = 1e-300; s < 1e300; s *= 1.37) {
    const double err = std::fabs(log_accurate(s) - std::log(s)) / std::fabs(std::log(s) == 0 ? 1 : std::log(s));
    worst_log = err > worst_log ? err : worst_log;
  }
  for (int k = 1; k <= 100000; ++k) {  // near 1, where log(s) is small
    const double s = 0.5 + k * 1e-5;
    const double err = std::fabs(log_accurate(s) - std::log(s));
    worst_log = err > worst_log ? err : worst_log;
  }
  std::printf("log_accurate max error: %.3g\n", worst_log);
  CHECK(worst_log < 1e-15);
  CHECK(log_accurate(1.0) == 0.0 && log_accurate(0.0) == -INFINITY && log_accurate(INFINITY) == INFINITY);
  CHECK(std::isnan(log_accurate(-1.0)) && std::isnan(log_accurate(NAN)));
  TEST_MAIN_END();
}
