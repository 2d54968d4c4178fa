// Every droppath:: schema, in one place. Kernels live in one file per backend.
//
// A sample is one index along batch_dim, or with cu_seqlens (n + 1 offsets
// along batch_dim) one segment of a packed batch.
#include <torch/library.h>

TORCH_LIBRARY(droppath, m) {
  // Public ops: validation and the eval / drop_prob == 0 shortcut, then the
  // private ops below (CompositeImplicitAutograd, see composite.cpp).
  m.def(
      "forward(Tensor x, float drop_prob=0., bool training=False, "
      "bool scale_by_keep=True, *, int batch_dim=0, Tensor? cu_seqlens=None, "
      "Generator? generator=None) -> Tensor");
  m.def(
      "add(Tensor residual, Tensor branch, float drop_prob=0., "
      "bool training=False, bool scale_by_keep=True, *, int batch_dim=0, "
      "Tensor? cu_seqlens=None, Generator? generator=None) -> Tensor");
  // Random: one factor per sample, drawn with ATen's bernoulli_
  // (CompositeImplicitAutograd). Tagged so compilers never recompute or
  // deduplicate it.
  m.def(
      "_sample_factors(Tensor x, float drop_prob, bool scale_by_keep, "
      "int batch_dim=0, Tensor? cu_seqlens=None, *, Generator? generator=None) -> Tensor",
      {at::Tag::nondeterministic_seeded});
  // Deterministic given the factors: what autograd differentiates, what
  // Inductor decomposes into pointwise ops, and what opcheck tests exactly.
  m.def("_scale_rows(Tensor x, Tensor factors, int batch_dim=0, Tensor? cu_seqlens=None) -> Tensor");
  m.def(
      "_add_rows(Tensor residual, Tensor branch, Tensor factors, int batch_dim=0, "
      "Tensor? cu_seqlens=None) -> Tensor");
  // Skip mode's gather and scatter-add of the computed rows (residual.py):
  // row maps built on the host, no atomics, no zero-fill of a full tensor.
  m.def(
      "_take_rows(Tensor x, Tensor rows, Tensor inverse_rows, Tensor? factors=None, "
      "int batch_dim=0) -> Tensor");
  m.def(
      "_add_taken_rows(Tensor residual, Tensor branch, Tensor factors, Tensor rows, "
      "Tensor inverse_rows, int batch_dim=0) -> Tensor");
  // Which CPU build of the kernels runs on this machine ("DEFAULT", "AVX2",
  // "AVX512"): for diagnostics (python -m droppath_ext.info).
  m.def("_cpu_kernel_capability() -> str");
}
