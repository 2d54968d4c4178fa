#include "draw_checks.h"

#include <ATen/core/TensorBody.h>
#include <ATen/ops/_to_copy.h>
#include <c10/util/Exception.h>
#include <c10/util/intrusive_ptr.h>

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

template <typename index_t>
void check_offsets(const index_t* offsets, int64_t count, int64_t length) {
  TORCH_CHECK_VALUE(offsets[0] == 0, "cu_seqlens must start at 0, got ",
                    static_cast<int64_t>(offsets[0]));
  for (int64_t i = 1; i < count; ++i) {
    TORCH_CHECK_VALUE(offsets[i] >= offsets[i - 1],
                      "cu_seqlens must be non-decreasing, got ",
                      static_cast<int64_t>(offsets[i]), " after ",
                      static_cast<int64_t>(offsets[i - 1]), " at index ", i);
  }
  TORCH_CHECK_VALUE(offsets[count - 1] == length,
                    "cu_seqlens must end at the size of the batch dimension (",
                    length, "), got ", static_cast<int64_t>(offsets[count - 1]));
}

// The last CUDA offsets tensor whose values passed, by identity and version.
// A weak reference: it never keeps the tensor alive, and while it is held the
// TensorImpl's memory is not reused, so a new tensor cannot look the same.
struct CheckedOffsets {
  c10::weak_intrusive_ptr<c10::TensorImpl> impl{c10::intrusive_ptr<c10::TensorImpl>()};
  int64_t version = -1;
  int64_t length = -1;
};
thread_local CheckedOffsets last_checked_offsets;

bool already_checked(const at::Tensor& offsets, int64_t length) {
  const CheckedOffsets& last = last_checked_offsets;
  const auto impl = last.impl.lock();
  return impl && impl.get() == offsets.unsafeGetTensorImpl() &&
         last.version == static_cast<int64_t>(offsets._version()) &&
         last.length == length;
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
                    " must have a batch dimension, got a 0-dim tensor");
}

void check_add_operands(const at::Tensor& residual, const at::Tensor& branch) {
  check_input(residual, "residual");
  check_input(branch, "branch");
  TORCH_CHECK_VALUE(residual.sym_sizes().equals(branch.sym_sizes()),
                    "residual and branch must have the same shape, got ",
                    residual.sym_sizes(), " and ", branch.sym_sizes());
  TORCH_CHECK_VALUE(residual.device() == branch.device(),
                    "residual and branch must be on the same device, got ",
                    residual.device(), " and ", branch.device());
}

int64_t normalize_batch_dim(const at::Tensor& x, int64_t batch_dim) {
  const int64_t dims = x.dim();
  TORCH_CHECK_INDEX(batch_dim >= -dims && batch_dim < dims,
                    "batch_dim out of range (expected to be in range of [", -dims,
                    ", ", dims - 1, "], but got ", batch_dim, ")");
  return batch_dim < 0 ? batch_dim + dims : batch_dim;
}

void check_cu_seqlens(const at::Tensor& x, const std::optional<at::Tensor>& cu_seqlens) {
  if (!cu_seqlens.has_value()) {
    return;
  }
  const at::Tensor& offsets = *cu_seqlens;
  TORCH_CHECK_VALUE(offsets.defined(), "cu_seqlens must be a defined tensor or None");
  TORCH_CHECK_TYPE(offsets.scalar_type() == at::kInt || offsets.scalar_type() == at::kLong,
                   "cu_seqlens must be torch.int32 or torch.int64, got ",
                   dtype_name(offsets.scalar_type()));
  TORCH_CHECK_VALUE(offsets.dim() == 1, "cu_seqlens must be 1-D, got shape ",
                    offsets.sym_sizes());
  TORCH_CHECK_VALUE(offsets.sym_size(0) >= 1,
                    "cu_seqlens must hold n + 1 offsets for n samples, got an empty tensor");
  TORCH_CHECK_VALUE(offsets.device() == x.device(),
                    "cu_seqlens must be on the input's device ", x.device(), ", got ",
                    offsets.device());
}

void check_cu_seqlens_values(const at::Tensor& cu_seqlens, int64_t length) {
  const bool cacheable = !cu_seqlens.is_cpu() && !cu_seqlens.is_inference();
  if (cacheable && already_checked(cu_seqlens, length)) {
    return;
  }
  const at::Tensor host = cu_seqlens.is_cpu() ? cu_seqlens.contiguous()
                                              : cu_seqlens.to(at::kCPU).contiguous();
  const int64_t count = host.numel();
  if (host.scalar_type() == at::kInt) {
    check_offsets(host.const_data_ptr<int32_t>(), count, length);
  } else {
    check_offsets(host.const_data_ptr<int64_t>(), count, length);
  }
  if (cacheable) {
    last_checked_offsets = {c10::weak_intrusive_ptr<c10::TensorImpl>(
                                cu_seqlens.getIntrusivePtr()),
                            static_cast<int64_t>(cu_seqlens._version()), length};
  }
}

c10::SymInt sample_count(const at::Tensor& x, int64_t dim,
                         const std::optional<at::Tensor>& cu_seqlens) {
  return cu_seqlens.has_value() ? cu_seqlens->sym_size(0) - 1 : x.sym_size(dim);
}

void check_generator(const at::Tensor& x,
                     const std::optional<at::Generator>& generator) {
  if (!generator.has_value() || !generator->defined()) {
    return;
  }
  const c10::Device gen_device = generator->device();
  const c10::Device x_device = x.device();
  // A generator without an index (e.g. the CPU one) matches any index.
  TORCH_CHECK_VALUE(gen_device.type() == x_device.type() &&
                        (!gen_device.has_index() || !x_device.has_index() ||
                         gen_device.index() == x_device.index()),
                    "generator must be on the input's device ", x_device,
                    ", got a generator on ", gen_device);
}

int64_t check_draw_args(const at::Tensor& x, double drop_prob, int64_t batch_dim,
                        const std::optional<at::Tensor>& cu_seqlens,
                        const std::optional<at::Generator>& generator) {
  check_drop_prob(drop_prob);
  check_input(x, "x");
  const int64_t dim = normalize_batch_dim(x, batch_dim);
  check_cu_seqlens(x, cu_seqlens);
  check_generator(x, generator);
  return dim;
}

at::ScalarType math_dtype(at::ScalarType dtype) {
  return dtype == at::kDouble ? at::kDouble : at::kFloat;
}

}  // namespace droppath
