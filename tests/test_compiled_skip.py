"""Skip mode under torch.compile: the branch runs on the kept samples inside
one compiled graph (the count of rows an unbacked size), no recompilation as
the count changes, fullgraph=True, dynamic batch sizes; the same result as the
compiled masked form for the same seed."""

import pytest
import torch

import droppath_ext as dp
from droppath_ext.residual import drop_path_residual
from conftest import import_or_skip


class _Block(torch.nn.Module):
    """A pre-norm residual block with an MLP branch."""

    def __init__(self, dim=16, drop_prob=0.5, skip_dropped=True):
        super().__init__()
        self.norm = torch.nn.LayerNorm(dim)
        self.fc1 = torch.nn.Linear(dim, 2 * dim)
        self.fc2 = torch.nn.Linear(2 * dim, dim)
        self.drop_prob, self.skip_dropped = drop_prob, skip_dropped

    def branch(self, x):
        return self.fc2(torch.nn.functional.gelu(self.fc1(self.norm(x))))

    def forward(self, x):
        x = drop_path_residual(x, self.branch, self.drop_prob, self.training, skip_dropped=self.skip_dropped)
        return drop_path_residual(x, self.branch, self.drop_prob, self.training, skip_dropped=self.skip_dropped)


class _Graphs:
    """A torch.compile backend that runs the graphs (aot_eager: eager kernels
    and eager random numbers) and keeps them, to look at what was traced."""

    def __init__(self):
        from torch._dynamo.backends.common import aot_autograd
        from torch._functorch.aot_autograd import make_boxed_func

        self.graphs = []

        def compiler(gm, example_inputs):
            return make_boxed_func(gm.forward)

        self._aot = aot_autograd(fw_compiler=compiler, bw_compiler=compiler)

    def __call__(self, gm, example_inputs):
        self.graphs.append(gm)
        return self._aot(gm, example_inputs)

    def skips(self) -> bool:
        return any("droppath_ext._row_maps" in str(n.target) for g in self.graphs for n in g.graph.nodes)


def _step(module, x, seed):
    torch.manual_seed(seed)
    x = x.detach().requires_grad_()
    out = module(x)
    out.square().mean().backward()
    return out.detach(), x.grad, {n: p.grad.clone() for n, p in module.named_parameters()}


@pytest.mark.parametrize("compile_backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_compiled_skip_equals_compiled_masked_for_the_same_seed(backend, compile_backend):
    torch._dynamo.reset()
    torch.manual_seed(0)
    skip, masked = _Block(skip_dropped=True).train(), _Block(skip_dropped=False).train()
    masked.load_state_dict(skip.state_dict())
    x = torch.randn(64, 5, 16)
    # Inductor's own random numbers differ by graph; ATen's (fallback_random) are the eager ones.
    with torch._inductor.config.patch(fallback_random=True):
        for seed in (1, 2):
            got = _step(torch.compile(skip, backend=compile_backend, fullgraph=True), x, seed)
            want = _step(torch.compile(masked, backend=compile_backend, fullgraph=True), x, seed)
            torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-6)
            for name in want[2]:
                torch.testing.assert_close(got[2][name], want[2][name], rtol=1e-4, atol=1e-6, msg=name)
            skip.zero_grad()
            masked.zero_grad()


@pytest.mark.slow  # (reads Inductor's generated code: a structure check, in the full run)
def test_inductor_compiles_the_gather_and_scatter_into_its_kernels():
    """Under Inductor skip mode's _take_rows / _add_taken_rows are decomposed
    (fused with the ops around them), forward and backward; the result is the
    eager one for the same seed."""
    if not dp.backend().startswith("cpu"):
        pytest.skip("the decomposition is of the compiled ops")
    from torch._inductor.utils import run_and_get_code

    torch._dynamo.reset()
    block = _Block(drop_prob=0.5).train()
    compiled = torch.compile(block, fullgraph=True)
    x = torch.randn(32, 16, requires_grad=True)

    def step():
        torch.manual_seed(4)
        out = compiled(x)
        out.sum().backward()
        return out

    with torch._inductor.config.patch(fx_graph_cache=False, fx_graph_remote_cache=False, fallback_random=True), \
            torch._functorch.config.patch(enable_autograd_cache=False):
        out, code = run_and_get_code(step)
    text = "\n".join(code)
    assert "droppath_ext._row_maps" in text  # skip mode was compiled
    assert "droppath._take_rows" not in text and "droppath._add_taken_rows" not in text
    torch.manual_seed(4)
    torch.testing.assert_close(out, block(x), rtol=1e-5, atol=1e-6)


