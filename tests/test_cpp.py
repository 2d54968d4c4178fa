"""The libtorch C++ library: build it with CMake, install it, build the
example against the installed package with find_package(DropPath), and run it
on a model scripted here (train + eval in C++)."""

import os
import shutil
import subprocess
import sys

import pytest
import torch

import droppath_ext as dp
from droppath_ext import _library

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("cmake") is None, reason="needs cmake"),
    pytest.mark.skipif(not os.path.exists(os.path.join(ROOT, "CMakeLists.txt")), reason="needs the source tree"),
    pytest.mark.skipif(not _library.LOADED, reason="scripting the model needs the compiled ops"),
]


def _run(cmd, **kw):
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, **kw)
    assert result.returncode == 0, f"{' '.join(cmd)}\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result.stdout


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(8, 8)
        self.fc2 = torch.nn.Linear(8, 8)
        self.drop = dp.DropPath(0.5)

    def forward(self, x):
        x = x + self.drop(torch.relu(self.fc1(x)))
        return dp.drop_path_add(x, self.fc2(x), 0.3, self.training)


def _nvcc():
    home = os.environ.get("CUDA_HOME") or "/usr/local/cuda"
    return shutil.which("nvcc") or (os.path.join(home, "bin", "nvcc") if os.path.exists(os.path.join(home, "bin", "nvcc")) else None)


@pytest.mark.parametrize("with_cuda", [False, True], ids=["cpu", "cuda"])
def test_cmake_package_and_cpp_example(tmp_path, with_cuda):
    """Configure, build and install the library (with the CUDA kernels: they
    compile and link with no GPU present), then build and run the example."""
    if with_cuda and (torch.version.cuda is None or _nvcc() is None):
        pytest.skip("needs a CUDA build of torch and nvcc")
    env = dict(os.environ, CMAKE_BUILD_PARALLEL_LEVEL=os.environ.get("MAX_JOBS", "2"))
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    python = [f"-DPython3_EXECUTABLE={sys.executable}"]
    build, prefix, example = tmp_path / "build", tmp_path / "prefix", tmp_path / "example"
    options = [f"-DDROPPATH_WITH_CUDA={'ON' if with_cuda else 'OFF'}"]
    _run(["cmake", "-S", ROOT, "-B", str(build), *generator, *python, *options], env=env)
    _run(["cmake", "--build", str(build)], env=env)
    if with_cuda:
        symbols = _run(["nm", "-DC", str(next(build.glob("libdroppath.so*")))])
        assert "cudaLaunchKernel" in symbols or "__cudaRegisterFatBinary" in symbols, "no CUDA code linked"
    _run(["cmake", "--install", str(build), "--prefix", str(prefix)], env=env)
    assert (prefix / "include" / "droppath" / "droppath.h").exists()
    _run(["cmake", "-S", os.path.join(ROOT, "examples", "cpp"), "-B", str(example), *generator, *python,
          f"-DCMAKE_PREFIX_PATH={prefix}"], env=env)
    _run(["cmake", "--build", str(example)], env=env)

    model_path = tmp_path / "model.pt"
    torch.jit.script(_Net()).save(str(model_path))
    for exe in ("train_scripted", "train_scripted_only"):
        out = _run([str(example / exe), str(model_path)], env=env)
        assert "OK" in out and "train loss" in out, out
