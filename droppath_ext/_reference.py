"""The semantics in pure torch: the fallback backend and the tests' oracle.

Same functions, arguments and errors as ``_compiled``; everything here is
TorchScript-compatible so ``torch.jit.script(DropPath(...))`` works on this
path too. Arithmetic is done as the kernels do it: in float32 (float64 for
float64 inputs), rounded once to the input dtype; a dropped sample is exactly
zero (its branch is not used, so even a non-finite value there gives 0).
"""

from typing import List, Optional

import torch
from torch import Tensor

from ._validation import check_drop_prob, check_input, check_pair


def _math_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _per_sample(factors: Tensor, ndim: int) -> Tensor:
    shape: List[int] = [factors.shape[0]] + [1] * (ndim - 1)
    return factors.reshape(shape)


def sample_factors(
    x: Tensor, drop_prob: float, scale_by_keep: bool, generator: Optional[torch.Generator] = None
) -> Tensor:
    """One factor per sample of ``x``: 0 with probability ``drop_prob``, else 1/keep_prob (or 1)."""
    check_drop_prob(drop_prob)
    check_input(x, "x")
    keep_prob = 1.0 - drop_prob
    factors = torch.empty(x.shape[0], dtype=_math_dtype(x), device=x.device)
    factors.bernoulli_(keep_prob, generator=generator)
    if scale_by_keep and keep_prob > 0.0:
        factors.mul_(1.0 / keep_prob)
    return factors


def scale_rows(x: Tensor, factors: Tensor) -> Tensor:
    """``out[b] = x[b] * factors[b]``."""
    check_input(x, "x")
    f = _per_sample(factors.to(_math_dtype(x)), x.dim())
    # A 0-dim zero tensor, not the scalar 0.0: torch.where with a scalar
    # operand takes a slow unvectorised path (about 10x here).
    zero = torch.zeros((), dtype=f.dtype, device=x.device)
    return torch.where(f != 0, x.to(f.dtype) * f, zero).to(x.dtype)


def add_rows(residual: Tensor, branch: Tensor, factors: Tensor) -> Tensor:
    """``out[b] = residual[b] + branch[b] * factors[b]``."""
    check_pair(residual, branch)
    f = _per_sample(factors.to(_math_dtype(residual)), residual.dim())
    res = residual.to(f.dtype)
    return torch.where(f != 0, res + branch.to(f.dtype) * f, res).to(residual.dtype)


def forward(
    x: Tensor,
    drop_prob: float,
    training: bool,
    scale_by_keep: bool,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """timm's ``drop_path``; see :func:`droppath_ext.drop_path`."""
    check_drop_prob(drop_prob)
    check_input(x, "x")
    if not training or drop_prob == 0.0:
        return x
    return scale_rows(x, sample_factors(x, drop_prob, scale_by_keep, generator))


def add(
    residual: Tensor,
    branch: Tensor,
    drop_prob: float,
    training: bool,
    scale_by_keep: bool,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """``residual + drop_path(branch)``; see :func:`droppath_ext.drop_path_add`."""
    check_drop_prob(drop_prob)
    check_pair(residual, branch)
    if not training or drop_prob == 0.0:
        return residual + branch
    factors = sample_factors(branch, drop_prob, scale_by_keep, generator)
    return add_rows(residual, branch, factors)
