"""Two-rank CPU training with a converted timm ViT in skip mode (run by
tests/test_distributed.py). Usage: train_worker.py PORT MODE OUT_DIR, MODE in
{ddp, fsdp}. Each rank writes OUT_DIR/rank{r}.pt with its final parameters
and the gradient check; any exception exits non-zero."""

import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import droppath_ext as dp
from droppath_ext import residual

STEPS = 20
BATCH = 4  # (skip mode computes at least two rows: a batch of 4 has rows to skip)


def _model():
    import timm

    torch.manual_seed(0)  # same initial weights on every rank
    model = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=3,
        drop_path_rate=0.5, num_classes=10,
    )
    return model


def _set_drop(model, prob):
    for module in model.modules():
        if isinstance(module, dp.DropPath):
            module.drop_prob = prob


def _wrap(model, mode):
    if mode == "ddp":
        return torch.nn.parallel.DistributedDataParallel(model)  # find_unused_parameters=False
    from torch.distributed.fsdp import fully_shard

    for block in model.blocks:
        fully_shard(block)
    fully_shard(model)
    return model


def _full_grads(model, mode):
    grads = []
    for p in model.parameters():
        g = p.grad
        if mode == "fsdp" and g is not None:
            g = g.full_tensor()
        grads.append(None if g is None else g.detach().clone())
    return grads


def _full_params(model, mode):
    params = []
    for p in model.parameters():
        t = p.full_tensor() if mode == "fsdp" else p
        params.append(t.detach().clone())
    return params


def worker(rank, port, mode, out_dir):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    torch.set_num_threads(1)
    data = torch.Generator().manual_seed(1000 + rank)

    # 1. Gradient check: rank 0 drops every sample of every block (drop_prob 1),
    #    rank 1 drops at 0.5. Skip mode must give the masked form's gradients.
    grads = {}
    for skip in (True, False):
        model = dp.convert_model(_model(), fuse_residual=True, skip_dropped=skip).train()
        _set_drop(model, 1.0 if rank == 0 else 0.5)
        wrapped = _wrap(model, mode)
        x = torch.randn(BATCH, 3, 32, 32, generator=torch.Generator().manual_seed(rank))
        y = torch.tensor([1, 2, 3, 4])
        torch.manual_seed(50 + rank)  # per-rank masks, the same for both modes
        torch.nn.functional.cross_entropy(wrapped(x), y).backward()
        grads[skip] = _full_grads(model, mode)
    for a, b in zip(grads[True], grads[False]):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)

    # 2. Training: 20 steps at drop_path_rate 0.5, batch 4 per rank, seeded per rank.
    #    skip_dropped=True: skip mode even with the counting hooks below (under
    #    "auto" a hook in a fused branch selects the masked form).
    model = dp.convert_model(_model(), fuse_residual=True, skip_dropped=True).train()
    wrapped = _wrap(model, mode)
    optimizer = torch.optim.SGD(wrapped.parameters(), lr=0.01)
    torch.manual_seed(rank)  # different masks on each rank, as timm's train script does
    all_dropped_calls = [0]  # draws that dropped every sample of a block on this rank
    skipped_calls = [0]  # MLP branches that ran on fewer rows than the batch
    draw = residual._draw

    def counting_draw(*args):
        factors, host_factors = draw(*args)
        all_dropped_calls[0] += bool((host_factors == 0).all())
        return factors, host_factors

    residual._draw = counting_draw
    for block in model.blocks:
        block.mlp.register_forward_pre_hook(
            lambda module, args: skipped_calls.__setitem__(0, skipped_calls[0] + (args[0].shape[0] < BATCH)))
    for _ in range(STEPS):
        x = torch.randn(BATCH, 3, 32, 32, generator=data)
        y = torch.randint(0, 10, (BATCH,), generator=data)
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(wrapped(x), y)
        loss.backward()
        optimizer.step()
        assert torch.isfinite(loss)
    residual._draw = draw
    torch.save({"params": _full_params(model, mode), "all_dropped_calls": all_dropped_calls[0],
                "skipped_calls": skipped_calls[0]},
               os.path.join(out_dir, f"rank{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    port, mode, out_dir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    mp.spawn(worker, args=(port, mode, out_dir), nprocs=2, join=True)
