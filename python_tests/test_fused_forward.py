"""radar_ext::llama_forward, the fused torch-free verify forward (csrc/kernels/llama_forward.h), as the lean
verify path takes it: logits, features and the K/V it writes within float32 rounding of the HF forward, on
tiny random Llamas with odd head counts and GQA ratios, batched padded trees, tree sizes 1..64 and
prefixes 0..2k; the op against its float64 reference; its argument errors; the fallbacks (logged once)."""
import logging

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from radar_ext import kv_cache, lean_forward, ops, reference
from radar_ext.lean_forward import LeanLlamaForward, fused_reason
from radar_ext.verifier import prefill, tree_attention_mask, verify
from test_decoder import VOCAB, tiny_llama
from test_lean_forward import branching_tree, quantized_tiny_llama

needs_op = pytest.mark.skipif(not (ops.HAS_EXTENSION and hasattr(torch.ops.radar_ext, "llama_forward")),
                              reason="needs the radar_ext extension with llama_forward")

# float32 sums in another order than HF's: relative to the largest |value| of the output compared
# (measured ~2e-6 on these models; the default target's logits ~2e-5 absolute at |logit| ~ 30)
RTOL = 5e-5


def close(a, b, what):
    if b.numel() == 0:
        assert a.shape == b.shape, what
        return
    err = float((a - b).abs().max())
    scale = float(b.abs().max())
    assert err <= RTOL * max(scale, 1.0), f"{what}: max |diff| {err:.3g} at max |value| {scale:.3g}"


def llama(heads, kv_heads, head_dim, layers=2, hidden=None, inter=40, seed=0):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=hidden or heads * head_dim, intermediate_size=inter,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                      head_dim=head_dim, max_position_embeddings=4096, initializer_range=0.3,
                      bos_token_id=None, eos_token_id=None, pad_token_id=None)
    cfg._attn_implementation = "sdpa"
    return LlamaForCausalLM(cfg).eval()


def run_both(model, tree, P, layers, B=1):
    """verify() through the fused forward and through the HF forward on identical caches."""
    prompt = torch.randint(0, VOCAB, (B, P), generator=torch.Generator().manual_seed(P))
    outs = []
    for fused in (True, False):
        cache = kv_cache.new_target_cache(model)
        if P:
            prefill(model, cache, prompt)
        out = verify(model, cache, tree, P, layers, lean=fused, fused=fused)
        outs.append((out, cache))
    return outs


def check_against_hf(model, tree, P, layers, B=1):
    (fo, fc), (ho, hc) = run_both(model, tree, P, layers, B)
    valid = tree.tokens >= 0  # padded nodes of a shorter tree are never read
    close(fo.logits[valid], ho.logits[valid], "logits")
    if layers is not None:
        close(fo.features[valid], ho.features[valid], "features")
    for la, lb in zip(fc.layers, hc.layers):
        assert la.keys.shape == lb.keys.shape
        close(la.keys[:, :, :P], lb.keys[:, :, :P], "cached keys")
        close(la.keys[:, :, P:].transpose(1, 2)[valid], lb.keys[:, :, P:].transpose(1, 2)[valid], "new keys")
        close(la.values[:, :, P:].transpose(1, 2)[valid], lb.values[:, :, P:].transpose(1, 2)[valid], "new values")
    # greedy decisions: the same argmax wherever HF's top two logits are apart by more than the rounding
    top2 = ho.logits.topk(2, -1).values
    clear = valid & (top2[..., 0] - top2[..., 1] > 1e-3)
    assert torch.equal(fo.logits.argmax(-1)[clear], ho.logits.argmax(-1)[clear])
    return fo


