// Shared numerics of the radar_ext kernels, torch-free so CTest and nvcc can use them directly.
// RADAR_HD marks functions compiled for both host and device; it is empty for a plain C++ compiler.
// Everything here is exact IEEE float arithmetic: never build these with fast-math, because the
// results feed discrete decisions (top-W ids, stop, accept).
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

// Total order used for every ranking: larger value first, ties to the lower index.
RADAR_HD inline bool ranks_before(float v1, int64_t i1, float v2, int64_t i2) {
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

}  // namespace kernels
}  // namespace radar_ext
