"""The build and the backend switch: what was compiled, what got registered,
and the fallback (one warning per process, an env var that forces it)."""

import json
import os
import subprocess
import sys
import sysconfig
import textwrap
from importlib import resources

import pytest
import torch

import droppath_ext as dp
from droppath_ext import _library
from conftest import subprocess_env

KERNEL_OPS = ["_scale_rows", "_add_rows", "_take_rows", "_add_taken_rows"]
COMPOSITE_OPS = ["forward", "add", "_sample_factors"]


def _build_info():
    path = resources.files("droppath_ext") / "_build_info.json"
    if not path.is_file():
        pytest.skip("no build info (library not built)")
    return json.loads(path.read_text())


def test_compiled_library_is_in_use_when_ci_expects_it():
    if os.environ.get("DROPPATH_EXT_EXPECT_COMPILED") != "1":
        pytest.skip("set DROPPATH_EXT_EXPECT_COMPILED=1 to require the compiled library")
    assert _library.LOADED, _library.REASON
    assert dp.backend() in ("cpu", "cpu+cuda")


@pytest.mark.skipif(not _library.LOADED, reason="needs the compiled library")
def test_every_op_has_cpu_meta_and_autograd_kernels():
    for op in KERNEL_OPS:
        for key in ("CPU", "Meta", "Autograd"):
            assert _library.has_kernel(op, key), (op, key)
    for op in COMPOSITE_OPS:
        # composite for every key, including vmap's decomposition key
        assert _library.has_kernel(op, "CompositeImplicitAutograd"), op
        assert _library.has_kernel(op, "FuncTorchBatchedDecomposition"), op


@pytest.mark.skipif(not _library.LOADED, reason="needs the compiled library")
def test_cuda_kernels_registered_for_every_op_when_built_with_cuda():
    info = _build_info()
    if os.environ.get("DROPPATH_EXT_EXPECT_CUDA") == "1":
        assert info["with_cuda"], "CI expects the CUDA kernels to be compiled"
    if not info["with_cuda"]:
        pytest.skip("built without CUDA")
    if torch.version.cuda is None:  # one wheel serves CPU builds of torch too
        assert dp.backend() == "cpu" and _library.CUDA_FALLBACK_REASON is None
        pytest.skip("a CPU build of torch: the CUDA kernels' library is not loaded")
    for op in KERNEL_OPS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"droppath::{op}", "CUDA"), op
    assert dp.backend() == "cpu+cuda"


def test_build_info_records_the_build():
    info = _build_info()
    if info.get("stable_abi_target"):  # one build for its target torch and every later one
        minor = tuple(int(n) for n in torch.__version__.split(".")[:2])
        assert minor >= tuple(int(n) for n in info["stable_abi_target"].split("."))
    else:
        assert info["torch_version"].split("+")[0] == torch.__version__.split("+")[0]
    assert isinstance(info["openmp"], bool)
    assert "cxx_flags" in info


def _run(code, tmp_path, **env_overrides):
    return subprocess.run(
        [sys.executable, "-W", "default", "-c", textwrap.dedent(code)],
        capture_output=True, text=True, env=subprocess_env(**env_overrides), timeout=300, cwd=str(tmp_path),
    )


def test_env_var_forces_the_python_backend_without_warning(tmp_path):
    result = _run(
        """
        import warnings
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import droppath_ext, torch
        assert droppath_ext.backend() == "python", droppath_ext.backend()
        assert "DROPPATH_EXT_FORCE_PYTHON" in droppath_ext.backend_reason()
        assert not [w for w in caught if "droppath_ext" in str(w.message)], caught
        y = droppath_ext.drop_path(torch.ones(8, 2), 1.0, True)
        assert torch.equal(y, torch.zeros(8, 2))
        print("ok")
        """,
        tmp_path,
        DROPPATH_EXT_FORCE_PYTHON="1",
    )
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout


