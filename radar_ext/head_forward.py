"""One EAGLE-3 head call as one torch-free C++ call: radar_ext::eagle_forward (csrc/kernels/llama_forward.h's
EAGLE mode: fc, the two input norms, q/k/v over [embedding | feature], rotary, attention over the head's
cache under the tree mask, o-proj, MLP, final norm and the draft-vocabulary LM head in one parallel
region), instead of the ~60 ATen calls of EagleHead.forward + logits.

A draft call on the CPU reads the head's weights once (19.6 MB in float16 for the default head, half of it
the LM head) and does little else, so its cost is those bytes plus the calls around them. Weights:
  "f16"   the exact float16 / bfloat16 copies of the head's weights (a head saved in fp16, as shipped:
          the values EagleHead computes with), float32 where no 16-bit format holds a weight exactly;
  "q8_0"  Q8_0 blocks rounded from them (half the bytes; radar_ext.quant.q8_0_rounded).
  "q8_vnni" the same Q8_0 blocks multiplied in integers against activations rounded to int8 per block of 32
          (AVX512-VNNI, csrc/kernels/vnni_linear.h's draft-grade products; radar_ext.quant.q8_draft_pack), as
          llama.cpp multiplies Q8_0: far fewer instructions than decoding the weights to float32. Needs a CPU with
          AVX512-VNNI (head_forward_reason says so); linears whose sizes do not fit (N % 16, K % 32) keep float16.
The head's numerics only decide what is drafted; the target verifies every token, so the output is the
same either way (python_tests/test_head_forward.py checks the logits against EagleHead's and the decoded
text against HF greedy).
"""
from __future__ import annotations

import torch

from radar_ext import ops

WEIGHT_FORMATS = ("f16", "q8_0", "q8_vnni")
# Call 1 over more pending rows than this (a prompt) takes EagleHead's own forward: the fused attention
# keeps [rows, cache] scores per thread, and a prompt's call runs once.
MAX_FUSED_ROWS = 256


def head_forward_reason(head, embed) -> str | None:
    """None if `head` (an EagleHead) with the target's input embedding `embed` can run radar_ext::eagle_forward."""
    from radar_ext.fast_linear import fast_linear_available

    if not (ops.HAS_EXTENSION and hasattr(torch.ops.radar_ext, "eagle_forward")):
        return "the radar_ext extension with eagle_forward is not built"
    if not fast_linear_available():
        return "the AVX-512 kernels do not run on this CPU"
    p = head.lm_head.weight
    if p.dtype != torch.float32 or p.device.type != "cpu":
        return f"the head is {p.dtype} on {p.device.type}, the fused call takes a float32 CPU head"
    if type(embed) is not torch.nn.Embedding or embed.max_norm is not None:
        return "the target's input embedding is not a plain nn.Embedding"
    w = embed.weight
    if w.dtype != torch.float32 or w.device.type != "cpu" or not w.is_contiguous():
        return "the target's input embedding is not a contiguous float32 CPU tensor"
    c = head.config
    if c.head_dim % 2 or c.head_dim > 512 or c.num_attention_heads % c.num_key_value_heads:
        return "head_dim odd or above 512, or query heads not a multiple of key/value heads"
    return None


