"""Skip-compute residual: ``residual + drop_path(branch_fn(x))`` that runs
``branch_fn`` only on the samples it keeps.

A dropped sample's branch output is multiplied by zero, so computing it is
waste: at ``drop_prob=0.4`` a ViT block's attention and MLP run on ~60% of the
batch. The mask is the same per-sample Bernoulli draw as :func:`drop_path`
(same generator, same seed -> same mask), not a fixed-size subset.

Exactness condition: ``branch_fn`` must treat samples independently -- the
output for sample ``b`` depends only on input sample ``b``. Attention, MLPs,
LayerNorm, convolutions and layer scale do; BatchNorm in training mode (batch
statistics) does not, nor does anything that mixes samples.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

from . import functional
from ._validation import check_drop_prob, check_input


def _compiling() -> bool:
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and compiler.is_compiling())


def drop_path_residual(
    x: Tensor,
    branch_fn: Callable[[Tensor], Tensor],
    drop_prob: float = 0.0,
    training: bool = True,
    scale_by_keep: bool = True,
    *,
    residual: Optional[Tensor] = None,
    generator: Optional[torch.Generator] = None,
    skip_dropped: bool = True,
) -> Tensor:
    """``residual + drop_path(branch_fn(x), drop_prob, training, scale_by_keep)``,
    computing ``branch_fn`` only on the kept samples.

    Args:
        x: the branch input, batch first.
        branch_fn: the residual branch; must map a batch of samples to outputs
            of ``residual``'s shape, each sample independently (see module doc).
        drop_prob, training, scale_by_keep, generator: as :func:`drop_path`.
        residual: what the branch is added to (default ``x``); batch first,
            same batch size as ``x``.
        skip_dropped: False computes the branch on the whole batch and applies
            the mask with the fused op (the "masked" form). Under
            ``torch.compile`` the masked form is always used, because the kept
            count is data-dependent.

    Returns:
        A new tensor. In eval mode or at ``drop_prob == 0``: ``residual + branch_fn(x)``.
        When every sample is dropped the branch still runs, on an empty batch,
        so its parameters stay in the autograd graph (DistributedDataParallel
        needs every parameter to receive a gradient).
    """
    check_drop_prob(drop_prob)
    check_input(x, "x")
    res = x if residual is None else residual
    if res.shape[0] != x.shape[0]:
        raise ValueError(
            f"residual must have x's batch size {x.shape[0]}, got shape {tuple(res.shape)}"
        )
    if not training or drop_prob == 0.0:
        return res + branch_fn(x)
    if not skip_dropped or _compiling():
        res, branch = _aligned(res, branch_fn(x), x.shape[0])
        return functional.drop_path_add(
            res, branch, drop_prob, training, scale_by_keep, generator=generator
        )

    backend = functional._backend
    factors = backend.sample_factors(x, drop_prob, scale_by_keep, generator)
    kept = torch.nonzero(factors).squeeze(1)  # synchronises on CUDA: the count sets shapes
    n_kept = kept.numel()
    if n_kept == x.shape[0]:
        res, branch = _aligned(res, branch_fn(x), n_kept)
        return backend.add_rows(res, branch, factors)
    if n_kept == 0:
        # Run the branch on zero samples so its parameters get (zero) gradients.
        res, empty = _aligned(res, branch_fn(x[:0]), 0)
        return res + empty.sum() * 0
    keep_prob = 1.0 - drop_prob
    scale = 1.0 / keep_prob if scale_by_keep else 1.0
    res, branch = _aligned(res, branch_fn(x.index_select(0, kept)), n_kept)
    return torch.index_add(res, 0, kept, branch, alpha=scale)


def _aligned(res: Tensor, branch: Tensor, batch: int) -> tuple[Tensor, Tensor]:
    """Checks the branch output's shape (``batch`` samples shaped like the
    residual's) and brings both to their promoted dtype, as
    ``residual + drop_path(branch)`` would (e.g. a bfloat16 branch under
    autocast added to a float32 residual), on every path alike."""
    expected = (batch,) + tuple(res.shape[1:])
    if tuple(branch.shape) != expected:
        raise ValueError(
            f"branch_fn must return one output per sample shaped like the residual: "
            f"expected {expected}, got {tuple(branch.shape)}"
        )
    dtype = torch.promote_types(res.dtype, branch.dtype)
    return res.to(dtype), branch.to(dtype)
