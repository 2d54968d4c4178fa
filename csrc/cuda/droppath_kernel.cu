// CUDA kernels: per-sample factors drawn from torch's CUDA generator through
// its Philox state (reproducible with torch.cuda.manual_seed, replayed by
// checkpoint recomputation, and safe to capture in a CUDA graph: each replay
// reads a fresh offset), then one pass over memory with 128-bit loads and
// stores where the layout allows.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAGeneratorImpl.h>
#include <ATen/cuda/PhiloxUtils.cuh>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <curand_kernel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <mutex>

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

// ---- factors ---------------------------------------------------------------

template <typename math_t>
__global__ void sample_factors_kernel(math_t* __restrict__ factors,
                                      int64_t batch, at::PhiloxCudaState philox,
                                      float keep_prob, math_t kept_value) {
  const auto seeds = at::cuda::philox::unpack(philox);
  for (int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       b < batch; b += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    curandStatePhilox4_32_10_t state;
    curand_init(std::get<0>(seeds), b, std::get<1>(seeds), &state);
    // u in (0, 1]: kept with probability keep_prob, never at keep_prob == 0.
    const float u = curand_uniform(&state);
    factors[b] = u <= keep_prob ? kept_value : math_t(0);
  }
}

at::Tensor sample_factors_cuda(const at::Tensor& x, double drop_prob,
                               bool scale_by_keep,
                               std::optional<at::Generator> generator) {
  check_drop_prob(drop_prob);
  check_input(x, "x");
  check_generator(x, generator);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t batch = x.size(0);
  at::Tensor factors =
      at::empty({batch}, x.options().dtype(math_dtype(x.scalar_type())));
  if (batch == 0) {
    return factors;
  }
  const double keep_prob = 1.0 - drop_prob;
  const double kept_value = kept_factor(drop_prob, scale_by_keep);
  auto* gen = at::get_generator_or_default<at::CUDAGeneratorImpl>(
      generator, at::cuda::detail::getDefaultCUDAGenerator());
  at::PhiloxCudaState philox;
  {
    std::lock_guard<std::mutex> lock(gen->mutex_);
    philox = gen->philox_cuda_state(4);  // one curand_uniform per thread
  }
  const int blocks = static_cast<int>(std::min<int64_t>((batch + kThreads - 1) / kThreads, 1024));
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(factors.scalar_type(), "droppath_sample_factors_cuda", [&] {
    sample_factors_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(
        factors.mutable_data_ptr<scalar_t>(), batch, philox,
        static_cast<float>(keep_prob), static_cast<scalar_t>(kept_value));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return factors;
}

// ---- scale / add -------------------------------------------------------------
// With N > 1 the caller guarantees every pointer is 16-byte aligned and the
// sample size is a multiple of N, so a pack never straddles two samples.

// Grid-stride loop over packs of N elements: body(first element, its sample).
template <int N, typename index_t, typename Body>
__device__ __forceinline__ void for_each_pack(index_t numel, index_t sample_size, const Body& body) {
  const index_t step = static_cast<index_t>(gridDim.x) * blockDim.x * N;
  for (index_t i = (static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x) * N;
       i < numel; i += step) {
    body(i, i / sample_size);
  }
}

template <typename scalar_t, int N, typename index_t>
__global__ void scale_rows_kernel(scalar_t* __restrict__ out,
                                  const scalar_t* __restrict__ x,
                                  const at::opmath_type<scalar_t>* __restrict__ factors,
                                  index_t numel, index_t sample_size) {
  using math_t = at::opmath_type<scalar_t>;
  using P = Pack<scalar_t, N>;
  for_each_pack<N>(numel, sample_size, [&](index_t i, index_t sample) {
    const math_t f = factors[sample];
    P result;
    if (f == math_t(0)) {
#pragma unroll
      for (int k = 0; k < N; ++k) result.val[k] = scalar_t(0);
    } else {
      const P in = *reinterpret_cast<const P*>(x + i);
#pragma unroll
      for (int k = 0; k < N; ++k) {
        result.val[k] = static_cast<scalar_t>(static_cast<math_t>(in.val[k]) * f);
      }
    }
    *reinterpret_cast<P*>(out + i) = result;
  });
}

template <typename scalar_t, int N, typename index_t>
__global__ void add_rows_kernel(scalar_t* __restrict__ out,
                                const scalar_t* __restrict__ residual,
                                const scalar_t* __restrict__ branch,
                                const at::opmath_type<scalar_t>* __restrict__ factors,
                                index_t numel, index_t sample_size) {
  using math_t = at::opmath_type<scalar_t>;
  using P = Pack<scalar_t, N>;
  for_each_pack<N>(numel, sample_size, [&](index_t i, index_t sample) {
    const math_t f = factors[sample];
    const P res = *reinterpret_cast<const P*>(residual + i);
    P result = res;
    if (f != math_t(0)) {  // a dropped sample's branch is never read
      const P br = *reinterpret_cast<const P*>(branch + i);
#pragma unroll
      for (int k = 0; k < N; ++k) {
        result.val[k] = static_cast<scalar_t>(static_cast<math_t>(res.val[k]) +
                                              mul_rn(static_cast<math_t>(br.val[k]), f));
      }
    }
    *reinterpret_cast<P*>(out + i) = result;
  });
}

bool aligned16(const void* p) {
  return reinterpret_cast<std::uintptr_t>(p) % 16 == 0;
}

int grid_for(int64_t packs) {
  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t wanted = (packs + kThreads - 1) / kThreads;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(wanted, int64_t(sms) * 8)));
}

