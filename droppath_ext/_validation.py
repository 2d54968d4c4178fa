"""Argument checks shared by both backends' Python code (TorchScript-compatible).

The messages match the C++ ops' (csrc/checks.cpp), so an error reads the same
whichever backend raises it.
"""

from torch import Tensor
import torch


def check_drop_prob(drop_prob: float) -> None:
    # Written so that NaN fails too.
    if not (drop_prob >= 0.0 and drop_prob <= 1.0):
        raise ValueError(f"drop_prob must be in [0, 1], got {drop_prob}")


def check_input(x: Tensor, name: str) -> None:
    dtype = x.dtype
    if (
        dtype != torch.float32
        and dtype != torch.float64
        and dtype != torch.float16
        and dtype != torch.bfloat16
    ):
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {x.dtype}")
    if x.dim() == 0:
        raise ValueError(f"{name} must have a batch dimension (dim 0), got a 0-dim tensor")


def check_pair(residual: Tensor, branch: Tensor) -> None:
    check_input(residual, "residual")
    check_input(branch, "branch")
    if residual.shape != branch.shape:
        raise ValueError(
            f"residual and branch must have the same shape, got {residual.shape} and {branch.shape}"
        )
    if residual.dtype != branch.dtype:
        raise TypeError(
            f"residual and branch must have the same dtype, got {residual.dtype} and {branch.dtype}"
        )
    if residual.device != branch.device:
        raise ValueError(
            f"residual and branch must be on the same device, got {residual.device} and {branch.device}"
        )
