/* Softmax and the activation functions: GELU (erf and tanh), quick GELU, SiLU, GEGLU. */
#include <math.h>

#include "cpu_ops.h"
#include "fast_math.h"

#define LANES 16
#define PAR_MIN 65536 /* below this many elements a parallel region costs more than it saves */

/* `omp simd reduction(max)` lets the compiler keep a vector of maxima (max is exact in
 * any order); sixteen scalar lanes written out by hand stayed scalar (vmaxss). */
SD_MULTIVERSION
float sd_max_f32(const float *x, int64_t n) {
    float mx = -INFINITY;
#pragma omp simd reduction(max : mx)
    for (int64_t i = 0; i < n; i++)
        mx = x[i] > mx ? x[i] : mx;
    return mx;
}

SD_MULTIVERSION
float sd_exp_shifted_sum(float *x, int64_t n, float shift, float scale) {
    float lane[LANES] = {0};
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int l = 0; l < LANES; l++) {
            float e = sd_expf((x[i + l] - shift) * scale);
            x[i + l] = e;
            lane[l] += e;
        }
    float sum = 0.0f;
    for (; i < n; i++) {
        x[i] = sd_expf((x[i] - shift) * scale);
        sum += x[i];
    }
    for (int l = 0; l < LANES; l++)
        sum += lane[l];
    return sum;
}

SD_MULTIVERSION
void sd_scale_inplace(float *x, int64_t n, float s) {
    for (int64_t i = 0; i < n; i++)
        x[i] *= s;
}

void cpu_softmax_f32(const float *x, float *out, int64_t M, int64_t N) {
#pragma omp parallel for schedule(static) if (M * N > PAR_MIN)
    for (int64_t m = 0; m < M; m++) {
        float *o = out + m * N;
        const float *r = x + m * N;
        for (int64_t j = 0; j < N; j++)
            o[j] = r[j];
        float mx = sd_max_f32(o, N);
        float sum = sd_exp_shifted_sum(o, N, mx, 1.0f);
        sd_scale_inplace(o, N, 1.0f / sum);
    }
}

SD_MULTIVERSION
static void gelu_erf_span(const float *restrict x, float *restrict out, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        out[i] = sd_gelu_erf(x[i]);
}

SD_MULTIVERSION
static void gelu_tanh_span(const float *restrict x, float *restrict out, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        float v = x[i];
        float inner = 0.7978845608028654f * (v + 0.044715f * v * v * v);
        /* tanh(u) = 1 - 2 / (exp(2u) + 1), through the vectorisable exp */
        float t = 1.0f - 2.0f / (sd_expf(2.0f * inner) + 1.0f);
        out[i] = 0.5f * v * (1.0f + t);
    }
}

/* Split n elements into chunks across threads, each chunk handled by `span`. */
#define PARALLEL_SPANS(n, span_call)                                                   \
    do {                                                                               \
        const int64_t chunk_ = 16384;                                                  \
        int64_t nchunks_ = ((n) + chunk_ - 1) / chunk_;                                \
        _Pragma("omp parallel for schedule(static) if (nchunks_ > 4)")                 \
        for (int64_t c_ = 0; c_ < nchunks_; c_++) {                                    \
            int64_t i0 = c_ * chunk_;                                                  \
            int64_t len = (n) - i0 < chunk_ ? (n) - i0 : chunk_;                       \
            span_call;                                                                 \
        }                                                                              \
    } while (0)

void cpu_gelu_f32(const float *x, float *out, int64_t n, int tanh_approx) {
    if (tanh_approx)
        PARALLEL_SPANS(n, gelu_tanh_span(x + i0, out + i0, len));
    else
        PARALLEL_SPANS(n, gelu_erf_span(x + i0, out + i0, len));
}

SD_MULTIVERSION
static void quick_gelu_span(const float *restrict x, float *restrict out, int64_t n) {
    for (int64_t i = 0; i < n; i++) /* x * sigmoid(1.702 x) */
        out[i] = x[i] / (1.0f + sd_expf(-1.702f * x[i]));
}

void cpu_quick_gelu_f32(const float *x, float *out, int64_t n) {
    PARALLEL_SPANS(n, quick_gelu_span(x + i0, out + i0, len));
}

SD_MULTIVERSION
static void silu_span(const float *restrict x, float *restrict out, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        out[i] = x[i] / (1.0f + sd_expf(-x[i]));
}

void cpu_silu_f32(const float *x, float *out, int64_t n) {
    PARALLEL_SPANS(n, silu_span(x + i0, out + i0, len));
}

/* one pass: each output reads its value and its gate once (x's row is value | gate) */
SD_MULTIVERSION
static void geglu_row(const float *restrict x, float *restrict out, int64_t N) {
    const float *gate = x + N;
    for (int64_t j = 0; j < N; j++)
        out[j] = x[j] * sd_gelu_erf(gate[j]);
}

void cpu_geglu_f32(const float *x, float *out, int64_t M, int64_t N) {
#pragma omp parallel for schedule(static) if (M * N > PAR_MIN)
    for (int64_t m = 0; m < M; m++)
        geglu_row(x + m * 2 * N, out + m * N, N);
}
