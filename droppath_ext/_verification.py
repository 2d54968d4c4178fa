"""Proof that a generically fused block's rewrite computes what its stock
forward computes, on private copies: nothing the user holds is read back,
written or advanced.

One verification (``verify``) of a block on one call's inputs:

- **a private copy of the block**, in float64 where the block runs in it,
  its floating parameters perturbed (a zero-initialised bias or a 1e-5 layer
  scale would hide a transform that does not commute with dropping), and its
  own stochastic-depth modules applying a forced mask;
- **checks**, each on two further copies of it -- the stock forward on one,
  the rewrite in skip mode on the other, on private copies of the inputs,
  with the same forced mask and random seed: fresh random per-sample inputs
  of the call's shapes with two masks (every other sample kept; a single
  sample kept, which the branch computes with one dropped sample so that it
  never meets a batch of one), and the call's own inputs with the first mask;
- **what must agree**, to float64 rounding: the outputs (tensors, numbers,
  containers, dataclasses, objects); the gradients of every parameter and
  input for the same random output gradients (a backward that depends on
  how many samples were computed); the inputs after the call (a forward that
  modifies its input in place); and every parameter, buffer and other
  attribute of every module of the block after forward and backward (an
  auxiliary loss kept on a module, statistics buffers, counters, attention
  maps or gradients kept for later). A forward that draws random numbers
  (dropout or stochastic depth inside a branch) is rejected: skip mode would
  draw them for the kept samples only, and the same seed would train
  differently.

Outcomes: *verified*; *rejected*, naming the difference (or the exception
the rewrite raised); *undecided*, when no check could decide: the stock
forward raised or gave non-finite values on the random inputs, and the
call's own inputs were degenerate (non-finite, or no two samples differing)
or gave the same trouble. Every random stream is forked (torch's CPU and
CUDA generators, Python's and NumPy's), autocast and every tensor mode are
set aside, and containers the block's classes and modules keep at class or
module level (caches) are put back as they were.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import itertools
import math
import random
import sys
import threading
import types
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch
from torch import Tensor, nn

from . import _verify_under_compile, residual

VERIFIED, REJECTED, UNDECIDED = "verified", "rejected", "undecided"
_SEED = 20240229
_TOLERANCE = {torch.float64: 1e-6, torch.float32: 1e-4}
"""Relative to the compared value's largest magnitude (at least 1); 2e-2 for half precision."""
_MAX_DEPTH = 4  # how deep objects' attributes are compared


@dataclass(frozen=True)
class Outcome:
    status: str
    reason: Optional[str] = None
    sites: frozenset = frozenset()
    ambiguous: bool = False
    """A residual passed its branch a floating input of the batch's size whole
    (a table, or one row per sample: an attention mask)."""


class Sites(set):
    """The residuals (their indices) that ran in skip mode in a verification,
    and whether one passed a batch-sized floating input whole."""

    ambiguous = False


class _Undecided(Exception):
    """A check that cannot decide (the stock forward raised, or gave non-finite values)."""


# ---- the verifying thread's state (read by the residual sites) ---------------------------------

_verifying: Dict[int, Tuple[nn.Module, set]] = {}
"""For each thread verifying a block: the copy running the rewrite (any other
generically fused block, nested in a branch, runs its stock forward meanwhile)
and the residuals of its rewrite (their indices) that skipped so far."""


def current() -> Optional[Tuple[nn.Module, "Sites"]]:
    return _verifying.get(threading.get_ident()) if _verifying else None


# ---- forced masks -------------------------------------------------------------------------------


def _every_other(batch: int, dtype: torch.dtype) -> Tensor:
    """Even samples kept (factor 2, exact in every dtype), odd ones dropped."""
    return (torch.arange(batch) % 2 == 0).to(dtype) * 2


def _single(batch: int, dtype: torch.dtype) -> Tensor:
    """One sample kept (the second: the branch also computes the first, dropped, as padding)."""
    factors = torch.zeros(batch, dtype=dtype)
    factors[min(1, batch - 1)] = 2
    return factors


