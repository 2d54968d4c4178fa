"""Skip mode the way training scripts use it: compiled with Inductor (the
default backend), convolutional blocks, gradient checkpointing under compile,
empty and one-sample batches, forward hooks inside fused branches, models
built on the meta device. Each case compares with the stock model (or the
eager step) for the same seed; compiled cases use ``fallback_random=True`` so
Inductor draws what eager draws."""

import copy
import subprocess
import sys
import textwrap
from unittest import mock

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

import droppath_ext as dp
from droppath_ext import residual
from conftest import import_or_skip, subprocess_env
from steps import assert_same_step, step

import torch._dynamo.testing  # noqa: E402 (CompileCounterWithBackend)
import torch._inductor.config as inductor_config  # noqa: E402


def _skips(graphs) -> bool:
    """Skip mode was compiled into one of these graphs (its row-map op is there)."""
    return any("droppath_ext._row_maps" in str(n.target) for g in graphs for n in g.graph.nodes)


class _ConvBlock(nn.Module):
    """A ConvNeXt-style residual: depthwise conv, pointwise MLP, layer scale."""

    def __init__(self, dim=16, drop_prob=0.4, skip_dropped=True):
        super().__init__()
        self.dw = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.pw = nn.Conv2d(dim, dim, 1)
        self.gamma = nn.Parameter(torch.full((dim, 1, 1), 0.5))
        self.drop_prob, self.skip_dropped = drop_prob, skip_dropped

    def branch(self, x):
        return self.gamma * self.pw(torch.nn.functional.gelu(self.dw(x)))

    def forward(self, x):
        return dp.drop_path_residual(x, self.branch, self.drop_prob, self.training, skip_dropped=self.skip_dropped)


# ---- 1. convolutional branches under Inductor ------------------------------------------


@pytest.mark.parametrize("options", [
    pytest.param({}, marks=pytest.mark.slow),
    pytest.param({"mode": "max-autotune-no-cudagraphs"}, marks=pytest.mark.slow),
    pytest.param({"dynamic": True}, marks=pytest.mark.slow),
], ids=["default", "max-autotune-no-cudagraphs", "dynamic"])
def test_a_conv_branch_trains_in_skip_mode_under_inductor(options):
    """The smallest case of the Inductor failure (a convolution on a
    data-dependent batch: "expected size 16==16, stride 1==16 ... aten.convolution")."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    block = nn.Sequential(_ConvBlock(), _ConvBlock()).train()
    counter = torch._dynamo.testing.CompileCounterWithBackend("inductor")
    compiled = torch.compile(block, backend=counter, **options) if "mode" not in options else \
        torch.compile(block, **options)
    x = torch.randn(6, 16, 4, 4)
    compiles = []
    with inductor_config.patch(fallback_random=True):
        for seed in range(4):
            assert_same_step(step(compiled, x, seed, block), step(block, x, seed))
            compiles.append(counter.frame_count)
    if "mode" not in options:
        # One compilation, none as the kept count changes. (With dynamic=True, dynamo
        # restarts its first analysis once to specialise the float drop rate: two frames then.)
        assert compiles == [1 if not options else compiles[0]] * 4 and _skips(counter.graphs)


def _convnexts(rate):
    timm = import_or_skip("timm")
    import_or_skip("torchvision")
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt

    def transformers_convnext():
        import_or_skip("transformers")
        from transformers_families import build

        model, _ = build("convnext", rate)

        class PixelsIn(nn.Module):  # (takes pixel_values positionally, returns the pooled features)
            def __init__(self):
                super().__init__()
                self.model = model

            def forward(self, pixel_values):
                return self.model(pixel_values=pixel_values).pooler_output

        return PixelsIn()

    return {
        "timm": lambda: timm.create_model("convnext_atto", pretrained=False, drop_path_rate=rate, num_classes=10,
                                          dims=(16, 24, 32, 48), depths=(1, 1, 2, 1)),
        "torchvision": lambda: ConvNeXt([CNBlockConfig(16, 32, 2), CNBlockConfig(32, None, 2)],
                                        stochastic_depth_prob=rate, num_classes=10),
        "transformers": transformers_convnext,
    }


@pytest.mark.slow
@pytest.mark.parametrize("library", ["timm", "torchvision", "transformers"])
def test_converted_convnexts_train_under_inductor_as_stock(library):
    """timm ConvNeXtBlock, torchvision CNBlock and transformers ConvNextLayer,
    fused, compiled with the default backend before any eager step: the stock
    model's step for the same seed, two graphs (the first runs the stock
    forward and verifies the blocks from inside the graph, the second has skip
    mode in it) and no more over changing kept counts."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    stock = _convnexts(0.6)[library]().train()
    converted = dp.convert_model(_convnexts(0.6)[library](), fuse_residual=True, skip_dropped="auto").train()
    converted.load_state_dict(stock.state_dict())
    counter = torch._dynamo.testing.CompileCounterWithBackend("inductor")
    compiled = torch.compile(converted, backend=counter)
    x = torch.randn(8, 3, 32, 32)
    with inductor_config.patch(fallback_random=True):
        for seed in range(3):
            assert_same_step(step(compiled, x, seed, converted), step(stock, x, seed))
    assert counter.frame_count == 2 and _skips(counter.graphs)


