"""The EAGLE-3 draft head (METHOD.md 2), in the published checkpoint layout.

One Llama-style decoder layer that predicts the target's next token from the target's own hidden
states. Weight names follow the published EAGLE-3 checkpoints so ready heads load unchanged:
`fc`, `midlayer.self_attn.{q,k,v,o}_proj`, `midlayer.mlp.{gate,up,down}_proj`,
`midlayer.{input_layernorm,hidden_norm,post_attention_layernorm}`, `norm`, `lm_head`, `d2t`, `t2d`.
Token embeddings are the target's and are never stored here.

A deeper head (`num_hidden_layers` > 1) follows the multi-layer EAGLE-3 convention: layer 0 is the
`midlayer` above (its attention reads [embedding, feature], 2H wide); layers 1.. are plain Llama
decoder layers on the H-wide residual stream, stored as `layers.{i}.self_attn.*`, `layers.{i}.mlp.*`,
`layers.{i}.{input_layernorm,post_attention_layernorm}`, their MLP `extra_intermediate_size` wide
(ours; default intermediate_size). A one-layer head's file is unchanged.

Position convention: the head's t-th cache entry is the pair (target feature of position t, embedding
of token t+1) and has position id t. A beam at draft depth k (k >= 2) extending the last committed
entry P-1 has position id P-1+(k-1).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
LEGACY_WEIGHTS_NAME = "pytorch_model.bin"


@dataclass
class EagleConfig:
    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int                      # target vocabulary
    draft_vocab_size: int                # reduced draft vocabulary (== vocab_size: no reduction)
    target_hidden_size: int | None = None  # defaults to hidden_size
    head_dim: int | None = None            # defaults to hidden_size // num_attention_heads
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_position_embeddings: int = 8192
    hidden_act: str = "silu"
    # ours: indices into HF's output_hidden_states tuple that make the 3 features (None: [2, L//2, L-3])
    feature_layers: list[int] | None = None
    num_hidden_layers: int = 1             # decoder layers: the midlayer, then num_hidden_layers - 1 plain ones
    extra_intermediate_size: int | None = None  # MLP width of layers 1.. (None: intermediate_size)
    extra: dict = field(default_factory=dict)  # unknown keys, written back unchanged

    def __post_init__(self):
        if self.target_hidden_size is None:
            self.target_hidden_size = self.hidden_size
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.extra_intermediate_size is None:
            self.extra_intermediate_size = self.intermediate_size
        for name in ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
                     "vocab_size", "draft_vocab_size", "target_hidden_size", "head_dim", "num_hidden_layers",
                     "extra_intermediate_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or v <= 0:
                raise ValueError(f"EagleConfig.{name} must be a positive int, got {v!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("EagleConfig.num_attention_heads must be a multiple of num_key_value_heads, "
                             f"got {self.num_attention_heads} and {self.num_key_value_heads}")
        if self.draft_vocab_size > self.vocab_size:
            raise ValueError(f"EagleConfig.draft_vocab_size must be <= vocab_size ({self.vocab_size}), "
                             f"got {self.draft_vocab_size}")
        if self.hidden_act != "silu":
            raise ValueError(f"EagleConfig.hidden_act: only 'silu' is supported, got {self.hidden_act!r}")

    _KEYS = ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "vocab_size",
             "draft_vocab_size", "target_hidden_size", "head_dim", "rms_norm_eps", "rope_theta",
             "max_position_embeddings", "hidden_act", "feature_layers", "num_hidden_layers",
             "extra_intermediate_size")

    @classmethod
    def from_dict(cls, d: dict) -> "EagleConfig":
        d = dict(d)
        if "rope_theta" not in d and isinstance(d.get("rope_parameters"), dict):
            d["rope_theta"] = d["rope_parameters"].get("rope_theta", 10000.0)
        d.setdefault("draft_vocab_size", d.get("vocab_size"))
        known = {k: d.pop(k) for k in list(d) if k in cls._KEYS}
        cfg = cls(**known, extra=d)
        cfg.rope_scaling()  # refuses an unsupported kind when the head is loaded, not at its first draft
        return cfg

    def rope_scaling(self) -> dict | None:
        """The rotary scaling of the config (the published `rope_scaling` key, or transformers 5's
        `rope_parameters`), None for plain RoPE. Kinds whose frequencies are fixed are supported (HF's
        linear / llama3 / yarn: Llama 3.1 heads use llama3); dynamic and longrope, which change with the
        sequence length at run time, are refused."""
        for key in ("rope_scaling", "rope_parameters"):
            scaling = _scaling_of(self.extra.get(key))
            if scaling is None:
                continue
            if scaling["rope_type"] not in SUPPORTED_ROPE_SCALING:
                raise ValueError(f"EAGLE head config: {key} type {scaling['rope_type']!r} is not supported "
                                 f"(supported: {list(SUPPORTED_ROPE_SCALING)})")
            return scaling
        return None

    @classmethod
    def for_target(cls, target_config, draft_vocab_size: int | None = None, **overrides) -> "EagleConfig":
        """An EagleConfig matching an HF target config (same width, heads and rotary base)."""
        tc = target_config
        rope_theta = getattr(tc, "rope_theta", None)
        if rope_theta is None:
            rope_theta = (getattr(tc, "rope_parameters", None) or {}).get("rope_theta", 10000.0)
        L = tc.num_hidden_layers
        scaling = _scaling_of(getattr(tc, "rope_parameters", None) or getattr(tc, "rope_scaling", None))
        if scaling is not None:  # the head rotates as its target does (Llama 3.1: llama3)
            overrides.setdefault("extra", {}).setdefault("rope_scaling", scaling)
        d = dict(hidden_size=tc.hidden_size, intermediate_size=tc.intermediate_size,
                 num_attention_heads=tc.num_attention_heads,
                 num_key_value_heads=getattr(tc, "num_key_value_heads", tc.num_attention_heads),
                 head_dim=getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads,
                 vocab_size=tc.vocab_size, draft_vocab_size=draft_vocab_size or tc.vocab_size,
                 target_hidden_size=tc.hidden_size, rms_norm_eps=float(tc.rms_norm_eps),
                 rope_theta=float(rope_theta), max_position_embeddings=tc.max_position_embeddings,
                 feature_layers=default_feature_layers(L))
        d.update(overrides)
        return cls(**d)

    def to_dict(self) -> dict:
        d = dict(self.extra)
        d.update({k: getattr(self, k) for k in self._KEYS})
        d.setdefault("architectures", ["LlamaForCausalLMEagle3"])
        if self.num_hidden_layers == 1:
            del d["extra_intermediate_size"]  # a one-layer head's config stays the published one
        return d


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        # statistics in float32, as Llama does, so fp16/bf16 heads match fp32 ones closely
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


SUPPORTED_ROPE_SCALING = ("linear", "llama3", "yarn")


def _scaling_of(rs) -> dict | None:
    """A `rope_scaling` / `rope_parameters` value -> its scaling parameters with the kind under
    "rope_type" (the theta and the legacy "type" key dropped), None for plain RoPE."""
    if not rs:
        return None
    kind = rs.get("rope_type", rs.get("type")) if isinstance(rs, dict) else rs
    if kind in (None, "default"):
        return None
    params = rs if isinstance(rs, dict) else {}
    return {k: v for k, v in params.items() if k not in ("type", "rope_theta")} | {"rope_type": kind}


def rope_frequencies(cfg: EagleConfig) -> tuple[torch.Tensor, float]:
    """RoPE inverse frequencies [head_dim / 2] float32 and the cos/sin scale of the head. Plain RoPE
    in float64 then rounded; a scaled one (cfg.rope_scaling()) from transformers' own functions on an
    equivalent Llama config, so a head rotates exactly as its Llama target does."""
    hd = cfg.head_dim
    scaling = cfg.rope_scaling()
    if scaling is None:
        return (1.0 / (cfg.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))).float(), 1.0
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    lc = LlamaConfig(hidden_size=cfg.hidden_size, num_attention_heads=cfg.num_attention_heads, head_dim=hd,
                     max_position_embeddings=cfg.max_position_embeddings,
                     rope_parameters={**scaling, "rope_theta": cfg.rope_theta})
    inv_freq, attention_scaling = ROPE_INIT_FUNCTIONS[scaling["rope_type"]](lc, "cpu")
    return inv_freq.float(), float(attention_scaling)


def _rope(x, cos, sin):
    # x [B, H, T, D]; cos/sin [B, 1, T, D]
    d = x.shape[-1] // 2
    rot = torch.cat((-x[..., d:], x[..., :d]), -1)
    return x * cos + rot * sin


class HeadAttention(nn.Module):
    def __init__(self, cfg: EagleConfig, in_features: int | None = None):
        """in_features: 2H for the midlayer ([embedding, feature]), H for a plain layer."""
        super().__init__()
        self.cfg = cfg
        h, hd = cfg.hidden_size, cfg.head_dim
        n_in = 2 * h if in_features is None else in_features
        self.q_proj = nn.Linear(n_in, cfg.num_attention_heads * hd, bias=False)
        self.k_proj = nn.Linear(n_in, cfg.num_key_value_heads * hd, bias=False)
        self.v_proj = nn.Linear(n_in, cfg.num_key_value_heads * hd, bias=False)
        self.o_proj = nn.Linear(cfg.num_attention_heads * hd, h, bias=False)
        inv_freq, self.attention_scaling = rope_frequencies(cfg)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def rope_cos_sin(self, position_ids, dtype):
        # position_ids [B, T] -> cos, sin [B, 1, T, D]
        freqs = position_ids[..., None].float() * self.inv_freq  # [B, T, D/2]
        emb = torch.cat((freqs, freqs), -1)[:, None]
        if self.attention_scaling == 1.0:
            return emb.cos().to(dtype), emb.sin().to(dtype)
        return (emb.cos() * self.attention_scaling).to(dtype), (emb.sin() * self.attention_scaling).to(dtype)

    def project(self, x, position_ids):
        """x [B, T, 2H] (midlayer) or [B, T, H] -> q [B, Hq, T, D], k, v [B, Hkv, T, D] with rotary applied to q and k."""
        B, T, _ = x.shape
        hd = self.cfg.head_dim
        q = self.q_proj(x).view(B, T, -1, hd).transpose(1, 2)
        k = self.k_proj(x).view(B, T, -1, hd).transpose(1, 2)
        v = self.v_proj(x).view(B, T, -1, hd).transpose(1, 2)
        cos, sin = self.rope_cos_sin(position_ids, x.dtype)
        return _rope(q, cos, sin), _rope(k, cos, sin), v

    def attend(self, q, k, v, attn_mask):
        """q [B, Hq, T, D], k/v [B, Hkv, S, D], attn_mask additive [B, 1, T, S] or None (causal,
        the last T keys being the queries themselves) -> [B, T, H]."""
        rep = self.cfg.num_attention_heads // self.cfg.num_key_value_heads
        if rep > 1:
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        T, S = q.shape[2], k.shape[2]
        if attn_mask is None and T > 1:
            allowed = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T)
            attn_mask = torch.zeros(T, S, dtype=q.dtype, device=q.device).masked_fill(
                ~allowed, torch.finfo(q.dtype).min)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        B = q.shape[0]
        return self.o_proj(out.transpose(1, 2).reshape(B, T, -1))


class HeadMLP(nn.Module):
    def __init__(self, cfg: EagleConfig, intermediate_size: int | None = None):
        super().__init__()
        n = cfg.intermediate_size if intermediate_size is None else intermediate_size
        self.gate_proj = nn.Linear(cfg.hidden_size, n, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, n, bias=False)
        self.down_proj = nn.Linear(n, cfg.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class _Block(nn.Module):
    """What every decoder layer of the head ends with (its subclasses build self.mlp and the norms)."""

    def finish(self, hidden, attn_out):
        # residual over the layer's input (the midlayer's: the projected feature), then the MLP block
        h = hidden + attn_out
        return h + self.mlp(self.post_attention_layernorm(h))


class HeadLayer(_Block):
    def __init__(self, cfg: EagleConfig):
        super().__init__()
        self.self_attn = HeadAttention(cfg)
        self.mlp = HeadMLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.hidden_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def attn_input(self, hidden, input_embeds):
        # [embedding, feature], each RMS-normalised: [B, T, 2H]
        return torch.cat((self.input_layernorm(input_embeds), self.hidden_norm(hidden)), -1)


class PlainLayer(_Block):
    """Layers 1.. of a deeper head: a Llama decoder layer on the head's residual stream."""

    def __init__(self, cfg: EagleConfig):
        super().__init__()
        self.self_attn = HeadAttention(cfg, in_features=cfg.hidden_size)
        self.mlp = HeadMLP(cfg, cfg.extra_intermediate_size)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def attn_input(self, hidden):
        return self.input_layernorm(hidden)


