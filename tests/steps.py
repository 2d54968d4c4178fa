"""One training step and its comparison, shared by the skip-mode tests: the
output, the input's gradient and every parameter's gradient of a step at a
seed, compared between a fused model and the model it must equal."""

import torch


def step(run, x, seed, params=None):
    """(output, input gradient, gradients of ``params``' parameters -- by
    default ``run``'s, a module) of one training step at ``seed``."""
    params = run if params is None else params
    torch.manual_seed(seed)
    x = x.detach().requires_grad_()
    out = run(x)
    out.float().square().mean().backward()
    grads = {n: p.grad.clone() for n, p in params.named_parameters() if p.grad is not None}
    for p in params.parameters():
        p.grad = None
    return out.detach(), x.grad, grads


def assert_same_step(got, want, rtol=1e-4, atol=1e-5):
    torch.testing.assert_close(got[0], want[0], rtol=rtol, atol=atol)
    torch.testing.assert_close(got[1], want[1], rtol=rtol, atol=atol)
    assert got[2].keys() == want[2].keys()
    for name in want[2]:
        torch.testing.assert_close(got[2][name], want[2][name], rtol=10 * rtol, atol=atol, msg=name)
