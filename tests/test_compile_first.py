"""Skip mode for models compiled before any eager step, as training scripts
compile (timm's ``--torchcompile``, transformers' ``Trainer(torch_compile=True)``):
no ``verify_fused``, Inductor. The first compiled step runs the stock forward
and verifies each block on its real inputs from inside the graph; the second
compiles skip mode in; then the graphs stop changing. Each model trains equal
to compiled stock for the same seed (Inductor's ``fallback_random``: eager
random numbers), and its branches compute fewer rows -- counted by an opaque
op inside the branch, which runs with the real tensors inside the compiled
graph."""

from __future__ import annotations

import copy
from typing import List

import pytest
import torch
import torch._dynamo.testing
from torch import nn

import droppath_ext as dp
from conftest import import_or_skip

timm = import_or_skip("timm")

_ROWS: List[int] = []


@torch.library.custom_op("droppath_tests::count_rows", mutates_args=())
def count_rows(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Records how many samples (along ``dim``) ``x`` has when the compiled graph runs."""
    _ROWS.append(x.shape[dim])
    return x.clone()


@count_rows.register_fake
def _(x, dim):
    return torch.empty_like(x)


count_rows.register_autograd(lambda ctx, grad: (grad, None), setup_context=lambda ctx, inputs, output: None)


class RowCounter(nn.Module):
    """Put into a branch (as the activation, say): counts the samples computed there."""

    def __init__(self, inner: nn.Module = None, dim: int = 0):
        super().__init__()
        self.inner = inner if inner is not None else nn.Identity()
        self.dim = dim

    def forward(self, x):
        return count_rows(self.inner(x), self.dim)


class MHABlock(nn.Module):
    def __init__(self, d=16, batch_first=True):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, 2, batch_first=batch_first)
        self.count = RowCounter(dim=0 if batch_first else 1)
        # (sequence-first activations keep their samples along dim 1)
        self.drop_path = timm.layers.DropPath(0.5) if batch_first else dp.DropPath(0.5, batch_dim=1)

    def forward(self, x):
        y = self.norm(x)
        return x + self.drop_path(self.count(self.attn(y, y, y, need_weights=False)[0]))


class SDPABlock(nn.Module):
    def __init__(self, d=16, heads=2, shared_mask=False):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.heads = heads
        self.count = RowCounter()
        self.drop_path = timm.layers.DropPath(0.5)
        self.register_buffer("mask", torch.ones(5, 5).tril().bool() if shared_mask else None, persistent=False)

    def forward(self, x):
        B, N, C = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=self.mask)
        y = self.proj(y.transpose(1, 2).reshape(B, N, C))
        return x + self.drop_path(self.count(y))


def _train_compiled_first(make, inputs, steps=5, fullgraph=False, unfused_reference=False):
    """Trains compiled stock and compiled converted side by side, asserting equal losses and
    gradients; returns (the rows counted per step in the converted model, in stock, its graph
    count after each step). ``unfused_reference``: the reference is the model converted without
    fusion (transformers' own DropPath draws its masks another way than timm's and this package's)."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    stock = make().train()
    converted = dp.convert_model(copy.deepcopy(stock), fuse_residual=True).train()
    if unfused_reference:
        stock = dp.convert_model(stock)
    counter = torch._dynamo.testing.CompileCounterWithBackend("inductor")
    runs = {"stock": torch.compile(stock, fullgraph=fullgraph),
            "converted": torch.compile(converted, backend=counter, fullgraph=fullgraph)}
    models = {"stock": stock, "converted": converted}
    results = {name: [] for name in runs}
    rows, graphs = [], []
    with torch._inductor.config.patch(fallback_random=True):
        for step in range(steps):
            args = inputs(step)
            for name, run in runs.items():
                del _ROWS[:]
                torch.manual_seed(100 + step)
                loss = run(*args).square().mean()
                loss.backward()
                grads = {n: p.grad.clone() for n, p in models[name].named_parameters() if p.grad is not None}
                models[name].zero_grad(set_to_none=True)
                results[name].append((loss.detach(), grads))
                if name == "converted":
                    rows.append(sum(_ROWS))
                    graphs.append(counter.frame_count)
                else:
                    stock_rows = sum(_ROWS)
    for (want, want_grads), (got, got_grads) in zip(results["stock"], results["converted"]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        assert got_grads.keys() == want_grads.keys()
        for n in want_grads:
            # (float32, two differently fused graphs: rounding differs)
            torch.testing.assert_close(got_grads[n], want_grads[n], rtol=1e-3, atol=1e-4, msg=lambda m: f"{n}: {m}")
    return rows, stock_rows, graphs


def _assert_skips_after_warm_up(rows, stock_rows, graphs):
    assert graphs[-1] == graphs[1] <= 2, f"graphs after each step: {graphs}"  # (recompiled once, then stable)
    # (the first step's count includes its verification's passes, on private copies)
    assert sum(rows[1:]) < stock_rows * len(rows[1:]), f"rows computed per step {rows} (stock {stock_rows})"


# (the default run compiles the SDPA pair with Inductor; the other forms, and an
# MHA and an SDPA block with fullgraph=True below, with --full)
@pytest.mark.parametrize("make, shape", [
    pytest.param(lambda: nn.Sequential(MHABlock(), MHABlock()), (8, 5, 16), id="mha", marks=pytest.mark.slow),
    pytest.param(lambda: nn.Sequential(MHABlock(batch_first=False), MHABlock(batch_first=False)), (5, 8, 16),
                 id="mha_sequence_first", marks=pytest.mark.slow),
    pytest.param(lambda: nn.Sequential(SDPABlock(), SDPABlock()), (8, 5, 16), id="sdpa"),
    pytest.param(lambda: nn.Sequential(SDPABlock(shared_mask=True), SDPABlock(shared_mask=True)), (8, 5, 16),
                 id="sdpa_shared_mask", marks=pytest.mark.slow),
])
def test_research_blocks_compiled_first_skip_and_train_as_compiled_stock(make, shape):
    rows, stock_rows, graphs = _train_compiled_first(make, lambda step: (torch.randn(shape),))
    _assert_skips_after_warm_up(rows, stock_rows, graphs)


# (full run: the default run compiles the SDPA pair above with Inductor, and timm's
# ViT first with fullgraph=True in test_compiled_skip)
@pytest.mark.slow
def test_fullgraph_compiles_verification_and_skip_mode():
    rows, stock_rows, graphs = _train_compiled_first(lambda: nn.Sequential(MHABlock(), SDPABlock()),
                                                     lambda step: (torch.randn(8, 5, 16),), fullgraph=True)
    _assert_skips_after_warm_up(rows, stock_rows, graphs)


def _timm_with_counters(name, **kwargs):
    model = timm.create_model(name, pretrained=False, num_classes=5, drop_path_rate=0.4, **kwargs)
    for block in model.modules():
        mlp = getattr(block, "mlp", None)
        if mlp is not None and hasattr(mlp, "act") and hasattr(block, "drop_path2"):
            mlp.act = RowCounter(mlp.act)
    return model


@pytest.mark.slow
@pytest.mark.parametrize("name, kwargs, size", [
    ("eva02_tiny_patch14_224", dict(img_size=32, patch_size=8, depth=2, embed_dim=32, num_heads=2), 32),
    ("swin_tiny_patch4_window7_224", dict(img_size=32, window_size=2, embed_dim=16, depths=(1, 2),
                                          num_heads=(1, 2)), 32),
    ("vit_tiny_patch16_224", dict(img_size=32, patch_size=8, depth=2, embed_dim=32, num_heads=2), 32),
])
def test_timm_models_compiled_first_skip_and_train_as_compiled_stock(name, kwargs, size):
    rows, stock_rows, graphs = _train_compiled_first(lambda: _timm_with_counters(name, **kwargs),
                                                     lambda step: (torch.randn(8, 3, size, size),))
    _assert_skips_after_warm_up(rows, stock_rows, graphs)


@pytest.mark.slow
def test_a_transformers_family_compiled_first_skips_and_trains_as_compiled_unfused():
    transformers = import_or_skip("transformers")

    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            config = transformers.Dinov2Config(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                               num_attention_heads=2, intermediate_size=64, drop_path_rate=0.4)
            self.model = transformers.Dinov2Model(config)
            for layer in self.model.encoder.layer:
                layer.mlp.activation_fn = RowCounter(layer.mlp.activation_fn)

        def forward(self, x):
            return self.model(pixel_values=x).last_hidden_state

    rows, stock_rows, graphs = _train_compiled_first(Wrapped, lambda step: (torch.randn(8, 3, 32, 32),),
                                                     unfused_reference=True)
    _assert_skips_after_warm_up(rows, stock_rows, graphs)
