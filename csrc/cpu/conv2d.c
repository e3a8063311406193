/* 2-D convolution as im2col + GEMM.
 *
 * For each image, the patches under the kernel are unrolled into columns
 * col (C*KH*KW, P) for a chunk of P output pixels, and out (OC, P) = w (OC, C*KH*KW) @ col.
 * Chunking bounds the scratch buffer: a full im2col of a 128-channel 512x512 VAE
 * activation would be 1.2 GB. A 1x1 stride-1 convolution needs no unrolling at all. */
#include <stdlib.h>
#include <string.h>

#include "cpu_ops.h"

/* at most this many floats of im2col scratch (32 MiB) */
#define CONV_COL_BUDGET (8 << 20)

/* The output columns [lo, hi) whose input column ow * stride - pad + kw lies inside
 * [0, W): the padding is the columns outside. */
static void valid_columns(int W, int OW, int stride, int pad, int kw, int *lo, int *hi) {
    int off = kw - pad; /* input column of output column 0 */
    int first = off >= 0 ? 0 : (-off + stride - 1) / stride;
    int last = W - 1 - off < 0 ? -1 : (W - 1 - off) / stride; /* last valid, or -1 */
    *lo = first < OW ? first : OW;
    *hi = last + 1 < OW ? last + 1 : OW;
    if (*hi < *lo)
        *hi = *lo;
}

/* x (C, H, W) -> col (C*KH*KW, rows*OW) for output rows [oh0, oh0 + rows).
 * Each col row is zeros at the padded ends and a copy (stride 1) or a strided gather of
 * one input row between them: no bounds test per element. */
static void im2col_rows(const float *x, float *col, int C, int H, int W, int KH, int KW,
                        int stride, int pad, int OW, int oh0, int rows) {
    int64_t P = (int64_t)rows * OW;
#pragma omp parallel for collapse(2) schedule(static) if (P * C * KH * KW > 65536)
    for (int c = 0; c < C; c++) {
        for (int kk = 0; kk < KH * KW; kk++) {
            int kh = kk / KW, kw = kk % KW, lo, hi;
            valid_columns(W, OW, stride, pad, kw, &lo, &hi);
            float *dst = col + ((int64_t)c * KH * KW + kk) * P;
            const float *src = x + (int64_t)c * H * W;
            for (int r = 0; r < rows; r++) {
                int ih = (oh0 + r) * stride - pad + kh;
                float *d = dst + (int64_t)r * OW;
                if (ih < 0 || ih >= H) {
                    memset(d, 0, sizeof(float) * (size_t)OW);
                    continue;
                }
                const float *s = src + (int64_t)ih * W + (kw - pad);
                for (int ow = 0; ow < lo; ow++)
                    d[ow] = 0.0f;
                if (stride == 1)
                    memcpy(d + lo, s + lo, sizeof(float) * (size_t)(hi - lo));
                else
                    for (int ow = lo; ow < hi; ow++)
                        d[ow] = s[(int64_t)ow * stride];
                for (int ow = hi; ow < OW; ow++)
                    d[ow] = 0.0f;
            }
        }
    }
}

sd_status cpu_conv2d_f32(const float *x, const float *w, const float *bias, const float *res,
                         int res_per_channel, float *out, int B, int C, int H, int W, int OC,
                         int KH, int KW, int stride, int pad) {
    int OH = (H + 2 * pad - KH) / stride + 1;
    int OW = (W + 2 * pad - KW) / stride + 1;
    int64_t S = (int64_t)OH * OW;
    int64_t Kdim = (int64_t)C * KH * KW;
    int direct = KH == 1 && KW == 1 && stride == 1 && pad == 0;

    int rows_per_chunk = OH;
    float *col = NULL;
    if (!direct) {
        int64_t per_row = Kdim * OW;
        rows_per_chunk = (int)(CONV_COL_BUDGET / (per_row > 0 ? per_row : 1));
        if (rows_per_chunk < 1)
            rows_per_chunk = 1;
        if (rows_per_chunk > OH)
            rows_per_chunk = OH;
        col = malloc((size_t)per_row * rows_per_chunk * sizeof(float));
        if (!col)
            return sd_fail(SD_ERR_NOMEM, "conv2d: cannot allocate %lld bytes of scratch",
                           (long long)(per_row * rows_per_chunk * 4));
    }

    for (int b = 0; b < B; b++) {
        const float *xb = x + (int64_t)b * C * H * W;
        float *ob = out + (int64_t)b * OC * S;
        /* the GEMM accumulates onto res + bias: out starts as them */
        if (res && !res_per_channel) {
            const float *rb = res + (int64_t)b * OC * S;
            if (bias || rb != ob) {
#pragma omp parallel for schedule(static)
                for (int oc = 0; oc < OC; oc++)
                    for (int64_t i = 0; i < S; i++)
                        ob[oc * S + i] = rb[oc * S + i] + (bias ? bias[oc] : 0.0f);
            }
        } else if (res || bias) {
#pragma omp parallel for schedule(static)
            for (int oc = 0; oc < OC; oc++) {
                float v = (res ? res[(int64_t)b * OC + oc] : 0.0f) + (bias ? bias[oc] : 0.0f);
                for (int64_t i = 0; i < S; i++)
                    ob[oc * S + i] = v;
            }
        }
        float beta = bias || res ? 1.0f : 0.0f;
        if (direct) {
            /* out (OC, S) = w (OC, C) @ x (C, S) */
            cpu_sgemm(0, OC, S, C, 1.0f, w, C, xb, S, beta, ob, S);
            continue;
        }
        for (int oh0 = 0; oh0 < OH; oh0 += rows_per_chunk) {
            int rows = OH - oh0 < rows_per_chunk ? OH - oh0 : rows_per_chunk;
            int64_t P = (int64_t)rows * OW;
            im2col_rows(xb, col, C, H, W, KH, KW, stride, pad, OW, oh0, rows);
            /* out[:, chunk] (OC, P) = w (OC, Kdim) @ col (Kdim, P); ldc is the full S */
            cpu_sgemm(0, OC, P, Kdim, 1.0f, w, Kdim, col, P, beta, ob + (int64_t)oh0 * OW, S);
        }
    }
    free(col);
    return SD_OK;
}
