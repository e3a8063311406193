/* The contract between the core (in the extension) and libsdcore_cuda.so.
 *
 * The CUDA library is opened with dlopen on first use. It cannot call the core's
 * functions by symbol (Python loads extensions with RTLD_LOCAL), so the core hands
 * it a table of the few host functions it needs, and it hands back its own table. */
#ifndef SDCORE_CUDA_ABI_H
#define SDCORE_CUDA_ABI_H

#include "sdcore.h"

#ifdef __cplusplus
extern "C" {
#endif

#define SD_CUDA_ABI_VERSION 3

typedef struct {
    int abi_version;
    sd_status (*fail)(sd_status status, const char *fmt, ...);
    float (*f16_to_f32)(uint16_t h);
    uint16_t (*f32_to_f16)(float f);
} sd_host_api;

typedef struct {
    int abi_version;
    const sd_backend *backend;
    sd_status (*device_count)(int *count);
    sd_status (*device_info)(int index, sd_cuda_device_info *info);
    /* free and total bytes of the current device (cudaMemGetInfo) */
    sd_status (*memory_info)(size_t *free_bytes, size_t *total_bytes);
    /* the most device memory seen in use since the last reset (see sd_cuda_memory_peak) */
    sd_status (*memory_peak)(size_t *peak_used, int reset);
} sd_cuda_lib;

/* Exported by libsdcore_cuda.so under this name. */
typedef sd_status (*sd_cuda_lib_init_fn)(const sd_host_api *host, const sd_cuda_lib **out);
#define SD_CUDA_LIB_INIT_SYMBOL "sd_cuda_lib_init"

#ifdef __cplusplus
}
#endif
#endif
