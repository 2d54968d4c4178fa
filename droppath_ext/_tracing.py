"""Where Python may look at tensor *values* and branch on them: one predicate.

Skip mode (``drop_path_residual``) reads the drawn mask on the host and picks
shapes and code paths from it (how many samples to compute, the all-dropped
and all-kept shortcuts); the offsets check reads ``cu_seqlens``. That is legal
only in plain eager execution on real, plain tensors. Everywhere else the
value read is either impossible (FX proxies, fake and meta tensors) or is
frozen into whatever is being recorded (``torch.jit.trace``, ``make_fx``,
``torch.export``, CUDA graph capture), so that later runs silently replay one
draw. There the masked form runs instead: the same result for the same mask,
with no data-dependent control flow. ``torch.compile`` is the one tracer skip
mode has a form for (``skip_mode`` returns "compiled"): the count of rows
becomes a data-dependent size of the graph (``_skip_rows``), so nothing is
frozen.
"""

from __future__ import annotations

import warnings
from typing import Optional, Sequence

import torch
from torch import Tensor

from ._on_import import when_imported

_PLAIN_TYPES = (torch.Tensor, torch.nn.Parameter)
_symbolic_tracing = getattr(torch.fx._symbolic_trace, "is_fx_symbolic_tracing", None)


def is_proxy(value: object) -> bool:
    """An FX symbolic-tracing proxy (``torch.fx.symbolic_trace``, torchvision's
    and timm's feature extraction): it has no dtype, shape or values to check."""
    return isinstance(value, torch.fx.Proxy)


def shapes_differ(a: Sequence, b: Sequence) -> bool:
    """``a != b`` for two shapes (or lists of sizes), for a check that raises
    a clear error. Under ``torch.jit.trace`` sizes are traced tensors, and
    comparing them warns that the trace takes the result as a constant, which
    is what a shape check means: the warning is silenced there."""
    if not torch.jit.is_tracing():
        return a != b
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        return bool(a != b)


def _functorch_active() -> bool:
    """Inside a torch.func transform (grad, vmap, jvp, functionalize, ...)."""
    peek = getattr(getattr(torch._C, "_functorch", None), "peek_interpreter_stack", None)
    return peek is not None and peek() is not None


def _function_modes_active() -> bool:
    """A TorchFunctionMode other than ``with torch.device(...)`` (which only
    picks a default device): tracers such as pre-dispatch make_fx use them."""
    if not torch._C._is_torch_function_mode_enabled():
        return False
    from torch.overrides import _get_current_function_mode_stack
    from torch.utils._device import DeviceContext

    return any(not isinstance(mode, DeviceContext) for mode in _get_current_function_mode_stack())


def _observing_mode_types() -> tuple:
    """Dispatch modes that only observe the ops of real tensors: the values
    and shapes they see are the real ones, and nothing is recorded to be
    replayed. ``FlopCounterMode`` (its dispatch mode): under it skip mode
    runs, and the flops counted are the ones computed."""
    try:
        from torch.utils import flop_counter
    except ImportError:  # pragma: no cover - torch without it
        return ()
    from torch.utils._python_dispatch import TorchDispatchMode

    return tuple(cls for cls in (getattr(flop_counter, "_FlopCounterMode", None), flop_counter.FlopCounterMode)
                 if isinstance(cls, type) and issubclass(cls, TorchDispatchMode))


def _recording_dispatch_modes() -> bool:
    """A TorchDispatchMode other than the observing ones: FakeTensorMode,
    make_fx's proxy mode, functionalization, ..."""
    if torch._C._len_torch_dispatch_stack() == 0:
        return False
    from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

    observing = _observing_mode_types()
    return not observing or any(not isinstance(mode, observing) for mode in _get_current_dispatch_mode_stack())


def _cuda_capturing(tensors: tuple) -> bool:
    """A CUDA graph is being captured on the current stream (asked only when a
    tensor is on CUDA: the query needs a working CUDA context)."""
    return any(t.is_cuda for t in tensors) and torch.cuda.is_current_stream_capturing()


FUNCTORCH_REASON = "a torch.func transform"


