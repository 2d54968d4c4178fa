// The CPU inner loops, compiled once per CPU capability (rows_kernel_*.cpp
// define CPU_CAPABILITY and include this file); rows_kernel_dispatch.cpp
// picks one at run time. at::vec::Vectorized takes its instruction set from
// the CPU_CAPABILITY_* macros, so the macros and the compiler's target must
// agree inside each translation unit.
//
// Layout contract (see layout.h): out, inputs share one sample-major layout,
// so sample b is the range [b * S, (b + 1) * S) of each buffer.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstring>

namespace droppath::cpu {
namespace CPU_CAPABILITY {

// Elements per parallel task: large enough that thread start-up does not
// show at ViT-sized tensors, small enough to split them over a few cores.
constexpr int64_t kGrainSize = 32768;

// Calls fn(sample, begin, count) on each piece of [0, numel) that lies in a
// single sample, with the pieces shared out over threads in contiguous chunks.
template <typename Fn>
void for_each_sample_span(int64_t numel, int64_t sample_size, const Fn& fn) {
  at::parallel_for(0, numel, kGrainSize, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end;) {
      const int64_t sample = i / sample_size;
      const int64_t stop = std::min(end, (sample + 1) * sample_size);
      fn(sample, i, stop - i);
      i = stop;
    }
  });
}

// out[i] = x[i] * f for float and double.
template <typename scalar_t>
void scale_span(scalar_t* out, const scalar_t* x, int64_t n, scalar_t f) {
  using Vec = at::vec::Vectorized<scalar_t>;
  const Vec factor(f);
  int64_t i = 0;
  for (; i + 2 * Vec::size() <= n; i += 2 * Vec::size()) {
    const Vec a = Vec::loadu(x + i);
    const Vec b = Vec::loadu(x + i + Vec::size());
    (a * factor).store(out + i);
    (b * factor).store(out + i + Vec::size());
  }
  for (; i < n; i += Vec::size()) {
    const int64_t count = std::min<int64_t>(Vec::size(), n - i);
    (Vec::loadu(x + i, count) * factor).store(out + i, count);
  }
}

// out[i] = round(float(x[i]) * f) for float16 and bfloat16: one rounding.
template <typename scalar_t>
void scale_span_reduced(scalar_t* out, const scalar_t* x, int64_t n, float f) {
  using Vec = at::vec::Vectorized<scalar_t>;
  using FVec = at::vec::Vectorized<float>;
  const FVec factor(f);
  for (int64_t i = 0; i < n; i += Vec::size()) {
    const int64_t count = std::min<int64_t>(Vec::size(), n - i);
    auto [lo, hi] = at::vec::convert_to_float<scalar_t>(
        count == Vec::size() ? Vec::loadu(x + i) : Vec::loadu(x + i, count));
    const Vec result =
        at::vec::convert_from_float<scalar_t>(lo * factor, hi * factor);
    if (count == Vec::size()) {
      result.store(out + i);
    } else {
      result.store(out + i, count);
    }
  }
}

// out[i] = residual[i] + branch[i] * f for float and double.
template <typename scalar_t>
void add_span(scalar_t* out, const scalar_t* residual, const scalar_t* branch,
              int64_t n, scalar_t f) {
  using Vec = at::vec::Vectorized<scalar_t>;
  const Vec factor(f);
  for (int64_t i = 0; i < n; i += Vec::size()) {
    const int64_t count = std::min<int64_t>(Vec::size(), n - i);
    if (count == Vec::size()) {
      (Vec::loadu(residual + i) + Vec::loadu(branch + i) * factor).store(out + i);
    } else {
      (Vec::loadu(residual + i, count) + Vec::loadu(branch + i, count) * factor)
          .store(out + i, count);
    }
  }
}

// The same for float16 and bfloat16, in float, rounded once.
template <typename scalar_t>
void add_span_reduced(scalar_t* out, const scalar_t* residual,
                      const scalar_t* branch, int64_t n, float f) {
  using Vec = at::vec::Vectorized<scalar_t>;
  using FVec = at::vec::Vectorized<float>;
  const FVec factor(f);
  for (int64_t i = 0; i < n; i += Vec::size()) {
    const int64_t count = std::min<int64_t>(Vec::size(), n - i);
    const bool full = count == Vec::size();
    auto [r_lo, r_hi] = at::vec::convert_to_float<scalar_t>(
        full ? Vec::loadu(residual + i) : Vec::loadu(residual + i, count));
    auto [b_lo, b_hi] = at::vec::convert_to_float<scalar_t>(
        full ? Vec::loadu(branch + i) : Vec::loadu(branch + i, count));
    const Vec result = at::vec::convert_from_float<scalar_t>(
        r_lo + b_lo * factor, r_hi + b_hi * factor);
    if (full) {
      result.store(out + i);
    } else {
      result.store(out + i, count);
    }
  }
}

inline void scale_rows_kernel(const at::Tensor& out, const at::Tensor& x,
                              const at::Tensor& factors) {
  const int64_t numel = x.numel();
  const int64_t sample_size = numel / x.size(0);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "droppath_scale_rows", [&] {
        using math_t = at::opmath_type<scalar_t>;
        const math_t* f = factors.const_data_ptr<math_t>();
        const scalar_t* in = x.const_data_ptr<scalar_t>();
        scalar_t* dst = out.mutable_data_ptr<scalar_t>();
        for_each_sample_span(numel, sample_size, [&](int64_t s, int64_t i, int64_t n) {
          if (f[s] == math_t(0)) {
            std::memset(dst + i, 0, n * sizeof(scalar_t));  // all-zero bits are +0.0
          } else if (f[s] == math_t(1)) {
            std::memcpy(dst + i, in + i, n * sizeof(scalar_t));
          } else if constexpr (std::is_same_v<scalar_t, math_t>) {
            scale_span<scalar_t>(dst + i, in + i, n, f[s]);
          } else {
            scale_span_reduced<scalar_t>(dst + i, in + i, n, f[s]);
          }
        });
      });
}

inline void add_rows_kernel(const at::Tensor& out, const at::Tensor& residual,
                            const at::Tensor& branch, const at::Tensor& factors) {
  const int64_t numel = residual.numel();
  const int64_t sample_size = numel / residual.size(0);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, residual.scalar_type(), "droppath_add_rows", [&] {
        using math_t = at::opmath_type<scalar_t>;
        const math_t* f = factors.const_data_ptr<math_t>();
        const scalar_t* res = residual.const_data_ptr<scalar_t>();
        const scalar_t* br = branch.const_data_ptr<scalar_t>();
        scalar_t* dst = out.mutable_data_ptr<scalar_t>();
        for_each_sample_span(numel, sample_size, [&](int64_t s, int64_t i, int64_t n) {
          if (f[s] == math_t(0)) {
            // A dropped sample's branch is never read.
            std::memcpy(dst + i, res + i, n * sizeof(scalar_t));
          } else if constexpr (std::is_same_v<scalar_t, math_t>) {
            add_span<scalar_t>(dst + i, res + i, br + i, n, f[s]);
          } else {
            add_span_reduced<scalar_t>(dst + i, res + i, br + i, n, f[s]);
          }
        });
      });
}

}  // namespace CPU_CAPABILITY
}  // namespace droppath::cpu