_MASKS = {"every other sample kept": _every_other, "a single sample kept": _single}


# ---- the verification ---------------------------------------------------------------------------


def verify(block: nn.Module, stock: Callable, rewritten: Callable, args: tuple, kwargs: dict,
           is_stochastic_depth: Callable[[nn.Module], bool], state: Optional[dict] = None) -> Outcome:
    """Verify ``rewritten(copy, *args, **kwargs)`` against ``stock(copy, ...)``
    for ``block`` (see the module doc); ``state``: entries to set in the
    copies' verification state (how their residuals treat ambiguous inputs)."""
    dim = _batch_dim([m for m in block.children() if is_stochastic_depth(m)])
    batch = _batch_of(args, kwargs, dim)
    if batch is None or batch < 2:
        return Outcome(UNDECIDED, "no input with two or more samples")
    outcome = Outcome(UNDECIDED, "not run")
    with isolated(block):
        for precision in (torch.float64, None):  # (None: the block's own dtypes, if it cannot run in float64)
            try:
                outcome = _verify_in(block, stock, rewritten, args, kwargs, is_stochastic_depth, dim, batch,
                                     precision, state or {})
            except _Undecided as why:
                outcome = Outcome(UNDECIDED, str(why))
            if outcome.status != UNDECIDED:
                break
    return outcome


def _verify_in(block, stock, rewritten, args, kwargs, is_stochastic_depth, dim, batch,
               precision: Optional[torch.dtype], state: dict) -> Outcome:
    base = _private_block(block, precision, is_stochastic_depth)
    base.__dict__.setdefault("_droppath_state", {}).update(state)
    real = _private(args, kwargs, precision)
    fresh = _randomised(_private(*real, None), dim, batch)
    sites = Sites()
    masks = list(_MASKS)
    try:
        for mask in masks:
            reason = _check(base, stock, rewritten, fresh, _MASKS[mask], dim, sites)
            if reason is not None:
                return Outcome(REJECTED, f"{reason} (random inputs, {mask})", ambiguous=sites.ambiguous)
        on_random = None
        masks = masks[:1]  # (random inputs decided: the call's own are a second look)
    except _Undecided as why:
        on_random = f"on random inputs {why}"
    degenerate = _degenerate(real, dim, batch)
    if degenerate:
        if on_random is None:
            return Outcome(VERIFIED, None, frozenset(sites))
        return Outcome(UNDECIDED, f"{on_random}, and the call's inputs are degenerate ({degenerate})")
    for mask in masks:
        try:
            reason = _check(base, stock, rewritten, real, _MASKS[mask], dim, sites)
        except _Undecided as why:
            if on_random is None:
                break
            return Outcome(UNDECIDED, f"{on_random}, and on the call's inputs {why}")
        if reason is not None:
            return Outcome(REJECTED, f"{reason} (the call's inputs, {mask})", ambiguous=sites.ambiguous)
    return Outcome(VERIFIED, None, frozenset(sites))