@needs_op
@pytest.mark.parametrize("M", [1, 2, 3, 5, 8, 13, 16, 33, 64])
@pytest.mark.parametrize("P", [0, 7, 130])
def test_matches_hf_forward(M, P):
    model = tiny_llama("sdpa")
    L = model.config.num_hidden_layers
    fwd = LeanLlamaForward(model)
    tree = branching_tree(M, seed=M)
    check_against_hf(model, tree, P, [0, 1, L - 1, L, -1])
    cache = kv_cache.new_target_cache(model)
    if P:
        prefill(model, cache, torch.randint(0, VOCAB, (1, P), generator=torch.Generator().manual_seed(P)))
    fwd(tree.tokens.clamp(min=0), tree.depth + P, tree_attention_mask(tree, P, torch.float32), cache)
    assert fwd.last_fused and not fwd.last_native


@needs_op
@pytest.mark.parametrize("heads,kv_heads,head_dim", [(3, 1, 8), (5, 5, 6), (6, 3, 16), (7, 1, 4), (4, 2, 10)])
def test_odd_head_counts_and_gqa_ratios(heads, kv_heads, head_dim):
    model = llama(heads, kv_heads, head_dim, hidden=heads * head_dim + heads if head_dim == 6 else None)
    for M, P in ((1, 5), (6, 0), (11, 40)):
        check_against_hf(model, branching_tree(M, seed=M + heads), P, [0, 2])


@needs_op
def test_long_prefix():
    """A 2k-token prefix (RAG and summary prompts): attention over the whole cache, the scores buffer at T ~ 2k."""
    model = llama(4, 2, 8, layers=2)
    for M in (1, 9):
        check_against_hf(model, branching_tree(M, seed=M), 2048, None)


@needs_op
@pytest.mark.parametrize("B,M", [(2, 7), (3, 4)])
def test_batched_padded_trees(B, M):
    """Rows of a batch (the last tree padded) give their single-row results: per-row masks and positions."""
    model = tiny_llama("sdpa")
    tree = branching_tree(M, seed=B * M, B=B)
    check_against_hf(model, tree, 9, [1, 3], B=B)


@needs_op
def test_quantized_weights_match_hf():
    """Every linear on exact Q4_1 / Q8_0 blocks (as the default target's): the same values, read packed."""
    model = quantized_tiny_llama()
    fw = lean_forward._fused_weights(model)
    assert sum(p is not None and p.dtype == torch.uint8 for p in fw.params) > 0  # Q4_1 blocks in use
    assert sum(p is not None and p.dtype == torch.int8 for p in fw.params) > 0   # Q8_0 blocks in use
    for M, P in ((1, 3), (9, 20)):
        check_against_hf(model, branching_tree(M, seed=M), P, [0, 3])


@needs_op
def test_weights_rebuilt_after_a_change():
    model = tiny_llama("sdpa")
    tree = branching_tree(4, seed=1)
    check_against_hf(model, tree, 5, None)
    first = lean_forward._fused_weights(model)
    assert lean_forward._fused_weights(model) is first
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight.mul_(1.5)        # in place: version bump
    assert lean_forward._fused_weights(model) is not first
    check_against_hf(model, tree, 5, None)
    second = lean_forward._fused_weights(model)
    model.model.layers[0].self_attn.o_proj = torch.nn.Linear(32, 32, bias=False)  # a replaced module
    assert lean_forward._fused_weights(model) is not second
    check_against_hf(model, tree, 5, None)


