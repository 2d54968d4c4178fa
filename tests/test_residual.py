"""drop_path_residual: skip the branch's compute for dropped samples, exactly."""

import pytest
import torch

import droppath_ext as dp
from droppath_ext.residual import drop_path_residual
from conftest import nonzero_input


class _Branch(torch.nn.Module):
    """Per-sample branch that counts how many samples it was run on."""

    def __init__(self, dim=6):
        super().__init__()
        self.norm = torch.nn.LayerNorm(dim)
        self.fc = torch.nn.Linear(dim, dim)
        self.seen = 0

    def forward(self, x):
        self.seen += x.shape[0]
        return self.fc(self.norm(x))


def _masked(x, branch, drop_prob, seed, scale_by_keep=True):
    torch.manual_seed(seed)
    return dp.drop_path_add(x, branch(x), drop_prob, True, scale_by_keep)


def _skip(x, branch, drop_prob, seed, **kw):
    torch.manual_seed(seed)
    return drop_path_residual(x, branch, drop_prob, True, **kw)


@pytest.mark.parametrize("drop_prob", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("scale_by_keep", [True, False])
def test_skip_equals_masked_for_the_same_seed(backend, drop_prob, scale_by_keep):
    branch = _Branch()
    x = torch.randn(64, 5, 6)
    masked = _masked(x, branch, drop_prob, 3, scale_by_keep)
    branch.seen = 0
    skipped = _skip(x, branch, drop_prob, 3, scale_by_keep=scale_by_keep)
    torch.testing.assert_close(skipped, masked, rtol=1e-6, atol=1e-6)
    kept = ((masked - x).abs().amax(dim=(1, 2)) > 0).sum().item()
    assert branch.seen == kept < 64


def test_gradients_equal_masked_form(backend):
    branch = _Branch()
    x = torch.randn(32, 4, 6, requires_grad=True)
    grad = torch.randn(32, 4, 6)
    _masked(x, branch, 0.5, 7).backward(grad)
    expected = [x.grad.clone()] + [p.grad.clone() for p in branch.parameters()]
    x.grad = None
    branch.zero_grad()
    _skip(x, branch, 0.5, 7).backward(grad)
    got = [x.grad] + [p.grad for p in branch.parameters()]
    for a, b in zip(expected, got):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


def test_all_dropped_still_gives_parameters_zero_gradients(backend):
    branch = _Branch()
    x = torch.randn(8, 3, 6, requires_grad=True)
    out = drop_path_residual(x, branch, 1.0, True)
    assert torch.equal(out, x)
    assert branch.seen == 0
    out.sum().backward()
    for p in branch.parameters():
        assert p.grad is not None and torch.equal(p.grad, torch.zeros_like(p))
    assert torch.equal(x.grad, torch.ones_like(x))


def test_none_dropped_uses_whole_batch(backend):
    branch = _Branch()
    x = torch.randn(8, 3, 6)
    # p tiny: with 8 samples, all kept with probability ~1
    out = drop_path_residual(x, branch, 1e-9, True)
    assert branch.seen == 8
    torch.testing.assert_close(out, x + branch(x) / (1 - 1e-9))


def test_eval_and_p0_are_plain_residual(backend):
    branch = _Branch()
    x = torch.randn(8, 3, 6)
    torch.testing.assert_close(drop_path_residual(x, branch, 0.5, False), x + branch(x))
    torch.testing.assert_close(drop_path_residual(x, branch, 0.0, True), x + branch(x))


def test_switch_back_to_masked_form(backend):
    branch = _Branch()
    x = torch.randn(16, 3, 6)
    branch.seen = 0
    out = _skip(x, branch, 0.5, 1, skip_dropped=False)
    assert branch.seen == 16
    torch.testing.assert_close(out, _masked(x, branch, 0.5, 1))


def test_separate_residual(backend):
    branch = _Branch()
    x, res = torch.randn(16, 3, 6), torch.randn(16, 3, 6)
    torch.manual_seed(2)
    expected = dp.drop_path_add(res, branch(x), 0.5, True)
    torch.manual_seed(2)
    torch.testing.assert_close(drop_path_residual(x, branch, 0.5, True, residual=res), expected)


def test_statistics_are_per_sample_bernoulli(backend):
    x = torch.ones(20000, 2)
    out = drop_path_residual(x, lambda t: t, 0.3, True)
    dropped = (out[:, 0] == 1).double().mean().item()
    assert abs(dropped - 0.3) < 6 * (0.21 / 20000) ** 0.5


def test_bad_inputs(backend):
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="got 1.5"):
        drop_path_residual(x, lambda t: t, 1.5, True)
    with pytest.raises(ValueError, match="branch_fn must return one output per sample"):
        drop_path_residual(x, lambda t: t[:, :2], 0.5, True, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="batch size"):
        drop_path_residual(x, lambda t: t, 0.5, True, residual=torch.randn(3, 3))


def test_compiled_falls_back_to_masked_form(backend):
    torch._dynamo.reset()
    branch = _Branch()

    def step(x):
        return drop_path_residual(x, branch, 0.5, True)

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager", dynamic=True)
    for batch in (16, 24):
        x = nonzero_input((batch, 3, 6))
        out = compiled(x)
        with torch.no_grad():
            full = branch(x)
        kept = (out - x).abs().amax(dim=(1, 2)) > 0
        torch.testing.assert_close(out[kept], x[kept] + full[kept] * 2, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out[~kept], x[~kept])


@pytest.mark.parametrize("skip_dropped", [True, False])
@pytest.mark.parametrize("drop_prob", [0.5, 1.0, 1e-9])
@pytest.mark.parametrize(
    "res_dtype, branch_dtype", [(torch.float32, torch.bfloat16), (torch.bfloat16, torch.float32)]
)
def test_mixed_dtypes_promote_like_the_unfused_sum(backend, skip_dropped, drop_prob, res_dtype, branch_dtype):
    """As `x + drop_path(branch)` does (e.g. a bf16 branch under autocast), on every path."""
    x = torch.randn(16, 3, 6, dtype=res_dtype)
    out = drop_path_residual(x, lambda t: (t * 2).to(branch_dtype), drop_prob, True, skip_dropped=skip_dropped)
    assert out.dtype == torch.float32
    kept = (out - x.float()).abs().amax(dim=(1, 2)) > 0
    expected = x.float() + (x * 2).to(branch_dtype).float() / (1 - drop_prob)
    torch.testing.assert_close(out[kept], expected[kept], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out[~kept], x.float()[~kept])
