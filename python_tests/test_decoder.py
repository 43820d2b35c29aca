"""RadarDecoder on a tiny random Llama: greedy output == the target's own greedy generate (eager
and sdpa attention, n-gram and untrained EAGLE drafters), EOS and max_new_tokens handling,
streaming, generation_config, and every input error."""
import pytest
import torch
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

from radar_ext import EagleDrafter, NgramDrafter, RadarDecoder, StaticPolicy
from radar_ext.drafters import Drafter

VOCAB = 61


def tiny_llama(attn="sdpa", vocab=VOCAB, seed=0, model_type_ok=True):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      initializer_range=0.3, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    cfg._attn_implementation = attn
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def models():
    return {a: tiny_llama(a) for a in ("eager", "sdpa")}


def prompts():
    g = torch.Generator().manual_seed(7)
    out = []
    for n in (1, 6, 17):
        p = torch.randint(0, VOCAB, (1, n), generator=g)
        out.append(torch.cat([p, p], 1))  # a repeat so that n-gram lookups find something
    return out


def reference(model, ids, n, eos=None):
    return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                          eos_token_id=eos, pad_token_id=0)


def make_drafter(kind, model):
    return NgramDrafter(max_ngram=3, min_ngram=1) if kind == "ngram" else EagleDrafter.init_random(model, seed=1)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("kind", ["ngram", "eagle"])
def test_greedy_exact(models, attn, kind):
    model = models[attn]
    dec = RadarDecoder(model, make_drafter(kind, model), StaticPolicy(3), tree_topk=3, verify_budget=7)
    for ids, n in zip(prompts(), (1, 9, 30)):
        out = dec.generate(ids, max_new_tokens=n)
        assert torch.equal(out, reference(model, ids, n)), (attn, kind, n)
        s = dec.last_stats
        assert s.tokens == n and sum(s.accepted_hist) == s.cycles
        # emitted = first token + (accepted + 1) per cycle, the last cycle possibly cut at max_new_tokens
        assert s.tokens <= 1 + sum((k + 1) * c for k, c in enumerate(s.accepted_hist))


def test_greedy_exact_with_a_deeper_eagle_head(models):
    """A three-layer head (the midlayer + two plain layers, each with its own cache) drafts multi-call trees
    whose verified output is the target's greedy one, and every layer's cache ends each generate at the
    committed length."""
    from radar_ext.eagle_head import EagleConfig, EagleHead

    model = models["sdpa"]
    cfg = EagleConfig.for_target(model.config, num_hidden_layers=3, extra_intermediate_size=40)
    drafter = EagleDrafter(EagleHead.init_random(cfg, seed=2), model)
    dec = RadarDecoder(model, drafter, StaticPolicy(3), tree_topk=3, verify_budget=7)
    for ids, n in zip(prompts(), (1, 9, 30)):
        out = dec.generate(ids, max_new_tokens=n)
        assert torch.equal(out, reference(model, ids, n)), n
        c = drafter.cache
        assert c.layer(1).length == c.layer(2).length == c.length


def test_ngram_drafts_get_accepted(models):
    """The random model repeats token pairs now and then; single-token lookups must catch some of them
    (a drafter proposing wrong continuations would give tau = 1 exactly)."""
    model = models["sdpa"]
    ids = prompts()[2]
    dec = RadarDecoder(model, NgramDrafter(min_ngram=1), StaticPolicy(1), verify_budget=10)
    out = dec.generate(ids, max_new_tokens=60)
    assert torch.equal(out, reference(model, ids, 60))
    s = dec.last_stats
    assert s.tau > 1.2 and len(s.accepted_hist) > 2 and s.mean_verify_budget > 0