def _check(base: nn.Module, stock: Callable, rewritten: Callable, inputs: tuple, mask: Callable, dim: int,
           sites: set) -> Optional[str]:
    """Why the rewrite differs from the stock forward on ``inputs`` with
    ``mask`` (None when it does not), forward and backward; raises
    _Undecided when the stock forward cannot be run or gives non-finite values."""
    want_block, got_block = _copy_block(base), _copy_block(base)
    want_inputs, want_leaves = _private_with_grad(inputs)
    got_inputs, got_leaves = _private_with_grad(inputs)
    for copy_ in (want_block, got_block):
        _force(copy_, mask, dim)
    key = threading.get_ident()
    _verifying[key] = (got_block, sites)
    residual._forced_factors[key] = mask
    try:
        with torch.enable_grad():
            _seed()
            before = _generator_states()
            try:
                want = stock(want_block, *want_inputs[0], **want_inputs[1])
            except Exception as error:  # noqa: BLE001 - the stock forward cannot run on these inputs: undecided
                raise _Undecided(f"the stock forward raised {type(error).__name__}: {error}") from None
            if _generator_states() != before:
                return ("the forward draws random numbers (dropout or stochastic depth inside a branch): skip mode "
                        "would draw them for the kept samples only, and the same seed would train differently")
            if not _finite(want):
                raise _Undecided("the stock forward gave non-finite values")
            _seed()
            try:
                got = rewritten(got_block, *got_inputs[0], **got_inputs[1])
            except Exception as error:  # noqa: BLE001 - any failure of the rewrite rejects it
                return f"the rewritten forward raised {type(error).__name__}: {error}"
            reason = differs(got, want, "output")
            if reason is not None:
                return reason + ": the branch mixes samples (batch statistics, a batch mean), reads the batch " \
                                "size, or a transform after drop path does not map a dropped sample to zero"
            reason = _backward_differs(want, got, want_block, got_block, want_leaves, got_leaves)
            if reason is not None:
                return reason
    finally:
        _verifying.pop(key, None)
        residual._forced_factors.pop(key, None)
    reason = differs(got_inputs, want_inputs, "input")
    if reason is not None:
        return f"the forward modifies its input in place ({reason}), which skip mode cannot reproduce"
    return _state_differs(got_block, want_block)


def _backward_differs(want: Any, got: Any, want_block: nn.Module, got_block: nn.Module, want_leaves: list,
                      got_leaves: list) -> Optional[str]:
    """Why the gradients of the two passes differ (a backward that depends on
    how many samples the branch computed), for the same random cotangents of
    the outputs; None when they agree, or when the stock outputs carry no
    gradient."""
    outputs = [t for t in _all_tensors(want, 0) if t.requires_grad and t.is_floating_point()]
    if not outputs:
        return None
    _seed()
    cotangents = [torch.randn_like(t) for t in outputs]
    try:
        torch.autograd.backward(outputs, cotangents)
    except Exception:  # noqa: BLE001 - a stock backward that cannot run here: the forward decides alone
        return None
    mine = [t for t in _all_tensors(got, 0) if t.requires_grad and t.is_floating_point()]
    if len(mine) != len(outputs):
        return "the rewritten forward's outputs carry gradients where the stock forward's do not"
    try:
        torch.autograd.backward(mine, cotangents)
    except Exception as error:  # noqa: BLE001 - the rewrite's backward fails where the stock one runs
        return f"the rewritten backward raised {type(error).__name__}: {error}"
    for (name, theirs), ours in zip(want_block.named_parameters(), got_block.parameters()):
        reason = differs(ours.grad, theirs.grad, f"the gradient of {name}")
        if reason is not None:
            return f"{reason}: the backward depends on how many samples the branch computes"
    for i, (theirs, ours) in enumerate(zip(want_leaves, got_leaves)):
        reason = differs(ours.grad, theirs.grad, f"the gradient of input {i}")
        if reason is not None:
            return f"{reason}: the backward depends on how many samples the branch computes"
    return None


def batch_size(block: nn.Module, args: tuple, kwargs: dict, is_stochastic_depth) -> Optional[int]:
    """The call's batch size along the block's stochastic-depth batch dim, or None."""
    return _batch_of(args, kwargs, _batch_dim([m for m in block.children() if is_stochastic_depth(m)]))


def copy_module(module: nn.Module) -> nn.Module:
    """A private deep copy of ``module`` (tensors it keeps from an autograd graph detached)."""
    return _copy_block(module)


def copy_inputs(args: tuple, kwargs: dict) -> Tuple[tuple, dict]:
    """Private copies of a call's inputs."""
    return _private(args, kwargs, None)


# ---- private copies -----------------------------------------------------------------------------


