"""HybridDrafter: the merged pool (shared prefixes are one node, distinct children, larger score, lookup paths
deeper than EAGLE's), best-V closed under parent, calibrated lookup scores (fit, scale, errors), greedy
exactness on a tiny random Llama (with plain steps between drafted cycles), sampling losslessness, and the
decoder's lookup share."""
import math

import numpy as np
import pytest
import torch

from radar_ext import EagleDrafter, HybridDrafter, LookupScores, NgramDrafter, RadarDecoder, StaticPolicy
from radar_ext.drafters import DraftRequest
from radar_ext.drafters.hybrid import merge_lookup
from radar_ext.drafters.lookup_scores import COUNT_BUCKETS
from radar_ext.policies import CostInfo
from radar_ext.tree import SOURCE_BOTH, SOURCE_DRAFTER, SOURCE_LOOKUP, CandidatePool
from test_decoder import SkipPattern, models, prompts, reference  # noqa: F401 (fixture)


def flat_scores(rate=0.9, max_match_len=4, max_depth=12):
    return LookupScores(np.full((max_match_len, max_depth, COUNT_BUCKETS), math.log(rate)))


def lookup_on(tokens, **kw):
    lk = NgramDrafter(**{"max_ngram": 3, "min_ngram": 1, "max_depth": 6, **kw})
    lk.start(torch.tensor([tokens[:-1]]), None, torch.tensor([tokens[-1]]))
    return lk


def pool_of(tokens, parents, scores):
    pool = CandidatePool(1, len(tokens), "cpu")
    pool.add(torch.tensor([tokens]), torch.tensor([parents]), torch.tensor([scores], dtype=torch.float32))
    return pool


def children_distinct(tokens, parents):
    seen = set()
    for t, p in zip(tokens, parents):
        assert (p, t) not in seen, (p, t)
        seen.add((p, t))


def test_merge_shares_prefixes_and_appends_the_rest():
    # context ... 3 | 8 9 5 ... 3(root): the lookup proposes 8 9 5 below the root
    lk = lookup_on([3, 8, 9, 5, 1, 3], max_depth=3)
    trie = lk.trie()
    assert trie.tokens.tolist() == [8, 9, 5] and trie.parents.tolist() == [-1, 0, 1]
    # EAGLE pool: root children 8 (-0.1) and 7 (-1.0); 8 -> 9 (-2.0) and 8 -> 4 (-0.5)
    pool = pool_of([8, 7, 9, 4], [-1, -1, 0, 0], [-0.1, -1.0, -2.0, -0.5])
    lscores = flat_scores(0.9).score(trie)
    assert lscores == pytest.approx([math.log(0.9) * d for d in (1, 2, 3)])
    merged = merge_lookup(pool, trie, lscores)
    assert merged.count == 5                                   # 8 and 9 shared, 5 appended below 9
    tok, par = merged.tokens[0, :5].tolist(), merged.parents[0, :5].tolist()
    assert tok == [8, 7, 9, 4, 5] and par == [-1, -1, 0, 0, 2]
    children_distinct(tok, par)
    assert merged.source[0, :5].tolist() == [SOURCE_BOTH, SOURCE_DRAFTER, SOURCE_BOTH, SOURCE_DRAFTER, SOURCE_LOOKUP]
    # a shared node keeps the larger score: 8 keeps EAGLE's -0.1, 9 rises to the lookup's 2 log .9
    assert merged.scores[0, :5].tolist() == pytest.approx([-0.1, -1.0, 2 * math.log(0.9), -0.5, 3 * math.log(0.9)])
    # the lookup path runs one level deeper than the EAGLE tree, and best-4 takes it whole
    tree = merged.to_tree(torch.tensor([3]), 4, 2)
    assert tree.tokens[0].tolist() == [3, 8, 9, 4, 5] and tree.parents[0].tolist() == [-1, 0, 1, 1, 2]
    assert tree.depth[0].max().item() == 3
    assert tree.source[0].tolist() == [SOURCE_DRAFTER, SOURCE_BOTH, SOURCE_BOTH, SOURCE_DRAFTER, SOURCE_LOOKUP]


