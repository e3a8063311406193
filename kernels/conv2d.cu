// conv2d on the CUDA backend: im2col into a column buffer, then one cuBLAS GEMM.
//
// NCHW, weights (OC, C, KH, KW). Per image, row-major out (OC, P) = w (OC, C*KH*KW) @
// col (C*KH*KW, P) with P = OH*OW output pixels. A 1x1 convolution with stride 1 and
// no padding needs no column buffer: x itself is col. Large images are done in column
// chunks so the buffer stays bounded (the VAE at 512x512 would need 600 MB at once).
#include "cuda_common.cuh"

// col (C*KH*KW, pc) for output pixels [p0, p0 + pc) of image blockIdx.z. One block row
// (blockIdx.y, plus row0) is one (c, kh, kw) row of col, so its indices are worked out
// once per thread, not per element; each thread fills V consecutive pixels of that row
// and stores them as one 16-byte pack when V > 1 (the caller checks pc % V == 0). Reads
// along a row are consecutive input pixels, so a warp's loads stay coalesced.
template <typename T, int V>
__global__ void im2col_kernel(const T *x, T *col, int C, int H, int W, int KH, int KW,
                              int stride, int pad, int OW, int p0, int pc, int row0,
                              int64_t x_image, int64_t col_image) {
    int row = row0 + blockIdx.y;
    int p = (blockIdx.x * blockDim.x + threadIdx.x) * V;
    if (p >= pc)
        return;
    int kw = row % KW, kh = row / KW % KH, c = row / (KW * KH);
    const T *xc = x + blockIdx.z * x_image + (int64_t)c * H * W;
    T *dst = col + blockIdx.z * col_image + (int64_t)row * pc;
    int op = p0 + p;
    int oy = op / OW, ox = op - oy * OW;
    cuda_pack<T, V> v;
#pragma unroll
    for (int k = 0; k < V; k++) {
        int iy = oy * stride - pad + kh, ix = ox * stride - pad + kw;
        v.v[k] = (iy >= 0 && iy < H && ix >= 0 && ix < W) ? xc[iy * W + ix] : from_f32<T>(0.0f);
        if (++ox == OW) {
            ox = 0;
            oy++;
        }
    }
    st_pack<V>(dst, p, v);
}

// The common case, 3x3 with stride 1 and padding 1 on rows of whole packs (W % V == 0):
// one block row per input channel c; each thread reads its V pixels and their two
// neighbours from each of three input rows once and writes all nine (kh, kw) rows of
// col for them, the kw shifts taken from registers. A third of the loads and index
// math of the general kernel per element stored.
template <typename T>
__global__ void im2col3x3_kernel(const T *x, T *col, int H, int W, int p0, int pc,
                                 int64_t x_image, int64_t col_image) {
    constexpr int V = cuda_pack16<T>();
    int c = blockIdx.y;
    int p = (blockIdx.x * blockDim.x + threadIdx.x) * V;
    if (p >= pc)
        return;
    const T *xc = x + blockIdx.z * x_image + (int64_t)c * H * W;
    T *dst = col + blockIdx.z * col_image + (int64_t)c * 9 * pc + p;
    int op = p0 + p; // a multiple of V, so all V pixels are in output row oy
    int oy = op / W, ox = op - oy * W;
    const T zero = from_f32<T>(0.0f);
#pragma unroll
    for (int kh = 0; kh < 3; kh++) {
        int iy = oy + kh - 1;
        T win[V + 2]; // input pixels ox - 1 .. ox + V of row iy
        if (iy < 0 || iy >= H) {
#pragma unroll
            for (int i = 0; i < V + 2; i++)
                win[i] = zero;
        } else {
            const T *r = xc + (int64_t)iy * W + ox;
            cuda_pack<T, V> mid = ld_pack<V>(r, 0);
            win[0] = ox > 0 ? r[-1] : zero;
            win[V + 1] = ox + V < W ? r[V] : zero;
#pragma unroll
            for (int i = 0; i < V; i++)
                win[i + 1] = mid.v[i];
        }
#pragma unroll
        for (int kw = 0; kw < 3; kw++) {
            cuda_pack<T, V> o;
#pragma unroll
            for (int i = 0; i < V; i++)
                o.v[i] = win[i + kw];
            st_pack<V>(dst + (int64_t)(kh * 3 + kw) * pc, 0, o);
        }
    }
}

