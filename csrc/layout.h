// The one memory layout the kernels take: "sample-major", where sample b
// occupies the contiguous range [b * S, (b + 1) * S) of memory (S = numel / B)
// in some dense order. Contiguous and channels_last tensors are sample-major;
// anything else (batch not outermost, expanded, sliced) is copied into a
// contiguous tensor once, here. Meta and device kernels share these helpers
// so fake tensors get exactly the strides the real kernels produce.
#pragma once

#include <ATen/core/Tensor.h>

namespace droppath {

inline bool is_sample_major(const at::Tensor& x) {
  if (x.sym_numel() == 0 || x.sym_size(0) <= 1) {
    return x.is_non_overlapping_and_dense();
  }
  return x.is_non_overlapping_and_dense() &&
         x.sym_stride(0) * x.sym_size(0) == x.sym_numel();
}

inline at::Tensor as_sample_major(const at::Tensor& x) {
  return is_sample_major(x) ? x : x.contiguous();
}

// Both sample-major with the same element order (strides of size-1 dims,
// which never move an index, are ignored).
inline bool same_sample_major_layout(const at::Tensor& a, const at::Tensor& b) {
  if (!is_sample_major(a) || !is_sample_major(b)) {
    return false;
  }
  for (int64_t d = 0; d < a.dim(); ++d) {
    if (a.sym_size(d) != 1 && a.sym_stride(d) != b.sym_stride(d)) {
      return false;
    }
  }
  return true;
}

// residual and branch in one shared sample-major layout: as they are when
// they already share one, else both made contiguous.
struct AddOperands {
  at::Tensor residual;
  at::Tensor branch;
};

inline AddOperands as_add_operands(const at::Tensor& residual,
                                   const at::Tensor& branch) {
  if (same_sample_major_layout(residual, branch)) {
    return {residual, branch};
  }
  return {residual.contiguous(), branch.contiguous()};
}

}  // namespace droppath
