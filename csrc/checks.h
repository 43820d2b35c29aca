// One argument checker per op, shared by the CPU and CUDA implementations. Messages name the tensor,
// the rule and the value seen, word for word as radar_ext/reference.py (the tests compare them).
// All raise ValueError in Python (TORCH_CHECK_VALUE).
#pragma once

#include <ATen/core/Tensor.h>

#include <string>

#include "kernels/policy_step.h"

namespace radar_ext {

void check_topk_expand(const at::Tensor& logits, const at::Tensor& beam_scores, int64_t tree_topk,
                       double temperature);

void check_policy_step(const at::Tensor& features, const at::Tensor& h, const at::Tensor& c,
                       const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& b,
                       const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2,
                       const at::Tensor& b2);

// policy_step's inputs made contiguous (no-ops for the contiguous tensors the policies pass: each ATen
// call costs cold code in a decode loop) and its outputs allocated, shared by the CPU and CUDA ops.
struct PolicyStepTensors {
  at::Tensor features, h, c, w_ih, w_hh, b, w1, b1, w2, b2;  // inputs, contiguous
  at::Tensor probs, h_new, c_new;                             // outputs [B, O], [B, H], [B, H]
  kernels::PolicyStepParams params() const;
};
PolicyStepTensors policy_step_tensors(const at::Tensor& features, const at::Tensor& h, const at::Tensor& c,
                                      const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& b,
                                      const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2,
                                      const at::Tensor& b2);

void check_skinny_linear(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& bias);

void check_skinny_linear_quant(const at::Tensor& x, const at::Tensor& q, const at::Tensor& d,
                               const c10::optional<at::Tensor>& m, const c10::optional<at::Tensor>& bias);

// The skinny ops as ATen calls, for devices without a custom kernel (the CUDA implementations;
// also registered as radar_ext::skinny_linear_aten / skinny_linear_quant_aten for every device, so
// the CPU tests run the code a GPU runs): the shared checks, the weights dequantized
// (dequantize_blocks, any strides), then at::linear with TF32 off, bias added after the product.
at::Tensor dequantize_blocks(const at::Tensor& q, const at::Tensor& d, const c10::optional<at::Tensor>& m);
at::Tensor skinny_linear_aten(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& bias);
at::Tensor skinny_linear_quant_aten(const at::Tensor& x, const at::Tensor& q, const at::Tensor& d,
                                    const c10::optional<at::Tensor>& m, const c10::optional<at::Tensor>& bias);

void check_build_tree(const at::Tensor& parents, const at::Tensor& n_nodes);

// Raises the message for a kernels::build_tree_validate code != kTreeOk of tree b
// (parents_row: that tree's M parents on the host).
[[noreturn]] void fail_build_tree(int64_t code, int64_t b, int64_t n_nodes_b, const int64_t* parents_row,
                                  int64_t M);

}  // namespace radar_ext
