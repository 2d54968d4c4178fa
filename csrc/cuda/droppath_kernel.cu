// CUDA kernels of the deterministic ops, on the LibTorch stable ABI: one
// build loads in every torch >= 2.11 (setup.py, droppath_ext/_library.py).
// One pass over memory with 128-bit loads and stores where the layout allows,
// grid-stride loops, 32-bit indices whenever they cannot overflow. The random
// factors come from ATen's bernoulli_ (drawn by the callers:
// droppath_ext/_ops.py, or the C++ package's composite.cpp), so nothing here
// draws random numbers.
//
// Only the stable headers, torch's C shim and the CUDA runtime are included:
// the bare toolkit is enough, and c10::Half / c10::BFloat16 are header-only.

// The shim declares its CUDA functions (the current stream) only under
// USE_CUDA, which torch's extension builder does not define; it must be set
// before any header includes the shim.
#ifndef USE_CUDA
#define USE_CUDA
#endif

#include <cuda_runtime.h>
#include <torch/csrc/inductor/aoti_torch/c/shim.h>
#include <torch/csrc/stable/accelerator.h>
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/headeronly/util/BFloat16.h>
#include <torch/headeronly/util/Half.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>

#include "../checks.h"
#include "../dtypes.h"
#include "../layout.h"

namespace droppath {
namespace {

constexpr int kThreads = 256;

template <typename scalar_t, int N>
struct alignas(sizeof(scalar_t) * N) Pack {
  scalar_t val[N];
};

// Multiplications the compiler may not fuse with the following add into an
// FMA, so residual + branch * factor rounds like the unfused
// `residual + drop_path(branch)` and like the CPU kernels.
__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }

template <typename scalar_t, int N>
__device__ __forceinline__ Pack<scalar_t, N> scaled(const scalar_t* x, math_t<scalar_t> f) {
  using math = math_t<scalar_t>;
  Pack<scalar_t, N> result;
  if (f == math(0)) {  // exactly zero, without reading x
#pragma unroll
    for (int k = 0; k < N; ++k) result.val[k] = scalar_t(0);
  } else {
    const auto in = *reinterpret_cast<const Pack<scalar_t, N>*>(x);
#pragma unroll
    for (int k = 0; k < N; ++k) {
      result.val[k] = static_cast<scalar_t>(static_cast<math>(in.val[k]) * f);
    }
  }
  return result;
}

template <typename scalar_t, int N>
__device__ __forceinline__ Pack<scalar_t, N> added(const scalar_t* residual, const scalar_t* branch,
                                                   math_t<scalar_t> f) {
  using math = math_t<scalar_t>;
  auto result = *reinterpret_cast<const Pack<scalar_t, N>*>(residual);
  if (f != math(0)) {  // a dropped sample's branch is never read
    const auto br = *reinterpret_cast<const Pack<scalar_t, N>*>(branch);
#pragma unroll
    for (int k = 0; k < N; ++k) {
      result.val[k] = static_cast<scalar_t>(static_cast<math>(result.val[k]) +
                                            mul_rn(static_cast<math>(br.val[k]), f));
    }
  }
  return result;
}

template <typename scalar_t, int N>
__device__ __forceinline__ void store(scalar_t* out, const Pack<scalar_t, N>& value) {
  *reinterpret_cast<Pack<scalar_t, N>*>(out) = value;
}

// ---- the ops, one element pack at a time --------------------------------------
// Memory is [outer][rows][inner] (layout.h). With N > 1 the launcher has
// checked that every pointer is 16-byte aligned and inner % N == 0, so a pack
// never straddles two rows.

template <typename scalar_t, int N, typename index_t>
struct ScaleRows {
  scalar_t* out;
  const scalar_t* x;
  const math_t<scalar_t>* factors;
  index_t inner, rows;
  __device__ __forceinline__ void operator()(index_t i) const {
    store<scalar_t, N>(out + i, scaled<scalar_t, N>(x + i, factors[(i / inner) % rows]));
  }
};

template <typename scalar_t, int N, typename index_t>
struct AddRows {
  scalar_t* out;
  const scalar_t* residual;
  const scalar_t* branch;
  const math_t<scalar_t>* factors;
  index_t inner, rows;
  __device__ __forceinline__ void operator()(index_t i) const {
    store<scalar_t, N>(out + i, added<scalar_t, N>(residual + i, branch + i,
                                                   factors[(i / inner) % rows]));
  }
};

// out[o][r] = x[o][map[r]] * factors[map[r]] (factors optional), zero where
// map[r] is outside [0, source_rows).
template <typename scalar_t, int N, typename index_t>
struct TakeRows {
  scalar_t* out;
  const scalar_t* x;
  const math_t<scalar_t>* factors;  // per source row, or null
  const int64_t* map;
  index_t inner, rows, source_rows;
  __device__ __forceinline__ void operator()(index_t i) const {
    using math = math_t<scalar_t>;
    const index_t row = i / inner;
    const int64_t from = map[row % rows];
    const bool valid = from >= 0 && from < static_cast<int64_t>(source_rows);
    const index_t source = valid ? ((row / rows) * source_rows + static_cast<index_t>(from)) * inner +
                                       (i - row * inner)
                                 : 0;
    const math f = !valid ? math(0) : factors != nullptr ? factors[from] : math(1);
    store<scalar_t, N>(out + i, scaled<scalar_t, N>(x + source, f));
  }
};

// out[o][b] = residual[o][b] + branch[o][map[b]] * factors[b], or residual[o][b]
// where factors[b] == 0 or map[b] is outside [0, branch_rows).
template <typename scalar_t, int N, typename index_t>
struct AddTakenRows {
  scalar_t* out;
  const scalar_t* residual;
  const scalar_t* branch;
  const math_t<scalar_t>* factors;
  const int64_t* map;
  index_t inner, rows, branch_rows;
  __device__ __forceinline__ void operator()(index_t i) const {
    using math = math_t<scalar_t>;
    const index_t row = i / inner;
    const index_t b = row % rows;
    const int64_t from = map[b];
    const bool valid = from >= 0 && from < static_cast<int64_t>(branch_rows);
    const index_t source = valid ? ((row / rows) * branch_rows + static_cast<index_t>(from)) * inner +
                                       (i - row * inner)
                                 : 0;
    store<scalar_t, N>(out + i, added<scalar_t, N>(residual + i, branch + source,
                                                   valid ? factors[b] : math(0)));
  }
};

template <int N, typename index_t, typename Op>
__global__ void for_each_pack(Op op, index_t numel) {
  const index_t step = static_cast<index_t>(gridDim.x) * blockDim.x * N;
  for (index_t i = (static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x) * N; i < numel;
       i += step) {
    op(i);
  }
}

// ---- launching ----------------------------------------------------------------

// torch's CUDA error checks (C10_CUDA_CHECK) are not in the stable ABI.
void check_cuda(cudaError_t err) {
  DROPPATH_CHECK(err == cudaSuccess, "droppath CUDA error: ", cudaGetErrorString(err));
}

// A launch reports a bad configuration only through cudaGetLastError.
void check_launch() {
  const cudaError_t err = cudaGetLastError();
  DROPPATH_CHECK(err == cudaSuccess, "droppath CUDA kernel launch failed: ",
                  cudaGetErrorString(err));
}

// The stream torch's caching allocator and every other op on the device are
// ordered on (a stream set by torch.cuda.stream included).
cudaStream_t current_stream(int32_t device_index) {
  void* stream = nullptr;
  TORCH_ERROR_CODE_CHECK(aoti_torch_get_current_cuda_stream(device_index, &stream));
  return static_cast<cudaStream_t>(stream);
}

int multiprocessor_count() {
  static std::array<std::atomic<int>, 64> counts{};  // per device, 0 until read
  int device = 0;
  check_cuda(cudaGetDevice(&device));
  int count = device < 64 ? counts[device].load(std::memory_order_relaxed) : 0;
  if (count == 0) {
    check_cuda(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
    if (device < 64) {
      counts[device].store(count, std::memory_order_relaxed);
    }
  }
  return count;
}

bool aligned16(const void* p) {
  return reinterpret_cast<std::uintptr_t>(p) % 16 == 0;
}

// The sizes an op's indices reach, and whether 16-byte packs fit its rows.
struct LaunchShape {
  int64_t numel;    // elements written
  int64_t largest;  // elements of the largest buffer read or written
  int64_t inner;
  bool aligned;
};

// Runs Op<scalar_t, N, index_t>{make(N, index_t)...} over the output with the
// widest N the layout allows and 32-bit indices whenever they cannot overflow.
template <typename scalar_t, template <typename, int, typename> class Op, typename Make>
void launch(cudaStream_t stream, const LaunchShape& shape, const Make& make) {
  constexpr int kPack = 16 / sizeof(scalar_t);
  const bool vec = shape.aligned && shape.inner % kPack == 0;
  const int64_t packs = vec ? shape.numel / kPack : shape.numel;
  const int blocks = static_cast<int>(std::max<int64_t>(
      1, std::min<int64_t>((packs + kThreads - 1) / kThreads, int64_t(multiprocessor_count()) * 8)));
  const bool small =
      std::max(shape.numel, shape.largest) + int64_t(blocks) * kThreads * kPack < (int64_t(1) << 31);
  if (vec && small) {
    for_each_pack<kPack, uint32_t><<<blocks, kThreads, 0, stream>>>(
        make(Op<scalar_t, kPack, uint32_t>{}), static_cast<uint32_t>(shape.numel));
  } else if (vec) {
    for_each_pack<kPack, int64_t><<<blocks, kThreads, 0, stream>>>(
        make(Op<scalar_t, kPack, int64_t>{}), shape.numel);
  } else if (small) {
    for_each_pack<1, uint32_t><<<blocks, kThreads, 0, stream>>>(
        make(Op<scalar_t, 1, uint32_t>{}), static_cast<uint32_t>(shape.numel));
  } else {
    for_each_pack<1, int64_t><<<blocks, kThreads, 0, stream>>>(make(Op<scalar_t, 1, int64_t>{}),
                                                                shape.numel);
  }
  check_launch();
}

// ---- per-index factors for packed batches ---------------------------------------

// out[t] = per_sample[s] for the segment s with offsets[s] <= t < offsets[s + 1]
// (binary search: reads only offsets[1..samples], whatever their values).
template <typename math, typename offset_t>
__global__ void index_factors_kernel(math* out, const math* per_sample,
                                     const offset_t* offsets, int64_t samples, int64_t length) {
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < length;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t lo = 0, hi = samples;  // first s in [0, samples) with offsets[s + 1] > t
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo) / 2;
      if (static_cast<int64_t>(offsets[mid + 1]) <= t) {
        lo = mid + 1;
      } else {
        hi = mid;
      }
    }
    out[t] = samples > 0 ? per_sample[lo < samples ? lo : samples - 1] : math(0);
  }
}

