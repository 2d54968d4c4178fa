"""The benchmark runs end to end and writes every column (a smoke test, no timing claims)."""

import json

from droppath_ext import benchmark


def test_benchmark_writes_every_case_and_column(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = benchmark.main([
        "--shapes", "4x8x16", "--dtypes", "f32,bf16", "--rounds", "1", "--min-run-time", "0.001",
        "--no-compile", "--layout-shapes", "4x8x16", "--json", str(out),
    ])
    assert code == 0
    data = json.loads(out.read_text())
    cells = data["cells"]
    assert {(c["dtype"], c["case"]) for c in cells} == {
        (d, case) for d in ("f32", "bf16") for case in benchmark.CASES
    }
    for cell in cells:
        assert set(cell["seconds"]) == {"ours", "fallback", "timm", "torchvision", "compile(timm)", "limit"}
        assert all(t > 0 for t in cell["seconds"].values())
    assert {(c["dtype"], c["case"]) for c in data["layouts"]} == {
        (d, case) for d in ("f32", "bf16") for case in ("forward", "forward+backward")
    }
    for cell in data["layouts"]:
        assert set(cell["seconds"]) == set(benchmark.LAYOUTS) and all(t > 0 for t in cell["seconds"].values())
    printed = capsys.readouterr().out
    assert "geomean ours/limit" in printed and "packed/batch" in printed
