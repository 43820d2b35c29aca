"""KV compaction: after verifying a tree and committing the accepted path, the target cache must
equal the cache of a plain forward over prefix + path tokens."""
import pytest
import torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

from radar_ext import kv_cache
from radar_ext.tree import make_tree
from radar_ext.verifier import prefill, tree_attention_mask, verify


@pytest.fixture(scope="module", params=["eager", "sdpa"])
def model(request):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    cfg._attn_implementation = request.param
    return LlamaForCausalLM(cfg).eval()


def fake_cache(n_layers, T, B=1, H=2, D=3):
    cache = DynamicCache()
    for i in range(n_layers):
        k = torch.arange(B * H * T * D, dtype=torch.float32).view(B, H, T, D) + 1000 * i
        cache.update(k, -k, i)
    return cache


@pytest.mark.parametrize("keep", [[0], [0, 1, 2], [0, 2, 5], [0, 3], []])
def test_commit_path_moves_entries(keep):
    prefix, tree_len = 4, 6
    cache = fake_cache(3, prefix + tree_len)
    before = [(l.keys.clone(), l.values.clone()) for l in cache.layers]
    kv_cache.commit_path(cache, prefix, torch.tensor(keep, dtype=torch.int64))
    for (k0, v0), layer in zip(before, cache.layers):
        idx = list(range(prefix)) + [prefix + i for i in keep]
        assert torch.equal(layer.keys, k0[:, :, idx]) and torch.equal(layer.values, v0[:, :, idx])
    assert cache.get_seq_length() == prefix + len(keep)
    # the cache keeps growing correctly after compaction
    cache.update(torch.ones(1, 2, 1, 3), torch.ones(1, 2, 1, 3), 0)
    assert cache.layers[0].keys.shape[2] == prefix + len(keep) + 1


def test_crop():
    cache = fake_cache(2, 9)
    kv_cache.crop(cache, 5)
    assert all(l.keys.shape[2] == 5 and l.values.shape[2] == 5 for l in cache.layers)
    kv_cache.crop(cache, 7)  # longer than the cache: nothing to do
    assert cache.get_seq_length() == 5


def test_tree_mask_is_float_additive():
    tree = make_tree(torch.tensor([[3, 4, 5]]), torch.tensor([[-1, 0, 0]]), torch.tensor([3]))
    m = tree_attention_mask(tree, 2, torch.float32)
    assert m.dtype == torch.float32 and m.shape == (1, 1, 3, 5)
    neg = torch.finfo(torch.float32).min
    assert (m[0, 0, :, :2] == 0).all()
    # columns: prefix 0-1, root 2, node1 3, node2 4; siblings do not see each other
    assert m[0, 0, 1, 4] == neg and m[0, 0, 2, 3] == neg
    assert m[0, 0, 1, 2] == 0 and m[0, 0, 1, 3] == 0 and m[0, 0, 2, 4] == 0 and m[0, 0, 0, 3] == neg