def test_merge_without_lookup_candidates_is_the_eagle_pool():
    pool = pool_of([8, 7], [-1, -1], [-0.1, -1.0])
    trie = lookup_on([1, 2, 3, 4]).trie()
    assert trie.size == 0
    merged = merge_lookup(pool, trie, flat_scores().score(trie))
    assert merged.count == 2 and merged.tokens[0, :2].tolist() == [8, 7]
    assert merged.source[0, :2].tolist() == [SOURCE_DRAFTER] * 2
    want = pool.to_tree(torch.tensor([4]), 2, 1)
    got = merged.to_tree(torch.tensor([4]), 2, 1)
    assert torch.equal(want.tokens, got.tokens) and torch.equal(want.parents, got.parents)


@pytest.mark.parametrize("seed", range(6))
def test_best_v_of_a_merged_pool_is_closed_under_parent(seed):
    """Random EAGLE pools (cumulative scores) and random contexts: every V gives a tree whose nodes' parents
    are in it, with distinct children everywhere."""
    g = np.random.default_rng(seed)
    ctx = g.integers(0, 5, size=40).tolist()
    trie = lookup_on(ctx, max_depth=8, max_matches=6).trie()
    assert trie.size > 0
    tokens, parents, scores = [], [], []
    for k in range(30):  # random tree, children distinct per parent
        while True:
            p = int(g.integers(-1, len(tokens))) if tokens else -1
            t = int(g.integers(0, 5))
            if (p, t) not in set(zip(parents, tokens)):
                break
        tokens.append(t)
        parents.append(p)
        scores.append((scores[p] if p >= 0 else 0.0) + float(np.log(g.uniform(0.05, 1.0))))
    merged = merge_lookup(pool_of(tokens, parents, scores), trie, flat_scores(float(g.uniform(0.3, 0.95))).score(trie))
    n = merged.count
    tok, par, sc = merged.tokens[0, :n].tolist(), merged.parents[0, :n].tolist(), merged.scores[0, :n].tolist()
    children_distinct(tok, par)
    for i, p in enumerate(par):
        assert p < i and (p < 0 or sc[p] >= sc[i])
    for V in (1, 2, 5, 17, n):
        picked = set(merged.best(V)[0].tolist())
        assert all(par[i] < 0 or par[i] in picked for i in picked), V


def test_lookup_scores_fit_recovers_rates_and_smooths_sparse_cells():
    g = np.random.default_rng(0)
    n = 40000
    depth = g.integers(1, 4, size=n)
    match_len = g.integers(1, 3, size=n)
    count = np.ones(n, dtype=np.int64)
    rate = np.where(depth == 1, 0.8, 0.4) + 0.1 * (match_len == 2)
    hit = (g.uniform(size=n) < rate).astype(np.int64)
    s = LookupScores.fit({"match_len": match_len, "depth": depth, "count": count, "hit": hit}, max_match_len=3,
                         max_depth=4, smoothing=4.0)
    r = np.exp(s.log_rate)
    assert r[0, 0, 0] == pytest.approx(0.8, abs=0.02) and r[1, 0, 0] == pytest.approx(0.9, abs=0.02)
    assert r[0, 2, 0] == pytest.approx(0.4, abs=0.02) and r[1, 1, 0] == pytest.approx(0.5, abs=0.02)
    # no node with match length 3 or depth 4: those cells fall back to the coarser rates
    assert r[2, 0, 0] == pytest.approx(r[:2, 0, 0].mean(), abs=0.05)
    assert s.nodes.sum() == n and np.all(r < 1)


