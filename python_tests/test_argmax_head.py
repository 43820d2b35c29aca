"""The greedy LM head (csrc/kernels/argmax_head.h, radar_ext::llama_forward_argmax): the argmax of the fused
forward's logits without all of them, on the VNNI path and on its scalar reference."""
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from radar_ext import kv_cache, lean_forward, ops
from radar_ext.decoder import RadarDecoder
from radar_ext.quant import argmax_pack
from radar_ext.tree import make_tree
from radar_ext.verifier import prefill, verify
from test_quant import gguf_blocks

needs_op = pytest.mark.skipif(not (ops.HAS_EXTENSION and hasattr(torch.ops.radar_ext, "llama_forward_argmax")),
                              reason="needs the radar_ext extension with llama_forward_argmax")

VOCAB = 1000  # not a multiple of 16: the last group is padded


def q8_head_llama(vocab=VOCAB, hidden=64, seed=0):
    """A tiny Llama whose LM head holds an exact GGUF Q8_0 dequantization (as the default target's): the fused
    forward reads it as blocks, which the greedy head needs."""
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      initializer_range=0.3, bos_token_id=None, eos_token_id=None, pad_token_id=None,
                      tie_word_embeddings=False)
    cfg._attn_implementation = "sdpa"
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        model.lm_head.weight.copy_(gguf_blocks(vocab, hidden, "Q8_0", seed=seed + 1).dequantize())
    return model


def chain_tree(tokens: torch.Tensor):
    """[B, M] tokens as B chains."""
    B, M = tokens.shape
    parents = torch.arange(-1, M - 1).expand(B, M).contiguous()
    return make_tree(tokens, parents, torch.full((B,), M))


@pytest.fixture(params=["vnni", "scalar"])
def head_path(request, monkeypatch):
    """Both paths of the bounds: AVX512-VNNI where the CPU has it, and the scalar reference."""
    if request.param == "vnni" and not ops.argmax_head_fast():
        pytest.skip("this CPU has no AVX512-VNNI")
    monkeypatch.setattr(lean_forward, "greedy_head_usable", lambda rows: True)
    was = ops._C.set_argmax_vnni(request.param == "vnni")
    yield request.param
    ops._C.set_argmax_vnni(was)


def verify_both(model, tree, P, B=1, seed=0):
    """verify() through the fused forward with logits and with the greedy head, on identical caches."""
    prompt = torch.randint(0, model.config.vocab_size, (B, P), generator=torch.Generator().manual_seed(seed))
    outs = []
    for greedy in (False, True):
        cache = kv_cache.new_target_cache(model)
        if P:
            prefill(model, cache, prompt, fused=True)
        outs.append((verify(model, cache, tree, P, [1], fused=True, greedy=greedy), cache))
    return outs


@needs_op
@pytest.mark.parametrize("M,P,B", [(1, 5, 1), (3, 0, 1), (8, 40, 1), (17, 100, 1), (24, 7, 1), (5, 30, 3)])
def test_argmax_equals_the_logits_argmax(head_path, M, P, B):
    """Every tree node's token is the argmax of the logits the fused forward computes, the features and the
    cache the same as with the logits (sizes across the tiles of the exact products, batches)."""
    model = q8_head_llama()
    tokens = torch.randint(0, VOCAB, (B, M), generator=torch.Generator().manual_seed(M + P))
    (lo, lc), (go, gc) = verify_both(model, chain_tree(tokens), P, B)
    assert go.logits is None and go.argmax is not None
    assert torch.equal(go.argmax, lo.logits.argmax(-1))
    assert torch.equal(go.features, lo.features)
    for a, b in zip(lc.layers, gc.layers):
        n = kv_cache.cache_length(lc)
        assert torch.equal(a.keys[..., :n, :], b.keys[..., :n, :])


@needs_op
def test_op_counts_its_candidates_and_ties_go_to_the_first_index(head_path):
    """Every LM head row alike: every logit is equal, all are candidates, and the first index wins (torch.argmax)."""
    model = q8_head_llama()
    with torch.no_grad():
        model.lm_head.weight.copy_(model.lm_head.weight[7].expand_as(model.lm_head.weight))
    fw = lean_forward._fused_weights(model)
    got = run_op(model, fw, torch.tensor([[3, 9, 4]]))
    assert got[0].tolist() == [[0, 0, 0]]
    assert got[1].tolist() == [[VOCAB] * 3]