// Fills col for `images` images (x and col `x_image` / `col_image` elements apart).
template <typename T>
static sd_status im2col(const T *x, T *col, int64_t images, int64_t C, int64_t H, int64_t W,
                        int64_t KH, int64_t KW, int stride, int pad, int64_t OW, int64_t p0,
                        int64_t pc, int64_t x_image, int64_t col_image) {
    const int threads = 128;
    constexpr int V = cuda_pack16<T>();
    if (KH == 3 && KW == 3 && stride == 1 && pad == 1 && W % V == 0 && p0 % V == 0 &&
        pc % V == 0 && C <= 65535 && (uintptr_t)x % 16 == 0 && (uintptr_t)col % 16 == 0) {
        dim3 grid(cuda_blocks(pc / V, threads), (unsigned)C, (unsigned)images);
        im2col3x3_kernel<T><<<grid, threads, 0, cuda_stream()>>>(x, col, (int)H, (int)W, (int)p0,
                                                                (int)pc, x_image, col_image);
        return cuda_launched("im2col3x3_kernel");
    }
    int64_t rows = C * KH * KW;
    bool packed = pc % cuda_pack16<T>() == 0;
    int v = packed ? cuda_pack16<T>() : 1;
    for (int64_t r0 = 0; r0 < rows; r0 += 65535) {
        dim3 grid(cuda_blocks(pc / v, threads), (unsigned)(rows - r0 < 65535 ? rows - r0 : 65535),
                  (unsigned)images);
        if (packed)
            im2col_kernel<T, cuda_pack16<T>()><<<grid, threads, 0, cuda_stream()>>>(
                x, col, (int)C, (int)H, (int)W, (int)KH, (int)KW, stride, pad, (int)OW, (int)p0,
                (int)pc, (int)r0, x_image, col_image);
        else
            im2col_kernel<T, 1><<<grid, threads, 0, cuda_stream()>>>(
                x, col, (int)C, (int)H, (int)W, (int)KH, (int)KW, stride, pad, (int)OW, (int)p0,
                (int)pc, (int)r0, x_image, col_image);
        SD_TRY(cuda_launched("im2col_kernel"));
    }
    return SD_OK;
}

// The column buffer's bound: larger convolutions are done in chunks of output pixels.
static const size_t COLUMN_BUFFER_BYTES = 64u << 20;
// Chunks are a multiple of this many pixels, so every GEMM keeps aligned operands.
static const int64_t CHUNK_ALIGN = 256;

// out (planes = B * OC, P) = res + bias[c], res (planes, P) or (planes, 1) broadcast over
// the plane; V elements a thread (V divides P when V > 1). The GEMMs then add the
// convolution on top (beta = 1): bias, residual and product in one pass over out.
template <typename T, typename B, int V>
__global__ void conv_prefill_kernel(T *out, const T *res, const B *bias, int64_t channels,
                                    int64_t P, bool res_full, int64_t packs) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= packs)
        return;
    int64_t e = i * V, plane = e / P;
    float b = bias ? to_f32(bias[plane % channels]) : 0.0f;
    cuda_pack<T, V> v;
    if (res_full) {
        v = ld_pack<V>(res, e);
#pragma unroll
        for (int k = 0; k < V; k++)
            v.v[k] = from_f32<T>(to_f32(v.v[k]) + b);
    } else {
        T r = from_f32<T>(to_f32(res[plane]) + b);
#pragma unroll
        for (int k = 0; k < V; k++)
            v.v[k] = r;
    }
    st_pack<V>(out, e, v);
}

static sd_status conv_prefill(void *out, const sd_tensor *res, const sd_tensor *bias,
                              sd_dtype dt, int64_t planes, int64_t channels, int64_t P) {
    bool full = res->shape[2] * res->shape[3] == P;
    int v = 16 / (int)cuda_dtype_size(dt);
    if (P % v != 0 || (uintptr_t)out % 16 != 0 || (full && (uintptr_t)res->data % 16 != 0))
        v = 1;
    int64_t packs = planes * P / v;
    sd_dtype bdt = bias ? bias->dtype : dt;
    const void *bd = bias ? bias->data : nullptr;
    CUDA_DISPATCH(dt, T, CUDA_DISPATCH(bdt, Bt, {
                      if (v > 1)
                          conv_prefill_kernel<T, Bt, cuda_pack16<T>()>
                              <<<cuda_blocks(packs, 256), 256, 0, cuda_stream()>>>(
                                  (T *)out, (const T *)res->data, (const Bt *)bd, channels, P,
                                  full, packs);
                      else
                          conv_prefill_kernel<T, Bt, 1>
                              <<<cuda_blocks(packs, 256), 256, 0, cuda_stream()>>>(
                                  (T *)out, (const T *)res->data, (const Bt *)bd, channels, P,
                                  full, packs);
                  }));
    return cuda_launched("conv_prefill_kernel");
}

