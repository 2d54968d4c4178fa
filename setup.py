"""Build droppath_ext's compiled library (droppath_ext/_C*.so).

Environment switches:
  FORCE_CUDA=1                build the CUDA kernels, or fail saying why not
  DROPPATH_EXT_NO_CUDA=1      never build the CUDA kernels
  TORCH_CUDA_ARCH_LIST=...    CUDA archs (default: 8.0;8.6;8.9;9.0+PTX)
  MAX_JOBS=N                  parallel compile jobs (read by torch's ninja build)
  DEBUG=1                     -O0 -g instead of -O3
  DROPPATH_EXT_SANITIZE=...   e.g. address,undefined: build with -fsanitize (scripts/sanitize_cpu.sh)
  CC / CXX                    the host compiler (GCC >= 9 or clang >= 14)
"""

from __future__ import annotations

import glob
import json
import os
import platform
import shutil
import subprocess
import sys

import torch
from setuptools import setup


def _find_cuda_home() -> str | None:
    """The CUDA toolkit root: $CUDA_HOME, else the folder above the real nvcc
    (an `nvcc` on PATH may be a wrapper script outside the toolkit), else
    /usr/local/cuda. A root counts only if it has the runtime headers."""
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return None  # torch reads these itself
    candidates = []
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    candidates.append("/usr/local/cuda")
    for root in candidates:
        if os.path.exists(os.path.join(root, "include", "cuda_runtime.h")):
            return root
    return None


if torch.version.cuda is not None and _find_cuda_home():
    # Must precede the import below: torch resolves CUDA_HOME when imported.
    os.environ["CUDA_HOME"] = _find_cuda_home()

from torch.utils import cpp_extension  # noqa: E402

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CUDA_ARCHS = "8.0;8.6;8.9;9.0+PTX"
CPU_DIR = os.path.join("csrc", "cpu")


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _cuda_unavailable_reason() -> str | None:
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is not a CUDA build"
    if cpp_extension.CUDA_HOME is None:
        return "no CUDA toolkit found (install one matching torch's CUDA major version, or set CUDA_HOME)"
    nvcc = os.path.join(cpp_extension.CUDA_HOME, "bin", "nvcc")
    if not os.path.exists(nvcc):
        return f"no nvcc at {nvcc}"
    return None


def _build_cuda() -> bool:
    if _flag("DROPPATH_EXT_NO_CUDA"):
        return False
    reason = _cuda_unavailable_reason()
    if _flag("FORCE_CUDA") and reason is not None:
        sys.exit(f"FORCE_CUDA=1 but the CUDA kernels cannot be built: {reason}")
    return reason is None


def _capability_flags() -> dict[str, list[str]]:
    """capability -> its compiler flags, from csrc/cpu/capability_flags.txt."""
    builds = {}
    with open(os.path.join(ROOT, CPU_DIR, "capability_flags.txt")) as f:
        for line in f:
            if line.strip() and not line.startswith("#"):
                name, *flags = line.split()
                builds[name] = flags
    return builds


def _capability_source(name: str) -> str:
    return os.path.join(CPU_DIR, f"rows_kernel_{name.lower()}.cpp")


CAPABILITY_FLAGS = _capability_flags()
# The x86-64 capability builds; elsewhere only the portable one (DEFAULT).
CAPABILITY_BUILDS = CAPABILITY_FLAGS if platform.machine().lower() in ("x86_64", "amd64") else {}


# The Python package's libraries use only the LibTorch stable ABI, targeted at
# the oldest torch supported: one build loads in every torch from 2.11 on
# (droppath_ext/_library.py). TORCH_STABLE_ONLY makes any include of torch's
# full C++ API a compile error. They use no CPython API either, so the wheel
# is tagged abi3 for CPython >= 3.10 (torch's build defines Py_LIMITED_API
# for py_limited_api extensions).
STABLE_TARGET = "0x020b000000000000"  # torch 2.11
STABLE_MACROS = [("TORCH_TARGET_VERSION", STABLE_TARGET), ("TORCH_STABLE_ONLY", None)]
SHARED_SOURCES = [os.path.join("csrc", "checks.cpp")]  # the kernels' argument checks


def _cxx_flags() -> tuple[list[str], list[str]]:
    """C++ compile and link flags shared by both libraries."""
    # No FMA contraction: residual + branch * factor rounds like the unfused
    # `residual + drop_path(branch)` (and like the Python reference).
    # Hidden visibility: the libraries export nothing (the ops register in
    # static initialisers), and torch's stable types are hidden themselves.
    cxx = (["-O0", "-g"] if _flag("DEBUG") else ["-O3"]) + ["-ffp-contract=off", "-fno-wrapv", "-fvisibility=hidden"]
    ldflags: list[str] = []
    if torch._C.has_openmp:
        cxx.append("-fopenmp")
        ldflags.append("-fopenmp")
    sanitize = os.environ.get("DROPPATH_EXT_SANITIZE", "").strip()
    if sanitize:
        cxx += [f"-fsanitize={sanitize}", "-fno-omit-frame-pointer", "-fno-sanitize-recover=all"]
        ldflags.append(f"-fsanitize={sanitize}")
    return cxx, ldflags


def _cpu_extension():
    """droppath_ext._C: the schemas of the deterministic ops and their CPU kernels."""
    cxx, ldflags = _cxx_flags()
    capability_sources = {_capability_source(name) for name in CAPABILITY_FLAGS}
    sources = SHARED_SOURCES + sorted(glob.glob(os.path.join("csrc", "python", "*.cpp")))
    sources += [s for s in sorted(glob.glob(os.path.join(CPU_DIR, "*.cpp"))) if s not in capability_sources]
    return cpp_extension.CppExtension(
        name="droppath_ext._C",
        sources=sources,
        include_dirs=[os.path.join(ROOT, "csrc")],
        define_macros=STABLE_MACROS,
        extra_compile_args={"cxx": cxx},
        extra_link_args=ldflags,
        py_limited_api=True,
    )


