// radar_ext custom ops: the TORCH_LIBRARY schema table, the shared argument checkers and the CPU
// implementations. The CPU paths loop rows (or trees) with at::parallel_for and call the same
// per-row functions from csrc/kernels/*.h that the CUDA kernels call. The CUDA implementations live
// in csrc/cuda/dispatch.cpp (compiled only when the CUDA kernels are built).
#include <Python.h>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>
#include <sstream>
#include <vector>

#include "checks.h"
#include "kernels/build_tree.h"
#include "kernels/llama_forward.h"
#include "kernels/amx_linear.h"
#include "kernels/vnni_linear.h"
#include "kernels/policy_step.h"
#include "kernels/skinny_linear.h"
#include "kernels/topk_expand.h"

namespace radar_ext {
namespace {

std::string dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "float32";
    case at::kDouble: return "float64";
    case at::kHalf: return "float16";
    case at::kBFloat16: return "bfloat16";
    case at::kLong: return "int64";
    case at::kInt: return "int32";
    case at::kShort: return "int16";
    case at::kChar: return "int8";
    case at::kByte: return "uint8";
    case at::kBool: return "bool";
    default: return c10::toString(t);
  }
}

// "float32 [2, 7]", as reference.describe.
std::string describe(const at::Tensor& t) {
  std::ostringstream s;
  s << dtype_name(t.scalar_type()) << " [";
  for (int64_t d = 0; d < t.dim(); ++d) s << (d ? ", " : "") << t.size(d);
  s << "]";
  return s.str();
}

// Python's f"{x:g}".
std::string format_g(double x) {
  if (std::isnan(x)) return "nan";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%g", x);
  return buf;
}

void check_device(const char* name, const at::Tensor& t, const char* ref_name, const at::Tensor& ref) {
  TORCH_CHECK_VALUE(t.device() == ref.device(), name, " must be on the device of ", ref_name, " (",
                    ref.device().str(), "), got ", t.device().str());
}

bool is_f32(const at::Tensor& t, std::initializer_list<int64_t> shape) {
  return t.scalar_type() == at::kFloat && t.sizes().equals(shape);
}

}  // namespace

void check_topk_expand(const at::Tensor& logits, const at::Tensor& beam_scores, int64_t tree_topk,
                       double temperature) {
  TORCH_CHECK_VALUE(logits.scalar_type() == at::kFloat && logits.dim() == 3,
                    "logits must be float32 [B, N, Vd], got ", describe(logits));
  const int64_t B = logits.size(0), N = logits.size(1), Vd = logits.size(2);
  TORCH_CHECK_VALUE(N >= 1, "logits must have N >= 1 beams, got ", describe(logits));
  TORCH_CHECK_VALUE(is_f32(beam_scores, {B, N}), "beam_scores must be float32 [B, N] = [", B, ", ", N,
                    "], got ", describe(beam_scores));
  check_device("beam_scores", beam_scores, "logits", logits);
  TORCH_CHECK_VALUE(tree_topk >= 1 && tree_topk <= Vd, "tree_topk must be an int in [1, Vd] = [1, ", Vd,
                    "], got ", tree_topk);
  TORCH_CHECK_VALUE(std::isfinite(temperature) && temperature > 0,
                    "temperature must be a finite number > 0, got ", format_g(temperature));
}

void check_policy_step(const at::Tensor& features, const at::Tensor& h, const at::Tensor& c,
                       const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& b,
                       const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2,
                       const at::Tensor& b2) {
  TORCH_CHECK_VALUE(features.scalar_type() == at::kFloat && features.dim() == 2,
                    "features must be float32 [B, F], got ", describe(features));
  const int64_t B = features.size(0), F = features.size(1);
  TORCH_CHECK_VALUE(h.scalar_type() == at::kFloat && h.dim() == 2 && h.size(0) == B,
                    "h must be float32 [B, H] with B = ", B, ", got ", describe(h));
  const int64_t H = h.size(1);
  TORCH_CHECK_VALUE(w1.scalar_type() == at::kFloat && w1.dim() == 2 && w1.size(1) == H + F,
                    "w1 must be float32 [G, H+F] with H+F = ", H + F, ", got ", describe(w1));
  const int64_t G = w1.size(0);
  TORCH_CHECK_VALUE(w2.scalar_type() == at::kFloat && w2.dim() == 2 && w2.size(1) == G && w2.size(0) >= 1,
                    "w2 must be float32 [O, G] with O >= 1 and G = ", G, ", got ", describe(w2));
  const int64_t O = w2.size(0);
  TORCH_CHECK_VALUE(is_f32(c, {B, H}), "c must be float32 [B, H] = [", B, ", ", H, "], got ", describe(c));
  TORCH_CHECK_VALUE(is_f32(w_ih, {4 * H, F}), "w_ih must be float32 [4H, F] = [", 4 * H, ", ", F, "], got ",
                    describe(w_ih));
  TORCH_CHECK_VALUE(is_f32(w_hh, {4 * H, H}), "w_hh must be float32 [4H, H] = [", 4 * H, ", ", H, "], got ",
                    describe(w_hh));
  TORCH_CHECK_VALUE(is_f32(b, {4 * H}), "b must be float32 [4H] = [", 4 * H, "], got ", describe(b));
  TORCH_CHECK_VALUE(is_f32(b1, {G}), "b1 must be float32 [G] = [", G, "], got ", describe(b1));
  TORCH_CHECK_VALUE(is_f32(b2, {O}), "b2 must be float32 [O] = [", O, "], got ", describe(b2));
  const char* names[] = {"h", "c", "w_ih", "w_hh", "b", "w1", "b1", "w2", "b2"};
  const at::Tensor* tensors[] = {&h, &c, &w_ih, &w_hh, &b, &w1, &b1, &w2, &b2};
  for (int k = 0; k < 9; ++k) check_device(names[k], *tensors[k], "features", features);
}

void check_skinny_linear_quant(const at::Tensor& x, const at::Tensor& q, const at::Tensor& d,
                               const c10::optional<at::Tensor>& m, const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK_VALUE(x.scalar_type() == at::kFloat && x.dim() == 2, "x must be float32 [M, K], got ", describe(x));
  const int64_t K = x.size(1);
  TORCH_CHECK_VALUE(K % 32 == 0, "x must have K divisible by 32 (blocks of 32 weights), got ", describe(x));
  if (!m.has_value()) {
    TORCH_CHECK_VALUE(q.scalar_type() == at::kChar && q.dim() == 2 && q.size(1) == K, "q must be int8 [N, K] with K = ",
                      K, " (Q8_0: m is None), got ", describe(q));
  } else {
    TORCH_CHECK_VALUE(q.scalar_type() == at::kByte && q.dim() == 2 && q.size(1) == K / 2,
                      "q must be uint8 [N, K/2] with K/2 = ", K / 2, " (Q4_1: m is given), got ", describe(q));
  }
  check_device("q", q, "x", x);
  const int64_t N = q.size(0);
  TORCH_CHECK_VALUE(is_f32(d, {N, K / 32}), "d must be float32 [N, K/32] = [", N, ", ", K / 32, "], got ", describe(d));
  check_device("d", d, "x", x);
  if (m.has_value()) {
    TORCH_CHECK_VALUE(is_f32(*m, {N, K / 32}), "m must be float32 [N, K/32] = [", N, ", ", K / 32, "], got ",
                      describe(*m));
    check_device("m", *m, "x", x);
  }
  if (bias.has_value()) {
    TORCH_CHECK_VALUE(is_f32(*bias, {N}), "bias must be float32 [N] = [", N, "], got ", describe(*bias));
    check_device("bias", *bias, "x", x);
  }
}

PolicyStepTensors policy_step_tensors(const at::Tensor& features, const at::Tensor& h, const at::Tensor& c,
                                      const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& b,
                                      const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2,
                                      const at::Tensor& b2) {
  const auto contig = [](const at::Tensor& t) { return t.is_contiguous() ? t : t.contiguous(); };
  PolicyStepTensors t{contig(features), contig(h), contig(c), contig(w_ih), contig(w_hh), contig(b),
                      contig(w1), contig(b1), contig(w2), contig(b2), {}, {}, {}};
  const int64_t B = features.size(0), H = h.size(1), O = w2.size(0);
  t.probs = at::empty({B, O}, features.options());
  t.h_new = at::empty({B, H}, features.options());
  t.c_new = at::empty({B, H}, features.options());
  return t;
}

kernels::PolicyStepParams PolicyStepTensors::params() const {
  return {features.data_ptr<float>(), h.data_ptr<float>(), c.data_ptr<float>(), w_ih.data_ptr<float>(),
          w_hh.data_ptr<float>(), b.data_ptr<float>(), w1.data_ptr<float>(), b1.data_ptr<float>(),
          w2.data_ptr<float>(), b2.data_ptr<float>(), probs.data_ptr<float>(), h_new.data_ptr<float>(),
          c_new.data_ptr<float>(), features.size(0), features.size(1), h.size(1), w1.size(0), w2.size(0)};
}

void check_build_tree(const at::Tensor& parents, const at::Tensor& n_nodes) {
  TORCH_CHECK_VALUE(parents.scalar_type() == at::kLong && parents.dim() == 2 && parents.size(1) >= 1,
                    "parents must be int64 [B, M] with M >= 1, got ", describe(parents));
  const int64_t B = parents.size(0);
  TORCH_CHECK_VALUE(n_nodes.scalar_type() == at::kLong && n_nodes.sizes().equals({B}),
                    "n_nodes must be int64 [B] = [", B, "], got ", describe(n_nodes));
  check_device("n_nodes", n_nodes, "parents", parents);
}

