"""A replaced stochastic-depth module is still its library's module.

``convert_model`` does not swap a library's stochastic-depth module for a new
object: it gives the same object a new class, made once per library class, a
subclass of that class and of this package's ``droppath_ext.DropPath``
(or ``droppath_ext.StochasticDepth``) whose only change is ``forward``.
So after conversion:

- ``isinstance(m, timm.layers.DropPath)`` (or the library's own class) holds,
  ``type(m).__name__``, ``__qualname__``, ``__module__`` and the repr are the
  library's, every other method and attribute is the library's own;
- ``isinstance(m, droppath_ext.DropPath)`` holds too;
- ``forward`` reads the library's own rate attribute (``drop_prob``, ``p``,
  ``drop_rate``, ...) and the module's own ``training`` flag on every call,
  so a schedule or a switch written against the library keeps acting;
- an input that is not a tensor (a list or tuple of them, for libraries whose
  forward takes those) goes to the library's own forward.

The ``forward`` is generated per (rate attribute, scale source) so that
TorchScript can compile it (its source is registered with ``linecache``).
"""

from __future__ import annotations

import linecache
from typing import Dict, Optional, Tuple

from torch import Tensor, nn

from . import functional as F
from .modules import DropPath, StochasticDepth

# (library class, rate attribute, scale_by_keep: None = read the module's own attribute) -> class
_CLASSES: Dict[Tuple[type, str, Optional[bool]], type] = {}
_SPECS: Dict[type, Tuple[type, str, Optional[bool]]] = {}

# A rate held as a 0-dim tensor (``DropPath(dpr[i])`` from a ``torch.linspace`` without ``.item()``) goes
# to the library's own forward: timm's ``bernoulli_`` with a tensor probability draws other numbers than
# with a float, and the same seed must give the same masks.
_FORWARD = '''\
def forward(self, x):
    if isinstance(x, (list, tuple)):
        return _library_forward(self, x)
    rate = self.{rate}
    if isinstance(rate, Tensor):
        return _library_forward(self, x)
    return F._backend.forward(x, 0.0 if rate is None else float(rate), self.training, {scale}, 0, None, None)
'''


def _drop_path_forward(library_cls: type, rate: str, scale: Optional[bool]):
    source = _FORWARD.format(rate=rate, scale="bool(self.scale_by_keep)" if scale is None else repr(scale))
    filename = f"<droppath_ext converted {library_cls.__module__}.{library_cls.__qualname__}.forward ({rate})>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)  # (TorchScript reads it)
    namespace = {"F": F, "Tensor": Tensor, "_library_forward": library_cls.forward}
    exec(compile(source, filename, "exec"), namespace)  # noqa: S102 - a template of this module's own
    return namespace["forward"]


def _settings_reader(rate: str, scale: Optional[bool]):
    def _droppath_settings(self) -> Optional[Tuple[float, bool, int]]:
        value = getattr(self, rate)
        if isinstance(value, Tensor):  # (the library's own draw: see _FORWARD; no skip mode)
            return None
        return (0.0 if value is None else float(value),
                bool(self.scale_by_keep) if scale is None else scale, 0)
    return _droppath_settings


def converted_class(library_cls: type, rate: str, scale: Optional[bool]) -> type:
    """The class a module of ``library_cls`` takes on (made once per key)."""
    key = (library_cls, rate, scale)
    if key not in _CLASSES:
        ours = StochasticDepth if rate == "p" and _is_torchvision(library_cls) else DropPath
        namespace = {
            "__module__": library_cls.__module__,
            "__qualname__": library_cls.__qualname__,
            "__doc__": library_cls.__doc__,
            "__reduce_ex__": _reduce_converted,
            # What the library shows stays the library's (this package's classes define their own).
            "__repr__": library_cls.__repr__,
            "extra_repr": library_cls.extra_repr,
            "_droppath_library_class": library_cls,
        }
        if ours is StochasticDepth:
            namespace["forward"] = StochasticDepth.forward
        else:
            namespace["forward"] = _drop_path_forward(library_cls, rate, scale)
            namespace["_droppath_settings"] = _settings_reader(rate, scale)
            # This package's DropPath's attributes, for code written against it: ``drop_prob`` is the
            # library's own rate attribute under that name too, ``scale_by_keep`` the behaviour found.
            if scale is not None:
                namespace["scale_by_keep"] = scale
            if rate != "drop_prob":
                namespace["drop_prob"] = property(lambda self: getattr(self, rate),
                                                  lambda self, value: setattr(self, rate, value))
                namespace["__jit_unused_properties__"] = ["drop_prob"]
        cls = type(library_cls.__name__, (library_cls, ours), namespace)
        _CLASSES[key] = cls
        _SPECS[cls] = key
    return _CLASSES[key]


def _is_torchvision(cls: type) -> bool:
    return cls.__name__ == "StochasticDepth" and cls.__module__.startswith("torchvision.")


def convert(module: nn.Module, rate: str, scale: Optional[bool]) -> None:
    """Give ``module`` (in place) the converted class of its own class."""
    module.__class__ = converted_class(type(module), rate, scale)


def library_class(module: nn.Module) -> Optional[type]:
    """The library class a converted module was made from, or None."""
    spec = _SPECS.get(type(module))
    return spec[0] if spec else None


def _new_converted(library_cls: type, rate: str, scale: Optional[bool]) -> nn.Module:
    cls = converted_class(library_cls, rate, scale)
    return cls.__new__(cls)


def _reduce_converted(self: nn.Module, protocol: int):
    """Converted classes are made at run time, so pickle cannot import them by
    name: a converted module pickles as its library class and conversion, and
    its state (torch.save(model), copy.deepcopy, multiprocessing)."""
    converted = next(c for c in type(self).__mro__ if c in _SPECS)  # (a subclass made by FSDP2, say)
    return _new_converted, _SPECS[converted], dict(self.__dict__)
