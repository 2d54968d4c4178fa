#include "rows_kernel_dispatch.h"

#include <ATen/Version.h>

#include <string>

namespace droppath::cpu {

const RowsKernels& best_rows_kernels() {
  static const RowsKernels kernels = [] {
#if defined(__x86_64__) || defined(_M_X64)
    // ATen's own choice ("DEFAULT", "AVX2", "AVX512"), which honours
    // ATEN_CPU_CAPABILITY and checks the processor.
    const std::string capability = at::get_cpu_capability();
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