@pytest.mark.slow  # (two Inductor compilations of convolutional graphs)
def test_without_unbacked_convolutions_inductor_decides_the_layout_as_before():
    """The Inductor fix turns the CPU layout optimisation off only for graphs
    with a convolution on a data-dependent batch."""
    from droppath_ext import _inductor_fixes

    torch._dynamo.reset()
    seen = []
    from torch._inductor.graph import GraphLowering

    real = GraphLowering.decide_layout_opt

    def record(gm, *args, **kwargs):
        seen.append((_inductor_fixes.conv_on_unbacked_sizes(gm), real(gm, *args, **kwargs)))
        return seen[-1][1]

    with mock.patch.object(GraphLowering, "decide_layout_opt", staticmethod(record)), \
            inductor_config.patch(fx_graph_cache=False, fx_graph_remote_cache=False), \
            torch._functorch.config.patch(enable_autograd_cache=False):  # (a cached graph is not lowered again)
        conv = nn.Conv2d(4, 4, 3, padding=1).train()
        torch.compile(conv)(torch.randn(2, 4, 6, 6)).sum().backward()
        torch.compile(_ConvBlock(4).train())(torch.randn(6, 4, 5, 5)).sum().backward()
    plain = [decided for unbacked, decided in seen if not unbacked]
    skipping = [decided for unbacked, decided in seen if unbacked]
    assert skipping and not any(skipping)
    assert plain  # (decided by Inductor itself, whatever it chose)


# ---- 2. gradient checkpointing under compile ---------------------------------------------


class _Blocks(nn.Module):
    def __init__(self, reentrant):
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(8), nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8)) for _ in range(2))
        self.reentrant = reentrant

    def residual(self, block, x):
        x = dp.drop_path_residual(x, block, 0.5, self.training, skip_dropped=True)
        return dp.drop_path_residual(x, block, 0.5, self.training, skip_dropped=True)

    def forward(self, x, checkpointed=True):
        for block in self.blocks:
            if checkpointed:
                x = checkpoint(self.residual, block, x, use_reentrant=self.reentrant)
            else:
                x = self.residual(block, x)
        return x


@pytest.mark.slow  # (Inductor compilations of checkpointed regions, forward and backward)
@pytest.mark.parametrize("reentrant", [False, True], ids=["non-reentrant", "reentrant"])
def test_checkpointing_under_inductor_gives_the_gradients_without_it(reentrant):
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = _Blocks(reentrant).train()
    compiled = torch.compile(model)
    x = torch.randn(8, 4, 8)
    with inductor_config.patch(fallback_random=True):
        for seed in range(3):
            assert_same_step(step(compiled, x, seed, model), step(lambda t: model(t, checkpointed=False), x, seed, model))


