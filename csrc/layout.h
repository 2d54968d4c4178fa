// The memory layouts the kernels take, and how outputs are laid out. Real
// and meta kernels share these helpers, so fake tensors get exactly the
// sizes and strides of the real outputs.
//
// Any dense tensor (non-overlapping and dense: contiguous, channels_last, a
// permutation of either) is processed in its own memory order, and its
// output has its exact strides. In memory order a dense tensor is
// [outer][n][inner] along any dim of size n: inner = stride(dim) elements
// share one index along dim, and outer blocks of n * inner follow each other
// (RowView). Anything else (expanded, sliced) is copied to contiguous once.
//
// The row-gathering ops (_take_rows, _add_taken_rows) change the size of the
// batch dim, so their operands need one memory format in common: the format
// of the full-batch operand (x of _take_rows, the residual of
// _add_taken_rows) when it is contiguous, channels_last or channels_last_3d,
// else contiguous; the other operand is brought to it.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_strided.h>

#include <optional>
#include <vector>

namespace droppath {

inline at::Tensor as_dense(const at::Tensor& x) {
  return x.is_non_overlapping_and_dense() ? x : x.contiguous();
}

// An uninitialised tensor with a dense x's sizes and strides.
inline at::Tensor empty_like_dense(const at::Tensor& x) {
  return at::empty_strided_symint(x.sym_sizes(), x.sym_strides(), x.options());
}

// A dense tensor seen as [outer][rows][inner] in memory order along one dim.
struct RowView {
  int64_t outer;
  int64_t rows;
  int64_t inner;
};

inline RowView row_view(const at::Tensor& x, int64_t dim) {
  const int64_t numel = x.numel();
  const int64_t rows = x.size(dim);
  if (rows <= 1 || numel == 0) {
    return {1, rows, rows == 0 ? 0 : numel};
  }
  const int64_t inner = x.stride(dim);
  return {numel / (rows * inner), rows, inner};
}

// residual and branch in one shared dense layout: as they are when they
// already share one (strides of size-1 dims, which never move an index,
// are ignored), else both made contiguous.
struct AddOperands {
  at::Tensor residual;
  at::Tensor branch;
};

inline bool same_dense_layout(const at::Tensor& a, const at::Tensor& b) {
  if (!a.is_non_overlapping_and_dense() || !b.is_non_overlapping_and_dense()) {
    return false;
  }
  for (int64_t d = 0; d < a.dim(); ++d) {
    if (a.sym_size(d) != 1 && a.sym_stride(d) != b.sym_stride(d)) {
      return false;
    }
  }
  return true;
}

inline AddOperands as_add_operands(const at::Tensor& residual,
                                   const at::Tensor& branch) {
  if (same_dense_layout(residual, branch)) {
    return {residual, branch};
  }
  return {residual.contiguous(), branch.contiguous()};
}

// ---- row-gathering ops ----------------------------------------------------------

// The "_or_false" queries: under torch.compile, skip mode's branch tensors have
// a data-dependent (unbacked) number of rows, whose contiguity a plain query
// would have to guard on (an empty tensor is contiguous in every format); a
// layout that cannot be decided without it is treated as not that format.
inline std::optional<at::MemoryFormat> memory_format_of(const at::Tensor& x) {
  if (x.is_contiguous_or_false()) {
    return at::MemoryFormat::Contiguous;
  }
  if (x.dim() == 4 && x.is_contiguous_or_false(at::MemoryFormat::ChannelsLast)) {
    return at::MemoryFormat::ChannelsLast;
  }
  if (x.dim() == 5 && x.is_contiguous_or_false(at::MemoryFormat::ChannelsLast3d)) {
    return at::MemoryFormat::ChannelsLast3d;
  }
  return std::nullopt;
}

inline at::Tensor in_memory_format(const at::Tensor& x, at::MemoryFormat format) {
  return x.is_contiguous_or_false(format) ? x : x.contiguous(format);
}

// The format a row-gathering op reads and writes in: its full-batch
// operand's own (x of _take_rows, the residual of _add_taken_rows), or
// contiguous when it has none of the three.
inline at::MemoryFormat own_memory_format(const at::Tensor& x) {
  return memory_format_of(x).value_or(at::MemoryFormat::Contiguous);
}

// The RowView of a tensor in `format` from its sizes alone (the strides of
// size-1 dims say nothing about the memory order; the format does).
inline RowView format_row_view(at::IntArrayRef sizes, int64_t dim, at::MemoryFormat format) {
  std::vector<int64_t> order(sizes.size());
  for (size_t d = 0; d < order.size(); ++d) {
    order[d] = static_cast<int64_t>(d);
  }
  if (format != at::MemoryFormat::Contiguous) {  // channels last: N, spatial..., C
    order.erase(order.begin() + 1);
    order.push_back(1);
  }
  RowView view{1, sizes[dim], 1};
  bool after = false;
  for (const int64_t d : order) {
    if (d == dim) {
      after = true;
    } else if (after) {
      view.inner *= sizes[d];
    } else {
      view.outer *= sizes[d];
    }
  }
  return view;
}

// An uninitialised tensor shaped like x with `rows` along dim, in `format`.
inline at::Tensor empty_with_rows(const at::Tensor& x, int64_t dim, c10::SymInt rows,
                                  at::MemoryFormat format) {
  std::vector<c10::SymInt> sizes(x.sym_sizes().begin(), x.sym_sizes().end());
  sizes[dim] = std::move(rows);
  return at::empty_symint(sizes, x.options().memory_format(format));
}

}  // namespace droppath
