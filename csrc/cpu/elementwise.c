/* Elementwise and data-movement ops: add, mul, scale, nearest 2x upsample, channel
 * concat, and the sinusoidal timestep embedding. */
#include <math.h>
#include <string.h>

#include "cpu_ops.h"

#define PAR_MIN 65536

/* out[i] = a[i] (+ or *) b[(i / b_repeat) % b_period]
 * same shape: period n, repeat 1; trailing broadcast: period numel(b), repeat 1;
 * per channel of NCHW: period B*C, repeat H*W. */
SD_MULTIVERSION
void cpu_binary_f32(const float *a, const float *b, float *out, int64_t n, int64_t b_period,
                    int64_t b_repeat, int is_mul) {
    if (b_repeat == 1) {
#pragma omp parallel for schedule(static) if (n > PAR_MIN)
        for (int64_t i0 = 0; i0 < n; i0 += b_period) {
            const float *ar = a + i0;
            float *orow = out + i0;
            int64_t len = n - i0 < b_period ? n - i0 : b_period;
            if (is_mul)
                for (int64_t j = 0; j < len; j++)
                    orow[j] = ar[j] * b[j];
            else
                for (int64_t j = 0; j < len; j++)
                    orow[j] = ar[j] + b[j];
        }
        return;
    }
    int64_t rows = n / b_repeat;
#pragma omp parallel for schedule(static) if (n > PAR_MIN)
    for (int64_t r = 0; r < rows; r++) {
        float bv = b[r % b_period];
        const float *ar = a + r * b_repeat;
        float *orow = out + r * b_repeat;
        if (is_mul)
            for (int64_t j = 0; j < b_repeat; j++)
                orow[j] = ar[j] * bv;
        else
            for (int64_t j = 0; j < b_repeat; j++)
                orow[j] = ar[j] + bv;
    }
}

SD_MULTIVERSION
void cpu_scale_f32(const float *x, float s, float *out, int64_t n) {
#pragma omp parallel for schedule(static) if (n > PAR_MIN)
    for (int64_t i = 0; i < n; i++)
        out[i] = x[i] * s;
}

void cpu_upsample_nearest2x_f32(const float *x, float *out, int64_t BC, int64_t H, int64_t W) {
#pragma omp parallel for collapse(2) schedule(static) if (BC * H * W > PAR_MIN)
    for (int64_t c = 0; c < BC; c++) {
        for (int64_t h = 0; h < H; h++) {
            const float *src = x + (c * H + h) * W;
            float *dst = out + (c * 2 * H + 2 * h) * 2 * W;
            for (int64_t w = 0; w < W; w++) {
                dst[2 * w] = src[w];
                dst[2 * w + 1] = src[w];
            }
            memcpy(dst + 2 * W, dst, sizeof(float) * 2 * W); /* the row below is the same */
        }
    }
}

void cpu_concat_channels_f32(const float *a, const float *b, float *out, int64_t B, int64_t Ca,
                             int64_t Cb, int64_t S) {
    for (int64_t i = 0; i < B; i++) {
        float *o = out + i * (Ca + Cb) * S;
        memcpy(o, a + i * Ca * S, sizeof(float) * Ca * S);
        memcpy(o + Ca * S, b + i * Cb * S, sizeof(float) * Cb * S);
    }
}

/* As diffusers' get_timestep_embedding with max_period 10000 and scale 1:
 * freq_j = exp(-ln(10000) * j / (half - shift)), emb = [sin(t f), cos(t f)], or
 * [cos, sin] with flip_sin_to_cos; an odd dim gets a zero last column.
 * Computed in double: t * f reaches 1000 radians, where f32 rounding of the argument
 * alone moves sin by 6e-5. */
void cpu_timestep_embedding_f32(const float *t, float *out, int64_t N, int dim,
                                int flip_sin_to_cos, float downscale_freq_shift) {
    int half = dim / 2;
    for (int64_t n = 0; n < N; n++) {
        float *row = out + n * dim;
        for (int j = 0; j < half; j++) {
            double freq = exp(-log(10000.0) * j / ((double)half - downscale_freq_shift));
            double arg = (double)t[n] * freq;
            double s = sin(arg), c = cos(arg);
            row[j] = (float)(flip_sin_to_cos ? c : s);
            row[half + j] = (float)(flip_sin_to_cos ? s : c);
        }
        if (dim % 2)
            row[dim - 1] = 0.0f;
    }
}