def test_verify_then_commit_equals_plain_forward(model):
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, 50, (1, 7), generator=g)
    # root 11 -> (a 12 -> c 14 -> e 16), (b 13 -> d 15)
    tree = make_tree(torch.tensor([[11, 12, 13, 14, 15, 16]]), torch.tensor([[-1, 0, 0, 1, 2, 3]]),
                     torch.tensor([6]))
    for path in ([0, 1, 3, 5], [0, 2, 4], [0]):
        cache = kv_cache.new_target_cache(model)
        prefill(model, cache, prompt)
        res = verify(model, cache, tree, prompt.shape[1])
        toks = tree.tokens[0, path]
        ref_cache = DynamicCache(config=model.config)
        with torch.no_grad():
            ref = model(torch.cat([prompt, toks.view(1, -1)], 1), past_key_values=ref_cache, use_cache=True)
        # the tree forward's logits at the path nodes equal the plain forward's
        torch.testing.assert_close(res.logits[0, path], ref.logits[0, prompt.shape[1]:].float(), rtol=1e-4, atol=1e-4)
        kv_cache.commit_path(cache, prompt.shape[1], torch.tensor(path))
        for a, b in zip(cache.layers, ref_cache.layers):
            torch.testing.assert_close(a.keys, b.keys, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(a.values, b.values, rtol=1e-5, atol=1e-5)


def test_sliding_window_cache_is_rejected():
    class Sliding:
        is_sliding, is_croppable = True, True

    class FakeCache:
        layers = [Sliding()]
    with pytest.raises(NotImplementedError, match="cache layer 0 is a Sliding .*sliding window"):
        kv_cache.check_cache(FakeCache())
    with pytest.raises(TypeError, match="cache must be a transformers DynamicCache with `.layers`, got object"):
        kv_cache.check_cache(object())


def test_append_matches_update_through_crop_commit_and_growth():
    """kv_cache.append gives every layer the values DynamicCache.update would, across appends that
    fill and outgrow the buffer, crops, path commits and the model's own concatenating update in
    between; after the first append the cached entries are not copied again (same buffer)."""
    g = torch.Generator().manual_seed(0)
    ours, ref = fake_cache(2, 5), fake_cache(2, 5)

    def step(M):
        for i in range(2):
            k, v = torch.randn(1, 2, M, 3, generator=g), torch.randn(1, 2, M, 3, generator=g)
            got = kv_cache.append(ours, k, v, i, room=4)
            want = ref.update(k, v, i)
            assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])

    def same():
        for a, b in zip(ours.layers, ref.layers):
            assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)

    step(3)
    buf = ours.layers[0].keys.data_ptr()
    step(2)                                              # fits the room: written in place
    assert ours.layers[0].keys.data_ptr() == buf and ours.get_seq_length() == 10
    for c in (ours, ref):
        kv_cache.commit_path(c, 7, torch.tensor([0, 2]))   # [prefix 7 | tree 3] -> 7 + 2
        kv_cache.crop(c, 8)
    same()
    step(1)
    assert ours.layers[0].keys.data_ptr() == buf
    step(9)                                              # outgrows it: a new, larger buffer
    assert ours.layers[0].keys.data_ptr() != buf
    for i in range(2):                                   # the model's own update in between
        k = torch.randn(1, 2, 2, 3, generator=g)
        ours.update(k, -k, i), ref.update(k, -k, i)
    step(2)
    same()
    assert ours.get_seq_length() == ref.get_seq_length() == 8 + 1 + 9 + 2 + 2
    empty = DynamicCache()                               # an uninitialized layer: the cache's own update
    k = torch.ones(1, 2, 3, 3)
    assert torch.equal(kv_cache.append(empty, k, -k, 0)[0], k) and empty.get_seq_length() == 3


