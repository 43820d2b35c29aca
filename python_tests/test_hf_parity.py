"""RadarDecoder.generate against the target's own generate for the rest of HF's arguments, on the tiny
random Llama: default lengths, return_dict_in_generate with scores / logits, stopping criteria checked per
emitted token, logits processors applied per tree node with the node's own prefix (greedy: token-identical
output and scores; sampling: the processed scores, and a TV test of the processed distribution), refusals.

Besides the n-gram and random EAGLE drafters (few accepted tokens on a random model) and plain decoding
(drafter=None), a scripted drafter proposes HF's own answer as a chain with a wrong sibling at every level:
most of each cycle is accepted, so processors see deep tree nodes and stopping criteria have to cut inside
a cycle."""
import string

import pytest
import torch
from conftest import FLOAT_TOL
from test_acceptance import FixedTreeDrafter, small_model, tv_threshold  # noqa: F401 (fixture)
from test_acceptance import VOCAB as SMALL_VOCAB
from test_decoder import VOCAB, make_drafter, prompts, tiny_llama
from transformers import GenerationConfig
from transformers.generation import (EosTokenCriteria, GenerateDecoderOnlyOutput, LogitsProcessor,
                                     MaxLengthCriteria, StoppingCriteria, StoppingCriteriaList, TopKLogitsWarper)

from radar_ext import RadarDecoder, StaticPolicy
from radar_ext.drafters import Drafter
from radar_ext.processors import Processing
from radar_ext.tree import make_tree

N = 24  # new tokens per parity case


@pytest.fixture(scope="module")
def model():
    return tiny_llama("sdpa")


class ScriptedDrafter(Drafter):
    """Proposes the next `depth` tokens of a known answer as a chain, each with a wrong sibling
    (token + 1): a correct script is accepted whole, so the verify tree's deep nodes decide."""

    def __init__(self, script, depth=5):
        self.script, self.depth = list(script), depth

    def start(self, input_ids, features, root):
        self.prompt_len = input_ids.shape[1]

    def commit(self, emitted, n_emitted, features):
        pass

    def draft(self, req):
        done = req.seq_len - self.prompt_len                      # emitted so far, root included
        nxt = self.script[done:done + self.depth]
        tokens, parents, prev = [int(req.root[0])], [-1], 0
        for t in nxt:
            tokens += [(t + 1) % VOCAB, t]                        # the wrong sibling first, then the script
            parents += [prev, prev]
            prev = len(tokens) - 1
        return make_tree(torch.tensor([tokens]), torch.tensor([parents]), torch.tensor([len(tokens)]), draft_calls=1)


def hf(model, ids, **kw):
    return model.generate(ids, attention_mask=torch.ones_like(ids), **kw)


def decoders(model, script=None):
    """(name, RadarDecoder) for the n-gram and EAGLE drafters, plain decoding (drafter=None, ar-fast), and
    the scripted drafter when a script is given."""
    out = [(k, RadarDecoder(model, make_drafter(k, model), StaticPolicy(3), tree_topk=3, verify_budget=7))
           for k in ("ngram", "eagle")] + [("plain", RadarDecoder(model, None))]
    if script is not None:
        out.append(("scripted", RadarDecoder(model, ScriptedDrafter(script), StaticPolicy(1), verify_budget=10)))
    return out


def assert_same_output(got, want, scores=True):
    assert isinstance(got, GenerateDecoderOnlyOutput)
    assert torch.equal(got.sequences, want.sequences), (got.sequences, want.sequences)
    for name in ("scores", "logits") if scores else ():
        g, w = getattr(got, name), getattr(want, name)
        assert (g is None) == (w is None), name
        if w is not None:
            assert len(g) == len(w), name
            for k, (a, b) in enumerate(zip(g, w)):
                assert a.shape == b.shape == (1, VOCAB)
                torch.testing.assert_close(a, b, **FLOAT_TOL, msg=lambda m: f"{name}[{k}]: {m}")


def free_answer(model, ids, n=N):
    return hf(model, ids, max_new_tokens=n, pad_token_id=0)[0, ids.shape[1]:].tolist()


# ------------------------------------------------------------------ 1. length defaults


