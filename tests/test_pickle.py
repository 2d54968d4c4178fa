"""Converted models pickle as stock ones do: torch.save(model) and a load in a
fresh process, copy.deepcopy, pickle of a single fused block."""

import copy
import pickle
import subprocess
import sys
import textwrap

import pytest
import torch

import droppath_ext as dp
import small_models
from conftest import import_or_skip, subprocess_env

timm = import_or_skip("timm")
torchvision = import_or_skip("torchvision")


FUSED_MODELS = ["timm_vit", "timm_convnext", "timm_convnextv2", "torchvision_convnext"]


def _models():
    return small_models.models()


@pytest.mark.parametrize("name", [n if n == "timm_vit" else
                                  pytest.param(n, marks=pytest.mark.slow) for n in FUSED_MODELS])
def test_torch_save_of_a_fused_model_loads_in_a_fresh_process(name, tmp_path):
    torch.manual_seed(0)
    model, report = dp.convert_model(_models()[name](), fuse_residual=True, skip_dropped=False,
                                     return_report=True)
    assert report.fused
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    torch.save(model, tmp_path / "model.pt")
    torch.save((x, model(x).detach()), tmp_path / "data.pt")
    script = textwrap.dedent(
        f"""
        import torch
        model = torch.load({str(tmp_path / 'model.pt')!r}, weights_only=False)
        x, expected = torch.load({str(tmp_path / 'data.pt')!r})
        assert torch.equal(model(x), expected)
        from droppath_ext._fused_block import FusedBlock
        fused = [type(m).__name__ for m in model.modules() if isinstance(m, FusedBlock)]
        assert fused, "the fused blocks came back as fused blocks"
        assert all(type(m).__name__ == type(m)._droppath_stock_class.__name__ for m in model.modules()
                   if isinstance(m, FusedBlock)), "with their own class names"
        assert {{m.droppath_skip for m in model.modules() if hasattr(m, "droppath_skip")}} == {{False}}
        model.train()
        torch.manual_seed(0)
        model(x).sum().backward()
        print("ok", len(fused))
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            env=subprocess_env(), cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ok" in result.stdout


@pytest.mark.parametrize("name", [n if n in ("timm_vit", "torchvision_convnext") else
                                  pytest.param(n, marks=pytest.mark.slow) for n in FUSED_MODELS])
def test_deepcopy_and_pickle_keep_fused_blocks_working(name):
    torch.manual_seed(0)
    model = dp.convert_model(_models()[name](), fuse_residual=True).train()
    x = torch.randn(4, 3, 32, 32)
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert [type(m) for m in clone.modules()] == [type(m) for m in model.modules()]
        for a, b in zip(model.parameters(), clone.parameters()):
            assert torch.equal(a, b) and a.data_ptr() != b.data_ptr()
        torch.manual_seed(1)
        want = model(x)
        torch.manual_seed(1)
        torch.testing.assert_close(clone(x), want)
