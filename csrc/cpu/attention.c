/* Multi-head scaled dot-product attention, flash style: tiled over query blocks and
 * key blocks with an online softmax.
 *
 * For one (batch, head, query block) the keys are visited a block at a time:
 *   S (QB, KB) = Q_blk K_blk^T                 (BLAS)
 *   m' = max(m, rowmax S);  P = exp((S - m') * scale)
 *   l = l * exp((m - m') * scale) + rowsum P;  O = O * exp((m - m') * scale) + P V_blk (BLAS)
 * and O / l is the result. Only a QB x KB tile of scores exists (at most 512 KiB: it
 * stays in the core's L2 cache, where a whole 4096-key row block would not), and each
 * query block is independent, so blocks run in parallel, each thread calling the serial
 * GEMM. Heads are read in place from the (B, T, H*D) layout with a row stride of H*D:
 * no transposes. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "cpu_ops.h"
#include "fast_math.h"

/* Query blocks of up to 256 rows: each key block is packed by the GEMM once per query
 * block, and larger blocks pay that less often (16x4096x4096, d40, one thread: 755 ms
 * at 64 rows, 621 ms at 256). A 256 x 512 score tile is 512 KiB, inside a core's L2.
 * Smaller blocks when there would be too few to keep every thread busy. */
#define ATTN_QBLOCK_MAX 256
#define ATTN_QBLOCK_MIN 32
#define ATTN_KBLOCK 512

/* the threads a parallel region started here would get */
static int cpu_threads_here(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

typedef struct {
    float *scores; /* (QB, KB) */
    float *acc;    /* (QB, D): the running, unnormalised output */
    float *row_max, *row_sum;
} attn_scratch;

/* One query block against all keys; writes rows x D of the output at `op` (stride ld). */
static void attend_block(const float *qp, const float *kp, const float *vp, float *op,
                         int64_t ld, int rows, int q0, int Tk, int D, int causal, float scale,
                         attn_scratch *w) {
    for (int r = 0; r < rows; r++) {
        w->row_max[r] = -INFINITY;
        w->row_sum[r] = 0.0f;
    }
    memset(w->acc, 0, sizeof(float) * (size_t)rows * D);
    /* with a causal mask, keys past the block's last query are never used */
    int keys_total = causal ? (q0 + rows < Tk ? q0 + rows : Tk) : Tk;
    for (int k0 = 0; k0 < keys_total; k0 += ATTN_KBLOCK) {
        int kb = keys_total - k0 < ATTN_KBLOCK ? keys_total - k0 : ATTN_KBLOCK;
        /* scores (rows, kb) = Q_blk (rows, D) @ K_blk^T */
        cpu_sgemm_serial(1, rows, kb, D, 1.0f, qp, ld, kp + (int64_t)k0 * ld, ld, 0.0f,
                         w->scores, kb);
        for (int r = 0; r < rows; r++) {
            float *s = w->scores + (int64_t)r * kb;
            /* causal: query q0 + r sees keys up to itself */
            int limit = causal ? (q0 + r + 1 - k0 < kb ? q0 + r + 1 - k0 : kb) : kb;
            if (limit <= 0) {
                memset(s, 0, sizeof(float) * (size_t)kb);
                continue;
            }
            float m_old = w->row_max[r];
            float m_blk = sd_max_f32(s, limit);
            float m_new = m_blk > m_old ? m_blk : m_old;
            float sum = sd_exp_shifted_sum(s, limit, m_new, scale);
            for (int j = limit; j < kb; j++)
                s[j] = 0.0f;
            /* rescale what was accumulated under the old max (exp(-inf) = 0 the first time) */
            float correction = m_old == -INFINITY ? 0.0f : expf((m_old - m_new) * scale);
            w->row_sum[r] = w->row_sum[r] * correction + sum;
            w->row_max[r] = m_new;
            if (correction != 1.0f)
                sd_scale_inplace(w->acc + (int64_t)r * D, D, correction);
        }
        /* acc (rows, D) += P (rows, kb) @ V_blk (kb, D) */
        cpu_sgemm_serial(0, rows, D, kb, 1.0f, w->scores, kb, vp + (int64_t)k0 * ld, ld, 1.0f,
                         w->acc, D);
    }
    for (int r = 0; r < rows; r++) {
        float inv = 1.0f / w->row_sum[r];
        const float *a = w->acc + (int64_t)r * D;
        float *o = op + (int64_t)r * ld;
        for (int d = 0; d < D; d++)
            o[d] = a[d] * inv;
    }
}

sd_status cpu_attention_f32(const float *q, const float *k, const float *v, float *out, int B,
                            int Tq, int Tk, int H, int D, int causal) {
    int64_t ld = (int64_t)H * D; /* row stride of every (B, T, H*D) operand */
    int qblock = ATTN_QBLOCK_MAX;
    while (qblock > ATTN_QBLOCK_MIN &&
           (int64_t)B * H * ((Tq + qblock - 1) / qblock) < 4 * (int64_t)cpu_threads_here())
        qblock /= 2;
    int nqb = (Tq + qblock - 1) / qblock;
    int64_t tasks = (int64_t)B * H * nqb;
    float scale = 1.0f / sqrtf((float)D);
    int failed = 0;

#pragma omp parallel
    {
        attn_scratch w;
        w.scores = malloc(sizeof(float) * (size_t)qblock * ATTN_KBLOCK);
        w.acc = malloc(sizeof(float) * (size_t)qblock * D);
        w.row_max = malloc(sizeof(float) * (size_t)qblock);
        w.row_sum = malloc(sizeof(float) * (size_t)qblock);
        int ok = w.scores && w.acc && w.row_max && w.row_sum;
        if (!ok) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(dynamic, 1)
        for (int64_t t = 0; t < tasks; t++) {
            if (!ok)
                continue;
            int qb = (int)(t % nqb);
            int h = (int)(t / nqb % H);
            int b = (int)(t / nqb / H);
            int q0 = qb * qblock;
            int rows = Tq - q0 < qblock ? Tq - q0 : qblock;
            const float *qp = q + ((int64_t)b * Tq + q0) * ld + (int64_t)h * D;
            const float *kp = k + (int64_t)b * Tk * ld + (int64_t)h * D;
            const float *vp = v + (int64_t)b * Tk * ld + (int64_t)h * D;
            float *op = out + ((int64_t)b * Tq + q0) * ld + (int64_t)h * D;
            attend_block(qp, kp, vp, op, ld, rows, q0, Tk, D, causal, scale, &w);
        }
        free(w.scores);
        free(w.acc);
        free(w.row_max);
        free(w.row_sum);
    }
    if (failed)
        return sd_fail(SD_ERR_NOMEM, "attention: cannot allocate scratch buffers");
    return SD_OK;
}
