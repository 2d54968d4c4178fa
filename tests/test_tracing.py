"""Where skip mode's data-dependent control flow is legal (one predicate,
_tracing.why_not_plain_eager), and what every tracer records instead: the
masked form, drawing a new mask on every run of what was recorded."""

import collections

import pytest
import torch
from torch.utils.checkpoint import checkpoint

import droppath_ext as dp
from droppath_ext import _tracing
from droppath_ext.residual import drop_path_residual


class _Residual(torch.nn.Module):
    """x + drop_path(fc(x)) through drop_path_residual, counting the samples
    its branch was run on (fewer than the batch: skip mode ran)."""

    def __init__(self, drop_prob=0.5, skip_dropped=True):
        super().__init__()
        self.fc = torch.nn.Linear(3, 3)
        self.drop_prob, self.skip_dropped = drop_prob, skip_dropped
        self.seen = []

    def _branch(self, x):
        self.seen.append(x.shape[0])
        return self.fc(x)

    def forward(self, x):
        return drop_path_residual(x, self._branch, self.drop_prob, self.training, skip_dropped=self.skip_dropped)


def _kept(out, x):
    return int(((out - x).abs().amax(dim=1) > 0).sum())


def test_plain_eager_is_the_only_place_for_data_dependent_control_flow():
    x = torch.randn(4, 3)
    assert _tracing.why_not_plain_eager(x, None) is None
    assert _tracing.why_not_plain_eager(torch.nn.Parameter(x)) is None
    assert _tracing.why_not_plain_eager(x.to("meta")) == "meta tensors"
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:
        assert "subclass" in _tracing.why_not_plain_eager(mode.from_tensor(x))
        assert "TorchDispatchMode" in _tracing.why_not_plain_eager(x)
    seen = {}
    torch.jit.trace(lambda t: seen.setdefault("trace", _tracing.why_not_plain_eager(t)) and t, (x,),
                    check_trace=False)
    torch.fx.symbolic_trace(lambda t: seen.setdefault("fx", _tracing.why_not_plain_eager(t)) and t)
    torch.func.vmap(lambda t: seen.setdefault("vmap", _tracing.why_not_plain_eager(t)) and t)(x)
    torch.compile(lambda t: seen.setdefault("compile", _tracing.why_not_plain_eager(t)) and t,
                  backend="eager", fullgraph=False)(x)
    from torch.fx.experimental.proxy_tensor import make_fx

    make_fx(lambda t: seen.setdefault("make_fx", _tracing.why_not_plain_eager(t)) and t)(x)
    assert seen["trace"] == "torch.jit.trace"
    assert seen["fx"] == "torch.fx symbolic tracing"
    assert seen["vmap"] is not None and seen["compile"] is not None and seen["make_fx"] is not None
    with torch.device("cpu"):  # a default-device context is plain eager still
        assert _tracing.why_not_plain_eager(x) is None


def test_cuda_graph_capture_turns_skip_mode_off(monkeypatch):
    """The CUDA-graph row on a machine without a GPU: the predicate's capture
    test, stubbed to "capturing", makes drop_path_residual take the masked
    form (tests/test_cuda.py captures a real graph where a GPU is lent)."""
    block = _Residual().train()
    x = torch.randn(64, 3)
    block(x)
    assert block.seen[-1] < 64  # skip mode in plain eager
    monkeypatch.setattr(_tracing, "_cuda_capturing", lambda tensors: True)
    assert _tracing.why_not_plain_eager(x) == "CUDA graph capture"
    block(x)
    assert block.seen[-1] == 64  # the masked form: every sample computed


def test_jit_trace_of_a_training_step_draws_a_new_mask_per_call(backend):
    """Skip mode's branches are not frozen into a trace: traced while the draw
    dropped everything, the traced function still keeps ~half the samples."""
    block = _Residual(0.5).train()
    x = torch.randn(2, 3)
    for seed in range(100):  # a seed whose first draw drops both samples
        torch.manual_seed(seed)
        if _kept(dp.drop_path_add(x, block.fc(x), 0.5, True), x) == 0:
            break
    torch.manual_seed(seed)
    traced = torch.jit.trace(block, (x,), check_trace=False)
    counts = collections.Counter(_kept(traced(x), x) for _ in range(300))
    assert set(counts) == {0, 1, 2} and counts[1] > 90, counts
    torch.manual_seed(7)
    want = block(x)  # eager: skip mode; the same mask for the same seed
    torch.manual_seed(7)
    torch.testing.assert_close(traced(x), want)


