"""Exact block-quantized copies of float32 weights, for radar_ext.ops.skinny_linear_quant.

A model loaded from a GGUF file by transformers (the default target: SmolLM2-135M-Instruct Q4_1) holds
float32 weights that are GGUF dequantizations: per block of 32 consecutive inputs, Q4_1 weights are
d * q + m (q in 0..15, d and m float16) and Q8_0 weights d * q (q in -127..127, d float16). Such a
weight streams from memory in 1/6 (Q4_1) or 1/4 (Q8_0) of its float32 bytes, and the few-row products
of tree verification are memory-bound. `exact_blocks(weight)` recovers the blocks from the float32
values alone (no file needed) and returns them only if decoding them reproduces every weight bit for
bit (reference.dequantize_blocks, GGUF's formula); any other weight gets None and stays float32.

Recovery per block: m = the block's minimum (the q = 0 weight), d = (max - m) / 15 rounded to float16
(the q = 15 weight), its float16 neighbours tried when that one does not reproduce the block; Q8_0
likewise with d = max |w| / 127. Whatever (d, q, m) reproduces a block is a valid copy, since only the
decoded values are used.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch

from radar_ext import reference

BLOCK = 32


@dataclass
class QuantBlocks:
    """skinny_linear_quant's weight arguments: q uint8 [N, K/2] + m (Q4_1) or q int8 [N, K], m None (Q8_0)."""
    q: torch.Tensor
    d: torch.Tensor
    m: torch.Tensor | None

    @property
    def kind(self) -> str:
        return "Q8_0" if self.m is None else "Q4_1"

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.q, self.d, self.m) if t is not None)

    def dequantize(self) -> torch.Tensor:
        return reference.dequantize_blocks(self.q, self.d, self.m)


def _f16_candidates(d: torch.Tensor) -> list:
    """d rounded to float16 and its two float16 neighbours (as float32), for d >= 0."""
    h = d.half()
    bits = h.view(torch.int16)
    up = (bits + 1).view(torch.float16)
    down = torch.where(bits > 0, bits - 1, bits).view(torch.float16)
    return [h.float(), up.float(), down.float()]


def _pick(blocks: torch.Tensor, candidates: list, encode, decode):
    """The first candidate scale per block that reproduces it: (q [N, nb, 32], d [N, nb]) or None."""
    q_out = d_out = None
    done = None
    for d in candidates:
        q = encode(blocks, d)
        ok = (decode(q, d).view(torch.int32) == blocks.view(torch.int32)).all(2)  # bit for bit (-0.0 too)
        if done is None:
            q_out, d_out, done = q, d.clone(), ok
        else:
            take = ok & ~done
            q_out = torch.where(take.unsqueeze(2), q, q_out)
            d_out = torch.where(take, d, d_out)
            done = done | ok
        if bool(done.all()):
            return q_out, d_out
    return None


