#!/usr/bin/env bash
# Builds the CPU extension in place in a scratch copy of the tree, with the
# compiler (CC/CXX), Python (PYTHON) and build switches the environment gives,
# and runs pytest against that build. CI uses it for the clang build, for a
# second torch version, and (scripts/sanitize_cpu.sh) for the sanitizer build.
#
#   scripts/scratch_build.sh LABEL [pytest arguments...]
#
# TEST_PRELOAD, when set, is LD_PRELOAD for the test run only (sanitizers).
set -euo pipefail
cd "$(dirname "$0")/.."
LABEL=${1:?usage: scratch_build.sh LABEL [pytest args...]}
shift
PY=${PYTHON:-python3}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
git ls-files -z | xargs -0 -I{} cp --parents {} "$WORK"/
echo "== $LABEL: $($PY -c 'import torch; print("torch", torch.__version__)'), CXX=${CXX:-default}"
(cd "$WORK" && DROPPATH_EXT_NO_CUDA=1 MAX_JOBS=${MAX_JOBS:-2} $PY setup.py build_ext --inplace > build.log 2>&1) \
  || { tail -n 60 "$WORK/build.log"; echo "== $LABEL: build FAILED"; exit 1; }
cd "$WORK"
run() { LD_PRELOAD="${TEST_PRELOAD:-}" "$@"; }
# The scratch build, not an installed one, must be what the tests import.
export PYTHONPATH="$WORK" DROPPATH_EXT_EXPECT_COMPILED=1 DROPPATH_EXT_SKIP_BIG=1
run $PY -c "import droppath_ext._library as L, sys; print(L.REASON); sys.exit(0 if L.LOADED and '$WORK' in L.REASON else 1)"
if [ -n "${DROPPATH_EXT_SANITIZE:-}" ]; then
  # grep reads all of nm's output: with pipefail, grep -q would SIGPIPE nm.
  nm -D droppath_ext/_C*.so | grep __asan_report > /dev/null || { echo "library is not instrumented"; exit 1; }
fi
run $PY -m droppath_ext.info
run $PY -m pytest -q -p no:cacheprovider "$@"
echo "== $LABEL: OK"
