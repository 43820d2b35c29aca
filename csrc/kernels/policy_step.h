// policy_step: one whole controller decision per row, fused: an optional LSTM cell step, the MLP head
// on cat(h_new, features) and its softmax, with no matrix library in between (a decision is a few
// thousand to ~90k multiply-adds; between a decode loop's forwards each separate ATen op costs
// 100-300 us of cold code, more than the arithmetic).
// Layout: features [B, F], h, c [B, H], w_ih [4H, F], w_hh [4H, H], b [4H] (gate order i, f, g, o, as
// torch.nn.LSTM, b = b_ih + b_hh), w1 [G, H+F], b1 [G], w2 [O, G], b2 [O]; outputs probs [B, O],
// h_new, c_new [B, H]. H = 0: no LSTM (the MLP sees the features only).
// Per row, a scratch of policy_scratch_floats() floats holds gates [4H], z = cat(h_new, x) [H+F],
// hidden [G] and logits [O]. Four phases, each a loop over independent elements (CPU: a loop;
// CUDA: one block per row, its threads over the elements, a barrier between phases), then the
// softmax: policy_gate_elem -> policy_cell_elem -> policy_hidden_elem -> policy_logit_elem ->
// softmax_row. Every sum has one fixed order (dot_f32), and exp / tanh are common.h's libm-free
// exp_float / tanh_float (device expf / tanhf differ from glibc's in the last ulp), so CPU and CUDA
// give the same bits, and a policy's decision (argmax of probs, ties to the lower index) is the same.
#pragma once

#include "common.h"

namespace radar_ext {
namespace kernels {

struct PolicyStepParams {
  const float* features;  // [B, F]
  const float* h;         // [B, H]
  const float* c;         // [B, H]
  const float* w_ih;      // [4H, F]
  const float* w_hh;      // [4H, H]
  const float* b;         // [4H]
  const float* w1;        // [G, H+F]
  const float* b1;        // [G]
  const float* w2;        // [O, G]
  const float* b2;        // [O]
  float* probs;           // [B, O]
  float* h_new;           // [B, H]
  float* c_new;           // [B, H]
  int64_t B, F, H, G, O;
};

RADAR_HD inline int64_t policy_scratch_floats(const PolicyStepParams& p) {
  return 4 * p.H + (p.H + p.F) + p.G + p.O;
}

// Offsets of one row's scratch: gates, z, hidden, logits.
RADAR_HD inline float* policy_gates(const PolicyStepParams&, float* s) { return s; }
RADAR_HD inline float* policy_z(const PolicyStepParams& p, float* s) { return s + 4 * p.H; }
RADAR_HD inline float* policy_hidden(const PolicyStepParams& p, float* s) { return s + 5 * p.H + p.F; }
RADAR_HD inline float* policy_logits(const PolicyStepParams& p, float* s) { return s + 5 * p.H + p.F + p.G; }

// sum_k w[k] x[k] in float32, in one fixed order: 8 interleaved partial sums (k mod 8) over the
// full blocks, combined pairwise ((0+4)+(2+6))+((1+5)+(3+7)), then the tail in order. The
// independent partial sums let a host compiler vectorize without reassociating anything.
RADAR_HD RADAR_HOST_INLINE float dot_f32(const float* w, const float* x, int64_t n) {
  float acc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
  const int64_t n8 = n - n % 8;
  for (int64_t k = 0; k < n8; k += 8)
    for (int l = 0; l < 8; ++l) acc[l] = fmaf(w[k + l], x[k + l], acc[l]);
  float s = ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
  for (int64_t k = n8; k < n; ++k) s = fmaf(w[k], x[k], s);
  return s;
}

RADAR_HD inline float sigmoid(float x) { return 1.0f / (1.0f + exp_float(-x)); }

// Phase 1, j in [0, 4H): gates[j] = (b[j] + w_ih[j] . x) + w_hh[j] . h.
RADAR_HD RADAR_HOST_INLINE void policy_gate_elem(const PolicyStepParams& p, int64_t row, int64_t j, float* s) {
  const float* x = p.features + row * p.F;
  const float* h = p.h + row * p.H;
  policy_gates(p, s)[j] = (p.b[j] + dot_f32(p.w_ih + j * p.F, x, p.F)) + dot_f32(p.w_hh + j * p.H, h, p.H);
}

// Phase 2, k in [0, H+F): k < H is the LSTM cell (writes h_new, c_new and z[k] = h_new), k >= H
// copies feature k - H into z.
RADAR_HD inline void policy_cell_elem(const PolicyStepParams& p, int64_t row, int64_t k, float* s) {
  const int64_t H = p.H;
  float* z = policy_z(p, s);
  if (k < H) {
    const float* g = policy_gates(p, s);
    const float in_gate = sigmoid(g[k]), forget_gate = sigmoid(g[H + k]);
    const float cell_in = tanh_float(g[2 * H + k]), out_gate = sigmoid(g[3 * H + k]);
    const float c_new = forget_gate * p.c[row * H + k] + in_gate * cell_in;
    const float h_new = out_gate * tanh_float(c_new);
    p.c_new[row * H + k] = c_new;
    p.h_new[row * H + k] = h_new;
    z[k] = h_new;
  } else {
    z[k] = p.features[row * p.F + (k - H)];
  }
}

// Phase 3, g in [0, G): hidden[g] = relu(b1[g] + w1[g] . z).
RADAR_HD RADAR_HOST_INLINE void policy_hidden_elem(const PolicyStepParams& p, int64_t g, float* s) {
  const float v = p.b1[g] + dot_f32(p.w1 + g * (p.H + p.F), policy_z(p, s), p.H + p.F);
  policy_hidden(p, s)[g] = v > 0.0f ? v : 0.0f;
}

// Phase 4, o in [0, O): logits[o] = b2[o] + w2[o] . hidden.
RADAR_HD RADAR_HOST_INLINE void policy_logit_elem(const PolicyStepParams& p, int64_t o, float* s) {
  policy_logits(p, s)[o] = p.b2[o] + dot_f32(p.w2 + o * p.G, policy_hidden(p, s), p.G);
}

// out[0:O] = softmax(in[0:O]), max-subtracted, summed in double.
RADAR_HD inline void softmax_row(const float* in, float* out, int64_t O) {
  float m = in[0];
  for (int64_t k = 1; k < O; ++k) m = in[k] > m ? in[k] : m;
  double sum = 0.0;
  for (int64_t k = 0; k < O; ++k) sum += static_cast<double>(exp_float(in[k] - m));
  for (int64_t k = 0; k < O; ++k) out[k] = static_cast<float>(static_cast<double>(exp_float(in[k] - m)) / sum);
}

// The host's whole row: the phases in order, then the softmax into probs.
RADAR_HOST_INLINE void policy_step_row_host(const PolicyStepParams& p, int64_t row, float* s) {
  for (int64_t j = 0; j < 4 * p.H; ++j) policy_gate_elem(p, row, j, s);
  for (int64_t k = 0; k < p.H + p.F; ++k) policy_cell_elem(p, row, k, s);
  for (int64_t g = 0; g < p.G; ++g) policy_hidden_elem(p, g, s);
  for (int64_t o = 0; o < p.O; ++o) policy_logit_elem(p, o, s);
  softmax_row(policy_logits(p, s), p.probs + row * p.O, p.O);
}

}  // namespace kernels
}  // namespace radar_ext
