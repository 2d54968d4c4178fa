"""The Python half of the compiled library's ops.

The compiled library (``_C``, built on the LibTorch stable ABI so that one
build loads in every torch from 2.11 on) defines the deterministic ops and
their CPU/CUDA kernels. What the stable ABI cannot carry is registered here,
once, when the library loads:

- the three ops that draw (``forward``, ``add``, ``_sample_factors``): their
  schemas (``_sample_factors`` tagged ``nondeterministic_seeded``) and their
  composite kernels, which check the arguments, draw with ATen's
  ``bernoulli_`` (``_reference.draw_factors``, the fallback's own draw) and
  call the deterministic ops; also registered for vmap's decomposition key, so
  a vmapped call sees ``bernoulli_`` and the deterministic ops' vmap rules
  (``_vmap.py``) instead of running slice by slice;
- autograd and forward-mode AD of the deterministic ops: an Autograd kernel
  per op that checks the arguments (raising ValueError/TypeError/IndexError,
  as the fallback does; the kernels' own checks reach Python as RuntimeError)
  and runs an ``autograd.Function`` with ``backward`` and ``jvp`` (double
  backward and forward AD work as for ATen's own ops); inside a ``torch.func``
  transform (grad, vjp, jvp, jacrev, vmap) the ops run as their pure-PyTorch
  form, which the transforms handle as ATen's own ops. Only the factors (and
  row maps) are saved; the input only when the factors need a gradient;
- fake kernels, for FakeTensor, ``torch.compile`` and ``torch.export``, with
  the real kernels' exact output strides (``csrc/layout.h``'s rules).

The C++ package (CMakeLists.txt) registers the same things in C++ with the
full ABI (``csrc/libtorch``), for libtorch programs with no Python.
"""

from __future__ import annotations

import weakref
from typing import Optional

import torch
from torch import Tensor
from torch._prims_common import (
    is_contiguous_for_memory_format_or_false,
    is_non_overlapping_and_dense_or_false,
)

from . import _reference, _tracing, _validation

_ops = torch.ops.droppath

# The drawing ops' schemas: the C++ package defines the same strings
# (csrc/libtorch/ops.cpp; tests/test_cpp.py compares them).
SCHEMAS = {
    "forward": (
        "forward(Tensor x, float drop_prob=0., bool training=False, bool scale_by_keep=True, *, "
        "int batch_dim=0, Tensor? cu_seqlens=None, Generator? generator=None) -> Tensor"
    ),
    "add": (
        "add(Tensor residual, Tensor branch, float drop_prob=0., bool training=False, "
        "bool scale_by_keep=True, *, int batch_dim=0, Tensor? cu_seqlens=None, "
        "Generator? generator=None) -> Tensor"
    ),
    "_sample_factors": (
        "_sample_factors(Tensor x, float drop_prob, bool scale_by_keep, int batch_dim=0, "
        "Tensor? cu_seqlens=None, *, Generator? generator=None) -> Tensor"
    ),
}


# ---- the drawing ops ------------------------------------------------------------------


def _sample_factors(x, drop_prob, scale_by_keep, batch_dim=0, cu_seqlens=None, *, generator=None):
    dim = _validation.check_draw_args(x, drop_prob, batch_dim, cu_seqlens, generator)
    return _reference.draw_factors(x, drop_prob, scale_by_keep, dim, cu_seqlens, generator)


def _forward(x, drop_prob=0.0, training=False, scale_by_keep=True, *, batch_dim=0, cu_seqlens=None,
             generator=None):
    dim = _validation.check_draw_args(x, drop_prob, batch_dim, cu_seqlens, generator)
    if not training or drop_prob == 0.0:
        # A copy: the schema promises a new tensor, and an alias would let
        # functionalization drop an in-place update made through it. (The
        # package's functions return x itself without calling the op.)
        return x.clone()
    _check_offsets(cu_seqlens, x.shape[dim])
    factors = _reference.draw_factors(x, drop_prob, scale_by_keep, dim, cu_seqlens, generator)
    return _ops._scale_rows.default(x, factors, dim, cu_seqlens)


