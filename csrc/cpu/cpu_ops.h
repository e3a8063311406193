/* The CPU backend's ops as plain functions over pointers and sizes.
 *
 * These are the reference implementations every CUDA kernel is checked against.
 * All activations are f32, dense, row-major. Weights arrive already widened to f32
 * (the backend table in backend_cpu.c does that). */
#ifndef SDCORE_CPU_OPS_H
#define SDCORE_CPU_OPS_H

#include <stdint.h>

#include "sdcore.h"

/* Hot loops are compiled for baseline x86-64 and for AVX2/FMA and AVX-512 machines;
 * the loader picks the best at run time, so one build runs everywhere at full speed.
 * They may fuse a * b + c into one FMA (one rounding instead of two: closer to the
 * exact value). The build is ISO C, which otherwise forbids that, and the rest of the
 * engine keeps it forbidden: the samplers must round as their CUDA twins do. FMA
 * halves the instructions of every polynomial (exp, erf) and multiply-add loop. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define SD_MULTIVERSION                                                                            \
    __attribute__((target_clones("default", "arch=x86-64-v3", "arch=x86-64-v4"),                   \
                   optimize("fp-contract=fast")))
#else
#define SD_MULTIVERSION
#endif

/* n values of dtype (f32, f16 or bf16) at src -> f32 at dst; as sd_widen_to_f32, faster */
void cpu_widen_to_f32(const void *src, sd_dtype dtype, float *dst, int64_t n);

/* OpenBLAS single-threaded: OpenMP does all the threading (see matmul.c). */
void cpu_blas_init(void);

/* a (M, K) row-major with row stride lda; b (K, N) or, with trans_b, (N, K); row
 * stride ldb; c (M, N) row stride ldc: c = alpha * a @ b + beta * c.
 * cpu_sgemm splits large products across threads; the serial one is for callers
 * already inside a parallel region. */
void cpu_sgemm_serial(int trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float *a,
                      int64_t lda, const float *b, int64_t ldb, float beta, float *c,
                      int64_t ldc);
void cpu_sgemm(int trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float *a,
               int64_t lda, const float *b, int64_t ldb, float beta, float *c, int64_t ldc);

/* x (M, K), w (N, K), bias (N) or NULL -> out (M, N) [+ res (M, N), which may be out] */
void cpu_linear_f32(const float *x, const float *w, const float *bias, const float *res,
                    float *out, int64_t M, int64_t K, int64_t N);

/* x (B, C, H, W), w (OC, C, KH, KW), bias (OC) or NULL -> out (B, OC, OH, OW)
 * [+ res: (B, OC, OH, OW), or (B, OC) added to every pixel when res_per_channel; res may
 * be out] */
sd_status cpu_conv2d_f32(const float *x, const float *w, const float *bias, const float *res,
                         int res_per_channel, float *out, int B, int C, int H, int W, int OC,
                         int KH, int KW, int stride, int pad);

/* x (B, C, S) with S the spatial size -> out (B, C, S); gamma, beta (C) */
void cpu_group_norm_f32(const float *x, const float *gamma, const float *beta, float *out, int B,
                        int C, int64_t S, int groups, float eps, int fuse_silu);

/* x (M, C) -> out (M, C); gamma, beta (C) */
void cpu_layer_norm_f32(const float *x, const float *gamma, const float *beta, float *out,
                        int64_t M, int C, float eps);

/* q (B, Tq, H*D), k and v (B, Tk, H*D) -> out (B, Tq, H*D) */
sd_status cpu_attention_f32(const float *q, const float *k, const float *v, float *out, int B,
                            int Tq, int Tk, int H, int D, int causal);

/* x (M, N) -> out (M, N), softmax over each row */
void cpu_softmax_f32(const float *x, float *out, int64_t M, int64_t N);

void cpu_gelu_f32(const float *x, float *out, int64_t n, int tanh_approx);
void cpu_quick_gelu_f32(const float *x, float *out, int64_t n);
void cpu_silu_f32(const float *x, float *out, int64_t n);
/* x (M, 2N) -> out (M, N) */
void cpu_geglu_f32(const float *x, float *out, int64_t M, int64_t N);

/* x (BC, H, W) -> out (BC, 2H, 2W) */
void cpu_upsample_nearest2x_f32(const float *x, float *out, int64_t BC, int64_t H, int64_t W);
/* a (B, Ca, S), b (B, Cb, S) -> out (B, Ca + Cb, S) */
void cpu_concat_channels_f32(const float *a, const float *b, float *out, int64_t B, int64_t Ca,
                             int64_t Cb, int64_t S);
/* out[i] = a[i] op b[(i / inner) % nb * inner_b + i % inner_b] -- see elementwise.c */
void cpu_binary_f32(const float *a, const float *b, float *out, int64_t n, int64_t b_period,
                    int64_t b_repeat, int is_mul);
void cpu_scale_f32(const float *x, float s, float *out, int64_t n);

/* x (batch, M, N) -> out (batch, N, M) */
void cpu_transpose_last2_f32(const float *x, float *out, int64_t batch, int64_t M, int64_t N);

/* t (N) -> out (N, dim) */
void cpu_timestep_embedding_f32(const float *t, float *out, int64_t N, int dim,
                                int flip_sin_to_cos, float downscale_freq_shift);

#endif