class HeadCache:
    """K/V of the head's first layer: `k`, `v` [B, Hkv, capacity, D], valid up to `length`; a deeper
    head keeps one more HeadCache per later layer (`layer(i)`), appended and cropped in step.
    Storage grows by doubling, so appends are amortised O(new)."""

    def __init__(self):
        self.k = self.v = None
        self.length = 0
        self._layers: dict[int, "HeadCache"] = {}

    def layer(self, i: int) -> "HeadCache":
        """The cache of decoder layer i >= 1 (created empty on first use)."""
        if i not in self._layers:
            self._layers[i] = HeadCache()
        return self._layers[i]

    def append(self, k, v):
        """k, v [B, Hkv, T, D] -> views of the whole valid cache [B, Hkv, length+T, D]."""
        B, H, T, D = k.shape
        need = self.length + T
        self.reserve(B, H, need, D, k.dtype, device=k.device)
        self.k[:, :, self.length:need] = k
        self.v[:, :, self.length:need] = v
        self.length = need
        return self.k[:, :, :need], self.v[:, :, :need]

    def reserve(self, B: int, H: int, need: int, D: int, dtype, device=None, exact: bool = False) -> None:
        """Storage [B, H, >= need, D] (entries [0, length) kept; capacity doubling, or exactly `need` with
        exact=True): append's, and a writer's that fills [length, need) itself (radar_ext.head_forward)."""
        if self.k is not None and need <= self.k.shape[2] and self.k.shape[0] == B:
            return
        cap = need if exact else max(need, 2 * (self.k.shape[2] if self.k is not None else 64))
        nk = torch.empty(B, H, cap, D, dtype=dtype, device=device)
        nv = torch.empty(B, H, cap, D, dtype=dtype, device=device)
        if self.k is not None and self.length:
            nk[:, :, :self.length] = self.k[:, :, :self.length]
            nv[:, :, :self.length] = self.v[:, :, :self.length]
        self.k, self.v = nk, nv

    def crop(self, n: int) -> None:
        """Drop every entry at index >= n (speculative entries of a finished cycle)."""
        if not 0 <= n <= self.length:
            raise ValueError(f"HeadCache.crop: n must be in [0, {self.length}], got {n}")
        self.length = n
        for sub in self._layers.values():
            sub.crop(min(n, sub.length))


