"""vmap rules for the deterministic ops (``torch.func.vmap``, ``jacrev``,
per-sample gradients), registered once when the compiled library loads.

A vmapped call becomes one call of the same kernel on the physical tensor:
with shared factors the vmap dim is one more dim around the samples; with
per-slice factors (``randomness="different"``) the vmap dim is folded into
the sample dim, so each slice keeps its own draws. Randomness itself needs no
rule here: the factors come from ATen's bernoulli_, whose own rules raise in
``randomness="error"`` and share or split the draws otherwise.
"""

from typing import Optional, Tuple

import torch
from torch import Tensor

from ._validation import normalize_batch_dim

_ops = torch.ops.droppath


def _front(t: Tensor, bdim: Optional[int], size: int) -> Tensor:
    """``t`` with its vmap dim first (expanded to ``size`` if it has none)."""
    if bdim is None:
        return t.unsqueeze(0).expand((size,) + tuple(t.shape))
    return t.movedim(bdim, 0)


def _fold(t: Tensor, dim: int) -> Tensor:
    """(V, ..., n at dim + 1, ...) -> (..., V * n at dim, ...)."""
    t = t.movedim(0, dim)
    return t.reshape(t.shape[:dim] + (-1,) + t.shape[dim + 2 :])


def _unfold(t: Tensor, dim: int, size: int) -> Tensor:
    t = t.reshape(t.shape[:dim] + (size, -1) + t.shape[dim + 1 :])
    return t.movedim(dim, 0)


def _dims(in_dims, tensors: int) -> tuple:
    """The vmap dims of the leading tensor arguments and of cu_seqlens (after batch_dim)."""
    in_dims = tuple(in_dims) + (None,) * (tensors + 2 - len(in_dims))
    return in_dims[:tensors] + (in_dims[tensors + 1],)


def _per_slice(fn, size: int, tensors, bdims) -> Tensor:
    """Slice by slice: for offsets or factors batched together with offsets."""
    outs = []
    for v in range(size):
        outs.append(fn(*[t if d is None else t.select(d, v) for t, d in zip(tensors, bdims)]))
    return torch.stack(outs)


def _scale_rows_vmap(info, in_dims, x, factors, batch_dim=0, cu_seqlens=None) -> Tuple[Tensor, int]:
    x_bdim, f_bdim, cu_bdim = _dims(in_dims, 2)
    size = info.batch_size
    ndim = x.dim() - (x_bdim is not None)
    dim = normalize_batch_dim(ndim, batch_dim)
    if cu_bdim is not None or (cu_seqlens is not None and f_bdim is not None):
        return _per_slice(
            lambda x_, f_, cu_: _ops._scale_rows(x_, f_, dim, cu_),
            size, (x, factors, cu_seqlens), (x_bdim, f_bdim, cu_bdim),
        ), 0
    x = _front(x, x_bdim, size)
    if f_bdim is None:
        return _ops._scale_rows(x, factors, dim + 1, cu_seqlens), 0
    out = _ops._scale_rows(_fold(x, dim), factors.movedim(f_bdim, 0).reshape(-1), dim)
    return _unfold(out, dim, size), 0


def _add_rows_vmap(info, in_dims, residual, branch, factors, batch_dim=0, cu_seqlens=None):
    r_bdim, b_bdim, f_bdim, cu_bdim = _dims(in_dims, 3)
    size = info.batch_size
    ndim = branch.dim() - (b_bdim is not None)
    dim = normalize_batch_dim(ndim, batch_dim)
    if cu_bdim is not None or (cu_seqlens is not None and f_bdim is not None):
        return _per_slice(
            lambda r_, b_, f_, cu_: _ops._add_rows(r_, b_, f_, dim, cu_),
            size, (residual, branch, factors, cu_seqlens), (r_bdim, b_bdim, f_bdim, cu_bdim),
        ), 0
    residual, branch = _front(residual, r_bdim, size), _front(branch, b_bdim, size)
    if f_bdim is None:
        return _ops._add_rows(residual, branch, factors, dim + 1, cu_seqlens), 0
    out = _ops._add_rows(
        _fold(residual, dim), _fold(branch, dim), factors.movedim(f_bdim, 0).reshape(-1), dim
    )
    return _unfold(out, dim, size), 0


def register() -> None:
    torch.library.register_vmap("droppath::_scale_rows", _scale_rows_vmap)
    torch.library.register_vmap("droppath::_add_rows", _add_rows_vmap)
