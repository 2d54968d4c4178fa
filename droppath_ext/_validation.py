"""Argument checks shared by both backends' Python code (TorchScript-compatible).

The messages match the C++ ops' (csrc/checks.cpp), so an error reads the same
whichever backend raises it.

Under torch.fx symbolic tracing the tensors are proxies, with no dtype, shape
or values to check: the checks pass them (Python control flow on a proxy
raises), and the ops check the real tensors when the traced graph runs.
"""

from typing import List, Optional

import torch
from torch import Tensor

from . import _tracing


def symbolic(x: Optional[Tensor]) -> bool:
    """An FX proxy standing for a tensor (never under TorchScript)."""
    if torch.jit.is_scripting():
        return False
    else:
        return _tracing.is_proxy(x)


def shapes_differ(a: List[int], b: List[int]) -> bool:
    """``a != b`` for shapes, silently under ``torch.jit.trace`` (``_tracing.shapes_differ``)."""
    if torch.jit.is_scripting():
        return a != b
    else:
        return _tracing.shapes_differ(a, b)


def check_drop_prob(drop_prob: float) -> None:
    # Written so that NaN fails too.
    if not (drop_prob >= 0.0 and drop_prob <= 1.0):
        raise ValueError(f"drop_prob must be in [0, 1], got {drop_prob}")


def check_input(x: Tensor, name: str) -> None:
    if symbolic(x):
        return
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


def check_pair(residual: Tensor, branch: Tensor, same_dtype: bool = True) -> None:
    """Same shape and device, and (``same_dtype``) dtype. The public ``add``
    promotes dtypes instead, as ``residual + drop_path(branch)`` does."""
    check_input(residual, "residual")
    check_input(branch, "branch")
    if symbolic(residual) or symbolic(branch):
        return
    if shapes_differ(residual.shape, branch.shape):
        raise ValueError(
            f"residual and branch must have the same shape, got {list(residual.shape)} and {list(branch.shape)}"
        )
    if residual.device != branch.device:
        raise ValueError(
            f"residual and branch must be on the same device, got {residual.device} and {branch.device}"
        )
    if same_dtype and residual.dtype != branch.dtype:
        raise TypeError(
            f"residual and branch must have the same dtype, got {residual.dtype} and {branch.dtype}"
        )


def normalize_batch_dim(ndim: int, batch_dim: int) -> int:
    """``batch_dim`` as a non-negative dim of an ``ndim``-dim tensor (IndexError otherwise)."""
    if batch_dim < -ndim or batch_dim >= ndim:
        raise IndexError(
            f"batch_dim out of range (expected to be in range of [{-ndim}, {ndim - 1}], "
            f"but got {batch_dim})"
        )
    return batch_dim + ndim if batch_dim < 0 else batch_dim


def dim_of(x: Tensor, batch_dim: int) -> int:
    """``batch_dim`` of ``x``, normalised (as given for an FX proxy: the ops
    take negative dims too)."""
    if symbolic(x):
        return batch_dim
    return normalize_batch_dim(x.dim(), batch_dim)


def check_cu_seqlens(x: Tensor, cu_seqlens: Optional[Tensor]) -> None:
    """What can be checked without reading the offsets' values."""
    if cu_seqlens is None or symbolic(x) or symbolic(cu_seqlens):
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


def _values_readable(cu_seqlens: Tensor) -> bool:
    """Whether the offsets' values can be read here (see _tracing)."""
    if torch.jit.is_scripting():
        return True
    else:
        return _tracing.values_readable(cu_seqlens)


def check_cu_seqlens_values(cu_seqlens: Tensor, length: int) -> None:
    """cu_seqlens[0] == 0, non-decreasing, cu_seqlens[-1] == length. Read on
    the host in eager mode; under torch.compile / torch.export a device-side
    assertion in the graph checks them when it runs; under other tracers
    (jit.trace, FX, fake tensors) the compiled op's kernel checks them."""
    if not _values_readable(cu_seqlens):
        if not torch.jit.is_scripting():
            if torch.compiler.is_compiling():
                assert_cu_seqlens_in_graph(cu_seqlens, length)
        return
    if torch.jit.is_scripting():
        # TorchScript needs the element type of tolist() spelled out.
        offsets: List[int] = cu_seqlens.tolist()
        check_offsets(offsets, length)
    else:
        check_offsets(_tracing.readable(cu_seqlens).tolist(), length)


def check_offsets(offsets: List[int], length: int) -> None:
    """The offsets' values, read: start at 0, non-decreasing, end at ``length``."""
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


