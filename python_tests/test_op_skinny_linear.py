import re

import pytest
import torch

from conftest import extension_required
from radar_ext import ops, reference

# float32 sums of K terms vs the float64 reference: relative to the sum of |terms| (a value that
# cancels to ~0 is not held to a relative bound on itself).
SUM_RTOL = 4e-6


def assert_close_to_reference(y, x, w, bias=None):
    want = reference.skinny_linear(x, w, bias)
    assert y.dtype == torch.float32 and y.shape == want.shape and y.device == want.device
    scale = x.double().abs() @ w.double().abs().T                             # [M, N] sum of |terms|
    if bias is not None:
        scale = scale + bias.double().abs()
    err = (y.double() - want.double()).abs()
    bound = SUM_RTOL * scale * max(1.0, x.shape[1] ** 0.5) + 1e-30
    assert bool((err <= bound).all()), f"max err {float(err.max())}, at {divmod(int((err / bound).argmax()), y.shape[1])}"


def test_extension_loaded():
    extension_required()


def inputs(M, N, K, seed, kind="normal"):
    g = torch.Generator().manual_seed(seed)
    x, w = torch.randn(M, K, generator=g), torch.randn(N, K, generator=g)
    if kind == "wide":      # magnitudes from 1e-30 to 1e30: no overflow, no denormal products
        x = x * torch.pow(10.0, torch.randint(-15, 16, (M, K), generator=g).float())
        w = w * torch.pow(10.0, torch.randint(-15, 16, (N, K), generator=g).float())
    elif kind == "cancel":  # rows of w that nearly cancel against x: large terms, small sums
        w = torch.cat([w, -w], 1)[:, :K] if K > 1 else w
        x = torch.cat([x, x * (1 + 1e-3)], 1)[:, :K] if K > 1 else x
    elif kind == "sparse":  # exact zeros and +-1e6 spikes
        x = torch.where(torch.rand(M, K, generator=g) < 0.5, 0.0, x)
        w = torch.where(torch.rand(N, K, generator=g) < 0.05, 1e6 * torch.sign(w), w)
    return x.contiguous(), w.contiguous()


@pytest.mark.parametrize("M", [1, 2, 3, 7, 16, 33, 64])
@pytest.mark.parametrize("N,K", [(1, 1), (5, 3), (13, 17), (37, 31), (130, 100), (67, 576), (9, 1537)])
def test_matches_reference(M, N, K):
    x, w = inputs(M, N, K, seed=M * 10007 + N * 31 + K)
    assert_close_to_reference(ops.skinny_linear(x, w), x, w)
    bias = torch.randn(N)
    assert_close_to_reference(ops.skinny_linear(x, w, bias), x, w, bias)


@pytest.mark.parametrize("kind", ["wide", "cancel", "sparse"])
@pytest.mark.parametrize("M,N,K", [(1, 23, 45), (7, 41, 97), (33, 18, 200)])
def test_adversarial_values(kind, M, N, K):
    x, w = inputs(M, N, K, seed=M + N + K, kind=kind)
    assert_close_to_reference(ops.skinny_linear(x, w), x, w)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("M,N,K", [(1, 5, 3), (4, 37, 31), (7, 130, 100), (16, 67, 576), (3, 9, 1537)])
def test_16bit_weights_same_bits_as_their_float32_values(dtype, M, N, K):
    """bf16 / fp16 weights are widened exactly: the result is bit for bit the float32 kernel's on
    w.to(dtype).float(), and close to the float64 reference."""
    x, w = inputs(M, N, K, seed=M * 7 + N + K)
    w16 = w.to(dtype)
    bias = torch.randn(N)
    for b in (None, bias):
        y = ops.skinny_linear(x, w16, b)
        assert y.dtype == torch.float32
        assert torch.equal(y, ops.skinny_linear(x, w16.float(), b))
        assert_close_to_reference(y, x, w16.float(), b)


def test_non_contiguous_inputs_and_empty_sizes():
    x, w = inputs(20, 30, 40, seed=5)
    xt, wt = x.t().contiguous().t(), w[::2]                           # column-major x, strided w
    assert_close_to_reference(ops.skinny_linear(xt, wt), x, w[::2])
    assert ops.skinny_linear(x[:0], w).shape == (0, 30)
    assert ops.skinny_linear(x, w[:0]).shape == (20, 0)
    bias = torch.randn(30)
    assert torch.equal(ops.skinny_linear(x[:, :0], w[:, :0], bias), bias.expand(20, 30))


def test_rows_independent_of_m_and_threads():
    """A row's result does not depend on how many rows come with it nor on the thread count: the
    property that keeps tree verification deterministic."""
    x, w = inputs(33, 301, 576, seed=11)
    full = ops.skinny_linear(x, w)
    for m in (0, 5, 32):
        assert torch.equal(ops.skinny_linear(x[m:m + 1], w), full[m:m + 1])
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ops.skinny_linear(x, w)
        torch.set_num_threads(2)
        two = ops.skinny_linear(x, w)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, full) and torch.equal(two, full)


