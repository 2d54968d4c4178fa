// The C++ package's checks on torch's full C++ API: the drawing ops'
// arguments (composite.cpp, api.cpp) and the values of packed-batch offsets
// (autograd.cpp: the CUDA kernels trust them). Typed errors (c10::ValueError,
// c10::TypeError, c10::IndexError), messages as the Python backend's
// (_validation.py). The deterministic ops' other checks are the stable-ABI
// kernels' own (../checks.h).
#pragma once

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>

#include <optional>

namespace droppath {

// drop_prob in [0, 1], not NaN. Raises ValueError in Python.
void check_drop_prob(double drop_prob);

// A floating tensor (float16, bfloat16, float32, float64) with at least one dim.
void check_input(const at::Tensor& x, const char* name);

// The public add's operands: floating, same shape and device (dtypes may
// differ: they promote).
void check_add_operands(const at::Tensor& residual, const at::Tensor& branch);

// batch_dim in [-x.dim(), x.dim()), returned as a non-negative dim
// (IndexError otherwise, as PyTorch's own dim arguments).
int64_t normalize_batch_dim(const at::Tensor& x, int64_t batch_dim);

// What can be checked without reading cu_seqlens' values: int32/int64,
// 1-D, at least one offset, on x's device.
void check_cu_seqlens(const at::Tensor& x, const std::optional<at::Tensor>& cu_seqlens);

// The values: cu_seqlens[0] == 0, non-decreasing, cu_seqlens[-1] == length.
// A CUDA tensor is copied to the host for this (one synchronisation), once
// per tensor and version: the same offsets passed again are not re-read.
void check_cu_seqlens_values(const at::Tensor& cu_seqlens, int64_t length);

// How many samples x holds: segments of cu_seqlens, else indices along dim.
c10::SymInt sample_count(const at::Tensor& x, int64_t dim,
                         const std::optional<at::Tensor>& cu_seqlens);

// The checks of every op that draws, made before any shortcut (eval
// included); returns the batch dim, normalised.
int64_t check_draw_args(const at::Tensor& x, double drop_prob, int64_t batch_dim,
                        const std::optional<at::Tensor>& cu_seqlens,
                        const std::optional<at::Generator>& generator);

// A generator, when given, lives on x's device.
void check_generator(const at::Tensor& x,
                     const std::optional<at::Generator>& generator);

// float64 for float64 inputs, float32 for every other floating dtype: the
// precision the kernels compute in, and the dtype of the sampled factors.
at::ScalarType math_dtype(at::ScalarType dtype);

}  // namespace droppath
