"""A converted model never trains differently from stock: the patterns research
code and third-party libraries use, each trained stock and converted
(``fuse_residual=True``) side by side for the same seeds, several optimiser
steps, float64 then float32, with equal losses and gradients demanded. A block
may be left unfused (its verification names why); it is never changed.

Also: a replaced module is still its library's module (class, name, rate
attribute, own training flag), and verification touches nothing and proves
nothing it cannot prove."""

from __future__ import annotations

import copy
import dataclasses
import random
from typing import Callable, List, Optional

import pytest
import torch
from torch import nn

import droppath_ext as dp
from droppath_ext import _fused_generic
from conftest import import_or_skip

timm = import_or_skip("timm")
DropPath = timm.layers.DropPath  # (timm's draw is this package's, so stock and converted draw the same masks)


def _fused_state(model: nn.Module) -> dict:
    return {name: m.__dict__["_droppath_state"].get("verdict") for name, m in model.named_modules()
            if isinstance(m, _fused_generic.GenericFusedBlock)}


def train_side_by_side(make: Callable[[], nn.Module], inputs: Callable[[int, torch.dtype], tuple], steps: int = 4,
                       loss: Optional[Callable] = None, dtypes=(torch.float64, torch.float32),
                       prepare: Optional[Callable[[nn.Module], None]] = None) -> List[nn.Module]:
    """Trains ``make()`` stock and converted for the same seeds, asserting equal
    losses and gradients each step; returns the converted models (one per dtype)."""
    loss = loss or (lambda model, out: out.square().mean())
    converted_models = []
    for dtype in dtypes:
        torch.manual_seed(0)
        stock = make().to(dtype)
        converted = dp.convert_model(copy.deepcopy(stock), fuse_residual=True)
        for model in (stock, converted):
            model.train()
            if prepare is not None:
                prepare(model)
        optimisers = [torch.optim.SGD(m.parameters(), lr=0.5) for m in (stock, converted)]
        rtol, atol = (1e-9, 1e-11) if dtype == torch.float64 else (2e-4, 2e-5)
        for i in range(steps):
            torch.manual_seed(100 + i)
            args = inputs(i, dtype)
            results = []
            for model, optimiser in zip((stock, converted), optimisers):
                torch.manual_seed(1000 + i)
                random.seed(1000 + i)
                mine = tuple(a.clone() if isinstance(a, torch.Tensor) else copy.deepcopy(a) for a in args)
                value = loss(model, model(*mine))
                value.backward()
                grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
                results.append((value.detach(), grads))
                optimiser.step()
                optimiser.zero_grad()
            (want, want_grads), (got, got_grads) = results
            torch.testing.assert_close(got, want, rtol=rtol, atol=atol, msg=f"loss, step {i}, {dtype}")
            assert got_grads.keys() == want_grads.keys()
            for name in want_grads:
                torch.testing.assert_close(got_grads[name], want_grads[name], rtol=rtol, atol=atol,
                                           msg=f"{name}, step {i}, {dtype}")
        converted_models.append(converted)
    return converted_models


def _tokens(batch=8, n=5, d=16):
    return lambda i, dtype: (torch.randn(batch, n, d, dtype=dtype),)


# ---- each stochastic-depth module's own training flag ----------------------------------------


def _vit():
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, drop_path_rate=0.5, img_size=32,
                             patch_size=8, depth=3, embed_dim=32, num_heads=2, num_classes=5)


class PreNorm(nn.Module):
    def __init__(self, d=16, rate=0.5):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, 2 * d)
        self.fc2 = nn.Linear(2 * d, d)
        self.drop_path = DropPath(rate)

    def forward(self, x):
        return x + self.drop_path(self.fc2(torch.relu(self.fc1(self.norm(x)))))


def _drop_paths(model):
    return [m for m in model.modules() if isinstance(m, DropPath)]


def _mean_teacher(model):
    """DAFormer/MIC/HRDA-style: the DropPath modules in eval inside a training model."""
    for m in _drop_paths(model):
        m.eval()


