"""setup.py's choice of CUDA architectures (no GPU and no build needed): the visible GPUs when there are
any, else a list from V100 (7.0) to Blackwell (10.0, 12.0) with PTX at the low end; what the installed nvcc
cannot target is dropped with a message, never a failed install."""
import importlib.util
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def setup_py():
    spec = importlib.util.spec_from_file_location("radar_ext_setup", ROOT / "setup.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # (not __main__: setup() does not run)
    return mod


NVCC_12 = {(5, 0), (5, 2), (5, 3), (6, 0), (6, 1), (6, 2), (7, 0), (7, 2), (7, 5), (8, 0), (8, 6), (8, 7), (8, 9), (9, 0),
           (10, 0), (10, 1), (12, 0)}
NVCC_13 = {(7, 5), (8, 0), (8, 6), (8, 7), (8, 8), (8, 9), (9, 0), (10, 0), (11, 0), (10, 3), (12, 0), (12, 1)}


def choose(setup_py, user, visible, supported):
    log = []
    return setup_py.cuda_arch_list(user, visible, supported, log=log.append), log


def test_default_covers_v100_to_blackwell_with_ptx_at_the_low_end(setup_py):
    archs, log = choose(setup_py, None, [], NVCC_12)
    assert archs == "7.0+PTX;7.5;8.0;8.6;8.9;9.0;10.0;12.0" and log == []


def test_an_arch_nvcc_cannot_target_is_dropped_with_a_message_and_ptx_moves_down(setup_py):
    archs, log = choose(setup_py, None, [], NVCC_13)    # CUDA 13 dropped Volta
    assert archs == "7.5+PTX;8.0;8.6;8.9;9.0;10.0;12.0"
    assert len(log) == 1 and "7.0+PTX" in log[0] and "7.5 and up" in log[0]


def test_the_visible_gpus_are_built_for(setup_py):
    assert choose(setup_py, None, [(9, 0)], NVCC_13) == ("9.0+PTX", [])
    assert choose(setup_py, None, [(8, 6), (8, 0), (8, 6)], NVCC_13) == ("8.0;8.6+PTX", [])


def test_a_visible_gpu_newer_than_nvcc_gets_its_newest_ptx(setup_py):
    archs, log = choose(setup_py, None, [(12, 0)], NVCC_12 - {(12, 0)})
    assert archs == "10.1+PTX" and "sm_120" in log[0]


def test_a_visible_gpu_older_than_nvcc_leaves_nothing(setup_py):
    archs, log = choose(setup_py, None, [(7, 0)], NVCC_13)   # V100 with CUDA 13: CPU-only build, reference ops
    assert archs == "" and "7.0+PTX" in log[0]


def test_the_users_list_is_kept_but_filtered(setup_py):
    assert choose(setup_py, "8.0;9.0a;Ampere", [(9, 0)], NVCC_13) == ("8.0;9.0a;Ampere", [])
    archs, log = choose(setup_py, "6.1 7.0+PTX 9.0", [], NVCC_13)
    assert archs == "9.0+PTX" and len(log) == 2


def test_unknown_nvcc_keeps_everything(setup_py):
    assert choose(setup_py, None, [], None)[0] == setup_py.DEFAULT_CUDA_ARCHS


def test_arch_token_matches_ops_parser(setup_py):
    from radar_ext import ops
    token = setup_py.arch_token("7.5+PTX;8.0;10.0")
    assert token == "75PTX_80_100"
    assert ops.parse_cuda_archs(token) == [((7, 5), True), ((8, 0), False), ((10, 0), False)]
    assert setup_py.arch_token("9.0;Ampere") == "0" and ops.parse_cuda_archs("0") is None  # unknown: trusted


def test_nvcc_archs_of_the_installed_nvcc(setup_py):
    home = setup_py.find_nvcc()
    if home is None or shutil.which(str(Path(home) / "bin" / "nvcc")) is None:
        pytest.skip("no nvcc here")
    archs = setup_py.nvcc_archs(home)
    assert archs and (9, 0) in archs
    assert setup_py.nvcc_archs("/nonexistent") is None


def test_cuda_torch_without_nvcc_builds_cpu_only_and_says_so(setup_py, monkeypatch, capsys):
    monkeypatch.delenv("RADAR_EXT_CUDA", raising=False)
    monkeypatch.setattr(setup_py, "find_nvcc", lambda: None)
    monkeypatch.setattr(setup_py.torch.version, "cuda", "13.0")
    assert setup_py.want_cuda() is None
    out = capsys.readouterr().out
    assert "nvcc was not found" in out and "reference" in out


def test_no_arch_left_builds_cpu_only(setup_py, monkeypatch, capsys):
    monkeypatch.delenv("RADAR_EXT_CUDA", raising=False)
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    monkeypatch.setattr(setup_py, "find_nvcc", lambda: "/usr/local/cuda")
    monkeypatch.setattr(setup_py.torch.version, "cuda", "13.0")
    monkeypatch.setattr(setup_py, "visible_capabilities", lambda: [(7, 0)])
    monkeypatch.setattr(setup_py, "nvcc_archs", lambda home: NVCC_13)
    assert setup_py.want_cuda() is None
    assert "building CPU-only" in capsys.readouterr().out
    monkeypatch.setenv("RADAR_EXT_CUDA", "1")
    with pytest.raises(SystemExit, match="can target none"):
        setup_py.want_cuda()
    monkeypatch.setattr(setup_py, "visible_capabilities", lambda: [(9, 0)])
    monkeypatch.setattr(setup_py.os, "environ", dict(setup_py.os.environ))  # want_cuda sets CUDA_HOME and the list
    assert setup_py.want_cuda() == "9.0+PTX"