def _add(residual, branch, drop_prob=0.0, training=False, scale_by_keep=True, *, batch_dim=0,
         cu_seqlens=None, generator=None):
    dim = _validation.check_add_args(residual, branch, drop_prob, batch_dim, cu_seqlens, generator)
    if not training or drop_prob == 0.0:
        return residual + branch
    # Mixed dtypes promote, as residual + drop_path(branch) does.
    dtype = torch.promote_types(residual.dtype, branch.dtype)
    branch = branch.to(dtype)
    _check_offsets(cu_seqlens, branch.shape[dim])
    factors = _reference.draw_factors(branch, drop_prob, scale_by_keep, dim, cu_seqlens, generator)
    return _ops._add_rows.default(residual.to(dtype), branch, factors, dim, cu_seqlens)


# ---- checks made before the kernels ---------------------------------------------------

# The last offsets tensor whose values passed, by identity, version and
# length: a CUDA tensor is read on the host (one synchronisation) once per
# version, not at every op of a model that passes the same offsets to each block.
# Where values cannot be read (tracing, fake tensors, CUDA graph capture)
# they are not: a compiled graph asserts them itself (_compiled.py), and the
# kernels stay in bounds whatever the values.
_checked_offsets: tuple = (None, -1, -1)


def _check_offsets(cu_seqlens: Optional[Tensor], length: int) -> None:
    global _checked_offsets
    if cu_seqlens is None:
        return
    cu_seqlens = _tracing.readable(cu_seqlens)
    if cu_seqlens is None:
        return
    ref, version, checked_length = _checked_offsets
    cacheable = not cu_seqlens.is_inference()
    if cacheable and ref is not None and ref() is cu_seqlens and version == cu_seqlens._version \
            and checked_length == length:
        return
    _validation.check_offsets(cu_seqlens.tolist(), length)
    if cacheable:
        _checked_offsets = (weakref.ref(cu_seqlens), cu_seqlens._version, length)


# ---- autograd and forward AD -----------------------------------------------------------


def _differentiable(*tensors: Optional[Tensor]) -> bool:
    """Whether the call must go through its autograd.Function: something
    requires grad, or a forward-AD level is open."""
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        return True
    return torch.autograd.forward_ad._current_level >= 0


def _in_transform() -> bool:
    """Inside a torch.func transform (grad, vjp, jvp, jacrev, jacfwd, vmap).

    There the ops run as their pure-PyTorch form (``_reference``: the same
    arithmetic, bit for bit), which every transform differentiates and batches
    as ATen's own ops. An ``autograd.Function`` cannot serve here: applied from
    an op's Autograd kernel, below the transforms, functorch refuses it."""
    return torch._C._are_functorch_transforms_active()


def _below_autograd(op, *args):
    with torch._C._AutoDispatchBelowAutograd():
        return op(*args)


def _grad_of_factors(grad: Tensor, x: Tensor, factors: Tensor, dim: int,
                     cu_seqlens: Optional[Tensor]) -> Tensor:
    """d(out)/d(factors[s]) = the sum over sample s of grad * x."""
    math = torch.float64 if x.dtype == torch.float64 else torch.float32
    product = grad.to(math) * x.to(math)
    other = [d for d in range(product.dim()) if d != dim]
    per_index = product.sum(other) if other else product
    if cu_seqlens is not None:  # segment s holds the indices t with cu[s] <= t < cu[s + 1]
        segment = _reference.segment_of_index(cu_seqlens, per_index.shape[0])
        per_index = per_index.new_zeros(cu_seqlens.shape[0] - 1).index_add_(0, segment, per_index)
    return per_index.to(factors.dtype)


def _add_tangents(a: Optional[Tensor], b: Optional[Tensor]) -> Optional[Tensor]:
    return b if a is None else a if b is None else a + b


# The Functions below are old-style (forward takes ctx): they are applied from
# the ops' Autograd kernels only, never inside a torch.func transform (see
# _in_transform), and an old-style apply skips binding arguments through
# inspect.signature, ~18 us a call.


def _in_backward(op, *args):
    """An op called by a backward: its kernel directly, unless the backward is
    itself differentiated (create_graph=True), then the op with its autograd."""
    if torch.is_grad_enabled():
        return op(*args)
    return _below_autograd(op, *args)


def _scale(grad: Tensor, factors: Tensor, dim: int, cu_seqlens: Optional[Tensor]) -> Tensor:
    return _in_backward(_ops._scale_rows.default, grad, factors, dim, cu_seqlens)


def _save_for_forward(ctx, *tensors: Optional[Tensor]) -> None:
    """Tensors for jvp, which runs only where a forward-AD level is open."""
    if torch.autograd.forward_ad._current_level >= 0:
        ctx.save_for_forward(*tensors)


