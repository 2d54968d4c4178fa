"""Gradients: gradcheck in float64, the saved-factor backward, checkpoint replay."""

import pytest
import torch
from torch.utils.checkpoint import checkpoint

import droppath_ext as dp
from droppath_ext import functional
from conftest import kept_mask, nonzero_input


def _fixed_seed_fn(fn, seed):
    def wrapped(*args):
        torch.manual_seed(seed)
        return fn(*args)

    return wrapped


@pytest.mark.parametrize("drop_prob", [0.0, 0.3, 1.0])
def test_gradcheck_drop_path(backend, device, drop_prob):
    x = torch.randn(6, 3, 2, dtype=torch.float64, device=device, requires_grad=True)
    fn = _fixed_seed_fn(lambda t: dp.drop_path(t, drop_prob, True), 0)
    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


def test_gradcheck_drop_path_add(backend, device):
    r = torch.randn(6, 4, dtype=torch.float64, device=device, requires_grad=True)
    b = torch.randn(6, 4, dtype=torch.float64, device=device, requires_grad=True)
    fn = _fixed_seed_fn(lambda r_, b_: dp.drop_path_add(r_, b_, 0.5, True), 1)
    assert torch.autograd.gradcheck(fn, (r, b))
    assert torch.autograd.gradgradcheck(fn, (r, b))


def test_gradcheck_private_ops_including_factors(backend, device):
    impl = functional._backend
    x = torch.randn(5, 3, dtype=torch.float64, device=device, requires_grad=True)
    r = torch.randn(5, 3, dtype=torch.float64, device=device, requires_grad=True)
    f = torch.tensor([0.0, 1.5, 2.0, 0.5, 1.0], dtype=torch.float64, device=device, requires_grad=True)
    # factors of exactly 0 have a kink for the reference (where); perturb around non-zero only
    f_nonzero = torch.tensor([0.7, 1.5, 2.0, 0.5, 1.0], dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(impl.scale_rows, (x, f_nonzero))
    assert torch.autograd.gradcheck(impl.add_rows, (r, x, f_nonzero))
    # with a zero factor, the input gradient is still exact
    assert torch.autograd.gradcheck(lambda t: impl.scale_rows(t, f.detach()), (x,))


def test_backward_is_grad_times_factors(backend, device, dtype):
    x = nonzero_input((32, 5), dtype, device).requires_grad_()
    y = dp.drop_path(x, 0.5, True)
    grad = nonzero_input((32, 5), dtype, device)
    y.backward(grad)
    kept = kept_mask(y.detach())
    assert torch.equal(x.grad[~kept], torch.zeros_like(x.grad[~kept]))
    expected = (grad[kept].double() * 2).to(dtype)
    torch.testing.assert_close(x.grad[kept], expected, rtol=0, atol=0)


def test_add_residual_gradient_is_the_incoming_gradient(backend, device, dtype):
    r = nonzero_input((16, 4), dtype, device).requires_grad_()
    b = nonzero_input((16, 4), dtype, device).requires_grad_()
    out = dp.drop_path_add(r, b, 0.5, True)
    grad = nonzero_input((16, 4), dtype, device)
    out.backward(grad)
    assert torch.equal(r.grad, grad)
    kept = kept_mask((out - r).detach())
    assert torch.equal(b.grad[~kept], torch.zeros_like(b.grad[~kept]))
    torch.testing.assert_close(b.grad[kept], (grad[kept].double() * 2).to(dtype), rtol=0, atol=0)


def test_factors_never_require_grad(backend):
    x = torch.randn(4, 3, requires_grad=True)
    f = functional._backend.sample_factors(x, 0.5, True)
    assert not f.requires_grad


class _Block(torch.nn.Module):
    def __init__(self, drop_prob):
        super().__init__()
        self.fc = torch.nn.Linear(8, 8)
        self.drop = dp.DropPath(drop_prob)

    def forward(self, x):
        return x + self.drop(torch.relu(self.fc(x)))


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_checkpoint_replays_the_mask(backend, use_reentrant):
    block = _Block(0.5).train()
    x = torch.randn(64, 8, requires_grad=True)

    torch.manual_seed(5)
    block(x).sum().backward()
    plain = [x.grad.clone()] + [p.grad.clone() for p in block.parameters()]

    x.grad = None
    block.zero_grad()
    torch.manual_seed(5)
    checkpoint(block, x, use_reentrant=use_reentrant).sum().backward()
    ckpt = [x.grad] + [p.grad for p in block.parameters()]
    for a, b in zip(plain, ckpt):
        torch.testing.assert_close(a, b)
