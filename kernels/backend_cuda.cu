// The CUDA backend: device discovery, memory, and the backend table.
//
// Built into libsdcore_cuda.so, which the core opens with dlopen (see
// csrc/core/cuda_loader.c). Errors go through the host's sd_fail so they land in
// the same thread-local message as every other error.
#include <cuda_runtime.h>

#include <cstdio>
#include <cstring>
#include <new>

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

// ----------------------------------------------------------------- stream -----

static cudaStream_t g_stream = nullptr;

cudaStream_t cuda_stream() { return g_stream; }

// Created on the first allocation, i.e. before any op can run.
static sd_status ensure_stream() {
    if (g_stream)
        return SD_OK;
    return cuda_check(cudaStreamCreateWithFlags(&g_stream, cudaStreamNonBlocking),
                      "cudaStreamCreateWithFlags");
}

// ----------------------------------------------------------------- scratch ----

static void *g_scratch[SCRATCH_SLOTS];
static size_t g_scratch_bytes[SCRATCH_SLOTS];
// bumped whenever a workspace moves: graphs recorded before then point at freed memory
static unsigned long long g_scratch_epoch = 1;

sd_status cuda_scratch(cuda_scratch_slot slot, size_t bytes, void **out) {
    if (bytes > g_scratch_bytes[slot]) {
        // earlier kernels may still read the old buffer
        SD_TRY(cuda_check(cudaStreamSynchronize(g_stream), "cudaStreamSynchronize (scratch)"));
        if (g_scratch[slot])
            cudaFree(g_scratch[slot]);
        g_scratch[slot] = nullptr;
        g_scratch_bytes[slot] = 0;
        size_t grown = bytes + bytes / 4; // headroom: fewer regrowths as shapes vary
        SD_TRY(cuda_check(cudaMalloc(&g_scratch[slot], grown), "cudaMalloc (scratch)"));
        cuda_note_memory();
        g_scratch_bytes[slot] = grown;
        g_scratch_epoch++;
    }
    *out = g_scratch[slot];
    return SD_OK;
}

// ----------------------------------------------------------------- checks -----

sd_status cuda_need(const sd_tensor *t, const char *op, const char *arg) {
    if (!t || !t->data)
        return g_host->fail(SD_ERR_INVALID, "%s: argument '%s' is missing", op, arg);
    if (t->device != SD_CUDA)
        return g_host->fail(SD_ERR_INVALID, "%s: argument '%s' is not on the GPU", op, arg);
    if (t->ndim < 1 || t->ndim > SD_MAX_DIMS)
        return g_host->fail(SD_ERR_INVALID, "%s: argument '%s' has %d dims", op, arg, t->ndim);
    for (int i = 0; i < t->ndim; i++)
        if (t->shape[i] < 1)
            return g_host->fail(SD_ERR_INVALID, "%s: argument '%s' has an empty dim %d", op, arg,
                                i);
    if (t->dtype != SD_F32 && t->dtype != SD_F16 && t->dtype != SD_BF16)
        return g_host->fail(SD_ERR_INVALID, "%s: argument '%s' has an unknown dtype", op, arg);
    return SD_OK;
}

sd_status cuda_need_ndim(const sd_tensor *t, int ndim, const char *op, const char *arg) {
    SD_TRY(cuda_need(t, op, arg));
    if (t->ndim != ndim)
        return g_host->fail(SD_ERR_INVALID, "%s: argument '%s' must have %d dims, got %d", op,
                            arg, ndim, t->ndim);
    return SD_OK;
}

static const char *shape_text(const sd_tensor *t, char *buf, size_t len) {
    int at = std::snprintf(buf, len, "(");
    for (int i = 0; i < t->ndim && at < (int)len; i++)
        at += std::snprintf(buf + at, len - at, i ? ", %lld" : "%lld", (long long)t->shape[i]);
    if (at < (int)len)
        std::snprintf(buf + at, len - at, t->ndim == 1 ? ",)" : ")");
    return buf;
}

