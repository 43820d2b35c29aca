"""The fused controller ops: one-line documented wrappers over `torch.ops.radar_ext.*`.

When the compiled extension `radar_ext._C` is importable (HAS_EXTENSION), the wrappers call the
C++/CUDA kernels; otherwise they fall back to the plain-PyTorch reference (radar_ext/reference.py),
which has the same signatures and results. The fake (meta) implementations used by torch.compile
are registered here with the reference's argument checkers, so a bad call fails the same way
while tracing as it does eagerly.
"""
from __future__ import annotations

import torch

from radar_ext import reference
from radar_ext.reference import TopkExpandOut

__all__ = ["HAS_EXTENSION", "TopkExpandOut", "built_with_cuda", "topk_expand", "policy_step", "build_tree",
           "skinny_linear", "skinny_linear_quant", "llama_layers_quant"]

try:
    from radar_ext import _C  # noqa: F401  (loading it registers torch.ops.radar_ext.*)
    HAS_EXTENSION = True
    IMPORT_ERROR: Exception | None = None
except ImportError as e:  # not built: the reference serves every op
    _C = None
    HAS_EXTENSION = False
    IMPORT_ERROR = e


def built_with_cuda() -> bool:
    """True when the extension was compiled with its CUDA kernels (says nothing about a GPU being present)."""
    return bool(HAS_EXTENSION and _C.built_with_cuda())


def topk_expand(logits, beam_scores, tree_topk: int, temperature: float = 1.0) -> TopkExpandOut:
    """Fused log-softmax + per-beam top-W + score accumulation + global top-W (see reference.topk_expand)."""
    if not HAS_EXTENSION:
        return reference.topk_expand(logits, beam_scores, tree_topk, temperature)
    return TopkExpandOut(*torch.ops.radar_ext.topk_expand(logits, beam_scores, tree_topk, float(temperature)))


def policy_step(features, h, c, w_ih, w_hh, b, w1, b1, w2, b2):
    """One LSTM cell step + MLP head + softmax -> (probs [B, O], h_new, c_new) (see reference.policy_step)."""
    if not HAS_EXTENSION:
        return reference.policy_step(features, h, c, w_ih, w_hh, b, w1, b1, w2, b2)
    return torch.ops.radar_ext.policy_step(features, h, c, w_ih, w_hh, b, w1, b1, w2, b2)


def build_tree(parents, n_nodes):
    """Ancestor mask, depth, root-to-leaf paths and path count of B parent-index trees (see reference.build_tree)."""
    if not HAS_EXTENSION:
        return reference.build_tree(parents, n_nodes)
    return torch.ops.radar_ext.build_tree(parents, n_nodes)


def skinny_linear(x, w, bias=None):
    """y = x @ w.T (+ bias) for few rows x [M, K] float32, w [N, K] float32, bfloat16 or float16 ->
    [M, N] float32: a CPU kernel that reads w once (faster than MKL's sgemm for small M, see
    radar_ext.fast_linear; 16-bit weights are widened exactly, so they give the bits of their float32
    values from half the memory traffic); on CUDA tensors it is F.linear, because cuBLAS serves GPUs
    well (see reference.skinny_linear)."""
    if x.is_cuda or not HAS_EXTENSION:
        reference.check_skinny_linear_args(x, w, bias)
        return torch.nn.functional.linear(x, w.to(x.dtype), bias)
    return torch.ops.radar_ext.skinny_linear(x, w, bias)


def skinny_linear_quant(x, q, d, m=None, bias=None):
    """skinny_linear with block-quantized weights (GGUF Q4_1 when m is given, Q8_0 when it is None; layout
    in reference.dequantize_blocks), decoded to float32 as they stream in: the bits of skinny_linear on
    the dequantized float32 weights from 1/6 (Q4_1) or 1/4 (Q8_0) of the bytes. On CUDA tensors (or
    without the extension) the weights are dequantized and F.linear runs."""
    if x.is_cuda or not HAS_EXTENSION:
        reference.check_skinny_linear_quant_args(x, q, d, m, bias)
        return torch.nn.functional.linear(x, reference.dequantize_blocks(q, d, m), bias)
    return torch.ops.radar_ext.skinny_linear_quant(x, q, d, m, bias)


def llama_layers_quant(x, cos, sin, mask, params, k_bufs, v_bufs, past_len, capture, eps, scaling, head_dim):
    """A Llama verify forward's decoder layers with every linear on Q4_1 / Q8_0 blocks, in one call
    (radar_ext.lean_forward's native loop; reference.llama_layers_quant says what it computes). CPU only:
    the kernel runs the same ATen ops as the Python loop, so the same bits, without ~1200 Python op calls."""
    if not HAS_EXTENSION or not hasattr(torch.ops.radar_ext, "llama_layers_quant"):
        return reference.llama_layers_quant(x, cos, sin, mask, params, k_bufs, v_bufs, past_len, capture, eps,
                                            scaling, head_dim)
    return torch.ops.radar_ext.llama_layers_quant(x, cos, sin, mask, params, k_bufs, v_bufs, past_len, capture,
                                                  eps, scaling, head_dim)


if HAS_EXTENSION:
    @torch.library.register_fake("radar_ext::topk_expand")
    def _topk_expand_fake(logits, beam_scores, tree_topk, temperature=1.0):
        reference.check_topk_expand_args(logits, beam_scores, tree_topk, temperature)
        B, N, _ = logits.shape
        W = tree_topk
        f32 = dict(dtype=torch.float32, device=logits.device)
        i64 = dict(dtype=torch.int64, device=logits.device)
        return (logits.new_empty((B, N, W), **f32), logits.new_empty((B, N, W), **i64),
                logits.new_empty((B, N, W), **f32), logits.new_empty((B, W), **f32),
                logits.new_empty((B, W), **i64), logits.new_empty((B, W), **i64))

    @torch.library.register_fake("radar_ext::policy_step")
    def _policy_step_fake(features, h, c, w_ih, w_hh, b, w1, b1, w2, b2):
        reference.check_policy_step_args(features, h, c, w_ih, w_hh, b, w1, b1, w2, b2)
        B, O = features.shape[0], w2.shape[0]
        return features.new_empty((B, O)), h.new_empty(h.shape), c.new_empty(c.shape)

    @torch.library.register_fake("radar_ext::build_tree")
    def _build_tree_fake(parents, n_nodes):
        reference.check_build_tree_args(parents, n_nodes)
        B, M = parents.shape
        return (parents.new_empty((B, M, M), dtype=torch.bool), parents.new_empty((B, M)),
                parents.new_empty((B, M, M)), parents.new_empty((B,)))

    @torch.library.register_fake("radar_ext::skinny_linear")
    def _skinny_linear_fake(x, w, bias=None):
        reference.check_skinny_linear_args(x, w, bias)
        return x.new_empty((x.shape[0], w.shape[0]))

    @torch.library.register_fake("radar_ext::llama_layers_quant")
    def _llama_layers_quant_fake(x, cos, sin, mask, params, k_bufs, v_bufs, past_len, capture, eps, scaling,
                                 head_dim):
        reference.check_llama_layers_quant_args(x, params, k_bufs, v_bufs, capture)
        return [torch.empty_like(x) for _ in range(1 + len(capture))]

    @torch.library.register_fake("radar_ext::skinny_linear_quant")
    def _skinny_linear_quant_fake(x, q, d, m=None, bias=None):
        reference.check_skinny_linear_quant_args(x, q, d, m, bias)
        return x.new_empty((x.shape[0], q.shape[0]))