class _ScaleRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, factors, dim, cu_seqlens):
        ctx.dim = dim
        ctx.save_for_backward(factors, x if factors.requires_grad else None, cu_seqlens)
        _save_for_forward(ctx, x, factors, cu_seqlens)
        return _below_autograd(_ops._scale_rows.default, x, factors, dim, cu_seqlens)

    @staticmethod
    def backward(ctx, grad):
        factors, x, cu_seqlens = ctx.saved_tensors
        grad_x = grad_factors = None
        if ctx.needs_input_grad[0]:
            grad_x = _scale(grad, factors, ctx.dim, cu_seqlens)
        if ctx.needs_input_grad[1]:
            grad_factors = _grad_of_factors(grad, x, factors, ctx.dim, cu_seqlens)
        return grad_x, grad_factors, None, None

    @staticmethod
    def jvp(ctx, x_t, factors_t, _dim_t, _cu_t):
        x, factors, cu_seqlens = ctx.saved_tensors
        out = None if x_t is None else _ops._scale_rows(x_t, factors, ctx.dim, cu_seqlens)
        if factors_t is not None:
            out = _add_tangents(out, _ops._scale_rows(x, factors_t, ctx.dim, cu_seqlens))
        return out


class _AddRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, residual, branch, factors, dim, cu_seqlens):
        ctx.dim = dim
        ctx.save_for_backward(factors, branch if factors.requires_grad else None, cu_seqlens)
        _save_for_forward(ctx, branch, factors, cu_seqlens)
        return _below_autograd(_ops._add_rows.default, residual, branch, factors, dim, cu_seqlens)

    @staticmethod
    def backward(ctx, grad):
        factors, branch, cu_seqlens = ctx.saved_tensors
        grad_residual = grad if ctx.needs_input_grad[0] else None  # no copy
        grad_branch = grad_factors = None
        if ctx.needs_input_grad[1]:
            grad_branch = _scale(grad, factors, ctx.dim, cu_seqlens)
        if ctx.needs_input_grad[2]:
            grad_factors = _grad_of_factors(grad, branch, factors, ctx.dim, cu_seqlens)
        return grad_residual, grad_branch, grad_factors, None, None

    @staticmethod
    def jvp(ctx, residual_t, branch_t, factors_t, _dim_t, _cu_t):
        branch, factors, cu_seqlens = ctx.saved_tensors
        if branch_t is not None:
            out = (_ops._scale_rows(branch_t, factors, ctx.dim, cu_seqlens) if residual_t is None
                   else _ops._add_rows(residual_t, branch_t, factors, ctx.dim, cu_seqlens))
        else:
            out = None if residual_t is None else residual_t.clone()
        if factors_t is not None:
            out = _add_tangents(out, _ops._scale_rows(branch, factors_t, ctx.dim, cu_seqlens))
        return out


class _TakeRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, rows, inverse_rows, factors, dim):
        ctx.dim = dim
        ctx.save_for_backward(rows, inverse_rows, factors)
        _save_for_forward(ctx, rows, inverse_rows, factors)
        return _below_autograd(_ops._take_rows.default, x, rows, inverse_rows, factors, dim)

    @staticmethod
    def backward(ctx, grad):
        rows, inverse_rows, factors = ctx.saved_tensors
        grad_x = None
        if ctx.needs_input_grad[0]:  # back through the inverse map, then the factors
            grad_x = _in_backward(_ops._take_rows.default, grad, inverse_rows, rows, None, ctx.dim)
            if factors is not None:
                grad_x = _scale(grad_x, factors, ctx.dim, None)
        return grad_x, None, None, None, None

    @staticmethod
    def jvp(ctx, x_t, *_):
        rows, inverse_rows, factors = ctx.saved_tensors
        return _ops._take_rows(x_t, rows, inverse_rows, factors, ctx.dim)


