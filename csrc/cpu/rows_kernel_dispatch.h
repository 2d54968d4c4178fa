// One entry per CPU capability the kernels are compiled for; the CPU op
// calls the best one this processor supports.
#pragma once

#include <ATen/core/Tensor.h>

namespace droppath::cpu {

using ScaleRowsFn = void (*)(const at::Tensor& out, const at::Tensor& x,
                             const at::Tensor& factors);
using AddRowsFn = void (*)(const at::Tensor& out, const at::Tensor& residual,
                           const at::Tensor& branch, const at::Tensor& factors);

struct RowsKernels {
  ScaleRowsFn scale_rows;
  AddRowsFn add_rows;
  const char* capability;
};

#define DROPPATH_DECLARE_ROWS_KERNELS(CAP) \
  namespace CAP {                          \
  RowsKernels rows_kernels();              \
  }
DROPPATH_DECLARE_ROWS_KERNELS(DEFAULT)
#if defined(__x86_64__) || defined(_M_X64)
DROPPATH_DECLARE_ROWS_KERNELS(AVX2)
DROPPATH_DECLARE_ROWS_KERNELS(AVX512)
#endif
#undef DROPPATH_DECLARE_ROWS_KERNELS

// The kernels for the best capability of this CPU that ATen also allows
// (ATEN_CPU_CAPABILITY=default|avx2|avx512 lowers it, as for ATen's own).
const RowsKernels& best_rows_kernels();

}  // namespace droppath::cpu
