// CPU kernels of the deterministic ops: checks, the layout (layout.h), then
// one pass over memory (rows_kernel.h) at the best vector width available.
// The random factors come from ATen's bernoulli_ (composite.cpp).
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>

#include "../checks.h"
#include "../layout.h"
#include "rows_kernel_dispatch.h"

namespace droppath {
namespace {

// One factor per index along dim, in x's math dtype: the factors as given,
// or with cu_seqlens each segment's factor repeated over its range.
at::Tensor index_factors(const at::Tensor& x, int64_t dim, const at::Tensor& factors,
                         const std::optional<at::Tensor>& cu_seqlens) {
  at::Tensor per_sample = math_factors(x, factors);
  if (!cu_seqlens.has_value()) {
    return per_sample;
  }
  const int64_t length = x.size(dim);
  check_cu_seqlens_values(*cu_seqlens, length);
  at::Tensor per_index = at::empty({length}, per_sample.options());
  const at::Tensor offsets = cu_seqlens->contiguous();
  const int64_t samples = offsets.numel() - 1;
  AT_DISPATCH_FLOATING_TYPES(per_sample.scalar_type(), "droppath_index_factors", [&] {
    const scalar_t* src = per_sample.const_data_ptr<scalar_t>();
    scalar_t* dst = per_index.mutable_data_ptr<scalar_t>();
    AT_DISPATCH_INDEX_TYPES(offsets.scalar_type(), "droppath_index_factors", [&] {
      const index_t* bounds = offsets.const_data_ptr<index_t>();
      for (int64_t s = 0; s < samples; ++s) {
        std::fill(dst + bounds[s], dst + bounds[s + 1], src[s]);
      }
    });
  });
  return per_index;
}

at::Tensor scale_rows_cpu(const at::Tensor& x, const at::Tensor& factors, int64_t batch_dim,
                          const std::optional<at::Tensor>& cu_seqlens) {
  const int64_t dim = check_scale_rows_args(x, factors, batch_dim, cu_seqlens);
  const at::Tensor f = index_factors(x, dim, factors, cu_seqlens);
  const at::Tensor input = as_dense(x);
  at::Tensor out = empty_like_dense(input);
  if (input.numel() > 0) {
    cpu::best_rows_kernels().scale_rows(out, input, f, row_view(input, dim));
  }
  return out;
}

at::Tensor add_rows_cpu(const at::Tensor& residual, const at::Tensor& branch,
                        const at::Tensor& factors, int64_t batch_dim,
                        const std::optional<at::Tensor>& cu_seqlens) {
  const int64_t dim = check_add_rows_args(residual, branch, factors, batch_dim, cu_seqlens);
  const at::Tensor f = index_factors(branch, dim, factors, cu_seqlens);
  const AddOperands in = as_add_operands(residual, branch);
  at::Tensor out = empty_like_dense(in.residual);
  if (out.numel() > 0) {
    cpu::best_rows_kernels().add_rows(out, in.residual, in.branch, f, row_view(in.residual, dim));
  }
  return out;
}

at::Tensor take_rows_cpu(const at::Tensor& x, const at::Tensor& rows,
                         const at::Tensor& inverse_rows, const std::optional<at::Tensor>& factors,
                         int64_t batch_dim) {
  const int64_t dim = check_take_rows_args(x, rows, inverse_rows, factors, batch_dim);
  const at::MemoryFormat format = own_memory_format(x);
  const at::Tensor input = in_memory_format(x, format);
  at::Tensor out = empty_with_rows(input, dim, rows.sym_size(0), format);
  if (out.numel() > 0) {
    const std::optional<at::Tensor> f =
        factors.has_value() ? std::optional<at::Tensor>(math_factors(x, *factors)) : std::nullopt;
    cpu::best_rows_kernels().take_rows(out, input, rows.contiguous(), f,
                                       format_row_view(input.sizes(), dim, format),
                                       rows.size(0));
  }
  return out;
}

at::Tensor add_taken_rows_cpu(const at::Tensor& residual, const at::Tensor& branch,
                              const at::Tensor& factors, const at::Tensor& rows,
                              const at::Tensor& inverse_rows, int64_t batch_dim) {
  const int64_t dim =
      check_add_taken_rows_args(residual, branch, factors, rows, inverse_rows, batch_dim);
  const at::MemoryFormat format = own_memory_format(residual);
  const at::Tensor res = in_memory_format(residual, format);
  const at::Tensor br = in_memory_format(branch, format);
  at::Tensor out = empty_with_rows(res, dim, res.sym_size(dim), format);
  if (out.numel() > 0) {
    cpu::best_rows_kernels().add_taken_rows(out, res, br, math_factors(residual, factors),
                                            rows.contiguous(),
                                            format_row_view(res.sizes(), dim, format),
                                            br.size(dim));
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(droppath, CPU, m) {
  m.impl("_scale_rows", &scale_rows_cpu);
  m.impl("_add_rows", &add_rows_cpu);
  m.impl("_take_rows", &take_rows_cpu);
  m.impl("_add_taken_rows", &add_taken_rows_cpu);
}

}  // namespace droppath
