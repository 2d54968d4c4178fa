"""Samples that are not dim 0: sequence-first tensors (batch_dim) and packed
variable-length sequences (cu_seqlens), on both backends."""

import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import droppath_ext as dp
from droppath_ext import _library, _reference, functional
from droppath_ext.residual import drop_path_residual
from conftest import DEVICES, nonzero_input, requires_compiled, subprocess_env


def _cu(lengths, device="cpu", dtype=torch.int64):
    offsets = [0]
    for n in lengths:
        offsets.append(offsets[-1] + n)
    return torch.tensor(offsets, dtype=dtype, device=device)


def _per_sample_loop(x, factors, dim, cu=None):
    """The definition, one sample at a time."""
    out = torch.empty_like(x)
    math_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    bounds = cu.tolist() if cu is not None else list(range(x.shape[dim] + 1))
    for s, f in enumerate(factors.tolist()):
        piece = x.narrow(dim, bounds[s], bounds[s + 1] - bounds[s])
        value = torch.zeros_like(piece) if f == 0 else (piece.to(math_dtype) * f).to(x.dtype)
        out.narrow(dim, bounds[s], bounds[s + 1] - bounds[s]).copy_(value)
    return out


def _dropped_per_sample(y, dim, cu=None):
    bounds = cu.tolist() if cu is not None else list(range(y.shape[dim] + 1))
    return torch.tensor([bool((y.narrow(dim, a, b - a) == 0).all()) for a, b in zip(bounds, bounds[1:])])


# --- batch_dim -----------------------------------------------------------------------


@pytest.mark.parametrize("batch_dim", [1, -2])
def test_sequence_first_drops_whole_samples(backend, device, dtype, batch_dim):
    x = nonzero_input((7, 64, 5), dtype, device)  # [seq, batch, hidden]
    torch.manual_seed(3)
    y = dp.drop_path(x, 0.5, True, batch_dim=batch_dim)
    torch.manual_seed(3)
    factors = functional._backend.sample_factors(x, 0.5, True, 1, None, None)
    assert torch.equal(y, _per_sample_loop(x, factors, 1))
    dropped = _dropped_per_sample(y, 1)
    assert 0 < dropped.sum() < 64
    # a dropped sample is zero at every position, a kept one nowhere
    kept_values = y.transpose(0, 1)[~dropped]
    assert (kept_values != 0).all()


def test_batch_dim_statistics_are_per_sample(backend, device):
    x = torch.ones(3, 20000, 2, device=device)
    y = dp.drop_path(x, 0.3, True, batch_dim=1)
    dropped = (y[0, :, 0] == 0).double()
    assert abs(dropped.mean().item() - 0.3) < 6 * math.sqrt(0.21 / 20000)
    assert torch.equal(y[1], y[0]) and torch.equal(y[2], y[0])  # one draw per sample


def test_batch_dim_last_and_channels_last(backend, device):
    x = nonzero_input((4, 6, 5, 3), device=device).contiguous(memory_format=torch.channels_last)
    for dim in (0, 1, 2, 3):
        torch.manual_seed(0)
        y = dp.drop_path(x, 0.5, True, batch_dim=dim)
        torch.manual_seed(0)
        factors = functional._backend.sample_factors(x, 0.5, True, dim, None, None)
        assert torch.equal(y, _per_sample_loop(x, factors, dim)), dim


def test_batch_dim_add_and_module(backend, device, dtype):
    r = nonzero_input((5, 32, 4), dtype, device)
    b = nonzero_input((5, 32, 4), dtype, device)
    torch.manual_seed(1)
    out = dp.drop_path_add(r, b, 0.5, True, batch_dim=1)
    torch.manual_seed(1)
    factors = functional._backend.sample_factors(b, 0.5, True, 1, None, None)
    assert torch.equal(out, _reference.add_rows(r, b, factors, 1))
    module = dp.DropPath(0.5, batch_dim=1)
    assert repr(module) == "DropPath(drop_prob=0.500, batch_dim=1)"
    torch.manual_seed(1)
    from_module = module.train()(b)
    torch.manual_seed(1)
    assert torch.equal(from_module, dp.drop_path(b, 0.5, True, batch_dim=1))