def _private_block(block: nn.Module, precision: Optional[torch.dtype], is_stochastic_depth) -> nn.Module:
    """The verification's own copy of ``block``: in ``precision``, its
    floating parameters perturbed. (Dropout and stochastic depth inside it
    stay as they are: a branch that draws random numbers is rejected, skip
    mode would draw them for fewer samples.)"""
    try:
        base = _copy_block(block)
    except Exception as error:  # noqa: BLE001 - a block that cannot be copied cannot be verified
        raise _Undecided(f"the block could not be copied ({type(error).__name__}: {error})") from None
    if precision is not None:
        base.to(precision)
    _seed()
    for parameter in base.parameters():
        if parameter.is_floating_point() and parameter.numel():
            rms = float(parameter.detach().double().square().mean().sqrt())
            scale = 0.1 * max(rms, 0.1) if math.isfinite(rms) else 0.1
            parameter.add_(torch.randn_like(parameter) * scale)
    return base


def _force(block: nn.Module, mask: Callable, dim: int) -> None:
    """The block's own stochastic-depth modules apply ``mask``."""
    def forced(x: Tensor) -> Tensor:
        d = dim % x.dim()
        shape = [1] * x.dim()
        shape[d] = x.shape[d]
        math_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        return x * mask(x.shape[d], math_dtype).to(device=x.device, dtype=x.dtype).view(shape)

    for name, child in block.named_children():
        if getattr(child, "_droppath_settings", None) is not None and "forward" not in vars(child):
            child.forward = forced


def _copy_block(block: nn.Module) -> nn.Module:
    return _copy_module(block, _tensor_memo(block))


def _copy_module(module: nn.Module, memo: dict) -> nn.Module:
    """A copy of ``module`` and its submodules: parameters and buffers cloned,
    other attributes deep-copied (one that cannot be, a lock, a process group,
    is shared), sharing within the tree kept."""
    if id(module) in memo:
        return memo[id(module)]
    new = copy.copy(module)
    memo[id(module)] = new
    state = {}
    for key, value in vars(module).items():
        if key == "_parameters":
            state[key] = {name: _copy_tensor(p, memo, parameter=True) for name, p in value.items()}
        elif key == "_buffers":
            state[key] = {name: _copy_tensor(b, memo) for name, b in value.items()}
        elif key == "_modules":
            state[key] = {name: None if m is None else _copy_module(m, memo) for name, m in value.items()}
        else:
            state[key] = _copy_value(value, memo, 0)
    for key in _HOOKS:
        if key in state:  # (the user's observers watch the user's modules, not these copies)
            state[key] = type(state[key])((k, h) for k, h in state[key].items() if _computes(h))
    new.__dict__.update(state)
    return new


_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def _computes(hook: Any) -> bool:
    """A hook that is part of what the module computes (weight and spectral
    norm recompute the weight before each call), kept in private copies."""
    from torch.nn.utils.spectral_norm import SpectralNorm
    from torch.nn.utils.weight_norm import WeightNorm

    return isinstance(hook, (WeightNorm, SpectralNorm))


_SHARED = (type, types.ModuleType, types.FunctionType, nn.Module, threading.Barrier, threading.Condition,
           threading.Event, threading.Semaphore, type(threading.Lock()), type(threading.RLock()))
"""Kept shared by the copies: synchronisation objects (a copy of a barrier would wait for nobody)."""


def _copy_value(value: Any, memo: dict, depth: int) -> Any:
    """A deep copy of ``value``; where that fails (an object holding a lock, a
    handle, a process group), a copy of each part that can be copied, sharing
    only the parts that cannot (a meter that owns a lock gets counters of its own)."""
    known = len(memo)
    try:
        return copy.deepcopy(value, memo)
    except Exception:  # noqa: BLE001 - copied part by part below
        for key in list(memo)[known:]:  # (half-made copies of the failed attempt)
            if key != id(memo):
                del memo[key]
    if id(value) in memo:
        return memo[id(value)]
    if depth >= _MAX_DEPTH or isinstance(value, _SHARED):
        return value
    if isinstance(value, dict):
        new = {key: _copy_value(item, memo, depth + 1) for key, item in value.items()}
        try:
            new = type(value)(new)
        except Exception:  # noqa: BLE001 - a dict subclass that cannot be rebuilt: a plain dict of the parts
            pass
    elif isinstance(value, (list, tuple, set, frozenset)):
        items = [_copy_value(item, memo, depth + 1) for item in value]
        try:
            new = type(value)(items)
        except Exception:  # noqa: BLE001 - a named tuple or other sequence: shared
            return value
    elif hasattr(value, "__dict__"):
        try:
            new = copy.copy(value)
        except Exception:  # noqa: BLE001 - cannot be copied at all: shared
            return value
        memo[id(value)] = new
        for key, item in vars(value).items():
            try:
                setattr(new, key, _copy_value(item, memo, depth + 1))
            except Exception:  # noqa: BLE001 - a read-only attribute: as copy.copy left it
                pass
        return new
    else:
        return value  # (a lock, a handle: shared)
    memo[id(value)] = new
    return new


