// The CPU inner loops, compiled once per CPU capability (rows_kernel_*.cpp
// define CPU_CAPABILITY and include this file); rows_kernel_dispatch.cpp
// picks one at run time. Only the LibTorch stable ABI and header-only types
// are used (the same file builds the Python wheel's library, for every torch
// from 2.11 on, and the C++ package): the loops are plain C++ that the
// compiler vectorises for each file's -m flags.
//
// Layout contract (see layout.h): every buffer is dense and read in memory
// order as [outer][rows][inner] along the batch dim (a RowView); out and the
// inputs of one call share that order. Factors are per index along the
// batch dim, in the math dtype (math_t: float, or double for double).
#pragma once

#include <torch/csrc/stable/ops.h>

#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__AVX2__) && defined(__F16C__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cstring>
#include <optional>
#include <type_traits>

#include "../checks.h"
#include "../dtypes.h"
#include "../layout.h"

namespace droppath::cpu {
namespace CPU_CAPABILITY {

// Elements per parallel task: large enough that thread start-up does not
// show at ViT-sized tensors, small enough to split them over a few cores.
constexpr int64_t kGrainSize = 32768;

// Calls fn(outer, index, begin, count) on each piece of [0, numel) that lies
// in a single run of `inner` elements, the run being index `index` along the
// batch dim in outer block `outer` ([outer][rows][inner], see layout.h). The
// pieces are shared out over threads in contiguous chunks and visited in
// memory order (sample by sample was tried for sequence-first tensors: the
// strided runs defeat the hardware prefetcher, 2x slower); within a chunk the
// position advances without divisions, so short runs (one per token and
// sample in a sequence-first tensor) stay cheap.
// chunk(begin, end) over [0, numel) in at most torch.get_num_threads()
// contiguous pieces of at least kGrainSize, as at::parallel_for splits them.
// With OpenMP the region is this library's own, as at::parallel_for's
// inline OpenMP template made it before: torch::stable::parallel_for (a
// callback through the shim into libtorch's pool) ran these memory-bound
// loops about 2x slower with 2 threads than with 1 (AMD EPYC, 2 cores).
template <typename Chunk>
void parallel_chunks(int64_t numel, const Chunk& chunk) {
#ifdef _OPENMP
  const int64_t pieces = (numel + kGrainSize - 1) / kGrainSize;
  const int64_t threads = std::min<int64_t>(torch::stable::get_num_threads(), pieces);
  if (threads <= 1 || omp_in_parallel()) {
    chunk(int64_t(0), numel);
    return;
  }
#pragma omp parallel num_threads(static_cast<int>(threads))
  {
    const int64_t count = omp_get_num_threads();
    const int64_t per = (numel + count - 1) / count;
    const int64_t begin = omp_get_thread_num() * per;
    const int64_t end = std::min(numel, begin + per);
    if (begin < end) {
      chunk(begin, end);
    }
  }
#else
  torch::stable::parallel_for(0, numel, kGrainSize, chunk);
#endif
}

template <typename Fn>
void for_each_row_span(int64_t numel, int64_t inner, int64_t rows, const Fn& fn) {
  parallel_chunks(numel, [&](int64_t begin, int64_t end) {
    int64_t row = begin / inner;
    int64_t outer = row / rows;
    int64_t index = row - outer * rows;
    for (int64_t i = begin; i < end;) {
      const int64_t stop = std::min(end, (row + 1) * inner);
      fn(outer, index, i, stop - i);
      i = stop;
      ++row;
      if (++index == rows) {
        index = 0;
        ++outer;
      }
    }
  });
}

// out[i] = x[i] * f for float and double. A plain loop, which the compiler
// vectorises for the file's capability at the width it prefers: 256 bits in
// the AVX-512 build (capability_flags.txt), where an at::vec 512-bit float
// loop ran ~8% slower than ATen's x * s on a memory-bound tensor (AMD EPYC)
// and this one runs on par. The half types convert 8 values at a time below.
template <typename scalar_t>
void scale_span(scalar_t* __restrict__ out, const scalar_t* __restrict__ x, int64_t n, scalar_t f) {
  for (int64_t i = 0; i < n; ++i) {
    out[i] = x[i] * f;
  }
}

// float16 / bfloat16 <-> float, 8 at a time, where the capability has AVX2
// and F16C (the AVX2 and AVX-512 builds): header-only c10::Half and
// c10::BFloat16 convert one value at a time, ~10x slower than these. The
// roundings are theirs: float16 to nearest even (F16C), bfloat16 to nearest
// even with NaN as 0x7FC0 (c10::detail::round_to_nearest_even).
#if defined(__AVX2__) && defined(__F16C__)
constexpr int64_t kReducedWidth = 8;

inline __m256 load8(const c10::Half* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

inline void store8(c10::Half* p, __m256 v) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p),
                   _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

inline __m256 load8(const c10::BFloat16* p) {
  const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
}

inline void store8(c10::BFloat16* p, __m256 v) {
  const __m256i bits = _mm256_castps_si256(v);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
  const __m256i bias = _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7FFF));
  __m256i rounded = _mm256_srli_epi32(_mm256_add_epi32(bits, bias), 16);
  const __m256 nan = _mm256_cmp_ps(v, v, _CMP_UNORD_Q);
  rounded = _mm256_blendv_epi8(rounded, _mm256_set1_epi32(0x7FC0), _mm256_castps_si256(nan));
  // 32 -> 16 bits: packus works per 128-bit lane; the permute joins the halves.
  const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(rounded, rounded), 0xD8);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_castsi256_si128(packed));
}
#else
constexpr int64_t kReducedWidth = 0;
#endif

