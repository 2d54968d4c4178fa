"""The build backend: setuptools' own, made to build against the torch the user runs.

droppath_ext is C++ compiled against torch's headers and libraries, and must
run with the torch it was compiled against. ``pip install .`` builds in an
isolated environment; listing torch as a build requirement there would make
pip download the newest torch into it (gigabytes) and compile against a torch
the user does not run. Instead, torch is not a build requirement, and this
module, imported by pip in every build step, finds the torch of the Python the
package is being installed into:

- importable here (``--no-build-isolation``): used as it is;
- else (pip's isolated environment hides the installing Python's
  site-packages): the folder holding that Python's torch is appended to
  ``sys.path`` (after the isolated environment's own packages, so setuptools
  and ninja still come from there);
- not installed at all: the build stops at once, saying how to install torch.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

from setuptools import build_meta as _setuptools_backend
from setuptools.build_meta import *  # noqa: F401,F403 - the PEP 517 hooks

# Environment variables that pip's build isolation sets to hide the installing
# Python's own site-packages from this process.
_ISOLATION_VARIABLES = ("PYTHONPATH", "PYTHONNOUSERSITE")

_FIND_TORCH = (
    "import importlib.util, json, os, sys; spec = importlib.util.find_spec('torch'); "
    "print(json.dumps({'version': list(sys.version_info[:2]), 'site': None if spec is None "
    "else os.path.dirname(os.path.dirname(spec.origin))}))"
)


def _torch_site(python: str) -> str | None:
    """The folder holding ``python``'s torch, if that Python is this one's
    version and has torch (the extension is built for one Python ABI)."""
    env = {k: v for k, v in os.environ.items() if k not in _ISOLATION_VARIABLES}
    try:
        result = subprocess.run([python, "-c", _FIND_TORCH], capture_output=True, text=True, env=env,
                                timeout=120, cwd=os.path.expanduser("~"))
        found = json.loads(result.stdout.strip().splitlines()[-1])
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        return None
    if tuple(found["version"]) != tuple(sys.version_info[:2]):
        return None
    return found["site"]


def _installing_pythons() -> list[str]:
    """The Python pip installs into: this interpreter outside pip's isolation,
    or an active virtual / conda environment's (isolation by a fresh venv)."""
    candidates = [sys.executable]
    for variable in ("VIRTUAL_ENV", "CONDA_PREFIX"):
        prefix = os.environ.get(variable)
        if prefix:
            candidates.append(os.path.join(prefix, "bin", "python"))
    return [c for i, c in enumerate(candidates) if c and c not in candidates[:i] and os.path.exists(c)]


def _no_torch_message() -> str:
    return (
        "\n\ndroppath_ext is C++ compiled against the torch it will run with, and there is no torch "
        f"in the Python it is being installed for ({sys.executable}, Python "
        f"{sys.version_info[0]}.{sys.version_info[1]}).\n"
        "Install torch first (any release from 2.11; see https://pytorch.org for CPU-only and other "
        "CUDA builds), then build this package against it:\n\n"
        "    pip install torch\n"
        "    pip install --no-build-isolation .\n"
    )


def _use_installed_torch() -> None:
    if importlib.util.find_spec("torch") is not None:
        return
    for python in _installing_pythons():
        site = _torch_site(python)
        if site:
            sys.path.append(site)
            importlib.invalidate_caches()
            print(f"droppath_ext: building against the torch installed in {site}", file=sys.stderr)
            return
    raise SystemExit(_no_torch_message())


_use_installed_torch()
__all__ = list(_setuptools_backend.__all__)
