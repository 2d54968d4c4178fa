"""Fused residual blocks for timm: the ViT ``Block`` and ``ConvNeXtBlock``
(ConvNeXt v1 and v2). See ``convert.py`` for how a mixin fuses a block.

Each mixin's forward reads drop_prob / scale_by_keep and the training flag
from the block's own stochastic-depth child on every call (a model that sets
its DropPath modules to eval drops nothing, as the stock model), so a drop-rate schedule that sets
``DropPath.drop_prob`` acts on fused blocks too. A child that is nn.Identity
(timm's drop rate 0) means no drop; ``hasattr`` on a submodule is resolved when
TorchScript compiles, so only the branch that applies is compiled. Under
TorchScript the fused masked op is used (closures cannot be scripted);
otherwise drop_path_residual, which skips dropped samples' compute where that
pays (``skip_dropped``, stored on the block at conversion as ``droppath_skip``).
"""

from __future__ import annotations

import inspect
from typing import Optional

import torch
from torch import Tensor, nn

from . import functional as F
from ._fused_block import FusedBlock
from .residual import drop_path_residual


class _FusedViTBlock(FusedBlock):
    """timm's ViT ``Block``: two residual branches, attention then MLP."""

    def forward(
        self, x: Tensor, attn_mask: Optional[Tensor] = None, is_causal: bool = False
    ) -> Tensor:
        p1, s1 = 0.0, True
        if hasattr(self.drop_path1, "drop_prob"):
            p1, s1 = self.drop_path1.drop_prob, self.drop_path1.scale_by_keep
        p2, s2 = 0.0, True
        if hasattr(self.drop_path2, "drop_prob"):
            p2, s2 = self.drop_path2.drop_prob, self.drop_path2.scale_by_keep
        if torch.jit.is_scripting() or attn_mask is not None or is_causal:
            branch = self.ls1(self.attn(self.norm1(x), attn_mask=attn_mask, is_causal=is_causal))
            x = F._backend.add(x, branch, p1, self.drop_path1.training, s1, 0, None, None)
            branch = self.ls2(self.mlp(self.norm2(x)))
            return F._backend.add(x, branch, p2, self.drop_path2.training, s2, 0, None, None)
        elif self._droppath_runs_stock():
            return self._droppath_stock_forward(x, attn_mask=attn_mask, is_causal=is_causal)
        else:
            x = drop_path_residual(
                x, self._droppath_attn_branch, p1, self.drop_path1.training, s1, skip_dropped=self._droppath_policy(p1)
            )
            return drop_path_residual(
                x, self._droppath_mlp_branch, p2, self.drop_path2.training, s2, skip_dropped=self._droppath_policy(p2)
            )

    def _droppath_attn_branch(self, x: Tensor) -> Tensor:
        return self.ls1(self.attn(self.norm1(x)))

    def _droppath_mlp_branch(self, x: Tensor) -> Tensor:
        return self.ls2(self.mlp(self.norm2(x)))


class _FusedTimmConvNeXtBlock(FusedBlock):
    """timm's ``ConvNeXtBlock`` (v1 and v2): ``shortcut(x) + drop_path(branch(x))``."""

    def forward(self, x: Tensor) -> Tensor:
        p, s = 0.0, True
        if hasattr(self.drop_path, "drop_prob"):
            p, s = self.drop_path.drop_prob, self.drop_path.scale_by_keep
        if torch.jit.is_scripting():
            return F._backend.add(self.shortcut(x), self._droppath_branch(x), p, self.drop_path.training, s, 0,
                                  None, None)
        elif self._droppath_runs_stock():
            return self._droppath_stock_forward(x)
        else:
            shortcut = self.shortcut(x)
            return drop_path_residual(
                x, self._droppath_branch, p, self.drop_path.training, s, residual=shortcut,
                skip_dropped=self._droppath_policy(p),
            )

    def _droppath_branch(self, x: Tensor) -> Tensor:
        x = self.conv_dw(x)
        if self.use_conv_mlp:
            x = self.norm(x)
            x = self.mlp(x)
        else:
            x = x.permute(0, 2, 3, 1)
            x = self.norm(x)
            x = self.mlp(x)
            x = x.permute(0, 3, 1, 2)
        if self.gamma is not None:
            x = x.mul(self.gamma.reshape(1, -1, 1, 1))
        return x


def _vit_block_check(block: nn.Module) -> Optional[str]:
    # The fused forward calls attention with attn_mask and is_causal, as
    # timm 1.0.29+'s Block does; a Block with another forward is left unfused.
    params = list(inspect.signature(type(block).forward).parameters)
    if params != ["self", "x", "attn_mask", "is_causal"]:
        return f"timm Block.forward{tuple(params[1:])} is not the (x, attn_mask, is_causal) one this fusion knows"
    return None


# class path -> (None if this instance can be fused, else why not; the mixin that fuses it)
FUSERS = {
    "timm.models.vision_transformer.Block": (_vit_block_check, _FusedViTBlock),
    "timm.models.convnext.ConvNeXtBlock": (lambda block: None, _FusedTimmConvNeXtBlock),
}
