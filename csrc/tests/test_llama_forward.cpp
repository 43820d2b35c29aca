// llama_forward (kernels/llama_forward.h) on a tiny random Llama against a float64 forward written out here:
// a target verify (tree mask over a cached prefix, captures) and an EAGLE-3 head call (fc from 3H features,
// [norm(embedding) | norm(x)] into q/k/v, a second plain layer with its own width, last-row logits). Every
// result must also be bitwise the same with one thread and with two (the work split must not change a sum),
// and the AVX-512 build, where this CPU runs it, must agree with the reference as closely.
#include <cmath>
#include <cstring>
#include <cstdio>
#include <thread>
#include <vector>

#include "check.h"
#include "kernels/llama_forward.h"

using namespace radar_ext::kernels;

static float value(uint32_t& s, float scale) {
  s = s * 1664525u + 1013904223u;
  return scale * (static_cast<float>(s >> 8) / 16777216.0f - 0.5f);
}
static std::vector<float> rand_vec(size_t n, uint32_t& s, float scale) {
  std::vector<float> v(n);
  for (float& x : v) x = value(s, scale);
  return v;
}

struct Linear {
  std::vector<float> w;
  int64_t N, K;
  LinearWeights view() const {
    LinearWeights l;
    l.w = w.data();
    l.N = N;
    l.K = K;
    return l;
  }
};
static Linear make_linear(int64_t N, int64_t K, uint32_t& s) { return {rand_vec(N * K, s, 2.0f / std::sqrt(K)), N, K}; }

struct Layer {
  std::vector<float> in_norm, post_norm;
  Linear q, k, v, o, gate, up, down;
};

struct Model {
  int64_t H = 32, nh = 4, nkv = 2, D = 8, vocab = 40, emb_rows = 40;
  float eps = 1e-5f;
  std::vector<Layer> layers;
  std::vector<float> embed, final_norm, hidden_norm;
  Linear lm_head, fc;
  bool eagle = false;
};

static Model make_model(bool eagle, uint32_t& s) {
  Model m;
  m.eagle = eagle;
  const int64_t inters[2] = {48, eagle ? 40 : 48};
  for (int l = 0; l < 2; ++l) {
    const int64_t K = eagle && l == 0 ? 2 * m.H : m.H;
    Layer L;
    L.in_norm = rand_vec(m.H, s, 1.0f);
    L.post_norm = rand_vec(m.H, s, 1.0f);
    for (float& x : L.in_norm) x += 1.0f;
    for (float& x : L.post_norm) x += 1.0f;
    L.q = make_linear(m.nh * m.D, K, s);
    L.k = make_linear(m.nkv * m.D, K, s);
    L.v = make_linear(m.nkv * m.D, K, s);
    L.o = make_linear(m.H, m.nh * m.D, s);
    L.gate = make_linear(inters[l], m.H, s);
    L.up = make_linear(inters[l], m.H, s);
    L.down = make_linear(m.H, inters[l], s);
    m.layers.push_back(L);
  }
  m.embed = rand_vec(m.emb_rows * m.H, s, 2.0f);
  m.final_norm = rand_vec(m.H, s, 1.0f);
  m.hidden_norm = rand_vec(m.H, s, 1.0f);
  for (float& x : m.final_norm) x += 1.0f;
  for (float& x : m.hidden_norm) x += 1.0f;
  m.lm_head = make_linear(m.vocab, m.H, s);
  m.fc = make_linear(m.H, 3 * m.H, s);
  return m;
}