@pytest.mark.skipif(not _library.LOADED, reason="needs the compiled library")
@pytest.mark.parametrize("capability", [pytest.param(c, marks=pytest.mark.slow) for c in ("default", "avx2", "avx512")])
def test_info_self_check_passes_for_each_cpu_capability(capability, tmp_path):
    """Each CPU build of the kernels (chosen by ATen's capability, which
    ATEN_CPU_CAPABILITY lowers) agrees with the reference."""
    if capability == "avx512" and torch.backends.cpu.get_cpu_capability() != "AVX512":
        pytest.skip("this CPU has no AVX-512")
    if capability == "avx2" and torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        pytest.skip("this CPU has no AVX2")
    result = subprocess.run(
        [sys.executable, "-m", "droppath_ext.info"],
        capture_output=True, text=True, timeout=300, cwd=str(tmp_path),
        env=subprocess_env(ATEN_CPU_CAPABILITY=capability),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"ATen capability {capability.upper()}" in result.stdout
    assert f"cpu kernels  {capability.upper()}" in result.stdout
    assert result.stdout.strip().endswith("PASS")


def _package_copy(tmp_path, record, library_bytes):
    """A copy of the imported package's Python files with a given build record
    (a torch version, or a whole record) and compiled library, importable from tmp_path."""
    source = os.path.dirname(dp.__file__)
    target = tmp_path / "droppath_ext"
    target.mkdir()
    for name in os.listdir(source):
        if name.endswith(".py"):
            (target / name).write_text(open(os.path.join(source, name)).read())
    if record is not None:
        record = {"torch_version": record} if isinstance(record, str) else record
        (target / "_build_info.json").write_text(json.dumps(record))
    if library_bytes is not None:
        suffix = sysconfig.get_config_var("EXT_SUFFIX")
        (target / f"_C{suffix}").write_bytes(library_bytes)
    return tmp_path


def _run_in(folder, code, *args, **env_overrides):
    env = dict(os.environ, PYTHONPATH=str(folder), **env_overrides)
    for name in (_library.FORCE_PYTHON_ENV, _library.ALLOW_MISMATCH_ENV):
        if name not in env_overrides:
            env.pop(name, None)
    return subprocess.run([sys.executable, *args], input=code, capture_output=True, text=True,
                          env=env, timeout=300, cwd=str(folder))


_WARNINGS_AT_IMPORT = """
import warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import droppath_ext
mine = [w for w in caught if "droppath_ext" in str(w.message)]
print("WARNINGS", len(mine))
for w in mine:
    print("FILE", w.filename)
    print("MESSAGE", w.message)
print("BACKEND", droppath_ext.backend())
"""


def test_missing_library_warns_once_and_falls_back(tmp_path):
    folder = _package_copy(tmp_path, None, None)
    code = _WARNINGS_AT_IMPORT + textwrap.dedent(
        """
        import torch
        for _ in range(3):
            droppath_ext.drop_path(torch.ones(4, 2), 0.5, True)
            droppath_ext.DropPath(0.5)(torch.ones(4, 2))
        """
    )
    result = _run_in(folder, code)
    assert result.returncode == 0, result.stderr
    assert "WARNINGS 1" in result.stdout and "not found" in result.stdout and "BACKEND python" in result.stdout


def _library_bytes():
    path = _library.library_path()
    if path is None:
        pytest.skip("needs the compiled library")
    with open(path, "rb") as f:
        return f.read()


def _other_minor(version):
    major, minor = (int(n) for n in version.split(".")[:2])
    return f"{major}.{minor + 1}.0"


@pytest.mark.slow  # (a scratch copy of the library, two processes)
@pytest.mark.skipif(not _library.LOADED, reason="needs the compiled library")
def test_a_library_built_for_another_torch_minor_is_not_used_and_says_so(tmp_path):
    """Even when it would load: a library built for another torch minor may
    misbehave where no self-check looks. The warning points at the user's
    import, names both torch versions and the one rebuild command."""
    built = _other_minor(torch.__version__)
    record = {"torch_version": built, "torch_cuda_version": torch.version.cuda}
    folder = _package_copy(tmp_path, record, _library_bytes())
    user = folder / "user_script.py"
    user.write_text(_WARNINGS_AT_IMPORT)
    result = subprocess.run([sys.executable, str(user)], capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, PYTHONPATH=str(folder)), cwd=str(folder))
    assert result.returncode == 0, result.stderr
    assert "WARNINGS 1" in result.stdout and "BACKEND python" in result.stdout, result.stdout
    assert f"FILE {user}" in result.stdout  # points at the user's import, not at the package
    assert f"built for torch {built}, running {torch.__version__}" in result.stdout
    assert _library.REBUILD_COMMAND in result.stdout and _library.ALLOW_MISMATCH_ENV in result.stdout

    opted_in = _run_in(folder, _WARNINGS_AT_IMPORT, **{_library.ALLOW_MISMATCH_ENV: "1"})
    assert "WARNINGS 0" in opted_in.stdout and "BACKEND cpu" in opted_in.stdout, opted_in.stdout + opted_in.stderr


