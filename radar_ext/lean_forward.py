"""A lean tree-verify forward for Llama-architecture transformers targets.

A verify forward multiplies only M = V + 1 rows by every weight matrix, so on a CPU the target's own
forward spends a large share of its time outside the matrix products: transformers 5.x runs output
hooks, mask preparation, kwargs plumbing and ~35 small ops per decoder layer (measured on the default
target, SmolLM2-135M fp32, 2 threads: one HF decoding step is 64 ms of which 46 ms are matrix
products). `LeanLlamaForward` runs the same computation with the same modules and the same tensor ops
in the same order, minus that plumbing, and puts K/V into the caller's DynamicCache with the values
the model's own forward would (`cache.update(k, v, layer_idx)`) give, but without concatenating the
cached entries every call (kv_cache.append: the layer's tensors view a buffer with spare room).

Exactness: every value is computed by the same code on the same inputs as in transformers' Llama
forward with sdpa attention: the model's own norm, MLP and rotary modules and transformers'
`apply_rotary_pos_emb`; only the attention block is spelled out (projections through the model's own
nn.Linear modules, so that `radar_ext.fast_linear` still applies inside its block, and
`F.scaled_dot_product_attention` with the additive tree mask and `enable_gqa=True`); python_tests/test_lean_forward.py checks
logits, features and the cache bit for bit against the model's own forward.

The fused path (`fused=True` here, `verify(..., fused=True)`; RadarDecoder's default, `fused_forward=True`): the whole forward, embedding to logits, runs as one call of
radar_ext::llama_forward (torch-free C++, csrc/kernels/llama_forward.h: one parallel region per forward,
no ATen call inside the layer loop), on the exact Q4_1 / Q8_0 blocks of each weight where it has them
(radar_ext.quant) and on the float32 weight otherwise. It sums in another order than the HF forward, so
its logits differ from HF's by rounding (~1e-5 on the default target; python_tests/test_fused_forward.py);
greedy decoding was token-identical in every test. A float32 CPU model qualifies; anything else (`fused_reason`)
takes the bit-identical paths below, and the reason is logged once.

Only plain Llama decoders qualify (`lean_forward_reason` says why a model does not): model_type
"llama", sdpa attention, silu MLP, unmodified nn.Linear projections and LlamaRMSNorm norms, no
accelerate hooks, eval mode. Anything else keeps the model's own forward.
"""
from __future__ import annotations

import logging
import weakref

import torch
import torch.nn.functional as F

from radar_ext import kv_cache, ops

log = logging.getLogger(__name__)

_LINEARS = (("self_attn", "q_proj"), ("self_attn", "k_proj"), ("self_attn", "v_proj"), ("self_attn", "o_proj"),
            ("mlp", "gate_proj"), ("mlp", "up_proj"), ("mlp", "down_proj"))


# transformers' output-capturing hooks (installed on the decoder layers by the first forward that
# asks for hidden_states) only act inside the model's own forward; every other hook disqualifies.
_CAPTURE_HOOKS = "transformers.utils.output_capturing"


def _sub(module, name):
    # a child module by plain dict lookup: nn.Module.__getattr__ costs ~0.5 us a call, and this check
    # runs before every verify (~500 lookups on a 30-layer model)
    return module._modules.get(name)


