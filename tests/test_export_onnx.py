"""Serving a converted model: torch.export, TorchScript freeze, ONNX (both
exporters). An eval model's graph holds no droppath op, so it loads and runs
where this package is not installed; a training-mode ONNX export decomposes
the ops into standard ones, as Inductor does."""

import io
import subprocess
import sys
import textwrap

import pytest
import torch

import droppath_ext as dp
import small_models
from conftest import import_or_skip

timm = import_or_skip("timm")
torchvision = import_or_skip("torchvision")

# A child Python in which droppath_ext cannot be imported at all.
_WITHOUT_PACKAGE = """
import sys
class _NoDroppath:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "droppath_ext":
            raise ImportError("droppath_ext is not installed here")
sys.meta_path.insert(0, _NoDroppath())
"""


def _models():
    made = small_models.models()
    return {name: (made[name], small_models.INPUT_SHAPE) for name in ("timm_vit", "timm_convnext",
                                                                      "torchvision_convnext")}


MODELS = list(_models())


def _converted(name, fuse=True):
    make, shape = _models()[name]
    torch.manual_seed(0)
    stock = make().eval()
    converted = dp.convert_model(make(), fuse_residual=fuse).eval()
    converted.load_state_dict(stock.state_dict())
    return stock, converted, torch.randn(shape)


def _droppath_targets(graph) -> list:
    return [str(n.target) for n in graph.nodes if "droppath" in str(n.target)]


@pytest.mark.parametrize("name", MODELS)
def test_eval_export_has_no_droppath_op_and_loads_without_the_package(backend, name, tmp_path):
    stock, converted, x = _converted(name)
    exported = torch.export.export(converted, (x,))
    assert _droppath_targets(exported.graph) == []
    def kinds(graph):  # (in place or not: torchvision's CNBlock adds its residual in place)
        return {str(n.target).replace("_.", ".") for n in graph.nodes if n.op == "call_function"}

    assert kinds(exported.graph) == kinds(torch.export.export(stock, (x,)).graph)  # the same graph in kind
    if backend != "compiled" or name != "timm_vit":
        return  # (loading a graph of the same kind elsewhere is tested once)
    path = tmp_path / "model.pt2"
    torch.export.save(exported, str(path))
    torch.save(x, tmp_path / "x.pt")
    torch.save(stock(x).detach(), tmp_path / "expected.pt")
    script = _WITHOUT_PACKAGE + textwrap.dedent(
        f"""
        import torch
        program = torch.export.load({str(path)!r})
        x, expected = torch.load({str(tmp_path / 'x.pt')!r}), torch.load({str(tmp_path / 'expected.pt')!r})
        assert torch.equal(program.module()(x), expected)
        try:
            import droppath_ext
        except ImportError:
            print("ok without droppath_ext")
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ok without droppath_ext" in result.stdout


@pytest.mark.parametrize("name", MODELS)
def test_frozen_scripted_eval_model_keeps_no_droppath_op(name):
    if not dp.backend().startswith("cpu"):
        pytest.skip("the scripted graph calls the compiled ops")
    _, converted, x = _converted(name)
    scripted = torch.jit.script(converted)
    for optimize in (torch.jit.freeze, torch.jit.optimize_for_inference):
        graph = optimize(torch.jit.script(converted).eval()).graph
        assert "droppath::" not in str(graph), [line for line in str(graph).splitlines() if "droppath::" in line]
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.freeze(scripted.eval())(x), converted(x))
    assert "droppath::" in str(scripted.train().inlined_graph)  # training still calls the ops


@pytest.mark.parametrize("name", MODELS)
def test_legacy_onnx_export_of_the_eval_model(backend, name):
    import_or_skip("onnx")
    stock, converted, x = _converted(name)
    buffer = io.BytesIO()
    torch.onnx.export(converted, (x,), buffer, dynamo=False)
    assert len(buffer.getvalue()) > 0
    _check_with_onnxruntime(buffer.getvalue(), x, stock(x))


@pytest.mark.parametrize("name", MODELS)
def test_dynamo_onnx_export_of_the_eval_model(backend, name):
    import_or_skip("onnxscript")
    stock, converted, x = _converted(name)
    program = torch.onnx.export(converted, (x,), dynamo=True)
    assert not [n for n in program.model.graph if "droppath" in n.op_type.lower()]
    _check_with_onnxruntime(program.model_proto.SerializeToString(), x, stock(x))


def test_dynamo_onnx_export_in_training_mode(backend):
    """As for stock timm: the drop draws per run (ONNX Bernoulli), the ops
    themselves become standard ones."""
    import_or_skip("onnxscript")
    ort = import_or_skip("onnxruntime")
    _, converted, x = _converted("timm_vit")
    program = torch.onnx.export(converted.train(), (torch.randn(16, 3, 32, 32),), dynamo=True)
    session = ort.InferenceSession(program.model_proto.SerializeToString())
    feed = {session.get_inputs()[0].name: torch.randn(16, 3, 32, 32).numpy()}
    runs = [torch.from_numpy(session.run(None, feed)[0]) for _ in range(3)]
    assert runs[0].shape == (16, 10)
    assert not torch.equal(runs[0], runs[1]) or not torch.equal(runs[1], runs[2])


def _check_with_onnxruntime(model_bytes, x, expected):
    ort = import_or_skip("onnxruntime")
    session = ort.InferenceSession(model_bytes)
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    torch.testing.assert_close(torch.from_numpy(got), expected.detach(), rtol=1e-4, atol=1e-4)

