"""A block's ``forward``, rewritten from its source so that each residual
``res + drop_path(branch)`` calls one function that can run the branch on the
kept samples only (generic fusion, ``_fused_generic.py``).

What is recognised, in any statement list of the forward (nested ``if`` /
``for`` / ``with`` bodies included), ``dp`` being a call of a
stochastic-depth child of the block (``self.drop_path(...)``,
``self.drop_path1(...)``, ``self.stochastic_depth(...)``):

- ``y = res + dp(branch)``, ``y = dp(branch) + res``, ``y += dp(branch)``,
  ``return res + dp(branch)``, and the same with ``dp`` inside one module
  call, ``res + self.layer_scale(dp(branch))`` (MetaFormer);
- ``t = dp(branch)``, then statements that only transform ``t``
  (``t.mul_(gain)``, ``t = t * alpha``), then ``y = g(t) + res`` (or
  ``res + g(t)``, ``return ...``): the branch takes ``g`` and those statements
  with it (drop path commutes with them when they scale each sample, as
  gains and layer scales do; the verification checks it);
- the branch is the expression plus the statements right before it that
  only compute what it reads (the ConvNeXt shape: ``shortcut = x``; several
  statements on ``x``; ``x = shortcut + dp(x)``): a statement joins while it
  assigns plain names that the branch reads and nothing after the residual
  (nor the residual expression) reads.

The branch becomes a nested function of its inputs (the names it reads
before assigning them); the inputs that carry samples -- derived from the
forward's first argument or from the residual -- are gathered to the kept
samples, the others (masks, position tables, ``H, W``) passed as they are.
A batch size the branch reads (``B, N, C = x.shape`` outside it) is, inside
it, the number of samples it computes (the site passes it). Everything else in
the forward is unchanged, and is compiled with the forward's own globals and
closure (``super()`` works), at the forward's file and line numbers.

A rewrite is not trusted on its own: ``_fused_generic`` verifies it against
the stock forward before it is used.
"""

from __future__ import annotations

import ast
import copy
import inspect
import re
import textwrap
import types
from dataclasses import dataclass, field
from typing import Callable, Dict, FrozenSet, List, Optional, Set, Tuple

DROP_PATH_ATTRIBUTE = re.compile(r"(drop_?path|stochastic_?depth|droppath)\w*", re.IGNORECASE)
"""Attribute names that hold a stochastic-depth module (or nn.Identity at rate 0)."""

SITE = "__droppath_site__"
_BRANCH = "__droppath_branch_{}__"
_AFTER = "__droppath_after_{}__"
_BATCH = "__droppath_batch_{}__"
_FACTORY = "__droppath_factory__"
_SHAPE_ATTRIBUTES = {"shape", "dtype", "device", "ndim", "is_cuda", "layout", "requires_grad"}
_SHAPE_METHODS = {"size", "dim", "numel", "type", "is_contiguous", "stride", "element_size", "get_device"}


@dataclass
class Site:
    """One residual the rewrite routes through :data:`SITE`."""

    drop_path: str
    gathered: List[str]
    shared: List[str]
    line: int
    attributes: FrozenSet[str] = frozenset()
    """The block's attributes its branch reads (``self.mlp`` -> ``mlp``): the
    modules that run on the kept samples only."""


@dataclass
class Rewrite:
    """A rewritten forward, or why there is none."""

    make: Optional[Callable[[Callable], Callable]] = None
    """``make(site_function)`` -> the rewritten forward (a plain function of ``self, ...``)."""
    sites: List[Site] = field(default_factory=list)
    reason: Optional[str] = None
    skipped: List[str] = field(default_factory=list)
    """Residuals found but left as they are, with why."""


def drop_path_attributes(block, is_stochastic_depth: Callable[[object], bool]) -> FrozenSet[str]:
    """The block's attributes that are stochastic-depth modules, or named as such."""
    names = set()
    for name, child in block.named_children():
        if is_stochastic_depth(child) or DROP_PATH_ATTRIBUTE.fullmatch(name):
            names.add(name)
    return frozenset(names)


