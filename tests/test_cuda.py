"""CUDA-only behaviour (the shared suite also runs on "cuda" when a GPU is
present): CUDA graph capture and replay, streams, torch.cuda.manual_seed,
checkpoint replay, autocast. Skipped cleanly without a GPU."""

import math

import pytest
import torch
from torch.utils.checkpoint import checkpoint

import droppath_ext as dp
from droppath_ext import _library
from conftest import kept_mask, nonzero_input

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU"),
    pytest.mark.skipif(not _library.has_kernel("_scale_rows", "CUDA"), reason="built without CUDA kernels"),
]


def _captured(step):
    """``step`` warmed up on a side stream, then captured: (graph, its output)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = step()
    return graph, static_out


def _fraction_ok(kept, p):
    n = kept.numel()
    return abs((1 - kept.float().mean().item()) - p) < 6 * math.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize("fused", [False, True])
def test_cuda_graph_replay_draws_fresh_masks(fused):
    x = nonzero_input((4096, 8), device="cuda")
    r = nonzero_input((4096, 8), device="cuda")

    def step():
        return dp.drop_path_add(r, x, 0.5, True) - r if fused else dp.drop_path(x, 0.5, True)

    graph, static_out = _captured(step)
    masks = []
    for _ in range(6):
        graph.replay()
        torch.cuda.synchronize()
        kept = kept_mask(static_out)
        assert _fraction_ok(kept, 0.5)
        torch.testing.assert_close(static_out[kept], x[kept] * 2, rtol=1e-6, atol=1e-6)
        masks.append(kept.clone())
    assert any(not torch.equal(masks[0], m) for m in masks[1:]), "replays reused one mask"


def test_skip_mode_steps_aside_while_a_cuda_graph_is_captured():
    """A captured training step with skip mode asked for: the host-drawn mask
    would be captured once (every replay reusing it); the masked form runs
    instead, and every replay draws a fresh mask on the device."""
    fc = torch.nn.Linear(8, 8).cuda()
    x = nonzero_input((256, 8), device="cuda")
    seen = []

    def branch(t):
        seen.append(t.shape[0])
        return fc(t)

    def step():
        return dp.drop_path_residual(x, branch, 0.5, True, skip_dropped=True) - x

    step()
    assert seen[-1] < 256  # eager: skip mode
    graph, static_out = _captured(step)
    assert seen[-1] == 256  # captured: the masked form
    masks = []
    for _ in range(6):
        graph.replay()
        torch.cuda.synchronize()
        kept = kept_mask(static_out)
        assert _fraction_ok(kept, 0.5)
        masks.append(kept.clone())
    assert any(not torch.equal(masks[0], m) for m in masks[1:]), "replays reused one mask"


def test_non_default_stream_gives_the_same_result():
    x = nonzero_input((512, 33), device="cuda")
    torch.cuda.manual_seed(3)
    expected = dp.drop_path_add(x, x, 0.3, True)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        torch.cuda.manual_seed(3)
        got = dp.drop_path_add(x, x, 0.3, True)
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    assert torch.equal(got, expected)


def test_cuda_manual_seed_reproduces():
    x = nonzero_input((1024, 16), device="cuda")
    torch.cuda.manual_seed(11)
    a = dp.drop_path(x, 0.5, True)
    torch.cuda.manual_seed(11)
    b = dp.drop_path(x, 0.5, True)
    c = dp.drop_path(x, 0.5, True)
    assert torch.equal(a, b) and not torch.equal(b, c)


def test_checkpoint_on_cuda_gives_the_same_gradients():
    lin = torch.nn.Linear(16, 16).cuda()
    drop = dp.DropPath(0.5)

    def block(t):
        return t + drop(torch.relu(lin(t)))

    x = torch.randn(256, 16, device="cuda", requires_grad=True)
    torch.manual_seed(5)
    block(x).sum().backward()
    plain = x.grad.clone(), lin.weight.grad.clone()
    x.grad = None
    lin.zero_grad()
    torch.manual_seed(5)
    checkpoint(block, x, use_reentrant=False).sum().backward()
    torch.testing.assert_close(x.grad, plain[0])
    torch.testing.assert_close(lin.weight.grad, plain[1])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_keeps_the_half_dtype(dtype):
    lin = torch.nn.Linear(32, 32).cuda()
    x = torch.randn(64, 32, device="cuda", requires_grad=True)
    with torch.autocast("cuda", dtype=dtype):
        h = lin(x)
        out = dp.drop_path_add(h, h, 0.5, True)
        y = dp.drop_path(h, 0.5, True)
    assert h.dtype == dtype and out.dtype == dtype and y.dtype == dtype
    (out.float().sum() + y.float().sum()).backward()
    assert lin.weight.grad is not None


def test_unaligned_and_odd_sizes_take_the_scalar_path_correctly():
    base = nonzero_input((7 * 13 * 3 + 1,), device="cuda")
    x = base[1:].view(7, 13, 3)  # storage offset 1: not 16-byte aligned
    f = torch.tensor([0.0, 2.0, 1.0, 0.5, 0.0, 3.0, 1.5], device="cuda")
    torch.testing.assert_close(torch.ops.droppath._scale_rows(x, f), x * f.view(7, 1, 1), rtol=0, atol=0)


def test_tiny_drop_prob_still_drops_on_cuda():
    """1 - 2**-25 rounds to 1.0 in float32, where bernoulli_ would never drop:
    such draws are made in float64 on CUDA, as on the CPU. 2**28 samples at
    p = 2**-25: 8 drops expected, none with probability e**-8."""
    x = torch.empty(2**28, 0, device="cuda")
    factors = torch.ops.droppath._sample_factors(x, 2.0**-25, True)
    assert factors.dtype == torch.float32
    assert (factors == 0).sum().item() > 0


def test_masks_equal_timm_on_cuda_for_the_same_seed():
    timm_layers = pytest.importorskip("timm.layers")
    for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        x = torch.randn(4096, 8, device="cuda").to(dtype)
        torch.cuda.manual_seed(5)
        ours = dp.drop_path(x, 0.3, True)
        torch.cuda.manual_seed(5)
        theirs = timm_layers.drop_path(x, 0.3, True)
        assert torch.equal(ours != 0, theirs != 0), dtype
        if dtype in (torch.float32, torch.float64):
            assert torch.equal(ours, theirs), dtype


def test_skip_mode_on_cuda_draws_on_the_host_and_is_exact():
    from droppath_ext.residual import drop_path_residual

    x = torch.randn(256, 17, 32, device="cuda", requires_grad=True)
    seen = []

    def branch(t):
        seen.append(t.shape[0])
        return torch.sin(t) * 1.5

    torch.manual_seed(3)  # skip mode on CUDA draws from the CPU generator
    out = drop_path_residual(x, branch, 0.5, True, skip_dropped=True)
    out.sum().backward()
    grad_skip = x.grad.clone()
    torch.manual_seed(3)
    factors = torch.empty(256).bernoulli_(0.5).div_(0.5).cuda()
    expected = x + torch.sin(x) * 1.5 * factors.view(-1, 1, 1)
    kept = int((factors != 0).sum())
    assert seen[0] % 32 == 0 and kept <= seen[0] < kept + 32  # granule for batch 256
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    x.grad = None
    expected.sum().backward()
    torch.testing.assert_close(grad_skip, x.grad, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_row_gathering_ops_on_odd_layouts(dtype):
    x = nonzero_input((9, 5, 7), dtype, "cuda")
    index = torch.tensor([0, 3, 8, 4], device="cuda")
    rows = torch.full((9,), -1, device="cuda", dtype=torch.int64)
    rows[index] = torch.arange(4, device="cuda")
    taken = torch.ops.droppath._take_rows(x, index, rows, None, 0)
    assert torch.equal(taken, x[index])
    taken_t = torch.ops.droppath._take_rows(x.transpose(0, 1), index, rows, None, 1)
    assert torch.equal(taken_t, x.transpose(0, 1)[:, index])
    factors = torch.zeros(9, device="cuda")
    factors[index] = 2.0
    out = torch.ops.droppath._add_taken_rows(x, taken, factors, rows, index, 0)
    expected = x.float()
    expected[index] += x[index].float() * 2
    assert torch.equal(out, expected.to(dtype))


@pytest.mark.parametrize("mode", [None, "reduce-overhead"])
def test_compiled_skip_mode_on_cuda(mode):
    """One graph for every kept count; under reduce-overhead, CUDA graphs step
    aside for the data-dependent op (tagged cudagraph_unsafe) and training runs."""
    torch._dynamo.reset()
    block = torch.nn.Sequential(torch.nn.LayerNorm(16), torch.nn.Linear(16, 16)).cuda()

    def step(x):
        return dp.drop_path_residual(x, block, 0.5, True, skip_dropped=True)

    compiled = torch.compile(step, mode=mode)
    x = torch.randn(64, 16, device="cuda", requires_grad=True)
    for seed in range(6):
        torch.manual_seed(seed)
        out = compiled(x)
        out.sum().backward()
        torch.manual_seed(seed)
        torch.testing.assert_close(out, step(x), rtol=1e-5, atol=1e-5)
