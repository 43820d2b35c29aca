"""The decision kernels give the same bits on CPU and CUDA by construction (csrc/kernels/common.h): no libm
call in the shared per-row code (device expf / tanhf / log and glibc's differ in the last ulp), and no
FMA contraction on either side. What a CPU can check of that: the sources and the build flags. (The bits
themselves: csrc/tests/test_topk_expand.cpp runs the CUDA algorithm on the host; `make gpu-test` compares
the devices.)"""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
SHARED = ["csrc/kernels/common.h", "csrc/kernels/topk_expand.h", "csrc/kernels/policy_step.h",
          "csrc/kernels/build_tree.h"]
LIBM = r"\b(expf?|exp2f?|expm1f?|logf?|log2f?|log1pf?|tanhf?|powf?|std::exp|std::log|std::tanh|__expf|__logf)\s*\("


def code_of(path):
    text = (ROOT / path).read_text()
    return "\n".join(line.split("//")[0] for line in text.splitlines())  # comments may name libm


@pytest.mark.parametrize("path", SHARED)
def test_no_libm_in_the_shared_decision_code(path):
    calls = re.findall(LIBM, code_of(path))
    assert not calls, f"{path} calls {calls}: device and host libm differ; use common.h's exp_float / tanh_float / log_accurate"


def test_no_libm_in_the_cuda_rows_kernel():
    assert not re.findall(LIBM, code_of("csrc/cuda/kernels.cu"))


def test_no_contraction_in_either_build():
    setup = (ROOT / "setup.py").read_text()
    assert '"-ffp-contract=off"' in setup and '"--fmad=false"' in setup
    assert "-ffp-contract=off" in (ROOT / "CMakeLists.txt").read_text()
    flags = "\n".join(line.split("#")[0] for line in setup.splitlines())
    assert "-fno-fast-math" in flags and "-ffast-math" not in flags and "use_fast_math" not in flags
