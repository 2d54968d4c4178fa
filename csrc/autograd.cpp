// Autograd for the private ops, in C++ so that a TorchScript model loaded
// from C++ trains too. Only the per-sample factors (B values) are saved; the
// input is kept only when the factors themselves require grad.
#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include "checks.h"
#include "droppath.h"

namespace droppath {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// d(out[b])/d(factors[b]) summed over the sample: sum(grad[b] * input[b]).
at::Tensor grad_of_factors(const at::Tensor& grad, const at::Tensor& input,
                           const at::Tensor& factors) {
  const auto math = math_dtype(input.scalar_type());
  at::Tensor product = grad.to(math) * input.to(math);
  if (product.dim() > 1) {
    product = product.flatten(1).sum(1);
  }
  return product.to(factors.scalar_type());
}

class ScaleRows : public torch::autograd::Function<ScaleRows> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x,
                            const at::Tensor& factors) {
    ctx->save_for_backward({factors, factors.requires_grad() ? x : at::Tensor()});
    at::AutoDispatchBelowADInplaceOrView guard;
    return scale_rows(x, factors);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& factors = saved[0];
    const at::Tensor& grad = grads[0];
    at::Tensor grad_x, grad_factors;
    if (ctx->needs_input_grad(0)) {
      grad_x = scale_rows(grad, factors);
    }
    if (ctx->needs_input_grad(1)) {
      grad_factors = grad_of_factors(grad, saved[1], factors);
    }
    return {grad_x, grad_factors};
  }
};

class AddRows : public torch::autograd::Function<AddRows> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& residual,
                            const at::Tensor& branch, const at::Tensor& factors) {
    ctx->save_for_backward(
        {factors, factors.requires_grad() ? branch : at::Tensor()});
    at::AutoDispatchBelowADInplaceOrView guard;
    return add_rows(residual, branch, factors);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& factors = saved[0];
    const at::Tensor& grad = grads[0];
    at::Tensor grad_branch, grad_factors;
    if (ctx->needs_input_grad(1)) {
      grad_branch = scale_rows(grad, factors);
    }
    if (ctx->needs_input_grad(2)) {
      grad_factors = grad_of_factors(grad, saved[1], factors);
    }
    // The residual's gradient is the incoming gradient itself: no copy.
    return {ctx->needs_input_grad(0) ? grad : at::Tensor(), grad_branch,
            grad_factors};
  }
};

at::Tensor scale_rows_autograd(const at::Tensor& x, const at::Tensor& factors) {
  return ScaleRows::apply(x, factors);
}

at::Tensor add_rows_autograd(const at::Tensor& residual, const at::Tensor& branch,
                             const at::Tensor& factors) {
  return AddRows::apply(residual, branch, factors);
}

// Sampling is not differentiable: run below autograd so the factors never
// require grad, whatever x does.
at::Tensor sample_factors_autograd(const at::Tensor& x, double drop_prob,
                                   bool scale_by_keep,
                                   std::optional<at::Generator> generator) {
  at::AutoDispatchBelowADInplaceOrView guard;
  return sample_factors(x, drop_prob, scale_by_keep, std::move(generator));
}

}  // namespace

TORCH_LIBRARY_IMPL(droppath, Autograd, m) {
  m.impl("_scale_rows", &scale_rows_autograd);
  m.impl("_add_rows", &add_rows_autograd);
  m.impl("_sample_factors", &sample_factors_autograd);
}

}  // namespace droppath
