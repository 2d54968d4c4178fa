#include "checks.h"

#include <torch/csrc/stable/ops.h>

#include <sstream>
#include <vector>

namespace droppath {
namespace {

std::string shape_of(const Tensor& t) {
  std::ostringstream out;
  out << "[";
  for (int64_t d = 0; d < t.dim(); ++d) {
    out << (d ? ", " : "") << t.size(d);
  }
  out << "]";
  return out.str();
}

bool same_device(const Tensor& a, const Tensor& b) {
  return a.device() == b.device();
}

void check_input(const Tensor& x, const char* name) {
  DROPPATH_CHECK(x.defined(), name, " must be a defined tensor");
  DROPPATH_CHECK(is_floating(x.scalar_type()), name,
                  " must be float16, bfloat16, float32 or float64, got ",
                  dtype_name(x.scalar_type()));
  DROPPATH_CHECK(x.dim() >= 1, name, " must have a batch dimension, got a 0-dim tensor");
}

void check_same_dtype_and_device(const Tensor& residual, const Tensor& branch) {
  DROPPATH_CHECK(residual.scalar_type() == branch.scalar_type(),
                  "residual and branch must have the same dtype, got ",
                  dtype_name(residual.scalar_type()), " and ", dtype_name(branch.scalar_type()));
  DROPPATH_CHECK(same_device(residual, branch),
                  "residual and branch must be on the same device, got ", device_name(residual),
                  " and ", device_name(branch));
}

void check_cu_seqlens(const Tensor& x, const OptionalTensor& cu_seqlens) {
  if (!cu_seqlens.has_value()) {
    return;
  }
  const Tensor& offsets = *cu_seqlens;
  DROPPATH_CHECK(offsets.defined(), "cu_seqlens must be a defined tensor or None");
  DROPPATH_CHECK(offsets.scalar_type() == ScalarType::Int || offsets.scalar_type() == ScalarType::Long,
                  "cu_seqlens must be torch.int32 or torch.int64, got ",
                  dtype_name(offsets.scalar_type()));
  DROPPATH_CHECK(offsets.dim() == 1, "cu_seqlens must be 1-D, got shape ", shape_of(offsets));
  DROPPATH_CHECK(offsets.size(0) >= 1,
                  "cu_seqlens must hold n + 1 offsets for n samples, got an empty tensor");
  DROPPATH_CHECK(same_device(offsets, x), "cu_seqlens must be on the input's device ",
                  device_name(x), ", got ", device_name(offsets));
}

void check_factors(const Tensor& x, int64_t dim, const Tensor& factors,
                   const OptionalTensor& cu_seqlens) {
  DROPPATH_CHECK(factors.defined(), "factors must be a defined tensor");
  DROPPATH_CHECK(factors.dim() == 1, "factors must be 1-D (one value per sample), got shape ",
                  shape_of(factors));
  DROPPATH_CHECK(is_floating(factors.scalar_type()), "factors must be a floating tensor, got ",
                  dtype_name(factors.scalar_type()));
  const int64_t samples = sample_count(x, dim, cu_seqlens);
  DROPPATH_CHECK(factors.size(0) == samples,
                  "factors must have one value per sample: the input has ", samples,
                  " samples, factors has ", factors.size(0));
  DROPPATH_CHECK(same_device(factors, x), "factors must be on the input's device ",
                  device_name(x), ", got ", device_name(factors));
}

void check_rows(const Tensor& x, const Tensor& rows, const char* name, int64_t length = -1) {
  DROPPATH_CHECK(rows.defined() && rows.dim() == 1, name, " must be a 1-D tensor");
  DROPPATH_CHECK(rows.scalar_type() == ScalarType::Long, name, " must be torch.int64, got ",
                  dtype_name(rows.scalar_type()));
  DROPPATH_CHECK(length < 0 || rows.size(0) == length, name, " must have ", length,
                  " entries, got ", rows.size(0));
  DROPPATH_CHECK(same_device(rows, x), name, " must be on the input's device ", device_name(x),
                  ", got ", device_name(rows));
}

template <typename index_t>
void check_offsets(const index_t* offsets, int64_t count, int64_t length) {
  DROPPATH_CHECK(offsets[0] == 0, "cu_seqlens must start at 0, got ",
                  static_cast<int64_t>(offsets[0]));
  for (int64_t i = 1; i < count; ++i) {
    DROPPATH_CHECK(offsets[i] >= offsets[i - 1], "cu_seqlens must be non-decreasing, got ",
                    static_cast<int64_t>(offsets[i]), " after ",
                    static_cast<int64_t>(offsets[i - 1]), " at index ", i);
  }
  DROPPATH_CHECK(offsets[count - 1] == length,
                  "cu_seqlens must end at the size of the batch dimension (", length, "), got ",
                  static_cast<int64_t>(offsets[count - 1]));
}

}  // namespace

std::string dtype_name(ScalarType dtype) {
  switch (dtype) {
    case ScalarType::Bool: return "torch.bool";
    case ScalarType::Byte: return "torch.uint8";
    case ScalarType::Char: return "torch.int8";
    case ScalarType::Short: return "torch.int16";
    case ScalarType::Int: return "torch.int32";
    case ScalarType::Long: return "torch.int64";
    case ScalarType::Half: return "torch.float16";
    case ScalarType::BFloat16: return "torch.bfloat16";
    case ScalarType::Float: return "torch.float32";
    case ScalarType::Double: return "torch.float64";
    case ScalarType::ComplexHalf: return "torch.complex32";
    case ScalarType::ComplexFloat: return "torch.complex64";
    case ScalarType::ComplexDouble: return "torch.complex128";
    default: return "dtype " + std::to_string(static_cast<int>(dtype));
  }
}

std::string device_name(const Tensor& t) {
  if (t.is_cpu()) {
    return "cpu";
  }
  const std::string type = t.is_cuda() ? "cuda" : "device";
  return type + ":" + std::to_string(static_cast<int>(t.get_device_index()));
}

int64_t normalize_batch_dim(const Tensor& x, int64_t batch_dim) {
  const int64_t dims = x.dim();
  DROPPATH_CHECK(batch_dim >= -dims && batch_dim < dims,
                  "batch_dim out of range (expected to be in range of [", -dims, ", ", dims - 1,
                  "], but got ", batch_dim, ")");
  return batch_dim < 0 ? batch_dim + dims : batch_dim;
}

void check_cu_seqlens_values(const Tensor& host_offsets, int64_t length) {
  const Tensor offsets = torch::stable::contiguous(host_offsets);
  const int64_t count = offsets.numel();
  if (offsets.scalar_type() == ScalarType::Int) {
    check_offsets(static_cast<const int32_t*>(offsets.const_data_ptr()), count, length);
  } else {
    check_offsets(static_cast<const int64_t*>(offsets.const_data_ptr()), count, length);
  }
}

int64_t sample_count(const Tensor& x, int64_t dim, const OptionalTensor& cu_seqlens) {
  return cu_seqlens.has_value() ? cu_seqlens->size(0) - 1 : x.size(dim);
}

int64_t check_scale_rows_args(const Tensor& x, const Tensor& factors, int64_t batch_dim,
                              const OptionalTensor& cu_seqlens) {
  check_input(x, "x");
  const int64_t dim = normalize_batch_dim(x, batch_dim);
  check_cu_seqlens(x, cu_seqlens);
  check_factors(x, dim, factors, cu_seqlens);
  return dim;
}

int64_t check_add_rows_args(const Tensor& residual, const Tensor& branch, const Tensor& factors,
                            int64_t batch_dim, const OptionalTensor& cu_seqlens) {
  check_input(residual, "residual");
  check_input(branch, "branch");
  bool same_shape = residual.dim() == branch.dim();
  for (int64_t d = 0; same_shape && d < residual.dim(); ++d) {
    same_shape = residual.size(d) == branch.size(d);
  }
  DROPPATH_CHECK(same_shape, "residual and branch must have the same shape, got ",
                  shape_of(residual), " and ", shape_of(branch));
  check_same_dtype_and_device(residual, branch);
  const int64_t dim = normalize_batch_dim(branch, batch_dim);
  check_cu_seqlens(branch, cu_seqlens);
  check_factors(branch, dim, factors, cu_seqlens);
  return dim;
}

int64_t check_take_rows_args(const Tensor& x, const Tensor& rows, const Tensor& inverse_rows,
                             const OptionalTensor& factors, int64_t batch_dim) {
  check_input(x, "x");
  const int64_t dim = normalize_batch_dim(x, batch_dim);
  check_rows(x, rows, "rows");
  check_rows(x, inverse_rows, "inverse_rows", x.size(dim));
  if (factors.has_value()) {
    check_factors(x, dim, *factors, std::nullopt);
  }
  return dim;
}

int64_t check_add_taken_rows_args(const Tensor& residual, const Tensor& branch,
                                  const Tensor& factors, const Tensor& rows,
                                  const Tensor& inverse_rows, int64_t batch_dim) {
  check_input(residual, "residual");
  check_input(branch, "branch");
  const int64_t dim = normalize_batch_dim(residual, batch_dim);
  check_same_dtype_and_device(residual, branch);
  bool same = residual.dim() == branch.dim();
  for (int64_t d = 0; same && d < residual.dim(); ++d) {
    same = d == dim || residual.size(d) == branch.size(d);
  }
  DROPPATH_CHECK(same, "branch must have the residual's shape except along dim ", dim, ", got ",
                  shape_of(residual), " and ", shape_of(branch));
  check_factors(residual, dim, factors, std::nullopt);
  check_rows(residual, rows, "rows", residual.size(dim));
  check_rows(residual, inverse_rows, "inverse_rows", branch.size(dim));
  return dim;
}

Tensor math_factors(const Tensor& x, const Tensor& factors) {
  const ScalarType math = math_dtype(x.scalar_type());
  const Tensor converted =
      factors.scalar_type() == math ? factors : torch::stable::to(factors, math);
  return torch::stable::contiguous(converted);
}

}  // namespace droppath
