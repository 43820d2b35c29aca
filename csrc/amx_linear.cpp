// The AMX build of the block-quantized skinny products (kernels/amx_linear.h), torch-free. This file alone
// is compiled for AVX-512 BW + AMX (the target pragma below, GCC on x86-64); the callers (the AVX-512
// builds of skinny_linear and llama_forward) enter it only when amx_linear_usable().
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,f16c,amx-tile,amx-bf16")
#define RADAR_AMX 1
#endif

#include "kernels/amx_linear.h"

#include <stdlib.h>
#include <string.h>

#include <atomic>
#include <vector>

#if defined(RADAR_AMX)
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace radar_ext {
namespace kernels {

#if defined(RADAR_AMX)
// GCC 12 reports the _mm512_undefined_ps() inside its own shuffle intrinsics as uninitialized.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
namespace {

bool detect_amx() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  const bool bw = (b >> 30) & 1u, f = (b >> 16) & 1u, tile = (d >> 24) & 1u, bf16 = (d >> 22) & 1u;
  if (!(bw && f && tile && bf16)) return false;
  // Linux keeps the 8 KB tile state off until a process asks for it (ARCH_REQ_XCOMP_PERM, XTILEDATA).
  return syscall(SYS_arch_prctl, 0x1023, 18) == 0;
}

bool env_enabled() {
  const char* e = getenv("RADAR_EXT_AMX");
  return !(e && (strcmp(e, "0") == 0 || strcmp(e, "off") == 0 || strcmp(e, "false") == 0));
}

const bool g_supported = detect_amx();
std::atomic<bool> g_enabled{env_enabled()};

// Tile palette 1 configuration (64 bytes).
struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// Tiles: 0 and 5 = C (16 n x mc float32, blocks in turn), 1 = A (16 n x 32 bf16 weights), 2..4 = B (16 input pairs x mc x rows'
// bf16 pairs: the hi, mid, lo parts of x). Written as literal numbers: the tile intrinsics paste them into asm.

void configure(int mc) {
  TileConfig cfg;
  cfg.rows[0] = 16, cfg.colsb[0] = static_cast<uint16_t>(4 * mc);
  cfg.rows[1] = 16, cfg.colsb[1] = 64;
  for (int t = 2; t <= 4; ++t) cfg.rows[t] = 16, cfg.colsb[t] = static_cast<uint16_t>(4 * mc);
  cfg.rows[5] = 16, cfg.colsb[5] = static_cast<uint16_t>(4 * mc);  // a second C, for the next block
  // (not _tile_loadconfig: GCC 12's asm names only the first 8 bytes as its input, so the stores of the
  // rows and widths above may be dropped as dead)
  __asm__ volatile("ldtilecfg %0" ::"m"(cfg));
}

// 64-byte aligned growable scratch.
struct Scratch {
  void* ptr = nullptr;
  size_t cap = 0;
  ~Scratch() { free(ptr); }
  template <typename T>
  T* get(size_t count) {
    const size_t bytes = (count * sizeof(T) + 63) / 64 * 64;
    if (bytes > cap) {
      free(ptr);
      ptr = aligned_alloc(64, bytes);
      cap = bytes;
    }
    return static_cast<T*>(ptr);
  }
};

struct ThreadState {
  Scratch xprep, sx, abuf, scales;  // amx_linear_rows
  XSplitOf split;
  Scratch xs, xsum, bbuf;           // amx_linear_packed_rows (x in natural order)
  XSplitOf packed_split;
};
thread_local ThreadState tls;

// The pipeline of a run of nb blocks on the two C tiles (0 and 5, blocks in turn): issue(b, odd) starts
// block b's products into C tile 5 (odd) or 0; while they run the previous block's C is stored into
// cbuf[(b - 1) & 1] and then between(b) runs (vector work: decoding ahead); scale(b) reads block b's sums
// from cbuf[b & 1] two blocks later, when its store is long done (a tile store and a vector load of the
// same bytes, like a vector store and a tile load, do not forward: each would wait otherwise).
template <typename Issue, typename Between, typename Scale>
inline void run_blocks(int64_t nb, float (&cbuf)[2][16 * 16], Issue&& issue, Between&& between, Scale&& scale) {
  for (int64_t b = 0; b < nb; ++b) {
    issue(b, (b & 1) != 0);
    if (b & 1)
      _tile_stored(0, cbuf[0], 64);
    else if (b > 0)
      _tile_stored(5, cbuf[1], 64);
    between(b);
    if (b >= 2) scale(b - 2);
  }
  if (nb & 1)
    _tile_stored(0, cbuf[0], 64);
  else
    _tile_stored(5, cbuf[1], 64);
  if (nb >= 2) scale(nb - 2);
  scale(nb - 1);
}

constexpr int64_t kMc = 16;  // x rows per tile column chunk
constexpr int64_t kPrefetchGroups = 2;  // groups of 16 weight rows ahead that the prefetch asks for

// bfloat16 bits of t & 15 for t = 0..31 (vpermw reads an index's low 5 bits; bit 4 is the next nibble's).
inline __m512i nibble_table() {
  alignas(64) uint16_t t[32];
  for (int i = 0; i < 32; ++i) {
    const float f = static_cast<float>(i & 15);
    uint32_t u;
    memcpy(&u, &f, 4);
    t[i] = static_cast<uint16_t>(u >> 16);
  }
  return _mm512_load_si512(t);
}

// The split of x for the B tiles: for chunk c of kMc rows, block b, part s (hi, mid, lo) a tile of 16 rows
// (input pair j = inputs 32b + j and 32b + 16 + j) x mc columns of (bf16, bf16), row stride 4 * mc bytes, at
// xprep + ((c * nb + b) * 3 + s) * 16 * kMc; block sums X [c][b][16] (lanes past mc zero).
void prepare_x(const SkinnyLinearParams& p, uint32_t* xprep, float* sx) {
  const int64_t M = p.M, K = p.K, nb = K / 32, nchunks = (M + kMc - 1) / kMc;
  const __m512i top = _mm512_set1_epi32(static_cast<int>(0xFFFF0000u));
  for (int64_t c = 0; c < nchunks; ++c) {
    const int64_t m0 = c * kMc, mc = M - m0 < kMc ? M - m0 : kMc;
    const __m512i rows = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                            _mm512_set1_epi32(static_cast<int>(mc)));
    for (int64_t b = 0; b < nb; ++b) {
      float* xs = sx + (c * nb + b) * 16;
      for (int64_t i = mc; i < 16; ++i) xs[i] = 0.0f;
      for (int64_t mm = 0; mm < mc; ++mm) {
        const float* xr = p.x + (m0 + mm) * K + 32 * b;
        const __m512 lo = _mm512_loadu_ps(xr), hi = _mm512_loadu_ps(xr + 16);
        xs[mm] = _mm512_reduce_add_ps(_mm512_add_ps(lo, hi));
        __m512 ra = lo, rb = hi;
        for (int s = 0; s < 3; ++s) {
          // part s of each: its top 16 bits (the last part: exact, the rest has at most 8 significant bits)
          const __m512 pa = _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(ra), top));
          const __m512 pb = _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(rb), top));
          const __m512i pair = _mm512_or_si512(_mm512_srli_epi32(_mm512_castps_si512(pa), 16),
                                               _mm512_castps_si512(pb));  // (input j, input j + 16)
          uint32_t* tile = xprep + ((c * nb + b) * 3 + s) * 16 * kMc;
          _mm512_i32scatter_epi32(tile + mm, rows, pair, 4);
          ra = _mm512_sub_ps(ra, pa);
          rb = _mm512_sub_ps(rb, pb);
        }
      }
    }
  }
}