@needs_op
def test_op_matches_float64_reference():
    model = quantized_tiny_llama()
    fw = lean_forward._fused_weights(model)
    g = torch.Generator().manual_seed(3)
    B, M, P, D = 2, 5, 7, 8
    tokens = torch.randint(0, VOCAB, (B, M), generator=g)
    pos = torch.arange(P, P + M).expand(B, M)
    cos, sin = model.model.rotary_emb(torch.zeros(1), pos)
    mask = torch.zeros(B, 1, M, P + M + 2)
    mask[..., P:P + M] = torch.triu(torch.full((M, M), torch.finfo(torch.float32).min), 1)
    mask[1, :, :, :2] = torch.finfo(torch.float32).min  # row 1: two left-padding positions
    bufs = [[torch.randn(B, 2, P + M + 3, D, generator=g) for _ in range(3)] for _ in range(2)]
    ref_bufs = [[t.clone() for t in b] for b in bufs]
    args = (fw.params,)
    got = ops.llama_forward(tokens, cos, sin, mask, *args, bufs[0], bufs[1], P, [0, 2, 3, 4], fw.eps, fw.scaling, D)
    want = reference.llama_forward(tokens, cos, sin, mask, *args, ref_bufs[0], ref_bufs[1], P, [0, 2, 3, 4], fw.eps,
                                   fw.scaling, D)
    assert len(got) == len(want) == 5
    assert torch.equal(got[1], model.model.embed_tokens.weight[tokens])  # slot 0: the embeddings, exactly
    for a, b in zip(got, want):
        close(a, b, "op vs reference")
    for a, b in zip(bufs[0] + bufs[1], ref_bufs[0] + ref_bufs[1]):
        close(a, b, "cache")
        assert torch.equal(a[:, :, :P], b[:, :, :P]) and torch.equal(a[:, :, P + M:], b[:, :, P + M:])  # untouched
    assert not torch.equal(got[3], got[4])  # slot 3: before the final norm, slot 4: after it


@needs_op
def test_op_checks_its_arguments():
    model = tiny_llama("sdpa")
    fw = lean_forward._fused_weights(model)
    B, M, P, D = 1, 2, 3, 8
    tokens = torch.zeros(B, M, dtype=torch.int64)
    cs = torch.zeros(B, M, D)
    mask = torch.zeros(B, 1, M, P + M)
    buf = torch.zeros(B, 2, P + M, D)
    bufs = [buf] * 3
    op = torch.ops.radar_ext.llama_forward
    args = lambda **kw: dict(dict(tokens=tokens, cos=cs, sin=cs, mask=mask, params=fw.params, k_bufs=bufs,  # noqa: E731
                                  v_bufs=bufs, past_len=P, capture=[], eps=1e-6, scaling=0.35, head_dim=D), **kw)
    cases = [
        (dict(tokens=tokens.int()), "tokens must be int64 \\[B, M\\]"),
        (dict(tokens=tokens + VOCAB), f"tokens\\[0, 0\\] = {VOCAB} must be in \\[0, {VOCAB}\\)"),
        (dict(params=fw.params[:-1]), "params must hold 6 \\+ 30 entries per layer"),
        (dict(head_dim=7), "head_dim must be even"),
        (dict(cos=cs[:, :1]), "cos and sin must be float32 \\[B, M, D\\]"),
        (dict(mask=mask[..., :-1]), "mask must be float32 \\[B, 1, M, >= past_len \\+ M\\]"),
        (dict(k_bufs=[buf[:, :, :-1]] * 3), "k_bufs\\[0\\] / v_bufs\\[0\\] must be contiguous float32"),
        (dict(capture=[5]), "capture must hold slots in \\[0, n_layers \\+ 1\\] = \\[0, 4\\]"),
        (dict(params=fw.params[:8] + [None] + fw.params[9:]), "params\\[8\\] \\(q_proj of layer 0\\) must be"),
        (dict(params=fw.params[:6] + [torch.zeros(5)] + fw.params[7:]),
         "params\\[6\\] \\(input_layernorm of layer 0\\) must be a contiguous float32 \\[32\\]"),
        (dict(params=fw.params[:8] + [fw.params[8][:, :-1]] + fw.params[9:]),
         "params\\[8\\] \\(q_proj of layer 0\\) must be a contiguous 2-D CPU tensor|must be float32, bfloat16"),
    ]
    for kw, msg in cases:
        with pytest.raises(ValueError, match=msg):
            op(**args(**kw))
    op(**args())  # and the unchanged arguments run