def rewrite(cls: type, drop_paths: FrozenSet[str]) -> Rewrite:
    """Rewrite ``cls.forward`` (see the module doc); a forward this cannot
    rewrite gives a Rewrite with the reason, never an exception."""
    try:
        return _rewrite(cls, drop_paths)
    except Exception as error:  # noqa: BLE001 - code this analysis does not handle: left as it is, saying why
        return Rewrite(reason=f"{cls.__name__}.forward could not be rewritten ({type(error).__name__}: {error})")


def _rewrite(cls: type, drop_paths: FrozenSet[str]) -> Rewrite:
    function = getattr(cls, "forward", None)
    if not inspect.isfunction(function):
        return Rewrite(reason=f"{cls.__name__}.forward is not a Python function")
    # A forward wrapped without decorator syntax (transformers' GradientCheckpointingLayer wraps every
    # layer's forward with functools.wraps) is rewritten from the function it wraps, with that function's
    # own globals, defaults and closure: its source is what inspect reads. (The wrapper keeps running
    # around the fused forward: the fused class's forward is wrapped too, and verification compares the
    # rewrite with the wrapped stock forward.)
    function = inspect.unwrap(function)
    if not inspect.isfunction(function):
        return Rewrite(reason=f"{cls.__name__}.forward wraps something other than a Python function")
    try:
        lines, first_line = inspect.getsourcelines(function)
        tree = ast.parse(textwrap.dedent("".join(lines)))
        filename = inspect.getsourcefile(function) or f"<{cls.__name__}.forward>"
    except (OSError, TypeError, SyntaxError) as error:
        return Rewrite(reason=f"the source of {cls.__name__}.forward cannot be read ({type(error).__name__})")
    definition = tree.body[0]
    if not isinstance(definition, ast.FunctionDef):
        return Rewrite(reason=f"{cls.__name__}.forward is not a plain def")
    if definition.decorator_list:
        return Rewrite(reason=f"{cls.__name__}.forward is decorated")
    if any(isinstance(node, (ast.Yield, ast.YieldFrom, ast.Await, ast.Global, ast.Nonlocal))
           for node in ast.walk(definition)):
        return Rewrite(reason=f"{cls.__name__}.forward uses yield, await, global or nonlocal")
    ast.increment_lineno(tree, first_line - 1)
    _explicit_super(definition)

    analysis = _Analysis(definition, drop_paths)
    rewritten = analysis.rewrite_list(definition.body, live_out=set())
    if not analysis.sites:
        why = "; ".join(analysis.skipped) if analysis.skipped else "no `res + drop_path(branch)` residual found"
        return Rewrite(reason=f"{cls.__name__}.forward: {why}", skipped=analysis.skipped)
    definition.body = rewritten

    freevars = function.__code__.co_freevars
    factory = _function(_FACTORY, [SITE, *freevars],
                        [definition, ast.Return(value=ast.Name(id=definition.name, ctx=ast.Load()))])
    module = ast.Module(body=[factory], type_ignores=[])
    ast.copy_location(factory, definition)
    ast.fix_missing_locations(module)
    code = _nested_code(_nested_code(compile(module, filename, "exec"), _FACTORY), definition.name)
    # The stock forward's own closure cells, not their values: a name the forward reads from an
    # enclosing scope and that scope rebinds later is read as the stock forward reads it.
    cells = dict(zip(freevars, function.__closure__ or ()))

    def make(site: Callable) -> Callable:
        own = {SITE: types.CellType(site)}
        closure = tuple(own[name] if name in own else cells[name] for name in code.co_freevars)
        forward = types.FunctionType(code, function.__globals__, function.__name__, function.__defaults__,
                                     closure or None)
        forward.__kwdefaults__ = function.__kwdefaults__
        return forward

    return Rewrite(make=make, sites=analysis.sites, skipped=analysis.skipped)


# ---- analysis --------------------------------------------------------------------------------


def _names(node: ast.AST, ctx: type) -> Set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ctx)}


