"""Two builds of droppath_ext side by side: this tree against another (e.g.
the last full-ABI build, in a git worktree), on the ops and on training steps.

    git worktree add /tmp/old <commit> && (cd /tmp/old && python setup.py build_ext --inplace)
    python benchmarks/compare_builds.py --other /tmp/old              # ops, then eager + compiled steps
    python benchmarks/compare_builds.py --other /tmp/old --ops-only --rounds 5

The two builds cannot share a process (both define the ``droppath`` op
namespace), so each measurement runs in a fresh process per build, the builds
alternating round after round (drift hits both alike); medians over rounds.

- Ops: ``drop_path`` and ``drop_path_add`` (forward; forward + backward) on
  ViT- and ConvNeXt-sized tensors in float32 / bfloat16 / float16, and on a
  small tensor, where a per-call cost (the Python autograd layer) would show;
  each timed against timm's arithmetic (mask drawn) in the same process, as
  memory-bound timings here vary between processes by up to 3x: the figure
  compared across builds is ours / stock.
- Steps: ``benchmarks/train_step.py`` (timm ViT-Tiny and ConvNeXt-Atto, stock
  and converted, interleaved within each process), eager and compiled. The
  ratio reported is the converted step's time, this build over the other.

Ratios below 1.00 mean this build is faster; +-3% is noise on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

OP_CELLS = [
    # (shape, dtype, label)
    ((64, 197, 192), "float32", "ViT-Tiny block f32"),
    ((32, 197, 384), "bfloat16", "ViT-S block bf16"),
    ((32, 197, 384), "float16", "ViT-S block f16"),
    ((32, 96, 56, 56), "float32", "ConvNeXt stage f32"),
    ((8, 16, 32), "float32", "small f32 (per-call cost)"),
]
OP_CASES = ["forward", "forward+backward", "add", "add+backward"]

_OPS_WORKER = r"""
import json, sys, torch
from torch.utils import benchmark
import droppath_ext as dp
assert dp.backend() != "python", dp.backend_reason()
torch.manual_seed(0)
cells, cases, min_run_time = json.loads(sys.argv[1])
out = {}
for shape, dtype, label in cells:
    x = torch.randn(shape, dtype=getattr(torch, dtype))
    r = torch.randn_like(x)
    xg = x.clone().requires_grad_()
    rg = r.clone().requires_grad_()
    g = torch.ones_like(x)
    m = (torch.rand((shape[0],) + (1,) * (len(shape) - 1)) < 0.8).to(x.dtype) * 1.25
    ours = {
        "forward": lambda: dp.drop_path(x, 0.2, True),
        "forward+backward": lambda: dp.drop_path(xg, 0.2, True).backward(g),
        "add": lambda: dp.drop_path_add(r, x, 0.2, True),
        "add+backward": lambda: dp.drop_path_add(rg, xg, 0.2, True).backward(g),
    }
    # timm's arithmetic with the mask already drawn: the same memory traffic,
    # timed in the same process (this machine's memory-bound timings vary
    # between processes by up to 3x; ratios within one process do not).
    stock = {
        "forward": lambda: x * m,
        "forward+backward": lambda: (xg * m).backward(g),
        "add": lambda: r + x * m,
        "add+backward": lambda: (rg + xg * m).backward(g),
    }
    for case in cases:
        for _ in range(2):  # interleaved
            a = benchmark.Timer("f()", globals={"f": ours[case]}).blocked_autorange(min_run_time=min_run_time)
            b = benchmark.Timer("f()", globals={"f": stock[case]}).blocked_autorange(min_run_time=min_run_time)
            out.setdefault(f"{label} | {case}", []).append([a.median, b.median])
