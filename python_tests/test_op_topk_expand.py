import math
import re

import pytest
import torch
from hypothesis import given, settings, strategies as st

from conftest import FLOAT_TOL, assert_outputs_match, extension_required
from radar_ext import ops, reference

NEG_INF = -math.inf


def test_extension_loaded():
    extension_required()


def both(*args, **kwargs):
    return ops.topk_expand(*args, **kwargs), reference.topk_expand(*args, **kwargs)


@pytest.mark.parametrize("B,N,Vd,W", [(1, 1, 1, 1), (2, 3, 17, 5), (3, 4, 1000, 7), (2, 2, 33, 33),
                                      (1, 10, 8192, 10), (2, 1, 49152, 10), (1, 3, 130, 64)])
@pytest.mark.parametrize("temperature", [1.0, 0.6, 2.5])
def test_random_sizes(B, N, Vd, W, temperature):
    g = torch.Generator().manual_seed(B * 1000 + Vd)
    logits = torch.randn(B, N, Vd, generator=g) * 4
    beam_scores = -torch.rand(B, N, generator=g) * 6
    got, want = both(logits, beam_scores, W, temperature)
    assert isinstance(got, ops.TopkExpandOut)
    assert_outputs_match(got, want)


def test_ties_go_to_lower_index():
    logits = torch.zeros(1, 3, 9)           # every row flat, every beam equal
    out = ops.topk_expand(logits, torch.zeros(1, 3), 4)
    assert out.child_ids.tolist() == [[[0, 1, 2, 3]] * 3]
    torch.testing.assert_close(out.child_logp, torch.full((1, 3, 4), -math.log(9)))
    assert out.next_parent.tolist() == [[0, 0, 0, 0]] and out.next_ids.tolist() == [[0, 1, 2, 3]]
    assert_outputs_match(out, reference.topk_expand(logits, torch.zeros(1, 3), 4))


def test_permuted_rows_tie_exactly():
    # Same multiset of logits in two rows: equal log-probs, so beam 0 wins every tie.
    row = torch.tensor([0.5, 3.0, -1.0, 2.0, 3.0, 0.25])
    logits = torch.stack([row, row.flip(0)]).unsqueeze(0)
    out = ops.topk_expand(logits, torch.zeros(1, 2), 2)
    assert out.next_parent.tolist() == [[0, 0]] and out.next_ids.tolist() == [[1, 4]]
    assert_outputs_match(out, reference.topk_expand(logits, torch.zeros(1, 2), 2))


def test_dead_beams_and_neg_inf_rows():
    logits = torch.randn(2, 3, 20)
    logits[0, 1] = NEG_INF                   # a row with no distribution
    logits[1, 2, ::2] = NEG_INF              # half the vocabulary masked
    beam_scores = torch.tensor([[0.0, -1.0, NEG_INF], [NEG_INF, NEG_INF, -2.0]])
    got, want = both(logits, beam_scores, 12)
    assert_outputs_match(got, want)
    assert got.child_ids[0, 1].tolist() == list(range(12))
    assert torch.isneginf(got.child_logp[0, 1]).all()
    assert torch.isneginf(got.child_logp[1, 2, 10:]).all()   # only 10 finite entries in that row


def test_peaked_logits():
    logits = torch.randn(2, 4, 300)
    logits[..., 7] = 1e4
    got, want = both(logits, torch.zeros(2, 4), 5)
    assert_outputs_match(got, want)
    assert (got.child_ids[..., 0] == 7).all()


grid = st.one_of(st.integers(-16, 16).map(lambda k: k / 4), st.just(NEG_INF))


@settings(max_examples=150, deadline=None)
@given(data=st.data(), B=st.integers(1, 3), N=st.integers(1, 4), Vd=st.integers(1, 40),
       temperature=st.sampled_from([1.0, 0.5, 3.0]))
