/* Layout changes: the transpose of the last two dims that turns an NCHW image
 * (B, C, H*W) into transformer tokens (B, H*W, C) and back. */
#include "cpu_ops.h"

/* A 32x32 tile of f32 is 4 KiB read and 4 KiB written: both stay in L1 while one side
 * is walked with a stride, so each cache line is fetched once instead of once per
 * element. */
#define TILE 32
#define PAR_MIN 65536

SD_MULTIVERSION
void cpu_transpose_last2_f32(const float *x, float *out, int64_t batch, int64_t M, int64_t N) {
    int64_t tiles_m = (M + TILE - 1) / TILE, tiles_n = (N + TILE - 1) / TILE;
#pragma omp parallel for collapse(3) schedule(static) if (batch * M * N > PAR_MIN)
    for (int64_t b = 0; b < batch; b++) {
        for (int64_t tm = 0; tm < tiles_m; tm++) {
            for (int64_t tn = 0; tn < tiles_n; tn++) {
                const float *src = x + b * M * N;
                float *dst = out + b * M * N;
                int64_t m0 = tm * TILE, n0 = tn * TILE;
                int64_t m1 = m0 + TILE < M ? m0 + TILE : M, n1 = n0 + TILE < N ? n0 + TILE : N;
                /* rows of out are contiguous in m: write them in order, read x by column */
                for (int64_t n = n0; n < n1; n++)
                    for (int64_t m = m0; m < m1; m++)
                        dst[n * M + m] = src[m * N + n];
            }
        }
    }
}
