"""benchmarks/train_step.py runs end to end on the CPU with a tiny model,
eager and compiled (a smoke test: it is the GPU check's main measurement)."""

import importlib.util
import json
import os
import sys

import pytest

from conftest import import_or_skip

import_or_skip("timm")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "train_step.py")
pytestmark = pytest.mark.skipif(not os.path.exists(SCRIPT), reason="needs the source tree")


@pytest.fixture
def train_step(monkeypatch):
    """The script as a module, registered in sys.modules as importing it would:
    torch.compile looks the module of the functions it traces up there."""
    spec = importlib.util.spec_from_file_location("train_step", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "train_step", module)
    spec.loader.exec_module(module)
    return module


def _run(train_step, tmp_path, *extra):
    out = tmp_path / "train.json"
    code = train_step.main([
        "--model", "vit_tiny_patch16_224", "--img-size", "32", "--depth", "2", "--batch", "4",
        "--rates", "0.4", "--first-steps", "1", "--steps", "2", "--json", str(out), *extra,
    ])
    assert code == 0
    return json.loads(out.read_text())


def test_train_step_benchmark_writes_every_eager_variant(train_step, tmp_path, capsys):
    data = _run(train_step, tmp_path)
    assert set(data["eager/0.4"]) == {"stock", "default", "skip", "masked", "dinov2"}
    for variant in data["eager/0.4"].values():
        assert variant["steady_median_s"] > 0 and len(variant["raw_s"]) == 3
    assert "vs stock" in capsys.readouterr().out


@pytest.mark.slow
def test_train_step_benchmark_writes_every_compiled_variant(train_step, tmp_path):
    data = _run(train_step, tmp_path, "--compile-only")
    assert set(data) == {"compile/0.4"}
    assert set(data["compile/0.4"]) == {"stock", "default", "skip", "masked", "dinov2"}
    # No graph break; converted models that skip compile a second graph once their blocks are verified from
    # inside the first (compiled before any eager step), and no more.
    graphs = {name: variant["graphs"] for name, variant in data["compile/0.4"].items()}
    assert graphs == {"stock": 1, "dinov2": 1, "masked": 1, "default": 2, "skip": 2}


def test_plot_speedups_measures_a_family_and_draws_both_plots(tmp_path, monkeypatch):
    """benchmarks/plot_speedups.py (the documentation's plots): one tiny
    family, two rates, then the two PNGs and the JSON they come from."""
    pytest.importorskip("matplotlib", reason="the plots need matplotlib")
    script = os.path.join(ROOT, "benchmarks", "plot_speedups.py")
    monkeypatch.syspath_prepend(os.path.join(ROOT, "benchmarks"))
    spec = importlib.util.spec_from_file_location("plot_speedups", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "FAMILIES", {"ViT (tiny test)": ("vit_tiny_patch16_224", 32, 1)})
    assert module.main(["--out-dir", str(tmp_path), "--rates", "0.2,0.5", "--batch", "4", "--first-steps", "1",
                        "--steps", "1"]) == 0
    results = json.loads((tmp_path / "speedups.json").read_text())
    assert set(results["families"]["ViT (tiny test)"]) == {"0.2", "0.5"}
    assert set(results["families"]["ViT (tiny test)"]["0.5"]) == {"default", "dinov2"}
    for name in ("speedup_per_rate.png", "speedup_per_family.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