@pytest.mark.parametrize("kind", ["ngram", "eagle"])
def test_eos_stops_exactly(models, kind):
    model = models["sdpa"]
    ids = prompts()[1]
    free = reference(model, ids, 30)[0, ids.shape[1]:].tolist()
    dec = RadarDecoder(model, make_drafter(kind, model), StaticPolicy(3), tree_topk=3, verify_budget=7)
    for k in (0, 4, 11):  # EOS = a token the model emits at step k (first occurrence)
        eos = free[k]
        ref = reference(model, ids, 30, eos=eos)
        out = dec.generate(ids, max_new_tokens=30, eos_token_id=eos)
        assert torch.equal(out, ref)
        assert out[0, -1].item() == eos and out.shape[1] == ids.shape[1] + free.index(eos) + 1
    # a list of EOS ids, and EOS taken from generation_config
    ref = reference(model, ids, 30, eos=[free[6], free[9]])
    assert torch.equal(dec.generate(ids, max_new_tokens=30, eos_token_id=[free[6], free[9]]), ref)
    gc = GenerationConfig(eos_token_id=free[5], max_new_tokens=30)
    assert torch.equal(dec.generate(ids, generation_config=gc), reference(model, ids, 30, eos=free[5]))


def test_max_new_tokens_never_exceeded(models):
    model = models["sdpa"]
    ids = prompts()[2]
    dec = RadarDecoder(model, NgramDrafter(), StaticPolicy(1), verify_budget=12)
    for n in (1, 2, 3, 5, 8):
        out = dec.generate(ids, max_new_tokens=n)
        assert out.shape[1] == ids.shape[1] + n and torch.equal(out, reference(model, ids, n))


def test_streamer_protocol(models):
    model = models["sdpa"]
    ids = prompts()[1]

    class Recorder:
        def __init__(self):
            self.puts, self.ended = [], False

        def put(self, value):
            self.puts.append(value.clone())

        def end(self):
            self.ended = True

    rec = Recorder()
    dec = RadarDecoder(model, NgramDrafter(), StaticPolicy(1), verify_budget=5)
    out = dec.generate(ids, max_new_tokens=12, streamer=rec)
    assert rec.ended and torch.equal(rec.puts[0], ids)  # the prompt first, like HF
    assert torch.equal(torch.cat(rec.puts[1:]), out[0, ids.shape[1]:])


def test_stats_fields(models):
    model = models["sdpa"]
    dec = RadarDecoder(model, EagleDrafter.init_random(model), StaticPolicy(2), tree_topk=2, verify_budget=4)
    dec.generate(prompts()[0], max_new_tokens=6)
    s = dec.last_stats
    assert s.cycles >= 1 and s.mean_draft_calls == 2 and 1 <= s.mean_verify_budget <= 4
    assert s.seconds >= s.time_draft + s.time_verify and s.tau >= 1
    d = s.as_dict()
    assert {"tau", "mean_draft_calls", "mean_verify_budget", "accepted_hist", "time_policy"} <= set(d)
    assert "tau=" in s.summary()


# ------------------------------------------------------------------ errors


