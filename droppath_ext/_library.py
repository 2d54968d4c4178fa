"""Loads the compiled library once per process and says which backend is in use, and why."""

from __future__ import annotations

import ctypes
import importlib.util
import os
import warnings

import torch

FORCE_PYTHON_ENV = "DROPPATH_EXT_FORCE_PYTHON"


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _dlopen_error(path: str) -> str | None:
    """The dynamic loader's own message (torch.ops.load_library hides it)."""
    try:
        ctypes.CDLL(path)
    except OSError as error:
        return str(error)
    return None


def _load() -> tuple[bool, str]:
    if _truthy(os.environ.get(FORCE_PYTHON_ENV)):
        return False, f"{FORCE_PYTHON_ENV} is set"
    spec = importlib.util.find_spec("droppath_ext._C")
    if spec is None or spec.origin is None:
        package_dir = os.path.dirname(os.path.abspath(__file__))
        if os.path.exists(os.path.join(os.path.dirname(package_dir), "setup.py")):
            return False, (
                f"compiled library droppath_ext._C not found: droppath_ext was imported from the "
                f"source checkout {package_dir}, not from the installed package (run from outside "
                f"the checkout or with `python -P`, or build in place with "
                f"`pip install --no-build-isolation -e .`)"
            )
        return False, "compiled library droppath_ext._C not found (package installed without building it)"
    try:
        torch.ops.load_library(spec.origin)
    except (OSError, RuntimeError) as error:
        return False, f"compiled library {spec.origin} failed to load: {_dlopen_error(spec.origin) or error}"
    return True, f"compiled library loaded from {spec.origin}"


LOADED, REASON = _load()
if not LOADED and not _truthy(os.environ.get(FORCE_PYTHON_ENV)):
    warnings.warn(
        f"droppath_ext: using the pure-Python fallback: {REASON}",
        RuntimeWarning,
        stacklevel=2,
    )


def has_kernel(op: str, dispatch_key: str) -> bool:
    """Whether ``droppath::<op>`` has a kernel registered for ``dispatch_key``."""
    if not LOADED:
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"droppath::{op}", dispatch_key)


def backend() -> str:
    """``"python"`` for the fallback, else the compiled backends: ``"cpu"`` or ``"cpu+cuda"``."""
    if not LOADED:
        return "python"
    return "cpu+cuda" if has_kernel("_scale_rows", "CUDA") else "cpu"


def backend_reason() -> str:
    """Why :func:`backend` is what it is (where the library came from, or why it did not load)."""
    return REASON
