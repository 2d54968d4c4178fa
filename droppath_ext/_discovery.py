"""Which modules are stochastic depth, from any library: found by name,
replaced only after a behaviour check.

timm's ``DropPath`` and torchvision's ``StochasticDepth`` are known exactly.
Everything else -- transformers' 44 ``XxxDropPath`` classes, MONAI's
``DropPath``, SAM2's, mmcv's, and the copies of timm's ``drop_path`` pasted
into research code -- is a *candidate* when its class name says stochastic
depth (``DropPath``, ``StochasticDepth``, ``DropPath2D``, ``MyDropPath``, ...),
and is replaced by this package's ``droppath_ext.DropPath`` only after a
copy of it passed a behaviour check:

- in eval mode, and in training at drop rate 0, it returns its input;
- in training at drop rate 0.5 it zeroes whole samples (dim 0) and leaves
  the others scaled by exactly 1 / (1 - p) -- or not scaled at all, which
  makes the replacement ``scale_by_keep=False`` -- both outcomes occurring,
  for a 3-D and a 4-D input (the first that the module accepts) and for a
  transposed one.

The check is a pure function of the module's class and settings: it runs on
a deep copy, on the CPU, with tensors it makes itself (never on the default
device, so a conversion under ``torch.device("meta")`` or a FakeTensorMode
probes real tensors), under a fixed seed on a forked CPU generator (the
user's random stream does not move), with every tensor-function and
dispatch mode set aside. Nothing is cached: a verdict costs well under a
millisecond, and nothing the environment does can change it.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import re
from dataclasses import dataclass
from typing import Iterator, Optional

import torch
from torch import nn

_CANDIDATE_NAME = re.compile(r"\w*(DropPath|Droppath|StochasticDepth)(2[dD]|3[dD]|Nd|ND)?")
_RATE_ATTRIBUTES = ("drop_prob", "drop_path_prob", "drop_path_rate", "drop_rate", "p", "prob", "rate")
_PROBE_SHAPES = ((64, 3, 5), (64, 2, 3, 2))


@dataclass(frozen=True)
class Verdict:
    """What the behaviour check found: ``reason`` is None when the module
    behaves as this package's DropPath with ``scale_by_keep`` (read from the
    module's own ``scale_by_keep`` attribute on every call when
    ``scale_attribute``), its rate in ``rate``."""

    reason: Optional[str]
    scale_by_keep: bool = True
    rate: str = "drop_prob"
    scale_attribute: bool = False


def _ours(module: nn.Module) -> bool:
    """This package's module, or a library's converted one (``_converted``)."""
    from .modules import DropPath, StochasticDepth

    return isinstance(module, (DropPath, StochasticDepth))


def is_timm_drop_path(module: nn.Module) -> bool:
    return type(module).__name__ == "DropPath" and type(module).__module__.startswith("timm.") and \
        not _ours(module)


def is_torchvision_stochastic_depth(module: nn.Module) -> bool:
    return type(module).__name__ == "StochasticDepth" and type(module).__module__.startswith("torchvision.") and \
        not _ours(module)


def is_candidate(module: nn.Module) -> bool:
    """A stochastic-depth module of another library (by its class name), not
    one of this package's own (converted ones included) nor one known exactly
    (timm, torchvision)."""
    cls = type(module)
    if _ours(module) or is_timm_drop_path(module) or is_torchvision_stochastic_depth(module):
        return False
    return _CANDIDATE_NAME.fullmatch(cls.__name__) is not None


def rate_attribute(module: nn.Module) -> Optional[str]:
    """The attribute holding the drop rate (a number, or None for 0)."""
    for name in _RATE_ATTRIBUTES:
        if name in vars(module) or hasattr(type(module), name):
            value = getattr(module, name, None)
            if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)):
                return name
    return None


def drop_prob(module: nn.Module) -> float:
    name = rate_attribute(module)
    value = getattr(module, name, None) if name else None
    return 0.0 if value is None else float(value)


@contextlib.contextmanager
def _isolated() -> Iterator[None]:
    """The probe's own world: no tensor-function modes (``torch.device(...)``
    contexts included) or dispatch modes (FakeTensorMode, ...), no autograd,
    a fixed seed on a forked CPU generator."""
    from torch.utils._python_dispatch import _disable_current_modes

    with torch._C.DisableTorchFunction(), _disable_current_modes(), torch.no_grad(), \
            torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(0)
        yield


def check(module: nn.Module) -> Verdict:
    """Whether ``module`` behaves as this package's DropPath (see module doc)."""
    name = type(module).__name__
    attribute = rate_attribute(module)
    if attribute is None:
        return Verdict(f"{name} has no drop-rate attribute (one of {', '.join(_RATE_ATTRIBUTES)})")
    reason = _one_input(type(module))
    if reason is not None:
        return Verdict(reason)
    with _isolated():
        try:
            probe = copy.deepcopy(module)
        except Exception as error:  # noqa: BLE001 - a module we cannot copy is left alone
            return Verdict(f"{name} could not be copied to check it: {type(error).__name__}: {error}")
        failures = []
        for shape in _PROBE_SHAPES:
            x = torch.rand(shape, dtype=torch.float64, device="cpu") + 0.5  # never zero
            try:
                verdict = _check_on(probe, attribute, x, name)
                return Verdict(None, verdict.scale_by_keep, attribute, _honours_scale_by_keep(probe, attribute, x))
            except _Unfit as unfit:
                return Verdict(str(unfit))
            except Exception as error:  # noqa: BLE001 - a module that fails on this shape: try the next
                failures.append(f"{type(error).__name__}: {error}")
        return Verdict(f"{name} failed its check on every probe shape: {'; '.join(failures)}")