def test_input_errors(models):
    model = models["sdpa"]
    dec = RadarDecoder(model, NgramDrafter())
    ids = prompts()[1]
    with pytest.raises(ValueError, match=r"at least one sequence \(batch size >= 1\), got \[0, 12\]"):
        dec.generate(ids[:0])
    with pytest.raises(ValueError, match="at least one token, got an empty prompt"):
        dec.generate(ids[:, :0])
    with pytest.raises(ValueError, match="must be an int64 tensor"):
        dec.generate(ids.int())
    with pytest.raises(ValueError, match=r"prompt length must be < the model's max_position_embeddings = 256, got 300"):
        dec.generate(torch.zeros(1, 300, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"token ids in \[0, 61\), got values in"):
        dec.generate(ids + 100)
    for bad in (0, -3, 2.5):
        with pytest.raises(ValueError, match=f"max_new_tokens must be an int >= 1, got {bad}"):
            dec.generate(ids, max_new_tokens=bad)
    mask = torch.ones_like(ids)
    mask[0, 5] = 0
    with pytest.raises(NotImplementedError, match=r"only left padding \(zeros before the prompt, then ones\) is supported"):
        dec.generate(ids, attention_mask=mask)
    with pytest.raises(ValueError, match="row 0 is all padding"):
        dec.generate(ids, attention_mask=torch.zeros_like(ids))
    with pytest.raises(ValueError, match="attention_mask must hold only 0 and 1"):
        dec.generate(ids, attention_mask=mask * 2)
    with pytest.raises(ValueError, match=r"attention_mask must be a tensor with the shape of input_ids \[1, 12\], got \[1, 3\]"):
        dec.generate(ids, attention_mask=torch.ones(1, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="temperature must be a number > 0 when sampling, got 0"):
        dec.generate(ids, do_sample=True, temperature=0)
    with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\], got 1.5"):
        dec.generate(ids, do_sample=True, top_p=1.5)
    with pytest.raises(ValueError, match="top_k must be an int >= 0"):
        dec.generate(ids, do_sample=True, top_k=-1)
    with pytest.raises(NotImplementedError, match="generation_config.num_beams = 4 is not supported"):
        dec.generate(ids, generation_config=GenerationConfig(num_beams=4))
    with pytest.raises(NotImplementedError, match="generation_config.penalty_alpha = 0.6 with top_k = 4 selects contrastive"):
        dec.generate(ids, generation_config=GenerationConfig(penalty_alpha=0.6, top_k=4))


def test_constructor_errors(models):
    model = models["sdpa"]
    with pytest.raises(ValueError, match="tree_topk must be an int >= 1, got 0"):
        RadarDecoder(model, NgramDrafter(), tree_topk=0)
    with pytest.raises(ValueError, match="verify_budget must be an int >= 1, got -1"):
        RadarDecoder(model, NgramDrafter(), verify_budget=-1)
    with pytest.raises(TypeError, match="drafter must be a radar_ext Drafter"):
        RadarDecoder(model, object())
    with pytest.raises(TypeError, match="policy must be a radar_ext Policy"):
        RadarDecoder(model, NgramDrafter(), policy="static")
    with pytest.raises(ValueError, match="max_draft_calls must be an int >= 1, got 0"):
        StaticPolicy(0)
    other = tiny_llama(vocab=VOCAB + 3)
    with pytest.raises(ValueError, match=r"EAGLE head vocab_size must equal the target's vocabulary \(61\), got 64"):
        RadarDecoder(model, EagleDrafter.init_random(other))

    class NotLlama(torch.nn.Module):
        config = type("C", (), {"model_type": "gpt2"})()
    with pytest.raises(NotImplementedError, match=r"target model_type must be one of .*got 'gpt2'"):
        RadarDecoder(NotLlama(), NgramDrafter())


def test_drafter_base_is_abstract():
    d = Drafter()
    with pytest.raises(NotImplementedError):
        d.start(None, None, None)


class RecordingPolicy(StaticPolicy):
    """Stops after `stop_after` calls, sets V = 3, and records what it was shown."""

    def __init__(self, stop_after):
        super().__init__(max_draft_calls=5)
        self.stop_after, self.steps, self.budgets, self.resets = stop_after, [], [], 0

    def reset(self):
        self.resets += 1

    def should_continue(self, step):
        self.steps.append(step)
        return step.draft_calls < self.stop_after

    def verify_budget(self, step):
        self.budgets.append(step)
        return 3


@pytest.mark.parametrize("stop_after", [1, 3])
def test_policy_interface(models, stop_after):
    model = models["sdpa"]
    pol = RecordingPolicy(stop_after)
    W = 2
    dec = RadarDecoder(model, EagleDrafter.init_random(model), pol, tree_topk=W, verify_budget=9)
    ids = prompts()[1]
    assert torch.equal(dec.generate(ids, max_new_tokens=6), reference(model, ids, 6))
    cycles = dec.last_stats.cycles
    assert pol.resets == cycles and len(pol.budgets) == cycles and len(pol.steps) == cycles * stop_after
    assert dec.last_stats.mean_draft_calls == stop_after and dec.last_stats.mean_verify_budget == min(3, W + (stop_after - 1) * W * W)
    first = pol.steps[0]
    assert first.draft_calls == 1 and first.beam_scores.shape == (1, W) and first.child_scores.shape == (1, 1, W)
    assert first.seq_len == ids.shape[1] + 1
    assert bool((first.beam_scores[:, :-1] >= first.beam_scores[:, 1:]).all())
    if stop_after > 1:
        assert pol.steps[1].draft_calls == 2 and pol.steps[1].child_scores.shape == (1, W, W)
    assert pol.budgets[0].pool_scores.shape == (1, W + (stop_after - 1) * W * W)
    assert pol.budgets[0].default_budget == 9


def test_eagle_save_and_load(models, tmp_path):
    model = models["sdpa"]
    d = EagleDrafter.init_random(model, seed=5)
    d.save_pretrained(tmp_path / "head")
    d2 = EagleDrafter.from_pretrained(tmp_path / "head", model)
    ids = prompts()[1]
    outs = []
    for drafter in (d, d2):
        dec = RadarDecoder(model, drafter, StaticPolicy(3), tree_topk=3, verify_budget=6)
        outs.append(dec.generate(ids, max_new_tokens=10))
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], reference(model, ids, 10))