def _copy_tensor(tensor: Optional[Tensor], memo: dict, parameter: bool = False) -> Optional[Tensor]:
    if tensor is None:
        return None
    if id(tensor) not in memo:
        if type(tensor) in (Tensor, nn.Parameter):
            clone = tensor.detach().clone()
            memo[id(tensor)] = nn.Parameter(clone, tensor.requires_grad) if parameter else clone
        else:
            memo[id(tensor)] = copy.deepcopy(tensor, memo)
    return memo[id(tensor)]


def _tensor_memo(root: nn.Module) -> dict:
    """A deepcopy memo holding detached clones of the tensors ``root``'s modules
    keep outside their parameters and buffers (a tensor of the autograd graph
    cannot be deep-copied)."""
    memo: dict = {}
    for module in root.modules():
        for key, value in vars(module).items():
            if key not in ("_parameters", "_buffers", "_modules"):
                for tensor in _tensors_in(value, 0):
                    memo.setdefault(id(tensor), tensor.detach().clone())
    return memo


def _tensors_in(value: Any, depth: int) -> Iterator[Tensor]:
    if isinstance(value, Tensor):
        yield value
    elif depth < _MAX_DEPTH:
        if isinstance(value, (list, tuple, set, frozenset)):
            for item in value:
                yield from _tensors_in(item, depth + 1)
        elif isinstance(value, dict):
            for item in value.values():
                yield from _tensors_in(item, depth + 1)


def _private(args: tuple, kwargs: dict, precision: Optional[torch.dtype]) -> Tuple[tuple, dict]:
    """Copies of the inputs: tensors detached and cloned (floating ones cast
    to ``precision``), containers rebuilt, other objects deep-copied."""
    memo: dict = {}
    for tensor in itertools.chain(_tensors_in(args, 0), _tensors_in(kwargs, 0)):
        if id(tensor) not in memo:
            clone = tensor.detach().clone()
            if precision is not None and clone.is_floating_point():
                clone = clone.to(precision)
            memo[id(tensor)] = clone
    try:
        return copy.deepcopy((tuple(args), dict(kwargs)), memo)
    except Exception as error:  # noqa: BLE001 - an input that cannot be copied: no check can run
        raise _Undecided(f"an input could not be copied ({type(error).__name__}: {error})") from None


def _private_with_grad(inputs: Tuple[tuple, dict]) -> Tuple[Tuple[tuple, dict], list]:
    """Copies of the inputs whose floating tensors are views of new leaves
    that require grad (a forward may change its input in place, as on a
    non-leaf), and those leaves, for the gradients."""
    leaves: list = []
    memo: dict = {}
    for tensor in itertools.chain(_tensors_in(inputs[0], 0), _tensors_in(inputs[1], 0)):
        if id(tensor) not in memo:
            clone = tensor.detach().clone()
            if clone.is_floating_point():
                clone.requires_grad_(True)
                leaves.append(clone)
                clone = clone.clone()
            memo[id(tensor)] = clone
    try:
        return copy.deepcopy((tuple(inputs[0]), dict(inputs[1])), memo), leaves
    except Exception as error:  # noqa: BLE001 - an input that cannot be copied: no check can run
        raise _Undecided(f"an input could not be copied ({type(error).__name__}: {error})") from None


