"""Generic fusion: any block whose forward adds a stochastic-depth branch to a
residual in the usual ways runs in skip mode, from a rewrite of its own
source (``_rewrite.py``), verified before it is trusted.

A generically fused block is the model's block object with a class of the
block's own name, a subclass of ``GenericFusedBlock`` and of the block's
class. Its ``forward`` is a function of the stock forward's signature
(``__wrapped__`` is the stock forward, so TorchScript scripts the stock
forward, and ``inspect`` sees its signature) that runs:

- the stock forward (with this package's stochastic-depth modules) in eval
  mode, under every tracer but ``torch.compile`` (FX, ``jit.trace``, fake
  and meta tensors, functorch, ``torch.export`` via the sites' own checks),
  while a hook watches the block (``_fused_block``), for kinds of call not
  verified, and for good once a verification failed;
- otherwise the rewritten forward, whose residuals go through ``site``:
  skip mode where the residual's stochastic-depth module is training, the
  block's policy and [`skip_pays`][droppath_ext.residual.skip_pays] say so, and every per-sample
  input has the residual's batch; else the stock expression ``res + dp(branch)``.

Verification (``_verification``), on the block's first eager training call
of each kind (``_signature``: the batch size, which inputs are None, flags),
proves the rewrite equal to the stock forward on private copies of the block
and the inputs -- outputs, inputs after the call, and every module attribute
and buffer -- in float64 with perturbed parameters, on fresh random inputs
and the call's own, with two masks; nothing of the user's changes. A block
whose rewrite differs (a branch that mixes samples, an in-place change of its
input, a side output computed from the batch) runs the stock forward from
then on; the reason is logged and moved into the ``ConversionReport`` of its
conversion (``fused`` -> ``unfused``, with ``reasons``). A verification that
cannot decide (degenerate inputs on which the stock forward fails) leaves
the call to the stock forward and tries again on the next one, up to three.
Under ``torch.compile``, a kind of call not yet verified runs the stock
forward and verifies from inside the graph (``_verify_under_compile``);
[`verify_fused`][droppath_ext.verify_fused] is an optional warm-up.
"""

from __future__ import annotations

import collections
import functools
import logging
import types
import weakref
from typing import Any, Callable, Dict, Optional, Tuple

import torch
from torch import Tensor, nn

from . import _rewrite, _tracing, _verification, _verify_under_compile, residual
from ._fused_block import FusedBlock, hook_inside
from .modules import DropPath, StochasticDepth

_log = logging.getLogger("droppath_ext")

_REWRITES: Dict[type, _rewrite.Rewrite] = {}
_FORWARDS: Dict[type, Callable] = {}
_REPORTS: "weakref.WeakKeyDictionary[nn.Module, Tuple[Any, str]]" = weakref.WeakKeyDictionary()

_VERIFIED = ""
"""The verdict (``_state``) of a block whose rewrite was verified (a failed one holds the reason)."""


def is_stochastic_depth(module: nn.Module) -> bool:
    return isinstance(module, (DropPath, StochasticDepth))


def rewrite_for(cls: type, block: nn.Module) -> _rewrite.Rewrite:
    """The rewrite of ``cls.forward`` (made once per class and kept)."""
    if cls not in _REWRITES:
        _REWRITES[cls] = _rewrite.rewrite(cls, _rewrite.drop_path_attributes(block, is_stochastic_depth))
    return _REWRITES[cls]


def _rewritten_forward(cls: type, block: nn.Module) -> Callable:
    """The rewritten forward of ``cls``, its residuals calling ``site`` (made once per class)."""
    if cls not in _FORWARDS:
        _FORWARDS[cls] = rewrite_for(cls, block).make(site)
    return _FORWARDS[cls]


def why_not(block: nn.Module) -> Optional[str]:
    """None when ``block``'s class has a rewrite with at least one residual, else why not."""
    return rewrite_for(type(block), block).reason


def branch_modules(block: nn.Module) -> list:
    """The modules ``block``'s rewritten branches run (on the kept samples
    only): the submodules their code reads, or every module of the block
    where a branch calls one of the block's own methods (whose code the
    rewrite does not see)."""
    modules = []
    for site_ in rewrite_for(type(block), block).sites:
        for name in site_.attributes - {site_.drop_path}:
            value = getattr(block, name, None)
            if isinstance(value, nn.Module):
                modules.append(value)
            elif callable(value):
                return list(block.modules())
    return modules


