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
    """verify() with lean=True and lean=False on identical caches -> (lean out, hf out, lean cache, hf cache)."""
    prompt = torch.randint(0, VOCAB, (B, P), generator=torch.Generator().manual_seed(P))
    outs, caches = [], []
    for lean in (True, False):
        cache = kv_cache.new_target_cache(model)
        prefill(model, cache, prompt)
        with ctx or nullcontext():
            outs.append(verify(model, cache, tree, P, layers, lean=lean))
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
