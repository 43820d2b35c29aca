// Included first by the translation units that compile the kernel headers for AVX-512
// (csrc/skinny_linear_avx512.cpp, csrc/llama_forward_avx512.cpp): with GCC on x86-64 the target pragma
// below holds for the rest of the including file, and RADAR_SKINNY_AVX512 selects the AVX-512 paths of
// kernels/skinny_linear.h (GCC's C++ front end does not define __AVX512F__ for a target pragma).
// Elsewhere nothing is defined and the including file builds the plain paths.
#pragma once

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#pragma GCC target("avx512f")
#define RADAR_SKINNY_AVX512 1
#endif