def test_batch_dim_edges(backend, device):
    x = nonzero_input((3, 4, 2), device=device)
    assert dp.drop_path(x, 0.0, True, batch_dim=1) is x
    assert dp.drop_path(x, 0.5, False, batch_dim=1) is x
    assert torch.equal(dp.drop_path(x, 1.0, True, batch_dim=1), torch.zeros_like(x))
    one = nonzero_input((3, 1, 2), device=device)
    y = dp.drop_path(one, 0.5, True, batch_dim=1)
    assert torch.equal(y, one * 2) or torch.equal(y, torch.zeros_like(one))
    for shape in [(3, 0, 2), (0, 4, 2), (3, 4, 0)]:
        empty = torch.empty(shape, device=device)
        assert dp.drop_path(empty, 0.5, True, batch_dim=1).shape == shape


def test_bad_batch_dim_is_index_error(backend):
    with pytest.raises(IndexError, match=r"batch_dim out of range .*got 3"):
        dp.drop_path(torch.randn(2, 3, 4), 0.5, True, batch_dim=3)
    with pytest.raises(IndexError, match="got -4"):
        dp.drop_path_add(torch.randn(2, 3, 4), torch.randn(2, 3, 4), 0.5, False, batch_dim=-4)


def test_batch_dim_gradients(backend, device):
    x = torch.randn(4, 5, 3, dtype=torch.float64, device=device, requires_grad=True)

    def fn(t):
        torch.manual_seed(0)
        return dp.drop_path(t, 0.4, True, batch_dim=1)

    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


# --- cu_seqlens ------------------------------------------------------------------------


def test_packed_batch_readme_example(backend, device):
    """Three sequences of lengths 5, 0 and 9 packed into 14 tokens."""
    x = nonzero_input((14, 8), device=device)
    cu = _cu([5, 0, 9], device, torch.int32)
    torch.manual_seed(2)
    y = dp.drop_path(x, 0.5, True, cu_seqlens=cu)
    torch.manual_seed(2)
    factors = functional._backend.sample_factors(x, 0.5, True, 0, cu, None)
    assert factors.shape == (3,)
    assert torch.equal(y, _per_sample_loop(x, factors, 0, cu))


@pytest.mark.parametrize("offsets_dtype", [torch.int32, torch.int64])
def test_packed_batch_equals_per_sample_loop(backend, device, dtype, offsets_dtype):
    lengths = [3, 0, 1, 7, 0, 4, 2]
    x = nonzero_input((sum(lengths), 6), dtype, device)
    cu = _cu(lengths, device, offsets_dtype)
    torch.manual_seed(5)
    y = dp.drop_path(x, 0.5, True, cu_seqlens=cu)
    torch.manual_seed(5)
    factors = functional._backend.sample_factors(x, 0.5, True, 0, cu, None)
    assert torch.equal(y, _per_sample_loop(x, factors, 0, cu))
    r = nonzero_input(x.shape, dtype, device)
    torch.manual_seed(5)
    out = dp.drop_path_add(r, x, 0.5, True, cu_seqlens=cu)
    assert torch.equal(out, _reference.add_rows(r, x, factors, 0, cu))


def test_packed_batch_statistics_are_per_sample(backend, device):
    lengths = [2, 3, 1] * 3000
    x = torch.ones(sum(lengths), 2, device=device)
    cu = _cu(lengths, device)
    y = dp.drop_path(x, 0.3, True, cu_seqlens=cu)
    dropped = _dropped_per_sample(y, 0, cu).double()
    assert abs(dropped.mean().item() - 0.3) < 6 * math.sqrt(0.21 / len(lengths))


def test_packed_along_a_sequence_first_dim(backend, device):
    x = nonzero_input((3, 10, 4), device=device)  # [heads, tokens, hidden], tokens packed
    cu = _cu([4, 6], device)
    torch.manual_seed(8)
    y = dp.drop_path(x, 0.5, True, batch_dim=1, cu_seqlens=cu)
    torch.manual_seed(8)
    factors = functional._backend.sample_factors(x, 0.5, True, 1, cu, None)
    assert torch.equal(y, _per_sample_loop(x, factors, 1, cu))


def test_packed_edges(backend, device):
    x = nonzero_input((6, 3), device=device)
    cu = _cu([6], device)
    assert dp.drop_path(x, 0.0, True, cu_seqlens=cu) is x
    assert torch.equal(dp.drop_path(x, 1.0, True, cu_seqlens=cu), torch.zeros_like(x))
    y = dp.drop_path(x, 0.5, True, cu_seqlens=cu)  # one sample: all or nothing
    assert torch.equal(y, x * 2) or torch.equal(y, torch.zeros_like(x))
    empty = torch.empty(0, 3, device=device)
    assert dp.drop_path(empty, 0.5, True, cu_seqlens=_cu([0, 0], device)).shape == (0, 3)
    assert dp.drop_path(empty, 0.5, True, cu_seqlens=torch.zeros(1, dtype=torch.int64, device=device)).shape == (0, 3)