def test_no_length_anywhere_gives_hfs_default_and_warning(model):
    """No length in the call or any config: 20 new tokens (transformers 5.23's model-agnostic default,
    max_length = 20 + prompt), with HF's own warning; capped at max_position_embeddings like HF."""
    dec = RadarDecoder(model, make_drafter("ngram", model))
    ids = prompts()[1]
    with pytest.warns(UserWarning, match=r"model-agnostic default `max_length` \(=32\)"):
        want = hf(model, ids, pad_token_id=0)
    with pytest.warns(UserWarning, match=r"model-agnostic default `max_length` \(=32\)"):
        got = dec.generate(ids, pad_token_id=0)
    assert want.shape[1] == ids.shape[1] + 20 and torch.equal(got, want)
    long = torch.randint(0, VOCAB, (1, 250), generator=torch.Generator().manual_seed(3))  # 256 positions
    with pytest.warns(UserWarning, match="model-agnostic default"):
        want = hf(model, long, pad_token_id=0)
    with pytest.warns(UserWarning, match="model-agnostic default"):
        got = dec.generate(long, pad_token_id=0)
    assert want.shape[1] == 256 and torch.equal(got, want)


@pytest.mark.parametrize("field,value", [("max_length", 19), ("max_new_tokens", 9)])
def test_length_from_the_targets_generation_config(model, field, value):
    """A length set on the target's own generation_config is used as HF uses it (max_length counts
    the prompt), and an explicit argument still wins."""
    dec = RadarDecoder(model, make_drafter("ngram", model))
    ids = prompts()[1]
    old = getattr(model.generation_config, field)
    setattr(model.generation_config, field, value)
    try:
        want = hf(model, ids, pad_token_id=0)
        assert want.shape[1] == (value if field == "max_length" else ids.shape[1] + value)
        assert torch.equal(dec.generate(ids, pad_token_id=0), want)
        assert torch.equal(dec.generate(ids, max_new_tokens=4), hf(model, ids, max_new_tokens=4, pad_token_id=0))
        # a passed generation_config without a length inherits the target's, as in HF
        gc = GenerationConfig(eos_token_id=None)
        assert torch.equal(dec.generate(ids, generation_config=gc), hf(model, ids, generation_config=gc))
    finally:
        setattr(model.generation_config, field, old)


# ------------------------------------------------------------------ 4. dict outputs


@pytest.mark.parametrize("kw", [dict(), dict(repetition_penalty=1.3)], ids=["plain", "repetition_penalty"])
def test_return_dict_scores_and_logits_match_hf(model, kw):
    """return_dict_in_generate: HF's GenerateDecoderOnlyOutput, sequences identical, one scores row
    (processed) and one logits row (raw) per emitted token, equal to HF's within float tolerance."""
    ids = prompts()[2]
    out = dict(max_new_tokens=N, return_dict_in_generate=True, pad_token_id=0)
    want = hf(model, ids, **kw, **out, output_scores=True, output_logits=True)
    assert len(want.scores) == N
    if kw:  # the processor changed the scores: the comparison below sees processing
        assert not torch.equal(want.scores[3], want.logits[3])
    for name, dec in decoders(model, script=want.sequences[0, ids.shape[1]:].tolist()):
        got = dec.generate(ids, **kw, **out, output_scores=True, output_logits=True)
        assert_same_output(got, want)
        got = dec.generate(ids, **kw, **out)
        assert got.scores is None and got.logits is None and torch.equal(got.sequences, want.sequences)
        got = dec.generate(ids, **kw, **out, output_logits=True)
        assert got.scores is None and len(got.logits) == N
        if name == "scripted":
            assert dec.last_stats.cycles <= N // 3  # the script is accepted: deep nodes scored


def test_return_dict_when_stopped_early(model):
    """Rows stop with the sequence: EOS inside an accepted run gives exactly one row per kept token."""
    ids = prompts()[1]
    free = free_answer(model, ids)
    eos = free[7]
    kw = dict(max_new_tokens=N, eos_token_id=eos, pad_token_id=0, return_dict_in_generate=True,
              output_scores=True, output_logits=True)
    want = hf(model, ids, **kw)
    assert want.sequences.shape[1] == ids.shape[1] + free.index(eos) + 1
    for _, dec in decoders(model, script=free):
        assert_same_output(dec.generate(ids, **kw), want)