void fail_build_tree(int64_t code, int64_t b, int64_t n_nodes_b, const int64_t* parents_row, int64_t M) {
  TORCH_CHECK_VALUE(code != kernels::kTreeBadCount, "n_nodes[", b, "] = ", n_nodes_b, " must be in [1, M] = [1, ",
                    M, "]");
  TORCH_CHECK_VALUE(code != 0, "parents[", b, ", 0] = ", parents_row[0], " must be -1 (node 0 is the root)");
  TORCH_CHECK_VALUE(false, "parents[", b, ", ", code, "] = ", parents_row[code], " must be in [0, ", code,
                    ") (node ", code, ")");
}

void check_skinny_linear(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK_VALUE(x.scalar_type() == at::kFloat && x.dim() == 2, "x must be float32 [M, K], got ", describe(x));
  const int64_t K = x.size(1);
  const auto wt = w.scalar_type();
  TORCH_CHECK_VALUE((wt == at::kFloat || wt == at::kBFloat16 || wt == at::kHalf) && w.dim() == 2 && w.size(1) == K,
                    "w must be float32, bfloat16 or float16 [N, K] with K = ", K, ", got ", describe(w));
  check_device("w", w, "x", x);
  if (bias.has_value()) {
    const int64_t N = w.size(0);
    TORCH_CHECK_VALUE(is_f32(*bias, {N}), "bias must be float32 [N] = [", N, "], got ", describe(*bias));
    check_device("bias", *bias, "x", x);
  }
}

// The product on float32 weights, IEEE float32 whatever torch.backends.cuda.matmul.allow_tf32 says
// (NoTF32Guard is thread-local). The bias is added after at::linear's plain product, so no cuBLASLt
// bias epilogue picks its own compute type.
at::Tensor linear_ieee(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& bias) {
  const at::NoTF32Guard no_tf32;
  const at::Tensor y = at::linear(x, w);
  return bias.has_value() ? y + *bias : y;
}

at::Tensor dequantize_blocks(const at::Tensor& q_in, const at::Tensor& d, const c10::optional<at::Tensor>& m) {
  // reference.dequantize_blocks: GGUF's formula, d * q exact in float32, one rounding per weight.
  // Any strides work (the views below only split a dim, then reshape copies if it must); a strided q
  // (a slice, a transpose) is made dense once, so a GPU reads it coalesced.
  const at::Tensor q = q_in.contiguous();
  const int64_t N = q.size(0);
  if (m.has_value()) {
    const int64_t K = 2 * q.size(1);
    const at::Tensor b = q.view({N, K / 32, 16});
    const at::Tensor nib = at::cat({at::bitwise_and(b, 15), at::bitwise_right_shift(b, 4)}, 2).to(at::kFloat);
    return (nib * d.unsqueeze(2) + m->unsqueeze(2)).reshape({N, K});
  }
  const int64_t K = q.size(1);
  return (q.to(at::kFloat).view({N, K / 32, 32}) * d.unsqueeze(2)).reshape({N, K});
}

at::Tensor skinny_linear_aten(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& bias) {
  check_skinny_linear(x, w, bias);
  return linear_ieee(x, w.scalar_type() == x.scalar_type() ? w : w.to(x.scalar_type()), bias);
}

at::Tensor skinny_linear_quant_aten(const at::Tensor& x, const at::Tensor& q, const at::Tensor& d,
                                    const c10::optional<at::Tensor>& m, const c10::optional<at::Tensor>& bias) {
  check_skinny_linear_quant(x, q, d, m, bias);
  return linear_ieee(x, dequantize_blocks(q, d, m), bias);
}

