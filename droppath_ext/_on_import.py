"""Run a registration when a module is imported, not before: some of what we
register into (Inductor's decomposition table, DTensor's sharding rules) lives
in modules that cost a good part of a second to import, which a user who never
compiles or shards should not pay."""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
import warnings
from types import ModuleType
from typing import Callable


class _RunAfterImport(importlib.abc.MetaPathFinder):
    """Finds one module through the other finders, and has its loader run a
    callback right after executing it."""

    def __init__(self, name: str, callback: Callable[[ModuleType], None]) -> None:
        self.name, self.callbacks = name, [callback]

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)  # once, and not for the lookup below
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            execute = spec.loader.exec_module  # this spec's own loader instance

            def exec_module(module: ModuleType) -> None:
                execute(module)
                for callback in self.callbacks:
                    _run(callback, module)

            spec.loader.exec_module = exec_module
        return spec


def _run(callback: Callable[[ModuleType], None], module: ModuleType) -> None:
    """A registration that fails (a torch whose internals moved) warns: it must
    never make the user's import of ``module`` fail."""
    try:
        callback(module)
    except Exception as error:  # noqa: BLE001 - any failure: warn, and stay correct unregistered
        warnings.warn(f"droppath_ext: could not register with {module.__name__} "
                      f"({type(error).__name__}: {error}); droppath ops stay as they are there",
                      RuntimeWarning)


def when_imported(name: str, callback: Callable[[ModuleType], None]) -> None:
    """``callback(module)`` now if module ``name`` is imported, else right after
    its import (once)."""
    module = sys.modules.get(name)
    if module is not None:
        _run(callback, module)
        return
    for finder in sys.meta_path:
        if isinstance(finder, _RunAfterImport) and finder.name == name:
            if callback not in finder.callbacks:
                finder.callbacks.append(callback)
            return
    sys.meta_path.insert(0, _RunAfterImport(name, callback))
