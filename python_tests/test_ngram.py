"""NgramDrafter: suffix matching, trie of continuations, budget cap, the first-call guess, argument errors."""
import math

import pytest
import torch

from radar_ext import NgramDrafter, StaticPolicy
from radar_ext.drafters import DraftRequest
from radar_ext.policies import CostInfo


def request(root, budget=30):
    return DraftRequest(root=torch.tensor([root]), seq_len=0, tree_topk=1, verify_budget=budget,
                        policy=StaticPolicy(1), costs=CostInfo())


def drafter_on(tokens, **kw):
    d = NgramDrafter(**kw)
    d.start(torch.tensor([tokens[:-1]]), None, torch.tensor([tokens[-1]]))
    return d


def tree_paths(tree):
    """Root-to-leaf token sequences (root excluded)."""
    tok = tree.tokens[0].tolist()
    return sorted(tuple(tok[i] for i in row if i > 0) for row in tree.paths[0].tolist())


def test_longest_match_first_then_recent():
    # context ... 1 2 3 | 9 9 | ... 2 3 | 7 7 | ... 5 3 | 4 | ... 1 2 3(root)
    d = drafter_on([1, 2, 3, 9, 9, 0, 2, 3, 7, 7, 0, 5, 3, 4, 0, 1, 2, 3], max_ngram=3, min_ngram=1, max_depth=8)
    ends, mlen = d.matches()
    assert ends.tolist() == [2, 7, 12] and mlen.tolist() == [3, 2, 1]
    tree = d.draft(request(3))
    assert tree.tokens[0, 0].item() == 3
    assert tree_paths(tree) == [(4, 0, 1, 2, 3), (7, 7, 0, 5, 3, 4, 0, 1), (9, 9, 0, 2, 3, 7, 7, 0)]
    # a small budget goes deep along the longest match (every node of it weighs 3) before it
    # spends nodes on the next match (weight 2)
    small = d.draft(request(3, budget=4))
    assert small.tokens[0].tolist() == [3, 9, 9, 0, 2] and small.parents[0].tolist() == [-1, 0, 1, 2, 3]
    small = d.draft(request(3, budget=9))
    assert small.tokens[0].tolist() == [3, 9, 9, 0, 2, 3, 7, 7, 0, 7]
    assert small.parents[0].tolist() == [-1, 0, 1, 2, 3, 4, 5, 6, 7, 0]


def test_shared_prefixes_merge_and_siblings_are_distinct():
    d = drafter_on([5, 1, 2, 0, 5, 1, 3, 0, 5, 1, 2, 0, 5], max_ngram=1, min_ngram=1, max_depth=2)
    tree = d.draft(request(5))
    tok, par = tree.tokens[0].tolist(), tree.parents[0].tolist()
    assert tree_paths(tree) == [(1, 2), (1, 3)]
    assert tok.count(1) == 1  # one node for the shared first token
    for p in set(par):
        kids = [tok[i] for i in range(len(tok)) if par[i] == p]
        assert len(kids) == len(set(kids))


def test_no_match_gives_root_only():
    d = drafter_on([1, 2, 3, 4], min_ngram=1)
    tree = d.draft(request(4))
    assert tree.verify_budget == 0 and tree.draft_calls == 1
    d = drafter_on([1, 2, 3, 9, 2, 3], min_ngram=3)  # only a 2-gram match exists
    assert d.draft(request(3)).verify_budget == 0


def test_commit_extends_context():
    d = drafter_on([1, 2, 3], min_ngram=1)
    assert d.draft(request(3)).verify_budget == 0
    d.commit(torch.tensor([[1, 2, 3, -1]]), 3, None)  # context 1 2 3 1 2 3
    tree = d.draft(request(3))
    assert tree_paths(tree) == [(1, 2, 3)]


def test_errors():
    with pytest.raises(ValueError, match="max_ngram must be an int >= 1, got 0"):
        NgramDrafter(max_ngram=0)
    assert NgramDrafter().min_ngram == 2  # single-token matches do not trigger drafts by default
    d = drafter_on([7, 1, 5, 0, 1], min_ngram=2)  # only a 1-token match for root 1
    assert d.draft(request(1)).verify_budget == 0
    assert drafter_on([7, 1, 5, 0, 1], min_ngram=1).draft(request(1)).verify_budget == 3
    with pytest.raises(ValueError, match="min_ngram must be <= max_ngram = 2, got 3"):
        NgramDrafter(max_ngram=2, min_ngram=3)
    with pytest.raises(ValueError, match="max_depth must be an int >= 1, got 1.5"):
        NgramDrafter(max_depth=1.5)
    with pytest.raises(NotImplementedError, match="batch size must be 1 for now, got 2"):
        NgramDrafter().start(torch.zeros(2, 3, dtype=torch.int64), None, torch.zeros(2, dtype=torch.int64))


def test_first_call_guess_is_the_best_root_child():
    """The tree's guess (History's best_prob) is the root child of the largest occurrence weight, its score
    the log of that weight's share among the root children; ties go to the older child (the more recent
    occurrence, inserted first); no match, no guess."""
    d = drafter_on([1, 2, 3, 9, 9, 0, 2, 3, 7, 7, 0, 5, 3, 4, 0, 1, 2, 3], max_ngram=3, min_ngram=1, max_depth=8)
    tree = d.draft(request(3))                       # root children 9 (weight 3), 7 (2), 4 (1)
    assert tree.guess_token.tolist() == [9] and tree.guess_score.tolist() == pytest.approx([math.log(3 / 6)])
    tree = d.draft(request(3, budget=1))             # the budget does not change the guess
    assert tree.guess_token.tolist() == [9]
    d = drafter_on([5, 1, 0, 5, 2, 0, 5], max_ngram=1, min_ngram=1, max_depth=1)
    tree = d.draft(request(5))
    assert tree.guess_token.tolist() == [2] and tree.guess_score.tolist() == pytest.approx([math.log(0.5)])
    assert drafter_on([1, 2, 3, 4], min_ngram=1).draft(request(4)).guess_token is None


@pytest.mark.parametrize("seed", range(4))
def test_bench_index_agrees_with_the_rescan(seed):
    """bench/lookup_index.py's incremental n-gram index returns NgramDrafter.matches() exactly (it validates
    this before timing; here on small-alphabet contexts full of repeats, through appends)."""
    import numpy as np

    from conftest import load_bench_script
    mod = load_bench_script("lookup_index")
    g = np.random.default_rng(seed)
    ctx = g.integers(0, 4, size=300).tolist()
    d = NgramDrafter(max_ngram=4, min_ngram=1, max_matches=8)
    d.start(torch.tensor([ctx[:99]]), None, torch.tensor([ctx[99]]))
    idx = mod.NgramIndex(4, 1, 8)
    idx.append(ctx[:100])
    for pos in range(100, 300, 3):
        a, b = d.matches(), idx.matches()
        assert a[0].tolist() == b[0].tolist() and a[1].tolist() == b[1].tolist(), pos
        new = ctx[pos:pos + 3]
        d.commit(torch.tensor([new]), len(new), None)
        idx.append(new)