def test_lookup_scores_round_trip_and_errors(tmp_path):
    s = flat_scores(0.7, 2, 3)
    s.save(tmp_path / "s.json")
    back = LookupScores.load(tmp_path / "s.json")
    assert np.array_equal(back.log_rate, s.log_rate)
    with pytest.raises(ValueError, match=r"log_rate must be \[max_match_len, max_depth, 4\]"):
        LookupScores(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="log_rate must hold finite values < 0"):
        LookupScores(np.zeros((2, 3, COUNT_BUCKETS)))
    with pytest.raises(ValueError, match="missing 'hit'"):
        LookupScores.fit({"match_len": [1], "depth": [1], "count": [1]}, 2, 2)
    with pytest.raises(ValueError, match="no lookup node"):
        LookupScores.fit({"match_len": [], "depth": [], "count": [], "hit": []}, 2, 2)
    with pytest.raises(FileNotFoundError, match="lookup_fit"):
        LookupScores.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text('{"schema": "other"}')
    with pytest.raises(ValueError, match="schema must be 'radar_ext.lookup_scores/1', got 'other'"):
        LookupScores.load(tmp_path / "bad.json")


def test_constructor_errors(models):  # noqa: F811
    model = models["sdpa"]
    with pytest.raises(TypeError, match="eagle must be an EagleDrafter, got NgramDrafter"):
        HybridDrafter(NgramDrafter(), NgramDrafter(), flat_scores())
    eagle = EagleDrafter.init_random(model, seed=1)
    with pytest.raises(TypeError, match="lookup must be an NgramDrafter, got EagleDrafter"):
        HybridDrafter(eagle, eagle, flat_scores())
    with pytest.raises(TypeError, match="scores must be LookupScores, got dict"):
        HybridDrafter(eagle, NgramDrafter(), {})


def hybrid(model, rate=0.9):
    return HybridDrafter(EagleDrafter.init_random(model, seed=1), NgramDrafter(max_ngram=3, min_ngram=1, max_depth=8),
                         flat_scores(rate))


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_greedy_exact(models, attn):  # noqa: F811
    model = models[attn]
    dec = RadarDecoder(model, hybrid(model), StaticPolicy(3), tree_topk=3, verify_budget=7)
    looked = 0
    for ids, n in zip(prompts(), (1, 9, 30)):
        out = dec.generate(ids, max_new_tokens=n)
        assert torch.equal(out, reference(model, ids, n)), (attn, n)
        s = dec.last_stats
        assert s.tokens == n and sum(s.accepted_hist) == s.cycles
        accepted = sum(k * c for k, c in enumerate(s.accepted_hist))
        assert 0 <= s.lookup_accepted + s.shared_accepted <= accepted
        looked += s.lookup_accepted
    # the untrained head rarely guesses right; the repeats in the prompts make lookups pay
    assert looked > 0


@pytest.mark.parametrize("pattern", [(False, True), (True, False, False)])
def test_greedy_exact_with_plain_steps(models, pattern):  # noqa: F811
    model = models["sdpa"]
    dec = RadarDecoder(model, hybrid(model), SkipPattern(pattern), tree_topk=3, verify_budget=6)
    for ids, n in zip(prompts(), (9, 30)):
        assert torch.equal(dec.generate(ids, max_new_tokens=n), reference(model, ids, n)), (pattern, n)
        assert dec.last_stats.skipped_cycles > 0


def test_lookup_nodes_need_their_score():
    """A low calibrated rate keeps lookup nodes out of a small tree; a high one puts them in."""
    ctx = [3, 8, 9, 5, 1, 3]
    pool = pool_of([8, 7], [-1, -1], [-0.1, -0.2])
    for rate, want in ((0.05, [3, 8, 7]), (0.95, [3, 8, 9])):
        trie = lookup_on(ctx).trie()
        tree = merge_lookup(pool, trie, flat_scores(rate).score(trie)).to_tree(torch.tensor([3]), 2, 1)
        assert tree.tokens[0].tolist() == want, rate


