// The C++ API: thin calls through the dispatcher (see droppath.h).
#include <ATen/core/dispatch/Dispatcher.h>

#include "droppath.h"

namespace droppath {
namespace {

template <typename Signature>
c10::TypedOperatorHandle<Signature> find_op(const char* name) {
  return c10::Dispatcher::singleton()
      .findSchemaOrThrow(name, "")
      .template typed<Signature>();
}

}  // namespace

at::Tensor forward(const at::Tensor& x, double drop_prob, bool training,
                   bool scale_by_keep, std::optional<at::Generator> generator) {
  static const auto op = find_op<at::Tensor(
      const at::Tensor&, double, bool, bool, std::optional<at::Generator>)>(
      "droppath::forward");
  return op.call(x, drop_prob, training, scale_by_keep, std::move(generator));
}

at::Tensor add(const at::Tensor& residual, const at::Tensor& branch,
               double drop_prob, bool training, bool scale_by_keep,
               std::optional<at::Generator> generator) {
  static const auto op =
      find_op<at::Tensor(const at::Tensor&, const at::Tensor&, double, bool,
                         bool, std::optional<at::Generator>)>("droppath::add");
  return op.call(residual, branch, drop_prob, training, scale_by_keep,
                 std::move(generator));
}

at::Tensor sample_factors(const at::Tensor& x, double drop_prob,
                          bool scale_by_keep,
                          std::optional<at::Generator> generator) {
  static const auto op = find_op<at::Tensor(
      const at::Tensor&, double, bool, std::optional<at::Generator>)>(
      "droppath::_sample_factors");
  return op.call(x, drop_prob, scale_by_keep, std::move(generator));
}

at::Tensor scale_rows(const at::Tensor& x, const at::Tensor& factors) {
  static const auto op =
      find_op<at::Tensor(const at::Tensor&, const at::Tensor&)>(
          "droppath::_scale_rows");
  return op.call(x, factors);
}

at::Tensor add_rows(const at::Tensor& residual, const at::Tensor& branch,
                    const at::Tensor& factors) {
  static const auto op = find_op<at::Tensor(
      const at::Tensor&, const at::Tensor&, const at::Tensor&)>(
      "droppath::_add_rows");
  return op.call(residual, branch, factors);
}

}  // namespace droppath
