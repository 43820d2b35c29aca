// CUDA implementations of the radar_ext ops (torch side): check the arguments with the shared
// checkers, allocate the outputs, and call the torch-free launchers of csrc/cuda/kernels.cu on the
// current stream.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../checks.h"
#include "launchers.h"

namespace radar_ext {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> topk_expand_cuda(
    const at::Tensor& logits_in, const at::Tensor& beam_scores_in, int64_t tree_topk, double temperature) {
  check_topk_expand(logits_in, beam_scores_in, tree_topk, temperature);
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const at::Tensor logits = logits_in.contiguous(), beam_scores = beam_scores_in.contiguous();
  const int64_t B = logits.size(0), N = logits.size(1), Vd = logits.size(2), W = tree_topk;
  const auto f32 = logits.options(), i64 = logits.options().dtype(at::kLong);
  at::Tensor child_logp = at::empty({B, N, W}, f32), child_ids = at::empty({B, N, W}, i64);
  at::Tensor child_scores = at::empty({B, N, W}, f32);
  at::Tensor next_scores = at::empty({B, W}, f32), next_parent = at::empty({B, W}, i64);
  at::Tensor next_ids = at::empty({B, W}, i64);
  const kernels::TopkExpandParams p{logits.data_ptr<float>(), beam_scores.data_ptr<float>(), B, N, Vd, W,
                                    static_cast<float>(1.0 / temperature), child_logp.data_ptr<float>(),
                                    child_ids.data_ptr<int64_t>(), child_scores.data_ptr<float>(),
                                    next_scores.data_ptr<float>(), next_parent.data_ptr<int64_t>(),
                                    next_ids.data_ptr<int64_t>()};
  C10_CUDA_CHECK(cuda::launch_topk_expand(p, c10::cuda::getCurrentCUDAStream().stream()));
  return {child_logp, child_ids, child_scores, next_scores, next_parent, next_ids};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> policy_step_cuda(
    const at::Tensor& features_in, const at::Tensor& h_in, const at::Tensor& c_in, const at::Tensor& w_ih_in,
    const at::Tensor& w_hh_in, const at::Tensor& b_in, const at::Tensor& w1_in, const at::Tensor& b1_in,
    const at::Tensor& w2_in, const at::Tensor& b2_in) {
  check_policy_step(features_in, h_in, c_in, w_ih_in, w_hh_in, b_in, w1_in, b1_in, w2_in, b2_in);
  const c10::cuda::CUDAGuard guard(features_in.device());
  const PolicyStepTensors t = policy_step_tensors(features_in, h_in, c_in, w_ih_in, w_hh_in, b_in, w1_in, b1_in,
                                                  w2_in, b2_in);
  const kernels::PolicyStepParams p = t.params();
  at::Tensor scratch = at::empty({p.B, kernels::policy_scratch_floats(p)}, t.features.options());
  C10_CUDA_CHECK(cuda::launch_policy_step(p, scratch.data_ptr<float>(), c10::cuda::getCurrentCUDAStream().stream()));
  return {t.probs, t.h_new, t.c_new};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> build_tree_cuda(const at::Tensor& parents_in,
                                                                           const at::Tensor& n_nodes_in) {
  check_build_tree(parents_in, n_nodes_in);
  const c10::cuda::CUDAGuard guard(parents_in.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  const at::Tensor parents = parents_in.contiguous(), n_nodes = n_nodes_in.contiguous();
  const int64_t B = parents.size(0), M = parents.size(1);
  at::Tensor mask = at::zeros({B, M, M}, parents.options().dtype(at::kBool));
  at::Tensor depth = at::full({B, M}, -1, parents.options());
  at::Tensor paths = at::full({B, M, M}, -1, parents.options());
  at::Tensor n_paths = at::empty({B}, parents.options());
  const kernels::BuildTreeParams p{parents.data_ptr<int64_t>(), n_nodes.data_ptr<int64_t>(), B, M,
                                   mask.data_ptr<bool>(), depth.data_ptr<int64_t>(), paths.data_ptr<int64_t>(),
                                   n_paths.data_ptr<int64_t>()};
  at::Tensor status = at::empty({B}, parents.options());
  C10_CUDA_CHECK(cuda::launch_build_tree_validate(p, status.data_ptr<int64_t>(), stream));
  // Host/device sync: a malformed tree must raise here, with the first bad node in the message.
  const at::Tensor status_host = status.cpu();
  for (int64_t t = 0; t < B; ++t) {
    const int64_t code = status_host.data_ptr<int64_t>()[t];
    if (code != kernels::kTreeOk) {
      const at::Tensor row = parents[t].cpu();
      fail_build_tree(code, t, n_nodes[t].item<int64_t>(), row.data_ptr<int64_t>(), M);
    }
  }
  at::Tensor has_child = at::empty({B, M}, parents.options().dtype(at::kByte));
  C10_CUDA_CHECK(cuda::launch_build_tree(p, has_child.data_ptr<unsigned char>(), stream));
  return {mask, depth, paths, n_paths};
}

}  // namespace

TORCH_LIBRARY_IMPL(radar_ext, CUDA, m) {
  m.impl("topk_expand", &topk_expand_cuda);
  m.impl("policy_step", &policy_step_cuda);
  m.impl("build_tree", &build_tree_cuda);
  // No custom kernel: the ATen-level products of csrc/ops.cpp (cuBLAS, TF32 off), shared with the
  // skinny_linear_aten / skinny_linear_quant_aten ops that test them on the CPU.
  m.impl("skinny_linear", &skinny_linear_aten);
  m.impl("skinny_linear_quant", &skinny_linear_quant_aten);
}

}  // namespace radar_ext
