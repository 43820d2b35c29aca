"""Shared test settings: float tolerances (declared once) and the rule that the op tests need the
compiled extension (they fail without it unless RADAR_EXT_ALLOW_NO_EXT=1)."""
import os

import pytest
import torch

# Kernels vs the float64 reference. Integer outputs are always compared exactly.
FLOAT_TOL = dict(rtol=1e-5, atol=2e-5)


def assert_outputs_match(got, want):
    """Tuples of tensors: ints/bools exactly, floats within FLOAT_TOL (-inf must match -inf)."""
    assert len(got) == len(want)
    for k, (g, w) in enumerate(zip(got, want)):
        assert g.dtype == w.dtype and g.shape == w.shape and g.device == w.device, (k, g, w)
        if g.is_floating_point():
            torch.testing.assert_close(g, w, **FLOAT_TOL, msg=lambda m: f"output {k}: {m}")
        else:
            assert torch.equal(g, w), f"output {k} differs:\n{g}\n{w}"


def load_bench_script(name: str):
    """Import bench/<name>.py (bench/ is scripts, not a package) as a module for its tests."""
    import importlib.util
    from pathlib import Path
    path = Path(__file__).parents[1] / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU (`make gpu-test` runs these; they skip without one)")


def pytest_collection_modifyitems(config, items):
    """Every test that takes the `cuda` fixture is marked `cuda`, so `pytest -m cuda` selects them all."""
    for item in items:
        if "cuda" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.cuda)


@pytest.fixture
def cuda():
    """The CUDA device; skips without a GPU (queried only when a CUDA test runs)."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    return torch.device("cuda")


def extension_required():
    from radar_ext import ops
    if not ops.HAS_EXTENSION and os.environ.get("RADAR_EXT_ALLOW_NO_EXT") != "1":
        pytest.fail(f"radar_ext._C did not load ({ops.IMPORT_ERROR}); build it with "
                    "`pip install --no-build-isolation -e .` or set RADAR_EXT_ALLOW_NO_EXT=1")
