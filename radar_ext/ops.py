"""The fused controller ops: one-line documented wrappers over `torch.ops.radar_ext.*`.

Each call is routed by the device of its tensors: to the C++/CUDA kernels when the compiled
extension `radar_ext._C` has one for that device (has_kernel), otherwise to the plain-PyTorch
reference (radar_ext/reference.py), which has the same signatures and results, with one warning
saying why and how to build the kernels. So a build without nvcc (CPU kernels only) still serves
CUDA tensors, and so does a GPU the build has no kernel image for. The fake (meta) implementations
used by torch.compile are registered here with the reference's argument checkers, so a bad call
fails the same way while tracing as it does eagerly.
"""
from __future__ import annotations

import re
import warnings

import torch

from radar_ext import reference
from radar_ext.reference import TopkExpandOut

__all__ = ["HAS_EXTENSION", "TopkExpandOut", "amx_rows", "built_with_cuda", "has_kernel", "topk_expand", "policy_step", "build_tree",
           "skinny_linear", "skinny_linear_quant", "llama_layers_quant", "llama_forward", "llama_forward_argmax",
           "argmax_head_fast"]

try:
    from radar_ext import _C  # noqa: F401  (loading it registers torch.ops.radar_ext.*)
    HAS_EXTENSION = True
    IMPORT_ERROR: Exception | None = None
except ImportError as e:  # not built: the reference serves every op
    _C = None
    HAS_EXTENSION = False
    IMPORT_ERROR = e


def amx_rows(M: int) -> bool:
    """Whether a CPU block-quantized product (skinny_linear_quant, the fused forward's Q4_1 / Q8_0
    linears) of M rows of x runs on the AMX tile unit (kernels/amx_linear.h): the CPU and OS have it, it
    is enabled (_C.set_amx_enabled, RADAR_EXT_AMX=0 turns it off) and M >= _C.amx_min_rows(). Its sums are
    as exact as the AVX-512 path's, in another order, so the bits differ from the float32 kernel's there."""
    return bool(HAS_EXTENSION and _C.amx_enabled() and M >= _C.amx_min_rows())


def vnni_linear_supported() -> bool:
    """Whether this CPU runs the integer products of csrc/kernels/vnni_linear.h (AVX512-VNNI): the target's Q4_1
    layers where AMX does not run, and a draft head's "q8_vnni" weights."""
    return bool(HAS_EXTENSION and _C.vnni_linear_supported())


def vnni_linear_enabled() -> bool:
    """Whether the fused forward packs its Q4_1 weights for the integer VNNI products: supported and on
    (_C.set_vnni_linear; RADAR_EXT_VNNI_LINEAR=0 turns it off). Where AMX runs the products, it takes them instead."""
    return bool(HAS_EXTENSION and _C.vnni_linear_enabled())


COST_PROFILES = ("cpu-amx", "cpu-vnni", "cpu")


def cost_profile() -> str:
    """The kind of CPU forward this machine runs, as far as decoding costs go: "cpu-amx" where the fused forward's
    quantized products use the AMX tile unit (a verify of 8 tokens costs ~1.4x one token's), "cpu-vnni" where its
    Q4_1 products run in integers on AVX512-VNNI (csrc/kernels/vnni_linear.h: one token ~20% cheaper than on the
    float32 tiles, 8 tokens ~2.1x one token's), else "cpu" (AVX-512 or AVX2 float32 tiles: ~2.2-2.8x). A learned
    policy trained on several stores a calibration for each (`radar train-policy --machine-costs`) and, given no
    calibration, reads the one of this profile (LearnedPolicy.from_pretrained; a policy without one for this
    profile reads "cpu"'s, then its stored costs)."""
    if not HAS_EXTENSION:
        return "cpu"
    if _C.amx_enabled():
        return "cpu-amx"
    return "cpu-vnni" if vnni_linear_enabled() else "cpu"


def built_with_cuda() -> bool:
    """True when the extension was compiled with its CUDA kernels (says nothing about a GPU being present)."""
    return bool(HAS_EXTENSION and _C.built_with_cuda())


def parse_cuda_archs(token: str | None) -> list[tuple[tuple[int, int], bool]] | None:
    """radar_ext._C.cuda_archs() ('70PTX_75_80', setup.arch_token) -> [((7, 0), True), ((7, 5), False), ...];
    None when unknown (no token, or a build for named archs only: '0')."""
    if not token or token == "0":
        return None
    out = []
    for part in token.split("_"):
        m = re.fullmatch(r"(\d+)(\d)(PTX)?", part)
        if m is None:
            return None
        out.append(((int(m.group(1)), int(m.group(2))), bool(m.group(3))))
    return out


