"""Shared fixtures: every semantic test runs on both backends (compiled ops and
the pure-Python fallback) and, where a GPU is present, on CUDA too."""

from __future__ import annotations

import pytest
import torch

import droppath_ext
from droppath_ext import _compiled, _library, _reference, functional

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
        pytest.skip(f"{name} is not importable: {type(error).__name__}: {error}", allow_module_level=True)


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
]
