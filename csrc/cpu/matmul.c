/* Matrix products on the CPU go through OpenBLAS (the scipy-openblas32 build from PyPI,
 * whose symbols carry a scipy_ prefix so they never clash with another BLAS in the
 * same process).
 *
 * Threads: OpenBLAS runs single-threaded and all parallelism is OpenMP's. Two thread
 * pools on the same cores (OpenBLAS's pthreads and OpenMP's) would hand work back and
 * forth and spin against each other; with one pool, a large product is split into
 * column (or row) panels, one GEMM per thread, and code that is already inside a
 * parallel region (attention blocks) calls the serial GEMM directly. */
#include <cblas.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "cpu_ops.h"

void cpu_blas_init(void) { scipy_openblas_set_num_threads(1); }

void cpu_sgemm_serial(int trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float *a,
                      int64_t lda, const float *b, int64_t ldb, float beta, float *c,
                      int64_t ldc) {
    scipy_cblas_sgemm(CblasRowMajor, CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans,
                      (blasint)M, (blasint)N, (blasint)K, alpha, a, (blasint)lda, b, (blasint)ldb,
                      beta, c, (blasint)ldc);
}

/* below this many multiply-adds a product is not worth splitting */
#define GEMM_SPLIT_MIN (1 << 21)

void cpu_sgemm(int trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float *a,
               int64_t lda, const float *b, int64_t ldb, float beta, float *c, int64_t ldc) {
    int threads = 1;
#ifdef _OPENMP
    if (!omp_in_parallel() && M * N * K >= GEMM_SPLIT_MIN)
        threads = omp_get_max_threads();
#endif
    if (threads <= 1) {
        cpu_sgemm_serial(trans_b, M, N, K, alpha, a, lda, b, ldb, beta, c, ldc);
        return;
    }
    /* Split the longer output side into panels of whole 16-column (or row) groups, a
     * few per thread so uneven panels even out. */
    int split_cols = N >= M;
    int64_t len = split_cols ? N : M;
    int64_t panels = threads * 4;
    int64_t step = (len + panels - 1) / panels;
    step = (step + 15) / 16 * 16;
    int64_t count = (len + step - 1) / step;
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
    for (int64_t p = 0; p < count; p++) {
        int64_t lo = p * step, n = len - lo < step ? len - lo : step;
        if (split_cols) {
            /* c[:, lo:lo+n] = a @ b[:, lo:lo+n] (or rows lo.. of b when transposed) */
            const float *bp = trans_b ? b + lo * ldb : b + lo;
            cpu_sgemm_serial(trans_b, M, n, K, alpha, a, lda, bp, ldb, beta, c + lo, ldc);
        } else {
            cpu_sgemm_serial(trans_b, n, N, K, alpha, a + lo * lda, lda, b, ldb, beta,
                             c + lo * ldc, ldc);
        }
    }
}

void cpu_linear_f32(const float *x, const float *w, const float *bias, const float *res,
                    float *out, int64_t M, int64_t K, int64_t N) {
    /* Start out as res + the broadcast bias and let the GEMM accumulate onto it (beta = 1):
     * one pass over out instead of more passes to add them afterwards. */
    if (bias || (res && res != out)) {
#pragma omp parallel for schedule(static) if (M * N > 65536)
        for (int64_t i = 0; i < M; i++)
            for (int64_t j = 0; j < N; j++)
                out[i * N + j] = (res ? res[i * N + j] : 0.0f) + (bias ? bias[j] : 0.0f);
    }
    /* out (M, N) (+)= x (M, K) @ w^T, w stored (N, K) */
    cpu_sgemm(1, M, N, K, 1.0f, x, K, w, K, bias || res ? 1.0f : 0.0f, out, N);
}
