"""Generic fusion: any block whose forward adds a stochastic-depth branch to a
residual in the usual ways runs in skip mode, from a rewrite of its own
source (``_rewrite.py``), verified before it is trusted.

A generically fused block is the model's block object with the class
``DropPathFused<Block>(GenericFusedBlock, Block)``. Its ``forward`` is a
function of the stock forward's signature (``__wrapped__`` is the stock
forward, so TorchScript scripts the stock forward, and ``inspect`` sees its
signature) that runs:

- the stock forward (with this package's stochastic-depth modules) in eval
  mode, under every tracer but ``torch.compile`` (FX, ``jit.trace``, fake
  and meta tensors, functorch, ``torch.export`` via the sites' own checks),
  while a hook watches the block (``_fused_block``), until the rewrite is
  verified, and for good once it failed;
- otherwise the rewritten forward, whose residuals go through :func:`site`:
  skip mode where the block's policy and :func:`residual.skip_pays` say so
  and every per-sample input has the residual's batch, else the stock
  expression ``res + dp(branch)``.

Verification, on the block's first eager training call with at least two
samples: the stock forward and the rewritten one in skip mode run on the
same inputs with the same forced mask (even samples kept, scaled by 2; odd
ones dropped), dropout set to 0, no autograd, the block's buffers restored
afterwards and the random streams forked, so the user's training and random
stream are unchanged; the outputs must agree to rounding. Stochastic depth
nested deeper in the block is off meanwhile, as dropout is (a generically
fused block in its branch runs its stock forward). A branch that mixes
samples (a batch mean, batch statistics) computes something else on half the
batch and fails; so does a rewrite that raises. A failed block runs the
stock forward from then on; the reason is logged and moved into the
``ConversionReport`` of its conversion (``fused`` -> ``unfused``, with
``reasons``). Under ``torch.compile``, a block not yet verified runs the stock
forward: :func:`verify_fused` (one eager forward) verifies a model's blocks
before compiling it; the compiled graph then recompiles once.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import threading
import types
import weakref
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

import torch
from torch import Tensor, nn

from . import _rewrite, _tracing, residual
from ._fused_block import FusedBlock
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
    """The rewritten forward of ``cls``, its residuals calling :func:`site` (made once per class)."""
    if cls not in _FORWARDS:
        _FORWARDS[cls] = rewrite_for(cls, block).make(site)
    return _FORWARDS[cls]


def why_not(block: nn.Module) -> Optional[str]:
    """None when ``block``'s class has a rewrite with at least one residual, else why not."""
    return rewrite_for(type(block), block).reason


def fused_forward(cls: type) -> Callable:
    """The ``forward`` of ``cls``'s fused class: the stock signature and
    source (``__wrapped__``, for TorchScript and ``inspect``), dispatching to
    :meth:`GenericFusedBlock._droppath_forward`."""
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
    block.__dict__["_droppath_state"] = {}
    _REPORTS[block] = (weakref.ref(report), name)