def _mc_drop_path(model):
    """MC drop path: the model in eval, its DropPath modules in training."""
    model.eval()
    for m in _drop_paths(model):
        m.train()


@pytest.mark.parametrize("flags, drops", [(_mean_teacher, False), (_mc_drop_path, True)], ids=["teacher", "mc"])
@pytest.mark.parametrize("make, inputs", [(_vit, lambda i, dtype: (torch.randn(8, 3, 32, 32, dtype=dtype),)),
                                          (lambda: nn.Sequential(PreNorm(), PreNorm()), _tokens())],
                         ids=["timm_vit", "generic"])
def test_each_drop_path_module_s_own_training_flag_decides(make, inputs, flags, drops):
    converted = train_side_by_side(make, inputs, prepare=flags)[0]
    x = inputs(0, torch.float64)[0]
    outs = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        outs.append(converted(x))
    assert torch.equal(outs[0], outs[1]) != drops  # (deterministic exactly where nothing drops)


# ---- a converted model is still the user's model ---------------------------------------------


def test_replaced_modules_keep_their_library_class_name_and_repr():
    torchvision = import_or_skip("torchvision")
    vit = _vit()
    stock_repr = repr(vit)
    converted, report = dp.convert_model(vit, fuse_residual=True, return_report=True)
    assert report.replaced and report.fused
    assert repr(converted) == stock_repr
    drops = _drop_paths(converted)
    assert len(drops) == len(report.replaced)
    assert all(isinstance(m, dp.DropPath) and type(m).__name__ == "DropPath" for m in drops)
    # Fused blocks keep their class's name: a schedule matching "DropPath" in names hits DropPaths only.
    assert {type(b).__name__ for b in converted.blocks} == {"Block"}
    assert isinstance(converted.blocks[0], timm.models.vision_transformer.Block)
    assert [n for n, m in converted.named_modules() if "DropPath" in type(m).__name__] == sorted(report.replaced)

    cnn = torchvision.models.convnext_tiny(stochastic_depth_prob=0.2)
    dp.convert_model(cnn, fuse_residual=True)
    depths = [m for m in cnn.modules() if isinstance(m, torchvision.ops.StochasticDepth)]
    assert depths and all(isinstance(m, dp.StochasticDepth) and type(m).__name__ == "StochasticDepth"
                          for m in depths)


class RateDropPath(nn.Module):
    """A library's stochastic depth with its rate in ``drop_rate``."""

    def __init__(self, drop_rate=0.0):
        super().__init__()
        self.drop_rate = drop_rate

    def forward(self, x):
        return timm.layers.drop_path(x, self.drop_rate, self.training)

    def extra_repr(self):
        return f"rate={self.drop_rate}"


@pytest.mark.parametrize("rate_attribute, make", [
    ("drop_prob", lambda: DropPath(0.5)),
    ("drop_rate", lambda: RateDropPath(0.5)),
    ("p", lambda: import_or_skip("torchvision").ops.StochasticDepth(0.5, "row")),
])
def test_writes_to_the_library_rate_attribute_act(rate_attribute, make):
    module = make()
    cls = type(module)
    model = nn.Sequential(module)
    dp.convert_model(model)
    assert isinstance(model[0], cls) and type(model[0]).__name__ == cls.__name__ and model[0] is module
    x = torch.randn(64, 4)
    model.train()
    setattr(module, rate_attribute, 0.0)
    assert torch.equal(model(x), x)
    setattr(module, rate_attribute, 1.0)
    assert torch.equal(model(x), torch.zeros_like(x))
    module.eval()
    assert torch.equal(model(x), x)
    if rate_attribute == "drop_rate":  # (this package's name for it too)
        module.drop_prob = 0.25
        assert module.drop_rate == 0.25 and "rate=0.25" in repr(module)


