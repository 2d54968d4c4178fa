"""Generic fusion: stochastic-depth modules of any library replaced after a
behaviour check, and residual blocks of any library run in skip mode from a
rewrite of their own forward, verified before it is trusted.

Each fused model is checked as the stock model: eval outputs bitwise, training
(outputs and every gradient) equal to the masked form's for the same seed,
fewer rows computed where samples are dropped; blocks whose branch mixes
samples are never skip-fused."""

import copy
from unittest import mock

import pytest
import torch
import torch._dynamo.testing
from torch import nn

import droppath_ext as dp
import research_model
from droppath_ext import _fused_generic, _verification, residual
from conftest import import_or_skip
from steps import assert_same_step, step


def _verdicts(model):
    return {name: m.__dict__["_droppath_state"].get("verdict") for name, m in model.named_modules()
            if isinstance(m, _fused_generic.GenericFusedBlock)}


# ---- a research codebase's own DropPath and blocks -----------------------------------------


def test_a_pasted_drop_path_is_replaced_and_the_per_sample_blocks_fused():
    model, report = dp.convert_model(research_model.ResearchNet(), fuse_residual=True, return_report=True)
    blocks = research_model.ResearchNet.BLOCKS
    assert sorted(report.replaced) == sorted(f"{b}.drop_path" for b in blocks.values())
    assert all(isinstance(m, dp.DropPath) and m.drop_prob == 0.5 for n, m in model.named_modules()
               if n.endswith("drop_path"))
    assert sorted(report.fused) == sorted([blocks["convnext"], blocks["prenorm"], blocks["batch_mean"]])
    assert report.unfused == [blocks["batchnorm"]] and "BatchNorm" in report.reasons[blocks["batchnorm"]]
    # The batch-mean branch cannot be told from a per-sample one by its code: its first training call
    # verifies the rewrite against the stock forward, which fails, and the report says so.
    model.train()(torch.randn(8, 3, 16, 16))
    assert sorted(report.fused) == sorted([blocks["convnext"], blocks["prenorm"]])
    assert sorted(report.unfused) == sorted([blocks["batchnorm"], blocks["batch_mean"]])
    assert "skip mode was not verified" in report.reasons[blocks["batch_mean"]]
    assert "mixes samples" in report.reasons[blocks["batch_mean"]]
    assert _verdicts(model) == {blocks["convnext"]: "", blocks["prenorm"]: "",
                                blocks["batch_mean"]: report.reasons[blocks["batch_mean"]]}


def test_research_model_eval_is_bitwise_and_training_equals_the_masked_form():
    torch.manual_seed(0)
    stock = research_model.ResearchNet()
    masked = dp.convert_model(copy.deepcopy(stock))  # replaced, not fused: the masked form
    fused = dp.convert_model(copy.deepcopy(stock), fuse_residual=True)
    x = torch.randn(16, 3, 16, 16)
    with torch.no_grad():
        want = stock.eval()(x)
        assert torch.equal(fused.eval()(x), want) and torch.equal(masked.eval()(x), want)
    stock.train(), masked.train(), fused.train()
    with mock.patch.object(residual, "_skip", wraps=residual._skip) as skip:
        for seed in range(3):  # (the first step verifies the rewrites: it must not change the step)
            assert_same_step(step(fused, x, seed), step(masked, x, seed))
    assert skip.called


def test_skip_mode_computes_only_the_kept_samples_of_a_generic_block():
    model = dp.convert_model(research_model.ResearchNet(drop_path_rate=0.9), fuse_residual=True,
                             skip_dropped=True).train()
    rows = []
    model.stage2[0].fc1.register_forward_hook(lambda m, args, out: rows.append(args[0].shape[0]))
    model(torch.randn(16, 3, 16, 16))  # (verification runs first: 8 of 16 samples, then the step)
    assert rows[-1] < 16 - 4  # at rate 0.9, 16 samples: ~1.6 kept


# ---- timm families beyond ViT and ConvNeXt ---------------------------------------------------

# model -> creation kwargs of a small variant, and the input size
TIMM_SMALL = {
    "eva02_tiny_patch14_224": (dict(img_size=56, depth=2), 56),
    "swin_tiny_patch4_window7_224": (dict(img_size=64, window_size=4, embed_dim=16, depths=(1, 1, 2, 1),
                                          num_heads=(1, 1, 2, 2)), 64),
    "beitv2_base_patch16_224": (dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2), 32),
    "cait_xxs24_224": (dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, depth_token_only=1),
                       32),
    "pvt_v2_b0": (dict(embed_dims=(16, 32, 48, 64), depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 2)), 64),
    "mambaout_femto": (dict(dims=(16, 24, 32, 48), depths=(1, 1, 1, 1)), 64),
    "davit_tiny": (dict(embed_dims=(16, 32, 48, 64), depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4)), 64),
    "twins_svt_small": (dict(embed_dims=(16, 32, 48, 64), depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4)), 64),
}