def lean_forward_reason(target) -> str | None:
    """None if `target` can use LeanLlamaForward, else why not (one short sentence)."""
    from transformers.models.llama import modeling_llama as ml

    cfg = getattr(target, "config", None)
    if getattr(cfg, "model_type", None) != "llama" or not isinstance(target, ml.LlamaForCausalLM):
        return "not a LlamaForCausalLM"
    if getattr(cfg, "_attn_implementation", None) != "sdpa":
        return f"attention implementation is {getattr(cfg, '_attn_implementation', None)!r}, not 'sdpa'"
    if getattr(cfg, "hidden_act", None) != "silu":
        return f"hidden_act is {cfg.hidden_act!r}, not 'silu'"
    if getattr(cfg, "pretraining_tp", 1) not in (None, 1):
        return "pretraining_tp > 1"
    if target.training:
        return "model is in training mode"
    device = next(target.parameters()).device
    if device.type != "cpu":  # the bit-identity with the HF forward is tested on the CPU only
        return (f"model is on {device.type}: the lean forward stays on the CPU until its bits are checked "
                f"against the HF forward on {device.type}")
    model = _sub(target, "model")
    if type(_sub(model, "norm")) is not ml.LlamaRMSNorm or type(_sub(model, "embed_tokens")) is not torch.nn.Embedding:
        return "embedding or final norm replaced"
    layers = list(_sub(model, "layers")._modules.values())
    for i, layer in enumerate(layers):
        if type(layer) is not ml.LlamaDecoderLayer:
            return f"layer {i} is a {type(layer).__name__}"
        for norm in (_sub(layer, "input_layernorm"), _sub(layer, "post_attention_layernorm")):
            if type(norm) is not ml.LlamaRMSNorm:
                return f"layer {i} has a {type(norm).__name__} norm"
        for parent, name in _LINEARS:
            if type(_sub(_sub(layer, parent), name)) is not torch.nn.Linear:
                return f"layer {i} {parent}.{name} is not a plain nn.Linear (quantized or wrapped)"
    if type(_sub(target, "lm_head")) is not torch.nn.Linear:
        return "lm_head is not a plain nn.Linear"
    for m in (target, model, *layers):
        pre = m._forward_pre_hooks
        if m is model and pre and all(observer_hook(model, i, h) for i, h in pre.items()):
            pre = None  # observers only: the lean forward calls them itself
        if "_hf_hook" in m.__dict__ or pre or any(
                getattr(h, "__module__", None) != _CAPTURE_HOOKS for h in m._forward_hooks.values()):
            return "the model has forward hooks (accelerate offload or user hooks)"
    return None


def observer_hook(module, hook_id, hook) -> bool:
    """A forward pre-hook on the decoder stack (model.model) that only looks at its input_ids and
    position_ids: registered with_kwargs and marked `radar_observer = True` (radar bench's forward
    counter). The lean forward calls such hooks with those two keyword arguments instead of falling back."""
    return getattr(hook, "radar_observer", False) is True and hook_id in module._forward_pre_hooks_with_kwargs


def fused_reason(target) -> str | None:
    """None if a lean-qualified `target` can run the fused forward (radar_ext::llama_forward), else why not."""
    if not (ops.HAS_EXTENSION and hasattr(torch.ops.radar_ext, "llama_forward")):
        return "the radar_ext extension with llama_forward is not built"
    p = next(target.parameters())
    if p.dtype != torch.float32:
        return f"the model is {p.dtype}, the fused forward takes float32 weights"
    cfg = target.config
    if getattr(cfg, "attention_bias", False) or getattr(cfg, "mlp_bias", False):
        return None  # biases are taken (LinearWeights.bias)
    return None


_LOGGED: set = set()


def _log_fallback(reason: str):
    if reason not in _LOGGED:  # once per reason and process: verify runs every cycle
        _LOGGED.add(reason)
        log.info("radar_ext: fused forward not used (%s); the lean forward runs instead", reason)