def test_eagle_reduced_draft_vocab(models):
    model = models["eager"]
    d = EagleDrafter.init_random(model, draft_vocab=20)
    dec = RadarDecoder(model, d, StaticPolicy(4), tree_topk=4, verify_budget=12)
    ids = prompts()[2]
    assert torch.equal(dec.generate(ids, max_new_tokens=15), reference(model, ids, 15))


def test_eagle_head_in_another_dtype_than_the_target(models, tmp_path):
    """A bfloat16 head drafting for a float32 target: features and embeddings are cast to the head's
    dtype (no dtype error inside torch) and decoding stays exact."""
    from radar_ext.eagle_head import EagleHead

    model = models["sdpa"]
    EagleDrafter.init_random(model, seed=5).save_pretrained(tmp_path / "head")
    d = EagleDrafter(EagleHead.from_pretrained(tmp_path / "head", dtype=torch.bfloat16), model)
    assert d.head.lm_head.weight.dtype == torch.bfloat16
    ids = prompts()[2]
    dec = RadarDecoder(model, d, StaticPolicy(3), tree_topk=3, verify_budget=6)
    assert torch.equal(dec.generate(ids, max_new_tokens=12), reference(model, ids, 12))
    assert dec.last_stats.draft_calls > 0


# ------------------------------------------------------------------ HF generate's other arguments


def test_hf_length_arguments_match_hf_generate(models):
    """max_length counts the prompt and max_new_tokens wins over it, in arguments and in a passed
    generation_config, exactly as the target's own generate reads them; inputs= names the prompt."""
    model = models["sdpa"]
    dec = RadarDecoder(model, EagleDrafter.init_random(model, seed=1), StaticPolicy(2), tree_topk=3, verify_budget=4)
    ids = prompts()[1]                                                  # 12 tokens
    P = ids.shape[1]
    cases = [dict(max_length=P + 7), dict(max_length=P + 7, max_new_tokens=3),
             dict(generation_config=GenerationConfig(max_length=P + 5)),
             dict(generation_config=GenerationConfig(max_new_tokens=4, max_length=P + 9)),
             dict(max_new_tokens=6, pad_token_id=0, use_cache=True, num_beams=1, repetition_penalty=1.0,
                  return_dict_in_generate=False, num_return_sequences=1, output_scores=False)]
    for kw in cases:
        want = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, pad_token_id=0,
                              **{k: v for k, v in kw.items() if k != "pad_token_id"})
        got = dec.generate(ids, **kw)
        assert want.shape[1] > P
        assert torch.equal(got, want), kw
    want = reference(model, ids, 5)
    assert torch.equal(dec.generate(inputs=ids, max_new_tokens=5), want)
    assert torch.equal(dec.generate(input_ids=ids, max_new_tokens=5), want)


def test_hf_eos_forms(models):
    """eos_token_id as an int, a list or a tensor stops at the same place as HF's generate."""
    model = models["sdpa"]
    dec = RadarDecoder(model, NgramDrafter(max_ngram=3, min_ngram=1))
    ids = prompts()[2]
    free = reference(model, ids, 24)[0, ids.shape[1]:]
    eos = int(free[5])
    want = reference(model, ids, 24, eos=eos)
    assert want.shape[1] < ids.shape[1] + 24
    for form in (eos, [eos, 60 if eos != 60 else 59], torch.tensor([eos])):
        assert torch.equal(dec.generate(ids, max_new_tokens=24, eos_token_id=form), want)
    for bad in (-1, [eos, "x"], [], True, 2.0):
        with pytest.raises(ValueError, match="eos_token_id must be a token id >= 0 or a list of them"):
            dec.generate(ids, max_new_tokens=4, eos_token_id=bad)


