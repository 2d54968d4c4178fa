"""benchmarks/train_step.py runs end to end on the CPU with a tiny model,
eager and compiled (a smoke test: it is the GPU check's main measurement)."""

import importlib.util
import json
import os

import pytest

from conftest import import_or_skip

import_or_skip("timm")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "train_step.py")
pytestmark = pytest.mark.skipif(not os.path.exists(SCRIPT), reason="needs the source tree")


def test_train_step_benchmark_writes_every_variant(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("train_step", SCRIPT)
    train_step = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_step)
    out = tmp_path / "train.json"
    code = train_step.main([
        "--model", "vit_tiny_patch16_224", "--img-size", "32", "--depth", "2", "--batch", "4",
        "--rates", "0.4", "--first-steps", "1", "--steps", "2", "--compile", "--json", str(out),
    ])
    assert code == 0
    data = json.loads(out.read_text())
    assert set(data["eager/0.4"]) == {"stock", "default", "skip", "masked", "dinov2"}
    assert set(data["compile/0.4"]) == {"stock", "default", "dinov2"}
    for variant in data["eager/0.4"].values():
        assert variant["steady_median_s"] > 0 and len(variant["raw_s"]) == 3
    assert "vs stock" in capsys.readouterr().out
