"""Executable specification of every radar_ext custom op, in plain PyTorch.

Written for clarity, not speed: each function states the exact result the C++/CUDA kernels must
produce (integers exactly, floats within the tolerances declared in python_tests/conftest.py).
The argument checkers here are also the fake (meta) implementations' checkers, and their messages
are the same, word for word, as the C++ checkers in csrc/checks.h.

Numerics shared by reference and kernels:
- topk_expand picks the top-W children by the raw logits (dividing by a temperature > 0 keeps the
  order), ties to the lower token id. NaN ranks above +inf, as in torch.topk (and two NaNs tie, so
  the lower id first): one total order on every device, so every row has W real ids, however many
  NaNs it holds (an all-NaN row after a half-precision overflow: ids 0..W-1). A row with a NaN (or a
  +inf) has no distribution: log_softmax makes all its log-probs NaN, and so its children's scores,
  which then rank first in the selection of the next beams too (same order). Log-probs are computed in float64 here and rounded to float32.
  Child scores are summed in float32 (beam score + rounded child log-prob), so the selection of the
  next beams (ties to the lower flat index n*W + j) sees the same numbers on every device.
- policy_step sums in float64 here; the kernels sum in float32 in one fixed order (kernels/policy_step.h).
- skinny_linear sums in float64 here; the CPU kernel sums each output in float32 in a fixed order
  (independent of the thread count and of M), the CUDA path is cuBLAS.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch


class TopkExpandOut(NamedTuple):
    child_logp: torch.Tensor    # [B, N, W] float32, log-prob of each beam's top-W children
    child_ids: torch.Tensor     # [B, N, W] int64, their token ids (draft vocabulary)
    child_scores: torch.Tensor  # [B, N, W] float32, beam score + child log-prob
    next_scores: torch.Tensor   # [B, W] float32, the best W child scores, descending
    next_parent: torch.Tensor   # [B, W] int64, beam index n of each chosen child
    next_ids: torch.Tensor      # [B, W] int64, token id of each chosen child


# ---------------------------------------------------------------------------------------------
# argument checks (metadata only unless stated; shared with the fake impls in radar_ext/ops.py)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def describe(t: torch.Tensor) -> str:
    """'float32 [2, 7]': how the error messages show a tensor."""
    return f"{dtype_name(t.dtype)} [{', '.join(str(s) for s in t.shape)}]"


def _fail(message: str):
    raise ValueError(message)


def _check_tensor(name, t):
    if not isinstance(t, torch.Tensor):
        _fail(f"{name} must be a tensor, got {type(t).__name__}")


def _check_device(name, t, ref_name, ref):
    if t.device != ref.device:
        _fail(f"{name} must be on the device of {ref_name} ({ref.device}), got {t.device}")


def check_topk_expand_args(logits, beam_scores, tree_topk, temperature):
    _check_tensor("logits", logits)
    _check_tensor("beam_scores", beam_scores)
    if logits.dtype != torch.float32 or logits.dim() != 3:
        _fail(f"logits must be float32 [B, N, Vd], got {describe(logits)}")
    B, N, Vd = logits.shape
    if N < 1:
        _fail(f"logits must have N >= 1 beams, got {describe(logits)}")
    if beam_scores.dtype != torch.float32 or tuple(beam_scores.shape) != (B, N):
        _fail(f"beam_scores must be float32 [B, N] = [{B}, {N}], got {describe(beam_scores)}")
    _check_device("beam_scores", beam_scores, "logits", logits)
    if isinstance(tree_topk, bool) or not isinstance(tree_topk, int) or not 1 <= tree_topk <= Vd:
        _fail(f"tree_topk must be an int in [1, Vd] = [1, {Vd}], got {tree_topk!r}")
    if not isinstance(temperature, (int, float)) or not (math.isfinite(temperature) and temperature > 0):
        _fail(f"temperature must be a finite number > 0, got {temperature!r}")


def check_policy_step_args(features, h, c, w_ih, w_hh, b, w1, b1, w2, b2):
    names = ("features", "h", "c", "w_ih", "w_hh", "b", "w1", "b1", "w2", "b2")
    tensors = (features, h, c, w_ih, w_hh, b, w1, b1, w2, b2)
    for name, t in zip(names, tensors):
        _check_tensor(name, t)
    if features.dtype != torch.float32 or features.dim() != 2:
        _fail(f"features must be float32 [B, F], got {describe(features)}")
    B, F = features.shape
    if h.dtype != torch.float32 or h.dim() != 2 or h.shape[0] != B:
        _fail(f"h must be float32 [B, H] with B = {B}, got {describe(h)}")
    H = h.shape[1]
    if w1.dtype != torch.float32 or w1.dim() != 2 or w1.shape[1] != H + F:
        _fail(f"w1 must be float32 [G, H+F] with H+F = {H + F}, got {describe(w1)}")
    G = w1.shape[0]
    if w2.dtype != torch.float32 or w2.dim() != 2 or w2.shape[1] != G or w2.shape[0] < 1:
        _fail(f"w2 must be float32 [O, G] with O >= 1 and G = {G}, got {describe(w2)}")
    O = w2.shape[0]
    expected = {"c": (B, H), "w_ih": (4 * H, F), "w_hh": (4 * H, H), "b": (4 * H,), "b1": (G,), "b2": (O,)}
    layouts = {"c": "[B, H]", "w_ih": "[4H, F]", "w_hh": "[4H, H]", "b": "[4H]", "b1": "[G]", "b2": "[O]"}
    for name, t in zip(names, tensors):
        if name in expected and (t.dtype != torch.float32 or tuple(t.shape) != expected[name]):
            shape = ", ".join(str(s) for s in expected[name])
            _fail(f"{name} must be float32 {layouts[name]} = [{shape}], got {describe(t)}")
    for name, t in zip(names[1:], tensors[1:]):
        _check_device(name, t, "features", features)


def check_skinny_linear_args(x, w, bias=None):
    _check_tensor("x", x)
    _check_tensor("w", w)
    if x.dtype != torch.float32 or x.dim() != 2:
        _fail(f"x must be float32 [M, K], got {describe(x)}")
    K = x.shape[1]
    if w.dtype not in (torch.float32, torch.bfloat16, torch.float16) or w.dim() != 2 or w.shape[1] != K:
        _fail(f"w must be float32, bfloat16 or float16 [N, K] with K = {K}, got {describe(w)}")
    _check_device("w", w, "x", x)
    if bias is not None:
        _check_tensor("bias", bias)
        N = w.shape[0]
        if bias.dtype != torch.float32 or tuple(bias.shape) != (N,):
            _fail(f"bias must be float32 [N] = [{N}], got {describe(bias)}")
        _check_device("bias", bias, "x", x)


def check_skinny_linear_quant_args(x, q, d, m=None, bias=None):
    _check_tensor("x", x)
    _check_tensor("q", q)
    _check_tensor("d", d)
    if x.dtype != torch.float32 or x.dim() != 2:
        _fail(f"x must be float32 [M, K], got {describe(x)}")
    K = x.shape[1]
    if K % 32:
        _fail(f"x must have K divisible by 32 (blocks of 32 weights), got {describe(x)}")
    if m is None:
        if q.dtype != torch.int8 or q.dim() != 2 or q.shape[1] != K:
            _fail(f"q must be int8 [N, K] with K = {K} (Q8_0: m is None), got {describe(q)}")
    elif q.dtype != torch.uint8 or q.dim() != 2 or q.shape[1] != K // 2:
        _fail(f"q must be uint8 [N, K/2] with K/2 = {K // 2} (Q4_1: m is given), got {describe(q)}")
    _check_device("q", q, "x", x)
    N = q.shape[0]
    if d.dtype != torch.float32 or tuple(d.shape) != (N, K // 32):
        _fail(f"d must be float32 [N, K/32] = [{N}, {K // 32}], got {describe(d)}")
    _check_device("d", d, "x", x)
    if m is not None:
        _check_tensor("m", m)
        if m.dtype != torch.float32 or tuple(m.shape) != (N, K // 32):
            _fail(f"m must be float32 [N, K/32] = [{N}, {K // 32}], got {describe(m)}")
        _check_device("m", m, "x", x)
    if bias is not None:
        _check_tensor("bias", bias)
        if bias.dtype != torch.float32 or tuple(bias.shape) != (N,):
            _fail(f"bias must be float32 [N] = [{N}], got {describe(bias)}")
        _check_device("bias", bias, "x", x)


def dequantize_blocks(q: torch.Tensor, d: torch.Tensor, m: torch.Tensor | None = None) -> torch.Tensor:
    """The float32 weights [N, K] of GGUF-style blocks of 32 (skinny_linear_quant's layout), computed as
    GGUF's dequantization does: Q4_1 (m given, q uint8 [N, K/2], byte 16b + j = element 32b + j in the
    low nibble, 32b + 16 + j in the high one): d * q + m; Q8_0 (m None, q int8 [N, K]): d * q. d * q is
    exact in float32, so each weight is rounded once."""
    N = q.shape[0]
    q = q.contiguous()  # (any strides work: the views below only split a dim; dense rows read faster)
    if m is None:
        K = q.shape[1]
        return (q.float().view(N, K // 32, 32) * d.unsqueeze(2)).reshape(N, K)
    K = 2 * q.shape[1]
    b = q.view(N, K // 32, 16)
    nib = torch.cat([b & 15, b >> 4], dim=2).float()                      # [N, K/32, 32]
    return (nib * d.unsqueeze(2) + m.unsqueeze(2)).reshape(N, K)


def _ungroup_lanes(s: torch.Tensor) -> torch.Tensor:
    """Per-group lanes [G, nb, 16] (radar_ext.quant's grouped scales) -> per-row, per-block float32 [16 G, nb]."""
    G, nb = s.shape[0], s.shape[1]
    return s.transpose(1, 2).reshape(16 * G, nb).float()


def amx_unpack(q: torch.Tensor, d: torch.Tensor, m: torch.Tensor | None = None):
    """GGUF blocks (q, d, m; float32 scales) from the AMX layout of radar_ext.quant.amx_pack (the inverse:
    units [N/16, K/32, 256 or 512] in q's GGUF shape, scales float16 [N/16, K/32, 16])."""
    G, nb = d.shape[0], d.shape[1]
    N = 16 * G
    if m is not None:
        u = q.reshape(G, nb, 8, 32)
        B = torch.cat([u & 15, u >> 4], dim=2)                                # [G, nb, 16 r, 32]
    else:
        B = q.reshape(G, nb, 16, 32)
    vals = B.view(G, nb, 16, 16, 2).permute(0, 3, 1, 2, 4).reshape(N, nb, 32)  # [16g + n, b, 2r + p]
    if m is not None:
        q_out = (vals[:, :, :16] | (vals[:, :, 16:] << 4)).reshape(N, nb * 16).contiguous()
    else:
        q_out = vals.reshape(N, nb * 32).contiguous()
    return q_out, _ungroup_lanes(d), None if m is None else _ungroup_lanes(m)


def vnni_unpack(q: torch.Tensor, d: torch.Tensor, m: torch.Tensor):
    """GGUF Q4_1 blocks (q, d, m; float32 scales) from the VNNI layout of radar_ext.quant.vnni_pack (the inverse:
    units uint8 [N/16, K/32, 256], scales float16 [N/16, K/32, 16])."""
    G, nb = q.shape[0], q.shape[1]
    N = 16 * G
    u = q.reshape(G, nb, 4, 16, 4)                                                  # [g, b, p, l, t]
    quads = torch.cat([u & 15, u >> 4], dim=2)                                      # [g, b, 8 quads, l, t]
    vals = quads.permute(0, 3, 1, 2, 4).reshape(N, nb, 32)                          # [16g + l, b, 4p + t]
    q_out = (vals[:, :, :16] | (vals[:, :, 16:] << 4)).reshape(N, nb * 16).contiguous()
    return q_out, _ungroup_lanes(d), _ungroup_lanes(m)


def skinny_linear_quant(x, q, d, m=None, bias=None):
    """y = x @ w.T (+ bias) with w = dequantize_blocks(q, d, m) [N, K] -> y [M, N] float32, summed in float64."""
    check_skinny_linear_quant_args(x, q, d, m, bias)
    return skinny_linear(x, dequantize_blocks(q, d, m), bias)


LLAMA_LAYER_PARAMS = 2 + 7 * 4  # per layer: 2 norm weights, then (q, d, m, bias) for q, k, v, o, gate, up, down


def check_llama_layers_quant_args(x, params, k_bufs, v_bufs, capture):
    if x.dtype != torch.float32 or x.dim() != 3 or x.device.type != "cpu":
        _fail(f"x must be float32 [B, M, H] on the CPU, got {describe(x)}")
    n = len(k_bufs)
    if len(params) != n * LLAMA_LAYER_PARAMS or len(v_bufs) != n:
        _fail(f"params must hold {LLAMA_LAYER_PARAMS} entries per layer and v_bufs one buffer per layer: got "
              f"{len(params)} params, {len(k_bufs)} k_bufs, {len(v_bufs)} v_bufs")
    capture = list(capture)
    if any(not 0 <= c < n for c in capture) or any(a >= b for a, b in zip(capture, capture[1:])):
        _fail(f"capture must be increasing layer indices in [0, {n}), got {capture}")


def llama_layers_quant(x, cos, sin, mask, params, k_bufs, v_bufs, past_len: int, capture, eps: float,
                       scaling: float, head_dim: int):
    """The decoder layers of a Llama verify forward with every linear on GGUF blocks (radar_ext.lean_forward's
    native loop): per layer, LlamaRMSNorm, q/k/v = skinny_linear_quant, rotary (q * cos + rotate_half(q) * sin),
    the new K/V written to k_bufs[i] / v_bufs[i][:, :, past_len:past_len + M] (in place), sdpa over
    [0, past_len + M) with the additive mask and GQA, o, residual, norm, down(silu(gate) * up), residual.
    x [B, M, H] float32; cos, sin [B, M, D]; mask [B, 1, M, >= past_len + M]; params LLAMA_LAYER_PARAMS
    per layer. Returns [x after the layers, the inputs of the layers in `capture`, in layer order]."""
    check_llama_layers_quant_args(x, params, k_bufs, v_bufs, capture)
    n = len(k_bufs)
    B, M, _ = x.shape

    def linear(h, i):
        y = skinny_linear_quant(h.reshape(-1, h.shape[-1]), params[i], params[i + 1], params[i + 2], params[i + 3])
        return y.view(B, M, -1)

    def norm(t, w):
        h = t.to(torch.float32)
        return w * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)).to(t.dtype)

    def rotary(t):
        half = t.shape[-1] // 2
        return t * cos[:, None] + torch.cat([-t[..., half:], t[..., :half]], -1) * sin[:, None]

    out = []
    for i in range(n):
        if i in capture:
            out.append(x)
        b = i * LLAMA_LAYER_PARAMS
        h = norm(x, params[b])
        q, k, v = (linear(h, b + 2 + 4 * j).view(B, M, -1, head_dim).transpose(1, 2) for j in range(3))
        q, k = rotary(q), rotary(k)
        k_bufs[i][:, :, past_len:past_len + M] = k
        v_bufs[i][:, :, past_len:past_len + M] = v
        ka, va = k_bufs[i][:, :, :past_len + M], v_bufs[i][:, :, :past_len + M]
        o = torch.nn.functional.scaled_dot_product_attention(q, ka, va, attn_mask=mask[..., :past_len + M],
                                                             scale=scaling, enable_gqa=True)
        x = x + linear(o.transpose(1, 2).reshape(B, M, -1), b + 14)
        h = norm(x, params[b + 1])
        x = x + linear(torch.nn.functional.silu(linear(h, b + 18)) * linear(h, b + 22), b + 26)
    return [x] + out


