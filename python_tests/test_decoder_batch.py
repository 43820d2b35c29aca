"""RadarDecoder.generate at batch size > 1 (docs BATCH.md): every row token-identical to the target's
own greedy generate of that row alone (left-padded prompts of different lengths, rows ending at
different steps by EOS or max_new_tokens, both drafters, every controller, eager and sdpa), HF's output
layout (pad_token_id after a row's EOS), finished rows leaving the verify batch, rows taking plain steps
(V = 0) while others draft, lossless sampling per row, and the refused inputs."""
import math

import numpy as np
import pytest
import torch

import radar_ext.decoder as decoder_mod
from radar_ext import EagleDrafter, HybridDrafter, LookupScores, NgramDrafter, RadarDecoder, StaticPolicy
from radar_ext.drafters.lookup_scores import COUNT_BUCKETS
from radar_ext.policies import LtdPolicy, RadarPolicy
from test_acceptance import N_SAMPLES, PARAMS, FixedTreeDrafter, exact_distribution, small_model, tv_threshold  # noqa: F401
from test_decoder import VOCAB, SkipPattern, tiny_llama

COSTS = {"t_draft": 0.002, "t_policy": 1e-4, "t_ar": 0.01, "t_verify": {"V": [1, 16, 64], "seconds": [0.01, 0.012, 0.02]}}


@pytest.fixture(scope="module")
def models():
    return {a: tiny_llama(a) for a in ("eager", "sdpa")}


def rows(n_rows, seed=7):
    """Prompts of different lengths, each a repeat (so that n-gram lookups find something)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in (1, 6, 17, 3, 9)[:n_rows]:
        p = torch.randint(0, VOCAB, (1, n), generator=g)
        out.append(torch.cat([p, p], 1))
    return out


def left_padded(prompts, pad=0):
    """HF's batch layout: input_ids [B, P] and attention_mask, zeros before each shorter prompt."""
    P = max(r.shape[1] for r in prompts)
    ids = torch.full((len(prompts), P), pad, dtype=torch.int64)
    mask = torch.zeros_like(ids)
    for b, r in enumerate(prompts):
        ids[b, P - r.shape[1]:] = r[0]
        mask[b, P - r.shape[1]:] = 1
    return ids, mask


def single_row_references(model, prompts, n, eos):
    """Each row's own greedy generate (no batch), its new tokens only."""
    return [model.generate(r, attention_mask=torch.ones_like(r), max_new_tokens=n, do_sample=False,
                           eos_token_id=eos, pad_token_id=0)[0, r.shape[1]:] for r in prompts]


def assert_rows_match(out, P, refs, pad):
    longest = max(r.shape[0] for r in refs)
    assert out.shape[1] == P + longest, (out.shape, P, longest)
    for b, ref in enumerate(refs):
        got = out[b, P:]
        assert torch.equal(got[:ref.shape[0]], ref), (b, got.tolist(), ref.tolist())
        assert (got[ref.shape[0]:] == pad).all(), (b, got.tolist())


def eos_ending_row0_early(model, prompts, n):
    """A token row 0 emits first at its 4th new token or later and that some other row never emits in n
    tokens: row 0 then ends early while that row runs to max_new_tokens."""
    free = [r.tolist() for r in single_row_references(model, prompts, n, None)]
    return next(t for k, t in enumerate(free[0]) if k >= 3 and t not in free[0][:k]
                and any(t not in other for other in free[1:]))


def rows_ending_apart(model, n=24):
    """Three prompts whose rows end at different steps (row 0 on an EOS, another at n): (prompts, n, eos,
    each row's own greedy answer)."""
    prompts = rows(3)
    eos = eos_ending_row0_early(model, prompts, n)
    return prompts, n, eos, single_row_references(model, prompts, n, eos)


def record_verify_rows(monkeypatch) -> list:
    """Every batched verify the decoder makes, as {rows, cache_rows, feature_layers}, appended to the list returned."""
    calls = []
    real = decoder_mod.verify_rows

    def recording(target, cache, tree, lengths, pads, feature_layers=None, **k):
        calls.append({"rows": tree.tokens.shape[0], "feature_layers": feature_layers,
                      "cache_rows": {layer.keys.shape[0] for layer in cache.layers if layer.is_initialized}})
        return real(target, cache, tree, lengths, pads, feature_layers, **k)

    monkeypatch.setattr(decoder_mod, "verify_rows", recording)
    return calls


