// The AVX-512 build of kernels/skinny_linear.h, torch-free. This file alone is compiled for AVX-512
// (kernels/avx512_target.h, GCC on x86-64); the rest of the extension stays baseline x86-64, and
// csrc/ops.cpp calls in here only after checking the running CPU. The header's functions have
// internal linkage, so its baseline copy in ops.cpp and this AVX-512 copy never get merged.
#include "kernels/avx512_target.h"  // first: the rest of this file is compiled for AVX-512
#include "kernels/skinny_linear.h"

#include <atomic>

namespace radar_ext {
namespace kernels {

namespace {
std::atomic<bool> g_wide_tiles{true};
}

bool skinny_wide_tiles() { return g_wide_tiles.load(std::memory_order_relaxed); }
bool skinny_set_wide_tiles(bool on) { return g_wide_tiles.exchange(on); }

bool skinny_linear_avx512_compiled() {
#if defined(RADAR_SKINNY_AVX512)
  return true;
#else
  return false;
#endif
}

void skinny_linear_blocks_avx512(const SkinnyLinearParams& p, int64_t b0, int64_t b1) {
  skinny_linear_blocks_native(p, b0, b1);
}

}  // namespace kernels
}  // namespace radar_ext
