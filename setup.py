"""Build of radar_ext and its extension radar_ext._C (torch.utils.cpp_extension).

CUDA kernels are compiled when torch was built with CUDA and nvcc is found (CUDA_HOME, or
/usr/local/cuda); RADAR_EXT_CUDA=1 forces them (a clear error if nvcc is missing), RADAR_EXT_CUDA=0
skips them. TORCH_CUDA_ARCH_LIST picks the GPU architectures (default below: no GPU is needed to build).
"""
import glob
import os
import shutil

from setuptools import setup

import torch
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))
# Architectures compiled when the user does not choose (PTX of the newest for later GPUs).
DEFAULT_CUDA_ARCHS = "7.5;8.0;8.6;8.9;9.0;12.0+PTX"


def find_nvcc():
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if not home and os.path.exists("/usr/local/cuda/bin/nvcc"):
        home = "/usr/local/cuda"
    if home and os.path.exists(os.path.join(home, "bin", "nvcc")):
        return home
    nvcc = shutil.which("nvcc")
    return os.path.dirname(os.path.dirname(os.path.realpath(nvcc))) if nvcc else None


def want_cuda():
    force = os.environ.get("RADAR_EXT_CUDA", "").strip()
    if force not in ("", "0", "1"):
        raise SystemExit(f"RADAR_EXT_CUDA must be 0 or 1 (or unset), got {force!r}")
    cuda_home = find_nvcc()
    if force == "0":
        return False
    if force == "1":
        if torch.version.cuda is None:
            raise SystemExit(f"RADAR_EXT_CUDA=1 but torch {torch.__version__} was built without CUDA")
        if cuda_home is None:
            raise SystemExit("RADAR_EXT_CUDA=1 but nvcc was not found (set CUDA_HOME or put nvcc on PATH)")
    elif torch.version.cuda is None or cuda_home is None:
        return False
    # torch.utils.cpp_extension reads CUDA_HOME when the module is imported or the build starts.
    os.environ["CUDA_HOME"] = cuda_home
    import torch.utils.cpp_extension as cpp_ext
    cpp_ext.CUDA_HOME = cuda_home
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCHS)
    return True


def extensions():
    # No fast-math: results feed discrete decisions. -fno-trapping-math changes no result (it only
    # says no FP exception traps are enabled) but lets GCC if-convert the branch-free exp into SIMD.
    # -fopenmp: at::parallel_for is inline and runs serially in a translation unit compiled without
    # OpenMP (ATen/ParallelOpenMP.h tests _OPENMP), so skinny_linear used one core whatever
    # torch.get_num_threads() said. Linking it resolves to the libgomp.so.1 torch has already loaded.
    cxx = ["-O3", "-fno-fast-math", "-fno-trapping-math", "-fopenmp"]
    kwargs = dict(include_dirs=[os.path.join(ROOT, "csrc")], extra_link_args=["-fopenmp"])
    # skinny_linear_avx512.cpp compiles itself for AVX-512 (a target pragma); ops.cpp checks the CPU.
    sources = ["csrc/ops.cpp", "csrc/skinny_linear_avx512.cpp"]
    if want_cuda():
        print("radar_ext: building the CUDA kernels")
        sources += ["csrc/cuda/dispatch.cpp", "csrc/cuda/kernels.cu"]
        return [CUDAExtension("radar_ext._C", sources, define_macros=[("RADAR_EXT_WITH_CUDA", None)],
                              extra_compile_args={"cxx": cxx, "nvcc": ["-O3"]}, **kwargs)]
    print("radar_ext: building without the CUDA kernels (CPU only)")
    return [CppExtension("radar_ext._C", sources, extra_compile_args={"cxx": cxx}, **kwargs)]


setup(
    ext_modules=extensions(),
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
