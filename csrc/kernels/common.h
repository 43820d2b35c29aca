// Shared numerics of the radar_ext kernels, torch-free so CTest and nvcc can use them directly.
// RADAR_HD marks functions compiled for both host and device; it is empty for a plain C++ compiler.
// Everything here is exact IEEE float arithmetic: never build these with fast-math, because the
// results feed discrete decisions (top-W ids, stop, accept). Same bits on the host and on a GPU:
// no libm call (device expf / tanhf / log differ from glibc's by an ulp here and there), and no
// contraction of a * b + c into an FMA (setup.py: -ffp-contract=off for the host, --fmad=false for
// nvcc; CMakeLists.txt the same); an explicit fmaf is one rounding everywhere and stays.
#pragma once

#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__CUDACC__)
#define RADAR_HD __host__ __device__
#else
#define RADAR_HD
#endif

// Host row loops are always inlined into their caller, so a caller compiled for a wider ISA
// (target_clones in csrc/ops.cpp) gets them vectorized for that ISA.
#if defined(__GNUC__) && !defined(__CUDACC__)
#define RADAR_HOST_INLINE inline __attribute__((always_inline))
#else
#define RADAR_HOST_INLINE inline
#endif

namespace radar_ext {
namespace kernels {

constexpr float kNegInf = -INFINITY;

// Total order used for every ranking, torch.topk's: NaN first (above +inf), then larger value first;
// ties (equal values, or two NaNs) to the lower index. A total order, so a top-W of any row, NaN or
// not, is W real elements (a NaN-blind order left rounds with no pick: INT64_MAX ids).
RADAR_HD inline bool ranks_before(float v1, int64_t i1, float v2, int64_t i2) {
  const bool nan1 = v1 != v1, nan2 = v2 != v2;
  if (nan1 || nan2) return nan1 && (!nan2 || i1 < i2);
  return v1 > v2 || (v1 == v2 && i1 < i2);
}

RADAR_HD RADAR_HOST_INLINE float float_from_bits(int32_t bits) {
#if defined(__CUDA_ARCH__)
  return __int_as_float(bits);
#else
  float f;
  memcpy(&f, &bits, sizeof f);
  return f;
#endif
}

// exp(x) for x <= 88 (callers pass x - max <= 0), accurate to ~2 ulp, branch-free so a loop over it
// vectorizes (glibc expf is a scalar call). exp(x) = 2^n * exp(r) with n = round(x / ln2) and r = x - n*ln2 in [-ln2/2, ln2/2],
// ln2 split in two parts so n*ln2 is exact; exp(r) by its degree-7 Taylor-like minimax polynomial.
// Results below the smallest normal float (x < -87.33) are returned as 0, and so is NaN.
RADAR_HD RADAR_HOST_INLINE float exp_accurate(float x) {
  const float lo = -87.33654f, hi = 88.0f;
  const float xc = x > lo ? (x < hi ? x : hi) : lo;  // NaN -> lo, then 0 below
  // Round to nearest by adding and subtracting 1.5 * 2^23 (exact float arithmetic, no libm call).
  const float n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  float r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * r * r + r + 1.0f;
  const float result = y * float_from_bits((static_cast<int32_t>(n) + 127) << 23);
  return x > lo ? result : 0.0f;
}

// exp(x) over the whole float range with exp_accurate's bits: NaN stays NaN, x > 88 is split as
// exp(x - 88) * exp(88) (the float product overflows to +inf past ~88.72, as exp does).
RADAR_HD RADAR_HOST_INLINE float exp_float(float x) {
  if (x != x) return x;
  if (x > 88.0f) return exp_accurate(x - 88.0f) * exp_accurate(88.0f);
  return exp_accurate(x);
}

// tanh(x) from exp_float, odd by construction: |x| < 0.125 by its Taylor series to x^9 (error
// < 1e-10 relative), else 1 - 2 / (exp(2|x|) + 1) (a few ulp; 1 past |x| ~ 9). NaN stays NaN.
RADAR_HD RADAR_HOST_INLINE float tanh_float(float x) {
  const float a = x < 0.0f ? -x : x;
  float t;
  if (a < 0.125f) {
    const float a2 = a * a;
    t = a + a * a2 * (-0.333333333f + a2 * (0.133333333f + a2 * (-0.0539682540f + a2 * 0.0218694885f)));
  } else {
    t = 1.0f - 2.0f / (exp_float(2.0f * a) + 1.0f);
  }
  return x < 0.0f ? -t : t;  // (NaN: a is NaN, t is NaN)
}

// log(s) for a double s > 0 (finite), in double arithmetic only, so host and device agree bit for
// bit (device log and glibc log are both within an ulp of the truth, not always the same ulp).
// s = f * 2^e with f in [sqrt(1/2), sqrt(2)); log(f) = 2 atanh(z), z = (f - 1) / (f + 1), |z| < 0.172,
// by its series to z^25 (next term < 1e-21 relative). Error: a few double ulp, far below the float
// rounding of the log-probs it feeds. s = 0 gives -inf; s = +inf gives +inf; NaN stays NaN.
RADAR_HD inline double log_accurate(double s) {
  if (!(s > 0.0)) return s == 0.0 ? -INFINITY : NAN;  // (negative or NaN)
  if (s == INFINITY) return s;
  int e = 0;
  double f = frexp(s, &e);  // s = f * 2^e, f in [0.5, 1): exact
  if (f < 0.70710678118654752) {
    f *= 2.0;
    e -= 1;
  }
  const double z = (f - 1.0) / (f + 1.0), z2 = z * z;
  double p = 1.0 / 25.0;
  for (int k = 23; k >= 1; k -= 2) p = p * z2 + 1.0 / k;
  const double ln2_hi = 6.93147180369123816490e-01, ln2_lo = 1.90821492927058770002e-10;
  return (e * ln2_hi + (2.0 * z * p + e * ln2_lo));
}

}  // namespace kernels
}  // namespace radar_ext