@pytest.mark.skipif(not _library.LOADED, reason="needs the compiled library")
def test_a_library_built_for_another_torch_variant_is_not_used(tmp_path):
    """Same release, other build of torch (a CPU build vs a CUDA one)."""
    record = {"torch_version": torch.__version__, "torch_cuda_version": None if torch.version.cuda else "13.0"}
    folder = _package_copy(tmp_path, record, _library_bytes())
    result = _run_in(folder, _WARNINGS_AT_IMPORT)
    assert "WARNINGS 1" in result.stdout and "BACKEND python" in result.stdout, result.stdout + result.stderr
    assert "build of torch" in result.stdout


@pytest.mark.slow  # (a scratch copy of the library, two processes)
@pytest.mark.skipif(not _library.LOADED, reason="needs the compiled library")
def test_a_patch_level_difference_is_used_and_info_notes_it(tmp_path):
    major, minor, *_ = torch.__version__.split("+")[0].split(".")
    built = f"{major}.{minor}.99"
    record = {"torch_version": built, "torch_cuda_version": torch.version.cuda}
    folder = _package_copy(tmp_path, record, _library_bytes())
    result = _run_in(folder, _WARNINGS_AT_IMPORT)
    assert "WARNINGS 0" in result.stdout and "BACKEND cpu" in result.stdout, result.stdout + result.stderr
    info = _run_in(folder, "", "-m", "droppath_ext.info")
    assert info.returncode == 0, info.stdout + info.stderr
    assert f"built for torch {built}" in info.stdout and "patch-level" in info.stdout


def test_torch_swapped_under_the_build_warns_at_the_users_import(tmp_path):
    """A library that does not load in this torch at all."""
    folder = _package_copy(tmp_path, "2.0.0+cpu", b"not a shared library")
    user = folder / "user_script.py"
    user.write_text(_WARNINGS_AT_IMPORT)
    result = subprocess.run([sys.executable, str(user)], capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, PYTHONPATH=str(folder)), cwd=str(folder))
    assert result.returncode == 0, result.stderr
    assert "WARNINGS 1" in result.stdout and f"FILE {user}" in result.stdout
    assert f"built for torch 2.0.0+cpu, running {torch.__version__}" in result.stdout
    assert _library.REBUILD_COMMAND in result.stdout


def test_info_fails_on_a_torch_mismatch(tmp_path):
    folder = _package_copy(tmp_path, "2.0.0+cpu", b"not a shared library")
    result = _run_in(folder, "", "-m", "droppath_ext.info")
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"built for torch 2.0.0+cpu, running {torch.__version__}" in result.stdout
    assert result.stdout.strip().endswith("FAIL")