namespace {

// Rows per parallel_for task: enough logits that a task outweighs the thread hand-off (~10 us).
int64_t rows_grain(int64_t Vd) { return std::max<int64_t>(1, (int64_t{1} << 17) / std::max<int64_t>(Vd, 1)); }

// Both passes of one topk_expand row. Compiled for several x86 ISAs (dispatched once at load by the
// dynamic linker), because the wheel is built without -march=native.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#endif
void topk_expand_rows_cpu(const kernels::TopkExpandParams& p, int64_t begin, int64_t end) {
  for (int64_t row = begin; row < end; ++row) kernels::topk_expand_row_host(p, row);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> topk_expand_cpu(
    const at::Tensor& logits_in, const at::Tensor& beam_scores_in, int64_t tree_topk, double temperature) {
  check_topk_expand(logits_in, beam_scores_in, tree_topk, temperature);
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
  at::parallel_for(0, B * N, rows_grain(Vd), [&](int64_t begin, int64_t end) { topk_expand_rows_cpu(p, begin, end); });
  for (int64_t b = 0; b < B; ++b) kernels::topk_expand_select(p, b);
  return {child_logp, child_ids, child_scores, next_scores, next_parent, next_ids};
}

// Whole decisions, one row at a time (fixed-order float32 sums, kernels/policy_step.h). Compiled for
// several x86 ISAs like topk_expand_rows_cpu, so the dot products run as FMA vectors where available.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#endif
void policy_step_rows_cpu(const kernels::PolicyStepParams& p, int64_t begin, int64_t end) {
  std::vector<float> scratch(kernels::policy_scratch_floats(p));
  for (int64_t row = begin; row < end; ++row) kernels::policy_step_row_host(p, row, scratch.data());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> policy_step_cpu(
    const at::Tensor& features_in, const at::Tensor& h_in, const at::Tensor& c_in, const at::Tensor& w_ih_in,
    const at::Tensor& w_hh_in, const at::Tensor& b_in, const at::Tensor& w1_in, const at::Tensor& b1_in,
    const at::Tensor& w2_in, const at::Tensor& b2_in) {
  check_policy_step(features_in, h_in, c_in, w_ih_in, w_hh_in, b_in, w1_in, b1_in, w2_in, b2_in);
  const PolicyStepTensors t = policy_step_tensors(features_in, h_in, c_in, w_ih_in, w_hh_in, b_in, w1_in, b1_in,
                                                  w2_in, b2_in);
  const kernels::PolicyStepParams p = t.params();
  const int64_t F = p.F, H = p.H, G = p.G, O = p.O;
  // ~(4H(F+H) + G(H+F) + OG) multiply-adds a row: rows go to threads only in batches worth the wake-up.
  const int64_t work = 4 * H * (F + H) + G * (H + F) + O * G + 1;
  at::parallel_for(0, p.B, std::max<int64_t>(1, 262144 / work),
                   [&](int64_t begin, int64_t end) { policy_step_rows_cpu(p, begin, end); });
  return {t.probs, t.h_new, t.c_new};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> build_tree_cpu(const at::Tensor& parents_in,
                                                                          const at::Tensor& n_nodes_in) {
  check_build_tree(parents_in, n_nodes_in);
  const at::Tensor parents = parents_in.contiguous(), n_nodes = n_nodes_in.contiguous();
  const int64_t B = parents.size(0), M = parents.size(1);
  at::Tensor mask = at::zeros({B, M, M}, parents.options().dtype(at::kBool));
  at::Tensor depth = at::full({B, M}, -1, parents.options());
  at::Tensor paths = at::full({B, M, M}, -1, parents.options());
  at::Tensor n_paths = at::empty({B}, parents.options());
  const kernels::BuildTreeParams p{parents.data_ptr<int64_t>(), n_nodes.data_ptr<int64_t>(), B, M,
                                   mask.data_ptr<bool>(), depth.data_ptr<int64_t>(), paths.data_ptr<int64_t>(),
                                   n_paths.data_ptr<int64_t>()};
  for (int64_t t = 0; t < B; ++t) {  // first bad tree, first bad node: same report as the reference
    const int64_t code = kernels::build_tree_validate(p, t);
    if (code != kernels::kTreeOk) fail_build_tree(code, t, p.n_nodes[t], p.parents + t * M, M);
  }
  at::parallel_for(0, B, std::max<int64_t>(1, 4096 / (M * M)), [&](int64_t begin, int64_t end) {
    std::vector<unsigned char> has_child(M);
    for (int64_t t = begin; t < end; ++t) {
      for (int64_t i = 0; i < p.n_nodes[t]; ++i) kernels::build_tree_node(p, t, i);
      kernels::build_tree_paths(p, t, has_child.data());
    }
  });
  return {mask, depth, paths, n_paths};
}

}  // namespace

// Whether skinny_linear runs its AVX-512 build: compiled in, and this CPU has AVX-512F (checked once).
bool skinny_linear_uses_avx512() {
  static const bool use = [] {
#if defined(__GNUC__) && defined(__x86_64__)
    __builtin_cpu_init();
    return kernels::skinny_linear_avx512_compiled() && __builtin_cpu_supports("avx512f");
#else
    return false;
#endif
  }();
  return use;
}

// The greedy LM head's bounds on AVX512-VNNI (csrc/argmax_head_vnni.cpp): compiled in, this CPU has it and it is
// not turned off (set_argmax_vnni: the tests run the scalar reference of the same arithmetic too).
std::atomic<bool> g_argmax_vnni_on{true};
bool argmax_head_vnni_available() {
  static const bool use = [] {
#if defined(__GNUC__) && defined(__x86_64__)
    __builtin_cpu_init();
    return kernels::argmax_vnni_compiled() && __builtin_cpu_supports("avx512f") &&
           __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bw");
#else
    return false;
#endif
  }();
  return use;
}
bool argmax_head_vnni() { return g_argmax_vnni_on.load(std::memory_order_relaxed) && argmax_head_vnni_available(); }

namespace {

// n consecutive SkinnyLinearParams::x_key values no other call gets (never 0): one per product call or one
// per phase of a forward, so a thread's AMX split of x is reused only within one.
uint64_t fresh_x_keys(uint64_t n) {
  static std::atomic<uint64_t> next{1};
  return next.fetch_add(n);
}

// y = x @ w.T (+ bias) for few rows of x, for n products at once: the 4-row blocks of all the w's are
// handed out as one range, each task running its part of each w, so every w is read once in total and
// every y element is summed by one thread in a fixed order (thread-count invariant; the same bits as one
// call per product, with one thread hand-off instead of n: q/k/v and gate/up of a verify forward's layer).
void skinny_linear_run_many(const kernels::SkinnyLinearParams* ps_in, size_t n) {
  const bool use_avx512 = skinny_linear_uses_avx512();
  // one x_key per call: the AMX path splits each x once per thread, not once per task
  const uint64_t key = fresh_x_keys(1);
  std::vector<kernels::SkinnyLinearParams> ps(ps_in, ps_in + n);
  for (auto& q : ps) q.x_key = key;
  std::vector<int64_t> start(n + 1, 0);
  int64_t per_block = 0;  // multiply-adds of one block, the largest of the products
  for (size_t i = 0; i < n; ++i) {
    start[i + 1] = start[i] + (ps[i].M && ps[i].N ? kernels::skinny_linear_blocks(ps[i]) : 0);
    per_block = std::max(per_block, kernels::kSkinnyNR * ps[i].K * ps[i].M);
  }
  // Blocks per task: at least ~64k multiply-adds, so a task outweighs the thread hand-off.
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(per_block, 1));
  at::parallel_for(0, start.back(), grain, [&](int64_t b0, int64_t b1) {
    for (size_t i = 0; i < n; ++i) {
      const int64_t lo = std::max(b0, start[i]) - start[i], hi = std::min(b1, start[i + 1]) - start[i];
      if (lo >= hi) continue;
      if (use_avx512)
        kernels::skinny_linear_blocks_avx512(ps[i], lo, hi);
      else
        kernels::skinny_linear_blocks_native(ps[i], lo, hi);
    }
  });
}

void skinny_linear_run(const kernels::SkinnyLinearParams& p) { skinny_linear_run_many(&p, 1); }

at::Tensor skinny_linear_cpu(const at::Tensor& x_in, const at::Tensor& w_in, const c10::optional<at::Tensor>& bias_in) {
  check_skinny_linear(x_in, w_in, bias_in);
  const at::Tensor x = x_in.contiguous(), w = w_in.contiguous();
  const at::Tensor bias = bias_in.has_value() ? bias_in->contiguous() : at::Tensor();
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  at::Tensor y = at::empty({M, N}, x.options());
  if (M == 0 || N == 0) return y;
  const bool w32 = w.scalar_type() == at::kFloat;
  const kernels::SkinnyLinearParams p{x.data_ptr<float>(), w32 ? w.data_ptr<float>() : nullptr,
                                      bias.defined() ? bias.data_ptr<float>() : nullptr, y.data_ptr<float>(), M, N, K,
                                      w32 ? nullptr : static_cast<const uint16_t*>(w.const_data_ptr()),
                                      w.scalar_type() == at::kHalf};
  skinny_linear_run(p);
  return y;
}

// The same with Q4_1 / Q8_0 blocks (kernels/skinny_linear.h): one kernel, the weights decoded on load.
// quant_product checks the arguments, allocates y [M, N] and fills p (x, q, d, m, bias must stay alive
// while p is used: the caller holds them).
struct QuantProduct {
  at::Tensor x, q, d, m, bias, y;
  kernels::SkinnyLinearParams p{};
};
QuantProduct quant_product(const at::Tensor& x_in, const at::Tensor& q_in, const at::Tensor& d_in,
                           const c10::optional<at::Tensor>& m_in, const c10::optional<at::Tensor>& bias_in) {
  check_skinny_linear_quant(x_in, q_in, d_in, m_in, bias_in);
  const auto contig = [](const at::Tensor& t) { return t.is_contiguous() ? t : t.contiguous(); };
  QuantProduct r;
  r.x = contig(x_in), r.q = contig(q_in), r.d = contig(d_in);
  r.m = m_in.has_value() ? contig(*m_in) : at::Tensor();
  r.bias = bias_in.has_value() ? contig(*bias_in) : at::Tensor();
  const int64_t M = r.x.size(0), K = r.x.size(1), N = r.q.size(0);
  r.y = at::empty({M, N}, r.x.options());
  r.p = kernels::SkinnyLinearParams{r.x.data_ptr<float>(), nullptr, r.bias.defined() ? r.bias.data_ptr<float>() : nullptr,
                                    r.y.data_ptr<float>(), M, N, K};
  r.p.wq = static_cast<const uint8_t*>(r.q.const_data_ptr());
  r.p.wd = r.d.data_ptr<float>();
  r.p.wm = r.m.defined() ? r.m.data_ptr<float>() : nullptr;
  return r;
}

at::Tensor skinny_linear_quant_cpu(const at::Tensor& x_in, const at::Tensor& q_in, const at::Tensor& d_in,
                                   const c10::optional<at::Tensor>& m_in, const c10::optional<at::Tensor>& bias_in) {
  QuantProduct r = quant_product(x_in, q_in, d_in, m_in, bias_in);
  if (r.p.M == 0 || r.p.N == 0) return r.y;
  skinny_linear_run(r.p);
  return r.y;
}

// The decoder layers of one verify forward of a Llama target whose seven linears per layer all run
// on skinny_linear_quant (radar_ext.lean_forward's native path). The same ATen ops in the same order
// on the same inputs as LeanLlamaForward's Python loop (transformers' LlamaRMSNorm, apply_rotary_pos_emb
// and LlamaMLP spelled out, kv_cache.append's buffer writes, sdpa with the additive mask and GQA), so the
// same bits, minus ~30 x 40 Python-level op calls; q/k/v and gate/up each share one parallel region.
// params: per layer kLayerParams entries, the input and post-attention norm weights, then q, k, v, o,
// gate, up, down as (blocks q, d, m or None, bias or None). k_bufs / v_bufs [B, Hkv, capacity, D] per
// layer, entries [0, past_len) valid; the new K/V go to [past_len, past_len + M). capture: increasing
// layer indices whose input is returned (hidden_states[i]).
// Returns [x after the last layer, the captured inputs in capture order].
constexpr int64_t kLayerParams = 2 + 7 * 4;

std::vector<at::Tensor> llama_layers_quant_cpu(const at::Tensor& x_in, const at::Tensor& cos_in, const at::Tensor& sin_in,
                                               const at::Tensor& mask, const c10::List<c10::optional<at::Tensor>>& params,
                                               at::TensorList k_bufs, at::TensorList v_bufs, int64_t past_len,
                                               at::IntArrayRef capture, double eps, double scaling, int64_t head_dim) {
  TORCH_CHECK_VALUE(x_in.scalar_type() == at::kFloat && x_in.dim() == 3 && x_in.device().is_cpu(),
                    "x must be float32 [B, M, H] on the CPU, got ", describe(x_in));
  const int64_t n_layers = static_cast<int64_t>(k_bufs.size());
  TORCH_CHECK_VALUE(static_cast<int64_t>(params.size()) == n_layers * kLayerParams &&
                        static_cast<int64_t>(v_bufs.size()) == n_layers,
                    "params must hold ", kLayerParams, " entries per layer and v_bufs one buffer per layer: got ",
                    params.size(), " params, ", k_bufs.size(), " k_bufs, ", v_bufs.size(), " v_bufs");
  const int64_t B = x_in.size(0), M = x_in.size(1);
  TORCH_CHECK_VALUE(head_dim > 0 && past_len >= 0, "head_dim must be > 0 and past_len >= 0, got ", head_dim, ", ",
                    past_len);
  for (int64_t i = 0; i < n_layers; ++i)
    TORCH_CHECK_VALUE(k_bufs[i].dim() == 4 && v_bufs[i].dim() == 4 && k_bufs[i].size(0) == B &&
                          k_bufs[i].size(2) >= past_len + M && v_bufs[i].size(2) >= past_len + M &&
                          k_bufs[i].scalar_type() == at::kFloat && v_bufs[i].scalar_type() == at::kFloat,
                      "k_bufs[", i, "] / v_bufs[", i, "] must be float32 [B, Hkv, >= past_len + M, D] = [", B,
                      ", Hkv, >= ", past_len + M, ", D], got ", describe(k_bufs[i]), " / ", describe(v_bufs[i]));
  for (size_t j = 0; j < capture.size(); ++j)
    TORCH_CHECK_VALUE(capture[j] >= 0 && capture[j] < n_layers && (j == 0 || capture[j] > capture[j - 1]),
                      "capture must be increasing layer indices in [0, ", n_layers, "), got ", capture);
  const auto get = [&](int64_t i) -> c10::optional<at::Tensor> { return params.get(i); };
  // the linears at params[base], params[base + 4], ... on one input h [B, M, K], in one parallel region
  const auto linears = [&](const at::Tensor& h, int64_t base, int64_t n) {
    const int64_t K = h.size(-1), rows = h.numel() / K;
    const at::Tensor x2 = h.reshape({rows, K});
    std::vector<QuantProduct> prods;
    std::vector<kernels::SkinnyLinearParams> ps;
    for (int64_t j = 0; j < n; ++j) {
      const int64_t b = base + 4 * j;
      const c10::optional<at::Tensor> q = get(b), d = get(b + 1);
      TORCH_CHECK_VALUE(q.has_value() && d.has_value(), "params[", b, "] and params[", b + 1,
                        "] must be a linear's blocks q and d, got None");
      prods.push_back(quant_product(x2, *q, *d, get(b + 2), get(b + 3)));
      ps.push_back(prods.back().p);  // (p points into the tensors prods holds)
    }
    skinny_linear_run_many(ps.data(), ps.size());
    std::vector<at::Tensor> ys;
    for (const QuantProduct& r : prods) ys.push_back(r.y.view({B, M, r.q.size(0)}));
    return ys;
  };
  const auto linear = [&](const at::Tensor& h, int64_t base) { return linears(h, base, 1)[0]; };
  const auto rms_norm = [&](const at::Tensor& t, const at::Tensor& w) {
    at::Tensor h = t.to(at::kFloat);
    const at::Tensor variance = h.pow(2).mean({-1}, true);
    h = h * at::rsqrt(variance + eps);
    return w * h.to(t.scalar_type());
  };
  const auto rotate_half = [](const at::Tensor& t) {
    const int64_t half = t.size(-1) / 2;
    return at::cat({-t.slice(-1, half), t.slice(-1, 0, half)}, -1);  // (-x2, x1)
  };
  const at::Tensor cos = cos_in.unsqueeze(1), sin = sin_in.unsqueeze(1);
  const at::Tensor attn_mask = mask.slice(-1, 0, past_len + M);
  std::vector<at::Tensor> out(1);
  at::Tensor x = x_in;
  for (int64_t i = 0; i < n_layers; ++i) {
    for (int64_t c : capture)
      if (c == i) out.push_back(x);  // (increasing, so in capture order)
    const int64_t base = i * kLayerParams;
    const c10::optional<at::Tensor> in_w = get(base), post_w = get(base + 1);
    TORCH_CHECK_VALUE(in_w.has_value() && post_w.has_value(), "params[", base, "] and params[", base + 1,
                      "] must be layer ", i, "'s norm weights, got None");
    const at::Tensor h = rms_norm(x, *in_w);
    const std::vector<at::Tensor> qkv = linears(h, base + 2, 3);
    at::Tensor q = qkv[0].view({B, M, -1, head_dim}).transpose(1, 2);
    at::Tensor k = qkv[1].view({B, M, -1, head_dim}).transpose(1, 2);
    const at::Tensor v = qkv[2].view({B, M, -1, head_dim}).transpose(1, 2);
    q = (q * cos) + (rotate_half(q) * sin);
    k = (k * cos) + (rotate_half(k) * sin);
    k_bufs[i].slice(2, past_len, past_len + M).copy_(k);
    v_bufs[i].slice(2, past_len, past_len + M).copy_(v);
    const at::Tensor k_all = k_bufs[i].slice(2, 0, past_len + M), v_all = v_bufs[i].slice(2, 0, past_len + M);
    at::Tensor o = at::scaled_dot_product_attention(q, k_all, v_all, attn_mask.slice(-1, 0, k_all.size(-2)), 0.0,
                                                    false, scaling, true);
    o = o.transpose(1, 2).reshape({B, M, -1}).contiguous();
    x = x + linear(o, base + 14);
    const at::Tensor h2 = rms_norm(x, *post_w);
    const std::vector<at::Tensor> gate_up = linears(h2, base + 18, 2);
    x = x + linear(at::silu(gate_up[0]) * gate_up[1], base + 26);
  }
  out[0] = x;
  return out;
}

// The AMX layout's tensors (kernels/amx_linear.h, radar_ext.quant.amx_pack) for K inputs: q contiguous in
// GGUF's shape (Q4_1 uint8 [N, K/2], Q8_0 int8 [N, K]) with N % 16 == 0; scales contiguous float16 CPU
// [N/16, K/32, 16].
bool amx_packed_q_ok(const at::Tensor& q, int64_t K, bool q41) {
  return q.dim() == 2 && q.is_contiguous() && q.size(0) % 16 == 0 && K % 32 == 0 &&
         (q41 ? q.scalar_type() == at::kByte && q.size(1) == K / 2 : q.scalar_type() == at::kChar && q.size(1) == K);
}
bool amx_packed_scales_ok(const at::Tensor& t, int64_t N, int64_t K) {
  return t.scalar_type() == at::kHalf && t.is_contiguous() && t.device().is_cpu() && t.sizes().equals({N / 16, K / 32, 16});
}

// What the packed-layout ops share once their weights are checked: the bias checked, y [M, N] made, the params
// (float16 scales, the layout's flag set by `layout`) and rows(p, n0, n1) over groups of 16 outputs in parallel.
template <typename Layout>
at::Tensor packed_product(const at::Tensor& x, int64_t N, const at::Tensor& q, const at::Tensor& d, const at::Tensor* m,
                          const c10::optional<at::Tensor>& bias_in, Layout&& layout,
                          void (*rows)(const kernels::SkinnyLinearParams&, int64_t, int64_t)) {
  const int64_t M = x.size(0), K = x.size(1);
  at::Tensor bias;
  if (bias_in.has_value()) {
    TORCH_CHECK_VALUE(is_f32(*bias_in, {N}), "bias must be float32 [N] = [", N, "], got ", describe(*bias_in));
    bias = bias_in->contiguous();
  }
  at::Tensor y = at::empty({M, N}, x.options());
  if (M == 0 || N == 0) return y;
  kernels::SkinnyLinearParams p{x.data_ptr<float>(), nullptr, bias.defined() ? bias.data_ptr<float>() : nullptr,
                                y.data_ptr<float>(), M, N, K};
  p.wq = static_cast<const uint8_t*>(q.const_data_ptr());
  p.wd = static_cast<const float*>(d.const_data_ptr());
  p.wm = m != nullptr ? static_cast<const float*>(m->const_data_ptr()) : nullptr;
  p.scales_f16 = true;
  layout(p);
  p.x_key = fresh_x_keys(1);
  at::parallel_for(0, N / 16, 1, [&](int64_t g0, int64_t g1) { rows(p, 16 * g0, 16 * g1); });
  return y;
}

// skinny_linear_quant on weights in the AMX layout (kernels/amx_linear.h, radar_ext.quant.amx_pack): q as
// GGUF's shape (Q4_1 uint8 [N, K/2], Q8_0 int8 [N, K]) holding the units, d / m float16 [N/16, K/32, 16].
at::Tensor skinny_linear_amx_packed_cpu(const at::Tensor& x_in, const at::Tensor& q, const at::Tensor& d,
                                        const c10::optional<at::Tensor>& m, const c10::optional<at::Tensor>& bias_in) {
  TORCH_CHECK_VALUE(skinny_linear_uses_avx512() && kernels::amx_linear_supported(),
                    "skinny_linear_amx_packed needs a CPU with AMX (radar_ext._C.amx_supported() is False here)");
  TORCH_CHECK_VALUE(x_in.scalar_type() == at::kFloat && x_in.dim() == 2 && x_in.size(1) % 32 == 0,
                    "x must be float32 [M, K] with K divisible by 32, got ", describe(x_in));
  const at::Tensor x = x_in.contiguous();
  const int64_t K = x.size(1), N = q.dim() == 2 ? q.size(0) : -1;
  const bool q41 = m.has_value();
  TORCH_CHECK_VALUE(amx_packed_q_ok(q, K, q41), "q must be contiguous ",
                    q41 ? "uint8 [N, K/2] (Q4_1)" : "int8 [N, K] (Q8_0)", " with N divisible by 16 and K = ", K,
                    ", got ", describe(q));
  TORCH_CHECK_VALUE(amx_packed_scales_ok(d, N, K), "d must be contiguous float16 [N/16, K/32, 16] = [", N / 16,
                    ", ", K / 32, ", 16], got ", describe(d));
  TORCH_CHECK_VALUE(!q41 || amx_packed_scales_ok(*m, N, K), "m must be contiguous float16 [N/16, K/32, 16] like d, got ",
                    q41 ? describe(*m) : std::string());
  return packed_product(x, N, q, d, q41 ? &*m : nullptr, bias_in, [](kernels::SkinnyLinearParams& p) {
    p.amx_packed = true;
  }, kernels::amx_linear_packed_rows);
}

// The VNNI layout's tensors (kernels/vnni_linear.h, radar_ext.quant.vnni_pack) for K inputs: q contiguous uint8
// [N/16, K/32, 256]; scales contiguous float16 CPU [N/16, K/32, 16].
bool vnni_packed_ok(const at::Tensor& q, const at::Tensor& d, const c10::optional<at::Tensor>& m, int64_t K) {
  return q.dim() == 3 && q.scalar_type() == at::kByte && q.is_contiguous() && q.device().is_cpu() && K % 32 == 0 &&
         q.size(1) == K / 32 && q.size(2) == 256 && m.has_value() && amx_packed_scales_ok(d, 16 * q.size(0), K) &&
         amx_packed_scales_ok(*m, 16 * q.size(0), K);
}

// skinny_linear_quant's product on Q4_1 weights in the VNNI layout (kernels/vnni_linear.h: x in three int8 digits
// per block, integer sums): q uint8 [N/16, K/32, 256], d / m float16 [N/16, K/32, 16].
at::Tensor skinny_linear_vnni_packed_cpu(const at::Tensor& x_in, const at::Tensor& q, const at::Tensor& d,
                                         const at::Tensor& m, const c10::optional<at::Tensor>& bias_in) {
  TORCH_CHECK_VALUE(kernels::vnni_linear_supported(),
                    "skinny_linear_vnni_packed needs a CPU with AVX512-VNNI (radar_ext._C.vnni_linear_supported() is "
                    "False here)");
  TORCH_CHECK_VALUE(x_in.scalar_type() == at::kFloat && x_in.dim() == 2 && x_in.size(1) % 32 == 0,
                    "x must be float32 [M, K] with K divisible by 32, got ", describe(x_in));
  const at::Tensor x = x_in.contiguous();
  const int64_t K = x.size(1);
  TORCH_CHECK_VALUE(vnni_packed_ok(q, d, m, K), "q / d / m must be the VNNI layout of Q4_1 blocks for K = ", K,
                    ": contiguous uint8 [N/16, ", K / 32, ", 256] and float16 [N/16, ", K / 32, ", 16] twice, got ",
                    describe(q), ", ", describe(d), ", ", describe(m));
  const int64_t N = 16 * q.size(0);
  return packed_product(x, N, q, d, &m, bias_in, [](kernels::SkinnyLinearParams& p) { p.vnni_packed = true; },
                        kernels::vnni_linear_packed_rows);
}

// ---- llama_forward: the fused torch-free verify forward (kernels/llama_forward.h) ----------------
// params: [embed [V_e, H], final_norm [H], lm_head (4 entries)] then per layer kLayerParams entries:
// input norm [H], post-attention norm [H], then q, k, v, o, gate, up, down as 4 entries each:
// (float32 / bfloat16 / float16 weight [N, K], None, None, bias or None) or Q4_1 / Q8_0 blocks
// (q, d, m or None, bias or None), as skinny_linear / skinny_linear_quant take them.
constexpr int64_t kForwardHeadParams = 6;

kernels::LinearWeights forward_linear(const c10::List<c10::optional<at::Tensor>>& params, int64_t i, int64_t K,
                                      const char* what, int64_t layer) {
  const c10::optional<at::Tensor> w = params.get(i), d = params.get(i + 1), m = params.get(i + 2),
                                  bias = params.get(i + 3);
  std::ostringstream name;
  name << "params[" << i << "] (" << what;
  if (layer >= 0) name << " of layer " << layer;
  name << ")";
  TORCH_CHECK_VALUE(w.has_value(), name.str(), " must be a weight or quantized blocks, got None");
  // units [N/16, K/32, bytes] (kernels/vnni_linear.h): Q4_1 in the VNNI layout (radar_ext.quant.vnni_pack), or without
  // minima draft-grade Q8_0 (radar_ext.quant.q8_draft_pack: a draft head's weights only)
  const bool vnni = w->dim() == 3 && d.has_value();
  TORCH_CHECK_VALUE(vnni || (w->device().is_cpu() && w->is_contiguous() && w->dim() == 2), name.str(),
                    " must be a contiguous 2-D CPU tensor, got ", describe(*w));
  kernels::LinearWeights r;
  r.N = vnni ? 16 * w->size(0) : w->size(0);
  r.K = K;
  const auto wt = w->scalar_type();
  if (vnni) {
    TORCH_CHECK_VALUE(kernels::vnni_linear_supported(), name.str(), ": ",
                      m.has_value() ? "weights in the VNNI layout" : "draft-grade Q8_0 weights",
                      " need a CPU with AVX512-VNNI (radar_ext._C.vnni_linear_supported() is False)");
    if (m.has_value()) {
      TORCH_CHECK_VALUE(vnni_packed_ok(*w, *d, m, K), name.str(), " in the VNNI layout must be uint8 [N/16, ", K / 32,
                        ", 256] with float16 scales and minima [N/16, ", K / 32, ", 16], got ", describe(*w), ", ",
                        describe(*d), ", ", describe(*m));
      r.wm = static_cast<const float*>(m->const_data_ptr());
      r.vnni_packed = true;
    } else {
      const bool ok = wt == at::kByte && w->is_contiguous() && w->device().is_cpu() && K % 32 == 0 &&
                      w->size(1) == K / 32 && w->size(2) == 512 && amx_packed_scales_ok(*d, r.N, K);
      TORCH_CHECK_VALUE(ok, name.str(), " as draft-grade Q8_0 must be uint8 [N/16, ", K / 32,
                        ", 512] with float16 scales [N/16, ", K / 32, ", 16], got ", describe(*w), ", ", describe(*d));
      r.q8_draft = true;
    }
    r.wq = static_cast<const uint8_t*>(w->const_data_ptr());
    r.wd = static_cast<const float*>(d->const_data_ptr());
    r.scales_f16 = true;
  } else if (!d.has_value()) {
    TORCH_CHECK_VALUE((wt == at::kFloat || wt == at::kBFloat16 || wt == at::kHalf) && w->size(1) == K, name.str(),
                      " must be float32, bfloat16 or float16 [N, ", K, "], got ", describe(*w));
    if (wt == at::kFloat) {
      r.w = w->data_ptr<float>();
    } else {
      r.w16 = static_cast<const uint16_t*>(w->const_data_ptr());
      r.w16_is_f16 = wt == at::kHalf;
    }
  } else if (d->dim() == 3) {  // the AMX layout (radar_ext.quant.amx_pack, kernels/amx_linear.h)
    TORCH_CHECK_VALUE(skinny_linear_uses_avx512() && kernels::amx_linear_supported(), name.str(),
                      ": weights in the AMX layout need a CPU with AMX (radar_ext._C.amx_supported() is False)");
    const bool q41 = m.has_value();
    TORCH_CHECK_VALUE(amx_packed_q_ok(*w, K, q41), name.str(), " in the AMX layout must be ",
                      q41 ? "uint8 [N, K/2]" : "int8 [N, K]", " with N divisible by 16 and K = ", K,
                      " divisible by 32, got ", describe(*w));
    TORCH_CHECK_VALUE(amx_packed_scales_ok(*d, r.N, K) && (!q41 || amx_packed_scales_ok(*m, r.N, K)), "params[",
                      i + 1, "] / [", i + 2, "] (scales of ",
                      what, ") in the AMX layout must be float16 [", r.N / 16, ", ", K / 32, ", 16], got ",
                      describe(*d));
    r.wq = static_cast<const uint8_t*>(w->const_data_ptr());
    r.wd = static_cast<const float*>(d->const_data_ptr());
    r.wm = q41 ? static_cast<const float*>(m->const_data_ptr()) : nullptr;
    r.scales_f16 = true;
    r.amx_packed = true;
  } else {
    TORCH_CHECK_VALUE(K % 32 == 0, name.str(), ": quantized blocks need K divisible by 32, got K = ", K);
    if (m.has_value()) {
      TORCH_CHECK_VALUE(wt == at::kByte && w->size(1) == K / 2, name.str(), " must be uint8 [N, ", K / 2,
                        "] (Q4_1), got ", describe(*w));
    } else {
      TORCH_CHECK_VALUE(wt == at::kChar && w->size(1) == K, name.str(), " must be int8 [N, ", K, "] (Q8_0), got ",
                        describe(*w));
    }
    // scales float32, or float16 (GGUF's own, exact): then the minima too
    const auto st = d->scalar_type();
    const bool ok_d = (st == at::kFloat || st == at::kHalf) && d->sizes().equals({r.N, K / 32}) &&
                      d->is_contiguous() && d->device().is_cpu();
    TORCH_CHECK_VALUE(ok_d, "params[", i + 1, "] (scales of ", what, ") must be float32 or float16 [", r.N, ", ",
                      K / 32, "], got ", describe(*d));
    r.wq = static_cast<const uint8_t*>(w->const_data_ptr());
    r.wd = static_cast<const float*>(d->const_data_ptr());
    r.scales_f16 = st == at::kHalf;
    if (m.has_value()) {
      TORCH_CHECK_VALUE(m->scalar_type() == st && m->sizes().equals({r.N, K / 32}) && m->is_contiguous() &&
                            m->device().is_cpu(),
                        "params[", i + 2, "] (minima of ", what, ") must be ", dtype_name(st), " [", r.N, ", ",
                        K / 32, "] like the scales, got ", describe(*m));
      r.wm = static_cast<const float*>(m->const_data_ptr());
    }
  }
  if (bias.has_value()) {
    TORCH_CHECK_VALUE(is_f32(*bias, {r.N}) && bias->is_contiguous() && bias->device().is_cpu(), "params[", i + 3,
                      "] (bias of ", what, ") must be float32 [", r.N, "], got ", describe(*bias));
    r.bias = bias->data_ptr<float>();
  }
  return r;
}

const float* forward_vector(const c10::List<c10::optional<at::Tensor>>& params, int64_t i, int64_t H, const char* what,
                            int64_t layer) {
  const c10::optional<at::Tensor> t = params.get(i);
  TORCH_CHECK_VALUE(t.has_value() && is_f32(*t, {H}) && t->is_contiguous() && t->device().is_cpu(), "params[", i,
                    "] (", what, layer >= 0 ? " of layer " + std::to_string(layer) : std::string(),
                    ") must be a contiguous float32 [", H, "] CPU tensor, got ",
                    t.has_value() ? describe(*t) : std::string("None"));
  return t->data_ptr<float>();
}

// EAGLE-3 head mode of forward_impl (eagle_forward): params [embed, final norm, lm_head (4 entries), fc (4
// entries, all None without fc), hidden_norm] then the layers as llama_forward's.
constexpr int64_t kEagleHeadParams = kForwardHeadParams + 4 + 1;

// llama_forward and eagle_forward: hidden (EAGLE mode) is the head's input [B, M, F], else nullptr; mask
// None (EAGLE mode only): causal, row m sees cache positions [0, past_len + m].
std::vector<at::Tensor> forward_impl(const at::Tensor& tokens, const at::Tensor& cos_in, const at::Tensor& sin_in,
                                     const c10::optional<at::Tensor>& mask_opt,
                                     const c10::List<c10::optional<at::Tensor>>& params, at::TensorList k_bufs,
                                     at::TensorList v_bufs, int64_t past_len, at::IntArrayRef capture, double eps,
                                     double scaling, int64_t head_dim, const at::Tensor* hidden_in,
                                     bool last_only = false, const at::Tensor* argmax_w = nullptr) {
  const bool eagle = hidden_in != nullptr;
  const int64_t n_head_params = eagle ? kEagleHeadParams : kForwardHeadParams;
  TORCH_CHECK_VALUE(tokens.scalar_type() == at::kLong && tokens.dim() == 2 && tokens.device().is_cpu() &&
                        tokens.size(0) >= 1 && tokens.size(1) >= 1,
                    "tokens must be int64 [B, M] on the CPU with B, M >= 1, got ", describe(tokens));
  const int64_t B = tokens.size(0), M = tokens.size(1), n_layers = static_cast<int64_t>(k_bufs.size());
  TORCH_CHECK_VALUE(n_layers >= 1 && static_cast<int64_t>(v_bufs.size()) == n_layers &&
                        static_cast<int64_t>(params.size()) == n_head_params + n_layers * kLayerParams,
                    "params must hold ", n_head_params, " + ", kLayerParams,
                    " entries per layer and k_bufs / v_bufs one buffer per layer (>= 1): got ", params.size(),
                    " params, ", k_bufs.size(), " k_bufs, ", v_bufs.size(), " v_bufs");
  TORCH_CHECK_VALUE(head_dim >= 2 && head_dim % 2 == 0 && head_dim <= 512, "head_dim must be even in [2, 512], got ",
                    head_dim);
  TORCH_CHECK_VALUE(past_len >= 0, "past_len must be >= 0, got ", past_len);
  const c10::optional<at::Tensor> embed_opt = params.get(0);
  TORCH_CHECK_VALUE(embed_opt.has_value() && embed_opt->scalar_type() == at::kFloat && embed_opt->dim() == 2 &&
                        embed_opt->is_contiguous() && embed_opt->device().is_cpu(),
                    "params[0] (embed_tokens) must be a contiguous float32 [V, H] CPU tensor, got ",
                    embed_opt.has_value() ? describe(*embed_opt) : std::string("None"));
  const at::Tensor& embed = *embed_opt;
  const int64_t H = embed.size(1), D = head_dim, T = past_len + M;
  const at::Tensor tok = tokens.contiguous();
  const int64_t* tp = tok.data_ptr<int64_t>();
  for (int64_t r = 0; r < B * M; ++r)
    TORCH_CHECK_VALUE(tp[r] >= 0 && tp[r] < embed.size(0), "tokens[", r / M, ", ", r % M, "] = ", tp[r],
                      " must be in [0, ", embed.size(0), ")");
  TORCH_CHECK_VALUE(is_f32(cos_in, {B, M, D}) && is_f32(sin_in, {B, M, D}), "cos and sin must be float32 [B, M, D] = [",
                    B, ", ", M, ", ", D, "], got ", describe(cos_in), " and ", describe(sin_in));
  at::Tensor mask;
  std::vector<float> causal;
  if (mask_opt.has_value()) {
    const at::Tensor& mask_in = *mask_opt;
    TORCH_CHECK_VALUE(mask_in.scalar_type() == at::kFloat && mask_in.dim() == 4 && mask_in.size(0) == B &&
                          mask_in.size(1) == 1 && mask_in.size(2) == M && mask_in.size(3) >= T,
                      "mask must be float32 [B, 1, M, >= past_len + M] = [", B, ", 1, ", M, ", >= ", T, "], got ",
                      describe(mask_in));
    mask = mask_in.contiguous();
  } else {
    TORCH_CHECK_VALUE(eagle, "mask must be float32 [B, 1, M, >= past_len + M], got None");
    causal.assign(B * M * T, 0.0f);
    for (int64_t r = 0; r < B * M; ++r)
      for (int64_t t = past_len + r % M + 1; t < T; ++t) causal[r * T + t] = kernels::kNegInf;
  }
  const at::Tensor cos = cos_in.contiguous(), sin = sin_in.contiguous();
  std::vector<kernels::LlamaLayerWeights> layers(n_layers);
  std::vector<float*> kp(n_layers), vp(n_layers);
  int64_t n_heads = 0, n_kv = 0, inter = 0, cap = 0;
  for (int64_t i = 0; i < n_layers; ++i) {
    const int64_t base = n_head_params + i * kLayerParams;
    const int64_t K_in = eagle && i == 0 ? 2 * H : H;  // EAGLE's layer 0: [embedding | x], normed
    kernels::LlamaLayerWeights& L = layers[i];
    L.input_norm = forward_vector(params, base, H, "input_layernorm", i);
    L.post_norm = forward_vector(params, base + 1, H, "post_attention_layernorm", i);
    L.q = forward_linear(params, base + 2, K_in, "q_proj", i);
    L.k = forward_linear(params, base + 6, K_in, "k_proj", i);
    L.v = forward_linear(params, base + 10, K_in, "v_proj", i);
    if (i == 0) {
      n_heads = L.q.N / D, n_kv = L.k.N / D;
      TORCH_CHECK_VALUE(L.q.N % D == 0 && L.k.N % D == 0 && n_kv >= 1 && n_heads % n_kv == 0,
                        "q_proj / k_proj outputs (", L.q.N, ", ", L.k.N, ") must be multiples of head_dim ", D,
                        " with the query heads a multiple of the key/value heads");
    }
    TORCH_CHECK_VALUE(L.q.N == n_heads * D && L.k.N == n_kv * D && L.v.N == n_kv * D, "layer ", i,
                      ": q/k/v_proj must have ", n_heads * D, " / ", n_kv * D, " / ", n_kv * D, " outputs, got ",
                      L.q.N, " / ", L.k.N, " / ", L.v.N);
    L.o = forward_linear(params, base + 14, n_heads * D, "o_proj", i);
    TORCH_CHECK_VALUE(L.o.N == H, "layer ", i, ": o_proj must have H = ", H, " outputs, got ", L.o.N);
    L.gate = forward_linear(params, base + 18, H, "gate_proj", i);
    L.up = forward_linear(params, base + 22, H, "up_proj", i);
    TORCH_CHECK_VALUE(L.gate.N == L.up.N, "layer ", i, ": gate/up_proj must have as many outputs, got ", L.gate.N,
                      " / ", L.up.N);
    inter = std::max(inter, L.gate.N);
    L.down = forward_linear(params, base + 26, L.gate.N, "down_proj", i);
    TORCH_CHECK_VALUE(L.down.N == H, "layer ", i, ": down_proj must have H = ", H, " outputs, got ", L.down.N);
    TORCH_CHECK_VALUE(eagle || !(L.q.q8_draft || L.k.q8_draft || L.v.q8_draft || L.o.q8_draft || L.gate.q8_draft ||
                                 L.up.q8_draft || L.down.q8_draft),
                      "layer ", i, ": draft-grade Q8_0 weights (int8 activations, not exact) are for a draft head's "
                      "eagle_forward only, not the target's forward");
    const at::Tensor &kb = k_bufs[i], &vb = v_bufs[i];
    if (i == 0) cap = kb.dim() == 4 ? kb.size(2) : 0;
    TORCH_CHECK_VALUE(kb.scalar_type() == at::kFloat && vb.scalar_type() == at::kFloat && kb.is_contiguous() &&
                          vb.is_contiguous() && kb.sizes().equals({B, n_kv, cap, D}) &&
                          vb.sizes().equals({B, n_kv, cap, D}) && cap >= T,
                      "k_bufs[", i, "] / v_bufs[", i, "] must be contiguous float32 [B, Hkv, capacity, D] = [", B,
                      ", ", n_kv, ", >= ", T, " (the same for every layer), ", D, "], got ", describe(kb), " / ",
                      describe(vb));
    kp[i] = kb.data_ptr<float>();
    vp[i] = vb.data_ptr<float>();
  }
  const float* final_norm = forward_vector(params, 1, H, "final norm", -1);
  const kernels::LinearWeights lm_head = forward_linear(params, 2, H, "lm_head", -1);
  TORCH_CHECK_VALUE(eagle || !lm_head.q8_draft, "lm_head: draft-grade Q8_0 weights (int8 activations, not exact) are "
                    "for a draft head's eagle_forward only, not the target's forward");
  for (size_t j = 0; j < capture.size(); ++j)
    TORCH_CHECK_VALUE(capture[j] >= 0 && capture[j] <= n_layers + 1,
                      "capture must hold slots in [0, n_layers + 1] = [0, ", n_layers + 1, "], got ", capture);
  const auto f32 = tok.options().dtype(at::kFloat);
  const int64_t R = B * M, RH = last_only ? B : R;
  kernels::ArgmaxHead argmax;
  if (argmax_w != nullptr) {
    TORCH_CHECK_VALUE(lm_head.wq != nullptr && lm_head.wm == nullptr && lm_head.scales_f16 && !lm_head.amx_packed,
                      "llama_forward_argmax: the LM head (params[2..5]) must be Q8_0 blocks with float16 scales, "
                      "not in the AMX layout");
    TORCH_CHECK_VALUE(H % 32 == 0 && H <= kernels::kArgmaxMaxK, "llama_forward_argmax: hidden size must be a multiple "
                      "of 32 up to ", kernels::kArgmaxMaxK, ", got ", H);
    TORCH_CHECK_VALUE(!(skinny_linear_uses_avx512() && kernels::amx_linear_usable() && RH >= kernels::kAmxMinRows),
                      "llama_forward_argmax: with AMX on, a head of ", RH, " rows runs on the tile unit (other bits); "
                      "take the logits (llama_forward) there");
    const int64_t G = kernels::argmax_groups(lm_head.N), nb = H / 32;
    const at::Tensor &aq = argmax_w[0], &ad = argmax_w[1], &aa = argmax_w[2];
    TORCH_CHECK_VALUE(aq.scalar_type() == at::kByte && aq.is_contiguous() && aq.device().is_cpu() &&
                          aq.numel() == G * nb * 512,
                      "argmax_q must be contiguous uint8 with ", G * nb * 512, " bytes (radar_ext.quant.argmax_pack), got ",
                      describe(aq));
    TORCH_CHECK_VALUE(ad.scalar_type() == at::kHalf && ad.is_contiguous() && ad.device().is_cpu() &&
                          ad.numel() == G * nb * 16,
                      "argmax_d must be contiguous float16 with ", G * nb * 16, " values, got ", describe(ad));
    TORCH_CHECK_VALUE(aa.scalar_type() == at::kFloat && aa.is_contiguous() && aa.device().is_cpu() &&
                          aa.numel() == G * nb * 16,
                      "argmax_a must be contiguous float32 with ", G * nb * 16, " values, got ", describe(aa));
    argmax.q = static_cast<const uint8_t*>(aq.const_data_ptr());
    argmax.d = static_cast<const uint16_t*>(ad.const_data_ptr());
    argmax.a = static_cast<const float*>(aa.const_data_ptr());
    argmax.N = lm_head.N;
    argmax.K = H;
    argmax.vnni = argmax_head_vnni();
  }
  const auto i64 = tok.options().dtype(at::kLong);
  std::vector<at::Tensor> out;
  if (argmax_w != nullptr) {
    out.push_back(at::empty({B, last_only ? 1 : M}, i64));
    out.push_back(at::empty({B, last_only ? 1 : M}, i64));
  } else {
    out.push_back(at::empty({B, last_only ? 1 : M, lm_head.N}, f32));
  }
  std::vector<float*> cap_ptrs;
  for (size_t j = 0; j < capture.size(); ++j) {
    out.push_back(at::empty({B, M, H}, f32));
    cap_ptrs.push_back(out.back().data_ptr<float>());
  }
  at::Tensor hidden;
  kernels::LinearWeights fc;
  const float* hidden_norm = nullptr;
  if (eagle) {
    const c10::optional<at::Tensor> fcw = params.get(kForwardHeadParams);
    const bool has_fc = fcw.has_value();
    // (fc's inputs: its weight's columns, or 32 per block of a [N/16, K/32, units] packed layout)
    const int64_t F = !has_fc ? H : fcw->dim() == 3 ? 32 * fcw->size(1) : fcw->size(-1);
    TORCH_CHECK_VALUE(hidden_in->scalar_type() == at::kFloat && hidden_in->device().is_cpu() &&
                          hidden_in->sizes().equals({B, M, F}),
                      "hidden must be float32 [B, M, ", F, "] = [", B, ", ", M, ", ", F, "] on the CPU (",
                      has_fc ? "the target's features, fc's input" : "the head's previous output", "), got ",
                      describe(*hidden_in));
    hidden = hidden_in->contiguous();
    if (has_fc) {
      fc = forward_linear(params, kForwardHeadParams, F, "fc", -1);
      TORCH_CHECK_VALUE(fc.N == H, "fc must have H = ", H, " outputs, got ", fc.N);
    }
    hidden_norm = forward_vector(params, kForwardHeadParams + 4, H, "hidden_norm", -1);
  }
  kernels::LlamaForwardParams p{B, M, H, n_layers, n_heads, n_kv, D, inter, lm_head.N,
                                static_cast<float>(eps), static_cast<float>(scaling), tp, embed.data_ptr<float>(),
                                cos.data_ptr<float>(), sin.data_ptr<float>(),
                                mask.defined() ? mask.data_ptr<float>() : causal.data(), mask.defined() ? mask.size(3) : T,
                                past_len, layers.data(), kp.data(), vp.data(), cap, final_norm, lm_head,
                                argmax_w ? nullptr : out[0].data_ptr<float>(), capture.data(), cap_ptrs.data(),
                                static_cast<int64_t>(capture.size())};
  p.logits_last_only = last_only;
  // greedy mode's scratch (kernels/llama_forward.h, LlamaForwardParams::argmax)
  std::vector<float> a_f;
  std::vector<int8_t> a_hq;
  std::vector<int32_t> a_t;
  std::vector<uint8_t> a_bad;
  if (argmax_w != nullptr) {
    const int64_t G = kernels::argmax_groups(lm_head.N), nb = H / 32, stride = G * kernels::kArgmaxGroup;
    const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
    p.a_chunk = std::max<int64_t>(16, G / (8 * threads));
    const int64_t n_chunks = (G + p.a_chunk - 1) / p.a_chunk;
    a_f.resize(RH * H + 2 * RH * nb + RH * stride + n_chunks * RH * kernels::kArgmaxGroup);
    a_hq.resize(RH * H);
    a_t.resize(RH * nb);
    a_bad.resize(RH);
    p.a_h = a_f.data();
    p.a_s = p.a_h + RH * H;
    p.a_c = p.a_s + RH * nb;
    p.a_hi = p.a_c + RH * nb;
    p.a_lo = p.a_hi + RH * stride;
    p.a_hq = a_hq.data();
    p.a_t = a_t.data();
    p.a_bad = a_bad.data();
    p.argmax = &argmax;
    p.argmax_out = out[0].data_ptr<int64_t>();
    p.argmax_cand = out[1].data_ptr<int64_t>();
    p.logits = nullptr;
  }
  if (eagle) {
    p.hidden = hidden.data_ptr<float>();
    p.fc = fc;
    p.hidden_norm = hidden_norm;
  }
  // One thread per ~8k multiply-adds of a layer at most (a second thread costs a wake-up, ~10 us; the
  // tests' tiny models still get two, so the claiming of phases runs there too).
  const int64_t work = B * M * (H * (n_heads + 2 * n_kv) * D + n_heads * D * H + 3 * H * inter + H * lm_head.N / n_layers);
  const int nt = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), work >> 13)));
  // (uninitialized: every element is written before it is read)
  const std::unique_ptr<float[]> shared(new float[kernels::llama_shared_floats(p)]);
  const std::unique_ptr<float[]> per_thread(new float[nt * kernels::llama_thread_floats(p)]);
  kernels::LlamaForwardWorkspace ws{};
  kernels::llama_workspace_carve(ws, p, shared.get(), per_thread.get());
  std::vector<kernels::LlamaPhaseCounters> phases(kernels::llama_n_phases(p));
  p.x_key_base = fresh_x_keys(phases.size());  // one x_key per phase
  const bool avx512 = skinny_linear_uses_avx512();