def test_sampling_is_lossless_with_the_hybrid():
    """The hybrid tree (random head + lookups at rate .9, so lookup nodes are verified in most cycles) samples
    the target's exact joint distribution of the 2nd and 3rd new tokens, within what sampling noise reaches."""
    from test_acceptance import PARAMS, VOCAB, exact_distribution, tv_threshold
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(3)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=3,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                      initializer_range=0.2, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    model = LlamaForCausalLM(cfg).eval()
    prompt = [1, 2, 3, 1, 2, 3, 1, 2]
    exact = exact_distribution(model, prompt)
    n = 800
    dec = RadarDecoder(model, HybridDrafter(EagleDrafter.init_random(model, seed=1),
                                            NgramDrafter(max_ngram=2, min_ngram=1, max_depth=4), flat_scores(0.9)),
                       StaticPolicy(1), tree_topk=2, verify_budget=4)
    g = torch.Generator().manual_seed(1234)
    counts = torch.zeros(VOCAB, VOCAB, dtype=torch.float64)
    with_lookup = 0
    for _ in range(n):
        out = dec.generate(torch.tensor([prompt]), max_new_tokens=3, do_sample=True, temperature=PARAMS.temperature,
                           top_k=PARAMS.top_k, top_p=PARAMS.top_p, generator=g)
        counts[out[0, -2], out[0, -1]] += 1
        with_lookup += dec.last_stats.lookup_accepted + dec.last_stats.shared_accepted > 0
    tv = 0.5 * (counts / n - exact).abs().sum().item()
    assert tv < tv_threshold(exact, n), tv
    assert with_lookup > n // 10, with_lookup


def test_request_batch_error(models):  # noqa: F811
    model = models["sdpa"]
    d = hybrid(model)
    req = DraftRequest(root=torch.tensor([1, 2]), seq_len=3, tree_topk=2, verify_budget=3, policy=StaticPolicy(1),
                       costs=CostInfo())
    with pytest.raises(NotImplementedError, match="HybridDrafter: batch size must be 1 for now, got 2"):
        d.draft(req)


# ------------------------------------------------------------------ lookup features for the controllers

def test_lookup_info_of_a_trie():
    from radar_ext.drafters.hybrid import lookup_info
    # root 3: occurrences "1 2 3" (match 3) -> 9 9, "2 3" (2) -> 7 7, "3" (1) -> 4
    lk = lookup_on([1, 2, 3, 9, 9, 0, 2, 3, 7, 7, 0, 5, 3, 4, 0, 1, 2, 3], max_depth=2)
    trie = lk.trie()
    scores = flat_scores(0.5).score(trie)
    info = lookup_info(trie, scores)
    assert (info.match_len, info.count) == (3, 3) and info.best_score == pytest.approx(math.log(0.5))
    empty = lookup_on([1, 2, 3, 4]).trie()
    assert lookup_info(empty, flat_scores().score(empty)) == type(info)()


def test_the_policy_sees_the_cycles_lookup(models):  # noqa: F811
    """HybridDrafter hands the cycle's LookupInfo to every depth decision and to the budget decision."""
    from radar_ext.drafters.hybrid import lookup_info

    model = models["sdpa"]
    d = hybrid(model)

    class Recording(StaticPolicy):
        def __init__(self):
            super().__init__(2)
            self.seen = []

        def should_continue(self, step):
            self.seen.append(("depth", step.lookup))
            return super().should_continue(step)

        def verify_budget(self, step):  # the trie of this cycle is the drafter's last one
            self.seen.append(("size", step.lookup, lookup_info(d.last_trie, d.scores.score(d.last_trie))))
            return step.default_budget

    pol = Recording()
    dec = RadarDecoder(model, d, pol, tree_topk=2, verify_budget=4)
    dec.generate(prompts()[2], max_new_tokens=20)
    assert [s[0] for s in pol.seen[:2]] == ["depth", "size"] and len(pol.seen) % 2 == 0
    for (_, at_depth), (_, at_size, want) in zip(pol.seen[0::2], pol.seen[1::2]):
        assert at_depth == at_size == want
    assert any(s[2].count >= 1 and s[2].match_len >= 1 for s in pol.seen[1::2])


