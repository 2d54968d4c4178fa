"""timm's own ``train.py`` with its model converted: does skip mode reach a
script that compiles before its first step (``--torchcompile``)?

    python benchmarks/timm_train_converted.py /path/to/pytorch-image-models/train.py \\
        --data-dir /path/to/imagefolder --model eva02_tiny_patch14_224 --img-size 56 \\
        --model-kwargs img_size=56 --drop-path 0.4 --torchcompile --epochs 1 -b 16 --workers 0 \\
        --device cpu

The script runs ``train.py`` unchanged, with ``timm.models.create_model``
wrapped so that every model it makes is converted
(``droppath_ext.convert_model(model, fuse_residual=True)``) and each block's
MLP activation counts, from inside the compiled graph, the samples its
branch computes in training calls (an opaque op that runs with the real
tensors; verification's private copies are not counted). At exit it prints,
per training step, the samples the MLP branches computed, what a stock model
computes, and :func:`droppath_ext.skip_status`.
``--no-convert`` runs the stock model with the same counting, for comparison.
"""

from __future__ import annotations

import atexit
import runpy
import sys
from typing import List

import torch
from torch import nn

import droppath_ext as dp
from droppath_ext import _verification

_COUNTS: List[int] = []


@torch.library.custom_op("droppath_benchmarks::count_samples", mutates_args=())
def _count_samples(x: torch.Tensor) -> torch.Tensor:
    if _verification.current() is None:  # (not the private copies verification runs)
        _COUNTS.append(x.shape[0])
    return x.clone()


@_count_samples.register_fake
def _(x):
    return torch.empty_like(x)


_count_samples.register_autograd(lambda ctx, grad: grad, setup_context=lambda ctx, inputs, output: None)


class _Counting(nn.Module):
    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        # (training calls only: validation computes every sample in any model)
        return _count_samples(self.inner(x)) if self.training else self.inner(x)


def _instrument(model: nn.Module) -> int:
    """Counting activations in every block's MLP; returns how many."""
    found = 0
    for module in model.modules():
        mlp = getattr(module, "mlp", None)
        if isinstance(getattr(mlp, "act", None), nn.Module) and hasattr(module, "drop_path2"):
            mlp.act = _Counting(mlp.act)
            found += 1
    return found


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    script, args = sys.argv[1], sys.argv[2:]
    convert = "--no-convert" not in args
    args = [a for a in args if a != "--no-convert"]
    batch = next((int(args[i + 1]) for i, a in enumerate(args[:-1]) if a in ("-b", "--batch-size")), None)
    import timm.models

    made: List[nn.Module] = []
    create = timm.models.create_model

    def create_converted(*a, **k):
        model = create(*a, **k)
        blocks = _instrument(model)
        if convert:
            model = dp.convert_model(model, fuse_residual=True)
        made.append(model)
        print(f"timm_train_converted: {blocks} MLP branches counted, converted: {convert}", flush=True)
        return model

    timm.models.create_model = create_converted

    def report():
        if not made or not _COUNTS:
            return
        per_call = len([m for m in made[0].modules() if isinstance(m, _Counting)])
        steps = [sum(_COUNTS[i:i + per_call]) for i in range(0, len(_COUNTS), per_call)]
        print(f"timm_train_converted: samples the MLP branches computed per call: {steps}")
        print("timm_train_converted: per block: "
              + " | ".join(" ".join(map(str, _COUNTS[i:i + per_call])) for i in range(0, len(_COUNTS), per_call)))
        if batch:
            print(f"timm_train_converted: a stock model computes {per_call * batch} per full training step")
        if convert:
            made[0].train()  # (the script ends in eval mode; the status a training step meets)
            print(f"timm_train_converted: skip_status: {dp.skip_status(made[0])}")

    atexit.register(report)
    sys.argv = [script] + args
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