def make_policy(kind, skip=False):
    if kind == "static":
        return StaticPolicy(3)
    if kind == "radar":
        return RadarPolicy(tree_topk=3, max_draft_calls=4, seed=1, skip=skip)
    return LtdPolicy(tree_topk=3, max_draft_calls=4, budgets=(2, 4, 7, 12), costs=COSTS, pool_topk=8, seed=1, skip=skip)


def make_drafter(kind, model):
    if kind == "hybrid":  # EAGLE pool + context lookups in one tree: each row forks both sides
        rates = np.full((4, 12, COUNT_BUCKETS), math.log(0.9))
        return HybridDrafter(EagleDrafter.init_random(model, seed=1), NgramDrafter(max_ngram=3, min_ngram=1),
                             LookupScores(rates))
    return NgramDrafter(max_ngram=3, min_ngram=1) if kind == "ngram" else EagleDrafter.init_random(model, seed=1)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("kind", ["ngram", "eagle", "hybrid"])
@pytest.mark.parametrize("B", [2, 3, 5])
def test_every_row_matches_its_single_row_greedy_output(models, attn, kind, B):
    model = models[attn]
    prompts = rows(B)
    n = 24
    eos = eos_ending_row0_early(model, prompts, n)
    refs = single_row_references(model, prompts, n, eos)
    assert refs[0].shape[0] < n and max(r.shape[0] for r in refs) == n  # rows end at different steps
    dec = RadarDecoder(model, make_drafter(kind, model), StaticPolicy(3), tree_topk=3, verify_budget=7)
    ids, mask = left_padded(prompts)
    out = dec.generate(ids, attention_mask=mask, max_new_tokens=n, eos_token_id=eos, pad_token_id=0)
    assert_rows_match(out, ids.shape[1], refs, pad=0)
    s = dec.last_stats
    assert s.tokens == sum(r.shape[0] for r in refs) and sum(s.accepted_hist) == s.cycles
    assert s.forwards < s.cycles  # rows verified together


@pytest.mark.parametrize("policy, skip", [("static", False), ("radar", False), ("ltd", False), ("radar", True),
                                          ("ltd", True)])
def test_every_controller_decides_per_row_and_stays_exact(models, policy, skip):
    model = models["sdpa"]
    prompts = rows(3, seed=11)
    refs = single_row_references(model, prompts, 20, None)
    dec = RadarDecoder(model, EagleDrafter.init_random(model, seed=1), make_policy(policy, skip), tree_topk=3,
                       verify_budget=7)
    ids, mask = left_padded(prompts)
    assert_rows_match(dec.generate(ids, attention_mask=mask, max_new_tokens=20), ids.shape[1], refs, pad=0)


def test_rows_may_take_plain_steps_while_others_draft(models, monkeypatch):
    """A controller that declines to draft on alternate cycles, started at a different phase per row:
    the verify batch then mixes root-only rows (V = 0) with drafted trees, and stays exact."""
    model = models["sdpa"]
    shapes = []
    real = decoder_mod.stack_trees

    def recording(trees):
        shapes.append([int(t.n_nodes[0]) for t in trees])
        return real(trees)

    monkeypatch.setattr(decoder_mod, "stack_trees", recording)
    policy = SkipPattern((False, True), depth=2)
    forks = iter(range(100))

    def fork():  # each row its own phase: row k starts k cycles into the pattern
        twin = StaticPolicy.fork(policy)
        twin.pattern = policy.pattern[next(forks) % 2:] + policy.pattern[:0]
        twin.pattern = twin.pattern + policy.pattern[:len(policy.pattern) - len(twin.pattern)]
        return twin

    monkeypatch.setattr(policy, "fork", fork)
    prompts = rows(3, seed=5)
    refs = single_row_references(model, prompts, 16, None)
    dec = RadarDecoder(model, make_drafter("ngram", model), policy, tree_topk=3, verify_budget=7)
    ids, mask = left_padded(prompts)
    assert_rows_match(dec.generate(ids, attention_mask=mask, max_new_tokens=16), ids.shape[1], refs, pad=0)
    assert any(1 in s and max(s) > 1 for s in shapes), shapes  # a plain-step row beside a drafted tree
    assert dec.last_stats.skipped_cycles > 0


class PlainFromBatch(StaticPolicy):
    """Plain steps (planned up front) at batch sizes >= `from_size`, drafts below; counts its per-cycle asks."""

    def __init__(self, from_size):
        super().__init__(3)
        self.from_size, self.asked = from_size, [0]

    def should_draft(self, step):
        self.asked[0] += 1
        return step.batch_size < self.from_size

    def plans_plain_steps(self, first_seq_len, last_seq_len, temperature, batch_size=1):
        return batch_size >= self.from_size