@pytest.mark.parametrize(
    "cu, error, message",
    [
        (torch.tensor([0.0, 3.0]), TypeError, "cu_seqlens must be torch.int32 or torch.int64, got torch.float32"),
        (torch.tensor([[0, 3]]), ValueError, r"cu_seqlens must be 1-D, got shape \[1, 2\]"),
        (torch.tensor([], dtype=torch.int64), ValueError, "n \\+ 1 offsets"),
        (torch.tensor([1, 3]), ValueError, "cu_seqlens must start at 0, got 1"),
        (torch.tensor([0, 2, 1, 3]), ValueError, "non-decreasing, got 1 after 2 at index 2"),
        (torch.tensor([0, 2]), ValueError, r"must end at the size of the batch dimension \(3\), got 2"),
        (torch.tensor([0, 5]), ValueError, r"must end at the size of the batch dimension \(3\), got 5"),
        (torch.tensor([0, -1, 3]), ValueError, "non-decreasing, got -1 after 0"),
    ],
)
def test_bad_cu_seqlens_are_named(backend, device, cu, error, message):
    x = torch.randn(3, 2, device=device)
    with pytest.raises(error, match=message):
        dp.drop_path(x, 0.5, True, cu_seqlens=cu.to(device))
    with pytest.raises(error, match=message):
        dp.drop_path_add(x, x, 0.5, True, cu_seqlens=cu.to(device))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cu_seqlens_on_another_device(backend):
    x = torch.randn(3, 2, device="cuda")
    with pytest.raises(ValueError, match="cu_seqlens must be on the input's device"):
        dp.drop_path(x, 0.5, True, cu_seqlens=torch.tensor([0, 3]))


def test_cu_seqlens_modified_in_place_is_checked_again(backend, device):
    x = torch.randn(3, 2, device=device)
    cu = torch.tensor([0, 1, 3], device=device)
    dp.drop_path(x, 0.5, True, cu_seqlens=cu)
    cu[1] = 4
    with pytest.raises(ValueError, match="non-decreasing"):
        dp.drop_path(x, 0.5, True, cu_seqlens=cu)


def test_packed_gradients(backend, device):
    x = torch.randn(9, 3, dtype=torch.float64, device=device, requires_grad=True)
    cu = _cu([2, 0, 4, 3], device)

    def fn(t):
        torch.manual_seed(1)
        return dp.drop_path(t, 0.5, True, cu_seqlens=cu)

    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))
    f = torch.tensor([0.7, 1.5, 2.0, 0.5], dtype=torch.float64, device=device, requires_grad=True)
    impl = functional._backend
    assert torch.autograd.gradcheck(lambda t, g: impl.scale_rows(t, g, 0, cu), (x, f))
    r = torch.randn_like(x, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, g: impl.add_rows(a, b, g, 0, cu), (r, x, f))


# --- drop_path_residual with batch_dim -------------------------------------------------------


@pytest.mark.parametrize("skip_dropped", [True, False])
def test_residual_along_batch_dim(backend, skip_dropped):
    x = nonzero_input((5, 40, 6))  # [seq, batch, hidden]
    seen = []

    def branch(t):
        seen.append(t.shape[1])
        return torch.tanh(t) * 3

    torch.manual_seed(4)
    out = drop_path_residual(x, branch, 0.5, True, batch_dim=1, skip_dropped=skip_dropped)
    torch.manual_seed(4)
    factors = functional._backend.sample_factors(x, 0.5, True, 1, None, None)
    assert torch.equal(out, _reference.add_rows(x, torch.tanh(x) * 3, factors, 1))
    kept = int((factors != 0).sum())
    assert seen == ([kept] if skip_dropped else [40])


def test_residual_rejects_cu_seqlens(backend):
    with pytest.raises(ValueError, match="does not take cu_seqlens"):
        drop_path_residual(torch.randn(4, 2), lambda t: t, 0.5, True, cu_seqlens=_cu([4]))


# --- compiled paths: opcheck, TorchScript, torch.compile, torch.export ---------------------


