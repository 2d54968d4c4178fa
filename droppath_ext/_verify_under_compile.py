"""Verification for models compiled before any eager step.

Under ``torch.compile`` a generically fused block whose kind of call is not
verified yet runs its stock forward, and its output passes through the op
``droppath_ext::_verify_on_first_run``. The op is opaque to the compiler (one
node of the graph: no graph break, ``fullgraph=True`` included); when the
compiled graph runs, it receives the call's real inputs, verifies the block
on them exactly as an eager call would (``_verification``: private copies,
nothing of the user's touched), and returns a copy of the output. Once the
kind of call is verified the block's verification state holds it, dynamo's
guards on that state fail at the next call, and the graph is compiled again
with skip mode in it: the first compiled step runs the stock forward, the
second compiles the skip-mode graph, and the graph does not change after.

The inputs that are not tensors are kept with the request (constants of the
graph), integers passed to the op (they may be symbolic sizes).
"""

from __future__ import annotations

import itertools
import weakref
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from ._on_import import when_imported

_requests: Dict[int, Tuple[int, tuple]] = {}
"""key -> (the block's key, the layout of its (args, kwargs)); made while tracing, read when the graph runs."""
_keys = itertools.count()
_blocks: Dict[int, "weakref.ReferenceType[nn.Module]"] = {}
"""A block's key (``KEY`` in its ``__dict__``) -> the block."""
_block_keys = itertools.count()
KEY = "_droppath_compile_key"


def enrol(block: nn.Module) -> None:
    """Give ``block`` its key (at conversion, and for every copy: pickling
    leaves the key out). Tracing reads the key, an integer, rather than the
    block itself: dynamo (torch 2.11) passes only constants to a function
    whose result is a constant of the graph."""
    key = next(_block_keys)
    block.__dict__[KEY] = key
    _blocks[key] = weakref.ref(block, lambda _, key=key: _blocks.pop(key, None))


_TAGS = tuple(tag for tag in (getattr(torch.Tag, "cudagraph_unsafe", None),) if tag is not None)


def request(block: nn.Module, out: Any, args: tuple, kwargs: dict) -> Any:
    """``out`` (the stock forward's output, while compiling), its first tensor
    passed through the verification op; ``out`` as it is where a call cannot
    be verified from the graph (no tensor output; an input other than a
    tensor, an integer, a constant, or a tuple or list of those)."""
    tensors: List[Tensor] = []
    numbers: List[Any] = []
    layout = _layout((tuple(args), tuple(kwargs.items())), tensors, numbers, 0)
    block_key = getattr(block, KEY, None)
    if layout is None or block_key is None:  # (None: fused by hand, not by convert_model; its eager call verifies)
        return out
    if isinstance(out, Tensor):
        return _through(block_key, out, layout, tensors, numbers)
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
        return type(out)([_through(block_key, out[0], layout, tensors, numbers), *out[1:]])
    return out


def _through(block_key: int, out: Tensor, layout: tuple, tensors: list, numbers: list) -> Tensor:
    return torch.ops.droppath_ext._verify_on_first_run(out, tensors, numbers, _register(block_key, layout))


def _layout(value: Any, tensors: list, numbers: list, depth: int) -> Optional[tuple]:
    """How to rebuild ``value`` from the op's tensors and integers: a tree of
    ("tensor", i), ("int", i), ("constant", value), ("tuple" | "list" | "pair", items); None if it cannot be."""
    if isinstance(value, Tensor):
        tensors.append(value)
        return ("tensor", len(tensors) - 1)
    if value is None or isinstance(value, (bool, str, float)):
        return ("constant", value)
    if isinstance(value, (int, torch.SymInt)):
        numbers.append(value)
        return ("int", len(numbers) - 1)
    if isinstance(value, (tuple, list)) and depth < 3:
        items = []
        for item in value:
            described = _layout(item, tensors, numbers, depth + 1)
            if described is None:
                return None
            items.append(described)
        return (type(value).__name__ if type(value) in (tuple, list) else "tuple", tuple(items))
    return None


def _rebuild(layout: tuple, tensors: List[Tensor], numbers: List[int]) -> Any:
    kind, value = layout
    if kind == "tensor":
        return tensors[value]
    if kind == "int":
        return numbers[value]
    if kind == "constant":
        return value
    items = [_rebuild(item, tensors, numbers) for item in value]
    return items if kind == "list" else tuple(items)


def _register(block_key: int, layout: tuple) -> int:
    """A key for this request of the block keyed ``block_key`` (run while
    tracing, its result a constant of the graph: marked
    ``assume_constant_result`` below)."""
    key = next(_keys)
    _requests[key] = (block_key, layout)
    return key


def _mark_constant(dynamo) -> None:
    dynamo.assume_constant_result(_register)


when_imported("torch._dynamo", _mark_constant)


@torch.library.custom_op("droppath_ext::_verify_on_first_run", mutates_args=(), tags=_TAGS)
def _verify_on_first_run(out: Tensor, tensors: List[Tensor], numbers: List[int], key: int) -> Tensor:
    """Verifies the requesting block on these inputs (nothing once its kind of
    call is verified or rejected), and returns a copy of ``out``."""
    entry = _requests.get(key)
    ref = _blocks.get(entry[0]) if entry is not None else None
    block = ref() if ref is not None else None
    if block is not None:
        args, kwargs = _rebuild(entry[1], tensors, numbers)
        block._droppath_verify_pending(tuple(args), dict(kwargs))
    return out.clone()


@_verify_on_first_run.register_fake
def _verify_on_first_run_fake(out: Tensor, tensors: List[Tensor], numbers: List[int], key: int) -> Tensor:
    return torch.empty_like(out)


def _setup_context(ctx, inputs, output) -> None:
    ctx.tensors, ctx.numbers = len(inputs[1]), len(inputs[2])


def _backward(ctx, grad: Tensor) -> Any:
    """The output's gradient to ``out`` (the op passes it through); nothing to
    the rest: a None per tensor of the list, None for a list of integers (an
    empty one is a list of no tensors: ``[]``)."""
    return grad, [None] * ctx.tensors, (None if ctx.numbers else []), None


_verify_on_first_run.register_autograd(_backward, setup_context=_setup_context)
