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
# One budget for the whole script (the device call allows 600 s): a step gets
# its own limit or what is left of the budget, whichever is less.
DEADLINE=$((SECONDS + ${BUDGET:-540}))
run() {
  local name=$1 limit=$2; shift 2
  local left=$((DEADLINE - SECONDS))
  if [ "$left" -lt 15 ]; then echo "== $name: skipped, the time budget is spent"; status=1; return; fi
  [ "$limit" -le "$left" ] || limit=$left
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
run build 120 env FORCE_CUDA=1 $PY -m pip install --no-build-isolation --no-deps -e .
run info 60 $PY -m droppath_ext.info
run tests_cuda 100 $PY -m pytest -q -ra -p no:cacheprovider -x tests/test_cuda.py \
  tests/test_semantics.py tests/test_layouts.py tests/test_fidelity.py tests/test_residual.py \
  tests/test_transforms.py tests/test_opcheck.py tests/test_errors.py -k cuda
SAN=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
for tool in memcheck racecheck initcheck; do
  run "sanitizer_$tool" 30 "$SAN" --tool "$tool" --error-exitcode 1 $PY scripts/cuda_sanitizer_workload.py
done
run benchmark 60 $PY -m droppath_ext.benchmark --device cuda --rounds 3 --min-run-time 0.05 --no-compile \
  --shapes 64x197x768,256x197x768,128x96x56x56 --dtypes f32,bf16 --layout-shapes 64x197x768 \
  --json "$OUT/benchmark.json"
# ViT-B/16 and ConvNeXt-T, batch 128, bf16, eager: stock vs converted (default / skip / masked) vs DINOv2.
run train_vit 100 $PY benchmarks/train_step.py --device cuda --amp bf16 --model vit_base_patch16_224 \
  --batch 128 --rates 0.1,0.4 --first-steps 20 --steps 30 --json "$OUT/train_vit.json"
run train_convnext 45 $PY benchmarks/train_step.py --device cuda --amp bf16 --model convnext_tiny \
  --batch 128 --rates 0.1,0.4 --variants stock,default,masked --first-steps 10 --steps 20 \
  --json "$OUT/train_convnext.json"
# torch.compile: ViT-B/16, batch 128, bf16, rates 0.1 and 0.4: stock vs converted
# (default policy: skip mode compiled where it pays, masked elsewhere) vs DINOv2-style.
run train_compiled 200 $PY benchmarks/train_step.py --device cuda --amp bf16 --model vit_base_patch16_224 \
  --batch 128 --rates 0.1,0.4 --variants stock,default,dinov2 --compile-only --first-steps 3 --steps 15 \
  --json "$OUT/train_compiled.json"
for name in benchmark train_vit train_convnext train_compiled; do
  echo "== $name"; grep -v "^W[0-9]" "$OUT/$name.log" | tail -n 40
done
exit $status
