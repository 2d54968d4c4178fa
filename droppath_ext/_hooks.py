"""Which module hooks see what skip mode changes: the batch a module is called with.

A hook inside a fused block's branch would see, in skip mode, the kept
samples only (``_fused_block``). Many hooks see nothing of the call:

- transformers' output-capturing hooks (``output_hidden_states``,
  ``output_attentions``) record only while a call asked for their output;
  installed once, they stay on the modules for good;
- hooks that never read what they are given: a library's permanent
  forward pre-hook that clamps a parameter before each call (MONAI's Hyena
  blocks, through nvsubquadratic), a counter, a timer.

The second kind is found from the hook's code: a Python function (or bound
method) none of whose arguments after the module is ever loaded, that does
not capture them in a closure and returns None, cannot observe the call.
Anything else (builtins, partials, callable objects, ``*args`` read) counts
as observing. Verdicts are cached per code object.
"""

from __future__ import annotations

import dis
import inspect
import sys
import types
from typing import Any, Dict

_LOADS = ("LOAD_FAST", "LOAD_FAST_CHECK", "LOAD_FAST_AND_CLEAR", "LOAD_FAST_LOAD_FAST", "LOAD_FAST_BORROW",
          "LOAD_FAST_BORROW_LOAD_FAST_BORROW", "LOAD_DEREF", "LOAD_CLOSURE")
_blind: Dict[types.CodeType, bool] = {}


def observes_the_call(hook: Any) -> bool:
    """Whether ``hook`` (a forward, forward-pre or backward hook) may see what
    its module is called with or returns."""
    if _inactive_recorder(hook):
        return False
    function, bound = hook, 0
    if inspect.ismethod(function):
        function, bound = function.__func__, 1
    if not isinstance(function, types.FunctionType):
        return True
    code = function.__code__
    if code not in _blind:
        _blind[code] = _blind_to_its_arguments(code, bound)
    return not _blind[code]


def _blind_to_its_arguments(code: types.CodeType, bound: int) -> bool:
    """No argument after the module (and ``self`` of a bound method) is read,
    captured or reachable through ``locals()``, and every return is of None."""
    count = code.co_argcount + code.co_kwonlyargcount
    flags = code.co_flags
    count += bool(flags & inspect.CO_VARARGS) + bool(flags & inspect.CO_VARKEYWORDS)
    watched = set(code.co_varnames[bound + 1:count])
    if not watched:
        return False  # (a hook of no arguments is not one torch calls)
    if watched & set(code.co_cellvars) or "locals" in code.co_names or "vars" in code.co_names:
        return False
    previous = None
    for instruction in dis.get_instructions(code):
        if instruction.opname in _LOADS:
            names = instruction.argval if isinstance(instruction.argval, tuple) else (instruction.argval,)
            if watched & set(names):
                return False
        if instruction.opname == "RETURN_VALUE" and not (
                previous is not None and previous.opname == "LOAD_CONST" and previous.argval is None):
            return False
        if instruction.opname == "RETURN_CONST" and instruction.argval is not None:
            return False
        previous = instruction
    return True


def _inactive_recorder(hook: Any) -> bool:
    """A transformers output-capturing hook whose output no call is recording now."""
    if not isinstance(hook, types.FunctionType) or hook.__qualname__ != \
            "install_output_capuring_hook.<locals>.output_capturing_hook":
        return False
    module = sys.modules.get(hook.__module__)
    collector = getattr(module, "_active_collector", None)
    cells = dict(zip(hook.__code__.co_freevars, hook.__closure__ or ()))
    if collector is None or "key" not in cells:
        return False
    try:
        collected = collector.get()
        key = cells["key"].cell_contents
    except Exception:  # noqa: BLE001 - another transformers' internals: the hook counts
        return False
    return collected is None or key not in collected
