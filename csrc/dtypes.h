// The four floating dtypes the kernels take, on the LibTorch stable ABI
// (header-only types: c10::Half and c10::BFloat16 need no libtorch symbol).
#pragma once

#include <torch/headeronly/core/ScalarType.h>
#include <torch/headeronly/util/BFloat16.h>
#include <torch/headeronly/util/Exception.h>
#include <torch/headeronly/util/Half.h>

#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>

namespace droppath {

template <typename... Args>
std::string message(const Args&... args) {
  std::ostringstream out;
  (out << ... << args);
  return out.str();
}

}  // namespace droppath

// Raises std::runtime_error (RuntimeError in Python) with the message alone:
// STD_TORCH_CHECK would prefix the C++ function, file and line, and these
// messages are the Python backend's, word for word.
#define DROPPATH_CHECK(cond, ...)                                  \
  do {                                                             \
    if (!(cond)) {                                                 \
      throw std::runtime_error(::droppath::message(__VA_ARGS__));  \
    }                                                              \
  } while (false)

namespace droppath {

using torch::headeronly::ScalarType;

// The precision a dtype is computed in: float64 for float64, float32 for the
// others (at::opmath_type, which is not header-only).
template <typename scalar_t>
using math_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

inline ScalarType math_dtype(ScalarType dtype) {
  return dtype == ScalarType::Double ? ScalarType::Double : ScalarType::Float;
}

inline bool is_floating(ScalarType dtype) {
  return dtype == ScalarType::Float || dtype == ScalarType::Double || dtype == ScalarType::Half ||
         dtype == ScalarType::BFloat16;
}

// Python's spelling ("torch.int64"), so messages match the Python backend's.
std::string dtype_name(ScalarType dtype);

// A dtype as a value: fn(Type<scalar_t>{}) lets a generic lambda take it as
// `using scalar_t = typename decltype(tag)::type;` (C++17, for older libtorch).
template <typename T>
struct Type {
  using type = T;
};

// fn(Type<scalar_t>{}) for one of the four floating dtypes.
template <typename Fn>
void dispatch_floating(ScalarType dtype, const Fn& fn) {
  switch (dtype) {
    case ScalarType::Float: return fn(Type<float>{});
    case ScalarType::Double: return fn(Type<double>{});
    case ScalarType::Half: return fn(Type<c10::Half>{});
    case ScalarType::BFloat16: return fn(Type<c10::BFloat16>{});
    default: DROPPATH_CHECK(false, "droppath: unsupported dtype ", dtype_name(dtype));
  }
}

// The same for float32 and float64 only (the factors' math dtypes).
template <typename Fn>
void dispatch_math(ScalarType dtype, const Fn& fn) {
  if (dtype == ScalarType::Double) {
    return fn(Type<double>{});
  }
  DROPPATH_CHECK(dtype == ScalarType::Float, "droppath: unexpected factor dtype ", dtype_name(dtype));
  return fn(Type<float>{});
}

}  // namespace droppath
