/* GroupNorm (optionally fused with SiLU) and LayerNorm. */
#include <math.h>

#include "cpu_ops.h"
#include "fast_math.h"

/* Sum of n floats. Accumulate in double: a group holds up to 16 channels x 262144
 * pixels at 512x512, and f32 sums of that many terms lose the digits the variance
 * needs. Sixteen partial sums let the compiler vectorise without reassociating. */
#define LANES 16

SD_MULTIVERSION
static double sum_f64(const float *x, int64_t n) {
    double lane[LANES] = {0};
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int l = 0; l < LANES; l++)
            lane[l] += x[i + l];
    double s = 0.0;
    for (; i < n; i++)
        s += x[i];
    for (int l = 0; l < LANES; l++)
        s += lane[l];
    return s;
}

/* Two-pass variance from the mean: the one-pass formula cancels badly when the
 * mean is large relative to the spread. */
SD_MULTIVERSION
static double sum_sq_dev(const float *x, int64_t n, double mean) {
    double lane[LANES] = {0};
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int l = 0; l < LANES; l++) {
            double d = x[i + l] - mean;
            lane[l] += d * d;
        }
    double ss = 0.0;
    for (; i < n; i++) {
        double d = x[i] - mean;
        ss += d * d;
    }
    for (int l = 0; l < LANES; l++)
        ss += lane[l];
    return ss;
}

/* out may be x itself (group_norm in place): each element is read, then written at the
 * same index, so the loops have no carried dependence and `omp simd` may vectorize them
 * without an aliasing check (restrict would be a false promise here). */
SD_MULTIVERSION
static void affine_row(const float *x, float *out, int64_t n, float mul, float add, int silu) {
    if (silu) {
#pragma omp simd
        for (int64_t i = 0; i < n; i++) {
            float y = x[i] * mul + add;
            out[i] = y / (1.0f + sd_expf(-y));
        }
    } else {
#pragma omp simd
        for (int64_t i = 0; i < n; i++)
            out[i] = x[i] * mul + add;
    }
}

void cpu_group_norm_f32(const float *x, const float *gamma, const float *beta, float *out, int B,
                        int C, int64_t S, int groups, float eps, int fuse_silu) {
    int cpg = C / groups; /* channels per group */
    int64_t n = (int64_t)cpg * S;
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++) {
        for (int g = 0; g < groups; g++) {
            const float *xg = x + ((int64_t)b * C + (int64_t)g * cpg) * S;
            float *og = out + ((int64_t)b * C + (int64_t)g * cpg) * S;
            double mean = sum_f64(xg, n) / (double)n;
            double var = sum_sq_dev(xg, n, mean) / (double)n;
            double rstd = 1.0 / sqrt(var + (double)eps);
            for (int c = 0; c < cpg; c++) {
                int ch = g * cpg + c;
                /* (x - mean) * rstd * gamma + beta as one multiply-add per element */
                double mul = rstd * gamma[ch];
                double add = beta[ch] - mean * mul;
                affine_row(xg + (int64_t)c * S, og + (int64_t)c * S, S, (float)mul, (float)add,
                           fuse_silu);
            }
        }
    }
}

SD_MULTIVERSION
void cpu_layer_norm_f32(const float *x, const float *gamma, const float *beta, float *out,
                        int64_t M, int C, float eps) {
#pragma omp parallel for schedule(static) if (M * C > 16384)
    for (int64_t m = 0; m < M; m++) {
        const float *xr = x + m * C;
        float *orow = out + m * C;
        double mean = sum_f64(xr, C) / C;
        double var = sum_sq_dev(xr, C, mean) / C;
        float rstd = (float)(1.0 / sqrt(var + (double)eps));
        float fmean = (float)mean;
        for (int c = 0; c < C; c++)
            orow[c] = (xr[c] - fmean) * rstd * gamma[c] + beta[c];
    }
}