@pytest.mark.parametrize("wants", [True, False])
def test_the_pre_draft_decision_sees_the_cycles_lookup(models, wants):  # noqa: F811
    """A policy whose skip decision reads the lookup (pre_draft_lookup: LTD with skip and lookup) gets the cycle's
    LookupInfo before any draft call, the same one the cycle's draft then uses, also after skipped cycles (the
    drafter finds it again once the context moved on); other policies get None and the output is the same."""
    from radar_ext.drafters.hybrid import lookup_info

    model = models["sdpa"]
    d = hybrid(model)

    class Recording(SkipPattern):
        pre_draft_lookup = wants

        def __init__(self):
            super().__init__((True, False, False), depth=2)
            self.pre, self.at_size = [], []

        def should_draft(self, step):
            drafts = super().should_draft(step)
            self.pre.append((step.lookup, drafts))
            return drafts

        def verify_budget(self, step):
            self.at_size.append((step.lookup, lookup_info(d.last_trie, d.scores.score(d.last_trie))))
            return step.default_budget

    pol = Recording()
    ids = prompts()[2]
    dec = RadarDecoder(model, d, pol, tree_topk=2, verify_budget=4)
    assert torch.equal(dec.generate(ids, max_new_tokens=24), reference(model, ids, 24))
    assert dec.last_stats.skipped_cycles > 0
    if not wants:
        assert all(info is None for info, _ in pol.pre)
        return
    drafted = [info for info, drafts in pol.pre if drafts]
    assert len(drafted) == len(pol.at_size) and all(p == a == w for p, (a, w) in zip(drafted, pol.at_size))
    assert any(info.count >= 1 for info, _ in pol.pre)


def test_ltd_lookup_layout_inference_equals_training_and_configs_without_it_load_unchanged(tmp_path):
    from radar_ext.policies import LtdPolicy, load_policy
    from radar_ext.policies.base import LookupInfo, lookup_features
    from radar_ext.policies.learned import seq_len_feature, sorted_padded, temperature_feature
    from radar_ext.policies.ltd import depth_features, depth_feature_names, size_features
    costs = {"t_draft": 0.002, "t_policy": 1e-4, "t_ar": 0.01,
             "t_verify": {"V": [1, 16, 64], "seconds": [0.01, 0.012, 0.02]}}
    pol = LtdPolicy(tree_topk=3, max_draft_calls=4, budgets=(2, 4, 7), costs=costs, pool_topk=8, seed=3, lookup=True)
    names = depth_feature_names(3, (2, 4, 7), lookup=True)
    assert names[9 + 3:9 + 6] == ["lookup_match_len", "lookup_count", "lookup_best_prob"]
    info = LookupInfo(3, 5, math.log(0.37))
    lf = lookup_features(torch.tensor([3]), torch.tensor([5]), torch.tensor([math.log(0.37)], dtype=torch.float32))
    assert lf.tolist()[0] == pytest.approx([3 / 8, 5 / 8, 0.37])
    child = -torch.rand(1, 9) * 6
    sl, temp = torch.tensor([seq_len_feature(40)]), temperature_feature(torch.tensor([1.0]))
    got_d = pol._features(child, 9, 40, 2, 1.0, None, lookup=info)
    want = depth_features(sorted_padded(child, 9), sl, torch.tensor([2 / 4]), temp, pol.cost_tensor(), None, lf)
    assert torch.equal(got_d, want)
    pool = -torch.rand(1, 12) * 6
    got = pol._features(pool, 8, 40, 2, 1.0, None, lookup=info)
    assert torch.equal(got, size_features(sorted_padded(pool, 8), sl, torch.tensor([2 / 4]), temp, pol.cost_tensor(),
                                          None, lf))
    # no occurrence: the probability feature is 0, not exp(0)
    assert lookup_features(0, 0, 0.0) == [0.0, 0.0, 0.0]
    pol.save_pretrained(tmp_path / "p")
    back = load_policy(tmp_path / "p")
    assert back.lookup and torch.equal(back._features(child, 9, 40, 2, 1.0, None, lookup=info), got_d)
    # a config written before the flag existed (no "lookup" key) loads with lookup off
    plain = LtdPolicy(tree_topk=3, max_draft_calls=4, budgets=(2, 4, 7), costs=costs, pool_topk=8, seed=3)
    plain.save_pretrained(tmp_path / "q")
    import json
    cfg = json.loads((tmp_path / "q" / "config.json").read_text())
    assert cfg.pop("lookup") is False
    (tmp_path / "q" / "config.json").write_text(json.dumps(cfg))
    assert not load_policy(tmp_path / "q").lookup
    cfg["lookup"] = "yes"
    (tmp_path / "q" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="ltd policy config: lookup must be true or false, got 'yes'"):
        load_policy(tmp_path / "q")
    with pytest.raises(ValueError, match="LtdPolicy: lookup must be True or False, got 1"):
        LtdPolicy(tree_topk=3, costs=costs, lookup=1)


