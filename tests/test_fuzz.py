"""Property-based tests (hypothesis): random shapes, strides, dtypes,
probabilities, batch dims, packed-batch offsets, and both ops on both
backends. Every output must equal the per-sample reference for the mask that
was drawn, and every gradient likewise; bad inputs must raise
ValueError/TypeError/IndexError, never crash or read out of bounds."""

import math
import os

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from droppath_ext import _compiled, _library, _reference  # noqa: E402

IMPLS = [pytest.param(_reference, id="python")] + (
    [pytest.param(_compiled, id="compiled")] if _library.LOADED else []
)
DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
# (600 examples per property in the full run, 200 in the default one; derandomized: the same each run)
EXAMPLES = 600 if os.environ.get("DROPPATH_EXT_FULL_RUN") else 200
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@st.composite
def tensors(draw, dtype=None, shape=None):
    """A tensor of a random shape (1-D to 5-D, batch 0/1/small/large) and layout."""
    if shape is None:
        ndim = draw(st.integers(1, 5))
        batch = draw(st.sampled_from([0, 1, 2, 3, 5, 17, 64]))
        shape = [batch] + [draw(st.integers(0 if draw(st.booleans()) else 1, 6)) for _ in range(ndim - 1)]
    dtype = dtype or draw(st.sampled_from(DTYPES))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    layout = draw(st.sampled_from(["contiguous", "transposed", "sliced", "expanded", "channels_last", "offset"]))
    ndim = len(shape)
    if layout == "sliced":
        base = torch.randn([s * 2 for s in shape], generator=gen)
        x = base[tuple(slice(None, None, 2) for _ in shape)]
    elif layout == "expanded" and ndim > 1 and shape[1] > 0:
        x = torch.randn([shape[0], 1] + shape[2:], generator=gen).expand(shape)
    elif layout == "offset":
        x = torch.randn([shape[0] + 1] + shape[1:], generator=gen)[1:]
    else:
        x = torch.randn(shape, generator=gen)
    if layout == "transposed" and ndim > 1:
        dims = draw(st.permutations(list(range(ndim))))
        x = torch.randn([shape[d] for d in dims], generator=gen).permute(
            [dims.index(i) for i in range(ndim)])
    if layout == "channels_last" and ndim == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    if draw(st.integers(0, 9)) == 0 and x.numel():  # sometimes non-finite values
        x = x.clone()
        x[(0,) * x.dim()] = draw(st.sampled_from([math.inf, -math.inf, math.nan]))
    return x.to(dtype)


drop_probs = st.one_of(st.just(0.0), st.just(1.0), st.floats(0.0, 1.0, allow_nan=False))


@st.composite
def sample_layouts(draw, x):
    """(batch_dim, cu_seqlens or None): a random sample dim and, sometimes,
    valid packed-batch offsets along it (empty segments included)."""
    batch_dim = draw(st.integers(-x.dim(), x.dim() - 1))
    if draw(st.booleans()):
        return batch_dim, None
    length = x.shape[batch_dim]
    samples = draw(st.integers(1 if length else 0, 6))
    cuts = sorted(draw(st.lists(st.integers(0, length), min_size=max(samples - 1, 0), max_size=max(samples - 1, 0))))
    offsets = [0] + cuts + [length] if samples else [0]
    dtype = draw(st.sampled_from([torch.int32, torch.int64]))
    return batch_dim, torch.tensor(offsets, dtype=dtype)


def _same(got, want):
    assert got.shape == want.shape and got.dtype == want.dtype
    torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", IMPLS)