# ------------------------------------------------------------------ 2. stopping


class StopAfter(StoppingCriteria):
    """Stops after token `tok`; records the length of every input_ids it is called with."""

    def __init__(self, tok):
        self.tok, self.lengths = tok, []

    def __call__(self, input_ids, scores, **kwargs):
        self.lengths.append(input_ids.shape[1])
        return input_ids[:, -1] == self.tok


def test_stopping_criteria_checked_per_emitted_token(model):
    """A user StoppingCriteria sees every emitted token once, in order (input_ids grows by one each
    call, as in HF), so a cycle that accepted several tokens is cut right after the stopping one."""
    ids = prompts()[2]
    P = ids.shape[1]
    free = free_answer(model, ids)
    for k in (0, 5, 13):
        tok = free[k]
        crit = StopAfter(tok)
        want = hf(model, ids, max_new_tokens=N, pad_token_id=0, stopping_criteria=StoppingCriteriaList([crit]))
        assert want.shape[1] == P + free.index(tok) + 1
        assert crit.lengths == list(range(P + 1, want.shape[1] + 1))
        for name, dec in decoders(model, script=free):
            crit = StopAfter(tok)
            got = dec.generate(ids, max_new_tokens=N, stopping_criteria=StoppingCriteriaList([crit]))
            assert torch.equal(got, want), (name, k)
            assert crit.lengths == list(range(P + 1, want.shape[1] + 1)), name
            if name == "scripted" and k:
                assert dec.last_stats.tokens > dec.last_stats.cycles + 1  # several tokens per cycle, then cut


def test_user_length_and_eos_criteria_replace_generates_own(model):
    """HF lets a user MaxLengthCriteria / EosTokenCriteria replace the one generate builds; so does RadarDecoder."""
    dec = RadarDecoder(model, make_drafter("ngram", model))
    ids = prompts()[1]
    P = ids.shape[1]
    free = free_answer(model, ids)
    for crit in (MaxLengthCriteria(P + 5), EosTokenCriteria(free[3])):
        kw = dict(max_new_tokens=N, eos_token_id=free[1], pad_token_id=0, stopping_criteria=StoppingCriteriaList([crit]))
        want = hf(model, ids, **kw)
        assert torch.equal(dec.generate(ids, **kw), want), crit
    with pytest.raises(ValueError, match=r"MaxLengthCriteria\(max_length=12\) counts the prompt"):
        dec.generate(ids, max_new_tokens=N, stopping_criteria=StoppingCriteriaList([MaxLengthCriteria(P)]))


def char_tokenizer():
    """A fast tokenizer whose 61 tokens are single characters (a-z, A-Z, 0-8), for stop strings."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = (string.ascii_lowercase + string.ascii_uppercase + string.digits)[:VOCAB]
    tk = Tokenizer(models.WordLevel({c: i for i, c in enumerate(chars)}, unk_token="a"))
    tk.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tk.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tk)


def test_stop_strings_and_min_new_tokens(model):
    """stop_strings (with tokenizer=) stop where HF stops, alone and with min_new_tokens (which masks
    EOS until then); without a tokenizer HF's own error naming it."""
    tok = char_tokenizer()
    ids = prompts()[2]
    free = free_answer(model, ids)
    text = tok.decode(free)
    stop = text[6:8]                                  # two characters the answer spells early
    kw = dict(max_new_tokens=N, pad_token_id=0, stop_strings=[stop], tokenizer=tok)
    want = hf(model, ids, **kw)
    assert want.shape[1] < ids.shape[1] + N and tok.decode(want[0, ids.shape[1]:]).endswith(stop)
    eos = free[2]
    combo = dict(kw, min_new_tokens=12, eos_token_id=eos)
    want_combo = hf(model, ids, **combo)
    assert not torch.equal(want_combo, hf(model, ids, **dict(kw, eos_token_id=eos)))  # min_new_tokens acts
    for name, dec in decoders(model, script=free):
        assert torch.equal(dec.generate(ids, **kw), want), name
        assert torch.equal(dec.generate(ids, **combo), want_combo), name
    with pytest.raises(ValueError, match="pass the model's tokenizer to the `tokenizer` argument"):
        dec.generate(ids, max_new_tokens=4, stop_strings=["ab"])


