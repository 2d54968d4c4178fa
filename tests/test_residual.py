"""drop_path_residual: skip the branch's compute for dropped samples, exactly."""

import pytest
import torch

import droppath_ext as dp
from droppath_ext import functional, residual
from droppath_ext.residual import branch_batch_granule, drop_path_residual, skip_pays
from conftest import DTYPES, nonzero_input


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
    # Two dropped samples computed and discarded: no branch meets an empty batch, nor a batch of one,
    # which the stock model never gives it (a branch calling .squeeze() would drop the batch dim).
    assert branch.seen == 2
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
    with pytest.raises(ValueError, match="residual must have x's 4 samples"):
        drop_path_residual(x, lambda t: t, 0.5, True, residual=torch.randn(3, 3))
    with pytest.raises(ValueError, match="residual must have x's 8 samples along batch_dim 2"):
        # (a residual with fewer dims than batch_dim: the message, not an IndexError)
        drop_path_residual(torch.randn(4, 3, 8), lambda t: t, 0.5, True, residual=torch.randn(4, 3), batch_dim=2)
    with pytest.raises(ValueError, match="skip_dropped must be True, False or 'auto', got 'yes'"):
        drop_path_residual(x, lambda t: t, 0.5, True, skip_dropped="yes")


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


def _elementwise(t):
    """A branch whose output for a sample depends on that sample's values only,
    bit for bit whatever the batch: skip and masked forms must agree exactly.
    It uses its input once: where an input feeds several ops, autograd sums
    their gradients in an order that depends on the graph, not on our ops."""
    return torch.sin(t) * 1.7 + 0.25


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("drop_prob", [0.3, 0.7])
def test_skip_is_exactly_the_masked_form_in_every_dtype(backend, dtype, drop_prob):
    x = torch.randn(48, 5, 6).to(dtype).requires_grad_()
    grad = torch.randn(48, 5, 6).to(dtype)
    results = {}
    for skip in (True, False):
        x.grad = None
        torch.manual_seed(9)
        out = drop_path_residual(x, _elementwise, drop_prob, True, skip_dropped=skip)
        out.backward(grad)
        results[skip] = (out.detach(), x.grad.clone())
    assert torch.equal(results[True][0], results[False][0])
    assert torch.equal(results[True][1], results[False][1])


def test_padding_to_the_granule_is_exact(backend, monkeypatch):
    """As on CUDA: the branch runs on a multiple of 8 samples (dropped ones
    padded in), and outputs and gradients still equal the masked form's."""
    monkeypatch.setattr(residual, "branch_batch_granule", lambda batch, device: 8)
    x = torch.randn(64, 3, 4, requires_grad=True)
    seen = []

    def branch(t):
        seen.append(t.shape[0])
        return _elementwise(t)

    torch.manual_seed(21)
    out = drop_path_residual(x, branch, 0.5, True, skip_dropped=True)
    out.sum().backward()
    skip_grad = x.grad.clone()
    x.grad = None
    torch.manual_seed(21)
    masked = drop_path_residual(x, _elementwise, 0.5, True, skip_dropped=False)
    masked.sum().backward()
    kept = int(((masked - x).abs().amax(dim=(1, 2)) > 0).sum())
    assert seen[0] % 8 == 0 and kept <= seen[0] < kept + 8
    assert torch.equal(out, masked) and torch.equal(skip_grad, x.grad)


def test_policy():
    assert branch_batch_granule(128, "cuda") == 16 and branch_batch_granule(40, "cuda") == 8
    assert branch_batch_granule(128, "cpu") == 1
    assert skip_pays(32, 0.1, "cpu") and skip_pays(2, 0.5, "cpu")
    assert skip_pays(128, 0.4, "cuda") and skip_pays(256, 0.5, "cuda")
    assert not skip_pays(128, 0.1, "cuda") and not skip_pays(128, 0.2, "cuda")
    assert not skip_pays(16, 0.5, "cuda")  # small batches: the masked form
    assert not skip_pays(128, 0.5, "mps")


def test_auto_skips_on_cpu_and_not_under_transforms(backend):
    seen = []

    def branch(t):
        seen.append(t.shape[0])
        return t * 2

    x = torch.randn(64, 3)
    torch.manual_seed(0)
    drop_path_residual(x, branch, 0.5, True)  # default "auto": skips on the CPU
    assert seen[-1] < 64
    torch.func.grad(lambda t: drop_path_residual(t, branch, 0.5, True).sum())(x)
    assert seen[-1] == 64  # masked form inside torch.func


def test_rng_order_is_mask_first_then_branch(backend):
    """Documented order: skip mode draws the mask, then runs the branch on the
    kept samples (in order); a branch that draws random numbers sees the
    generator after the mask draw."""
    x = torch.randn(32, 4)

    def noisy(t):
        return t + torch.rand_like(t)

    torch.manual_seed(5)
    out = drop_path_residual(x, noisy, 0.5, True, skip_dropped=True)
    torch.manual_seed(5)
    factors = functional._backend.sample_factors(x, 0.5, True, 0, None, None)
    kept = factors.nonzero().squeeze(1)
    expected = x.clone()
    expected[kept] = x[kept] + noisy(x[kept]) * factors[kept].unsqueeze(1)
    assert torch.equal(out, expected)
    # the masked form (and timm) run the branch first, then draw
    torch.manual_seed(5)
    masked = drop_path_residual(x, noisy, 0.5, True, skip_dropped=False)
    torch.manual_seed(5)
    branch = noisy(x)
    factors = functional._backend.sample_factors(x, 0.5, True, 0, None, None)
    assert torch.equal(masked, x + branch * factors.unsqueeze(1))


def test_generator_is_honoured_in_skip_mode(backend):
    x = torch.randn(64, 3)
    a = drop_path_residual(x, _elementwise, 0.5, True, generator=torch.Generator().manual_seed(1), skip_dropped=True)
    b = drop_path_residual(x, _elementwise, 0.5, True, generator=torch.Generator().manual_seed(1), skip_dropped=False)
    assert torch.equal(a, b)