def fused_forward(cls: type) -> Callable:
    """The ``forward`` of ``cls``'s fused class: the stock signature and
    source (``__wrapped__``, for TorchScript and ``inspect``), dispatching to
    ``GenericFusedBlock._droppath_forward``."""
    stock = cls.forward

    def forward(self, *args, **kwargs):
        return self._droppath_forward(args, kwargs)

    # The stock forward's globals: TorchScript resolves the names of the
    # source it compiles (the stock forward's, through __wrapped__) in them.
    forward = types.FunctionType(forward.__code__, stock.__globals__, "forward", None, forward.__closure__)
    return functools.update_wrapper(forward, stock)


def prepare(block: nn.Module, report: Any, name: str) -> None:
    """A newly fused ``block``: its verification state, unverified, and where a
    failed verification is to be reported."""
    block.__dict__["_droppath_state"] = {"signatures": set()}
    _verify_under_compile.enrol(block)
    _REPORTS[block] = (weakref.ref(report), name)


class GenericFusedBlock(FusedBlock):
    """The mixin of every generically fused block (see the module doc)."""

    def _droppath_forward(self, args: tuple, kwargs: dict):
        if not self.training or self.droppath_skip is False:  # (the masked form is the stock forward here)
            return self._droppath_stock_forward(*args, **kwargs)
        compiling = torch.compiler.is_compiling()
        if self._droppath_runs_stock():
            if not compiling:
                _remember_stock_call(self)
            return self._droppath_stock_forward(*args, **kwargs)
        tensors = [a for a in list(args) + list(kwargs.values()) if isinstance(a, Tensor)]
        if not compiling and not _tracing.plain_eager(*tensors):
            return self._droppath_stock_forward(*args, **kwargs)
        if not compiling and _ran_stock_before(self):
            return self._droppath_stock_forward(*args, **kwargs)
        verifying = _verification.current()
        if verifying is not None and verifying[0] is not self:
            # Inside another block's verification: its deeper stochastic depth is off, this block's too.
            return self._droppath_stock_forward(*args, **kwargs)
        state = _state(self)
        if state.get("verdict", _VERIFIED) != _VERIFIED:  # rejected for good
            return self._droppath_stock_forward(*args, **kwargs)
        signature = _signature(args, kwargs)
        if signature not in state["signatures"]:
            if len(state["signatures"]) >= _MAX_SIGNATURES or \
                    (_verification.batch_size(self, args, kwargs, is_stochastic_depth) or 0) < 2:
                return self._droppath_stock_forward(*args, **kwargs)
            if compiling:
                # The stock forward in this graph; the call verified when the graph runs (no graph break),
                # and the graph compiled again with skip mode at the next call.
                out = self._droppath_stock_forward(*args, **kwargs)
                if _tracing.skip_mode(*tensors) != "compiled":  # (torch.export, a checkpoint region, ...)
                    return out
                return _verify_under_compile.request(self, out, args, kwargs)
            if not self._droppath_verify(args, kwargs, signature):
                return self._droppath_stock_forward(*args, **kwargs)
        return _rewritten_forward(type(self)._droppath_stock_class, self)(self, *args, **kwargs)

    def _droppath_verify_pending(self, args: tuple, kwargs: dict) -> None:
        """Verify this call's kind now (from a compiled graph: ``_verify_under_compile``),
        unless it is verified or the block rejected already."""
        state = _state(self)
        signature = _signature(args, kwargs)
        if state.get("verdict", _VERIFIED) == _VERIFIED and signature not in state["signatures"] and \
                len(state["signatures"]) < _MAX_SIGNATURES:
            self._droppath_verify(args, kwargs, signature)

    def _droppath_verify(self, args: tuple, kwargs: dict, signature: tuple) -> bool:
        """Verify the rewrite on this call's inputs (``_verification``);
        True when verified for calls of this ``signature``."""
        cls = type(self)._droppath_stock_class
        state = _state(self)
        forward = _rewritten_forward(cls, self)
        outcome = _verification.verify(self, cls.forward, forward, args, kwargs, is_stochastic_depth)
        if outcome.status == _verification.REJECTED and outcome.ambiguous and \
                state.get("batch_sized_inputs") != _EVERY_SAMPLE:
            # A floating input of the batch's size passed whole (one row per sample, it turns out): again,
            # with such residuals computing every sample.
            retry = _verification.verify(self, cls.forward, forward, args, kwargs, is_stochastic_depth,
                                         {"batch_sized_inputs": _EVERY_SAMPLE})
            if retry.status == _verification.VERIFIED:
                state["batch_sized_inputs"] = _EVERY_SAMPLE
                outcome = retry
        if outcome.status == _verification.VERIFIED:
            # (no residual may skip on such calls -- an input that carries samples is not a tensor of the batch's
            # samples, a per-sample input the branch takes whole: they compute the stock expression, exact)
            # (and for compiled code whose batch size is symbolic: any batch size of this kind)
            state["signatures"].update({signature, _any_size(signature)})
            state["sites"] = state.get("sites", frozenset()) | outcome.sites
            state["verdict"] = _VERIFIED
            # (a block none of whose residuals can skip is not reported fused while that holds)
            _report(self, _NO_SITE if not state["sites"] else None)
            return True
        if outcome.status == _verification.UNDECIDED:
            state["undecided"] = state.get("undecided", 0) + 1
            state["last_undecided"] = outcome.reason
            if state["undecided"] < _MAX_UNDECIDED:
                return False
            reason = f"no call of {_MAX_UNDECIDED} could decide: {outcome.reason}"
        else:
            reason = outcome.reason
        verdict = f"{cls.__name__}: skip mode was not verified ({reason}); the stock forward runs"
        state["verdict"] = verdict
        _reject(self, verdict)
        return False


