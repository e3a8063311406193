// Op entries of the CUDA backend table.
//
// Elementwise scale is here first, as the smallest op that proves the whole path
// (build, load, launch, error check) end to end; the model ops follow it.
#include "cuda_common.cuh"

__global__ void scale_f32_kernel(const float *x, float s, float *out, long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        out[i] = x[i] * s;
}

static sd_status cuda_scale(const sd_backend *, const sd_tensor *x, float s, sd_tensor *out) {
    if (!x || !out || x->device != SD_CUDA || out->device != SD_CUDA || x->dtype != SD_F32 ||
        out->dtype != SD_F32 || sd_nbytes_dev(x) != sd_nbytes_dev(out))
        return g_host->fail(SD_ERR_INVALID,
                            "scale: 'x' and 'out' must be float32 CUDA tensors of one size");
    long long n = (long long)(sd_nbytes_dev(x) / 4);
    if (n == 0)
        return SD_OK;
    int threads = 256;
    long long blocks = (n + threads - 1) / threads;
    scale_f32_kernel<<<(unsigned)blocks, threads>>>((const float *)x->data, s, (float *)out->data,
                                                    n);
    return cuda_check(cudaGetLastError(), "scale kernel launch");
}

void cuda_fill_ops(sd_backend *be) { be->scale = cuda_scale; }
