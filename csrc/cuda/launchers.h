// Plain launcher functions of the CUDA kernels (csrc/cuda/kernels.cu), torch-free: raw pointers,
// sizes and a stream in, a cudaError_t out. csrc/cuda/dispatch.cpp calls them from the torch side.
#pragma once

#include <cuda_runtime_api.h>

#include "../kernels/build_tree.h"
#include "../kernels/policy_step.h"
#include "../kernels/topk_expand.h"

namespace radar_ext {
namespace cuda {

cudaError_t launch_topk_expand(const kernels::TopkExpandParams& p, cudaStream_t stream);
// scratch: B * kernels::policy_scratch_floats(p) floats.
cudaError_t launch_policy_step(const kernels::PolicyStepParams& p, float* scratch, cudaStream_t stream);
// status [B]: kernels::build_tree_validate of each tree.
cudaError_t launch_build_tree_validate(const kernels::BuildTreeParams& p, int64_t* status, cudaStream_t stream);
// has_child: scratch of B*M bytes.
cudaError_t launch_build_tree(const kernels::BuildTreeParams& p, unsigned char* has_child, cudaStream_t stream);

}  // namespace cuda
}  // namespace radar_ext
