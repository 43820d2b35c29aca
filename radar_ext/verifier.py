"""One target forward over a draft tree: the tree block of a 4D additive float attention mask
(0 = visible, finfo.min = hidden; a bool 4D mask is wrong under `eager` in transformers 5.23,
METHOD.md 4), position ids = prefix length + depth, and the target's own DynamicCache, which
afterwards holds [prefix | tree] until kv_cache.commit_path.

A plain Llama target with sdpa attention runs radar_ext.lean_forward (the same ops, bit-identical,
without transformers' per-call plumbing: ~7% of a 2-3 token verify on a CPU); any other model, or
lean=False, goes through the model's public forward.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from radar_ext import kv_cache
from radar_ext.lean_forward import fused_reason, lean_forward_for
from radar_ext.tree import DraftTree


@dataclass
class VerifyOut:
    logits: torch.Tensor | None    # [B, M, V] float32 target logits at every tree node (None: greedy head, argmax)
    features: torch.Tensor | None  # [B, M, F] target features (drafter.feature_layers) or None
    argmax: torch.Tensor | None = None  # [B, M] int64 the logits' argmax, from the greedy head (verify(greedy=True))


def target_features(hidden_states, feature_layers) -> torch.Tensor | None:
    """Concatenate the requested entries of HF's hidden_states tuple: [B, T, len(layers) * H]."""
    if feature_layers is None:
        return None
    return torch.cat([hidden_states[i] for i in feature_layers], dim=-1)


def tree_attention_mask(tree: DraftTree, prefix_len: int, dtype: torch.dtype) -> torch.Tensor:
    """[B, 1, M, prefix_len + M] additive mask: every node sees the whole prefix and its ancestors."""
    B, M = tree.tokens.shape
    neg = torch.finfo(dtype).min
    mask = torch.zeros(B, 1, M, prefix_len + M, dtype=dtype, device=tree.tokens.device)
    mask[:, 0, :, prefix_len:].masked_fill_(~tree.mask, neg)
    return mask


# Longest prompt that `prefill(fused=True)` runs through the fused forward: its attention is per query row, so
# it loses to HF's (MKL) from ~500 tokens. Default target, 2 threads, AMX Xeon: P = 32 / 128 / 512 / 1536 tokens
# 27.8 / 99.1 / 659 / 3891 ms fused against 102 / 193 / 666 / 2156 ms through HF's forward.
FUSED_PREFILL_MAX = 384
# Most rows (batch x prompt length) `prefill_rows(fused=True)` runs fused: its products gain little over MKL's at
# this size. Default target, 2 threads, 2-core AMD EPYC: B x P = 4 x 64 / 4 x 128 / 8 x 64 / 8 x 128 / 8 x 256
# 372 / 746 / 811 / 1706 / 4271 ms fused against 399 / 826 / 850 / 1472 / 3744 ms through HF's forward.
FUSED_PREFILL_MAX_ROWS = 768


@torch.no_grad()
def prefill(target, cache, input_ids: torch.Tensor, feature_layers=None, fused: bool = False) -> VerifyOut:
    """Run the prompt [B, P] through the target, filling the cache. logits: last position only.
    fused (one prompt of at most FUSED_PREFILL_MAX tokens, a target the fused forward takes, an empty cache):
    as one causal radar_ext::llama_forward call (HF's logits up to rounding, as every fused verify), else
    HF's forward."""
    if fused and input_ids.shape[0] == 1:
        P = input_ids.shape[1]
        got = _fused_prefill(target, cache, input_ids, torch.arange(P, device=input_ids.device).view(1, P),
                             torch.ones(1, P, dtype=torch.bool, device=input_ids.device), feature_layers)
        if got is not None:
            return got
    out = target(input_ids=input_ids, past_key_values=cache, use_cache=True,
                 output_hidden_states=feature_layers is not None, logits_to_keep=1)
    feats = target_features(out.hidden_states, feature_layers) if feature_layers is not None else None
    return VerifyOut(out.logits.float(), feats)


