#!/usr/bin/env bash
# The README's two commands, run as a newcomer would: in a fresh virtual
# environment, on a fresh copy of the tree (git's files only), with a given
# torch and Python. Prints each step's time and the test summary line.
#
#   scripts/fresh_venv_check.sh TORCH_SPEC [PYTHON] [more install.py --test arguments...]
#   scripts/fresh_venv_check.sh "torch==2.13.0" python3.11
#
# CI runs it for torch 2.13.0 (the CPU build on this machine's disk).
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
# 1. installs torch, the build tools, builds, and ends with info's self-check.
step install "$VPY" scripts/install.py --torch "$TORCH_SPEC"
grep -E "^(torch|backend|build.with_cuda) " install.log || true
tail -n 1 install.log
if grep -iE "^ERROR|dependency conflicts|incompatible" install.log; then echo "== install printed pip errors"; exit 1; fi
# 2. test dependencies, then the default test run.
step test "$VPY" scripts/install.py --test "$@"
grep -E "optional dependency|slow tests not run" test.log || true
tail -n 1 test.log
if grep -iE "^ERROR|dependency conflicts|incompatible" test.log; then echo "== test printed pip errors"; exit 1; fi
echo "== fresh venv ($TORCH_SPEC): OK"
