"""PyTorch's function transforms on both backends: torch.func.grad, vjp,
jacrev, jacfwd, vmap (randomness error / same / different), forward-mode AD
(jvp, make_dual) -- for drop_path, drop_path_add, DropPath, converted models."""

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch.func import functional_call, grad, jacfwd, jacrev, jvp, vjp, vmap

import droppath_ext as dp
from droppath_ext import functional
from conftest import import_or_skip, kept_mask


def _factors(x, p=0.5, seed=0, batch_dim=0):
    torch.manual_seed(seed)
    return functional._backend.sample_factors(x, p, True, batch_dim, None, None)


def _scale(t, factors):
    return t * factors.reshape((-1,) + (1,) * (t.dim() - 1)).to(t.dtype)


def test_grad_and_vjp_of_drop_path(backend):
    x = torch.randn(8, 3, dtype=torch.float64)
    factors = _factors(x)

    def loss(t):
        torch.manual_seed(0)
        return (dp.drop_path(t, 0.5, True) * torch.arange(3.0, dtype=t.dtype)).sum()

    expected = _scale(torch.arange(3.0, dtype=x.dtype).expand(8, 3), factors)
    assert torch.equal(grad(loss)(x), expected)
    torch.manual_seed(0)
    out, pullback = vjp(lambda t: dp.drop_path(t, 0.5, True), x)
    assert torch.equal(out, _scale(x, factors))
    assert torch.equal(pullback(torch.ones_like(x))[0], _scale(torch.ones_like(x), factors))


def test_grad_of_drop_path_add_for_both_inputs(backend):
    r, b = torch.randn(8, 3, dtype=torch.float64), torch.randn(8, 3, dtype=torch.float64)
    factors = _factors(b, seed=1)

    def loss(r_, b_):
        torch.manual_seed(1)
        return dp.drop_path_add(r_, b_, 0.5, True).square().sum()

    gr, gb = grad(loss, argnums=(0, 1))(r, b)
    out = r + _scale(b, factors)
    assert torch.allclose(gr, 2 * out) and torch.allclose(gb, _scale(2 * out, factors))


def test_jacrev_and_jacfwd_agree(backend):
    x = torch.randn(5, 2, dtype=torch.float64)

    def fn(t):
        torch.manual_seed(2)
        return dp.drop_path(t, 0.4, True)

    rev, fwd = jacrev(fn)(x), jacfwd(fn, randomness="same")(x)
    assert torch.equal(rev, fwd)
    assert rev.shape == (5, 2, 5, 2)


def test_forward_mode_jvp_and_make_dual(backend):
    x, tangent = torch.randn(8, 4, dtype=torch.float64), torch.randn(8, 4, dtype=torch.float64)
    factors = _factors(x, seed=3)
    torch.manual_seed(3)
    out, out_tangent = jvp(lambda t: dp.drop_path(t, 0.5, True), (x,), (tangent,))
    assert torch.equal(out_tangent, _scale(tangent, factors))
    r = torch.randn_like(x)
    with fwAD.dual_level():
        dual = fwAD.make_dual(x, tangent)
        torch.manual_seed(3)
        y = fwAD.unpack_dual(dp.drop_path_add(r, dual, 0.5, True))
        assert torch.equal(y.tangent, _scale(tangent, factors))
        dual_r = fwAD.make_dual(r, tangent)
        torch.manual_seed(3)
        y = fwAD.unpack_dual(dp.drop_path_add(dual_r, dual, 0.5, True))
        assert torch.allclose(y.tangent, tangent + _scale(tangent, factors))


def test_gradcheck_forward_mode_and_batched(backend):
    """The deterministic ops (the random draw cannot be re-run under gradcheck's own vmap)."""
    impl = functional._backend
    x = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    r = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    f = torch.tensor([0.0, 2.0, 1.0, 0.5, 0.0, 1.25], dtype=torch.float64)
    checks = dict(check_forward_ad=True, check_batched_grad=True, check_batched_forward_grad=True)
    assert torch.autograd.gradcheck(lambda a: impl.scale_rows(a, f, 0, None), (x,), **checks)
    assert torch.autograd.gradcheck(lambda a, b: impl.add_rows(a, b, f, 0, None), (r, x), **checks)
    cu = torch.tensor([0, 2, 2, 6])
    f3 = f[:3]
    assert torch.autograd.gradcheck(lambda a: impl.scale_rows(a, f3, 0, cu), (x,), **checks)
    assert torch.autograd.gradcheck(lambda a: impl.scale_rows(a, f[:3], 1, None), (x,), **checks)