def _randomised(inputs: Tuple[tuple, dict], dim: int, batch: int) -> Tuple[tuple, dict]:
    """``inputs`` with every floating tensor of ``batch`` samples along ``dim``
    filled with fresh normal values (the others, shared tables and masks of
    other shapes, integer indices, keep theirs)."""
    _seed(_SEED + 1)
    for tensor in _tensors_in(inputs, 0):
        if _per_sample(tensor, dim, batch) and tensor.is_floating_point():
            tensor.normal_()
    return inputs


def _per_sample(tensor: Tensor, dim: int, batch: int) -> bool:
    d = dim if dim >= 0 else tensor.dim() + dim
    return 0 <= d < tensor.dim() and tensor.shape[d] == batch


def _degenerate(inputs: Tuple[tuple, dict], dim: int, batch: int) -> Optional[str]:
    """Why the per-sample floating inputs cannot tell a per-sample branch from
    one that mixes samples (non-finite values, no two samples differing), or None."""
    found = False
    for tensor in _tensors_in(inputs, 0):
        if not (_per_sample(tensor, dim, batch) and tensor.is_floating_point()):
            continue
        found = True
        if not bool(torch.isfinite(tensor).all()):
            return "non-finite values"
        rows = tensor.movedim(dim if dim >= 0 else tensor.dim() + dim, 0).reshape(batch, -1)
        if bool((rows == rows[:1]).all()):
            return "every sample the same"
    return None if found else "no floating input with a sample per row"


def _batch_dim(depths: List[nn.Module]) -> int:
    dims = {settings[2] for m in depths for settings in [m._droppath_settings()] if settings is not None}
    return dims.pop() if len(dims) == 1 else 0


def _batch_of(args: tuple, kwargs: dict, dim: int) -> Optional[int]:
    """The batch size: the first tensor input's size along ``dim``."""
    for tensor in itertools.chain(_tensors_in(args, 0), _tensors_in(kwargs, 0)):
        d = dim if dim >= 0 else tensor.dim() + dim
        return tensor.shape[d] if 0 <= d < tensor.dim() else None
    return None


@contextlib.contextmanager
def isolated(block: nn.Module) -> Iterator[None]:
    """No autograd, autocast, tensor-function or dispatch modes; every random
    stream forked (torch's CPU and CUDA generators, Python's ``random``,
    NumPy's); containers the block's classes and modules keep at class or
    module level (caches) as they were afterwards."""
    from torch.utils._python_dispatch import _disable_current_modes

    with torch.no_grad(), torch.random.fork_rng(devices=_cuda_devices()), _no_autocast(), \
            torch._C.DisableTorchFunction(), _disable_current_modes(), _python_random_forked(), \
            _shared_containers_kept(block), _no_saved_tensor_hooks():
        yield


@contextlib.contextmanager
def _no_saved_tensor_hooks() -> Iterator[None]:
    """The saved-tensor hooks in force (activation checkpointing's, which
    count and store what a forward saves; ``save_on_cpu``) set aside: the
    verification's own autograd graphs are none of theirs."""
    autograd = torch._C._autograd
    stack = []
    while True:
        top = autograd._top_saved_tensors_default_hooks(True)
        if top is None:
            break
        stack.append(top)
        autograd._pop_saved_tensors_default_hooks()
    try:
        yield
    finally:
        for pack, unpack in reversed(stack):
            autograd._push_saved_tensors_default_hooks(pack, unpack)


def _cuda_devices() -> List[int]:
    return list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []


def _seed(seed: int = _SEED) -> None:
    """Seeds torch's CPU generator and the CUDA generators in use, nothing
    else (``torch.manual_seed`` would also queue a seed for CUDA generators not
    yet initialised, which ``fork_rng`` cannot undo)."""
    torch.default_generator.manual_seed(seed)
    for device in _cuda_devices():
        torch.cuda.default_generators[device].manual_seed(seed)


def _generator_states() -> tuple:
    """The state of every generator a forward may draw from (to tell whether it drew)."""
    states = [torch.default_generator.get_state()]
    states += [torch.cuda.default_generators[d].get_state() for d in _cuda_devices()]
    return tuple(bytes(state.numpy()) for state in states)


