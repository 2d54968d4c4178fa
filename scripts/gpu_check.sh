#!/usr/bin/env bash
# Everything that needs a GPU, as one script (see the CUDA issue): build with
# the machine's torch, run the test suite (CUDA cases included), run every
# kernel under compute-sanitizer, and benchmark on the GPU. Results go to
# $OUT (default ./gpu-results).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
PY=${PYTHON:-python}
status=0
run() { local name=$1; shift; echo "== $name: $*"; "$@" > "$OUT/$name.log" 2>&1; local rc=$?; echo "   rc=$rc"; tail -n 5 "$OUT/$name.log"; [ $rc -eq 0 ] || status=1; }

nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}
run build env FORCE_CUDA=1 $PY -m pip install --no-build-isolation --no-deps .
run info $PY -P -m droppath_ext.info
run tests env DROPPATH_EXT_SKIP_BIG=1 $PY -P -m pytest -q -ra -x tests -m "not slow" -p no:cacheprovider
run tests_cuda $PY -P -m pytest -q -ra tests/test_cuda.py tests/test_semantics.py tests/test_fuzz.py -k "cuda" -p no:cacheprovider
SAN=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
for tool in memcheck racecheck initcheck; do
  run "sanitizer_$tool" "$SAN" --tool "$tool" --error-exitcode 1 $PY -P scripts/cuda_sanitizer_workload.py
done
run benchmark $PY -P -m droppath_ext.benchmark --device cuda --rounds 5 --min-run-time 0.1 \
  --shapes 8x197x768,64x197x768,32x96x56x56 --dtypes f32,bf16,f16 --json "$OUT/benchmark.json"
cat "$OUT/benchmark.log"
exit $status
