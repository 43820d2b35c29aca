// The AVX-512 build of kernels/llama_forward.h (and of the skinny_linear products it runs), torch-free.
// This file alone is compiled for AVX-512 (kernels/avx512_target.h, GCC on x86-64), as
// csrc/skinny_linear_avx512.cpp; csrc/ops.cpp calls in here only after checking the running CPU.
// The headers' functions have internal linkage, so the baseline copies in ops.cpp stay separate.
#include "kernels/avx512_target.h"  // first: the rest of this file is compiled for AVX-512
#include "kernels/llama_forward.h"

namespace radar_ext {
namespace kernels {

void llama_forward_thread_avx512(const LlamaForwardParams& p, const LlamaForwardWorkspace& ws,
                                 LlamaPhaseCounters* phases, int tid, int nth) {
  llama_forward_thread(p, ws, phases, tid, nth);
}

}  // namespace kernels
}  // namespace radar_ext