def _fused_prefill(target, cache, input_ids, position_ids, real, feature_layers) -> VerifyOut | None:
    """The prompts [B, P] (real [B, P] bool: not left padding) as one causal radar_ext::llama_forward call with
    last-row logits, each real token seeing its row's real tokens up to itself and a padding slot only itself
    (its K/V are never read); None where it does not run: longer than FUSED_PREFILL_MAX tokens or
    FUSED_PREFILL_MAX_ROWS rows in all, a cache already holding tokens, a target the fused forward does not take."""
    B, P = input_ids.shape
    if P > FUSED_PREFILL_MAX or B * P > FUSED_PREFILL_MAX_ROWS or kv_cache.cache_length(cache) != 0:
        return None
    fast = lean_forward_for(target, native=True, fused=True)
    if fast is None or fused_reason(target) is not None:
        return None
    slot = torch.arange(P, device=input_ids.device)
    causal = slot.view(P, 1) >= slot.view(1, P)                                           # [P(query), P(key)]
    visible = (causal & real.view(B, 1, P)) | torch.eye(P, dtype=torch.bool, device=input_ids.device)
    mask = torch.zeros(B, 1, P, P, dtype=torch.float32, device=input_ids.device)
    mask.masked_fill_(~visible.unsqueeze(1), torch.finfo(torch.float32).min)
    logits, feats = fast(input_ids, position_ids, mask, cache, feature_layers, last_only=True)
    return VerifyOut(logits.float(), feats)


@torch.no_grad()
def prefill_rows(target, cache, input_ids: torch.Tensor, pads: torch.Tensor, feature_layers=None,
                 fused: bool = False) -> VerifyOut:
    """`prefill` of B left-padded prompts [B, P] (pads [B] int64 padding slots per row): HF's batched
    prefill (2-D attention mask, positions counted from each row's first real token, as HF generate does).
    The padding slots get K/V too; every later mask hides them (rows_attention_mask).
    fused: as `prefill(fused=True)` runs one prompt (_fused_prefill), the B rows in one fused forward."""
    B, P = input_ids.shape
    attention_mask = (torch.arange(P, device=input_ids.device) >= pads.view(B, 1)).long()  # [B, P]
    position_ids = (attention_mask.cumsum(1) - 1).clamp(min=0)                          # [B, P]
    if fused:
        got = _fused_prefill(target, cache, input_ids, position_ids, attention_mask.bool(), feature_layers)
        if got is not None:
            return got
    out = target(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                 past_key_values=cache, use_cache=True, output_hidden_states=feature_layers is not None,
                 logits_to_keep=1)
    feats = target_features(out.hidden_states, feature_layers) if feature_layers is not None else None
    return VerifyOut(out.logits.float(), feats)


@torch.no_grad()
def prefill_each_row(target, cache, input_ids: torch.Tensor, pads: list, feature_layers=None,
                     fused: bool = False) -> VerifyOut:
    """`prefill_rows` of B left-padded prompts [B, P] (pads: host ints, padding slots per row), each row run alone at
    its own length (`prefill`: through the fused forward up to FUSED_PREFILL_MAX tokens, else HF's forward), its
    K/V then copied into the empty `cache` at slots [pad_b, P) of a [B, Hkv, P, D] layer (the padding slots hold
    zeros: every later mask hides them, rows_attention_mask). The same layout as the batched prefill, without its
    compute on padding (the dev set's prompts padded to the longest of 8: ~half the rows) and with each row's
    values those of its single-row prefill. logits [B, 1, V] (each row's last position), features [B, P, F]
    (zeros at padding) or None."""
    B, P = input_ids.shape
    if kv_cache.cache_length(cache) != 0:
        raise ValueError("prefill_each_row fills an empty cache")
    rows = []
    for b in range(B):
        pad, c = int(pads[b]), kv_cache.new_target_cache(target)
        rows.append((pad, c, prefill(target, c, input_ids[b:b + 1, pad:], feature_layers, fused=fused)))
    for i, first in enumerate(rows[0][1].layers):
        if not first.is_initialized:
            continue
        k0 = first.keys
        keys = k0.new_zeros(B, k0.shape[1], P, k0.shape[3])
        values = keys.clone()
        for b, (pad, c, _) in enumerate(rows):
            keys[b, :, pad:] = c.layers[i].keys[0]
            values[b, :, pad:] = c.layers[i].values[0]
        cache.update(keys, values, i)
    logits = torch.cat([res.logits[:, -1:] for _, _, res in rows])                      # [B, 1, V]
    feats = None
    if feature_layers is not None:
        f0 = rows[0][2].features
        feats = f0.new_zeros(B, P, f0.shape[-1])
        for b, (pad, _, res) in enumerate(rows):
            feats[b, pad:] = res.features[0]
    return VerifyOut(logits, feats)


