"""Inductor decompositions of the deterministic ops: under ``torch.compile``
(Inductor) ``_scale_rows`` / ``_add_rows`` become the pointwise ``where(f != 0,
x * f, 0)`` form of ``_reference``, which Inductor fuses with the ops around
them (layer scale, bias, the residual add) instead of calling our kernels as
opaque extern kernels. Same factors, exact zeros for dropped samples. Eager
mode, TorchScript and ``torch.export`` keep the ops themselves.

Registered into Inductor's decomposition table as soon as that table exists:
importing ``torch._inductor`` costs about a second, so an import hook waits
for Inductor to be imported (by the first ``torch.compile``) instead of
importing it here.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
import warnings
from typing import Optional

import torch
from torch import Tensor

from . import _reference

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


def _register(table_module) -> None:
    table = getattr(table_module, "decompositions", None)
    if not isinstance(table, dict):  # Inductor's internals moved: stay correct, unfused
        warnings.warn("droppath_ext: Inductor's decomposition table was not found; under "
                      "torch.compile the droppath ops run as extern kernels", RuntimeWarning)
        return
    decompositions = {
        torch.ops.droppath._scale_rows.default: _scale_rows,
        torch.ops.droppath._add_rows.default: _add_rows,
    }
    table.update(decompositions)
    # The table Inductor compiles with is built (and cached) from the one
    # above on first use; if a compile already happened, extend it as well.
    fast_random = getattr(table_module, "fast_random_decomps", None)
    cache_info = getattr(fast_random, "cache_info", None)
    if cache_info is not None and cache_info().currsize:
        fast_random().update(decompositions)


class _RegisterOnImport(importlib.abc.MetaPathFinder):
    """Finds Inductor's decomposition module through the other finders, and
    has its loader register the decompositions right after executing it."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != _TABLE_MODULE:
            return None
        sys.meta_path.remove(self)  # once, and not for the lookup below
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            execute = spec.loader.exec_module  # this spec's own loader instance

            def exec_module(module) -> None:
                execute(module)
                _register(module)

            spec.loader.exec_module = exec_module
        return spec


def register() -> None:
    module = sys.modules.get(_TABLE_MODULE)
    if module is not None:
        _register(module)
    elif not any(isinstance(finder, _RegisterOnImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _RegisterOnImport())