#if defined(_OPENMP)
#pragma omp parallel num_threads(nt)
#endif
  {
#if defined(_OPENMP)
    const int tid = omp_get_thread_num(), nth = omp_get_num_threads();
#else
    const int tid = 0, nth = 1;
#endif
    if (avx512)
      kernels::llama_forward_thread_avx512(p, ws, phases.data(), tid, nth);
    else
      kernels::llama_forward_thread(p, ws, phases.data(), tid, nth);
  }
  return out;
}

// Greedy mode: [argmax [B, M'] int64, candidates [B, M'] int64, captures...] (kernels/argmax_head.h).
std::vector<at::Tensor> llama_forward_argmax_cpu(const at::Tensor& tokens, const at::Tensor& cos, const at::Tensor& sin,
                                                 const at::Tensor& mask,
                                                 const c10::List<c10::optional<at::Tensor>>& params,
                                                 at::TensorList k_bufs, at::TensorList v_bufs, int64_t past_len,
                                                 at::IntArrayRef capture, double eps, double scaling, int64_t head_dim,
                                                 bool last_only, const at::Tensor& argmax_q, const at::Tensor& argmax_d,
                                                 const at::Tensor& argmax_a) {
  const at::Tensor w[3] = {argmax_q, argmax_d, argmax_a};
  return forward_impl(tokens, cos, sin, mask, params, k_bufs, v_bufs, past_len, capture, eps, scaling, head_dim,
                      nullptr, last_only, w);
}

