"""The compiled backend: the same functions as ``_reference``, calling ``torch.ops.droppath``.

TorchScript-compatible, so modules calling these script straight to the ops.

In eval mode or at ``drop_prob == 0`` (identity) no op is called: the
arguments are checked here in Python, as the op would check them, and the
input is returned, so no ``droppath`` op reaches a traced, exported, scripted
(then frozen) or ONNX graph of an eval model. Under torch.fx symbolic tracing
each call is one graph node, the op itself.
"""

from typing import Optional

import torch
from torch import Tensor

from . import _dtensor, _validation


def sample_factors(
    x: Tensor,
    drop_prob: float,
    scale_by_keep: bool,
    batch_dim: int = 0,
    cu_seqlens: Optional[Tensor] = None,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    factors = torch.ops.droppath._sample_factors(
        x, drop_prob, scale_by_keep, batch_dim, cu_seqlens, generator=generator
    )
    if not torch.jit.is_scripting():
        if _dtensor.draws_per_rank(x):
            factors = _dtensor.synced(factors)
    return factors


def scale_rows(
    x: Tensor, factors: Tensor, batch_dim: int = 0, cu_seqlens: Optional[Tensor] = None
) -> Tensor:
    return torch.ops.droppath._scale_rows(x, factors, batch_dim, cu_seqlens)


def add_rows(
    residual: Tensor,
    branch: Tensor,
    factors: Tensor,
    batch_dim: int = 0,
    cu_seqlens: Optional[Tensor] = None,
) -> Tensor:
    return torch.ops.droppath._add_rows(residual, branch, factors, batch_dim, cu_seqlens)


def take_rows(
    x: Tensor,
    rows: Tensor,
    inverse_rows: Tensor,
    factors: Optional[Tensor] = None,
    batch_dim: int = 0,
) -> Tensor:
    return torch.ops.droppath._take_rows(x, rows, inverse_rows, factors, batch_dim)


def add_taken_rows(
    residual: Tensor,
    branch: Tensor,
    factors: Tensor,
    rows: Tensor,
    inverse_rows: Tensor,
    batch_dim: int = 0,
) -> Tensor:
    return torch.ops.droppath._add_taken_rows(
        residual, branch, factors, rows, inverse_rows, batch_dim
    )


def forward(
    x: Tensor,
    drop_prob: float,
    training: bool,
    scale_by_keep: bool,
    batch_dim: int = 0,
    cu_seqlens: Optional[Tensor] = None,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    if not training or drop_prob == 0.0:
        if not torch.jit.is_scripting():  # (a scripted, frozen eval model keeps no checks either)
            _validation.check_draw_args(x, drop_prob, batch_dim, cu_seqlens, generator)
        return x
    if not torch.jit.is_scripting():
        if cu_seqlens is not None:
            _validation.check_cu_seqlens_in_graph(x, batch_dim, cu_seqlens)
        if _dtensor.draws_per_rank(x):  # the draw and the scale apart, to sync the draw
            factors = sample_factors(x, drop_prob, scale_by_keep, batch_dim, cu_seqlens, generator)
            return scale_rows(x, factors, batch_dim, cu_seqlens)
    if batch_dim == 0 and cu_seqlens is None and generator is None:
        # Keyword arguments cost the op call about a microsecond to bind.
        return torch.ops.droppath.forward(x, drop_prob, training, scale_by_keep)
    return torch.ops.droppath.forward(
        x, drop_prob, training, scale_by_keep,
        batch_dim=batch_dim, cu_seqlens=cu_seqlens, generator=generator,
    )


def add(
    residual: Tensor,
    branch: Tensor,
    drop_prob: float,
    training: bool,
    scale_by_keep: bool,
    batch_dim: int = 0,
    cu_seqlens: Optional[Tensor] = None,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    if not training or drop_prob == 0.0:
        if not torch.jit.is_scripting():
            _validation.check_add_args(residual, branch, drop_prob, batch_dim, cu_seqlens, generator)
        return residual + branch
    if not torch.jit.is_scripting():
        if cu_seqlens is not None:
            _validation.check_cu_seqlens_in_graph(branch, batch_dim, cu_seqlens)
        if _dtensor.draws_per_rank(branch):  # the draw and the sum apart, to sync the draw
            dtype = torch.promote_types(residual.dtype, branch.dtype)
            residual, branch = residual.to(dtype), branch.to(dtype)
            factors = sample_factors(branch, drop_prob, scale_by_keep, batch_dim, cu_seqlens, generator)
            return add_rows(residual, branch, factors, batch_dim, cu_seqlens)
    if batch_dim == 0 and cu_seqlens is None and generator is None:
        return torch.ops.droppath.add(residual, branch, drop_prob, training, scale_by_keep)
    return torch.ops.droppath.add(
        residual, branch, drop_prob, training, scale_by_keep,
        batch_dim=batch_dim, cu_seqlens=cu_seqlens, generator=generator,
    )