def test_vmap_error_mode_raises_like_aten_dropout(backend):
    xs = torch.randn(4, 6, 3)
    with pytest.raises(RuntimeError, match="randomness"):
        vmap(lambda t: torch.nn.functional.dropout(t, 0.5, True))(xs)  # ATen's behaviour ...
    with pytest.raises(RuntimeError, match="randomness"):
        vmap(lambda t: dp.drop_path(t, 0.5, True))(xs)  # ... and ours
    with pytest.raises(RuntimeError, match="randomness"):
        vmap(lambda t: dp.drop_path_add(t, t, 0.5, True))(xs)
    # eval mode draws nothing: no error
    assert torch.equal(vmap(lambda t: dp.drop_path(t, 0.5, False))(xs), xs)


def test_vmap_randomness_different_and_same(backend):
    xs = torch.ones(16, 64, 3)
    different = vmap(lambda t: dp.drop_path(t, 0.5, True), randomness="different")(xs)
    masks = [kept_mask(d) for d in different]
    assert any(not torch.equal(masks[0], m) for m in masks[1:])
    for d, m in zip(different, masks):
        assert torch.equal(d[m], torch.full_like(d[m], 2.0)) and torch.equal(d[~m], torch.zeros_like(d[~m]))
    same = vmap(lambda t: dp.drop_path(t, 0.5, True), randomness="same")(xs)
    assert all(torch.equal(same[0], s) for s in same[1:])
    same_add = vmap(lambda t: dp.drop_path_add(t, t, 0.5, True), randomness="same")(xs)
    assert all(torch.equal(same_add[0], s) for s in same_add[1:])


def test_vmap_over_a_second_batch_dim(backend):
    xs = torch.randn(3, 5, 8, 2)  # vmapped over dim 0, samples along dim 1 of each slice
    out = vmap(lambda t: dp.drop_path(t, 0.5, True, batch_dim=1), randomness="same")(xs)
    torch.manual_seed(0)
    for v in range(3):
        mask = (out[v] != 0).any(dim=(0, 2))
        assert torch.equal(mask, (out[0] != 0).any(dim=(0, 2)))


def test_per_sample_gradients_opacus_style(backend):
    """vmap(grad(loss), randomness="different") over a model with DropPath:
    each example gets its own gradient, with its own drop."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), dp.DropPath(0.5), torch.nn.Linear(4, 2)).train()
    params = {k: v.detach() for k, v in model.named_parameters()}
    xs, ys = torch.randn(32, 4), torch.randint(0, 2, (32,))

    def loss(p, x, y):
        out = functional_call(model, p, (x.unsqueeze(0),))
        return torch.nn.functional.cross_entropy(out, y.unsqueeze(0))

    grads = vmap(grad(loss), in_dims=(None, 0, 0), randomness="different")(params, xs, ys)
    first = grads["0.weight"].flatten(1)
    dropped = (first == 0).all(dim=1)
    assert 0 < dropped.sum() < 32  # some examples' first layer got no gradient: dropped
    with pytest.raises(RuntimeError, match="randomness"):
        vmap(grad(loss), in_dims=(None, 0, 0))(params, xs, ys)


def test_converted_model_under_torch_func(backend):
    timm = import_or_skip("timm")
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=16, patch_size=8, depth=2,
                              drop_path_rate=0.5, num_classes=3)
    model = dp.convert_model(model, fuse_residual=True).train()
    params = {k: v.detach() for k, v in model.named_parameters()}
    xs, ys = torch.randn(4, 3, 16, 16), torch.randint(0, 3, (4,))

    def loss(p, x, y):
        return torch.nn.functional.cross_entropy(functional_call(model, p, (x.unsqueeze(0),)), y.unsqueeze(0))

    grads = vmap(grad(loss), in_dims=(None, 0, 0), randomness="different")(params, xs, ys)
    assert all(g.shape[0] == 4 and torch.isfinite(g).all() for g in grads.values())
    torch.manual_seed(1)
    whole = grad(lambda p: loss(p, xs[0], ys[0]))(params)
    assert set(whole) == set(params)
