"""DropPath as functions: timm's ``drop_path``, torchvision's ``stochastic_depth``,
and the fused residual ``drop_path_add``.

Each call goes to the compiled ops (``torch.ops.droppath.*``) when the library
loaded, else to the pure-Python backend with the same semantics
([`backend`][droppath_ext.backend] says which).
"""

from typing import Optional

import torch
from torch import Tensor

from . import _compiled, _library, _reference
from ._validation import check_input

# The backend every function below calls; one module or the other, chosen once.
_backend = _compiled if _library.LOADED else _reference


def drop_path(
    x: Tensor,
    drop_prob: float = 0.0,
    training: bool = False,
    scale_by_keep: bool = True,
    *,
    batch_dim: int = 0,
    cu_seqlens: Optional[Tensor] = None,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """Drop whole samples of ``x`` (stochastic depth), as timm's ``drop_path``.

    Identity when ``training`` is False or ``drop_prob == 0``. Otherwise each
    sample is kept with probability ``keep_prob = 1 - drop_prob`` and multiplied
    by ``1 / keep_prob`` (by 1 when ``scale_by_keep`` is False); dropped samples
    are exactly zero. ``drop_prob == 1`` gives all zeros.

    Args:
        x: float16/bfloat16/float32/float64 tensor with a batch dimension.
        drop_prob: probability of dropping a sample, in [0, 1].
        training: apply the drop (True) or return ``x`` unchanged (False).
        scale_by_keep: rescale kept samples by ``1 / keep_prob``.
        batch_dim: the dim that indexes samples (negative counts from the
            end), e.g. 1 for sequence-first ``[seq, batch, hidden]`` tensors.
        cu_seqlens: for a packed batch (``[total_tokens, ...]`` along
            ``batch_dim``): int32/int64 offsets ``0 = c[0] <= ... <= c[n] =
            x.shape[batch_dim]``; sample ``i`` is ``[c[i], c[i + 1])``, one draw
            each, empty samples allowed.
        generator: random generator to draw from (default: torch's default one
            for ``x``'s device, so ``torch.manual_seed`` reproduces the draw).

    Raises:
        ValueError: ``drop_prob`` outside [0, 1] or NaN (checked even when not
            training), a 0-dim ``x``, or bad ``cu_seqlens`` (not 1-D, empty, on
            another device; offsets not from 0 to the dim's size, decreasing).
        TypeError: ``x`` is not a floating tensor of a supported dtype, or
            ``cu_seqlens`` is not int32/int64.
        IndexError: ``batch_dim`` out of range.

    Example:
        ```python
        import torch, droppath_ext as dp
        x = torch.ones(8, 3)
        y = dp.drop_path(x, 0.5, training=True)
        print(set(y.flatten().tolist()) <= {0.0, 2.0})   # True: each sample dropped, or kept and scaled by 1 / 0.5
        print(dp.drop_path(x, 0.5) is x)                 # True: the identity when not training
        ```
    """
    return _backend.forward(x, drop_prob, training, scale_by_keep, batch_dim, cu_seqlens, generator)


def drop_path_add(
    residual: Tensor,
    branch: Tensor,
    drop_prob: float = 0.0,
    training: bool = False,
    scale_by_keep: bool = True,
    *,
    batch_dim: int = 0,
    cu_seqlens: Optional[Tensor] = None,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """``residual + drop_path(branch, ...)`` in one pass over memory.

    A dropped sample's ``branch`` is not read. ``residual`` and ``branch`` must
    have the same shape and device; mixed floating dtypes promote, as
    ``residual + drop_path(branch)`` does. The other arguments and the errors
    are [`drop_path`][droppath_ext.drop_path]'s.

    Example:
        ```python
        import torch, droppath_ext as dp
        x, branch = torch.zeros(8, 3), torch.ones(8, 3)
        out = dp.drop_path_add(x, branch, 0.5, training=True)
        print(set(out.flatten().tolist()) <= {0.0, 2.0})   # True: x, plus branch * 2 where kept
        ```
    """
    return _backend.add(
        residual, branch, drop_prob, training, scale_by_keep, batch_dim, cu_seqlens, generator
    )


def stochastic_depth(input: Tensor, p: float, mode: str, training: bool = True) -> Tensor:
    """torchvision's ``stochastic_depth``: ``mode="row"`` drops samples
    independently (as [`drop_path`][droppath_ext.drop_path]), ``mode="batch"``
    keeps or drops the whole batch with one draw. Kept values are scaled by
    ``1 / (1 - p)``.

    Args:
        input: float16/bfloat16/float32/float64 tensor, samples along dim 0.
        p: probability of dropping, in [0, 1].
        mode: ``"row"`` (one draw per sample) or ``"batch"`` (one draw in all).
        training: apply the drop (True, torchvision's default) or return
            ``input`` unchanged (False).

    Raises:
        ValueError: ``p`` outside [0, 1] or NaN, or ``mode`` not "row"/"batch"
            (torchvision's messages), or a 0-dim ``input``.
        TypeError: ``input`` is not a floating tensor of a supported dtype.

    Example:
        ```python
        import torch, droppath_ext as dp
        x = torch.ones(6, 2)
        rows = dp.stochastic_depth(x, p=0.5, mode="row")[:, 0]     # each sample kept or dropped
        whole = dp.stochastic_depth(x, p=0.5, mode="batch")[:, 0]  # all kept, or all dropped
        print(len(set(whole.tolist())))                            # 1
        ```
    """
    if not (p >= 0.0 and p <= 1.0):
        raise ValueError(f"drop probability has to be between 0 and 1, but got {p}")
    if mode != "batch" and mode != "row":
        raise ValueError(f"mode has to be either 'batch' or 'row', but got {mode}")
    check_input(input, "input")
    if not training or p == 0.0:
        return input
    if mode == "row":
        return _backend.forward(input, p, training, True, 0, None, None)
    # One draw for the whole batch, shared by every sample: drawn for a
    # one-sample stand-in of input's dtype and device (no branch on the
    # batch size, which an FX proxy does not have).
    factors = _backend.sample_factors(input.new_empty([1]), p, True, 0, None, None)
    return _backend.scale_rows(input, factors.expand(input.shape[0]), 0, None)


def _register_script_builtins() -> None:
    """Let ``torch.jit.script`` compile calls to the public functions straight
    to the ops (their keyword-only arguments are otherwise unscriptable)."""
    try:
        from torch.jit._builtins import _register_builtin
    except ImportError:  # private API: without it, use the modules in scripts
        return
    _register_builtin(drop_path, "droppath::forward")
    _register_builtin(drop_path_add, "droppath::add")


if _library.LOADED:
    _register_script_builtins()
