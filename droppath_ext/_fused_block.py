"""What every fused block shares: which form one call runs.

A fused block (``convert.py``) is the model's own block object with a new
class of the same name, a subclass of ``GenericFusedBlock`` and of its own.
Its forward runs skip mode (dropped samples' branch never computed) where
``droppath_skip`` and ``droppath_ext.residual.skip_pays`` say so, except
where a hook would see the difference.

Hooks: a forward or forward-pre hook on a module inside the branch (or a
global module hook) sees, in the stock model, the whole batch; in skip mode it
would see the kept samples only, and a hook on the stochastic-depth module
itself would never be called. So while any such hook exists (forward,
forward-pre or backward hooks on any module under the block, or global module
hooks), a block whose policy is ``"auto"`` or ``False`` runs the stock block's
own forward, with this package's stochastic-depth modules: every hook sees
what it sees in the stock model. Hooks that see nothing of the call do not
count (``_hooks``: transformers' output recorders while nothing records, a
library's permanent hooks that never read their arguments; the global hooks
of torch's ``ModuleTracker``, which ``FlopCounterMode`` registers, record only
which modules run). ``skip_dropped=True`` keeps skip mode with hooks (they
then see the computed rows). The check reads a few dicts per submodule and
runs per call, so hooks added or removed at any time count.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from . import _hooks

_GLOBAL_HOOKS = tuple(
    name for name in ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
                      "_global_backward_pre_hooks")
    if hasattr(nn.modules.module, name)
)
_COMPILED_CONV_MIN_RATE = 0.1
_MODULE_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def _tracks_calls_only(hook) -> bool:
    """A global hook of torch's ``ModuleTracker`` (``FlopCounterMode`` uses
    one): it records which modules run, which skip mode does not change."""
    try:
        from torch.utils.module_tracker import ModuleTracker
    except ImportError:  # pragma: no cover - torch without it
        return False
    return isinstance(getattr(hook, "__self__", None), ModuleTracker)


def hooks_inside(block: nn.Module) -> bool:
    """A module hook that would see the branch: on any module under ``block``
    (not ``block`` itself, whose hooks see its whole input and output either
    way), or a global one (but a module tracker's)."""
    return hook_inside(block) is not None


def hook_inside(block: nn.Module) -> Optional[str]:
    """Where ``hooks_inside`` finds a hook ("a forward hook on attn.proj",
    "a global forward hook"), or None."""
    for name in _GLOBAL_HOOKS:
        hooks = getattr(nn.modules.module, name)
        if hooks and not all(_tracks_calls_only(h) for h in hooks.values()):
            return f"a global {_KINDS[name.replace('_global', '')]}"
    compiling = torch.compiler.is_compiling()
    for where, module in block.named_modules():
        if module is not block:
            for name in _MODULE_HOOKS:
                hooks = getattr(module, name, None)
                # (while compiling, every hook counts: its code is not looked at inside a trace)
                if hooks and (compiling or any(_hooks.observes_the_call(h) for h in hooks.values())):
                    return f"a {_KINDS[name]} on {where}"
    return None


_KINDS = {"_forward_hooks": "forward hook", "_forward_pre_hooks": "forward pre-hook",
          "_backward_hooks": "backward hook", "_backward_pre_hooks": "backward pre-hook"}


def _has_convolutions(block: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.conv._ConvNd) for m in block.modules())


class FusedBlock:
    """Base of the fused-block mixins (the stock class comes after it in the MRO)."""

    droppath_skip = "auto"
    """The block's ``skip_dropped`` policy, set by ``convert_model``."""

    def _droppath_policy(self, drop_prob: float):
        """``skip_dropped`` for one residual of this block at ``drop_prob``.

        Under ``torch.compile`` a branch with convolutions skips ("auto")
        from a drop rate of 0.1 only: Inductor materialises the gathered rows
        for the convolution and compiles the branch for a data-dependent
        batch, which on the CPU cost about 4% of a ConvNeXt block (timm
        ``convnext_atto``, every sample kept), more than skipping saves below
        that rate (measured: at timm drop_path_rate 0.1, all blocks skipping,
        0.96x compiled stock; see docs/skip-mode.md's ConvNeXt rows)."""
        if self.droppath_skip == "auto" and drop_prob < _COMPILED_CONV_MIN_RATE and \
                torch.compiler.is_compiling() and _has_convolutions(self):
            return False
        return self.droppath_skip

    def _droppath_runs_stock(self) -> bool:
        """This call runs the stock block's forward (hooks are watching and
        skip mode is not forced): see the module doc."""
        return self.droppath_skip is not True and hooks_inside(self)

    def _droppath_stock_forward(self, *args, **kwargs):
        """The stock block's own forward (the class the fused one was made from)."""
        return type(self)._droppath_stock_class.forward(self, *args, **kwargs)