@needs_op
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_near_ties_are_resolved_exactly(head_path, seed):
    """Every LM head row is one row plus -1 / 0 / +1 at each input: logits a hair apart, whose order the int8 copy
    of the hidden state gets wrong now and then (without the bounds, taking the approximations' argmax, this
    fails); the greedy head still returns the logits' argmax, from many candidates."""
    model = q8_head_llama(seed=seed)
    blocks = gguf_blocks(VOCAB, 64, "Q8_0", seed=seed + 1)
    g = torch.Generator().manual_seed(seed)
    q = blocks.q[:1].repeat(VOCAB, 1).to(torch.int64)
    inner = torch.tensor([i for i in range(64) if i % 32])  # each block's element 0 keeps its +-127 (GGUF's scale)
    q[:, inner] = q[:, inner].clamp(-126, 126)
    q[:, inner] += torch.randint(-1, 2, (VOCAB, inner.numel()), generator=g)
    d = blocks.d[:1].repeat(VOCAB, 1)
    with torch.no_grad():
        model.lm_head.weight.copy_((q.float().view(VOCAB, 2, 32) * d.view(VOCAB, 2, 1)).view(VOCAB, 64))
    tokens = torch.randint(0, VOCAB, (1, 12), generator=g)
    fw = lean_forward._fused_weights(model)
    assert fw.argmax_head() is not None  # the head is read as Q8_0 blocks
    (lo, _), (go, _) = verify_both(model, chain_tree(tokens), 5, seed=seed)
    assert torch.equal(go.argmax, lo.logits.argmax(-1))
    assert int(run_op(model, fw, tokens)[1].min()) > 1  # the bound kept rivals in


@needs_op
def test_non_finite_rows_take_every_logit(head_path):
    """A hidden state with NaN (a broken model) gives the logits' argmax too: that row's logits are all computed."""
    model = q8_head_llama()
    tokens = torch.tensor([[3, 9, 4, 11]])
    with torch.no_grad():
        model.model.norm.weight[5] = float("nan")
    (lo, _), (go, _) = verify_both(model, chain_tree(tokens), 6)
    assert torch.equal(go.argmax, lo.logits.argmax(-1))


def run_op(model, fw, tokens, last_only=False):
    """radar_ext::llama_forward_argmax on an empty cache, as the fused forward calls it."""
    B, M = tokens.shape
    cfg = model.config
    D = cfg.hidden_size // cfg.num_attention_heads
    k = [torch.zeros(B, cfg.num_key_value_heads, M, D) for _ in range(cfg.num_hidden_layers)]
    v = [torch.zeros_like(t) for t in k]
    pos = torch.arange(M).expand(B, M)
    cos, sin = model.model.rotary_emb(torch.zeros(1, dtype=torch.float32), pos)
    mask = torch.zeros(B, 1, M, M).masked_fill_(torch.ones(M, M, dtype=torch.bool).triu(1), torch.finfo(torch.float32).min)
    return ops.llama_forward_argmax(tokens, cos.contiguous(), sin.contiguous(), mask, fw.params, k, v, 0, [],
                                    float(cfg.rms_norm_eps), float(D ** -0.5), D, *fw.argmax_head(),
                                    last_only=last_only)


@needs_op
def test_last_only_gives_each_rows_last_token(head_path):
    model = q8_head_llama()
    fw = lean_forward._fused_weights(model)
    tokens = torch.randint(0, VOCAB, (2, 6), generator=torch.Generator().manual_seed(3))
    full = run_op(model, fw, tokens)
    last = run_op(model, fw, tokens, last_only=True)
    assert torch.equal(last[0], full[0][:, -1:])


@needs_op
def test_op_checks_its_arguments():
    model = q8_head_llama()
    fw = lean_forward._fused_weights(model)
    q, d, a = fw.argmax_head()
    tokens = torch.tensor([[1, 2]])
    with pytest.raises(ValueError, match="argmax_q must be contiguous uint8"):
        run_op_with(model, fw, tokens, (q[:-1], d, a))
    with pytest.raises(ValueError, match="argmax_d must be contiguous float16"):
        run_op_with(model, fw, tokens, (q, d.float(), a))
    with pytest.raises(ValueError, match="argmax_a must be contiguous float32"):
        run_op_with(model, fw, tokens, (q, d, a.half()))
    float_head = q8_head_llama()
    with torch.no_grad():
        float_head.lm_head.weight.add_(1e-3)  # no longer Q8_0 values: the head stays float32
    fw2 = lean_forward._fused_weights(float_head)
    assert fw2.argmax_head() is None
    with pytest.raises(ValueError, match="must be Q8_0 blocks"):
        run_op_with(float_head, fw2, tokens, (q, d, a))