def test_hf_arguments_that_change_the_output_are_refused(models):
    model = models["sdpa"]
    dec = RadarDecoder(model, NgramDrafter())
    ids = prompts()[1]
    for kw, msg in ((dict(num_beams=4), r"generate\(num_beams=...\) = 4 is not supported by RadarDecoder \(only 1\): "
                                        "beam search is not a speculative method"),
                    (dict(num_return_sequences=2), r"num_return_sequences=...\) = 2"),
                    (dict(penalty_alpha=0.6, top_k=4), r"penalty_alpha=...\) = 0.6 with top_k = 4 selects contrastive search"),
                    (dict(use_mtp=True), r"use_mtp=...\) = True .*multi-token-prediction"),
                    (dict(guidance_scale=1.5), r"guidance_scale=...\) = 1.5 .*only None or 1.*classifier-free"),
                    (dict(output_attentions=True), r"output_attentions=...\) = True .*over the draft tree"),
                    (dict(output_hidden_states=True), r"output_hidden_states=...\) = True"),
                    (dict(dola_layers="high"), r"dola_layers=...\) = 'high'.*DoLa"),
                    (dict(prompt_lookup_num_tokens=3), r"prompt_lookup_num_tokens=...\) = 3 .*NgramDrafter"),
                    (dict(token_healing=True), r"token_healing=...\) = True"),
                    (dict(num_beam_groups=2), r"num_beam_groups=...\) = 2 .*group beam search"),
                    (dict(force_words_ids=[[3]]), r"force_words_ids=...\) = \[\[3\]\] .*constrained beam search"),
                    (dict(constraints=[object()]), r"constraints=...\) = .*constrained beam search"),
                    (dict(watermarking_config={"bias": 2.0}), r"watermarking_config=...\) = .*not verified per tree node"),
                    (dict(assistant_early_exit=2), r"assistant_early_exit=...\) = 2 .*assisted decoding"),
                    (dict(assistant_tokenizer=object()), r"assistant_tokenizer=...\) is not supported .*assisted decoding"),
                    (dict(generation_config=GenerationConfig(num_beams=3)),
                     r"generation_config.num_beams = 3 is not supported"),
                    (dict(assistant_model=model), r"generate\(assistant_model=...\) is not supported by RadarDecoder: assisted"),
                    (dict(negative_prompt_ids=ids), r"negative_prompt_ids=...\) is not supported .*classifier-free"),
                    (dict(custom_generate=lambda **kw: None), r"custom_generate=...\) is not supported"),
                    (dict(past_key_values=object()), r"model inputs \['past_key_values'\] are not supported")):
        with pytest.raises(NotImplementedError, match=msg):
            dec.generate(ids, max_new_tokens=3, **kw)
    # an argument overrides the config, as in HF: num_beams=1 makes a beam-search config plain again
    assert torch.equal(dec.generate(ids, max_new_tokens=3, num_beams=1, generation_config=GenerationConfig(num_beams=4)),
                       dec.generate(ids, max_new_tokens=3))
    with pytest.raises(TypeError, match=r"neither RadarDecoder nor HF generate use: \['foo', 'max_tokens'\]"):
        dec.generate(ids, foo=1, max_tokens=3)
    P = ids.shape[1]
    with pytest.raises(ValueError, match=rf"max_length = {P} counts the prompt, which already has {P} tokens"):
        dec.generate(ids, max_length=P)
    with pytest.raises(ValueError, match=rf"generation_config.max_length = 3 counts the prompt"):
        dec.generate(ids, generation_config=GenerationConfig(max_length=3))
    with pytest.raises(ValueError, match="max_length must be an int >= 1, got 2.5"):
        dec.generate(ids, max_length=2.5)
    with pytest.raises(ValueError, match="pass the prompt once"):
        dec.generate(ids, inputs=ids)
    with pytest.raises(ValueError, match="input_ids must be given"):
        dec.generate(max_new_tokens=3)


