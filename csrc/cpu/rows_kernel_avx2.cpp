// AVX2 build of the CPU loops, selected at run time only on processors that
// have AVX2/FMA/F16C (rows_kernel_dispatch.cpp). This file alone is compiled
// with the AVX2 flags of capability_flags.txt, as PyTorch compiles its own
// capability sources; the build lists it after every baseline object so the
// linker keeps the baseline copy of any inline function the two share.
#if defined(__x86_64__) || defined(_M_X64)
#if !defined(__AVX2__) || !defined(__FMA__) || !defined(__F16C__)
#error "rows_kernel_avx2.cpp needs the AVX2 flags of csrc/cpu/capability_flags.txt"
#endif
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#include "rows_kernel_entry.h"
#endif
