#!/usr/bin/env bash
# Builds the CPU extension with AddressSanitizer + UndefinedBehaviorSanitizer
# in a scratch copy of the tree and runs the test suite against it. Python and
# torch are not instrumented, so the ASan runtime is preloaded; leak checking
# is off (CPython's own allocations would drown it).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
git ls-files -z | xargs -0 -I{} cp --parents {} "$WORK"/
(cd "$WORK" && DROPPATH_EXT_NO_CUDA=1 DROPPATH_EXT_SANITIZE=address,undefined \
  MAX_JOBS=${MAX_JOBS:-2} $PY setup.py build_ext --inplace > build.log 2>&1) || { tail -50 "$WORK/build.log"; exit 1; }
ASAN_LIB=$(gcc -print-file-name=libasan.so)
UBSAN_LIB=$(gcc -print-file-name=libubsan.so)
cd "$WORK"
export LD_PRELOAD="$ASAN_LIB $UBSAN_LIB" ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:detect_odr_violation=0
# The instrumented copy, not an installed one, must be what the tests import.
$PY -c "import droppath_ext._library as L, sys; print(L.REASON); sys.exit(0 if L.LOADED and '$WORK' in L.REASON else 1)"
# grep reads all of nm's output: with pipefail, grep -q would SIGPIPE nm.
nm -D droppath_ext/_C*.so | grep __asan_report > /dev/null || { echo "library is not instrumented"; exit 1; }
LD_PRELOAD="$ASAN_LIB $UBSAN_LIB" \
ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:detect_odr_violation=0 \
UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
DROPPATH_EXT_EXPECT_COMPILED=1 DROPPATH_EXT_SKIP_BIG=1 \
  $PY -m pytest -q -p no:cacheprovider tests/test_semantics.py tests/test_errors.py \
    tests/test_autograd.py tests/test_opcheck.py tests/test_fuzz.py tests/test_residual.py \
    tests/test_reliability.py tests/test_library.py "$@"