@contextlib.contextmanager
def _python_random_forked() -> Iterator[None]:
    numpy = sys.modules.get("numpy")
    state = random.getstate()
    numpy_state = numpy.random.get_state() if numpy is not None else None
    try:
        yield
    finally:
        random.setstate(state)
        if numpy is not None:
            numpy.random.set_state(numpy_state)


@contextlib.contextmanager
def _shared_containers_kept(block: nn.Module) -> Iterator[None]:
    """Dicts, lists and sets held by the classes of ``block``'s modules (and
    their bases outside torch) and by those classes' modules: a cache a
    forward fills there (a rotary table per sequence length) is put back as it
    was, so verification's float64 copies leave no entry the model then meets."""
    kept = []
    seen: set = set()
    for module in block.modules():
        for cls in type(module).__mro__:
            if cls.__module__.split(".")[0] in ("torch", "builtins", "droppath_ext") or cls in seen:
                continue
            seen.add(cls)
            namespaces = [vars(cls)]
            owner = sys.modules.get(cls.__module__)
            if owner is not None and id(owner) not in seen:
                seen.add(id(owner))
                namespaces.append(vars(owner))
            for namespace in namespaces:
                for value in list(namespace.values()):
                    if type(value) in (dict, list, set):
                        kept.append((value, copy.copy(value)))
    try:
        yield
    finally:
        for container, before in kept:
            if not _same_items(container, before):
                container.clear()
                if isinstance(container, dict):
                    container.update(before)
                elif isinstance(container, list):
                    container.extend(before)
                else:
                    container.update(before)


def _same_items(container, before) -> bool:
    if len(container) != len(before):
        return False
    if isinstance(container, dict):
        return all(k in before and before[k] is v for k, v in container.items())
    if isinstance(container, list):
        return all(a is b for a, b in zip(container, before))
    return container == before


@contextlib.contextmanager
def _no_autocast() -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        for device in ("cpu", "cuda"):
            try:
                stack.enter_context(torch.autocast(device, enabled=False))
            except RuntimeError:  # pragma: no cover - a device type this torch has no autocast for
                pass
        yield


# ---- comparing ------------------------------------------------------------------------------------


def _finite(value: Any, depth: int = 0) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in _all_tensors(value, depth) if t.is_floating_point() or
               t.is_complex())


def _all_tensors(value: Any, depth: int) -> Iterator[Tensor]:
    if isinstance(value, Tensor):
        yield value
    elif depth >= _MAX_DEPTH:
        return
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _all_tensors(item, depth + 1)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _all_tensors(item, depth + 1)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            yield from _all_tensors(getattr(value, f.name, None), depth + 1)


_OPAQUE = (types.FunctionType, types.BuiltinFunctionType, types.MethodType, types.ModuleType, type, nn.Module)


def differs(got: Any, want: Any, where: str, depth: int = 0) -> Optional[str]:
    """Why ``got`` is not ``want`` (to rounding), or None. Tensors, numbers,
    strings, containers, dataclasses and objects (by their attributes) are
    compared; functions, classes and modules are not data."""
    if isinstance(want, Tensor):
        return _tensor_differs(got, want, where)
    if isinstance(want, _OPAQUE) or callable(want) and not hasattr(want, "__dict__"):
        return None
    if want is None or isinstance(want, (bool, str, bytes, torch.dtype, torch.device, torch.Size, range)):
        return None if type(got) is type(want) and got == want else f"{where}: {_describe(got)} where the " \
                                                                     f"stock forward gives {_describe(want)}"
    if isinstance(want, (int, float, complex)):
        if not isinstance(got, (int, float, complex)):
            return f"{where}: {_describe(got)} where the stock forward gives {_describe(want)}"
        if got == want or (isinstance(want, float) and math.isnan(want) and isinstance(got, float) and
                           math.isnan(got)):
            return None
        if abs(got - want) <= 1e-6 * max(abs(want), 1.0):
            return None
        return f"{where} is {got!r} where the stock forward gives {want!r}"
    if depth >= _MAX_DEPTH:
        return None
    if isinstance(want, (tuple, list)):
        if not isinstance(got, (tuple, list)) or len(got) != len(want):
            return f"{where}: {_describe(got)} where the stock forward gives {_describe(want)}"
        for i, (a, b) in enumerate(zip(got, want)):
            reason = differs(a, b, f"{where}[{i}]", depth + 1)
            if reason:
                return reason
        return None
    if isinstance(want, dict):
        if not isinstance(got, dict) or list(got.keys()) != list(want.keys()):
            return f"{where}: other keys than the stock forward's"
        for key in want:
            reason = differs(got[key], want[key], f"{where}[{key!r}]", depth + 1)
            if reason:
                return reason
        return None
    if type(got) is not type(want):
        return f"{where}: {_describe(got)} where the stock forward gives {_describe(want)}"
    if dataclasses.is_dataclass(want):
        fields = {f.name: getattr(want, f.name, None) for f in dataclasses.fields(want)}
        return differs({n: getattr(got, n, None) for n in fields}, fields, where, depth)
    if hasattr(want, "__dict__"):
        return differs(vars(got), vars(want), where, depth)
    try:
        same = bool(got == want)
    except Exception:  # noqa: BLE001 - values that cannot be compared cannot be trusted equal
        same = False
    return None if same else f"{where}: a {type(want).__name__} verification cannot compare"


