"""The semantics in pure torch: the fallback backend, the tests' oracle, and
(the unchecked ``_scale`` / ``_add``) the pointwise form Inductor compiles.

Same functions, arguments and errors as ``_compiled``; everything here is
TorchScript-compatible so ``torch.jit.script(DropPath(...))`` works on this
path too. Factors are drawn exactly as the compiled op draws them (and as
timm does): ``new_empty(n).bernoulli_(keep_prob).div_(keep_prob)`` in the
math dtype. Arithmetic is done as the kernels do it: in float32 (float64 for
float64 inputs), rounded once to the input dtype; a dropped sample is exactly
zero (its branch is not used, so even a non-finite value there gives 0).

A sample is one index along ``batch_dim``, or with ``cu_seqlens`` (n + 1
offsets along ``batch_dim``) one segment of a packed batch.

Under torch.fx symbolic tracing (and for any tensor type that overrides
``__torch_function__``) the entry points below are one graph node each, as
``torch.nn.functional``'s functions are: their Python control flow looks at
dtypes, shapes and devices, which a proxy does not have.
"""

from typing import List, Optional

import torch
from torch import Tensor
from torch.overrides import handle_torch_function, has_torch_function

from . import _dtensor

from ._validation import (
    check_add_args,
    check_cu_seqlens,
    check_cu_seqlens_values,
    check_draw_args,
    check_input,
    check_pair,
    dim_of,
    normalize_batch_dim,
    shapes_differ,
)

def _math_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _along(values: Tensor, dim: int, ndim: int) -> Tensor:
    """A 1-D tensor shaped to broadcast along ``dim`` of an ``ndim``-dim tensor."""
    shape: List[int] = [1] * ndim
    shape[dim] = values.shape[0]
    return values.reshape(shape)


def _index_factors(factors: Tensor, length: int, cu_seqlens: Optional[Tensor]) -> Tensor:
    """One factor per index along the batch dim: each segment's factor over its
    range. Index t belongs to the first segment s with cu_seqlens[s + 1] > t,
    found by a search that stays in bounds whatever the offsets (under
    torch.compile they are not checked before this runs)."""
    if cu_seqlens is None:
        return factors
    if factors.shape[0] == 0:
        return factors.new_zeros([length])
    return factors[segment_of_index(cu_seqlens, length).clamp(max=factors.shape[0] - 1)]


def segment_of_index(cu_seqlens: Tensor, length: int) -> Tensor:
    """For each index t along the batch dim, the first segment s with
    cu_seqlens[s + 1] > t (the one holding t when the offsets are valid)."""
    index = torch.arange(length, device=cu_seqlens.device, dtype=cu_seqlens.dtype)
    return torch.searchsorted(cu_seqlens[1:], index, right=True)


def _scale(x: Tensor, factors: Tensor, dim: int, cu_seqlens: Optional[Tensor]) -> Tensor:
    f = _index_factors(factors.to(_math_dtype(x)), x.shape[dim], cu_seqlens)
    f = _along(f, dim, x.dim())
    # A 0-dim zero tensor, not the scalar 0.0: torch.where with a scalar
    # operand takes a slow unvectorised path (about 10x here).
    zero = torch.zeros((), dtype=f.dtype, device=x.device)
    return torch.where(f != 0, x.to(f.dtype) * f, zero).to(x.dtype)


def _add(
    residual: Tensor, branch: Tensor, factors: Tensor, dim: int, cu_seqlens: Optional[Tensor]
) -> Tensor:
    f = _index_factors(factors.to(_math_dtype(residual)), residual.shape[dim], cu_seqlens)
    f = _along(f, dim, residual.dim())
    res = residual.to(f.dtype)
    return torch.where(f != 0, res + branch.to(f.dtype) * f, res).to(residual.dtype)


def _check_factors(factors: Tensor, samples: int) -> None:
    if factors.dim() != 1:
        raise ValueError(f"factors must be 1-D (one value per sample), got shape {list(factors.shape)}")
    if shapes_differ([factors.shape[0]], [samples]):
        raise ValueError(
            f"factors must have one value per sample: the input has {samples} samples, "
            f"factors has {factors.shape[0]}"
        )


def _check_rows(rows: Tensor, name: str, length: int) -> None:
    if rows.dim() != 1 or rows.dtype != torch.int64:
        raise TypeError(f"{name} must be a 1-D torch.int64 tensor, got {rows.dtype} of shape {list(rows.shape)}")
    if length >= 0 and rows.shape[0] != length:
        raise ValueError(f"{name} must have {length} entries, got {rows.shape[0]}")


