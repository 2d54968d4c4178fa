// Shapes only, for FakeTensor, torch.compile and torch.export. Written with
// symbolic sizes so a dynamic batch stays dynamic; outputs come from the same
// layout helpers as the real kernels (layout.h), so strides match exactly.
// Values (cu_seqlens offsets, row maps) are not read here.
#include <torch/library.h>

#include "checks.h"
#include "layout.h"

namespace droppath {
namespace {

at::Tensor scale_rows_meta(const at::Tensor& x, const at::Tensor& factors, int64_t batch_dim,
                           const std::optional<at::Tensor>& cu_seqlens) {
  check_scale_rows_args(x, factors, batch_dim, cu_seqlens);
  return empty_like_dense(as_dense(x));
}

at::Tensor add_rows_meta(const at::Tensor& residual, const at::Tensor& branch,
                         const at::Tensor& factors, int64_t batch_dim,
                         const std::optional<at::Tensor>& cu_seqlens) {
  check_add_rows_args(residual, branch, factors, batch_dim, cu_seqlens);
  return empty_like_dense(as_add_operands(residual, branch).residual);
}

at::Tensor take_rows_meta(const at::Tensor& x, const at::Tensor& rows,
                          const at::Tensor& inverse_rows, const std::optional<at::Tensor>& factors,
                          int64_t batch_dim) {
  const int64_t dim = check_take_rows_args(x, rows, inverse_rows, factors, batch_dim);
  const at::MemoryFormat format = own_memory_format(x);
  return empty_with_rows(x, dim, rows.sym_size(0), format);
}

at::Tensor add_taken_rows_meta(const at::Tensor& residual, const at::Tensor& branch,
                               const at::Tensor& factors, const at::Tensor& rows,
                               const at::Tensor& inverse_rows, int64_t batch_dim) {
  const int64_t dim =
      check_add_taken_rows_args(residual, branch, factors, rows, inverse_rows, batch_dim);
  return empty_with_rows(residual, dim, residual.sym_size(dim),
                         own_memory_format(residual));
}

}  // namespace

TORCH_LIBRARY_IMPL(droppath, Meta, m) {
  m.impl("_scale_rows", &scale_rows_meta);
  m.impl("_add_rows", &add_rows_meta);
  m.impl("_take_rows", &take_rows_meta);
  m.impl("_add_taken_rows", &add_taken_rows_meta);
}

}  // namespace droppath
