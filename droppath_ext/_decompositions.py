"""The deterministic ops as standard pointwise ops, for the compilers and exporters.

``_scale_rows`` / ``_add_rows`` become the ``where(f != 0, x * f, 0)`` form of
``_reference`` (same factors, exact zeros for dropped samples), and skip
mode's ``_take_rows`` / ``_add_taken_rows`` its gather and gathered add:

- under ``torch.compile`` (Inductor), which fuses them with the ops around
  them (layer scale, bias, the residual add) instead of calling our kernels as
  opaque extern kernels: registered into Inductor's decomposition table as
  soon as that table exists (importing ``torch._inductor`` costs about a
  second, so an import hook waits for Inductor to be imported, by the first
  ``torch.compile``, instead of importing it here);
- for exporters that decompose a graph into standard ops
  (``torch.onnx.export(..., dynamo=True)`` of a model in training mode):
  registered in torch's global decomposition table.

Eager mode, TorchScript and ``torch.export`` keep the ops themselves.
"""

from __future__ import annotations

import warnings
from typing import Optional

import torch
from torch import Tensor

from . import _reference
from ._on_import import when_imported

_TABLE_MODULE = "torch._inductor.decomposition"


def _scale_rows(
    x: Tensor, factors: Tensor, batch_dim: int = 0, cu_seqlens: Optional[Tensor] = None
) -> Tensor:
    return _reference._scale(x, factors, batch_dim % x.dim(), cu_seqlens)


def _add_rows(
    residual: Tensor,
    branch: Tensor,
    factors: Tensor,
    batch_dim: int = 0,
    cu_seqlens: Optional[Tensor] = None,
) -> Tensor:
    return _reference._add(residual, branch, factors, batch_dim % branch.dim(), cu_seqlens)


def _take_rows(
    x: Tensor, rows: Tensor, inverse_rows: Tensor, factors: Optional[Tensor] = None, batch_dim: int = 0
) -> Tensor:
    return _reference._take(x, rows, factors, batch_dim % x.dim())


def _add_taken_rows(
    residual: Tensor, branch: Tensor, factors: Tensor, rows: Tensor, inverse_rows: Tensor, batch_dim: int = 0
) -> Tensor:
    return _reference._add_taken(residual, branch, factors, rows, batch_dim % residual.dim())


def _register(table_module) -> None:
    table = getattr(table_module, "decompositions", None)
    if not isinstance(table, dict):  # Inductor's internals moved: stay correct, unfused
        warnings.warn("droppath_ext: Inductor's decomposition table was not found; under "
                      "torch.compile the droppath ops run as extern kernels", RuntimeWarning)
        return
    decompositions = {
        torch.ops.droppath._scale_rows.default: _scale_rows,
        torch.ops.droppath._add_rows.default: _add_rows,
        # skip mode's gather and scatter-add (only ever compiled with at least one row)
        torch.ops.droppath._take_rows.default: _take_rows,
        torch.ops.droppath._add_taken_rows.default: _add_taken_rows,
    }
    table.update(decompositions)
    # The table Inductor compiles with is built (and cached) from the one
    # above on first use; if a compile already happened, extend it as well.
    fast_random = getattr(table_module, "fast_random_decomps", None)
    cache_info = getattr(fast_random, "cache_info", None)
    if cache_info is not None and cache_info().currsize:
        fast_random().update(decompositions)


def _register_for_exporters() -> None:
    try:
        from torch._decomp import decomposition_table
    except ImportError:  # internals moved: exporters then see the ops themselves
        return
    decomposition_table[torch.ops.droppath._scale_rows.default] = _scale_rows
    decomposition_table[torch.ops.droppath._add_rows.default] = _add_rows


def register() -> None:
    _register_for_exporters()
    when_imported(_TABLE_MODULE, _register)