// ---- the float64 reference --------------------------------------------------------------------------
typedef std::vector<double> Vec;
static Vec matvec(const Linear& l, const Vec& x) {
  Vec y(l.N, 0.0);
  for (int64_t n = 0; n < l.N; ++n)
    for (int64_t k = 0; k < l.K; ++k) y[n] += static_cast<double>(l.w[n * l.K + k]) * x[k];
  return y;
}
static Vec rms(const Vec& x, const std::vector<float>& w, double eps) {
  double ss = 0.0;
  for (double v : x) ss += v * v;
  const double inv = 1.0 / std::sqrt(ss / x.size() + eps);
  Vec y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = w[i] * (x[i] * inv);
  return y;
}
static void rope(double* t, const float* c, const float* sn, int64_t D) {
  std::vector<double> tmp(t, t + D);
  for (int64_t d = 0; d < D / 2; ++d) t[d] = tmp[d] * c[d] - tmp[d + D / 2] * sn[d];
  for (int64_t d = D / 2; d < D; ++d) t[d] = tmp[d] * c[d] + tmp[d - D / 2] * sn[d];
}

struct Case {
  int64_t M = 3, past = 5, cap = 12;
  std::vector<int64_t> tokens;
  std::vector<float> cos, sin, mask, hidden;                // [M, D] x2, [M, past + M], [M, F]
  std::vector<std::vector<float>> k0, v0;                   // per layer [Hkv, cap, D]: the cached prefix
};

// logits [M, vocab] and the last layer's output [M, H]
static void reference(const Model& m, const Case& c, std::vector<Vec>& logits, std::vector<Vec>& out) {
  const int64_t M = c.M, H = m.H, D = m.D, T = c.past + M, g = m.nh / m.nkv;
  std::vector<Vec> x(M), emb(M);
  for (int64_t r = 0; r < M; ++r) {
    emb[r] = Vec(m.embed.begin() + c.tokens[r] * H, m.embed.begin() + (c.tokens[r] + 1) * H);
    if (!m.eagle) {
      x[r] = emb[r];
    } else {
      Vec f(c.hidden.begin() + r * 3 * H, c.hidden.begin() + (r + 1) * 3 * H);
      x[r] = matvec(m.fc, f);
    }
  }
  for (size_t l = 0; l < m.layers.size(); ++l) {
    const Layer& L = m.layers[l];
    std::vector<double> K(m.nkv * T * D), V(m.nkv * T * D);
    for (int64_t h = 0; h < m.nkv; ++h)
      for (int64_t t = 0; t < c.past; ++t)
        for (int64_t d = 0; d < D; ++d) {
          K[(h * T + t) * D + d] = c.k0[l][(h * c.cap + t) * D + d];
          V[(h * T + t) * D + d] = c.v0[l][(h * c.cap + t) * D + d];
        }
    std::vector<Vec> q(M);
    for (int64_t r = 0; r < M; ++r) {
      Vec a;
      if (m.eagle && l == 0) {
        a = rms(emb[r], L.in_norm, m.eps);
        const Vec b = rms(x[r], m.hidden_norm, m.eps);
        a.insert(a.end(), b.begin(), b.end());
      } else {
        a = rms(x[r], L.in_norm, m.eps);
      }
      q[r] = matvec(L.q, a);
      Vec k = matvec(L.k, a), v = matvec(L.v, a);
      for (int64_t h = 0; h < m.nh; ++h) rope(&q[r][h * D], &c.cos[r * D], &c.sin[r * D], D);
      for (int64_t h = 0; h < m.nkv; ++h) {
        rope(&k[h * D], &c.cos[r * D], &c.sin[r * D], D);
        for (int64_t d = 0; d < D; ++d) {
          K[(h * T + c.past + r) * D + d] = k[h * D + d];
          V[(h * T + c.past + r) * D + d] = v[h * D + d];
        }
      }
    }
    for (int64_t r = 0; r < M; ++r) {
      Vec att(m.nh * D, 0.0);
      for (int64_t h = 0; h < m.nh; ++h) {
        std::vector<double> sc(T);
        double mx = -1e300;
        for (int64_t t = 0; t < T; ++t) {
          double dot = 0.0;
          for (int64_t d = 0; d < D; ++d) dot += q[r][h * D + d] * K[((h / g) * T + t) * D + d];
          sc[t] = dot / std::sqrt(static_cast<double>(D)) + c.mask[r * T + t];
          mx = std::max(mx, sc[t]);
        }
        double sum = 0.0;
        for (int64_t t = 0; t < T; ++t) sum += (sc[t] = std::exp(sc[t] - mx));
        for (int64_t t = 0; t < T; ++t)
          for (int64_t d = 0; d < D; ++d) att[h * D + d] += sc[t] / sum * V[((h / g) * T + t) * D + d];
      }
      const Vec o = matvec(L.o, att);
      for (int64_t i = 0; i < H; ++i) x[r][i] += o[i];
      const Vec a = rms(x[r], L.post_norm, m.eps);
      const Vec gt = matvec(L.gate, a), up = matvec(L.up, a);
      Vec act(gt.size());
      for (size_t i = 0; i < gt.size(); ++i) act[i] = gt[i] / (1.0 + std::exp(-gt[i])) * up[i];
      const Vec dn = matvec(L.down, act);
      for (int64_t i = 0; i < H; ++i) x[r][i] += dn[i];
    }
  }
  logits.resize(M);
  out = x;
  for (int64_t r = 0; r < M; ++r) logits[r] = matvec(m.lm_head, rms(x[r], m.final_norm, m.eps));
}

