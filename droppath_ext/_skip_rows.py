"""Which rows skip mode computes, from the drawn mask: on the host, for eager
skip mode, and as one traceable op for skip mode under ``torch.compile``.

Row maps: ``rows[b]`` is the branch row of sample ``b`` (-1 when it is not
computed), ``index`` the samples computed, in order. The number computed is
the kept count rounded up to the granule (``residual.branch_batch_granule``),
the first dropped samples padding it (computed, then discarded).

Under ``torch.compile`` the number of rows is data-dependent: the op
``droppath_ext::_row_maps`` tells the compiler so (its fake implementation
makes the count an unbacked size), and the branch is compiled once for any
count -- no graph break, no recompilation as the count changes from step to
step, ``fullgraph=True`` included. The mask arrives drawn on the host, so the
count needs no device synchronisation; maps and factors go to the device by
pinned, non-blocking copies inside the op. The op is tagged
``cudagraph_unsafe``: CUDA graphs (``mode="reduce-overhead"``) step aside for
it, as they must for any data-dependent shape.
"""

from __future__ import annotations

import torch
from torch import Tensor


def host_row_maps(host_factors: Tensor, granule: int, at_least: int = 0) -> tuple[Tensor, Tensor, int, int]:
    """``(rows, index, kept, computed)`` on the host: the row maps, how many
    samples were kept, and how many rows the branch computes (the kept count
    rounded up to the granule, and to ``at_least``, within the batch)."""
    batch = host_factors.shape[0]
    computed = host_factors != 0
    kept = int(computed.sum())
    rows_computed = min(batch, max(at_least, -(-kept // granule) * granule))
    if rows_computed > kept:  # pad with the first dropped samples: computed, then discarded
        padding = (~computed).nonzero().squeeze(1)[: rows_computed - kept]
        computed[padding] = True
    index = computed.nonzero().squeeze(1)
    rows = torch.where(computed, computed.cumsum(0) - 1, -1)
    return rows, index, kept, rows_computed


def min_rows(batch: int) -> int:
    """The fewest rows skip mode computes: two (one kept, one dropped and
    discarded) where the batch has two, so a branch never meets a batch of
    one that the stock model never gives it (``.squeeze()`` would drop the
    batch dim); one where the batch has one."""
    return min(2, batch)


def to_device(host: Tensor, device: torch.device) -> Tensor:
    """A host tensor on ``device`` without synchronising (pinned, non-blocking)."""
    if device.type == "cpu":
        return host
    return host.pin_memory().to(device, non_blocking=True)


_TAGS = tuple(tag for tag in (getattr(torch.Tag, "cudagraph_unsafe", None),) if tag is not None)


@torch.library.custom_op("droppath_ext::_row_maps", mutates_args=(), tags=_TAGS)
def row_maps(host_factors: Tensor, granule: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """``(factors, rows, index)`` on ``device`` from factors drawn on the host.
    At least ``min_rows`` rows are computed (dropped ones, discarded, when
    fewer are kept): compiled code then never meets an empty batch, whose
    emptiness many ops would have to test (and a data-dependent size cannot be
    tested while compiling), nor a batch of one."""
    rows, index, _, _ = host_row_maps(host_factors, granule, at_least=min_rows(host_factors.shape[0]))
    # (a clone on the CPU: an op's output must not alias its input)
    factors = host_factors.clone() if device.type == "cpu" else to_device(host_factors, device)
    return factors, to_device(rows, device), to_device(index, device)


def _rows_computed_size(batch) -> torch.SymInt:
    """A new unbacked size in [min_rows(batch), batch] (see row_maps) for the
    count of rows computed.

    ``new_dynamic_size`` refuses unless the ShapeEnv allows data-dependent
    output shapes, which dynamo allows under ``fullgraph=True`` only (without
    it, it prefers a graph break there, and the resumed code would then be
    recompiled for new counts). Skip mode's count is data-dependent by
    design, so the size is made directly, in every compile mode.
    """
    ctx = torch.library.get_ctx()
    low = min_rows(batch) if isinstance(batch, int) else 2  # (dynamo specialises batch sizes 0 and 1)
    bound = {"max": batch} if isinstance(batch, int) else {}
    try:
        return ctx.new_dynamic_size(min=low, **bound)
    except torch._subclasses.fake_tensor.DynamicOutputShapeException:
        shape_env = getattr(ctx, "_shape_env", None)
        from torch._library.fake_impl import allocate_size

        if shape_env is None:
            raise
        return allocate_size(shape_env, low, bound.get("max"))


@row_maps.register_fake
def _row_maps_fake(host_factors: Tensor, granule: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    batch = host_factors.shape[0]
    computed = _rows_computed_size(batch)
    return (
        host_factors.new_empty([batch], device=device),
        host_factors.new_empty([batch], dtype=torch.int64, device=device),
        host_factors.new_empty([computed], dtype=torch.int64, device=device),
    )
