#include "rows_kernel_dispatch.h"

#include <cstdlib>
#include <string>

namespace droppath::cpu {
namespace {

#if defined(__x86_64__) || defined(_M_X64)
// ATen's own choice (at::get_cpu_capability, not on the stable ABI), made
// the same way: what the processor supports (ATen's AVX512 build needs
// F/BW/VL/DQ, its AVX2 build AVX2 and FMA), lowered by ATEN_CPU_CAPABILITY.
std::string cpu_capability() {
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") &&
                      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
                      __builtin_cpu_supports("avx512dq");
  const char* env = std::getenv("ATEN_CPU_CAPABILITY");
  const std::string asked = env ? env : "";
  if (asked == "default") {
    return "DEFAULT";
  }
  if (asked == "avx2") {
    return avx2 ? "AVX2" : "DEFAULT";
  }
  return avx512 ? "AVX512" : avx2 ? "AVX2" : "DEFAULT";
}
#endif

}  // namespace

const RowsKernels& best_rows_kernels() {
  static const RowsKernels kernels = [] {
#if defined(__x86_64__) || defined(_M_X64)
    const std::string capability = cpu_capability();
    if (capability == "AVX512") {
      return AVX512::rows_kernels();
    }
    if (capability == "AVX2") {
      return AVX2::rows_kernels();
    }
#endif
    return DEFAULT::rows_kernels();
  }();
  return kernels;
}

}  // namespace droppath::cpu
