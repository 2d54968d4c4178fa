"""Training-step benchmark on real timm models: stock vs converted, eager and compiled.

    python benchmarks/train_step.py                                   # CPU: ViT-Tiny, batch 32
    python benchmarks/train_step.py --device cuda --amp bf16 --model vit_base_patch16_224 --batch 128
    python benchmarks/train_step.py --compile --rates 0.4             # eager and torch.compile
    python benchmarks/train_step.py --compile-only --img-size 96 --depth 6 --rates 0.1,0.4   # the CPU compiled table
    python benchmarks/train_step.py --loss-steps 50                   # plus a loss-curve comparison

Variants, each its own model from the same initial weights:

- ``stock``: timm as is;
- ``default``: ``convert_model(fuse_residual=True)`` (skip where ``skip_pays``);
- ``skip``: ``skip_dropped=True`` (always skip dropped samples' compute);
- ``masked``: ``skip_dropped=False`` (fused masked op, every sample computed);
- ``dinov2``: timm's ViT blocks patched with DINOv2's fixed-size random subset
  (``index_add`` back, scaled by batch / subset) -- not per-sample Bernoulli, the
  bar skip mode is measured against (ViT models only).

Step = forward + cross-entropy + backward + optimizer step (SGD on the CPU,
fused AdamW on CUDA) on random data, optionally under bf16 autocast. Variants
are timed alternately, step by step (CUDA: synchronised), so drift hits all
alike. Reported per variant: the first step alone (compilation included),
the median of the first ``--first-steps`` steps (cold start: cuDNN plans,
autotuning), the median of the steady
steps after them, the speedup over stock (steady), and peak memory. Under
``--compile`` every variant is compiled (skip mode included: the count of
rows computed is a data-dependent size of one graph), and the table adds how
many graphs each compiled (1: no recompilation, no graph break; 2 for
converted models compiled before any eager step: the first step runs the
stock forward and verifies the blocks from inside the graph, the second
compiles skip mode in).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import statistics
import time
import types

import torch

import droppath_ext as dp


def _make(model_name: str, rate: float, img_size: int | None, depth: int | None):
    import timm

    kwargs = dict(pretrained=False, drop_path_rate=rate, num_classes=100)
    if depth is not None:
        kwargs["depth"] = depth
    if img_size is not None:
        try:
            return timm.create_model(model_name, img_size=img_size, **kwargs)
        except TypeError:  # convolutional models take any input size, and no such argument
            pass
    return timm.create_model(model_name, **kwargs)


# ---- DINOv2's stochastic depth (facebookresearch/dinov2, layers/block.py) -------------


def _dinov2_residual(x: torch.Tensor, branch, drop_prob: float) -> torch.Tensor:
    batch = x.shape[0]
    subset = max(int(batch * (1 - drop_prob)), 1)
    index = torch.randperm(batch, device=x.device)[:subset]
    out = branch(x[index])
    scale = batch / subset
    return torch.index_add(x.flatten(1), 0, index, out.to(x.dtype).flatten(1), alpha=scale).view_as(x)


def _dinov2_block_forward(self, x, attn_mask=None, is_causal=False):
    p1 = getattr(self.drop_path1, "drop_prob", 0.0)
    p2 = getattr(self.drop_path2, "drop_prob", 0.0)
    if not self.training or p1 == 0.0:
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x))))
    else:
        x = _dinov2_residual(x, lambda t: self.ls1(self.attn(self.norm1(t))), p1)
    if not self.training or p2 == 0.0:
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
    return _dinov2_residual(x, lambda t: self.ls2(self.mlp(self.norm2(t))), p2)


def _dinov2(model):
    blocks = [m for m in model.modules() if type(m).__name__ == "Block" and hasattr(m, "drop_path1")]
    if not blocks:
        return None
    for block in blocks:
        block.forward = types.MethodType(_dinov2_block_forward, block)
    return model


# ---- timing ---------------------------------------------------------------------------------


def _variants(stock, names):
    made = {}
    for name in names:
        if name == "stock":
            made[name] = stock
        elif name == "dinov2":
            patched = _dinov2(copy.deepcopy(stock))
            if patched is not None:
                made[name] = patched
        else:
            skip = {"default": "auto", "skip": True, "masked": False}[name]
            made[name] = dp.convert_model(copy.deepcopy(stock), fuse_residual=True, skip_dropped=skip)
    return made


def _optimizer(model, device):
    if device == "cuda":
        return torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    return torch.optim.SGD(model.parameters(), lr=1e-3)


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def time_variants(args, rate: float, compiled: bool) -> dict:
    device = args.device
    torch.manual_seed(0)
    stock = _make(args.model, rate, args.img_size, args.depth).to(device).train()
    names = args.variants.split(",")
    models = _variants(stock, names)
    size = args.img_size or stock.pretrained_cfg.get("input_size", (3, 224, 224))[-1]
    x = torch.randn(args.batch, 3, size, size, device=device)
    y = torch.randint(0, 100, (args.batch,), device=device)
    # (no verify_fused: converted blocks verify themselves on their first training call, compiled ones from
    # inside the first compiled graph, which then compiles again once with skip mode -- what users get)
    counters = {}
    if compiled:
        from torch._dynamo.testing import CompileCounterWithBackend

        torch._dynamo.reset()
        if args.compile_mode:  # (a mode is for the inductor backend itself, not a wrapper counting graphs)
            models = {name: torch.compile(model, mode=args.compile_mode) for name, model in models.items()}
        else:
            counters = {name: CompileCounterWithBackend("inductor") for name in models}
            models = {name: torch.compile(model, backend=counters[name]) for name, model in models.items()}
    optims = {name: _optimizer(model, device) for name, model in models.items()}
    amp = (torch.autocast(device, dtype=torch.bfloat16) if args.amp == "bf16" else contextlib.nullcontext)
    times = {name: [] for name in models}
    peak = {name: 0 for name in models}
    order = list(models)
    for step in range(args.first_steps + args.steps):
        for name in order if step % 2 == 0 else order[::-1]:
            model, optimizer = models[name], optims[name]
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            _sync(device)
            start = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            with amp():
                loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            _sync(device)
            times[name].append(time.perf_counter() - start)
            if device == "cuda":
                peak[name] = max(peak[name], torch.cuda.max_memory_allocated())
    result = {}
    for name, values in times.items():
        first, steady = values[: args.first_steps], values[args.first_steps :]
        result[name] = {
            "first_step_s": values[0],  # compilation included, when compiled
            "first_median_s": statistics.median(first) if first else None,
            "steady_median_s": statistics.median(steady),
            "peak_bytes": peak[name] or None,
            "graphs": counters[name].frame_count if name in counters else None,
            "raw_s": values,
        }
    return result


def _table(rows) -> str:
    header = (f"{'mode':<8} {'rate':>5} {'variant':<8} {'1st step s':>10} {'first ms':>9} {'steady ms':>10} "
              f"{'vs stock':>9} {'peak MiB':>9} {'graphs':>6}")
    lines = [header, "-" * len(header)]
    for mode, rate, res in rows:
        stock = res.get("stock", {}).get("steady_median_s")
        for name, r in res.items():
            first = f"{r['first_median_s'] * 1e3:.1f}" if r["first_median_s"] else "-"
            speed = f"{stock / r['steady_median_s']:.3f}x" if stock else "-"
            peak = f"{r['peak_bytes'] / 2**20:.0f}" if r["peak_bytes"] else "-"
            graphs = "-" if r.get("graphs") is None else str(r["graphs"])
            lines.append(f"{mode:<8} {rate:>5} {name:<8} {r['first_step_s']:>10.1f} {first:>9} "
                         f"{r['steady_median_s'] * 1e3:>10.1f} {speed:>9} {peak:>9} {graphs:>6}")
    return "\n".join(lines)


# ---- loss curves (CPU) -------------------------------------------------------------------


def _step(model, optimizer, x, y) -> float:
    optimizer.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    return loss.item()


def loss_curves(model_name, rate, batch, img_size, depth, steps):
    """Stock and converted trained from the same initialisation on the same
    batches with the same seed: on the CPU the masks are the same draws, so
    the curves should coincide."""
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vit_tiny_patch16_224")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--img-size", type=int, default=None, help="default: the model's own")
    parser.add_argument("--depth", type=int, default=None)
    parser.add_argument("--rates", default="0.1,0.4")
    parser.add_argument("--variants", default="stock,default,skip,masked,dinov2")
    parser.add_argument("--amp", choices=["none", "bf16"], default="none")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd variants")
    parser.add_argument("--compile-only", action="store_true", help="time only the torch.compile'd variants")
    parser.add_argument("--compile-mode", default=None,
                        help="torch.compile mode, e.g. max-autotune-no-cudagraphs (default: the default mode)")
    parser.add_argument("--first-steps", type=int, default=3, help="cold-start steps, reported apart")
    parser.add_argument("--steps", type=int, default=6, help="steady-state steps after them")
    parser.add_argument("--loss-steps", type=int, default=0, help="also compare loss curves over this many steps")
    parser.add_argument("--loss-img-size", type=int, default=64)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but no GPU is visible")

    where = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{args.model}, batch {args.batch}, {where}, amp {args.amp}, torch {torch.__version__}, "
          f"droppath_ext backend {dp.backend()}; medians of {args.first_steps} first and {args.steps} steady "
          f"steps, variants interleaved", flush=True)
    modes = (["compile"] if args.compile_only else ["eager"] + (["compile"] if args.compile else []))
    rows, results = [], {}
    for mode in modes:
        for rate in (float(r) for r in args.rates.split(",")):
            res = time_variants(args, rate, compiled=mode == "compile")
            rows.append((mode, rate, res))
            results[f"{mode}/{rate}"] = res
            print(_table([(mode, rate, res)]).split("\n", 2)[-1], flush=True)
    print()
    print(_table(rows))
    if args.loss_steps:
        rate = max(float(r) for r in args.rates.split(","))
        curves = loss_curves(args.model, rate, args.batch, args.loss_img_size, args.depth, args.loss_steps)
        results["loss_curves"] = curves
        for name, losses in curves.items():
            print(f"loss {name:<5} rate {rate}: mean {statistics.mean(losses):.4f} std {statistics.stdev(losses):.4f} "
                  f"| first {losses[0]:.4f} last {losses[-1]:.4f}")
        same = sum(a == b for a, b in zip(curves["stock"], curves["fused"]))
        print(f"steps with identical loss: {same}/{len(curves['stock'])}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