def test_fake_and_meta_tensors_take_the_masked_form(backend):
    from torch._subclasses.fake_tensor import FakeTensorMode

    block = _Residual().train()
    with FakeTensorMode(allow_non_fake_inputs=True):
        out = block(torch.randn(8, 3))
        out.sum().backward()
    assert out.shape == (8, 3) and block.seen[-1] == 8
    meta = _Residual().to("meta").train()
    out = meta(torch.randn(8, 3, device="meta"))
    out.sum().backward()
    assert out.is_meta and meta.seen[-1] == 8


def test_a_tensor_subclass_takes_the_masked_form(backend):
    class Tagged(torch.Tensor):
        pass

    block = _Residual().train()
    out = block(torch.randn(64, 3).as_subclass(Tagged))
    assert block.seen[-1] == 64 and out.shape == (64, 3)


def test_compiled_offsets_are_checked_in_the_graph(backend):
    torch._dynamo.reset()
    fn = torch.compile(lambda x, cu: dp.drop_path(x, 0.5, True, cu_seqlens=cu), backend="aot_eager",
                       fullgraph=True)
    x = torch.randn(6, 3)
    assert fn(x, torch.tensor([0, 2, 6])).shape == (6, 3)
    for bad in ([0, 4, 2], [1, 2, 6], [0, 2, 5]):
        with pytest.raises(RuntimeError, match="cu_seqlens must start at 0, be non-decreasing and end at"):
            fn(x, torch.tensor(bad))


def test_eval_identity_is_not_an_alias_under_functionalize():
    """The op's identity returns a new tensor, as its schema promises (an
    alias would let functionalization drop an in-place update through it)."""
    if not dp.backend().startswith("cpu"):
        pytest.skip("needs the compiled ops")

    def update_through_output(x):
        y = torch.ops.droppath.forward(x, 0.1, False, True)
        y.add_(1)
        return x

    x = torch.zeros(3, 2)
    assert torch.equal(torch.func.functionalize(update_through_output)(x.clone()),
                       update_through_output(x.clone()))
    assert dp.drop_path(x, 0.1, False) is x  # the Python function returns the input itself


def test_vmap_with_shared_input_and_per_slice_offsets_draws_per_slice(backend):
    x = torch.ones(6, 3)
    cu = torch.tensor([[0, 2, 6], [0, 3, 6], [0, 1, 6], [0, 5, 6]])
    out = torch.vmap(lambda c: dp.drop_path(x, 0.5, True, cu_seqlens=c), randomness="different")(
        cu.repeat(8, 1))
    assert out.shape == (32, 6, 3)
    for slice_out, offsets in zip(out, cu.repeat(8, 1)):  # each segment all kept or all dropped
        for start, end in zip(offsets[:-1].tolist(), offsets[1:].tolist()):
            assert slice_out[start:end].unique().numel() == 1
    assert len({tuple(o[:, 0].tolist()) for o in out}) > 1  # slices drew differently


@pytest.mark.parametrize("with_helper", [True, False])
def test_checkpoint_with_an_explicit_generator(backend, with_helper):
    """Recomputation replays the mask when the generator is handed to
    checkpoint with replay_generators; without it, it draws anew (wrong
    gradients), which is why the helper exists."""
    fc = torch.nn.Linear(8, 8)
    x = torch.randn(64, 8, requires_grad=True)

    def block(t, generator):
        return t + dp.drop_path(torch.tanh(fc(t)), 0.5, True, generator=generator)

    block(x, torch.Generator().manual_seed(3)).sum().backward()
    plain = x.grad.clone()
    x.grad = None
    generator = torch.Generator().manual_seed(3)
    context = {"context_fn": dp.replay_generators(generator)} if with_helper else {}
    checkpoint(block, x, generator, use_reentrant=False, **context).sum().backward()
    assert torch.equal(x.grad, plain) == with_helper
    if with_helper:  # the generator moved on as the forward left it, as without checkpoint
        reference = torch.Generator().manual_seed(3)
        block(x, reference)
        assert torch.equal(generator.get_state(), reference.get_state())


def test_replay_generators_rejects_what_is_not_a_generator():
    with pytest.raises(TypeError, match="torch.Generator objects, got int"):
        dp.replay_generators(3)


def test_residual_uses_the_predicate(monkeypatch):
    """drop_path_residual asks the one predicate (no tracer test of its own):
    told "no skip mode here", it runs the masked form."""
    block = _Residual().train()
    monkeypatch.setattr(_tracing, "skip_mode", lambda *tensors: None)
    block(torch.randn(64, 3))
    assert block.seen[-1] == 64
