// amx_linear: the block-quantized skinny products (Q4_1 / Q8_0 weights, kernels/skinny_linear.h) on the
// AMX tile unit (Intel Sapphire Rapids and later), exact in the same sense as the AVX-512 tiles:
// float32 activations, no rounding of an input, float32 sums.
// Why it is exact. Per block b of 32 inputs, a Q4_1 row gives
//   y[m, n] += d[n, b] * S + mn[n, b] * X,  S = sum_j x[m, 32b + j] * q[n, 32b + j],  X = sum_j x[m, 32b + j]
// (Q8_0: y += d * S). q is a small integer (0..15, or -128..127), so a bfloat16 holds it exactly. Each
// float32 x is the exact sum of three bfloat16 (x = hi + mid + lo: hi keeps the top 8 of the 24
// significand bits, mid the next 8 of the rest, lo what remains), so S = S(hi) + S(mid) + S(lo) with every
// product q * part exact in float32; the tile unit sums them in float32 (TDPBF16PS, three instructions
// into one accumulator per block). The only roundings are those of float32 sums, as in the AVX-512
// path, in another order: results differ from it by summation order (~1e-7 relative), and from HF's
// float32 forward on the dequantized weights likewise. (The tile unit flushes bfloat16 inputs below
// 2^-126 to zero: a part that small belongs to an |x| < ~1e-33, negligible next to any other term.)
// Layout on the tile unit: the weights are the A operand (16 output rows n per tile, one block of 32
// inputs per row: word 2j = input j, word 2j + 1 = input j + 16, which is how a Q4_1 byte j holds them),
// x is the B operand (pairs of inputs (j, j + 16) per row j, one column per x row, up to 16 x rows per
// tile), C [16 n, up to 16 m] holds S of one block; its rows are scaled into per-n accumulators (16 x
// rows in the lanes) by AVX-512 multiply-adds.
// Determinism: y[m, n] depends on x row m and w row n only, summed in an order fixed by K: not by M, by
// the thread split or by the tile slot (same contract as skinny_linear).
// Host only, x86-64 with GCC; elsewhere amx_linear_usable() is false and nothing here runs.
#pragma once

#include <stdint.h>

#include "kernels/skinny_linear.h"

namespace radar_ext {
namespace kernels {

// True when this build has the AMX path, the CPU has AMX-BF16, AMX-TILE and AVX512-BW, the OS grants the
// tile state (Linux arch_prctl) and the path is enabled (amx_linear_set_enabled; the environment variable
// RADAR_EXT_AMX=0 disables it at start). Checked once, then a load.
bool amx_linear_usable();
// Whether the CPU and OS support the path at all (whatever the enabled flag says).
bool amx_linear_supported();
// Turns the path on or off for later calls (no effect where unsupported). Returns the previous setting.
bool amx_linear_set_enabled(bool on);

// y[:, n0:n1] of a block-quantized product (p.wq set, K % 32 == 0), every row of x. Call only when
// amx_linear_usable(). p.x_key != 0 lets a thread reuse its split of x across calls with the same key,
// x, M and K (the caller promises x did not change in between).
void amx_linear_rows(const SkinnyLinearParams& p, int64_t n0, int64_t n1);

// The AMX layout of Q4_1 / Q8_0 weights (radar_ext.quant.amx_pack; p.amx_packed): N % 16 == 0, groups of 16
// output rows, and for group g, block b (32 inputs) a unit of the B operand with x as the A operand
// (B[r][2n + p] = q[16g + n][32b + 2r + p], r = 0..15 input pairs, n = 0..15 rows):
//   Q4_1: 256 bytes, for t = 0..7 32 bytes: byte i = B[t][i] | B[t + 8][i] << 4 (one widening and two permutes
//         per 64 weights make the tile); wq = units [N / 16, K / 32, 256];
//   Q8_0: 512 bytes, row r = B[r][0..31] as int8; wq = units [N / 16, K / 32, 512];
//   scales wd / wm: float16 [N / 16, K / 32, 16] (row n of the group in lane n).
// The same bytes as GGUF's, reordered. x rows are the A tile (up to 16 rows x 32 inputs, three bfloat16
// parts, natural order), so a tile product costs the rows of x, not 16, and C [rows, 16 outputs] is scaled
// along the outputs (y[m, 16g : 16g + 16] += d * C[m] + mn * X[m]). Same sums as amx_linear_rows (the parts
// and the per-block scaling), so the same exactness; rows independent of M, the split and the thread count.
void amx_linear_packed_rows(const SkinnyLinearParams& p, int64_t n0, int64_t n1);

}  // namespace kernels
}  // namespace radar_ext
