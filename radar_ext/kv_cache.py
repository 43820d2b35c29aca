"""Target KV cache bookkeeping on a transformers `DynamicCache` (transformers 5.x layout: a list of
`cache.layers`, each with `keys` / `values` tensors [B, Hkv, T, D] grown by concatenation).

After a verify forward the cache holds [prefix | tree]. `commit_path` keeps the prefix plus the
accepted path's entries, moved into contiguous slots right after the prefix, and drops the rest.

`append` (used by radar_ext.lean_forward) grows a layer without the concatenation: the layer's keys /
values become views of the first T positions of a buffer with spare room, and new entries are
written into the room. crop and commit_path keep such views views (they only slice and write in
place), and anything else that replaces the tensors (the model's own forward concatenates) simply
makes the next append start a new buffer. Measured (default target, lean verify, paired in one
process, same logits): 55.9 -> 55.6 ms at M = 3 and 63.6 -> 62.8 at M = 8 with a 256-token prefix,
74.3 -> 70.9 and 91.4 -> 84.2 ms with 1536 (the concatenation copies the whole cache every call).
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
    """Keep the first `length` positions of every layer (a cache whose layers view one stacked buffer, the fused
    forward's, keeps viewing it: the next reserve_layers needs no per-layer check)."""
    st = _stacked(cache)
    if st is not None and 0 <= length < st.length:
        st.set_length(cache, length)
        return
    for layer in cache.layers:
        if layer.is_initialized and layer.keys.shape[-2] > length:
            layer.keys = layer.keys[..., :length, :]
            layer.values = layer.values[..., :length, :]


def _dynamic_layer():
    from transformers.cache_utils import DynamicLayer
    return DynamicLayer


def _plain_layer(layer) -> bool:
    """An initialized DynamicCache layer of 4-D tensors: one whose entries the buffers here can hold."""
    return type(layer) is _dynamic_layer() and layer.is_initialized and layer.keys.dim() == 4


_BUFFERS = "_radar_kv_buffers"  # attribute of a DynamicLayer: (key buffer, value buffer) [B, Hkv, capacity, D]


def _prefix_view_of(t: torch.Tensor, buf: torch.Tensor) -> bool:
    """t is buf[:, :, :t.shape[2]] (same storage start and strides, the same sizes but the length)."""
    return (t.data_ptr() == buf.data_ptr() and t.stride() == buf.stride() and t.shape[:2] == buf.shape[:2]
            and t.shape[3] == buf.shape[3] and t.shape[2] <= buf.shape[2])


def append(cache, k: torch.Tensor, v: torch.Tensor, layer_idx: int, room: int = 256):
    """What `cache.update(k, v, layer_idx)` does for a DynamicCache layer (the same values in its keys /
    values, returned), without copying the T cached entries each call: k, v [B, Hkv, M, D] go into the
    spare room of a buffer whose first T + M positions layer.keys / layer.values then view. A new
    buffer (capacity T + M + max(room, (T + M) / 2)) is made when the layer does not view one or it is
    full. Uninitialized layers and offloading caches take the cache's own update."""
    got = reserve(cache, layer_idx, k.shape[2], k.shape, k.dtype, k.device, room)
    if got is None:
        return cache.update(k, v, layer_idx)
    (kb, vb), T = got
    M = k.shape[2]
    kb[:, :, T:T + M].copy_(k)
    vb[:, :, T:T + M].copy_(v)
    return extend(cache, layer_idx, T + M)


def reserve(cache, layer_idx: int, M: int, shape, dtype, device, room: int = 256):
    """append's buffer step alone: ((key buffer, value buffer), T) with room for M entries after the T
    cached ones of a DynamicCache layer (shape: [B, Hkv, *, D] of the new entries), or None where append
    takes the cache's own update (uninitialized layer, offloading cache). Write the new entries to
    buffer[:, :, T:T + M], then extend(cache, layer_idx, T + M)."""
    layers = cache.layers
    if getattr(cache, "offloading", False) or layer_idx >= len(layers):
        return None
    layer = layers[layer_idx]
    if not _plain_layer(layer):
        return None
    keys, values = layer.keys, layer.values
    T = keys.shape[2]
    bufs = layer.__dict__.get(_BUFFERS)
    if (bufs is None or not _prefix_view_of(keys, bufs[0]) or not _prefix_view_of(values, bufs[1])
            or T + M > bufs[0].shape[2] or bufs[0].dtype != dtype or bufs[0].device != device):
        cap = T + M + max(room, (T + M) // 2)
        bufs = tuple(torch.empty(shape[0], shape[1], cap, shape[3], dtype=dtype, device=device) for _ in range(2))
        bufs[0][:, :, :T].copy_(keys)
        bufs[1][:, :, :T].copy_(values)
        layer.__dict__[_BUFFERS] = bufs
    return bufs, T


def extend(cache, layer_idx: int, length: int):
    """Point a reserved layer's keys / values at the first `length` entries of its buffers; returns them."""
    layer = cache.layers[layer_idx]
    kb, vb = layer.__dict__[_BUFFERS]
    layer.keys, layer.values = kb.narrow(2, 0, length), vb.narrow(2, 0, length)
    return layer.keys, layer.values


# ------------------------------------------------------------------ all layers in one buffer
# The fused forward (radar_ext.lean_forward) writes every layer's new entries itself and only needs each layer's
# buffer and the shared length. reserve_layers keeps every layer's buffer as a slice of one stacked buffer
# [L, B, Hkv, capacity, D] (keys and values each) and remembers the views it gave the layers; while the layers
# still hold exactly those views (nothing else replaced them), the next call skips the per-layer checks and
# commit_path moves the accepted entries of all layers with one index_select. Default target, 2 threads, 2-core
# AMD EPYC: the Python around a fused verify ~0.5 -> ~0.1 ms, commit_path of a 3-node path 0.22 -> 0.04 ms.
_STACK = "_radar_kv_stack"  # attribute of a DynamicCache: its _Stack


class _Stack:
    __slots__ = ("layer_ids", "layers", "k", "v", "k_full", "v_full", "views", "length")

    def __init__(self, layer_ids, layers, k, v):
        self.layer_ids = layer_ids        # tuple of layer indices, in the order of k / v
        self.layers = layers              # tuple of the DynamicLayer objects
        self.k, self.v = k, v             # [L, B, Hkv, capacity, D]
        self.k_full = [k[i] for i in range(k.shape[0])]  # [B, Hkv, capacity, D] views, one per layer
        self.v_full = [v[i] for i in range(v.shape[0])]
        self.views = ()                   # ((keys, values) per layer) as last set by set_length
        self.length = 0

    def holds(self, cache) -> bool:
        """Every layer still holds the views this stack gave it (identity: nothing replaced them)."""
        layers = cache.layers
        if len(layers) < len(self.layers) or not self.views:
            return False
        for i, layer, (kv, vv) in zip(self.layer_ids, self.layers, self.views):
            if layers[i] is not layer or layer.keys is not kv or layer.values is not vv:
                return False
        return True

    def adopt(self, cache) -> bool:
        """The layers view prefixes of this stack's slices of one common length (after crop or commit_rows,
        which slice or write in place): take that length, no copy."""
        layers = cache.layers
        T = None
        for i, kf, vf in zip(self.layer_ids, self.k_full, self.v_full):
            if i >= len(layers):
                return False
            layer = layers[i]
            if (not _plain_layer(layer) or not _prefix_view_of(layer.keys, kf) or not _prefix_view_of(layer.values, vf)
                    or layer.values.shape[2] != layer.keys.shape[2] or (T is not None and layer.keys.shape[2] != T)):
                return False
            T = layer.keys.shape[2]
        self.layers = tuple(layers[i] for i in self.layer_ids)
        self.views = tuple((layers[i].keys, layers[i].values) for i in self.layer_ids)
        self.length = T
        return True

    def set_length(self, cache, length: int) -> None:
        views = []
        k = self.k
        size, stride = (k.shape[1], k.shape[2], length, k.shape[4]), self.k_full[0].stride()
        for layer, kf, vf in zip(self.layers, self.k_full, self.v_full):
            # kf[:, :, :length] (as_strided: the same view, ~0.6 us cheaper than narrow; 60 of them a call)
            layer.keys, layer.values = kf.as_strided(size, stride), vf.as_strided(size, stride)
            views.append((layer.keys, layer.values))
        self.views = tuple(views)
        self.length = length


def reserve_layers(cache, layer_ids, M: int, shape, dtype, device, room: int = 256):
    """reserve() for the layers `layer_ids` (list of ints) at once: (key buffers, value buffers, T), one
    [B, Hkv, capacity, D] buffer per layer in that order, with room for M entries after the T cached ones,
    every layer at the same T; None where a layer is not an initialized DynamicCache layer of 4-D tensors,
    the layers differ in length or the cache offloads. Write the new entries to buffer[:, :, T:T + M],
    then extend_layers(cache, T + M). The buffers are slices of one stacked buffer (see above), also
    registered as each layer's append / reserve buffer."""
    if getattr(cache, "offloading", False):
        return None
    st = cache.__dict__.get(_STACK)
    ids = tuple(layer_ids)
    if st is not None and st.layer_ids == ids and (st.holds(cache) or st.adopt(cache)):
        k = st.k
        if (st.length + M <= k.shape[3] and k.dtype == dtype and k.device == torch.device(device)
                and k.shape[1] == shape[0] and k.shape[2] == shape[1] and k.shape[4] == shape[3]):
            return st.k_full, st.v_full, st.length
    layers = cache.layers
    T = None
    for i in ids:
        layer = layers[i] if i < len(layers) else None
        if (not _plain_layer(layer) or layer.values.shape != layer.keys.shape or (T is not None and layer.keys.shape[2] != T)):
            return None
        T = layer.keys.shape[2]
    if T is None:
        return None
    cap = T + M + max(room, (T + M) // 2)
    L = len(ids)
    k = torch.empty(L, shape[0], shape[1], cap, shape[3], dtype=dtype, device=device)
    v = torch.empty_like(k)
    for j, i in enumerate(ids):
        k[j, :, :, :T].copy_(layers[i].keys)
        v[j, :, :, :T].copy_(layers[i].values)
    st = _Stack(ids, tuple(layers[i] for i in ids), k, v)
    for j, layer in enumerate(st.layers):
        layer.__dict__[_BUFFERS] = (st.k_full[j], st.v_full[j])
    st.set_length(cache, T)
    cache.__dict__[_STACK] = st
    return st.k_full, st.v_full, T


def extend_layers(cache, length: int) -> None:
    """Point the layers of reserve_layers' stack at the first `length` entries of their buffers."""
    cache.__dict__[_STACK].set_length(cache, length)


def _stacked(cache):
    """The cache's stack if it covers every initialized layer and the layers still hold its views, else None."""
    st = cache.__dict__.get(_STACK)
    if st is None or not st.holds(cache):
        return None
    if len(st.layers) != sum(1 for layer in cache.layers if layer.is_initialized):
        return None
    return st


def commit_path(cache, prefix_len: int, keep: torch.Tensor) -> None:
    """Compact the cache to [prefix | tree entries `keep`].

    keep: [n] int64 tree node indices (relative to the tree block that starts at `prefix_len`),
    strictly increasing (a root-to-node path in creation order), so that slot prefix_len + i is
    never overwritten before it is read: keep[i] >= i.
    """
    n = keep.shape[0]
    src = keep + prefix_len                                       # [n]
    contiguous = bool(n == 0 or int(keep[-1]) == n - 1)  # host sync: keep is a small CPU tensor
    end = prefix_len + n
    st = _stacked(cache)
    if st is not None and st.length >= end:  # every layer in one buffer: one move for all of them
        if contiguous and st.length == end:
            return
        if not contiguous:
            st.k[:, :, :, prefix_len:end] = st.k.index_select(3, src)
            st.v[:, :, :, prefix_len:end] = st.v.index_select(3, src)
        st.set_length(cache, end)
        return
    for layer in cache.layers:
        if not layer.is_initialized:
            continue
        if contiguous and layer.keys.shape[2] == end and layer.values.shape[2] == end:
            continue  # the whole block was kept (a plain step's root): nothing to move or crop
        if not contiguous:
            # index_select makes a copy before the write, so overlapping source/target is safe.
            layer.keys[:, :, prefix_len:prefix_len + n] = layer.keys.index_select(2, src)
            layer.values[:, :, prefix_len:prefix_len + n] = layer.values.index_select(2, src)
        layer.keys = layer.keys[:, :, :end]
        layer.values = layer.values[:, :, :end]


# ---------------------------------------------------------------------------------------- batch > 1
# One dense cache for B rows with a per-row length (docs BATCH.md, pattern 3): row b's entries live in
# slots [pad_b, length_b) (pad_b: its left padding, never attended); the cache's own length is the
# longest row's, and the slots between a shorter row's length and it are holes its mask hides. A verify
# appends every row's tree at the shared end S; commit_rows then moves each row's accepted path to its
# own slots [length_b, length_b + n_b) and crops to the new longest row: O(B * depth) per layer, no
# realignment of the rows.

def commit_rows(cache, start: int, lengths: torch.Tensor, paths: torch.Tensor, n_keep: torch.Tensor) -> int:
    """Move each row's accepted tree entries to its own slots; returns the new shared length.

    start: the slot of the tree block (the cache length before the verify); lengths [B] int64 each row's
    length before the verify (<= start); paths [B, L] int64 tree node indices, root first, strictly
    increasing, -1 padded; n_keep [B] int64 (>= 1) entries of each path to keep."""
    B, L = paths.shape
    i = torch.arange(L, device=paths.device).expand(B, L)
    last = (n_keep - 1).view(B, 1)
    # past a row's n_keep, repeat its last entry: the same value written to the same slot again
    i = torch.minimum(i, last)
    src = paths.gather(1, i) + start                                # [B, L]
    dst = lengths.view(B, 1) + i                                    # [B, L]
    new_len = int((lengths + n_keep).max())  # host sync: the cache's new shared length
    st = _stacked(cache)
    if st is not None and st.length >= start + L and st.k.shape[1] == B:
        # every layer in one buffer: one gather and one scatter for all of them, none where every entry already
        # sits in its slot (plain steps of rows of equal length)
        if not torch.equal(src, dst):
            for buf in (st.k, st.v):
                n_layers, _, H, _, D = buf.shape
                moved = buf.gather(3, src.view(1, B, 1, L, 1).expand(n_layers, B, H, L, D))
                buf.scatter_(3, dst.view(1, B, 1, L, 1).expand(n_layers, B, H, L, D), moved)
        st.set_length(cache, new_len)
        return new_len
    for layer in cache.layers:
        if not layer.is_initialized:
            continue
        for name in ("keys", "values"):
            t = getattr(layer, name)                                # [B, Hkv, T, D]
            H, D = t.shape[1], t.shape[3]
            # gather copies before the scatter writes: a source slot may be another entry's target
            moved = t.gather(2, src.view(B, 1, L, 1).expand(B, H, L, D))
            t.scatter_(2, dst.view(B, 1, L, 1).expand(B, H, L, D), moved)
            setattr(layer, name, t[:, :, :new_len])
    return new_len


def select_rows(cache, rows: torch.Tensor, length: int) -> None:
    """Keep only the batch rows `rows` [B'] int64 of every layer, cropped to `length` slots (finished
    rows leave the batch; the copy is made once, when a row finishes)."""
    for layer in cache.layers:
        if layer.is_initialized:
            layer.keys = layer.keys[:, :, :length].index_select(0, rows)
            layer.values = layer.values[:, :, :length].index_select(0, rows)