class _FusedWeights:
    """The params list of radar_ext::llama_forward for one target, rebuilt when a weight changes (another
    tensor object, storage or version): every linear as its exact Q4_1 / Q8_0 blocks (radar_ext.quant) if
    it has them, else its float32 weight."""

    def __init__(self, target):
        from radar_ext.quant import amx_pack, cached_exact_blocks, vnni_pack
        # On CPUs with AMX the blocks are reordered into its tile layout (radar_ext.quant.amx_pack): every
        # product of the forward then runs on the tile unit, faster at every tree size (bench_verify). Elsewhere,
        # on CPUs with AVX512-VNNI, Q4_1 blocks go to the VNNI layout (radar_ext.quant.vnni_pack): integer
        # products, x in three int8 digits per block (csrc/kernels/vnni_linear.h)
        self.amx = bool(ops.HAS_EXTENSION and ops._C.amx_enabled())
        self.vnni = not self.amx and ops.vnni_linear_enabled()
        sources = []  # (owner dict, name, object) of every module and tensor read, for fresh()

        def sub(mod, name):
            child = mod._modules[name]
            sources.append((mod._modules, name, child))
            return child

        def param(mod, name):
            t = mod._parameters[name]
            sources.append((mod._parameters, name, t))
            return t

        def linear(mod):
            w, bias = param(mod, "weight"), param(mod, "bias")
            bias = None if bias is None else bias.detach()
            blocks = cached_exact_blocks(w)
            if blocks is None:
                return [w.detach().contiguous(), None, None, bias]
            # GGUF's scales and minima are float16: kept so, the block streams 1/5 fewer bytes (exact
            # whenever float16 holds them, which exact_blocks' scales always do; checked anyway)
            if self.amx or self.vnni:
                packed = amx_pack(blocks) if self.amx else vnni_pack(blocks)
                if packed is not None:
                    return [*packed, bias]
            d16 = blocks.d.half()
            m16 = None if blocks.m is None else blocks.m.half()
            if torch.equal(d16.float(), blocks.d) and (m16 is None or torch.equal(m16.float(), blocks.m)):
                return [blocks.q, d16, m16, bias]
            return [blocks.q, blocks.d, blocks.m, bias]

        model = sub(target, "model")
        stack = sub(model, "layers")
        n_layers = target.config.num_hidden_layers
        layers = [sub(stack, name) for name in list(stack._modules)[:n_layers]]
        final_norm = sub(model, "norm")
        params = [param(sub(model, "embed_tokens"), "weight").detach(), param(final_norm, "weight").detach(),
                  *linear(sub(target, "lm_head"))]
        eps, scaling = {final_norm.variance_epsilon}, set()
        for layer in layers:
            attn, mlp = sub(layer, "self_attn"), sub(layer, "mlp")
            norms = (sub(layer, "input_layernorm"), sub(layer, "post_attention_layernorm"))
            params += [param(n, "weight").detach() for n in norms]
            eps.update(n.variance_epsilon for n in norms)
            scaling.add(attn.scaling)
            for parent, name in _LINEARS:
                params += linear(sub(attn if parent == "self_attn" else mlp, name))
        self.params = params
        self.eps = eps.pop() if len(eps) == 1 else None
        self.scaling = scaling.pop() if len(scaling) == 1 else None
        self.layer_ids = [layer.self_attn.layer_idx for layer in layers]
        self.n_layers = n_layers
        self._modules = [(d, n, m) for d, n, m in sources if isinstance(m, torch.nn.Module)]
        self._tensors = [(d, n, t, t.data_ptr(), t._version) for d, n, t in sources
                         if isinstance(t, torch.Tensor)]
        self._absent = [(d, n) for d, n, t in sources if t is None]
        self._argmax = None  # argmax_head(), packed on first use

    def argmax_head(self):
        """radar_ext.quant.argmax_pack of the LM head for llama_forward_argmax, or None where the head is not
        Q8_0 blocks with float16 scales in GGUF's layout (then greedy verifies take the logits)."""
        if self._argmax is None:
            from radar_ext.quant import argmax_pack
            q, d, m = self.params[2:5]
            ok = (q.dtype == torch.int8 and q.dim() == 2 and d is not None and d.dtype == torch.float16
                  and d.dim() == 2 and m is None and q.shape[1] % 32 == 0)
            self._argmax = (argmax_pack(q, d),) if ok else (None,)
        return self._argmax[0]

    def fresh(self, target) -> bool:
        """Every module and tensor read is still in its place, each tensor with the same storage and version
        (plain dict checks: walking target.parameters() costs ~0.4 ms a verify on the default target)."""
        return (self.n_layers == target.config.num_hidden_layers
                and all(d.get(n) is m for d, n, m in self._modules)
                and all(d.get(n) is t and t._version == v and t.data_ptr() == ptr for d, n, t, ptr, v in self._tensors)
                and all(d.get(n) is None for d, n in self._absent))


