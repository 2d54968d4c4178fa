"""DTensor sharding rules for the deterministic ops (tensor and sequence
parallelism, FSDP2 and DTensor-based data parallelism).

``_scale_rows`` / ``_add_rows`` act on each sample independently and are
linear in the branch, so a sharded input needs no communication:

- sharded along any dim but the sample dim (sequence / hidden parallelism):
  the factors stay replicated, every rank applies all of them to its piece;
- sharded along the sample dim: the factors are sharded the same way, each
  rank applies its samples' factors;
- partial sums (a row-parallel linear's output before its reduction): the
  scale of each partial is the scale of the sum.

The factors themselves are drawn on a replicated DTensor (``_sample_factors``
is composite: ``new_empty(n).bernoulli_()``), so a sample's pieces on
different ranks share one draw. On CUDA meshes DTensor's RNG tracker gives
every rank the same values whatever each rank's own seed. On CPU meshes torch
has no tracker and each rank draws from its own generator; there the drawn
factors (one number per sample) are broadcast from the mesh's first rank, so
the ranks agree even when they seed differently (as data-parallel scripts do).

Packed batches (``cu_seqlens``) are only supported replicated.
"""

from __future__ import annotations

from ._on_import import when_imported


def draws_per_rank(x) -> bool:
    """A DTensor on a mesh where DTensor's random ops draw on each rank from
    its own generator (no RNG tracker: CPU meshes)."""
    return type(x).__name__ == "DTensor" and x.device_mesh.device_type == "cpu"


def synced(factors):
    """``factors``, a replicated DTensor drawn on every rank, made equal to the
    mesh's first rank's draw: broadcast along each mesh dim from its first
    coordinate (n numbers per call)."""
    import torch
    import torch.distributed as dist

    mesh = factors.device_mesh
    with torch.no_grad():
        local = factors.to_local()
        for dim in range(mesh.ndim):
            group = mesh.get_group(dim)
            dist.broadcast(local, src=dist.get_global_rank(group, 0), group=group)
    return factors


def _sharding_rules(batch_dim: int, ndim: int, extra_inputs: int, packed: bool) -> list:
    """(output placements, input placements) pairs, one per acceptable sharding
    of the op's first (sample-carrying) inputs; ``extra_inputs`` more tensors
    (residual and branch for _add_rows) share the first one's placement."""
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.placement_types import Partial

    dim = batch_dim % ndim
    tail = [None, Replicate() if packed else None]  # batch_dim, cu_seqlens (replicated when given)
    rules = [([Replicate()], [Replicate()] * (1 + extra_inputs) + [Replicate()] + tail)]
    if packed:
        return rules
    for d in range(ndim):
        factors = Shard(0) if d == dim else Replicate()
        rules.append(([Shard(d)], [Shard(d)] * (1 + extra_inputs) + [factors] + tail))
    if extra_inputs == 0:  # scale_rows is linear in x; add_rows is not (residual + ...)
        rules.append(([Partial()], [Partial(), Replicate()] + tail))
    return rules


def _register(_module) -> None:
    try:
        import torch
        from torch.distributed.tensor.experimental import register_sharding
    except ImportError:  # a torch without DTensor's public registration: DTensors stay unsupported
        return

    @register_sharding(torch.ops.droppath._scale_rows.default)
    def _scale_rows(x, factors, batch_dim=0, cu_seqlens=None):
        return _sharding_rules(batch_dim, x.ndim, 0, cu_seqlens is not None)

    @register_sharding(torch.ops.droppath._add_rows.default)
    def _add_rows(residual, branch, factors, batch_dim=0, cu_seqlens=None):
        return _sharding_rules(batch_dim, branch.ndim, 1, cu_seqlens is not None)


def register() -> None:
    """Register the rules with DTensor when it is imported (importing it
    costs about half a second, which only DTensor users should pay)."""
    when_imported("torch.distributed.tensor", _register)