def arch_runs(archs: list[tuple[tuple[int, int], bool]] | None, capability: tuple[int, int]) -> bool:
    """Whether code built for `archs` runs on a GPU of this compute capability: a cubin for X.y runs on
    X.z with z >= y, a PTX for X.y on every capability >= X.y (the driver compiles it). None: unknown, True."""
    if archs is None:
        return True
    return any((cap[0] == capability[0] and cap[1] <= capability[1]) or (ptx and cap <= capability)
               for cap, ptx in archs)


_routes: dict = {}     # device -> whether the compiled kernels serve it (decided once per device)
_warned: set = set()   # reasons already warned about


def _no_kernel_reason(device: torch.device) -> str | None:
    """None when radar_ext._C has a kernel for tensors on `device`, else why not (for the warning)."""
    if not HAS_EXTENSION:
        return f"radar_ext._C did not load ({IMPORT_ERROR})"
    if device.type in ("cpu", "meta"):  # (meta: the fake implementations registered below)
        return None
    if device.type != "cuda":
        return f"radar_ext has no {device.type} kernels"
    if not built_with_cuda():
        return "radar_ext._C was built without its CUDA kernels (nvcc was not found when it was installed)"
    capability = torch.cuda.get_device_capability(device)
    archs = parse_cuda_archs(_C.cuda_archs())
    if not arch_runs(archs, capability):
        return (f"radar_ext._C has no kernel image for this GPU (compute capability {capability[0]}.{capability[1]}; "
                f"built for {_C.cuda_archs()})")
    return None


def has_kernel(device: torch.device) -> bool:
    """Whether the compiled kernels serve tensors on `device`; if not, warns once why (the ops then run
    the reference). Decided once per device."""
    route = _routes.get(device)
    if route is None:
        reason = _no_kernel_reason(device)
        route = _routes[device] = reason is None
        if reason is not None and reason not in _warned:
            _warned.add(reason)
            warnings.warn(f"radar_ext: {reason}, so the ops on {device.type} tensors run the plain-PyTorch "
                          "reference (slower). To build the kernels: install the CUDA toolkit (nvcc) matching "
                          f"torch {torch.version.cuda or ''}, set CUDA_HOME, then `pip install --no-build-isolation "
                          "--force-reinstall --no-deps radar_ext` (or `make setup` in a checkout).", RuntimeWarning,
                          stacklevel=3)
    return route


def topk_expand(logits, beam_scores, tree_topk: int, temperature: float = 1.0) -> TopkExpandOut:
    """Fused log-softmax + per-beam top-W + score accumulation + global top-W (see reference.topk_expand)."""
    if not has_kernel(logits.device):
        return reference.topk_expand(logits, beam_scores, tree_topk, temperature)
    return TopkExpandOut(*torch.ops.radar_ext.topk_expand(logits, beam_scores, tree_topk, float(temperature)))


def policy_step(features, h, c, w_ih, w_hh, b, w1, b1, w2, b2):
    """One LSTM cell step + MLP head + softmax -> (probs [B, O], h_new, c_new) (see reference.policy_step)."""
    if not has_kernel(features.device):
        return reference.policy_step(features, h, c, w_ih, w_hh, b, w1, b1, w2, b2)
    return torch.ops.radar_ext.policy_step(features, h, c, w_ih, w_hh, b, w1, b1, w2, b2)


def build_tree(parents, n_nodes):
    """Ancestor mask, depth, root-to-leaf paths and path count of B parent-index trees (see reference.build_tree)."""
    if not has_kernel(parents.device):
        return reference.build_tree(parents, n_nodes)
    return torch.ops.radar_ext.build_tree(parents, n_nodes)


def skinny_linear(x, w, bias=None):
    """y = x @ w.T (+ bias) for few rows x [M, K] float32, w [N, K] float32, bfloat16 or float16 ->
    [M, N] float32: a CPU kernel that reads w once (faster than MKL's sgemm for small M, see
    radar_ext.fast_linear; 16-bit weights are widened exactly, so they give the bits of their float32
    values from half the memory traffic); on CUDA tensors it is cuBLAS with TF32 off (the op's CUDA
    implementation, skinny_linear_aten), because cuBLAS serves GPUs well (see reference.skinny_linear)."""
    if not has_kernel(x.device):
        return _linear_without_kernel(x, w, bias)
    return torch.ops.radar_ext.skinny_linear(x, w, bias)


def _linear_without_kernel(x, w, bias):
    # CPU without the extension: F.linear (float32, no TF32 on CPUs). Elsewhere the float64 reference,
    # which no TF32 setting changes.
    if x.device.type == "cpu":
        reference.check_skinny_linear_args(x, w, bias)
        return torch.nn.functional.linear(x, w.to(x.dtype), bias)
    return reference.skinny_linear(x, w, bias)