def _reads(nodes) -> Set[str]:
    """Names read by a node or statements (an augmented assignment reads its target too)."""
    nodes = nodes if isinstance(nodes, list) else [nodes]
    names: Set[str] = set()
    for node in nodes:
        names |= _names(node, ast.Load)
        names |= {n.target.id for n in ast.walk(node) if isinstance(n, ast.AugAssign)
                  and isinstance(n.target, ast.Name)}
    return names


def _assigned(stmt: ast.stmt) -> Set[str]:
    return _names(stmt, ast.Store)


def _definitely_assigned(stmt: ast.stmt) -> Set[str]:
    if isinstance(stmt, ast.If):
        body = set().union(*(_definitely_assigned(s) for s in stmt.body)) if stmt.body else set()
        orelse = set().union(*(_definitely_assigned(s) for s in stmt.orelse)) if stmt.orelse else set()
        return body & orelse
    return _assigned(stmt)


def _tensor_reads(node: ast.AST) -> Set[str]:
    """Names read for their values, not only their shape, dtype or device."""
    shape_only: Set[int] = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.attr in _SHAPE_ATTRIBUTES:
            shape_only.add(id(n.value))
        elif isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and \
                isinstance(n.func.value, ast.Name) and n.func.attr in _SHAPE_METHODS:
            shape_only.add(id(n.func.value))
        elif isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in ("len", "isinstance") \
                and n.args and isinstance(n.args[0], ast.Name):
            shape_only.add(id(n.args[0]))
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)
            and id(n) not in shape_only}


def _batch_size_names(definition: ast.FunctionDef, per_sample: Set[str]) -> Dict[str, Tuple[ast.stmt, str]]:
    """Names bound to a per-sample tensor's dim 0 (``B, N, C = x.shape``,
    ``B = x.shape[0]``, ``B = x.size(0)``, ``B = len(x)``) -> (the statement, the tensor's name)."""
    names: Dict[str, Tuple[ast.stmt, str]] = {}

    def batch_of(value: ast.AST) -> Optional[str]:
        if isinstance(value, ast.Subscript) and isinstance(value.slice, ast.Constant) and value.slice.value == 0:
            value = value.value
            if isinstance(value, ast.Attribute) and value.attr == "shape" and isinstance(value.value, ast.Name):
                return value.value.id
        if isinstance(value, ast.Call) and isinstance(value.func, ast.Attribute) and value.func.attr == "size" \
                and isinstance(value.func.value, ast.Name) and value.args and \
                isinstance(value.args[0], ast.Constant) and value.args[0].value == 0:
            return value.func.value.id
        if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "len" \
                and value.args and isinstance(value.args[0], ast.Name):
            return value.args[0].id
        return None

    def shape_of(value: ast.AST) -> Optional[str]:
        if isinstance(value, ast.Call) and isinstance(value.func, ast.Attribute) and value.func.attr == "size" \
                and not value.args and isinstance(value.func.value, ast.Name):
            return value.func.value.id
        if isinstance(value, ast.Attribute) and value.attr == "shape" and isinstance(value.value, ast.Name):
            return value.value.id
        return None

    for stmt in ast.walk(definition):
        if not isinstance(stmt, ast.Assign) or len(stmt.targets) != 1:
            continue
        target = stmt.targets[0]
        if isinstance(target, ast.Name) and batch_of(stmt.value) in per_sample:
            names[target.id] = (stmt, batch_of(stmt.value))
        elif isinstance(target, ast.Tuple) and target.elts and isinstance(target.elts[0], ast.Name) and \
                shape_of(stmt.value) in per_sample:
            names[target.elts[0].id] = (stmt, shape_of(stmt.value))
    return names


def _is_plain_assignment(stmt: ast.stmt) -> bool:
    """A statement a branch may absorb: assignments to plain names (an ``if``
    of such), no attribute or item stores, no control flow out."""
    if isinstance(stmt, ast.Assign):
        return all(_plain_target(t) for t in stmt.targets)
    if isinstance(stmt, ast.AnnAssign):
        return isinstance(stmt.target, ast.Name) and stmt.value is not None
    if isinstance(stmt, ast.AugAssign):
        return isinstance(stmt.target, ast.Name)
    if isinstance(stmt, ast.If):
        return all(_is_plain_assignment(s) for s in stmt.body + stmt.orelse)
    if isinstance(stmt, ast.Pass):
        return True
    return False


