"""The compiled backend: the same functions as ``_reference``, calling ``torch.ops.droppath``."""

from typing import Optional

import torch
from torch import Tensor


def sample_factors(
    x: Tensor, drop_prob: float, scale_by_keep: bool, generator: Optional[torch.Generator] = None
) -> Tensor:
    return torch.ops.droppath._sample_factors(x, drop_prob, scale_by_keep, generator=generator)


def scale_rows(x: Tensor, factors: Tensor) -> Tensor:
    return torch.ops.droppath._scale_rows(x, factors)


def add_rows(residual: Tensor, branch: Tensor, factors: Tensor) -> Tensor:
    return torch.ops.droppath._add_rows(residual, branch, factors)


def forward(
    x: Tensor,
    drop_prob: float,
    training: bool,
    scale_by_keep: bool,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    return torch.ops.droppath.forward(x, drop_prob, training, scale_by_keep, generator=generator)


def add(
    residual: Tensor,
    branch: Tensor,
    drop_prob: float,
    training: bool,
    scale_by_keep: bool,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    return torch.ops.droppath.add(
        residual, branch, drop_prob, training, scale_by_keep, generator=generator
    )
