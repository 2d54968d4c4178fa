// Public C++ API of droppath_ext: what a libtorch program includes.
// Every function goes through the dispatcher, so autograd, CPU/CUDA and
// tracing behave exactly as the same call from Python (torch.ops.droppath.*).
#pragma once

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>

#include <optional>

namespace droppath {

// timm's drop_path: the identity when !training or drop_prob == 0 (x itself,
// arguments checked, no op called); otherwise each sample is kept with
// probability 1 - drop_prob and, if scale_by_keep, rescaled by
// 1 / (1 - drop_prob). All zeros at drop_prob == 1.
// A sample is one index along batch_dim (negative counts from the end), or,
// with cu_seqlens (n + 1 int32/int64 offsets along batch_dim), the range
// [cu_seqlens[i], cu_seqlens[i + 1]) of a packed batch.
at::Tensor forward(const at::Tensor& x, double drop_prob, bool training,
                   bool scale_by_keep,
                   std::optional<at::Generator> generator = std::nullopt,
                   int64_t batch_dim = 0,
                   const std::optional<at::Tensor>& cu_seqlens = std::nullopt);

// residual + forward(branch, ...) in one pass; dropped samples' branch is not read.
// Mixed dtypes promote, as residual + forward(branch) would.
at::Tensor add(const at::Tensor& residual, const at::Tensor& branch,
               double drop_prob, bool training, bool scale_by_keep,
               std::optional<at::Generator> generator = std::nullopt,
               int64_t batch_dim = 0,
               const std::optional<at::Tensor>& cu_seqlens = std::nullopt);

// One factor per sample of x (0, or 1 / keep_prob, or 1 when not scaling),
// in x's math dtype (float64 for float64 inputs, float32 otherwise).
at::Tensor sample_factors(const at::Tensor& x, double drop_prob,
                          bool scale_by_keep,
                          std::optional<at::Generator> generator = std::nullopt,
                          int64_t batch_dim = 0,
                          const std::optional<at::Tensor>& cu_seqlens = std::nullopt);

// out = x with sample s multiplied by factors[s] (exactly 0 where it is 0).
at::Tensor scale_rows(const at::Tensor& x, const at::Tensor& factors,
                      int64_t batch_dim = 0,
                      const std::optional<at::Tensor>& cu_seqlens = std::nullopt);

// out = residual + scale_rows(branch, factors, ...), branch unread where 0.
at::Tensor add_rows(const at::Tensor& residual, const at::Tensor& branch,
                    const at::Tensor& factors, int64_t batch_dim = 0,
                    const std::optional<at::Tensor>& cu_seqlens = std::nullopt);

// The rows of x along batch_dim that `rows` names, in that order, each
// multiplied by its factor (factors: one per row of x) when factors are
// given; zeros for an entry of -1. inverse_rows (one entry per row of x:
// where that row went, or -1) is what the gradient takes.
at::Tensor take_rows(const at::Tensor& x, const at::Tensor& rows,
                     const at::Tensor& inverse_rows,
                     const std::optional<at::Tensor>& factors = std::nullopt,
                     int64_t batch_dim = 0);

// residual + branch scattered back: row b of the result is
// residual[b] + branch[rows[b]] * factors[b], or residual[b] where
// factors[b] == 0 or rows[b] == -1. inverse_rows: the residual row of each
// branch row.
at::Tensor add_taken_rows(const at::Tensor& residual, const at::Tensor& branch,
                          const at::Tensor& factors, const at::Tensor& rows,
                          const at::Tensor& inverse_rows, int64_t batch_dim = 0);

}  // namespace droppath
