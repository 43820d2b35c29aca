"""Block-quantized weights: the skinny_linear_quant op (Q4_1 / Q8_0 blocks decoded on load) against the
reference and bit for bit against skinny_linear on the dequantized float32 weights; radar_ext.quant's
exact recovery of GGUF blocks from float32 values (and its refusal of anything else); FastLinear's
quantized path."""
import contextlib
import re

import pytest
import torch

from conftest import extension_required
from radar_ext import ops, quant, reference
from test_op_skinny_linear import assert_close_to_reference


def gguf_blocks(N, K, kind, seed=0):
    """Random blocks as a GGUF file holds them (float16 scales and minima; as GGUF's quantizer makes
    them, every Q4_1 block holds a q = 0 (its minimum) and a q = 15 (its maximum), every Q8_0 block a
    q = +-127 (its largest magnitude))."""
    g = torch.Generator().manual_seed(seed)
    d = (torch.rand(N, K // 32, generator=g) * 0.05 + 1e-3).half().float()
    if kind == "Q4_1":
        q = torch.randint(0, 256, (N, K // 2), generator=g, dtype=torch.int64).to(torch.uint8)
        q[:, 0::16] &= 0xF0                                     # element 0 of each block: q = 0
        q[:, 1::16] |= 0x0F                                     # element 1: q = 15
        m = (torch.randn(N, K // 32, generator=g) * 0.2).half().float()
        return quant.QuantBlocks(q, d, m)
    q = torch.randint(-127, 128, (N, K), generator=g, dtype=torch.int64).to(torch.int8)
    q[:, 0::32] = torch.where(torch.rand(N, K // 32, generator=g) < 0.5, -127, 127).to(torch.int8)  # the max |w|
    return quant.QuantBlocks(q, d, None)


def test_extension_loaded():
    extension_required()


def test_dequantize_layout():
    """Byte 16b + j: element 32b + j in the low nibble, 32b + 16 + j in the high one; w = d * q + m."""
    q = torch.zeros(1, 16, dtype=torch.uint8)
    q[0, 3] = 0x5A                                              # low 10 -> element 3, high 5 -> element 19
    w = reference.dequantize_blocks(q, torch.tensor([[0.5]]), torch.tensor([[-1.0]]))
    want = torch.full((1, 32), -1.0)
    want[0, 3], want[0, 19] = 0.5 * 10 - 1.0, 0.5 * 5 - 1.0
    assert torch.equal(w, want)
    q8 = torch.arange(-16, 16, dtype=torch.int8).view(1, 32)
    assert torch.equal(reference.dequantize_blocks(q8, torch.tensor([[0.25]])), torch.arange(-16, 16).float().view(1, 32) * 0.25)


@pytest.mark.parametrize("kind", ["Q4_1", "Q8_0"])
@pytest.mark.parametrize("M", [1, 2, 3, 5, 6, 7, 8, 11, 17])  # 6, 7, 11: a 2- or 3-row last tile, padded to 4
@pytest.mark.parametrize("N,K", [(1, 32), (7, 64), (37, 576), (130, 96)])
def test_same_bits_as_float32_kernel_and_close_to_reference(kind, M, N, K):
    blocks = gguf_blocks(N, K, kind, seed=M + N + K)
    w = blocks.dequantize()
    x = torch.randn(M, K)
    bias = torch.randn(N)
    for b in (None, bias):
        y = ops.skinny_linear_quant(x, blocks.q, blocks.d, blocks.m, b)
        if ops.amx_rows(M):  # the AMX tile unit sums in another order (test_amx_path); without it, these bits
            with amx_off():
                assert torch.equal(ops.skinny_linear_quant(x, blocks.q, blocks.d, blocks.m, b), ops.skinny_linear(x, w, b))
        else:
            assert torch.equal(y, ops.skinny_linear(x, w, b))
        assert_close_to_reference(y, x, w, b)
    # the reference itself
    assert_close_to_reference(reference.skinny_linear_quant(x, blocks.q, blocks.d, blocks.m), x, w)


@pytest.mark.parametrize("kind", ["Q4_1", "Q8_0"])
def test_tall_tiles_same_bits_as_four_row_tiles_and_as_one_row(kind):
    """The AVX-512 tiles of up to 6 rows of x (the default for 5+ rows) and the 4-row ones (_C.set_wide_tiles(False))
    give the same bits at every M, and every row the bits of that row alone: each dot product is summed in an order
    fixed by K, whatever its tile."""
    if not hasattr(ops._C, "set_wide_tiles"):
        pytest.skip("extension without the tile switch")
    for N, K in ((37, 576), (130, 96)):
        blocks = gguf_blocks(N, K, kind, seed=N)
        x = torch.randn(20, K, generator=torch.Generator().manual_seed(K))
        bias = torch.randn(N)
        with amx_off():
            alone = torch.cat([ops.skinny_linear_quant(x[m:m + 1], blocks.q, blocks.d, blocks.m, bias) for m in range(20)])
            for M in range(1, 21):
                prev = ops._C.set_wide_tiles(False)
                try:
                    narrow = ops.skinny_linear_quant(x[:M], blocks.q, blocks.d, blocks.m, bias)
                finally:
                    ops._C.set_wide_tiles(prev)
                assert prev is True  # the default
                wide = ops.skinny_linear_quant(x[:M], blocks.q, blocks.d, blocks.m, bias)
                assert torch.equal(wide, narrow) and torch.equal(wide, alone[:M]), M


@contextlib.contextmanager
def amx_off():
    prev = ops._C.set_amx_enabled(False)
    try:
        yield
    finally:
        ops._C.set_amx_enabled(prev)


@pytest.mark.parametrize("kind", ["Q4_1", "Q8_0"])
@pytest.mark.parametrize("N,K", [(1, 32), (7, 64), (37, 576), (130, 96), (600, 1536)])
def test_amx_path(kind, N, K):
    """Where the CPU has AMX: products of amx_min_rows() rows and more run on the tile unit (x split into
    three exact bfloat16 parts, float32 sums per block, then d * S + m * X). As close to the float64
    reference as the AVX-512 path, each row independent of the others (its bits do not move with M, the
    row order or the thread count), and the AVX-512 path's bits below the threshold."""
    if not (ops.HAS_EXTENSION and ops._C.amx_supported()):
        pytest.skip("no AMX on this CPU (or the extension is not built)")
    assert ops._C.amx_enabled(), "the AMX path is supported but disabled (RADAR_EXT_AMX=0?)"
    lo = ops._C.amx_min_rows()
    blocks = gguf_blocks(N, K, kind, seed=N + K)
    w = blocks.dequantize()
    bias = torch.randn(N)
    x = torch.randn(40, K) * torch.logspace(-3, 2, 40).unsqueeze(1)  # rows of very different scales
    got = {}
    for M in (lo, lo + 1, 16, 17, 40):
        y = ops.skinny_linear_quant(x[:M], blocks.q, blocks.d, blocks.m, bias)
        assert ops.amx_rows(M)
        assert_close_to_reference(y, x[:M], w, bias)
        got[M] = y
    for M, y in got.items():
        assert torch.equal(y, got[40][:M])                           # rows do not depend on M
    perm = torch.randperm(40, generator=torch.Generator().manual_seed(0))
    assert torch.equal(ops.skinny_linear_quant(x[perm], blocks.q, blocks.d, blocks.m, bias), got[40][perm])
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ops.skinny_linear_quant(x, blocks.q, blocks.d, blocks.m, bias)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, got[40])
    with amx_off():
        avx = ops.skinny_linear_quant(x, blocks.q, blocks.d, blocks.m, bias)
    assert_close_to_reference(avx, x, w, bias)
    below = ops.skinny_linear_quant(x[:lo - 1], blocks.q, blocks.d, blocks.m, bias)  # below: the AVX-512 bits
    assert torch.equal(below, ops.skinny_linear(x[:lo - 1], w, bias))


def test_opcheck_and_non_contiguous():
    extension_required()
    if not ops.HAS_EXTENSION:
        pytest.skip("without the extension there is no custom op")
    for kind in ("Q4_1", "Q8_0"):
        b = gguf_blocks(9, 64, kind, seed=1)
        x = torch.randn(3, 64)
        torch.library.opcheck(torch.ops.radar_ext.skinny_linear_quant.default, (x, b.q, b.d, b.m, torch.randn(9)))
        xt = torch.randn(64, 3).T                               # non-contiguous x
        assert torch.equal(ops.skinny_linear_quant(xt, b.q, b.d, b.m), ops.skinny_linear(xt.contiguous(), b.dequantize()))


def _args(**kw):
    a = dict(x=torch.zeros(2, 64), q=torch.zeros(4, 32, dtype=torch.uint8), d=torch.zeros(4, 2), m=torch.zeros(4, 2),
             bias=None)
    a.update(kw)
    return a


ERRORS = [
    (_args(x=torch.zeros(2, 64, dtype=torch.float64)), "x must be float32 [M, K], got float64 [2, 64]"),
    (_args(x=torch.zeros(2, 48)), "x must have K divisible by 32 (blocks of 32 weights), got float32 [2, 48]"),
    (_args(q=torch.zeros(4, 64, dtype=torch.uint8)), "q must be uint8 [N, K/2] with K/2 = 32 (Q4_1: m is given), got uint8 [4, 64]"),
    (_args(q=torch.zeros(4, 64, dtype=torch.uint8), m=None), "q must be int8 [N, K] with K = 64 (Q8_0: m is None), got uint8 [4, 64]"),
    (_args(d=torch.zeros(4, 3)), "d must be float32 [N, K/32] = [4, 2], got float32 [4, 3]"),
    (_args(m=torch.zeros(4, 2, dtype=torch.float16)), "m must be float32 [N, K/32] = [4, 2], got float16 [4, 2]"),
    (_args(bias=torch.zeros(5)), "bias must be float32 [N] = [4], got float32 [5]"),
    (_args(d=torch.zeros(4, 2, device="meta")), "d must be on the device of x (cpu), got meta"),
]


@pytest.mark.parametrize("impl", ["ops", "reference"])
@pytest.mark.parametrize("args,message", ERRORS)
def test_error_messages(impl, args, message):
    fn = ops.skinny_linear_quant if impl == "ops" else reference.skinny_linear_quant
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        fn(**args)


def strided_copies(blocks):
    """The same blocks with q, d and m non-contiguous: q a transposed copy's transpose, d and m column slices."""
    q = blocks.q.T.contiguous().T
    d = torch.stack([blocks.d, blocks.d], 2).flatten(1)[:, ::2]
    m = None if blocks.m is None else torch.stack([blocks.m, blocks.m], 2).flatten(1)[:, ::2]
    assert not q.is_contiguous() and not d.is_contiguous()
    return q, d, m


@pytest.mark.parametrize("kind", ["Q4_1", "Q8_0"])
def test_cuda_side_path_on_the_cpu(kind):
    """skinny_linear_quant_aten is what a CUDA tensor runs (csrc/cuda/dispatch.cpp registers the same
    function): the shared checks, dequantize_blocks on any strides, at::linear with TF32 off, bias after.
    Run here on the CPU: dense and strided blocks (the CUDA path used .view on q), with and without bias."""
    extension_required()
    if not ops.HAS_EXTENSION:
        pytest.skip("without the extension there is no custom op")
    b = gguf_blocks(37, 96, kind, seed=6)
    x, bias = torch.randn(5, 96), torch.randn(37)
    w = b.dequantize()
    q, d, m = strided_copies(b)
    assert torch.equal(reference.dequantize_blocks(q, d, m), w)
    for args in [(b.q, b.d, b.m), (q, d, m)]:
        for bb in (None, bias):
            y = torch.ops.radar_ext.skinny_linear_quant_aten(x, *args, bb)
            assert_close_to_reference(y, x, w, bb)
            torch.testing.assert_close(y, torch.nn.functional.linear(x, w, bb), rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("args,message", ERRORS)
def test_cuda_side_path_error_messages(args, message):
    extension_required()
    if not ops.HAS_EXTENSION:
        pytest.skip("without the extension there is no custom op")
    a = dict(args)
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        torch.ops.radar_ext.skinny_linear_quant_aten(a["x"], a["q"], a["d"], a["m"], a["bias"])


def test_cuda_matches_cpu(cuda):
    b = gguf_blocks(50, 96, "Q4_1", seed=2)
    x = torch.randn(6, 96)
    y = ops.skinny_linear_quant(x.to(cuda), b.q.to(cuda), b.d.to(cuda), b.m.to(cuda))
    torch.testing.assert_close(y.cpu(), ops.skinny_linear_quant(x, b.q, b.d, b.m), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["Q4_1", "Q8_0"])
def test_cuda_strided_blocks_and_no_tf32(cuda, kind):
    """On a GPU: non-contiguous q works, and the result does not move with the global TF32 switch
    (TF32's 10-bit mantissa would miss this tolerance by orders of magnitude)."""
    b = gguf_blocks(64, 1024, kind, seed=3)
    x, bias = torch.randn(4, 1024), torch.randn(64)
    q, d, m = (t if t is None else t.to(cuda) for t in strided_copies(b))
    want = reference.skinny_linear_quant(x, b.q, b.d, b.m, bias)
    saved = torch.backends.cuda.matmul.allow_tf32
    try:
        outs = []
        for tf32 in (False, True):
            torch.backends.cuda.matmul.allow_tf32 = tf32
            outs.append(ops.skinny_linear_quant(x.to(cuda), q, d, None if m is None else m, bias.to(cuda)).cpu())
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved
    assert torch.equal(outs[0], outs[1])
    assert_close_to_reference(outs[1], x, b.dequantize(), bias)


# ----------------------------------------------------------------------------- recovery from float32

@pytest.mark.parametrize("kind", ["Q4_1", "Q8_0"])
def test_exact_blocks_recovers_gguf_weights(kind):
    """GGUF-dequantized weights come back as blocks that decode to the same bits (Q4_1 is tried first:
    a Q8_0 weight is rarely also Q4_1, a Q4_1 one always comes back as Q4_1)."""
    src = gguf_blocks(40, 128, kind, seed=5)
    w = src.dequantize()
    got = quant.exact_blocks(w)
    assert got is not None and got.kind == kind
    assert torch.equal(got.dequantize().view(torch.int32), w.view(torch.int32))
    assert got.nbytes() < w.numel() * 4 / (5 if kind == "Q4_1" else 3)


def test_exact_blocks_constant_blocks_and_negative_zero():
    w = torch.zeros(3, 64)
    w[1] = 0.75                                                 # constant blocks: d = 0
    got = quant.exact_blocks(w)
    assert got is not None and torch.equal(got.dequantize().view(torch.int32), w.view(torch.int32))
    w[2, :32] = -0.0                                            # GGUF never decodes to -0.0: bits differ, refused
    assert quant.exact_blocks(w) is None


def test_exact_blocks_refuses_other_weights():
    torch.manual_seed(0)
    assert quant.exact_blocks(torch.randn(8, 64)) is None                    # plain float32 values
    w = gguf_blocks(8, 64, "Q4_1").dequantize()
    w[3, 7] = torch.nextafter(w[3, 7], torch.tensor(10.0))                   # one weight one ulp off
    assert quant.exact_blocks(w) is None or quant.exact_blocks(w).kind == "Q8_0" and \
        torch.equal(quant.exact_blocks(w).dequantize(), w)
    assert quant.exact_blocks(torch.zeros(4, 48)) is None                   # K % 32 != 0
    assert quant.exact_blocks(torch.zeros(4, 64, dtype=torch.float64)) is None
    nan = torch.zeros(4, 64)
    nan[0, 0] = float("nan")
    assert quant.exact_blocks(nan) is None


def test_cached_blocks_follow_in_place_changes():
    w = gguf_blocks(8, 64, "Q4_1", seed=3).dequantize()
    a = quant.cached_exact_blocks(w)
    assert quant.cached_exact_blocks(w) is a                               # remembered
    w.mul_(2.0)                                                            # still Q4_1-exact (d, m doubled)
    b = quant.cached_exact_blocks(w)
    assert b is not a and torch.equal(b.dequantize(), w)


# ----------------------------------------------------------------------------- FastLinear

def test_fast_linear_quantized_runs_blocks_with_the_same_bits(monkeypatch):
    from radar_ext import fast_linear as fl
    if not fl.fast_linear_available():
        pytest.skip("skinny_linear has no AVX-512 kernel here")
    calls = []
    real = fl.ops.skinny_linear_quant
    monkeypatch.setattr(fl.ops, "skinny_linear_quant", lambda *a: calls.append(a[0].shape[0]) or real(*a))
    exact, other = torch.nn.Linear(64, 40), torch.nn.Linear(64, 40)
    with torch.no_grad():
        exact.weight.copy_(gguf_blocks(40, 64, "Q4_1", seed=7).dequantize())
    model = torch.nn.Sequential(exact, other)
    x = torch.randn(1, 2, 64)
    with torch.no_grad():
        with fl.FastLinear(model, quantized=True):
            y = exact(x)                                           # 2 rows: from the blocks
            y_other = other(x)                                     # not block-exact: float32 rules (MKL at 2 rows)
        assert calls == [2]
        assert torch.equal(y[0], torch.ops.radar_ext.skinny_linear(x[0], exact.weight, exact.bias))
        assert torch.equal(y_other, torch.nn.functional.linear(x, other.weight, other.bias))
        with fl.FastLinear(model):                                  # quantized off: never the blocks
            exact(x)
        assert calls == [2]


def test_decoder_on_a_block_exact_target_is_token_identical(monkeypatch):
    """A tiny Llama whose linears hold GGUF Q4_1 dequantizations (as the default target): RadarDecoder's
    verify forwards run from the blocks and greedy decoding stays identical to the target's generate."""
    from radar_ext import RadarDecoder, StaticPolicy, fast_linear as fl
    from test_decoder import make_drafter, prompts, reference, tiny_llama
    if not fl.fast_linear_available():
        pytest.skip("skinny_linear has no AVX-512 kernel here")
    model = tiny_llama("sdpa")
    with torch.no_grad():
        for i, lin in enumerate(m for m in model.modules() if isinstance(m, torch.nn.Linear)):
            lin.weight.copy_(gguf_blocks(*lin.weight.shape, "Q4_1", seed=i).dequantize())
    calls = []
    real = fl.ops.skinny_linear_quant
    monkeypatch.setattr(fl.ops, "skinny_linear_quant", lambda *a: calls.append(a[0].shape[0]) or real(*a))
    dec = RadarDecoder(model, make_drafter("ngram", model), StaticPolicy(3), tree_topk=3, verify_budget=7,
                       fused_forward=False)  # the C++ layer loop on skinny_linear_quant (counted here)
    fused = RadarDecoder(model, make_drafter("ngram", model), StaticPolicy(3), tree_topk=3, verify_budget=7)
    for ids, n in zip(prompts(), (1, 9, 30)):
        want = reference(model, ids, n)
        assert torch.equal(dec.generate(ids, max_new_tokens=n), want)
        assert torch.equal(fused.generate(ids, max_new_tokens=n), want)  # the default: the fused forward
    assert calls and max(calls) <= 8


# ----------------------------------------------------------------------------- the AMX layout


@pytest.mark.parametrize("kind", ["Q4_1", "Q8_0"])
def test_amx_pack_roundtrip(kind):
    """radar_ext.quant.amx_pack reorders the same bytes into tile units (reference.amx_unpack inverts it);
    it declines N % 16 != 0 and scales float16 does not hold."""
    b = gguf_blocks(48, 96, kind, seed=5)
    q, d, m = quant.amx_pack(b)
    assert q.shape == b.q.shape and q.dtype == b.q.dtype and d.shape == (3, 3, 16) and d.dtype == torch.float16
    if kind == "Q8_0":  # the same bytes, reordered
        assert torch.equal(q.flatten().sort().values, b.q.flatten().sort().values)
    uq, ud, um = reference.amx_unpack(q, d, m)
    assert torch.equal(uq, b.q) and torch.equal(ud, b.d) and (um is None or torch.equal(um, b.m))
    assert quant.amx_pack(gguf_blocks(40, 96, kind)) is None
    odd = quant.QuantBlocks(b.q, b.d + 1e-4, b.m)
    assert quant.amx_pack(odd) is None


def assert_rows_independent(call, x, full):
    """call(rows of x) -> y: each row's result depends on its own row of x alone, not on how many rows come with it,
    their order or the thread count (full = call(x))."""
    for M in (1, 2, 3, 8, 9, 16, 17):
        assert torch.equal(call(x[:M]), full[:M])
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(1))
    assert torch.equal(call(x[perm]), full[perm])
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert torch.equal(call(x), full)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("kind", ["Q4_1", "Q8_0"])
@pytest.mark.parametrize("N,K", [(16, 32), (48, 64), (576, 576), (192, 1536)])
def test_amx_packed_op(kind, N, K):
    """skinny_linear_amx_packed: the products with x as the tile unit's A operand, on any number of rows;
    close to the float64 reference like the AVX-512 path, rows independent of M, order and thread count."""
    if not (ops.HAS_EXTENSION and ops._C.amx_supported()):
        pytest.skip("no AMX on this CPU (or the extension is not built)")
    b = gguf_blocks(N, K, kind, seed=N + K)
    q, d, m = quant.amx_pack(b)
    w, bias = b.dequantize(), torch.randn(N)
    x = torch.randn(40, K) * torch.logspace(-3, 2, 40).unsqueeze(1)
    op = torch.ops.radar_ext.skinny_linear_amx_packed
    full = op(x, q, d, m, bias)
    assert_close_to_reference(full, x, w, bias)
    assert_rows_independent(lambda rows: op(rows, q, d, m, bias), x, full)
    assert_close_to_reference(op(x, q, d, m), x, w)  # without a bias


def _supported(layout) -> bool:
    if not ops.HAS_EXTENSION:
        return False
    return ops._C.amx_supported() if layout == "amx" else ops.vnni_linear_supported()


# per layout: its packing, its op and what its errors say about q, d and m
PACKED_ERRORS = {
    "amx": ("amx_pack", "skinny_linear_amx_packed",
            ("q must be contiguous uint8", "d must be contiguous float16", "m must be contiguous float16")),
    "vnni": ("vnni_pack", "skinny_linear_vnni_packed",
             ("VNNI layout of Q4_1 blocks for K = 64", "VNNI layout", "VNNI layout")),
}


@pytest.mark.parametrize("layout", ["amx", "vnni"])
def test_packed_op_errors(layout):
    """The packed-layout ops name the argument and the layout they expected."""
    if not _supported(layout):
        pytest.skip(f"no {layout.upper()} on this CPU (or the extension is not built)")
    pack, name, (q_msg, d_msg, m_msg) = PACKED_ERRORS[layout]
    b = gguf_blocks(32, 64, "Q4_1", seed=2)
    q, d, m = getattr(quant, pack)(b)
    op = getattr(torch.ops.radar_ext, name)
    with pytest.raises(ValueError, match="x must be float32"):
        op(torch.randn(2, 60), q, d, m)
    with pytest.raises(ValueError, match=q_msg):
        op(torch.randn(2, 64), q.view(torch.int8), d, m)
    with pytest.raises(ValueError, match=d_msg):
        op(torch.randn(2, 64), q, d.float(), m)
    with pytest.raises(ValueError, match=m_msg):
        op(torch.randn(2, 64), q, d, m[:1])
    with pytest.raises(ValueError, match="bias must be float32"):
        op(torch.randn(2, 64), q, d, m, torch.randn(5))


# ----------------------------------------------------------------------------- the VNNI layout

needs_vnni = pytest.mark.skipif(not ops.vnni_linear_supported(),
                                reason="no AVX512-VNNI on this CPU (or the extension is not built)")


def test_vnni_pack_layout():
    """radar_ext.quant.vnni_pack: byte 4l + t of vector p of a unit holds input 4p + t of row 16g + l (low nibble)
    and input 16 + 4p + t (high nibble); scales lane by lane; declines Q8_0, N % 16 != 0 and non-float16 scales."""
    N, K = 48, 96
    b = gguf_blocks(N, K, "Q4_1", seed=7)
    q, d, m = quant.vnni_pack(b)
    assert q.dtype == torch.uint8 and q.shape == (3, 3, 256) and d.shape == m.shape == (3, 3, 16)
    byte = b.q.view(N, 3, 16)
    vals = torch.cat([byte & 15, byte >> 4], 2)                                   # [N, nb, 32]
    for g, blk, p, l, t in ((0, 0, 0, 0, 0), (1, 2, 3, 15, 3), (2, 1, 1, 7, 2), (0, 2, 2, 9, 1)):
        got = int(q[g, blk, 64 * p + 4 * l + t])
        assert got & 15 == int(vals[16 * g + l, blk, 4 * p + t])
        assert got >> 4 == int(vals[16 * g + l, blk, 16 + 4 * p + t])
    assert torch.equal(d.float().transpose(1, 2).reshape(N, 3), b.d)
    assert torch.equal(m.float().transpose(1, 2).reshape(N, 3), b.m)
    uq, ud, um = reference.vnni_unpack(q, d, m)                                   # the inverse
    assert torch.equal(uq, b.q) and torch.equal(ud, b.d) and torch.equal(um, b.m)
    assert quant.vnni_pack(gguf_blocks(48, 96, "Q8_0")) is None
    assert quant.vnni_pack(gguf_blocks(40, 96, "Q4_1")) is None
    assert quant.vnni_pack(quant.QuantBlocks(b.q, b.d + 1e-4, b.m)) is None


def assert_close_to_reference_fixed_point(y, x, w, bias=None):
    """The VNNI path's bound (csrc/kernels/vnni_linear.h): the float32 sums' (assert_close_to_reference) plus each
    input's rounding to the block's fixed point, |dx| <= 2^-23 * max |x| over its block of 32."""
    K = x.shape[1]
    want = reference.skinny_linear(x, w, bias).double()
    scale = x.double().abs() @ w.double().abs().T
    if bias is not None:
        scale = scale + bias.double().abs()
    xmax = x.double().abs().view(x.shape[0], K // 32, 32).amax(2)                # [M, nb]
    wsum = w.double().abs().view(w.shape[0], K // 32, 32).sum(2)                 # [N, nb]
    bound = SUM_RTOL_Q * scale * max(1.0, K ** 0.5) + 2.0 ** -23 * (xmax @ wsum.T) + 1e-30
    err = (y.double() - want).abs()
    worst = divmod(int((err / bound).argmax()), y.shape[1])
    assert bool((err <= bound).all()), f"max err {float(err.max())}, at {worst}"


SUM_RTOL_Q = 4e-6  # test_op_skinny_linear's SUM_RTOL


@needs_vnni
@pytest.mark.parametrize("N,K", [(16, 32), (48, 64), (576, 576), (192, 1536)])
def test_vnni_packed_op(N, K):
    """skinny_linear_vnni_packed: x in three int8 digits per block, integer sums; close to the float64 reference
    within the float32 sums' bound plus the fixed point's, rows independent of M, order and thread count."""
    b = gguf_blocks(N, K, "Q4_1", seed=N + K)
    q, d, m = quant.vnni_pack(b)
    w, bias = b.dequantize(), torch.randn(N)
    g = torch.Generator().manual_seed(K)
    x = torch.randn(40, K, generator=g) * torch.logspace(-3, 2, 40).unsqueeze(1)
    x[5, :32] = 0.0                                                  # an all-zero block
    x[6, 3] = 1e4                                                    # one large value among small ones
    x[7] = torch.randn(K, generator=g) * 1e-30                       # tiny blocks
    op = torch.ops.radar_ext.skinny_linear_vnni_packed
    full = op(x, q, d, m, bias)
    assert_close_to_reference_fixed_point(full, x, w, bias)
    assert_rows_independent(lambda rows: op(rows, q, d, m, bias), x, full)
    assert_close_to_reference_fixed_point(op(x, q, d, m), x, w)  # without a bias


@needs_vnni
def test_vnni_packed_op_on_the_default_targets_weights():
    """The default target's Q4_1 weights and real activations: the integer products stay within the float32
    tiles' own distance of a float64 product (each at most ~4e-7 of the sum of |terms| here)."""
    from radar_ext.models import load_default_target
    target, _ = load_default_target(verbose=False)
    mlp = target.model.layers[3].mlp
    blocks = quant.exact_blocks(mlp.down_proj.weight.detach())
    q, d, m = quant.vnni_pack(blocks)
    with torch.no_grad():
        h = target.model.embed_tokens(torch.arange(100, 124)).float()
        x = torch.nn.functional.silu(mlp.gate_proj(h)) * mlp.up_proj(h)           # [24, 1536]
    w = blocks.dequantize()
    ref = x.double() @ w.double().T
    scale = x.double().abs() @ w.double().abs().T
    vnni = torch.ops.radar_ext.skinny_linear_vnni_packed(x, q, d, m)
    f32 = ops.skinny_linear_quant(x, blocks.q, blocks.d, blocks.m)
    assert float(((vnni.double() - ref).abs() / scale).max()) < 4e-7
    assert float(((f32.double() - ref).abs() / scale).max()) < 4e-7



@needs_vnni
def test_fused_forward_packs_q4_1_for_vnni_and_switches_back():
    """Where VNNI runs and AMX does not, the fused forward's Q4_1 linears are in the VNNI layout (3-D uint8), its
    Q8_0 LM head in GGUF's; _C.set_vnni_linear(False) gives the float32 tiles' params (kept per switch state)."""
    from radar_ext import lean_forward
    from radar_ext.models import load_default_target
    if ops._C.amx_enabled():
        pytest.skip("AMX runs the products on this CPU")
    target, _ = load_default_target(verbose=False)
    on = lean_forward._fused_weights(target)
    assert on.vnni and sum(p is not None and p.dtype == torch.uint8 and p.dim() == 3 for p in on.params) == 7 * 30
    assert on.params[2].dtype == torch.int8 and on.params[2].dim() == 2      # the LM head: Q8_0, GGUF's layout
    prev = ops._C.set_vnni_linear(False)
    try:
        off = lean_forward._fused_weights(target)
        assert not off.vnni and not any(p is not None and p.dim() == 3 for p in off.params)
    finally:
        ops._C.set_vnni_linear(prev)
    assert lean_forward._fused_weights(target) is on