@pytest.mark.parametrize("from_size, plain", [(2, True), (3, False)])
def test_batch_planned_plain_at_every_size_decodes_as_plain_decoding(models, monkeypatch, from_size, plain):
    """A controller that plans plain steps at every batch size the call passes through with > 1 row (3, 2)
    runs the batch as ar-fast does: no feature capture, no draft, no per-row decision, and its last row
    stays plain; one that would draft at B = 2 keeps the per-row path. Both exact, both ending rows early."""
    model = models["sdpa"]
    prompts, n, eos, refs = rows_ending_apart(model)
    calls = record_verify_rows(monkeypatch)
    policy = PlainFromBatch(from_size)
    dec = RadarDecoder(model, make_drafter("eagle", model), policy, tree_topk=3, verify_budget=7)
    ids, mask = left_padded(prompts)
    out = dec.generate(ids, attention_mask=mask, max_new_tokens=n, eos_token_id=eos, pad_token_id=0)
    assert_rows_match(out, ids.shape[1], refs, pad=0)
    s = dec.last_stats
    if plain:
        assert all(c["feature_layers"] is None for c in calls) and policy.asked[0] == 0
        assert s.skipped_cycles == s.cycles > 0 and s.draft_calls == 0 and s.tokens == sum(len(r) for r in refs)
    else:
        assert all(c["feature_layers"] is not None for c in calls) and policy.asked[0] > 0 and s.draft_calls > 0


def test_finished_rows_leave_the_verify_batch(models, monkeypatch):
    model = models["sdpa"]
    prompts, n, eos, refs = rows_ending_apart(model)
    calls = record_verify_rows(monkeypatch)
    dec = RadarDecoder(model, make_drafter("ngram", model), StaticPolicy(1), verify_budget=7)
    ids, mask = left_padded(prompts)
    out = dec.generate(ids, attention_mask=mask, max_new_tokens=n, eos_token_id=eos, pad_token_id=0)
    assert_rows_match(out, ids.shape[1], refs, pad=0)
    sizes = [c["rows"] for c in calls]
    assert all(c["cache_rows"] == {c["rows"]} for c in calls)  # the cache holds the live rows only
    assert sizes[0] == 3 and sizes[-1] < 3 and sizes == sorted(sizes, reverse=True), sizes


def test_output_layout_is_hf_batched_generate(models):
    """Same prompts through HF's own batched generate: same shape, and where HF pads after a row's EOS
    we pad too (HF's pad_token_id defaults to the EOS, with its warning, when none is given)."""
    model = models["sdpa"]
    prompts = rows(3)
    eos = eos_ending_row0_early(model, prompts, 20)
    ids, mask = left_padded(prompts)
    hf = model.generate(ids, attention_mask=mask, max_new_tokens=20, do_sample=False, eos_token_id=eos)
    dec = RadarDecoder(model, make_drafter("ngram", model), StaticPolicy(1), verify_budget=7)
    ours = dec.generate(ids, attention_mask=mask, max_new_tokens=20, eos_token_id=eos)
    assert ours.shape == hf.shape
    refs = single_row_references(model, prompts, 20, eos)
    assert_rows_match(ours, ids.shape[1], refs, pad=eos)
    assert (hf[0, ids.shape[1] + refs[0].shape[0]:] == eos).all()  # HF pads with the EOS here too


def test_max_new_tokens_one_and_every_row_ending_at_once(models):
    model = models["sdpa"]
    prompts = rows(4)
    dec = RadarDecoder(model, make_drafter("eagle", model), StaticPolicy(3), tree_topk=3, verify_budget=7)
    ids, mask = left_padded(prompts)
    for n in (1, 2, 7):
        assert_rows_match(dec.generate(ids, attention_mask=mask, max_new_tokens=n), ids.shape[1],
                          single_row_references(model, prompts, n, None), pad=0)


def test_plain_decoding_batch_and_no_mask(models):
    """drafter=None (ar-fast) at B = 3, and equal-length prompts without an attention_mask."""
    model = models["eager"]
    prompts = [r[:, :6] for r in rows(5)[1:4]]
    refs = single_row_references(model, prompts, 10, None)
    dec = RadarDecoder(model)
    ids = torch.cat(prompts)
    assert_rows_match(dec.generate(ids, max_new_tokens=10), ids.shape[1], refs, pad=0)
    assert dec.last_stats.forwards == 9


