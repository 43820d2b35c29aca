"""Build of radar_ext and its extension radar_ext._C (torch.utils.cpp_extension).

CUDA kernels are compiled when torch was built with CUDA and nvcc is found (CUDA_HOME, or
/usr/local/cuda); RADAR_EXT_CUDA=1 forces them (a clear error if nvcc is missing), RADAR_EXT_CUDA=0
skips them. TORCH_CUDA_ARCH_LIST picks the GPU architectures; unset, cuda_arch_list() builds for the
visible GPUs, or without one for DEFAULT_CUDA_ARCHS (no GPU is needed to build); an architecture the
installed nvcc cannot target is dropped with a message. A build without the CUDA kernels still serves
CUDA tensors: radar_ext.ops routes them to the reference, with one warning.
"""
import os
import re
import shutil
import subprocess

from setuptools import setup

import torch
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))
# Architectures compiled when the user does not choose and no GPU is visible: V100 (7.0) to
# Blackwell (10.0 B200/GB200, 12.0 RTX 50), with PTX at the low end, which the driver compiles for
# any later GPU (a PTX of the newest would run on none older than it).
DEFAULT_CUDA_ARCHS = "7.0+PTX;7.5;8.0;8.6;8.9;9.0;10.0;12.0"


def nvcc_archs(cuda_home):
    """Compute capabilities the nvcc of cuda_home can target, as (major, minor) tuples, or None when
    it cannot say (an nvcc before 11.0 has no --list-gpu-arch: nothing is then dropped)."""
    try:
        out = subprocess.run([os.path.join(cuda_home, "bin", "nvcc"), "--list-gpu-arch"], capture_output=True,
                             text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    archs = {(int(n) // 10, int(n) % 10) for n in re.findall(r"compute_(\d+)", out)}
    return archs or None


def _parse_arch(entry):
    """'8.6' or '7.0+PTX' -> ((8, 6), ptx); None for a named arch ('Ampere') or a suffixed one ('9.0a')."""
    m = re.fullmatch(r"(\d+)\.(\d)(\+PTX)?", entry.strip())
    return ((int(m.group(1)), int(m.group(2))), bool(m.group(3))) if m else None


def cuda_arch_list(user_list, visible, supported, log=print):
    """TORCH_CUDA_ARCH_LIST to build with, or "" when no architecture is left (build CPU-only).
    user_list: the user's TORCH_CUDA_ARCH_LIST or None; visible: (major, minor) of each visible GPU;
    supported: what nvcc can target (nvcc_archs), None = unknown. The user's list, else the visible GPUs
    (the newest with PTX, as torch's own default), else DEFAULT_CUDA_ARCHS. Entries nvcc cannot target
    are dropped with a message; a visible GPU newer than nvcc knows gets nvcc's newest arch below it as
    PTX; if the lowest PTX entry was dropped, PTX moves to the lowest entry left."""
    if user_list:
        entries, source = [e for e in user_list.replace(" ", ";").split(";") if e], "TORCH_CUDA_ARCH_LIST"
    elif visible:
        caps = sorted(set(visible))
        entries = [f"{a}.{b}" for a, b in caps[:-1]] + [f"{caps[-1][0]}.{caps[-1][1]}+PTX"]
        source = "the visible GPUs"
    else:
        entries, source = DEFAULT_CUDA_ARCHS.split(";"), "the default list"
    if supported is None:
        return ";".join(entries)
    kept, lost_ptx = [], False
    for entry in entries:
        parsed = _parse_arch(entry)
        if parsed is None or parsed[0] in supported:
            kept.append(entry)
            continue
        cap, ptx = parsed
        below = [a for a in supported if a < cap]
        if source == "the visible GPUs" and below:
            sub = max(below)
            log(f"radar_ext: nvcc cannot target sm_{cap[0]}{cap[1]} (a visible GPU); building compute_"
                f"{sub[0]}{sub[1]} PTX for it instead")
            kept.append(f"{sub[0]}.{sub[1]}+PTX")
            continue
        lowest = min(supported)
        log(f"radar_ext: dropping CUDA arch {entry} from {source}: this nvcc targets "
            f"{lowest[0]}.{lowest[1]} and up only")
        lost_ptx |= ptx
    if lost_ptx and kept and not any(e.endswith("+PTX") for e in kept):
        low = min(range(len(kept)), key=lambda k: _parse_arch(kept[k])[0] if _parse_arch(kept[k]) else (99, 9))
        kept[low] += "+PTX"
    return ";".join(dict.fromkeys(kept))


def arch_token(archs):
    """'7.0+PTX;8.6' -> '70PTX_86': the arch list as one preprocessor token (no quotes or semicolons
    to survive the ninja command line); radar_ext._C.cuda_archs() returns it, ops.py reads it."""
    out = []
    for entry in archs.split(";"):
        parsed = _parse_arch(entry)
        if parsed is None:  # a named arch ('Ampere') or '9.0a': "0", unknown, and ops.py trusts the build
            return "0"
        (major, minor), ptx = parsed
        out.append(f"{major}{minor}{'PTX' if ptx else ''}")
    return "_".join(out) or "0"


def visible_capabilities():
    """(major, minor) of each visible GPU; [] without one (or when torch cannot ask the driver)."""
    try:
        return [torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())]
    except Exception as e:  # a broken driver must not fail a CPU build
        print(f"radar_ext: could not query the GPUs ({e}); building for the default list")
        return []


def find_nvcc():
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if not home and os.path.exists("/usr/local/cuda/bin/nvcc"):
        home = "/usr/local/cuda"
    if home and os.path.exists(os.path.join(home, "bin", "nvcc")):
        return home
    nvcc = shutil.which("nvcc")
    return os.path.dirname(os.path.dirname(os.path.realpath(nvcc))) if nvcc else None


def want_cuda():
    """The TORCH_CUDA_ARCH_LIST to build the CUDA kernels for, or None to build CPU-only."""
    force = os.environ.get("RADAR_EXT_CUDA", "").strip()
    if force not in ("", "0", "1"):
        raise SystemExit(f"RADAR_EXT_CUDA must be 0 or 1 (or unset), got {force!r}")
    cuda_home = find_nvcc()
    if force == "0":
        return None
    if force == "1":
        if torch.version.cuda is None:
            raise SystemExit(f"RADAR_EXT_CUDA=1 but torch {torch.__version__} was built without CUDA")
        if cuda_home is None:
            raise SystemExit("RADAR_EXT_CUDA=1 but nvcc was not found (set CUDA_HOME or put nvcc on PATH)")
    elif torch.version.cuda is None or cuda_home is None:
        if torch.version.cuda is not None:
            print(f"radar_ext: torch {torch.__version__} has CUDA but nvcc was not found (set CUDA_HOME or put "
                  "nvcc on PATH, then reinstall): building CPU-only, CUDA tensors will use the reference ops")
        return None
    archs = cuda_arch_list(os.environ.get("TORCH_CUDA_ARCH_LIST"), visible_capabilities(), nvcc_archs(cuda_home))
    if not archs:
        if force == "1":
            raise SystemExit("RADAR_EXT_CUDA=1 but nvcc can target none of the CUDA architectures asked for")
        print("radar_ext: no CUDA architecture left that this nvcc can target: building CPU-only "
              "(CUDA tensors then use the reference ops)")
        return None
    # torch.utils.cpp_extension reads CUDA_HOME when the module is imported or the build starts.
    os.environ["CUDA_HOME"] = cuda_home
    import torch.utils.cpp_extension as cpp_ext
    cpp_ext.CUDA_HOME = cuda_home
    os.environ["TORCH_CUDA_ARCH_LIST"] = archs
    return archs


def extensions():
    # No fast-math: results feed discrete decisions. -fno-trapping-math changes no result (it only
    # says no FP exception traps are enabled) but lets GCC if-convert the branch-free exp into SIMD.
    # -ffp-contract=off: GCC contracts a * b + c into an FMA by default in C++ wherever the ISA has
    # one (the x86-64-v3/v4 clones), which changes bits by ISA; nvcc's twin is --fmad=false. With
    # both, the shared headers round every operation the same way on CPU and GPU (kernels/common.h).
    # -fopenmp: at::parallel_for is inline and runs serially in a translation unit compiled without
    # OpenMP (ATen/ParallelOpenMP.h tests _OPENMP), so skinny_linear used one core whatever
    # torch.get_num_threads() said. Linking it resolves to the libgomp.so.1 torch has already loaded.
    cxx = ["-O3", "-fno-fast-math", "-fno-trapping-math", "-ffp-contract=off", "-fopenmp"]
    kwargs = dict(include_dirs=[os.path.join(ROOT, "csrc")], extra_link_args=["-fopenmp"])
    # skinny_linear_avx512.cpp and llama_forward_avx512.cpp compile themselves for AVX-512 (a target
    # pragma); ops.cpp checks the CPU.
    sources = ["csrc/ops.cpp", "csrc/skinny_linear_avx512.cpp", "csrc/llama_forward_avx512.cpp", "csrc/amx_linear.cpp",
               "csrc/argmax_head_vnni.cpp", "csrc/vnni_linear.cpp"]
    archs = want_cuda()
    if archs:
        print(f"radar_ext: building the CUDA kernels for TORCH_CUDA_ARCH_LIST={archs}")
        sources += ["csrc/cuda/dispatch.cpp", "csrc/cuda/kernels.cu"]
        # RADAR_EXT_CUDA_ARCHS: what ops.py checks a GPU against before calling a kernel.
        macros = [("RADAR_EXT_WITH_CUDA", None), ("RADAR_EXT_CUDA_ARCHS", arch_token(archs))]
        return [CUDAExtension("radar_ext._C", sources, define_macros=macros,
                              extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "--fmad=false"]}, **kwargs)]
    print("radar_ext: building without the CUDA kernels (CPU only)")
    return [CppExtension("radar_ext._C", sources, extra_compile_args={"cxx": cxx}, **kwargs)]


if __name__ == "__main__":  # (pip and setuptools run this file as __main__; tests import its functions)
    setup(
        ext_modules=extensions(),
        cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    )
