/* The samplers' element-wise expressions moved to core/sampler_ops.h, below both backends.
 * This name stays only for csrc/cpu/backend_cpu.c, which still includes it; once that
 * include reads "core/sampler_ops.h", delete this file. */
#include "core/sampler_ops.h"