class _AddTakenRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, residual, branch, factors, rows, inverse_rows, dim):
        ctx.dim = dim
        ctx.save_for_backward(factors, rows, inverse_rows)
        _save_for_forward(ctx, factors, rows, inverse_rows)
        return _below_autograd(_ops._add_taken_rows.default, residual, branch, factors, rows,
                               inverse_rows, dim)

    @staticmethod
    def backward(ctx, grad):
        factors, rows, inverse_rows = ctx.saved_tensors
        grad_residual = grad if ctx.needs_input_grad[0] else None
        grad_branch = None
        if ctx.needs_input_grad[1]:
            # branch row j came from residual row inverse_rows[j]: gather those
            # rows of the gradient, each scaled by its factor, in one pass.
            grad_branch = _in_backward(_ops._take_rows.default, grad, inverse_rows, rows, factors, ctx.dim)
        return grad_residual, grad_branch, None, None, None, None

    @staticmethod
    def jvp(ctx, residual_t, branch_t, *_):
        factors, rows, inverse_rows = ctx.saved_tensors
        if branch_t is None:
            return residual_t.clone()
        if residual_t is None:
            residual_t = branch_t.new_zeros(_taken_shape(branch_t, ctx.dim, rows.shape[0]))
        return _ops._add_taken_rows(residual_t, branch_t, factors, rows, inverse_rows, ctx.dim)


def _taken_shape(x: Tensor, dim: int, rows) -> list:
    """x's shape with ``rows`` along ``dim`` (rows may be symbolic under torch.compile)."""
    shape = list(x.shape)
    shape[dim] = rows
    return shape


def _not_differentiable(t: Optional[Tensor], op: str, name: str) -> None:
    if t is not None and t.requires_grad:
        raise RuntimeError(f"droppath::{op} is not differentiable with respect to {name} (it holds the "
                           f"sampled factors): detach it first")


def _scale_rows_autograd(x, factors, batch_dim=0, cu_seqlens=None):
    dim = _validation.check_scale_rows_args(x, factors, batch_dim, cu_seqlens)
    _check_offsets(cu_seqlens, x.shape[dim])
    if _in_transform():
        return _reference._scale(x, factors, dim, cu_seqlens)
    if _differentiable(x, factors):
        return _ScaleRows.apply(x, factors, dim, cu_seqlens)
    return _below_autograd(_ops._scale_rows.default, x, factors, dim, cu_seqlens)


def _add_rows_autograd(residual, branch, factors, batch_dim=0, cu_seqlens=None):
    dim = _validation.check_add_rows_args(residual, branch, factors, batch_dim, cu_seqlens)
    _check_offsets(cu_seqlens, branch.shape[dim])
    if _in_transform():
        return _reference._add(residual, branch, factors, dim, cu_seqlens)
    if _differentiable(residual, branch, factors):
        return _AddRows.apply(residual, branch, factors, dim, cu_seqlens)
    return _below_autograd(_ops._add_rows.default, residual, branch, factors, dim, cu_seqlens)


def _take_rows_autograd(x, rows, inverse_rows, factors=None, batch_dim=0):
    dim = _validation.check_take_rows_args(x, rows, inverse_rows, factors, batch_dim)
    _not_differentiable(factors, "_take_rows", "factors")
    if _in_transform():
        return _reference.take_rows(x, rows, inverse_rows, factors, dim).contiguous(
            memory_format=_own_memory_format(x))
    if _differentiable(x):
        return _TakeRows.apply(x, rows, inverse_rows, factors, dim)
    return _below_autograd(_ops._take_rows.default, x, rows, inverse_rows, factors, dim)


def _add_taken_rows_autograd(residual, branch, factors, rows, inverse_rows, batch_dim=0):
    dim = _validation.check_add_taken_rows_args(residual, branch, factors, rows, inverse_rows, batch_dim)
    _not_differentiable(factors, "_add_taken_rows", "factors")
    if _in_transform():
        return _reference.add_taken_rows(residual, branch, factors, rows, inverse_rows, dim).contiguous(
            memory_format=_own_memory_format(residual))
    if _differentiable(residual, branch):
        return _AddTakenRows.apply(residual, branch, factors, rows, inverse_rows, dim)
    return _below_autograd(_ops._add_taken_rows.default, residual, branch, factors, rows, inverse_rows, dim)


# ---- fake kernels (csrc/layout.h's rules) ------------------------------------------------


def _dense(x: Tensor) -> Tensor:
    """Any non-overlapping, dense layout as it is; anything else contiguous."""
    return x if is_non_overlapping_and_dense_or_false(x) else x.contiguous()


def _same_dense_layout(a: Tensor, b: Tensor) -> bool:
    if not (is_non_overlapping_and_dense_or_false(a) and is_non_overlapping_and_dense_or_false(b)):
        return False
    return all(a.shape[d] == 1 or a.stride(d) == b.stride(d) for d in range(a.dim()))


