"""TorchScript: script -> save -> load in a fresh Python process -> train and eval.

Scripting runs in a child process per backend: TorchScript caches what it
compiled for a class, so one process cannot script DropPath for both backends.
"""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import droppath_ext as dp
from droppath_ext import _library
from conftest import subprocess_env

_MAKE = textwrap.dedent(
    """
    import sys
    import torch
    import droppath_ext as dp

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = torch.nn.Linear(8, 8)
            self.fc2 = torch.nn.Linear(8, 8)
            self.drop = dp.DropPath(0.5)
            self.depth = dp.StochasticDepth(0.3, "row")

        def forward(self, x):
            x = x + self.drop(torch.relu(self.fc1(x)))
            return x + self.depth(self.fc2(x))

    net = Net().train()
    scripted = torch.jit.script(net)
    print("uses_ops", "droppath::forward" in str(scripted.inlined_graph))

    x = torch.randn(32, 8)
    torch.manual_seed(3)
    eager = net(x)
    torch.manual_seed(3)
    torch.testing.assert_close(scripted(x), eager)

    net.eval()
    scripted.save(sys.argv[1])
    torch.save(x, sys.argv[2])
    torch.save(net(x).detach(), sys.argv[3])
    print("backend", dp.backend())
    """
)

_LOAD = textwrap.dedent(
    """
    import sys
    import torch
    import droppath_ext

    model = torch.jit.load(sys.argv[1])
    x = torch.load(sys.argv[2])
    expected_eval = torch.load(sys.argv[3])
    model.train()
    torch.manual_seed(0)
    outs = [model(x) for _ in range(4)]
    loss = sum(o.square().mean() for o in outs)
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads), "missing gradients"
    assert not all(torch.equal(outs[0], o) for o in outs[1:]), "training forward is not random"
    model.eval()
    torch.testing.assert_close(model(x), expected_eval)
    print("backend", droppath_ext.backend(), "ok")
    """
)


def _child(code, args, backend, script_path):
    # A real file: TorchScript reads the source of what it compiles.
    script_path.write_text(code)
    env = subprocess_env(**({_library.FORCE_PYTHON_ENV: "1"} if backend == "python" else {}))
    result = subprocess.run(
        [sys.executable, str(script_path), *args], capture_output=True, text=True, env=env, timeout=300,
        cwd=str(script_path.parent),
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("backend", ["compiled", "python"])
def test_script_save_load_in_fresh_process_trains_and_evals(backend, tmp_path):
    if backend == "compiled" and not _library.LOADED:
        pytest.skip(f"compiled library not loaded: {_library.REASON}")
    paths = [str(tmp_path / name) for name in ("model.pt", "x.pt", "eval.pt")]
    made = _child(_MAKE, paths, backend, tmp_path / "make.py")
    assert ("uses_ops True" in made) == (backend == "compiled"), made
    assert ("backend python" in made) == (backend == "python"), made
    loaded = _child(_LOAD, paths, backend, tmp_path / "load.py")
    assert "ok" in loaded
    assert ("backend python" in loaded) == (backend == "python"), loaded


@pytest.mark.skipif(not _library.LOADED, reason="needs the compiled ops")
def test_functional_calls_script_to_the_ops():
    def fn(x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        return dp.drop_path(x, 0.5, True) + dp.drop_path_add(r, x, 0.2, True)

    scripted = torch.jit.script(fn)
    kinds = {n.kind() for n in scripted.graph.nodes()}
    assert {"droppath::forward", "droppath::add"} <= kinds
    assert scripted(torch.randn(4, 3), torch.randn(4, 3)).shape == (4, 3)


def test_python_fallback_scripts_with_cu_seqlens():
    # In-process twin of the fresh-process test's python case: every fallback
    # entry point that takes offsets compiles under TorchScript and checks
    # their values there too.
    from droppath_ext import _reference

    forward = torch.jit.script(_reference.forward)
    add = torch.jit.script(_reference.add)
    scale_rows = torch.jit.script(_reference.scale_rows)
    x, r = torch.randn(6, 3), torch.randn(6, 3)
    offsets = torch.tensor([0, 2, 6])
    assert forward(x, 0.5, True, True, 0, offsets, None).shape == (6, 3)
    assert add(r, x, 0.5, True, True, 0, offsets, None).shape == (6, 3)
    torch.testing.assert_close(scale_rows(x, torch.tensor([0.0, 2.0]), 0, offsets),
                               torch.cat([x[:2] * 0, x[2:] * 2]))
    with pytest.raises(Exception, match=r"non-decreasing, got 1 after 4 at index 2"):
        scale_rows(x, torch.tensor([1.0, 1.0, 1.0]), 0, torch.tensor([0, 4, 1, 6]))