@needs_op
def test_fallbacks_are_logged_once(caplog):
    bf16 = tiny_llama("sdpa").to(torch.bfloat16)
    assert "bfloat16" in fused_reason(bf16)
    tree = branching_tree(3, seed=0)
    lean_forward._LOGGED.clear()
    with caplog.at_level(logging.INFO, logger="radar_ext.lean_forward"):
        for _ in range(2):
            cache = kv_cache.new_target_cache(bf16)
            prefill(bf16, cache, torch.randint(0, VOCAB, (1, 4), generator=torch.Generator().manual_seed(0)))
            fwd = LeanLlamaForward(bf16)
            fwd(tree.tokens.clamp(min=0), tree.depth + 4, tree_attention_mask(tree, 4, torch.bfloat16), cache)
            assert not fwd.last_fused
    hits = [r for r in caplog.records if "fused forward not used" in r.getMessage()]
    assert len(hits) == 1 and "bfloat16" in hits[0].getMessage()
    assert fused_reason(tiny_llama("sdpa")) is None


@needs_op
def test_greedy_decoding_matches_hf_generate():
    """RadarDecoder verifying through the fused forward emits HF's own greedy tokens."""
    from radar_ext import NgramDrafter, RadarDecoder, StaticPolicy
    from test_decoder import prompts, reference as hf_greedy
    model = tiny_llama("sdpa")
    dec = RadarDecoder(model, NgramDrafter(), StaticPolicy(2), verify_budget=6)
    for ids in prompts():
        assert torch.equal(dec.generate(ids, max_new_tokens=24), hf_greedy(model, ids, 24))


def test_pinned_checks_once_and_a_changed_weight_is_seen_after_the_pin():
    model = quantized_tiny_llama()
    fwd = lean_forward.lean_forward_for(model, fused=True)
    assert fwd is not None and lean_forward.lean_forward_for(model, fused=True) is not fwd  # unpinned: built per call
    with lean_forward.pinned(model, native=True, fused=True) as pinned_fwd:
        assert lean_forward.lean_forward_for(model, fused=True) is pinned_fwd
        assert lean_forward.lean_forward_for(model, fused=False) is not pinned_fwd  # other flags: checked as usual
        with lean_forward.pinned(model, native=True, fused=False) as inner:
            assert inner is pinned_fwd  # nested: the outer pin holds
        weights = lean_forward._fused_weights(model)
        tree = branching_tree(4, seed=0)
        cache = kv_cache.new_target_cache(model)
        prefill(model, cache, torch.tensor([[1, 2, 3]]))
        verify(model, cache, tree, 3, fused=True)
        assert lean_forward.last_fused(model)
    assert not lean_forward.last_fused(model)  # no pin, nothing to report
    with torch.no_grad():
        model.lm_head.weight.add_(0.5)  # a weight changed between calls: the next pin rebuilds the fused copy
    with lean_forward.pinned(model, native=True, fused=True):
        assert lean_forward._fused_weights(model) is not weights
    with torch.no_grad():
        model.train()
    with lean_forward.pinned(model, native=True, fused=True) as fwd:
        assert fwd is None and lean_forward.lean_forward_for(model, fused=True) is None  # no longer qualifies


@needs_op
@pytest.mark.parametrize("P", [1, 7, 64])
def test_fused_prefill_matches_hf(P):
    """prefill(fused=True): the prompt as one causal fused forward, last-row logits only; logits, features and
    the cache within float32 rounding of HF's prefill. A prompt longer than FUSED_PREFILL_MAX, a batch or a
    cache already holding tokens take HF's forward (the same bits as fused=False)."""
    from radar_ext import verifier
    model = llama(4, 2, 8, layers=3, hidden=32)
    prompt = torch.randint(0, VOCAB, (1, P), generator=torch.Generator().manual_seed(P))
    layers = [0, 2]
    outs = []
    for fused in (True, False):
        cache = kv_cache.new_target_cache(model)
        outs.append((prefill(model, cache, prompt, layers, fused=fused), cache))
    (fo, fc), (ho, hc) = outs
    assert fo.logits.shape == ho.logits.shape == (1, 1, VOCAB)
    close(fo.logits, ho.logits, "logits")
    close(fo.features, ho.features, "features")
    assert kv_cache.cache_length(fc) == kv_cache.cache_length(hc) == P
    for a, b in zip(fc.layers, hc.layers):
        close(a.keys[..., :P, :], b.keys[..., :P, :], "keys")
        close(a.values[..., :P, :], b.values[..., :P, :], "values")
    long = torch.randint(0, VOCAB, (1, verifier.FUSED_PREFILL_MAX + 1), generator=torch.Generator().manual_seed(1))
    got = [prefill(model, kv_cache.new_target_cache(model), long, layers, fused=f).logits for f in (True, False)]
    assert torch.equal(got[0], got[1])
    two = prompt.expand(2, P).contiguous()
    got = [prefill(model, kv_cache.new_target_cache(model), two, layers, fused=f).logits for f in (True, False)]
    assert torch.equal(got[0], got[1])


