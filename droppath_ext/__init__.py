"""droppath_ext: DropPath (stochastic depth) as a fast compiled PyTorch operator.

Public API: ``drop_path``, ``drop_path_add``, ``stochastic_depth``,
``drop_path_residual``, ``DropPath``, ``StochasticDepth``,
``convert_model``, ``verify_fused``, ``skip_status``, ``backend``,
``replay_generators``.
"""

from . import _inductor_fixes, _library
from ._library import backend, backend_reason
from .checkpointing import replay_generators
from ._fused_generic import skip_status, verify_fused
from .convert import ConversionReport, convert_model
from .functional import drop_path, drop_path_add, stochastic_depth
from .modules import DropPath, StochasticDepth
from .residual import drop_path_residual

_inductor_fixes.register()  # skip mode under torch.compile runs on either backend

if _library.LOADED:
    from . import _decompositions, _dtensor, _ops, _vmap

    _ops.register()
    if _library.CUDA_FALLBACK_REASON:
        _ops.register_cuda_fallback()
    _vmap.register()
    _decompositions.register()
    _dtensor.register()

__version__ = "0.1.0"

__all__ = [
    "ConversionReport",
    "DropPath",
    "StochasticDepth",
    "backend",
    "backend_reason",
    "convert_model",
    "drop_path",
    "drop_path_add",
    "drop_path_residual",
    "replay_generators",
    "skip_status",
    "stochastic_depth",
    "verify_fused",
    "__version__",
]
