// The public ops, built from the private ones for every backend at once:
// validation first (before any shortcut, as torchvision does), then the
// identity / plain-add shortcut, then sample factors and apply them. Also
// the backend-free diagnostics op.
#include <ATen/ops/add.h>
#include <torch/library.h>

#include "checks.h"
#include "cpu/rows_kernel_dispatch.h"
#include "droppath.h"

namespace droppath {
namespace {

at::Tensor forward_composite(const at::Tensor& x, double drop_prob,
                             bool training, bool scale_by_keep,
                             std::optional<at::Generator> generator) {
  check_drop_prob(drop_prob);
  check_input(x, "x");
  check_generator(x, generator);
  if (!training || drop_prob == 0.0) {
    return x;
  }
  const at::Tensor factors =
      sample_factors(x, drop_prob, scale_by_keep, std::move(generator));
  return scale_rows(x, factors);
}

at::Tensor add_composite(const at::Tensor& residual, const at::Tensor& branch,
                         double drop_prob, bool training, bool scale_by_keep,
                         std::optional<at::Generator> generator) {
  check_drop_prob(drop_prob);
  check_pair(residual, branch);
  check_generator(branch, generator);
  if (!training || drop_prob == 0.0) {
    return at::add(residual, branch);
  }
  const at::Tensor factors =
      sample_factors(branch, drop_prob, scale_by_keep, std::move(generator));
  return add_rows(residual, branch, factors);
}

std::string cpu_kernel_capability() {
  return cpu::best_rows_kernels().capability;
}

}  // namespace

TORCH_LIBRARY_IMPL(droppath, CompositeImplicitAutograd, m) {
  m.impl("forward", &forward_composite);
  m.impl("add", &add_composite);
  m.impl("_cpu_kernel_capability", &cpu_kernel_capability);
}

}  // namespace droppath