@pytest.mark.parametrize("kind", ["ngram", "eagle"])
def test_left_padding_matches_hf_generate(models, kind):
    """A left-padded prompt (attention_mask zeros before it) gives what HF's generate gives: the padded
    input ids, then the same new tokens as the unpadded prompt; max_length counts the padding, as in HF."""
    model = models["sdpa"]
    dec = RadarDecoder(model, make_drafter(kind, model), StaticPolicy(2), tree_topk=3, verify_budget=4)
    ids = prompts()[1]
    P = ids.shape[1]
    padded = torch.cat([torch.full((1, 4), 7), ids], 1)
    mask = torch.cat([torch.zeros(1, 4, dtype=torch.int64), torch.ones_like(ids)], 1)
    for kw in (dict(max_new_tokens=20), dict(max_length=P + 4 + 9)):
        want = model.generate(padded, attention_mask=mask, do_sample=False, pad_token_id=0, **kw)
        got = dec.generate(padded, attention_mask=mask, **kw)
        assert torch.equal(got, want), kw
        assert torch.equal(got[:, :P + 4], padded)
    assert torch.equal(dec.generate(padded, attention_mask=mask, max_new_tokens=20)[:, 4:],
                       dec.generate(ids, max_new_tokens=20))


# ------------------------------------------------------------------ skipped cycles (plain steps)

class SkipPattern(StaticPolicy):
    """Drafts (True) or makes a plain step (False) by a repeating pattern, restarted per generate call;
    records the History's skip_run it was shown before each cycle."""

    def __init__(self, pattern, depth=3):
        super().__init__(depth)
        self.pattern = list(pattern)
        self.start_sequence()

    def start_sequence(self):
        self.k, self.skip_runs = 0, []

    def should_draft(self, step):
        self.skip_runs.append(step.history.skip_run)
        self.k += 1
        return self.pattern[(self.k - 1) % len(self.pattern)]


class RecordingDrafter(Drafter):
    """Delegates to a drafter and records, after every draft(), the request, the tree and the drafter's
    own state (EAGLE: the head cache length; lookup: the context)."""

    def __init__(self, inner):
        self.inner, self.feature_layers, self.drafts = inner, inner.feature_layers, []

    def start(self, input_ids, features, root):
        self.drafts = []
        self.inner.start(input_ids, features, root)

    def commit(self, emitted, n_emitted, features):
        self.inner.commit(emitted, n_emitted, features)

    def draft(self, req):
        tree = self.inner.draft(req)
        state = (self.inner.cache.length if isinstance(self.inner, EagleDrafter)
                 else self.inner._ctx[:self.inner._n].tolist())
        self.drafts.append((req, tree, state))
        return tree


PATTERNS = [(False, True), (True, False, False), (False, False, False, True)]


@pytest.mark.parametrize("kind", ["ngram", "eagle"])
@pytest.mark.parametrize("pattern", PATTERNS)
def test_skipped_cycles_stay_exact(models, kind, pattern):
    """A sequence switching between plain steps and drafted cycles is token-identical to HF greedy
    generate; every skip is counted, drafts nothing and shows in the History's skip_run."""
    model = models["sdpa"]
    policy = SkipPattern(pattern)
    dec = RadarDecoder(model, make_drafter(kind, model), policy, tree_topk=3, verify_budget=7)
    for ids, n in zip(prompts(), (9, 30, 30)):
        out = dec.generate(ids, max_new_tokens=n)
        assert torch.equal(out, reference(model, ids, n)), (kind, pattern, n)
        s = dec.last_stats
        asked = [pattern[k % len(pattern)] for k in range(policy.k)]
        assert policy.k == s.cycles and s.skipped_cycles == asked.count(False) > 0
        assert s.skip_share == pytest.approx(asked.count(False) / s.cycles)
        runs, run = [], 0
        for d in asked:
            runs.append(run)
            run = 0 if d else run + 1
        assert policy.skip_runs == runs
        if kind == "eagle":
            assert s.draft_calls == 3 * asked.count(True)