def _cuda_extension():
    """droppath_ext._C_cuda: the CUDA kernels, a library of their own so that
    the CPU one loads in CPU builds of torch (this one links the CUDA runtime
    and torch's CUDA shim, and is loaded only when torch is a CUDA build)."""
    cxx, ldflags = _cxx_flags()
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCHS)
    nvcc = ["-O0", "-g", "-lineinfo"] if _flag("DEBUG") else ["-O3", "-lineinfo"]
    # nvcc gets the macros as flags: setuptools passes define_macros to the host compiler only.
    nvcc += [f"-D{name}" if value is None else f"-D{name}={value}" for name, value in STABLE_MACROS]
    return cpp_extension.CUDAExtension(
        name="droppath_ext._C_cuda",
        sources=SHARED_SOURCES + sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu"))),
        include_dirs=[os.path.join(ROOT, "csrc")],
        define_macros=STABLE_MACROS,
        extra_compile_args={"cxx": cxx, "nvcc": nvcc},
        extra_link_args=ldflags,
        py_limited_api=True,
    )


def _extensions():
    with_cuda = _build_cuda()
    extensions = [_cpu_extension()]
    if with_cuda:
        extensions.append(_cuda_extension())
    return extensions, with_cuda


EXTENSIONS, WITH_CUDA = _extensions()
EXTENSION = EXTENSIONS[0]


def _stage(text: str) -> None:
    print(f"droppath_ext: {text}", file=sys.stderr, flush=True)


class BuildExtension(cpp_extension.BuildExtension):
    """torch's BuildExtension, plus two things it cannot do by itself:

    - compile each CPU capability source (rows_kernel_avx2.cpp, ...) with its
      own -m flags, as PyTorch does for its own kernels, and link the objects
      in after the baseline ones;
    - write droppath_ext/_build_info.json: what was built, against which torch.
    """

    def build_extension(self, ext) -> None:
        if ext is EXTENSION:
            ext.extra_objects = [obj for obj in ext.extra_objects if "cpu_capability_" not in obj]
            ext.extra_objects += self._compile_capability_builds(ext)
        super().build_extension(ext)

    def _compile_capability_builds(self, ext) -> list[str]:
        objects = []
        cxx = ext.extra_compile_args["cxx"]  # torch's additions (ABI, extension name) included
        for name, flags in CAPABILITY_BUILDS.items():
            # A folder per capability: torch's ninja compile writes one build file per folder.
            objects += self.compiler.compile(
                [_capability_source(name)],
                output_dir=os.path.join(self.build_temp, f"cpu_capability_{name.lower()}"),
                macros=ext.define_macros,
                include_dirs=ext.include_dirs,
                debug=self.debug,
                extra_postargs=list(cxx) + flags,
                depends=ext.depends,
            )
        return objects

    def run(self) -> None:
        # Stage lines (shown by `pip install -v` and by scripts/install.py):
        # a build of several minutes should not look hung.
        cuda = f", CUDA kernels for {os.environ.get('TORCH_CUDA_ARCH_LIST')}" if WITH_CUDA else ", no CUDA kernels"
        _stage(f"compiling {sum(len(e.sources) for e in EXTENSIONS)} sources and {len(CAPABILITY_BUILDS)} CPU capability builds "
               f"against torch {torch.__version__}{cuda}")
        super().run()
        _stage(f"linked droppath_ext/_C (compiler: {self._compiler_name()})")
        info = {
            "torch_version": torch.__version__,
            "torch_cuda_version": torch.version.cuda,
            "with_cuda": WITH_CUDA,
            "cuda_arch_list": os.environ.get("TORCH_CUDA_ARCH_LIST") if WITH_CUDA else None,
            "openmp": bool(torch._C.has_openmp),
            "cpu_capabilities": ["DEFAULT", *CAPABILITY_BUILDS],
            "compiler": self._compiler_name(),
            "debug": _flag("DEBUG"),
            "sanitize": os.environ.get("DROPPATH_EXT_SANITIZE") or None,
            "cxx_flags": EXTENSION.extra_compile_args["cxx"],
            "nvcc_flags": EXTENSIONS[1].extra_compile_args.get("nvcc") if WITH_CUDA else None,
            # The stable ABI version the libraries target: they load in this
            # torch and every later one (droppath_ext/_library.py).
            "stable_abi_target": "2.11",
            "py_limited_api": "cp310",
            "python": sys.version.split()[0],
        }
        targets = [os.path.join(self.build_lib, "droppath_ext")]
        if self.inplace:
            targets.append(os.path.join(ROOT, "droppath_ext"))
        for folder in targets:
            os.makedirs(folder, exist_ok=True)
            with open(os.path.join(folder, "_build_info.json"), "w") as f:
                json.dump(info, f, indent=2, sort_keys=True)

    def _compiler_name(self) -> str | None:
        """The C++ compiler and the first line of its --version."""
        compiler = (getattr(self.compiler, "compiler_cxx", None) or [None])[0]
        if compiler is None:
            return None
        try:
            version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30)
            return f"{compiler}: {version.stdout.splitlines()[0]}"
        except (OSError, IndexError, subprocess.SubprocessError):
            return compiler


setup(
    ext_modules=EXTENSIONS,
    # One wheel for CPython >= 3.10: the libraries use no CPython API.
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    package_data={"droppath_ext": ["_build_info.json"]},
)