class ListDropPath(nn.Module):
    """A library DropPath whose forward also takes lists of tensors."""

    def __init__(self, drop_prob=0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x):
        if isinstance(x, (list, tuple)):
            return [self.forward(t) for t in x]
        return timm.layers.drop_path(x, self.drop_prob, self.training)


def test_a_drop_path_that_takes_lists_keeps_taking_them():
    stock = nn.Sequential(ListDropPath(0.5))
    converted, report = dp.convert_model(copy.deepcopy(stock), return_report=True)
    assert report.replaced == ["0"]
    xs = [torch.randn(8, 3), torch.randn(8, 5)]
    for mode in ("eval", "train"):
        for model in (stock, converted):
            getattr(model, mode)()
        torch.manual_seed(0)
        want = stock(xs)
        torch.manual_seed(0)
        got = converted(xs)
        assert all(torch.equal(a, b) for a, b in zip(got, want))


def test_a_drop_path_whose_forward_takes_more_is_not_replaced():
    class TwoInputDropPath(nn.Module):
        def __init__(self):
            super().__init__()
            self.drop_prob = 0.5

        def forward(self, x, scale=1.0):
            return timm.layers.drop_path(x * scale, self.drop_prob, self.training)

    model = nn.Sequential(TwoInputDropPath())
    _, report = dp.convert_model(model, return_report=True)
    assert report.not_replaced == ["0"] and "takes more than one input" in report.reasons["0"]


# ---- in-place changes of the block's input ----------------------------------------------------


class InplaceActOnInput(nn.Module):
    def __init__(self, d=16):
        super().__init__()
        self.act = nn.ReLU(inplace=True)
        self.fc1 = nn.Linear(d, d)
        self.fc2 = nn.Linear(d, d)
        self.drop_path = DropPath(0.5)

    def forward(self, x):
        return x + self.drop_path(self.fc2(torch.relu(self.fc1(self.act(x)))))


class AddsIntoItsInput(nn.Module):
    def __init__(self, d=16):
        super().__init__()
        self.fc = nn.Linear(d, d)
        self.drop_path = DropPath(0.5)

    def forward(self, x):
        x += self.drop_path(self.fc(2 * x))  # (a branch that does not save x itself for backward, or stock fails)
        return x


class KeepsItsInput(nn.Module):
    """Research code that keeps the block's input for a later read (a feature list)."""

    def __init__(self, block):
        super().__init__()
        self.stem = nn.Linear(16, 16)
        self.block = block

    def forward(self, x):
        h = self.stem(x)
        before = h
        out = self.block(h)
        return out + before


@pytest.mark.parametrize("block", [InplaceActOnInput, AddsIntoItsInput])
def test_in_place_changes_of_the_block_input_train_as_stock(block):
    train_side_by_side(lambda: KeepsItsInput(block()), _tokens())


# ---- verification cannot be fooled ------------------------------------------------------------


class BatchStatNorm(nn.Module):
    """Normalises with batch statistics and keeps a running variance (not a BatchNorm class)."""

    def __init__(self, d):
        super().__init__()
        self.register_buffer("running_var", torch.ones(d))

    def forward(self, h):
        if self.training:
            var = h.var(dim=(0, 1), unbiased=False)
            self.running_var.mul_(0.9).add_(0.1 * var.detach())
        else:
            var = self.running_var
        return h / (var + 1e-5).sqrt()


class TinyLayerScale(nn.Module):
    def __init__(self, d=16):
        super().__init__()
        self.fc = nn.Linear(d, d)
        self.norm = BatchStatNorm(d)
        self.gamma = nn.Parameter(torch.full((d,), 1e-5))
        self.drop_path = DropPath(0.5)

    def forward(self, x):
        return x + self.drop_path(self.gamma * self.norm(self.fc(x)))


class Affine(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(d))
        self.beta = nn.Parameter(torch.zeros(d))

    def forward(self, x):
        return self.alpha * x + self.beta


