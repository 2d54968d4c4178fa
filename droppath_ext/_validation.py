"""Argument checks shared by both backends' Python code (TorchScript-compatible).

The messages match the C++ ops' (csrc/checks.cpp), so an error reads the same
whichever backend raises it.
"""

from typing import List, Optional

import torch
from torch import Tensor


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
        raise ValueError(f"{name} must have a batch dimension, got a 0-dim tensor")


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


def normalize_batch_dim(ndim: int, batch_dim: int) -> int:
    """``batch_dim`` as a non-negative dim of an ``ndim``-dim tensor (IndexError otherwise)."""
    if batch_dim < -ndim or batch_dim >= ndim:
        raise IndexError(
            f"batch_dim out of range (expected to be in range of [{-ndim}, {ndim - 1}], "
            f"but got {batch_dim})"
        )
    return batch_dim + ndim if batch_dim < 0 else batch_dim


def check_cu_seqlens(x: Tensor, cu_seqlens: Optional[Tensor]) -> None:
    """What can be checked without reading the offsets' values."""
    if cu_seqlens is None:
        return
    if cu_seqlens.dtype != torch.int32 and cu_seqlens.dtype != torch.int64:
        raise TypeError(f"cu_seqlens must be torch.int32 or torch.int64, got {cu_seqlens.dtype}")
    if cu_seqlens.dim() != 1:
        raise ValueError(f"cu_seqlens must be 1-D, got shape {list(cu_seqlens.shape)}")
    if cu_seqlens.shape[0] < 1:
        raise ValueError("cu_seqlens must hold n + 1 offsets for n samples, got an empty tensor")
    if cu_seqlens.device != x.device:
        raise ValueError(
            f"cu_seqlens must be on the input's device {x.device}, got {cu_seqlens.device}"
        )


def _values_readable() -> bool:
    """False while torch.compile / torch.export trace (the values are symbolic then)."""
    if torch.jit.is_scripting():
        return True
    else:
        return not torch.compiler.is_compiling()


def check_cu_seqlens_values(cu_seqlens: Tensor, length: int) -> None:
    """cu_seqlens[0] == 0, non-decreasing, cu_seqlens[-1] == length (reads the
    values; not while tracing, where only the compiled op's kernel checks them)."""
    if not _values_readable():
        return
    offsets: List[int] = cu_seqlens.tolist()
    if offsets[0] != 0:
        raise ValueError(f"cu_seqlens must start at 0, got {offsets[0]}")
    for i in range(1, len(offsets)):
        if offsets[i] < offsets[i - 1]:
            raise ValueError(
                f"cu_seqlens must be non-decreasing, got {offsets[i]} after {offsets[i - 1]} at index {i}"
            )
    if offsets[-1] != length:
        raise ValueError(
            f"cu_seqlens must end at the size of the batch dimension ({length}), got {offsets[-1]}"
        )


def check_generator(x: Tensor, generator: Optional[torch.Generator]) -> None:
    # TorchScript has no Generator.device; a scripted call passes no generator.
    if not torch.jit.is_scripting() and generator is not None:
        device = generator.device
        if device.type != x.device.type or (
            device.index is not None and x.device.index is not None and device.index != x.device.index
        ):
            raise ValueError(
                f"generator must be on the input's device {x.device}, got a generator on {device}"
            )
