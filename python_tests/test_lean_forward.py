"""radar_ext.lean_forward: the lean Llama verify forward returns the same bits as the model's own
forward (logits, every hidden-state index, the K/V written to the cache), in float32 and bfloat16,
with and without fast_linear; models it cannot run exactly fall back to the model's forward."""
from contextlib import nullcontext

import pytest
import torch

from radar_ext import kv_cache
from radar_ext.fast_linear import fast_linear, fast_linear_available
from radar_ext.lean_forward import LeanLlamaForward, lean_forward_for, lean_forward_reason
from radar_ext.tree import make_tree
from radar_ext.verifier import prefill, verify
from test_decoder import VOCAB, tiny_llama


def branching_tree(M: int, seed: int, B: int = 1):
    """B trees of M nodes, chains branching at random earlier nodes, the last tree padded to M - 2 nodes."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, VOCAB, (B, M), generator=g)
    parents = torch.full((B, M), -1, dtype=torch.int64)
    for b in range(B):
        for i in range(1, M):
            parents[b, i] = int(torch.randint(0, i, (), generator=g)) if i % 3 == 0 else i - 1
    n_nodes = torch.full((B,), M)
    if B > 1:
        n_nodes[-1] = M - 2
        tokens[-1, M - 2:] = -1
        parents[-1, M - 2:] = -1
    return make_tree(tokens, parents, n_nodes)


def verify_both(model, tree, P, layers, ctx=None, B=1):
    """verify() with lean=True and lean=False on identical caches -> (lean out, hf out, lean cache, hf cache).
    The lean side without the fused forward (fused=False), whose bits are the HF forward's; the fused one is
    checked against HF within rounding in test_fused_forward.py."""
    prompt = torch.randint(0, VOCAB, (B, P), generator=torch.Generator().manual_seed(P))
    outs, caches = [], []
    for lean in (True, False):
        cache = kv_cache.new_target_cache(model)
        prefill(model, cache, prompt)
        with ctx or nullcontext():
            outs.append(verify(model, cache, tree, P, layers, lean=lean, fused=False))
        caches.append(cache)
    return outs[0], outs[1], caches[0], caches[1]


def assert_same_caches(a, b):
    for la, lb in zip(a.layers, b.layers):
        assert torch.equal(la.keys, lb.keys) and torch.equal(la.values, lb.values)


@pytest.mark.parametrize("M,P", [(2, 1), (5, 9), (13, 30)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bit_identical_to_model_forward(M, P, dtype):
    model = tiny_llama("sdpa").to(dtype)
    assert lean_forward_reason(model) is None
    L = model.config.num_hidden_layers
    layers = [0, 1, L - 1, L, -1]                  # embeddings, inner layers, the final normed state
    tree = branching_tree(M, seed=M)
    lean, hf, c_lean, c_hf = verify_both(model, tree, P, layers)
    assert lean.logits.dtype == torch.float32 and lean.logits.shape == (1, M, VOCAB)
    assert torch.equal(lean.logits, hf.logits)
    assert torch.equal(lean.features, hf.features)
    assert_same_caches(c_lean, c_hf)
    assert c_lean.get_seq_length() == P + M


def test_batched_and_padded_trees():
    model = tiny_llama("sdpa")
    tree = branching_tree(7, seed=3, B=2)
    lean, hf, c_lean, c_hf = verify_both(model, tree, 6, [2], B=2)
    assert torch.equal(lean.logits, hf.logits) and torch.equal(lean.features, hf.features)
    assert_same_caches(c_lean, c_hf)


@pytest.mark.skipif(not fast_linear_available(), reason="skinny_linear has no AVX-512 kernel here")
def test_fast_linear_still_applies_inside_lean_forward():
    model = tiny_llama("sdpa")
    tree = branching_tree(6, seed=1)               # 6 rows: the skinny_linear range
    lean, hf, c_lean, c_hf = verify_both(model, tree, 8, [1, 3], ctx=fast_linear(model))
    assert torch.equal(lean.logits, hf.logits) and torch.equal(lean.features, hf.features)
    assert_same_caches(c_lean, c_hf)
    plain, _, _, _ = verify_both(model, tree, 8, [1, 3])
    assert not torch.equal(plain.logits, lean.logits)  # the kernel ran (other summation order)
    assert torch.allclose(plain.logits, lean.logits, atol=1e-5, rtol=1e-5)


def test_models_that_do_not_qualify_fall_back():
    eager = tiny_llama("eager")
    assert "sdpa" in lean_forward_reason(eager) and lean_forward_for(eager) is None
    trained = tiny_llama("sdpa").train()
    assert "training" in lean_forward_reason(trained)
    on_meta = tiny_llama("sdpa").to("meta")  # off the CPU (a GPU in use): its bits are checked on the CPU only
    assert lean_forward_reason(on_meta).startswith("model is on meta: the lean forward stays on the CPU")
    assert lean_forward_for(on_meta) is None
    hooked = tiny_llama("sdpa")
    handle = hooked.model.layers[1].register_forward_hook(lambda m, a, o: None)
    assert "hooks" in lean_forward_reason(hooked)
    handle.remove()
    assert lean_forward_reason(hooked) is None
    wrapped = tiny_llama("sdpa")

    class Scaled(torch.nn.Linear):
        pass
    old = wrapped.model.layers[0].mlp.up_proj
    wrapped.model.layers[0].mlp.up_proj = Scaled(old.in_features, old.out_features, bias=False)
    assert "up_proj" in lean_forward_reason(wrapped)
    # the fallback is the model's own forward: verify(lean=True) == verify(lean=False)
    for model in (eager, wrapped):
        tree = branching_tree(4, seed=2)
        a, b, ca, cb = verify_both(model, tree, 5, [1])
        assert torch.equal(a.logits, b.logits) and torch.equal(a.features, b.features)
    with pytest.raises(ValueError, match="cannot use the lean Llama forward: attention"):
        LeanLlamaForward(eager)


def test_output_capturing_hooks_of_transformers_do_not_disqualify():
    model = tiny_llama("sdpa")
    with torch.no_grad():
        model(torch.tensor([[1, 2, 3]]), output_hidden_states=True)   # installs transformers' hooks
    assert any(layer._forward_hooks for layer in model.model.layers)
    assert lean_forward_reason(model) is None


def test_feature_layer_errors():
    model = tiny_llama("sdpa")
    lean = LeanLlamaForward(model)
    tree = branching_tree(3, seed=0)
    cache = kv_cache.new_target_cache(model)
    prefill(model, cache, torch.tensor([[1, 2]]))
    n = model.config.num_hidden_layers + 1
    for bad in ([n], [-n - 1], [1.0]):
        with pytest.raises(ValueError, match=r"feature_layers must be ints in \[-4, 3\]"):
            lean(tree.tokens, tree.depth + 2, torch.zeros(1, 1, 3, 5), cache, bad)


def quantized_tiny_llama(kinds=("Q4_1", "Q8_0")):
    """tiny_llama with every linear holding a GGUF Q4_1 / Q8_0 dequantization (as the default target's do),
    so fast_linear(quantized=True) runs each of them from exact blocks."""
    from test_quant import gguf_blocks
    model = tiny_llama("sdpa")
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        for i, lin in enumerate(linears):
            N, K = lin.weight.shape
            lin.weight.copy_(gguf_blocks(N, K, kinds[i % len(kinds)], seed=i).dequantize())
    return model


needs_kernel = pytest.mark.skipif(not fast_linear_available(), reason="needs the AVX-512 skinny_linear kernel")


@needs_kernel
@pytest.mark.parametrize("M,P,B", [(1, 3, 1), (6, 9, 1), (13, 30, 1), (7, 5, 2)])
def test_native_layer_loop_is_bit_identical(M, P, B):
    """With every linear on exact blocks, the layers run in C++ (radar_ext::llama_layers_quant): the
    same bits as the Python loop and as the model's own forward under the same fast_linear, cache included."""
    model = quantized_tiny_llama()
    tree = branching_tree(M, seed=M, B=B)
    layers = [0, 1, 2, 3]
    ctx = fast_linear(model, quantized=True)
    lean, hf, c_lean, c_hf = verify_both(model, tree, P, layers, ctx=ctx, B=B)
    assert torch.equal(lean.logits, hf.logits) and torch.equal(lean.features, hf.features)
    assert_same_caches(c_lean, c_hf)
    prompt = torch.randint(0, VOCAB, (B, P), generator=torch.Generator().manual_seed(P))
    outs = []
    for native in (True, False):
        cache = kv_cache.new_target_cache(model)
        prefill(model, cache, prompt)
        fwd = LeanLlamaForward(model, native=native, fused=False)
        ids, pos = tree.tokens.clamp(min=0), tree.depth.clamp(min=0) + P
        from radar_ext.verifier import tree_attention_mask
        with ctx:
            outs.append((*fwd(ids, pos, tree_attention_mask(tree, P, torch.float32), cache, [3, 1]), cache))
        assert fwd.last_native == native
    (la, fa, ca), (lb, fb, cb) = outs
    assert torch.equal(la, lb) and torch.equal(fa, fb)  # feature order as asked: [3, 1]
    assert_same_caches(ca, cb)
    assert not torch.equal(fa[..., :32], fa[..., 32:])


@needs_kernel
def test_native_layer_loop_only_when_every_linear_is_on_blocks():
    from radar_ext.verifier import tree_attention_mask
    model = quantized_tiny_llama()
    plain = tiny_llama("sdpa")  # float32 weights that are no block dequantization
    tree = branching_tree(5, seed=2)
    ids, pos, mask = tree.tokens.clamp(min=0), tree.depth.clamp(min=0) + 4, tree_attention_mask(tree, 4, torch.float32)
    for m, ctx, want in ((model, fast_linear(model, quantized=True), True), (model, fast_linear(model), False),
                         (model, nullcontext(), False), (plain, fast_linear(plain, quantized=True), False)):
        cache = kv_cache.new_target_cache(m)
        prefill(m, cache, torch.randint(0, VOCAB, (1, 4), generator=torch.Generator().manual_seed(0)))
        fwd = LeanLlamaForward(m, fused=False)
        with ctx:
            fwd(ids, pos, mask, cache)
        assert fwd.last_native == want
    # one layer's linear off the blocks (a weight no longer a dequantization) -> the Python loop
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[0, 0] += 1e-3
    cache = kv_cache.new_target_cache(model)
    prefill(model, cache, torch.randint(0, VOCAB, (1, 4), generator=torch.Generator().manual_seed(0)))
    fwd = LeanLlamaForward(model, fused=False)
    with fast_linear(model, quantized=True):
        fwd(ids, pos, mask, cache)
    assert not fwd.last_native


@needs_kernel
def test_native_layer_op_checks_its_arguments():
    x = torch.zeros(1, 2, 32)
    cs = torch.zeros(1, 2, 8)
    mask = torch.zeros(1, 1, 2, 2)
    buf = torch.zeros(1, 2, 4, 8)
    op = torch.ops.radar_ext.llama_layers_quant
    with pytest.raises(ValueError, match="params must hold 30 entries per layer"):
        op(x, cs, cs, mask, [None] * 29, [buf], [buf], 0, [], 1e-6, 0.35, 8)
    with pytest.raises(ValueError, match="x must be float32"):
        op(x.double(), cs, cs, mask, [None] * 30, [buf], [buf], 0, [], 1e-6, 0.35, 8)
    with pytest.raises(ValueError, match=r"k_bufs\[0\] / v_bufs\[0\] must be float32"):
        op(x, cs, cs, mask, [None] * 30, [buf[:, :, :1]], [buf], 0, [], 1e-6, 0.35, 8)
    with pytest.raises(ValueError, match="norm weights"):
        op(x, cs, cs, mask, [None] * 30, [buf], [buf], 0, [], 1e-6, 0.35, 8)


@needs_kernel
def test_native_layer_op_matches_its_reference(monkeypatch):
    """radar_ext::llama_layers_quant against reference.llama_layers_quant on the quantized tiny model's own
    blocks: bit for bit with the reference's linears on the kernel (the same ops in the same order), and
    close with its own float64-summed ones."""
    from radar_ext import ops, reference
    from radar_ext.quant import exact_blocks
    model = quantized_tiny_llama()
    layers = model.model.layers
    params = []
    for layer in layers:
        params += [layer.input_layernorm.weight.detach(), layer.post_attention_layernorm.weight.detach()]
        for mod in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj, layer.self_attn.o_proj,
                    layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj):
            b = exact_blocks(mod.weight.detach())
            params += [b.q, b.d, b.m, None]
    g = torch.Generator().manual_seed(3)
    B, M, P, D = 1, 5, 7, 8
    x = torch.randn(B, M, 32, generator=g)
    pos = torch.arange(P, P + M)[None]
    cos, sin = model.model.rotary_emb(x, pos)
    mask = torch.zeros(B, 1, M, P + M)
    mask[..., P:] = torch.triu(torch.full((M, M), torch.finfo(torch.float32).min), 1)
    bufs = [[torch.randn(B, 2, P + M + 3, D, generator=g) for _ in layers] for _ in range(2)]
    ref_bufs = [[t.clone() for t in b] for b in bufs]
    eps, scale = layers[0].input_layernorm.variance_epsilon, layers[0].self_attn.scaling
    got = ops.llama_layers_quant(x, cos, sin, mask, params, bufs[0], bufs[1], P, [0, 2], eps, scale, D)
    with monkeypatch.context() as mp:
        mp.setattr(reference, "skinny_linear_quant", ops.skinny_linear_quant)
        want = reference.llama_layers_quant(x, cos, sin, mask, params, ref_bufs[0], ref_bufs[1], P, [0, 2], eps,
                                            scale, D)
    assert len(got) == len(want) == 3 and torch.equal(got[1], x)
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    assert all(torch.equal(a, b) for a, b in zip(bufs[0] + bufs[1], ref_bufs[0] + ref_bufs[1]))
    assert not torch.equal(bufs[0][0][:, :, P:P + M], ref_bufs[0][0][:, :, P:P + M].clone().zero_())
    ref_bufs = [[t.clone() for t in b] for b in bufs]
    want = reference.llama_layers_quant(x, cos, sin, mask, params, ref_bufs[0], ref_bufs[1], P, [0, 2], eps, scale, D)
    for a, b in zip(got, want):  # float64 sums in the reference's linears; differences grow through the layers
        torch.testing.assert_close(a, b, rtol=1e-2, atol=1e-2 * float(b.abs().max()))
    for impl in (ops.llama_layers_quant, reference.llama_layers_quant):
        with pytest.raises(ValueError, match="capture must be increasing"):
            impl(x, cos, sin, mask, params, bufs[0], bufs[1], P, [2, 0], eps, scale, D)


def test_observer_pre_hook_keeps_the_lean_forward_and_sees_every_forward():
    """radar bench's forward counter (a pre-hook on the decoder stack) must not move verify off the lean
    forward; the lean forward calls it with the same input_ids / position_ids the model's forward would."""
    from radar_ext.benchmark.runner import ForwardCounter
    model = tiny_llama("sdpa")
    tree = branching_tree(5, seed=3)
    counter = ForwardCounter(model)
    try:
        assert lean_forward_reason(model) is None
        cache = kv_cache.new_target_cache(model)
        prefill(model, cache, torch.randint(0, VOCAB, (1, 6), generator=torch.Generator().manual_seed(0)))
        verify(model, cache, tree, 6)
        (p0, n0), (p1, n1) = counter.calls
        assert (n0, n1) == (6, 5) and int(p1.min()) == 6
        assert torch.equal(p1, tree.depth.clamp(min=0) + 6)
    finally:
        counter.close()
    plain = model.model.register_forward_pre_hook(lambda m, a, k: None, with_kwargs=True)
    try:
        assert lean_forward_reason(model) == "the model has forward hooks (accelerate offload or user hooks)"
    finally:
        plain.remove()