def skinny_linear_quant(x, q, d, m=None, bias=None):
    """skinny_linear with block-quantized weights (GGUF Q4_1 when m is given, Q8_0 when it is None; layout
    in reference.dequantize_blocks), decoded to float32 as they stream in: the bits of skinny_linear on
    the dequantized float32 weights from 1/6 (Q4_1) or 1/4 (Q8_0) of the bytes. On CUDA tensors the
    weights are dequantized and cuBLAS runs with TF32 off (skinny_linear_quant_aten)."""
    if not has_kernel(x.device):
        reference.check_skinny_linear_quant_args(x, q, d, m, bias)
        return _linear_without_kernel(x, reference.dequantize_blocks(q, d, m), bias)
    return torch.ops.radar_ext.skinny_linear_quant(x, q, d, m, bias)


def llama_layers_quant(x, cos, sin, mask, params, k_bufs, v_bufs, past_len, capture, eps, scaling, head_dim):
    """A Llama verify forward's decoder layers with every linear on Q4_1 / Q8_0 blocks, in one call
    (radar_ext.lean_forward's native loop; reference.llama_layers_quant says what it computes). CPU only:
    the kernel runs the same ATen ops as the Python loop, so the same bits, without ~1200 Python op calls."""
    if not HAS_EXTENSION or not hasattr(torch.ops.radar_ext, "llama_layers_quant") or x.device.type != "cpu":
        return reference.llama_layers_quant(x, cos, sin, mask, params, k_bufs, v_bufs, past_len, capture, eps,
                                            scaling, head_dim)
    return torch.ops.radar_ext.llama_layers_quant(x, cos, sin, mask, params, k_bufs, v_bufs, past_len, capture,
                                                  eps, scaling, head_dim)


def llama_forward(tokens, cos, sin, mask, params, k_bufs, v_bufs, past_len, capture, eps, scaling, head_dim,
                  last_only: bool = False):
    """The whole verify forward of a plain Llama target (embedding, layers, final norm, LM head) as one
    torch-free C++ call (csrc/kernels/llama_forward.h; reference.llama_forward says what it computes):
    [logits [B, M, V] (last_only: [B, 1, V], each batch row's last row: a prompt's prefill), the hidden states
    of the `capture` slots]. CPU, float32 activations only."""
    if not HAS_EXTENSION or not hasattr(torch.ops.radar_ext, "llama_forward") or tokens.device.type != "cpu":
        out = reference.llama_forward(tokens, cos, sin, mask, params, k_bufs, v_bufs, past_len, capture, eps,
                                      scaling, head_dim)
        return [out[0][:, -1:].contiguous(), *out[1:]] if last_only else out
    return torch.ops.radar_ext.llama_forward(tokens, cos, sin, mask, params, k_bufs, v_bufs, past_len, capture,
                                             eps, scaling, head_dim, last_only)


def argmax_head_fast() -> bool:
    """Whether llama_forward_argmax bounds the LM head with AVX512-VNNI here (elsewhere it runs a scalar
    reference of the same arithmetic: correct, slower than the logits)."""
    return bool(HAS_EXTENSION and hasattr(_C, "argmax_vnni") and _C.argmax_vnni())


def llama_forward_argmax(tokens, cos, sin, mask, params, k_bufs, v_bufs, past_len, capture, eps, scaling, head_dim,
                         argmax_q, argmax_d, argmax_a, last_only: bool = False):
    """llama_forward at temperature 0: [the LM head's argmax [B, M] int64 (the first largest logit, as
    torch.argmax of llama_forward's logits), the candidates whose logits it computed exactly [B, M] int64,
    the captures]. params[2..5], the LM head, must be Q8_0 blocks with float16 scales; argmax_q / _d / _a:
    radar_ext.quant.argmax_pack of them (csrc/kernels/argmax_head.h says how the argmax is exact)."""
    if not HAS_EXTENSION or not hasattr(torch.ops.radar_ext, "llama_forward_argmax") or tokens.device.type != "cpu":
        out = llama_forward(tokens, cos, sin, mask, params, k_bufs, v_bufs, past_len, capture, eps, scaling,
                            head_dim, last_only)
        n = torch.full(out[0].shape[:2], out[0].shape[-1], dtype=torch.int64)
        return [out[0].argmax(-1), n, *out[1:]]
    return torch.ops.radar_ext.llama_forward_argmax(tokens, cos, sin, mask, params, k_bufs, v_bufs, past_len, capture,
                                                    eps, scaling, head_dim, last_only, argmax_q, argmax_d, argmax_a)


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
