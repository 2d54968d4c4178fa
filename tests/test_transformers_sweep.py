"""Hugging Face transformers: every family with a DropPath that builds here
from a small config (tests/transformers_families.py; the ones that do not, and
why, are listed there), converted:

- every DropPath replaced, with its drop rate; eval outputs bitwise the stock
  model's, unfused and fused;
- training: outputs and every gradient equal to the stock model's for the
  same masks (float64; transformers computes ``x / keep`` where we compute
  ``x * (1 / keep)``, so "equal" is to rounding), unfused and fused, skip mode
  included;
- fused where a fused form exists (reported otherwise, with the reason).

The default run sweeps one family per fused form; the whole sweep is
``pytest tests/test_transformers_sweep.py --full``."""

import copy
from unittest import mock

import pytest
import torch

import droppath_ext as dp
from droppath_ext import functional, residual
from conftest import import_or_skip

transformers = import_or_skip("transformers")
# (a model module, not just the package: transformers imports lazily, and a
# broken companion install -- a torchvision for another torch -- fails there)
import_or_skip("transformers.models.dinov2.modeling_dinov2")
from transformers_families import FAMILIES, build, checkpointing_enable, drop_path_modules, loss_of, main_output  # noqa: E402

DEFAULT = {"dinov2", "dinov3_vit", "convnext", "convnextv2", "swin", "beit", "data2vec"}
# family -> the number of its layers convert_model fuses (one fused form each)
FUSED = {"beit": 1, "convnext": 2, "convnextv2": 2, "data2vec": 1, "dinov2": 2, "dinov2_with_registers": 2,
         "dinov3_vit": 2, "eomt": 2, "eomt_dinov3": 2, "radio": 2, "sapiens2": 2, "swin": 3, "tipsv2": 2,
         # generically fused (a rewrite of the layer's own forward, verified on its first training call)
         "bit": 1, "dinov3_convnext": 2, "florence2": 3, "focalnet": 1, "glpn": 2, "hiera": 1, "mgp_str": 2,
         "pixio": 2, "pvt": 2, "pvt_v2": 2, "qianfan_ocr": 1, "segformer": 2, "swinv2": 3,
         "timesformer": 1, "vitdet": 1, "vjepa2": 3, "x_clip": 2, "maskformer": 2}
# family -> what draws random numbers inside its branches: skip mode would draw them for the kept
# samples only (the same seed, other numbers), so verification leaves those layers on the stock forward
RANDOM_BRANCH = {"poolformer": "PoolFormerOutput applies the layer's drop-path rate as a DropPath inside the MLP"}
FAMILY_PARAMS = [f if f in DEFAULT else pytest.param(f, marks=pytest.mark.slow) for f in sorted(FAMILIES)]


def _named_drop_paths(model):
    return {n: m for n, m in model.named_modules() if type(m).__name__.endswith("DropPath")}


def _record_masks(model):
    """Wrap each of our DropPath modules to log, per call, which samples it kept."""
    log = {}
    for name, module in model.named_modules():
        if isinstance(module, dp.DropPath):
            log[name] = []

            def forward(x, module=module, calls=log[name]):
                if not module.training or module.drop_prob == 0:
                    return x
                # drop_path's own draw and scale, done apart to see the draw
                factors = functional._backend.sample_factors(x, module.drop_prob, True, 0, None, None)
                calls.append(factors != 0)
                return functional._backend.scale_rows(x, factors, 0, None)

            module.forward = forward
    return log


def _replay_masks(stock, log):
    """Make each stock transformers DropPath apply the logged masks, with its own arithmetic."""
    for name, module in _named_drop_paths(stock).items():
        masks = iter(log[name])
        keep = 1.0 - module.drop_prob

        def forward(x, masks=masks, keep=keep, module=module):
            if not module.training or module.drop_prob == 0.0:
                return x
            mask = next(masks).to(x.dtype).view((-1,) + (1,) * (x.dim() - 1))
            return x.div(keep) * mask

        module.forward = forward