def _remember_stock_call(block: nn.Module) -> None:
    """A call that ran the stock forward because a hook watched: the random
    streams' state at its start. Activation checkpointing recomputes the call
    from that same state; should the hook be gone by then, the recomputation
    must still run the stock forward (it must save what the call saved)."""
    calls = _state(block).setdefault("stock_calls", collections.deque(maxlen=64))
    calls.append(_random_state_key())


def _ran_stock_before(block: nn.Module) -> bool:
    """This call recomputes one that ran the stock forward (``_remember_stock_call``)."""
    calls = _state(block).get("stock_calls")
    return bool(calls) and _random_state_key() in calls


def _random_state_key() -> int:
    states = [torch.default_generator.get_state()]
    if torch.cuda.is_initialized():
        states += [torch.cuda.default_generators[d].get_state() for d in range(torch.cuda.device_count())]
    return hash(tuple(bytes(state.numpy()) for state in states))


_MAX_SIGNATURES = 16
"""Kinds of call (``_signature``) a block verifies; calls of further kinds run the stock forward."""
_MAX_UNDECIDED = 3
"""Calls whose verification could not decide before the block is left unfused."""


def _signature(args: tuple, kwargs: dict) -> tuple:
    """What of a call can change whether skip mode is exact, and is verified
    once per value: for tensors their dtype, device type, rank and first size
    (the batch, a ``B * heads`` mask: None where it is symbolic, in a graph
    compiled for any batch size); which arguments are None; flags (bools,
    strings). Not other sizes or numbers (image sizes vary from batch to
    batch in detection)."""
    def key(value: Any, depth: int = 0) -> Any:
        if isinstance(value, Tensor):
            size = value.shape[0] if value.dim() > 0 else None
            return ("tensor", value.dtype, value.device.type, value.dim(), size if type(size) is int else None)
        if value is None or isinstance(value, (bool, str)):
            return value
        if isinstance(value, (int, float, torch.SymInt, torch.SymFloat)):
            return "number"
        if isinstance(value, (tuple, list)) and depth < 3:
            return (type(value).__name__, tuple(key(v, depth + 1) for v in value))
        if isinstance(value, dict) and depth < 3:
            return ("dict", tuple((k, key(v, depth + 1)) for k, v in value.items()))
        return type(value).__qualname__

    return key(tuple(args)), tuple((name, key(value)) for name, value in kwargs.items())


def _any_size(signature: Any) -> Any:
    """``signature`` with every tensor's first size left out."""
    if isinstance(signature, tuple):
        if len(signature) == 5 and signature[0] == "tensor":
            return signature[:4] + (None,)
        return tuple(_any_size(item) for item in signature)
    return signature


def _state(block: nn.Module) -> Dict[str, Any]:
    """The block's verification state: ``signatures`` (the kinds of call
    verified), ``sites`` (the residuals, by index in the rewrite, verified in
    skip mode), ``verdict`` (``_VERIFIED`` once a call was, or the reason the
    block runs the stock forward for good; absent before). One dict object,
    set at conversion: the shallow copies ``nn.DataParallel`` makes of the
    block each call share it, so a replica's verification holds for the block."""
    state = block.__dict__.get("_droppath_state")
    if state is None:  # (set at conversion; a block fused by hand gets it here)
        state = block.__dict__["_droppath_state"] = {"signatures": set()}
    return state


