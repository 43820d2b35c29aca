"""Candidate pool and best-V selection: closed under parent, creation order, tie handling."""
import pytest
import torch

from radar_ext.tree import CandidatePool, make_tree, root_only_tree


def filled_pool():
    pool = CandidatePool(1, 20, "cpu")
    # root children (pool 0..2), then children of 0 (3, 4) and of 2 (5)
    pool.add(torch.tensor([[7, 8, 9]]), torch.tensor([[-1, -1, -1]]), torch.tensor([[-0.1, -2.0, -0.5]]))
    pool.add(torch.tensor([[10, 11, 12]]), torch.tensor([[0, 0, 2]]), torch.tensor([[-0.3, -3.0, -0.5]]))
    return pool


def test_best_v_is_closed_and_ordered():
    pool = filled_pool()
    for V in range(1, 7):
        picked = pool.best(V)[0].tolist()
        assert picked == sorted(picked) and len(picked) == V
        parents = pool.parents[0, picked].tolist()
        assert all(p == -1 or p in picked for p in parents), (V, picked)
    # V = 3: scores -0.1 (0), -0.3 (3), then a tie at -0.5 between 2 and 5 -> older node 2
    assert pool.best(3)[0].tolist() == [0, 2, 3]


def test_ties_with_parent_keep_parent():
    pool = CandidatePool(1, 4, "cpu")
    pool.add(torch.tensor([[5]]), torch.tensor([[-1]]), torch.tensor([[0.0]]))
    pool.add(torch.tensor([[6, 7]]), torch.tensor([[0, 0]]), torch.tensor([[0.0, -1.0]]))
    assert pool.best(1)[0].tolist() == [0]


def test_to_tree():
    pool = filled_pool()
    tree = pool.to_tree(torch.tensor([3]), 4, draft_calls=2)
    # picked pool nodes 0, 2, 3, 5 -> tree nodes 1..4
    assert tree.tokens.tolist() == [[3, 7, 9, 10, 12]]
    assert tree.parents.tolist() == [[-1, 0, 0, 1, 2]]
    assert tree.depth.tolist() == [[0, 1, 1, 2, 2]]
    assert tree.verify_budget == 4 and tree.draft_calls == 2
    assert tree.paths.shape[1] == 2 and tree.paths[0].tolist() == [[0, 1, 3, -1, -1], [0, 2, 4, -1, -1]]
    # a budget larger than the pool takes the whole pool
    assert pool.to_tree(torch.tensor([3]), 100, 2).verify_budget == 6


@pytest.mark.parametrize("seed", range(6))
def test_one_row_to_tree_is_the_batched_selection(seed):
    """A CPU row's host-list to_tree equals the tensor path's (a 2-row pool of the same row takes it) on random
    pools with ties (scores on a coarse grid), -inf scores, every budget, and a source row."""
    g = torch.Generator().manual_seed(seed)
    n = 5 + seed * 4
    pool1, pool2 = CandidatePool(1, n, "cpu"), CandidatePool(2, n, "cpu")
    parents, scores = [], []
    for i in range(n):  # a child never scores above its parent (cumulative log-probabilities)
        p = int(torch.randint(-1, i, (1,), generator=g)) if i else -1
        s = -float(torch.randint(0, 4, (1,), generator=g)) / 2 + (scores[p] if p >= 0 else 0.0)
        parents.append(p)
        scores.append(-float("inf") if i % 7 == 6 else s)
    for i, (p, sc) in enumerate(zip(parents, scores)):  # an -inf node's children are -inf too
        if p >= 0 and scores[p] == -float("inf"):
            scores[i] = -float("inf")
    tok = torch.randint(0, 50, (1, n), generator=g)
    for pool, B in ((pool1, 1), (pool2, 2)):
        pool.add(tok.expand(B, n), torch.tensor([parents]).expand(B, n), torch.tensor([scores]).expand(B, n))
        pool.source = torch.randint(0, 3, (1, n), generator=torch.Generator().manual_seed(seed),
                                    dtype=torch.int64).to(torch.int8).expand(B, n)
    for V in range(0, n + 2):
        one = pool1.to_tree(torch.tensor([3]), V, 2)
        two = pool2.to_tree(torch.tensor([3, 3]), V, 2)
        for f in ("tokens", "parents", "n_nodes", "depth", "mask", "source"):
            assert getattr(one, f).tolist()[0] == getattr(two, f).tolist()[0], (V, f)
        assert one.paths[0].tolist() == two.paths[0, :one.paths.shape[1]].tolist() and one.draft_calls == 2


def test_pool_overflow_error():
    pool = CandidatePool(1, 2, "cpu")
    with pytest.raises(RuntimeError, match="candidate pool overflow: capacity 2, have 0, adding 3"):
        pool.add(torch.zeros(1, 3, dtype=torch.int64), torch.zeros(1, 3, dtype=torch.int64), torch.zeros(1, 3))


def test_root_only_and_make_tree():
    t = root_only_tree(torch.tensor([4]))
    assert t.verify_budget == 0 and t.paths.tolist() == [[[0]]] and t.mask.tolist() == [[[True]]]
    chain = make_tree(torch.tensor([[1, 2, 3]]), torch.tensor([[-1, 0, 1]]), torch.tensor([3]))
    assert chain.paths.tolist() == [[[0, 1, 2]]] and chain.mask[0].tolist() == [[True, False, False],
                                                                                 [True, True, False],
                                                                                 [True, True, True]]


def test_stack_trees_of_root_only_trees_is_one_root_only_tree():
    """Every row a plain step: stack_trees' shortcut gives the tensors the padded stack gives."""
    from radar_ext.tree import root_only_tree, stack_trees
    roots = torch.tensor([5, 7, 11])
    got = stack_trees([root_only_tree(roots[b:b + 1]) for b in range(3)])
    want = root_only_tree(roots)
    for name in ("tokens", "parents", "n_nodes", "depth", "mask", "paths", "n_paths"):
        assert torch.equal(getattr(got, name), getattr(want, name)), name
    assert got.draft_calls == 0 and got.tokens.tolist() == [[5], [7], [11]]
