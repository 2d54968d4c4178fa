"""droppath_ext: DropPath (stochastic depth) as a fast compiled PyTorch operator.

Public API: :func:`drop_path`, :func:`drop_path_add`, :func:`stochastic_depth`,
:class:`DropPath`, :class:`StochasticDepth`, :func:`backend`.
"""

from ._library import backend, backend_reason
from .functional import drop_path, drop_path_add, stochastic_depth
from .modules import DropPath, StochasticDepth

__version__ = "0.1.0"

__all__ = [
    "DropPath",
    "StochasticDepth",
    "backend",
    "backend_reason",
    "drop_path",
    "drop_path_add",
    "stochastic_depth",
    "__version__",
]