def test_max_time(model):
    """max_time = 0: HF stops after the first token; so does RadarDecoder. A generous one changes nothing."""
    ids = prompts()[1]
    for _, dec in decoders(model):
        want = hf(model, ids, max_new_tokens=N, pad_token_id=0, max_time=0.0)
        assert want.shape[1] == ids.shape[1] + 1
        assert torch.equal(dec.generate(ids, max_new_tokens=N, max_time=0.0), want)
        assert torch.equal(dec.generate(ids, max_new_tokens=N, max_time=600.0),
                           hf(model, ids, max_new_tokens=N, pad_token_id=0))


# ------------------------------------------------------------------ 3. logits processors, greedy


class PenaliseLast(LogitsProcessor):
    """A user processor written for batch 1 (reads input_ids[0]): lowers the last token and its +1."""

    def __call__(self, input_ids, scores):
        assert input_ids.shape[0] == 1  # the per-prefix call RadarDecoder documents
        last = int(input_ids[0, -1])
        scores = scores.clone()
        scores[0, last] -= 3.0
        scores[0, (last + 1) % scores.shape[1]] -= 3.0
        return scores


def allowed_by_parity(batch_id, sent):
    """prefix_allowed_tokens_fn: after an even token only odd ones, and the other way round."""
    return list(range(1 - int(sent[-1]) % 2, VOCAB, 2))


def processor_cases(free, P):
    """name -> kwargs for every processor generate builds, alone and in common combinations."""
    a, b, c = free[2], free[4], free[5]
    return dict([
        ("repetition_penalty", dict(repetition_penalty=1.3)),
        ("repetition_penalty<1", dict(repetition_penalty=0.8)),
        ("no_repeat_ngram_size", dict(no_repeat_ngram_size=2)),
        ("min_new_tokens", dict(min_new_tokens=12, eos_token_id=free[3])),
        ("min_length", dict(min_length=P + 12, eos_token_id=free[3])),
        ("bad_words_ids", dict(bad_words_ids=[[a], [b, c]])),
        ("suppress_tokens", dict(suppress_tokens=[free[1], free[3]])),
        ("begin_suppress_tokens", dict(begin_suppress_tokens=[free[0]])),
        ("sequence_bias", dict(sequence_bias={(a,): -10.0, (b, c): 6.0})),
        ("encoder_repetition_penalty", dict(encoder_repetition_penalty=1.5)),
        ("encoder_no_repeat_ngram_size", dict(encoder_no_repeat_ngram_size=1)),
        ("exponential_decay_length_penalty", dict(exponential_decay_length_penalty=(4, 1.6), eos_token_id=free[9])),
        ("forced_eos_token_id", dict(forced_eos_token_id=7, max_length=P + 10)),
        ("logits_processor", dict(logits_processor=[PenaliseLast()])),
        ("prefix_allowed_tokens_fn", dict(prefix_allowed_tokens_fn=allowed_by_parity)),
        ("repetition_penalty+no_repeat_ngram_size", dict(repetition_penalty=1.2, no_repeat_ngram_size=3)),
        ("rep+bad_words+min_new_tokens", dict(repetition_penalty=1.2, bad_words_ids=[[a]], min_new_tokens=8,
                                              eos_token_id=free[3])),
    ])


CASE_NAMES = list(processor_cases(list(range(10)), 1))


