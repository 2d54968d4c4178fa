"""Install droppath_ext into the Python that runs this script, and check it.

    python scripts/install.py           # torch if missing, build tools, build + install, self-check
    python scripts/install.py --test    # test dependencies, then the default test run (under 5 min)
    python scripts/install.py --test --full   # the full test run (~18 min on 2 cores)
    python scripts/install.py --wheel dist/droppath_ext-*.whl   # a prebuilt wheel: no compiler

The install is editable by default (``pip install -e``): the compiled library
is built into this checkout, which is then the package every Python process
imports, from any directory (``--no-editable`` for a copy in site-packages).
Every pip command it runs is printed first. It never replaces an installed
torch: build tools and test dependencies are installed with torch pinned to
the installed release, so pip cannot upgrade or downgrade it (nor, through it,
setuptools). The build is compiled against that torch; its progress is printed
as it goes, and the full log kept in a file.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIN_PYTHON = (3, 10)
MIN_TORCH = (2, 11)
PYTORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
BUILD_TOOLS = ["setuptools>=77", "wheel", "ninja", "numpy"]
# torchvision's minor version is torch's plus 15 (torch 2.14 -> torchvision 0.29).
TORCHVISION_OFFSET = 15


def _say(text: str) -> None:
    print(f"==> {text}", flush=True)


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    print("    $ " + " ".join(cmd), flush=True)
    return subprocess.run(cmd, **kwargs)


def _pip(*args: str) -> None:
    """pip for what the install needs: a failure stops the install."""
    result = _run([sys.executable, "-m", "pip", *args])
    if result.returncode != 0:
        sys.exit(f"pip failed (exit {result.returncode}); see its output above")


def _pip_optional(*args: str) -> bool:
    """pip for what the tests can do without: its output is shown only when
    it succeeds; a failure is summed up in one line (pip's own red ERROR lines
    would read as a failed install, which this is not)."""
    result = _run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)
    if result.returncode == 0:
        print(result.stdout, end="", flush=True)
        return True
    reasons = [line[len("ERROR:"):].strip() for line in (result.stdout + result.stderr).splitlines()
               if line.startswith("ERROR:")]
    named = [reason for reason in reasons if reason.startswith("No matching distribution")]
    _say("pip could not: " + ((named or reasons)[0][:200] if reasons else f"exit {result.returncode}"))
    return False


def _python_out(code: str, cwd: str | None = None) -> subprocess.CompletedProcess:
    """Runs ``code`` in a fresh interpreter (outside the checkout by default,
    so the source folder droppath_ext/ does not shadow the installed package)."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=cwd or tempfile.gettempdir())


def _torch_version() -> tuple[str, str | None] | None:
    """(torch.__version__, torch.version.cuda) of the installed torch, or None."""
    if importlib.util.find_spec("torch") is None:
        return None
    # The distribution's version (what pip pins), which may lack the local
    # tag torch.__version__ carries (2.14.1 vs 2.14.1+cu130).
    result = _python_out("import importlib.metadata as m, torch; print(m.version('torch')); print(torch.version.cuda)")
    if result.returncode != 0:
        sys.exit(f"torch is installed but does not import:\n{result.stderr[-2000:]}")
    version, cuda = result.stdout.split()[-2:]
    return version, (None if cuda == "None" else cuda)


def _minor(version: str) -> tuple[int, int]:
    major, minor = re.match(r"(\d+)\.(\d+)", version).groups()
    return int(major), int(minor)


def _ensure_torch(spec: str) -> tuple[str, str | None]:
    found = _torch_version()
    if found is None:
        _say(f"no torch in this Python: installing {spec} (pass --torch to choose another)")
        _pip("install", spec)
        found = _torch_version()
    version, cuda = found
    if _minor(version) < MIN_TORCH:
        sys.exit(f"torch {version} is installed; droppath_ext needs torch >= {MIN_TORCH[0]}.{MIN_TORCH[1]}")
    _say(f"torch {version} ({'CUDA ' + cuda if cuda else 'CPU build'}): building against it")
    return version, cuda


def _check_compiler() -> None:
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if not compiler or not shutil.which(compiler.split()[0]):
        sys.exit("no C++ compiler found: install one (e.g. `apt install g++`, GCC >= 10 or clang >= 14), "
                 "or set CXX")
    version = subprocess.run([compiler.split()[0], "--version"], capture_output=True, text=True)
    _say(f"C++ compiler: {compiler} ({(version.stdout.splitlines() or ['?'])[0]})")


# A line of the build worth showing: our own stage lines, ninja's progress
# ("[3/10] c++ ... -c /path/csrc/autograd.cpp -o ..."), and errors.
_PROGRESS = re.compile(r"^\s*\[(\d+)/(\d+)\].*\s(\S+\.(?:cpp|cu))\b")
_SHOW = re.compile(r"droppath_ext:|error:|Error|FAILED|Successfully installed")


def _build(log_path: str, editable: bool) -> None:
    cmd = [sys.executable, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "--force-reinstall",
           "-v", *(["-e"] if editable else []), "."]
    _say("building droppath_ext (about 2-4 minutes on 2 cores for the CPU kernels, a few more with CUDA); "
         f"full log: {log_path}")
    print("    $ " + " ".join(cmd), flush=True)
    start = time.monotonic()
    with open(log_path, "w") as log:
        process = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in process.stdout:
            log.write(line)
            progress = _PROGRESS.match(line)
            if progress:
                done, total, source = progress.groups()
                source = os.path.relpath(source, ROOT) if os.path.isabs(source) else source
                print(f"    [{int(time.monotonic() - start):>4}s] compiled {source}", flush=True)
            elif _SHOW.search(line):
                print("    " + line.strip()[:300], flush=True)
        code = process.wait()
    if code != 0:
        with open(log_path) as log:
            tail = log.readlines()[-60:]
        sys.exit("".join(tail) + f"\nthe build failed (exit {code}); the full log is {log_path}")
    _say(f"built and installed in {time.monotonic() - start:.0f} s")


