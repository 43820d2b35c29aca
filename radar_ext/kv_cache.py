"""Target KV cache bookkeeping on a transformers `DynamicCache` (transformers 5.x layout: a list of
`cache.layers`, each with `keys` / `values` tensors [B, Hkv, T, D] grown by concatenation).

After a verify forward the cache holds [prefix | tree]. `commit_path` keeps the prefix plus the
accepted path's entries, moved into contiguous slots right after the prefix, and drops the rest.
"""
from __future__ import annotations

import torch


def new_target_cache(target):
    """An empty DynamicCache for `target`, checked to be the plain (non-sliding) kind we can compact."""
    from transformers import DynamicCache

    cache = DynamicCache(config=target.config)
    check_cache(cache)
    return cache


def check_cache(cache) -> None:
    layers = getattr(cache, "layers", None)
    if layers is None:
        raise TypeError(f"cache must be a transformers DynamicCache with `.layers`, got {type(cache).__name__}")
    for i, layer in enumerate(layers):
        if getattr(layer, "is_sliding", False) or not getattr(layer, "is_croppable", True):
            raise NotImplementedError(
                f"cache layer {i} is a {type(layer).__name__} (sliding window); only full-attention "
                "DynamicLayer caches can be compacted for tree verification")


def cache_length(cache) -> int:
    return cache.get_seq_length()


def crop(cache, length: int) -> None:
    """Keep the first `length` positions of every layer."""
    for layer in cache.layers:
        if layer.is_initialized and layer.keys.shape[-2] > length:
            layer.keys = layer.keys[..., :length, :]
            layer.values = layer.values[..., :length, :]


def commit_path(cache, prefix_len: int, keep: torch.Tensor) -> None:
    """Compact the cache to [prefix | tree entries `keep`].

    keep: [n] int64 tree node indices (relative to the tree block that starts at `prefix_len`),
    strictly increasing (a root-to-node path in creation order), so that slot prefix_len + i is
    never overwritten before it is read: keep[i] >= i.
    """
    n = keep.shape[0]
    src = keep + prefix_len                                       # [n]
    contiguous = bool(n == 0 or int(keep[-1]) == n - 1)  # host sync: keep is a small CPU tensor
    for layer in cache.layers:
        if not layer.is_initialized:
            continue
        if not contiguous:
            # index_select makes a copy before the write, so overlapping source/target is safe.
            layer.keys[:, :, prefix_len:prefix_len + n] = layer.keys.index_select(2, src)
            layer.values[:, :, prefix_len:prefix_len + n] = layer.values.index_select(2, src)
        layer.keys = layer.keys[:, :, :prefix_len + n]
        layer.values = layer.values[:, :, :prefix_len + n]
