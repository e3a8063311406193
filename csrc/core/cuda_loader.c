/* Finding and opening the CUDA backend library.
 *
 * libsdcore_cuda.so carries every CUDA object and links the CUDA runtime and cuBLAS.
 * Keeping it out of the extension means `import sdcore` never needs a CUDA library
 * or a driver: the CUDA backend is opened on first use, and if that fails the reason
 * is kept and reported each time it is asked for. */
#include <dlfcn.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "cuda_abi.h"

static pthread_mutex_t load_lock = PTHREAD_MUTEX_INITIALIZER;
static int load_tried;
static const sd_cuda_lib *cuda_lib;
static char load_error[6144];
static char library_dir[4096];

void sd_set_library_dir(const char *dir) {
    pthread_mutex_lock(&load_lock);
    snprintf(library_dir, sizeof library_dir, "%s", dir ? dir : "");
    pthread_mutex_unlock(&load_lock);
}

static const sd_host_api host_api = {
    .abi_version = SD_CUDA_ABI_VERSION,
    .fail = sd_fail,
    .f16_to_f32 = sd_f16_to_f32,
    .f32_to_f16 = sd_f32_to_f16,
};

/* The directory holding this code's own shared object (the extension): the CUDA
 * library is installed beside it. */
static void default_library_dir(void) {
    Dl_info info;
    if (!dladdr((void *)sd_set_library_dir, &info) || !info.dli_fname)
        return;
    snprintf(library_dir, sizeof library_dir, "%s", info.dli_fname);
    char *slash = strrchr(library_dir, '/');
    if (slash)
        *slash = '\0';
    else
        library_dir[0] = '\0';
}

/* called with load_lock held */
static void try_load(void) {
    char path[4200];
    if (!library_dir[0])
        default_library_dir();
    snprintf(path, sizeof path, "%s%slibsdcore_cuda.so", library_dir, library_dir[0] ? "/" : "");
    void *handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!handle) {
        const char *why = dlerror();
        snprintf(load_error, sizeof load_error,
                 "the CUDA backend is not available: cannot open %s (%s); sdcore was built "
                 "without CUDA (SDCORE_CUDA=0 or no nvcc) or a CUDA library is missing",
                 path, why ? why : "unknown reason");
        return;
    }
    sd_cuda_lib_init_fn init = (sd_cuda_lib_init_fn)dlsym(handle, SD_CUDA_LIB_INIT_SYMBOL);
    if (!init) {
        snprintf(load_error, sizeof load_error, "the CUDA backend library %s has no %s", path,
                 SD_CUDA_LIB_INIT_SYMBOL);
        dlclose(handle);
        return;
    }
    const sd_cuda_lib *lib = NULL;
    if (init(&host_api, &lib) != SD_OK || !lib || lib->abi_version != SD_CUDA_ABI_VERSION) {
        snprintf(load_error, sizeof load_error, "the CUDA backend library %s failed to start: %s",
                 path, lib ? sd_last_error() : "version mismatch");
        dlclose(handle);
        return;
    }
    cuda_lib = lib; /* kept open for the life of the process */
}

static sd_status get_lib(const sd_cuda_lib **out) {
    pthread_mutex_lock(&load_lock);
    if (!load_tried) {
        load_tried = 1;
        try_load();
    }
    pthread_mutex_unlock(&load_lock);
    *out = cuda_lib;
    if (!cuda_lib)
        return sd_fail(SD_ERR_UNSUPPORTED, "%s", load_error);
    return SD_OK;
}

sd_status sd_cuda_device_count(int *count) {
    const sd_cuda_lib *lib;
    *count = 0;
    SD_TRY(get_lib(&lib));
    return lib->device_count(count);
}

sd_status sd_cuda_device_info_get(int index, sd_cuda_device_info *info) {
    const sd_cuda_lib *lib;
    SD_TRY(get_lib(&lib));
    return lib->device_info(index, info);
}

sd_status sd_cuda_memory_info(size_t *free_bytes, size_t *total_bytes) {
    const sd_cuda_lib *lib;
    *free_bytes = *total_bytes = 0;
    SD_TRY(get_lib(&lib));
    return lib->memory_info(free_bytes, total_bytes);
}

sd_status sd_cuda_memory_peak(size_t *peak_used, int reset) {
    const sd_cuda_lib *lib;
    *peak_used = 0;
    SD_TRY(get_lib(&lib));
    return lib->memory_peak(peak_used, reset);
}

sd_status sd_cuda_backend(const sd_backend **out) {
    const sd_cuda_lib *lib;
    *out = NULL;
    SD_TRY(get_lib(&lib));
    int count = 0;
    SD_TRY(lib->device_count(&count));
    if (count < 1)
        return sd_fail(SD_ERR_UNSUPPORTED, "the CUDA backend is not available: no CUDA device");
    *out = lib->backend;
    return SD_OK;
}