LLAMA_FORWARD_HEAD_PARAMS = 6  # embed, final norm, then the LM head's 4 linear entries


def llama_forward(tokens, cos, sin, mask, params, k_bufs, v_bufs, past_len: int, capture, eps: float,
                  scaling: float, head_dim: int):
    """The whole verify forward of a plain Llama decoder (radar_ext::llama_forward), in float64.
    tokens [B, M] int64; cos, sin [B, M, D]; mask [B, 1, M, >= past_len + M] additive; params: embed [V, H],
    final norm [H], the LM head's (weight or blocks q, d, m, bias), then per layer LLAMA_LAYER_PARAMS entries
    (2 norm weights, then q, k, v, o, gate, up, down as (float weight, None, None, bias) or (q, d, m, bias)).
    k_bufs / v_bufs [B, Hkv, capacity, D] per layer: the new K/V (after rotary) are written to
    [past_len, past_len + M) in place. capture: slots s < n_layers = the input of layer s, n_layers = the
    last layer's output, n_layers + 1 = after the final norm. Returns [logits [B, M, V] float32, captures]."""
    n = len(k_bufs)
    if len(params) != LLAMA_FORWARD_HEAD_PARAMS + n * LLAMA_LAYER_PARAMS:
        _fail(f"params must hold {LLAMA_FORWARD_HEAD_PARAMS} + {LLAMA_LAYER_PARAMS} entries per layer, got "
              f"{len(params)} for {n} layers")
    B, M = tokens.shape
    D, T = head_dim, past_len + M
    f64 = torch.float64

    def weight(i):
        w, d, m = params[i], params[i + 1], params[i + 2]
        if d is not None and w.dim() == 3:  # the VNNI layout (radar_ext.quant.vnni_pack)
            w, d, m = vnni_unpack(w, d, m)
        elif d is not None and d.dim() == 3:  # the AMX layout (radar_ext.quant.amx_pack)
            w, d, m = amx_unpack(w, d, m)
        return (w.to(f64) if d is None else dequantize_blocks(w, d, m).to(f64)), params[i + 3]

    def linear(h, i):
        w, bias = weight(i)
        y = h @ w.T
        return y if bias is None else y + bias.to(f64)

    def norm(t, w):
        return w.to(f64) * (t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + eps))

    c, s = cos.to(f64)[:, None], sin.to(f64)[:, None]

    def rotary(t):  # t [B, heads, M, D]
        half = D // 2
        return t * c + torch.cat([-t[..., half:], t[..., :half]], -1) * s

    x = params[0].to(f64)[tokens]
    keep = {}
    m_add = mask[:, :, :, :T].to(f64)
    for i in range(n):
        keep[i] = x
        b = LLAMA_FORWARD_HEAD_PARAMS + i * LLAMA_LAYER_PARAMS
        h = norm(x, params[b])
        q, k, v = (linear(h, b + 2 + 4 * j).view(B, M, -1, D).transpose(1, 2) for j in range(3))
        q, k = rotary(q), rotary(k)
        k_bufs[i][:, :, past_len:T] = k.to(k_bufs[i].dtype)
        v_bufs[i][:, :, past_len:T] = v.to(v_bufs[i].dtype)
        ka, va = k_bufs[i][:, :, :T].to(f64), v_bufs[i][:, :, :T].to(f64)
        rep = q.shape[1] // ka.shape[1]
        ka, va = ka.repeat_interleave(rep, 1), va.repeat_interleave(rep, 1)
        att = torch.softmax(q @ ka.transpose(-1, -2) * scaling + m_add, -1)
        x = x + linear((att @ va).transpose(1, 2).reshape(B, M, -1), b + 14)
        h = norm(x, params[b + 1])
        x = x + linear(torch.nn.functional.silu(linear(h, b + 18)) * linear(h, b + 22), b + 26)
    keep[n] = x
    x = norm(x, params[1])
    keep[n + 1] = x
    return [linear(x, 2).float()] + [keep[int(s_)].float() for s_ in capture]


