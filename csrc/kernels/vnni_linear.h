// vnni_linear: the Q4_1 skinny products (kernels/skinny_linear.h) in integers, on AVX512-VNNI, for CPUs
// without AMX. At 1-8 rows of x the float32 tiles spend most of their instructions decoding nibbles into
// float32 weights; here the nibbles stay integers and vpdpbusd multiplies 64 of them an instruction.
//
// Per block b of 32 inputs a Q4_1 row gives (the same split as kernels/amx_linear.h)
//   y[m, n] += d[n, b] * S + mn[n, b] * X,   S = sum_j x[m, 32b + j] * q[n, 32b + j],   X = sum_j x[m, 32b + j]
// with q in 0..15. x is written in block fixed point: e the smallest integer with max_j |x_j| <= 126 * 2^e,
// T_j = x_j * 2^(16 - e) rounded to the nearest integer (|T_j| < 2^23), and T_j split into three balanced base-256
// digits, T_j = 65536 a_j + 256 b_j + c_j (a, b, c int8). So
//   S = 2^(e - 16) * (65536 A + 256 B + C),   A = sum_j q_j a_j  (B, C likewise: exact int32 sums, vpdpbusd)
// and 256 B + C is exact in float32 (|.| < 2^24); 65536 A + (256 B + C) rounds once, d * 2^(e - 16) is exact.
// The one rounding of an input: each x_j moves by at most 2^(e - 17) < 2^-23 * max_j |x_j| (the block's largest
// |x| loses at most its last bit; a tiny x next to a large one keeps its absolute accuracy, not its relative
// one). Against the float32 tiles' own error (float32 sums over K, ~K / 16 * 2^-24 * sum |x w|) this is of the
// same order: python_tests/test_quant.py (test_vnni_packed_op*) bounds both against a float64 product, on random
// rows and on the default target's weights and activations; the decoding tests keep the greedy output HF's.
// X is the float32 sum of the block's x in a fixed order.
// Sums: per block the integer sums, then float32: y = fma(d * 2^(e-16), S', y), y = fma(mn, X, y), blocks in order,
// + bias at the end. Every y[m, n] depends on x row m and w row n only (not on M, the tile or the thread split).
//
// Layout (radar_ext.quant.vnni_pack; SkinnyLinearParams::vnni_packed): N % 16 == 0, K % 32 == 0, groups of 16
// output rows; for group g and block b a unit of 256 bytes, 4 vectors of 64: vector p, byte 4 l + t =
//   q[16 g + l][32 b + 4 p + t] | q[16 g + l][32 b + 16 + 4 p + t] << 4     (l = 0..15 rows, t = 0..3),
// so a vector's low nibbles are the inputs 4p..4p+3 of each of the 16 rows (one 32-bit lane per row, as
// vpdpbusd takes them) and its high nibbles the inputs 16 + 4p..; wq = units [N/16, K/32, 256] (K/2 bytes a
// row, as GGUF's); wd / wm float16 [N/16, K/32, 16] (row l of the group in lane l).
// Host only, x86-64 with GCC; elsewhere vnni_linear_supported() is false and nothing here runs.
#pragma once

#include <stdint.h>

#include "kernels/skinny_linear.h"

namespace radar_ext {
namespace kernels {

// This build has the path and the CPU has AVX512F, AVX512BW, AVX512-VNNI and F16C.
bool vnni_linear_supported();
// Supported and enabled (vnni_linear_set_enabled; the environment variable RADAR_EXT_VNNI_LINEAR=0 turns it off
// at start). Checked once, then a load.
bool vnni_linear_usable();
// Turns the path on or off for later weight packing (no effect where unsupported). Returns the previous setting.
bool vnni_linear_set_enabled(bool on);

// y[:, n0:n1] (n0, n1 multiples of 16) of a product on weights in the layout above (p.vnni_packed), every row of
// x. Call only where vnni_linear_supported(). p.x_key != 0 lets a thread reuse its split of x across calls with
// the same key, x, M and K (the caller promises x did not change in between).
void vnni_linear_packed_rows(const SkinnyLinearParams& p, int64_t n0, int64_t n1);

// Draft-grade products (not exact, for a draft head, whose numerics change what is proposed, never what is
// emitted): Q8_0 weights in the greedy head's group layout (radar_ext.quant.argmax_pack: units of 512 bytes
// [N/16, K/32, 512], q XOR 0x80; wd float16 [N/16, K/32, 16]) times x rounded to one int8 per input, per block of
// 32 scaled by max |x| / 127 (the greedy head's rounding, argmax_quantize_row; a row with a non-finite value gives
// zeros plus the bias), as llama.cpp's Q8_0 x Q8_0 dot: y = sum_b d * s_x * (sum_j (q_j + 128) x_j - 128
// sum_j x_j), the integer part exact, + bias (SkinnyLinearParams::q8_draft). n0, n1 multiples of 16; p.x_key as
// above.
void vnni_q8_draft_rows(const SkinnyLinearParams& p, int64_t n0, int64_t n1);

}  // namespace kernels
}  // namespace radar_ext