def test_hypothesis_grid_values(data, B, N, Vd, temperature):
    W = data.draw(st.integers(1, Vd))
    logits = torch.tensor(data.draw(st.lists(grid, min_size=B * N * Vd, max_size=B * N * Vd))).view(B, N, Vd)
    beam_scores = torch.tensor(data.draw(st.lists(grid.map(lambda v: -abs(v)), min_size=B * N,
                                                  max_size=B * N))).view(B, N)
    got, want = both(logits.float(), beam_scores.float(), W, temperature)
    assert_outputs_match(got, want)


def test_noncontiguous_input():
    logits = torch.randn(3, 50, 2).transpose(1, 2)   # [3, 2, 50], strided
    got, want = both(logits, torch.zeros(3, 2), 6)
    assert_outputs_match(got, want)


def test_opcheck():
    extension_required()
    if not ops.HAS_EXTENSION:
        pytest.skip("the reference is not a custom op")
    for args in [(torch.randn(2, 3, 40), -torch.rand(2, 3), 5, 1.0), (torch.randn(1, 1, 7), torch.zeros(1, 1), 7, 0.5)]:
        torch.library.opcheck(torch.ops.radar_ext.topk_expand.default, args)


def test_compile_fullgraph():
    def expand(logits, beam_scores):
        out = ops.topk_expand(logits, beam_scores, 4, 0.8)
        return out.next_scores * 2, out.next_ids
    logits, beam_scores = torch.randn(2, 3, 64), -torch.rand(2, 3)
    compiled = torch.compile(expand, fullgraph=True, backend="aot_eager")
    assert_outputs_match(compiled(logits, beam_scores), expand(logits, beam_scores))


ERRORS = [
    (lambda: (torch.randn(2, 3, 5).double(), torch.zeros(2, 3), 2, 1.0), "logits must be float32 [B, N, Vd], got float64 [2, 3, 5]"),
    (lambda: (torch.randn(3, 5), torch.zeros(3), 2, 1.0), "logits must be float32 [B, N, Vd], got float32 [3, 5]"),
    (lambda: (torch.randn(2, 0, 5), torch.zeros(2, 0), 2, 1.0), "logits must have N >= 1 beams, got float32 [2, 0, 5]"),
    (lambda: (torch.randn(2, 3, 5), torch.zeros(2, 4), 2, 1.0), "beam_scores must be float32 [B, N] = [2, 3], got float32 [2, 4]"),
    (lambda: (torch.randn(2, 3, 5), torch.zeros(2, 3, dtype=torch.int64), 2, 1.0), "beam_scores must be float32 [B, N] = [2, 3], got int64 [2, 3]"),
    (lambda: (torch.randn(2, 3, 5), torch.zeros(2, 3, device="meta"), 2, 1.0), "beam_scores must be on the device of logits (cpu), got meta"),
    (lambda: (torch.randn(2, 3, 5), torch.zeros(2, 3), 6, 1.0), "tree_topk must be an int in [1, Vd] = [1, 5], got 6"),
    (lambda: (torch.randn(2, 3, 5), torch.zeros(2, 3), 0, 1.0), "tree_topk must be an int in [1, Vd] = [1, 5], got 0"),
    (lambda: (torch.randn(2, 3, 5), torch.zeros(2, 3), 2, 0.0), "temperature must be a finite number > 0, got 0"),
    (lambda: (torch.randn(2, 3, 5), torch.zeros(2, 3), 2, -1.5), "temperature must be a finite number > 0, got -1.5"),
    (lambda: (torch.randn(2, 3, 5), torch.zeros(2, 3), 2, math.nan), "temperature must be a finite number > 0, got nan"),
]


@pytest.mark.parametrize("impl", ["ops", "reference"])
@pytest.mark.parametrize("make_args,message", ERRORS)
def test_error_messages(impl, make_args, message):
    fn = ops.topk_expand if impl == "ops" else reference.topk_expand
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        fn(*make_args())


def test_cuda_matches_cpu(cuda):
    logits, beam_scores = torch.randn(3, 4, 5000) * 3, -torch.rand(3, 4)
    logits[0, 1] = NEG_INF
    logits[1, :, :100] = 0.0
    want = ops.topk_expand(logits, beam_scores, 10, 0.7)
    got = ops.topk_expand(logits.to(cuda), beam_scores.to(cuda), 10, 0.7)
    assert_outputs_match([t.cpu() for t in got], want)