// ---- the kernel -------------------------------------------------------------------------------------
typedef void (*ThreadFn)(const LlamaForwardParams&, const LlamaForwardWorkspace&, LlamaPhaseCounters*, int, int);
static void thread_plain(const LlamaForwardParams& p, const LlamaForwardWorkspace& ws, LlamaPhaseCounters* ph, int t,
                         int n) {
  llama_forward_thread(p, ws, ph, t, n);
}

// (logits [rows, vocab], captured last-layer output [M, H]) with nth threads
static void run(ThreadFn fn, const Model& m, const Case& c, int nth, bool last_only, std::vector<float>& logits,
                std::vector<float>& out) {
  std::vector<LlamaLayerWeights> layers;
  for (const Layer& L : m.layers)
    layers.push_back({L.in_norm.data(), L.post_norm.data(), L.q.view(), L.k.view(), L.v.view(), L.o.view(),
                      L.gate.view(), L.up.view(), L.down.view()});
  std::vector<std::vector<float>> kc = c.k0, vc = c.v0;
  std::vector<float*> kp, vp;
  for (size_t l = 0; l < layers.size(); ++l) kp.push_back(kc[l].data()), vp.push_back(vc[l].data());
  const int64_t n_layers = static_cast<int64_t>(layers.size());
  const int64_t slot = n_layers;
  logits.assign((last_only ? 1 : c.M) * m.vocab, -7.0f);
  out.assign(c.M * m.H, -7.0f);
  float* cap_out = out.data();
  LlamaForwardParams p{1, c.M, m.H, n_layers, m.nh, m.nkv, m.D, 48, m.vocab, m.eps,
                       1.0f / std::sqrt(static_cast<float>(m.D)), c.tokens.data(), m.embed.data(), c.cos.data(),
                       c.sin.data(), c.mask.data(), c.past + c.M, c.past, layers.data(), kp.data(), vp.data(), c.cap,
                       m.final_norm.data(), m.lm_head.view(), logits.data(), &slot, &cap_out, 1,
                       m.eagle ? c.hidden.data() : nullptr, m.eagle ? m.fc.view() : LinearWeights{},
                       m.eagle ? m.hidden_norm.data() : nullptr, last_only};
  std::vector<float> shared(llama_shared_floats(p)), per_thread(nth * llama_thread_floats(p));
  LlamaForwardWorkspace ws{};
  llama_workspace_carve(ws, p, shared.data(), per_thread.data());
  std::vector<LlamaPhaseCounters> phases(llama_n_phases(p));
  std::vector<std::thread> others;
  for (int t = 1; t < nth; ++t) others.emplace_back(fn, std::cref(p), std::cref(ws), phases.data(), t, nth);
  fn(p, ws, phases.data(), 0, nth);
  for (std::thread& t : others) t.join();
}