def timm_small(name, rate=0.5):
    timm = import_or_skip("timm")
    kwargs, size = TIMM_SMALL[name]
    return timm.create_model(name, pretrained=False, drop_path_rate=rate, num_classes=5, **kwargs), size


@pytest.mark.parametrize("name", sorted(TIMM_SMALL))
def test_timm_families_fuse_generically_and_train_as_the_masked_form(name):
    torch.manual_seed(0)
    stock, size = timm_small(name)
    masked = dp.convert_model(copy.deepcopy(stock))
    fused, report = dp.convert_model(copy.deepcopy(stock), fuse_residual=True, return_report=True)
    generic = _verdicts(fused)
    assert generic and not report.unfused and not report.not_replaced
    x = torch.randn(4, 3, size, size)
    with torch.no_grad():
        assert torch.equal(fused.eval()(x), stock.eval()(x))
    masked.train(), fused.train()
    with mock.patch.object(residual, "_skip", wraps=residual._skip) as skip:
        for seed in range(2):
            assert_same_step(step(fused, x, seed), step(masked, x, seed))
    assert skip.called
    assert set(_verdicts(fused).values()) == {""}  # every generic block verified


# ---- the behaviour check and the rewrite's limits ------------------------------------------


class _Scales(nn.Module):
    """Named like stochastic depth, but scales every sample: not replaced."""

    def __init__(self, drop_prob=0.1):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x):
        return x * (1 - self.drop_prob) if self.training else x


def test_a_candidate_that_does_not_drop_samples_is_left_with_the_reason():
    _Scales.__name__ = "ScalingDropPath"
    model = nn.Sequential(nn.Linear(3, 3), _Scales())
    _, report = dp.convert_model(model, return_report=True)
    assert report.not_replaced == ["1"] and "does not drop whole samples" in report.reasons["1"]
    assert type(model[1]) is _Scales


def test_an_unscaled_drop_path_becomes_scale_by_keep_false():
    class NoScaleDropPath(research_model.DropPath):
        def forward(self, x):
            if not self.training or not self.drop_prob:
                return x
            keep = torch.rand(x.shape[0], *([1] * (x.dim() - 1)), dtype=x.dtype) >= self.drop_prob
            return x * keep

    model = nn.Sequential(nn.Linear(3, 3), NoScaleDropPath(0.3))
    dp.convert_model(model)
    assert isinstance(model[1], dp.DropPath) and model[1].scale_by_keep is False and model[1].drop_prob == 0.3