# ---- NaN: torch.topk's order (NaN above +inf), ties to the lower id, on every path -------------------

def nan_rows():
    """[2, 4, 300]: an all-NaN row, two NaNs past the first block, a NaN every 7, a +inf row, then in
    batch 1 a decreasing row whose one NaN sits where a NaN-blind block skip would miss it, and clean rows."""
    g = torch.Generator().manual_seed(11)
    logits = torch.randn(2, 4, 300, generator=g) * 3
    logits[0, 0] = math.nan
    logits[0, 1, [130, 200]] = math.nan
    logits[0, 2, ::7] = math.nan
    logits[0, 3, 17] = math.inf
    logits[1, 0] = -torch.arange(300.0)
    logits[1, 0, 150] = math.nan
    return logits, -torch.rand(2, 4, generator=g)


def assert_same_with_nan(got, want):
    for k, (g, w) in enumerate(zip(got, want)):
        assert g.dtype == w.dtype and g.shape == w.shape, k
        if g.is_floating_point():
            torch.testing.assert_close(g, w, **FLOAT_TOL, equal_nan=True, msg=lambda m: f"output {k}: {m}")
        else:
            assert torch.equal(g, w), f"output {k} differs:\n{g}\n{w}"


@pytest.mark.parametrize("W", [1, 6, 64])
def test_nan_rows_match_the_reference(W):
    logits, beam_scores = nan_rows()
    got, want = both(logits, beam_scores, W, 0.8)
    assert_same_with_nan(got, want)
    assert ((got.child_ids >= 0) & (got.child_ids < 300)).all() and got.next_ids.lt(300).all()


def test_nan_order_is_torch_topk_with_ties_to_the_lower_id():
    logits, beam_scores = nan_rows()
    out = ops.topk_expand(logits, beam_scores, 6)
    ids = out.child_ids
    assert ids[0, 0].tolist() == [0, 1, 2, 3, 4, 5]                 # all NaN: ids 0..W-1 (were INT64_MAX on CUDA)
    assert ids[0, 1, :2].tolist() == [130, 200]                      # the NaNs first, lower id first
    assert ids[0, 2].tolist() == [0, 7, 14, 21, 28, 35]
    assert ids[1, 0, :2].tolist() == [150, 0]                        # a NaN in a skipped-looking block
    for b, n in [(0, 3), (1, 0), (1, 1), (1, 3)]:    # rows without tied values (at most one NaN): torch.topk exactly
        assert ids[b, n].tolist() == torch.topk(logits[b, n], 6).indices.tolist(), (b, n)
    # log_softmax of a row with a NaN (or +inf) is NaN everywhere; a clean row has no NaN.
    assert torch.isnan(out.child_logp[0]).all() and torch.isnan(out.child_logp[1, 0]).all()
    assert not torch.isnan(out.child_logp[1, 1:]).any()
    # NaN children's scores rank first in the next-beam selection too, lower flat index first
    assert out.next_parent[0].tolist() == [0] * 6 and out.next_ids[0].tolist() == [0, 1, 2, 3, 4, 5]


def test_cuda_nan_rows_and_bits_match_cpu(cuda):
    """Same bits on both devices: ids, log-probs (NaN included), scores and the selection."""
    logits, beam_scores = nan_rows()
    big = torch.randn(3, 4, 32000, generator=torch.Generator().manual_seed(5)) * 4
    for lg, bs, W in [(logits, beam_scores, 6), (big, -torch.rand(3, 4), 10), (torch.zeros(1, 3, 100), torch.zeros(1, 3), 4)]:
        want = ops.topk_expand(lg, bs, W, 0.7)
        got = ops.topk_expand(lg.to(cuda), bs.to(cuda), W, 0.7)
        for k, (g, w) in enumerate(zip(got, want)):
            g = g.cpu()
            if g.is_floating_point():
                assert torch.equal(g.view(torch.int32), w.view(torch.int32)), f"output {k}: CUDA bits differ from CPU"
            else:
                assert torch.equal(g, w), k