class GenericFusedBlock(FusedBlock):
    """The mixin of every generically fused block (see the module doc)."""

    def _droppath_forward(self, args: tuple, kwargs: dict):
        if not self.training or self._droppath_runs_stock():
            return self._droppath_stock_forward(*args, **kwargs)
        tensors = [a for a in list(args) + list(kwargs.values()) if isinstance(a, Tensor)]
        compiling = torch.compiler.is_compiling()
        if not compiling and not _tracing.plain_eager(*tensors):
            return self._droppath_stock_forward(*args, **kwargs)
        if _verifying and _verifying.get(threading.get_ident(), (self,))[0] is not self:
            # Inside another block's verification: its deeper stochastic depth is off, this block's too.
            return self._droppath_stock_forward(*args, **kwargs)
        verdict = _state(self).get("verdict")
        if verdict is None:
            if compiling or not _verifiable(tensors):
                return self._droppath_stock_forward(*args, **kwargs)
            verdict = self._droppath_verify(args, kwargs)
        if verdict != _VERIFIED:
            return self._droppath_stock_forward(*args, **kwargs)
        return _rewritten_forward(type(self)._droppath_stock_class, self)(self, *args, **kwargs)

    def _droppath_verify(self, args: tuple, kwargs: dict) -> str:
        cls = type(self)._droppath_stock_class
        try:
            with _verification(self) as sites:
                want = cls.forward(self, *args, **kwargs)
                got = _rewritten_forward(cls, self)(self, *args, **kwargs)
            reason = _differs(got, want)
            if reason is None and not sites:
                reason = "no residual could run in skip mode on these inputs (an input that carries samples " \
                         "is not a tensor of the batch's samples)"
            _state(self)["sites"] = frozenset(sites)
        except Exception as error:  # noqa: BLE001 - any failure of the rewrite: the stock forward, for good
            reason = f"the rewritten forward raised {type(error).__name__}: {error}"
        verdict = _VERIFIED if reason is None else \
            f"{cls.__name__}: skip mode was not verified ({reason}); the stock forward runs"
        _state(self)["verdict"] = verdict
        if verdict != _VERIFIED:
            _reject(self, verdict)
        return verdict


def _verifiable(tensors: list) -> bool:
    return bool(tensors) and tensors[0].dim() > 0 and tensors[0].shape[0] >= 2


def _state(block: nn.Module) -> Dict[str, Any]:
    """The block's verification state: ``verdict`` (``_VERIFIED`` or the
    reason it failed; absent until verified) and ``sites`` (the residuals, by
    index in the rewrite, verified in skip mode). One dict object, set at
    conversion: the shallow copies ``nn.DataParallel`` makes of the block
    each call share it, so a replica's verification holds for the block."""
    state = block.__dict__.get("_droppath_state")
    if state is None:  # (set at conversion; a block fused by hand gets it here)
        state = block.__dict__["_droppath_state"] = {}
    return state


def _verified_sites(block: nn.Module) -> frozenset:
    return _state(block).get("sites", frozenset())


_verifying: Dict[int, Tuple[nn.Module, set]] = {}
"""For each thread verifying a block: the block (any other generically fused
block, nested in its branch, runs its stock forward meanwhile) and the
residuals of its rewrite (their indices) that skipped so far. Only the
rewrite's pass calls the block's sites: the stock pass runs the stock forward."""


def _verifying_here() -> Optional[set]:
    """The verified-site set of this thread's running verification (its sites skip, with the forced mask)."""
    entry = _verifying.get(threading.get_ident()) if _verifying else None
    return None if entry is None else entry[1]


def _forced(batch: int, dtype: torch.dtype) -> Tensor:
    """Verification's mask: even samples kept (factor 2, exact in every dtype), odd ones dropped."""
    return (torch.arange(batch) % 2 == 0).to(dtype) * 2


