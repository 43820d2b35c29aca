"""radar_ext.fast_linear: the target's nn.Linear forwards are swapped only inside the block and
restored exactly; few-row products go to skinny_linear, others to F.linear; RadarDecoder with
fast_linear stays token-identical to the target's own greedy generate and leaves the model as it was."""
import os

import pytest
import torch

from radar_ext import NgramDrafter, RadarDecoder, StaticPolicy, fast_linear as fl_module
from radar_ext.fast_linear import FastLinear, applies_to, fast_linear, fast_linear_available
from test_decoder import VOCAB, make_drafter, prompts, reference, tiny_llama

pytestmark = pytest.mark.skipif(not fast_linear_available(), reason="skinny_linear has no AVX-512 kernel here")


@pytest.fixture
def count_kernel_calls(monkeypatch):
    calls = []
    real = fl_module.ops.skinny_linear

    def counting(x, w, bias=None):
        calls.append(x.shape[0])
        return real(x, w, bias)
    monkeypatch.setattr(fl_module.ops, "skinny_linear", counting)
    return calls


def own_forwards(model):
    return {name: m.__dict__.get("forward") for name, m in model.named_modules()}


def test_swaps_inside_and_restores_exactly():
    model = tiny_llama("sdpa")
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 3 * 7 + 1                        # q, k, v, o, gate, up, down per layer + lm_head
    custom = linears[0].forward                              # someone else's instance forward survives
    linears[0].forward = custom
    before = own_forwards(model)
    with fast_linear(model) as active:
        assert active
        assert all("forward" in m.__dict__ for m in linears) and linears[0].forward is not custom
    assert own_forwards(model) == before and linears[0].forward is custom
    with pytest.raises(RuntimeError, match="boom"):          # restored on error too
        with fast_linear(model):
            raise RuntimeError("boom")
    assert own_forwards(model) == before
    del linears[0].forward
    assert all("forward" not in m.__dict__ for m in model.modules())


def test_reusable_not_reentrant_and_argument_errors():
    model = tiny_llama("sdpa")
    ctx = fast_linear(model)
    for _ in range(2):
        with ctx:
            pass
    with ctx:
        with pytest.raises(RuntimeError, match="not reentrant"):
            ctx.__enter__()
    assert all("forward" not in m.__dict__ for m in model.modules())
    with pytest.raises(ValueError, match=r"max_rows must be an int >= 1, got 0"):
        FastLinear(model, max_rows=0)


def test_not_applied_to_other_dtypes_or_when_disabled():
    bf16 = tiny_llama("sdpa").to(torch.bfloat16)
    assert not applies_to(bf16)
    with fast_linear(bf16) as active:
        assert not active and all("forward" not in m.__dict__ for m in bf16.modules())
    with fast_linear(tiny_llama("sdpa"), enabled=False) as active:
        assert not active


