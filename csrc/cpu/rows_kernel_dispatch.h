// One entry per CPU capability the kernels are compiled for; the CPU ops
// call the best one this processor supports.
#pragma once

#include <optional>

#include "../checks.h"
#include "../layout.h"

namespace droppath::cpu {

struct RowsKernels {
  void (*scale_rows)(const Tensor& out, const Tensor& x, const Tensor& factors, RowView view);
  void (*add_rows)(const Tensor& out, const Tensor& residual, const Tensor& branch,
                   const Tensor& factors, RowView view);
  void (*take_rows)(const Tensor& out, const Tensor& x, const Tensor& rows,
                    const OptionalTensor& factors, RowView source, int64_t out_rows);
  void (*add_taken_rows)(const Tensor& out, const Tensor& residual, const Tensor& branch,
                         const Tensor& factors, const Tensor& rows, RowView view,
                         int64_t branch_rows);
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
