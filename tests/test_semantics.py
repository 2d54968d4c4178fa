"""What drop_path / drop_path_add / stochastic_depth compute, on both backends."""

import math

import pytest
import torch

import droppath_ext as dp
from conftest import expected_drop_path, import_or_skip, kept_mask, nonzero_input


@pytest.mark.parametrize("drop_prob", [0.1, 0.5, 0.9])
def test_fraction_dropped_within_six_sigma(backend, device, drop_prob):
    batch = 20000
    x = torch.ones(batch, 3, device=device)
    y = dp.drop_path(x, drop_prob, training=True)
    dropped = (~kept_mask(y)).double().mean().item()
    sigma = math.sqrt(drop_prob * (1 - drop_prob) / batch)
    assert abs(dropped - drop_prob) < 6 * sigma


def test_mean_is_preserved_by_scale_by_keep(backend, device):
    x = torch.ones(50000, 2, device=device, dtype=torch.float64)
    y = dp.drop_path(x, 0.3, training=True)
    # mean of 1/keep * Bernoulli(keep) is 1, std sqrt(p/(1-p))/sqrt(n)
    assert abs(y.mean().item() - 1.0) < 6 * math.sqrt(0.3 / 0.7 / 50000)


def test_each_sample_is_all_zero_or_exactly_scaled(backend, device, dtype):
    x = nonzero_input((64, 7, 5), dtype, device)
    y = dp.drop_path(x, 0.4, training=True)
    kept = kept_mask(y)
    assert 0 < kept.sum() < 64
    torch.testing.assert_close(y, expected_drop_path(x, kept, 0.4), rtol=0, atol=0)
    assert y.dtype == dtype and y.shape == x.shape and y.device == x.device


def test_scale_by_keep_false_keeps_values_unscaled(backend, device, dtype):
    x = nonzero_input((64, 9), dtype, device)
    y = dp.drop_path(x, 0.5, training=True, scale_by_keep=False)
    kept = kept_mask(y)
    assert torch.equal(y[kept], x[kept])
    assert torch.equal(y[~kept], torch.zeros_like(x[~kept]))


def test_eval_mode_is_identity(backend, device, dtype):
    x = nonzero_input((8, 4), dtype, device)
    assert dp.drop_path(x, 0.5, training=False) is x
    assert dp.DropPath(0.5).eval()(x) is x


def test_p0_is_identity_in_training(backend, device):
    x = nonzero_input((8, 4), device=device)
    assert dp.drop_path(x, 0.0, training=True) is x


def test_p1_gives_zeros_not_nan(backend, device, dtype):
    x = nonzero_input((16, 3, 2), dtype, device)
    for scale_by_keep in (True, False):
        y = dp.drop_path(x, 1.0, training=True, scale_by_keep=scale_by_keep)
        assert torch.equal(y, torch.zeros_like(x))


def test_dropped_sample_is_zero_even_when_input_is_not_finite(backend, device):
    x = torch.full((8, 4), float("inf"), device=device)
    y = dp.drop_path(x, 1.0, training=True)
    assert torch.equal(y, torch.zeros_like(x))


def test_default_arguments_match_timm(backend):
    x = torch.randn(4, 3)
    assert dp.drop_path(x) is x  # drop_prob=0, training=False


@pytest.mark.parametrize("shape", [(0, 3), (0,), (4, 0), (3, 0, 2)])
def test_empty_tensors_give_empty_results(backend, device, shape):
    x = torch.empty(shape, device=device)
    y = dp.drop_path(x, 0.5, training=True)
    assert y.shape == x.shape
    out = dp.drop_path_add(x, x, 0.5, training=True)
    assert out.shape == x.shape


def test_one_dimensional_input_drops_elements(backend, device):
    x = nonzero_input((1000,), device=device)
    y = dp.drop_path(x, 0.5, training=True)
    kept = y != 0
    torch.testing.assert_close(y[kept], x[kept] * 2, rtol=0, atol=0)