def assert_cu_seqlens_in_graph(cu_seqlens: Tensor, length: int) -> None:
    """The offsets check as ops of a compiled graph (no host read, no graph
    break): torch._assert_async raises when the graph runs with bad offsets."""
    valid = (cu_seqlens[0] == 0) & (cu_seqlens[-1] == length) & (cu_seqlens[1:] >= cu_seqlens[:-1]).all()
    torch._assert_async(
        valid, f"cu_seqlens must start at 0, be non-decreasing and end at the size of the batch "
               f"dimension ({length})"
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


def check_draw_args(
    x: Tensor,
    drop_prob: float,
    batch_dim: int,
    cu_seqlens: Optional[Tensor],
    generator: Optional[torch.Generator],
) -> int:
    """Every check of a drawing call, made before any shortcut (eval mode
    included); returns the batch dim, normalised."""
    check_drop_prob(drop_prob)
    check_input(x, "x")
    dim = dim_of(x, batch_dim)
    check_cu_seqlens(x, cu_seqlens)
    check_generator(x, generator)
    return dim


def check_add_args(
    residual: Tensor,
    branch: Tensor,
    drop_prob: float,
    batch_dim: int,
    cu_seqlens: Optional[Tensor],
    generator: Optional[torch.Generator],
) -> int:
    """``check_draw_args`` for ``add`` (dtypes may differ: they promote)."""
    check_drop_prob(drop_prob)
    check_pair(residual, branch, same_dtype=False)
    return check_draw_args(branch, drop_prob, batch_dim, cu_seqlens, generator)


def check_cu_seqlens_in_graph(x: Tensor, batch_dim: int, cu_seqlens: Tensor) -> None:
    """Under torch.compile / torch.export, where the op cannot read the
    offsets, their check as ops of the graph (see check_cu_seqlens_values)."""
    if torch.jit.is_scripting():
        return
    else:
        if torch.compiler.is_compiling():
            assert_cu_seqlens_in_graph(cu_seqlens, x.shape[normalize_batch_dim(x.dim(), batch_dim)])


# ---- the deterministic ops' checks, as csrc/checks.cpp makes them ------------------
# (the compiled library's Python layer, _ops.py, raises these typed errors
# before its kernels, whose own checks reach Python as RuntimeError)


def check_factors(x: Tensor, dim: int, factors: Tensor, cu_seqlens: Optional[Tensor]) -> None:
    if factors.dim() != 1:
        raise ValueError(f"factors must be 1-D (one value per sample), got shape {list(factors.shape)}")
    if not factors.is_floating_point():
        raise TypeError(f"factors must be a floating tensor, got {factors.dtype}")
    samples = cu_seqlens.shape[0] - 1 if cu_seqlens is not None else x.shape[dim]
    if shapes_differ([factors.shape[0]], [samples]):
        raise ValueError(
            f"factors must have one value per sample: the input has {samples} samples, "
            f"factors has {factors.shape[0]}"
        )
    if factors.device != x.device:
        raise ValueError(f"factors must be on the input's device {x.device}, got {factors.device}")


def check_rows(x: Tensor, rows: Tensor, name: str, length: int = -1) -> None:
    if rows.dim() != 1:
        raise ValueError(f"{name} must be a 1-D tensor")
    if rows.dtype != torch.int64:
        raise TypeError(f"{name} must be torch.int64, got {rows.dtype}")
    if length >= 0 and shapes_differ([rows.shape[0]], [length]):
        raise ValueError(f"{name} must have {length} entries, got {rows.shape[0]}")
    if rows.device != x.device:
        raise ValueError(f"{name} must be on the input's device {x.device}, got {rows.device}")


def check_scale_rows_args(x: Tensor, factors: Tensor, batch_dim: int, cu_seqlens: Optional[Tensor]) -> int:
    check_input(x, "x")
    dim = normalize_batch_dim(x.dim(), batch_dim)
    check_cu_seqlens(x, cu_seqlens)
    check_factors(x, dim, factors, cu_seqlens)
    return dim


def check_add_rows_args(
    residual: Tensor, branch: Tensor, factors: Tensor, batch_dim: int, cu_seqlens: Optional[Tensor]
) -> int:
    check_pair(residual, branch)
    dim = normalize_batch_dim(branch.dim(), batch_dim)
    check_cu_seqlens(branch, cu_seqlens)
    check_factors(branch, dim, factors, cu_seqlens)
    return dim


def check_take_rows_args(
    x: Tensor, rows: Tensor, inverse_rows: Tensor, factors: Optional[Tensor], batch_dim: int
) -> int:
    check_input(x, "x")
    dim = normalize_batch_dim(x.dim(), batch_dim)
    check_rows(x, rows, "rows")
    check_rows(x, inverse_rows, "inverse_rows", x.shape[dim])
    if factors is not None:
        check_factors(x, dim, factors, None)
    return dim


def check_add_taken_rows_args(
    residual: Tensor, branch: Tensor, factors: Tensor, rows: Tensor, inverse_rows: Tensor, batch_dim: int
) -> int:
    check_input(residual, "residual")
    check_input(branch, "branch")
    dim = normalize_batch_dim(residual.dim(), batch_dim)
    if residual.dtype != branch.dtype:
        raise TypeError(
            f"residual and branch must have the same dtype, got {residual.dtype} and {branch.dtype}"
        )
    if residual.device != branch.device:
        raise ValueError(
            f"residual and branch must be on the same device, got {residual.device} and {branch.device}"
        )
    same = residual.dim() == branch.dim()
    if same:
        for d in range(residual.dim()):
            if d != dim and shapes_differ([residual.shape[d]], [branch.shape[d]]):
                same = False
    if not same:
        raise ValueError(
            f"branch must have the residual's shape except along dim {dim}, got "
            f"{list(residual.shape)} and {list(branch.shape)}"
        )
    check_factors(residual, dim, factors, None)
    check_rows(residual, rows, "rows", residual.shape[dim])
    check_rows(residual, inverse_rows, "inverse_rows", branch.shape[dim])
    return dim