def test_the_compiled_graph_skips_and_never_recompiles_as_the_count_changes(backend):
    torch._dynamo.reset()
    graphs = _Graphs()
    block = _Block(drop_prob=0.5).train()
    compiled = torch.compile(block, backend=graphs, fullgraph=True)
    x = torch.randn(16, 4, 16)
    kept_counts = set()
    for seed in range(30):
        out, _, _ = _step(compiled, x, seed)
        torch.manual_seed(seed)
        kept_counts.add(int((dp.drop_path(torch.ones(16), 0.5, True) != 0).sum()))
    assert len(kept_counts) > 3  # the count really changed
    assert len(graphs.graphs) == 1 and graphs.skips()


def test_every_mask_is_exact_under_compile(backend):
    """The all-dropped and all-kept draws too (no eager shortcut in the graph)."""
    torch._dynamo.reset()
    block = _Block(drop_prob=0.5).train()
    compiled = torch.compile(block, backend="aot_eager", fullgraph=True)
    for batch, drop_prob in ((2, 0.5), (3, 1.0), (4, 1e-9), (1, 0.5)):
        block.drop_prob = drop_prob
        x = torch.randn(batch, 16)
        for seed in range(4):
            torch.manual_seed(seed)
            got = compiled(x)
            torch.manual_seed(seed)
            factors = torch.ops.droppath._sample_factors(x, drop_prob, True) if dp.backend() != "python" else \
                dp._reference.sample_factors(x, drop_prob, True)
            mid = x + factors[:, None] * block.branch(x)
            torch.manual_seed(seed)
            torch.testing.assert_close(got, block(x), rtol=1e-5, atol=1e-6)
            assert mid.shape == got.shape


def test_dynamic_batch_sizes_compile_at_most_twice(backend):
    torch._dynamo.reset()
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    block = _Block().train()
    compiled = torch.compile(block, backend=counter)
    for batch in (8, 12, 16, 24, 33):
        x = torch.randn(batch, 16)
        torch.manual_seed(batch)
        got = compiled(x)
        torch.manual_seed(batch)
        torch.testing.assert_close(got, block(x), rtol=1e-5, atol=1e-6)
    assert counter.frame_count <= 2


def test_where_skip_is_not_legal_under_compile_the_graph_is_masked(backend):
    """torch.export, an explicit generator, skip_dropped=False: no row maps."""
    torch._dynamo.reset()
    block = _Block().train()
    x = torch.randn(8, 16)
    for strict in (False, True):  # (strict: dynamo traces it, as under torch.compile)
        exported = torch.export.export(block, (x,), strict=strict)
        assert not any("_row_maps" in str(n.target) for n in exported.graph.nodes)
    graphs = _Graphs()
    generator = torch.Generator().manual_seed(0)
    torch.compile(lambda t: drop_path_residual(t, block.branch, 0.5, True, skip_dropped=True,
                                               generator=generator), backend=graphs)(x)
    assert graphs.graphs and not graphs.skips()
    graphs = _Graphs()
    torch.compile(_Block(skip_dropped=False).train(), backend=graphs, fullgraph=True)(x)
    assert not graphs.skips()


def test_converted_timm_vit_compiles_in_one_graph_and_skips(backend):
    timm = import_or_skip("timm")
    torch._dynamo.reset()
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, drop_path_rate=0.4, img_size=32,
                              patch_size=8, depth=3, num_classes=10)
    model = dp.convert_model(model, fuse_residual=True).train()
    graphs = _Graphs()
    compiled = torch.compile(model, backend=graphs, fullgraph=True)
    x = torch.randn(8, 3, 32, 32)
    for seed in range(5):
        out, _, grads = _step(compiled, x, seed)
        torch.manual_seed(seed)
        torch.testing.assert_close(out, model(x).detach(), rtol=1e-5, atol=1e-5)
    # Compiled before any eager step: the first graph runs the stock forward and verifies the blocks from
    # inside it; the second has skip mode in it; no graph after that.
    assert len(graphs.graphs) == 2 and graphs.skips()


@pytest.mark.slow
def test_max_autotune_no_cudagraphs(backend):
    torch._dynamo.reset()
    block = _Block().train()
    compiled = torch.compile(block, mode="max-autotune-no-cudagraphs", fullgraph=True)
    x = torch.randn(32, 16)
    with torch._inductor.config.patch(fallback_random=True):
        got, _, _ = _step(compiled, x, 3)
    torch.manual_seed(3)
    torch.testing.assert_close(got, block(x).detach(), rtol=1e-4, atol=1e-5)
