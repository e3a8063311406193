// What every check-and-time harness shares: the host functions that kernels/*.cu files
// call from backend_cuda.cu (a harness includes the shipped file whole, so the version
// it times is the one that ships), a CUDA error check, and the timing loop.
//
// Include this first, then the kernels/*.cu file. Functions a harness's file calls but
// the harness never reaches (cuBLAS, workspaces) it stubs itself with a failing status.
#pragma once

#include <algorithm>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "cuda_common.cuh"

#define CHECK_CUDA(call)                                                                           \
    do {                                                                                           \
        cudaError_t e_ = (call);                                                                   \
        if (e_ != cudaSuccess) {                                                                   \
            std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #call,                      \
                         cudaGetErrorString(e_));                                                  \
            std::exit(2);                                                                          \
        }                                                                                          \
    } while (0)

static sd_status harness_fail(sd_status status, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    std::vfprintf(stderr, fmt, ap);
    va_end(ap);
    std::fprintf(stderr, "\n");
    return status;
}
static const sd_host_api harness_host = {SD_CUDA_ABI_VERSION, harness_fail, nullptr, nullptr};
const sd_host_api *g_host = &harness_host;

sd_status cuda_check(cudaError_t err, const char *what) {
    if (err == cudaSuccess)
        return SD_OK;
    return g_host->fail(SD_ERR_DEVICE, "%s: %s", what, cudaGetErrorString(err));
}

static cudaStream_t g_stream;
cudaStream_t cuda_stream() {
    return g_stream;
}
void cuda_note_memory() {}

sd_status cuda_need(const sd_tensor *t, const char *op, const char *arg) {
    if (!t || !t->data)
        return g_host->fail(SD_ERR_INVALID, "%s: argument '%s' is missing", op, arg);
    return SD_OK;
}
sd_status cuda_need_ndim(const sd_tensor *t, int ndim, const char *op, const char *arg) {
    SD_TRY(cuda_need(t, op, arg));
    if (t->ndim != ndim)
        return g_host->fail(SD_ERR_INVALID, "%s: argument '%s' is not %d-D", op, arg, ndim);
    return SD_OK;
}
sd_status cuda_need_shape(const sd_tensor *like, const sd_tensor *t, const char *op,
                          const char *arg) {
    for (int i = 0; i < SD_MAX_DIMS; i++)
        if (like->ndim != t->ndim || like->shape[i] != t->shape[i])
            return g_host->fail(SD_ERR_INVALID, "%s: argument '%s' has another shape", op, arg);
    return SD_OK;
}
sd_status cuda_need_dtype(const sd_tensor *like, const sd_tensor *t, const char *op,
                          const char *arg) {
    if (like->dtype != t->dtype)
        return g_host->fail(SD_ERR_INVALID, "%s: argument '%s' has another dtype", op, arg);
    return SD_OK;
}
sd_status cuda_need_vector(const sd_tensor *t, int64_t len, const char *op, const char *arg) {
    if (!t || !t->data || t->ndim != 1 || t->shape[0] != len)
        return g_host->fail(SD_ERR_INVALID, "%s: argument '%s' is not (%lld,)", op, arg,
                            (long long)len);
    return SD_OK;
}

// Starts the harness: the op stream, and a line naming the device.
static void harness_init() {
    CHECK_CUDA(cudaStreamCreateWithFlags(&g_stream, cudaStreamNonBlocking));
    cudaDeviceProp prop;
    CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
    std::printf("%s, %d SMs\n", prop.name, prop.multiProcessorCount);
}

// Milliseconds per launch: three warm-up launches, then the median of 15 samples of 10
// launches each, timed by events on the op stream.
template <typename F> static float time_ms(F launch) {
    for (int i = 0; i < 3; i++)
        launch();
    cudaEvent_t t0, t1;
    CHECK_CUDA(cudaEventCreate(&t0));
    CHECK_CUDA(cudaEventCreate(&t1));
    std::vector<float> samples;
    for (int r = 0; r < 15; r++) {
        CHECK_CUDA(cudaEventRecord(t0, g_stream));
        for (int i = 0; i < 10; i++)
            launch();
        CHECK_CUDA(cudaEventRecord(t1, g_stream));
        CHECK_CUDA(cudaEventSynchronize(t1));
        float ms = 0.0f;
        CHECK_CUDA(cudaEventElapsedTime(&ms, t0, t1));
        samples.push_back(ms / 10.0f);
    }
    CHECK_CUDA(cudaEventDestroy(t0));
    CHECK_CUDA(cudaEventDestroy(t1));
    std::sort(samples.begin(), samples.end());
    return samples[samples.size() / 2];
}