// One factor per index along dim, in x's math dtype: the factors as given,
// or with cu_seqlens each segment's factor repeated over its range.
// The offsets' values are not checked here (that would copy them to the host
// and synchronise): the search above stays in bounds whatever they are, and
// the Python layer (droppath_ext/_ops.py) and the C++ package check them
// before calling.
Tensor index_factors(const Tensor& x, int64_t dim, const Tensor& factors,
                     const OptionalTensor& cu_seqlens, cudaStream_t stream) {
  Tensor per_sample = math_factors(x, factors);
  if (!cu_seqlens.has_value()) {
    return per_sample;
  }
  const int64_t length = x.size(dim);
  Tensor per_index = empty_strided({length}, {1}, per_sample, per_sample.scalar_type());
  if (length == 0) {
    return per_index;
  }
  const Tensor offsets = torch::stable::contiguous(*cu_seqlens);
  const int64_t samples = offsets.numel() - 1;
  const int blocks = static_cast<int>(std::min<int64_t>((length + kThreads - 1) / kThreads, 1024));
  dispatch_math(per_sample.scalar_type(), [&](auto type) {
    using math = typename decltype(type)::type;
    math* dst = static_cast<math*>(per_index.mutable_data_ptr());
    const math* src = static_cast<const math*>(per_sample.const_data_ptr());
    if (offsets.scalar_type() == ScalarType::Int) {
      index_factors_kernel<math, int32_t><<<blocks, kThreads, 0, stream>>>(
          dst, src, static_cast<const int32_t*>(offsets.const_data_ptr()), samples, length);
    } else {
      index_factors_kernel<math, int64_t><<<blocks, kThreads, 0, stream>>>(
          dst, src, static_cast<const int64_t*>(offsets.const_data_ptr()), samples, length);
    }
    check_launch();
  });
  return per_index;
}