_FUSED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _fused_weights(target) -> _FusedWeights:
    pin = _PINNED.get(target)
    if pin is not None and pin.weights is not None:  # checked when the pin was made (pinned())
        return pin.weights
    # one params list per state of the AMX and VNNI switches (radar_ext._C.set_amx_enabled, set_vnni_linear), so
    # that flipping them (a benchmark's paired settings) does not rebuild them each time
    by_mode = _FUSED.get(target)
    if by_mode is None:
        by_mode = _FUSED[target] = {}
    mode = (bool(ops.HAS_EXTENSION and ops._C.amx_enabled()), ops.vnni_linear_enabled())
    got = by_mode.get(mode)
    if got is None or not got.fresh(target):
        got = by_mode[mode] = _FusedWeights(target)
    return got


def greedy_head_usable(rows: int) -> bool:
    """Whether a greedy forward of `rows` head rows may take the LM head's argmax without its logits
    (llama_forward_argmax): the extension bounds the head with AVX512-VNNI here, and the full head would not
    run on the AMX tile unit (whose sums are other bits) at that many rows."""
    return ops.argmax_head_fast() and not (ops._C.amx_enabled() and rows >= ops._C.amx_min_rows())


def _last_only(out, last_only: bool):
    logits, feats = out
    return (logits[:, -1:], feats) if last_only else (logits, feats)


