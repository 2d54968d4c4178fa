// Autograd for the deterministic ops, in C++ so that a TorchScript model
// loaded from C++ trains too.
//
// Written the way ATen's generated autograd kernels are (derivatives.yaml):
// one backward Node per op, linked into the graph by hand, and the
// forward-mode tangent computed in the kernel. Not torch::autograd::Function:
// functorch refuses C++ autograd Functions under every transform (grad, vjp,
// jacrev, vmap) and they have no forward mode, while kernels like these work
// under all of them exactly as ATen's own ops do. vmap rules live in
// droppath_ext/_vmap.py; the random factors are never differentiated.
//
// Only the per-sample factors (and row maps) are saved; the input is kept
// only when the factors themselves require grad.
#include <ATen/TensorOperators.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/searchsorted.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/saved_variable.h>
#include <torch/library.h>
#include <torch/version.h>

#include <mutex>
#include <vector>

#include "draw_checks.h"
#include "../droppath.h"

namespace droppath {
namespace {

using torch::autograd::Node;
using torch::autograd::SavedVariable;
using torch::autograd::variable_list;

// Backward nodes are reference counted with c10::intrusive_ptr from torch
// 2.13 on, with std::shared_ptr (and a non-recursive deleter) before.
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 13)
template <class T>
c10::intrusive_ptr<T> make_node() {
  return c10::make_intrusive<T>();
}
template <class T>
using NodePtr = c10::intrusive_ptr<T>;
#else
template <class T>
std::shared_ptr<T> make_node() {
  return std::shared_ptr<T>(new T(), torch::autograd::deleteNode);
}
template <class T>
using NodePtr = std::shared_ptr<T>;
#endif

// Forward-mode AD: level 0 is the only level an op sees (functorch maps its
// own levels onto it, as for ATen's generated kernels).
bool has_tangent(const at::Tensor& t) {
  return t.defined() && t._fw_grad(/*level=*/0).defined();
}

at::Tensor tangent(const at::Tensor& t) {
  return t._fw_grad(/*level=*/0);
}

void set_tangent(const at::Tensor& result, const at::Tensor& result_tangent) {
  if (result_tangent.defined()) {
    result._set_fw_grad(result_tangent, /*level=*/0, /*is_inplace_op=*/false);
  }
}

std::optional<at::Tensor> as_optional(const at::Tensor& t) {
  return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
}

// d(out)/d(factors[s]) = sum over sample s of grad * input.
at::Tensor grad_of_factors(const at::Tensor& grad, const at::Tensor& input,
                           const at::Tensor& factors, int64_t batch_dim,
                           const std::optional<at::Tensor>& cu_seqlens) {
  const auto math = math_dtype(input.scalar_type());
  const int64_t dim = normalize_batch_dim(input, batch_dim);
  at::Tensor product = grad.to(math) * input.to(math);
  std::vector<int64_t> other_dims;
  for (int64_t d = 0; d < product.dim(); ++d) {
    if (d != dim) {
      other_dims.push_back(d);
    }
  }
  at::Tensor per_index = other_dims.empty() ? product : product.sum(other_dims);
  if (cu_seqlens.has_value()) {
    // Segment s holds the indices t with cu[s] <= t < cu[s + 1].
    const at::Tensor ends = cu_seqlens->slice(0, 1);
    const at::Tensor index = at::arange(per_index.size(0), ends.options());
    const at::Tensor segment = at::searchsorted(ends, index, /*out_int32=*/false, /*right=*/true);
    per_index = at::zeros({ends.size(0)}, per_index.options()).index_add_(0, segment, per_index);
  }
  return per_index.to(factors.scalar_type());
}

// What the backwards of _scale_rows and _add_rows keep: the factors, the
// sample layout, and the scaled input only when the factors need a gradient.
struct RowsBackward : public Node {
  SavedVariable factors_, input_, cu_seqlens_;
  int64_t batch_dim_ = 0;

  void save(const at::Tensor& factors, const at::Tensor& input, int64_t batch_dim,
            const std::optional<at::Tensor>& cu_seqlens) {
    factors_ = SavedVariable(factors, false);
    if (factors.requires_grad()) {
      input_ = SavedVariable(input, false);
    }
    cu_seqlens_ = SavedVariable(cu_seqlens, false);
    batch_dim_ = batch_dim;
  }
  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    factors_.reset_data();
    input_.reset_data();
    cu_seqlens_.reset_data();
  }
  // grad scaled by the factors, and the factors' own gradient if wanted.
  void scaled_grads(const at::Tensor& grad, at::Tensor& input_grad, size_t input_edge,
                    at::Tensor& factors_grad, size_t factors_edge) {
    const at::Tensor factors = factors_.unpack();
    const auto cu_seqlens = as_optional(cu_seqlens_.unpack());
    if (task_should_compute_output(input_edge)) {
      input_grad = scale_rows(grad, factors, batch_dim_, cu_seqlens);
    }
    if (task_should_compute_output(factors_edge)) {
      factors_grad = grad_of_factors(grad, input_.unpack(), factors, batch_dim_, cu_seqlens);
    }
  }
};

