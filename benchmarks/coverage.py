"""How much of real models' stochastic depth convert_model reaches: per family,
the DropPath modules, how many are replaced, how many sit in blocks that run
in skip mode (fused, verified by one training step, and skipping:
``droppath_ext.skip_status``), and why the others
do not. Prints a Markdown table (the README's).

    python benchmarks/coverage.py            # timm/torchvision sweep, transformers, MONAI, SAM2, research model
    python benchmarks/coverage.py --only timm

A DropPath module's branch is *per-sample* unless its block holds BatchNorm
(batch statistics): the coverage figure is over the per-sample ones.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys

import torch

import droppath_ext as dp
from droppath_ext import _discovery, _fused_generic

TESTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests")


def _stochastic_depth_modules(model):
    return [n for n, m in model.named_modules()
            if _discovery.is_candidate(m) or _discovery.is_timm_drop_path(m) or
            _discovery.is_torchvision_stochastic_depth(m)]


def measure(build, step) -> dict:
    """``build()`` -> a stock model; ``step(model)`` runs one training step."""
    torch.manual_seed(0)
    stock = build()
    names = _stochastic_depth_modules(stock)
    model, report = dp.convert_model(stock, fuse_residual=True, return_report=True)
    model.train()
    step(model)  # (verifies the fused blocks)
    status = dp.skip_status(model)  # (fused blocks that skip in a training call now: None)
    in_skip, mixing, why = 0, 0, collections.Counter()
    for name in names:
        block = name.rsplit(".", 1)[0] if "." in name else ""
        if block in status and status[block] in (None, _fused_generic.ZERO_RATE):  # (rate 0: skips once set)
            in_skip += 1
        elif block in status:
            why[status[block][:90]] += 1
        elif "mixes samples" in report.reasons.get(block, "") and "not verified" not in report.reasons[block]:
            mixing += 1
        else:
            why[report.reasons.get(block, report.reasons.get(name, "called outside a block's residual"))[:90]] += 1
    return {"modules": len(names), "replaced": len(report.replaced), "skip": in_skip, "batchnorm": mixing,
            "why": why}


def _image_step(size, batch=4):
    def step(model):
        out = model(torch.randn(batch, 3, size, size))
        out = out if isinstance(out, torch.Tensor) else out[-1]
        out.float().sum().backward()
    return step


def families(only: str | None):
    sys.path.insert(0, TESTS)
    if only in (None, "timm"):
        import timm
        from test_model_sweep import TIMM, TORCHVISION, _torchvision

        for name, shape, kwargs in TIMM:
            yield "timm", name, (lambda n=name, k=kwargs: timm.create_model(
                n, pretrained=False, drop_path_rate=0.3, num_classes=5, **k)), _image_step(shape[-1], 2)
        for name, shape in TORCHVISION:
            if len(shape) == 4:  # (the video models: their own input, below)
                yield "torchvision", name, _torchvision(name), _image_step(shape[-1], 2)
            else:
                yield "torchvision", name, _torchvision(name), \
                    lambda m, s=shape: m(torch.randn(2, *s[1:])).sum().backward()
    if only in (None, "transformers"):
        from transformers_families import FAMILIES, build, main_output

        for family in sorted(FAMILIES):
            def make(family=family):
                model, inputs = build(family, 0.3)
                make.inputs = inputs
                return model

            def step(model, make=make):
                main_output(model(**make.inputs(4))).float().sum().backward()

            yield "transformers", family, make, step
    if only in (None, "others"):
        try:
            from monai.networks.nets import SwinUNETR

            yield "MONAI", "SwinUNETR (2-D)", lambda: SwinUNETR(
                in_channels=1, out_channels=2, feature_size=12, depths=(2, 2, 2, 2), num_heads=(1, 1, 1, 1),
                dropout_path_rate=0.3, spatial_dims=2), \
                lambda m: m(torch.randn(2, 1, 64, 64)).sum().backward()
        except Exception as error:  # noqa: BLE001 - an optional library
            print(f"(MONAI skipped: {error})", file=sys.stderr)
        try:
            from sam2.modeling.backbones.hieradet import Hiera

            yield "SAM2", "Hiera image encoder", lambda: Hiera(
                embed_dim=16, num_heads=1, stages=(1, 2, 7, 2), global_att_blocks=(5, 7, 9), drop_path_rate=0.3,
                window_spec=(8, 4, 4, 4), window_pos_embed_bkg_spatial_size=(4, 4)), _image_step(128, 2)
        except Exception as error:  # noqa: BLE001 - an optional library
            print(f"(SAM2 skipped: {error})", file=sys.stderr)
        import research_model

        yield "research code", "pasted timm DropPath, 4 block kinds", research_model.ResearchNet, _image_step(16, 8)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["timm", "transformers", "others"])
    args = parser.parse_args(argv)
    print("| library | model | DropPath modules | replaced | in skip-mode blocks | BatchNorm blocks | not fused: why |")
    print("|---|---|---|---|---|---|---|")
    totals = collections.Counter()
    for library, name, build, step in families(args.only):
        try:
            row = measure(build, step)
        except Exception as error:  # noqa: BLE001 - a model that does not build here
            print(f"| {library} | {name} | could not be built here: {type(error).__name__} | | | | |")
            continue
        why = "; ".join(f"{n}x {reason}" for reason, n in row["why"].items())
        print(f"| {library} | {name} | {row['modules']} | {row['replaced']} | {row['skip']} | {row['batchnorm']} | "
              f"{why} |", flush=True)
        for key in ("modules", "replaced", "skip", "batchnorm"):
            totals[key] += row[key]
    per_sample = totals["modules"] - totals["batchnorm"]
    print(f"\nTotal: {totals['modules']} DropPath modules, {totals['replaced']} replaced, {totals['skip']} of the "
          f"{per_sample} whose block has no BatchNorm in skip-mode blocks "
          f"({100 * totals['skip'] / max(per_sample, 1):.1f}%).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
