"""radar_ext.head_forward: one EAGLE-3 head call as one radar_ext::eagle_forward call, against EagleHead's own
forward (logits, the output hidden state and every cache entry, call 1 causal and later tree-masked calls,
one- and three-layer heads, GQA 1:1 and 2:1), the Q8_0 weight option, and the drafter using it while its
verified output stays the target's greedy one."""
import pytest
import torch

from radar_ext import EagleDrafter, RadarDecoder, StaticPolicy, ops
from radar_ext.fast_linear import fast_linear_available
from radar_ext.eagle_head import EagleConfig, EagleHead, HeadCache
from radar_ext.head_forward import HeadForward
from radar_ext.quant import q8_0_rounded

from test_decoder import prompts, reference, tiny_llama

pytestmark = pytest.mark.skipif(not (ops.HAS_EXTENSION and hasattr(torch.ops.radar_ext, "eagle_forward")
                                     and fast_linear_available()),
                                reason="eagle_forward needs the extension and an AVX-512 CPU")


@pytest.fixture(scope="module")
def target():
    return tiny_llama()


def make_head(target, layers=1, kv=2, seed=3):
    cfg = EagleConfig.for_target(target.config, num_hidden_layers=layers, num_key_value_heads=kv,
                                 extra_intermediate_size=40)
    return EagleHead.init_random(cfg, seed=seed)


def caches_of(head, cache):
    return [cache] + [cache.layer(i) for i, _ in head.plain_layers()]


