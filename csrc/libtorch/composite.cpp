// The ops built from other ops, for every backend at once
// (CompositeImplicitAutograd: autograd, vmap and tracing see what they call):
//
// - forward / add: validation first (before any shortcut, as torchvision
//   does), then the identity / plain-add shortcut, then sample the factors
//   and apply them with the deterministic _scale_rows / _add_rows. The
//   identity returns a copy: the schema promises a new tensor, and an alias
//   would let functionalization drop an in-place update made through it.
//   (The Python functions and the C++ API return the input itself, without
//   calling the op, so eval graphs hold no droppath op at all.) `add`
//   promotes mixed dtypes as `residual + drop_path(branch)` does.
// - _sample_factors: timm's own draw, `x.new_empty(n).bernoulli_(keep_prob)
//   .div_(keep_prob)`, in x's math dtype. Calling ATen's bernoulli_ rather than
//   a kernel of ours gives the same masks as timm on every device and CPU
//   vendor (ATen takes an MKL path on Intel), the same f32/f64 factors bit for
//   bit, and ATen's vmap randomness rules (error / same / different); new_empty
//   keeps the factors batched under vmap.
#include <ATen/ops/add.h>
#include <ATen/ops/result_type.h>
#include <torch/library.h>

#include "draw_checks.h"
#include "../droppath.h"

namespace droppath {
namespace {

// The draw itself, arguments already checked. Below autograd: the factors are
// never differentiable, and the three ops skip a dispatch layer each.
at::Tensor draw_factors(const at::Tensor& x, double drop_prob, bool scale_by_keep, int64_t dim,
                        const std::optional<at::Tensor>& cu_seqlens,
                        std::optional<at::Generator> generator) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const double keep_prob = 1.0 - drop_prob;
  const at::ScalarType math = math_dtype(x.scalar_type());
  // bernoulli_ compares in float for a float32 tensor on CUDA: a keep_prob
  // that rounds to 1.0f (drop_prob < ~3e-8) would never drop there. Such a
  // draw is made in float64, as on the CPU.
  const bool float_rounds_to_one =
      x.is_cuda() && math != at::kDouble && keep_prob < 1.0 && static_cast<float>(keep_prob) == 1.0f;
  const at::ScalarType draw = float_rounds_to_one ? at::kDouble : math;
  // The draw is made on a tensor created from x, which vmap batches when x
  // is batched; under vmap with per-slice offsets but one shared x, from the
  // offsets, so that randomness="different" draws per slice.
  const bool offsets_batched_alone =
      cu_seqlens.has_value() && cu_seqlens->key_set().has(c10::DispatchKey::FuncTorchBatched) &&
      !x.key_set().has(c10::DispatchKey::FuncTorchBatched);
  const at::Tensor& source = offsets_batched_alone ? *cu_seqlens : x;
  at::Tensor factors =
      source.new_empty_symint({sample_count(x, dim, cu_seqlens)}, x.options().dtype(draw));
  factors.bernoulli_(keep_prob, std::move(generator));
  if (scale_by_keep && keep_prob > 0.0) {
    factors.div_(keep_prob);
  }
  return draw == math ? factors : factors.to(math);
}

at::Tensor sample_factors_composite(const at::Tensor& x, double drop_prob, bool scale_by_keep,
                                    int64_t batch_dim,
                                    const std::optional<at::Tensor>& cu_seqlens,
                                    std::optional<at::Generator> generator) {
  const int64_t dim = check_draw_args(x, drop_prob, batch_dim, cu_seqlens, generator);
  return draw_factors(x, drop_prob, scale_by_keep, dim, cu_seqlens, std::move(generator));
}

at::Tensor forward_composite(const at::Tensor& x, double drop_prob, bool training,
                             bool scale_by_keep, int64_t batch_dim,
                             const std::optional<at::Tensor>& cu_seqlens,
                             std::optional<at::Generator> generator) {
  const int64_t dim = check_draw_args(x, drop_prob, batch_dim, cu_seqlens, generator);
  if (!training || drop_prob == 0.0) {
    return x.clone();
  }
  const at::Tensor factors = draw_factors(x, drop_prob, scale_by_keep, dim, cu_seqlens,
                                          std::move(generator));
  return scale_rows(x, factors, dim, cu_seqlens);
}

at::Tensor add_composite(const at::Tensor& residual, const at::Tensor& branch, double drop_prob,
                         bool training, bool scale_by_keep, int64_t batch_dim,
                         const std::optional<at::Tensor>& cu_seqlens,
                         std::optional<at::Generator> generator) {
  check_drop_prob(drop_prob);  // first, as the Python backend checks
  check_add_operands(residual, branch);
  const int64_t dim = check_draw_args(branch, drop_prob, batch_dim, cu_seqlens, generator);
  if (!training || drop_prob == 0.0) {
    return at::add(residual, branch);
  }
  const at::ScalarType dtype = at::result_type(residual, branch);
  const at::Tensor promoted = branch.to(dtype);
  const at::Tensor factors = draw_factors(promoted, drop_prob, scale_by_keep, dim, cu_seqlens,
                                          std::move(generator));
  return add_rows(residual.to(dtype), promoted, factors, dim, cu_seqlens);
}

}  // namespace

TORCH_LIBRARY_IMPL(droppath, CompositeImplicitAutograd, m) {
  m.impl("forward", &forward_composite);
  m.impl("add", &add_composite);
  m.impl("_sample_factors", &sample_factors_composite);
}

// vmap dispatches to FuncTorchBatched, which the composite kernels above do
// not cover: without these, a vmapped call would run slice by slice (and draw
// per slice even with randomness="same"). Decomposed, vmap sees bernoulli_ and
// the deterministic ops, which have batching rules.
TORCH_LIBRARY_IMPL(droppath, FuncTorchBatchedDecomposition, m) {
  m.impl("forward", &forward_composite);
  m.impl("add", &add_composite);
  m.impl("_sample_factors", &sample_factors_composite);
}

}  // namespace droppath