def _train_step(model, inputs, seed):
    model.zero_grad(set_to_none=True)
    model.train()
    loss = loss_of(model, inputs, seed)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_same_training(got, want, what):
    torch.testing.assert_close(got[0], want[0], rtol=1e-9, atol=1e-12, msg=f"{what}: loss")
    assert got[1].keys() == want[1].keys(), f"{what}: parameters with gradients"
    for name in want[1]:
        torch.testing.assert_close(got[1][name], want[1][name], rtol=1e-7, atol=1e-10, msg=f"{what}: {name}")


@pytest.mark.parametrize("family", FAMILY_PARAMS)
def test_family_converts_exactly(family):
    stock, make_inputs = build(family, dtype=torch.float64)
    pristine = copy.deepcopy(stock)  # (training moves BatchNorm statistics: each form starts from here)
    inputs = make_inputs(6)
    stock_drops = _named_drop_paths(stock)
    assert stock_drops, "the small config built no DropPath"

    converted, report = dp.convert_model(copy.deepcopy(pristine), return_report=True)
    assert sorted(report.replaced) == sorted(stock_drops) and not report.not_replaced, report
    for name, module in converted.named_modules():
        if name in stock_drops:
            assert isinstance(module, dp.DropPath) and module.drop_prob == stock_drops[name].drop_prob
    stock.eval()
    converted.eval()
    with torch.no_grad():
        want = main_output(stock(**inputs))
        assert torch.equal(main_output(converted(**inputs)), want), "eval output"

    # Training with the same masks: ours draws them, the stock model replays them.
    log = _record_masks(converted)
    ours = _train_step(converted, inputs, seed=5)
    assert any(len(calls) for calls in log.values())
    _replay_masks(stock, log)
    _assert_same_training(ours, _train_step(stock, inputs, seed=5), "unfused vs stock")

    # Fused, in skip mode: the same draws (nothing else random in the branches).
    fused, fused_report = dp.convert_model(copy.deepcopy(pristine), fuse_residual=True, skip_dropped=True,
                                           return_report=True)
    converted_plain = dp.convert_model(copy.deepcopy(pristine))
    with torch.no_grad():
        fused.eval()
        assert torch.equal(main_output(fused(**inputs)), want), "fused eval output"
    with mock.patch.object(residual, "_skip", wraps=residual._skip) as skip:
        got = _train_step(fused, inputs, seed=5)
    # (after the first training step: a generically fused layer whose verification failed is reported unfused)
    assert len(fused_report.fused) == FUSED.get(family, 0), fused_report
    assert set(fused_report.unfused) == set(fused_report.reasons), fused_report
    assert skip.called == (family in FUSED)
    if family in RANDOM_BRANCH:
        assert any("draws random numbers" in reason for reason in fused_report.reasons.values()), fused_report
    _assert_same_training(got, _train_step(converted_plain, inputs, seed=5), "fused (skip) vs unfused")


def test_the_check_leaves_a_drop_path_that_is_not_equivalent_alone():
    """A transformers-style DropPath that scales differently is not replaced,
    and the report says why."""
    from droppath_ext import _discovery

    class OddDropPath(torch.nn.Module):
        def __init__(self, drop_prob=0.0):
            super().__init__()
            self.drop_prob = drop_prob

        def forward(self, x):
            return x if not self.training else x * 0.5

    OddDropPath.__module__ = "transformers.models.odd.modeling_odd"
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), OddDropPath(0.2))
    _, report = dp.convert_model(model, return_report=True)
    assert report.replaced == [] and report.not_replaced == ["1"]
    assert "does not drop whole samples" in report.reasons["1"]
    assert type(model[1]) is OddDropPath
    assert _discovery.check(model[1]).reason == report.reasons["1"]


def test_conversion_does_not_move_the_random_stream():
    stock, _ = build("dinov2")
    torch.manual_seed(11)
    dp.convert_model(stock, fuse_residual=True)
    after = torch.rand(3)
    torch.manual_seed(11)
    assert torch.equal(torch.rand(3), after)