@needs_op
@pytest.mark.parametrize("pads", [(0, 0), (3, 0, 5), (0, 6, 1, 2)])
def test_fused_prefill_rows_matches_hf(pads):
    """prefill_rows(fused=True): B left-padded prompts as one fused forward; every row's last logits, its
    features and cache entries at its real positions within float32 rounding of HF's batched prefill (the
    padding slots are never read later and are not compared). Too long a prompt takes HF's forward."""
    from radar_ext import verifier
    model = llama(4, 2, 8, layers=3, hidden=32)
    P = 9
    ids = torch.randint(0, VOCAB, (len(pads), P), generator=torch.Generator().manual_seed(len(pads)))
    pads_t = torch.tensor(pads, dtype=torch.int64)
    layers = [0, 2]
    outs = []
    for fused in (True, False):
        cache = kv_cache.new_target_cache(model)
        outs.append((verifier.prefill_rows(model, cache, ids, pads_t, layers, fused=fused), cache))
    (fo, fc), (ho, hc) = outs
    assert fo.logits.shape == ho.logits.shape == (len(pads), 1, VOCAB)
    close(fo.logits, ho.logits, "logits")
    assert kv_cache.cache_length(fc) == kv_cache.cache_length(hc) == P
    for b, p in enumerate(pads):
        close(fo.features[b, p:], ho.features[b, p:], f"features row {b}")
        for a, h in zip(fc.layers, hc.layers):
            close(a.keys[b, :, p:P], h.keys[b, :, p:P], f"keys row {b}")
            close(a.values[b, :, p:P], h.values[b, :, p:P], f"values row {b}")
        # the row alone, unpadded, through the one-prompt fused prefill: the same last logits and features
        alone = prefill(model, kv_cache.new_target_cache(model), ids[b:b + 1, p:], layers, fused=True)
        close(alone.logits[0], fo.logits[b], f"row {b} alone")
        close(alone.features[0], fo.features[b, p:], f"row {b} alone, features")
    long = torch.randint(0, VOCAB, (2, verifier.FUSED_PREFILL_MAX + 1), generator=torch.Generator().manual_seed(1))
    two = torch.zeros(2, dtype=torch.int64)
    got = [verifier.prefill_rows(model, kv_cache.new_target_cache(model), long, two, layers, fused=f).logits
           for f in (True, False)]
    assert torch.equal(got[0], got[1])


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("pads", [(0, 0), (3, 0, 5), (0, 6, 1, 2)])
def test_prefill_each_row_is_each_rows_own_prefill(pads, fused):
    """prefill_each_row (the batched decoder's prefill): every row's last logits, features and cache entries are
    bit for bit those of that row's own single-prompt prefill (fused or HF's), at its slots of the dense
    [B, Hkv, P, D] layout; the padding slots and features hold zeros; within float32 rounding of HF's batched
    prefill (prefill_rows) at the real positions. A cache already holding tokens is refused by name."""
    if fused and not (ops.HAS_EXTENSION and hasattr(torch.ops.radar_ext, "llama_forward")):
        pytest.skip("needs the radar_ext extension with llama_forward")
    from radar_ext import verifier
    model = llama(4, 2, 8, layers=3, hidden=32)
    P = 9
    ids = torch.randint(0, VOCAB, (len(pads), P), generator=torch.Generator().manual_seed(len(pads)))
    layers = [0, 2]
    cache = kv_cache.new_target_cache(model)
    got = verifier.prefill_each_row(model, cache, ids, list(pads), layers, fused=fused)
    hc = kv_cache.new_target_cache(model)
    hf = verifier.prefill_rows(model, hc, ids, torch.tensor(pads), layers)
    assert got.logits.shape == (len(pads), 1, VOCAB) and got.features.shape == hf.features.shape
    assert kv_cache.cache_length(cache) == P
    for b, p in enumerate(pads):
        own_cache = kv_cache.new_target_cache(model)
        own = prefill(model, own_cache, ids[b:b + 1, p:], layers, fused=fused)
        assert torch.equal(got.logits[b], own.logits[0, -1:]) and torch.equal(got.features[b, p:], own.features[0])
        assert not got.features[b, :p].any()
        close(got.logits[b], hf.logits[b], f"row {b} vs the batched prefill")
        for a, o, h in zip(cache.layers, own_cache.layers, hc.layers):
            assert torch.equal(a.keys[b, :, p:], o.keys[0]) and torch.equal(a.values[b, :, p:], o.values[0])
            assert not a.keys[b, :, :p].any() and not a.values[b, :, :p].any()
            close(a.keys[b, :, p:], h.keys[b, :, p:], f"keys row {b} vs the batched prefill")
    with pytest.raises(ValueError, match="empty cache"):
        verifier.prefill_each_row(model, cache, ids, list(pads), layers, fused=fused)