def check_build_tree_args(parents, n_nodes):
    _check_tensor("parents", parents)
    _check_tensor("n_nodes", n_nodes)
    if parents.dtype != torch.int64 or parents.dim() != 2 or parents.shape[1] < 1:
        _fail(f"parents must be int64 [B, M] with M >= 1, got {describe(parents)}")
    B = parents.shape[0]
    if n_nodes.dtype != torch.int64 or tuple(n_nodes.shape) != (B,):
        _fail(f"n_nodes must be int64 [B] = [{B}], got {describe(n_nodes)}")
    _check_device("n_nodes", n_nodes, "parents", parents)


def check_build_tree_values(parents, n_nodes):
    """Data checks (read the values). Reports the first bad batch row, and in it the first bad node."""
    M = parents.shape[1]
    parents, n_nodes = parents.cpu(), n_nodes.cpu()
    for b in range(parents.shape[0]):
        n = int(n_nodes[b])
        if not 1 <= n <= M:
            _fail(f"n_nodes[{b}] = {n} must be in [1, M] = [1, {M}]")
        p = int(parents[b, 0])
        if p != -1:
            _fail(f"parents[{b}, 0] = {p} must be -1 (node 0 is the root)")
        for i in range(1, n):
            p = int(parents[b, i])
            if not 0 <= p < i:
                _fail(f"parents[{b}, {i}] = {p} must be in [0, {i}) (node {i})")


