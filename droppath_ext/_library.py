"""Loads the compiled libraries once per process and says which backend is in use, and why.

The libraries are built on the LibTorch stable ABI, for a target torch (the
build record's ``stable_abi_target``, 2.11): they load in that torch and every
later one, CPU or CUDA build, whichever torch built them. ``_C`` holds the
schemas and the CPU kernels; ``_C_cuda`` the CUDA kernels, loaded only in a
CUDA build of torch (it links the CUDA runtime it was compiled with).

A build record without ``stable_abi_target`` (a build older than the stable
ABI) is C++ compiled against one torch: it is loaded only when the running
torch is the one it was built for (same major.minor and the same build
variant: CPU, or CUDA x.y). Otherwise, and for a torch older than the stable
target, the pure-Python fallback runs and a warning, pointing at the user's
import, says which torch each is and how to rebuild.
``DROPPATH_EXT_ALLOW_TORCH_MISMATCH=1`` tries the library anyway.
"""

from __future__ import annotations

import ctypes
import glob
import importlib.machinery
import json
import os
import re
import sys
import warnings

import torch

FORCE_PYTHON_ENV = "DROPPATH_EXT_FORCE_PYTHON"
ALLOW_MISMATCH_ENV = "DROPPATH_EXT_ALLOW_TORCH_MISMATCH"
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


def _minor(version: str) -> tuple[int, ...]:
    """``"2.14.1+cu130"`` -> ``(2, 14)``."""
    match = re.match(r"(\d+)\.(\d+)", version)
    return tuple(int(n) for n in match.groups()) if match else ()


def _variant(cuda_version: str | None) -> str:
    return f"CUDA {cuda_version}" if cuda_version else "CPU"


def _built_variant(record: dict) -> str | None:
    """The build variant of the torch the library was built against, if known."""
    if "torch_cuda_version" in record:
        return _variant(record["torch_cuda_version"])
    return "CPU" if record["torch_version"].partition("+")[2] == "cpu" else None


def stable_target(record: dict | None = None) -> str | None:
    """The oldest torch the libraries load in (``"2.11"``), for a stable-ABI build."""
    record = build_record() if record is None else record
    return (record or {}).get("stable_abi_target")


def torch_mismatch() -> str | None:
    """"built for torch X, running Y" when the library was built against another
    torch release or build variant (patch level included), else None. A
    stable-ABI build mismatches only a torch older than its target."""
    record = build_record()
    if not record or not record.get("torch_version"):
        return None
    target = stable_target(record)
    if target:
        if _minor(torch.__version__) >= _minor(target):
            return None
        return f"built for torch {target} or later, running {torch.__version__}"
    built, running = record["torch_version"], torch.__version__
    built_variant, running_variant = _built_variant(record), _variant(torch.version.cuda)
    if built == running and built_variant in (None, running_variant):
        return None
    text = f"built for torch {built}, running {running}"
    if built_variant not in (None, running_variant):
        text += f" (a {built_variant} build of torch, running a {running_variant} build)"
    return text


def mismatch_blocks_loading() -> bool:
    """Whether the library must not be used with the running torch: built for
    another major.minor, or another build variant (CPU vs CUDA, another CUDA).
    A patch-level difference (2.14.0 vs 2.14.1) keeps torch's C++ ABI: allowed."""
    record = build_record()
    if not record or not record.get("torch_version"):
        return False
    if stable_target(record):
        return torch_mismatch() is not None
    built_variant = _built_variant(record)
    return _minor(record["torch_version"]) != _minor(torch.__version__) or built_variant not in (
        None, _variant(torch.version.cuda)
    )


def library_path(name: str = "_C") -> str | None:
    """A compiled library next to this package's own files (not one a path
    finder would resolve elsewhere, e.g. an editable install's source tree)."""
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        found = sorted(glob.glob(os.path.join(glob.escape(PACKAGE_DIR), name + suffix)))
        if found:
            return found[0]
    return None


def _dlopen_error(path: str) -> str | None:
    """The dynamic loader's own message (torch.ops.load_library hides it)."""
    try:
        ctypes.CDLL(path)
    except OSError as error:
        return str(error)
    return None