def _own_memory_format(x: Tensor) -> torch.memory_format:
    """The format a row-gathering op works in: x's own, if one of the three, else contiguous.
    (The "_or_false" queries: skip mode's branch has a data-dependent number of
    rows under torch.compile, whose layout must not be guarded on.)"""
    if is_contiguous_for_memory_format_or_false(x, memory_format=torch.contiguous_format):
        return torch.contiguous_format
    for fmt, ndim in ((torch.channels_last, 4), (torch.channels_last_3d, 5)):
        if x.dim() == ndim and is_contiguous_for_memory_format_or_false(x, memory_format=fmt):
            return fmt
    return torch.contiguous_format


def _empty_with_rows(x: Tensor, dim: int, rows, fmt: torch.memory_format) -> Tensor:
    return torch.empty(_taken_shape(x, dim, rows), dtype=x.dtype, device=x.device, memory_format=fmt)


def _scale_rows_fake(x, factors, batch_dim=0, cu_seqlens=None):
    _validation.check_scale_rows_args(x, factors, batch_dim, cu_seqlens)
    dense = _dense(x)
    return torch.empty_strided(dense.shape, dense.stride(), dtype=x.dtype, device=x.device)


def _add_rows_fake(residual, branch, factors, batch_dim=0, cu_seqlens=None):
    _validation.check_add_rows_args(residual, branch, factors, batch_dim, cu_seqlens)
    # The kernel's layout: both operands as they are, or both made contiguous
    # (contiguous() keeps a tensor ATen already calls contiguous, strides and all).
    layout = residual if _same_dense_layout(residual, branch) else residual.contiguous()
    return torch.empty_strided(layout.shape, layout.stride(), dtype=residual.dtype, device=residual.device)


def _take_rows_fake(x, rows, inverse_rows, factors=None, batch_dim=0):
    dim = _validation.check_take_rows_args(x, rows, inverse_rows, factors, batch_dim)
    return _empty_with_rows(x, dim, rows.shape[0], _own_memory_format(x))


def _add_taken_rows_fake(residual, branch, factors, rows, inverse_rows, batch_dim=0):
    dim = _validation.check_add_taken_rows_args(residual, branch, factors, rows, inverse_rows, batch_dim)
    return _empty_with_rows(residual, dim, residual.shape[dim], _own_memory_format(residual))


# ---- registration --------------------------------------------------------------------------

_LIB: Optional[torch.library.Library] = None


def register() -> None:
    """Registers everything above into the ``droppath`` namespace the compiled
    library defined (once per process)."""
    global _LIB
    if _LIB is not None:
        return
    lib = torch.library.Library("droppath", "FRAGMENT")
    tags = {"_sample_factors": (torch.Tag.nondeterministic_seeded,)}
    for name, schema in SCHEMAS.items():
        lib.define(schema, tags=tags.get(name, ()))
    for name, kernel in (("forward", _forward), ("add", _add), ("_sample_factors", _sample_factors)):
        lib.impl(name, kernel, "CompositeImplicitAutograd")
        # vmap dispatches to FuncTorchBatched, which a composite kernel does not
        # cover: decomposed, vmap sees bernoulli_ and the deterministic ops.
        lib.impl(name, kernel, "FuncTorchBatchedDecomposition")
    for name, kernel in (
        ("_scale_rows", _scale_rows_autograd),
        ("_add_rows", _add_rows_autograd),
        ("_take_rows", _take_rows_autograd),
        ("_add_taken_rows", _add_taken_rows_autograd),
    ):
        lib.impl(name, kernel, "Autograd")
    for name, kernel in (
        ("_scale_rows", _scale_rows_fake),
        ("_add_rows", _add_rows_fake),
        ("_take_rows", _take_rows_fake),
        ("_add_taken_rows", _add_taken_rows_fake),
    ):
        torch.library.register_fake(f"droppath::{name}", kernel, lib=lib)
    _LIB = lib


def register_cuda_fallback() -> None:
    """The deterministic ops' pure-PyTorch form (``_reference``) as their CUDA
    kernels, for a CUDA build of torch the CUDA library does not serve (built
    without it, or for another CUDA major): slower, never wrong."""
    lib = torch.library.Library("droppath", "IMPL")
    lib.impl("_scale_rows", _reference.scale_rows, "CUDA")
    lib.impl("_add_rows", _reference.add_rows, "CUDA")
    lib.impl("_take_rows", _reference.take_rows, "CUDA")
    lib.impl("_add_taken_rows", _reference.add_taken_rows, "CUDA")
    _CUDA_FALLBACK.append(lib)


_CUDA_FALLBACK: list = []
