"""``convert_model``: make the stochastic-depth modules of any library run on
this package's ops, and optionally fuse residual blocks so that dropped
samples' branches are never computed.

Converted: timm's ``DropPath`` and torchvision's ``StochasticDepth`` (known
exactly), and any module whose class name says stochastic depth (transformers'
``XxxDropPath``, MONAI's, SAM2's, a research codebase's pasted copy of timm's)
once a copy of it passed a behaviour check (``_discovery.py``). A converted
module is the same object with a subclass of its own class (``_converted.py``):
still an instance of its library's class, of the same name and repr, reading
its library's rate attribute and its own training flag on every call.

Fused (``fuse_residual=True``): any block holding a stochastic-depth module
whose forward adds it to a residual in the usual ways (timm, torchvision and
transformers blocks included: one mechanism), from a rewrite of that forward
(``_rewrite.py``), verified against the stock forward on private copies
before it is trusted, on the block's first training call, eager or compiled
(``_fused_generic.py``, ``_verification.py``, ``_verify_under_compile.py``).
Blocks whose branch holds BatchNorm (batch statistics) are never fused.

A fused block is the same object with a new class of the same name: a
subclass of its own class whose ``forward`` comes from a mixin, reading the
drop rate and training flag from the block's own stochastic-depth children on
every call. Parameters, buffers and state-dict keys are unchanged, eval
outputs equal the original's bit for bit, and so do training outputs in the
masked form (float32/float64, same seed).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple, Union

from torch import nn

from . import _converted, _discovery, _fused_generic, _verify_under_compile
from .modules import DropPath, StochasticDepth
from ._fused_block import hook_inside
from .residual import SkipDropped

_log = logging.getLogger("droppath_ext")


@dataclass
class ConversionReport:
    """What [`convert_model`][droppath_ext.convert_model] did, by qualified module name.

    The report stays live: a fused block that its verification rejects, or
    none of whose residuals can skip, moves from ``fused`` to ``unfused`` (with
    the reason) at its first training call, and back if a later kind of call
    skips. [`skip_status`][droppath_ext.skip_status] says what each fused
    block does now.
    """

    replaced: List[str] = field(default_factory=list)
    """Stochastic-depth modules converted (in place) to run on this package's ops."""
    fused: List[str] = field(default_factory=list)
    """Residual blocks rewritten to skip dropped samples' compute (verified on their first training call)."""
    unfused: List[str] = field(default_factory=list)
    """Modules holding a stochastic-depth module that were left as they are
    (a branch that mixes samples such as BatchNorm, a forward without a
    residual generic fusion recognises, a rewrite that failed its
    verification)."""
    not_replaced: List[str] = field(default_factory=list)
    """Stochastic-depth-like modules left in place (a candidate of another
    library whose copy failed the behaviour check)."""
    reasons: Dict[str, str] = field(default_factory=dict)
    """For each name in ``unfused`` and ``not_replaced``: why."""
    notes: Dict[str, str] = field(default_factory=dict)
    """For fused blocks that, as the model stands at conversion, would run the
    stock forward instead of skip mode: why (a hook watching a module inside
    the block, which must see the whole batch)."""


def _conversion(module: nn.Module) -> tuple[Optional[tuple], Optional[str]]:
    """((rate attribute, scale_by_keep or None to read the module's own), None)
    for a stochastic-depth module to convert in place (``_converted``), or
    (None, why it stays) for a candidate that is not equivalent, or (None, None)."""
    if _discovery.is_timm_drop_path(module):
        return ("drop_prob", None if isinstance(getattr(module, "scale_by_keep", None), bool) else True), None
    if _discovery.is_torchvision_stochastic_depth(module):
        return ("p", None), None
    if _discovery.is_candidate(module):
        verdict = _discovery.check(module)
        if verdict.reason is not None:
            return None, verdict.reason
        return (verdict.rate, None if verdict.scale_attribute else verdict.scale_by_keep), None
    return None, None


_MIXES_SAMPLES = "its branch mixes samples (BatchNorm uses batch statistics)"