def _plain_target(target: ast.AST) -> bool:
    if isinstance(target, ast.Name):
        return True
    if isinstance(target, (ast.Tuple, ast.List)):
        return all(_plain_target(e) for e in target.elts)
    if isinstance(target, ast.Starred):
        return _plain_target(target.value)
    return False


class _Analysis:
    def __init__(self, definition: ast.FunctionDef, drop_paths: FrozenSet[str]):
        self.definition = definition
        self.drop_paths = drop_paths
        args = definition.args
        self.parameters = [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs] + \
            [a.arg for a in (args.vararg, args.kwarg) if a is not None]
        self.locals = set(self.parameters) | _names(definition, ast.Store)
        self.me = self.parameters[0] if self.parameters else "self"  # (the name `self` goes by)
        self.sites: List[Site] = []
        self.skipped: List[str] = []
        residual_reads = set()
        for node in ast.walk(definition):
            found = self._match_residual(node) if isinstance(node, ast.BinOp) else None
            if found is not None:
                residual_reads |= _tensor_reads(found[3])
        first = self.parameters[1:2]  # (after self)
        self.per_sample = self._propagate(set(first) | (residual_reads & self.locals))
        self.batch_sizes = _batch_size_names(definition, self.per_sample)

    def _propagate(self, seeds: Set[str]) -> Set[str]:
        """Names that carry samples: ``seeds`` and whatever is computed from
        their values (not from their shapes only), to a fixed point."""
        flows = []  # (names read, names assigned) of every binding in the forward
        for node in ast.walk(self.definition):
            if isinstance(node, ast.Assign):
                flows.append((_tensor_reads(node.value), node.targets))
            elif isinstance(node, (ast.AugAssign, ast.AnnAssign)) and node.value is not None:
                extra = {node.target.id} if isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name) \
                    else set()
                flows.append((_tensor_reads(node.value) | extra, [node.target]))
            elif isinstance(node, ast.For):
                flows.append((_tensor_reads(node.iter), [node.target]))
            elif isinstance(node, ast.withitem) and node.optional_vars is not None:
                flows.append((_tensor_reads(node.context_expr), [node.optional_vars]))
        flows = [(reads, set().union(*(_names(t, ast.Store) for t in targets))) for reads, targets in flows]
        per_sample = set(seeds)
        changed = True
        while changed:
            changed = False
            for reads, assigned in flows:
                if reads & per_sample and not assigned <= per_sample:
                    per_sample |= assigned
                    changed = True
        return per_sample

    # -- matching --

    def _drop_path_call(self, node: ast.AST) -> Optional[Tuple[str, ast.expr, Optional[str]]]:
        """``self.dp(B)`` -> (dp, B, None); ``self.m(self.dp(B))`` -> (dp, B, m)."""
        if not (isinstance(node, ast.Call) and len(node.args) == 1 and not node.keywords and
                isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name) and
                node.func.value.id == self.me):
            return None
        if node.func.attr in self.drop_paths:
            return node.func.attr, node.args[0], None
        inner = self._drop_path_call(node.args[0])
        if inner is not None and inner[2] is None:
            return inner[0], inner[1], node.func.attr
        return None

    def _contains_drop_path(self, node: ast.AST) -> bool:
        return any(isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == self.me and
                   n.attr in self.drop_paths for n in ast.walk(node))

    def _match_residual(self, node: ast.AST):
        """``res + dp(B)`` or ``dp(B) + res`` -> (dp, B, wrapper, res)."""
        if not (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add)):
            return None
        for call, other in ((node.right, node.left), (node.left, node.right)):
            found = self._drop_path_call(call)
            if found is not None and not self._contains_drop_path(other):
                return (*found, other)
        return None

    # -- rewriting --

    def rewrite_list(self, body: List[ast.stmt], live_out: Set[str], in_loop: bool = False) -> List[ast.stmt]:
        """``body`` with its residuals rewritten (nested statement lists first)."""
        body = list(body)
        loop_reads = _reads(body) if in_loop else set()
        for i, stmt in enumerate(body):
            live = _reads(body[i + 1:]) | live_out | loop_reads
            if isinstance(stmt, ast.If):
                stmt.body = self.rewrite_list(stmt.body, live, in_loop)
                stmt.orelse = self.rewrite_list(stmt.orelse, live, in_loop)
            elif isinstance(stmt, (ast.For, ast.While)):
                inner_live = live | _reads(stmt)
                stmt.body = self.rewrite_list(stmt.body, inner_live, True)
                stmt.orelse = self.rewrite_list(stmt.orelse, live, in_loop)
            elif isinstance(stmt, ast.With):
                stmt.body = self.rewrite_list(stmt.body, live, in_loop)
        i = len(body) - 1
        while i >= 0:
            replaced = self._rewrite_at(body, i, live_out | loop_reads)
            if replaced is None and isinstance(body[i], ast.If):
                replaced = self._rewrite_under_if(body, i, live_out | loop_reads)
            if replaced is not None:
                start, end, new = replaced
                body[start:end] = new
                i = start - 1
            else:
                i -= 1
        return body

    def _rewrite_under_if(self, body: List[ast.stmt], i: int, live_out: Set[str]):
        """``<statements>; if C: y = dp(B) + res`` (timm's EfficientNet and
        MobileNet blocks: ``if self.has_skip:``), where the branch is the
        statements before the ``if``: ``if C: y = <site>`` with the branch
        taking them, ``else: <statements>`` as they were. Only where ``C``
        calls nothing and reads nothing the statements assign (it is then
        evaluated before them instead of after, to the same value)."""
        stmt = body[i]
        if not stmt.body or any(isinstance(n, (ast.Call, ast.NamedExpr, ast.Await)) for n in ast.walk(stmt.test)):
            return None
        rest = stmt.body[1:] + stmt.orelse + body[i + 1:]
        trial = body[:i] + [stmt.body[0]]
        sites, skipped = len(self.sites), list(self.skipped)
        replaced = self._rewrite_at(trial, i, live_out | _reads(rest))
        if replaced is None:
            return None
        start, _, new = replaced
        moved = body[start:i]
        if not moved or _reads(stmt.test) & set().union(*(_assigned(m) for m in moved)):
            del self.sites[sites:]
            self.skipped[:] = skipped
            return None
        self.skipped[:] = [reason for reason in skipped if not reason.startswith(f"line {stmt.body[0].lineno}:")]
        unchanged = [copy.deepcopy(m) for m in moved]
        hoisted = ast.If(test=stmt.test, body=new + stmt.body[1:], orelse=unchanged + (stmt.orelse or []))
        ast.copy_location(hoisted, stmt)
        return start, i + 1, [hoisted]

    def _site_statement(self, stmt: ast.stmt):
        """(target name or None for a return, the residual match) of a residual statement."""
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            match = self._match_residual(stmt.value)
            return (stmt.targets[0].id, match) if match else None
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value is not None:
            match = self._match_residual(stmt.value)
            return (stmt.target.id, match) if match else None
        if isinstance(stmt, ast.AugAssign) and isinstance(stmt.op, ast.Add) and isinstance(stmt.target, ast.Name):
            found = self._drop_path_call(stmt.value)
            if found:
                return stmt.target.id, (*found, ast.Name(id=stmt.target.id, ctx=ast.Load()))
        if isinstance(stmt, ast.Return) and stmt.value is not None:
            match = self._match_residual(stmt.value)
            if match is None and isinstance(stmt.value, ast.Tuple):  # `return res + dp(B), other, ...`
                found = [(k, self._match_residual(e)) for k, e in enumerate(stmt.value.elts)]
                found = [(k, m) for k, m in found if m is not None]
                if len(found) == 1 and not any(self._contains_drop_path(e) for k, e in
                                               enumerate(stmt.value.elts) if k != found[0][0]):
                    return (found[0][0], found[0][1])
            return (None, match) if match else None
        return None

    def _separate_drop_path_site(self, body: List[ast.stmt], i: int, live_out: Set[str]):
        """``t = dp(B)``, then statements that only transform ``t`` in place or
        reassign it (``t.mul_(gain)``, ``t = t * alpha``), then at ``i``
        ``y = g(t) + res`` (or ``res + g(t)``, ``return ...``): the branch is
        ``B`` through all of that, ``g`` included -- drop path moves past
        them, which holds when they scale each sample (layer scales, gains;
        the verification checks it). -> (target, (dp, None, None, res), index of
        the dp statement, the branch's statements after ``t = B``, ``t``, ``g(t)``)."""
        stmt = body[i]
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            target, value = stmt.targets[0].id, stmt.value
        elif isinstance(stmt, ast.Return) and stmt.value is not None:
            target, value = None, stmt.value
        elif isinstance(stmt, ast.AugAssign) and isinstance(stmt.op, ast.Add) and isinstance(stmt.target, ast.Name):
            # `t += res` (torchvision's CNBlock) or `res += t`: `t = t + res`, `res = res + t` (in place)
            target = stmt.target.id
            value = ast.BinOp(left=ast.Name(id=target, ctx=ast.Load()), op=ast.Add(), right=stmt.value)
        else:
            return None
        if not (isinstance(value, ast.BinOp) and isinstance(value.op, ast.Add)):
            return None
        k = i - 1
        while k >= 0 and self._transforms_only_itself(body[k]):
            k -= 1
        if k < 0 or not (isinstance(body[k], ast.Assign) and len(body[k].targets) == 1 and
                         isinstance(body[k].targets[0], ast.Name)):
            return None
        found = self._drop_path_call(body[k].value)
        name = body[k].targets[0].id
        post = body[k + 1:i]
        if found is None or found[2] is not None or any(_assigned(s) - {name} for s in post) or \
                any(name not in _reads(s) for s in post if isinstance(s, ast.Expr)):
            return None
        for mine, other in ((value.left, value.right), (value.right, value.left)):
            if name in _reads(mine) and name not in _reads(other) and not self._contains_drop_path(other):
                if name in (_reads(body[i + 1:]) | live_out) and name != target:
                    return None
                return target, (found[0], found[1], None, other), k, post, name, mine
        return None

    def _transforms_only_itself(self, stmt: ast.stmt) -> bool:
        """``t.mul_(...)``-style calls and assignments of one name (or an ``if`` of them)."""
        if isinstance(stmt, ast.Expr):
            call = stmt.value
            return isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and \
                isinstance(call.func.value, ast.Name) and not self._contains_drop_path(stmt)
        if isinstance(stmt, ast.Assign):
            return len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name) and \
                self._drop_path_call(stmt.value) is None and not self._contains_drop_path(stmt)
        if isinstance(stmt, ast.If):
            return all(self._transforms_only_itself(s) for s in stmt.body + stmt.orelse)
        return False

    def _rewrite_at(self, body: List[ast.stmt], i: int, live_out: Set[str]):
        stmt = body[i]
        site = self._site_statement(stmt)
        end = i + 1
        run_end = i
        index = len(self.sites)
        load = ast.Load()
        after = None  # what the stock forward applies to dp's output: `g` in `res + g(dp(B))`
        # `res += dp(B)` adds into the residual's own tensor (the caller may hold it); `t += res` into t's.
        inplace = isinstance(stmt, ast.AugAssign)
        if site is None:
            separate = self._separate_drop_path_site(body, i, live_out)
            if separate is None:
                return None
            target, (drop_path, branch, _, residual), run_end, post, name, mine = separate
            after = _function(_AFTER.format(index), [name], post + [ast.Return(value=mine)])
            inplace = inplace and target != name
        else:
            target, (drop_path, branch, wrapper, residual) = site
            if wrapper is not None:
                argument = "__droppath_out__"
                after = _function(_AFTER.format(index), [argument], [ast.Return(value=ast.Call(
                    func=ast.Attribute(value=ast.Name(id=self.me, ctx=load), attr=wrapper, ctx=load),
                    args=[ast.Name(id=argument, ctx=load)], keywords=[]))])
        live = (_reads(body[i + 1:]) | live_out) - ({target} if isinstance(target, str) else set())
        if isinstance(target, int):  # (the tuple's other elements are read after the branch)
            live |= _reads([e for k, e in enumerate(stmt.value.elts) if k != target])
        residual_reads = _reads(residual)
        needed = _reads(branch)
        start = run_end
        sides: List[str] = []  # names the branch assigns that the forward reads after it
        while start > 0:
            candidate = body[start - 1]
            if not _is_plain_assignment(candidate) or self._contains_drop_path(candidate):
                break
            assigned = _assigned(candidate)
            if not assigned & needed or assigned & residual_reads:
                break
            if assigned & live:
                # A value computed with the branch and read after it (attention weights a layer
                # returns): the branch hands it out too, computed on the samples it computes -- what
                # verification then compares (weights of every sample differ; None does not).
                late = assigned & live
                if not isinstance(target, str) or not late <= _definitely_assigned(candidate) or \
                        late & needed:
                    break
                sides = sorted(set(sides) | late)
            needed = (needed - _definitely_assigned(candidate)) | _reads(candidate)
            start -= 1
        run = body[start:run_end]
        # Inputs: what the branch reads before assigning it, and is defined before it (a name the branch
        # assigns on some paths only, and nothing assigns earlier, stays the branch's own local).
        first_line = (run[0] if run else stmt).lineno
        defined_before = set(self.parameters) | {
            n.id for n in ast.walk(self.definition)
            if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store) and getattr(n, "lineno", first_line) < first_line}
        inputs = sorted((needed - {self.me}) & self.locals & defined_before)
        gathered = [n for n in inputs if n in self.per_sample]
        shared = [n for n in inputs if n not in self.per_sample]
        line = stmt.lineno
        reads_in_branch = _reads(run + [ast.Expr(value=branch)])
        if not any(isinstance(n, ast.Call) for n in ast.walk(ast.Module(body=run + [ast.Expr(value=branch)],
                                                                          type_ignores=[]))):
            self.skipped.append(f"line {line}: the branch of {drop_path} computes nothing here "
                                f"(its value is computed before, and used elsewhere too)")
            return None
        if not gathered:
            self.skipped.append(f"line {line}: the branch of {drop_path} reads no per-sample input")
            return None
        # A batch size the branch reads is, in the branch, the number of samples it computes: the site
        # passes it (`batches`, each the forward's own as a thunk, or the count of rows it computes).
        batch_names = sorted(reads_in_branch & set(self.batch_sizes))
        for name in batch_names:
            source = self.batch_sizes[name][1]
            if source not in gathered and source not in self.per_sample:
                self.skipped.append(f"line {line}: the branch of {drop_path} reads the batch size ({name}) "
                                    f"of a tensor it does not take ({source})")
                return None
        outer_batch = [_BATCH.format(k) for k in range(len(batch_names))]  # (the forward's own, as thunks)
        run = [ast.Assign(targets=[ast.Name(id=name, ctx=ast.Store())], value=ast.Call(
            func=ast.Name(id=outer, ctx=ast.Load()), args=[], keywords=[]))
            for name, outer in zip(batch_names, outer_batch)] + run
        branch_code = run + [ast.Expr(value=branch)] + ([after] if after is not None else [])
        attributes = frozenset(n.attr for node in branch_code for n in ast.walk(node)
                               if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and
                               n.value.id == self.me)
        self.sites.append(Site(drop_path, gathered, shared, line, attributes))
        # Shared inputs the branch assigns are its arguments; the others it reads from the forward's
        # scope when it runs (an input that is unset on some paths is then read only where the stock
        # forward reads it). The site looks at those through `probe`, for tensors of the batch's size.
        assigned_in_run = set().union(*(_assigned(r) for r in run)) if run else set()
        passed = [n for n in shared if n in assigned_in_run]
        closed = [n for n in shared if n not in assigned_in_run]
        value = ast.Tuple(elts=[branch] + [ast.Name(id=n, ctx=load) for n in sides], ctx=load) if sides else branch
        nested = _function(_BRANCH.format(index), gathered + passed + outer_batch, run + [ast.Return(value=value)])
        probe = _thunk(ast.Tuple(elts=[ast.Name(id=n, ctx=load) for n in closed], ctx=load))
        call = ast.Call(
            func=ast.Name(id=SITE, ctx=load),
            args=[ast.Name(id=self.me, ctx=load), ast.Constant(value=index), ast.Constant(value=drop_path),
                  ast.Name(id=after.name, ctx=load) if after else ast.Constant(value=None), residual,
                  ast.Name(id=nested.name, ctx=load),
                  ast.Tuple(elts=[_thunk(ast.Name(id=n, ctx=load)) for n in gathered], ctx=load),
                  ast.Tuple(elts=[ast.Name(id=n, ctx=load) for n in passed], ctx=load), probe],
            keywords=[ast.keyword(arg="batches", value=ast.Tuple(
                elts=[_thunk(ast.Name(id=n, ctx=load)) for n in batch_names], ctx=load))] +
            # `res += dp(B)` adds into the residual's own tensor, which the caller may hold: the site does too.
            ([ast.keyword(arg="inplace", value=ast.Constant(value=True))] if inplace else []) +
            ([ast.keyword(arg="sides", value=ast.Constant(value=len(sides)))] if sides else []))
        if isinstance(target, int):  # one element of a returned tuple
            elements = list(stmt.value.elts)
            elements[target] = call
            new_stmt = ast.Return(value=ast.Tuple(elts=elements, ctx=load))
        elif target is None:
            new_stmt = ast.Return(value=call)
        elif sides:
            new_stmt = ast.Assign(targets=[ast.Tuple(elts=[ast.Name(id=n, ctx=ast.Store()) for n in [target] + sides],
                                                     ctx=ast.Store())], value=call)
        else:
            new_stmt = ast.Assign(targets=[ast.Name(id=target, ctx=ast.Store())], value=call)
        for node in ast.walk(ast.Module(body=[new_stmt], type_ignores=[])):
            ast.copy_location(node, stmt)
        defined = [nested] + ([after] if after else [])
        for node in defined:
            ast.copy_location(node, stmt)
        return start, end, defined + [new_stmt]


