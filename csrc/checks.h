// Argument checks of the deterministic ops, on the LibTorch stable ABI: every
// kernel (CPU, CUDA) starts with them, so a kernel never reads out of bounds
// whoever calls it. The messages are the Python backend's (_validation.py,
// _reference.py), word for word. Errors raised here reach Python as
// RuntimeError: the Python layer of the ops (droppath_ext/_ops.py) and the
// C++ package's autograd kernels check first and raise the typed errors
// (ValueError, TypeError, IndexError); these checks back them up.
#pragma once

#include <torch/csrc/stable/tensor.h>

#include <optional>
#include <string>

#include "dtypes.h"

namespace droppath {

using torch::stable::Tensor;
using OptionalTensor = std::optional<Tensor>;

// "cpu", "cuda:0": as torch prints a device.
std::string device_name(const Tensor& t);

// batch_dim in [-x.dim(), x.dim()), returned as a non-negative dim.
int64_t normalize_batch_dim(const Tensor& x, int64_t batch_dim);

// The offsets' values, on the host: cu_seqlens[0] == 0, non-decreasing,
// cu_seqlens[-1] == length. (CUDA kernels never need this for safety: they
// search the offsets in bounds whatever their values.)
void check_cu_seqlens_values(const Tensor& host_offsets, int64_t length);

// How many samples x holds: segments of cu_seqlens, else indices along dim.
int64_t sample_count(const Tensor& x, int64_t dim, const OptionalTensor& cu_seqlens);

// Each deterministic op's checks; they return the batch dim, normalised.
int64_t check_scale_rows_args(const Tensor& x, const Tensor& factors, int64_t batch_dim,
                              const OptionalTensor& cu_seqlens);
int64_t check_add_rows_args(const Tensor& residual, const Tensor& branch, const Tensor& factors,
                            int64_t batch_dim, const OptionalTensor& cu_seqlens);
int64_t check_take_rows_args(const Tensor& x, const Tensor& rows, const Tensor& inverse_rows,
                             const OptionalTensor& factors, int64_t batch_dim);
int64_t check_add_taken_rows_args(const Tensor& residual, const Tensor& branch,
                                  const Tensor& factors, const Tensor& rows,
                                  const Tensor& inverse_rows, int64_t batch_dim);

// factors converted to x's math dtype, contiguous: what the kernels read.
Tensor math_factors(const Tensor& x, const Tensor& factors);

}  // namespace droppath