print("RESULT " + json.dumps(out))
"""


def _run_worker(tree: str, args: list[str]) -> str:
    env = dict(os.environ, PYTHONPATH=tree)
    result = subprocess.run(args, capture_output=True, text=True, env=env, cwd=tempfile.gettempdir())
    if result.returncode != 0:
        sys.exit(f"worker for {tree} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result.stdout


def compare_ops(trees: dict[str, str], rounds: int, min_run_time: float) -> dict:
    """Per build: ours / stock's arithmetic, timed together in each process;
    then this build's ratio over the other's."""
    payload = json.dumps([OP_CELLS, OP_CASES, min_run_time])
    samples: dict[str, dict[str, list]] = {name: {} for name in trees}
    for _ in range(rounds):
        for name, tree in trees.items():
            out = _run_worker(tree, [sys.executable, "-c", _OPS_WORKER, payload])
            line = next(l for l in out.splitlines() if l.startswith("RESULT "))
            for key, pairs in json.loads(line[len("RESULT "):]).items():
                samples[name].setdefault(key, []).extend(pairs)
    this, other = trees
    rows = {}
    print(f"\n{'cell':<48} {'this/stock':>10} {'other/stock':>11} {'this/other':>10} {'this us':>9}")
    for key in samples[this]:
        a = statistics.median(ours / stock for ours, stock in samples[this][key])
        b = statistics.median(ours / stock for ours, stock in samples[other][key])
        us = statistics.median(ours for ours, _ in samples[this][key]) * 1e6
        rows[key] = {"this_over_stock": a, "other_over_stock": b, "ratio": a / b, "this_us": us}
        print(f"{key:<48} {a:>10.3f} {b:>11.3f} {a / b:>10.3f} {us:>9.1f}")
    return rows


def compare_steps(trees: dict[str, str], rounds: int, compiled: bool, models: list[str]) -> dict:
    rows = {}
    for model in models:
        extra = ["--img-size", "96"] + (["--depth", "6"] if model.startswith("vit") else [])
        cmd = [sys.executable, os.path.join(HERE, "benchmarks", "train_step.py"), "--model", model,
               "--rates", "0.4", "--variants", "stock,default", "--steps", "8", *extra]
        cmd += ["--compile-only"] if compiled else []
        medians: dict[str, list[float]] = {name: [] for name in trees}
        speedups: dict[str, list[float]] = {name: [] for name in trees}
        for _ in range(rounds):
            for name, tree in trees.items():
                with tempfile.NamedTemporaryFile(suffix=".json") as f:
                    _run_worker(tree, cmd + ["--json", f.name])
                    result = json.load(open(f.name))
                res = next(iter(result.values()))
                medians[name].append(res["default"]["steady_median_s"])
                speedups[name].append(res["stock"]["steady_median_s"] / res["default"]["steady_median_s"])
        this, other = trees
        a, b = statistics.median(medians[this]), statistics.median(medians[other])
        key = f"{model} {'compiled' if compiled else 'eager'} rate 0.4"
        rows[key] = {"this_s": a, "other_s": b, "ratio": a / b,
                     "this_vs_stock": statistics.median(speedups[this]),
                     "other_vs_stock": statistics.median(speedups[other])}
        print(f"{key:<40} converted step {a * 1e3:.1f} ms vs {b * 1e3:.1f} ms: this/other {a / b:.3f}; "
              f"vs stock {rows[key]['this_vs_stock']:.3f}x vs {rows[key]['other_vs_stock']:.3f}x", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--other", required=True, help="the other build's source tree (built in place)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--min-run-time", type=float, default=0.3)
    parser.add_argument("--ops-only", action="store_true")
    parser.add_argument("--steps-only", action="store_true")
    parser.add_argument("--no-compile", action="store_true", help="eager steps only")
    parser.add_argument("--compiled-only", action="store_true", help="compiled steps only")
    parser.add_argument("--models", default="vit_tiny_patch16_224,convnext_atto")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)
    trees = {"this": HERE, "other": os.path.abspath(args.other)}
    print(f"this: {trees['this']}  other: {trees['other']}  ({args.rounds} rounds, builds alternating)")
    results = {}
    if not args.steps_only:
        results["ops"] = compare_ops(trees, args.rounds, args.min_run_time)
    if not args.ops_only:
        models = args.models.split(",")
        if not args.compiled_only:
            results["eager_steps"] = compare_steps(trees, args.rounds, False, models)
        if not args.no_compile:
            rounds = args.rounds if args.compiled_only else max(1, args.rounds - 1)
            results["compiled_steps"] = compare_steps(trees, rounds, True, models)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