def _verified_sites(block: nn.Module) -> frozenset:
    return _state(block).get("sites", frozenset())


def _reject(block: nn.Module, reason: str) -> None:
    entry = _REPORTS.get(block)
    name = entry[1] if entry else type(block).__name__
    _log.warning("convert_model: %r runs the stock forward: %s", name, reason)
    _report(block, reason)


def _report(block: nn.Module, reason: Optional[str]) -> None:
    """The conversion report lists ``block`` as unfused for ``reason``, or
    (None) as fused again."""
    entry = _REPORTS.get(block)
    report = entry[0]() if entry else None
    if report is None:
        return
    name = entry[1]
    if reason is not None and name in report.fused:
        report.fused.remove(name)
        report.unfused.append(name)
        report.reasons[name] = reason
    elif reason is None and name in report.unfused and report.reasons.get(name) == _NO_SITE:
        report.unfused.remove(name)
        report.fused.append(name)
        del report.reasons[name]


_NO_SITE = ("no residual could run in skip mode on the calls verified so far (a residual under an `if` "
            "not taken, an input that carries samples but is not a tensor of the batch's samples, a "
            "per-sample input the branch takes whole): they compute every sample, as stock")


# ---- the residual sites ----------------------------------------------------------------------


def _settings(module: nn.Module) -> Optional[Tuple[float, bool, int]]:
    """(drop rate, scale_by_keep, batch_dim) of a per-sample stochastic-depth module, else None."""
    return module._droppath_settings() if is_stochastic_depth(module) else None


def site(block: nn.Module, index: int, drop_path: str, after: Optional[Callable], res: Any, branch: Callable,
         gathered: Tuple[Callable[[], Any], ...], shared: tuple, probe: Callable[[], tuple],
         batches: Tuple[Callable[[], int], ...] = (), inplace: bool = False, sides: int = 0):
    """One rewritten residual: ``res + dp(branch(*gathered, *shared))`` (or
    ``res + after(dp(...))``: a layer scale or gains the stock forward applies
    after drop path), the branch run on the kept samples where skip mode
    applies (``after`` then runs on them, before the scale by the mask). A
    residual skips only if it skipped in the block's verification (``index``
    is among its verified ``sites``) and its stochastic-depth module is in
    training mode (its own flag, not the block's); where it cannot (an input
    that carries samples is not a tensor of the batch's samples, an input
    taken whole might hold a row per sample) it computes the stock
    expression, then as in verification. ``inplace``: the stock statement is
    ``res += ...``, which adds into the residual's own tensor.

    ``gathered`` reads the inputs derived from samples (each when the site
    runs: one unset on this path is passed as unset, the branch does not read
    it on this path), ``shared`` the inputs the branch takes as they are,
    ``probe()`` the other inputs it reads from the forward's scope, for their
    shapes, ``batches`` the batch sizes it reads (``B`` of ``B, N, C =
    x.shape``), which in skip mode are the number of samples it computes.
    ``sides``: the branch also returns this many values the forward reads
    after it (computed on the samples it computes); the site returns
    ``(result, *those)``."""
    if sides:
        handed: list = []

        def with_sides(*arguments):
            out, *rest = branch(*arguments)
            handed[:] = rest
            return out

        result = site(block, index, drop_path, after, res, with_sides, gathered, shared, probe, batches, inplace)
        return (result, *handed)
    values = tuple(_read(thunk) for thunk in gathered)
    dp = getattr(block, drop_path)
    settings = _settings(dp)
    if settings is not None and isinstance(res, Tensor) and res.dim() > 0:
        drop_prob, scale_by_keep, dim = settings
        dim = dim if dim >= 0 else dim + res.dim()
        verifying = _verification.current()
        mode = None
        if 0 <= dim < res.dim():
            batch = res.shape[dim]
            rows = _rows_to_take(values, batch, dim)
            whole = shared + _shared(probe)
            ambiguous = _batch_sized_floats(whole, batch, dim)
            if ambiguous and verifying is not None:
                verifying[1].ambiguous = True
            if rows is None or not _unambiguous(whole, batch, dim) or \
                    (ambiguous and _state(block).get("batch_sized_inputs") == _EVERY_SAMPLE):
                mode = None
            elif verifying is not None:
                mode = "eager"
                verifying[1].add(index)
            elif dp.training and drop_prob != 0.0 and index in _verified_sites(block):
                mode = residual._skip_mode(block._droppath_policy(drop_prob), values[rows[0]], res, batch, drop_prob,
                                           None)
        if mode is not None:
            def branch_fn(*taken):
                arguments = list(values)
                for position, value in zip(rows, taken):
                    arguments[position] = value
                computed = taken[0].shape[dim]
                # (a batch size is the first size of the tensor it was read from: the count computed there)
                counts = tuple((lambda: computed) for _ in batches) if dim == 0 else batches
                out = branch(*arguments, *shared, *counts)
                return after(out) if after is not None else out

            inputs = tuple(values[position] for position in rows)
            out = residual.skip_residual(mode, inputs, res, branch_fn, dim, drop_prob, scale_by_keep)
            return res.copy_(out) if inplace else out
    out = dp(branch(*values, *shared, *batches))
    out = after(out) if after is not None else out
    if inplace:
        res += out
        return res
    return res + out