std::vector<at::Tensor> llama_forward_cpu(const at::Tensor& tokens, const at::Tensor& cos, const at::Tensor& sin,
                                          const at::Tensor& mask, const c10::List<c10::optional<at::Tensor>>& params,
                                          at::TensorList k_bufs, at::TensorList v_bufs, int64_t past_len,
                                          at::IntArrayRef capture, double eps, double scaling, int64_t head_dim,
                                          bool last_only) {
  return forward_impl(tokens, cos, sin, mask, params, k_bufs, v_bufs, past_len, capture, eps, scaling, head_dim,
                      nullptr, last_only);
}

// ---- eagle_forward: one EAGLE-3 head call, torch-free (kernels/llama_forward.h's EAGLE mode) ------
// hidden [B, M, F] (the target's features when params hold fc, else the head's previous output [B, M, H]),
// tokens [B, M] (their target-vocabulary embeddings from params[0]); the head's K/V cache in k_bufs /
// v_bufs as llama_forward's, mask None: causal over the new rows. Returns (draft logits [B, M, Vd], or
// [B, 1, Vd] of the last row with last_only; the head's output [B, M, H] before its final norm: the next
// call's hidden).
std::vector<at::Tensor> eagle_forward_cpu(const at::Tensor& tokens, const at::Tensor& hidden, const at::Tensor& cos,
                                          const at::Tensor& sin, const c10::optional<at::Tensor>& mask,
                                          const c10::List<c10::optional<at::Tensor>>& params, at::TensorList k_bufs,
                                          at::TensorList v_bufs, int64_t past_len, double eps, double scaling,
                                          int64_t head_dim, bool last_only) {
  const int64_t n_layers = static_cast<int64_t>(k_bufs.size());
  const std::vector<int64_t> capture{n_layers};  // the last layer's output, before the final norm
  return forward_impl(tokens, cos, sin, mask, params, k_bufs, v_bufs, past_len, capture, eps, scaling, head_dim,
                      &hidden, last_only);
}

}  // namespace