def _mixes_samples(module: nn.Module) -> bool:
    """BatchNorm (SyncBatchNorm too) in training normalises with batch
    statistics; InstanceNorm tracking running statistics updates them from
    the batch."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) or
               (isinstance(m, nn.modules.instancenorm._InstanceNorm) and m.track_running_stats)
               for m in module.modules())


# ---- fusing -------------------------------------------------------------------------
_FUSED_CLASSES: Dict[type, type] = {}
_FUSED_FROM: Dict[type, tuple[type, type]] = {}  # fused class -> (the block's class, the mixin)


def _fuser(module: nn.Module) -> tuple[Optional[type], Optional[str]]:
    """(the mixin that fuses ``module``, None), or (None, why not), or
    (None, None) for a module that holds no stochastic depth."""
    if not _holds_stochastic_depth(module):
        return None, None
    if any(_discovery.is_candidate(c) for c in module.children()):
        return None, "its DropPath was left as it is (see its own entry)"
    depths = [c for c in module.children() if isinstance(c, (DropPath, StochasticDepth))]
    if all(c._droppath_settings() is None for c in depths):
        return None, "its stochastic depth draws once per batch (mode 'batch'): nothing per sample to skip"
    reason = _fused_generic.why_not(module)
    if reason:
        return None, _MIXES_SAMPLES if _mixes_samples(module) else reason
    if any(_mixes_samples(m) for m in _fused_generic.branch_modules(module)):
        return None, _MIXES_SAMPLES
    return _fused_generic.GenericFusedBlock, None


def _fused_class(cls: type, mixin: type) -> type:
    if cls not in _FUSED_CLASSES:
        # The block's own name, module and doc: code that finds modules by their class name (a schedule
        # matching 'DropPath' in it, a switch for 'Block') sees what it saw before conversion.
        name = cls.__name__
        namespace = {"__module__": cls.__module__, "__qualname__": cls.__qualname__, "__doc__": cls.__doc__,
                     "__reduce_ex__": _reduce_fused_block, "_droppath_stock_class": cls}
        namespace["forward"] = _fused_generic.fused_forward(cls)
        fused = type(name, (mixin, cls), namespace)
        _FUSED_CLASSES[cls] = fused
        _FUSED_FROM[fused] = (cls, mixin)
    return _FUSED_CLASSES[cls]


def _new_fused_block(cls: type, mixin: type) -> nn.Module:
    """Unpickling: an empty instance of the fused class, made again from the
    classes it combines (both importable by name), whose state pickle restores."""
    fused = _fused_class(cls, mixin)
    block = fused.__new__(fused)
    _verify_under_compile.enrol(block)  # (its own key: the state pickle restores leaves the original's out)
    return block


def _reduce_fused_block(self: nn.Module, protocol: int):
    """Fused classes are made at run time, so pickle cannot import them by
    name: a fused block pickles as the two classes it combines, and its state
    (torch.save(model), copy.deepcopy, multiprocessing)."""
    # (the fused class, or the one it is a base of: FSDP2's fully_shard subclasses the module's class)
    fused = next(c for c in type(self).__mro__ if c in _FUSED_FROM)
    cls, mixin = _FUSED_FROM[fused]
    return _new_fused_block, (cls, mixin), {k: v for k, v in self.__dict__.items() if k != _verify_under_compile.KEY}


def _holds_stochastic_depth(module: nn.Module) -> bool:
    return any(isinstance(c, (DropPath, StochasticDepth)) or _discovery.is_candidate(c)
               for c in module.children())


def convert_model(
    model: nn.Module,
    fuse_residual: bool = False,
    *,
    skip_dropped: SkipDropped = "auto",
    return_report: bool = False,
) -> Union[nn.Module, Tuple[nn.Module, ConversionReport]]:
    """Make ``model``'s stochastic-depth modules run on this package's ops, in place.

    Converted: timm's ``DropPath``, torchvision's ``StochasticDepth``, and any
    other library's stochastic-depth module (transformers' ``XxxDropPath``,
    MONAI's, a pasted copy of timm's) once a copy of it passed a behaviour
    check. Each stays the same object, an instance of its library's class
    (and of [`DropPath`][droppath_ext.DropPath] or
    [`StochasticDepth`][droppath_ext.StochasticDepth]) with its name, repr and
    attributes; it reads its library's rate attribute and its own ``train()``
    / ``eval()`` flag on every call, so drop-rate schedules keep acting.

    Args:
        model: any module; converted in place and returned.
        fuse_residual: also fuse residual blocks, so that in training each
            residual branch runs on the kept samples only ("skip mode"). Any
            block whose forward adds a stochastic-depth module's output to a
            residual in a recognisable way is fused, from a rewrite of its own
            forward that is verified against the stock forward, on private
            copies, on the block's first training call of each kind (see
            [`verify_fused`][droppath_ext.verify_fused]); until then, and for
            good if it fails, the block runs its stock forward. Blocks whose
            branch mixes samples (BatchNorm) or draws random numbers, and
            blocks without such a residual, are left as they are, logged
            (logger ``droppath_ext``) and listed in the report with the reason.
        skip_dropped: with ``fuse_residual``: ``"auto"`` (default) skips
            dropped samples' compute where that is expected to be faster
            ([`skip_pays`][droppath_ext.residual.skip_pays]: always on the CPU;
            on CUDA at large batches and high drop rates), ``True`` always,
            ``False`` never (the fused masked form: every sample computed).
        return_report: also return a
            [`ConversionReport`][droppath_ext.ConversionReport].

    Returns:
        ``model``, or ``(model, report)`` with ``return_report=True``.

    Example:
        ```python
        import timm, droppath_ext as dp
        model = timm.create_model("vit_tiny_patch16_224", drop_path_rate=0.1)
        model, report = dp.convert_model(model, fuse_residual=True, return_report=True)
        print(len(report.replaced), "DropPath modules converted;", report.fused[:2])
        ```
    """
    report = ConversionReport()
    for name, module in list(model.named_modules()):
        conversion, reason = _conversion(module)
        if conversion is not None:
            _converted.convert(module, *conversion)
            report.replaced.append(name)
        elif reason is not None:
            report.not_replaced.append(name)
            report.reasons[name] = reason

    if fuse_residual:
        fused_classes = set(_FUSED_CLASSES.values())
        for name, module in model.named_modules():
            if type(module) in fused_classes:  # converted before: only the skip policy changes
                module.droppath_skip = skip_dropped
                report.fused.append(name)
                continue
            mixin, reason = _fuser(module)
            if mixin is None:
                if reason is not None:
                    report.unfused.append(name)
                    report.reasons[name] = reason
                continue
            module.droppath_skip = skip_dropped
            module.__class__ = _fused_class(type(module), mixin)
            _fused_generic.prepare(module, report, name)
            report.fused.append(name)
            hook = hook_inside(module) if skip_dropped is not True else None
            if hook is not None:
                report.notes[name] = f"runs the stock forward while {hook} watches it (skip_dropped=True " \
                                     f"runs skip mode anyway, the hook then seeing the computed samples only)"
    for name in report.unfused + report.not_replaced:
        _log.info("convert_model: left %r as it is: %s", name, report.reasons[name])
    for name, note in report.notes.items():
        _log.info("convert_model: fused %r %s", name, note)
    return (model, report) if return_report else model
