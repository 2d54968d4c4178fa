// The memory layouts the kernels take, and how outputs are laid out, on the
// LibTorch stable ABI. The Python fake kernels (droppath_ext/_ops.py) follow
// the same rules, so fake tensors get exactly the sizes and strides of the
// real outputs (tests/test_fake_meta.py compares them).
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

#include <torch/csrc/inductor/aoti_torch/c/shim.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/MemoryFormat.h>

#include <algorithm>
#include <numeric>
#include <vector>

namespace droppath {

using torch::headeronly::MemoryFormat;
using torch::stable::Tensor;

// ATen's own rule (TensorImpl::compute_non_overlapping_and_dense).
inline bool is_non_overlapping_and_dense(const Tensor& x) {
  const int64_t dims = x.dim();
  if (dims == 1) {
    return x.size(0) < 2 || x.stride(0) == 1;
  }
  std::vector<int64_t> perm(dims);
  std::iota(perm.begin(), perm.end(), 0);
  // By stride, size-0 and size-1 dims last.
  std::sort(perm.begin(), perm.end(), [&](int64_t a, int64_t b) {
    if (x.size(a) < 2) {
      return false;
    }
    if (x.size(b) < 2) {
      return true;
    }
    return x.stride(a) < x.stride(b);
  });
  int64_t require = 1;
  for (const int64_t d : perm) {
    if (x.size(d) < 2) {
      return true;
    }
    if (x.stride(d) != require) {
      return false;
    }
    require *= x.size(d);
  }
  return true;
}

// The dims of a tensor in `format` from the outermost to the innermost.
inline std::vector<int64_t> memory_order(int64_t dims, MemoryFormat format) {
  std::vector<int64_t> order(dims);
  std::iota(order.begin(), order.end(), 0);
  if (format != MemoryFormat::Contiguous) {  // channels last: N, spatial..., C
    order.erase(order.begin() + 1);
    order.push_back(1);
  }
  return order;
}

// Whether x is laid out exactly in `format`: ATen's compute_contiguous and
// compute_channels_last_contiguous_{2d,3d} (size-1 dims' strides ignored; an
// empty tensor is contiguous, but channels last only if its strides say so).
inline bool is_contiguous_in(const Tensor& x, MemoryFormat format) {
  if (format == MemoryFormat::Contiguous && x.numel() == 0) {
    return true;
  }
  const std::vector<int64_t> order = memory_order(x.dim(), format);
  int64_t expected = 1;
  for (auto d = order.rbegin(); d != order.rend(); ++d) {
    const int64_t size = x.size(*d);
    if (size != 1) {
      if (x.stride(*d) != expected) {
        return false;
      }
      expected *= size;
    }
  }
  return true;
}

// An uninitialised tensor with these sizes and strides, on x's device, in dtype.
inline Tensor empty_strided(const std::vector<int64_t>& sizes, const std::vector<int64_t>& strides,
                            const Tensor& like, torch::headeronly::ScalarType dtype) {
  AtenTensorHandle handle = nullptr;
  int32_t device_type = 0;
  int32_t device_index = 0;
  TORCH_ERROR_CODE_CHECK(aoti_torch_get_device_type(like.get(), &device_type));
  TORCH_ERROR_CODE_CHECK(aoti_torch_get_device_index(like.get(), &device_index));
  TORCH_ERROR_CODE_CHECK(aoti_torch_empty_strided(
      static_cast<int64_t>(sizes.size()), sizes.data(), strides.data(),
      static_cast<int32_t>(dtype), device_type, device_index, &handle));
  return Tensor(handle);
}

inline std::vector<int64_t> sizes_of(const Tensor& x) {
  std::vector<int64_t> sizes(x.dim());
  for (int64_t d = 0; d < x.dim(); ++d) {
    sizes[d] = x.size(d);
  }
  return sizes;
}

// The strides ATen gives a new tensor of these sizes in `format`
// (empty_tensor_restride: contiguous strides skip size-0 dims, channels-last
// ones do not).
inline std::vector<int64_t> format_strides(const std::vector<int64_t>& sizes, MemoryFormat format) {
  std::vector<int64_t> strides(sizes.size());
  const std::vector<int64_t> order = memory_order(static_cast<int64_t>(sizes.size()), format);
  const bool contiguous = format == MemoryFormat::Contiguous;
  int64_t stride = 1;
  for (auto d = order.rbegin(); d != order.rend(); ++d) {
    strides[*d] = stride;
    stride *= contiguous ? std::max<int64_t>(sizes[*d], 1) : sizes[*d];
  }
  return strides;
}

inline Tensor as_dense(const Tensor& x) {
  return is_non_overlapping_and_dense(x) ? x : torch::stable::contiguous(x);
}

// An uninitialised tensor with a dense x's sizes and strides.
inline Tensor empty_like_dense(const Tensor& x) {
  std::vector<int64_t> strides(x.dim());
  for (int64_t d = 0; d < x.dim(); ++d) {
    strides[d] = x.stride(d);
  }
  return empty_strided(sizes_of(x), strides, x, x.scalar_type());
}

// A dense tensor seen as [outer][rows][inner] in memory order along one dim.
struct RowView {
  int64_t outer;
  int64_t rows;
  int64_t inner;
};

inline RowView row_view(const Tensor& x, int64_t dim) {
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
  Tensor residual;
  Tensor branch;
};

inline bool same_dense_layout(const Tensor& a, const Tensor& b) {
  if (!is_non_overlapping_and_dense(a) || !is_non_overlapping_and_dense(b)) {
    return false;
  }
  for (int64_t d = 0; d < a.dim(); ++d) {
    if (a.size(d) != 1 && a.stride(d) != b.stride(d)) {
      return false;
    }
  }
  return true;
}

inline AddOperands as_add_operands(const Tensor& residual, const Tensor& branch) {
  if (same_dense_layout(residual, branch)) {
    return {residual, branch};
  }
  return {torch::stable::contiguous(residual), torch::stable::contiguous(branch)};
}

// ---- row-gathering ops ----------------------------------------------------------

// The format a row-gathering op reads and writes in: its full-batch
// operand's own (x of _take_rows, the residual of _add_taken_rows), or
// contiguous when it has none of the three.
inline MemoryFormat own_memory_format(const Tensor& x) {
  if (is_contiguous_in(x, MemoryFormat::Contiguous)) {
    return MemoryFormat::Contiguous;
  }
  if (x.dim() == 4 && is_contiguous_in(x, MemoryFormat::ChannelsLast)) {
    return MemoryFormat::ChannelsLast;
  }
  if (x.dim() == 5 && is_contiguous_in(x, MemoryFormat::ChannelsLast3d)) {
    return MemoryFormat::ChannelsLast3d;
  }
  return MemoryFormat::Contiguous;
}

inline Tensor in_memory_format(const Tensor& x, MemoryFormat format) {
  return is_contiguous_in(x, format) ? x : torch::stable::contiguous(x, format);
}

// The RowView of a tensor in `format` from its sizes alone (the strides of
// size-1 dims say nothing about the memory order; the format does).
inline RowView format_row_view(const std::vector<int64_t>& sizes, int64_t dim, MemoryFormat format) {
  RowView view{1, sizes[dim], 1};
  bool after = false;
  for (const int64_t d : memory_order(static_cast<int64_t>(sizes.size()), format)) {
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
inline Tensor empty_with_rows(const Tensor& x, int64_t dim, int64_t rows, MemoryFormat format) {
  std::vector<int64_t> sizes = sizes_of(x);
  sizes[dim] = rows;
  return empty_strided(sizes, format_strides(sizes, format), x, x.scalar_type());
}

}  // namespace droppath
