#!/usr/bin/env bash
# The CPU extension under AddressSanitizer + UndefinedBehaviorSanitizer: built
# in a scratch copy of the tree and tested there (scripts/scratch_build.sh).
# Python and torch are not instrumented, so the ASan runtime is preloaded;
# leak checking is off (CPython's own allocations would drown it).
set -euo pipefail
cd "$(dirname "$0")/.."
export DROPPATH_EXT_SANITIZE=address,undefined
export TEST_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)"
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:detect_odr_violation=0
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
exec scripts/scratch_build.sh "ASan+UBSan" tests/test_semantics.py tests/test_errors.py \
  tests/test_autograd.py tests/test_opcheck.py tests/test_fuzz.py tests/test_residual.py \
  tests/test_reliability.py tests/test_library.py tests/test_layouts.py tests/test_transforms.py "$@"