# ------------------------------------------------------------------ sampling per row
def test_sampling_is_lossless_per_row_at_batch_3(small_model):
    """Three prompts of different lengths decoded together by sampling: each row's joint distribution of
    its new tokens 2 and 3 is the target's own for that prompt alone (TV within sampling noise)."""
    model = small_model
    prompts = [[1, 2, 3], [4, 0], [5, 2, 2, 1]]
    ids, mask = left_padded([torch.tensor([p]) for p in prompts])
    dec = RadarDecoder(model, FixedTreeDrafter(), StaticPolicy(1), verify_budget=6)
    g = torch.Generator().manual_seed(1234)
    counts = torch.zeros(3, 6, 6, dtype=torch.float64)
    for _ in range(N_SAMPLES):
        out = dec.generate(ids, attention_mask=mask, max_new_tokens=3, do_sample=True, generator=g,
                           temperature=PARAMS.temperature, top_k=PARAMS.top_k, top_p=PARAMS.top_p)
        for b in range(3):
            counts[b, out[b, -2], out[b, -1]] += 1
    for b, p in enumerate(prompts):
        exact = exact_distribution(model, p)
        tv = 0.5 * (counts[b] / N_SAMPLES - exact).abs().sum().item()
        assert tv < tv_threshold(exact, N_SAMPLES), (b, tv)


# ------------------------------------------------------------------ refused inputs
def test_bad_batch_inputs_are_refused_by_name(models):
    model = models["sdpa"]
    dec = RadarDecoder(model, make_drafter("ngram", model), StaticPolicy(1))
    ids, mask = left_padded(rows(3))
    with pytest.raises(ValueError, match="batch size >= 1"):
        dec.generate(ids[:0], max_new_tokens=3)
    right = mask.flip(1)
    with pytest.raises(NotImplementedError, match=r"only left padding.*\(row 0\)"):
        dec.generate(ids, attention_mask=right, max_new_tokens=3)
    holes = mask.clone()
    holes[2, -3] = 0
    with pytest.raises(NotImplementedError, match=r"only left padding.*\(row 2\)"):
        dec.generate(ids, attention_mask=holes, max_new_tokens=3)
    empty = mask.clone()
    empty[1] = 0
    with pytest.raises(ValueError, match="row 1 is all padding"):
        dec.generate(ids, attention_mask=empty, max_new_tokens=3)
    with pytest.raises(ValueError, match="streamer: streaming supports batch size 1 only"):
        dec.generate(ids, attention_mask=mask, max_new_tokens=3, streamer=object())
    with pytest.raises(NotImplementedError, match="supported at batch size 1 only"):
        dec.generate(ids, attention_mask=mask, max_new_tokens=3, repetition_penalty=1.3)


def test_generator_on_another_device_is_refused(models, monkeypatch):
    """A CPU generator serves every target (acceptance.uniform); one on an accelerator other than the
    target's device is refused before decoding (a torch.Generator's device is read-only, so the check
    sees a stand-in here)."""
    model = models["sdpa"]
    dec = RadarDecoder(model, make_drafter("ngram", model), StaticPolicy(1))
    ids, mask = left_padded(rows(2))

    class OnCuda(torch.Generator):
        @property
        def device(self):
            return torch.device("cuda", 0)

    with pytest.raises(ValueError, match=r"generator must be on the CPU or on the target's device \(cpu\)"):
        dec.generate(ids, attention_mask=mask, max_new_tokens=3, do_sample=True, generator=OnCuda())
    with pytest.raises(ValueError, match="generator must be a torch.Generator"):
        dec.generate(ids, attention_mask=mask, max_new_tokens=3, do_sample=True, generator=1234)


def test_eagle_forks_share_one_fused_head_call(models):
    """Forked EAGLE drafters (one per batch row) share the parent's fused head call instead of each copying
    every head weight again; each still starts its own head cache."""
    model = models["sdpa"]
    drafter = EagleDrafter.init_random(model, seed=1)
    twins = [drafter.fork() for _ in range(3)]
    ids = torch.tensor([[5, 6, 7, 8]])
    feats = torch.zeros(1, 4, len(drafter.feature_layers) * model.config.hidden_size)
    for t in twins:
        t.start(ids, feats, torch.tensor([9]))
    assert drafter._fused is not None and all(t._fused is drafter._fused for t in twins)
    assert len({id(t.cache) for t in twins}) == 3