@pytest.mark.parametrize("name", CASE_NAMES)
def test_processor_greedy_matches_hf(model, name):
    """Each processor alone and in combinations: the tokens and the per-token scores / logits equal the
    target's own greedy generate with the same arguments, for every drafter. Each case first checks
    that the processor changes HF's answer on one of the prompts, so a decoder ignoring it fails."""
    changed = []
    for ids in (prompts()[1], prompts()[2]):
        P = ids.shape[1]
        free = free_answer(model, ids)
        kw = processor_cases(free, P)[name]
        kw = dict(kw, pad_token_id=0, return_dict_in_generate=True, output_scores=True, output_logits=True)
        if "max_length" not in kw:
            kw["max_new_tokens"] = N
        want = hf(model, ids, **kw)
        changed.append(want.sequences[0, P:].tolist() != free[:want.sequences.shape[1] - P])
        for dname, dec in decoders(model, script=want.sequences[0, P:].tolist()):
            assert_same_output(dec.generate(ids, **kw), want)
            # and through the fast output path (no dict): the same tokens
            plain = {k: v for k, v in kw.items() if k not in ("return_dict_in_generate", "output_scores", "output_logits")}
            assert torch.equal(dec.generate(ids, **plain), want.sequences), (name, dname)
        # a script of the unprocessed answer: drafts the processors reject must be rejected
        dec = RadarDecoder(model, ScriptedDrafter(free), StaticPolicy(1), verify_budget=10)
        assert_same_output(dec.generate(ids, **kw), want)
    assert any(changed), name


def test_processors_with_left_padding(model):
    """A left-padded prompt: processors see the padded input_ids, as in HF (repetition_penalty skips the
    padding, no_repeat_ngram_size does not)."""
    ids = prompts()[1]
    padded = torch.cat([torch.full((1, 3), ids[0, 0].item()), ids], 1)
    mask = torch.cat([torch.zeros(1, 3, dtype=torch.int64), torch.ones_like(ids)], 1)
    for kw in (dict(repetition_penalty=1.4), dict(no_repeat_ngram_size=2), dict(min_new_tokens=6, eos_token_id=3)):
        want = model.generate(padded, attention_mask=mask, max_new_tokens=N, pad_token_id=0, **kw)
        for _, dec in decoders(model):
            assert torch.equal(dec.generate(padded, attention_mask=mask, max_new_tokens=N, **kw), want), kw


def test_renormalize_and_remove_invalid_values_scores(model):
    """Processors that change the scores but not the greedy choice: the returned scores are HF's."""
    ids = prompts()[1]
    kw = dict(max_new_tokens=10, pad_token_id=0, renormalize_logits=True, remove_invalid_values=True,
              repetition_penalty=1.1, return_dict_in_generate=True, output_scores=True)
    want = hf(model, ids, **kw)
    assert torch.allclose(want.scores[0].exp().sum(), torch.tensor(1.0))
    for _, dec in decoders(model, script=want.sequences[0, ids.shape[1]:].tolist()):
        assert_same_output(dec.generate(ids, **kw), want)


# ------------------------------------------------------------------ 3. sampling


WARPER_CASES = [dict(temperature=0.7), dict(top_k=10), dict(top_p=0.8), dict(min_p=0.1), dict(typical_p=0.8),
                dict(epsilon_cutoff=0.02), dict(eta_cutoff=0.02), dict(top_k=0, temperature=1.4, top_p=0.9),
                dict(repetition_penalty=1.5, no_repeat_ngram_size=2, temperature=0.9),
                dict(top_h=0.4), dict(logits_processor=[TopKLogitsWarper(5)], top_k=20)]  # a user warper runs besides generate's


@pytest.mark.parametrize("kw", WARPER_CASES, ids=lambda kw: "+".join(kw))
def test_sampling_scores_are_the_targets_processed_scores(model, kw):
    """Seeded sampling with processors and warpers: every returned score row equals what HF's own generate
    computes at that prefix (HF's one-step generate on the prompt + the tokens before it), the drawn token
    has finite score there, and raw logits match too. These processors do not depend on where the prompt ends."""
    ids = prompts()[2]
    P = ids.shape[1]
    out = dict(do_sample=True, return_dict_in_generate=True, output_scores=True, output_logits=True, pad_token_id=0)
    for name, dec in decoders(model, script=free_answer(model, ids)):
        got = dec.generate(ids, max_new_tokens=10, generator=torch.Generator().manual_seed(4), **kw, **out)
        seq = got.sequences
        assert len(got.scores) == len(got.logits) == seq.shape[1] - P == 10
        for t in range(seq.shape[1] - P):
            want = hf(model, seq[:, :P + t], max_new_tokens=1, **kw, **out)
            torch.testing.assert_close(got.scores[t], want.scores[0], **FLOAT_TOL)
            torch.testing.assert_close(got.logits[t], want.logits[0], **FLOAT_TOL)
            assert torch.isfinite(got.scores[t][0, seq[0, P + t]]), (name, t)


