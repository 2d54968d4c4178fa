"""Training-step speed-up over stock, per model family and per drop rate, as plots.

    python benchmarks/plot_speedups.py                      # measure (eager, CPU), then plot into docs/img/
    python benchmarks/plot_speedups.py --compile            # torch.compile'd variants instead (much longer)
    python benchmarks/plot_speedups.py --from-json docs/img/speedups.json   # plot again, no measuring

For each family (timm models, small inputs so a 2-core CPU measures them in
minutes) and each drop rate, ``benchmarks/train_step.py``'s timing runs stock
and converted (``convert_model(fuse_residual=True)``, skip where it pays)
models side by side, step by step, from the same initial weights; ViT also
runs DINOv2's fixed-size random subset. The speed-up is stock's steady median
step time over the variant's. Writes ``speedup_per_rate.png`` (one line per
family), ``speedup_per_family.png`` (one group of bars per family, one bar per
rate) and the figures as JSON, with the machine and torch they came from.
Needs matplotlib (``pip install matplotlib``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import types

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_step  # noqa: E402  (the timing loop this plots)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# family label -> (timm model, image size, depth override): small enough for a CPU.
FAMILIES = {
    "ViT-Tiny (d6, 96 px)": ("vit_tiny_patch16_224", 96, 6),
    "EVA-02-Tiny (112 px)": ("eva02_tiny_patch14_224", 112, None),
    "Swin-Tiny (112 px)": ("swin_tiny_patch4_window7_224", 112, None),
    "ConvNeXt-Atto (96 px)": ("convnext_atto", 96, None),
}


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure(args: argparse.Namespace) -> dict:
    rates = [float(r) for r in args.rates.split(",")]
    results: dict = {
        "machine": f"{_cpu_name()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "mode": "compile" if args.compile else "eager",
        "batch": args.batch,
        "command": "python benchmarks/plot_speedups.py " + " ".join(sys.argv[1:]),
        "families": {},
    }
    for label, (model, img_size, depth) in FAMILIES.items():
        if args.families and not any(f in label for f in args.families.split(",")):
            continue
        variants = "stock,default,dinov2" if model.startswith("vit_") else "stock,default"
        per_rate = {}
        for rate in rates:
            options = types.SimpleNamespace(model=model, device="cpu", batch=args.batch, img_size=img_size,
                                            depth=depth, variants=variants, amp="none", compile_mode=None,
                                            first_steps=args.first_steps, steps=args.steps)
            timed = train_step.time_variants(options, rate, compiled=args.compile)
            stock = timed["stock"]["steady_median_s"]
            per_rate[str(rate)] = {name: stock / r["steady_median_s"] for name, r in timed.items() if name != "stock"}
            print(f"{label:<24} rate {rate}: " + ", ".join(f"{n} {v:.3f}x" for n, v in per_rate[str(rate)].items()),
                  flush=True)
        results["families"][label] = per_rate
    return results


def plot(results: dict, out_dir: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    where = f"{results['mode']}, CPU ({results['machine']}), torch {results['torch']}, batch {results['batch']}"
    written = []

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for label, per_rate in results["families"].items():
        rates = sorted(per_rate, key=float)
        ax.plot([float(r) for r in rates], [per_rate[r]["default"] for r in rates], marker="o", label=label)
        if any("dinov2" in per_rate[r] for r in rates):
            ax.plot([float(r) for r in rates], [per_rate[r]["dinov2"] for r in rates], marker="x",
                    linestyle="--", color="grey", label=f"{label.split(' (')[0]}: DINOv2-style subset")
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xlabel("drop_path_rate")
    ax.set_ylabel("speed-up over stock (training step)")
    ax.set_title(f"droppath_ext skip mode, per drop rate\n{where}", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = os.path.join(out_dir, "speedup_per_rate.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)

    families = list(results["families"])
    rates = sorted({r for per_rate in results["families"].values() for r in per_rate}, key=float)
    width = 0.8 / max(len(rates), 1)
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for i, rate in enumerate(rates):
        values = [results["families"][f].get(rate, {}).get("default", 0.0) for f in families]
        ax.bar([j + (i - (len(rates) - 1) / 2) * width for j in range(len(families))], values, width,
               label=f"rate {rate}")
    ax.axhline(1.0, color="black", linewidth=0.8)
    every = [r["default"] for per_rate in results["families"].values() for r in per_rate.values()]
    ax.set_ylim(min(0.85, min(every) - 0.05), max(every) + 0.05)  # (from 0, the differences would not show)
    ax.set_xticks(range(len(families)))
    ax.set_xticklabels([f.replace(" (", "\n(") for f in families], fontsize=8)
    ax.set_ylabel("speed-up over stock (training step)")
    ax.set_title(f"droppath_ext skip mode, per model family\n{where}", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path = os.path.join(out_dir, "speedup_per_family.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", default=os.path.join(ROOT, "docs", "img"))
    parser.add_argument("--rates", default="0.1,0.2,0.3,0.4,0.5")
    parser.add_argument("--families", default="", help="comma-separated substrings of the family labels")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--first-steps", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--compile", action="store_true", help="time torch.compile'd variants (compiled first)")
    parser.add_argument("--from-json", help="plot these figures instead of measuring")
    args = parser.parse_args(argv)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        parser.error("matplotlib is needed for the plots: pip install matplotlib")
    os.makedirs(args.out_dir, exist_ok=True)
    if args.from_json:
        with open(args.from_json) as f:
            results = json.load(f)
    else:
        results = measure(args)
        with open(os.path.join(args.out_dir, "speedups.json"), "w") as f:
            json.dump(results, f, indent=2)
    for path in plot(results, args.out_dir):
        print(f"wrote {os.path.relpath(path, ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