# ---------------------------------------------------------------------------------------------
# the ops


def topk_expand(logits: torch.Tensor, beam_scores: torch.Tensor, tree_topk: int,
                temperature: float = 1.0) -> TopkExpandOut:
    """Expand N beams by their top-W children and keep the best W of the N*W children.

    logits [B, N, Vd] float32, beam_scores [B, N] float32 (-inf marks a dead beam).
    """
    check_topk_expand_args(logits, beam_scores, tree_topk, temperature)
    B, N, Vd = logits.shape
    W = tree_topk
    # Top-W by the raw logits; a stable descending sort keeps equal logits in increasing id order
    # and puts NaN first (above +inf), NaNs in increasing id order: torch.topk's order, ties resolved.
    child_ids = torch.sort(logits, dim=-1, descending=True, stable=True).indices[..., :W]  # [B, N, W]

    # log_softmax(logits / T) in float64. A row whose logits are all -inf has no distribution:
    # its children all get log-prob -inf (ids 0..W-1 by the tie rule), like a dead beam.
    x = logits.double() / temperature                                    # [B, N, Vd]
    row_max = x.amax(dim=-1, keepdim=True)                               # [B, N, 1]
    dead_row = row_max == -math.inf
    shift = torch.where(dead_row, torch.zeros_like(row_max), row_max)
    lse = shift + torch.log(torch.exp(x - shift).sum(dim=-1, keepdim=True))
    logp = torch.where(dead_row, torch.full_like(x, -math.inf), x - lse)
    child_logp = logp.gather(-1, child_ids).float()                      # [B, N, W]

    # float32 sum, as in the kernels (see the module docstring).
    child_scores = beam_scores.unsqueeze(-1) + child_logp                # [B, N, W]

    flat = child_scores.reshape(B, N * W)
    order = torch.sort(flat, dim=-1, descending=True, stable=True).indices[:, :W]  # [B, W]
    next_scores = flat.gather(1, order)
    next_parent = order // W
    next_ids = child_ids.reshape(B, N * W).gather(1, order)
    return TopkExpandOut(child_logp, child_ids, child_scores, next_scores, next_parent, next_ids)