@pytest.mark.parametrize("seed", range(6))
def test_found_info_is_the_scored_tries_lookup_info(seed):
    """HybridDrafter reads a cycle's LookupInfo from the occurrences alone (found_info, no trie): the same values as
    lookup_info of the trie they build and its scores, over contexts with no, one and many occurrences (longer than
    the table's match lengths, more than its count buckets)."""
    from radar_ext.drafters.hybrid import found_info, lookup_info
    g = torch.Generator().manual_seed(seed)
    rates = -torch.rand(3, 5, COUNT_BUCKETS, generator=g, dtype=torch.float64).numpy() * 3 - 1e-3
    scores = LookupScores(rates)
    for n in (3, 20, 200):
        lookup = NgramDrafter(max_ngram=4, min_ngram=1, max_depth=6, max_matches=8)
        ctx = torch.randint(0, 4 + seed, (1, n), generator=g)
        lookup.start(ctx[:, :-1], None, ctx[0, -1:])
        ends, mlen = lookup.matches()
        trie = lookup.trie(found=(ends, mlen))
        assert found_info(lookup, scores, ends, mlen) == lookup_info(trie, scores.score(trie))
        again = lookup.trie()
        assert all(np.array_equal(getattr(again, f), getattr(trie, f))
                   for f in ("tokens", "parents", "depth", "match_len", "count", "weight"))


# ------------------------------------------------------------------ lookup steps (cycles without a draft call)

def step_costs(plain=1.0, verify=(1.1, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5)):
    from radar_ext.policies.costs import PolicyCosts
    return PolicyCosts(t_draft=0.5, t_policy=0.0, t_ar=plain, verify_budgets=list(range(1, len(verify) + 1)),
                       verify_seconds=list(verify), t_plain=plain)


def test_lookup_step_budget_maximises_expected_tokens_per_second():
    from radar_ext.drafters.hybrid import lookup_step_budget, lookup_step_costs
    table = lookup_step_costs(step_costs(), 4)
    assert table.tolist() == pytest.approx([1.0, 1.1, 1.5, 2.0, 2.5])
    logp = np.log([0.1, 0.9, 0.5])  # any order: the best V are the largest
    # V = 0..3: 1 / 1.0, 1.9 / 1.1 = 1.73, 2.4 / 1.5 = 1.6, 2.5 / 2.0 = 1.25
    assert lookup_step_budget(logp, table) == 1
    cheap = np.array([1.0, 1.0, 1.0, 1.0])  # free verifies: every node pays
    assert lookup_step_budget(logp, cheap) == 3
    assert lookup_step_budget(logp, cheap[:3]) == 2          # capped by the table (the verify budget)
    dear = np.array([1.0, 3.0, 4.0, 5.0])                    # 1.9 / 3 < 1: a plain step
    assert lookup_step_budget(logp, dear) == 0
    assert lookup_step_budget(np.array([]), table) == 0
    # a tie between V = 0 and V = 1 goes to the plain step
    assert lookup_step_budget(np.log([0.1]), np.array([1.0, 1.1])) == 0