def q4_1_blocks(weight: torch.Tensor) -> QuantBlocks | None:
    """Q4_1 blocks that decode exactly to `weight` (float32 [N, K], K % 32 == 0), or None."""
    N, K = weight.shape
    b = weight.detach().reshape(N, K // BLOCK, BLOCK)
    m = b.amin(2)
    if not torch.equal(m.half().float(), m):
        return None
    mm = m.unsqueeze(2)

    def encode(blocks, d):
        dd = d.unsqueeze(2)
        q = torch.where(dd > 0, torch.round((blocks - mm) / torch.where(dd > 0, dd, 1.0)), 0.0)
        return q.clamp_(0, 15)

    def decode(q, d):
        return q * d.unsqueeze(2) + mm

    picked = _pick(b, _f16_candidates((b.amax(2) - m) / 15), encode, decode)
    if picked is None:
        return None
    q, d = picked
    q = q.to(torch.uint8)
    packed = (q[:, :, :16] | (q[:, :, 16:] << 4)).reshape(N, K // 2).contiguous()
    return QuantBlocks(packed, d.contiguous(), m.contiguous())


def _q8_0_encode(blocks: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """q = round(w / d) in [-127, 127] per block (0 where d = 0): blocks [N, nb, 32], d [N, nb]."""
    dd = d.unsqueeze(2)
    q = torch.where(dd > 0, torch.round(blocks / torch.where(dd > 0, dd, 1.0)), 0.0)
    return q.clamp_(-127, 127)


def q8_0_blocks(weight: torch.Tensor) -> QuantBlocks | None:
    """Q8_0 blocks that decode exactly to `weight` (float32 [N, K], K % 32 == 0), or None."""
    N, K = weight.shape
    b = weight.detach().reshape(N, K // BLOCK, BLOCK)

    def decode(q, d):
        return q * d.unsqueeze(2)

    picked = _pick(b, _f16_candidates(b.abs().amax(2) / 127), _q8_0_encode, decode)
    if picked is None:
        return None
    q, d = picked
    return QuantBlocks(q.to(torch.int8).reshape(N, K).contiguous(), d.contiguous(), None)


def exact_blocks(weight: torch.Tensor) -> QuantBlocks | None:
    """The smallest exact block copy of a float32 CPU weight [N, K]: Q4_1, else Q8_0, else None (also
    for other dtypes, devices, shapes, K % 32 != 0 or non-finite values)."""
    if (not isinstance(weight, torch.Tensor) or weight.dtype != torch.float32 or weight.device.type != "cpu"
            or weight.dim() != 2 or weight.shape[1] % BLOCK or weight.numel() == 0):
        return None
    with torch.no_grad():
        if not bool(torch.isfinite(weight).all()):
            return None
        return q4_1_blocks(weight) or q8_0_blocks(weight)


# id(weight) -> (weakref to it, data_ptr, version, blocks): one derivation per weight per process, shared
# by every FastLinear (RadarDecoder builds one per generate call); dropped when the weight is freed.
_CACHE: dict = {}


def cached_exact_blocks(weight: torch.Tensor) -> QuantBlocks | None:
    """exact_blocks(weight), remembered while the weight lives and is unchanged (same object, storage
    and version; an in-place update or `weight.data = ...` makes a new copy)."""
    key = id(weight)
    hit = _CACHE.get(key)
    if hit is not None and hit[0]() is weight and hit[1:3] == (weight.data_ptr(), weight._version):
        return hit[3]
    blocks = exact_blocks(weight)
    try:
        ref = weakref.ref(weight, lambda _, k=key: _CACHE.pop(k, None))
    except TypeError:
        return blocks
    _CACHE[key] = (ref, weight.data_ptr(), weight._version, blocks)
    return blocks


def q8_0_rounded(weight: torch.Tensor) -> QuantBlocks:
    """Q8_0 blocks nearest to `weight` (float32 [N, K], K % 32 == 0): d = max |w| / 127 per block of 32 (as
    float16), q = round(w / d). Lossy (about 0.4% of a block's largest weight at most), unlike
    exact_blocks: for a draft head, whose numerics change what is proposed, never what is emitted."""
    if weight.dim() != 2 or weight.shape[1] % BLOCK or weight.dtype != torch.float32:
        raise ValueError(f"weight must be float32 [N, K] with K divisible by {BLOCK}, got "
                         f"{weight.dtype} {list(weight.shape)}")
    N, K = weight.shape
    with torch.no_grad():
        b = weight.detach().reshape(N, K // BLOCK, BLOCK)
        d = (b.abs().amax(2) / 127).half().float()
        q = _q8_0_encode(b, d)
        return QuantBlocks(q.to(torch.int8).reshape(N, K).contiguous(), d.half().contiguous(), None)


def _group_lanes(s: torch.Tensor, G: int, nb: int) -> torch.Tensor:
    """Per-row, per-block values [16 G, nb] -> [G, nb, 16]: each group of 16 rows as the lanes of one vector
    (amx_pack's scales, argmax_pack's scales and bounds)."""
    return s.view(G, 16, nb).transpose(1, 2).contiguous()


def amx_pack(blocks: QuantBlocks) -> tuple | None:
    """The AMX layout of Q4_1 / Q8_0 blocks (csrc/kernels/amx_linear.h; skinny_linear_amx_packed and the fused
    forward read it): (q, d, m) with q in GGUF's shape holding the same bytes reordered into tile units and d, m
    float16 [N/16, K/32, 16]. None when N % 16 != 0 or a scale is not exactly a float16."""
    q, d, m = blocks.q, blocks.d, blocks.m
    N = q.shape[0]
    if N % 16 or N == 0:
        return None
    nb = d.shape[1]
    d16 = d.half()
    m16 = None if m is None else m.half()
    if not torch.equal(d16.float(), d) or (m16 is not None and not torch.equal(m16.float(), m)):
        return None
    G = N // 16
    if m is not None:  # Q4_1: nibbles to values [N, K], input 32b + j low nibble of byte 16b + j, 32b + 16 + j high
        byte = q.view(N, nb, 16)
        vals = torch.cat([byte & 15, byte >> 4], dim=2)                       # [N, nb, 32]
    else:
        vals = q.view(N, nb, 32)
    # B[g, b, r, 2n + p] = vals[16g + n, b, 2r + p]
    B = vals.view(G, 16, nb, 16, 2).permute(0, 2, 3, 1, 4).reshape(G, nb, 16, 32)
    if m is not None:
        units = (B[:, :, :8, :] | (B[:, :, 8:, :] << 4)).contiguous().view(N, -1)   # [G, nb, 256] as [N, K/2]
    else:
        units = B.contiguous().view(N, -1)                                            # [G, nb, 512] as [N, K]
    return units, _group_lanes(d16, G, nb), None if m16 is None else _group_lanes(m16, G, nb)


def vnni_pack(blocks: QuantBlocks) -> tuple | None:
    """The VNNI layout of Q4_1 blocks (csrc/kernels/vnni_linear.h; skinny_linear_vnni_packed and the fused forward
    read it): (q uint8 [N/16, K/32, 256], d float16 [N/16, K/32, 16], m likewise): per group g of 16 rows and
    block b, 4 vectors of 64 bytes, byte 4 l + t of vector p holding input 4p + t of row 16g + l in its low nibble
    and input 16 + 4p + t in its high one. None for Q8_0 blocks, N % 16 != 0 or a scale that is not exactly a
    float16."""
    q, d, m = blocks.q, blocks.d, blocks.m
    N = q.shape[0]
    if m is None or N % 16 or N == 0:
        return None
    nb = d.shape[1]
    d16, m16 = d.half(), m.half()
    if not torch.equal(d16.float(), d) or not torch.equal(m16.float(), m):
        return None
    G = N // 16
    byte = q.view(N, nb, 16)
    vals = torch.cat([byte & 15, byte >> 4], dim=2)                            # [N, nb, 32] inputs in order
    # V[g, b, p, l, t] = vals[16g + l, b, 4p + t] for the low nibbles (p < 4), 16 + 4p + t for the high ones
    V = vals.view(G, 16, nb, 8, 4).permute(0, 2, 3, 1, 4)                      # [G, nb, 8 quads, 16 rows, 4]
    units = (V[:, :, :4] | (V[:, :, 4:] << 4)).contiguous().view(G, nb, 256)
    return units, _group_lanes(d16, G, nb), _group_lanes(m16, G, nb)


def q8_draft_pack(weight: torch.Tensor) -> tuple | None:
    """Draft-grade weights for a draft head's fused call on AVX512-VNNI (csrc/kernels/vnni_linear.h,
    vnni_q8_draft_rows): float32 [N, K] -> (q uint8 [N/16, K/32, 512], d float16 [N/16, K/32, 16]): the Q8_0 blocks
    nearest to it (q8_0_rounded) in the greedy head's group layout (argmax_pack), the activations rounded to int8
    at each call. Lossy, like q8_0_rounded: for a draft head only. None when N % 16 != 0 or K % 32 != 0."""
    if weight.dim() != 2 or weight.shape[0] % 16 or weight.shape[1] % BLOCK or weight.shape[0] == 0:
        return None
    b = q8_0_rounded(weight.float())
    q, d, _ = argmax_pack(b.q, b.d)
    G, nb = d.shape[0], d.shape[1]
    return q.reshape(G, nb, 512), d


def argmax_pack(q: torch.Tensor, d: torch.Tensor) -> tuple:
    """The grouped layout of a Q8_0 LM head for the greedy head (csrc/kernels/argmax_head.h, llama_forward_argmax):
    q int8 [N, K], d float16 [N, K/32] -> (q uint8 [G, K/32, 8, 16, 4] = q XOR 0x80 with 16 vocabulary rows per group
    (rows past N zero), d float16 [G, K/32, 16], a float32 [G, K/32, 16]: |d| * sum |q| per block, rounded up so the
    bound it gives never falls short; a padded row gets +inf there so that it never bounds the largest logit)."""
    if q.dtype != torch.int8 or q.dim() != 2 or q.shape[1] % BLOCK:
        raise ValueError(f"q must be int8 [N, K] with K divisible by {BLOCK}, got {q.dtype} {list(q.shape)}")
    N, K = q.shape
    nb = K // BLOCK
    if d.dtype != torch.float16 or tuple(d.shape) != (N, nb):
        raise ValueError(f"d must be float16 [{N}, {nb}], got {d.dtype} {list(d.shape)}")
    G = (N + 15) // 16
    pad = G * 16 - N
    qi = torch.nn.functional.pad(q.to(torch.int16), (0, 0, 0, pad))                     # [G*16, K]
    a = (d.double().abs() * q.to(torch.int64).abs().view(N, nb, BLOCK).sum(2).double())  # [N, nb]
    a32 = a.float()
    a32 = torch.where(a32.double() < a, torch.nextafter(a32, torch.full_like(a32, float("inf"))), a32)
    a32 = torch.cat([a32, torch.full((pad, nb), float("inf"))]) if pad else a32
    d16 = torch.cat([d, d.new_zeros(pad, nb)]) if pad else d
    # bytes[g, b, t, lane, u] = q[16 g + lane, 32 b + 4 t + u] ^ 0x80
    u8 = (qi.view(G, 16, nb, 8, 4).permute(0, 2, 3, 1, 4) + 128).to(torch.uint8).contiguous()
    return u8, _group_lanes(d16, G, nb), _group_lanes(a32, G, nb)
