// CPU kernels: draw the per-sample factors from torch's CPU generator, then
// one pass over memory (rows_kernel.h) at the best vector width available.
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Dispatch.h>
#include <ATen/core/DistributionsHelper.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <mutex>

#include "../checks.h"
#include "../layout.h"
#include "rows_kernel_dispatch.h"

namespace droppath {
namespace {

at::Tensor sample_factors_cpu(const at::Tensor& x, double drop_prob,
                              bool scale_by_keep,
                              std::optional<at::Generator> generator) {
  check_drop_prob(drop_prob);
  check_input(x, "x");
  check_generator(x, generator);
  const int64_t batch = x.size(0);
  const at::ScalarType math = math_dtype(x.scalar_type());
  at::Tensor factors = at::empty({batch}, x.options().dtype(math));
  const double keep_prob = 1.0 - drop_prob;
  const double kept_value = kept_factor(drop_prob, scale_by_keep);

  auto* gen = at::get_generator_or_default<at::CPUGeneratorImpl>(
      generator, at::detail::getDefaultCPUGenerator());
  // The generator is shared by every thread that draws from it.
  std::lock_guard<std::mutex> lock(gen->mutex_);
  at::bernoulli_distribution<double> keep(keep_prob);
  AT_DISPATCH_FLOATING_TYPES(math, "droppath_sample_factors", [&] {
    scalar_t* out = factors.mutable_data_ptr<scalar_t>();
    for (int64_t b = 0; b < batch; ++b) {
      out[b] = keep(gen) != 0.0 ? static_cast<scalar_t>(kept_value) : scalar_t(0);
    }
  });
  return factors;
}

at::Tensor scale_rows_cpu(const at::Tensor& x, const at::Tensor& factors) {
  check_input(x, "x");
  check_factors(x, factors);
  const at::Tensor input = as_sample_major(x);
  at::Tensor out = at::empty_like(input);
  if (input.numel() == 0) {
    return out;
  }
  cpu::best_rows_kernels().scale_rows(out, input, math_factors(x, factors));
  return out;
}

at::Tensor add_rows_cpu(const at::Tensor& residual, const at::Tensor& branch,
                        const at::Tensor& factors) {
  check_pair(residual, branch);
  check_factors(branch, factors);
  const AddOperands in = as_add_operands(residual, branch);
  at::Tensor out = at::empty_like(in.residual);
  if (out.numel() == 0) {
    return out;
  }
  cpu::best_rows_kernels().add_rows(out, in.residual, in.branch,
                                    math_factors(branch, factors));
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(droppath, CPU, m) {
  m.impl("_sample_factors", &sample_factors_cpu);
  m.impl("_scale_rows", &scale_rows_cpu);
  m.impl("_add_rows", &add_rows_cpu);
}

}  // namespace droppath