class AffineAfterDropPath(nn.Module):
    """ResMLP's Affine, zero-initialised bias, applied after drop path."""

    def __init__(self, d=16):
        super().__init__()
        self.fc = nn.Linear(d, d)
        self.affine = Affine(d)
        self.drop_path = DropPath(0.5)

    def forward(self, x):
        return x + self.affine(self.drop_path(self.fc(x)))


class BiasAfterDropPath(nn.Module):
    def __init__(self, d=16):
        super().__init__()
        self.fc = nn.Linear(d, d)
        self.bias = nn.Parameter(torch.zeros(d))
        self.drop_path = DropPath(0.5)

    def forward(self, x):
        t = self.drop_path(self.fc(x))
        t = t + self.bias
        return x + t


class ReadsTheBatchSize(nn.Module):
    def __init__(self, d=16):
        super().__init__()
        self.fc = nn.Linear(d, d)
        self.drop_path = DropPath(0.5)

    def forward(self, x):
        return x + self.drop_path(self.branch(x))

    def branch(self, x):
        h = self.fc(x)
        return h * 2 if h.shape[0] >= 8 else h


@pytest.mark.parametrize("block", [TinyLayerScale, AffineAfterDropPath, BiasAfterDropPath])
def test_transforms_that_do_not_commute_with_dropping_are_caught_at_any_init(block):
    converted = train_side_by_side(lambda: nn.Sequential(block()), _tokens(), steps=5)[0]
    assert _fused_state(converted)["0"]  # (a reason: left unfused)


def test_a_branch_reading_the_batch_size_trains_as_stock_on_every_batch_size():
    sizes = [4, 4, 16, 16, 8]
    train_side_by_side(lambda: nn.Sequential(ReadsTheBatchSize()),
                       lambda i, dtype: (torch.randn(sizes[i], 5, 16, dtype=dtype),), steps=len(sizes))


class PerSampleScales(nn.Module):
    def __init__(self, d=16):
        super().__init__()
        self.fc = nn.Linear(d, d)
        self.drop_path = DropPath(0.5)

    def forward(self, x, scales: list):
        return x + self.drop_path(self.fc(x) * torch.tensor(scales, dtype=x.dtype)[:, None, None])


def test_a_per_sample_python_list_trains_as_stock():
    lists = [[1.0] * 6, [float(k) for k in range(6)], [1.0 - k for k in range(6)]]
    converted = train_side_by_side(PerSampleScales,
                                   lambda i, dtype: (torch.randn(6, 5, 16, dtype=dtype), lists[i]), steps=3)[0]
    assert "no residual could run in skip mode" in dp.skip_status(converted)[""]


class BatchMean(nn.Module):
    def __init__(self, d=16):
        super().__init__()
        self.fc = nn.Linear(d, d)
        self.drop_path = DropPath(0.5)

    def forward(self, x):
        h = self.fc(x)
        return x + self.drop_path(h - h.mean(0, keepdim=True))


class PerSample(PreNorm):
    pass


@pytest.mark.parametrize("batch", [torch.zeros(6, 5, 16), torch.ones(6, 5, 16),
                                   torch.randn(1, 5, 16).expand(6, 5, 16).clone(),
                                   torch.randn(6, 5, 16).index_fill_(0, torch.tensor([2]), float("nan"))],
                         ids=["zeros", "constant", "repeated", "nan"])
def test_verify_fused_on_a_degenerate_batch_proves_only_what_it_can(batch):
    mixing = dp.convert_model(BatchMean(), fuse_residual=True)
    reason = dp.verify_fused(mixing, batch)[""]
    assert reason is not None and "differs" in reason  # (fresh random inputs show the batch mean)
    per_sample = dp.convert_model(PerSample(), fuse_residual=True)
    before = copy.deepcopy(per_sample.state_dict())
    assert dp.verify_fused(per_sample, batch) == {"": None}
    assert all(torch.equal(v, before[k]) for k, v in per_sample.state_dict().items())


@dataclasses.dataclass
class Out:
    y: torch.Tensor


class ReturnsADataclass(BatchMean):
    def forward(self, x):
        h = self.fc(x)
        y = x + self.drop_path(h - h.mean(0, keepdim=True))
        return Out(y)