@contextlib.contextmanager
def _verification(block: nn.Module) -> Iterator[set]:
    """The verification's world: forced masks in the block's stochastic-depth
    children and skip-mode draws, dropout and deeper stochastic-depth modules
    off, no autograd, forked random streams, the block's buffers as they were
    afterwards. Yields the set its sites fill as they skip."""
    saved = [(b, b.detach().clone()) for b in block.buffers()]
    dropouts = [(m, m.p) for m in block.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
    # The block's own stochastic-depth modules apply the forced mask; deeper ones (a DropPath used as
    # dropout inside a branch) are off, as dropout is: in skip mode they would see fewer samples.
    depths = [m for m in block.children() if is_stochastic_depth(m)]
    inner = [m for m in block.modules() if is_stochastic_depth(m) and m not in depths]
    devices = _cuda_devices(block)

    def forced_drop_path(x: Tensor) -> Tensor:
        return x * _forced(x.shape[0], x.dtype).to(x.device).view(-1, *([1] * (x.dim() - 1)))

    try:
        for module, _ in dropouts:
            module.p = 0.0
        for module in depths:
            module.forward = forced_drop_path
        for module in inner:
            module.forward = _identity
        residual._forced_factors[threading.get_ident()] = _forced
        sites: set = set()
        _verifying[threading.get_ident()] = (block, sites)
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            yield sites
    finally:
        residual._forced_factors.pop(threading.get_ident(), None)
        _verifying.pop(threading.get_ident(), None)
        for module in depths + inner:
            module.__dict__.pop("forward", None)
        for module, p in dropouts:
            module.p = p
        for buffer, value in saved:
            buffer.copy_(value)


def _cuda_devices(module: nn.Module) -> list:
    """The CUDA devices of ``module``'s parameters and buffers (whose random streams are forked)."""
    return sorted({t.device.index or 0 for t in itertools.chain(module.parameters(), module.buffers())
                   if t.device.type == "cuda"})


def _identity(x: Tensor) -> Tensor:
    return x


def _differs(got: Any, want: Any, where: str = "output") -> Optional[str]:
    """Why the rewritten forward's output ``got`` is not the stock ``want`` (to rounding), or None."""
    if isinstance(want, Tensor):
        if not isinstance(got, Tensor) or got.shape != want.shape or got.dtype != want.dtype:
            return f"{where}: {_describe(got)} where the stock forward gives {_describe(want)}"
        if not want.is_floating_point():
            return None if torch.equal(got, want) else f"{where} differs"
        tolerance = {torch.float64: 1e-7, torch.float32: 1e-4}.get(want.dtype, 2e-2)
        scale = float(want.detach().abs().max()) if want.numel() else 0.0
        error = float((got.detach() - want.detach()).abs().max()) if want.numel() else 0.0
        if error > tolerance * max(scale, 1.0):
            return (f"{where} differs by up to {error:.3g} (scale {scale:.3g}) on a batch with half the "
                    f"samples dropped: the branch mixes samples (batch statistics, a batch mean) or draws "
                    f"random numbers")
        return None
    if isinstance(want, (tuple, list)):
        if not isinstance(got, (tuple, list)) or len(got) != len(want):
            return f"{where}: {_describe(got)} where the stock forward gives {_describe(want)}"
        for i, (a, b) in enumerate(zip(got, want)):
            reason = _differs(a, b, f"{where}[{i}]")
            if reason:
                return reason
        return None
    if isinstance(want, dict):
        if not isinstance(got, dict) or got.keys() != want.keys():
            return f"{where}: other keys than the stock forward's"
        for key in want:
            reason = _differs(got[key], want[key], f"{where}[{key!r}]")
            if reason:
                return reason
    return None


def _describe(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"a {tuple(value.shape)} {value.dtype} tensor"
    return type(value).__name__


def _reject(block: nn.Module, reason: str) -> None:
    entry = _REPORTS.get(block)
    name = entry[1] if entry else type(block).__name__
    _log.warning("convert_model: %r runs the stock forward: %s", name, reason)
    report = entry[0]() if entry else None
    if report is not None and name in report.fused:
        report.fused.remove(name)
        report.unfused.append(name)
        report.reasons[name] = reason


# ---- the residual sites ----------------------------------------------------------------------


def _settings(module: nn.Module) -> Optional[Tuple[float, bool]]:
    """(drop rate, scale_by_keep) of a per-sample stochastic-depth module, else None."""
    if isinstance(module, DropPath):
        return float(module.drop_prob), bool(module.scale_by_keep)
    if isinstance(module, StochasticDepth) and module.mode == "row":
        return float(module.p), True
    return None


def site(block: nn.Module, index: int, drop_path: str, after: Optional[Callable], res: Any, branch: Callable,
         gathered: Tuple[Callable[[], Any], ...], shared: tuple, probe: Callable[[], tuple]):
    """One rewritten residual: ``res + dp(branch(*gathered, *shared))`` (or
    ``res + after(dp(...))``: a layer scale or gains the stock forward applies
    after drop path), the branch run on the kept samples where skip mode
    applies (``after`` then runs on them, before the scale by the mask). A
    residual skips only if it skipped in the block's verification (``index``
    is among its verified ``sites``); where it cannot (an input that carries
    samples is not a tensor of the batch's samples) it computes the stock
    expression, then as in verification.

    ``gathered`` reads the inputs derived from samples (each when the site
    runs: one unset on this path is passed as unset, the branch does not read
    it on this path), ``shared`` the inputs the branch takes as they are,
    ``probe()`` the other inputs it reads from the forward's scope, for their
    shapes."""
    values = tuple(_read(thunk) for thunk in gathered)
    dp = getattr(block, drop_path)
    settings = _settings(dp)
    if settings is not None and isinstance(res, Tensor) and res.dim() > 0:
        drop_prob, scale_by_keep = settings
        batch = res.shape[0]
        rows = _rows_to_take(values, batch)
        verifying = _verifying_here()
        if rows is None or (verifying is None and (drop_prob == 0.0 or index not in _verified_sites(block) or
                                               not _unambiguous(shared + _shared(probe), batch))):
            mode = None
        elif verifying is not None:
            mode = "eager"
            verifying.add(index)
        else:
            mode = residual._skip_mode(block._droppath_policy(drop_prob), values[rows[0]], res, batch, drop_prob, None)
        if mode is not None:
            def branch_fn(*taken):
                arguments = list(values)
                for position, value in zip(rows, taken):
                    arguments[position] = value
                out = branch(*arguments, *shared)
                return after(out) if after is not None else out

            inputs = tuple(values[position] for position in rows)
            return residual.skip_residual(mode, inputs, res, branch_fn, 0, drop_prob, scale_by_keep)
    out = dp(branch(*values, *shared))
    return res + (after(out) if after is not None else out)


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


def _rows_to_take(values: tuple, batch: int) -> Optional[Tuple[int, ...]]:
    """The positions of ``values`` to gather (tensors of ``batch`` samples),
    or None where skip mode cannot apply: a tensor of another first size, or a
    container holding tensors, among the inputs derived from samples."""
    rows = []
    for position, value in enumerate(values):
        if isinstance(value, Tensor):
            if value.dim() == 0 or value.shape[0] != batch:
                return None
            rows.append(position)
        elif isinstance(value, (tuple, list, dict)) and any(
                isinstance(v, Tensor) for v in (value.values() if isinstance(value, dict) else value)):
            return None
    return tuple(rows) if rows else None


def _unambiguous(shared: Any, batch: int) -> bool:
    """No input the branch takes whole is a tensor whose first size is the
    batch size (it might hold one row per sample: then every sample is computed)."""
    if shared is _UNSET or batch == 1:
        return True
    return not any(isinstance(t, Tensor) and t.dim() > 0 and t.shape[0] == batch for t in shared)


# ---- verification before compiling -------------------------------------------------------


def verify_fused(model: nn.Module, *args, **kwargs) -> Dict[str, Optional[str]]:
    """Verify the generically fused blocks of ``model`` now: one eager
    training-mode forward of ``model(*args, **kwargs)`` with no autograd and
    the random streams forked (nothing the user trains or draws changes).

    Blocks are otherwise verified on their first eager training call; a block
    not yet verified runs the stock forward under ``torch.compile``, so call
    this before compiling a model with generically fused blocks (inputs of at
    least two samples).

    Returns:
        For each generically fused block (by name): None when verified (it runs
        in skip mode), else the reason it runs the stock forward.
    """
    blocks = {name: m for name, m in model.named_modules() if isinstance(m, GenericFusedBlock)}
    training = {m: m.training for m in model.modules()}
    devices = _cuda_devices(model)
    try:
        model.train()
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            model(*args, **kwargs)
    finally:
        for module, mode in training.items():
            module.training = mode
    result = {}
    for name, block in blocks.items():
        verdict = _state(block).get("verdict")
        result[name] = None if verdict == _VERIFIED else (verdict or "not called with two or more samples")
    return result
