#!/usr/bin/env bash
# The README's two commands, run as a newcomer would: in a fresh virtual
# environment, on a fresh copy of the tree (git's files only), with a given
# torch and Python. Prints each step's time and the test summary line.
#
#   scripts/fresh_venv_check.sh TORCH_SPEC [PYTHON] [more install.py --test arguments...]
#   scripts/fresh_venv_check.sh "torch==2.13.0" python3.11
#   WHEEL=dist/droppath_ext-0.1.0-cp310-abi3-linux_x86_64.whl scripts/fresh_venv_check.sh "torch==2.11.0" python3.12
#
# With WHEEL set, step 1 installs that prebuilt wheel (--no-deps, no
# compiler) instead of building: scripts/one_wheel_check.sh runs it so, one
# wheel into venvs with other torches and CPythons.
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_SPEC=${1:?usage: fresh_venv_check.sh TORCH_SPEC [PYTHON] [install.py --test args...]}
PY=${2:-python3}
shift $(( $# >= 2 ? 2 : 1 ))
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
git ls-files -z | xargs -0 -I{} cp --parents {} "$WORK"/
"$PY" -m venv "$WORK/venv"
VPY="$WORK/venv/bin/python"
echo "== fresh venv: $("$VPY" --version), $TORCH_SPEC"
step() {
  local name=$1; shift
  local start=$SECONDS
  "$@" > "$WORK/$name.log" 2>&1 || { tail -n 60 "$WORK/$name.log"; echo "== $name FAILED after $((SECONDS - start)) s"; exit 1; }
  echo "== $name: $((SECONDS - start)) s"
}
cd "$WORK"
# 1. installs torch, the build tools, builds (or installs the wheel), and ends with info's self-check.
if [ -n "${WHEEL:-}" ]; then
  step install "$VPY" scripts/install.py --torch "$TORCH_SPEC" --wheel "$WHEEL"
else
  step install "$VPY" scripts/install.py --torch "$TORCH_SPEC"
fi
grep -E "^(python|torch|backend|abi|build.with_cuda|build.torch_version) " install.log || true
tail -n 1 install.log
if grep -iE "^ERROR|dependency conflicts|incompatible" install.log; then echo "== install printed pip errors"; exit 1; fi
# 2. test dependencies, then the default test run.
step test "$VPY" scripts/install.py --test "$@"
grep -E "optional dependency|slow tests not run" test.log || true
tail -n 1 test.log
if grep -iE "^ERROR|dependency conflicts|incompatible" test.log; then echo "== test printed pip errors"; exit 1; fi
echo "== fresh venv ($TORCH_SPEC): OK"