@requires_compiled()
@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_batch_dim_and_cu_seqlens(device):
    x = torch.randn(5, 9, 3, device=device, requires_grad=True)
    r = torch.randn(5, 9, 3, device=device, requires_grad=True)
    cu = _cu([2, 0, 4, 3], device)
    factors = torch.tensor([0.0, 2.0, 1.0, 0.5], device=device)
    for args in [(factors, 1, cu), (torch.tensor([0.0, 2.0, 1.0, 0.5, 3.0], device=device), 0, None),
                 (torch.tensor([1.5, 0.0, 2.0], device=device), -1, None)]:
        torch.library.opcheck(torch.ops.droppath._scale_rows.default, (x, *args))
        torch.library.opcheck(torch.ops.droppath._add_rows.default, (r, x, *args))
    for kwargs in [dict(batch_dim=1), dict(batch_dim=1, cu_seqlens=cu)]:
        torch.library.opcheck(torch.ops.droppath.forward.default, (x, 1.0, True, True), kwargs)
        torch.library.opcheck(torch.ops.droppath.add.default, (r, x, 0.0, True, True), kwargs)


class _SeqFirstBlock(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(8, 8)
        self.drop = dp.DropPath(0.5, batch_dim=1)

    def forward(self, x, cu):
        x = x + self.drop(torch.relu(self.fc(x)))
        return dp.drop_path_add(x, self.fc(x), 0.5, self.training, cu_seqlens=cu, batch_dim=1)


def test_compile_fullgraph_both_keywords(backend):
    torch._dynamo.reset()
    block = _SeqFirstBlock().train()
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    x = torch.randn(6, 12, 8)
    cu = _cu([3, 0, 5, 4])
    out = compiled(x, cu)
    out.sum().backward()
    assert out.shape == x.shape and block.fc.weight.grad is not None
    block.eval()
    torch.testing.assert_close(compiled(x, cu), block(x, cu))


def test_export_both_keywords(backend):
    block = _SeqFirstBlock().train()
    x, cu = torch.randn(6, 12, 8), _cu([3, 0, 5, 4])
    exported = torch.export.export(block, (x, cu))
    if backend == "compiled":
        targets = {str(n.target) for n in exported.graph.nodes if n.op == "call_function"}
        assert any("droppath" in t for t in targets), targets
    assert exported.module()(x, cu).shape == x.shape


_SCRIPT = textwrap.dedent(
    """
    import sys
    import torch
    import droppath_ext as dp

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(4, 4)
            self.drop = dp.DropPath(0.5, batch_dim=1)

        def forward(self, x, cu):
            x = x + self.drop(self.fc(x))
            y = dp.drop_path(x, 0.5, self.training, batch_dim=1, cu_seqlens=cu)
            return dp.drop_path_add(x, y, 0.3, self.training, batch_dim=-2)

    if sys.argv[1] == "save":
        scripted = torch.jit.script(Net())
        kinds = {n.kind() for n in scripted.inlined_graph.nodes()}
        assert {"droppath::forward", "droppath::add"} <= kinds, kinds
        scripted.save(sys.argv[2])
    else:
        model = torch.jit.load(sys.argv[2])
        model.train()
        x, cu = torch.randn(3, 10, 4), torch.tensor([0, 4, 4, 10], dtype=torch.int32)
        out = model(x, cu)
        out.square().mean().backward()
        assert all(p.grad is not None for p in model.parameters())
        model.eval()
        torch.testing.assert_close(model(x, cu), model(x, cu))
        print("ok")
    """
)


@pytest.mark.slow  # (a fresh process; test_torchscript loads scripted models in one by default)
@requires_compiled()
def test_script_save_load_fresh_process_both_keywords(tmp_path):
    script = tmp_path / "net.py"
    script.write_text(_SCRIPT)
    path = str(tmp_path / "net.pt")
    for mode in ("save", "load"):
        result = subprocess.run([sys.executable, str(script), mode, path], capture_output=True,
                                text=True, timeout=300, env=subprocess_env(), cwd=str(tmp_path))
        assert result.returncode == 0, result.stderr[-3000:]
    assert "ok" in result.stdout


@requires_compiled()
def test_library_was_built_for_both_keywords():
    schema = str(torch.ops.droppath.forward.default._schema)
    assert "int batch_dim=0" in schema and "Tensor? cu_seqlens=None" in schema
    assert _library.LOADED