// out[i] = round(float(x[i]) * f) for float16 and bfloat16: one rounding.
template <typename scalar_t>
void scale_span_reduced(scalar_t* __restrict__ out, const scalar_t* __restrict__ x, int64_t n, float f) {
  int64_t i = 0;
#if defined(__AVX2__) && defined(__F16C__)
  const __m256 factor = _mm256_set1_ps(f);
  for (; i + kReducedWidth <= n; i += kReducedWidth) {
    store8(out + i, _mm256_mul_ps(load8(x + i), factor));
  }
#endif
  for (; i < n; ++i) {
    out[i] = static_cast<scalar_t>(static_cast<float>(x[i]) * f);
  }
}

// out[i] = residual[i] + branch[i] * f for float and double (no FMA: the
// build passes -ffp-contract=off, so this rounds as the unfused sum does).
template <typename scalar_t>
void add_span(scalar_t* __restrict__ out, const scalar_t* __restrict__ residual,
              const scalar_t* __restrict__ branch, int64_t n, scalar_t f) {
  for (int64_t i = 0; i < n; ++i) {
    out[i] = residual[i] + branch[i] * f;
  }
}

// The same for float16 and bfloat16, in float, rounded once (no FMA: as
// the unfused sum rounds).
template <typename scalar_t>
void add_span_reduced(scalar_t* __restrict__ out, const scalar_t* __restrict__ residual,
                      const scalar_t* __restrict__ branch, int64_t n, float f) {
  int64_t i = 0;
#if defined(__AVX2__) && defined(__F16C__)
  const __m256 factor = _mm256_set1_ps(f);
  for (; i + kReducedWidth <= n; i += kReducedWidth) {
    store8(out + i, _mm256_add_ps(load8(residual + i), _mm256_mul_ps(load8(branch + i), factor)));
  }
#endif
  for (; i < n; ++i) {
    out[i] = static_cast<scalar_t>(static_cast<float>(residual[i]) + static_cast<float>(branch[i]) * f);
  }
}

// out = x * f over n elements; a zero factor writes zeros without reading x
// (all-zero bits are +0.0), a factor of one copies.
template <typename scalar_t>
void scale_or_fill(scalar_t* out, const scalar_t* x, int64_t n, math_t<scalar_t> f) {
  using math = math_t<scalar_t>;
  if (f == math(0)) {
    std::memset(out, 0, n * sizeof(scalar_t));
  } else if (f == math(1)) {
    std::memcpy(out, x, n * sizeof(scalar_t));
  } else if constexpr (std::is_same_v<scalar_t, math>) {
    scale_span<scalar_t>(out, x, n, f);
  } else {
    scale_span_reduced<scalar_t>(out, x, n, f);
  }
}

// out = residual + branch * f over n elements; a zero factor copies the
// residual without reading the branch.
template <typename scalar_t>
void add_or_copy(scalar_t* out, const scalar_t* residual, const scalar_t* branch, int64_t n,
                 math_t<scalar_t> f) {
  using math = math_t<scalar_t>;
  if (f == math(0)) {
    std::memcpy(out, residual, n * sizeof(scalar_t));
  } else if constexpr (std::is_same_v<scalar_t, math>) {
    add_span<scalar_t>(out, residual, branch, n, f);
  } else {
    add_span_reduced<scalar_t>(out, residual, branch, n, f);
  }
}