SMALL_KW = dict(repetition_penalty=2.5, no_repeat_ngram_size=2, temperature=1.3, top_k=5)
N_SAMPLES = 800


def small_exact(model, prompt):
    """P(new tokens 2, 3) of HF's own processed sampling, summed over token 1: [V, V]. Each position's
    distribution is HF's: softmax of its one-step generate's scores on that prefix."""
    def probs(seq):
        ids = torch.tensor([seq])
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=1, do_sample=True,
                             return_dict_in_generate=True, output_scores=True, pad_token_id=0, **SMALL_KW)
        return torch.softmax(out.scores[0][0].double(), -1)

    exact = torch.zeros(SMALL_VOCAB, SMALL_VOCAB, dtype=torch.float64)
    p1 = probs(prompt)
    for a in range(SMALL_VOCAB):
        if p1[a] == 0:
            continue
        p2 = probs(prompt + [a])
        for b in range(SMALL_VOCAB):
            if p2[b] > 0:
                exact[b] += p1[a] * p2[b] * probs(prompt + [a, b])
    return exact


def small_tv(model):
    prompt = [1, 2, 3]
    exact = small_exact(model, prompt)
    assert abs(exact.sum().item() - 1) < 1e-6
    dec = RadarDecoder(model, FixedTreeDrafter(), StaticPolicy(1), verify_budget=6)
    g = torch.Generator().manual_seed(99)
    counts = torch.zeros_like(exact)
    ids = torch.tensor([prompt])
    for _ in range(N_SAMPLES):
        out = dec.generate(ids, max_new_tokens=3, do_sample=True, generator=g, pad_token_id=0, **SMALL_KW)
        counts[out[0, -2], out[0, -1]] += 1
    return 0.5 * (counts / N_SAMPLES - exact).abs().sum().item(), tv_threshold(exact, N_SAMPLES)


def test_sampling_with_processors_is_lossless(small_model):  # noqa: F811
    """Tokens 2 and 3 (decided inside draft trees) follow HF's processed distribution (repetition penalty,
    no-repeat n-grams, temperature, top-k): total variation below what sampling noise alone reaches."""
    tv, threshold = small_tv(small_model)
    assert tv < threshold, (tv, threshold)


def test_processing_with_the_roots_prefix_only_fails_the_same_test(small_model, monkeypatch):  # noqa: F811
    """A decoder that processes every tree node with the root's prefix (ancestors left out) is caught."""
    real = Processing.node_scores

    def wrong(self, prefix, raw):
        cut = self.prompt.shape[1] + 1
        return real(self, prefix if prefix.shape[1] <= cut else prefix[:, :cut], raw)

    monkeypatch.setattr(Processing, "node_scores", wrong)
    tv, threshold = small_tv(small_model)
    assert tv > threshold, (tv, threshold)


# ------------------------------------------------------------------ 5. refusals and errors


def test_object_argument_errors(model):
    dec = RadarDecoder(model, make_drafter("ngram", model))
    ids = prompts()[1]
    with pytest.raises(TypeError, match="logits_processor must be a LogitsProcessorList"):
        dec.generate(ids, max_new_tokens=3, logits_processor=PenaliseLast())
    with pytest.raises(TypeError, match="stopping_criteria must be a StoppingCriteriaList"):
        dec.generate(ids, max_new_tokens=3, stopping_criteria=[3])
    with pytest.raises(TypeError, match="prefix_allowed_tokens_fn must be callable"):
        dec.generate(ids, max_new_tokens=3, prefix_allowed_tokens_fn=[1, 2])