class LeanLlamaForward:
    """`LeanLlamaForward(target)(input_ids, position_ids, attention_mask, cache, feature_layers)` ->
    (logits [B, M, vocab] float32, features [B, M, len(feature_layers) * H] or None), the cache extended
    by M positions. feature_layers index HF's hidden_states tuple (0 = embeddings, i = input of layer i,
    num_hidden_layers = the final normed state when the config ties it, as transformers does)."""

    def __init__(self, target, _checked: bool = False, native: bool = True, fused: bool = True):
        reason = None if _checked else lean_forward_reason(target)
        if reason is not None:
            raise ValueError(f"target cannot use the lean Llama forward: {reason}")
        self.target = target
        cfg = target.config
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.n_layers = cfg.num_hidden_layers
        self.tie_last = getattr(cfg, "tie_last_hidden_states", None) is not False
        # native: when radar_ext.fast_linear (quantized) runs every linear of the layers on exact blocks,
        # the layer loop runs in C++ (radar_ext::llama_layers_quant: the same ops, the same bits)
        self.native = bool(native) and ops.HAS_EXTENSION and hasattr(torch.ops.radar_ext, "llama_layers_quant")
        self.last_native = False  # whether the last call took the native layer loop
        self.fused = bool(fused)
        self.last_fused = False   # whether the last call took the fused forward (radar_ext::llama_forward)

    def _fused_forward(self, input_ids, position_ids, attention_mask, cache, slots, last_only=False, greedy=False):
        """(logits, features) from radar_ext::llama_forward, or None where it cannot run (logged once).
        greedy: (None, features, argmax [B, M]) from radar_ext::llama_forward_argmax where the LM head allows it
        (greedy_head_usable, _FusedWeights.argmax_head), else (logits, features, None)."""
        pin = _PINNED.get(self.target)
        fw = pin.weights if pin is not None and pin.forward is self else None  # checked when pinned
        reason = None
        if fw is None:
            reason = fused_reason(self.target)
            fw = _fused_weights(self.target) if reason is None else None
        if fw is not None and (fw.eps is None or fw.scaling is None):
            reason = "the layers differ in norm epsilon or attention scaling"
        if reason is None and (attention_mask.dtype != torch.float32 or attention_mask.device.type != "cpu"):
            reason = f"the attention mask is {attention_mask.dtype} on {attention_mask.device.type}"
        if reason is not None:
            _log_fallback(reason)
            return None
        B, M = input_ids.shape
        n_kv = self.target.config.num_key_value_heads
        shape = (B, n_kv, M, self.head_dim)
        got = kv_cache.reserve_layers(cache, fw.layer_ids, M, shape, torch.float32, input_ids.device)
        if got is None:
            empty = torch.empty(B, n_kv, 0, self.head_dim)
            for layer_idx in fw.layer_ids:
                if layer_idx >= len(cache.layers) or not cache.layers[layer_idx].is_initialized:
                    cache.update(empty, empty, layer_idx)  # an empty prefix (no prefill): the layer starts at length 0
            got = kv_cache.reserve_layers(cache, fw.layer_ids, M, shape, torch.float32, input_ids.device)
            if got is None:
                _log_fallback("the cache is not a DynamicCache with equal, initialized layers")
                return None
        k_bufs, v_bufs, past = got
        cos, sin = self._rotary(attention_mask, position_ids)
        L = self.n_layers
        op_slots = [] if slots is None else [s if s < L else (L + 1 if self.tie_last else L) for s in slots]
        uniq = sorted(set(op_slots))
        head = fw.argmax_head() if greedy and greedy_head_usable(B * (1 if last_only else M)) else None
        if head is not None:
            out = ops.llama_forward_argmax(input_ids, cos, sin, attention_mask, fw.params, k_bufs, v_bufs, past,
                                           uniq, float(fw.eps), float(fw.scaling), self.head_dim, *head,
                                           last_only=last_only)
            out = [out[0], *out[2:]]
        else:
            out = ops.llama_forward(input_ids, cos, sin, attention_mask, fw.params, k_bufs, v_bufs, past, uniq,
                                    float(fw.eps), float(fw.scaling), self.head_dim, last_only=last_only)
        kv_cache.extend_layers(cache, past + M)
        feats = None
        if slots is not None:
            by_slot = dict(zip(uniq, out[1:]))
            feats = torch.cat([by_slot[s] for s in op_slots], dim=-1) if len(op_slots) > 1 else by_slot[op_slots[0]]
        if greedy:
            return (None, feats, out[0]) if head is not None else (out[0], feats, None)
        return out[0], feats

    def _rotary(self, x, position_ids):
        """The model's rotary (cos, sin) [B, M, D] at position_ids [B, M]. A static rotary (rope_type 'default')
        is read from a table of every position up to the longest seen, made by the module itself over
        arange(n): each entry is one product inv_freq * position, then cos / sin, so the same bits as the
        module's own call (~0.1 ms a verify); any other rope type calls the module (dynamic kinds change with
        the length)."""
        rotary = _sub(_sub(self.target, "model"), "rotary_emb")
        if getattr(rotary, "rope_type", None) != "default" or position_ids.device.type != "cpu":
            return rotary(x, position_ids)
        table = _ROPE_TABLES.get(rotary)
        need = int(position_ids.max()) + 1  # host sync: one int (position_ids is a small CPU tensor)
        inv = rotary.inv_freq
        if table is None or table[0].shape[0] < need or table[2] is not inv or table[3] != inv._version:
            n = max(need, 2 * table[0].shape[0] if table is not None else 1024)
            cos, sin = rotary(x, torch.arange(n, device=position_ids.device).view(1, n))
            table = _ROPE_TABLES[rotary] = (cos[0], sin[0], inv, inv._version)
        return table[0][position_ids], table[1][position_ids]

    def _native_layers(self, x, cos, sin, attention_mask, cache, slots):
        """(x after the layers, {slot: captured input}) from radar_ext::llama_layers_quant, or None when
        some linear is not on the quant kernel for these rows or a cache layer cannot take the entries
        in place (then the Python loop runs)."""
        if x.dtype != torch.float32 or x.device.type != "cpu":
            return None
        B, M, _ = x.shape
        rows = B * M
        params, k_bufs, v_bufs, past = [], [], [], None
        layers = list(_sub(_sub(self.target, "model"), "layers")._modules.values())[:self.n_layers]
        eps, scaling, layer_ids = set(), set(), []
        # plain dict lookups (_sub, _parameters): nn.Module.__getattr__ would cost ~0.5 ms per forward here
        for layer in layers:
            attn, mlp = _sub(layer, "self_attn"), _sub(layer, "mlp")
            norms = (_sub(layer, "input_layernorm"), _sub(layer, "post_attention_layernorm"))
            params += [n._parameters["weight"] for n in norms]
            eps.update(n.variance_epsilon for n in norms)
            scaling.add(attn.scaling)
            layer_ids.append(attn.layer_idx)
            for parent, name in _LINEARS:
                mod = _sub(attn if parent == "self_attn" else mlp, name)
                qb = getattr(mod.__dict__.get("forward"), "quant_blocks", None)
                blocks = qb(rows) if qb is not None else None
                if blocks is None:
                    return None
                params += [blocks.q, blocks.d, blocks.m, mod._parameters["bias"]]
        if len(eps) != 1 or len(scaling) != 1:
            return None
        n_kv = params[6].shape[0] // self.head_dim  # layer 0's k_proj blocks: [Hkv * D, ...]
        for layer_idx in layer_ids:
            got = kv_cache.reserve(cache, layer_idx, M, (B, n_kv, M, self.head_dim), x.dtype, x.device)
            if got is None or (past is not None and got[1] != past):
                return None
            (kb, vb), past = got
            k_bufs.append(kb)
            v_bufs.append(vb)
        capture = sorted({s for s in (slots or []) if s < self.n_layers})  # the op returns them in layer order
        out = ops.llama_layers_quant(x, cos, sin, attention_mask, params, k_bufs, v_bufs, past, capture,
                                     float(eps.pop()), float(scaling.pop()), self.head_dim)
        for layer_idx in layer_ids:
            kv_cache.extend(cache, layer_idx, past + M)
        return out[0], dict(zip(capture, out[1:]))

    def _feature_slots(self, feature_layers):
        if feature_layers is None:
            return None
        n = self.n_layers + 1
        slots = []
        for i in feature_layers:
            if isinstance(i, bool) or not isinstance(i, int) or not -n <= i < n:
                raise ValueError(f"feature_layers must be ints in [{-n}, {n - 1}], got {list(feature_layers)}")
            slots.append(i % n)
        return slots

    @torch.no_grad()
    def __call__(self, input_ids: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor,
                 cache, feature_layers=None, last_only: bool = False, greedy: bool = False):
        # input_ids, position_ids [B, M]; attention_mask [B, 1, M, P + M] additive (0 / finfo.min); last_only:
        # the logits of each row's last position only ([B, 1, V]: a prompt's prefill); greedy: a third entry,
        # the LM head's argmax [B, M] int64, and logits None where the fused forward took the greedy head
        # (greedy_head_usable), else (logits, features, None)
        slots = self._feature_slots(feature_layers)
        model = self.target.model
        for hook in model._forward_pre_hooks.values():  # observers only (lean_forward_reason)
            hook(model, (), {"input_ids": input_ids, "position_ids": position_ids})
        fused = (self._fused_forward(input_ids, position_ids, attention_mask, cache, slots, last_only, greedy)
                 if self.fused else None)
        self.last_fused = fused is not None
        if fused is not None:
            return fused
        out = self._unfused(input_ids, position_ids, attention_mask, cache, slots, last_only)
        return (*out, None) if greedy else out

    def _unfused(self, input_ids, position_ids, attention_mask, cache, slots, last_only):
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        model = self.target.model
        x = model.embed_tokens(input_ids)                                  # [B, M, H]
        B, M, _ = x.shape
        cos, sin = model.rotary_emb(x, position_ids)                       # [B, M, D] each
        states = {}
        native = self._native_layers(x, cos, sin, attention_mask, cache, slots) if self.native else None
        self.last_native = native is not None
        if native is not None:
            x, states = native
            return _last_only(self._finish(x, states, slots), last_only)
        # The modules' own .forward (norms, MLP) and transformers' own rotary function: the same code as
        # the model's forward, so the same bits; .forward skips nn.Module.__call__ (no hooks qualify).
        for i, layer in enumerate(model.layers[:self.n_layers]):
            if slots is not None and i in slots:
                states[i] = x
            attn = layer.self_attn
            h = layer.input_layernorm.forward(x)
            q = attn.q_proj(h).view(B, M, -1, self.head_dim).transpose(1, 2)   # [B, Hq, M, D]
            k = attn.k_proj(h).view(B, M, -1, self.head_dim).transpose(1, 2)   # [B, Hkv, M, D]
            v = attn.v_proj(h).view(B, M, -1, self.head_dim).transpose(1, 2)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            k, v = kv_cache.append(cache, k, v, attn.layer_idx)              # [B, Hkv, P + M, D]
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask[..., :k.shape[-2]],
                                               dropout_p=0.0, scale=attn.scaling, enable_gqa=True)
            o = o.transpose(1, 2).reshape(B, M, -1).contiguous()
            x = x + attn.o_proj(o)
            x = x + layer.mlp.forward(layer.post_attention_layernorm.forward(x))
        return _last_only(self._finish(x, states, slots), last_only)

    def _finish(self, x, states, slots):
        model = self.target.model
        last = self.n_layers
        if slots is not None and last in slots and not self.tie_last:
            states[last] = x
        x = model.norm.forward(x)
        if slots is not None and last in slots and self.tie_last:
            states[last] = x
        logits = self.target.lm_head(x).float()
        feats = torch.cat([states[s] for s in slots], dim=-1) if slots is not None else None
        return logits, feats