sd_status cuda_need_shape(const sd_tensor *like, const sd_tensor *t, const char *op,
                          const char *arg) {
    bool same = like->ndim == t->ndim;
    for (int i = 0; same && i < t->ndim; i++)
        same = like->shape[i] == t->shape[i];
    if (!same) {
        char a[96], b[96];
        return g_host->fail(SD_ERR_INVALID, "%s: argument '%s' has shape %s, expected %s", op,
                            arg, shape_text(t, b, sizeof b), shape_text(like, a, sizeof a));
    }
    return SD_OK;
}

sd_status cuda_need_dtype(const sd_tensor *like, const sd_tensor *t, const char *op,
                          const char *arg) {
    if (like->dtype != t->dtype)
        return g_host->fail(SD_ERR_INVALID, "%s: argument '%s' is %s, expected %s like the input",
                            op, arg, cuda_dtype_name(t->dtype), cuda_dtype_name(like->dtype));
    return SD_OK;
}

sd_status cuda_need_vector(const sd_tensor *t, int64_t len, const char *op, const char *arg) {
    SD_TRY(cuda_need(t, op, arg));
    if (t->ndim != 1 || t->shape[0] != len)
        return g_host->fail(SD_ERR_INVALID, "%s: argument '%s' must have shape (%lld,)", op, arg,
                            (long long)len);
    return SD_OK;
}

// ----------------------------------------------------------------- devices ----

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

static sd_status memory_info(size_t *free_bytes, size_t *total_bytes) {
    return cuda_check(cudaMemGetInfo(free_bytes, total_bytes), "cudaMemGetInfo");
}

// The most device memory seen in use (by the whole process: cudaMemGetInfo) right after
// any of the backend's allocations, the moments its use grows; what grows without it
// (cuBLAS's kernels, graphs) is never given back, so a later sample sees it too.
static size_t g_peak_used;

void cuda_note_memory() {
    size_t free_bytes, total_bytes;
    if (cudaMemGetInfo(&free_bytes, &total_bytes) == cudaSuccess &&
        total_bytes - free_bytes > g_peak_used)
        g_peak_used = total_bytes - free_bytes;
}

static sd_status memory_peak(size_t *peak_used, int reset) {
    size_t free_bytes, total_bytes;
    SD_TRY(cuda_check(cudaMemGetInfo(&free_bytes, &total_bytes), "cudaMemGetInfo"));
    if (reset)
        g_peak_used = 0;
    if (total_bytes - free_bytes > g_peak_used)
        g_peak_used = total_bytes - free_bytes;
    *peak_used = g_peak_used;
    return SD_OK;
}

static sd_status cuda_alloc(const sd_backend *, sd_tensor *t) {
    SD_TRY(ensure_stream());
    size_t bytes = sd_nbytes_dev(t);
    void *p = nullptr;
    SD_TRY(cuda_check(cudaMalloc(&p, bytes ? bytes : 1), "cudaMalloc"));
    cuda_note_memory();
    t->data = p;
    t->device = SD_CUDA;
    return SD_OK;
}

static void cuda_free(const sd_backend *, sd_tensor *t) {
    if (t->data) {
        // work queued on the stream may still use it; cudaFree waits for the device
        cudaFree(t->data);
    }
    t->data = nullptr;
}

// Copies are ordered on the op stream and complete before returning (the host
// buffer is the caller's to reuse at once).
static sd_status cuda_upload(const sd_backend *, sd_tensor *dst, const void *src) {
    SD_TRY(ensure_stream());
    SD_TRY(cuda_check(cudaMemcpyAsync(dst->data, src, sd_nbytes_dev(dst), cudaMemcpyHostToDevice,
                                      g_stream),
                      "upload (cudaMemcpyAsync host to device)"));
    return cuda_check(cudaStreamSynchronize(g_stream), "upload (cudaStreamSynchronize)");
}

static sd_status cuda_download(const sd_backend *, void *dst, const sd_tensor *src) {
    SD_TRY(ensure_stream());
    SD_TRY(cuda_check(cudaMemcpyAsync(dst, src->data, sd_nbytes_dev(src), cudaMemcpyDeviceToHost,
                                      g_stream),
                      "download (cudaMemcpyAsync device to host)"));
    return cuda_check(cudaStreamSynchronize(g_stream), "download (cudaStreamSynchronize)");
}