// Launches kernel<scalar_t, N, index_t> with the widest N the layout allows
// and 32-bit indices whenever they cannot overflow.
template <typename scalar_t, template <typename, int, typename> class Launch, typename... Ptrs>
void launch_rows(int64_t numel, int64_t sample_size, bool vectorizable, Ptrs... ptrs) {
  constexpr int kPack = 16 / sizeof(scalar_t);
  const bool vec = vectorizable && sample_size % kPack == 0;
  const int64_t packs = vec ? numel / kPack : numel;
  const auto stream = at::cuda::getCurrentCUDAStream();
  const int blocks = grid_for(packs);
  const bool small = numel + int64_t(blocks) * kThreads * kPack < (int64_t(1) << 31);
  if (vec && small) {
    Launch<scalar_t, kPack, uint32_t>::run(blocks, stream, ptrs..., numel, sample_size);
  } else if (vec) {
    Launch<scalar_t, kPack, int64_t>::run(blocks, stream, ptrs..., numel, sample_size);
  } else if (small) {
    Launch<scalar_t, 1, uint32_t>::run(blocks, stream, ptrs..., numel, sample_size);
  } else {
    Launch<scalar_t, 1, int64_t>::run(blocks, stream, ptrs..., numel, sample_size);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t, int N, typename index_t>
struct ScaleLaunch {
  static void run(int blocks, cudaStream_t stream, scalar_t* out, const scalar_t* x,
                  const at::opmath_type<scalar_t>* f, int64_t numel, int64_t sample_size) {
    scale_rows_kernel<scalar_t, N, index_t><<<blocks, kThreads, 0, stream>>>(
        out, x, f, static_cast<index_t>(numel), static_cast<index_t>(sample_size));
  }
};

template <typename scalar_t, int N, typename index_t>
struct AddLaunch {
  static void run(int blocks, cudaStream_t stream, scalar_t* out, const scalar_t* r,
                  const scalar_t* b, const at::opmath_type<scalar_t>* f, int64_t numel,
                  int64_t sample_size) {
    add_rows_kernel<scalar_t, N, index_t><<<blocks, kThreads, 0, stream>>>(
        out, r, b, f, static_cast<index_t>(numel), static_cast<index_t>(sample_size));
  }
};

at::Tensor scale_rows_cuda(const at::Tensor& x, const at::Tensor& factors) {
  check_input(x, "x");
  check_factors(x, factors);
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor input = as_sample_major(x);
  at::Tensor out = at::empty_like(input);
  const int64_t numel = input.numel();
  if (numel == 0) {
    return out;
  }
  const at::Tensor f = math_factors(x, factors);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "droppath_scale_rows_cuda", [&] {
    scalar_t* dst = out.mutable_data_ptr<scalar_t>();
    const scalar_t* src = input.const_data_ptr<scalar_t>();
    launch_rows<scalar_t, ScaleLaunch>(numel, numel / input.size(0),
                                       aligned16(dst) && aligned16(src), dst, src,
                                       f.const_data_ptr<at::opmath_type<scalar_t>>());
  });
  return out;
}

at::Tensor add_rows_cuda(const at::Tensor& residual, const at::Tensor& branch,
                         const at::Tensor& factors) {
  check_pair(residual, branch);
  check_factors(branch, factors);
  const c10::cuda::CUDAGuard guard(residual.device());
  const AddOperands in = as_add_operands(residual, branch);
  const at::Tensor& res = in.residual;
  const at::Tensor& br = in.branch;
  at::Tensor out = at::empty_like(res);
  const int64_t numel = res.numel();
  if (numel == 0) {
    return out;
  }
  const at::Tensor f = math_factors(branch, factors);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, res.scalar_type(), "droppath_add_rows_cuda", [&] {
    scalar_t* dst = out.mutable_data_ptr<scalar_t>();
    const scalar_t* r = res.const_data_ptr<scalar_t>();
    const scalar_t* b = br.const_data_ptr<scalar_t>();
    launch_rows<scalar_t, AddLaunch>(numel, numel / res.size(0),
                                     aligned16(dst) && aligned16(r) && aligned16(b), dst, r, b,
                                     f.const_data_ptr<at::opmath_type<scalar_t>>());
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(droppath, CUDA, m) {
  m.impl("_sample_factors", &sample_factors_cuda);
  m.impl("_scale_rows", &scale_rows_cuda);
  m.impl("_add_rows", &add_rows_cuda);
}

}  // namespace droppath