def policy_step(features, h, c, w_ih, w_hh, b, w1, b1, w2, b2):
    """One LSTM cell step (gate order i, f, g, o) and an MLP head on cat(h_new, features).

    features [B, F], h, c [B, H] (H may be 0: a plain MLP), w_ih [4H, F], w_hh [4H, H],
    b [4H] (= b_ih + b_hh), w1 [G, H+F], b1 [G], w2 [O, G], b2 [O].
    Returns (probs [B, O] = softmax of the MLP output, h_new [B, H], c_new [B, H]), float32.
    """
    check_policy_step_args(features, h, c, w_ih, w_hh, b, w1, b1, w2, b2)
    f64 = [t.double() for t in (features, h, c, w_ih, w_hh, b, w1, b1, w2, b2)]
    features, h, c, w_ih, w_hh, b, w1, b1, w2, b2 = f64
    gates = features @ w_ih.T + h @ w_hh.T + b                           # [B, 4H]
    i, f, g, o = gates.chunk(4, dim=1)
    c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)      # [B, H]
    h_new = torch.sigmoid(o) * torch.tanh(c_new)                         # [B, H]
    hidden = torch.relu(torch.cat([h_new, features], dim=1) @ w1.T + b1)  # [B, G]
    probs = torch.softmax(hidden @ w2.T + b2, dim=1)                     # [B, O]
    return probs.float(), h_new.float(), c_new.float()