// Row i of the A tile of block b for a Q4_1 row (16 bytes: byte j = input j low, input j + 16 high).
inline void decode_q41(const uint8_t* q, uint16_t* out, __m512i table) {
  const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q)));
  // dword j: low word = byte j (the index's low 4 bits: input j), high word = byte j >> 4 (input j + 16)
  const __m512i idx = _mm512_or_si512(v, _mm512_slli_epi32(v, 12));
  _mm512_store_si512(out, _mm512_permutexvar_epi16(idx, table));
}

// The same for a Q8_0 row (32 int8): bf16 of an int8 is the top half of its float32 (exact).
inline void decode_q80(const int8_t* q, uint16_t* out) {
  const __m512 a = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q))));
  const __m512 b =
      _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q + 16))));
  const __m512i pair = _mm512_or_si512(_mm512_srli_epi32(_mm512_castps_si512(a), 16),
                                       _mm512_and_si512(_mm512_castps_si512(b), _mm512_set1_epi32(static_cast<int>(0xFFFF0000u))));
  _mm512_store_si512(out, pair);
}

// Scales of rows [n, n + nr) as float32 [16][nb] (rows past nr zero).
void load_scales(const void* s, bool f16, int64_t n, int64_t nr, int64_t nb, float* out) {
  for (int64_t i = 0; i < 16; ++i) {
    float* o = out + i * nb;
    if (i >= nr) {
      for (int64_t b = 0; b < nb; ++b) o[b] = 0.0f;
      continue;
    }
    if (!f16) {
      const float* src = static_cast<const float*>(s) + (n + i) * nb;
      int64_t b = 0;
      for (; b + 16 <= nb; b += 16) _mm512_storeu_ps(o + b, _mm512_loadu_ps(src + b));
      for (; b < nb; ++b) o[b] = src[b];
      continue;
    }
    const uint16_t* h = static_cast<const uint16_t*>(s) + (n + i) * nb;
    int64_t b = 0;
    for (; b + 16 <= nb; b += 16)
      _mm512_storeu_ps(o + b, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(h + b))));
    for (; b < nb; ++b) o[b] = _cvtsh_ss(h[b]);
  }
}

}  // namespace