def test_outputs_of_any_type_are_compared():
    train_side_by_side(ReturnsADataclass, _tokens(), loss=lambda model, out: out.y.square().mean())


# ---- side outputs -----------------------------------------------------------------------------


class MoEWithAuxLoss(nn.Module):
    def __init__(self, d=16, experts=4):
        super().__init__()
        self.router = nn.Linear(d, experts)
        self.experts = nn.Linear(d, d * experts)
        self.drop_path = DropPath(0.5)
        self.aux_loss = None

    def forward(self, x):
        return x + self.drop_path(self.moe(x))

    def moe(self, x):
        probs = self.router(x).softmax(-1)
        self.aux_loss = (probs.mean(dim=(0, 1)) ** 2).sum() * probs.shape[-1]
        out = self.experts(x).unflatten(-1, (probs.shape[-1], -1))
        return (out * probs.unsqueeze(-1)).sum(-2)


class FeatureEMA(nn.Module):
    def __init__(self, d=16):
        super().__init__()
        self.fc = nn.Linear(d, d)
        self.register_buffer("ema", torch.zeros(d))
        self.drop_path = DropPath(0.5)

    def forward(self, x):
        h = self.fc(x)
        self.ema.mul_(0.9).add_(0.1 * h.detach().mean(dim=(0, 1)))
        return x + self.drop_path(h)


def test_side_outputs_computed_from_the_batch_train_as_stock():
    def with_aux(model, out):
        return out.square().mean() + model.aux_loss

    converted = train_side_by_side(MoEWithAuxLoss, _tokens(), loss=with_aux)
    assert all("aux_loss" in _fused_state(m)[""] for m in converted)
    stock, fused = FeatureEMA(), dp.convert_model(FeatureEMA(), fuse_residual=True)
    fused.load_state_dict(stock.state_dict())
    for seed in range(3):
        x = torch.randn(8, 5, 16)
        for model in (stock, fused):
            torch.manual_seed(seed)
            model.train()(x)
        torch.testing.assert_close(fused.ema, stock.ema)


# ---- batch_dim ------------------------------------------------------------------------------------


class SequenceFirst(nn.Module):
    def __init__(self, d=16):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, 2)  # (batch_first=False: [seq, batch, dim])
        self.drop_path = dp.DropPath(0.5, batch_dim=1)

    def forward(self, x):
        y = self.norm(x)
        return x + self.drop_path(self.attn(y, y, y, need_weights=False)[0])


class SequenceFirstMLP(nn.Module):
    def __init__(self, d=16):
        super().__init__()
        self.fc = nn.Linear(d, d)
        self.drop_path = dp.DropPath(0.5, batch_dim=1)

    def forward(self, x):
        return x + self.drop_path(self.fc(x))


@pytest.mark.parametrize("block", [SequenceFirst, SequenceFirstMLP])
def test_a_drop_path_over_dim_1_drops_samples_in_a_fused_block(block):
    converted = train_side_by_side(block, lambda i, dtype: (torch.randn(5, 8, 16, dtype=dtype),))
    assert all(_fused_state(m)[""] == "" for m in converted)


# ---- verification leaves no trace ---------------------------------------------------------------


def _closure_block():
    scale = 1.0

    class ClosureBlock(nn.Module):
        def __init__(self, d=16):
            super().__init__()
            self.fc = nn.Linear(d, d)
            self.drop_path = DropPath(0.5)

        def forward(self, x):
            return x + self.drop_path(self.fc(x) * scale)

    def rebind(value):
        nonlocal scale
        scale = value

    return ClosureBlock, rebind


def test_a_closure_rebound_after_conversion_is_read_as_stock_reads_it():
    block, rebind = _closure_block()
    stock = block()
    fused = dp.convert_model(copy.deepcopy(stock), fuse_residual=True).train()
    x = torch.randn(8, 5, 16)
    for value in (1.0, 74.0):
        rebind(value)
        outs = []
        for model in (stock.train(), fused):
            torch.manual_seed(3)
            outs.append(model(x))
        torch.testing.assert_close(outs[1], outs[0])


