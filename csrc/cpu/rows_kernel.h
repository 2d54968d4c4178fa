// The CPU inner loops, compiled once per CPU capability (rows_kernel_*.cpp
// define CPU_CAPABILITY and include this file); rows_kernel_dispatch.cpp
// picks one at run time. at::vec::Vectorized takes its instruction set from
// the CPU_CAPABILITY_* macros, so the macros and the compiler's target must
// agree inside each translation unit.
//
// Layout contract (see layout.h): every buffer is dense and read in memory
// order as [outer][rows][inner] along the batch dim (a RowView); out and the
// inputs of one call share that order. Factors are per index along the
// batch dim, in the math dtype (at::opmath_type).
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstring>
#include <optional>

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
template <typename Fn>
void for_each_row_span(int64_t numel, int64_t inner, int64_t rows, const Fn& fn) {
  at::parallel_for(0, numel, kGrainSize, [&](int64_t begin, int64_t end) {
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
// and this one runs on par. The half types keep at::vec's full width, which
// is ~20% faster than ATen there.
template <typename scalar_t>
void scale_span(scalar_t* __restrict__ out, const scalar_t* __restrict__ x, int64_t n, scalar_t f) {
  for (int64_t i = 0; i < n; ++i) {
    out[i] = x[i] * f;
  }
}

// out[i] = round(float(x[i]) * f) for float16 and bfloat16: one rounding.
template <typename scalar_t>
void scale_span_reduced(scalar_t* __restrict__ out, const scalar_t* __restrict__ x, int64_t n, float f) {
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

// out[i] = residual[i] + branch[i] * f for float and double (no FMA: the
// build passes -ffp-contract=off, so this rounds as the unfused sum does).
template <typename scalar_t>
void add_span(scalar_t* __restrict__ out, const scalar_t* __restrict__ residual,
              const scalar_t* __restrict__ branch, int64_t n, scalar_t f) {
  for (int64_t i = 0; i < n; ++i) {
    out[i] = residual[i] + branch[i] * f;
  }
}

// The same for float16 and bfloat16, in float, rounded once.
template <typename scalar_t>
void add_span_reduced(scalar_t* __restrict__ out, const scalar_t* __restrict__ residual,
                      const scalar_t* __restrict__ branch, int64_t n, float f) {
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

// out = x * f over n elements; a zero factor writes zeros without reading x
// (all-zero bits are +0.0), a factor of one copies.
template <typename scalar_t>
void scale_or_fill(scalar_t* out, const scalar_t* x, int64_t n, at::opmath_type<scalar_t> f) {
  using math_t = at::opmath_type<scalar_t>;
  if (f == math_t(0)) {
    std::memset(out, 0, n * sizeof(scalar_t));
  } else if (f == math_t(1)) {
    std::memcpy(out, x, n * sizeof(scalar_t));
  } else if constexpr (std::is_same_v<scalar_t, math_t>) {
    scale_span<scalar_t>(out, x, n, f);
  } else {
    scale_span_reduced<scalar_t>(out, x, n, f);
  }
}

// out = residual + branch * f over n elements; a zero factor copies the
// residual without reading the branch.
template <typename scalar_t>
void add_or_copy(scalar_t* out, const scalar_t* residual, const scalar_t* branch, int64_t n,
                 at::opmath_type<scalar_t> f) {
  using math_t = at::opmath_type<scalar_t>;
  if (f == math_t(0)) {
    std::memcpy(out, residual, n * sizeof(scalar_t));
  } else if constexpr (std::is_same_v<scalar_t, math_t>) {
    add_span<scalar_t>(out, residual, branch, n, f);
  } else {
    add_span_reduced<scalar_t>(out, residual, branch, n, f);
  }
}

#define DROPPATH_DISPATCH_FLOATING(dtype, name, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, name, __VA_ARGS__)

// out[row] = x[row] * factors[row % rows] (row = run of `inner` elements).
inline void scale_rows_kernel(const at::Tensor& out, const at::Tensor& x,
                              const at::Tensor& factors, RowView view) {
  DROPPATH_DISPATCH_FLOATING(x.scalar_type(), "droppath_scale_rows", [&] {
    const auto* f = factors.const_data_ptr<at::opmath_type<scalar_t>>();
    const scalar_t* in = x.const_data_ptr<scalar_t>();
    scalar_t* dst = out.mutable_data_ptr<scalar_t>();
    for_each_row_span(x.numel(), view.inner, view.rows, [&](int64_t, int64_t b, int64_t i, int64_t n) {
      scale_or_fill(dst + i, in + i, n, f[b]);
    });
  });
}

// out[row] = residual[row] + branch[row] * factors[row % rows].
inline void add_rows_kernel(const at::Tensor& out, const at::Tensor& residual,
                            const at::Tensor& branch, const at::Tensor& factors,
                            RowView view) {
  DROPPATH_DISPATCH_FLOATING(residual.scalar_type(), "droppath_add_rows", [&] {
    const auto* f = factors.const_data_ptr<at::opmath_type<scalar_t>>();
    const scalar_t* res = residual.const_data_ptr<scalar_t>();
    const scalar_t* br = branch.const_data_ptr<scalar_t>();
    scalar_t* dst = out.mutable_data_ptr<scalar_t>();
    for_each_row_span(residual.numel(), view.inner, view.rows,
                      [&](int64_t, int64_t b, int64_t i, int64_t n) {
                        add_or_copy(dst + i, res + i, br + i, n, f[b]);
                      });
  });
}

// out (outer x out_rows x inner): out[o][r] = x[o][rows[r]] * factors[rows[r]]
// (factors optional, else 1), zeros where rows[r] is outside [0, source.rows).
inline void take_rows_kernel(const at::Tensor& out, const at::Tensor& x, const at::Tensor& rows,
                             const std::optional<at::Tensor>& factors, RowView source,
                             int64_t out_rows) {
  DROPPATH_DISPATCH_FLOATING(x.scalar_type(), "droppath_take_rows", [&] {
    using math_t = at::opmath_type<scalar_t>;
    const math_t* f = factors.has_value() ? factors->const_data_ptr<math_t>() : nullptr;
    const int64_t* map = rows.const_data_ptr<int64_t>();
    const scalar_t* in = x.const_data_ptr<scalar_t>();
    scalar_t* dst = out.mutable_data_ptr<scalar_t>();
    const int64_t inner = source.inner;
    for_each_row_span(out.numel(), inner, out_rows, [&](int64_t o, int64_t r, int64_t i, int64_t n) {
      const int64_t from = map[r];
      if (from < 0 || from >= source.rows) {
        std::memset(dst + i, 0, n * sizeof(scalar_t));
        return;
      }
      const int64_t within = i - (o * out_rows + r) * inner;
      const int64_t offset = (o * source.rows + from) * inner + within;
      scale_or_fill(dst + i, in + offset, n, f != nullptr ? f[from] : math_t(1));
    });
  });
}

// out (outer x residual rows x inner): residual[o][b] + branch[o][rows[b]] * factors[b],
// or residual[o][b] where factors[b] == 0 or rows[b] is outside [0, branch_rows).
inline void add_taken_rows_kernel(const at::Tensor& out, const at::Tensor& residual,
                                  const at::Tensor& branch, const at::Tensor& factors,
                                  const at::Tensor& rows, RowView view, int64_t branch_rows) {
  DROPPATH_DISPATCH_FLOATING(residual.scalar_type(), "droppath_add_taken_rows", [&] {
    const auto* f = factors.const_data_ptr<at::opmath_type<scalar_t>>();
    const int64_t* map = rows.const_data_ptr<int64_t>();
    const scalar_t* res = residual.const_data_ptr<scalar_t>();
    const scalar_t* br = branch.const_data_ptr<scalar_t>();
    scalar_t* dst = out.mutable_data_ptr<scalar_t>();
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

#undef DROPPATH_DISPATCH_FLOATING

}  // namespace CPU_CAPABILITY
}  // namespace droppath::cpu