// ---- op entry points ------------------------------------------------------------
// Each sets x's device current (the allocations and the multiprocessor count
// follow it) and launches on that device's current stream.

Tensor scale_rows_cuda(Tensor x, Tensor factors, int64_t batch_dim, OptionalTensor cu_seqlens) {
  const int64_t dim = check_scale_rows_args(x, factors, batch_dim, cu_seqlens);
  const torch::stable::accelerator::DeviceGuard guard(x.get_device_index());
  const cudaStream_t stream = current_stream(x.get_device_index());
  const Tensor f = index_factors(x, dim, factors, cu_seqlens, stream);
  const Tensor input = as_dense(x);
  Tensor out = empty_like_dense(input);
  if (input.numel() == 0) {
    return out;
  }
  const RowView view = row_view(input, dim);
  dispatch_floating(x.scalar_type(), [&](auto type) {
    using scalar_t = typename decltype(type)::type;
    scalar_t* dst = static_cast<scalar_t*>(out.mutable_data_ptr());
    const scalar_t* src = static_cast<const scalar_t*>(input.const_data_ptr());
    const auto* fp = static_cast<const math_t<scalar_t>*>(f.const_data_ptr());
    launch<scalar_t, ScaleRows>(
        stream, {input.numel(), input.numel(), view.inner, aligned16(dst) && aligned16(src)},
        [&](auto op) {
          using index_t = decltype(op.inner);
          return decltype(op){dst, src, fp, static_cast<index_t>(view.inner),
                              static_cast<index_t>(view.rows)};
        });
  });
  return out;
}