def test_rows_limit_and_logits(count_kernel_calls):
    model = tiny_llama("sdpa")
    ids = torch.randint(0, VOCAB, (1, 9), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = model(ids).logits
        with fast_linear(model, max_rows=8):
            big = model(ids).logits                          # 9 rows > 8: F.linear, bit for bit
        assert not count_kernel_calls and torch.equal(big, ref)
        with fast_linear(model, max_rows=9):
            small = model(ids).logits
            two = model(ids[:, :2]).logits                   # 2 rows < MIN_ROWS: F.linear too
    assert count_kernel_calls == [9] * 22
    assert torch.equal(two, model(ids[:, :2]).logits)
    torch.testing.assert_close(small, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("kind", ["ngram", "eagle"])
def test_decoder_greedy_exact_and_model_untouched(attn, kind, count_kernel_calls):
    model = tiny_llama(attn)
    before = own_forwards(model)
    # fused_forward=False: the verify forwards go through the model's linears, where fast_linear acts
    # (the fused default reads the weights itself; its exactness: test_fused_forward.py)
    dec = RadarDecoder(model, make_drafter(kind, model), StaticPolicy(3), tree_topk=3, verify_budget=7,
                       fused_forward=False)
    assert dec.fast_linear                                  # default: on for a float32 CPU target
    for ids, n in zip(prompts(), (1, 9, 30)):
        want = reference(model, ids, n)                      # the AR baseline, before and after
        assert torch.equal(dec.generate(ids, max_new_tokens=n), want), (attn, kind, n)
        assert own_forwards(model) == before
        assert torch.equal(reference(model, ids, n), want)
    # verify forwards (M <= 8 here); an EAGLE head's own calls too (its first takes the whole prompt)
    assert count_kernel_calls and max(count_kernel_calls) <= (8 if kind == "ngram" else fl_module.DEFAULT_MAX_ROWS)
    count_kernel_calls.clear()
    off = RadarDecoder(model, NgramDrafter(), StaticPolicy(1), verify_budget=5, fast_linear=False)
    ids = prompts()[1]
    assert torch.equal(off.generate(ids, max_new_tokens=12), reference(model, ids, 12))
    assert not count_kernel_calls


def test_sdpa_gqa_switch_same_bits_and_restored(monkeypatch):
    """Verify logits over a tree mask are bit-identical with and without the sdpa GQA switch, and
    the switch is back to its old value (unset, or the user's) after the block."""
    from radar_ext import kv_cache
    from radar_ext.fast_linear import SDPA_GQA_SWITCH
    from radar_ext.tree import make_tree
    from radar_ext.verifier import prefill, verify
    model = tiny_llama("sdpa")
    monkeypatch.delenv(SDPA_GQA_SWITCH, raising=False)
    tree = make_tree(torch.tensor([[5, 9, 2, 7, 7, 1]]), torch.tensor([[-1, 0, 1, 0, 3, 1]]), torch.tensor([6]))
    logits = {}
    for gqa in (False, True):
        cache = kv_cache.new_target_cache(model)
        prefill(model, cache, prompts()[2])
        with fast_linear(model, sdpa_gqa=gqa):
            assert (SDPA_GQA_SWITCH in os.environ) == gqa
            logits[gqa] = verify(model, cache, tree, prompts()[2].shape[1], fused=False).logits
        assert SDPA_GQA_SWITCH not in os.environ
    assert torch.equal(logits[False], logits[True])
    monkeypatch.setenv(SDPA_GQA_SWITCH, "0")
    with fast_linear(model):
        assert os.environ[SDPA_GQA_SWITCH] == "1"
    assert os.environ[SDPA_GQA_SWITCH] == "0"


def test_eagle_head_linears_on_kernel_during_draft_only(count_kernel_calls):
    """EagleDrafter(fast_linear=True) sends the head's W-beam linears (W >= MIN_ROWS rows) to the
    kernel inside draft() only; the decoder stays exact and the drafts match an F.linear head's. (The
    head's torch forward: fused=False; the default fused call is python_tests/test_head_forward.py's.)"""
    from radar_ext import EagleDrafter
    model = tiny_llama("sdpa")
    on = EagleDrafter(EagleDrafter.init_random(model, seed=1).head, model, fused=False)
    off = EagleDrafter(on.head, model, fast_linear=False, fused=False)
    before = own_forwards(on.head)
    trees = {}
    for name, drafter in (("on", on), ("off", off)):
        count_kernel_calls.clear()
        dec = RadarDecoder(model, drafter, StaticPolicy(3), tree_topk=5, verify_budget=3, fast_linear=False)
        ids = prompts()[1]
        assert torch.equal(dec.generate(ids, max_new_tokens=10), reference(model, ids, 10)), name
        trees[name] = (dec.last_stats.accepted_hist, dec.last_stats.cycles)
        assert own_forwards(on.head) == before
        # head rows only (the target's fast_linear is off): W = 5 beams per further call, and call 1
        # on the prompt (its P pairs) or on an accepted path (1..4 pairs: 4 rows reach the kernel)
        rows = set(count_kernel_calls) - {4, ids.shape[1]}
        assert rows == {5} if name == "on" else not count_kernel_calls, name
    assert trees["on"] == trees["off"]


def test_weights16_exact_copies_refreshed_on_change(count_kernel_calls):
    """weights16: a float32 weight that fp16 holds exactly runs from its fp16 copy on 1..max_rows rows
    (the bits of the float32 kernel); a weight fp16 cannot hold keeps the float32 rules; an in-place
    change of the weight is seen at the next call."""
    from radar_ext.fast_linear import half_copy
    kernel = torch.ops.radar_ext.skinny_linear                     # (not counted by the fixture)
    torch.manual_seed(0)
    exact, other = torch.nn.Linear(24, 40), torch.nn.Linear(24, 40)
    with torch.no_grad():
        exact.weight.copy_(exact.weight.half().float())
        other.weight.copy_(other.weight.half().float() + 1e-6)     # not fp16-exact (nor bf16)
    assert half_copy(exact.weight).dtype == torch.float16 and half_copy(other.weight) is None
    model = torch.nn.Sequential(exact, other)
    x = torch.randn(1, 3, 24)
    with torch.no_grad(), FastLinear(model, weights16=True):
        y = exact(x)
        assert count_kernel_calls == [3]                           # 3 rows < MIN_ROWS, from the copy
        assert torch.equal(y[0], kernel(x[0], exact.weight, exact.bias))
        other(x)                                                   # float32 rules: F.linear at 3 rows
        assert count_kernel_calls == [3]
        exact.weight.mul_(2.0)                                     # in place: the copy is remade
        assert torch.equal(exact(x)[0], kernel(x[0], exact.weight, exact.bias))
        assert count_kernel_calls == [3, 3]


def test_weights16_copy_follows_a_replaced_weight():
    """`linear.weight.data = ...` (new storage, same Parameter) and a new Parameter are both seen."""
    kernel = torch.ops.radar_ext.skinny_linear
    lin = torch.nn.Linear(16, 8, bias=False)
    with torch.no_grad():
        lin.weight.copy_(lin.weight.half().float())
    x = torch.randn(2, 16)
    with torch.no_grad(), FastLinear(lin, weights16=True):
        assert torch.equal(lin(x), kernel(x, lin.weight))
        lin.weight.data = (lin.weight * 4).contiguous()
        assert torch.equal(lin(x), kernel(x, lin.weight))
        lin.weight = torch.nn.Parameter(lin.weight.detach() * -1)
        assert torch.equal(lin(x), kernel(x, lin.weight))
