// Defines CAP::rows_kernels() for the capability this file is compiled for.
#pragma once

#include "rows_kernel.h"
#include "rows_kernel_dispatch.h"

#define DROPPATH_STRINGIFY_(x) #x
#define DROPPATH_STRINGIFY(x) DROPPATH_STRINGIFY_(x)

namespace droppath::cpu::CPU_CAPABILITY {
RowsKernels rows_kernels() {
  return {&scale_rows_kernel, &add_rows_kernel, &take_rows_kernel, &add_taken_rows_kernel,
          DROPPATH_STRINGIFY(CPU_CAPABILITY)};
}
}  // namespace droppath::cpu::CPU_CAPABILITY