@pytest.mark.parametrize("kind", ["ngram", "eagle"])
def test_drafter_state_stays_current_through_skipped_cycles(models, kind):
    """After plain steps the next draft sees the whole text: the EAGLE head cache holds an entry for every
    position before the root (the skipped cycles' pairs are caught up in that one call 1) and its tree
    equals the one a fresh drafter drafts after a prefill of the same text; the lookup context is the
    whole text."""
    from radar_ext import kv_cache
    from radar_ext.verifier import prefill
    model = models["sdpa"]
    inner = make_drafter(kind, model)
    rec = RecordingDrafter(inner)
    ids = prompts()[1]
    dec = RadarDecoder(model, rec, SkipPattern((False, False, True)), tree_topk=3, verify_budget=7)
    text = dec.generate(ids, max_new_tokens=30)[0]
    assert len(rec.drafts) >= 3
    for req, tree, state in rec.drafts:
        seen = text[:req.seq_len]                                     # prompt + emitted, root last
        if kind == "ngram":
            assert state == seen.tolist()
            continue
        assert state == req.seq_len - 1                                # entries 0 .. root - 1
        fresh = EagleDrafter(inner.head, model)
        feats = prefill(model, kv_cache.new_target_cache(model), seen[None, :-1], fresh.feature_layers).features
        fresh.start(seen[None, :-1], feats, seen[-1:])
        want = fresh.draft(req)
        assert torch.equal(tree.tokens, want.tokens) and torch.equal(tree.parents, want.parents)
        torch.testing.assert_close(tree.guess_score, want.guess_score, rtol=0, atol=1e-4)


class AlwaysSkip(StaticPolicy):
    """A plain step every cycle; plans_plain_steps says so up front when `plans`."""

    def __init__(self, plans):
        super().__init__(3)
        self.plans, self.asked = plans, 0

    def should_draft(self, step):
        self.asked += 1
        return False

    def plans_plain_steps(self, first_seq_len, last_seq_len, temperature, batch_size=1):
        return self.plans


class CountingDrafter(RecordingDrafter):
    def __init__(self, inner):
        super().__init__(inner)
        self.commits = 0

    def commit(self, emitted, n_emitted, features):
        self.commits += 1
        super().commit(emitted, n_emitted, features)


@pytest.mark.parametrize("do_sample", [False, True])
def test_planned_plain_steps_decode_as_plain_decoding(models, do_sample):
    """A policy whose plain steps are known up front (plans_plain_steps) is decoded as plain decoding: no
    decision per cycle, no feature capture or commit for the drafter; the tokens are those of the same policy
    asked cycle by cycle and of plain decoding (greedy: HF's; sampling: the same generator draws)."""
    model = models["sdpa"]
    kw = dict(do_sample=True, temperature=1.0, top_k=0, top_p=1.0) if do_sample else {}
    outs = {}
    for plans in (True, False):
        drafter = CountingDrafter(make_drafter("eagle", model))
        policy = AlwaysSkip(plans)
        dec = RadarDecoder(model, drafter, policy, tree_topk=3, verify_budget=7)
        for i, ids in enumerate(prompts()):
            g = torch.Generator().manual_seed(i)
            outs.setdefault(plans, []).append(dec.generate(ids, max_new_tokens=20, generator=g, **kw))
            s = dec.last_stats
            assert s.skipped_cycles == s.cycles > 0 and s.draft_calls == 0
        assert (policy.asked == 0 and drafter.commits == 0) if plans else (policy.asked > 0 and drafter.commits > 0)
    plain = RadarDecoder(model)
    for i, (a, b, ids) in enumerate(zip(outs[True], outs[False], prompts())):
        assert torch.equal(a, b)
        g = torch.Generator().manual_seed(i)
        assert torch.equal(a, plain.generate(ids, max_new_tokens=20, generator=g, **kw))
        if not do_sample:
            assert torch.equal(a, reference(model, ids, 20))


def test_learned_policies_plan_plain_steps_exactly_where_they_skip():
    """The shipped LTD and RADAR (no history): plans_plain_steps over a range is True exactly when should_draft
    says False at every length in it (T = 1: every cycle a plain step on the shipped costs; T = 0: drafts)."""
    from radar_ext.policies import CostInfo, History, LtdPolicy, PreDraftStep, RadarPolicy
    for cls in (LtdPolicy, RadarPolicy):
        policy = cls.from_pretrained()
        for T in (0.0, 1.0):
            each = [policy.should_draft(PreDraftStep(s, CostInfo(), History(), T)) for s in range(40, 300)]
            assert policy.plans_plain_steps(40, 299, T) == (not any(each)), (cls.__name__, T)
        assert policy.plans_plain_steps(40, 299, 1.0) and not policy.plans_plain_steps(40, 299, 0.0), cls.__name__
