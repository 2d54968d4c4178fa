// Shapes only, for FakeTensor, torch.compile and torch.export. Written with
// symbolic sizes so a dynamic batch stays dynamic; the output layout comes
// from the same helpers as the real kernels, so strides match exactly.
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include "checks.h"
#include "layout.h"

namespace droppath {
namespace {

at::Tensor sample_factors_meta(const at::Tensor& x, double drop_prob,
                               bool /*scale_by_keep*/,
                               std::optional<at::Generator> /*generator*/) {
  check_drop_prob(drop_prob);
  check_input(x, "x");
  return at::empty_symint({x.sym_size(0)},
                          x.options().dtype(math_dtype(x.scalar_type())));
}

at::Tensor scale_rows_meta(const at::Tensor& x, const at::Tensor& factors) {
  check_input(x, "x");
  check_factors(x, factors);
  return at::empty_like(as_sample_major(x));
}

at::Tensor add_rows_meta(const at::Tensor& residual, const at::Tensor& branch,
                         const at::Tensor& factors) {
  check_pair(residual, branch);
  check_factors(branch, factors);
  return at::empty_like(as_add_operands(residual, branch).residual);
}

}  // namespace

TORCH_LIBRARY_IMPL(droppath, Meta, m) {
  m.impl("_sample_factors", &sample_factors_meta);
  m.impl("_scale_rows", &scale_rows_meta);
  m.impl("_add_rows", &add_rows_meta);
}

}  // namespace droppath