@torch.no_grad()
def verify(target, cache, tree: DraftTree, prefix_len: int, feature_layers=None, lean: bool = True,
           native: bool = True, fused: bool = False, greedy: bool = False) -> VerifyOut:
    """Target logits (and features) at every node of `tree`, whose root sits at position prefix_len.
    lean: use radar_ext.lean_forward when the target qualifies (same bits, less overhead); native: let it
    run its layer loop in C++ where every linear is on exact blocks (same bits again); fused (RadarDecoder's
    default, fused_forward=True): run the whole forward as one torch-free C++ call (radar_ext::llama_forward;
    HF's logits up to rounding, not bit for bit). greedy (with fused): where the fused forward can take the LM
    head's argmax without its logits (lean_forward.greedy_head_usable), VerifyOut.argmax holds it and logits is
    None: the same tokens as the logits' argmax (csrc/kernels/argmax_head.h), for less of the head's work."""
    dtype = next(target.parameters()).dtype
    input_ids = tree.tokens.clamp(min=0)                           # [B, M]
    position_ids = tree.depth.clamp(min=0) + prefix_len            # [B, M]
    mask = tree_attention_mask(tree, prefix_len, dtype)            # [B, 1, M, prefix_len + M]
    return _tree_forward(target, cache, input_ids, position_ids, mask, feature_layers, lean, native, fused, greedy)


def rows_attention_mask(tree: DraftTree, start: int, lengths: torch.Tensor, pads: torch.Tensor,
                        dtype: torch.dtype) -> torch.Tensor:
    """[B, 1, M, start + M] additive mask of a batch whose rows have their own lengths on one dense cache
    (kv_cache.commit_rows): row b's nodes see its slots [pads_b, lengths_b) (not its left padding, not the
    holes up to the shared `start`) and their tree ancestors in the block at `start`."""
    B, M = tree.tokens.shape
    slot = torch.arange(start, device=tree.tokens.device)                            # [start]
    seen = (slot >= pads.view(B, 1)) & (slot < lengths.view(B, 1))                   # [B, start]
    visible = torch.cat([seen.view(B, 1, start).expand(B, M, start), tree.mask], 2)  # [B, M, start + M]
    mask = torch.zeros(B, 1, M, start + M, dtype=dtype, device=tree.tokens.device)
    return mask.masked_fill_(~visible.unsqueeze(1), torch.finfo(dtype).min)


@torch.no_grad()
def verify_rows(target, cache, tree: DraftTree, lengths: torch.Tensor, pads: torch.Tensor, feature_layers=None,
                lean: bool = True, native: bool = True, fused: bool = False, greedy: bool = False) -> VerifyOut:
    """`verify` for B rows with their own cache lengths [B] and left padding [B] (int64): every row's tree
    [B, M] (unused nodes -1, masked) is appended at the cache's shared end; row b's root sits at position
    lengths_b - pads_b."""
    dtype = next(target.parameters()).dtype
    start = kv_cache.cache_length(cache)
    input_ids = tree.tokens.clamp(min=0)                                         # [B, M]
    position_ids = tree.depth.clamp(min=0) + (lengths - pads).view(-1, 1)        # [B, M]
    mask = rows_attention_mask(tree, start, lengths, pads, dtype)                # [B, 1, M, start + M]
    return _tree_forward(target, cache, input_ids, position_ids, mask, feature_layers, lean, native, fused, greedy)


def _tree_forward(target, cache, input_ids, position_ids, mask, feature_layers, lean, native, fused,
                  greedy=False) -> VerifyOut:
    fast = lean_forward_for(target, native=native, fused=fused) if lean else None
    if fast is not None:  # (greedy: a third entry, the argmax, when the fused forward took the greedy head)
        return VerifyOut(*fast(input_ids, position_ids, mask, cache, feature_layers, greedy=greedy and fused))
    out = target(input_ids=input_ids, attention_mask=mask, position_ids=position_ids, past_key_values=cache,
                 use_cache=True, output_hidden_states=feature_layers is not None)
    feats = target_features(out.hidden_states, feature_layers) if feature_layers is not None else None
    return VerifyOut(out.logits.float(), feats)