def _layouts(device, dtype):
    base = nonzero_input((6, 4, 5, 3), dtype, device)
    yield "contiguous", base
    yield "channels_last", base.contiguous(memory_format=torch.channels_last)
    yield "transposed_batch", nonzero_input((4, 6, 5, 3), dtype, device).transpose(0, 1)
    yield "transposed_inner", base.transpose(1, 3)
    yield "sliced", nonzero_input((12, 4, 10, 3), dtype, device)[::2, :, 1:6]
    yield "expanded", nonzero_input((1, 4, 5, 3), dtype, device).expand(6, 4, 5, 3)
    yield "storage_offset", nonzero_input((7, 4, 5, 3), dtype, device)[1:]


def test_any_layout_gives_per_sample_result(backend, device, dtype):
    for name, x in _layouts(device, dtype):
        y = dp.drop_path(x, 0.5, training=True)
        kept = kept_mask(y)
        torch.testing.assert_close(
            y, expected_drop_path(x, kept, 0.5), rtol=0, atol=0, msg=lambda m: f"{name}: {m}"
        )


def test_channels_last_output_stays_channels_last(backend, device):
    x = nonzero_input((4, 8, 5, 5), device=device).contiguous(memory_format=torch.channels_last)
    assert dp.drop_path(x, 0.5, training=True).is_contiguous(memory_format=torch.channels_last)
    assert dp.drop_path_add(x, x, 0.5, training=True).is_contiguous(memory_format=torch.channels_last)


def test_manual_seed_reproduces_the_mask(backend, device):
    x = nonzero_input((256, 4), device=device)
    torch.manual_seed(7)
    a = dp.drop_path(x, 0.5, training=True)
    torch.manual_seed(7)
    b = dp.drop_path(x, 0.5, training=True)
    c = dp.drop_path(x, 0.5, training=True)
    assert torch.equal(a, b)
    assert not torch.equal(b, c)


def test_generator_reproduces_and_leaves_default_alone(backend, device):
    x = nonzero_input((256, 4), device=device)
    gen_a = torch.Generator(device=device).manual_seed(3)
    gen_b = torch.Generator(device=device).manual_seed(3)
    torch.manual_seed(0)
    a = dp.drop_path(x, 0.5, training=True, generator=gen_a)
    default_after = torch.rand(4, device=device)
    torch.manual_seed(0)
    b = dp.drop_path(x, 0.5, training=True, generator=gen_b)
    assert torch.equal(a, b)
    assert torch.equal(default_after, torch.rand(4, device=device))


# --- drop_path_add -----------------------------------------------------------------


def test_add_is_residual_plus_drop_path(backend, device, dtype):
    residual = nonzero_input((64, 6, 5), dtype, device)
    branch = nonzero_input((64, 6, 5), dtype, device)
    out = dp.drop_path_add(residual, branch, 0.5, training=True)
    kept = kept_mask((out.float() - residual.float()))
    assert 0 < kept.sum() < 64
    math_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    expected = (residual.to(math_dtype) + expected_drop_path(branch.to(math_dtype), kept, 0.5)).to(dtype)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert torch.equal(out[~kept], residual[~kept])


def test_add_eval_and_p0_are_plain_sum(backend, device):
    r, b = nonzero_input((8, 3), device=device), nonzero_input((8, 3), device=device)
    torch.testing.assert_close(dp.drop_path_add(r, b, 0.5, training=False), r + b)
    torch.testing.assert_close(dp.drop_path_add(r, b, 0.0, training=True), r + b)


def test_add_p1_is_residual(backend, device, dtype):
    r, b = nonzero_input((8, 3), dtype, device), nonzero_input((8, 3), dtype, device)
    b[0] = float("nan")  # a dropped branch is never used
    assert torch.equal(dp.drop_path_add(r, b, 1.0, training=True), r)


