"""Skip-compute residual: ``residual + drop_path(branch_fn(x))`` that runs
``branch_fn`` only on the samples it keeps.

A dropped sample's branch output is multiplied by zero, so computing it is
waste: at ``drop_prob=0.4`` a ViT block's attention and MLP run on ~60% of the
batch. The mask is the same per-sample Bernoulli draw as [`drop_path`][droppath_ext.drop_path],
not a fixed-size subset, and the result equals the masked form
``residual + drop_path(branch_fn(x))`` for that mask, in every dtype.

How (skip mode): the mask is drawn on the host, so the kept count is known
without waiting for the device (under ``torch.compile`` the count is a
data-dependent size of the compiled graph: see ``_skip_rows``); the rows to
compute are gathered in one pass (``droppath::_take_rows``), the branch runs
on them, and its output is added
back in one pass (``droppath::_add_taken_rows``: no atomics, no zero-filled
full-size tensor; the backward is the same two ops the other way round).
On CUDA the number of rows computed is rounded up to one of at most 8 sizes
per batch size (a few dropped samples are computed and discarded), so
shape-specialised kernels (cuDNN attention plans, CUDA graphs, autotuning)
meet a bounded set of shapes.

RNG order: skip mode draws the mask *before* running the branch (it needs the
mask to know what to run); the masked form, like timm, draws it after. With a
branch that draws no random numbers the masks are the same for the same seed;
with dropout inside the branch they differ (each still exact). On CUDA, skip
mode draws from the CPU generator (``torch.manual_seed`` seeds it; an
explicit CUDA ``generator=`` is honoured by drawing on the device and copying
the mask, one synchronisation), so its masks differ from the masked form's
on CUDA, which come from the CUDA generator.

Exactness condition: ``branch_fn`` must treat samples independently -- the
output for sample ``b`` depends only on input sample ``b``. Attention, MLPs,
LayerNorm, convolutions and layer scale do; BatchNorm in training mode (batch
statistics) does not, nor does anything that mixes samples.
"""

from __future__ import annotations

import math
import threading
from typing import Callable, Dict, Optional, Union

import torch
from torch import Tensor

from . import _skip_rows, _tracing, functional
from ._validation import check_drop_prob, check_input, dim_of

SkipDropped = Union[bool, str]
"""``True`` (skip), ``False`` (masked form) or ``"auto"`` ([`skip_pays`][droppath_ext.residual.skip_pays])."""

_MIN_CUDA_BATCH = 32
_MIN_CUDA_SAVING = 0.25


