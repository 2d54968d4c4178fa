// The schemas of the deterministic ops, shared by the two libraries that
// define them: the Python wheel's (python/library.cpp, stable ABI) and the
// C++ package's (libtorch/ops.cpp). A sample is one index along batch_dim, or
// with cu_seqlens (n + 1 offsets along batch_dim) one segment of a packed batch.
#pragma once

namespace droppath::schema {

// Deterministic given the factors: what autograd differentiates, what
// Inductor decomposes into pointwise ops, and what opcheck tests exactly.
inline constexpr const char* kScaleRows =
    "_scale_rows(Tensor x, Tensor factors, int batch_dim=0, Tensor? cu_seqlens=None) -> Tensor";
inline constexpr const char* kAddRows =
    "_add_rows(Tensor residual, Tensor branch, Tensor factors, int batch_dim=0, "
    "Tensor? cu_seqlens=None) -> Tensor";
// Skip mode's gather and scatter-add of the computed rows (residual.py):
// row maps built on the host, no atomics, no zero-fill of a full tensor.
inline constexpr const char* kTakeRows =
    "_take_rows(Tensor x, Tensor rows, Tensor inverse_rows, Tensor? factors=None, "
    "int batch_dim=0) -> Tensor";
inline constexpr const char* kAddTakenRows =
    "_add_taken_rows(Tensor residual, Tensor branch, Tensor factors, Tensor rows, "
    "Tensor inverse_rows, int batch_dim=0) -> Tensor";
// Which CPU build of the kernels runs on this machine ("DEFAULT", "AVX2",
// "AVX512"): for diagnostics (python -m droppath_ext.info).
inline constexpr const char* kCpuKernelCapability = "_cpu_kernel_capability() -> str";

}  // namespace droppath::schema