def test_no_processor_no_walk(model, monkeypatch):
    """Plain greedy, and sampling with only temperature / top_k / top_p, keep the vectorised acceptance
    (no per-node processing); a user processor list, another warper or score outputs take the walk."""
    import radar_ext.processors as processors

    calls = []
    real = processors.walk_accept
    monkeypatch.setattr(processors, "walk_accept", lambda *a, **k: calls.append(1) or real(*a, **k))
    ids = prompts()[1]
    g = torch.Generator().manual_seed(0)
    dec = RadarDecoder(model, ScriptedDrafter(free_answer(model, ids)), StaticPolicy(1), verify_budget=10)
    dec.generate(ids, max_new_tokens=N)
    dec.generate(ids, max_new_tokens=N, do_sample=True, temperature=0.7, top_k=20, top_p=0.9, generator=g)
    dec.generate(ids, max_new_tokens=N, return_dict_in_generate=True)
    assert calls == []
    for kw in (dict(output_scores=True, return_dict_in_generate=True), dict(min_p=0.1, do_sample=True),
               dict(do_sample=True, logits_processor=[PenaliseLast()]), dict(repetition_penalty=1.1)):
        dec.generate(ids, max_new_tokens=N, generator=g, **kw)
        assert calls, kw
        calls.clear()


def test_user_warper_is_not_dropped_by_the_fast_sampling_path(model):
    """A user TopKLogitsWarper(1) makes sampling deterministic in HF (it runs besides generate's own
    warpers); RadarDecoder must run it too, without score outputs (the path a user takes)."""
    ids = prompts()[2]
    kw = dict(max_new_tokens=N, do_sample=True, temperature=1.5, logits_processor=[TopKLogitsWarper(1)])
    want = hf(model, ids, pad_token_id=0, **kw)
    assert torch.equal(want, hf(model, ids, pad_token_id=0, max_new_tokens=N))  # top-1: the greedy answer
    for _, dec in decoders(model, script=want[0, ids.shape[1]:].tolist()):
        assert torch.equal(dec.generate(ids, generator=torch.Generator().manual_seed(1), **kw), want)


def test_forced_bos_token_on_a_one_token_prompt(model):
    """forced_bos_token_id acts only when the prompt is one token long (HF's rule): the first token is forced."""
    ids = prompts()[0][:, :1]
    kw = dict(max_new_tokens=12, pad_token_id=0, forced_bos_token_id=9, return_dict_in_generate=True, output_scores=True)
    want = hf(model, ids, **kw)
    assert want.sequences[0, 1] == 9 and free_answer(model, ids, 12)[0] != 9
    for _, dec in decoders(model, script=want.sequences[0, 1:].tolist()):
        assert_same_output(dec.generate(ids, **kw), want)


def test_penalty_alpha_without_contrastive_search_is_plain_greedy(model):
    """penalty_alpha selects contrastive search only with top_k > 1 (HF's rule); with top_k = 1 HF decodes
    greedily, and so does RadarDecoder instead of refusing."""
    ids = prompts()[1]
    want = hf(model, ids, max_new_tokens=10, pad_token_id=0, penalty_alpha=0.6, top_k=1)
    assert torch.equal(want, hf(model, ids, max_new_tokens=10, pad_token_id=0))
    dec = RadarDecoder(model, make_drafter("ngram", model))
    assert torch.equal(dec.generate(ids, max_new_tokens=10, penalty_alpha=0.6, top_k=1), want)


def test_no_effect_arguments(model):
    """Arguments accepted as no effect on one sequence: HF's answer with them set away from their
    defaults is still the plain greedy one, and so is RadarDecoder's."""
    ids = prompts()[1]
    kw = dict(bos_token_id=3, use_cache=False, synced_gpus=False, length_penalty=2.0, early_stopping=True,
              low_memory=True, cache_implementation="dynamic", num_assistant_tokens=7, disable_compile=True,
              max_cache_len=200, decoder_start_token_id=4, num_beams=1, num_return_sequences=1)
    plain = hf(model, ids, max_new_tokens=N, pad_token_id=0)
    want = hf(model, ids, max_new_tokens=N, pad_token_id=5, **kw)
    assert torch.equal(want, plain)
    for _, dec in decoders(model):
        assert torch.equal(dec.generate(ids, max_new_tokens=N, pad_token_id=5, **kw), want)