def test_stacked_layers_match_update_through_commit_crop_and_replacement():
    """reserve_layers / extend_layers (the fused forward's cache steps: every layer in one stacked buffer) give
    every layer the values DynamicCache.update would, across commits (one index_select for all layers), crops
    (the stack's own views set, or the layers adopted again without a copy), growth past the capacity and the model's own concatenating
    update in between (the stack is rebuilt from the layers)."""
    g = torch.Generator().manual_seed(0)
    ours, ref = fake_cache(3, 5), fake_cache(3, 5)
    ids = [0, 1, 2]

    def step(M):
        got = kv_cache.reserve_layers(ours, ids, M, (1, 2, M, 3), torch.float32, "cpu", room=4)
        assert got is not None
        kb, vb, T = got
        assert T == ref.get_seq_length()
        for i in ids:
            k, v = torch.randn(1, 2, M, 3, generator=g), torch.randn(1, 2, M, 3, generator=g)
            kb[i][:, :, T:T + M] = k
            vb[i][:, :, T:T + M] = v
            ref.update(k, v, i)
        kv_cache.extend_layers(ours, T + M)

    def same():
        assert ours.get_seq_length() == ref.get_seq_length()
        for a, b in zip(ours.layers, ref.layers):
            assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)

    step(3)
    same()
    stack = ours.__dict__[kv_cache._STACK].k
    step(2)                                               # fits: written in place, no new stack
    assert ours.__dict__[kv_cache._STACK].k is stack
    for c in (ours, ref):
        kv_cache.commit_path(c, 7, torch.tensor([0, 2]))  # [prefix 7 | tree 3] -> 7 + 2, all layers at once
    same()
    for c in (ours, ref):
        kv_cache.crop(c, 8)
    same()
    assert kv_cache._stacked(ours) is not None            # crop set the stack's own views: still held, no adopt
    step(1)                                               # the same stack
    assert ours.__dict__[kv_cache._STACK].k is stack
    same()
    ours.layers[0].keys = ours.layers[0].keys[:, :, :9]   # a view replaced from outside: crop slices, then adopted
    ours.layers[0].values = ours.layers[0].values[:, :, :9]
    assert kv_cache._stacked(ours) is None
    for c in (ours, ref):
        kv_cache.crop(c, 9)
    step(1)
    assert ours.__dict__[kv_cache._STACK].k is stack
    same()
    for c in (ours, ref):
        kv_cache.commit_path(c, 8, torch.tensor([0]))     # a plain step's root: nothing moves
    step(9)                                               # outgrows it: a new, larger stack
    assert ours.__dict__[kv_cache._STACK].k is not stack
    same()
    for i in ids:                                         # the model's own update in between
        k = torch.randn(1, 2, 2, 3, generator=g)
        ours.update(k, -k, i), ref.update(k, -k, i)
    step(2)
    same()
    for c in (ours, ref):
        kv_cache.commit_path(c, ref.get_seq_length() - 2, torch.tensor([1]))
    same()
    # layers of different lengths or an uninitialized one: not for the stacked path
    uneven = fake_cache(2, 4)
    uneven.layers[1].keys = uneven.layers[1].keys[:, :, :3]
    uneven.layers[1].values = uneven.layers[1].values[:, :, :3]
    assert kv_cache.reserve_layers(uneven, [0, 1], 1, (1, 2, 1, 3), torch.float32, "cpu") is None
    assert kv_cache.reserve_layers(DynamicCache(), [0], 1, (1, 2, 1, 3), torch.float32, "cpu") is None


def test_commit_rows_on_the_stacked_buffer_matches_the_layer_loop():
    """commit_rows on a cache whose layers live in reserve_layers' stacked buffer (one gather / scatter for every
    layer, nothing moved when every entry already sits in its slot) leaves the same layers as on a plain
    DynamicCache (the per-layer loop)."""
    g = torch.Generator().manual_seed(0)
    B, H, D, start, M = 3, 2, 3, 7, 4
    for trial in range(6):
        plain = DynamicCache()
        for i in range(3):
            k = torch.randn(B, H, start, D, generator=g)
            plain.update(k, -k, i)
        stacked = DynamicCache()
        for i in range(3):
            stacked.update(plain.layers[i].keys.clone(), plain.layers[i].values.clone(), i)
        kb, vb, T = kv_cache.reserve_layers(stacked, [0, 1, 2], M, (B, H, M, D), torch.float32, "cpu")
        for i in range(3):  # the tree block at the shared end, as a verify writes it
            k = torch.randn(B, H, M, D, generator=g)
            plain.update(k, -k, i)
            kb[i][:, :, T:T + M], vb[i][:, :, T:T + M] = k, -k
        kv_cache.extend_layers(stacked, T + M)
        if trial == 0:  # plain steps of rows of equal length: each row keeps its root, already in its slot
            lengths, paths, n_keep = torch.full((B,), start), torch.zeros(B, 1, dtype=torch.int64), torch.ones(B, dtype=torch.int64)
        else:
            lengths = torch.tensor([start - 2, start, start - 1])
            paths = torch.tensor([[0, 1, 3, -1], [0, 2, -1, -1], [0, 1, 2, 3]])
            n_keep = torch.tensor([int(torch.randint(1, 4, (), generator=g)), int(torch.randint(1, 3, (), generator=g)), 4])
        got = kv_cache.commit_rows(stacked, start, lengths, paths, n_keep)
        want = kv_cache.commit_rows(plain, start, lengths, paths, n_keep)
        assert got == want and stacked.get_seq_length() == plain.get_seq_length() == want
        for a, b in zip(stacked.layers, plain.layers):
            assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
        assert kv_cache._stacked(stacked) is not None  # still one buffer, its views held
