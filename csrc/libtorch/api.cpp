// The C++ API: thin calls through the dispatcher (see droppath.h). As in
// Python, the identity (eval mode, drop_prob 0) checks the arguments and
// returns the input without calling an op.
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/add.h>

#include "draw_checks.h"
#include "../droppath.h"

namespace droppath {
namespace {

template <typename Signature>
c10::TypedOperatorHandle<Signature> find_op(const char* name) {
  return c10::Dispatcher::singleton()
      .findSchemaOrThrow(name, "")
      .template typed<Signature>();
}

using OptionalTensor = const std::optional<at::Tensor>&;
using OptionalGenerator = std::optional<at::Generator>;

}  // namespace

at::Tensor forward(const at::Tensor& x, double drop_prob, bool training, bool scale_by_keep,
                   OptionalGenerator generator, int64_t batch_dim, OptionalTensor cu_seqlens) {
  if (!training || drop_prob == 0.0) {
    check_draw_args(x, drop_prob, batch_dim, cu_seqlens, generator);
    return x;
  }
  static const auto op =
      find_op<at::Tensor(const at::Tensor&, double, bool, bool, int64_t, OptionalTensor,
                         OptionalGenerator)>("droppath::forward");
  return op.call(x, drop_prob, training, scale_by_keep, batch_dim, cu_seqlens,
                 std::move(generator));
}

at::Tensor add(const at::Tensor& residual, const at::Tensor& branch, double drop_prob,
               bool training, bool scale_by_keep, OptionalGenerator generator,
               int64_t batch_dim, OptionalTensor cu_seqlens) {
  if (!training || drop_prob == 0.0) {
    check_drop_prob(drop_prob);
    check_add_operands(residual, branch);
    check_draw_args(branch, drop_prob, batch_dim, cu_seqlens, generator);
    return at::add(residual, branch);
  }
  static const auto op =
      find_op<at::Tensor(const at::Tensor&, const at::Tensor&, double, bool, bool, int64_t,
                         OptionalTensor, OptionalGenerator)>("droppath::add");
  return op.call(residual, branch, drop_prob, training, scale_by_keep, batch_dim, cu_seqlens,
                 std::move(generator));
}

at::Tensor sample_factors(const at::Tensor& x, double drop_prob, bool scale_by_keep,
                          OptionalGenerator generator, int64_t batch_dim,
                          OptionalTensor cu_seqlens) {
  static const auto op =
      find_op<at::Tensor(const at::Tensor&, double, bool, int64_t, OptionalTensor,
                         OptionalGenerator)>("droppath::_sample_factors");
  return op.call(x, drop_prob, scale_by_keep, batch_dim, cu_seqlens, std::move(generator));
}

at::Tensor scale_rows(const at::Tensor& x, const at::Tensor& factors, int64_t batch_dim,
                      OptionalTensor cu_seqlens) {
  static const auto op =
      find_op<at::Tensor(const at::Tensor&, const at::Tensor&, int64_t, OptionalTensor)>(
          "droppath::_scale_rows");
  return op.call(x, factors, batch_dim, cu_seqlens);
}

at::Tensor add_rows(const at::Tensor& residual, const at::Tensor& branch,
                    const at::Tensor& factors, int64_t batch_dim, OptionalTensor cu_seqlens) {
  static const auto op =
      find_op<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t,
                         OptionalTensor)>("droppath::_add_rows");
  return op.call(residual, branch, factors, batch_dim, cu_seqlens);
}

at::Tensor take_rows(const at::Tensor& x, const at::Tensor& rows, const at::Tensor& inverse_rows,
                     OptionalTensor factors, int64_t batch_dim) {
  static const auto op =
      find_op<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, OptionalTensor,
                         int64_t)>("droppath::_take_rows");
  return op.call(x, rows, inverse_rows, factors, batch_dim);
}

at::Tensor add_taken_rows(const at::Tensor& residual, const at::Tensor& branch,
                          const at::Tensor& factors, const at::Tensor& rows,
                          const at::Tensor& inverse_rows, int64_t batch_dim) {
  static const auto op =
      find_op<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                         const at::Tensor&, const at::Tensor&, int64_t)>(
          "droppath::_add_taken_rows");
  return op.call(residual, branch, factors, rows, inverse_rows, batch_dim);
}

}  // namespace droppath
