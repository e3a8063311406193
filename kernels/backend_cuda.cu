// The CUDA backend: device discovery, memory, and the backend table.
//
// Built into libsdcore_cuda.so, which the core opens with dlopen (see
// csrc/core/cuda_loader.c). Errors go through the host's sd_fail so they land in
// the same thread-local message as every other error.
#include <cuda_runtime.h>

#include <cstdio>
#include <cstring>

#include "cuda_common.cuh"

const sd_host_api *g_host = nullptr;

sd_status cuda_check(cudaError_t err, const char *what) {
    if (err == cudaSuccess)
        return SD_OK;
    sd_status status = err == cudaErrorMemoryAllocation ? SD_ERR_NOMEM : SD_ERR_DEVICE;
    cudaGetLastError(); // clear the sticky-free error so the next call starts clean
    return g_host->fail(status, "%s: %s (%s)", what, cudaGetErrorString(err),
                        cudaGetErrorName(err));
}

static sd_status device_count(int *count) {
    *count = 0;
    int n = 0;
    cudaError_t err = cudaGetDeviceCount(&n);
    if (err != cudaSuccess) {
        cudaGetLastError();
        const char *hint = err == cudaErrorInsufficientDriver || err == cudaErrorNoDevice
                               ? "no NVIDIA GPU with a recent enough driver was found: "
                               : "";
        return g_host->fail(SD_ERR_UNSUPPORTED, "the CUDA backend is not available: %s%s", hint,
                            cudaGetErrorString(err));
    }
    *count = n;
    return SD_OK;
}

static sd_status device_info(int index, sd_cuda_device_info *info) {
    int n = 0;
    SD_TRY(device_count(&n));
    if (index < 0 || index >= n)
        return g_host->fail(SD_ERR_INVALID, "CUDA device %d does not exist (%d found)", index, n);
    cudaDeviceProp prop;
    SD_TRY(cuda_check(cudaGetDeviceProperties(&prop, index), "cudaGetDeviceProperties"));
    std::snprintf(info->name, sizeof info->name, "%s", prop.name);
    info->major = prop.major;
    info->minor = prop.minor;
    info->multiprocessors = prop.multiProcessorCount;
    info->total_memory = prop.totalGlobalMem;
    return SD_OK;
}

static sd_status cuda_alloc(const sd_backend *, sd_tensor *t) {
    size_t bytes = sd_nbytes_dev(t);
    void *p = nullptr;
    SD_TRY(cuda_check(cudaMalloc(&p, bytes ? bytes : 1), "cudaMalloc"));
    t->data = p;
    t->device = SD_CUDA;
    return SD_OK;
}

static void cuda_free(const sd_backend *, sd_tensor *t) {
    if (t->data)
        cudaFree(t->data);
    t->data = nullptr;
}

static sd_status cuda_upload(const sd_backend *, sd_tensor *dst, const void *src) {
    return cuda_check(cudaMemcpy(dst->data, src, sd_nbytes_dev(dst), cudaMemcpyHostToDevice),
                      "upload (cudaMemcpy host to device)");
}

static sd_status cuda_download(const sd_backend *, void *dst, const sd_tensor *src) {
    return cuda_check(cudaMemcpy(dst, src->data, sd_nbytes_dev(src), cudaMemcpyDeviceToHost),
                      "download (cudaMemcpy device to host)");
}

static sd_status cuda_synchronize(const sd_backend *) {
    return cuda_check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
}

static sd_backend make_backend() {
    sd_backend be;
    std::memset(&be, 0, sizeof be);
    be.name = "cuda";
    be.device = SD_CUDA;
    be.alloc = cuda_alloc;
    be.free = cuda_free;
    be.upload = cuda_upload;
    be.download = cuda_download;
    be.synchronize = cuda_synchronize;
    cuda_fill_ops(&be);
    return be;
}

static sd_backend g_backend;
static sd_cuda_lib g_lib;

extern "C" __attribute__((visibility("default"))) sd_status
sd_cuda_lib_init(const sd_host_api *host, const sd_cuda_lib **out) {
    if (!host || host->abi_version != SD_CUDA_ABI_VERSION)
        return SD_ERR_UNSUPPORTED;
    g_host = host;
    g_backend = make_backend();
    g_lib.abi_version = SD_CUDA_ABI_VERSION;
    g_lib.backend = &g_backend;
    g_lib.device_count = device_count;
    g_lib.device_info = device_info;
    *out = &g_lib;
    return SD_OK;
}