class EagleHead(nn.Module):
    def __init__(self, config: EagleConfig):
        super().__init__()
        self.config = config
        c = config
        self.fc = nn.Linear(3 * c.target_hidden_size, c.hidden_size, bias=False)
        self.midlayer = HeadLayer(c)
        if c.num_hidden_layers > 1:
            self.layers = nn.ModuleDict({str(i): PlainLayer(c) for i in range(1, c.num_hidden_layers)})
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.lm_head = nn.Linear(c.hidden_size, c.draft_vocab_size, bias=False)
        # d2t[i] = target_id(i) - i (published convention); t2d[t] = t is in the draft vocabulary
        self.register_buffer("d2t", torch.zeros(c.draft_vocab_size, dtype=torch.int64))
        self.register_buffer("t2d", torch.ones(c.vocab_size, dtype=torch.bool) if c.draft_vocab_size == c.vocab_size
                             else torch.zeros(c.vocab_size, dtype=torch.bool))
        self.register_buffer("_t2d_index", torch.empty(0, dtype=torch.int64), persistent=False)

    # ---------------------------------------------------------------- vocabulary mapping
    def set_draft_vocab(self, target_ids) -> None:
        """Use `target_ids` [Vd] (distinct target token ids, most useful first) as the draft vocab."""
        target_ids = torch.as_tensor(target_ids, dtype=torch.int64)
        if target_ids.shape != (self.config.draft_vocab_size,):
            raise ValueError(f"target_ids must have shape [{self.config.draft_vocab_size}], got {list(target_ids.shape)}")
        if target_ids.unique().numel() != target_ids.numel():
            raise ValueError("target_ids must be distinct")
        if int(target_ids.min()) < 0 or int(target_ids.max()) >= self.config.vocab_size:
            raise ValueError(f"target_ids must be in [0, {self.config.vocab_size})")
        self.d2t.copy_(target_ids - torch.arange(target_ids.numel()))
        self.t2d.zero_()
        self.t2d[target_ids] = True
        self._t2d_index = torch.empty(0, dtype=torch.int64)

    def to_target_ids(self, draft_ids):
        """Draft vocabulary ids (any shape, int64) -> target ids."""
        return draft_ids + self.d2t[draft_ids]

    def target_to_draft(self):
        """[vocab] int64: draft id of each target id, -1 where the target id is not drafted."""
        if self._t2d_index.numel() == 0:
            idx = torch.full((self.config.vocab_size,), -1, dtype=torch.int64, device=self.d2t.device)
            ar = torch.arange(self.config.draft_vocab_size, device=self.d2t.device)
            idx[self.to_target_ids(ar)] = ar
            self._t2d_index = idx
        return self._t2d_index

    # ---------------------------------------------------------------- forward
    def forward(self, hidden, input_embeds, position_ids, cache: HeadCache | None = None, attn_mask=None):
        """hidden [B, T, 3*Ht] (target features) or [B, T, H] (the head's own previous output),
        input_embeds [B, T, H] (target embeddings of the next tokens), position_ids [B, T] int64,
        attn_mask additive float [B, 1, T, S] (S = cached + T) or None for causal.
        Returns out_hidden [B, T, H] (pre-norm: the next call's `hidden`)."""
        c = self.config
        if hidden.dim() != 3 or input_embeds.dim() != 3 or hidden.shape[:2] != input_embeds.shape[:2]:
            raise ValueError(f"hidden [B, T, F] and input_embeds [B, T, H] must agree in B, T; got "
                             f"{list(hidden.shape)} and {list(input_embeds.shape)}")
        dtype = self.lm_head.weight.dtype  # the head may run in another dtype than the target's features
        if hidden.shape[-1] == 3 * c.target_hidden_size and hidden.shape[-1] != c.hidden_size:
            hidden = self.fc(hidden.to(dtype))
        elif hidden.shape[-1] != c.hidden_size:
            raise ValueError(f"hidden must have last dim {3 * c.target_hidden_size} (target features) or "
                             f"{c.hidden_size} (head output), got {hidden.shape[-1]}")
        if input_embeds.shape[-1] != c.hidden_size:
            raise ValueError(f"input_embeds must have last dim {c.hidden_size}, got {input_embeds.shape[-1]}")
        hidden = hidden.to(dtype)
        input_embeds = input_embeds.to(dtype)
        layer = self.midlayer
        hidden = self._layer_step(layer, layer.attn_input(hidden, input_embeds), hidden, position_ids, cache, attn_mask)
        for i, plain in self.plain_layers():
            hidden = self._layer_step(plain, plain.attn_input(hidden), hidden, position_ids,
                                      None if cache is None else cache.layer(i), attn_mask)
        return hidden

    @staticmethod
    def _layer_step(layer, x, hidden, position_ids, cache, attn_mask):
        """One decoder layer: attention of its input x (keys appended to its cache), then finish."""
        q, k, v = layer.self_attn.project(x, position_ids)
        if cache is not None:
            k, v = cache.append(k, v)
        return layer.finish(hidden, layer.self_attn.attend(q, k, v, attn_mask))

    def plain_layers(self):
        """[(i, PlainLayer)] for decoder layers 1.. (empty for a one-layer head)."""
        return [(int(k), m) for k, m in self.layers.items()] if self.config.num_hidden_layers > 1 else []

    def logits(self, out_hidden):
        """[B, T, H] -> draft-vocabulary logits [B, T, Vd]."""
        return self.lm_head(self.norm(out_hidden))

    # ---------------------------------------------------------------- construction and I/O
    @classmethod
    def init_random(cls, config: EagleConfig, seed: int = 0) -> "EagleHead":
        g = torch.Generator().manual_seed(seed)
        head = cls(config)
        with torch.no_grad():
            for name, p in head.named_parameters():
                if p.dim() == 2:
                    p.normal_(0.0, 0.02, generator=g)
        if config.draft_vocab_size < config.vocab_size:
            head.set_draft_vocab(torch.arange(config.draft_vocab_size))
        return head.eval()

    @classmethod
    def from_pretrained(cls, path, dtype=torch.float32) -> "EagleHead":
        """Load a head from a directory with config.json + model.safetensors (or a weights-only torch
        file `pytorch_model.bin`), in the published EAGLE-3 layout."""
        path = Path(path)
        if not (path / CONFIG_NAME).is_file():
            raise FileNotFoundError(f"EAGLE head path {str(path)!r} must be a directory containing {CONFIG_NAME}")
        cfg = EagleConfig.from_dict(json.loads((path / CONFIG_NAME).read_text()))
        if (path / WEIGHTS_NAME).is_file():
            from safetensors.torch import load_file
            state = load_file(str(path / WEIGHTS_NAME))
        elif (path / LEGACY_WEIGHTS_NAME).is_file():
            state = torch.load(str(path / LEGACY_WEIGHTS_NAME), map_location="cpu", weights_only=True)
        else:
            raise FileNotFoundError(f"EAGLE head path {str(path)!r} has neither {WEIGHTS_NAME} nor {LEGACY_WEIGHTS_NAME}")
        # some published heads carry their own copy of the embeddings: we always use the target's
        state = {k: v for k, v in state.items() if not k.startswith("embed_tokens.")}
        head = cls(cfg)
        if "t2d" in state:
            state["t2d"] = state["t2d"].to(torch.bool)
        missing, unexpected = head.load_state_dict(state, strict=False)
        missing = [m for m in missing if m not in ("d2t", "t2d") or cfg.draft_vocab_size != cfg.vocab_size]
        if missing or unexpected:
            raise ValueError(f"EAGLE head at {str(path)!r} does not match its config: missing {missing}, "
                             f"unexpected {unexpected}")
        return head.to(dtype).eval()

    def save_pretrained(self, path, dtype=torch.float16) -> None:
        """Write config.json + model.safetensors (weights in `dtype`, d2t int64, t2d bool)."""
        from safetensors.torch import save_file
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / CONFIG_NAME).write_text(json.dumps(self.config.to_dict(), indent=2) + "\n")
        state = {}
        for k, v in self.state_dict().items():
            v = v.detach().cpu()
            state[k] = v.to(dtype).contiguous() if v.is_floating_point() else v.contiguous()
        save_file(state, str(path / WEIGHTS_NAME), metadata={"format": "pt"})

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def target_features(hidden_states, feature_layers):
    """HF `output_hidden_states` tuple -> EAGLE-3 features [B, T, 3H] (low, mid, high)."""
    return torch.cat([hidden_states[i] for i in feature_layers], -1)


def default_feature_layers(num_layers: int) -> list[int]:
    return [2, num_layers // 2, num_layers - 3]


__all__ = ["EagleConfig", "EagleHead", "HeadCache", "target_features", "default_feature_layers"]
