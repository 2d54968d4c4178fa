"""Shape and memory estimation: every fused block, and the modules, trained
(forward and backward) under FakeTensorMode and on the meta device, where the
masked form runs (no mask values to read)."""

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import droppath_ext as dp
import small_models
from conftest import import_or_skip

timm = import_or_skip("timm")
torchvision = import_or_skip("torchvision")


def _models():
    return small_models.models(drop_path_rate=0.5)


@pytest.mark.parametrize("skip_dropped", [True, "auto", False])
@pytest.mark.parametrize("name", list(_models()))
def test_train_step_under_fake_tensors(backend, name, skip_dropped):
    model = dp.convert_model(_models()[name](), fuse_residual=True, skip_dropped=skip_dropped).train()
    with FakeTensorMode(allow_non_fake_inputs=True):
        out = model(torch.randn(8, 3, 32, 32))
        out.sum().backward()
    assert out.shape == (8, 10)
    assert all(p.grad is not None and p.grad.shape == p.shape for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", list(_models()))
def test_train_step_on_the_meta_device(backend, name):
    with torch.device("meta"):
        model = _models()[name]()
    model = dp.convert_model(model, fuse_residual=True, skip_dropped=True).train()
    out = model(torch.randn(8, 3, 32, 32, device="meta"))
    out.sum().backward()
    assert out.is_meta and out.shape == (8, 10)
    assert all(p.grad is not None and p.grad.is_meta for p in model.parameters() if p.requires_grad)