class _ReadsBatchSize(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.drop_path = dp.DropPath(0.5)

    def forward(self, x):
        B, N, C = x.shape
        x = x + self.drop_path(self.fc(x).reshape(B, N, C))
        return x


class _ReadsBatchSizeOfAnother(_ReadsBatchSize):
    def forward(self, x):
        B, N, C = x.shape
        h = self.fc(x)
        self.last = h  # (an attribute store: the branch cannot start before it)
        x = x + self.drop_path(h.reshape(B, N, C) * 2)
        return x


def test_a_branch_that_reads_the_batch_size_reads_the_kept_count():
    """In the branch, ``B`` of ``B, N, C = x.shape`` is the number of samples it computes."""
    torch.manual_seed(0)
    block = _ReadsBatchSize()
    fused = dp.convert_model(copy.deepcopy(block), fuse_residual=True, skip_dropped=True).train()
    x = torch.randn(8, 3, 4)
    with mock.patch.object(residual, "_skip", wraps=residual._skip) as skip:
        got = step(fused, x, 2)
    assert skip.called
    assert_same_step(got, step(dp.convert_model(block).train(), x, 2))
    # The branch takes h, not x: B is still the number of samples it computes.
    block = _ReadsBatchSizeOfAnother()
    fused = dp.convert_model(copy.deepcopy(block), fuse_residual=True, skip_dropped=True).train()
    with mock.patch.object(residual, "_skip", wraps=residual._skip) as skip:
        got = step(fused, x, 2)
    assert skip.called
    assert_same_step(got, step(dp.convert_model(block).train(), x, 2))


class _SharedTable(nn.Module):
    """A branch with a shared (per-position) table passed in, and one per-sample mask."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.drop_path = dp.DropPath(0.5)

    def forward(self, x, table, scale: float = 1.0):
        x = x + self.drop_path(self.fc(x + table) * scale)
        return x


def test_shared_inputs_pass_whole_and_a_batch_sized_one_computes_every_sample():
    block = dp.convert_model(_SharedTable(), fuse_residual=True, skip_dropped=True).train()
    x = torch.randn(8, 6, 4)
    masked = dp.convert_model(copy.deepcopy(block), fuse_residual=True, skip_dropped=False)
    for table in (torch.randn(6, 4), torch.randn(8, 1, 4), torch.randn(6, 4)):
        # (6, 4): a per-position table; (8, 1, 4): one row per sample, which the rewrite passes whole: its
        # verification fails, and again with that residual computing every sample, it succeeds.
        block(x, table, scale=0.5)  # (the first call of its kind verifies)
        with mock.patch.object(residual, "_skip", wraps=residual._skip) as skip:
            torch.manual_seed(1)
            got = block(x, table, scale=0.5)
        torch.manual_seed(1)
        torch.testing.assert_close(got, masked(x, table, scale=0.5))
        assert skip.called == (table.shape[0] != 8)
    assert block.__dict__["_droppath_state"]["verdict"] == "" and dp.skip_status(block) == {"": None}


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_verification_leaves_random_streams_and_buffers_as_they_were(dropout):
    class WithState(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.drop = nn.Dropout(dropout)
            self.register_buffer("calls", torch.zeros(()))
            self.drop_path = dp.DropPath(0.5)

        def forward(self, x):
            self.calls += 1
            return x + self.drop_path(self.drop(self.fc(x)))

    torch.manual_seed(0)
    first = dp.convert_model(WithState(), fuse_residual=True).train()
    verified = copy.deepcopy(first)
    verdict = dp.verify_fused(verified, torch.randn(6, 4))[""]
    assert verified.calls.item() == 0
    x = torch.randn(6, 4)
    outputs, streams = [], []
    for block in (first, verified):  # the first call verifies, then steps; the other only steps
        torch.manual_seed(3)
        outputs.append(block(x))
        streams.append(torch.rand(4))
    assert torch.equal(outputs[0], outputs[1]) and torch.equal(streams[0], streams[1])
    assert first.calls.item() == 1 and first.drop.p == dropout
    if dropout:  # (skip mode would draw the dropout masks of the kept samples only: a different stream)
        assert "draws random numbers" in verdict
        assert verdict == first.__dict__["_droppath_state"]["verdict"]
    else:
        assert verdict is None and first.__dict__["_droppath_state"]["verdict"] == ""


class _OuterBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = research_model.PreNormBlock(4, 0.5)
        self.fc = nn.Linear(4, 4)
        self.drop_path = research_model.DropPath(0.5)

    def forward(self, x):
        x = x + self.drop_path(self.fc(self.inner(x)))
        return x


def test_a_generic_block_nested_in_another_ones_branch_leaves_its_verification_alone():
    model, report = dp.convert_model(_OuterBlock(), fuse_residual=True, return_report=True)
    assert sorted(report.fused) == ["", "inner"]
    model.train()(torch.randn(8, 4))  # the outer block verifies first, the inner one inside its branch
    # The outer block's branch draws the inner one's masks: in skip mode it would draw them for the kept
    # samples only (a different random stream), so the outer block runs its stock forward; the inner skips.
    verdicts = _verdicts(model)
    assert verdicts["inner"] == "" and "draws random numbers" in verdicts[""]
    assert report.fused == ["inner"] and report.unfused == [""]


def test_data_parallel_replicas_share_the_verdict_and_threads_verify_apart():
    import threading

    class Rendezvous(nn.Module):
        """Holds each call until the other thread makes its own: the two verifications interleave."""

        def __init__(self, barrier):
            super().__init__()
            self.barrier = barrier

        def forward(self, x):
            self.barrier.wait(timeout=60)
            return x

    class Block(nn.Module):
        def __init__(self, barrier):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.meet = Rendezvous(barrier)
            self.drop_path = dp.DropPath(0.5)

        def forward(self, x):
            return x + self.drop_path(self.meet(self.fc(x)))

    barrier = threading.Barrier(2)
    blocks = [dp.convert_model(Block(barrier), fuse_residual=True).train() for _ in range(2)]
    # What nn.DataParallel runs each call: a shallow replica of each module, in a thread of its own.
    replicas = [b._replicate_for_data_parallel() for b in blocks]
    for replica, block in zip(replicas, blocks):
        replica._modules = dict(block._modules)
    errors = []

    def run(replica):
        try:
            replica(torch.randn(6, 4))
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(r,)) for r in replicas]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    # Each verified on its own thread, and the blocks the replicas came from hold the verdict.
    assert [b.__dict__["_droppath_state"].get("verdict") for b in blocks] == ["", ""]
    assert not residual._forced_factors and not _verification._verifying


def test_generic_blocks_script_pickle_and_keep_the_stock_signature(tmp_path):
    import inspect

    model = dp.convert_model(research_model.ResearchNet(), fuse_residual=True).train()
    model(torch.randn(4, 3, 16, 16))
    block = model.stage1[0]
    assert isinstance(block, _fused_generic.GenericFusedBlock)
    assert inspect.signature(block.forward) == inspect.signature(research_model.ConvNeXtStyleBlock(4, 0.1).forward)
    scripted = torch.jit.script(copy.deepcopy(model).eval())
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(scripted(x), model.eval()(x))
    path = tmp_path / "model.pt"
    torch.save(model, path)
    loaded = torch.load(path, weights_only=False)
    assert type(loaded.stage1[0]).__name__ == type(block).__name__
    assert loaded.stage1[0].__dict__["_droppath_state"]["verdict"] == ""
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), model(x))


@pytest.mark.parametrize("fullgraph", [False, True])
def test_compiled_generic_blocks_skip_once_verified_in_one_graph(fullgraph):
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = dp.convert_model(research_model.ResearchNet(), fuse_residual=True).train()
    x = torch.randn(8, 3, 16, 16)
    verdicts = dp.verify_fused(model, x)
    blocks = research_model.ResearchNet.BLOCKS
    assert verdicts[blocks["prenorm"]] is None and "mixes samples" in verdicts[blocks["batch_mean"]]
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, backend=counter, fullgraph=fullgraph)
    for seed in range(4):
        got = step(compiled, x, seed, model)
        assert_same_step(got, step(model, x, seed))
    assert counter.frame_count == 1
    assert any("droppath_ext._row_maps" in str(n.target) for g in counter.graphs for n in g.graph.nodes)


# ---- libraries beyond timm, torchvision and transformers -----------------------------------


def test_monai_drop_path_and_swin_unetr():
    monai = import_or_skip("monai")
    from monai.networks.nets import SwinUNETR

    torch.manual_seed(0)
    kwargs = dict(in_channels=1, out_channels=2, feature_size=12, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1),
                  dropout_path_rate=0.5, spatial_dims=2)
    try:
        stock = SwinUNETR(img_size=(64, 64), **kwargs)
    except TypeError:  # (MONAI >= 1.5 has no img_size)
        stock = SwinUNETR(**kwargs)
    n = sum(type(m) is monai.networks.layers.DropPath for m in stock.modules())
    fused, report = dp.convert_model(copy.deepcopy(stock), fuse_residual=True, return_report=True)
    assert n > 0 and len(report.replaced) == n and not report.not_replaced
    assert report.fused and not report.unfused
    x = torch.randn(4, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(fused.eval()(x), stock.eval()(x))
    masked = dp.convert_model(copy.deepcopy(stock)).train()
    fused.train()
    for seed in range(2):
        assert_same_step(step(fused, x, seed), step(masked, x, seed))
    assert set(_verdicts(fused).values()) == {""}


def test_sam2_image_encoder():
    import_or_skip("sam2")
    from sam2.modeling.backbones.hieradet import Hiera

    torch.manual_seed(0)
    stock = Hiera(embed_dim=16, num_heads=1, stages=(1, 2, 2, 1), global_att_blocks=(4,), window_spec=(8, 4, 4, 4),
                  window_pos_embed_bkg_spatial_size=(4, 4), drop_path_rate=0.5)
    fused, report = dp.convert_model(copy.deepcopy(stock), fuse_residual=True, return_report=True)
    assert len(report.replaced) == 5 and len(report.fused) == 5 and not report.unfused
    x = torch.randn(4, 3, 128, 128)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(fused.eval()(x), stock.eval()(x)))
    masked = dp.convert_model(copy.deepcopy(stock)).train()
    fused.train()

    def last(model):
        return lambda t: model(t)[-1]

    for seed in range(2):
        got, want = step(last(fused), x, seed, fused), step(last(masked), x, seed, masked)
        assert_same_step(got, want)
    assert set(_verdicts(fused).values()) == {""}
