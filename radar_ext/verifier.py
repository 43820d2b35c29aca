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

from radar_ext.lean_forward import lean_forward_for
from radar_ext.tree import DraftTree


@dataclass
class VerifyOut:
    logits: torch.Tensor           # [B, M, V] float32 target logits at every tree node
    features: torch.Tensor | None  # [B, M, F] target features (drafter.feature_layers) or None


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


@torch.no_grad()
def prefill(target, cache, input_ids: torch.Tensor, feature_layers=None) -> VerifyOut:
    """Run the prompt [B, P] through the target, filling the cache. logits: last position only."""
    out = target(input_ids=input_ids, past_key_values=cache, use_cache=True,
                 output_hidden_states=feature_layers is not None, logits_to_keep=1)
    feats = target_features(out.hidden_states, feature_layers) if feature_layers is not None else None
    return VerifyOut(out.logits.float(), feats)


@torch.no_grad()
def verify(target, cache, tree: DraftTree, prefix_len: int, feature_layers=None, lean: bool = True,
           native: bool = True, fused: bool = True) -> VerifyOut:
    """Target logits (and features) at every node of `tree`, whose root sits at position prefix_len.
    lean: use radar_ext.lean_forward when the target qualifies (same bits, less overhead); native: let it
    run its layer loop in C++ where every linear is on exact blocks (same bits again); fused: let it run the
    whole forward as one torch-free C++ call (radar_ext::llama_forward; HF's logits up to rounding)."""
    dtype = next(target.parameters()).dtype
    input_ids = tree.tokens.clamp(min=0)                           # [B, M]
    position_ids = tree.depth.clamp(min=0) + prefix_len            # [B, M]
    mask = tree_attention_mask(tree, prefix_len, dtype)            # [B, 1, M, prefix_len + M]
    fast = lean_forward_for(target, native=native, fused=fused) if lean else None
    if fast is not None:
        return VerifyOut(*fast(input_ids, position_ids, mask, cache, feature_layers))
    out = target(input_ids=input_ids, attention_mask=mask, position_ids=position_ids, past_key_values=cache,
                 use_cache=True, output_hidden_states=feature_layers is not None)
    feats = target_features(out.hidden_states, feature_layers) if feature_layers is not None else None
    return VerifyOut(out.logits.float(), feats)
