// One entry per CPU capability the kernels are compiled for; the CPU ops
// call the best one this processor supports.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

#include "../layout.h"

namespace droppath::cpu {

struct RowsKernels {
  void (*scale_rows)(const at::Tensor& out, const at::Tensor& x, const at::Tensor& factors,
                     RowView view);
  void (*add_rows)(const at::Tensor& out, const at::Tensor& residual, const at::Tensor& branch,
                   const at::Tensor& factors, RowView view);
  void (*take_rows)(const at::Tensor& out, const at::Tensor& x, const at::Tensor& rows,
                    const std::optional<at::Tensor>& factors, RowView source, int64_t out_rows);
  void (*add_taken_rows)(const at::Tensor& out, const at::Tensor& residual,
                         const at::Tensor& branch, const at::Tensor& factors,
                         const at::Tensor& rows, RowView view, int64_t branch_rows);
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
