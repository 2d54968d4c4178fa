"""Fused residual blocks for torchvision: ConvNeXt's ``CNBlock`` (see
``convert.py`` for how a mixin fuses a block, ``_fused_timm.py`` for the
conventions)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from . import functional as F
from ._fused_block import FusedBlock
from .residual import drop_path_residual


class _FusedTorchvisionCNBlock(FusedBlock):
    """torchvision's ConvNeXt ``CNBlock``: ``input + stochastic_depth(layer_scale * block(input))``."""

    def forward(self, input: Tensor) -> Tensor:
        p = float(self.stochastic_depth.p)
        if torch.jit.is_scripting():
            return F._backend.add(input, self._droppath_branch(input), p, self.stochastic_depth.training, True, 0,
                                  None, None)
        elif self._droppath_runs_stock():
            return self._droppath_stock_forward(input)
        else:
            return drop_path_residual(
                input, self._droppath_branch, p, self.stochastic_depth.training, True,
                skip_dropped=self._droppath_policy(p),
            )

    def _droppath_branch(self, input: Tensor) -> Tensor:
        return self.layer_scale * self.block(input)


def _cnblock_check(block: nn.Module) -> Optional[str]:
    if block.stochastic_depth.mode != "row":
        return f"stochastic depth mode {block.stochastic_depth.mode!r}: one draw per batch, nothing per sample to skip"
    return None


# class path -> (None if this instance can be fused, else why not; the mixin that fuses it)
FUSERS = {
    "torchvision.models.convnext.CNBlock": (_cnblock_check, _FusedTorchvisionCNBlock),
}