def _samples(x: Tensor, dim: int, cu_seqlens: Optional[Tensor]) -> int:
    return cu_seqlens.shape[0] - 1 if cu_seqlens is not None else x.shape[dim]


def _checked_dim(x: Tensor, batch_dim: int, cu_seqlens: Optional[Tensor]) -> int:
    dim = dim_of(x, batch_dim)
    check_cu_seqlens(x, cu_seqlens)
    return dim


def _draw_source(x: Tensor, cu_seqlens: Optional[Tensor]) -> Tensor:
    """The tensor the draw is created from: x, which vmap batches when x is
    batched; under vmap with per-slice offsets but one shared x, the offsets,
    so that randomness="different" draws per slice (as the compiled op does)."""
    if not torch.jit.is_scripting():
        if cu_seqlens is not None:
            batched = torch._C._functorch.is_batchedtensor
            if batched(cu_seqlens) and not batched(x):
                return cu_seqlens
    return x


def sample_factors(
    x: Tensor,
    drop_prob: float,
    scale_by_keep: bool,
    batch_dim: int = 0,
    cu_seqlens: Optional[Tensor] = None,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """One factor per sample of ``x``: 0 with probability ``drop_prob``, else 1/keep_prob (or 1)."""
    if not torch.jit.is_scripting():
        if has_torch_function((x, cu_seqlens)):
            return handle_torch_function(sample_factors, (x, cu_seqlens), x, drop_prob, scale_by_keep,
                                         batch_dim, cu_seqlens, generator)
    dim = check_draw_args(x, drop_prob, batch_dim, cu_seqlens, generator)
    factors = draw_factors(x, drop_prob, scale_by_keep, dim, cu_seqlens, generator)
    if not torch.jit.is_scripting():
        if _dtensor.draws_per_rank(x):
            factors = _dtensor.synced(factors)
    return factors


def draw_factors(
    x: Tensor,
    drop_prob: float,
    scale_by_keep: bool,
    dim: int,
    cu_seqlens: Optional[Tensor],
    generator: Optional[torch.Generator],
) -> Tensor:
    """The draw itself, arguments checked: also the compiled library's
    ``_sample_factors`` (``_ops.py``), so both backends draw alike."""
    keep_prob = 1.0 - drop_prob
    math = _math_dtype(x)
    draw = math
    # float32 rounds 1 - p to exactly 1.0 for p <= 2**-25: such a draw is made
    # in float64 on CUDA, where bernoulli_ compares in the tensor's precision.
    if x.is_cuda and math != torch.float64 and keep_prob < 1.0 and drop_prob <= 2.0**-25:
        draw = torch.float64
    factors = _draw_source(x, cu_seqlens).new_empty([_samples(x, dim, cu_seqlens)], dtype=draw, device=x.device)
    factors.bernoulli_(keep_prob, generator=generator)
    if scale_by_keep and keep_prob > 0.0:
        factors.div_(keep_prob)
    return factors.to(math)


def scale_rows(
    x: Tensor, factors: Tensor, batch_dim: int = 0, cu_seqlens: Optional[Tensor] = None
) -> Tensor:
    """Each sample of ``x`` multiplied by its factor (exactly 0 where the factor is 0)."""
    if not torch.jit.is_scripting():
        if has_torch_function((x, factors, cu_seqlens)):
            return handle_torch_function(scale_rows, (x, factors, cu_seqlens), x, factors, batch_dim, cu_seqlens)
    check_input(x, "x")
    dim = _checked_dim(x, batch_dim, cu_seqlens)
    _check_factors(factors, _samples(x, dim, cu_seqlens))
    if cu_seqlens is not None:
        check_cu_seqlens_values(cu_seqlens, x.shape[dim])
    return _scale(x, factors, dim, cu_seqlens)


def add_rows(
    residual: Tensor,
    branch: Tensor,
    factors: Tensor,
    batch_dim: int = 0,
    cu_seqlens: Optional[Tensor] = None,
) -> Tensor:
    """``residual + scale_rows(branch, factors)``, the branch unused where a factor is 0."""
    check_pair(residual, branch)
    dim = _checked_dim(branch, batch_dim, cu_seqlens)
    _check_factors(factors, _samples(branch, dim, cu_seqlens))
    if cu_seqlens is not None:
        check_cu_seqlens_values(cu_seqlens, branch.shape[dim])
    return _add(residual, branch, factors, dim, cu_seqlens)


def take_rows(
    x: Tensor,
    rows: Tensor,
    inverse_rows: Tensor,
    factors: Optional[Tensor] = None,
    batch_dim: int = 0,
) -> Tensor:
    """The rows of ``x`` that ``rows`` names (zeros for -1), times their factors if given."""
    check_input(x, "x")
    dim = normalize_batch_dim(x.dim(), batch_dim)
    count = x.shape[dim]
    _check_rows(rows, "rows", -1)
    _check_rows(inverse_rows, "inverse_rows", count)
    if factors is not None:
        _check_factors(factors, count)
    if count == 0:
        shape: List[int] = list(x.shape)
        shape[dim] = rows.shape[0]
        return torch.zeros(shape, dtype=x.dtype, device=x.device)
    return _take(x, rows, factors, dim)


def _take(x: Tensor, rows: Tensor, factors: Optional[Tensor], dim: int) -> Tensor:
    """take_rows' arithmetic, unchecked (also Inductor's form of the op);
    ``x`` has at least one row."""
    valid = (rows >= 0) & (rows < x.shape[dim])
    safe = torch.where(valid, rows, torch.zeros_like(rows))
    scale = valid.to(_math_dtype(x))
    if factors is not None:
        scale = scale * factors.to(scale.dtype).index_select(0, safe)
    return _scale(x.index_select(dim, safe), scale, dim, None)


def add_taken_rows(
    residual: Tensor,
    branch: Tensor,
    factors: Tensor,
    rows: Tensor,
    inverse_rows: Tensor,
    batch_dim: int = 0,
) -> Tensor:
    """``residual`` plus, at each row ``b`` with ``rows[b] >= 0``, ``branch[rows[b]] * factors[b]``."""
    check_input(residual, "residual")
    check_input(branch, "branch")
    dim = normalize_batch_dim(residual.dim(), batch_dim)
    count = branch.shape[dim]
    _check_factors(factors, residual.shape[dim])
    _check_rows(rows, "rows", residual.shape[dim])
    _check_rows(inverse_rows, "inverse_rows", count)
    # Under torch.compile the count is data-dependent (skip mode's rows) and
    # must not be branched on; skip mode computes at least one row there.
    if not _compiling() and count == 0:
        return residual.clone()
    return _add_taken(residual, branch, factors, rows, dim)


def _add_taken(residual: Tensor, branch: Tensor, factors: Tensor, rows: Tensor, dim: int) -> Tensor:
    """add_taken_rows' arithmetic, unchecked (also Inductor's form of the op);
    ``branch`` has at least one row."""
    valid = (rows >= 0) & (rows < branch.shape[dim])
    f = torch.where(valid, factors.to(_math_dtype(residual)), torch.zeros((), device=factors.device))
    gathered = branch.index_select(dim, torch.where(valid, rows, torch.zeros_like(rows)))
    return _add(residual, gathered, f, dim, None)


def _compiling() -> bool:
    if torch.jit.is_scripting():
        return False
    else:
        return torch.compiler.is_compiling()


def forward(
    x: Tensor,
    drop_prob: float,
    training: bool,
    scale_by_keep: bool,
    batch_dim: int = 0,
    cu_seqlens: Optional[Tensor] = None,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """timm's ``drop_path``; see ``droppath_ext.drop_path``."""
    if not torch.jit.is_scripting():
        if training and drop_prob != 0.0 and has_torch_function((x, cu_seqlens)):
            return handle_torch_function(forward, (x, cu_seqlens), x, drop_prob, training, scale_by_keep,
                                         batch_dim, cu_seqlens, generator)
    dim = check_draw_args(x, drop_prob, batch_dim, cu_seqlens, generator)
    if not training or drop_prob == 0.0:
        return x
    factors = sample_factors(x, drop_prob, scale_by_keep, dim, cu_seqlens, generator)
    return scale_rows(x, factors, dim, cu_seqlens)


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
    """``residual + drop_path(branch)``; see ``droppath_ext.drop_path_add``.
    Mixed dtypes promote, as that sum does."""
    if not torch.jit.is_scripting():
        if training and drop_prob != 0.0 and has_torch_function((residual, branch, cu_seqlens)):
            return handle_torch_function(add, (residual, branch, cu_seqlens), residual, branch, drop_prob,
                                         training, scale_by_keep, batch_dim, cu_seqlens, generator)
    dim = check_add_args(residual, branch, drop_prob, batch_dim, cu_seqlens, generator)
    if not training or drop_prob == 0.0:
        return residual + branch
    dtype = torch.promote_types(residual.dtype, branch.dtype)
    residual, branch = residual.to(dtype), branch.to(dtype)
    factors = sample_factors(branch, drop_prob, scale_by_keep, dim, cu_seqlens, generator)
    return add_rows(residual, branch, factors, dim, cu_seqlens)