class CountsItsCalls(nn.Module):
    def __init__(self, d=16):
        super().__init__()
        self.fc = nn.Linear(d, d)
        self.drop_path = DropPath(0.5)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        temperature = 1.0 / (1 + self.calls)
        return x + self.drop_path(self.fc(x) * temperature)


def test_a_block_that_counts_its_calls_is_verified_and_not_advanced():
    converted = train_side_by_side(CountsItsCalls, _tokens())
    assert all(m.calls == 4 and _fused_state(m)[""] == "" for m in converted)
    model = dp.convert_model(CountsItsCalls(), fuse_residual=True)
    assert dp.verify_fused(model, torch.randn(4, 5, 16)) == {"": None} and model.calls == 0


# ---- crashes where stock runs ------------------------------------------------------------------


class SharedTable(nn.Module):
    """Several blocks read one buffer (mmpretrain ViTEVA02's shared RoPE tables)."""

    def __init__(self, table, d=16):
        super().__init__()
        self.fc = nn.Linear(d, d)
        self.register_buffer("table", table, persistent=False)
        self.drop_path = DropPath(0.5)

    def forward(self, x):
        return x + self.drop_path(self.fc(x * self.table))


def test_a_buffer_shared_by_several_blocks_trains():
    def make():
        table = torch.randn(5, 16)
        return nn.Sequential(*(SharedTable(table) for _ in range(3)))

    train_side_by_side(make, _tokens())


class Squeezes(nn.Module):
    def __init__(self, d=16):
        super().__init__()
        self.fc = nn.Linear(d, d)
        self.drop_path = DropPath(0.8)

    def forward(self, x):  # x: [batch, 1, d]
        return x + self.drop_path(self.fc(x).squeeze().unsqueeze(1))


def test_a_branch_that_squeezes_never_meets_a_batch_of_one():
    converted = train_side_by_side(Squeezes, lambda i, dtype: (torch.randn(4, 1, 16, dtype=dtype),), steps=12)
    assert all(_fused_state(m)[""] == "" for m in converted)


class AttentionWithMask(nn.Module):
    def __init__(self, d=16):
        super().__init__()
        self.attn = nn.MultiheadAttention(d, 2, batch_first=True)
        self.drop_path = DropPath(0.5)

    def forward(self, x, mask=None):
        return x + self.drop_path(self.attn(x, x, x, attn_mask=mask, need_weights=False)[0])


def test_a_per_sample_attention_mask_after_verification_trains_as_stock():
    def inputs(i, dtype):
        x = torch.randn(6, 5, 16, dtype=dtype)
        if i < 2:
            return (x,)
        return x, torch.randn(6 * 2, 5, 5, dtype=dtype)  # (batch * heads, query, key)

    train_side_by_side(AttentionWithMask, inputs)


# ---- what used to be misreported -------------------------------------------------------------


class RoutedUnderNoGrad(nn.Module):
    def __init__(self, d=16):
        super().__init__()
        self.router = nn.Linear(d, 3)
        self.experts = nn.Parameter(torch.randn(3, d, d) * 0.1)
        self.drop_path = DropPath(0.5)

    def forward(self, x):
        with torch.no_grad():
            index = self.router(x).argmax(-1)
        return x + self.drop_path(torch.einsum("bnd,bnde->bne", x, self.experts[index]))


class Base(nn.Module):
    def branch(self, x):
        return self.fc(x)


class CallsSuper(Base):
    def __init__(self, d=16):
        super().__init__()
        self.fc = nn.Linear(d, d)
        self.drop_path = DropPath(0.5)

    def forward(self, x):
        return x + self.drop_path(super().branch(x))


@pytest.mark.parametrize("block", [RoutedUnderNoGrad, CallsSuper, CountsItsCalls])
def test_blocks_once_misreported_are_verified(block):
    converted = train_side_by_side(block, _tokens())
    assert all(_fused_state(m)[""] == "" for m in converted)


