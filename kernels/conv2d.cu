// conv2d on the CUDA backend: im2col into a column buffer, then one cuBLAS GEMM.
//
// NCHW, weights (OC, C, KH, KW). Per image, row-major out (OC, P) = w (OC, C*KH*KW) @
// col (C*KH*KW, P) with P = OH*OW output pixels. A 1x1 convolution with stride 1 and
// no padding needs no column buffer: x itself is col. Large images are done in column
// chunks so the buffer stays bounded (the VAE at 512x512 would need 600 MB at once).
#include "cuda_common.cuh"

// col (C*KH*KW, pc) for output pixels [p0, p0 + pc) of one image
template <typename T>
__global__ void im2col_kernel(const T *x, T *col, int C, int H, int W, int KH, int KW,
                              int stride, int pad, int OW, int64_t p0, int64_t pc) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    int64_t total = (int64_t)C * KH * KW * pc;
    if (i >= total)
        return;
    int64_t p = i % pc, row = i / pc;
    int kw = (int)(row % KW), kh = (int)(row / KW % KH), c = (int)(row / (KW * KH));
    int64_t op = p0 + p;
    int oy = (int)(op / OW), ox = (int)(op % OW);
    int iy = oy * stride - pad + kh, ix = ox * stride - pad + kw;
    T v = from_f32<T>(0.0f);
    if (iy >= 0 && iy < H && ix >= 0 && ix < W)
        v = x[((int64_t)c * H + iy) * W + ix];
    col[i] = v;
}

static const size_t COLUMN_BUFFER_BYTES = 128u << 20;

static sd_status cuda_conv2d(const sd_backend *, const sd_tensor *x, const sd_tensor *w,
                             const sd_tensor *bias, int stride, int padding, sd_tensor *out) {
    SD_TRY(cuda_need_ndim(x, 4, "conv2d", "x"));
    SD_TRY(cuda_need_ndim(w, 4, "conv2d", "weight"));
    SD_TRY(cuda_need_ndim(out, 4, "conv2d", "out"));
    SD_TRY(cuda_need_dtype(x, out, "conv2d", "out"));
    if (stride < 1 || padding < 0)
        return g_host->fail(SD_ERR_INVALID, "conv2d: stride must be >= 1 and padding >= 0");
    int64_t B = x->shape[0], C = x->shape[1], H = x->shape[2], W = x->shape[3];
    int64_t OC = w->shape[0], KH = w->shape[2], KW = w->shape[3];
    if (w->shape[1] != C)
        return g_host->fail(SD_ERR_INVALID,
                            "conv2d: argument 'weight' has %lld input channels, 'x' has %lld",
                            (long long)w->shape[1], (long long)C);
    if (H + 2 * padding < KH || W + 2 * padding < KW)
        return g_host->fail(SD_ERR_INVALID, "conv2d: the kernel is larger than the padded input");
    int64_t OH = (H + 2 * padding - KH) / stride + 1, OW = (W + 2 * padding - KW) / stride + 1;
    if (out->shape[0] != B || out->shape[1] != OC || out->shape[2] != OH || out->shape[3] != OW)
        return g_host->fail(SD_ERR_INVALID,
                            "conv2d: argument 'out' must have shape (%lld, %lld, %lld, %lld)",
                            (long long)B, (long long)OC, (long long)OH, (long long)OW);
    if (bias)
        SD_TRY(cuda_need_vector(bias, OC, "conv2d", "bias"));
    const void *wd;
    SD_TRY(cuda_as_dtype(w, x->dtype, SCRATCH_CAST_A, &wd));
    sd_dtype dt = x->dtype;
    size_t es = cuda_dtype_size(dt);
    int64_t P = OH * OW, Kc = C * KH * KW;
    if (KH == 1 && KW == 1 && stride == 1 && padding == 0) {
        // every image at once: out_b (OC, P) = w (OC, C) @ x_b (C, P)
        SD_TRY(cuda_gemm(false, OC, P, C, wd, C, 0, x->data, P, C * P, out->data, P, OC * P, B,
                         dt, dt, false));
    } else {
        int64_t chunk = (int64_t)(COLUMN_BUFFER_BYTES / (es * (size_t)Kc));
        if (chunk < 1)
            chunk = 1;
        if (chunk >= P) {
            // whole images per GEMM, as many images as fit: one batched product
            int64_t per = chunk / P;
            if (per > B)
                per = B;
            void *col;
            SD_TRY(cuda_scratch(SCRATCH_IM2COL, (size_t)(per * Kc * P) * es, &col));
            for (int64_t b0 = 0; b0 < B; b0 += per) {
                int64_t nb = B - b0 < per ? B - b0 : per;
                for (int64_t b = 0; b < nb; b++) {
                    int64_t total = Kc * P;
                    CUDA_DISPATCH(dt, T,
                                  im2col_kernel<T><<<cuda_blocks(total, 256), 256, 0,
                                                     cuda_stream()>>>(
                                      (const T *)x->data + (b0 + b) * C * H * W,
                                      (T *)col + b * Kc * P, (int)C, (int)H, (int)W, (int)KH,
                                      (int)KW, stride, padding, (int)OW, 0, P));
                    SD_TRY(cuda_launched("im2col_kernel"));
                }
                SD_TRY(cuda_gemm(false, OC, P, Kc, wd, Kc, 0, col, P, Kc * P,
                                 (char *)out->data + (size_t)(b0 * OC * P) * es, P, OC * P, nb,
                                 dt, dt, false));
            }
        } else {
            void *col;
            SD_TRY(cuda_scratch(SCRATCH_IM2COL, (size_t)(Kc * chunk) * es, &col));
            for (int64_t b = 0; b < B; b++)
                for (int64_t p0 = 0; p0 < P; p0 += chunk) {
                    int64_t pc = P - p0 < chunk ? P - p0 : chunk;
                    int64_t total = Kc * pc;
                    CUDA_DISPATCH(dt, T,
                                  im2col_kernel<T><<<cuda_blocks(total, 256), 256, 0,
                                                     cuda_stream()>>>(
                                      (const T *)x->data + b * C * H * W, (T *)col, (int)C,
                                      (int)H, (int)W, (int)KH, (int)KW, stride, padding, (int)OW,
                                      p0, pc));
                    SD_TRY(cuda_launched("im2col_kernel"));
                    // out_b[:, p0:p0+pc] (row stride P) = w @ col (Kc, pc)
                    SD_TRY(cuda_gemm(false, OC, pc, Kc, wd, Kc, 0, col, pc, 0,
                                     (char *)out->data + (size_t)(b * OC * P + p0) * es, P, 0, 1,
                                     dt, dt, false));
                }
        }
    }
    if (bias)
        SD_TRY(cuda_add_bias_channels(out->data, dt, bias, B, OC, P));
    return SD_OK;
}

void cuda_fill_conv2d(sd_backend *be) { be->conv2d = cuda_conv2d; }
