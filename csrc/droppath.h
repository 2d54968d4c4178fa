// Public C++ API of droppath_ext: what a libtorch program includes.
// Every function goes through the dispatcher, so autograd, CPU/CUDA and
// tracing behave exactly as the same call from Python (torch.ops.droppath.*).
#pragma once

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>

#include <optional>

namespace droppath {

// timm's drop_path: identity when !training or drop_prob == 0; otherwise each
// sample (dim 0) is kept with probability 1 - drop_prob and, if scale_by_keep,
// rescaled by 1 / (1 - drop_prob). All zeros at drop_prob == 1.
at::Tensor forward(const at::Tensor& x, double drop_prob, bool training,
                   bool scale_by_keep,
                   std::optional<at::Generator> generator = std::nullopt);

// residual + forward(branch, ...) in one pass; dropped samples' branch is not read.
at::Tensor add(const at::Tensor& residual, const at::Tensor& branch,
               double drop_prob, bool training, bool scale_by_keep,
               std::optional<at::Generator> generator = std::nullopt);

// One factor per sample of x (0 or the keep scale), in x's math dtype
// (float64 for float64 inputs, float32 otherwise), on x's device.
at::Tensor sample_factors(const at::Tensor& x, double drop_prob,
                          bool scale_by_keep,
                          std::optional<at::Generator> generator = std::nullopt);

// out[b] = x[b] * factors[b]
at::Tensor scale_rows(const at::Tensor& x, const at::Tensor& factors);

// out[b] = residual[b] + branch[b] * factors[b]
at::Tensor add_rows(const at::Tensor& residual, const at::Tensor& branch,
                    const at::Tensor& factors);

}  // namespace droppath