bool amx_linear_supported() { return g_supported; }
bool amx_linear_usable() { return g_supported && g_enabled.load(std::memory_order_relaxed); }
bool amx_linear_set_enabled(bool on) { return g_enabled.exchange(on); }

// The three products of one block into C tile 0 or 5 (tile numbers are pasted into asm: literals only).
#define RADAR_AMX_BLOCK(ct, a, xt, mc)            \
  do {                                            \
    _tile_zero(ct);                               \
    _tile_loadd(1, (a), 64);                      \
    _tile_loadd(2, (xt), 4 * (mc));               \
    _tile_dpbf16ps(ct, 1, 2);                     \
    _tile_loadd(3, (xt) + 16 * kMc, 4 * (mc));    \
    _tile_dpbf16ps(ct, 1, 3);                     \
    _tile_loadd(4, (xt) + 32 * kMc, 4 * (mc));    \
    _tile_dpbf16ps(ct, 1, 4);                     \
  } while (0)

void amx_linear_rows(const SkinnyLinearParams& p, int64_t n0, int64_t n1) {
  if (n0 >= n1 || p.M <= 0) return;
  const int64_t M = p.M, K = p.K, N = p.N, nb = K / 32, nchunks = (M + kMc - 1) / kMc;
  const bool q41 = p.wm != nullptr;
  const int64_t row_bytes = q41 ? K / 2 : K;
  ThreadState& ts = tls;
  uint32_t* xprep = ts.xprep.get<uint32_t>(nchunks * nb * 3 * 16 * kMc);
  float* sx = ts.sx.get<float>(nchunks * nb * 16);
  if (x_split_stale(ts.split, p)) {
    prepare_x(p, xprep, sx);
    x_split_set(ts.split, p);
  }
  // The A tiles of two groups of 16 rows: the current one's, and the next one's, decoded (vector units)
  // while the tile unit works on the current one (run_blocks' between).
  uint16_t* abuf = ts.abuf.get<uint16_t>(2 * nb * 16 * 32);
  float* dsc = ts.scales.get<float>(2 * 16 * nb);
  float* msc = dsc + 16 * nb;
  const __m512i table = nibble_table();
  alignas(64) float cbuf[2][16 * 16] = {};  // (lanes past mc: never stored)
  alignas(64) float accs[16 * 16];
  auto decode_block = [&](int64_t g, int64_t b, uint16_t* tile) {
    const int64_t nr = n1 - g < 16 ? n1 - g : 16;
    const uint8_t* wg = p.wq + g * row_bytes;
    for (int64_t i = 0; i < nr; ++i) {
      if (q41)
        decode_q41(wg + i * row_bytes + 16 * b, tile + i * 32, table);
      else
        decode_q80(reinterpret_cast<const int8_t*>(wg) + i * row_bytes + 32 * b, tile + i * 32);
    }
    for (int64_t i = nr; i < 16; ++i) _mm512_store_si512(tile + i * 32, _mm512_setzero_si512());
  };
  // Weights and scales of the group kPrefetchGroups ahead, a share per block, into L2 (the next group's
  // are being decoded already): without it the decoding waits on memory, ~4.7 GB/s on 2 threads.
  const int64_t scale_bytes = p.scales_f16 ? 2 : 4;
  auto prefetch = [&](int64_t g, int64_t b) {
    if (g >= n1) return;
    const int64_t rows = n1 - g < 16 ? n1 - g : 16, lines = (rows * row_bytes + 63) / 64;
    const char* base = reinterpret_cast<const char*>(p.wq + g * row_bytes);
    for (int64_t l = lines * b / nb; l < lines * (b + 1) / nb; ++l) _mm_prefetch(base + 64 * l, _MM_HINT_T1);
    if (b == 0) {
      const int64_t sl = (rows * nb * scale_bytes + 63) / 64;
      const char* d = reinterpret_cast<const char*>(p.wd) + g * nb * scale_bytes;
      const char* m = p.wm ? reinterpret_cast<const char*>(p.wm) + g * nb * scale_bytes : nullptr;
      for (int64_t l = 0; l < sl; ++l) {
        _mm_prefetch(d + 64 * l, _MM_HINT_T1);
        if (m) _mm_prefetch(m + 64 * l, _MM_HINT_T1);
      }
    }
  };
  for (int64_t k = 1; k < kPrefetchGroups; ++k)
    for (int64_t b = 0; b < nb; ++b) prefetch(n0 + 16 * k, b);
  for (int64_t b = 0; b < nb; ++b) decode_block(n0, b, abuf + b * 512);
  int configured = -1;
  for (int64_t g = n0, gi = 0; g < n1; g += 16, ++gi) {
    const int64_t nr = n1 - g < 16 ? n1 - g : 16;
    const bool next = g + 16 < n1;
    const uint16_t* cur = abuf + (gi & 1) * nb * 512;
    uint16_t* nxt = abuf + ((gi + 1) & 1) * nb * 512;
    load_scales(p.wd, p.scales_f16, g, nr, nb, dsc);
    if (q41) load_scales(p.wm, p.scales_f16, g, nr, nb, msc);
    for (int64_t c = 0; c < nchunks; ++c) {
      const int64_t m0 = c * kMc, mc = M - m0 < kMc ? M - m0 : kMc;
      if (configured != mc) {
        configure(static_cast<int>(mc));
        configured = static_cast<int>(mc);
      }
      __m512 acc[16];
      for (int i = 0; i < 16; ++i) acc[i] = _mm512_setzero_ps();
      auto scale = [&](int64_t b) {  // acc += d * S (+ m * X) of block b, from cbuf[b & 1]
        const float* cb = cbuf[b & 1];
        const __m512 xs = _mm512_load_ps(sx + (c * nb + b) * 16);
        for (int i = 0; i < 16; ++i) {
          acc[i] = _mm512_fmadd_ps(_mm512_set1_ps(dsc[i * nb + b]), _mm512_load_ps(cb + 16 * i), acc[i]);
          if (q41) acc[i] = _mm512_fmadd_ps(_mm512_set1_ps(msc[i * nb + b]), xs, acc[i]);
        }
      };
      const uint32_t* xc = xprep + c * nb * 3 * 16 * kMc;
      const auto issue = [&](int64_t b, bool odd) {
        const uint32_t* xt = xc + b * 3 * 16 * kMc;
        if (odd)
          RADAR_AMX_BLOCK(5, cur + b * 512, xt, mc);
        else
          RADAR_AMX_BLOCK(0, cur + b * 512, xt, mc);
      };
      const auto between = [&](int64_t b) {
        if (c != 0) return;
        if (next) decode_block(g + 16, b, nxt + b * 512);
        prefetch(g + kPrefetchGroups * 16, b);
      };
      run_blocks(nb, cbuf, issue, between, scale);
      for (int i = 0; i < 16; ++i) _mm512_store_ps(accs + 16 * i, acc[i]);
      for (int64_t mm = 0; mm < mc; ++mm) {
        float* yr = p.y + (m0 + mm) * N + g;
        for (int64_t i = 0; i < nr; ++i) yr[i] = p.bias ? accs[16 * i + mm] + p.bias[g + i] : accs[16 * i + mm];
      }
    }
  }
}
#undef RADAR_AMX_BLOCK

