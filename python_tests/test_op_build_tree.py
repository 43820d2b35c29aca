import re

import pytest
import torch
from hypothesis import given, settings, strategies as st

from conftest import assert_outputs_match, extension_required
from radar_ext import ops, reference


def test_extension_loaded():
    extension_required()


def both(parents, n_nodes):
    parents, n_nodes = torch.tensor(parents), torch.tensor(n_nodes)
    got = ops.build_tree(parents, n_nodes)
    assert_outputs_match(got, reference.build_tree(parents, n_nodes))
    return got


def test_chain_star_single_and_padding():
    mask, depth, paths, n_paths = both([[-1, 0, 1, 2, 3], [-1, 0, 0, 0, 0], [-1, 7, -5, 99, 0], [-1, 0, 0, 1, 1]],
                                       [5, 5, 1, 3])
    assert depth.tolist() == [[0, 1, 2, 3, 4], [0, 1, 1, 1, 1], [0, -1, -1, -1, -1], [0, 1, 1, -1, -1]]
    assert n_paths.tolist() == [1, 4, 1, 2]
    assert paths[0, 0].tolist() == [0, 1, 2, 3, 4]
    assert paths[1, :4, :2].tolist() == [[0, 1], [0, 2], [0, 3], [0, 4]]
    assert paths[2, 0].tolist() == [0, -1, -1, -1, -1] and (paths[2, 1:] == -1).all()
    assert paths[3, :2].tolist() == [[0, 1, -1, -1, -1], [0, 2, -1, -1, -1]]
    assert torch.equal(mask[0], torch.ones(5, 5, dtype=torch.bool).tril())  # a chain sees all of its past
    assert mask[1].tolist()[3] == [True, False, False, True, False]
    assert not mask[2, 1:].any() and not mask[2, :, 1:].any()          # padding invisible


def random_trees(B, M, seed):
    g = torch.Generator().manual_seed(seed)
    n_nodes = torch.randint(1, M + 1, (B,), generator=g)
    parents = torch.full((B, M), 1234, dtype=torch.int64)              # garbage padding
    for b in range(B):
        parents[b, 0] = -1
        for i in range(1, int(n_nodes[b])):
            parents[b, i] = int(torch.randint(0, i, (1,), generator=g))
    return parents, n_nodes


@pytest.mark.parametrize("B,M", [(1, 1), (3, 7), (4, 61), (2, 128)])
def test_random_trees(B, M):
    parents, n_nodes = random_trees(B, M, seed=B * M)
    assert_outputs_match(ops.build_tree(parents, n_nodes), reference.build_tree(parents, n_nodes))


@settings(max_examples=60, deadline=None)
@given(data=st.data(), B=st.integers(1, 4), M=st.integers(1, 24))
def test_hypothesis_trees(data, B, M):
    n_nodes = data.draw(st.lists(st.integers(1, M), min_size=B, max_size=B))
    parents = []
    for n in n_nodes:
        row = [-1] + [data.draw(st.integers(max(0, i - data.draw(st.sampled_from([1, 2, i]))), i - 1))
                      for i in range(1, n)]
        parents.append(row + data.draw(st.lists(st.integers(-3, 50), min_size=M - n, max_size=M - n)))
    both(parents, n_nodes)


def test_opcheck():
    extension_required()
    if not ops.HAS_EXTENSION:
        pytest.skip("the reference is not a custom op")
    parents, n_nodes = random_trees(3, 9, seed=1)
    torch.library.opcheck(torch.ops.radar_ext.build_tree.default, (parents, n_nodes))


def test_compile_fullgraph():
    def tree(parents, n_nodes):
        mask, depth, paths, n_paths = ops.build_tree(parents, n_nodes)
        return mask.sum(-1), depth + 1, paths, n_paths
    parents, n_nodes = random_trees(2, 12, seed=2)
    compiled = torch.compile(tree, fullgraph=True, backend="aot_eager")
    assert_outputs_match(compiled(parents, n_nodes), tree(parents, n_nodes))


ERRORS = [
    (lambda: (torch.zeros(2, 3), torch.ones(2, dtype=torch.int64)), "parents must be int64 [B, M] with M >= 1, got float32 [2, 3]"),
    (lambda: (torch.zeros(2, 0, dtype=torch.int64), torch.ones(2, dtype=torch.int64)), "parents must be int64 [B, M] with M >= 1, got int64 [2, 0]"),
    (lambda: (torch.tensor([[-1, 0]]), torch.tensor([2, 2])), "n_nodes must be int64 [B] = [1], got int64 [2]"),
    (lambda: (torch.tensor([[-1, 0]]), torch.tensor([2], dtype=torch.int32)), "n_nodes must be int64 [B] = [1], got int32 [1]"),
    (lambda: (torch.tensor([[-1, 0]]), torch.tensor([2], device="meta")), "n_nodes must be on the device of parents (cpu), got meta"),
    (lambda: (torch.tensor([[-1, 0], [-1, 0]]), torch.tensor([2, 3])), "n_nodes[1] = 3 must be in [1, M] = [1, 2]"),
    (lambda: (torch.tensor([[-1, 0], [-1, 0]]), torch.tensor([0, 2])), "n_nodes[0] = 0 must be in [1, M] = [1, 2]"),
    (lambda: (torch.tensor([[-1, 0, 1], [0, 0, 0]]), torch.tensor([3, 3])), "parents[1, 0] = 0 must be -1 (node 0 is the root)"),
    (lambda: (torch.tensor([[-1, 0, 1, 2], [-1, 0, 3, 4]]), torch.tensor([4, 4])), "parents[1, 2] = 3 must be in [0, 2) (node 2)"),
    (lambda: (torch.tensor([[-1, 0, 1, -1]]), torch.tensor([4])), "parents[0, 3] = -1 must be in [0, 3) (node 3)"),
    (lambda: (torch.tensor([[-1, 0, 2, 9]]), torch.tensor([4])), "parents[0, 2] = 2 must be in [0, 2) (node 2)"),
]


@pytest.mark.parametrize("impl", ["ops", "reference"])
@pytest.mark.parametrize("make,message", ERRORS)
def test_error_messages(impl, make, message):
    fn = ops.build_tree if impl == "ops" else reference.build_tree
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        fn(*make())


def test_cuda_matches_cpu(cuda):
    parents, n_nodes = random_trees(5, 40, seed=3)
    got = ops.build_tree(parents.to(cuda), n_nodes.to(cuda))
    assert_outputs_match([t.cpu() for t in got], ops.build_tree(parents, n_nodes))
    with pytest.raises(ValueError, match=re.escape("parents[0, 2] = 5 must be in [0, 2) (node 2)")):
        ops.build_tree(torch.tensor([[-1, 0, 5]], device=cuda), torch.tensor([3], device=cuda))
