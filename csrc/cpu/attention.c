/* Multi-head scaled dot-product attention, tiled over query blocks.
 *
 * For one (batch, head, query block): S (QB, Tk) = Q_blk K^T through BLAS, a softmax
 * of each row of S in place, then O_blk (QB, D) = P V through BLAS. Only a QB x Tk
 * block of scores exists at a time (the full 4096 x 4096 matrix of one head would be
 * 64 MiB), and each block is independent, so blocks run in parallel, each thread
 * calling the serial GEMM. Heads are read in place from the (B, T, H*D)
 * layout with a row stride of H*D: no transposes. */
#include <math.h>
#include <stdlib.h>

#include "cpu_ops.h"
#include "fast_math.h"

#define ATTN_QBLOCK 128

/* softmax of row s (n) scaled by `scale` in place; entries from `limit` on are masked */
static void softmax_row_scaled(float *s, int64_t n, float scale, int64_t limit) {
    float mx = sd_max_f32(s, limit);
    float sum = sd_exp_shifted_sum(s, limit, mx, scale);
    sd_scale_inplace(s, limit, 1.0f / sum);
    for (int64_t j = limit; j < n; j++)
        s[j] = 0.0f;
}

sd_status cpu_attention_f32(const float *q, const float *k, const float *v, float *out, int B,
                            int Tq, int Tk, int H, int D, int causal) {
    int64_t ld = (int64_t)H * D; /* row stride of every (B, T, H*D) operand */
    int nqb = (Tq + ATTN_QBLOCK - 1) / ATTN_QBLOCK;
    int64_t tasks = (int64_t)B * H * nqb;
    float scale = 1.0f / sqrtf((float)D);
    int failed = 0;

#pragma omp parallel
    {
        float *scores = malloc(sizeof(float) * ATTN_QBLOCK * (size_t)Tk);
        if (!scores) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(dynamic, 1)
        for (int64_t t = 0; t < tasks; t++) {
            if (!scores)
                continue;
            int qb = (int)(t % nqb);
            int h = (int)(t / nqb % H);
            int b = (int)(t / nqb / H);
            int q0 = qb * ATTN_QBLOCK;
            int rows = Tq - q0 < ATTN_QBLOCK ? Tq - q0 : ATTN_QBLOCK;
            const float *qp = q + ((int64_t)b * Tq + q0) * ld + (int64_t)h * D;
            const float *kp = k + (int64_t)b * Tk * ld + (int64_t)h * D;
            const float *vp = v + (int64_t)b * Tk * ld + (int64_t)h * D;
            float *op = out + ((int64_t)b * Tq + q0) * ld + (int64_t)h * D;
            /* with a causal mask, keys past the block's last query are never used */
            int keys = causal ? (q0 + rows < Tk ? q0 + rows : Tk) : Tk;
            /* scores (rows, keys) = Q_blk (rows, D) @ K^T */
            cpu_sgemm_serial(1, rows, keys, D, 1.0f, qp, ld, kp, ld, 0.0f, scores, keys);
            for (int r = 0; r < rows; r++) {
                int64_t limit = causal ? q0 + r + 1 : keys;
                softmax_row_scaled(scores + (int64_t)r * keys, keys, scale, limit);
            }
            /* O_blk (rows, D) = P (rows, keys) @ V (keys, D) */
            cpu_sgemm_serial(0, rows, D, keys, 1.0f, scores, keys, vp, ld, 0.0f, op, ld);
        }
        free(scores);
    }
    if (failed)
        return sd_fail(SD_ERR_NOMEM, "attention: cannot allocate the score buffer");
    return SD_OK;
}