namespace {

// ---- packed weights (amx_pack layout, kernels/amx_linear.h): x as the A operand ----------------------

// x split into three bfloat16 parts in natural order, xs[s][m][k] (s = hi, mid, lo), and block sums
// xsum[m][b] = sum_j x[m, 32b + j] (lanes of the two halves added, then reduced in a fixed order).
void prepare_x_natural(const SkinnyLinearParams& p, uint16_t* xs, float* xsum) {
  const int64_t M = p.M, K = p.K, nb = K / 32;
  const __m512i top = _mm512_set1_epi32(static_cast<int>(0xFFFF0000u));
  for (int64_t m = 0; m < M; ++m)
    for (int64_t b = 0; b < nb; ++b) {
      const float* xr = p.x + m * K + 32 * b;
      const __m512 lo = _mm512_loadu_ps(xr), hi = _mm512_loadu_ps(xr + 16);
      xsum[m * nb + b] = _mm512_reduce_add_ps(_mm512_add_ps(lo, hi));
      __m512 r[2] = {lo, hi};
      for (int s = 0; s < 3; ++s)
        for (int h = 0; h < 2; ++h) {
          const __m512 part = _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(r[h]), top));
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(xs + (s * M + m) * K + 32 * b + 16 * h),
                              _mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_castps_si512(part), 16)));
          r[h] = _mm512_sub_ps(r[h], part);
        }
    }
}

