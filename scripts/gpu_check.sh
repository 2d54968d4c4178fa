#!/usr/bin/env bash
# Everything that needs a GPU, as one script that finishes well inside one
# 10-minute call (each step has its own time limit, so one stuck step cannot
# eat the others' time): build with the machine's own compiler and torch, the
# CUDA-relevant tests, every kernel under compute-sanitizer, the op benchmark,
# and the training-step benchmark (eager and compiled). Results go to $OUT
# (default ./gpu-results); the last lines printed are the tables.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
PY=${PYTHON:-python}
status=0
run() {
  local name=$1 limit=$2; shift 2
  echo "== $name (limit ${limit}s): $*"
  local start=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "   rc=$rc in $((SECONDS - start))s"
  tail -n 4 "$OUT/$name.log"
  [ $rc -eq 0 ] || status=1
}

nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
{ ${CXX:-c++} --version | head -n 1; nvcc --version | tail -n 2; $PY -c "import torch; print('torch', torch.__version__)"; } \
  > "$OUT/toolchain.txt" 2>&1
cat "$OUT/toolchain.txt"
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}
run build 150 env FORCE_CUDA=1 $PY -m pip install --no-build-isolation --no-deps .
run info 60 $PY -P -m droppath_ext.info
run tests_cuda 120 $PY -P -m pytest -q -ra -p no:cacheprovider -x tests/test_cuda.py \
  tests/test_semantics.py tests/test_layouts.py tests/test_fidelity.py tests/test_residual.py \
  tests/test_transforms.py tests/test_opcheck.py tests/test_errors.py -k cuda
SAN=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
for tool in memcheck racecheck initcheck; do
  run "sanitizer_$tool" 45 "$SAN" --tool "$tool" --error-exitcode 1 $PY -P scripts/cuda_sanitizer_workload.py
done
run benchmark 75 $PY -P -m droppath_ext.benchmark --device cuda --rounds 3 --min-run-time 0.05 --no-compile \
  --shapes 64x197x768,256x197x768,128x96x56x56 --dtypes f32,bf16 --layout-shapes 64x197x768 \
  --json "$OUT/benchmark.json"
# ViT-B/16 and ConvNeXt-T, batch 128, bf16, eager: stock vs converted (default / skip / masked) vs DINOv2.
run train_vit 120 $PY -P benchmarks/train_step.py --device cuda --amp bf16 --model vit_base_patch16_224 \
  --batch 128 --rates 0.1,0.4 --first-steps 20 --steps 30 --json "$OUT/train_vit.json"
run train_convnext 50 $PY -P benchmarks/train_step.py --device cuda --amp bf16 --model convnext_tiny \
  --batch 128 --rates 0.1,0.4 --variants stock,default,masked --first-steps 10 --steps 20 \
  --json "$OUT/train_convnext.json"
# torch.compile: ViT-S/16, batch 256, rate 0.4 (stock vs converted).
run train_compiled 150 $PY -P benchmarks/train_step.py --device cuda --amp bf16 --model vit_small_patch16_224 \
  --batch 256 --rates 0.4 --variants stock,default --compile-only --first-steps 5 --steps 30 \
  --json "$OUT/train_compiled.json"
for name in benchmark train_vit train_convnext train_compiled; do
  echo "== $name"; grep -v "^W[0-9]" "$OUT/$name.log" | tail -n 40
done
exit $status
