"""convert_model on real timm and torchvision models (no pretrained weights)."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import droppath_ext as dp
from droppath_ext._fused_block import FusedBlock
from droppath_ext.convert import convert_model
from conftest import import_or_skip, subprocess_env

timm = import_or_skip("timm")
torchvision = import_or_skip("torchvision")


def _vit(rate=0.4):
    return timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, drop_path_rate=rate, img_size=32, patch_size=8, depth=4
    )


def _count(model, cls):
    return sum(isinstance(m, cls) for m in model.modules())


def test_replaces_every_timm_drop_path_with_same_settings():
    model = _vit()
    originals = {n: m.drop_prob for n, m in model.named_modules() if type(m).__name__ == "DropPath"}
    converted, report = convert_model(model, return_report=True)
    ours = {n: m.drop_prob for n, m in converted.named_modules() if isinstance(m, dp.DropPath)}
    assert ours == originals and len(ours) == 6  # blocks 1..3 (block 0 has rate 0: Identity)
    assert sorted(report.replaced) == sorted(originals)


def test_replaces_torchvision_stochastic_depth():
    model = torchvision.models.convnext_tiny(stochastic_depth_prob=0.2)
    n = sum(type(m).__name__ == "StochasticDepth" for m in model.modules())
    convert_model(model)
    assert _count(model, dp.StochasticDepth) == n > 0
    # Still torchvision's modules (converted in place: a subclass of theirs and of this package's).
    assert _count(model, torchvision.ops.StochasticDepth) == n


def _torchvision_small_convnext(rate):
    """torchvision's ConvNeXt (CNBlock) at a test-friendly width and depth."""
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt

    return ConvNeXt([CNBlockConfig(16, 32, 2), CNBlockConfig(32, None, 2)], stochastic_depth_prob=rate,
                    num_classes=10)


MODELS = {
    "timm_vit": _vit,
    "timm_convnext": lambda rate: timm.create_model("convnext_atto", pretrained=False, drop_path_rate=rate),
    "timm_convnextv2": lambda rate: timm.create_model("convnextv2_atto", pretrained=False, drop_path_rate=rate),
    "torchvision_convnext": lambda rate: torchvision.models.convnext_tiny(stochastic_depth_prob=rate),
    "torchvision_small_convnext": _torchvision_small_convnext,
}


@pytest.mark.parametrize(
    "name, rate, shape",
    [("timm_vit", 0.4, (2, 3, 32, 32)), ("timm_convnext", 0.3, (2, 3, 64, 64)),
     ("torchvision_convnext", 0.3, (2, 3, 64, 64))],
)
@pytest.mark.parametrize("fuse", [False, True])
def test_eval_outputs_equal_the_original(name, rate, shape, fuse):
    torch.manual_seed(0)
    original = MODELS[name](rate).eval()
    x = torch.randn(shape)
    with torch.no_grad():
        expected = original(x)
    converted, report = convert_model(original, fuse_residual=fuse, return_report=True)
    with torch.no_grad():
        got = converted.eval()(x)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    if fuse:
        assert report.fused and not report.unfused


@pytest.mark.parametrize(
    "name, rate, shape",
    [("timm_vit", 0.4, (32, 3, 32, 32)), ("timm_convnext", 0.5, (16, 3, 32, 32)),
     pytest.param("torchvision_convnext", 0.5, (16, 3, 32, 32), marks=pytest.mark.slow)],
)
def test_fused_training_equals_masked_training_for_the_same_seed(name, rate, shape):
    torch.manual_seed(0)
    masked = convert_model(MODELS[name](rate), fuse_residual=True, skip_dropped=False).train()
    skipping = convert_model(MODELS[name](rate), fuse_residual=True).train()
    skipping.load_state_dict(masked.state_dict())
    x = torch.randn(shape)
    torch.manual_seed(5)
    a = masked(x)
    a.float().pow(2).mean().backward()
    torch.manual_seed(5)
    b = skipping(x)
    b.float().pow(2).mean().backward()
    torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
    for (name, pa), pb in zip(masked.named_parameters(), skipping.parameters()):
        if pa.grad is None:
            assert pb.grad is None, name
        else:
            torch.testing.assert_close(pb.grad, pa.grad, rtol=1e-3, atol=1e-5, msg=name)


def test_fused_vit_block_skips_dropped_samples_compute():
    # skip_dropped=True: skip mode even with the hook that counts the rows (with "auto", a hook inside
    # the block makes it run the stock forward, so that the hook sees the whole batch).
    model = convert_model(_vit(rate=0.9), fuse_residual=True, skip_dropped=True).train()
    block = model.blocks[3]  # rate 0.9 under timm's linear schedule
    seen = []
    block.mlp.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0]))
    model(torch.randn(64, 3, 32, 32))
    assert seen and seen[0] < 32


