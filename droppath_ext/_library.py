"""Loads the compiled library once per process and says which backend is in use, and why."""

from __future__ import annotations

import ctypes
import importlib.util
import json
import os
import sys
import warnings

import torch

FORCE_PYTHON_ENV = "DROPPATH_EXT_FORCE_PYTHON"
PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
REBUILD_COMMAND = "pip install --no-build-isolation --no-deps --force-reinstall ."


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def build_record() -> dict | None:
    """What the build recorded (``_build_info.json``: torch version, CUDA, flags), or None."""
    try:
        with open(os.path.join(PACKAGE_DIR, "_build_info.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def torch_mismatch() -> str | None:
    """"built for torch X, running Y" when the library was built against another torch."""
    record = build_record()
    built = record.get("torch_version") if record else None
    if built and built != torch.__version__:
        return f"built for torch {built}, running {torch.__version__}"
    return None


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
        if os.path.exists(os.path.join(os.path.dirname(PACKAGE_DIR), "setup.py")):
            return False, (
                f"compiled library droppath_ext._C not found: droppath_ext was imported from the "
                f"source checkout {PACKAGE_DIR}, not from the installed package (run from outside "
                f"the checkout or with `python -P`, or build in place with "
                f"`pip install --no-build-isolation -e .`)"
            )
        return False, "compiled library droppath_ext._C not found (package installed without building it)"
    try:
        torch.ops.load_library(spec.origin)
    except (OSError, RuntimeError) as error:
        reason = f"compiled library {spec.origin} failed to load: {_dlopen_error(spec.origin) or error}"
        mismatch = torch_mismatch()
        if mismatch:
            reason = (
                f"the compiled library was {mismatch}, and does not load in this torch; rebuild it "
                f"against the torch you run, in the droppath_ext source folder: `{REBUILD_COMMAND}` "
                f"({reason})"
            )
        return False, reason
    return True, f"compiled library loaded from {spec.origin}"


def _caller_stacklevel() -> int:
    """The stacklevel that makes a warning point at the first frame outside
    this package and the import machinery: the user's ``import droppath_ext``.
    (warnings.warn itself does not count importlib's frames.)"""
    # Counted from _warn_fallback (stacklevel 1): its caller is stacklevel 2.
    frame, level = sys._getframe(2), 2
    while frame is not None:
        filename = frame.f_code.co_filename
        if filename.startswith("<frozen importlib"):
            frame = frame.f_back
            continue
        if not filename.startswith(PACKAGE_DIR):
            break
        frame, level = frame.f_back, level + 1
    return level


def _warn_fallback(reason: str) -> None:
    warnings.warn(
        f"droppath_ext: using the pure-Python fallback: {reason}",
        RuntimeWarning,
        stacklevel=_caller_stacklevel(),
    )


LOADED, REASON = _load()
FORCED_PYTHON = _truthy(os.environ.get(FORCE_PYTHON_ENV))
if not LOADED and not FORCED_PYTHON:
    _warn_fallback(REASON)


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