// out = conv2d(x, w) + bias [+ res]: res (B, OC, OH, OW), or (B, OC, 1, 1) added to
// every pixel of its channel; res may be out itself (the prefill is elementwise).
static sd_status conv2d_run(const sd_tensor *x, const sd_tensor *w, const sd_tensor *bias,
                            int stride, int padding, const sd_tensor *res, sd_tensor *out) {
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
    bool acc = res != nullptr;
    if (res) {
        SD_TRY(cuda_need_ndim(res, 4, "conv2d_add", "res"));
        SD_TRY(cuda_need_dtype(x, res, "conv2d_add", "res"));
        bool per_channel = res->shape[2] == 1 && res->shape[3] == 1;
        if (res->shape[0] != B || res->shape[1] != OC ||
            !(per_channel || (res->shape[2] == OH && res->shape[3] == OW)))
            return g_host->fail(SD_ERR_INVALID,
                                "conv2d_add: argument 'res' must have shape (%lld, %lld, %lld, "
                                "%lld) or (%lld, %lld, 1, 1)",
                                (long long)B, (long long)OC, (long long)OH, (long long)OW,
                                (long long)B, (long long)OC);
        SD_TRY(conv_prefill(out->data, res, bias, x->dtype, B * OC, OC, OH * OW));
    }
    const void *wd;
    SD_TRY(cuda_as_dtype(w, x->dtype, SCRATCH_CAST_A, &wd));
    sd_dtype dt = x->dtype;
    size_t es = cuda_dtype_size(dt);
    int64_t P = OH * OW, Kc = C * KH * KW;
    if (KH == 1 && KW == 1 && stride == 1 && padding == 0) {
        // every image at once: out_b (OC, P) = w (OC, C) @ x_b (C, P)
        SD_TRY(cuda_gemm(false, OC, P, C, wd, C, 0, x->data, P, C * P, out->data, P, OC * P, B,
                         dt, dt, acc));
    } else {
        int64_t chunk = (int64_t)(COLUMN_BUFFER_BYTES / (es * (size_t)Kc));
        if (chunk < P && chunk > CHUNK_ALIGN)
            chunk -= chunk % CHUNK_ALIGN;
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
                CUDA_DISPATCH(dt, T,
                              SD_TRY(im2col((const T *)x->data + b0 * C * H * W, (T *)col, nb, C,
                                            H, W, KH, KW, stride, padding, OW, 0, P, C * H * W,
                                            Kc * P)));
                SD_TRY(cuda_gemm(false, OC, P, Kc, wd, Kc, 0, col, P, Kc * P,
                                 (char *)out->data + (size_t)(b0 * OC * P) * es, P, OC * P, nb,
                                 dt, dt, acc));
            }
        } else {
            void *col;
            SD_TRY(cuda_scratch(SCRATCH_IM2COL, (size_t)(Kc * chunk) * es, &col));
            for (int64_t b = 0; b < B; b++)
                for (int64_t p0 = 0; p0 < P; p0 += chunk) {
                    int64_t pc = P - p0 < chunk ? P - p0 : chunk;
                    CUDA_DISPATCH(dt, T,
                                  SD_TRY(im2col((const T *)x->data + b * C * H * W, (T *)col, 1,
                                                C, H, W, KH, KW, stride, padding, OW, p0, pc, 0,
                                                0)));
                    // out_b[:, p0:p0+pc] (row stride P) = w @ col (Kc, pc)
                    SD_TRY(cuda_gemm(false, OC, pc, Kc, wd, Kc, 0, col, pc, 0,
                                     (char *)out->data + (size_t)(b * OC * P + p0) * es, P, 0, 1,
                                     dt, dt, acc));
                }
        }
    }
    if (bias && !acc)
        SD_TRY(cuda_add_bias_channels(out->data, dt, bias, B, OC, P));
    return SD_OK;
}

static sd_status cuda_conv2d(const sd_backend *, const sd_tensor *x, const sd_tensor *w,
                             const sd_tensor *bias, int stride, int padding, sd_tensor *out) {
    return conv2d_run(x, w, bias, stride, padding, nullptr, out);
}

static sd_status cuda_conv2d_add(const sd_backend *, const sd_tensor *x, const sd_tensor *w,
                                 const sd_tensor *bias, int stride, int padding,
                                 const sd_tensor *res, sd_tensor *out) {
    SD_TRY(cuda_need(res, "conv2d_add", "res"));
    return conv2d_run(x, w, bias, stride, padding, res, out);
}

void cuda_fill_conv2d(sd_backend *be) {
    be->conv2d = cuda_conv2d;
    be->conv2d_add = cuda_conv2d_add;
}