@pytest.mark.parametrize("layers,kv", [(1, 2), (1, 4), (3, 2)])
def test_matches_eagle_head(target, layers, kv):
    head = make_head(target, layers, kv)
    embed = target.get_input_embeddings()
    fused = HeadForward(head, embed)
    g = torch.Generator().manual_seed(0)
    P, W, F = 13, 3, 3 * target.config.hidden_size
    feats = torch.randn(1, P, F, generator=g)
    toks = torch.randint(0, 61, (1, P), generator=g)
    ref, got = HeadCache(), HeadCache()
    with torch.no_grad():
        # call 1: causal over the prompt's pairs, logits of the last row only
        o_ref = head(feats, embed(toks), torch.arange(P).view(1, P), ref)
        l_ref = head.logits(o_ref[:, -1:])
        l_got, o_got = fused(toks, feats, torch.arange(P), got, None, last_only=True)
        assert l_got.shape == (1, 1, 61) and o_got.shape == o_ref.shape
        torch.testing.assert_close(o_got, o_ref, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(l_got, l_ref, rtol=1e-4, atol=1e-4)
        # two tree calls: W beams at one position each, seeing the prompt, their ancestors and themselves
        hidden = o_ref[:, -1:].expand(1, W, -1)
        vis = torch.zeros(1, W, 0, dtype=torch.bool)
        for k in range(2):
            vis = torch.cat([vis, torch.eye(W, dtype=torch.bool).unsqueeze(0)], 2)
            if k == 1:
                vis[0, 1, :] = True  # one beam sees its siblings' entries too
            mask = torch.zeros(1, 1, W, P + vis.shape[2])
            mask[:, 0, :, P:].masked_fill_(~vis, torch.finfo(torch.float32).min)
            beams = torch.randint(0, 61, (1, W), generator=g)
            o_ref = head(hidden, embed(beams), torch.full((1, W), P + k), ref, attn_mask=mask)
            l_got, o_got = fused(beams, hidden.contiguous(), torch.full((W,), P + k), got, mask)
            torch.testing.assert_close(o_got, o_ref, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(l_got, head.logits(o_ref), rtol=1e-4, atol=1e-4)
            hidden = o_ref
        for a, b in zip(caches_of(head, ref), caches_of(head, got)):
            assert a.length == b.length == P + 2 * W
            torch.testing.assert_close(b.k[:, :, :b.length], a.k[:, :, :a.length], rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(b.v[:, :, :b.length], a.v[:, :, :a.length], rtol=1e-4, atol=1e-4)


def test_q8_0_weights_close(target):
    """Q8_0 copies of the head's weights: a draft differs from the float head's by rounding, not more."""
    head = make_head(target)
    embed = target.get_input_embeddings()
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(1, 5, 3 * target.config.hidden_size, generator=g)
    toks = torch.randint(0, 61, (1, 5), generator=g)
    exact, _ = HeadForward(head, embed)(toks, feats, torch.arange(5), HeadCache(), None)
    q8, _ = HeadForward(head, embed, "q8_0")(toks, feats, torch.arange(5), HeadCache(), None)
    err = (q8 - exact).abs().max() / exact.abs().max()
    assert 0 < err < 0.05


needs_vnni = pytest.mark.skipif(not ops.vnni_linear_supported(), reason="no AVX512-VNNI on this CPU")


@needs_vnni
def test_q8_vnni_weights_close(target):
    """Draft-grade integer products (Q8_0 weights, int8 activations per block): the linears whose sizes fit take
    them, and a draft differs from the float head's by rounding, not more."""
    head = make_head(target)
    embed = target.get_input_embeddings()
    fused = HeadForward(head, embed, "q8_vnni")
    packed = [p for p in fused.params if p is not None and p.dtype == torch.uint8]
    assert packed and all(p.dim() == 3 and p.shape[2] == 512 for p in packed)
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(1, 5, 3 * target.config.hidden_size, generator=g)
    toks = torch.randint(0, 61, (1, 5), generator=g)
    exact, h_exact = HeadForward(head, embed)(toks, feats, torch.arange(5), HeadCache(), None)
    q8, h_q8 = fused(toks, feats, torch.arange(5), HeadCache(), None)
    for a, b in ((q8, exact), (h_q8, h_exact)):
        err = (a - b).abs().max() / b.abs().max()
        assert 0 < err < 0.05


@needs_vnni
def test_target_forward_refuses_draft_grade_weights():
    """Draft-grade products round the activations: the target's exact forward does not take them."""
    from radar_ext import lean_forward
    from radar_ext.quant import q8_draft_pack
    model = tiny_llama()
    params = list(lean_forward._fused_weights(model).params)
    i = next(i for i in range(6, len(params), 4) if params[i] is not None and params[i].dim() == 2
             and params[i].dtype == torch.float32 and params[i].shape[0] % 16 == 0 and params[i].shape[1] % 32 == 0)
    q, d = q8_draft_pack(params[i])
    params[i:i + 3] = [q, d, None]
    B, M, D = 1, 2, model.config.hidden_size // model.config.num_attention_heads
    n_kv = model.config.num_key_value_heads
    bufs = [[torch.zeros(B, n_kv, 8, D) for _ in range(model.config.num_hidden_layers)] for _ in range(2)]
    cos, sin = model.model.rotary_emb(torch.zeros(1), torch.arange(M).view(1, M))
    with pytest.raises(ValueError, match="draft-grade Q8_0"):
        ops.llama_forward(torch.zeros(B, M, dtype=torch.int64), cos, sin, torch.zeros(B, 1, M, M), params, bufs[0],
                          bufs[1], 0, [], 1e-5, D ** -0.5, D)


def test_q8_0_rounded():
    g = torch.Generator().manual_seed(2)
    w = torch.randn(6, 64, generator=g)
    w[2, :32] = 0.0                                    # an all-zero block: d = 0, q = 0
    b = q8_0_rounded(w)
    assert b.kind == "Q8_0" and b.q.dtype == torch.int8 and b.d.dtype == torch.float16
    back = b.dequantize()
    assert torch.equal(back[2, :32], w[2, :32])
    step = b.d.float().repeat_interleave(32, 1)
    assert bool(((back - w).abs() <= 0.5 * step * 1.01 + 1e-7).all())
    with pytest.raises(ValueError, match="K divisible by 32"):
        q8_0_rounded(torch.randn(4, 40))


def test_bad_arguments(target):
    head = make_head(target)
    embed = target.get_input_embeddings()
    with pytest.raises(ValueError, match="weights must be one of"):
        HeadForward(head, embed, "q4")
    with pytest.raises(ValueError, match="head_weights must be 'auto' or one of"):
        EagleDrafter(head, target, head_weights="int4")
    with pytest.raises(ValueError, match="float32 CPU head"):
        HeadForward(make_head(target).half(), embed)
    fused = HeadForward(head, embed)
    with pytest.raises(ValueError, match=r"hidden must be float32 \[B, M, 96\]"):
        fused(torch.zeros(1, 2, dtype=torch.int64), torch.zeros(1, 3, 96), torch.arange(2), HeadCache(), None)
    with pytest.raises(ValueError, match=r"tokens\[0, 1\] = 99 must be in \[0, 61\)"):
        fused(torch.tensor([[1, 99]]), torch.zeros(1, 2, 96), torch.arange(2), HeadCache(), None)


@pytest.mark.parametrize("weights", ["f16", "q8_0", "q8_vnni", "auto"])
def test_drafter_exact_through_fused_calls(target, weights):
    """The drafter takes the fused call for every draft call (its reason is None), keeps every layer's cache at
    the committed length, and the decoded text is the target's greedy text."""
    if weights == "q8_vnni" and not ops.vnni_linear_supported():
        pytest.skip("no AVX512-VNNI on this CPU")
    head = make_head(target, layers=2)
    drafter = EagleDrafter(head, target, head_weights=weights)
    assert drafter.head_weights == ("q8_vnni" if ops.vnni_linear_supported() else "f16") if weights == "auto" \
        else drafter.head_weights == weights
    calls = []
    real = HeadForward.__call__

    def counting(self, *a, **k):
        calls.append(a[0].shape[1])
        return real(self, *a, **k)

    dec = RadarDecoder(target, drafter, StaticPolicy(3), tree_topk=3, verify_budget=7)
    HeadForward.__call__ = counting
    try:
        for ids, n in zip(prompts(), (1, 9, 30)):
            out = dec.generate(ids, max_new_tokens=n)
            assert torch.equal(out, reference(target, ids, n)), n
            assert drafter.cache.layer(1).length == drafter.cache.length
    finally:
        HeadForward.__call__ = real
    assert drafter.fused_reason is None and len(calls) >= 10
    off = EagleDrafter(head, target, fused=False)
    dec_off = RadarDecoder(target, off, StaticPolicy(3), tree_topk=3, verify_budget=7)
    ids = prompts()[2]
    assert torch.equal(dec_off.generate(ids, max_new_tokens=20), reference(target, ids, 20))
    assert off._fused is None
