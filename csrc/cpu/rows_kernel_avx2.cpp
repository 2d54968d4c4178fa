// AVX2 build of the CPU loops, selected at run time only on processors that
// have AVX2/FMA/F16C (rows_kernel_dispatch.cpp). The target pragma comes
// before every include so this file, and only this file, is compiled for
// them; setuptools cannot give one source file its own -m flags. GCC's
// pragma does not define the ISA macros, so the two that sleef.h reads to
// declare its 256-bit functions (used by Vectorized<float>) are set by hand.
// __F16C__ is deliberately not set: it would change c10::Half's inline
// conversions, which other files share.
#if defined(__x86_64__) || defined(_M_X64)
#pragma GCC target("avx2,fma,f16c,bmi,bmi2,lzcnt,popcnt")
#ifndef __AVX__
#define __AVX__ 1
#endif
#ifndef __AVX2__
#define __AVX2__ 1
#endif
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#include "rows_kernel_entry.h"
#endif