def _tensor_differs(got: Any, want: Tensor, where: str) -> Optional[str]:
    if not isinstance(got, Tensor) or got.shape != want.shape or got.dtype != want.dtype:
        return f"{where}: {_describe(got)} where the stock forward gives {_describe(want)}"
    if not want.numel():
        return None
    if not (want.is_floating_point() or want.is_complex()):
        return None if torch.equal(got, want) else f"{where} differs"
    got, want = got.detach(), want.detach()
    if not torch.equal(torch.isfinite(got), torch.isfinite(want)):
        return f"{where}: non-finite values where the stock forward has finite ones (or the other way round)"
    finite = torch.isfinite(want)
    if not bool(finite.all()):
        if not torch.equal(got[~finite].isnan(), want[~finite].isnan()) or \
                not torch.equal(got[~finite & ~want.isnan()], want[~finite & ~want.isnan()]):
            return f"{where}: other non-finite values than the stock forward's"
        got, want = got[finite], want[finite]
        if not want.numel():
            return None
    tolerance = _TOLERANCE.get(want.dtype, 2e-2)
    scale = float(want.abs().max())
    error = float((got - want).abs().max())
    if error > tolerance * max(scale, 1.0):
        return f"{where} differs by up to {error:.3g} (scale {scale:.3g})"
    return None


# Attributes every module has, which are not what its forward computes.
_MODULE_INTERNALS = frozenset(vars(nn.Module()).keys()) | {"forward", "_droppath_state", "droppath_skip",
                                                             _verify_under_compile.KEY}


def _state_differs(got: nn.Module, want: nn.Module) -> Optional[str]:
    """Why the modules of the block copy that ran the rewrite hold other
    values than those of the copy that ran the stock forward, or None."""
    for (name, mine), theirs in zip(want.named_modules(), got.modules()):
        prefix = f"{name}." if name else ""
        for kind in ("_parameters", "_buffers"):
            reason = differs(getattr(theirs, kind), getattr(mine, kind), f"{prefix}{kind[1:-1]}")
            if reason is not None:
                return f"the forward changes {reason}"
        attributes = {k: v for k, v in vars(mine).items() if k not in _MODULE_INTERNALS}
        others = {k: v for k, v in vars(theirs).items() if k not in _MODULE_INTERNALS}
        if attributes.keys() != others.keys():
            new = sorted(set(attributes) ^ set(others))
            return f"the forward sets {prefix}{new[0]} on one path only"
        for key, value in attributes.items():
            reason = differs(others[key], value, f"{prefix}{key}")
            if reason is not None:
                return (f"the forward keeps a value computed from the batch ({reason}): skip mode would compute it "
                        f"on the kept samples only")
    return None


def _describe(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"a {tuple(value.shape)} {value.dtype} tensor"
    return type(value).__name__
