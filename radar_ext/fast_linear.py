"""Few-row matrix products for a float32 CPU target while it verifies draft trees.

A tree verify forward multiplies only M = V+1 rows by every weight matrix of the target; MKL's sgemm
is slow at such M (on a 2-core AVX-512 Xeon the 49152x576 LM head takes 10 ms at M = 8 against
2.7 ms at M = 1). `fast_linear(target)` swaps the forward of every nn.Linear of the target for one
that sends inputs of MIN_ROWS to `max_rows` rows to the radar_ext::skinny_linear kernel (it reads
each weight matrix once per call) and everything else to F.linear, and restores them on exit.
RadarDecoder uses it around its verify forwards only: the prefill and the user's own
`target.generate` never see it.

It also removes the other many-row cost of a verify forward on the CPU: with a 4D tree mask,
transformers' sdpa attention (5.23) repeats K and V of the whole cache for every query-head group
(`repeat_kv`: 2 x [B, Hkv, n_rep, T, D] copies per layer, ~14 ms at M = 16 and T ~ 270 on the
default target) unless it may pass `enable_gqa=True` with the mask, which its environment switch
TRANSFORMERS_SDPA_FORCE_GQA=1 allows. Torch's CPU flash-attention kernel takes the grouped heads
with a mask directly and returns the same bits. FastLinear sets that switch inside its block
(sdpa_gqa=True) and restores it on exit; it is process-wide, so another thread running a
transformers model at the same moment sees it too (its sdpa attention may then take another kernel path).

Exactness: the kernel sums in float32 like sgemm, only in another order, so logits differ from
F.linear's by rounding; greedy decoding stays token-identical to the target's own (which already
differs in rounding from a many-row verify forward) except at genuine fp ties.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from radar_ext import ops

# Row counts sent to the kernel, [MIN_ROWS, max_rows]: outside, MKL's sgemm is as fast or faster on
# the default target. Measured on an idle 2-core AVX-512 Xeon at 2 torch threads (the kernel built
# with OpenMP): the 49152x576 LM head takes 4.4 / 5.0 ms at M = 2 / 3 against MKL's 3.1 / 3.6, and
# 4.3 / 5.3 / 6.0 ms at M = 4 / 8 / 12 against 5.3 / 9.0 / 12.8; whole verify forwards (bench/bench_verify.py,
# skinny + sdpa GQA) are 1.23x faster at M = 4, 1.33x at 8, 1.12x at 16, 1.06x at 24, 1.02x at 32.
MIN_ROWS = 4
DEFAULT_MAX_ROWS = 24
# Block-quantized weights (quantized=True) go to the kernel up to this many rows: it reads 1/6 (Q4_1) or
# 1/4 (Q8_0) of the float32 bytes; on the default target's LM head (Q8_0) it takes 1.3 / 1.8 / 3.5 / 6.3 /
# 12.0 / 21.3 ms at M = 1 / 4 / 8 / 16 / 32 / 64 rows against MKL's 5.1 / 8.7 / 11.9 / 11.9 / 15.6 / 25.5.
QUANT_MAX_ROWS = 64
SDPA_GQA_SWITCH = "TRANSFORMERS_SDPA_FORCE_GQA"  # read by transformers.integrations.sdpa_attention per call


def fast_linear_available() -> bool:
    """True when the compiled skinny_linear kernel runs its AVX-512 path on this CPU (the plain C++
    fallback does not beat MKL, so fast_linear is then a no-op)."""
    return bool(ops.HAS_EXTENSION and ops._C.skinny_linear_avx512())


def applies_to(model) -> bool:
    """fast_linear changes `model` only if it is a float32 model on the CPU and the kernel is fast here."""
    p = next(model.parameters(), None)
    return p is not None and p.dtype == torch.float32 and p.device.type == "cpu" and fast_linear_available()


def half_copy(weight: torch.Tensor) -> torch.Tensor | None:
    """A float16 (else bfloat16) copy of a float32 weight that holds exactly its values, or None if
    neither format does (e.g. a head trained and kept in float32). A head saved in fp16 / bf16 and
    loaded as float32 always has one."""
    for dtype in (torch.float16, torch.bfloat16):
        copy = weight.detach().to(dtype)
        if torch.equal(copy.float(), weight.detach()):
            return copy
    return None


def _skinny_forward(linear: torch.nn.Linear, max_rows: int, weights16: bool = False, quantized: bool = False):
    """The forward FastLinear installs: MIN_ROWS..max_rows rows on the kernel, the rest on F.linear.
    weights16: while the weight has an exact 16-bit copy (half_copy), 1..max_rows rows go to the kernel
    with the copy (half the bytes; the bits of the float32 weight, so no M threshold against MKL).
    quantized: likewise with exact Q4_1 / Q8_0 blocks (radar_ext.quant.exact_blocks; 1/6 or 1/4 of the
    bytes), tried first. A copy is remade when the weight changes."""
    from radar_ext.quant import cached_exact_blocks

    # the copy's source: the weight object (held, so no other tensor can take its place unseen), its
    # storage (`weight.data = ...` swaps it) and its version (in-place updates bump it)
    state = {"key": None, "w16": None, "blocks": None}

    def copies(weight):
        key = state["key"]
        if key is None or key[0] is not weight or key[1:] != (weight.data_ptr(), weight._version):
            ok = weight.dtype == torch.float32 and weight.device.type == "cpu"
            blocks = cached_exact_blocks(weight) if ok and quantized else None
            w16 = half_copy(weight) if ok and weights16 and blocks is None else None
            state.update(key=(weight, weight.data_ptr(), weight._version), w16=w16, blocks=blocks)
        return state["blocks"], state["w16"]

    row_limit = max(max_rows, QUANT_MAX_ROWS) if quantized else max_rows

    def forward(x: torch.Tensor) -> torch.Tensor:
        # x [..., K] -> [..., N]; the parameters are read at call time (never a stale copy)
        weight, bias = linear.weight, linear.bias
        K = x.shape[-1]
        rows = x.numel() // K if K else 0
        if (not 1 <= rows <= row_limit or x.dtype != torch.float32 or x.device.type != "cpu"
                or (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))):
            return F.linear(x, weight, bias)  # the op has no autograd formula; big M: MKL wins
        blocks, w = copies(weight) if weights16 or quantized else (None, None)
        if blocks is not None:
            y = ops.skinny_linear_quant(x.reshape(rows, K), blocks.q, blocks.d, blocks.m, bias)
            return y.view(*x.shape[:-1], weight.shape[0])
        if rows > max_rows:
            return F.linear(x, weight, bias)
        if w is None:
            if rows < MIN_ROWS:
                return F.linear(x, weight, bias)  # float32 weights, few rows: MKL is as fast
            w = weight
        y = ops.skinny_linear(x.reshape(rows, K), w, bias)  # [rows, N]
        return y.view(*x.shape[:-1], weight.shape[0])

    def quant_blocks(rows: int):
        """The blocks this forward would run `rows` rows of a float32 CPU input on without autograd (then
        skinny_linear_quant(x, blocks.q, blocks.d, blocks.m, linear.bias) is exactly its result), else None."""
        weight = linear.weight
        if not quantized or not 1 <= rows <= row_limit or (torch.is_grad_enabled() and weight.requires_grad):
            return None
        return copies(weight)[0]

    forward.quant_blocks = quant_blocks  # read by radar_ext.lean_forward's native layer loop
    return forward


class FastLinear:
    """Reusable context manager: within each `with` block, every float32 CPU nn.Linear of `model`
    runs inputs of MIN_ROWS..max_rows rows through radar_ext::skinny_linear (and, with sdpa_gqa,
    the sdpa GQA switch is on); on exit (also on error) each module's forward and the switch are exactly
    what they were before. The modules are collected once, here, so entering costs only one
    attribute write per module; build a new one after adding or replacing modules of the model.
    `active` says whether it changes anything (see applies_to).
    weights16: a linear whose float32 weight fp16 or bf16 holds exactly (a draft head loaded from an
    fp16 checkpoint) runs 1..max_rows rows on the kernel from that 16-bit copy: the same bits, half
    the memory traffic (the default head's linears at 1 / 4 / 8 rows: 0.86 / 1.01 / 1.35 ms against
    MKL's 1.40 / 2.47 / 3.11 and the float32 kernel's 1.49 / 1.59 / 1.72). The copies cost half the
    weights' memory again.
    quantized: a linear whose float32 weight is exactly a GGUF Q4_1 or Q8_0 dequantization (a model
    loaded from a GGUF file, as the default target) runs 1..max(max_rows, QUANT_MAX_ROWS) rows from exact
    blocks (radar_ext.quant; the same bits from 1/6 or 1/4 of the bytes). The blocks are found on the first
    call that needs them and kept per weight for the process (the default target: 2.3 s once, 112 MB for
    its 538 MB of float32 weights)."""

    def __init__(self, model, max_rows: int = DEFAULT_MAX_ROWS, enabled: bool = True, sdpa_gqa: bool = True,
                 weights16: bool = False, quantized: bool = False):
        if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1:
            raise ValueError(f"max_rows must be an int >= 1, got {max_rows!r}")
        self.active = bool(enabled) and applies_to(model)
        self._swaps = []  # (module, skinny forward)
        if self.active:
            for module in model.modules():
                w = getattr(module, "weight", None)
                if isinstance(module, torch.nn.Linear) and w.dtype == torch.float32 and w.device.type == "cpu":
                    self._swaps.append((module, _skinny_forward(module, max_rows, weights16, quantized)))
        self.sdpa_gqa = self.active and sdpa_gqa
        self._saved = None
        self._saved_switch = None

    def __enter__(self) -> bool:
        if self._saved is not None:
            raise RuntimeError("FastLinear is not reentrant: this instance is already active")
        self._saved = []  # each module's own instance-level forward (None: the class's)
        if self.sdpa_gqa:
            self._saved_switch = os.environ.get(SDPA_GQA_SWITCH)
            os.environ[SDPA_GQA_SWITCH] = "1"
        try:
            for module, forward in self._swaps:
                self._saved.append(module.__dict__.get("forward"))
                # object.__setattr__: a plain instance attribute (nn.Module.__setattr__ adds nothing for a function)
                object.__setattr__(module, "forward", forward)
        except BaseException:
            self.__exit__()
            raise
        return self.active

    def __exit__(self, *exc) -> None:
        saved, self._saved = self._saved, None
        if self.sdpa_gqa:
            if self._saved_switch is None:
                os.environ.pop(SDPA_GQA_SWITCH, None)
            else:
                os.environ[SDPA_GQA_SWITCH] = self._saved_switch
        for (module, _), own in zip(reversed(self._swaps[:len(saved)]), reversed(saved)):
            if own is None:
                object.__delattr__(module, "forward")   # back to the class's forward
            else:
                object.__setattr__(module, "forward", own)  # an instance forward someone else installed


def fast_linear(model, max_rows: int = DEFAULT_MAX_ROWS, enabled: bool = True, sdpa_gqa: bool = True,
                quantized: bool = False) -> FastLinear:
    """`with fast_linear(target): ...` runs the target's few-row linears on skinny_linear and lets sdpa
    attention skip its K/V copies (see FastLinear and the module docstring)."""
    return FastLinear(model, max_rows, enabled, sdpa_gqa, quantized=quantized)