class CostedPattern(SkipPattern):
    """SkipPattern carrying calibrated costs (PolicyCosts), as the learned policies do: lookup steps apply."""

    def __init__(self, pattern, costs, depth=3):
        super().__init__(pattern, depth)
        self.costs = costs


def test_lookup_step_is_the_lookups_best_nodes_without_a_draft_call(models):  # noqa: F811
    from radar_ext.drafters.hybrid import lookup_step_costs

    model = models["sdpa"]
    d = hybrid(model, rate=0.9)
    ctx = [3, 8, 9, 5, 1, 3, 8, 9, 2, 4, 3]
    ids = torch.tensor([ctx[:-1]])
    d.start(ids, torch.zeros(1, ids.shape[1], 3 * model.config.hidden_size), torch.tensor([ctx[-1]]))
    req = DraftRequest(root=torch.tensor([3]), seq_len=len(ctx), tree_topk=2, verify_budget=4, policy=StaticPolicy(1),
                       costs=CostInfo())
    trie = d.lookup.trie()
    scores = d.scores.score(trie)
    tree = d.lookup_step(req, lookup_step_costs(step_costs(verify=[1.05] * 8), 8))
    want = merge_lookup(CandidatePool.from_lists([], [], [], [], "cpu"), trie, scores).to_tree(torch.tensor([3]), 4, 0)
    assert tree.draft_calls == 0 and tree.guess_token is None
    assert tree.verify_budget == 4                           # every node pays at these costs; the request caps V at 4
    assert tree.tokens.tolist() == want.tokens.tolist() and tree.parents.tolist() == want.parents.tolist()
    assert tree.source[0, 1:].tolist() == [SOURCE_LOOKUP] * 4
    assert d.last_trie is not None and d.last_trie.tokens.tolist() == trie.tokens.tolist()
    # nothing pays: no tree, and the cycle's draft() reuses what the lookup found
    assert d.lookup_step(req, lookup_step_costs(step_costs(verify=[5.0] * 8), 8)) is None
    assert d._cycle_trie is not None
    # nothing found (the root never occurred before): no tree
    d2 = hybrid(model)
    d2.start(torch.tensor([[1, 2]]), torch.zeros(1, 2, 3 * model.config.hidden_size), torch.tensor([7]))
    assert d2.lookup_step(req, lookup_step_costs(step_costs(), 8)) is None


@pytest.mark.parametrize("pattern", [(True,), (False, True), (True, False, False)])
def test_greedy_exact_with_lookup_steps(models, pattern):  # noqa: F811
    """A policy with calibrated costs: lookup steps, drafted cycles and plain steps mix; the output stays HF's greedy
    one, the lookup steps are counted (and among the skipped cycles), lookup_steps=False takes none."""
    model = models["sdpa"]
    costs = step_costs(verify=[1.02, 1.05, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6])
    dec = RadarDecoder(model, hybrid(model, rate=0.6), CostedPattern(pattern, costs), tree_topk=3, verify_budget=6)
    off = RadarDecoder(model, hybrid(model, rate=0.6), CostedPattern(pattern, costs), tree_topk=3, verify_budget=6,
                       lookup_steps=False)
    steps = 0
    for ids, n in zip(prompts(), (9, 30, 30)):
        ref = reference(model, ids, n)
        assert torch.equal(dec.generate(ids, max_new_tokens=n), ref), (pattern, n)
        s = dec.last_stats
        assert 0 <= s.lookup_steps <= s.skipped_cycles and s.tokens == n
        steps += s.lookup_steps
        assert torch.equal(off.generate(ids, max_new_tokens=n), ref)
        assert off.last_stats.lookup_steps == 0
    assert steps > 0


