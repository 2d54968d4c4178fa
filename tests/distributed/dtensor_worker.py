"""drop_path, drop_path_add and DropPath on DTensors, two CPU ranks (run by
tests/test_dtensor.py). Usage: dtensor_worker.py PORT OUT_DIR. Each rank
writes OUT_DIR/rank{r}.pt with the full tensors it saw; any failed check
exits non-zero.

droppath_ext is imported before DTensor, as a training script would: the
sharding rules register when DTensor is imported."""

import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import droppath_ext as dp

PLACEMENTS = ("Shard(1)", "Replicate()", "Shard(0)")


def _calls():
    block = dp.DropPath(0.5).train()
    return {
        "drop_path": lambda t: dp.drop_path(t, 0.5, True),
        "drop_path_add": lambda t: dp.drop_path_add(t, t * 2, 0.5, True),
        "DropPath": block,
        "stochastic_depth": lambda t: dp.stochastic_depth(t, 0.5, "row"),
    }


def worker(rank, port, out_dir):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor  # noqa: F401

    mesh = init_device_mesh("cpu", (2,))
    torch.manual_seed(0)
    x = torch.randn(8, 6, 4) + 3.0  # never zero: a zero sample was dropped
    seen = {}
    for placement_text in PLACEMENTS:
        placement = eval(placement_text)
        dx = distribute_tensor(x, mesh, [placement])  # rank 0's x, everywhere
        full_x = dx.full_tensor()
        for name, call in _calls().items():
            for seed in range(4):
                # The ranks of the mesh share a seed (the documented rule for CPU meshes).
                torch.manual_seed(seed)
                leaf = dx.detach().requires_grad_()
                out = call(leaf)
                assert isinstance(out, DTensor), (name, type(out))
                assert out.placements == (placement,), (name, out.placements)
                out.sum().backward()
                assert isinstance(leaf.grad, DTensor)
                torch.manual_seed(seed)
                plain_leaf = full_x.detach().requires_grad_()
                want = call(plain_leaf)
                want.sum().backward()
                got = out.full_tensor()
                torch.testing.assert_close(got, want, rtol=0, atol=0, msg=f"{placement_text} {name} {seed}")
                torch.testing.assert_close(leaf.grad.full_tensor(), plain_leaf.grad, rtol=0, atol=0)
                seen[f"{placement_text} {name} {seed}"] = got
                # Ranks seeded differently (as data-parallel scripts do): still one
                # mask for the mesh, rank 0's draw (CPU meshes: broadcast).
                torch.manual_seed(100 * rank + seed)
                seen[f"per-rank seeds: {placement_text} {name} {seed}"] = call(dx).full_tensor()
    torch.save(seen, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    port, out_dir = int(sys.argv[1]), sys.argv[2]
    mp.spawn(worker, args=(port, out_dir), nprocs=2, join=True)