@pytest.mark.slow
def test_timm_grad_checkpointing_under_inductor():
    timm = import_or_skip("timm")
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, drop_path_rate=0.4, img_size=32,
                              patch_size=8, depth=3, num_classes=10)
    model = dp.convert_model(model, fuse_residual=True, skip_dropped=True).train()
    x = torch.randn(8, 3, 32, 32)
    want = [step(model, x, seed) for seed in range(2)]
    model.set_grad_checkpointing(True)
    compiled = torch.compile(model)
    with inductor_config.patch(fallback_random=True):
        for seed in range(2):
            assert_same_step(step(compiled, x, seed, model), want[seed])


@pytest.mark.slow
def test_transformers_gradient_checkpointing_under_inductor():
    import_or_skip("transformers")
    from transformers_families import build, checkpointing_enable, main_output

    torch._dynamo.reset()
    model, inputs = build("dinov2", 0.4)
    model = dp.convert_model(model, fuse_residual=True, skip_dropped=True).train()
    pixels = inputs(8)["pixel_values"]

    def run(m):
        return lambda t: main_output(m(pixel_values=t))

    want = [step(run(model), pixels, seed, model) for seed in range(2)]
    checkpointing_enable(model)
    compiled = torch.compile(run(model))
    with inductor_config.patch(fallback_random=True):
        for seed in range(2):
            got = step(compiled, pixels, seed, model)
            torch.testing.assert_close(got[0], want[seed][0], rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(got[1], want[seed][1], rtol=1e-4, atol=1e-5)


# ---- 3. empty batches, one sample, all dropped, all kept -------------------------------


class _Linear(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.drop_prob = 0.5

    def forward(self, x):
        return dp.drop_path_residual(x, self.fc, self.drop_prob, self.training, skip_dropped=True)


# (Inductor compiles the empty batch in the default run, and every edge with --full;
# aot_eager traces every edge in both runs)
@pytest.mark.parametrize("compile_backend, batch, drop_prob", [
    pytest.param(backend, batch, drop_prob, id=f"{edge}-{backend}",
                 marks=pytest.mark.slow if backend == "inductor" and edge != "empty" else ())
    for backend in ("aot_eager", "inductor")
    for (batch, drop_prob), edge in zip([(0, 0.5), (1, 0.5), (3, 1.0), (4, 1e-9)],
                                        ["empty", "one", "all-dropped", "all-kept"])])
def test_edge_batches_under_compile_equal_eager(compile_backend, batch, drop_prob):
    torch._dynamo.reset()
    block = _Linear().train()
    block.drop_prob = drop_prob
    compiled = torch.compile(block, backend=compile_backend)
    x = torch.randn(batch, 5, 8)
    with inductor_config.patch(fallback_random=True):
        for seed in range(3):
            got = step(compiled, x, seed, block)
            assert_same_step(got, step(block, x, seed))
            assert got[0].shape == x.shape
            assert set(got[2]) == {"fc.weight", "fc.bias"}  # every parameter gets a gradient


# ---- 4. hooks inside fused branches ---------------------------------------------------------


def _vit(**kwargs):
    timm = import_or_skip("timm")
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, drop_path_rate=0.9, img_size=32,
                             patch_size=8, depth=3, num_classes=10, **kwargs)


def _rows(value) -> int:
    """Samples in a module's input or output (the first tensor of a tuple)."""
    return len(value[0] if isinstance(value, (tuple, list)) else value)


def _rows_seen(model, names):
    """Forward-pre and forward hooks on the named modules, logging how many samples each call sees."""
    seen = {name: [] for name in names}
    handles = []
    for name in names:
        module = model.get_submodule(name)
        handles.append(module.register_forward_pre_hook(lambda m, args, name=name: seen[name].append(_rows(args))))
        handles.append(module.register_forward_hook(lambda m, args, out, name=name: seen[name].append(_rows(out))))
    return seen, handles


HOOKED = ["blocks.1.norm1", "blocks.1.attn", "blocks.1.mlp", "blocks.1.ls2", "blocks.2.drop_path1"]


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_hooks_inside_a_fused_timm_block_see_the_whole_batch(compiled):
    torch.manual_seed(0)
    stock = _vit().train()
    fused = dp.convert_model(_vit(), fuse_residual=True).train()
    fused.load_state_dict(stock.state_dict())
    x = torch.randn(8, 3, 32, 32)
    stock_seen, _ = _rows_seen(stock, HOOKED)
    fused_seen, _ = _rows_seen(fused, HOOKED)
    run = torch.compile(fused, backend="aot_eager") if compiled else fused
    assert_same_step(step(run, x, 3, fused), step(stock, x, 3))
    assert fused_seen == stock_seen and all(rows == [8, 8] for rows in stock_seen.values())


def test_skip_mode_engages_without_hooks_and_with_skip_dropped_true():
    torch.manual_seed(0)
    fused = dp.convert_model(_vit(), fuse_residual=True).train()
    x = torch.randn(8, 3, 32, 32)
    with mock.patch.object(residual, "_skip", wraps=residual._skip) as skip:
        fused(x)
    assert skip.called
    forced = dp.convert_model(_vit(), fuse_residual=True, skip_dropped=True).train()
    seen, handles = _rows_seen(forced, ["blocks.2.mlp"])
    torch.manual_seed(1)
    forced(x)
    assert min(seen["blocks.2.mlp"]) < 8  # skip_dropped=True: the hook sees the computed rows
    for handle in handles:
        handle.remove()
    with mock.patch.object(residual, "_skip", wraps=residual._skip) as skip:  # hooks gone: skip mode again
        fused(x)
    assert skip.called


def test_a_global_module_hook_makes_fused_blocks_run_the_stock_forward():
    torch.manual_seed(0)
    fused = dp.convert_model(_vit(), fuse_residual=True).train()
    rows = []
    handle = nn.modules.module.register_module_forward_hook(
        lambda m, args, out: rows.append(len(out)) if isinstance(out, torch.Tensor) and out.dim() == 3 else None)
    try:
        with mock.patch.object(residual, "_skip", wraps=residual._skip) as skip:
            fused(torch.randn(8, 3, 32, 32))
    finally:
        handle.remove()
    assert not skip.called and rows and set(rows) == {8}


def test_flop_counter_mode_counts_the_flops_skip_mode_computes():
    """FlopCounterMode (a dispatch mode that observes real tensors, with a
    ModuleTracker's global hooks) leaves skip mode on: the step is the masked
    form's for the same seed, with fewer flops, in hand-written and generic blocks."""
    from torch.utils.flop_counter import FlopCounterMode

    import research_model

    def counted(model, x):
        with FlopCounterMode(display=False) as counter:
            result = step(model, x, 3)
        return result, counter.get_total_flops()

    torch.manual_seed(0)
    models = {"vit": (_vit(), torch.randn(8, 3, 32, 32)),
              "research": (research_model.ResearchNet(drop_path_rate=0.9), torch.randn(8, 3, 16, 16))}
    for name, (model, x) in models.items():
        masked = dp.convert_model(copy.deepcopy(model), fuse_residual=True, skip_dropped=False).train()
        fused = dp.convert_model(model, fuse_residual=True).train()
        dp.verify_fused(fused, x)
        (got, got_flops), (want, want_flops) = counted(fused, x), counted(masked, x)
        assert_same_step(got, want)
        assert got_flops < 0.8 * want_flops, (name, got_flops, want_flops)


def test_hooks_inside_a_fused_transformers_layer_see_the_whole_batch():
    import_or_skip("transformers")
    from transformers_families import build, main_output

    stock, inputs = build("dinov2", 0.9)
    fused, _ = build("dinov2", 0.9)
    dp.convert_model(stock)
    report = dp.convert_model(fused, fuse_residual=True, return_report=True)[1]
    assert report.fused
    names = [f"encoder.layer.1.{part}" for part in ("norm1", "attention", "layer_scale1", "norm2", "mlp",
                                                     "layer_scale2", "drop_path")]
    stock_seen, _ = _rows_seen(stock, names)
    fused_seen, _ = _rows_seen(fused, names)
    batch = inputs(8)
    for model in (stock, fused):
        torch.manual_seed(2)
        main_output(model.train()(**batch)).sum().backward()
    assert fused_seen == stock_seen and all(rows and set(rows) == {8} for rows in stock_seen.values())


# ---- 5. conversion is a pure function of the model --------------------------------------


_META_THEN_CPU = textwrap.dedent(
    """
    import torch, transformers as T, droppath_ext as dp
    config = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                  image_size=32, patch_size=8, drop_path_rate=0.3)
    with torch.device("meta"):
        meta = T.Dinov2Model(T.Dinov2Config(**config))
    _, on_meta = dp.convert_model(meta, fuse_residual=True, return_report=True)
    cpu = T.Dinov2Model(T.Dinov2Config(**config))
    _, on_cpu = dp.convert_model(cpu, fuse_residual=True, return_report=True)
    print(len(on_meta.replaced), len(on_meta.fused), len(on_cpu.replaced), len(on_cpu.fused),
          len(on_meta.not_replaced) + len(on_cpu.not_replaced))
    meta.to_empty(device="cpu")
    out = meta.train()(pixel_values=torch.randn(2, 3, 32, 32)).last_hidden_state
    print(tuple(out.shape))
    """
)


@pytest.mark.slow  # (a fresh process)
def test_a_meta_device_conversion_then_a_cpu_one_in_a_fresh_process():
    import_or_skip("transformers")
    result = subprocess.run([sys.executable, "-c", _META_THEN_CPU], capture_output=True, text=True,
                            env=subprocess_env(), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    counts, shape = result.stdout.split("\n")[:2]
    assert counts == "2 2 2 2 0" and shape == "(2, 17, 32)"


class PastedDropPath(nn.Module):
    """timm's old drop_path, as research code pastes it (draws with torch.rand
    on the input's device, in its dtype)."""

    def __init__(self, drop_prob=None):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x):
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep_prob = 1 - self.drop_prob
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        random_tensor = keep_prob + torch.rand(shape, dtype=x.dtype, device=x.device)
        random_tensor.floor_()
        return x.div(keep_prob) * random_tensor


@pytest.mark.parametrize("where", ["meta", "fake", "cuda-default"])
def test_conversion_under_any_default_device_or_mode_is_the_same(where):
    from torch._subclasses.fake_tensor import FakeTensorMode

    def model():
        return nn.Sequential(nn.Linear(4, 4), PastedDropPath(0.2))

    contexts = {"meta": lambda: torch.device("meta"), "fake": FakeTensorMode,
                "cuda-default": lambda: torch.device("cuda")}
    built = model()
    with contexts[where]():
        _, inside = dp.convert_model(built, return_report=True)
    _, outside = dp.convert_model(model(), return_report=True)
    assert inside.replaced == outside.replaced == ["1"]
    assert not inside.not_replaced and not outside.not_replaced


def test_conversion_does_not_move_the_random_streams():
    model = nn.Sequential(nn.Linear(4, 4), PastedDropPath(0.2))
    torch.manual_seed(5)
    assert dp.convert_model(model, return_report=True)[1].replaced == ["1"]
    after = torch.rand(3)
    torch.manual_seed(5)
    assert torch.equal(after, torch.rand(3))
