// Elementwise ops of the CUDA backend: add, mul, scale, convert.
#include "cuda_common.cuh"

template <typename T>
__global__ void scale_kernel(const T *x, float s, T *out, int64_t n) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        st_f32(out, i, ld_f32(x, i) * s);
}

static sd_status cuda_scale(const sd_backend *, const sd_tensor *x, float s, sd_tensor *out) {
    SD_TRY(cuda_need(x, "scale", "x"));
    SD_TRY(cuda_need(out, "scale", "out"));
    SD_TRY(cuda_need_shape(x, out, "scale", "out"));
    SD_TRY(cuda_need_dtype(x, out, "scale", "out"));
    int64_t n = cuda_numel(x);
    CUDA_DISPATCH(x->dtype, T,
                  scale_kernel<T><<<cuda_blocks(n, 256), 256, 0, cuda_stream()>>>(
                      (const T *)x->data, s, (T *)out->data, n));
    return cuda_launched("scale_kernel");
}

void cuda_fill_elementwise(sd_backend *be) { be->scale = cuda_scale; }
