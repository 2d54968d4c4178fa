"""Training-step benchmark on a real model: stock timm vs ``convert_model(fuse_residual=True)``.

    python benchmarks/train_step.py                      # ViT-Tiny, batch 32, rates 0.1 and 0.4
    python benchmarks/train_step.py --loss-steps 50      # plus a loss-curve comparison

Step = forward + cross-entropy + backward + SGD update, CPU, random data.
Stock and converted models are timed alternately, step by step, and the
medians compared. The loss comparison trains both from the same
initialisation on the same batches (a fixed seed schedule) and reports the
mean and standard deviation of each loss curve: the masks differ between the
two implementations (different RNG consumption), so the curves are compared
statistically, not step by step.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch

import droppath_ext as dp


def _make(model_name: str, rate: float, img_size: int, depth: int | None):
    import timm

    kwargs = dict(pretrained=False, drop_path_rate=rate, num_classes=100, img_size=img_size)
    if depth is not None:
        kwargs["depth"] = depth
    return timm.create_model(model_name, **kwargs)


def _step(model, optimizer, x, y) -> float:
    optimizer.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    return loss.item()


def time_steps(model_name, rate, batch, img_size, depth, steps, warmup):
    torch.manual_seed(0)
    stock = _make(model_name, rate, img_size, depth).train()
    fused = dp.convert_model(copy.deepcopy(stock), fuse_residual=True).train()
    models = {"stock": stock, "fused": fused}
    optims = {k: torch.optim.SGD(m.parameters(), lr=1e-3) for k, m in models.items()}
    x = torch.randn(batch, 3, img_size, img_size)
    y = torch.randint(0, 100, (batch,))
    times = {k: [] for k in models}
    for i in range(warmup + steps):
        for name in (("stock", "fused") if i % 2 == 0 else ("fused", "stock")):
            start = time.perf_counter()
            _step(models[name], optims[name], x, y)
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}, times


def loss_curves(model_name, rate, batch, img_size, depth, steps):
    torch.manual_seed(0)
    stock = _make(model_name, rate, img_size, depth).train()
    fused = dp.convert_model(copy.deepcopy(stock), fuse_residual=True).train()
    curves = {}
    for name, model in (("stock", stock), ("fused", fused)):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        data = torch.Generator().manual_seed(123)
        torch.manual_seed(1)
        losses = []
        for _ in range(steps):
            x = torch.randn(batch, 3, img_size, img_size, generator=data)
            y = torch.randint(0, 10, (batch,), generator=data)
            losses.append(_step(model, optimizer, x, y))
        curves[name] = losses
    return curves


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vit_tiny_patch16_224")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--depth", type=int, default=None)
    parser.add_argument("--rates", default="0.1,0.4")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--loss-steps", type=int, default=0, help="also compare loss curves over this many steps")
    parser.add_argument("--loss-img-size", type=int, default=64)
    parser.add_argument("--json")
    args = parser.parse_args()

    print(f"{args.model}, batch {args.batch}, img {args.img_size}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, droppath_ext backend {dp.backend()}")
    results = {}
    print(f"{'drop_path_rate':>14} {'stock ms':>10} {'fused ms':>10} {'speedup':>8}")
    for rate in (float(r) for r in args.rates.split(",")):
        med, raw = time_steps(args.model, rate, args.batch, args.img_size, args.depth, args.steps, args.warmup)
        results[rate] = {"median_s": med, "raw_s": raw}
        print(f"{rate:>14} {med['stock'] * 1e3:>10.0f} {med['fused'] * 1e3:>10.0f} {med['stock'] / med['fused']:>8.2f}",
              flush=True)
    if args.loss_steps:
        rate = max(float(r) for r in args.rates.split(","))
        curves = loss_curves(args.model, rate, args.batch, args.loss_img_size, args.depth, args.loss_steps)
        results["loss_curves"] = curves
        for name, losses in curves.items():
            tail = losses[len(losses) // 2:]
            print(f"loss {name:<5} rate {rate}: mean {statistics.mean(losses):.4f} std {statistics.stdev(losses):.4f} "
                  f"| second half mean {statistics.mean(tail):.4f} std {statistics.stdev(tail):.4f} "
                  f"| first {losses[0]:.4f} last {losses[-1]:.4f}")
        diffs = [a - b for a, b in zip(curves["stock"], curves["fused"])]
        se = statistics.stdev(diffs) / len(diffs) ** 0.5
        print(f"mean(stock - fused) = {statistics.mean(diffs):.4f} +- {se:.4f} (standard error)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