# ---- what an adversarial pass found -----------------------------------------------------------


def _grad_scale(x, scale):
    return (x - x * scale).detach() + x * scale


class LSQ(nn.Module):
    """LSQ activation quantisation: the step size's gradient scales with 1/sqrt(numel), its forward does not."""

    def __init__(self, bits=8):
        super().__init__()
        self.s = nn.Parameter(torch.tensor(0.1))
        self.qn, self.qp = -2 ** (bits - 1), 2 ** (bits - 1) - 1

    def forward(self, x):
        s = _grad_scale(self.s, 1.0 / ((x.numel() * self.qp) ** 0.5))
        q = (x / s).clamp(self.qn, self.qp)
        return ((q.round() - q).detach() + q) * s


class QuantisedMLP(nn.Module):
    def __init__(self, d=16):
        super().__init__()
        self.fc1 = nn.Linear(d, 2 * d)
        self.act_q = LSQ()
        self.fc2 = nn.Linear(2 * d, d)
        self.drop_path = DropPath(0.5)

    def forward(self, x):
        return x + self.drop_path(self.fc2(self.act_q(torch.relu(self.fc1(x)))))


class KeepsAttentionGradients(nn.Module):
    """Saves the attention map's gradient with a tensor hook (attention-rollout code)."""

    def __init__(self, d=16):
        super().__init__()
        self.qk = nn.Linear(d, 2 * d)
        self.drop_path = DropPath(0.5)
        self.attn_grad = None

    def forward(self, x):
        return x + self.drop_path(self.attend(x))

    def attend(self, x):
        q, k = self.qk(x).chunk(2, -1)
        attn = (q @ k.transpose(-1, -2)).softmax(-1)
        if attn.requires_grad:
            attn.register_hook(lambda grad: setattr(self, "attn_grad", grad))
        return attn @ x


def test_a_backward_that_depends_on_the_batch_trains_as_stock():
    converted = train_side_by_side(QuantisedMLP, _tokens())
    assert all("gradient" in _fused_state(m)[""] for m in converted)
    train_side_by_side(KeepsAttentionGradients, _tokens(),
                       loss=lambda model, out: out.square().mean() + 0 * model.attn_grad.sum()
                       if model.attn_grad is not None else out.square().mean())


class CachedTable(nn.Module):
    """A position table cached at class level, keyed by length and device (not dtype)."""

    cache: dict = {}

    def __init__(self, d=16):
        super().__init__()
        self.fc = nn.Linear(d, d)
        self.drop_path = DropPath(0.5)

    def forward(self, x):
        key = (x.shape[1], x.device)
        if key not in CachedTable.cache:
            CachedTable.cache[key] = torch.arange(x.shape[1], dtype=x.dtype, device=x.device)[:, None] * 0.01
        return x + self.drop_path(self.fc(x + CachedTable.cache[key]))


def test_a_class_level_cache_is_left_as_verification_found_it():
    CachedTable.cache.clear()
    model = dp.convert_model(CachedTable(), fuse_residual=True).train()
    model(torch.randn(8, 5, 16)).square().mean().backward()  # (verifies in float64 on private copies first)
    assert [table.dtype for table in CachedTable.cache.values()] == [torch.float32]
    assert _fused_state(model)[""] == ""
    for dtype in (torch.float64, torch.float32):  # (the cache is keyed without the dtype: one at a time)
        CachedTable.cache.clear()
        train_side_by_side(CachedTable, _tokens(), dtypes=(dtype,))


class Meter:
    def __init__(self):
        import threading

        self.lock = threading.Lock()
        self.values = []

    def update(self, value):
        with self.lock:
            self.values.append(value)


