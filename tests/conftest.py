"""Shared fixtures: every semantic test runs on both backends (compiled ops and
the pure-Python fallback) and, where a GPU is present, on CUDA too."""

from __future__ import annotations

import glob
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _unshadow_installed_package() -> None:
    """`python -m pytest` from the checkout puts the checkout first on sys.path,
    where droppath_ext/ is the source folder: without a compiled library there
    (no in-place or editable build), the installed package is the one to test."""
    if glob.glob(os.path.join(ROOT, "droppath_ext", "_C*.so")):
        return
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != ROOT]


_unshadow_installed_package()

import torch  # noqa: E402

import droppath_ext  # noqa: E402
from droppath_ext import _compiled, _library, _reference, functional  # noqa: E402

FULL_RUN_HELP = "the full run: every model of the sweeps, the C++ and scratch builds, distributed runs"
_UNAVAILABLE: dict[str, str] = {}  # optional dependency -> why it did not import


def pytest_addoption(parser):
    parser.addoption("--full", action="store_true", help=f"run the tests marked slow too ({FULL_RUN_HELP})")


def pytest_configure(config):
    if config.getoption("--full"):
        os.environ["DROPPATH_EXT_FULL_RUN"] = "1"  # (read by tests that scale with the run, as test_fuzz)
    if not _library.LOADED and not _library.FORCED_PYTHON:
        pytest.exit(
            "droppath_ext's compiled library is not in use, so these tests would test only the "
            f"pure-Python fallback.\n  Why: {_library.REASON}\n  Build and install it first: "
            "`python scripts/install.py` (or `pip install --no-build-isolation .`), then run pytest "
            "again. To test the fallback alone, set DROPPATH_EXT_FORCE_PYTHON=1.",
            returncode=4,
        )


# Model-level tests (real models through compiled skip mode, FX, export, ONNX,
# fake tensors, TorchScript in a fresh process) run on the compiled backend in
# the default run, and on the Python fallback too in the full run; op-level
# tests run on both backends in every run. (Where the compiled library is not
# in use, the fallback runs them all.)
_FALLBACK_MODEL_TESTS_IN_FULL_RUN_ONLY = {"test_compiled_skip.py", "test_export_onnx.py", "test_fx.py",
                                          "test_fake_meta.py", "test_torchscript.py"}


def _fallback_model_test(item) -> bool:
    callspec = getattr(item, "callspec", None)
    return (_library.LOADED and item.path.name in _FALLBACK_MODEL_TESTS_IN_FULL_RUN_ONLY
            and callspec is not None and callspec.params.get("backend") == "python")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--full"):
        return
    for item in items:
        if _fallback_model_test(item):
            item.add_marker(pytest.mark.slow)
    slow = [item for item in items if item.get_closest_marker("slow")]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if not item.get_closest_marker("slow")]
        config._droppath_deselected = len(slow)


def pytest_report_header(config):
    where = droppath_ext.__file__
    run = "full" if config.getoption("--full") else "default (tests marked slow deselected; --full runs them)"
    return [f"droppath_ext: backend {droppath_ext.backend()} from {os.path.dirname(where)}; {run} run"]


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    deselected = getattr(config, "_droppath_deselected", 0)
    if deselected:
        terminalreporter.write_line(f"droppath_ext: {deselected} slow tests not run: `pytest --full` runs them "
                                    f"({FULL_RUN_HELP})")
    for name, why in sorted(_UNAVAILABLE.items()):
        terminalreporter.write_line(f"droppath_ext: optional dependency {name} not importable, its tests "
                                    f"skipped: {why}", yellow=True)

BACKENDS = ["compiled", "python"]
DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    """Routes droppath_ext's public functions and modules to one backend."""
    if request.param == "compiled":
        if not _library.LOADED:
            pytest.skip(f"compiled library not loaded: {_library.REASON}")
        module = _compiled
    else:
        module = _reference
    monkeypatch.setattr(functional, "_backend", module)
    return request.param


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


@pytest.fixture(params=DTYPES, ids=lambda d: str(d).split(".")[-1])
def dtype(request):
    return request.param


def import_or_skip(name: str):
    """pytest.importorskip for any failure, not only ImportError: a broken
    install (e.g. a torchvision built for another torch) skips, it does not fail."""
    try:
        return __import__(name, fromlist=["_"])
    except Exception as error:  # noqa: BLE001 - any import failure means "not usable here"
        why = f"{type(error).__name__}: {error}".splitlines()[0][:200]
        _UNAVAILABLE[name.split(".")[0]] = why
        pytest.skip(f"{name} is not importable: {why}", allow_module_level=True)


def subprocess_env(**overrides: str) -> dict:
    """The environment for a child Python that must import the droppath_ext
    this process imported (installed, in-place or scratch build), whatever its
    working directory: that package's folder first on PYTHONPATH."""
    env = dict(os.environ, **overrides)
    parent = os.path.dirname(os.path.dirname(os.path.abspath(droppath_ext.__file__)))
    env["PYTHONPATH"] = os.pathsep.join([parent] + [p for p in [env.get("PYTHONPATH")] if p])
    return env


def requires_compiled():
    return pytest.mark.skipif(not _library.LOADED, reason=f"compiled library not loaded: {_library.REASON}")


def nonzero_input(shape, dtype=torch.float32, device="cpu", generator=None):
    """Values in [0.5, 1.5) with random signs: never zero, so a zero sample was dropped."""
    x = torch.rand(shape, generator=generator, dtype=torch.float64) + 0.5
    sign = torch.randint(0, 2, shape, generator=generator, dtype=torch.float64) * 2 - 1
    return (x * sign).to(dtype=dtype, device=device)


def kept_mask(y: torch.Tensor) -> torch.Tensor:
    """Which samples of a drop_path output were kept (any non-zero value)."""
    return (y.reshape(y.shape[0], -1) != 0).any(dim=1) if y.numel() else torch.zeros(y.shape[0], dtype=torch.bool)


def expected_drop_path(x, kept, drop_prob, scale_by_keep=True):
    """The output for a given mask, computed by the reference arithmetic."""
    keep_prob = 1.0 - drop_prob
    scale = 1.0 / keep_prob if (scale_by_keep and keep_prob > 0) else 1.0
    math = torch.float64 if x.dtype == torch.float64 else torch.float32
    factors = kept.to(device=x.device, dtype=math) * scale
    return _reference.scale_rows(x, factors)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)
    yield


__all__ = [
    "droppath_ext", "expected_drop_path", "import_or_skip", "kept_mask", "nonzero_input", "requires_compiled",
    "subprocess_env",
]