TORCH_LIBRARY(radar_ext, m) {
  m.def("topk_expand(Tensor logits, Tensor beam_scores, int tree_topk, float temperature=1.0) -> "
        "(Tensor child_logp, Tensor child_ids, Tensor child_scores, Tensor next_scores, Tensor next_parent, "
        "Tensor next_ids)");
  m.def("policy_step(Tensor features, Tensor h, Tensor c, Tensor w_ih, Tensor w_hh, Tensor b, Tensor w1, "
        "Tensor b1, Tensor w2, Tensor b2) -> (Tensor probs, Tensor h_new, Tensor c_new)");
  m.def("build_tree(Tensor parents, Tensor n_nodes) -> (Tensor mask, Tensor depth, Tensor paths, Tensor n_paths)");
  m.def("skinny_linear(Tensor x, Tensor w, Tensor? bias=None) -> Tensor");
  m.def("skinny_linear_quant(Tensor x, Tensor q, Tensor d, Tensor? m=None, Tensor? bias=None) -> Tensor");
  m.def("skinny_linear_amx_packed(Tensor x, Tensor q, Tensor d, Tensor? m=None, Tensor? bias=None) -> Tensor");
  m.def("skinny_linear_vnni_packed(Tensor x, Tensor q, Tensor d, Tensor m, Tensor? bias=None) -> Tensor");
  // What skinny_linear / skinny_linear_quant run on a GPU, callable on any device (tests, no GPU needed).
  m.def("skinny_linear_aten(Tensor x, Tensor w, Tensor? bias=None) -> Tensor");
  m.def("skinny_linear_quant_aten(Tensor x, Tensor q, Tensor d, Tensor? m=None, Tensor? bias=None) -> Tensor");
  m.def("llama_layers_quant(Tensor x, Tensor cos, Tensor sin, Tensor mask, Tensor?[] params, Tensor(a!)[] k_bufs, "
        "Tensor(b!)[] v_bufs, int past_len, int[] capture, float eps, float scaling, int head_dim) -> Tensor[]");
  m.def("eagle_forward(Tensor tokens, Tensor hidden, Tensor cos, Tensor sin, Tensor? mask, Tensor?[] params, "
        "Tensor(a!)[] k_bufs, Tensor(b!)[] v_bufs, int past_len, float eps, float scaling, int head_dim, "
        "bool last_only=False) -> Tensor[]");
  m.def("llama_forward(Tensor tokens, Tensor cos, Tensor sin, Tensor mask, Tensor?[] params, Tensor(a!)[] k_bufs, "
        "Tensor(b!)[] v_bufs, int past_len, int[] capture, float eps, float scaling, int head_dim, "
        "bool last_only=False) -> Tensor[]");
  m.def("llama_forward_argmax(Tensor tokens, Tensor cos, Tensor sin, Tensor mask, Tensor?[] params, "
        "Tensor(a!)[] k_bufs, Tensor(b!)[] v_bufs, int past_len, int[] capture, float eps, float scaling, "
        "int head_dim, bool last_only, Tensor argmax_q, Tensor argmax_d, Tensor argmax_a) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(radar_ext, CPU, m) {
  m.impl("topk_expand", &topk_expand_cpu);
  m.impl("policy_step", &policy_step_cpu);
  m.impl("build_tree", &build_tree_cpu);
  m.impl("skinny_linear", &skinny_linear_cpu);
  m.impl("skinny_linear_quant", &skinny_linear_quant_cpu);
  m.impl("skinny_linear_amx_packed", &skinny_linear_amx_packed_cpu);
  m.impl("skinny_linear_vnni_packed", &skinny_linear_vnni_packed_cpu);
  m.impl("llama_layers_quant", &llama_layers_quant_cpu);
  m.impl("llama_forward", &llama_forward_cpu);
  m.impl("llama_forward_argmax", &llama_forward_argmax_cpu);
  m.impl("eagle_forward", &eagle_forward_cpu);
}

// ATen calls only: the same code on every device, and traceable (no fake implementation needed).
TORCH_LIBRARY_IMPL(radar_ext, CompositeImplicitAutograd, m) {
  m.impl("skinny_linear_aten", &skinny_linear_aten);
  m.impl("skinny_linear_quant_aten", &skinny_linear_quant_aten);
}

}  // namespace radar_ext