_UNSET = object()
"""What the branch receives for an input unset on this path (it does not read it there)."""


def _shared(probe: Callable[[], tuple]) -> tuple:
    value = _read(probe)
    return () if value is _UNSET else value


def _read(thunk: Callable[[], Any]) -> Any:
    try:
        return thunk()
    except NameError:  # (UnboundLocalError included) unset on this path
        return _UNSET


def _rows_to_take(values: tuple, batch: int, dim: int) -> Optional[Tuple[int, ...]]:
    """The positions of ``values`` to gather (tensors of ``batch`` samples
    along ``dim``), or None where skip mode cannot apply: among the inputs
    derived from samples, a tensor of another size there, a container
    holding tensors, or a list of one entry per sample."""
    rows = []
    for position, value in enumerate(values):
        if isinstance(value, Tensor):
            if value.dim() <= dim or value.shape[dim] != batch:
                return None
            rows.append(position)
        elif isinstance(value, (tuple, list, dict)) and (isinstance(value, list) and len(value) == batch or any(
                isinstance(v, Tensor) for v in (value.values() if isinstance(value, dict) else value))):
            return None
    return tuple(rows) if rows else None


_EVERY_SAMPLE = "every sample"
"""``batch_sized_inputs`` of a block whose branch takes a per-sample floating
input whole (EoMT's attention mask): such a residual computes every sample."""


def _batch_sized_floats(shared: Any, batch: int, dim: int) -> bool:
    """An input the branch takes whole is a floating tensor with the batch size
    along the batch dim: a table that happens to have it (MONAI Swin's window
    mask at batch 4), or one row per sample (an attention mask). Passed whole
    first; a block whose verification then fails computes every sample there."""
    if shared is _UNSET or batch == 1:
        return False
    return any(isinstance(v, Tensor) and v.is_floating_point() and v.dim() > dim and v.shape[dim] == batch
               for v in shared)


def _unambiguous(shared: Any, batch: int, dim: int) -> bool:
    """No input the branch takes whole might hold one row per sample that
    verification cannot tell from a table shared by all: an integer or
    boolean tensor with the batch size along the batch dim (indices, masks),
    a list of one entry per sample. (Floating inputs of that size are filled
    with random rows in verification, which a per-sample one then fails;
    other layouts, such as an attention mask of ``B * heads`` rows, make a
    new kind of call, verified before it runs in skip mode: ``_signature``.)"""
    if shared is _UNSET or batch == 1:
        return True
    for value in shared:
        if isinstance(value, Tensor) and value.dim() > dim and value.shape[dim] == batch and \
                not value.is_floating_point():
            return False
        if isinstance(value, list) and len(value) == batch:
            return False
    return True


# ---- verification before compiling -------------------------------------------------------


