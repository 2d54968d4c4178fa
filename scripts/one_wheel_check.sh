#!/usr/bin/env bash
# One wheel for every torch >= 2.11 and every CPython >= 3.10, proved: build
# the wheel once (CPU and CUDA kernels, against the installed torch), audit
# it, then install that same file with --no-deps into fresh venvs with other
# torches and CPythons, where info's self-check and the default tests run.
#
#   scripts/one_wheel_check.sh                       # the matrix below
#   scripts/one_wheel_check.sh python3.12:torch==2.11.0 python3.11:torch==2.13.0
#
# Each entry is PYTHON:TORCH_SPEC. torch 2.15.0 is past this machine's pip
# cap (a constraint file): that entry's install lifts it (DESIGN.md).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ $# -gt 0 ]; then
  MATRIX=("$@")
else
  MATRIX=(
    "python3.12:torch==2.11.0"   # the oldest torch supported; the GPU machines' torch and Python
    "python3.11:torch==2.13.0"   # a CPU build of torch (on this machine's disk): the CUDA library stays unloaded
    "python3.10:torch==2.14.1"   # the oldest CPython supported
    "python3.11:torch==2.15.0"   # the newest torch on the registry
  )
fi
DIST=$(mktemp -d)
trap 'rm -rf "$DIST"' EXIT

# 1. The wheel, once: FORCE_CUDA makes a missing CUDA toolkit an error.
start=$SECONDS
FORCE_CUDA=1 "$PY" -m pip wheel --no-build-isolation --no-deps -w "$DIST" . > "$DIST/build.log" 2>&1 \
  || { tail -n 60 "$DIST/build.log"; echo "== wheel build FAILED"; exit 1; }
WHEEL=$(ls "$DIST"/droppath_ext-*.whl)
echo "== wheel: $(basename "$WHEEL") ($(du -h "$WHEEL" | cut -f1)), built with torch $("$PY" -c 'import torch; print(torch.__version__)') in $((SECONDS - start)) s"
case "$(basename "$WHEEL")" in
  *-cp310-abi3-*) ;;
  *) echo "== not a cp310-abi3 wheel"; exit 1 ;;
esac

# 2. The audit: CPython's limited API only (abi3audit), and torch only through
# its stable C shim (no at::/c10::/torch:: C++ symbol).
"$PY" -m pip install --quiet abi3audit 2>&1 | grep -v "^WARNING: Location" || true
"$PY" -m abi3audit --strict --summary "$WHEEL"
mkdir "$DIST/unpacked" && (cd "$DIST/unpacked" && "$PY" -m zipfile -e "$WHEEL" .)
for lib in "$DIST"/unpacked/droppath_ext/_C*.so; do
  cpp=$(nm -D --undefined-only "$lib" | awk '{print $NF}' | c++filt | grep -E '^(at|c10|torch|caffe2)::' || true)
  if [ -n "$cpp" ]; then echo "== $(basename "$lib") references torch C++ symbols:"; echo "$cpp" | head; exit 1; fi
  echo "== $(basename "$lib"): $(nm -D --undefined-only "$lib" | grep -cE ' (aoti_torch_|torch_)') stable-shim symbols, no torch C++ symbol"
done

# An interpreter for "python3.12": on PATH, else pyenv's (whose shims answer
# only for the versions selected globally).
find_python() {
  local name=$1 version=${1#python} candidate
  if "$name" --version > /dev/null 2>&1; then echo "$name"; return; fi
  if command -v pyenv > /dev/null; then
    candidate=$(ls -d "$(pyenv root)"/versions/"$version".*/bin/"$name" 2>/dev/null | sort -V | tail -n 1)
    if [ -n "$candidate" ]; then echo "$candidate"; return; fi
  fi
  echo "== no $name on this machine" >&2
  return 1
}

# 3. The same file in each fresh venv: info's self-check, then the default tests.
EMPTY_CONSTRAINTS="$DIST/no-constraints.txt"
: > "$EMPTY_CONSTRAINTS"
for entry in "${MATRIX[@]}"; do
  python=$(find_python "${entry%%:*}")
  torch_spec=${entry#*:}
  constraint=()
  if [[ "$torch_spec" == *2.15* ]]; then constraint=(env PIP_CONSTRAINT="$EMPTY_CONSTRAINTS"); fi
  "${constraint[@]}" env WHEEL="$WHEEL" bash scripts/fresh_venv_check.sh "$torch_spec" "$python"
done
echo "== one wheel, ${#MATRIX[@]} torch/CPython pairs: OK"