@SETTINGS
@given(data=st.data(), drop_prob=drop_probs, scale_by_keep=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_forward_matches_reference_for_drawn_mask(impl, device, data, drop_prob, scale_by_keep, seed):
    x = data.draw(tensors()).to(device).requires_grad_()
    dim, cu = data.draw(sample_layouts(x))
    cu = None if cu is None else cu.to(device)
    out = impl.forward(x, drop_prob, True, scale_by_keep, dim, cu, torch.Generator(device).manual_seed(seed))
    if drop_prob == 0.0:
        assert out is x
        return
    factors = impl.sample_factors(x, drop_prob, scale_by_keep, dim, cu, torch.Generator(device).manual_seed(seed))
    _same(out, _reference.scale_rows(x.detach(), factors, dim, cu))
    grad = torch.randn_like(out)
    out.backward(grad)
    _same(x.grad, _reference.scale_rows(grad, factors, dim, cu))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", IMPLS)
@SETTINGS
@given(data=st.data(), drop_prob=drop_probs, scale_by_keep=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_add_matches_reference_for_drawn_mask(impl, device, data, drop_prob, scale_by_keep, seed):
    branch = data.draw(tensors()).to(device).requires_grad_()
    residual = data.draw(tensors(dtype=branch.dtype, shape=list(branch.shape))).to(device).requires_grad_()
    dim, cu = data.draw(sample_layouts(branch))
    cu = None if cu is None else cu.to(device)
    out = impl.add(residual, branch, drop_prob, True, scale_by_keep, dim, cu, torch.Generator(device).manual_seed(seed))
    if drop_prob == 0.0:
        _same(out, residual.detach() + branch.detach())
        return
    factors = impl.sample_factors(branch, drop_prob, scale_by_keep, dim, cu, torch.Generator(device).manual_seed(seed))
    _same(out, _reference.add_rows(residual.detach(), branch.detach(), factors, dim, cu))
    grad = torch.randn_like(out)
    out.backward(grad)
    _same(residual.grad, grad)
    _same(branch.grad, _reference.scale_rows(grad, factors, dim, cu))


bad_probs = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.floats(0, 1))
any_dtype = st.sampled_from(DTYPES + [torch.int64, torch.int32, torch.uint8, torch.bool, torch.complex64])


@pytest.mark.parametrize("impl", IMPLS)
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True)
@given(dtype=any_dtype, shape=st.lists(st.integers(0, 4), min_size=0, max_size=4), drop_prob=bad_probs,
       training=st.booleans(), other_shape=st.booleans(), other_dtype=any_dtype, batch_dim=st.integers(-5, 4))
def test_any_input_is_handled_or_rejected_cleanly(
    impl, dtype, shape, drop_prob, training, other_shape, other_dtype, batch_dim
):
    x = torch.zeros(shape, dtype=dtype)
    valid_prob = 0.0 <= drop_prob <= 1.0
    valid_x = dtype in DTYPES and len(shape) >= 1
    valid_dim = -len(shape) <= batch_dim < len(shape)
    valid = valid_prob and valid_x and valid_dim
    try:
        out = impl.forward(x, drop_prob, training, True, batch_dim, None, None)
        assert valid
        assert out.shape == x.shape
    except (ValueError, TypeError, IndexError) as error:
        assert not valid, error
    other = torch.zeros(shape + [1] if other_shape else shape, dtype=other_dtype)
    valid_pair = valid and not other_shape and other_dtype in DTYPES  # floating dtypes promote
    try:
        out = impl.add(x, other, drop_prob, training, True, batch_dim, None, None)
        assert valid_pair
        assert out.dtype == torch.promote_types(dtype, other_dtype) and out.shape == x.shape
    except (ValueError, TypeError, IndexError) as error:
        assert not valid_pair, error


def _offsets_are_valid(cu: torch.Tensor, length: int) -> bool:
    if cu.dtype not in (torch.int32, torch.int64) or cu.dim() != 1 or cu.numel() == 0:
        return False
    values = cu.tolist()
    return values[0] == 0 and values[-1] == length and all(b >= a for a, b in zip(values, values[1:]))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", IMPLS)
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True)
@given(length=st.integers(0, 9), hidden=st.integers(1, 3),
       dtype=st.sampled_from([torch.int32, torch.int64, torch.int16, torch.float32]),
       values=st.lists(st.integers(-3, 12), min_size=0, max_size=6), two_dim=st.booleans())
def test_any_cu_seqlens_is_handled_or_rejected_cleanly(impl, device, length, hidden, dtype, values, two_dim):
    """Random offsets (wrong dtype or rank, negative, decreasing, past the end):
    either valid and exact, or a ValueError/TypeError, on every device."""
    x = torch.randn(length, hidden, device=device)
    cu = torch.tensor(values, dtype=dtype, device=device)
    if two_dim:
        cu = cu.reshape(1, -1)
    try:
        out = impl.forward(x, 0.5, True, True, 0, cu, torch.Generator(device).manual_seed(0))
        factors = impl.sample_factors(x, 0.5, True, 0, cu, torch.Generator(device).manual_seed(0))
    except (ValueError, TypeError) as error:
        assert not _offsets_are_valid(cu, length), error
        return
    assert _offsets_are_valid(cu, length)
    _same(out, _reference.scale_rows(x, factors, 0, cu))
