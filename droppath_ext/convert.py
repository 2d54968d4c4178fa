"""``convert_model``: swap timm's / torchvision's stochastic-depth modules for
this package's, and optionally rewrite known residual blocks to skip the
compute of dropped samples.

Known blocks (``fuse_residual=True``): timm's ViT ``Block``, timm's
``ConvNeXtBlock`` (ConvNeXt v1 and v2) and torchvision's ConvNeXt ``CNBlock``.
Each is given a subclass whose ``forward`` computes ``x + drop_path(branch(x))``
with :func:`droppath_ext.drop_path_residual` in eager mode (the branch run on
kept samples only where :func:`droppath_ext.residual.skip_pays` says so, by
default) and with the fused ``drop_path_add`` op under TorchScript, reading the
drop probability from the block's stochastic-depth child on every call.
Parameters, buffers and state-dict keys are unchanged, eval outputs equal the
original's bit for bit, and so do training outputs in the masked form
(float32/float64, same seed).
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import torch
from torch import Tensor, nn

from . import functional as F
from .modules import DropPath, StochasticDepth
from .residual import SkipDropped, drop_path_residual

_log = logging.getLogger("droppath_ext")


@dataclass
class ConversionReport:
    """What :func:`convert_model` did, by qualified module name."""

    replaced: List[str] = field(default_factory=list)
    """Stochastic-depth modules swapped for this package's."""
    fused: List[str] = field(default_factory=list)
    """Residual blocks rewritten to skip dropped samples' compute."""
    unfused: List[str] = field(default_factory=list)
    """Modules holding a stochastic-depth module that were left as they are
    (unknown block type, or a branch that mixes samples, e.g. BatchNorm)."""


def _class_path(module: nn.Module) -> str:
    cls = type(module)
    return f"{cls.__module__}.{cls.__qualname__}"


def _is_timm_drop_path(module: nn.Module) -> bool:
    return type(module).__name__ == "DropPath" and type(module).__module__.startswith("timm.")


def _is_torchvision_stochastic_depth(module: nn.Module) -> bool:
    return type(module).__name__ == "StochasticDepth" and type(module).__module__.startswith("torchvision.")


def _replacement(module: nn.Module) -> Optional[nn.Module]:
    if _is_timm_drop_path(module):
        new = DropPath(float(module.drop_prob), bool(getattr(module, "scale_by_keep", True)))
    elif _is_torchvision_stochastic_depth(module):
        new = StochasticDepth(float(module.p), str(module.mode))
    else:
        return None
    new.train(module.training)
    return new