def _source_checkout() -> bool:
    return os.path.exists(os.path.join(os.path.dirname(PACKAGE_DIR), "setup.py"))


def _load() -> tuple[bool, str]:
    if _truthy(os.environ.get(FORCE_PYTHON_ENV)):
        return False, f"{FORCE_PYTHON_ENV} is set"
    path = library_path()
    if path is None:
        if _source_checkout():
            return False, (
                f"compiled library droppath_ext._C not found: droppath_ext was imported from the "
                f"source checkout {PACKAGE_DIR}, not from the installed package (run from another "
                f"directory, or build in place with `pip install --no-build-isolation -e .`)"
            )
        return False, "compiled library droppath_ext._C not found (package installed without building it)"
    mismatch = torch_mismatch()
    if mismatch and mismatch_blocks_loading() and not _truthy(os.environ.get(ALLOW_MISMATCH_ENV)):
        return False, (
            f"the compiled library was {mismatch}; rebuild it against the torch you run, in the "
            f"droppath_ext source folder: `{REBUILD_COMMAND}` (or set {ALLOW_MISMATCH_ENV}=1 to try "
            f"the library anyway, at your own risk)"
        )
    try:
        torch.ops.load_library(path)
    except (OSError, RuntimeError) as error:
        reason = f"compiled library {path} failed to load: {_dlopen_error(path) or error}"
        if mismatch:
            reason = (
                f"the compiled library was {mismatch}, and does not load in this torch; rebuild it "
                f"against the torch you run, in the droppath_ext source folder: `{REBUILD_COMMAND}` "
                f"({reason})"
            )
        return False, reason
    return True, f"compiled library loaded from {path}"


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


def _warn_fallback(reason: str, what: str = "using the pure-Python fallback") -> None:
    warnings.warn(
        f"droppath_ext: {what}: {reason}",
        RuntimeWarning,
        stacklevel=_caller_stacklevel(),
    )


def _load_cuda() -> tuple[bool, str | None]:
    """Loads the CUDA kernels' library in a CUDA build of torch. Returns
    whether it loaded, and why the compiled CUDA kernels are not in use (None
    when they are, or when this torch has no CUDA)."""
    if not LOADED or torch.version.cuda is None:
        return False, None
    path = library_path("_C_cuda")
    if path is None:
        return False, "the compiled library was built without its CUDA kernels"
    try:
        torch.ops.load_library(path)
    except (OSError, RuntimeError) as error:
        built = (build_record() or {}).get("torch_cuda_version")
        return False, (f"the CUDA kernels' library {path} (built with CUDA {built}) failed to load in torch "
                       f"{torch.__version__} (CUDA {torch.version.cuda}): {_dlopen_error(path) or error}")
    return True, None


LOADED, REASON = _load()
FORCED_PYTHON = _truthy(os.environ.get(FORCE_PYTHON_ENV))
if not LOADED and not FORCED_PYTHON:
    _warn_fallback(REASON)
# Why CUDA tensors run droppath's pure-PyTorch kernels (_ops.py registers
# them for the CUDA key then), or None.
CUDA_LOADED, CUDA_FALLBACK_REASON = _load_cuda()
if CUDA_FALLBACK_REASON and library_path("_C_cuda") is not None:  # built, yet it did not load
    _warn_fallback(CUDA_FALLBACK_REASON, "CUDA tensors use the pure-PyTorch kernels")


def has_kernel(op: str, dispatch_key: str) -> bool:
    """Whether ``droppath::<op>`` has a kernel registered for ``dispatch_key``."""
    if not LOADED:
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"droppath::{op}", dispatch_key)


def backend() -> str:
    """Which implementation runs: ``"cpu"`` or ``"cpu+cuda"`` (the compiled
    library, with or without its CUDA kernels), or ``"python"`` (the pure-PyTorch
    fallback, when the library is missing or was built for another torch;
    [`backend_reason`][droppath_ext.backend_reason] says why)."""
    if not LOADED:
        return "python"
    return "cpu+cuda" if CUDA_LOADED else "cpu"


def backend_reason() -> str:
    """Why [`backend`][droppath_ext.backend] is what it is (where the library came from, or why it did not load)."""
    return REASON
