"""``python -m droppath_ext.benchmark``: this extension against timm's and
torchvision's formulas, ``torch.compile`` of timm's, and the memory-bound limits.

Every cell times all candidates side by side, interleaved over several rounds
(timings on a shared machine drift), and reports medians. Columns:

- ``ours``: ``droppath_ext`` (the compiled ops when loaded)
- ``fallback``: the pure-Python backend (``droppath_ext._reference``)
- ``timm``: timm's formula, ``x * x.new_empty(B,1,..).bernoulli_(keep).div_(keep)``
- ``torchvision``: torchvision's ``stochastic_depth`` formula (row mode)
- ``compile(timm)``: ``torch.compile`` of timm's formula
- ``limit``: the memory-bound floor: ``x.clone()`` (forward), ``torch.add(x, b)``
  (fused residual), plus ``grad.clone()`` for the backward cases.

Ratios: ``ours/limit`` (1.00 is the floor) and ``timm/ours`` (speedup over timm).

A second table times the sample layouts against each other at the same size:
batch-first ``[B, S, H]`` (``batch_dim=0``), sequence-first ``[S, B, H]``
(``batch_dim=1``) and a packed ``[B * S, H]`` batch of B sequences of random
lengths (``cu_seqlens``), forward and forward+backward; ratios to batch-first.

The default run takes about 7 minutes on 2 CPU cores (it prints its own
estimate first); ``--quick`` takes under a minute.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch

from . import _library, _reference, functional

DEFAULT_SHAPES = [(8, 197, 768), (64, 197, 768), (32, 96, 56, 56)]
DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16, "f64": torch.float64}
CASES = ["forward", "forward+backward", "residual", "residual+backward"]
# Bytes moved per element, in units of the element size, at the memory limit.
TRAFFIC = {"forward": 2, "forward+backward": 4, "residual": 3, "residual+backward": 5}


def timm_drop_path(x: torch.Tensor, drop_prob: float, training: bool = True) -> torch.Tensor:
    """timm.layers.drop_path, verbatim (so timm need not be installed)."""
    if drop_prob == 0.0 or not training:
        return x
    keep_prob = 1 - drop_prob
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    random_tensor = x.new_empty(shape).bernoulli_(keep_prob)
    if keep_prob > 0.0:
        random_tensor.div_(keep_prob)
    return x * random_tensor


def torchvision_stochastic_depth(x: torch.Tensor, p: float) -> torch.Tensor:
    """torchvision.ops.stochastic_depth(mode="row"), verbatim."""
    survival_rate = 1.0 - p
    size = [x.shape[0]] + [1] * (x.ndim - 1)
    noise = torch.empty(size, dtype=x.dtype, device=x.device)
    noise = noise.bernoulli_(survival_rate)
    if survival_rate > 0.0:
        noise.div_(survival_rate)
    return x * noise


@dataclass
class Cell:
    shape: tuple[int, ...]
    dtype: str
    case: str
    device: str
    seconds: dict[str, float] = field(default_factory=dict)
    bytes_moved: int = 0

    def ratio(self, a: str, b: str) -> float:
        return self.seconds[a] / self.seconds[b]


def _candidates(case: str, p: float, compiled_timm: Callable) -> dict[str, Callable]:
    """name -> fn(x, b) returning the tensor that the case produces."""
    if case.startswith("forward"):
        cands = {
            "ours": lambda x, b: functional.drop_path(x, p, True),
            "fallback": lambda x, b: _reference.forward(x, p, True, True),
            "timm": lambda x, b: timm_drop_path(x, p),
            "torchvision": lambda x, b: torchvision_stochastic_depth(x, p),
            "compile(timm)": lambda x, b: compiled_timm(x, p),
            "limit": lambda x, b: x.clone(),
        }
    else:
        cands = {
            "ours": lambda x, b: functional.drop_path_add(x, b, p, True),
            "fallback": lambda x, b: _reference.add(x, b, p, True, True),
            "timm": lambda x, b: x + timm_drop_path(b, p),
            "torchvision": lambda x, b: x + torchvision_stochastic_depth(b, p),
            "compile(timm)": lambda x, b: compiled_timm(x, p, b),
            "limit": lambda x, b: torch.add(x, b),
        }
    return cands


def _timm_for_compile(x: torch.Tensor, p: float, residual_branch: torch.Tensor | None = None) -> torch.Tensor:
    if residual_branch is None:
        return timm_drop_path(x, p)
    return x + timm_drop_path(residual_branch, p)


def _make_stmt(fn: Callable, case: str, x: torch.Tensor, b: torch.Tensor, grad: torch.Tensor, name: str):
    backward = case.endswith("backward")
    if not backward:
        return lambda: fn(x, b)
    if name == "limit":
        # forward floor plus one read+write of the gradient
        return lambda: (fn(x, b), grad.clone())
    # autograd.grad, not .backward(): no accumulation into .grad, whose cost
    # (an extra pass per input) would hide the op's own.
    inputs = (x,) if case == "forward+backward" else (x, b)
    return lambda: torch.autograd.grad(fn(x, b), inputs, grad)


def _timer_module():
    """torch.utils.benchmark, imported on first use: importing it imports
    torch's C++-extension builder, which on a CUDA torch without a GPU logs a
    CUDA_HOME warning that is only noise here."""
    quiet = logging.getLogger("torch.utils.cpp_extension")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        from torch.utils import benchmark
    finally:
        quiet.setLevel(level)
    return benchmark


def _time_interleaved(stmts: dict[str, Callable], min_run_time: float, rounds: int) -> dict[str, float]:
    """Median seconds per call of each statement, the statements timed in turn
    in every round (so drift hits all alike), after a warm-up (and compile)."""
    tbench = _timer_module()
    for stmt in stmts.values():
        for _ in range(3):
            stmt()
    timers = {
        name: tbench.Timer(stmt="stmt()", globals={"stmt": stmt}, num_threads=torch.get_num_threads())
        for name, stmt in stmts.items()
    }
    samples: dict[str, list[float]] = {name: [] for name in stmts}
    for _ in range(rounds):
        for name, timer in timers.items():
            samples[name].append(timer.blocked_autorange(min_run_time=min_run_time).median)
    return {name: statistics.median(values) for name, values in samples.items()}


def run_cell(shape, dtype_name, case, device, p, min_run_time, rounds, compiled_timm) -> Cell:
    dtype = DTYPES[dtype_name]
    gen = torch.Generator().manual_seed(0)
    backward = case.endswith("backward")
    x = torch.randn(shape, generator=gen).to(device=device, dtype=dtype).requires_grad_(backward)
    b = torch.randn(shape, generator=gen).to(device=device, dtype=dtype).requires_grad_(backward)
    grad = torch.randn(shape, generator=gen).to(device=device, dtype=dtype)
    cands = _candidates(case, p, compiled_timm)
    stmts = {name: _make_stmt(fn, case, x, b, grad, name) for name, fn in cands.items()}
    cell = Cell(tuple(shape), dtype_name, case, device)
    cell.seconds = _time_interleaved(stmts, min_run_time, rounds)
    cell.bytes_moved = TRAFFIC[case] * x.numel() * x.element_size()
    return cell


LAYOUTS = ["batch-first", "seq-first", "packed"]
DEFAULT_LAYOUT_SHAPES = [(32, 197, 768), (64, 128, 1024)]


def _random_offsets(batch: int, tokens: int, generator: torch.Generator) -> torch.Tensor:
    """cu_seqlens for ``batch`` sequences of random lengths (some empty) adding up to ``tokens``."""
    cuts = torch.randint(0, tokens + 1, (batch - 1,), generator=generator).sort().values
    return torch.cat([torch.zeros(1, dtype=torch.int64), cuts, torch.tensor([tokens])])


def run_layout_cell(shape, dtype_name, case, device, p, min_run_time, rounds) -> dict:
    """Seconds per call for each sample layout of the same B x S x H elements."""
    batch, seq, hidden = shape
    dtype = DTYPES[dtype_name]
    gen = torch.Generator().manual_seed(0)
    backward = case == "forward+backward"
    base = torch.randn(batch * seq * hidden, generator=gen).to(device=device, dtype=dtype)
    grad = torch.randn(batch * seq * hidden, generator=gen).to(device=device, dtype=dtype)
    inputs = {
        "batch-first": (base.view(batch, seq, hidden), 0, None),
        "seq-first": (base.view(seq, batch, hidden), 1, None),
        "packed": (base.view(batch * seq, hidden), 0, _random_offsets(batch, batch * seq, gen).to(device)),
    }
    stmts = {}
    for name, (x, dim, cu) in inputs.items():
        x = x.detach().requires_grad_(backward)

        def call(x=x, dim=dim, cu=cu):
            return functional.drop_path(x, p, True, batch_dim=dim, cu_seqlens=cu)

        g = grad.view(x.shape)
        stmts[name] = (lambda call=call, x=x, g=g: torch.autograd.grad(call(), (x,), g)) if backward else call
    return {"shape": list(shape), "dtype": dtype_name, "case": case,
            "seconds": _time_interleaved(stmts, min_run_time, rounds)}


def format_layout_table(cells: list[dict]) -> str:
    header = (f"{'B x S x H':<16} {'dtype':<5} {'case':<18} "
              + " ".join(f"{n + ' ms':>15}" for n in LAYOUTS) + f" {'seq/batch':>9} {'packed/batch':>12}")
    lines = [header, "-" * len(header)]
    for c in cells:
        t = c["seconds"]
        lines.append(
            f"{'x'.join(map(str, c['shape'])):<16} {c['dtype']:<5} {c['case']:<18} "
            + " ".join(f"{t[n] * 1e3:>15.3f}" for n in LAYOUTS)
            + f" {t['seq-first'] / t['batch-first']:>9.2f} {t['packed'] / t['batch-first']:>12.2f}"
        )
    return "\n".join(lines)


def format_table(cells: list[Cell]) -> str:
    names = ["ours", "fallback", "timm", "torchvision", "compile(timm)", "limit"]
    header = (
        f"{'shape':<16} {'dtype':<5} {'case':<18} "
        + " ".join(f"{n + ' ms':>17}" for n in names)
        + f" {'ours GB/s':>10} {'ours/limit':>10} {'timm/ours':>9} {'ctimm/ours':>10}"
    )
    lines = [header, "-" * len(header)]
    for c in cells:
        shape = "x".join(map(str, c.shape))
        times = " ".join(f"{c.seconds[n] * 1e3:>17.3f}" for n in names)
        gbps = c.bytes_moved / c.seconds["ours"] / 1e9
        lines.append(
            f"{shape:<16} {c.dtype:<5} {c.case:<18} {times} {gbps:>10.1f} "
            f"{c.ratio('ours', 'limit'):>10.2f} {c.ratio('timm', 'ours'):>9.2f} "
            f"{c.ratio('compile(timm)', 'ours'):>10.2f}"
        )
    return "\n".join(lines)


def summary(cells: list[Cell]) -> str:
    def geomean(values):
        values = list(values)
        return float(torch.tensor(values, dtype=torch.float64).log().mean().exp()) if values else float("nan")

    lines = []
    for case in CASES:
        sel = [c for c in cells if c.case == case]
        if not sel:
            continue
        lines.append(
            f"{case:<18} geomean ours/limit {geomean(c.ratio('ours', 'limit') for c in sel):.2f}  "
            f"worst {max(c.ratio('ours', 'limit') for c in sel):.2f}  "
            f"geomean speedup over timm {geomean(c.ratio('timm', 'ours') for c in sel):.2f}  "
            f"over compile(timm) {geomean(c.ratio('compile(timm)', 'ours') for c in sel):.2f}"
        )
    return "\n".join(lines)


def plot(cells: list[Cell], path: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    names = ["ours", "fallback", "timm", "torchvision", "compile(timm)"]
    labels = [f"{'x'.join(map(str, c.shape))}\n{c.dtype} {c.case}" for c in cells]
    fig, ax = plt.subplots(figsize=(max(8, len(cells) * 0.9), 5))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        ax.bar(
            [j + i * width for j in range(len(cells))],
            [c.ratio(name, "limit") for c in cells],
            width,
            label=name,
        )
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks([j + 0.4 for j in range(len(cells))], labels, rotation=90, fontsize=7)
    ax.set_ylabel("time / memory-bound limit (lower is better)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


def _parse_shapes(text: str) -> list[tuple[int, ...]]:
    return [tuple(int(d) for d in part.split("x")) for part in text.split(",") if part]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", type=_parse_shapes, help="e.g. 8x197x768,32x96x56x56")
    parser.add_argument("--dtypes", default="f32,bf16,f16", help="comma list of f32,bf16,f16,f64")
    parser.add_argument("--cases", default=",".join(CASES), help="comma list of " + ",".join(CASES))
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--drop-prob", type=float, default=0.2)
    parser.add_argument("--min-run-time", type=float, default=0.2, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per cell")
    parser.add_argument("--quick", action="store_true", help="one small shape, f32 and bf16, few rounds (< 1 min)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile column (times it as timm)")
    parser.add_argument("--layout-shapes", type=_parse_shapes, help="B x S x H shapes of the layout table")
    parser.add_argument("--no-layouts", action="store_true", help="skip the sample-layout table")
    parser.add_argument("--layouts-only", action="store_true", help="only the sample-layout table")
    parser.add_argument("--json", help="write the raw figures here")
    parser.add_argument("--plot", help="write a PNG chart here (needs matplotlib)")
    args = parser.parse_args(argv)

    shapes = args.shapes or DEFAULT_SHAPES
    dtypes = args.dtypes.split(",")
    cases = args.cases.split(",")
    if args.quick:
        shapes = args.shapes or [(8, 197, 768)]
        dtypes = ["f32", "bf16"] if args.dtypes == "f32,bf16,f16" else dtypes
        args.min_run_time, args.rounds = 0.03, 3
    for name in dtypes:
        if name not in DTYPES:
            parser.error(f"unknown dtype {name!r}; choose from {', '.join(DTYPES)}")
    for case in cases:
        if case not in CASES:
            parser.error(f"unknown case {case!r}; choose from {', '.join(CASES)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but no GPU is visible")

    device_name = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    layout_shapes = [] if args.no_layouts else (
        args.layout_shapes or ([(8, 197, 768)] if args.quick else DEFAULT_LAYOUT_SHAPES))
    op_cells = 0 if args.layouts_only else len(shapes) * len(dtypes) * len(cases)
    # Each cell times ~6 candidates (layout cells 3) for rounds x min_run_time
    # each, plus warm-up, compilation and timer calibration (~1.5x, measured).
    seconds = 1.5 * args.rounds * args.min_run_time * (6 * op_cells + 3 * 2 * len(layout_shapes) * len(dtypes))
    seconds += 0 if args.no_compile else 2.0 * op_cells
    print(
        f"droppath_ext benchmark: backend {_library.backend()}, torch {torch.__version__}, "
        f"{device_name}, drop_prob {args.drop_prob}, {args.rounds} rounds x {args.min_run_time}s, medians; "
        f"{op_cells} op cells and {2 * len(layout_shapes) * len(dtypes)} layout cells, about "
        f"{max(1, round(seconds / 60))} min"
    )
    cells = []
    for shape in [] if args.layouts_only else shapes:
        for dtype_name in dtypes:
            for case in cases:
                # A fresh compile per cell: one compiled function reused across
                # shapes and dtypes would hit dynamo's recompile limit and
                # silently run eager.
                torch._dynamo.reset()
                compiled_timm = (
                    _timm_for_compile if args.no_compile else torch.compile(_timm_for_compile, dynamic=False)
                )
                cell = run_cell(shape, dtype_name, case, args.device, args.drop_prob,
                                args.min_run_time, args.rounds, compiled_timm)
                cells.append(cell)
                print(format_table([cell]).splitlines()[-1] if len(cells) > 1 else format_table([cell]), flush=True)
    layout_cells = []
    if layout_shapes:
        for shape in layout_shapes:
            if len(shape) != 3:
                parser.error(f"--layout-shapes takes B x S x H shapes, got {'x'.join(map(str, shape))}")
            for dtype_name in dtypes:
                for case in ("forward", "forward+backward"):
                    layout_cells.append(run_layout_cell(shape, dtype_name, case, args.device, args.drop_prob,
                                                        args.min_run_time, args.rounds))
    if cells:
        print()
        print(format_table(cells))
        print()
        print(summary(cells))
    if layout_cells:
        print()
        print(format_layout_table(layout_cells))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"device": device_name, "torch": torch.__version__, "backend": _library.backend(),
                 "drop_prob": args.drop_prob, "cells": [asdict(c) for c in cells], "layouts": layout_cells},
                f, indent=2,
            )
    if args.plot and not plot(cells, args.plot):
        print("--plot: matplotlib is not installed; no chart written", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
