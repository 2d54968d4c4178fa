// CPU kernels of the deterministic ops, on the LibTorch stable ABI: checks,
// the layout (layout.h), then one pass over memory (rows_kernel.h) at the
// best vector width available. The random factors come from ATen's
// bernoulli_ (drawn by the callers: droppath_ext/_ops.py, or the C++
// package's composite.cpp).
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>

#include <algorithm>

#include "../checks.h"
#include "../layout.h"
#include "rows_kernel_dispatch.h"

namespace droppath {
namespace {

// One factor per index along dim, in x's math dtype: the factors as given,
// or with cu_seqlens each segment's factor repeated over its range.
Tensor index_factors(const Tensor& x, int64_t dim, const Tensor& factors,
                     const OptionalTensor& cu_seqlens) {
  Tensor per_sample = math_factors(x, factors);
  if (!cu_seqlens.has_value()) {
    return per_sample;
  }
  const int64_t length = x.size(dim);
  check_cu_seqlens_values(*cu_seqlens, length);  // the fill below trusts them
  Tensor per_index = empty_strided({length}, {1}, per_sample, per_sample.scalar_type());
  const Tensor offsets = torch::stable::contiguous(*cu_seqlens);
  const int64_t samples = offsets.numel() - 1;
  dispatch_math(per_sample.scalar_type(), [&](auto type) {
    using math = typename decltype(type)::type;
    const math* src = static_cast<const math*>(per_sample.const_data_ptr());
    math* dst = static_cast<math*>(per_index.mutable_data_ptr());
    const auto fill = [&](const auto* bounds) {
      for (int64_t s = 0; s < samples; ++s) {
        std::fill(dst + bounds[s], dst + bounds[s + 1], src[s]);
      }
    };
    if (offsets.scalar_type() == ScalarType::Int) {
      fill(static_cast<const int32_t*>(offsets.const_data_ptr()));
    } else {
      fill(static_cast<const int64_t*>(offsets.const_data_ptr()));
    }
  });
  return per_index;
}

Tensor scale_rows_cpu(Tensor x, Tensor factors, int64_t batch_dim, OptionalTensor cu_seqlens) {
  const int64_t dim = check_scale_rows_args(x, factors, batch_dim, cu_seqlens);
  const Tensor f = index_factors(x, dim, factors, cu_seqlens);
  const Tensor input = as_dense(x);
  Tensor out = empty_like_dense(input);
  if (input.numel() > 0) {
    cpu::best_rows_kernels().scale_rows(out, input, f, row_view(input, dim));
  }
  return out;
}

Tensor add_rows_cpu(Tensor residual, Tensor branch, Tensor factors, int64_t batch_dim,
                    OptionalTensor cu_seqlens) {
  const int64_t dim = check_add_rows_args(residual, branch, factors, batch_dim, cu_seqlens);
  const Tensor f = index_factors(branch, dim, factors, cu_seqlens);
  const AddOperands in = as_add_operands(residual, branch);
  Tensor out = empty_like_dense(in.residual);
  if (out.numel() > 0) {
    cpu::best_rows_kernels().add_rows(out, in.residual, in.branch, f, row_view(in.residual, dim));
  }
  return out;
}

Tensor take_rows_cpu(Tensor x, Tensor rows, Tensor inverse_rows, OptionalTensor factors,
                     int64_t batch_dim) {
  const int64_t dim = check_take_rows_args(x, rows, inverse_rows, factors, batch_dim);
  const MemoryFormat format = own_memory_format(x);
  const Tensor input = in_memory_format(x, format);
  Tensor out = empty_with_rows(input, dim, rows.size(0), format);
  if (out.numel() > 0) {
    const OptionalTensor f =
        factors.has_value() ? OptionalTensor(math_factors(x, *factors)) : std::nullopt;
    cpu::best_rows_kernels().take_rows(out, input, torch::stable::contiguous(rows), f,
                                       format_row_view(sizes_of(input), dim, format),
                                       rows.size(0));
  }
  return out;
}

Tensor add_taken_rows_cpu(Tensor residual, Tensor branch, Tensor factors, Tensor rows,
                          Tensor inverse_rows, int64_t batch_dim) {
  const int64_t dim =
      check_add_taken_rows_args(residual, branch, factors, rows, inverse_rows, batch_dim);
  const MemoryFormat format = own_memory_format(residual);
  const Tensor res = in_memory_format(residual, format);
  const Tensor br = in_memory_format(branch, format);
  Tensor out = empty_with_rows(res, dim, res.size(dim), format);
  if (out.numel() > 0) {
    cpu::best_rows_kernels().add_taken_rows(out, res, br, math_factors(residual, factors),
                                            torch::stable::contiguous(rows),
                                            format_row_view(sizes_of(res), dim, format),
                                            br.size(dim));
  }
  return out;
}

// Which CPU build of the kernels runs here ("DEFAULT", "AVX2", "AVX512").
std::string cpu_kernel_capability() {
  return cpu::best_rows_kernels().capability;
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(droppath, CPU, m) {
  m.impl("_scale_rows", TORCH_BOX(&scale_rows_cpu));
  m.impl("_add_rows", TORCH_BOX(&add_rows_cpu));
  m.impl("_take_rows", TORCH_BOX(&take_rows_cpu));
  m.impl("_add_taken_rows", TORCH_BOX(&add_taken_rows_cpu));
}

// No tensor argument, so no backend key: the catch-all kernel.
STABLE_TORCH_LIBRARY_IMPL(droppath, CompositeExplicitAutograd, m) {
  m.impl("_cpu_kernel_capability", TORCH_BOX(&cpu_kernel_capability));
}

}  // namespace droppath