// The Python module radar_ext._C: importing it runs the registrations above.
namespace {

PyObject* built_with_cuda(PyObject*, PyObject*) {
#ifdef RADAR_EXT_WITH_CUDA
  Py_RETURN_TRUE;
#else
  Py_RETURN_FALSE;
#endif
}

// The CUDA architectures compiled in, as setup.py's arch_token ("70PTX_75_80": sm_70 with its PTX,
// sm_75, sm_80); None without the CUDA kernels.
PyObject* cuda_archs(PyObject*, PyObject*) {
#if defined(RADAR_EXT_WITH_CUDA) && defined(RADAR_EXT_CUDA_ARCHS)
#define RADAR_EXT_STR2(x) #x
#define RADAR_EXT_STR(x) RADAR_EXT_STR2(x)
  return PyUnicode_FromString(RADAR_EXT_STR(RADAR_EXT_CUDA_ARCHS));
#else
  Py_RETURN_NONE;
#endif
}

// A C++ bool as a new Python reference.
PyObject* py_bool(bool b) {
  if (b) Py_RETURN_TRUE;
  Py_RETURN_FALSE;
}

// A switch's setter: set(the truth of arg) returns the previous setting, handed back as a Python bool.
template <typename Set>
PyObject* py_switch(PyObject* arg, Set&& set) {
  const int on = PyObject_IsTrue(arg);
  if (on < 0) return nullptr;
  return py_bool(set(on != 0));
}

PyObject* skinny_linear_avx512(PyObject*, PyObject*) { return py_bool(radar_ext::skinny_linear_uses_avx512()); }

PyObject* amx_supported(PyObject*, PyObject*) {
  return py_bool(radar_ext::skinny_linear_uses_avx512() && radar_ext::kernels::amx_linear_supported());
}

PyObject* amx_enabled(PyObject*, PyObject*) {
  return py_bool(radar_ext::skinny_linear_uses_avx512() && radar_ext::kernels::amx_linear_usable());
}

PyObject* vnni_linear_supported(PyObject*, PyObject*) { return py_bool(radar_ext::kernels::vnni_linear_supported()); }

PyObject* vnni_linear_enabled(PyObject*, PyObject*) { return py_bool(radar_ext::kernels::vnni_linear_usable()); }

PyObject* set_vnni_linear(PyObject*, PyObject* arg) {
  return py_switch(arg, [](bool on) { return radar_ext::kernels::vnni_linear_set_enabled(on); });
}

PyObject* argmax_vnni(PyObject*, PyObject*) { return py_bool(radar_ext::argmax_head_vnni()); }

PyObject* set_argmax_vnni(PyObject*, PyObject* arg) {
  return py_switch(arg, [](bool on) {
    const bool was = radar_ext::argmax_head_vnni();
    radar_ext::g_argmax_vnni_on.store(on);
    return was;
  });
}

PyObject* wide_tiles(PyObject*, PyObject*) { return py_bool(radar_ext::kernels::skinny_wide_tiles()); }

PyObject* set_wide_tiles(PyObject*, PyObject* arg) {
  return py_switch(arg, [](bool on) { return radar_ext::kernels::skinny_set_wide_tiles(on); });
}

PyObject* amx_min_rows(PyObject*, PyObject*) { return PyLong_FromLongLong(radar_ext::kernels::kAmxMinRows); }

PyObject* set_amx_enabled(PyObject*, PyObject* arg) {
  return py_switch(arg, [](bool on) { return radar_ext::kernels::amx_linear_set_enabled(on); });
}

// How many distinct threads at::parallel_for uses in this extension for 64 one-item tasks. 1 when the
// extension was compiled without OpenMP: at::parallel_for is inline and then runs serially whatever
// torch.get_num_threads() says (the bug that kept skinny_linear on one core). Each task busy-waits
// until a second thread has joined (or ~50 ms passed), so a free thread always gets work.
PyObject* parallel_threads(PyObject*, PyObject*) {
  std::atomic<int> seen{0};
  std::atomic<int> mask{0};
  at::parallel_for(0, 64, 1, [&](int64_t, int64_t) {
    const int bit = 1 << (at::get_thread_num() % 31);
    if (!(mask.fetch_or(bit) & bit)) seen.fetch_add(1);
    const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(50);
    while (seen.load() < at::get_num_threads() && std::chrono::steady_clock::now() < until) {
    }
  });
  return PyLong_FromLong(seen.load());
}

PyMethodDef methods[] = {
    {"parallel_threads", parallel_threads, METH_NOARGS,
     "Distinct threads at::parallel_for uses inside this extension (1 if it was built without OpenMP)."},
    {"built_with_cuda", built_with_cuda, METH_NOARGS, "True when the CUDA kernels were compiled in."},
    {"cuda_archs", cuda_archs, METH_NOARGS, "The CUDA architectures compiled in ('70PTX_75_80'), or None."},
    {"skinny_linear_avx512", skinny_linear_avx512, METH_NOARGS,
     "True when skinny_linear runs its AVX-512 kernel on this CPU (else the plain C++ one)."},
    {"amx_supported", amx_supported, METH_NOARGS,
     "True when this CPU and OS run the AMX path of the block-quantized products (Q4_1 / Q8_0)."},
    {"amx_enabled", amx_enabled, METH_NOARGS, "True when the block-quantized products run on AMX now."},
    {"amx_min_rows", amx_min_rows, METH_NOARGS, "Rows of x from which the block-quantized products use AMX."},
    {"set_amx_enabled", set_amx_enabled, METH_O,
     "Turns the AMX path of the block-quantized products on or off; returns the previous setting."},
    {"vnni_linear_supported", vnni_linear_supported, METH_NOARGS,
     "True when this CPU runs the integer Q4_1 products (AVX512-VNNI, kernels/vnni_linear.h)."},
    {"vnni_linear_enabled", vnni_linear_enabled, METH_NOARGS,
     "True when the fused forward packs its Q4_1 weights for the VNNI products (supported, not turned off)."},
    {"set_vnni_linear", set_vnni_linear, METH_O,
     "Turns the VNNI Q4_1 products on or off for weights packed later; returns the previous setting."},
    {"argmax_vnni", argmax_vnni, METH_NOARGS,
     "True when the greedy LM head (llama_forward_argmax) runs its bounds with AVX512-VNNI on this CPU."},
    {"set_argmax_vnni", set_argmax_vnni, METH_O,
     "Turns the VNNI path of the greedy LM head on or off (off: its scalar reference, the same results); returns "
     "the previous setting."},
    {"wide_tiles", wide_tiles, METH_NOARGS,
     "True when block-quantized AVX-512 products of 5+ rows run in register tiles of up to 6 rows (the default)."},
    {"set_wide_tiles", set_wide_tiles, METH_O,
     "Turns the tiles of up to 6 rows on or off (4-row tiles: the same bits); returns the previous setting."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "radar_ext custom ops (torch.ops.radar_ext.*)", -1, methods};

}  // namespace

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&module_def); }
