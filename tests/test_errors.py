"""Bad input: rejected on both backends, with a message that names the bad value."""

import pytest
import torch

import droppath_ext as dp
from conftest import requires_compiled


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("training", [True, False])
def test_bad_drop_prob_is_value_error_even_in_eval(backend, bad, training):
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match=r"drop_prob must be in \[0, 1\], got " + str(bad)):
        dp.drop_path(x, bad, training=training)
    with pytest.raises(ValueError, match="got " + str(bad)):
        dp.drop_path_add(x, x, bad, training=training)


@pytest.mark.parametrize("bad", [-0.5, 1.01, float("nan")])
def test_stochastic_depth_bad_p_uses_torchvision_message(backend, bad):
    with pytest.raises(ValueError, match=f"drop probability has to be between 0 and 1, but got {bad}"):
        dp.stochastic_depth(torch.randn(2, 2), bad, "row", training=False)


def test_stochastic_depth_bad_mode(backend):
    with pytest.raises(ValueError, match="mode has to be either 'batch' or 'row', but got col"):
        dp.stochastic_depth(torch.randn(2, 2), 0.5, "col")


def test_droppath_module_rejects_bad_probability():
    with pytest.raises(ValueError, match="got 2.0"):
        dp.DropPath(2.0)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.bool, torch.complex64])
@pytest.mark.parametrize("training", [True, False])
def test_non_float_dtype_names_the_dtype(backend, dtype, training):
    x = torch.zeros(4, 3, dtype=dtype)
    with pytest.raises(TypeError, match=str(dtype).replace("torch.", "")):
        dp.drop_path(x, 0.5, training=training)
    with pytest.raises(TypeError, match=str(dtype).replace("torch.", "")):
        dp.drop_path_add(x, x, 0.5, training=training)


def test_zero_dim_input_asks_for_a_batch_dimension(backend):
    with pytest.raises(ValueError, match="batch dimension"):
        dp.drop_path(torch.tensor(1.0), 0.5, training=True)
    with pytest.raises(ValueError, match="batch dimension"):
        dp.stochastic_depth(torch.tensor(1.0), 0.5, "row")


def test_add_shape_mismatch(backend):
    with pytest.raises(ValueError, match=r"same shape.*\[4, 3\].*\[4, 2\]"):
        dp.drop_path_add(torch.randn(4, 3), torch.randn(4, 2), 0.5, training=True)


@pytest.mark.parametrize("training", [True, False])
def test_add_of_mixed_dtypes_promotes_like_the_unfused_sum(backend, training):
    """residual + drop_path(branch) promotes (a bfloat16 branch under autocast
    added to a float32 residual): so does the fused op, in both backends."""
    residual = torch.randn(6, 3)
    branch = torch.randn(6, 3, dtype=torch.bfloat16)
    torch.manual_seed(0)
    out = dp.drop_path_add(residual, branch, 0.5, training=training)
    torch.manual_seed(0)
    expected = residual + dp.drop_path(branch.float(), 0.5, training=training)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    with pytest.raises(TypeError, match="float16, bfloat16, float32 or float64, got torch.int64"):
        dp.drop_path_add(residual, torch.ones(6, 3, dtype=torch.int64), 0.5, training=training)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_add_device_mismatch(backend):
    with pytest.raises(ValueError, match="same device"):
        dp.drop_path_add(torch.randn(4, 3), torch.randn(4, 3, device="cuda"), 0.5, training=True)


def test_generator_on_another_device_type_is_rejected(backend):
    x = torch.randn(4, 3, device="meta")
    with pytest.raises(ValueError, match="generator must be on the input's device meta, got a generator on cpu"):
        dp.drop_path(x, 0.5, True, generator=torch.Generator())
    with pytest.raises(ValueError, match="generator must be on the input's device"):
        dp.drop_path_add(x, x, 0.5, True, generator=torch.Generator())


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_generator_on_another_gpu_is_rejected(backend):
    x = torch.randn(4, 3, device="cuda:0")
    with pytest.raises(ValueError, match="generator must be on the input's device cuda:0, got a generator on cuda:1"):
        dp.drop_path(x, 0.5, True, generator=torch.Generator(device="cuda:1"))


@requires_compiled()
@pytest.mark.parametrize(
    "factors, message",
    [
        (torch.ones(3), "one value per sample"),
        (torch.ones(4, 1), "1-D"),
        (torch.ones(4, dtype=torch.int64), "floating"),
    ],
)
def test_scale_rows_rejects_bad_factors(factors, message):
    with pytest.raises((ValueError, TypeError), match=message):
        torch.ops.droppath._scale_rows(torch.randn(4, 3), factors)


@requires_compiled()
def test_ops_reject_bad_drop_prob_directly():
    with pytest.raises(ValueError, match="got 1.5"):
        torch.ops.droppath._sample_factors(torch.randn(4, 3), 1.5, True)
    with pytest.raises(ValueError, match="got -1"):
        torch.ops.droppath.forward(torch.randn(4, 3), -1.0, False, True)


@pytest.mark.parametrize("bad", [[0, 3, 2], [0, 1, 9], [-2, 1, 4]])
def test_bad_offsets_are_value_errors_in_every_mode(backend, bad):
    """Eager, under inference mode (no autograd kernel runs there) and inside
    torch.func transforms: the offsets' values are read and rejected."""
    x, cu = torch.randn(4, 3), torch.tensor(bad)
    with pytest.raises(ValueError, match="cu_seqlens must"):
        dp.drop_path(x, 0.5, True, cu_seqlens=cu)
    with torch.inference_mode(), pytest.raises(ValueError, match="cu_seqlens must"):
        dp.drop_path(torch.randn(4, 3), 0.5, True, cu_seqlens=torch.tensor(bad))
    with torch.inference_mode(), pytest.raises(ValueError, match="cu_seqlens must"):
        dp.drop_path_add(x, x, 0.5, True, cu_seqlens=torch.tensor(bad))
    with pytest.raises(ValueError, match="cu_seqlens must"):
        torch.func.grad(lambda t: dp.drop_path(t, 0.5, True, cu_seqlens=cu).sum())(x)
    with pytest.raises(ValueError, match="cu_seqlens must"):
        torch.func.jacrev(lambda t: dp.drop_path_add(t, t, 0.5, True, cu_seqlens=cu))(x)


@requires_compiled()
def test_row_gathering_ops_refuse_factors_that_require_grad_even_without_grad_mode():
    x, rows = torch.randn(4, 3), torch.tensor([0, 2])
    inverse = torch.tensor([0, -1, 1, -1])
    factors = torch.ones(4, requires_grad=True)
    with torch.no_grad(), pytest.raises(RuntimeError, match="not differentiable with respect to factors"):
        torch.ops.droppath._take_rows(x, rows, inverse, factors)