def why_not_plain_eager(*tensors: Optional[Tensor]) -> Optional[str]:
    """Why reading these tensors' values (and branching on them) is not
    allowed here, or None where it is: plain eager execution on real tensors
    of the plain ``torch.Tensor`` type, with nothing recording the ops."""
    present = tuple(t for t in tensors if t is not None)
    if torch.jit.is_tracing():
        return "torch.jit.trace"
    if torch.compiler.is_compiling():
        return "torch.compile / torch.export"
    if any(is_proxy(t) for t in present) or (_symbolic_tracing is not None and _symbolic_tracing()):
        return "torch.fx symbolic tracing"
    for t in present:
        if type(t) not in _PLAIN_TYPES:
            return f"a tensor subclass ({type(t).__name__})"
        if t.is_meta:
            return "meta tensors"
    if _functorch_active():
        return FUNCTORCH_REASON
    if _recording_dispatch_modes():
        return "a TorchDispatchMode (FakeTensorMode, make_fx, ...)"
    if _function_modes_active():
        return "a TorchFunctionMode"
    if _cuda_capturing(present):
        return "CUDA graph capture"
    return None


def _exporting() -> bool:
    """torch.export is tracing. Read from torch's flag itself: dynamo in torch
    2.11 answers ``torch.compiler.is_exporting()`` with a constant True under
    plain torch.compile too (which would keep skip mode out of every
    compiled graph), while the flag is set by torch.export alone."""
    flag = getattr(torch.compiler, "_is_exporting_flag", None)
    return torch.compiler.is_exporting() if flag is None else bool(flag)


def _inside_higher_order_op() -> bool:
    """Dynamo is tracing the body of a higher-order op: activation
    checkpointing's region (``torch.utils.checkpoint``, reentrant or not,
    timm's ``set_grad_checkpointing``, transformers'
    ``gradient_checkpointing_enable``), an autograd.Function, ``torch.cond``.

    Skip mode's data-dependent size does not survive such a region: the
    partitioner recomputes the row maps in the backward graph (redefining the
    size) but also hands the backward sizes derived from it (``17 * u0``)
    that Inductor takes for bound, and the backward reads the size before it
    is defined (torch 2.14: "cannot access local variable 'u11'"). Asked of
    dynamo's own tracer, at trace time: marked ``assume_constant_result``
    (below) once dynamo is imported, so it is called while tracing and its
    answer is a constant of the graph, never a graph break."""
    try:
        from torch._dynamo.symbolic_convert import InstructionTranslator

        tracer = InstructionTranslator.current_tx().output.current_tracer
    except Exception:  # noqa: BLE001 - not under dynamo (AOT tracing), or its internals moved
        return False
    return getattr(tracer, "parent", None) is not None


def _mark_constant(dynamo) -> None:
    dynamo.assume_constant_result(_inside_higher_order_op)


when_imported("torch._dynamo", _mark_constant)


def skip_mode(*tensors: Optional[Tensor]) -> Optional[str]:
    """How skip mode may run here: ``"eager"`` (plain eager execution: the
    mask read on the host), ``"compiled"`` (being traced by torch.compile,
    where the count of rows computed becomes an unbacked size of one graph:
    _skip_rows), or None (the masked form: every other tracer, transform,
    fake/meta tensor, tensor subclass, CUDA graph capture, torch.export)."""
    present = tuple(t for t in tensors if t is not None)
    if torch.compiler.is_compiling():
        if torch.jit.is_tracing() or _exporting() or _inside_higher_order_op():
            return None
        if any(type(t) not in _PLAIN_TYPES or t.is_meta for t in present):
            return None
        return "compiled"
    return "eager" if why_not_plain_eager(*present) is None else None


def readable(t: Tensor) -> Optional[Tensor]:
    """``t`` or the plain tensor under it, whose values may be read here, or
    None: in plain eager mode ``t`` itself; inside torch.func's grad or jvp
    the tensor their wrappers hold (a vmapped tensor has no one value)."""
    why = why_not_plain_eager(t)
    if why is None:
        return t
    if why != FUNCTORCH_REASON:
        return None
    functorch = torch._C._functorch
    while functorch.is_functorch_wrapped_tensor(t):
        if functorch.is_batchedtensor(t):
            return None
        t = functorch.get_unwrapped(t)
    return t


def values_readable(t: Tensor) -> bool:
    """Whether ``readable(t)`` finds values to read."""
    return readable(t) is not None


def plain_eager(*tensors: Optional[Tensor]) -> bool:
    """Whether Python may read these tensors' values and branch on them
    (``why_not_plain_eager`` says why not)."""
    return why_not_plain_eager(*tensors) is None
