"""torch.fx on converted models, as detection and segmentation backbones are
built: torchvision's create_feature_extractor and get_graph_node_names, timm's
FX feature extraction, train and eval graphs, outputs equal to the stock
model's for the same seed, both backends."""

import pytest
import torch

import droppath_ext as dp
import small_models
from conftest import import_or_skip

timm = import_or_skip("timm")
torchvision = import_or_skip("torchvision")
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names  # noqa: E402


def _stock(name):
    torch.manual_seed(0)
    if name == "torchvision_convnext":
        from torchvision.models.convnext import CNBlockConfig, ConvNeXt

        return ConvNeXt([CNBlockConfig(16, 32, 2), CNBlockConfig(32, None, 2)], stochastic_depth_prob=0.4,
                        num_classes=10)
    if name == "torchvision_efficientnet":
        return torchvision.models.efficientnet_b0(stochastic_depth_prob=0.4, num_classes=10)
    if name == "timm_vit":
        return timm.create_model("vit_tiny_patch16_224", pretrained=False, drop_path_rate=0.4, img_size=32,
                                 patch_size=8, depth=4, num_classes=10)
    if name in ("timm_swin", "timm_eva02"):  # (generically fused blocks)
        return small_models.models(drop_path_rate=0.4)[name]()
    return timm.create_model("convnext_atto", pretrained=False, drop_path_rate=0.4, num_classes=10)


MODELS = ["torchvision_convnext", "torchvision_efficientnet", "timm_vit", "timm_convnext", "timm_swin", "timm_eva02"]


def _pair(name, fuse):
    stock = _stock(name)
    converted = dp.convert_model(_stock(name), fuse_residual=fuse)
    converted.load_state_dict(stock.state_dict())
    return stock, converted


def _run(module, x, seed):
    torch.manual_seed(seed)
    return module(x)


@pytest.mark.parametrize("fuse", [False, True], ids=["unfused", "fused"])
@pytest.mark.parametrize("name", MODELS)
def test_torchvision_feature_extraction_equals_stock(backend, name, fuse):
    stock, converted = _pair(name, fuse)
    train_nodes, eval_nodes = get_graph_node_names(converted)
    # Every node a backbone user would return (not the drop modules' insides)
    # has the stock model's name.
    for ours_names, stock_names in zip((train_nodes, eval_nodes), get_graph_node_names(stock)):
        wanted = {n for n in stock_names if "drop_path" not in n and "stochastic_depth" not in n}
        assert wanted <= set(ours_names), sorted(wanted - set(ours_names))[:5]
    return_nodes = [eval_nodes[len(eval_nodes) // 2], eval_nodes[-1]]
    ours = create_feature_extractor(converted, return_nodes=return_nodes)
    theirs = create_feature_extractor(stock, return_nodes=return_nodes)
    x = torch.randn(4, 3, 32, 32)
    ours.eval()
    theirs.eval()
    got, want = ours(x), theirs(x)
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=0, msg=f"eval {key}")
    assert "droppath" not in ours.code  # the eval graph holds no droppath op
    # Training: the graph's output is the stock model's for the same seed.
    # (Not the stock *graph's*: timm's drop_path scales in place, `div_`, an
    # unused result that FX's dead-code elimination removes, so timm's own
    # traced training graph does not rescale kept samples.)
    ours.train()
    stock.train()
    got = _run(ours, x, 3)[return_nodes[-1]]
    torch.testing.assert_close(got, _run(stock, x, 3), rtol=0, atol=0)
    assert not torch.equal(got, _run(ours, x, 4)[return_nodes[-1]])  # a new draw per call


@pytest.mark.parametrize("fuse", [False, True], ids=["unfused", "fused"])
@pytest.mark.parametrize("name", ["timm_vit", "timm_convnext", "timm_swin"])
def test_timm_feature_extraction_forward_backward_and_script(backend, name, fuse):
    """What timm's own test_model_forward_fx / backward_fx / fx_torchscript do."""
    stock, converted = _pair(name, fuse)
    extract = timm.models.create_feature_extractor
    train_nodes, eval_nodes = timm.models.get_graph_node_names(converted)
    ours = extract(converted, return_nodes=[eval_nodes[-1]])
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    ours.train()
    stock.train()
    (out,) = _run(ours, x, 5).values()
    torch.testing.assert_close(out, _run(stock, x, 5), rtol=0, atol=0)
    out.mean().backward()
    assert all(p.grad is not None for p in converted.parameters() if p.requires_grad)
    if backend == "compiled":
        ours.eval()
        scripted = torch.jit.script(ours)
        torch.testing.assert_close(scripted(x)[eval_nodes[-1]], ours(x)[eval_nodes[-1]])


def test_symbolic_trace_makes_one_node_per_call(backend):
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(4, 4)
            self.drop = dp.DropPath(0.3)

        def forward(self, x):
            x = x + self.drop(self.fc(x))
            x = dp.drop_path_add(x, self.fc(x), 0.3, self.training)
            return dp.stochastic_depth(x, 0.2, "batch", self.training)

    def droppath_nodes(graph):
        return [n.target for n in graph.graph.nodes if n.op == "call_function"
                and ("droppath" in str(n.target) or getattr(n.target, "__module__", "").startswith("droppath_ext"))]

    net = Net().train()
    graph = torch.fx.symbolic_trace(net)
    # drop_path, drop_path_add, and stochastic_depth's batch mode (a draw, a scale)
    assert len(droppath_nodes(graph)) == 4, droppath_nodes(graph)
    x = torch.randn(8, 4)
    torch.testing.assert_close(_run(graph, x, 1), _run(net, x, 1), rtol=0, atol=0)
    assert droppath_nodes(torch.fx.symbolic_trace(net.eval())) == []


def test_traced_validation_errors_come_from_the_graph_run(backend):
    """No dtype to check while tracing: the checks run when the graph runs."""
    graph = torch.fx.symbolic_trace(lambda x: dp.drop_path(x, 0.5, True))
    with pytest.raises(TypeError, match="got torch.int64"):
        graph(torch.ones(4, 2, dtype=torch.int64))