@pytest.mark.parametrize("family", ["dinov2", "convnext", "swin"])
def test_trainer_style_training_and_save_pretrained_round_trip(family, tmp_path):
    """model.train(), a few optimizer steps, save_pretrained, then the stock
    class loads it: the same keys, the same weights, the same eval output."""
    stock, make_inputs = build(family)
    converted = dp.convert_model(copy.deepcopy(stock), fuse_residual=True)
    optimizer = torch.optim.AdamW(converted.parameters(), lr=1e-3)
    inputs = make_inputs(8)
    for step in range(3):
        optimizer.zero_grad()
        loss = loss_of(converted, inputs, step)
        loss.backward()
        optimizer.step()
        assert torch.isfinite(loss)
    assert converted.state_dict().keys() == stock.state_dict().keys()
    converted.save_pretrained(tmp_path)
    loaded = type(stock).from_pretrained(tmp_path)
    assert type(loaded) is type(stock)
    for key, value in converted.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    loaded.eval()
    converted.eval()
    with torch.no_grad():
        assert torch.equal(main_output(loaded(**inputs)), main_output(converted(**inputs)))


@pytest.mark.parametrize("use_reentrant", [False, True])
@pytest.mark.parametrize("family", ["dinov2", "swin"] + [pytest.param(f, marks=pytest.mark.slow)
                                                         for f in ("dinov3_vit", "beit")])
def test_gradient_checkpointing_recomputes_the_same_masks(family, use_reentrant):
    """model.gradient_checkpointing_enable() on a fused model in skip mode: the
    recomputation draws the same masks (checkpoint restores the generator's
    state), so the gradients are those of the step without checkpointing."""
    stock, make_inputs = build(family, dtype=torch.float64)
    fused = dp.convert_model(stock, fuse_residual=True, skip_dropped=True)
    inputs = make_inputs(6)
    _train_step(fused, inputs, seed=0)  # (the first call verifies: its verification's passes are not counted)
    with mock.patch.object(residual, "_skip", wraps=residual._skip) as skip:
        want = _train_step(fused, inputs, seed=3)
    skipped_without = skip.call_count
    checkpointing_enable(fused, use_reentrant=use_reentrant)
    if use_reentrant:  # (reentrant checkpoint needs an input that requires grad)
        inputs = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    with mock.patch.object(residual, "_skip", wraps=residual._skip) as skip:
        got = _train_step(fused, inputs, seed=3)
    # (Swin checkpoints its stages and their layers: nested recomputations)
    assert skipped_without and skip.call_count >= 2 * skipped_without, "forward and recomputation in skip mode"
    _assert_same_training(got, want, "checkpointed vs not")


@pytest.mark.parametrize("family", ["dinov2"] + [pytest.param(f, marks=pytest.mark.slow)
                                               for f in ("swin", "dinov3_vit", "convnext", "beit")])
def test_fused_families_compile_in_one_graph(family):
    """torch.compile(fullgraph=True) of a fused model in training: no graph
    break, skip mode compiled in, the eager result for the same seed."""
    torch._dynamo.reset()
    stock, make_inputs = build(family)
    fused = dp.convert_model(copy.deepcopy(stock), fuse_residual=True, skip_dropped=True).train()
    compiled = torch.compile(fused, backend="aot_eager", fullgraph=True)
    inputs = make_inputs(6)
    for seed in (1, 2):
        got = loss_of(compiled, inputs, seed)
        torch.testing.assert_close(got, loss_of(fused, inputs, seed), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_the_replacement_draws_the_stock_rate_in_every_dtype(dtype):
    """The fidelity rule's distribution half: a converted module keeps each
    sample with probability 1 - p in every dtype (transformers' own draw,
    floor(keep + rand) rounded in bfloat16, keeps 230/256 at p = 0.1)."""
    stock, _ = build("dinov2", drop_path_rate=0.1)
    module = dp.convert_model(stock).encoder.layer[1].drop_path.train()
    assert isinstance(module, dp.DropPath) and module.drop_prob == pytest.approx(0.1)
    n = 400_000
    kept = (module(torch.ones(n, 1, dtype=dtype)) != 0).double().mean().item()
    assert abs(kept - (1 - module.drop_prob)) < 6 * (0.09 / n) ** 0.5
    torch.manual_seed(0)
    n = 4_000_000  # (enough draws to tell 0.9 from 230/256 at 6 sigma)
    stock_kept = torch.floor(torch.rand(n, dtype=torch.bfloat16) + 0.9).double().mean().item()
    assert abs(stock_kept - 230 / 256) < 6 * (0.09 / n) ** 0.5 < abs(0.9 - 230 / 256)
