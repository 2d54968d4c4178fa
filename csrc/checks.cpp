#include "checks.h"

#include <c10/util/Exception.h>

#include <cmath>
#include <string>

namespace droppath {
namespace {

// Python's spelling ("torch.int64"), so messages match the Python backend's.
std::string dtype_name(at::ScalarType dtype) {
  switch (dtype) {
    case at::kBool: return "torch.bool";
    case at::kByte: return "torch.uint8";
    case at::kChar: return "torch.int8";
    case at::kShort: return "torch.int16";
    case at::kInt: return "torch.int32";
    case at::kLong: return "torch.int64";
    case at::kHalf: return "torch.float16";
    case at::kBFloat16: return "torch.bfloat16";
    case at::kFloat: return "torch.float32";
    case at::kDouble: return "torch.float64";
    case at::kComplexHalf: return "torch.complex32";
    case at::kComplexFloat: return "torch.complex64";
    case at::kComplexDouble: return "torch.complex128";
    default: return std::string("torch.") + c10::toString(dtype);
  }
}

}  // namespace

void check_drop_prob(double drop_prob) {
  TORCH_CHECK_VALUE(!std::isnan(drop_prob) && drop_prob >= 0.0 && drop_prob <= 1.0,
                    "drop_prob must be in [0, 1], got ", drop_prob);
}

void check_input(const at::Tensor& x, const char* name) {
  TORCH_CHECK_VALUE(x.defined(), name, " must be a defined tensor");
  const auto dtype = x.scalar_type();
  TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kDouble ||
                       dtype == at::kHalf || dtype == at::kBFloat16,
                   name, " must be float16, bfloat16, float32 or float64, got ",
                   dtype_name(dtype));
  TORCH_CHECK_VALUE(x.dim() >= 1, name,
                    " must have a batch dimension (dim 0), got a 0-dim tensor");
}

void check_pair(const at::Tensor& residual, const at::Tensor& branch) {
  check_input(residual, "residual");
  check_input(branch, "branch");
  TORCH_CHECK_VALUE(residual.sym_sizes().equals(branch.sym_sizes()),
                    "residual and branch must have the same shape, got ",
                    residual.sym_sizes(), " and ", branch.sym_sizes());
  TORCH_CHECK_TYPE(residual.scalar_type() == branch.scalar_type(),
                   "residual and branch must have the same dtype, got ",
                   dtype_name(residual.scalar_type()), " and ",
                   dtype_name(branch.scalar_type()));
  TORCH_CHECK_VALUE(residual.device() == branch.device(),
                    "residual and branch must be on the same device, got ",
                    residual.device(), " and ", branch.device());
}

void check_factors(const at::Tensor& x, const at::Tensor& factors) {
  TORCH_CHECK_VALUE(factors.defined(), "factors must be a defined tensor");
  TORCH_CHECK_VALUE(factors.dim() == 1,
                    "factors must be 1-D (one value per sample), got shape ",
                    factors.sym_sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(factors.scalar_type()),
                   "factors must be a floating tensor, got ",
                   dtype_name(factors.scalar_type()));
  TORCH_CHECK_VALUE(factors.sym_size(0) == x.sym_size(0),
                    "factors must have one value per sample: x has ",
                    x.sym_size(0), " samples, factors has ", factors.sym_size(0));
  TORCH_CHECK_VALUE(factors.device() == x.device(),
                    "factors must be on the input's device ", x.device(),
                    ", got ", factors.device());
}

void check_generator(const at::Tensor& x,
                     const std::optional<at::Generator>& generator) {
  if (generator.has_value() && generator->defined()) {
    TORCH_CHECK_VALUE(generator->device().type() == x.device().type(),
                      "generator must be on the input's device type ",
                      x.device().type(), ", got a generator on ",
                      generator->device());
  }
}

at::ScalarType math_dtype(at::ScalarType dtype) {
  return dtype == at::kDouble ? at::kDouble : at::kFloat;
}

at::Tensor math_factors(const at::Tensor& x, const at::Tensor& factors) {
  return factors.to(math_dtype(x.scalar_type())).contiguous();
}

double kept_factor(double drop_prob, bool scale_by_keep) {
  const double keep_prob = 1.0 - drop_prob;
  return (scale_by_keep && keep_prob > 0.0) ? 1.0 / keep_prob : 1.0;
}

}  // namespace droppath
