// The Python wheel's library: the deterministic ops' schemas, on the LibTorch
// stable ABI (their CPU and CUDA kernels register from cpu/ and cuda/). The
// ops that draw (forward, add, _sample_factors), autograd, forward AD, the
// fake kernels and vmap are registered from Python next to them
// (droppath_ext/_ops.py), so that this library references no torch C++
// symbol and one build loads in every torch from 2.11 on.
#include <torch/csrc/stable/library.h>

#include "../schemas.h"

STABLE_TORCH_LIBRARY(droppath, m) {
  m.def(droppath::schema::kScaleRows);
  m.def(droppath::schema::kAddRows);
  m.def(droppath::schema::kTakeRows);
  m.def(droppath::schema::kAddTakenRows);
  m.def(droppath::schema::kCpuKernelCapability);
}
