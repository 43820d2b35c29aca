// policy_step: the element-wise part of one LSTM cell step and the softmax of the MLP head.
// The matrix products (gates = features W_ih^T + h W_hh^T + b, and the two MLP layers) stay in
// ATen/cuBLAS; these functions fuse what sits between them.
// Layout: gates [B, 4H] (gate order i, f, g, o, as torch.nn.LSTM), c [B, H], features [B, F],
// z [B, H+F] = cat(h_new, features) (the MLP input). Parallel split: one element (b, k) of z per
// call (CPU: loop; CUDA: one thread each); the softmax is one call per row b.
#pragma once

#include "common.h"

namespace radar_ext {
namespace kernels {

struct PolicyCellParams {
  const float* gates;     // [B, 4H]
  const float* c;         // [B, H]
  const float* features;  // [B, F]
  float* h_new;           // [B, H]
  float* c_new;           // [B, H]
  float* z;               // [B, H+F]
  int64_t B, H, F;
};

RADAR_HD inline float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

// Element k of row b of z: k < H is the LSTM cell (also writes h_new, c_new), k >= H copies a feature.
RADAR_HD inline void policy_cell_elem(const PolicyCellParams& p, int64_t b, int64_t k) {
  const int64_t H = p.H, F = p.F;
  if (k < H) {
    const float* g = p.gates + b * 4 * H;
    const float in_gate = sigmoid(g[k]), forget_gate = sigmoid(g[H + k]);
    const float cell_in = tanhf(g[2 * H + k]), out_gate = sigmoid(g[3 * H + k]);
    const float c_new = forget_gate * p.c[b * H + k] + in_gate * cell_in;
    const float h_new = out_gate * tanhf(c_new);
    p.c_new[b * H + k] = c_new;
    p.h_new[b * H + k] = h_new;
    p.z[b * (H + F) + k] = h_new;
  } else {
    p.z[b * (H + F) + k] = p.features[b * F + (k - H)];
  }
}

// out[0:O] = softmax(in[0:O]), max-subtracted, summed in double.
RADAR_HD inline void softmax_row(const float* in, float* out, int64_t O) {
  float m = in[0];
  for (int64_t k = 1; k < O; ++k) m = in[k] > m ? in[k] : m;
  double s = 0.0;
  for (int64_t k = 0; k < O; ++k) s += static_cast<double>(expf(in[k] - m));
  for (int64_t k = 0; k < O; ++k) out[k] = static_cast<float>(static_cast<double>(expf(in[k] - m)) / s);
}

}  // namespace kernels
}  // namespace radar_ext