Tensor add_rows_cuda(Tensor residual, Tensor branch, Tensor factors, int64_t batch_dim,
                     OptionalTensor cu_seqlens) {
  const int64_t dim = check_add_rows_args(residual, branch, factors, batch_dim, cu_seqlens);
  const torch::stable::accelerator::DeviceGuard guard(residual.get_device_index());
  const cudaStream_t stream = current_stream(residual.get_device_index());
  const Tensor f = index_factors(branch, dim, factors, cu_seqlens, stream);
  const AddOperands in = as_add_operands(residual, branch);
  Tensor out = empty_like_dense(in.residual);
  const int64_t numel = out.numel();
  if (numel == 0) {
    return out;
  }
  const RowView view = row_view(in.residual, dim);
  dispatch_floating(residual.scalar_type(), [&](auto type) {
    using scalar_t = typename decltype(type)::type;
    scalar_t* dst = static_cast<scalar_t*>(out.mutable_data_ptr());
    const scalar_t* r = static_cast<const scalar_t*>(in.residual.const_data_ptr());
    const scalar_t* b = static_cast<const scalar_t*>(in.branch.const_data_ptr());
    const auto* fp = static_cast<const math_t<scalar_t>*>(f.const_data_ptr());
    launch<scalar_t, AddRows>(
        stream, {numel, numel, view.inner, aligned16(dst) && aligned16(r) && aligned16(b)},
        [&](auto op) {
          using index_t = decltype(op.inner);
          return decltype(op){dst, r, b, fp, static_cast<index_t>(view.inner),
                              static_cast<index_t>(view.rows)};
        });
  });
  return out;
}