def _self_check() -> int:
    _say("self-check: python -m droppath_ext.info")
    result = subprocess.run([sys.executable, "-m", "droppath_ext.info"], cwd=tempfile.gettempdir())
    return result.returncode


def _torchvision_requirement(torch_version: str) -> str:
    major, minor = _minor(torch_version)
    return f"torchvision=={major - 2}.{minor + TORCHVISION_OFFSET}.*"


def _install_test_dependencies(torch_version: str, cuda: str | None) -> None:
    pin = f"torch=={torch_version}"
    requirements = os.path.join(ROOT, "requirements-test.txt")
    torchvision = _torchvision_requirement(torch_version)
    _say(f"test dependencies ({os.path.relpath(requirements, ROOT)}, and {torchvision} for torch {torch_version})")
    _pip("install", "--quiet", "-r", requirements, "numpy", "pillow", pin)
    # torchvision must be the one built for this torch (an unpinned one can
    # replace torch); a CPU build of torch needs a CPU build of torchvision,
    # from PyTorch's own index (PyPI's is built against the CUDA torch and
    # fails to import there). timm needs torchvision, so it comes after it.
    if cuda is None:
        installed = _pip_optional("install", "--no-deps", "--retries", "1", "--timeout", "20", "--index-url",
                                  PYTORCH_CPU_INDEX, torchvision)
        source = PYTORCH_CPU_INDEX
    else:
        installed = _pip_optional("install", torchvision, pin)
        source = "the package index"
    if installed and _python_out("import torchvision").returncode == 0:
        _pip("install", "--quiet", "timm>=1.0", pin, torchvision)
        # SAM2 (its image encoder's blocks are fused generically): a source package whose build
        # compiles an optional CUDA extension unless told not to; built against this torch.
        os.environ["SAM2_BUILD_CUDA"] = "0"
        _pip_optional("install", "--quiet", "--no-build-isolation", "sam2", pin, torchvision)
        return
    if installed:  # a torchvision for another torch build came: it would break transformers' imports too
        _say(f"the torchvision pip found ({source} or a mirror) does not import with this torch: removing it")
        _pip("uninstall", "--yes", "--quiet", "torchvision")
    _say(f"{torchvision} could not be installed from {source}: the tests that need timm or "
         "torchvision will be skipped (the test summary lists them)")


def _installed_and_compiled() -> bool:
    result = _python_out("import droppath_ext, sys; sys.exit(0 if droppath_ext.backend() != 'python' else 1)")
    return result.returncode == 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--test", action="store_true",
                        help="install the test dependencies and run the test suite (after the install)")
    parser.add_argument("--full", action="store_true", help="with --test: the full test run")
    parser.add_argument("--no-editable", dest="editable", action="store_false",
                        help="a regular install (a copy in site-packages) instead of an editable one, whose "
                             "compiled library is built into this checkout, so the checkout itself imports it")
    parser.add_argument("--torch", default="torch>=2.11", metavar="SPEC",
                        help="what to install when this Python has no torch (default: %(default)s)")
    parser.add_argument("--wheel", metavar="PATH",
                        help="install this prebuilt wheel (no compiler needed: one wheel serves every torch "
                             ">= 2.11 and CPython >= 3.10) instead of building from source")
    parser.add_argument("pytest_args", nargs="*", help="with --test: more pytest arguments (after --)")
    args = parser.parse_args(argv)
    if sys.version_info[:2] < MIN_PYTHON:
        sys.exit(f"Python {sys.version.split()[0]}: droppath_ext needs Python >= 3.10")
    _say(f"Python {sys.version.split()[0]} ({sys.executable})")

    torch_version, cuda = _ensure_torch(args.torch)
    if args.test:
        if not _installed_and_compiled():
            sys.exit("droppath_ext is not installed with its compiled library: run "
                     "`python scripts/install.py` first")
        _install_test_dependencies(torch_version, cuda)
        cmd = [sys.executable, "-m", "pytest", "tests", *(["--full"] if args.full else []), *args.pytest_args]
        _say("the " + ("full" if args.full else "default") + " test run"
             + (" (about 18 minutes on 2 cores)" if args.full else " (under 5 minutes on 2 cores; --full for everything, about 18)"))
        return _run(cmd, cwd=ROOT).returncode

    if args.wheel:
        _say(f"the prebuilt wheel {args.wheel} (numpy with it; torch stays {torch_version})")
        _pip("install", "--quiet", "numpy", f"torch=={torch_version}")
        _pip("install", "--no-deps", "--force-reinstall", args.wheel)
        return _self_check()
    _check_compiler()
    _say("build tools: " + ", ".join(BUILD_TOOLS) + f" (with torch pinned at {torch_version})")
    _pip("install", "--quiet", *BUILD_TOOLS, f"torch=={torch_version}")
    _build(os.path.join(tempfile.gettempdir(), "droppath_ext-build.log"), args.editable)
    return _self_check()


if __name__ == "__main__":
    sys.exit(main())
