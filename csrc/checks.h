// Input validation shared by every backend, so each error reads the same
// whichever kernel raises it.
#pragma once

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>

#include <optional>

namespace droppath {

// drop_prob in [0, 1], not NaN. Raises ValueError in Python.
void check_drop_prob(double drop_prob);

// A floating tensor (float16, bfloat16, float32, float64) with a batch dim.
void check_input(const at::Tensor& x, const char* name);

// residual and branch: same shape, dtype and device.
void check_pair(const at::Tensor& residual, const at::Tensor& branch);

// factors: 1-D, floating, one value per sample of x, on x's device.
void check_factors(const at::Tensor& x, const at::Tensor& factors);

// A generator, when given, lives on x's device type.
void check_generator(const at::Tensor& x,
                     const std::optional<at::Generator>& generator);

// float64 for float64 inputs, float32 for every other floating dtype: the
// precision the kernels compute in.
at::ScalarType math_dtype(at::ScalarType dtype);

// factors converted to x's math dtype, contiguous: what the kernels read.
at::Tensor math_factors(const at::Tensor& x, const at::Tensor& factors);

// What a kept sample is multiplied by: 1 / (1 - drop_prob), or 1 when not
// scaling. No division at drop_prob == 1 (nothing is kept then).
double kept_factor(double drop_prob, bool scale_by_keep);

}  // namespace droppath
