// Portable build of the CPU loops (whatever vector width the compiler's
// baseline gives, SSE2 on x86-64).
#define CPU_CAPABILITY DEFAULT
#define CPU_CAPABILITY_DEFAULT
#include "rows_kernel_entry.h"
