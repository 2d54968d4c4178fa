// AVX-512 build of the CPU loops (same scheme as rows_kernel_avx2.cpp).
#if defined(__x86_64__) || defined(_M_X64)
#if !defined(__AVX512F__) || !defined(__AVX512BW__) || !defined(__AVX512VL__) || \
    !defined(__AVX512DQ__)
#error "rows_kernel_avx512.cpp needs the AVX512 flags of csrc/cpu/capability_flags.txt"
#endif
#define CPU_CAPABILITY AVX512
#define CPU_CAPABILITY_AVX512
#include "rows_kernel_entry.h"
#endif
