// CUDA kernels of the deterministic ops: one pass over memory with 128-bit
// loads and stores where the layout allows, grid-stride loops, 32-bit
// indices whenever they cannot overflow. The random factors come from
// ATen's bernoulli_ (composite.cpp), so nothing here draws random numbers.
//
// Only c10's CUDA headers and the CUDA runtime are included (no ATen/cuda,
// which pulls in cuBLAS/cuSPARSE headers): the bare toolkit is enough.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>

#include "../checks.h"
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
__device__ __forceinline__ Pack<scalar_t, N> scaled(const scalar_t* x, at::opmath_type<scalar_t> f) {
  using math_t = at::opmath_type<scalar_t>;
  Pack<scalar_t, N> result;
  if (f == math_t(0)) {  // exactly zero, without reading x
#pragma unroll
    for (int k = 0; k < N; ++k) result.val[k] = scalar_t(0);
  } else {
    const auto in = *reinterpret_cast<const Pack<scalar_t, N>*>(x);
#pragma unroll
    for (int k = 0; k < N; ++k) {
      result.val[k] = static_cast<scalar_t>(static_cast<math_t>(in.val[k]) * f);
    }
  }
  return result;
}

template <typename scalar_t, int N>
__device__ __forceinline__ Pack<scalar_t, N> added(const scalar_t* residual, const scalar_t* branch,
                                                   at::opmath_type<scalar_t> f) {
  using math_t = at::opmath_type<scalar_t>;
  auto result = *reinterpret_cast<const Pack<scalar_t, N>*>(residual);
  if (f != math_t(0)) {  // a dropped sample's branch is never read
    const auto br = *reinterpret_cast<const Pack<scalar_t, N>*>(branch);
#pragma unroll
    for (int k = 0; k < N; ++k) {
      result.val[k] = static_cast<scalar_t>(static_cast<math_t>(result.val[k]) +
                                            mul_rn(static_cast<math_t>(br.val[k]), f));
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
  const at::opmath_type<scalar_t>* factors;
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
  const at::opmath_type<scalar_t>* factors;
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
  const at::opmath_type<scalar_t>* factors;  // per source row, or null
  const int64_t* map;
  index_t inner, rows, source_rows;
  __device__ __forceinline__ void operator()(index_t i) const {
    using math_t = at::opmath_type<scalar_t>;
    const index_t row = i / inner;
    const int64_t from = map[row % rows];
    const bool valid = from >= 0 && from < static_cast<int64_t>(source_rows);
    const index_t source = valid ? ((row / rows) * source_rows + static_cast<index_t>(from)) * inner +
                                       (i - row * inner)
                                 : 0;
    const math_t f = !valid ? math_t(0) : factors != nullptr ? factors[from] : math_t(1);
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
  const at::opmath_type<scalar_t>* factors;
  const int64_t* map;
  index_t inner, rows, branch_rows;
  __device__ __forceinline__ void operator()(index_t i) const {
    using math_t = at::opmath_type<scalar_t>;
    const index_t row = i / inner;
    const index_t b = row % rows;
    const int64_t from = map[b];
    const bool valid = from >= 0 && from < static_cast<int64_t>(branch_rows);
    const index_t source = valid ? ((row / rows) * branch_rows + static_cast<index_t>(from)) * inner +
                                       (i - row * inner)
                                 : 0;
    store<scalar_t, N>(out + i, added<scalar_t, N>(residual + i, branch + source,
                                                   valid ? factors[b] : math_t(0)));
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

int multiprocessor_count() {
  static std::array<std::atomic<int>, 64> counts{};  // per device, 0 until read
  int device = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  int count = device < 64 ? counts[device].load(std::memory_order_relaxed) : 0;
  if (count == 0) {
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
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
void launch(const LaunchShape& shape, const Make& make) {
  constexpr int kPack = 16 / sizeof(scalar_t);
  const bool vec = shape.aligned && shape.inner % kPack == 0;
  const int64_t packs = vec ? shape.numel / kPack : shape.numel;
  const int blocks = static_cast<int>(std::max<int64_t>(
      1, std::min<int64_t>((packs + kThreads - 1) / kThreads, int64_t(multiprocessor_count()) * 8)));
  const bool small =
      std::max(shape.numel, shape.largest) + int64_t(blocks) * kThreads * kPack < (int64_t(1) << 31);
  const auto stream = c10::cuda::getCurrentCUDAStream();
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
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// ---- per-index factors for packed batches ---------------------------------------

// out[t] = per_sample[s] for the segment s with offsets[s] <= t < offsets[s + 1]
// (binary search: reads only offsets[1..samples], whatever their values).
template <typename math_t, typename offset_t>
__global__ void index_factors_kernel(math_t* out, const math_t* per_sample,
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
    out[t] = samples > 0 ? per_sample[lo < samples ? lo : samples - 1] : math_t(0);
  }
}

at::Tensor index_factors(const at::Tensor& x, int64_t dim, const at::Tensor& factors,
                         const std::optional<at::Tensor>& cu_seqlens) {
  at::Tensor per_sample = math_factors(x, factors);
  if (!cu_seqlens.has_value()) {
    return per_sample;
  }
  const int64_t length = x.size(dim);
  check_cu_seqlens_values(*cu_seqlens, length);
  at::Tensor per_index = at::empty({length}, per_sample.options());
  if (length == 0) {
    return per_index;
  }
  const at::Tensor offsets = cu_seqlens->contiguous();
  const int blocks = static_cast<int>(std::min<int64_t>((length + kThreads - 1) / kThreads, 1024));
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(per_sample.scalar_type(), "droppath_index_factors_cuda", [&] {
    AT_DISPATCH_INDEX_TYPES(offsets.scalar_type(), "droppath_index_factors_cuda", [&] {
      index_factors_kernel<scalar_t, index_t><<<blocks, kThreads, 0, stream>>>(
          per_index.mutable_data_ptr<scalar_t>(), per_sample.const_data_ptr<scalar_t>(),
          offsets.const_data_ptr<index_t>(), offsets.numel() - 1, length);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return per_index;
}

#define DROPPATH_DISPATCH_FLOATING(dtype, name, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, name, __VA_ARGS__)

// ---- op entry points ------------------------------------------------------------

at::Tensor scale_rows_cuda(const at::Tensor& x, const at::Tensor& factors, int64_t batch_dim,
                           const std::optional<at::Tensor>& cu_seqlens) {
  const int64_t dim = check_scale_rows_args(x, factors, batch_dim, cu_seqlens);
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor f = index_factors(x, dim, factors, cu_seqlens);
  const at::Tensor input = as_dense(x);
  at::Tensor out = empty_like_dense(input);
  if (input.numel() == 0) {
    return out;
  }
  const RowView view = row_view(input, dim);
  DROPPATH_DISPATCH_FLOATING(x.scalar_type(), "droppath_scale_rows_cuda", [&] {
    scalar_t* dst = out.mutable_data_ptr<scalar_t>();
    const scalar_t* src = input.const_data_ptr<scalar_t>();
    const auto* fp = f.const_data_ptr<at::opmath_type<scalar_t>>();
    launch<scalar_t, ScaleRows>(
        {input.numel(), input.numel(), view.inner, aligned16(dst) && aligned16(src)},
        [&](auto op) {
          using index_t = decltype(op.inner);
          return decltype(op){dst, src, fp, static_cast<index_t>(view.inner),
                              static_cast<index_t>(view.rows)};
        });
  });
  return out;
}

at::Tensor add_rows_cuda(const at::Tensor& residual, const at::Tensor& branch,
                         const at::Tensor& factors, int64_t batch_dim,
                         const std::optional<at::Tensor>& cu_seqlens) {
  const int64_t dim = check_add_rows_args(residual, branch, factors, batch_dim, cu_seqlens);
  const c10::cuda::CUDAGuard guard(residual.device());
  const at::Tensor f = index_factors(branch, dim, factors, cu_seqlens);
  const AddOperands in = as_add_operands(residual, branch);
  at::Tensor out = empty_like_dense(in.residual);
  const int64_t numel = out.numel();
  if (numel == 0) {
    return out;
  }
  const RowView view = row_view(in.residual, dim);
  DROPPATH_DISPATCH_FLOATING(residual.scalar_type(), "droppath_add_rows_cuda", [&] {
    scalar_t* dst = out.mutable_data_ptr<scalar_t>();
    const scalar_t* r = in.residual.const_data_ptr<scalar_t>();
    const scalar_t* b = in.branch.const_data_ptr<scalar_t>();
    const auto* fp = f.const_data_ptr<at::opmath_type<scalar_t>>();
    launch<scalar_t, AddRows>(
        {numel, numel, view.inner, aligned16(dst) && aligned16(r) && aligned16(b)},
        [&](auto op) {
          using index_t = decltype(op.inner);
          return decltype(op){dst, r, b, fp, static_cast<index_t>(view.inner),
                              static_cast<index_t>(view.rows)};
        });
  });
  return out;
}

at::Tensor take_rows_cuda(const at::Tensor& x, const at::Tensor& rows,
                          const at::Tensor& inverse_rows, const std::optional<at::Tensor>& factors,
                          int64_t batch_dim) {
  const int64_t dim = check_take_rows_args(x, rows, inverse_rows, factors, batch_dim);
  const c10::cuda::CUDAGuard guard(x.device());
  const at::MemoryFormat format = own_memory_format(x);
  const at::Tensor input = in_memory_format(x, format);
  at::Tensor out = empty_with_rows(input, dim, rows.sym_size(0), format);
  if (out.numel() == 0) {
    return out;
  }
  const RowView source = format_row_view(input.sizes(), dim, format);
  const at::Tensor map = rows.contiguous();
  const std::optional<at::Tensor> f =
      factors.has_value() ? std::optional<at::Tensor>(math_factors(x, *factors)) : std::nullopt;
  DROPPATH_DISPATCH_FLOATING(x.scalar_type(), "droppath_take_rows_cuda", [&] {
    scalar_t* dst = out.mutable_data_ptr<scalar_t>();
    const scalar_t* src = input.const_data_ptr<scalar_t>();
    const auto* fp = f.has_value() ? f->const_data_ptr<at::opmath_type<scalar_t>>() : nullptr;
    const int64_t* mp = map.const_data_ptr<int64_t>();
    launch<scalar_t, TakeRows>(
        {out.numel(), input.numel(), source.inner, aligned16(dst) && aligned16(src)},
        [&](auto op) {
          using index_t = decltype(op.inner);
          return decltype(op){dst, src, fp, mp, static_cast<index_t>(source.inner),
                              static_cast<index_t>(rows.size(0)),
                              static_cast<index_t>(source.rows)};
        });
  });
  return out;
}

at::Tensor add_taken_rows_cuda(const at::Tensor& residual, const at::Tensor& branch,
                               const at::Tensor& factors, const at::Tensor& rows,
                               const at::Tensor& inverse_rows, int64_t batch_dim) {
  const int64_t dim =
      check_add_taken_rows_args(residual, branch, factors, rows, inverse_rows, batch_dim);
  const c10::cuda::CUDAGuard guard(residual.device());
  const at::MemoryFormat format = own_memory_format(residual);
  const at::Tensor res = in_memory_format(residual, format);
  const at::Tensor br = in_memory_format(branch, format);
  at::Tensor out = empty_with_rows(res, dim, res.sym_size(dim), format);
  const int64_t numel = out.numel();
  if (numel == 0) {
    return out;
  }
  const RowView view = format_row_view(res.sizes(), dim, format);
  const at::Tensor f = math_factors(residual, factors);
  const at::Tensor map = rows.contiguous();
  DROPPATH_DISPATCH_FLOATING(residual.scalar_type(), "droppath_add_taken_rows_cuda", [&] {
    scalar_t* dst = out.mutable_data_ptr<scalar_t>();
    const scalar_t* r = res.const_data_ptr<scalar_t>();
    const scalar_t* b = br.const_data_ptr<scalar_t>();
    const auto* fp = f.const_data_ptr<at::opmath_type<scalar_t>>();
    const int64_t* mp = map.const_data_ptr<int64_t>();
    launch<scalar_t, AddTakenRows>(
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

#undef DROPPATH_DISPATCH_FLOATING

}  // namespace

TORCH_LIBRARY_IMPL(droppath, CUDA, m) {
  m.impl("_scale_rows", &scale_rows_cuda);
  m.impl("_add_rows", &add_rows_cuda);
  m.impl("_take_rows", &take_rows_cuda);
  m.impl("_add_taken_rows", &add_taken_rows_cuda);
}

}  // namespace droppath
