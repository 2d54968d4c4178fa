"""``python -m droppath_ext.info``: what was built, what is in use, and a quick self-check.

Prints versions, the active backend and why, the build record, which dispatch
keys each ``droppath::`` op has kernels for, the GPU if any, then runs a few
forward/backward calls on every available device against the pure-Python
reference. Ends with ``PASS`` or ``FAIL``; exits non-zero on ``FAIL``.
"""

from __future__ import annotations

import platform
import sys
from typing import Callable

import torch

from . import __version__, _library, _reference, functional

OPS = [
    "forward", "add", "_sample_factors", "_scale_rows", "_add_rows", "_take_rows", "_add_taken_rows",
    "_cpu_kernel_capability",
]
DISPATCH_KEYS = ["CPU", "CUDA", "Meta", "Autograd", "CompositeImplicitAutograd"]


def setup_failures() -> list[str]:
    """What is wrong with the installation itself, whatever the kernels compute:
    a library built against another torch, and a fallback nobody asked for."""
    failures = []
    mismatch = _library.torch_mismatch()
    if mismatch and _library.mismatch_blocks_loading():
        failures.append(
            f"build: the compiled library was {mismatch}; rebuild it in the droppath_ext source "
            f"folder: `{_library.REBUILD_COMMAND}`"
        )
    if not _library.LOADED and not _library.FORCED_PYTHON:
        failures.append(f"backend: the pure-Python fallback is in use, unrequested: {_library.REASON}")
    return failures


def _registered_keys(op: str) -> list[str]:
    return [key for key in DISPATCH_KEYS if _library.has_kernel(op, key)]


def _devices() -> list[str]:
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _self_check_device(device: str) -> list[str]:
    """Returns a list of failures (empty when all is well)."""
    failures: list[str] = []
    impl = functional._backend
    generator = torch.Generator(device=device).manual_seed(0)

    def check(name: str, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception as error:  # report every failure, keep checking
            failures.append(f"{device}: {name}: {type(error).__name__}: {error}")

    for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        for shape in ((8, 197, 24), (4, 3, 7, 5), (33,)):
            x = torch.randn(shape, device=device, dtype=dtype, generator=generator)
            r = torch.randn(shape, device=device, dtype=dtype, generator=generator)
            math = torch.float64 if dtype == torch.float64 else torch.float32
            factors = (torch.rand(shape[0], device=device, generator=generator) < 0.5).to(math) * 2.0

            def scale(x=x, factors=factors) -> None:
                got = impl.scale_rows(x, factors)
                torch.testing.assert_close(got, _reference.scale_rows(x, factors), rtol=0, atol=0)

            def add(x=x, r=r, factors=factors) -> None:
                got = impl.add_rows(r, x, factors)
                want = _reference.add_rows(r, x, factors)
                torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)

            def backward(x=x, r=r, factors=factors) -> None:
                xg = x.detach().requires_grad_()
                rg = r.detach().requires_grad_()
                impl.add_rows(rg, impl.scale_rows(xg, factors), factors).sum().backward()
                want = _reference.scale_rows(_reference.scale_rows(torch.ones_like(x), factors), factors)
                torch.testing.assert_close(xg.grad, want, rtol=0, atol=0)
                assert torch.equal(rg.grad, torch.ones_like(r))

            label = f"{str(dtype).replace('torch.', '')} {tuple(shape)}"
            check(f"scale_rows {label}", scale)
            check(f"add_rows {label}", add)
            check(f"backward {label}", backward)

    def statistics() -> None:
        y = functional.drop_path(torch.ones(20000, 4, device=device), 0.3, True, generator=generator)
        dropped = (y[:, 0] == 0).double().mean().item()
        assert abs(dropped - 0.3) < 6 * (0.3 * 0.7 / 20000) ** 0.5, f"dropped fraction {dropped}"
        kept = y[y[:, 0] != 0]
        assert torch.all(kept == 1 / 0.7), "kept samples not scaled by 1/keep_prob"

    check("drop_path statistics", statistics)
    return failures


def main() -> int:
    lines = [
        f"droppath_ext {__version__}",
        f"python       {platform.python_version()} ({sys.executable})",
        f"torch        {torch.__version__} (CUDA {torch.version.cuda})",
        f"backend      {_library.backend()}: {_library.backend_reason()}",
        f"cpu          ATen capability {torch.backends.cpu.get_cpu_capability()}",
    ]
    if _library.LOADED:
        lines.append(f"cpu kernels  {torch.ops.droppath._cpu_kernel_capability()}")
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            major, minor = torch.cuda.get_device_capability(index)
            lines.append(f"gpu {index}        {torch.cuda.get_device_name(index)} (sm_{major}{minor})")
    else:
        lines.append("gpu          none visible")
    target = _library.stable_target()
    if target:
        lines.append(f"abi          LibTorch stable ABI, for torch {target} and later (one build for all), "
                     f"CPython 3.10 and later (abi3)")
    if _library.CUDA_FALLBACK_REASON:
        lines.append(f"cuda kernels pure PyTorch: {_library.CUDA_FALLBACK_REASON}")
    mismatch = _library.torch_mismatch()
    if mismatch and not _library.mismatch_blocks_loading():
        lines.append(f"note         the compiled library was {mismatch}: a patch-level difference, "
                     f"which keeps torch's C++ ABI")
    info = _library.build_record()
    if info is None:
        lines.append("build        no build record (compiled library not built)")
    else:
        for key in sorted(info):
            lines.append(f"build.{key:<18} {info[key]}")
    if _library.LOADED:
        for op in OPS:
            lines.append(f"op droppath::{op:<16} {', '.join(_registered_keys(op)) or '-'}")
    print("\n".join(lines))

    failures = setup_failures()
    for device in _devices():
        device_failures = _self_check_device(device)
        print(f"self-check   {device}: {'ok' if not device_failures else f'{len(device_failures)} failures'}")
        failures += device_failures
    for failure in failures:
        print(f"  FAIL {failure}")
    print("PASS" if not failures else "FAIL")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