Tensor take_rows_cuda(Tensor x, Tensor rows, Tensor inverse_rows, OptionalTensor factors,
                      int64_t batch_dim) {
  const int64_t dim = check_take_rows_args(x, rows, inverse_rows, factors, batch_dim);
  const torch::stable::accelerator::DeviceGuard guard(x.get_device_index());
  const cudaStream_t stream = current_stream(x.get_device_index());
  const MemoryFormat format = own_memory_format(x);
  const Tensor input = in_memory_format(x, format);
  Tensor out = empty_with_rows(input, dim, rows.size(0), format);
  if (out.numel() == 0) {
    return out;
  }
  const RowView source = format_row_view(sizes_of(input), dim, format);
  const Tensor map = torch::stable::contiguous(rows);
  const OptionalTensor f =
      factors.has_value() ? OptionalTensor(math_factors(x, *factors)) : std::nullopt;
  dispatch_floating(x.scalar_type(), [&](auto type) {
    using scalar_t = typename decltype(type)::type;
    scalar_t* dst = static_cast<scalar_t*>(out.mutable_data_ptr());
    const scalar_t* src = static_cast<const scalar_t*>(input.const_data_ptr());
    const auto* fp =
        f.has_value() ? static_cast<const math_t<scalar_t>*>(f->const_data_ptr()) : nullptr;
    const int64_t* mp = static_cast<const int64_t*>(map.const_data_ptr());
    launch<scalar_t, TakeRows>(
        stream, {out.numel(), input.numel(), source.inner, aligned16(dst) && aligned16(src)},
        [&](auto op) {
          using index_t = decltype(op.inner);
          return decltype(op){dst, src, fp, mp, static_cast<index_t>(source.inner),
                              static_cast<index_t>(rows.size(0)),
                              static_cast<index_t>(source.rows)};
        });
  });
  return out;
}

Tensor add_taken_rows_cuda(Tensor residual, Tensor branch, Tensor factors, Tensor rows,
                           Tensor inverse_rows, int64_t batch_dim) {
  const int64_t dim =
      check_add_taken_rows_args(residual, branch, factors, rows, inverse_rows, batch_dim);
  const torch::stable::accelerator::DeviceGuard guard(residual.get_device_index());
  const cudaStream_t stream = current_stream(residual.get_device_index());
  const MemoryFormat format = own_memory_format(residual);
  const Tensor res = in_memory_format(residual, format);
  const Tensor br = in_memory_format(branch, format);
  Tensor out = empty_with_rows(res, dim, res.size(dim), format);
  const int64_t numel = out.numel();
  if (numel == 0) {
    return out;
  }
  const RowView view = format_row_view(sizes_of(res), dim, format);
  const Tensor f = math_factors(residual, factors);
  const Tensor map = torch::stable::contiguous(rows);
  dispatch_floating(residual.scalar_type(), [&](auto type) {
    using scalar_t = typename decltype(type)::type;
    scalar_t* dst = static_cast<scalar_t*>(out.mutable_data_ptr());
    const scalar_t* r = static_cast<const scalar_t*>(res.const_data_ptr());
    const scalar_t* b = static_cast<const scalar_t*>(br.const_data_ptr());
    const auto* fp = static_cast<const math_t<scalar_t>*>(f.const_data_ptr());
    const int64_t* mp = static_cast<const int64_t*>(map.const_data_ptr());
    launch<scalar_t, AddTakenRows>(
        stream,
        {numel, std::max(numel, br.numel()), view.inner,
         aligned16(dst) && aligned16(r) && aligned16(b)},
        [&](auto op) {
          using index_t = decltype(op.inner);
          return decltype(op){dst, r, b, fp, mp, static_cast<index_t>(view.inner),
                              static_cast<index_t>(view.rows),
                              static_cast<index_t>(br.size(dim))};
        });
  });
  return out;
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(droppath, CUDA, m) {
  m.impl("_scale_rows", TORCH_BOX(&scale_rows_cuda));
  m.impl("_add_rows", TORCH_BOX(&add_rows_cuda));
  m.impl("_take_rows", TORCH_BOX(&take_rows_cuda));
  m.impl("_add_taken_rows", TORCH_BOX(&add_taken_rows_cuda));
}

}  // namespace droppath
