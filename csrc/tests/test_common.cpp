// exp_accurate against libm exp in double, and ranks_before's total order.
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
  TEST_MAIN_END();
}
