"""``convert_model``: swap timm's / torchvision's stochastic-depth modules for
this package's, and optionally rewrite known residual blocks to skip the
compute of dropped samples.

Known blocks (``fuse_residual=True``): timm's ViT ``Block``, timm's
``ConvNeXtBlock`` and torchvision's ConvNeXt ``CNBlock``. Each is given a
subclass whose ``forward`` computes ``x + drop_path(branch(x))`` with
:func:`droppath_ext.drop_path_residual` (branch run on kept samples only) in
eager mode, and with the fused ``drop_path_add`` op under TorchScript. Parameters, buffers and
state-dict keys are unchanged, and eval outputs equal the original's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import torch
from torch import Tensor, nn

from . import functional as F
from .modules import DropPath, StochasticDepth
from .residual import drop_path_residual

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


def _drop_settings(module: nn.Module) -> tuple[float, bool]:
    """(drop_prob, scale_by_keep) of a stochastic-depth slot (Identity: no drop)."""
    if isinstance(module, DropPath):
        return module.drop_prob, module.scale_by_keep
    if isinstance(module, StochasticDepth):
        return float(module.p), True
    return 0.0, True


def _mixes_samples(module: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


# ---- fused block forwards -----------------------------------------------------------
# Each is TorchScript-compatible: under scripting it uses the fused masked op
# (closures cannot be scripted); in eager it skips dropped samples' compute.


def _vit_attn_branch(self, x: Tensor) -> Tensor:
    return self.ls1(self.attn(self.norm1(x)))


def _vit_mlp_branch(self, x: Tensor) -> Tensor:
    return self.ls2(self.mlp(self.norm2(x)))


def _vit_block_forward(
    self, x: Tensor, attn_mask: Optional[Tensor] = None, is_causal: bool = False
) -> Tensor:
    if torch.jit.is_scripting() or attn_mask is not None or is_causal:
        branch = self.ls1(self.attn(self.norm1(x), attn_mask=attn_mask, is_causal=is_causal))
        x = F._backend.add(x, branch, self.droppath_prob1, self.training, self.droppath_scale1, None)
        branch = self.ls2(self.mlp(self.norm2(x)))
        return F._backend.add(x, branch, self.droppath_prob2, self.training, self.droppath_scale2, None)
    x = drop_path_residual(
        x, self._droppath_attn_branch, self.droppath_prob1, self.training, self.droppath_scale1,
        skip_dropped=self.droppath_skip,
    )
    return drop_path_residual(
        x, self._droppath_mlp_branch, self.droppath_prob2, self.training, self.droppath_scale2,
        skip_dropped=self.droppath_skip,
    )


def _timm_convnext_branch(self, x: Tensor) -> Tensor:
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


def _timm_convnext_forward(self, x: Tensor) -> Tensor:
    shortcut = self.shortcut(x)
    if torch.jit.is_scripting():
        branch = self._droppath_branch(x)
        return F._backend.add(shortcut, branch, self.droppath_prob, self.training, self.droppath_scale, None)
    return drop_path_residual(
        x, self._droppath_branch, self.droppath_prob, self.training, self.droppath_scale,
        residual=shortcut, skip_dropped=self.droppath_skip,
    )


def _torchvision_cnblock_branch(self, x: Tensor) -> Tensor:
    return self.layer_scale * self.block(x)


def _torchvision_cnblock_forward(self, input: Tensor) -> Tensor:
    if torch.jit.is_scripting():
        branch = self._droppath_branch(input)
        return F._backend.add(input, branch, self.droppath_prob, self.training, True, None)
    return drop_path_residual(
        input, self._droppath_branch, self.droppath_prob, self.training, True,
        skip_dropped=self.droppath_skip,
    )


def _fuse_vit_block(block: nn.Module, skip: bool) -> None:
    block.droppath_prob1, block.droppath_scale1 = _drop_settings(block.drop_path1)
    block.droppath_prob2, block.droppath_scale2 = _drop_settings(block.drop_path2)
    block.droppath_skip = skip


def _fuse_timm_convnext(block: nn.Module, skip: bool) -> None:
    block.droppath_prob, block.droppath_scale = _drop_settings(block.drop_path)
    block.droppath_skip = skip


def _fuse_torchvision_cnblock(block: nn.Module, skip: bool) -> bool:
    if block.stochastic_depth.mode != "row":
        return False  # one draw per batch: nothing per-sample to skip
    block.droppath_prob = float(block.stochastic_depth.p)
    block.droppath_skip = skip
    return True


# class path -> (fuse(block, skip) -> None or False, {method name: function})
_FUSERS: Dict[str, tuple[Callable, Dict[str, Callable]]] = {
    "timm.models.vision_transformer.Block": (
        _fuse_vit_block,
        {"forward": _vit_block_forward, "_droppath_attn_branch": _vit_attn_branch,
         "_droppath_mlp_branch": _vit_mlp_branch},
    ),
    "timm.models.convnext.ConvNeXtBlock": (
        _fuse_timm_convnext,
        {"forward": _timm_convnext_forward, "_droppath_branch": _timm_convnext_branch},
    ),
    "torchvision.models.convnext.CNBlock": (
        _fuse_torchvision_cnblock,
        {"forward": _torchvision_cnblock_forward, "_droppath_branch": _torchvision_cnblock_branch},
    ),
}
_FUSED_CLASSES: Dict[type, type] = {}


def _fused_class(cls: type, methods: Dict[str, Callable]) -> type:
    if cls not in _FUSED_CLASSES:
        namespace = dict(methods)
        namespace["__module__"] = __name__
        namespace["__qualname__"] = f"DropPathFused{cls.__name__}"
        _FUSED_CLASSES[cls] = type(f"DropPathFused{cls.__name__}", (cls,), namespace)
    return _FUSED_CLASSES[cls]


def _holds_stochastic_depth(module: nn.Module) -> bool:
    return any(isinstance(c, (DropPath, StochasticDepth)) for c in module.children())


def convert_model(
    model: nn.Module,
    fuse_residual: bool = False,
    *,
    skip_dropped: bool = True,
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
        skip_dropped: with ``fuse_residual``, False keeps the fused masked form
            (every sample computed) instead of skipping dropped samples.
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
        for name, module in model.named_modules():
            entry = _FUSERS.get(_class_path(module))
            if entry is None:
                if _holds_stochastic_depth(module):
                    report.unfused.append(name)
                continue
            fuse, methods = entry
            if _mixes_samples(module) or fuse(module, skip_dropped) is False:
                report.unfused.append(name)
                continue
            module.__class__ = _fused_class(type(module), methods)
            report.fused.append(name)
        if report.unfused:
            _log.info("convert_model: left unfused (unknown or sample-mixing blocks): %s", report.unfused)
    return (model, report) if return_report else model