_LOAD_AND_TRAIN = textwrap.dedent(
    """
    import sys
    import torch
    import droppath_ext

    model = torch.jit.load(sys.argv[1])
    x, expected = torch.load(sys.argv[2]), torch.load(sys.argv[3])
    model.eval()
    assert torch.equal(model(x), expected), "eval output differs after save/load"
    model.train()
    torch.manual_seed(0)
    model(x).square().mean().backward()
    assert any(p.grad is not None for p in model.parameters())
    assert "droppath::forward" in str(model.inlined_graph)  # (the stock forward, on this package's op)
    print("ok")
    """
)


@pytest.mark.parametrize(
    "name, shape, fused_class",
    [("timm_vit", (4, 3, 32, 32), "Block")] +
    [pytest.param(*case, marks=pytest.mark.slow) for case in (
        ("timm_convnext", (2, 3, 32, 32), "ConvNeXtBlock"),
        ("timm_convnextv2", (2, 3, 32, 32), "ConvNeXtBlock"),
        ("torchvision_small_convnext", (2, 3, 32, 32), "CNBlock"))],
)
def test_every_fused_block_scripts_saves_and_loads_in_a_fresh_process(name, shape, fused_class, tmp_path):
    if not dp.backend().startswith("cpu"):
        pytest.skip("scripting to droppath ops needs the compiled ops")
    torch.manual_seed(0)
    model, report = convert_model(MODELS[name](0.3), fuse_residual=True, return_report=True)
    assert report.fused and {type(m).__name__ for m in model.modules() if isinstance(m, FusedBlock)} == {fused_class}
    scripted = torch.jit.script(model)
    x = torch.randn(shape)
    model.eval()
    scripted.eval()
    expected = model(x)
    assert torch.equal(scripted(x), expected)
    paths = [str(tmp_path / n) for n in ("model.pt", "x.pt", "expected.pt")]
    scripted.save(paths[0])
    torch.save(x, paths[1])
    torch.save(expected.detach(), paths[2])
    script = tmp_path / "load.py"
    script.write_text(_LOAD_AND_TRAIN)
    result = subprocess.run([sys.executable, str(script), *paths], capture_output=True, text=True,
                            timeout=600, env=subprocess_env(), cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ok" in result.stdout


@pytest.mark.parametrize("name, shape", [("timm_vit", (32, 3, 32, 32)), ("timm_convnext", (16, 3, 32, 32)),
                                         ("torchvision_small_convnext", (16, 3, 32, 32))])
@pytest.mark.parametrize("scripted", [False, True])
def test_fused_blocks_follow_a_drop_rate_schedule(name, shape, scripted):
    """Setting drop_prob on the stochastic-depth modules (a schedule) acts on
    fused blocks, in eager mode and under TorchScript."""
    torch.manual_seed(0)
    model = convert_model(MODELS[name](0.3), fuse_residual=True).train()
    runner = torch.jit.script(model) if scripted else model
    x = torch.randn(shape)

    def set_rate(rate):
        for module in (runner.modules() if scripted else model.modules()):
            if isinstance(module, (dp.DropPath,)) or getattr(module, "original_name", "") == "DropPath":
                module.drop_prob = rate
            if isinstance(module, dp.StochasticDepth) or getattr(module, "original_name", "") == "StochasticDepth":
                module.p = rate

    set_rate(0.0)
    runner.eval()
    eval_out = runner(x)
    runner.train()
    assert torch.equal(runner(x), eval_out)  # rate 0: training output is the eval output
    set_rate(1.0)
    torch.manual_seed(0)
    every_drop = runner(x)
    assert not torch.equal(every_drop, eval_out)  # rate 1: every branch dropped


def test_unknown_blocks_are_reported_and_left_alone(caplog):
    class Custom(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(4, 4)
            self.drop = timm.layers.DropPath(0.2)

        def forward(self, x):  # (not a residual: generic fusion finds nothing to rewrite)
            return torch.cat([x, self.drop(self.fc(x))], dim=1)

    model = torch.nn.Sequential(Custom())
    with caplog.at_level("INFO", logger="droppath_ext"):
        _, report = convert_model(model, fuse_residual=True, return_report=True)
    assert report.unfused == ["0"]
    assert report.reasons["0"] == "Custom.forward: no `res + drop_path(branch)` residual found"
    assert isinstance(model[0].drop, dp.DropPath)
    assert "left '0' as it is: Custom.forward: no `res + drop_path(branch)` residual found" in caplog.text


def test_batchnorm_branch_is_not_fused():
    block = torchvision.models.convnext_tiny(stochastic_depth_prob=0.2).features[1][0]
    block.block.append(torch.nn.BatchNorm2d(96))
    _, report = convert_model(torch.nn.Sequential(block), fuse_residual=True, return_report=True)
    assert report.unfused == ["0"] and not report.fused
    assert "BatchNorm" in report.reasons["0"]


def test_converting_twice_keeps_blocks_fused_and_updates_the_policy():
    model, first = convert_model(_vit(), fuse_residual=True, return_report=True)
    model, second = convert_model(model, fuse_residual=True, skip_dropped=False, return_report=True)
    assert second.fused == first.fused and not second.unfused
    fused = [block for block in model.blocks if isinstance(block, FusedBlock)]
    assert len(fused) == 3 and all(block.droppath_skip is False for block in fused)  # (block 0's rate is 0)
