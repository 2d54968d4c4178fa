"""torch.library.opcheck on every droppath:: op (schema, autograd registration,
fake/meta kernel, AOT dispatch) on the compiled library."""

import pytest
import torch

from conftest import DEVICES, requires_compiled

pytestmark = requires_compiled()

ops = torch.ops.droppath if hasattr(torch.ops, "droppath") else None


def _inputs(device):
    x = torch.randn(6, 4, 3, device=device)
    factors = torch.tensor([0.0, 2.0, 1.0, 0.5, 0.0, 1.25], device=device)
    yield x, factors
    yield x.to(torch.float64), factors.double()
    yield x.to(torch.bfloat16), factors
    yield x.to(torch.float16).requires_grad_(), factors
    yield x.contiguous(memory_format=torch.contiguous_format).transpose(1, 2), factors
    yield torch.randn(6, 3, 4, 5, device=device).contiguous(memory_format=torch.channels_last), factors
    yield torch.randn(1, 4, 5, device=device).expand(6, 4, 5), factors
    yield torch.randn(6, 4, device=device, requires_grad=True), factors.clone().requires_grad_()


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_scale_rows(device):
    for x, factors in _inputs(device):
        torch.library.opcheck(torch.ops.droppath._scale_rows.default, (x, factors))


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_add_rows(device):
    for x, factors in _inputs(device):
        branch = torch.randn_like(x).requires_grad_(x.requires_grad)
        torch.library.opcheck(torch.ops.droppath._add_rows.default, (x, branch, factors))
    # residual and branch in different layouts
    r = torch.randn(6, 3, 4, 5, device=device)
    b = r.contiguous(memory_format=torch.channels_last)
    torch.library.opcheck(torch.ops.droppath._add_rows.default, (r, b, torch.ones(6, device=device)))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("drop_prob", [0.0, 1.0])
def test_opcheck_sample_factors_deterministic_ends(device, drop_prob):
    # Only at p in {0, 1} is the draw deterministic, so eager and traced
    # results can be compared; the random middle is covered by test_semantics.
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        x = torch.randn(5, 3, device=device, dtype=dtype)
        torch.library.opcheck(torch.ops.droppath._sample_factors.default, (x, drop_prob, True))


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_sample_factors_random_middle_schema_and_fake(device):
    x = torch.randn(5, 3, device=device)
    torch.library.opcheck(
        torch.ops.droppath._sample_factors.default,
        (x, 0.5, True),
        test_utils=("test_schema", "test_autograd_registration", "test_faketensor"),
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("training,drop_prob", [(False, 0.5), (True, 0.0), (True, 1.0)])
def test_opcheck_public_ops(device, training, drop_prob):
    x = torch.randn(4, 3, device=device, requires_grad=True)
    r = torch.randn(4, 3, device=device, requires_grad=True)
    torch.library.opcheck(torch.ops.droppath.forward.default, (x, drop_prob, training, True))
    torch.library.opcheck(torch.ops.droppath.add.default, (r, x, drop_prob, training, True))


def test_random_op_is_tagged_nondeterministic_seeded():
    assert torch.Tag.nondeterministic_seeded in torch.ops.droppath._sample_factors.default.tags
    assert torch.Tag.nondeterministic_seeded not in torch.ops.droppath._scale_rows.default.tags


def _strided_cases():
    yield torch.empty_strided((4, 1, 5), (5, 7, 1)).normal_()  # a size-1 dim with an odd stride
    yield torch.empty(0, 3)
    yield torch.empty(3, 0, 2).transpose(0, 2)
    yield torch.empty(2, 0, 4).contiguous(memory_format=torch.contiguous_format)[:, :, ::2]
    yield torch.randn(6, 1, 4, 1).contiguous(memory_format=torch.channels_last)
    yield torch.randn(5, 4, 3).transpose(0, 1)
    yield torch.randn(1, 5).expand(4, 5)
    yield torch.randn(4, 1, 5, 6).contiguous(memory_format=torch.channels_last)
    yield torch.randn(4, 3, 0, 6).contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("batch_dim", [0, -1])
def test_fake_outputs_have_the_real_strides(batch_dim):
    """The meta kernels' layout rule is the real kernels' (layout.h), for every dense
    or non-dense input, size-1 dims with arbitrary strides and empty tensors included."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    for x in _strided_cases():
        factors = torch.ones(x.shape[batch_dim])
        cases = {
            "scale": lambda t, f: torch.ops.droppath._scale_rows(t, f, batch_dim),
            "add": lambda t, f: torch.ops.droppath._add_rows(t, t, f, batch_dim),
            # layouts that differ (an expanded branch): both operands made contiguous,
            # which keeps a residual ATen already calls contiguous, odd strides and all
            "add, expanded branch": lambda t, f: torch.ops.droppath._add_rows(
                t, torch.zeros((1,) + t.shape[1:]).expand(t.shape), f, batch_dim),
        }
        for name, op in cases.items():
            real = op(x, factors)
            with FakeTensorMode() as mode:
                fake = op(mode.from_tensor(x), mode.from_tensor(factors))
            assert (fake.shape, fake.stride()) == (real.shape, real.stride()), (name, x.shape, x.stride())


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_row_gathering_ops(device):
    x = torch.randn(6, 4, 3, device=device, requires_grad=True)
    index = torch.tensor([1, 3, 4], device=device)
    rows = torch.tensor([-1, 0, -1, 1, 2, -1], device=device)
    factors = torch.tensor([0.0, 2.0, 0.0, 0.5, 1.0, 0.0], device=device)
    for t, dim in [(x, 0), (x.detach().transpose(0, 1).contiguous().requires_grad_(), 1),
                   (torch.randn(6, 3, 2, 2, device=device).contiguous(memory_format=torch.channels_last), 0)]:
        torch.library.opcheck(torch.ops.droppath._take_rows.default, (t, index, rows, None, dim))
        taken = torch.randn_like(torch.ops.droppath._take_rows(t, index, rows, None, dim)).requires_grad_()
        torch.library.opcheck(torch.ops.droppath._add_taken_rows.default, (t, taken, factors, rows, index, dim))
