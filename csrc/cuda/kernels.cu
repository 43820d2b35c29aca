// CUDA kernels of the radar_ext ops. Torch-free on purpose (includes only the kernel headers and the
// CUDA runtime), so this file compiles in seconds; the per-row arithmetic is the same header code
// the CPU path runs.
// topk_expand: one block per row (b, n). W rounds of a block-wide arg-best over the row, each round
// taking the best element ranked after the previous pick (same total order as the CPU insertion,
// ranks_before, NaN included, so the same ids), then the double sum of exp((x - max) / T) in the
// CPU's order (kSumLanes threads, one per lane, then the lanes in order: the same bits, see
// kernels/topk_expand.h); then one thread per batch element selects the next beams.
// The sum's 16 lanes each add Vd/16 terms in sequence (~2k for a 32k vocabulary), the price of the
// CPU's bits; the W arg-best rounds before it read the row W times. Built with --fmad=false
// (setup.py): the shared header arithmetic is not contracted into FMAs, so every float operation
// rounds as on the host. policy_step: one block per row, its threads over each phase's elements.
// build_tree: one thread per tree validates; one block per tree, a thread per node for mask/depth,
// thread 0 for the leaves and paths.
#include <cuda_runtime.h>

#include "launchers.h"

namespace radar_ext {
namespace cuda {
namespace {

using namespace radar_ext::kernels;

constexpr int kRowThreads = 256;
constexpr int kWarps = kRowThreads / 32;

struct Pick {
  float v;
  int64_t i;
};

__device__ Pick better_of(Pick a, Pick b) { return ranks_before(b.v, b.i, a.v, a.i) ? b : a; }

// Block-wide best pick (ranks_before order); every thread gets the result.
__device__ Pick block_best(Pick mine, Pick* shared /* [kWarps] */) {
  for (int off = 16; off > 0; off >>= 1) {
    Pick other{__shfl_down_sync(0xffffffffu, mine.v, off), __shfl_down_sync(0xffffffffu, mine.i, off)};
    mine = better_of(mine, other);
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();  // shared is reused across rounds
  if (lane == 0) shared[warp] = mine;
  __syncthreads();
  Pick best = shared[0];
  for (int w = 1; w < kWarps; ++w) best = better_of(best, shared[w]);
  return best;
}

__global__ void topk_expand_rows_kernel(TopkExpandParams p) {
  __shared__ Pick picks[kWarps];
  __shared__ double lanes[kSumLanes];
  const int64_t row = blockIdx.x;
  const float* x = p.logits + row * p.Vd;
  // "Nothing" ranks after every element; "before everything" (a NaN with id -1) before every one.
  const Pick nothing{kNegInf, INT64_MAX};
  Pick prev{NAN, -1};
  float m = kNegInf;
  for (int64_t r = 0; r < p.W; ++r) {
    Pick mine = nothing;
    for (int64_t i = threadIdx.x; i < p.Vd; i += blockDim.x) {
      const float v = x[i];
      if (ranks_before(prev.v, prev.i, v, i) && ranks_before(v, i, mine.v, mine.i)) mine = Pick{v, i};
    }
    prev = block_best(mine, picks);
    if (r == 0) m = prev.v;
    if (threadIdx.x == 0) p.child_ids[row * p.W + r] = prev.i;
  }
  if (m == kNegInf) {  // no distribution: log_sum unused (uniform across the block: no barrier split)
    if (threadIdx.x == 0) topk_expand_finish_row(p, row, m, 0.0);
    return;
  }
  if (threadIdx.x < kSumLanes) lanes[threadIdx.x] = exp_sum_lane(x, p.Vd, m, p.inv_temperature, threadIdx.x);
  __syncthreads();
  if (threadIdx.x == 0) topk_expand_finish_row(p, row, m, log_of_lanes(lanes));
}

__global__ void topk_expand_select_kernel(TopkExpandParams p) {
  const int64_t b = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (b < p.B) topk_expand_select(p, b);
}

// One block per row; scratch: B rows of policy_scratch_floats floats in global memory.
__global__ void policy_step_kernel(PolicyStepParams p, float* scratch) {
  const int64_t row = blockIdx.x;
  float* s = scratch + row * policy_scratch_floats(p);
  for (int64_t j = threadIdx.x; j < 4 * p.H; j += blockDim.x) policy_gate_elem(p, row, j, s);
  __syncthreads();
  for (int64_t k = threadIdx.x; k < p.H + p.F; k += blockDim.x) policy_cell_elem(p, row, k, s);
  __syncthreads();
  for (int64_t g = threadIdx.x; g < p.G; g += blockDim.x) policy_hidden_elem(p, g, s);
  __syncthreads();
  for (int64_t o = threadIdx.x; o < p.O; o += blockDim.x) policy_logit_elem(p, o, s);
  __syncthreads();
  if (threadIdx.x == 0) softmax_row(policy_logits(p, s), p.probs + row * p.O, p.O);
}

__global__ void build_tree_validate_kernel(BuildTreeParams p, int64_t* status) {
  const int64_t b = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (b < p.B) status[b] = build_tree_validate(p, b);
}

__global__ void build_tree_kernel(BuildTreeParams p, unsigned char* has_child) {
  const int64_t b = blockIdx.x;
  for (int64_t i = threadIdx.x; i < p.n_nodes[b]; i += blockDim.x) build_tree_node(p, b, i);
  __syncthreads();  // the paths need every depth
  if (threadIdx.x == 0) build_tree_paths(p, b, has_child + b * p.M);
}

unsigned int blocks_for(int64_t n, int threads) { return static_cast<unsigned int>((n + threads - 1) / threads); }

}  // namespace

cudaError_t launch_topk_expand(const TopkExpandParams& p, cudaStream_t stream) {
  if (p.B * p.N == 0) return cudaSuccess;
  topk_expand_rows_kernel<<<static_cast<unsigned int>(p.B * p.N), kRowThreads, 0, stream>>>(p);
  topk_expand_select_kernel<<<blocks_for(p.B, 128), 128, 0, stream>>>(p);
  return cudaGetLastError();
}

cudaError_t launch_policy_step(const PolicyStepParams& p, float* scratch, cudaStream_t stream) {
  if (p.B == 0) return cudaSuccess;
  policy_step_kernel<<<static_cast<unsigned int>(p.B), 256, 0, stream>>>(p, scratch);
  return cudaGetLastError();
}

cudaError_t launch_build_tree_validate(const BuildTreeParams& p, int64_t* status, cudaStream_t stream) {
  if (p.B == 0) return cudaSuccess;
  build_tree_validate_kernel<<<blocks_for(p.B, 128), 128, 0, stream>>>(p, status);
  return cudaGetLastError();
}

cudaError_t launch_build_tree(const BuildTreeParams& p, unsigned char* has_child, cudaStream_t stream) {
  if (p.B == 0) return cudaSuccess;
  build_tree_kernel<<<static_cast<unsigned int>(p.B), 128, 0, stream>>>(p, has_child);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace radar_ext
