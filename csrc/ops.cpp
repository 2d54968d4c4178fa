// Every droppath:: schema, in one place. Kernels live in one file per backend.
#include <torch/library.h>

TORCH_LIBRARY(droppath, m) {
  // Public ops: validation and the eval / drop_prob == 0 shortcut, then the
  // private ops below (CompositeImplicitAutograd, see composite.cpp).
  m.def(
      "forward(Tensor x, float drop_prob=0., bool training=False, "
      "bool scale_by_keep=True, "
      "*, Generator? generator=None) -> Tensor");
  m.def(
      "add(Tensor residual, Tensor branch, float drop_prob=0., "
      "bool training=False, bool scale_by_keep=True, *, "
      "Generator? generator=None) -> Tensor");
  // Random: one factor per sample. Tagged so compilers never recompute or
  // deduplicate it.
  m.def(
      "_sample_factors(Tensor x, float drop_prob, bool scale_by_keep, *, "
      "Generator? generator=None) -> Tensor",
      {at::Tag::nondeterministic_seeded});
  // Deterministic given the factors: what autograd differentiates and what
  // opcheck can test exactly.
  m.def("_scale_rows(Tensor x, Tensor factors) -> Tensor");
  m.def("_add_rows(Tensor residual, Tensor branch, Tensor factors) -> Tensor");
  // Which CPU build of the kernels runs on this machine ("DEFAULT", "AVX2",
  // "AVX512"): for diagnostics (python -m droppath_ext.info).
  m.def("_cpu_kernel_capability() -> str");
}
