"""``nn.Module`` wrappers with timm's and torchvision's signatures and reprs."""

from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from . import functional as F
from ._validation import check_drop_prob


class DropPath(nn.Module):
    """Drop whole samples of the input in training (stochastic depth).

    A drop-in for ``timm.layers.DropPath``: same arguments, attributes
    (``drop_prob``, ``scale_by_keep``) and repr. ``drop_prob`` may be changed
    at any time (a drop-rate schedule). See [`drop_path`][droppath_ext.drop_path].

    Args:
        drop_prob: probability of dropping each sample, in [0, 1].
        scale_by_keep: rescale kept samples by ``1 / (1 - drop_prob)``.
        batch_dim: the dim that indexes samples, e.g. 1 for sequence-first
            ``[seq, batch, hidden]`` activations.

    Example:
        ```python
        import torch, droppath_ext as dp
        drop = dp.DropPath(0.1)
        print(drop)                                   # DropPath(drop_prob=0.100)
        y = drop(torch.randn(8, 197, 192))            # training mode: samples dropped
        drop.drop_prob = 0.2                          # a schedule may change the rate at any time
        ```
    """

    batch_dim: int = 0
    """(A class default too: a library's module converted in place has no attribute of its own.)"""

    def __init__(self, drop_prob: float = 0.0, scale_by_keep: bool = True, batch_dim: int = 0) -> None:
        super().__init__()
        check_drop_prob(float(drop_prob))
        self.drop_prob = float(drop_prob)
        self.scale_by_keep = scale_by_keep
        self.batch_dim = int(batch_dim)

    def forward(self, x: Tensor) -> Tensor:
        # The backend directly, not F.drop_path: TorchScript cannot compile
        # keyword-only arguments, and this keeps the module scriptable on both paths.
        return F._backend.forward(
            x, self.drop_prob, self.training, self.scale_by_keep, self.batch_dim, None, None
        )

    def _droppath_settings(self) -> Optional[Tuple[float, bool, int]]:
        """(drop rate, scale_by_keep, batch_dim) as fused residuals read them on every call."""
        return float(self.drop_prob), bool(self.scale_by_keep), int(self.batch_dim)

    def extra_repr(self) -> str:
        text = f"drop_prob={round(self.drop_prob, 3):0.3f}"
        return text if self.batch_dim == 0 else f"{text}, batch_dim={self.batch_dim}"


class StochasticDepth(nn.Module):
    """torchvision's ``StochasticDepth(p, mode)``: same arguments, attributes and
    repr. See [`stochastic_depth`][droppath_ext.stochastic_depth].

    Args:
        p: probability of dropping, in [0, 1].
        mode: ``"row"`` (per sample) or ``"batch"`` (one draw for the whole batch).

    Example:
        ```python
        import torch, droppath_ext as dp
        print(dp.StochasticDepth(0.2, "row"))         # StochasticDepth(p=0.2, mode=row)
        ```
    """

    def __init__(self, p: float, mode: str) -> None:
        super().__init__()
        self.p = p
        self.mode = mode

    def forward(self, input: Tensor) -> Tensor:
        return F.stochastic_depth(input, self.p, self.mode, self.training)

    def _droppath_settings(self) -> Optional[Tuple[float, bool, int]]:
        """(drop rate, True, 0) in "row" mode; None in "batch" mode (one draw for the whole batch)."""
        return (float(self.p), True, 0) if self.mode == "row" else None

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(p={self.p}, mode={self.mode})"