def skinny_linear(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """y = x @ w.T (+ bias): x [M, K] float32, w [N, K] float32, bfloat16 or float16, bias [N] or None -> y [M, N]
    float32, summed in float64."""
    check_skinny_linear_args(x, w, bias)
    y = x.double() @ w.double().T                                        # [M, N]
    if bias is not None:
        y = y + bias.double()
    return y.float()


def build_tree(parents: torch.Tensor, n_nodes: torch.Tensor):
    """Ancestor mask, depth and root-to-leaf paths of B trees given by parent indices.

    parents [B, M] int64: node 0 is the root (parent -1), node i > 0 has its parent in [0, i);
    entries at i >= n_nodes[b] are padding and ignored. n_nodes [B] int64 in [1, M].
    Returns (mask [B, M, M] bool: node i sees j iff j is i or an ancestor of i, padding False;
             depth [B, M] int64: root 0, padding -1;
             paths [B, M, M] int64: one root-to-leaf path of node indices per leaf, leaves in
                 increasing index, -1 padded;
             n_paths [B] int64: number of leaves).
    """
    check_build_tree_args(parents, n_nodes)
    check_build_tree_values(parents, n_nodes)
    B, M = parents.shape
    device = parents.device
    par = parents.cpu().tolist()
    mask = torch.zeros(B, M, M, dtype=torch.bool)
    depth = torch.full((B, M), -1, dtype=torch.int64)
    paths = torch.full((B, M, M), -1, dtype=torch.int64)
    n_paths = torch.zeros(B, dtype=torch.int64)
    for bi in range(B):
        n = int(n_nodes[bi])
        has_child = [False] * n
        for i in range(n):
            j = i
            while j != -1:                       # walk up to the root
                mask[bi, i, j] = True
                j = par[bi][j] if j > 0 else -1
            depth[bi, i] = 0 if i == 0 else depth[bi, par[bi][i]] + 1
            if i > 0:
                has_child[par[bi][i]] = True
        for leaf in (i for i in range(n) if not has_child[i]):
            row = int(n_paths[bi])
            node = leaf
            for d in range(int(depth[bi, leaf]), -1, -1):
                paths[bi, row, d] = node
                node = par[bi][node]
            n_paths[bi] += 1
    return mask.to(device), depth.to(device), paths.to(device), n_paths.to(device)