def lean_forward_for(target, native: bool = True, fused: bool = True) -> LeanLlamaForward | None:
    """A LeanLlamaForward for `target`, or None when it does not qualify. Checked on every call (it is
    cheap next to a forward), so a model switched to train(), hooked or modified falls back at once;
    inside `pinned(target, ...)` with the same flags, the pinned one without a check.
    native=False keeps the layer loop in Python (same bits; for benchmarks); fused=False skips the fused
    forward (then the lean forward gives the HF forward's bits)."""
    pin = _PINNED.get(target)
    if pin is not None and (pin.native, pin.fused) == (bool(native), bool(fused)):
        return pin.forward
    if lean_forward_reason(target) is not None:
        return None
    return LeanLlamaForward(target, _checked=True, native=native, fused=fused)


class _Pin:
    def __init__(self, target, native: bool, fused: bool):
        self.native, self.fused = bool(native), bool(fused)
        self.forward = None if lean_forward_reason(target) is not None else \
            LeanLlamaForward(target, _checked=True, native=native, fused=fused)
        self.weights = None
        if self.forward is not None and self.fused and fused_reason(target) is None:
            self.weights = _fused_weights(target)


_PINNED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_ROPE_TABLES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # rotary module -> (cos, sin, inv_freq, version)


class pinned:
    """`with pinned(target, native=True, fused=False):` the checks `lean_forward_for` and the fused path
    make before every forward (does the model still qualify, is every weight the one the fused copy was
    made from: ~0.35 ms a verify on the default target, 4% of a fused 1-token verify) are made once on
    entry, for forwards that may assume the model does not change until the block ends (one `generate`
    call, as HF's generate assumes). Nested pins of one target keep the outer one."""

    def __init__(self, target, native: bool = True, fused: bool = False):
        self.target, self.native, self.fused = target, native, fused
        self._owner = False

    def __enter__(self):
        if self.target not in _PINNED:
            _PINNED[self.target] = _Pin(self.target, self.native, self.fused)
            self._owner = True
        return _PINNED[self.target].forward

    def __exit__(self, *exc):
        if self._owner:
            _PINNED.pop(self.target, None)
        return False


def last_fused(target) -> bool:
    """Inside `pinned(target, ...)`: whether the pinned forward's last call took the fused path."""
    pin = _PINNED.get(target)
    return bool(pin is not None and pin.forward is not None and pin.forward.last_fused)
