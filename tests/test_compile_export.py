"""torch.compile (fullgraph, no graph breaks) and torch.export of a residual block in train mode."""

import pytest
import torch

import droppath_ext as dp
from droppath_ext import _library


class _Block(torch.nn.Module):
    def __init__(self, drop_prob=0.5, fused=False):
        super().__init__()
        self.fc = torch.nn.Linear(16, 16)
        self.drop_prob = drop_prob
        self.fused = fused
        self.drop = dp.DropPath(drop_prob)

    def forward(self, x):
        branch = torch.tanh(self.fc(x))
        if self.fused:
            return dp.drop_path_add(x, branch, self.drop_prob, self.training)
        return x + self.drop(branch)


def _check_per_sample(block, x, out, drop_prob=0.5):
    """Every sample is x (dropped) or x + branch / keep (kept), and both occur."""
    with torch.no_grad():
        branch = torch.tanh(block.fc(x))
        dropped = (out - x).abs().amax(dim=1) == 0
        kept = ~dropped
        assert dropped.any() and kept.any()
        torch.testing.assert_close(out[kept], x[kept] + branch[kept] / (1 - drop_prob), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("compile_backend", ["aot_eager", "inductor"])
def test_compile_fullgraph_train_mode(backend, fused, compile_backend):
    torch._dynamo.reset()
    block = _Block(fused=fused).train()
    compiled = torch.compile(block, fullgraph=True, backend=compile_backend)
    x = torch.randn(64, 16)
    out = compiled(x)
    _check_per_sample(block, x, out.detach())
    out.sum().backward()
    assert block.fc.weight.grad is not None


def test_compile_dynamic_batch_does_not_recompile(backend):
    torch._dynamo.reset()
    block = _Block().train()
    counter = torch._dynamo.testing.CompileCounter()
    compiled = torch.compile(block, fullgraph=True, backend=counter, dynamic=True)
    for batch in (32, 48, 64):
        out = compiled(torch.randn(batch, 16))
        assert out.shape == (batch, 16)
    assert counter.frame_count == 1


def test_compile_same_seed_same_result_as_eager(backend):
    torch._dynamo.reset()
    block = _Block().train()
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    x = torch.randn(64, 16)
    torch.manual_seed(9)
    eager = block(x)
    torch.manual_seed(9)
    torch.testing.assert_close(compiled(x), eager)


@pytest.mark.parametrize("fused", [False, True])
def test_export_train_mode_block(backend, fused):
    block = _Block(fused=fused).train()
    x = torch.randn(64, 16)
    batch = torch.export.Dim("batch", min=2)
    exported = torch.export.export(block, (x,), dynamic_shapes=({0: batch},))
    targets = {str(n.target) for n in exported.graph.nodes if n.op == "call_function"}
    if backend == "compiled":
        assert any("droppath" in t for t in targets), targets
    module = exported.module()
    _check_per_sample(block, x, module(x).detach())
    assert module(torch.randn(40, 16)).shape == (40, 16)


@pytest.mark.skipif(not _library.LOADED, reason="needs the compiled ops")
def test_export_eval_mode_is_identity_branch_free():
    block = _Block().eval()
    exported = torch.export.export(block, (torch.randn(8, 16),))
    x = torch.randn(8, 16)
    torch.testing.assert_close(exported.module()(x), block(x))


class _LayerScaleBlock(torch.nn.Module):
    """A residual branch with layer scale, as in a ViT block: Inductor should fuse
    the scale, the drop factor and the residual add into one pointwise kernel."""

    def __init__(self, fused):
        super().__init__()
        self.fc = torch.nn.Linear(16, 16)
        self.gamma = torch.nn.Parameter(torch.full((16,), 0.1))
        self.fused = fused
        self.drop = dp.DropPath(0.4)

    def forward(self, x):
        branch = self.fc(x) * self.gamma
        if self.fused:
            return dp.drop_path_add(x, branch, 0.4, self.training, batch_dim=0)
        return x + self.drop(branch)


@pytest.mark.skipif(not _library.LOADED, reason="the decomposition is of the compiled ops")
@pytest.mark.parametrize("fused", [False, True])
def test_inductor_fuses_the_ops_instead_of_calling_them(fused):
    """Under Inductor _scale_rows / _add_rows are decomposed into pointwise
    ops: the generated code (forward and backward) calls no droppath kernel."""
    from torch._inductor.utils import run_and_get_code

    torch._dynamo.reset()
    block = _LayerScaleBlock(fused).train()
    compiled = torch.compile(block, fullgraph=True, backend="inductor")
    x = torch.randn(64, 16, requires_grad=True)

    def step():
        out = compiled(x)
        out.sum().backward()
        return out

    # Inductor's on-disk caches would replay code compiled in another process.
    with torch._inductor.config.patch(fx_graph_cache=False, fx_graph_remote_cache=False), \
            torch._functorch.config.patch(enable_autograd_cache=False):
        out, code = run_and_get_code(step)
    text = "\n".join(code)
    assert "torch.ops.droppath" not in text and "droppath._scale_rows(" not in text
    assert "droppath._add_rows(" not in text
    _check_layer_scale(block, x.detach(), out.detach())


def _check_layer_scale(block, x, out):
    with torch.no_grad():
        branch = block.fc(x) * block.gamma
        dropped = (out - x).abs().amax(dim=1) == 0
        assert dropped.any() and (~dropped).any()
        torch.testing.assert_close(out[~dropped], x[~dropped] + branch[~dropped] / 0.6, rtol=1e-5, atol=1e-5)