// The B tile (16 input pairs x 16 output rows, bf16) of one packed unit.
inline void decode_packed_q41(const uint8_t* u, uint16_t* out, __m512i table) {
  for (int t = 0; t < 8; ++t) {
    const __m512i v = _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(u + 32 * t)));
    _mm512_store_si512(out + 32 * t, _mm512_permutexvar_epi16(v, table));  // low nibble (+ a bit the table ignores)
    _mm512_store_si512(out + 32 * (t + 8), _mm512_permutexvar_epi16(_mm512_srli_epi16(v, 4), table));
  }
}
inline void decode_packed_q80(const int8_t* u, uint16_t* out) {
  for (int r = 0; r < 16; ++r) {
    const __m512 a = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(u + 32 * r))));
    const __m512 b =
        _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(u + 32 * r + 16))));
    // the top halves of a (words 0..15) then of b (16..31): exact, an int8 has 8 significant bits
    const __m512i idx = _mm512_setr_epi32(0x00030001, 0x00070005, 0x000B0009, 0x000F000D, 0x00130011, 0x00170015,
                                          0x001B0019, 0x001F001D, 0x00230021, 0x00270025, 0x002B0029, 0x002F002D,
                                          0x00330031, 0x00370035, 0x003B0039, 0x003F003D);
    _mm512_store_si512(out + 32 * r, _mm512_permutex2var_epi16(_mm512_castps_si512(a), idx, _mm512_castps_si512(b)));
  }
}

void configure_packed(int mc) {
  TileConfig cfg;
  for (int t : {0, 5, 1, 2, 3}) cfg.rows[t] = static_cast<uint8_t>(mc), cfg.colsb[t] = 64;  // C x2, A (x parts)
  cfg.rows[4] = 16, cfg.colsb[4] = 64;                                                     // B (weights)
  __asm__ volatile("ldtilecfg %0" ::"m"(cfg));
}

#define RADAR_AMX_PACKED_BLOCK(ct, bt, x0, stride)            \
  do {                                                        \
    _tile_loadd(4, (bt), 64);                                 \
    _tile_zero(ct);                                           \
    _tile_loadd(1, (x0), (stride));                           \
    _tile_dpbf16ps(ct, 1, 4);                                 \
    _tile_loadd(2, (x0) + xs_part, (stride));                 \
    _tile_dpbf16ps(ct, 2, 4);                                 \
    _tile_loadd(3, (x0) + 2 * xs_part, (stride));             \
    _tile_dpbf16ps(ct, 3, 4);                                 \
  } while (0)

constexpr int kRing = 4;  // decoded B tiles in flight: a unit is decoded 2 blocks before its tile load

}  // namespace