struct ScaleRowsBackward : public RowsBackward {
  std::string name() const override { return "ScaleRowsBackward"; }
  variable_list apply(variable_list&& grads) override {  // edges: x, factors
    std::lock_guard<std::mutex> lock(mutex_);
    variable_list out(2);
    if (grads[0].defined()) {
      scaled_grads(grads[0], out[0], 0, out[1], 1);
    }
    return out;
  }
};

struct AddRowsBackward : public RowsBackward {
  std::string name() const override { return "AddRowsBackward"; }
  variable_list apply(variable_list&& grads) override {  // edges: residual, branch, factors
    std::lock_guard<std::mutex> lock(mutex_);
    variable_list out(3);
    if (grads[0].defined()) {
      if (task_should_compute_output(0)) {
        out[0] = grads[0];  // the residual's gradient is the incoming one: no copy
      }
      scaled_grads(grads[0], out[1], 1, out[2], 2);
    }
    return out;
  }
};

// out = take(x, rows) [* factors]: the gradient goes back through the inverse map.
struct TakeRowsBackward : public Node {
  SavedVariable rows_, inverse_rows_, factors_;
  int64_t batch_dim_ = 0;

  std::string name() const override { return "TakeRowsBackward"; }
  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    rows_.reset_data();
    inverse_rows_.reset_data();
    factors_.reset_data();
  }
  variable_list apply(variable_list&& grads) override {
    std::lock_guard<std::mutex> lock(mutex_);
    variable_list out(1);
    const at::Tensor& grad = grads[0];
    if (!grad.defined() || !task_should_compute_output(0)) {
      return out;
    }
    out[0] = take_rows(grad, inverse_rows_.unpack(), rows_.unpack(), std::nullopt, batch_dim_);
    const auto factors = as_optional(factors_.unpack());
    if (factors.has_value()) {
      out[0] = scale_rows(out[0], *factors, batch_dim_);
    }
    return out;
  }
};

struct AddTakenRowsBackward : public Node {
  SavedVariable factors_, rows_, inverse_rows_;
  int64_t batch_dim_ = 0;

  std::string name() const override { return "AddTakenRowsBackward"; }
  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    factors_.reset_data();
    rows_.reset_data();
    inverse_rows_.reset_data();
  }
  variable_list apply(variable_list&& grads) override {
    std::lock_guard<std::mutex> lock(mutex_);
    variable_list out(2);
    const at::Tensor& grad = grads[0];
    if (!grad.defined()) {
      return out;
    }
    if (task_should_compute_output(0)) {
      out[0] = grad;
    }
    if (task_should_compute_output(1)) {
      // branch row j came from residual row inverse_rows[j]: gather those
      // rows of the gradient, each scaled by its factor, in one pass.
      out[1] = take_rows(grad, inverse_rows_.unpack(), rows_.unpack(), factors_.unpack(),
                         batch_dim_);
    }
    return out;
  }
};

// The offsets' values, which the CUDA kernels trust (their search stays in
// bounds whatever the values): read once per tensor and version.
void check_offsets_of(const at::Tensor& x, int64_t batch_dim,
                      const std::optional<at::Tensor>& cu_seqlens) {
  if (!cu_seqlens.has_value()) {
    return;
  }
  check_input(x, "x");
  const int64_t dim = normalize_batch_dim(x, batch_dim);
  check_cu_seqlens(x, cu_seqlens);
  check_cu_seqlens_values(*cu_seqlens, x.size(dim));
}

void check_not_differentiable(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(!t.defined() || !t.requires_grad(), "droppath::", op,
              " is not differentiable with respect to ", name,
              " (it holds the sampled factors): detach it first");
}

at::Tensor scale_rows_autograd(const at::Tensor& x, const at::Tensor& factors, int64_t batch_dim,
                               const std::optional<at::Tensor>& cu_seqlens) {
  check_offsets_of(x, batch_dim, cu_seqlens);
  NodePtr<ScaleRowsBackward> node;
  if (torch::autograd::compute_requires_grad(x, factors)) {
    node = make_node<ScaleRowsBackward>();
    node->set_next_edges(torch::autograd::collect_next_edges(x, factors));
    node->save(factors, x, batch_dim, cu_seqlens);
  }
  at::Tensor result;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    result = scale_rows(x, factors, batch_dim, cu_seqlens);
  }
  if (node) {
    torch::autograd::set_history(result, node);
  }
  if (has_tangent(x) || has_tangent(factors)) {
    at::Tensor t;
    if (has_tangent(x)) {
      t = scale_rows(tangent(x), factors, batch_dim, cu_seqlens);
    }
    if (has_tangent(factors)) {
      const at::Tensor from_factors = scale_rows(x, tangent(factors), batch_dim, cu_seqlens);
      t = t.defined() ? t + from_factors : from_factors;
    }
    set_tangent(result, t);
  }
  return result;
}