def _mixes_samples(module: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


# ---- fused blocks -------------------------------------------------------------------
# Each mixin goes first in a subclass of the block it fuses (_fused_class). Its
# forward reads drop_prob / scale_by_keep from the block's own stochastic-depth
# child on every call, so a drop-rate schedule that sets DropPath.drop_prob
# (or StochasticDepth.p) acts on fused blocks too. A child that is nn.Identity
# (timm's drop rate 0) means no drop; `hasattr` on a submodule is resolved when
# TorchScript compiles, so only the branch that applies is compiled.
# Under TorchScript the fused masked op is used (closures cannot be scripted);
# in eager mode drop_path_residual, which skips dropped samples' compute where
# that pays (skip_dropped, stored on the block at conversion).


class _FusedViTBlock:
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
            x = F._backend.add(x, branch, p1, self.training, s1, 0, None, None)
            branch = self.ls2(self.mlp(self.norm2(x)))
            return F._backend.add(x, branch, p2, self.training, s2, 0, None, None)
        else:
            x = drop_path_residual(
                x, self._droppath_attn_branch, p1, self.training, s1, skip_dropped=self.droppath_skip
            )
            return drop_path_residual(
                x, self._droppath_mlp_branch, p2, self.training, s2, skip_dropped=self.droppath_skip
            )

    def _droppath_attn_branch(self, x: Tensor) -> Tensor:
        return self.ls1(self.attn(self.norm1(x)))

    def _droppath_mlp_branch(self, x: Tensor) -> Tensor:
        return self.ls2(self.mlp(self.norm2(x)))


class _FusedTimmConvNeXtBlock:
    """timm's ``ConvNeXtBlock`` (v1 and v2): ``shortcut(x) + drop_path(branch(x))``."""

    def forward(self, x: Tensor) -> Tensor:
        p, s = 0.0, True
        if hasattr(self.drop_path, "drop_prob"):
            p, s = self.drop_path.drop_prob, self.drop_path.scale_by_keep
        shortcut = self.shortcut(x)
        if torch.jit.is_scripting():
            return F._backend.add(shortcut, self._droppath_branch(x), p, self.training, s, 0, None, None)
        else:
            return drop_path_residual(
                x, self._droppath_branch, p, self.training, s, residual=shortcut,
                skip_dropped=self.droppath_skip,
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


class _FusedTorchvisionCNBlock:
    """torchvision's ConvNeXt ``CNBlock``: ``input + stochastic_depth(layer_scale * block(input))``."""

    def forward(self, input: Tensor) -> Tensor:
        p = float(self.stochastic_depth.p)
        if torch.jit.is_scripting():
            return F._backend.add(input, self._droppath_branch(input), p, self.training, True, 0, None, None)
        else:
            return drop_path_residual(
                input, self._droppath_branch, p, self.training, True, skip_dropped=self.droppath_skip
            )

    def _droppath_branch(self, input: Tensor) -> Tensor:
        return self.layer_scale * self.block(input)


def _fusable_vit_block(block: nn.Module) -> bool:
    # The fused forward calls attention with attn_mask and is_causal, as
    # timm 1.0.29+'s Block does; a Block with another forward is left unfused.
    params = list(inspect.signature(type(block).forward).parameters)
    return params == ["self", "x", "attn_mask", "is_causal"]


def _fusable_cnblock(block: nn.Module) -> bool:
    # mode "batch" is one draw per batch: nothing per-sample to skip.
    return block.stochastic_depth.mode == "row"


# class path -> (can this instance be fused?, the mixin that fuses it)
_FUSERS: Dict[str, tuple[Callable[[nn.Module], bool], type]] = {
    "timm.models.vision_transformer.Block": (_fusable_vit_block, _FusedViTBlock),
    "timm.models.convnext.ConvNeXtBlock": (lambda block: True, _FusedTimmConvNeXtBlock),
    "torchvision.models.convnext.CNBlock": (_fusable_cnblock, _FusedTorchvisionCNBlock),
}
_FUSED_CLASSES: Dict[type, type] = {}
_FUSED_FROM: Dict[type, tuple[type, type]] = {}  # fused class -> (the block's class, the mixin)


def _fused_class(cls: type, mixin: type) -> type:
    if cls not in _FUSED_CLASSES:
        name = f"DropPathFused{cls.__name__}"
        fused = type(name, (mixin, cls), {"__module__": __name__, "__qualname__": name,
                                          "__reduce_ex__": _reduce_fused_block})
        _FUSED_CLASSES[cls] = fused
        _FUSED_FROM[fused] = (cls, mixin)
    return _FUSED_CLASSES[cls]


def _new_fused_block(cls: type, mixin: type) -> nn.Module:
    """Unpickling: an empty instance of the fused class, made again from the
    classes it combines (both importable by name), whose state pickle restores."""
    fused = _fused_class(cls, mixin)
    return fused.__new__(fused)


def _reduce_fused_block(self: nn.Module, protocol: int):
    """Fused classes are made at run time, so pickle cannot import them by
    name: a fused block pickles as the two classes it combines, and its state
    (torch.save(model), copy.deepcopy, multiprocessing)."""
    cls, mixin = _FUSED_FROM[type(self)]
    return _new_fused_block, (cls, mixin), dict(self.__dict__)


def _holds_stochastic_depth(module: nn.Module) -> bool:
    return any(isinstance(c, (DropPath, StochasticDepth)) for c in module.children())


def convert_model(
    model: nn.Module,
    fuse_residual: bool = False,
    *,
    skip_dropped: SkipDropped = "auto",
    return_report: bool = False,
):
    """Replace every timm ``DropPath`` and torchvision ``StochasticDepth`` in
    ``model`` (in place) with :class:`droppath_ext.DropPath` /
    :class:`droppath_ext.StochasticDepth` (same probability, ``scale_by_keep``
    and mode).

    Args:
        model: any module; converted in place and returned.
        fuse_residual: also rewrite the residual blocks this function knows
            (timm ViT ``Block``, timm ``ConvNeXtBlock``, torchvision ``CNBlock``)
            to use the fused residual op and, in eager training, run each branch
            on kept samples only. Blocks whose branch mixes samples (BatchNorm)
            and unknown blocks are left as they are, logged, and listed in the
            report.
        skip_dropped: with ``fuse_residual``: ``"auto"`` (default) skips dropped
            samples' compute where that is expected to be faster
            (:func:`droppath_ext.residual.skip_pays`: on the CPU, and on CUDA at
            high drop rates and large batches), ``True`` always, ``False``
            never (the fused masked form, every sample computed).
        return_report: return ``(model, ConversionReport)`` instead of the model.
    """
    report = ConversionReport()
    root_replacement = _replacement(model)
    if root_replacement is not None:
        report.replaced.append("")
        model = root_replacement
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            new = _replacement(child)
            if new is not None:
                setattr(parent, child_name, new)
                report.replaced.append(f"{parent_name}.{child_name}" if parent_name else child_name)

    if fuse_residual:
        fused_classes = set(_FUSED_CLASSES.values())
        for name, module in model.named_modules():
            if type(module) in fused_classes:  # converted before: only the skip policy changes
                module.droppath_skip = skip_dropped
                report.fused.append(name)
                continue
            entry = _FUSERS.get(_class_path(module))
            if entry is None:
                if _holds_stochastic_depth(module):
                    report.unfused.append(name)
                continue
            fusable, mixin = entry
            if _mixes_samples(module) or not fusable(module):
                report.unfused.append(name)
                continue
            module.droppath_skip = skip_dropped
            module.__class__ = _fused_class(type(module), mixin)
            report.fused.append(name)
        if report.unfused:
            _log.info("convert_model: left unfused (unknown or sample-mixing blocks): %s", report.unfused)
    return (model, report) if return_report else model