void amx_linear_packed_rows(const SkinnyLinearParams& p, int64_t n0, int64_t n1) {
  if (n0 >= n1 || p.M <= 0) return;
  const int64_t M = p.M, K = p.K, N = p.N, nb = K / 32;
  const bool q41 = p.wm != nullptr;
  const int64_t unit_bytes = q41 ? 256 : 512;
  ThreadState& ts = tls;
  uint16_t* xs = ts.xs.get<uint16_t>(3 * M * K);
  float* xsum = ts.xsum.get<float>(M * nb);
  if (x_split_stale(ts.packed_split, p)) {
    prepare_x_natural(p, xs, xsum);
    x_split_set(ts.packed_split, p);
  }
  const int64_t xs_part = M * K;  // elements between the hi, mid and lo copies
  uint16_t* ring = ts.bbuf.get<uint16_t>(kRing * 512);
  const uint16_t* pd = reinterpret_cast<const uint16_t*>(p.wd);
  const uint16_t* pm = reinterpret_cast<const uint16_t*>(p.wm);
  const __m512i table = nibble_table();
  alignas(64) float cbuf[2][16 * 16] = {};
  int configured = -1;
  for (int64_t g = n0 / 16; g * 16 < n1; ++g) {
    const uint8_t* wg = p.wq + g * nb * unit_bytes;
    const int64_t c0 = n0 > 16 * g ? n0 - 16 * g : 0, c1 = n1 - 16 * g < 16 ? n1 - 16 * g : 16;  // columns stored
    const __mmask16 store_mask = static_cast<__mmask16>(((1u << c1) - 1u) & ~((1u << c0) - 1u));
    __m512 bias = p.bias ? _mm512_maskz_loadu_ps(store_mask, p.bias + 16 * g) : _mm512_setzero_ps();
    for (int64_t m0 = 0; m0 < M; m0 += 16) {
      const int64_t mc = M - m0 < 16 ? M - m0 : 16;
      if (configured != mc) {
        configure_packed(static_cast<int>(mc));
        configured = static_cast<int>(mc);
      }
      auto decode = [&](int64_t b) {
        uint16_t* out = ring + (b % kRing) * 512;
        if (q41)
          decode_packed_q41(wg + b * unit_bytes, out, table);
        else
          decode_packed_q80(reinterpret_cast<const int8_t*>(wg) + b * unit_bytes, out);
      };
      __m512 acc[16];
      for (int i = 0; i < 16; ++i) acc[i] = _mm512_setzero_ps();
      auto scale = [&](int64_t b) {  // acc[m] += d * S (+ m * X) of block b, from cbuf[b & 1]
        const float* cb = cbuf[b & 1];
        const __m512 dv = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(pd + (g * nb + b) * 16)));
        const __m512 mv = q41 ? _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(pm + (g * nb + b) * 16)))
                              : _mm512_setzero_ps();
        for (int i = 0; i < mc; ++i) {
          acc[i] = _mm512_fmadd_ps(dv, _mm512_load_ps(cb + 16 * i), acc[i]);
          if (q41) acc[i] = _mm512_fmadd_ps(mv, _mm512_set1_ps(xsum[(m0 + i) * nb + b]), acc[i]);
        }
      };
      const uint16_t* xr = xs + m0 * K;
      const int stride = static_cast<int>(2 * K);
      decode(0);
      if (nb > 1) decode(1);
      const auto issue = [&](int64_t b, bool odd) {
        if (b + 2 < nb) decode(b + 2);
        const uint16_t* bt = ring + (b % kRing) * 512;
        if (odd)
          RADAR_AMX_PACKED_BLOCK(5, bt, xr + 32 * b, stride);
        else
          RADAR_AMX_PACKED_BLOCK(0, bt, xr + 32 * b, stride);
      };
      run_blocks(nb, cbuf, issue, [](int64_t) {}, scale);
      for (int64_t i = 0; i < mc; ++i)
        _mm512_mask_storeu_ps(p.y + (m0 + i) * N + 16 * g, store_mask, _mm512_add_ps(acc[i], bias));
    }
  }
}
#undef RADAR_AMX_PACKED_BLOCK

#pragma GCC diagnostic pop
#else  // no AMX build

bool amx_linear_supported() { return false; }
bool amx_linear_usable() { return false; }
bool amx_linear_set_enabled(bool) { return false; }
void amx_linear_rows(const SkinnyLinearParams&, int64_t, int64_t) {}
void amx_linear_packed_rows(const SkinnyLinearParams&, int64_t, int64_t) {}

#endif

}  // namespace kernels
}  // namespace radar_ext