def run_op_with(model, fw, tokens, head):
    class Swap:
        params = fw.params

        @staticmethod
        def argmax_head():
            return head
    return run_op(model, Swap, tokens)


def test_pack_layout_and_bounds():
    """argmax_pack: byte (g, b, t, lane, u) = q[16 g + lane, 32 b + 4 t + u] + 128; d per lane; a >= |d| sum |q|
    (rounded up); padded rows q = 0 (byte 128), d = 0, a = +inf."""
    blocks = gguf_blocks(37, 64, "Q8_0", seed=4)
    d16 = blocks.d.half()
    qp, dp, ap = argmax_pack(blocks.q, d16)
    assert qp.shape == (3, 2, 8, 16, 4) and dp.shape == (3, 2, 16) and ap.shape == (3, 2, 16)
    for n, k in ((0, 0), (5, 37), (36, 63), (17, 32)):
        g, lane, b, t, u = n // 16, n % 16, k // 32, (k % 32) // 4, k % 4
        assert int(qp[g, b, t, lane, u]) == int(blocks.q[n, k]) + 128
        assert dp[g, b, lane] == d16[n, b]
    exact = d16.double().abs() * blocks.q.double().abs().view(37, 2, 32).sum(2)
    got = ap.transpose(1, 2).reshape(48, 2)
    assert bool((got[:37].double() >= exact).all()) and bool((got[:37].double() <= exact * (1 + 2 ** -22)).all())
    assert bool(torch.isinf(got[37:]).all()) and int(qp[2, :, :, 5:].min()) == 128 == int(qp[2, :, :, 5:].max())
    with pytest.raises(ValueError, match="q must be int8"):
        argmax_pack(blocks.q.float(), d16)
    with pytest.raises(ValueError, match="d must be float16"):
        argmax_pack(blocks.q, blocks.d)


def count_greedy_calls(monkeypatch) -> list:
    """The batch size of every llama_forward_argmax call from now on."""
    calls, real = [], ops.llama_forward_argmax

    def counted(tokens, *args, **kw):
        calls.append(tokens.shape[0])
        return real(tokens, *args, **kw)
    monkeypatch.setattr(ops, "llama_forward_argmax", counted)
    return calls


@needs_op
def test_greedy_decoding_identical_with_and_without_the_greedy_head(head_path, monkeypatch):
    calls = count_greedy_calls(monkeypatch)
    model = q8_head_llama()
    prompt = torch.randint(0, VOCAB, (1, 9), generator=torch.Generator().manual_seed(1))
    outs = []
    for greedy_head in (False, True):
        dec = RadarDecoder(model, greedy_head=greedy_head)
        outs.append(dec.generate(prompt, max_new_tokens=24, do_sample=False))
    ref = model.generate(prompt, max_new_tokens=24, do_sample=False)
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[1], ref)
    assert len(calls) == 23  # every verify after the prefill took the greedy head


@needs_op
def test_batched_greedy_decoding_identical_with_and_without_the_greedy_head(head_path, monkeypatch):
    """A left-padded batch (rows of their own lengths, a dense cache) through the greedy head: every row the same as
    with the logits and as its own greedy generate."""
    calls = count_greedy_calls(monkeypatch)
    model = q8_head_llama()
    g = torch.Generator().manual_seed(5)
    prompts = [torch.randint(1, VOCAB, (1, n), generator=g) for n in (4, 9, 6)]
    P = max(r.shape[1] for r in prompts)
    ids = torch.zeros(3, P, dtype=torch.int64)
    mask = torch.zeros_like(ids)
    for b, r in enumerate(prompts):
        ids[b, P - r.shape[1]:], mask[b, P - r.shape[1]:] = r[0], 1
    outs = [RadarDecoder(model, greedy_head=gh).generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=False,
                                                         pad_token_id=0) for gh in (False, True)]
    assert torch.equal(outs[0], outs[1]) and calls and max(calls) == 3  # the batch's verifies took the greedy head
    for b, r in enumerate(prompts):
        ref = model.generate(r, attention_mask=torch.ones_like(r), max_new_tokens=12, do_sample=False)
        assert outs[1][b, P:].tolist() == ref[0, r.shape[1]:].tolist()