static sd_status cuda_synchronize(const sd_backend *) {
    SD_TRY(ensure_stream());
    return cuda_check(cudaStreamSynchronize(g_stream), "cudaStreamSynchronize");
}

static sd_status cuda_copy(const sd_backend *, sd_tensor *dst, const sd_tensor *src) {
    SD_TRY(cuda_need(src, "copy", "src"));
    SD_TRY(cuda_need(dst, "copy", "dst"));
    if (sd_nbytes_dev(src) != sd_nbytes_dev(dst))
        return g_host->fail(SD_ERR_INVALID, "copy: 'dst' has %zu bytes, 'src' %zu",
                            sd_nbytes_dev(dst), sd_nbytes_dev(src));
    return cuda_check(cudaMemcpyAsync(dst->data, src->data, sd_nbytes_dev(src),
                                      cudaMemcpyDeviceToDevice, g_stream),
                      "copy (cudaMemcpyAsync device to device)");
}

// ----------------------------------------------------------------- graphs -----

struct cuda_graph {
    cudaGraphExec_t exec;
    unsigned long long scratch_epoch;
};

static sd_status cuda_graph_begin(const sd_backend *) {
    SD_TRY(ensure_stream());
    // thread-local mode: another thread's unrelated CUDA calls do not break the capture
    return cuda_check(cudaStreamBeginCapture(g_stream, cudaStreamCaptureModeThreadLocal),
                      "cudaStreamBeginCapture");
}

static sd_status cuda_graph_end(const sd_backend *, void **out) {
    *out = nullptr;
    cudaGraph_t graph = nullptr;
    SD_TRY(cuda_check(cudaStreamEndCapture(g_stream, &graph), "cudaStreamEndCapture"));
    cudaGraphExec_t exec = nullptr;
    sd_status s = cuda_check(cudaGraphInstantiate(&exec, graph, 0), "cudaGraphInstantiate");
    cuda_note_memory();
    cudaGraphDestroy(graph);
    SD_TRY(s);
    cuda_graph *g = new (std::nothrow) cuda_graph{exec, g_scratch_epoch};
    if (!g) {
        cudaGraphExecDestroy(exec);
        return g_host->fail(SD_ERR_NOMEM, "graph: out of host memory");
    }
    *out = g;
    return SD_OK;
}

static sd_status cuda_graph_launch(const sd_backend *, void *graph) {
    cuda_graph *g = (cuda_graph *)graph;
    if (g->scratch_epoch != g_scratch_epoch)
        return g_host->fail(SD_ERR_INVALID, "graph: stale (the workspaces moved); record it again");
    return cuda_check(cudaGraphLaunch(g->exec, g_stream), "cudaGraphLaunch");
}

static int cuda_graph_valid(const sd_backend *, const void *graph) {
    return ((const cuda_graph *)graph)->scratch_epoch == g_scratch_epoch;
}

static void cuda_graph_free(const sd_backend *, void *graph) {
    cuda_graph *g = (cuda_graph *)graph;
    if (!g)
        return;
    cudaGraphExecDestroy(g->exec);
    delete g;
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
    be.copy = cuda_copy;
    be.graph_begin = cuda_graph_begin;
    be.graph_end = cuda_graph_end;
    be.graph_launch = cuda_graph_launch;
    be.graph_valid = cuda_graph_valid;
    be.graph_free = cuda_graph_free;
    cuda_fill_elementwise(&be);
    cuda_fill_activation(&be);
    cuda_fill_layout(&be);
    cuda_fill_norm(&be);
    cuda_fill_attention(&be);
    cuda_fill_matmul(&be);
    cuda_fill_conv2d(&be);
    cuda_fill_sampler(&be);
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
    g_lib.memory_info = memory_info;
    g_lib.memory_peak = memory_peak;
    *out = &g_lib;
    return SD_OK;
}