def test_parallel_for_uses_torch_threads():
    """The extension's at::parallel_for (skinny_linear's thread split) runs on torch's intra-op threads:
    built without OpenMP it silently ran on one core (verify 1.4x slower than MKL at 2 threads)."""
    extension_required()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert ops._C.parallel_threads() == 2
        torch.set_num_threads(1)
        assert ops._C.parallel_threads() == 1
    finally:
        torch.set_num_threads(threads)


def test_opcheck():
    extension_required()
    if not ops.HAS_EXTENSION:
        pytest.skip("without the extension there is no custom op")
    x, w = inputs(5, 19, 23, seed=3)
    torch.library.opcheck(torch.ops.radar_ext.skinny_linear.default, (x, w))
    torch.library.opcheck(torch.ops.radar_ext.skinny_linear.default, (x, w, torch.randn(19)))
    torch.library.opcheck(torch.ops.radar_ext.skinny_linear.default, (x, w.half()))


def test_compile_fullgraph():
    def mlp(x, w1, w2):
        return ops.skinny_linear(torch.relu(ops.skinny_linear(x, w1)), w2) * 2
    x, w1 = inputs(3, 24, 16, seed=4)
    w2 = torch.randn(7, 24)
    compiled = torch.compile(mlp, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x, w1, w2), mlp(x, w1, w2), rtol=0, atol=0)


W_MSG = "w must be float32, bfloat16 or float16 [N, K] with K = 3, "
ERRORS = [
    (lambda: (torch.zeros(2, 3, dtype=torch.float64), torch.zeros(4, 3), None), "x must be float32 [M, K], got float64 [2, 3]"),
    (lambda: (torch.zeros(2, 3, 1), torch.zeros(4, 3), None), "x must be float32 [M, K], got float32 [2, 3, 1]"),
    (lambda: (torch.zeros(2, 3), torch.zeros(4, 5), None), W_MSG + "got float32 [4, 5]"),
    (lambda: (torch.zeros(2, 3), torch.zeros(4, 3, dtype=torch.float64), None), W_MSG + "got float64 [4, 3]"),
    (lambda: (torch.zeros(2, 3), torch.zeros(3), None), W_MSG + "got float32 [3]"),
    (lambda: (torch.zeros(2, 3), torch.zeros(4, 3, device="meta"), None), "w must be on the device of x (cpu), got meta"),
    (lambda: (torch.zeros(2, 3), torch.zeros(4, 3), torch.zeros(5)), "bias must be float32 [N] = [4], got float32 [5]"),
    (lambda: (torch.zeros(2, 3), torch.zeros(4, 3), torch.zeros(4, dtype=torch.int64)), "bias must be float32 [N] = [4], got int64 [4]"),
    (lambda: (torch.zeros(2, 3), torch.zeros(4, 3), torch.zeros(4, device="meta")), "bias must be on the device of x (cpu), got meta"),
]


@pytest.mark.parametrize("impl", ["ops", "reference"])
@pytest.mark.parametrize("make,message", ERRORS)
def test_error_messages(impl, make, message):
    fn = ops.skinny_linear if impl == "ops" else reference.skinny_linear
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        fn(*make())


def test_cuda_side_path_on_the_cpu():
    """skinny_linear_aten is what a CUDA tensor runs (the same function is skinny_linear's CUDA
    implementation): shared checks, 16-bit weights widened, at::linear with TF32 off, bias after."""
    extension_required()
    if not ops.HAS_EXTENSION:
        pytest.skip("without the extension there is no custom op")
    x, w = inputs(5, 33, 70, seed=8)
    bias = torch.randn(33)
    for ww in (w, w.T.contiguous().T, w.to(torch.bfloat16), w.to(torch.float16)):
        for b in (None, bias):
            y = torch.ops.radar_ext.skinny_linear_aten(x, ww, b)
            assert_close_to_reference(y, x, ww, b)
    for make, message in ERRORS:
        with pytest.raises(ValueError, match="^" + re.escape(message)):
            torch.ops.radar_ext.skinny_linear_aten(*make())


def test_cuda_no_tf32(cuda):
    x, w = inputs(4, 256, 2048, seed=10)
    saved = torch.backends.cuda.matmul.allow_tf32
    try:
        outs = []
        for tf32 in (False, True):
            torch.backends.cuda.matmul.allow_tf32 = tf32
            outs.append(ops.skinny_linear(x.to(cuda), w.to(cuda)).cpu())
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved
    assert torch.equal(outs[0], outs[1])
    assert_close_to_reference(outs[1], x, w)


def test_cuda_is_linear(cuda):
    x, w = inputs(6, 50, 70, seed=9)
    bias = torch.randn(50)
    y = ops.skinny_linear(x.to(cuda), w.to(cuda), bias.to(cuda))
    torch.testing.assert_close(y.cpu(), reference.skinny_linear(x, w, bias), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match=re.escape("w must be float32, bfloat16 or float16 [N, K] with K = 70, "
                                                   "got float32 [50, 69]")):
        ops.skinny_linear(x.to(cuda), w[:, :69].to(cuda))
    for dt in (torch.bfloat16, torch.float16):
        w16 = w.to(dt)
        torch.testing.assert_close(ops.skinny_linear(x.to(cuda), w16.to(cuda)).cpu(),
                                   reference.skinny_linear(x, w16), rtol=1e-4, atol=1e-4)