@needs_op
def test_rotary_table_is_the_modules_own_values(monkeypatch):
    """The fused forward reads a static rotary ('default') from a table the module made over arange(n): the
    same bits as the module's own call at any positions, the table growing past its length; a dynamic rotary
    is asked every call."""
    model = llama(4, 2, 8)
    fwd = LeanLlamaForward(model)
    x = torch.zeros(1)
    rotary = model.model.rotary_emb
    for pos in (torch.tensor([[0, 5, 5, 6]]), torch.randint(0, 1000, (3, 7)), torch.tensor([[1500, 2047]])):
        got, want = fwd._rotary(x, pos), rotary(x, pos)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert lean_forward._ROPE_TABLES[rotary][0].shape[0] >= 2048
    calls = []
    monkeypatch.setattr(rotary, "rope_type", "dynamic")
    monkeypatch.setattr(type(rotary), "__call__", lambda self, *a: calls.append(1) or torch.nn.Module.__call__(self, *a))
    fwd._rotary(x, torch.tensor([[3]]))
    assert calls == [1]


@needs_op
def test_verify_keeps_every_layer_in_one_buffer():
    """Fused verifies write the new K/V straight into the layers' slices of one stacked buffer (reserve_layers):
    a verify, a commit and the next verify leave every layer a view of it, the cache equal to the HF forward's
    over the same tokens."""
    model = llama(4, 2, 8, layers=3)
    tree = branching_tree(6, 0)
    prompt = torch.randint(0, VOCAB, (1, 9), generator=torch.Generator().manual_seed(1))
    caches = []
    for fused in (True, False):
        cache = kv_cache.new_target_cache(model)
        prefill(model, cache, prompt)
        for P, keep in ((9, [0, 1]), (11, [0, 1, 2, 3])):
            verify(model, cache, tree, P, None, lean=fused, fused=fused)
            kv_cache.commit_path(cache, P, torch.tensor(keep))
        caches.append(cache)
    st = caches[0].__dict__[kv_cache._STACK]
    assert st.holds(caches[0]) and st.length == 15
    for layer, kf in zip(caches[0].layers, st.k_full):
        assert layer.keys.data_ptr() == kf.data_ptr()
    for a, b in zip(*[c.layers for c in caches]):
        close(a.keys, b.keys, "keys")
        close(a.values, b.values, "values")