def _honours_scale_by_keep(probe: nn.Module, attribute: str, x: torch.Tensor) -> bool:
    """The module has a ``scale_by_keep`` flag and follows it (the replacement
    then reads it on every call; otherwise the behaviour found is fixed)."""
    value = getattr(probe, "scale_by_keep", None)
    if not isinstance(value, bool):
        return False
    probe.train()
    setattr(probe, attribute, 0.5)
    probe.scale_by_keep = not value
    try:
        return _per_sample_drop(probe(x), x, 0.5) is (not value)
    except Exception:  # noqa: BLE001 - a flag it does not take: the behaviour found stays fixed
        return False
    finally:
        probe.scale_by_keep = value


def _one_input(cls: type) -> Optional[str]:
    """Why ``cls.forward`` is not a forward of one input (the only call the
    replacement takes), or None."""
    try:
        parameters = list(inspect.signature(cls.forward).parameters.values())[1:]  # (after self)
    except (TypeError, ValueError):
        return f"{cls.__name__}.forward has no signature to check"
    if len(parameters) != 1 or parameters[0].kind not in (inspect.Parameter.POSITIONAL_ONLY,
                                                          inspect.Parameter.POSITIONAL_OR_KEYWORD):
        names = ", ".join(p.name for p in parameters)
        return f"{cls.__name__}.forward({names}) takes more than one input; only forward(x) is replaced"
    return None


class _Unfit(Exception):
    """The module ran, and does not behave as DropPath."""


def _check_on(probe: nn.Module, attribute: str, x: torch.Tensor, name: str) -> Verdict:
    probe.eval()
    setattr(probe, attribute, 0.5)
    if not torch.equal(probe(x), x):
        raise _Unfit(f"{name} is not the identity in eval mode")
    probe.train()
    scaled = None
    for sample in (x, x.transpose(1, 2)):
        out = probe(sample)
        kind = _per_sample_drop(out, sample, 0.5)
        if kind is None or (scaled is not None and kind != scaled):
            raise _Unfit(f"{name} does not drop whole samples scaled by 1 / keep_prob (or unscaled)")
        scaled = kind
    setattr(probe, attribute, 0.0)
    if not torch.equal(probe(x), x):
        raise _Unfit(f"{name} is not the identity at drop rate 0")
    return Verdict(None, scale_by_keep=bool(scaled))


def _per_sample_drop(out: torch.Tensor, x: torch.Tensor, keep: float) -> Optional[bool]:
    """True when every sample of ``out`` is all zeros or exactly ``x / keep``,
    False when all zeros or exactly ``x``, both outcomes occurring; else None."""
    if not isinstance(out, torch.Tensor) or out.shape != x.shape:
        return None
    dropped = (out.flatten(1) == 0).all(1)
    if not dropped.any() or dropped.all():
        return None
    for scale, expected in ((True, x.div(keep)), (False, x)):
        kept = (out.flatten(1) == expected.flatten(1)).all(1)
        if bool((dropped | kept).all()):
            return scale
    return None