def test_no_lookup_steps_when_sampling_without_costs_or_in_batches(models):  # noqa: F811
    model = models["sdpa"]
    costs = step_costs(verify=[1.02] * 8)
    ids = prompts()[2]
    dec = RadarDecoder(model, hybrid(model), CostedPattern((True,), costs), tree_topk=2, verify_budget=4)
    dec.generate(ids, max_new_tokens=20)
    assert dec.last_stats.lookup_steps > 0
    dec.generate(ids, max_new_tokens=20, do_sample=True, generator=torch.Generator().manual_seed(0))
    assert dec.last_stats.lookup_steps == 0                  # the scores are rates of greedy acceptance
    batch = torch.cat([ids, ids])
    dec.generate(batch, max_new_tokens=8, attention_mask=torch.ones_like(batch))
    assert dec.last_stats.lookup_steps == 0
    plain = RadarDecoder(model, hybrid(model), SkipPattern((True,)), tree_topk=2, verify_budget=4)
    plain.generate(ids, max_new_tokens=20)
    assert plain.last_stats.lookup_steps == 0                # no calibrated costs: the policy decides every cycle
    with pytest.raises(ValueError, match="lookup_steps must be True or False, got 1"):
        RadarDecoder(model, hybrid(model), lookup_steps=1)


def test_lookup_drafter_alone_is_exact_without_a_head(models):  # noqa: F811
    """LookupDrafter + LookupStepPolicy (the `lookup` method): every cycle a lookup step or a plain step, no draft
    call, no target features; under StaticPolicy its draft() verifies the lookup's best nodes. Greedy output HF's."""
    from radar_ext import LookupDrafter, LookupStepPolicy

    model = models["sdpa"]
    costs = step_costs(verify=[1.02, 1.05, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6])
    lookup = lambda: LookupDrafter(NgramDrafter(max_ngram=3, min_ngram=1, max_depth=8), flat_scores(0.6))  # noqa: E731
    assert lookup().feature_layers is None and "LookupDrafter(NgramDrafter(" in repr(lookup())
    steps = RadarDecoder(model, lookup(), LookupStepPolicy(costs), tree_topk=2, verify_budget=6)
    drafts = RadarDecoder(model, lookup(), StaticPolicy(1), tree_topk=2, verify_budget=3)
    n_steps = 0
    for ids, n in zip(prompts(), (9, 30, 30)):
        ref = reference(model, ids, n)
        assert torch.equal(steps.generate(ids, max_new_tokens=n), ref), n
        s = steps.last_stats
        assert s.draft_calls == 0 and s.skipped_cycles == s.cycles and s.lookup_steps <= s.cycles
        n_steps += s.lookup_steps
        assert torch.equal(drafts.generate(ids, max_new_tokens=n), ref), n
        d = drafts.last_stats
        assert d.draft_calls == 0 and 0 < d.verify_tokens <= 3 * d.cycles and d.lookup_steps == 0
    assert n_steps > 0
    # sampling: no lookup steps, planned up front, so it decodes as plain decoding (no drafter state at all)
    ids = prompts()[2]
    out = steps.generate(ids, max_new_tokens=12, do_sample=True, generator=torch.Generator().manual_seed(5))
    plain = RadarDecoder(model).generate(ids, max_new_tokens=12, do_sample=True, generator=torch.Generator().manual_seed(5))
    assert torch.equal(out, plain) and steps.last_stats.lookup_steps == 0
    assert steps.last_stats.skipped_cycles == steps.last_stats.cycles
    pol = LookupStepPolicy(costs)
    assert pol.plans_plain_steps(5, 20, 1.0) and pol.plans_plain_steps(5, 20, 0.0, 2) and not pol.plans_plain_steps(5, 20, 0.0)
    with pytest.raises(ValueError, match="LookupStepPolicy: costs are required"):
        LookupStepPolicy(None)
    with pytest.raises(TypeError, match="LookupDrafter: lookup must be an NgramDrafter, got dict"):
        LookupDrafter({}, flat_scores())
