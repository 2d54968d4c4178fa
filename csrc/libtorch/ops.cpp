// The C++ package's library (CMakeLists.txt): every droppath:: schema, with
// the full-ABI composite and autograd kernels next to them (composite.cpp,
// autograd.cpp) so that a libtorch program -- a TorchScript model loaded in
// C++ included -- draws and trains with no Python. The kernels are the
// stable-ABI ones the Python wheel ships (cpu/, cuda/); the Python wheel
// defines the three drawing ops from Python instead (droppath_ext/_ops.py,
// whose schema strings tests/test_cpp.py compares with these).
#include <torch/library.h>

#include "../schemas.h"

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
  m.def(droppath::schema::kScaleRows);
  m.def(droppath::schema::kAddRows);
  m.def(droppath::schema::kTakeRows);
  m.def(droppath::schema::kAddTakenRows);
  m.def(droppath::schema::kCpuKernelCapability);
}
