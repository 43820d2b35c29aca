"""radar_ext.ops routes each call by its tensors' device: the compiled kernels where radar_ext._C has one
for that device, else the reference with one warning that says why and how to build the kernels (a
build without nvcc on a CUDA machine, a GPU the build has no kernel image for)."""
import warnings

import pytest
import torch

from conftest import extension_required
from radar_ext import ops, reference


OP_NAMES = ("topk_expand", "policy_step", "build_tree", "skinny_linear", "skinny_linear_quant", "llama_layers_quant")


def _missing(name):
    def missing(*args, **kwargs):  # what torch raises for a device without a kernel
        raise NotImplementedError(f"Could not run 'radar_ext::{name}' with arguments from the 'CUDA' backend")
    return missing


@pytest.fixture
def cpu_without_kernels(monkeypatch):
    """This process as if its CPU were a device radar_ext._C has no kernel for (the routing is the same
    for a CUDA device of a CPU-only build): torch.ops.radar_ext raises, _no_kernel_reason says why."""
    extension_required()
    monkeypatch.setattr(ops, "_routes", {})
    monkeypatch.setattr(ops, "_warned", set())
    monkeypatch.setattr(ops, "_no_kernel_reason",
                        lambda device: "radar_ext._C was built without its CUDA kernels (test)")
    for name in OP_NAMES:
        monkeypatch.setattr(torch.ops.radar_ext, name, _missing(name), raising=False)


def op_calls():
    g = torch.Generator().manual_seed(0)
    logits, beams = torch.randn(2, 3, 40, generator=g), -torch.rand(2, 3, generator=g)
    parents, n_nodes = torch.tensor([[-1, 0, 0, 1]]), torch.tensor([4])
    B, F, H, G, O = 2, 5, 3, 4, 2
    pol = [torch.randn(s, generator=g) for s in [(B, F), (B, H), (B, H), (4 * H, F), (4 * H, H), (4 * H,), (G, H + F),
                                                 (G,), (O, G), (O,)]]
    x, w = torch.randn(3, 64, generator=g), torch.randn(5, 64, generator=g)
    q, d = torch.randint(-8, 8, (5, 64), dtype=torch.int8, generator=g), torch.rand(5, 2, generator=g)
    return [(ops.topk_expand, reference.topk_expand, (logits, beams, 7, 0.9)),
            (ops.build_tree, reference.build_tree, (parents, n_nodes)),
            (ops.policy_step, reference.policy_step, pol),
            (ops.skinny_linear, None, (x, w)),
            (ops.skinny_linear_quant, None, (x, q, d))]


def test_a_device_without_kernels_runs_the_reference_with_one_warning(cpu_without_kernels):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):  # the second round: no more warnings
            for op, ref, args in op_calls():
                got = op(*args)
                if ref is not None:
                    want = ref(*args)
                    for g, w in zip(got, want):
                        assert torch.equal(g, w)  # the reference itself, bit for bit
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1, messages
    assert "built without its CUDA kernels" in messages[0] and "reference" in messages[0]
    assert "nvcc" in messages[0] and "CUDA_HOME" in messages[0] and "pip install" in messages[0]


def test_the_skinny_ops_without_a_kernel_match_the_reference(cpu_without_kernels):
    with pytest.warns(RuntimeWarning, match="reference"):
        for op, _, args in op_calls()[3:]:
            want = reference.skinny_linear(*args) if op is ops.skinny_linear else reference.skinny_linear_quant(*args)
            torch.testing.assert_close(op(*args), want, rtol=1e-5, atol=1e-5)


def test_reasons():
    """Why a device has no kernel, per build: the real decision logic, no device needed."""
    extension_required()
    assert ops._no_kernel_reason(torch.device("cpu")) is None
    assert ops._no_kernel_reason(torch.device("meta")) is None
    assert "no mps kernels" in ops._no_kernel_reason(torch.device("mps"))


def test_a_cpu_only_build_has_no_cuda_kernel(monkeypatch):
    """The case of issue 30: CUDA torch, no nvcc at install time. No GPU is asked (the reason is found first)."""
    extension_required()
    monkeypatch.setattr(ops, "built_with_cuda", lambda: False)
    monkeypatch.setattr(ops, "_routes", {})
    monkeypatch.setattr(ops, "_warned", set())
    reason = ops._no_kernel_reason(torch.device("cuda", 0))
    assert "built without its CUDA kernels" in reason
    with pytest.warns(RuntimeWarning, match="built without its CUDA kernels"):
        assert ops.has_kernel(torch.device("cuda", 0)) is False
    assert ops.has_kernel(torch.device("cuda", 0)) is False  # decided once, warned once


@pytest.mark.parametrize("token,capability,runs", [
    ("75PTX_80_86_89_90_100_120", (7, 0), False),   # V100 and a build whose lowest is 7.5: reference
    ("75PTX_80_86_89_90_100_120", (7, 5), True),
    ("75PTX_80_86_89_90_100_120", (8, 7), True),    # sm_86 cubin runs on 8.7 (same major, later minor)
    ("75PTX_80_86_89_90_100_120", (10, 3), True),   # B300: sm_100 cubin
    ("75PTX_80_86_89_90_100_120", (11, 0), True),   # no 11.x cubin: the 7.5 PTX
    ("80_90", (10, 0), False),                      # no PTX, no 10.x cubin
    ("80_90PTX", (10, 0), True),
    ("86", (8, 0), False),                          # a cubin for 8.6 does not run on 8.0
    (None, (7, 0), True),                           # unknown list: trust the build
])
def test_arch_runs(token, capability, runs):
    assert ops.arch_runs(ops.parse_cuda_archs(token), capability) is runs


def test_parse_cuda_archs():
    assert ops.parse_cuda_archs("70PTX_86_120") == [((7, 0), True), ((8, 6), False), ((12, 0), False)]
    assert ops.parse_cuda_archs("0") is None and ops.parse_cuda_archs(None) is None


def test_the_build_records_its_archs():
    extension_required()
    if not ops.built_with_cuda():
        assert ops._C.cuda_archs() is None
        pytest.skip("extension built without the CUDA kernels")
    archs = ops.parse_cuda_archs(ops._C.cuda_archs())
    assert archs and any(ptx for _, ptx in archs)


def test_cuda_kernels_serve_this_gpu(cuda):
    """On a GPU: the build under test has kernels for it (else gpu-test would only test the reference)."""
    assert ops.built_with_cuda(), "radar_ext._C was built without its CUDA kernels: reinstall with nvcc"
    assert ops._no_kernel_reason(cuda) is None