at::Tensor add_rows_autograd(const at::Tensor& residual, const at::Tensor& branch,
                             const at::Tensor& factors, int64_t batch_dim,
                             const std::optional<at::Tensor>& cu_seqlens) {
  check_offsets_of(branch, batch_dim, cu_seqlens);
  NodePtr<AddRowsBackward> node;
  if (torch::autograd::compute_requires_grad(residual, branch, factors)) {
    node = make_node<AddRowsBackward>();
    node->set_next_edges(torch::autograd::collect_next_edges(residual, branch, factors));
    node->save(factors, branch, batch_dim, cu_seqlens);
  }
  at::Tensor result;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    result = add_rows(residual, branch, factors, batch_dim, cu_seqlens);
  }
  if (node) {
    torch::autograd::set_history(result, node);
  }
  if (has_tangent(residual) || has_tangent(branch) || has_tangent(factors)) {
    at::Tensor t;
    if (has_tangent(branch)) {
      t = has_tangent(residual)
              ? add_rows(tangent(residual), tangent(branch), factors, batch_dim, cu_seqlens)
              : scale_rows(tangent(branch), factors, batch_dim, cu_seqlens);
    } else if (has_tangent(residual)) {
      t = tangent(residual).clone();
    }
    if (has_tangent(factors)) {
      const at::Tensor from_factors = scale_rows(branch, tangent(factors), batch_dim, cu_seqlens);
      t = t.defined() ? t + from_factors : from_factors;
    }
    set_tangent(result, t);
  }
  return result;
}

at::Tensor take_rows_autograd(const at::Tensor& x, const at::Tensor& rows,
                              const at::Tensor& inverse_rows,
                              const std::optional<at::Tensor>& factors, int64_t batch_dim) {
  if (factors.has_value()) {
    check_not_differentiable(*factors, "_take_rows", "factors");
  }
  NodePtr<TakeRowsBackward> node;
  if (torch::autograd::compute_requires_grad(x)) {
    node = make_node<TakeRowsBackward>();
    node->set_next_edges(torch::autograd::collect_next_edges(x));
    node->rows_ = SavedVariable(rows, false);
    node->inverse_rows_ = SavedVariable(inverse_rows, false);
    node->factors_ = SavedVariable(factors, false);
    node->batch_dim_ = batch_dim;
  }
  at::Tensor result;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    result = take_rows(x, rows, inverse_rows, factors, batch_dim);
  }
  if (node) {
    torch::autograd::set_history(result, node);
  }
  if (has_tangent(x)) {
    set_tangent(result, take_rows(tangent(x), rows, inverse_rows, factors, batch_dim));
  }
  return result;
}

at::Tensor add_taken_rows_autograd(const at::Tensor& residual, const at::Tensor& branch,
                                   const at::Tensor& factors, const at::Tensor& rows,
                                   const at::Tensor& inverse_rows, int64_t batch_dim) {
  check_not_differentiable(factors, "_add_taken_rows", "factors");
  NodePtr<AddTakenRowsBackward> node;
  if (torch::autograd::compute_requires_grad(residual, branch)) {
    node = make_node<AddTakenRowsBackward>();
    node->set_next_edges(torch::autograd::collect_next_edges(residual, branch));
    node->factors_ = SavedVariable(factors, false);
    node->rows_ = SavedVariable(rows, false);
    node->inverse_rows_ = SavedVariable(inverse_rows, false);
    node->batch_dim_ = batch_dim;
  }
  at::Tensor result;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    result = add_taken_rows(residual, branch, factors, rows, inverse_rows, batch_dim);
  }
  if (node) {
    torch::autograd::set_history(result, node);
  }
  if (has_tangent(residual) || has_tangent(branch)) {
    const at::Tensor residual_t =
        has_tangent(residual) ? tangent(residual) : at::zeros_like(residual);
    set_tangent(result, has_tangent(branch)
                            ? add_taken_rows(residual_t, tangent(branch), factors, rows,
                                             inverse_rows, batch_dim)
                            : residual_t.clone());
  }
  return result;
}

}  // namespace

TORCH_LIBRARY_IMPL(droppath, Autograd, m) {
  m.impl("_scale_rows", &scale_rows_autograd);
  m.impl("_add_rows", &add_rows_autograd);
  m.impl("_take_rows", &take_rows_autograd);
  m.impl("_add_taken_rows", &add_taken_rows_autograd);
}

}  // namespace droppath
