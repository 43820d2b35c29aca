import re

import pytest
import torch
from hypothesis import given, settings, strategies as st

from conftest import assert_outputs_match, extension_required
from radar_ext import ops, reference


def test_extension_loaded():
    extension_required()


def make_args(B, F, H, G, O, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g) * scale  # noqa: E731
    return (r(B, F), r(B, H), r(B, H), r(4 * H, F) / max(F, 1) ** 0.5, r(4 * H, H) / max(H, 1) ** 0.5, r(4 * H),
            r(G, H + F) / (H + F) ** 0.5, r(G), r(O, G) / max(G, 1) ** 0.5, r(O))


@pytest.mark.parametrize("B,F,H,G,O", [(1, 10, 128, 128, 2), (8, 10, 128, 128, 2), (3, 7, 5, 9, 6),
                                       (2, 4, 0, 8, 2), (1, 1, 1, 1, 1), (5, 138, 33, 17, 12)])
def test_matches_reference(B, F, H, G, O):
    args = make_args(B, F, H, G, O, seed=B + F + H)
    assert_outputs_match(ops.policy_step(*args), reference.policy_step(*args))


def test_matches_torch_lstm_cell():
    B, F, H = 4, 10, 16
    cell = torch.nn.LSTMCell(F, H)
    x, h, c = torch.randn(B, F), torch.randn(B, H), torch.randn(B, H)
    w1, b1, w2, b2 = torch.randn(8, H + F), torch.randn(8), torch.randn(2, 8), torch.randn(2)
    with torch.no_grad():
        h_want, c_want = cell(x, (h, c))
        probs, h_new, c_new = ops.policy_step(x, h, c, cell.weight_ih, cell.weight_hh, cell.bias_ih + cell.bias_hh,
                                              w1, b1, w2, b2)
        logits = torch.relu(torch.cat([h_want, x], 1) @ w1.T + b1) @ w2.T + b2
    torch.testing.assert_close(h_new, h_want)
    torch.testing.assert_close(c_new, c_want)
    torch.testing.assert_close(probs, torch.softmax(logits, 1))


def test_saturated_gates_and_peaked_softmax():
    args = list(make_args(3, 6, 4, 5, 3, scale=30.0))
    probs, h_new, c_new = ops.policy_step(*args)
    assert_outputs_match((probs, h_new, c_new), reference.policy_step(*args))
    assert torch.isfinite(probs).all() and torch.allclose(probs.sum(1), torch.ones(3))


@settings(max_examples=40, deadline=None)
@given(B=st.integers(1, 5), F=st.integers(1, 12), H=st.integers(0, 9), G=st.integers(1, 10), O=st.integers(1, 6),
       seed=st.integers(0, 1000))
def test_hypothesis_sizes(B, F, H, G, O, seed):
    args = make_args(B, F, H, G, O, seed=seed)
    assert_outputs_match(ops.policy_step(*args), reference.policy_step(*args))


def test_opcheck():
    extension_required()
    if not ops.HAS_EXTENSION:
        pytest.skip("the reference is not a custom op")
    for sizes in [(2, 10, 8, 6, 2), (1, 3, 0, 4, 5)]:
        torch.library.opcheck(torch.ops.radar_ext.policy_step.default, make_args(*sizes))


def test_compile_fullgraph():
    def step(*args):
        probs, h, c = ops.policy_step(*args)
        return probs[:, 0] > 0.5, h, c
    args = make_args(2, 10, 16, 16, 2)
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    assert_outputs_match(compiled(*args), step(*args))


def replace(args, index, value):
    args = list(args)
    args[index] = value
    return args


GOOD = lambda: make_args(2, 3, 4, 5, 2)  # noqa: E731
ERRORS = [
    (lambda: replace(GOOD(), 0, torch.randn(2, 3).double()), "features must be float32 [B, F], got float64 [2, 3]"),
    (lambda: replace(GOOD(), 1, torch.randn(3, 4)), "h must be float32 [B, H] with B = 2, got float32 [3, 4]"),
    (lambda: replace(GOOD(), 2, torch.randn(2, 5)), "c must be float32 [B, H] = [2, 4], got float32 [2, 5]"),
    (lambda: replace(GOOD(), 3, torch.randn(16, 4)), "w_ih must be float32 [4H, F] = [16, 3], got float32 [16, 4]"),
    (lambda: replace(GOOD(), 4, torch.randn(16, 4).half()), "w_hh must be float32 [4H, H] = [16, 4], got float16 [16, 4]"),
    (lambda: replace(GOOD(), 5, torch.randn(15)), "b must be float32 [4H] = [16], got float32 [15]"),
    (lambda: replace(GOOD(), 6, torch.randn(5, 6)), "w1 must be float32 [G, H+F] with H+F = 7, got float32 [5, 6]"),
    (lambda: replace(GOOD(), 7, torch.randn(4)), "b1 must be float32 [G] = [5], got float32 [4]"),
    (lambda: replace(GOOD(), 8, torch.randn(2, 6)), "w2 must be float32 [O, G] with O >= 1 and G = 5, got float32 [2, 6]"),
    (lambda: replace(GOOD(), 8, torch.randn(0, 5)), "w2 must be float32 [O, G] with O >= 1 and G = 5, got float32 [0, 5]"),
    (lambda: replace(GOOD(), 9, torch.randn(3)), "b2 must be float32 [O] = [2], got float32 [3]"),
    (lambda: replace(GOOD(), 9, torch.randn(2, device="meta")), "b2 must be on the device of features (cpu), got meta"),
]


@pytest.mark.parametrize("impl", ["ops", "reference"])
@pytest.mark.parametrize("make,message", ERRORS)
def test_error_messages(impl, make, message):
    fn = ops.policy_step if impl == "ops" else reference.policy_step
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        fn(*make())


def test_cuda_matches_cpu(cuda):
    args = make_args(8, 10, 128, 128, 2)
    got = ops.policy_step(*[a.to(cuda) for a in args])
    assert_outputs_match([t.cpu() for t in got], ops.policy_step(*args))