static Case make_case(const Model& m, uint32_t& s) {
  Case c;
  const int64_t T = c.past + c.M;
  for (int64_t r = 0; r < c.M; ++r) c.tokens.push_back((7 * r + 3) % m.emb_rows);
  // a tree: row 0 the root, rows 1 and 2 its children (each sees the prefix, the root and itself)
  const int64_t depth[3] = {0, 1, 1};
  for (int64_t r = 0; r < c.M; ++r)
    for (int64_t d = 0; d < m.D; ++d) {
      const double f = std::pow(10000.0, -2.0 * (d % (m.D / 2)) / m.D) * (c.past + depth[r]);
      c.cos.push_back(static_cast<float>(std::cos(f)));
      c.sin.push_back(static_cast<float>(std::sin(f)));
    }
  for (int64_t r = 0; r < c.M; ++r)
    for (int64_t t = 0; t < T; ++t) {
      const bool seen = t < c.past || t == c.past || t == c.past + r;
      c.mask.push_back(seen ? 0.0f : -3.4028235e38f);
    }
  c.hidden = rand_vec(c.M * 3 * m.H, s, 2.0f);
  for (size_t l = 0; l < m.layers.size(); ++l) {
    c.k0.push_back(rand_vec(m.nkv * c.cap * m.D, s, 2.0f));
    c.v0.push_back(rand_vec(m.nkv * c.cap * m.D, s, 2.0f));
  }
  return c;
}

static double max_rel(const std::vector<float>& got, const std::vector<Vec>& want, int64_t row0) {
  double err = 0.0, scale = 1e-6;
  for (size_t r = 0; r < want.size() - row0; ++r)
    for (size_t i = 0; i < want[r + row0].size(); ++i) {
      err = std::max(err, std::fabs(got[r * want[r + row0].size() + i] - want[r + row0][i]));
      scale = std::max(scale, std::fabs(want[r + row0][i]));
    }
  return err / scale;
}

static void check_model(bool eagle, ThreadFn fn, uint32_t& s) {
  const Model m = make_model(eagle, s);
  const Case c = make_case(m, s);
  std::vector<Vec> want_logits, want_out;
  reference(m, c, want_logits, want_out);
  std::vector<float> l1, o1, l2, o2, ll, ol;
  run(fn, m, c, 1, false, l1, o1);
  run(fn, m, c, 2, false, l2, o2);
  run(fn, m, c, 2, true, ll, ol);
  const double e_logits = max_rel(l1, want_logits, 0), e_out = max_rel(o1, want_out, 0);
  std::printf("%s: max rel err logits %.2e, output %.2e\n", eagle ? "eagle" : "target", e_logits, e_out);
  CHECK(e_logits < 1e-5 && e_out < 1e-5);
  CHECK(std::memcmp(l1.data(), l2.data(), l1.size() * sizeof(float)) == 0);  // 1 thread == 2 threads, bit for bit
  CHECK(std::memcmp(o1.data(), o2.data(), o1.size() * sizeof(float)) == 0);
  // last_only: the last row's logits, the same bits as in the full run
  CHECK(std::memcmp(ll.data(), l1.data() + (c.M - 1) * m.vocab, m.vocab * sizeof(float)) == 0);
}

int main() {
  uint32_t s = 12345u;
  for (bool eagle : {false, true}) check_model(eagle, thread_plain, s);
  if (skinny_linear_avx512_compiled() && __builtin_cpu_supports("avx512f"))
    for (bool eagle : {false, true}) check_model(eagle, llama_forward_thread_avx512, s);
  else
    std::printf("AVX-512 build not checked (not compiled or not supported by this CPU)\n");
  TEST_MAIN_END();
}