class HeadForward:
    """radar_ext::eagle_forward over one EagleHead and the target's input embedding."""

    def __init__(self, head, embed, weights: str = "f16"):
        if weights not in WEIGHT_FORMATS:
            raise ValueError(f"weights must be one of {WEIGHT_FORMATS}, got {weights!r}")
        reason = head_forward_reason(head, embed)
        if reason is None and weights == "q8_vnni" and not ops.vnni_linear_supported():
            reason = "weights 'q8_vnni' need a CPU with AVX512-VNNI (radar_ext._C.vnni_linear_supported() is False)"
        if reason is not None:
            raise ValueError(f"HeadForward: {reason}")
        self.head, self.embed, self.weights = head, embed, weights
        c = head.config
        self.eps = float(c.rms_norm_eps)
        self.head_dim = c.head_dim
        self.scaling = c.head_dim ** -0.5
        self._build()
        self._cos = self._sin = None

    # ------------------------------------------------------------------ weights
    def _tensors(self):
        return [t for t in self.head.parameters()] + [self.embed.weight]

    def _build(self):
        from radar_ext.fast_linear import half_copy
        from radar_ext.quant import q8_0_rounded, q8_draft_pack

        def linear(mod):
            w = mod.weight.detach()
            if self.weights == "q8_vnni":
                packed = q8_draft_pack(w)
                if packed is not None:
                    return [*packed, None, None]
            if self.weights == "q8_0" and w.shape[1] % 32 == 0:
                b = q8_0_rounded(w)
                return [b.q, b.d, None, None]
            w16 = half_copy(w)
            return [(w.contiguous() if w16 is None else w16), None, None, None]

        def vec(norm):
            return norm.weight.detach().float().contiguous()

        h = self.head
        mid = h.midlayer
        params = [self.embed.weight.detach(), vec(h.norm), *linear(h.lm_head), *linear(h.fc), vec(mid.hidden_norm)]
        layers = [mid] + [layer for _, layer in h.plain_layers()]
        for layer in layers:
            a, m = layer.self_attn, layer.mlp
            params += [vec(layer.input_layernorm), vec(layer.post_attention_layernorm)]
            for lin in (a.q_proj, a.k_proj, a.v_proj, a.o_proj, m.gate_proj, m.up_proj, m.down_proj):
                params += linear(lin)
        self.params = params
        self.n_layers = len(layers)
        self._no_fc = params[:6] + [None] * 4 + params[10:]  # calls on the head's own output skip fc
        self._stamp = [(t.data_ptr(), t._version) for t in self._tensors()]

    def refresh(self) -> None:
        """Rebuild the weight copies if a weight of the head or the embedding changed since."""
        if [(t.data_ptr(), t._version) for t in self._tensors()] != self._stamp:
            self._build()

    # ------------------------------------------------------------------ rotary table
    def _rope(self, positions: torch.Tensor):
        """cos, sin [len(positions), D] from a table of the head's own rotary values (its rope_cos_sin)."""
        need = int(positions.max()) + 1
        if self._cos is None or need > self._cos.shape[0]:
            n = max(need, 2 * (0 if self._cos is None else self._cos.shape[0]), 512)
            cos, sin = self.head.midlayer.self_attn.rope_cos_sin(torch.arange(n).unsqueeze(0), torch.float32)
            self._cos, self._sin = cos[0, 0].contiguous(), sin[0, 0].contiguous()
        return self._cos[positions], self._sin[positions]

    # ------------------------------------------------------------------ the call
    def __call__(self, tokens, hidden, positions, cache, attn_mask=None, last_only: bool = False):
        """tokens [B, M] int64 (target ids whose embeddings enter the call), hidden [B, M, 3*Ht] (target
        features: fc runs) or [B, M, H] (the head's previous output), positions [M] int64 (every batch row
        alike), cache: the EagleHead's HeadCache (the new K/V appended), attn_mask additive float
        [B, 1, M, >= cache.length + M] or None (causal). Returns (draft logits [B, M or 1, Vd], out_hidden [B, M, H])."""
        B, M = tokens.shape
        c = self.head.config
        caches = [cache] + [cache.layer(i) for i, _ in self.head.plain_layers()]
        past = cache.length
        for sub in caches:
            if sub.length != past:
                raise RuntimeError(f"head cache layers disagree in length ({sub.length} vs {past})")
            sub.reserve(B, c.num_key_value_heads, past + M, self.head_dim, torch.float32)
        cap = max(sub.k.shape[2] for sub in caches)
        for sub in caches:  # one capacity for all layers (eagle_forward's buffers)
            if sub.k.shape[2] != cap:
                sub.reserve(B, c.num_key_value_heads, cap, self.head_dim, torch.float32, exact=True)
        cos, sin = self._rope(positions)
        fc = hidden.shape[-1] == 3 * c.target_hidden_size and hidden.shape[-1] != c.hidden_size  # as EagleHead.forward
        params = self.params if fc else self._no_fc
        logits, out = torch.ops.radar_ext.eagle_forward(
            tokens, hidden.float(), cos.expand(B, M, -1), sin.expand(B, M, -1), attn_mask, params,
            [sub.k for sub in caches], [sub.v for sub in caches], past, self.eps, self.scaling, self.head_dim, last_only)
        for sub in caches:
            sub.length = past + M
        return logits, out