def branch_batch_granule(batch: int, device_type: str) -> int:
    """Skip mode computes a multiple of this many samples (capped at ``batch``).

    1 on the CPU (no shape-specialised kernels to feed); on CUDA ``batch / 8``
    rounded up to a multiple of 8, so a batch size meets at most 8 branch
    batch sizes and each is a multiple of 8.
    """
    if device_type != "cuda":
        return 1
    return max(8, -(-batch // 64) * 8)


def skip_pays(batch: int, drop_prob: float, device_type: str) -> bool:
    """The ``skip_dropped="auto"`` policy: whether skipping dropped samples'
    compute is expected to be faster than the masked form.

    - CPU: always. Branch compute is linear in the batch, and the gather and
      scatter are one memory pass each (ViT-Tiny, batch 32: 1.07x faster than
      stock timm at drop rate 0.1, 1.28x at 0.4).
    - CUDA: when the batch is at least 32 and the rows expected to be skipped,
      after rounding up to the granule, are at least 25% of the batch (e.g.
      batch 128: from drop rate ~0.3 up). Below that, launching the gather and
      scatter and computing at a smaller batch (lower GPU efficiency) cost
      about what is saved (a DINOv2-style subset gave 1.00x at rate 0.1 and
      1.06-1.08x at 0.4 on an H200), so the masked form is used.
    - Anything else (MPS, XPU, ...): never.

    Args:
        batch: the number of samples.
        drop_prob: the drop rate.
        device_type: the tensor's ``device.type`` (``"cpu"``, ``"cuda"``, ...).
    """
    if device_type == "cpu":
        return True
    if device_type != "cuda" or batch < _MIN_CUDA_BATCH:
        return False
    granule = branch_batch_granule(batch, device_type)
    expected = min(batch, math.ceil(batch * (1.0 - drop_prob) / granule) * granule + granule / 2)
    return (batch - expected) / batch >= _MIN_CUDA_SAVING


def _check_skip_dropped(skip_dropped: SkipDropped) -> None:
    if skip_dropped is not True and skip_dropped is not False and skip_dropped != "auto":
        raise ValueError(f"skip_dropped must be True, False or 'auto', got {skip_dropped!r}")


def _skip_mode(
    skip_dropped: SkipDropped, x: Tensor, res: Tensor, batch: int, drop_prob: float,
    generator: Optional[torch.Generator],
) -> Optional[str]:
    """"eager" or "compiled" skip mode where it is asked for (or pays, for
    "auto") and legal (_tracing.skip_mode), with the gather/scatter kernels
    of the CPU and CUDA; None for the masked form."""
    if skip_dropped is False or x.device.type not in ("cpu", "cuda"):
        return None
    mode = _tracing.skip_mode(x, res)
    if _statically_empty(batch) or (mode == "compiled" and generator is not None):
        # An empty batch has nothing to skip (and Inductor cannot lower a
        # gather of it); an explicit generator is drawn from in eager mode only.
        return None
    if mode is None or (skip_dropped == "auto" and not skip_pays(batch, drop_prob, x.device.type)):
        return None
    return mode


def _statically_empty(batch) -> bool:
    """``batch == 0`` where that is known while compiling, without a guard (a
    dynamic batch size is never 0: dynamo specialises sizes 0 and 1)."""
    return isinstance(batch, int) and batch == 0


def drop_path_residual(
    x: Tensor,
    branch_fn: Callable[[Tensor], Tensor],
    drop_prob: float = 0.0,
    training: bool = True,
    scale_by_keep: bool = True,
    *,
    residual: Optional[Tensor] = None,
    generator: Optional[torch.Generator] = None,
    skip_dropped: SkipDropped = "auto",
    batch_dim: int = 0,
    cu_seqlens: Optional[Tensor] = None,
) -> Tensor:
    """``residual + drop_path(branch_fn(x), drop_prob, training, scale_by_keep)``,
    computing ``branch_fn`` only on the kept samples where that pays.

    Args:
        x: the branch input.
        branch_fn: the residual branch; must map a batch of samples to outputs
            of ``residual``'s shape, each sample independently: the output for
            sample ``b`` depends only on input sample ``b`` (attention, MLPs,
            LayerNorm, convolutions, layer scale; not BatchNorm in training).
        drop_prob: probability of dropping a sample, in [0, 1].
        training: apply the drop (True) or return ``residual + branch_fn(x)`` (False).
        scale_by_keep: rescale kept samples by ``1 / (1 - drop_prob)``.
        residual: what the branch is added to (default ``x``); same number of
            samples as ``x`` along ``batch_dim``.
        generator: random generator for the mask (default: torch's default one).
        skip_dropped: ``"auto"`` (default) skips where [`skip_pays`][droppath_ext.residual.skip_pays] says
            it is faster, ``True`` always skips, ``False`` computes the branch
            on the whole batch and applies the mask with the fused op (the
            "masked" form). Under ``torch.compile`` skip mode is compiled
            too (one graph for any kept count). Where reading the mask is not
            legal -- ``torch.jit.trace``, FX, torch.func transforms, fake or
            meta tensors, tensor subclasses, CUDA graph capture,
            ``torch.export`` -- the masked form is used.
        batch_dim: the dim of ``x`` and ``residual`` that indexes samples
            (skip mode gathers along it).
        cu_seqlens: not supported here (packed samples cannot be gathered
            without knowing the branch); raises ValueError if given.

    Returns:
        A new tensor. In eval mode or at ``drop_prob == 0``: ``residual + branch_fn(x)``.
        Skip mode computes at least two samples (one in a batch of one): when
        fewer are kept the branch also runs on dropped samples whose output
        is discarded, so its parameters stay in the autograd graph with zero
        gradients (DistributedDataParallel needs every parameter to receive a
        gradient), no branch meets an empty batch (many ops cannot take one),
        and none meets a batch of one the stock model never gives it (a
        ``.squeeze()`` would drop the batch dim).

    Raises:
        ValueError: ``drop_prob`` outside [0, 1], ``residual`` with another
            number of samples, a branch output of the wrong shape, a bad
            ``skip_dropped``, or ``cu_seqlens`` given.
        TypeError: ``x`` is not a floating tensor of a supported dtype.
        IndexError: ``batch_dim`` out of range.

    Example:
        ```python
        import torch, droppath_ext as dp
        mlp = torch.nn.Sequential(torch.nn.LayerNorm(64), torch.nn.Linear(64, 64))
        x = torch.randn(16, 10, 64)
        out = dp.drop_path_residual(x, mlp, drop_prob=0.4, training=True)
        # == x + drop_path(mlp(x), 0.4, True), with mlp run on the kept samples only
        ```
    """
    check_drop_prob(drop_prob)
    check_input(x, "x")
    _check_skip_dropped(skip_dropped)
    dim = dim_of(x, batch_dim)
    if cu_seqlens is not None:
        raise ValueError(
            "drop_path_residual does not take cu_seqlens: use drop_path_add(residual, "
            "branch_fn(x), ..., cu_seqlens=...) for packed batches"
        )
    res = x if residual is None else residual
    symbolic = _tracing.is_proxy(x) or _tracing.is_proxy(res)  # FX: no shapes to check (the op checks)
    if not symbolic and (res.dim() != x.dim() or _tracing.shapes_differ([res.shape[dim]], [x.shape[dim]])):
        raise ValueError(
            f"residual must have x's {x.shape[dim]} samples along batch_dim {dim}, "
            f"got shape {tuple(res.shape)}"
        )
    if not training or drop_prob == 0.0:
        return res + branch_fn(x)
    mode = None if symbolic else _skip_mode(skip_dropped, x, res, x.shape[dim], drop_prob, generator)
    if mode is None:
        # The masked form: the fused op promotes dtypes as `res + drop_path(branch)` does.
        branch = branch_fn(x)
        if not symbolic:
            _check_branch_shape(res, branch, dim, x.shape[dim])
        return functional.drop_path_add(
            res, branch, drop_prob, training, scale_by_keep, batch_dim=dim, generator=generator
        )
    return skip_residual(mode, (x,), res, branch_fn, dim, drop_prob, scale_by_keep, generator)


def skip_residual(mode: str, inputs: tuple, res: Tensor, branch_fn: Callable[..., Tensor], dim: int,
                  drop_prob: float, scale_by_keep: bool, generator: Optional[torch.Generator] = None) -> Tensor:
    """Skip mode (``mode`` from ``_skip_mode``): ``res + drop_path(branch_fn(*inputs))``,
    with each of ``inputs`` (tensors of ``res``'s samples along ``dim``)
    gathered to the kept samples before ``branch_fn`` runs on them."""
    if mode == "compiled":
        return _skip_compiled(inputs, res, branch_fn, dim, drop_prob, scale_by_keep)
    return _skip(inputs, res, branch_fn, dim, drop_prob, scale_by_keep, generator)


def _skip(inputs, res, branch_fn, dim, drop_prob, scale_by_keep, generator) -> Tensor:
    backend = functional._backend
    batch = res.shape[dim]
    factors, host_factors = _draw(res, dim, drop_prob, scale_by_keep, generator)
    rows, index, _, rows_computed = _skip_rows.host_row_maps(
        host_factors, branch_batch_granule(batch, res.device.type), at_least=_skip_rows.min_rows(batch))
    if factors is None:
        factors = _skip_rows.to_device(host_factors, res.device)
    if rows_computed == batch:
        res, branch = _aligned(res, branch_fn(*inputs), dim, batch)
        return backend.add_rows(res, branch, factors, dim)
    maps = _skip_rows.to_device(torch.cat([rows, index]), res.device)
    rows, index = maps[:batch], maps[batch:]
    taken = tuple(_take(t, index, rows, dim) for t in inputs)
    res, branch = _aligned(res, branch_fn(*taken), dim, rows_computed)
    return backend.add_taken_rows(res, branch, factors, rows, index, dim)


def _skip_compiled(inputs, res, branch_fn, dim, drop_prob, scale_by_keep) -> Tensor:
    """Skip mode as torch.compile traces it: one graph for any kept count (the
    count of rows is an unbacked size, _skip_rows), no shortcut for the
    all-kept and all-dropped draws (the gather/scatter handle both)."""
    backend = functional._backend
    batch = res.shape[dim]
    _, host_factors = _draw(res, dim, drop_prob, scale_by_keep, None)
    factors, rows, index = torch.ops.droppath_ext._row_maps(
        host_factors, branch_batch_granule(batch, res.device.type), res.device)
    taken = tuple(_take(t, index, rows, dim) for t in inputs)
    res, branch = _aligned(res, branch_fn(*taken), dim, index.shape[0])
    return backend.add_taken_rows(res, branch, factors, rows, index, dim)


def _take(x: Tensor, index: Tensor, rows: Tensor, dim: int) -> Tensor:
    """The rows ``index`` of ``x`` along ``dim``: the gather kernel for
    floating tensors; ``index_select`` for others (indices, masks: no gradient)."""
    if x.is_floating_point():
        return functional._backend.take_rows(x, index, rows, None, dim)
    return x.index_select(dim, index)


_forced_factors: Dict[int, Callable[[int, torch.dtype], Tensor]] = {}
"""Filled while generically fused blocks verify their rewrites
(``_fused_generic``): for each verifying thread, the host factors every
skip-mode draw of that thread returns, as a function of the batch size and
the factors' dtype, instead of a random draw (per thread: ``nn.DataParallel``
replicas verify in threads of their own)."""


def _draw(x, dim, drop_prob, scale_by_keep, generator) -> tuple[Optional[Tensor], Tensor]:
    """(factors on x's device or None, the same factors on the host)."""
    backend = functional._backend
    forced = _forced_factors.get(threading.get_ident()) if _forced_factors else None
    if forced is not None:
        math = torch.float64 if x.dtype == torch.float64 else torch.float32
        return None, forced(x.shape[dim], math)
    if x.device.type == "cpu" or generator is not None:
        factors = backend.sample_factors(x, drop_prob, scale_by_keep, dim, None, generator)
        return factors, factors.cpu()  # a device copy synchronises: only with a device generator
    # A zero-stride stand-in: the host draw needs the sample count and dtype only.
    stand_in = torch.empty((), dtype=x.dtype).expand(x.shape[dim])
    return None, backend.sample_factors(stand_in, drop_prob, scale_by_keep, 0, None, None)


def _check_branch_shape(res: Tensor, branch: Tensor, dim: int, samples: int) -> None:
    """The branch output: ``samples`` samples shaped like the residual's."""
    expected = list(res.shape)
    expected[dim] = samples
    if _tracing.shapes_differ(list(branch.shape), expected):
        raise ValueError(
            f"branch_fn must return one output per sample shaped like the residual: "
            f"expected {tuple(expected)}, got {tuple(branch.shape)}"
        )


def _aligned(res: Tensor, branch: Tensor, dim: int, samples: int) -> tuple[Tensor, Tensor]:
    """Checks the branch output's shape and brings both to their promoted
    dtype, as ``residual + drop_path(branch)`` would (e.g. a bfloat16 branch
    under autocast added to a float32 residual): skip mode's kernels take one dtype."""
    _check_branch_shape(res, branch, dim, samples)
    dtype = torch.promote_types(res.dtype, branch.dtype)
    return res.to(dtype), branch.to(dtype)