def test_an_object_that_cannot_be_deep_copied_sees_only_the_real_calls():
    class Logged(nn.Module):
        def __init__(self, meter, d=16):
            super().__init__()
            self.fc = nn.Linear(d, d)
            self.drop_path = DropPath(0.5)
            self.meter = meter

        def forward(self, x):
            self.meter.update(x.shape[0])
            return x + self.drop_path(self.fc(x))

    meter = Meter()
    model = dp.convert_model(Logged(meter), fuse_residual=True).train()
    for _ in range(3):
        model(torch.randn(8, 5, 16)).sum().backward()
    assert meter.values == [8, 8, 8] and _fused_state(model)[""] == ""


class LayerDrop(nn.Module):
    """fairseq-style LayerDrop with Python's random module."""

    def __init__(self, d=16):
        super().__init__()
        self.fc = nn.Linear(d, d)
        self.drop_path = DropPath(0.5)

    def forward(self, x):
        if random.random() < 0.3:
            return x
        return x + self.drop_path(self.fc(x))


def test_python_and_numpy_random_streams_are_left_alone():
    import numpy

    model = dp.convert_model(nn.Sequential(LayerDrop(), LayerDrop()), fuse_residual=True)
    random.seed(5)
    numpy.random.seed(5)
    want = (random.random(), numpy.random.rand())
    random.seed(5)
    numpy.random.seed(5)
    dp.verify_fused(model, torch.randn(8, 5, 16))
    assert (random.random(), numpy.random.rand()) == want
    train_side_by_side(lambda: nn.Sequential(LayerDrop(), LayerDrop()), _tokens())


def test_a_tensor_drop_rate_draws_as_the_library_does():
    rates = torch.linspace(0, 0.5, 2)  # (passed to DropPath without .item(), as schedules often are)

    def make():
        blocks = [PreNorm() for _ in range(2)]
        for block, rate in zip(blocks, rates):
            block.drop_path = DropPath(rate)
        return nn.Sequential(*blocks)

    train_side_by_side(make, _tokens())


class DropoutInBranch(PreNorm):
    def __init__(self):
        super().__init__()
        self.drop = nn.Dropout(0.2)

    def forward(self, x):
        return x + self.drop_path(self.drop(self.fc2(torch.relu(self.fc1(self.norm(x))))))


class Nested(nn.Module):
    """A residual block inside another block's branch: the inner one draws masks for the samples it is given."""

    def __init__(self, d=16):
        super().__init__()
        self.inner = PreNorm(d)
        self.fc = nn.Linear(d, d)
        self.drop_path = DropPath(0.5)

    def forward(self, x):
        return x + self.drop_path(self.fc(self.inner(x)))


@pytest.mark.parametrize("make", [DropoutInBranch, Nested,
                                  lambda: timm.create_model("vit_tiny_patch16_224", pretrained=False,
                                                            drop_path_rate=0.5, proj_drop_rate=0.1, img_size=32,
                                                            patch_size=8, depth=2, embed_dim=32, num_heads=2,
                                                            num_classes=5)],
                         ids=["dropout", "nested", "timm_vit_proj_drop"])
def test_branches_that_draw_random_numbers_train_as_stock(make):
    shape = (8, 3, 32, 32) if not isinstance(make, type) else (8, 5, 16)
    train_side_by_side(make, lambda i, dtype: (torch.randn(*shape, dtype=dtype),))


def test_a_hook_removed_before_backward_under_checkpointing_trains_as_stock():
    from torch.utils.checkpoint import checkpoint

    class Checkpointed(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.Sequential(PreNorm(), PreNorm())

        def forward(self, x):
            return checkpoint(self.blocks, x, use_reentrant=False)

    for convert in (False, True):
        torch.manual_seed(0)
        model = Checkpointed()
        if convert:
            model = dp.convert_model(model, fuse_residual=True)
        model.train()
        for step in range(3):
            handle = model.blocks[0].fc1.register_forward_hook(lambda *a: None) if step == 1 else None
            out = model(torch.randn(8, 5, 16, requires_grad=True))
            if handle is not None:
                handle.remove()  # (logged one step, removed before backward)
            out.square().mean().backward()