// out[row] = x[row] * factors[row % rows] (row = run of `inner` elements).
inline void scale_rows_kernel(const Tensor& out, const Tensor& x,
                              const Tensor& factors, RowView view) {
  dispatch_floating(x.scalar_type(), [&](auto type) {
    using scalar_t = typename decltype(type)::type;
    const auto* f = static_cast<const math_t<scalar_t>*>(factors.const_data_ptr());
    const scalar_t* in = static_cast<const scalar_t*>(x.const_data_ptr());
    scalar_t* dst = static_cast<scalar_t*>(out.mutable_data_ptr());
    for_each_row_span(x.numel(), view.inner, view.rows, [&](int64_t, int64_t b, int64_t i, int64_t n) {
      scale_or_fill(dst + i, in + i, n, f[b]);
    });
  });
}

// out[row] = residual[row] + branch[row] * factors[row % rows].
inline void add_rows_kernel(const Tensor& out, const Tensor& residual,
                            const Tensor& branch, const Tensor& factors,
                            RowView view) {
  dispatch_floating(residual.scalar_type(), [&](auto type) {
    using scalar_t = typename decltype(type)::type;
    const auto* f = static_cast<const math_t<scalar_t>*>(factors.const_data_ptr());
    const scalar_t* res = static_cast<const scalar_t*>(residual.const_data_ptr());
    const scalar_t* br = static_cast<const scalar_t*>(branch.const_data_ptr());
    scalar_t* dst = static_cast<scalar_t*>(out.mutable_data_ptr());
    for_each_row_span(residual.numel(), view.inner, view.rows,
                      [&](int64_t, int64_t b, int64_t i, int64_t n) {
                        add_or_copy(dst + i, res + i, br + i, n, f[b]);
                      });
  });
}

// out (outer x out_rows x inner): out[o][r] = x[o][rows[r]] * factors[rows[r]]
// (factors optional, else 1), zeros where rows[r] is outside [0, source.rows).
inline void take_rows_kernel(const Tensor& out, const Tensor& x, const Tensor& rows,
                             const OptionalTensor& factors, RowView source,
                             int64_t out_rows) {
  dispatch_floating(x.scalar_type(), [&](auto type) {
    using scalar_t = typename decltype(type)::type;
    using math = math_t<scalar_t>;
    const math* f = factors.has_value() ? static_cast<const math*>(factors->const_data_ptr()) : nullptr;
    const int64_t* map = static_cast<const int64_t*>(rows.const_data_ptr());
    const scalar_t* in = static_cast<const scalar_t*>(x.const_data_ptr());
    scalar_t* dst = static_cast<scalar_t*>(out.mutable_data_ptr());
    const int64_t inner = source.inner;
    for_each_row_span(out.numel(), inner, out_rows, [&](int64_t o, int64_t r, int64_t i, int64_t n) {
      const int64_t from = map[r];
      if (from < 0 || from >= source.rows) {
        std::memset(dst + i, 0, n * sizeof(scalar_t));
        return;
      }
      const int64_t within = i - (o * out_rows + r) * inner;
      const int64_t offset = (o * source.rows + from) * inner + within;
      scale_or_fill(dst + i, in + offset, n, f != nullptr ? f[from] : math(1));
    });
  });
}

// out (outer x residual rows x inner): residual[o][b] + branch[o][rows[b]] * factors[b],
// or residual[o][b] where factors[b] == 0 or rows[b] is outside [0, branch_rows).
inline void add_taken_rows_kernel(const Tensor& out, const Tensor& residual,
                                  const Tensor& branch, const Tensor& factors,
                                  const Tensor& rows, RowView view, int64_t branch_rows) {
  dispatch_floating(residual.scalar_type(), [&](auto type) {
    using scalar_t = typename decltype(type)::type;
    const auto* f = static_cast<const math_t<scalar_t>*>(factors.const_data_ptr());
    const int64_t* map = static_cast<const int64_t*>(rows.const_data_ptr());
    const scalar_t* res = static_cast<const scalar_t*>(residual.const_data_ptr());
    const scalar_t* br = static_cast<const scalar_t*>(branch.const_data_ptr());
    scalar_t* dst = static_cast<scalar_t*>(out.mutable_data_ptr());
    const int64_t inner = view.inner;
    for_each_row_span(residual.numel(), inner, view.rows, [&](int64_t o, int64_t b, int64_t i, int64_t n) {
      const int64_t from = map[b];
      const bool taken = from >= 0 && from < branch_rows;
      const int64_t within = i - (o * view.rows + b) * inner;
      const int64_t offset = taken ? (o * branch_rows + from) * inner + within : 0;
      add_or_copy(dst + i, res + i, br + offset, n, taken ? f[b] : 0);
    });
  });
}

}  // namespace CPU_CAPABILITY
}  // namespace droppath::cpu
