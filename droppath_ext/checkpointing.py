"""Activation checkpointing with explicit generators (``generator=``).

``torch.utils.checkpoint`` recomputes a region's forward during the backward
pass, restoring the *default* generators' states first (``preserve_rng_state``)
so that random ops draw what they drew the first time. A generator passed
explicitly (``drop_path(..., generator=g)``) is not among them: without help
the recomputation draws the next values of ``g``, a different mask than the
one the forward used, and the gradients are wrong. [`replay_generators`][droppath_ext.replay_generators]
is the help, in the form checkpoint takes (non-reentrant checkpoint only)::

    g = torch.Generator().manual_seed(0)
    out = torch.utils.checkpoint.checkpoint(
        block, x, use_reentrant=False, context_fn=droppath_ext.replay_generators(g))
"""

from __future__ import annotations

import contextlib
from typing import Callable, ContextManager, Iterator

import torch

__all__ = ["replay_generators"]


def replay_generators(*generators: torch.Generator) -> Callable[[], tuple[ContextManager, ContextManager]]:
    """A ``context_fn`` for ``torch.utils.checkpoint.checkpoint(..., use_reentrant=False)``
    that makes the recomputation draw from ``generators`` exactly what the
    forward drew: their states are saved when the forward starts, set back for
    the recomputation, and restored afterwards (so draws after the checkpointed
    region are not disturbed).

    Args:
        *generators: the ``torch.Generator`` objects the region draws from
            explicitly (``generator=``).

    Returns:
        A function returning the (forward, recomputation) context managers,
        as ``checkpoint``'s ``context_fn`` takes it.

    Raises:
        TypeError: an argument is not a ``torch.Generator``.

    Example:
        ```python
        import torch, droppath_ext as dp
        g = torch.Generator().manual_seed(0)
        x = torch.randn(8, 16, requires_grad=True)
        out = torch.utils.checkpoint.checkpoint(
            lambda t: dp.drop_path(t.sin(), 0.5, True, generator=g), x,
            use_reentrant=False, context_fn=dp.replay_generators(g))
        out.sum().backward()        # the recomputation drew the forward's mask
        ```
    """
    for generator in generators:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"replay_generators takes torch.Generator objects, got {type(generator).__name__}")

    def context_fn() -> tuple[ContextManager, ContextManager]:
        saved: list[torch.Tensor] = []

        @contextlib.contextmanager
        def forward() -> Iterator[None]:
            saved[:] = [g.get_state() for g in generators]
            yield

        @contextlib.contextmanager
        def recompute() -> Iterator[None]:
            current = [g.get_state() for g in generators]
            for g, state in zip(generators, saved):
                g.set_state(state)
            try:
                yield
            finally:
                for g, state in zip(generators, current):
                    g.set_state(state)

        return forward(), recompute()

    return context_fn