def _explicit_super(definition: ast.FunctionDef) -> None:
    """Zero-argument ``super()`` becomes ``super(__class__, self)``: a branch
    moved into a nested function would otherwise call it with the nested
    function's first argument (a tensor) as the instance."""
    arguments = definition.args.posonlyargs + definition.args.args
    if not arguments:
        return
    me = arguments[0].arg
    for node in ast.walk(definition):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "super" and \
                not node.args and not node.keywords:
            node.args = [ast.Name(id="__class__", ctx=ast.Load()), ast.Name(id=me, ctx=ast.Load())]


def _nested_code(code: types.CodeType, name: str) -> types.CodeType:
    """The code object of the function ``name`` defined in ``code``."""
    return next(c for c in code.co_consts if isinstance(c, types.CodeType) and c.co_name == name)


def _arguments(names: List[str]) -> ast.arguments:
    """Positional parameters ``names``, no defaults."""
    return ast.arguments(posonlyargs=[], args=[ast.arg(arg=n) for n in names], vararg=None, kwonlyargs=[],
                         kw_defaults=[], kwarg=None, defaults=[])


def _function(name: str, arguments: List[str], body: List[ast.stmt]) -> ast.FunctionDef:
    return ast.FunctionDef(
        name=name, args=_arguments(arguments), body=body, decorator_list=[], returns=None, type_comment=None,
        **({"type_params": []} if "type_params" in ast.FunctionDef._fields else {}))


def _thunk(value: ast.expr) -> ast.Lambda:
    """``lambda: value``: read when the site runs, so that a name unset on this
    path (the stock forward does not read it there either) raises there, where
    the site can tell."""
    return ast.Lambda(args=_arguments([]), body=value)