def test_add_mixed_layouts(backend, device):
    r = nonzero_input((6, 4, 5, 5), device=device)
    b = nonzero_input((6, 4, 5, 5), device=device).contiguous(memory_format=torch.channels_last)
    out = dp.drop_path_add(r, b, 0.5, training=True)
    kept = kept_mask(out - r)
    torch.testing.assert_close(out, r + expected_drop_path(b, kept, 0.5), rtol=1e-6, atol=1e-6)


def test_add_same_seed_same_mask_as_drop_path(backend, device):
    r, b = nonzero_input((128, 3), device=device), nonzero_input((128, 3), device=device)
    torch.manual_seed(11)
    y = dp.drop_path(b, 0.5, training=True)
    torch.manual_seed(11)
    out = dp.drop_path_add(r, b, 0.5, training=True)
    assert torch.equal(kept_mask(y), kept_mask(out - r))


# --- stochastic_depth (torchvision) ------------------------------------------------


def test_stochastic_depth_row_mode_drops_per_sample(backend, device):
    x = nonzero_input((2000, 3), device=device)
    y = dp.stochastic_depth(x, 0.5, "row", training=True)
    kept = kept_mask(y)
    assert 800 < kept.sum() < 1200
    torch.testing.assert_close(y, expected_drop_path(x, kept, 0.5), rtol=0, atol=0)


def test_stochastic_depth_batch_mode_one_draw_for_all(backend, device):
    x = nonzero_input((32, 3), device=device)
    outcomes = set()
    for _ in range(40):
        y = dp.stochastic_depth(x, 0.5, "batch", training=True)
        kept = kept_mask(y)
        assert kept.all() or not kept.any()
        outcomes.add(bool(kept.all()))
        if kept.all():
            torch.testing.assert_close(y, x * 2, rtol=0, atol=0)
    assert outcomes == {True, False}


def test_stochastic_depth_eval_and_p1(backend, device):
    x = nonzero_input((4, 3), device=device)
    assert dp.stochastic_depth(x, 0.5, "row", training=False) is x
    assert torch.equal(dp.stochastic_depth(x, 1.0, "batch"), torch.zeros_like(x))
    assert dp.stochastic_depth(torch.empty(0, 3, device=device), 0.5, "batch").shape == (0, 3)


# --- modules -----------------------------------------------------------------------


def test_droppath_module_matches_timm_repr_and_attributes(backend):
    m = dp.DropPath(0.1)
    assert repr(m) == "DropPath(drop_prob=0.100)"
    assert m.drop_prob == 0.1 and m.scale_by_keep is True
    assert repr(dp.DropPath()) == "DropPath(drop_prob=0.000)"


def test_stochastic_depth_module_matches_torchvision_repr(backend):
    assert repr(dp.StochasticDepth(0.2, "row")) == "StochasticDepth(p=0.2, mode=row)"


def test_droppath_module_train_and_eval(backend, device):
    m = dp.DropPath(1.0)
    x = nonzero_input((4, 3), device=device)
    assert torch.equal(m(x), torch.zeros_like(x))
    m.eval()
    assert m(x) is x


def test_same_results_as_timm_formula_in_distribution(backend):
    timm_layers = import_or_skip("timm.layers")
    x = torch.ones(20000, 2)
    ours = kept_mask(dp.drop_path(x, 0.3, True)).double().mean()
    theirs = kept_mask(timm_layers.drop_path(x, 0.3, True)).double().mean()
    assert abs(ours - theirs) < 6 * math.sqrt(2 * 0.21 / 20000)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_add_is_bitwise_the_unfused_composition(backend, device, dtype):
    r = torch.randn(64, 7, 9, dtype=dtype, device=device)
    b = torch.randn(64, 7, 9, dtype=dtype, device=device)
    torch.manual_seed(4)
    fused = dp.drop_path_add(r, b, 0.25, training=True)  # 1/0.75 is inexact: rounding shows
    torch.manual_seed(4)
    unfused = r + dp.drop_path(b, 0.25, training=True)
    assert torch.equal(fused, unfused)