def test_info_fails_on_an_unrequested_fallback_and_passes_a_requested_one(tmp_path):
    folder = _package_copy(tmp_path, None, None)  # no compiled library at all
    result = _run_in(folder, "", "-m", "droppath_ext.info")
    assert result.returncode == 1 and "fallback is in use, unrequested" in result.stdout, result.stdout
    result = _run_in(folder, "", "-m", "droppath_ext.info", DROPPATH_EXT_FORCE_PYTHON="1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith("PASS")


def test_a_failing_registration_never_breaks_the_users_import(tmp_path):
    """Registrations wait for the module they register with (Inductor's table,
    DTensor); one that fails (a torch whose internals moved) warns, and the
    user's import of that module still works."""
    result = _run(
        """
        import warnings
        from droppath_ext._on_import import when_imported
        def fails(module):
            raise RuntimeError("internals moved")
        when_imported("colorsys", fails)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import colorsys
        assert colorsys.rgb_to_hsv(1, 0, 0)[0] == 0
        assert any("could not register with colorsys" in str(w.message) for w in caught), caught
        print("ok")
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout


# ---- the stable ABI: one build for every torch from its target on ----------------------


def _compiled_libraries():
    folder = os.path.dirname(dp.__file__)
    found = [os.path.join(folder, n) for n in sorted(os.listdir(folder)) if n.startswith("_C") and ".so" in n]
    if not found:
        pytest.skip("needs the compiled library")
    return found


@pytest.mark.skipif(subprocess.run(["which", "nm"], capture_output=True).returncode != 0, reason="needs nm")
def test_libraries_reference_no_torch_cpp_symbol_and_no_python():
    """What lets one build load in every torch >= 2.11 and every CPython >= 3.10:
    the libraries call torch only through its stable C shim (aoti_torch_*,
    torch_*), and never CPython."""
    for path in _compiled_libraries():
        undefined = subprocess.run(["nm", "-D", "--undefined-only", path], capture_output=True, text=True,
                                   check=True).stdout
        names = [line.split()[-1].split("@")[0] for line in undefined.splitlines() if line.strip()]
        demangled = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True,
                                   check=True).stdout.splitlines()
        cpp = [n for n in demangled if n.startswith(("at::", "c10::", "torch::", "caffe2::"))]
        assert not cpp, f"{os.path.basename(path)} references torch C++ symbols: {cpp[:10]}"
        python = [n for n in names if n.startswith(("Py", "_Py"))]
        assert not python, f"{os.path.basename(path)} references CPython: {python[:10]}"
        shim = [n for n in names if n.startswith(("aoti_torch_", "torch_"))]
        assert shim, "expected the stable C shim to be used"


def test_build_record_names_the_stable_target():
    record = _build_info()
    assert record.get("stable_abi_target") == "2.11"
    assert record.get("py_limited_api") == "cp310"


def test_drawing_op_schemas_are_the_cpp_packages():
    """The Python wheel defines forward/add/_sample_factors from Python, the C++
    package from csrc/libtorch/ops.cpp: the same strings."""
    import re

    from droppath_ext import _ops

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "csrc", "libtorch", "ops.cpp")
    if not os.path.exists(path):
        pytest.skip("needs the source tree")
    source = open(path).read()
    literals = re.findall(r'm\.def\(\s*((?:"[^"]*"\s*)+)', source)
    cpp = ["".join(re.findall(r'"([^"]*)"', lit)) for lit in literals]
    for schema in _ops.SCHEMAS.values():
        assert schema in cpp, f"{schema} not in csrc/libtorch/ops.cpp"
    if _library.LOADED:
        for name, schema in _ops.SCHEMAS.items():
            assert str(getattr(torch.ops.droppath, name).default._schema) == "droppath::" + \
                str(torch._C.parse_schema(schema))


def _running_minor():
    return ".".join(torch.__version__.split(".")[:2])


@pytest.mark.skipif(not _library.LOADED, reason="needs the compiled library")
def test_a_stable_build_loads_in_a_torch_other_than_its_builder(tmp_path):
    """Built by another torch, for a stable target this torch meets: used, no warning."""
    record = dict(_build_info(), torch_version="2.99.0", stable_abi_target=_running_minor())
    folder = _package_copy(tmp_path, record, _library_bytes())
    result = _run_in(folder, _WARNINGS_AT_IMPORT)
    assert "WARNINGS 0" in result.stdout and "BACKEND cpu" in result.stdout, result.stdout + result.stderr
    info = _run_in(folder, "", "-m", "droppath_ext.info")
    assert info.returncode == 0 and info.stdout.strip().endswith("PASS"), info.stdout + info.stderr


@pytest.mark.skipif(not _library.LOADED, reason="needs the compiled library")
def test_a_stable_build_for_a_newer_torch_is_not_used_and_says_so(tmp_path):
    major, minor = (int(n) for n in _running_minor().split("."))
    target = f"{major}.{minor + 1}"
    record = dict(_build_info(), stable_abi_target=target)
    folder = _package_copy(tmp_path, record, _library_bytes())
    result = _run_in(folder, _WARNINGS_AT_IMPORT)
    assert "WARNINGS 1" in result.stdout and "BACKEND python" in result.stdout, result.stdout + result.stderr
    assert f"built for torch {target} or later, running {torch.__version__}" in result.stdout


@pytest.mark.skipif(not _library.LOADED or torch.version.cuda is None, reason="needs the compiled library and a CUDA torch")
def test_a_cuda_torch_without_the_cuda_library_gets_pure_pytorch_cuda_kernels(tmp_path):
    """The CPU library alone in a CUDA build of torch (a wheel built without
    CUDA, or a CUDA library for another CUDA major): CUDA tensors still run,
    on the pure-PyTorch kernels, and info says so."""
    folder = _package_copy(tmp_path, _build_info(), _library_bytes())  # _C only
    code = _WARNINGS_AT_IMPORT + textwrap.dedent(
        """
        import torch
        print("CUDA KERNEL", torch._C._dispatch_has_kernel_for_dispatch_key("droppath::_scale_rows", "CUDA"))
        print("REASON", droppath_ext._library.CUDA_FALLBACK_REASON)
        """
    )
    result = _run_in(folder, code)
    assert "WARNINGS 0" in result.stdout and "BACKEND cpu" in result.stdout, result.stdout + result.stderr
    assert "CUDA KERNEL True" in result.stdout and "without its CUDA kernels" in result.stdout
    info = _run_in(folder, "", "-m", "droppath_ext.info")
    assert "cuda kernels pure PyTorch" in info.stdout and info.stdout.strip().endswith("PASS"), info.stdout