def verify_fused(model: nn.Module, *args: Any, **kwargs: Any) -> Dict[str, Optional[str]]:
    """Verify the fused blocks of ``model`` now, on the inputs each block
    receives in ``model(*args, **kwargs)`` (at least two samples).

    Optional: fused blocks verify themselves on their first training call of
    each kind, eager or compiled. This warm-up runs one training-mode forward
    of a private copy of ``model`` on copies of the inputs, with no autograd
    and the random streams forked: nothing of the model, the inputs or the
    random streams changes but the blocks' verdicts.

    Args:
        model: a model converted with ``fuse_residual=True``.
        *args: the model's inputs, as in a training call.
        **kwargs: the model's keyword inputs.

    Returns:
        For each fused block (by name): None when verified (it runs in skip
        mode), else why not (the reason it runs the stock forward for good,
        or why this call could not verify it).

    Example:
        ```python
        import timm, torch, droppath_ext as dp
        model = dp.convert_model(timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8,
                                                   depth=2, drop_path_rate=0.2), fuse_residual=True)
        print(dp.verify_fused(model, torch.randn(4, 3, 32, 32)))   # {'blocks.1': None}
        # (timm's drop-rate schedule gives blocks.0 rate 0, hence no DropPath to fuse)
        ```
    """
    blocks = {name: m for name, m in model.named_modules() if isinstance(m, GenericFusedBlock)}
    with _verification.isolated(model):
        probe = _verification.copy_module(model)
        args, kwargs = _verification.copy_inputs(args, kwargs)
        probe.train()
        probe(*args, **kwargs)
    copies = dict(probe.named_modules())
    result = {}
    for name, block in blocks.items():
        theirs, mine = _state(copies[name]), _state(block)
        mine["signatures"] |= theirs["signatures"]
        mine["sites"] = mine.get("sites", frozenset()) | theirs.get("sites", frozenset())
        verdict = theirs.get("verdict")
        if verdict is not None and mine.get("verdict", _VERIFIED) == _VERIFIED:
            mine["verdict"] = verdict
            if verdict != _VERIFIED:
                _reject(block, verdict)
        mine["undecided"] = max(mine.get("undecided", 0), theirs.get("undecided", 0))
        if mine.get("verdict") == _VERIFIED:
            result[name] = None
        else:
            result[name] = mine.get("verdict") or theirs.get("last_undecided") or \
                "not called in training with two or more samples"
    return result


ZERO_RATE = "drop rate 0: nothing to skip (it skips once a rate is set, as a schedule does)"


def skip_status(model: nn.Module) -> Dict[str, Optional[str]]:
    """Whether each fused block of ``model`` runs in skip mode now.

    Call it any time: after some training steps it tells the fused blocks that
    skip from those that never do.

    Args:
        model: a model converted with ``fuse_residual=True``.

    Returns:
        For each fused block (by name): None where a training call runs skip
        mode, else why not: the reason it was left on the stock forward for
        good (its verification rejected it), a hook inside it that watches the
        batch, ``skip_dropped=False``, stochastic-depth modules in eval mode or
        at rate 0, or no verified training call yet.

    Example:
        ```python
        import timm, torch, droppath_ext as dp
        model = dp.convert_model(timm.create_model("convnext_atto", drop_path_rate=0.2, num_classes=10),
                                 fuse_residual=True)
        print(dp.skip_status(model)["stages.0.blocks.1"])   # not verified yet: no training call ...
        model.train()(torch.randn(4, 3, 32, 32)).sum().backward()
        print(dp.skip_status(model)["stages.0.blocks.1"])   # None: it skips now
        ```
    """
    status: Dict[str, Optional[str]] = {}
    for name, block in model.named_modules():
        if isinstance(block, GenericFusedBlock):
            status[name] = _why_not_skipping(block)
    return status


def _why_not_skipping(block: nn.Module) -> Optional[str]:
    state = _state(block)
    verdict = state.get("verdict")
    if verdict not in (None, _VERIFIED):
        return verdict
    if block.droppath_skip is False:
        return "skip_dropped=False: the masked form runs"
    hook = hook_inside(block) if block.droppath_skip is not True else None
    if hook is not None:
        return f"runs the stock forward while {hook} watches it"
    depths = [m for m in block.children() if is_stochastic_depth(m)]
    per_sample = [m for m in depths if m._droppath_settings() is not None]
    if not per_sample:
        return "its stochastic depth draws once per batch (mode 'batch') or from a tensor rate"
    if not any(m.training for m in per_sample):
        return "its stochastic-depth modules are in eval mode"
    if all(m._droppath_settings()[0] == 0.0 for m in per_sample):
        return ZERO_RATE
    if not state["signatures"]:
        undecided = state.get("last_undecided")
        return "not verified yet: no training call with two or more samples so far" + \
            (f" that could decide ({undecided})" if undecided else "")
    if not state.get("sites"):
        return _NO_SITE
    return None
