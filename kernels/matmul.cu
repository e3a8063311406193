// linear and matmul on the CUDA backend: cuBLAS GEMMs with f32 accumulation, plus the
// helpers conv2d shares (dtype casts of weights, bias adds).
#include <algorithm>

#include <cublasLt.h>
#include <cublas_v2.h>

#include "cuda_common.cuh"

static cublasHandle_t g_cublas = nullptr;
static void *g_cublas_workspace = nullptr;
static const size_t CUBLAS_WORKSPACE_BYTES = 32u << 20;

static sd_status cublas_check(cublasStatus_t st, const char *what) {
    if (st == CUBLAS_STATUS_SUCCESS)
        return SD_OK;
    sd_status status = st == CUBLAS_STATUS_ALLOC_FAILED ? SD_ERR_NOMEM : SD_ERR_DEVICE;
    return g_host->fail(status, "%s: cuBLAS error %d (%s)", what, (int)st,
                        cublasGetStatusString(st));
}

// One handle on the op stream with a fixed workspace: cuBLAS must not allocate while a
// graph is being captured.
static sd_status cublas_handle(cublasHandle_t *out) {
    if (!g_cublas) {
        cublasHandle_t h;
        SD_TRY(cublas_check(cublasCreate(&h), "cublasCreate"));
        const size_t workspace = CUBLAS_WORKSPACE_BYTES;
        if (cuda_check(cudaMalloc(&g_cublas_workspace, workspace), "cudaMalloc (cuBLAS workspace)") !=
            SD_OK) {
            cublasDestroy(h);
            return SD_ERR_NOMEM;
        }
        SD_TRY(cublas_check(cublasSetWorkspace(h, g_cublas_workspace, workspace),
                            "cublasSetWorkspace"));
        cuda_note_memory();
        g_cublas = h;
    }
    SD_TRY(cublas_check(cublasSetStream(g_cublas, cuda_stream()), "cublasSetStream"));
    *out = g_cublas;
    return SD_OK;
}

static cudaDataType cuda_type(sd_dtype d) {
    return d == SD_F32 ? CUDA_R_32F : d == SD_F16 ? CUDA_R_16F : CUDA_R_16BF;
}

sd_status cuda_gemm(bool trans_b, int64_t M, int64_t N, int64_t K, const void *A, int64_t lda,
                    int64_t stride_a, const void *B, int64_t ldb, int64_t stride_b, void *C,
                    int64_t ldc, int64_t stride_c, int64_t batch, sd_dtype ab, sd_dtype c,
                    bool accumulate) {
    if (M > INT32_MAX || N > INT32_MAX || K > INT32_MAX || batch > INT32_MAX)
        return g_host->fail(SD_ERR_UNSUPPORTED, "GEMM of %lld x %lld x %lld is too large",
                            (long long)M, (long long)N, (long long)K);
    cublasHandle_t h;
    SD_TRY(cublas_handle(&h));
    float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
    // Row-major C = A op(B) is column-major C^T = op(B)^T A^T: cuBLAS sees B first.
    cublasOperation_t opb = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublasStatus_t st;
    if (batch == 1)
        st = cublasGemmEx(h, opb, CUBLAS_OP_N, (int)N, (int)M, (int)K, &alpha, B, cuda_type(ab),
                          (int)ldb, A, cuda_type(ab), (int)lda, &beta, C, cuda_type(c), (int)ldc,
                          CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    else
        st = cublasGemmStridedBatchedEx(h, opb, CUBLAS_OP_N, (int)N, (int)M, (int)K, &alpha, B,
                                        cuda_type(ab), (int)ldb, stride_b, A, cuda_type(ab),
                                        (int)lda, stride_a, &beta, C, cuda_type(c), (int)ldc,
                                        stride_c, (int)batch, CUBLAS_COMPUTE_32F,
                                        CUBLAS_GEMM_DEFAULT);
    return cublas_check(st, "cublasGemmEx");
}


// ------------------------------------------------------------- cuBLASLt ------
// linear as one cuBLASLt call: the bias is added in the GEMM's epilogue and, for
// linear_add, the residual comes in as C with beta = 1, instead of separate passes over
// the output. Plans (descriptors and the heuristic's algorithm) are made once per shape
// and kept; a shape cuBLASLt has no algorithm for takes the cuBLAS path.

static cublasLtHandle_t g_lt = nullptr;

struct lt_plan {
    int64_t M, N, K;
    sd_dtype dt;
    bool bias, accumulate;
    int align; // bytes every operand pointer is aligned to (part of the key)
    bool usable;
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t a, b, c;
    cublasLtMatmulAlgo_t algo;
};
static const int LT_PLANS = 128;
static lt_plan g_lt_plans[LT_PLANS];
static int g_lt_plan_count = 0;

static sd_status lt_check(cublasStatus_t st, const char *what) { return cublas_check(st, what); }

static int pointer_align(const void *p) {
    uintptr_t v = (uintptr_t)p;
    int a = 256;
    while (a > 2 && v % a != 0)
        a /= 2;
    return a;
}

static sd_status lt_make_plan(lt_plan *p) {
    cudaDataType t = cuda_type(p->dt);
    p->usable = false;
    SD_TRY(lt_check(cublasLtMatmulDescCreate(&p->op, CUBLAS_COMPUTE_32F, CUDA_R_32F),
                    "cublasLtMatmulDescCreate"));
    cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    SD_TRY(lt_check(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSA, &ta,
                                                   sizeof ta),
                    "cublasLtMatmulDescSetAttribute"));
    SD_TRY(lt_check(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSB, &tb,
                                                   sizeof tb),
                    "cublasLtMatmulDescSetAttribute"));
    if (p->bias) {
        cublasLtEpilogue_t e = CUBLASLT_EPILOGUE_BIAS;
        SD_TRY(lt_check(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_EPILOGUE, &e,
                                                       sizeof e),
                        "cublasLtMatmulDescSetAttribute"));
        SD_TRY(lt_check(cublasLtMatmulDescSetAttribute(
                            p->op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &t, sizeof t),
                        "cublasLtMatmulDescSetAttribute"));
    }
    // column-major views of the row-major data: w (N, K) is (K x N), x (M, K) is (K x M)
    // and out (M, N) is (N x M), so D (N x M) = op(w) x with op = transpose
    SD_TRY(lt_check(cublasLtMatrixLayoutCreate(&p->a, t, p->K, p->N, p->K), "layout"));
    SD_TRY(lt_check(cublasLtMatrixLayoutCreate(&p->b, t, p->K, p->M, p->K), "layout"));
    SD_TRY(lt_check(cublasLtMatrixLayoutCreate(&p->c, t, p->N, p->M, p->N), "layout"));
    cublasLtMatmulPreference_t pref;
    SD_TRY(lt_check(cublasLtMatmulPreferenceCreate(&pref), "cublasLtMatmulPreferenceCreate"));
    size_t ws = CUBLAS_WORKSPACE_BYTES;
    uint32_t al = (uint32_t)p->align;
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws,
                                         sizeof ws);
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al,
                                         sizeof al);
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al,
                                         sizeof al);
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al,
                                         sizeof al);
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al,
                                         sizeof al);
    cublasLtMatmulHeuristicResult_t res;
    int found = 0;
    cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(g_lt, p->op, p->a, p->b, p->c, p->c, pref,
                                                       1, &res, &found);
    cublasLtMatmulPreferenceDestroy(pref);
    if (st == CUBLAS_STATUS_SUCCESS && found > 0) {
        p->algo = res.algo;
        p->usable = true;
    }
    return SD_OK;
}

// The plan for this product, made on first use; NULL when the table is full (the
// caller takes the cuBLAS path).
static sd_status lt_find_plan(int64_t M, int64_t N, int64_t K, sd_dtype dt, bool bias,
                              bool accumulate, int align, lt_plan **out) {
    *out = nullptr;
    if (!g_lt)
        SD_TRY(lt_check(cublasLtCreate(&g_lt), "cublasLtCreate"));
    for (int i = 0; i < g_lt_plan_count; i++) {
        lt_plan *p = &g_lt_plans[i];
        if (p->M == M && p->N == N && p->K == K && p->dt == dt && p->bias == bias &&
            p->accumulate == accumulate && p->align == align) {
            *out = p;
            return SD_OK;
        }
    }
    if (g_lt_plan_count == LT_PLANS)
        return SD_OK;
    lt_plan *p = &g_lt_plans[g_lt_plan_count];
    *p = lt_plan{M, N, K, dt, bias, accumulate, align, false, nullptr, nullptr, nullptr,
                 nullptr, {}};
    sd_status s = lt_make_plan(p);
    g_lt_plan_count++; // kept even when unusable: the heuristic is not asked again
    SD_TRY(s);
    *out = p;
    return SD_OK;
}

// out (M, N) = x (M, K) w (N, K)^T + bias (N) [+ out, with accumulate]; x, w, out of
// dtype dt, bias (if any) too. false in *done when cuBLASLt cannot take it.
static sd_status lt_linear(int64_t M, int64_t N, int64_t K, const void *x, const void *w,
                           const sd_tensor *bias, void *out, sd_dtype dt, bool accumulate,
                           bool *done) {
    *done = false;
    if (bias && (bias->dtype != dt || (uintptr_t)bias->data % 16 != 0))
        return SD_OK;
    int align = pointer_align(x);
    align = std::min(align, pointer_align(w));
    align = std::min(align, pointer_align(out));
    lt_plan *p;
    SD_TRY(lt_find_plan(M, N, K, dt, bias != nullptr, accumulate, align, &p));
    if (!p || !p->usable)
        return SD_OK;
    if (bias) {
        const void *ptr = bias->data;
        SD_TRY(lt_check(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                                                       &ptr, sizeof ptr),
                        "cublasLtMatmulDescSetAttribute"));
    }
    cublasHandle_t h;
    SD_TRY(cublas_handle(&h)); // makes the shared workspace
    float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
    SD_TRY(lt_check(cublasLtMatmul(g_lt, p->op, &alpha, w, p->a, x, p->b, &beta, out, p->c, out,
                                   p->c, &p->algo, g_cublas_workspace, CUBLAS_WORKSPACE_BYTES,
                                   cuda_stream()),
                    "cublasLtMatmul"));
    *done = true;
    return SD_OK;
}

template <typename S, typename D> __global__ void cast_kernel(const S *x, D *out, int64_t n) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        out[i] = from_f32<D>(to_f32(x[i]));
}

sd_status cuda_as_dtype(const sd_tensor *w, sd_dtype want, cuda_scratch_slot slot,
                        const void **out) {
    if (w->dtype == want) {
        *out = w->data;
        return SD_OK;
    }
    int64_t n = cuda_numel(w);
    void *buf;
    SD_TRY(cuda_scratch(slot, (size_t)n * cuda_dtype_size(want), &buf));
    CUDA_DISPATCH(w->dtype, S,
                  CUDA_DISPATCH(want, D,
                                cast_kernel<S, D><<<cuda_blocks(n, 256), 256, 0, cuda_stream()>>>(
                                    (const S *)w->data, (D *)buf, n)));
    *out = buf;
    return cuda_launched("cast_kernel");
}

// Bias adds move V elements per thread (one 16-byte pack when the sizes and the address
// allow, else V = 1): a pack never straddles a row (rows) or a channel plane (channels),
// so the bias index is worked out once per pack, not per element.
template <typename T, typename B, int V>
__global__ void add_bias_rows_kernel(T *out, const B *bias, int64_t packs, int64_t n) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= packs)
        return;
    int64_t e = i * V;
    int64_t j = e % n;
    cuda_pack<T, V> v = ld_pack<V>(out, e);
#pragma unroll
    for (int k = 0; k < V; k++)
        v.v[k] = from_f32<T>(to_f32(v.v[k]) + to_f32(bias[j + k]));
    st_pack<V>(out, e, v);
}

template <typename T, typename B, int V>
__global__ void add_bias_channels_kernel(T *out, const B *bias, int64_t channels, int64_t plane,
                                         int64_t packs) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= packs)
        return;
    int64_t e = i * V;
    float b = to_f32(bias[(e / plane) % channels]);
    cuda_pack<T, V> v = ld_pack<V>(out, e);
#pragma unroll
    for (int k = 0; k < V; k++)
        v.v[k] = from_f32<T>(to_f32(v.v[k]) + b);
    st_pack<V>(out, e, v);
}

// Elements per pack for a run of `len` elements of dtype `dt` starting at `p`.
static int bias_pack(sd_dtype dt, const void *p, int64_t len) {
    int v = 16 / (int)cuda_dtype_size(dt);
    return ((uintptr_t)p % 16 == 0 && len % v == 0) ? v : 1;
}

sd_status cuda_add_bias_rows(void *out, sd_dtype dt, const sd_tensor *bias, int64_t rows,
                             int64_t n) {
    int v = bias_pack(dt, out, n);
    int64_t packs = rows * n / v;
    CUDA_DISPATCH(dt, T, CUDA_DISPATCH(bias->dtype, B, {
                      if (v == cuda_pack16<T>())
                          add_bias_rows_kernel<T, B, cuda_pack16<T>()>
                              <<<cuda_blocks(packs, 256), 256, 0, cuda_stream()>>>(
                                  (T *)out, (const B *)bias->data, packs, n);
                      else
                          add_bias_rows_kernel<T, B, 1>
                              <<<cuda_blocks(packs, 256), 256, 0, cuda_stream()>>>(
                                  (T *)out, (const B *)bias->data, packs, n);
                  }));
    return cuda_launched("add_bias_rows_kernel");
}

sd_status cuda_add_bias_channels(void *out, sd_dtype dt, const sd_tensor *bias, int64_t planes,
                                 int64_t channels, int64_t plane) {
    int v = bias_pack(dt, out, plane);
    int64_t packs = planes * channels * plane / v;
    CUDA_DISPATCH(dt, T, CUDA_DISPATCH(bias->dtype, B, {
                      if (v == cuda_pack16<T>())
                          add_bias_channels_kernel<T, B, cuda_pack16<T>()>
                              <<<cuda_blocks(packs, 256), 256, 0, cuda_stream()>>>(
                                  (T *)out, (const B *)bias->data, channels, plane, packs);
                      else
                          add_bias_channels_kernel<T, B, 1>
                              <<<cuda_blocks(packs, 256), 256, 0, cuda_stream()>>>(
                                  (T *)out, (const B *)bias->data, channels, plane, packs);
                  }));
    return cuda_launched("add_bias_channels_kernel");
}

// out = x w^T + bias (+ out with accumulate): cuBLASLt with the bias in the epilogue, or
// cuBLAS and a bias pass.
static sd_status linear_into(const sd_tensor *x, const sd_tensor *w, const sd_tensor *bias,
                             int64_t M, int64_t N, int64_t K, sd_tensor *out, bool accumulate) {
    const void *wd;
    SD_TRY(cuda_as_dtype(w, x->dtype, SCRATCH_CAST_A, &wd));
    if (out->dtype == x->dtype && M <= INT32_MAX && N <= INT32_MAX && K <= INT32_MAX) {
        bool done;
        SD_TRY(lt_linear(M, N, K, x->data, wd, bias, out->data, x->dtype, accumulate, &done));
        if (done)
            return SD_OK;
    }
    SD_TRY(cuda_gemm(true, M, N, K, x->data, K, 0, wd, K, 0, out->data, N, 0, 1, x->dtype,
                     out->dtype, accumulate));
    if (bias)
        SD_TRY(cuda_add_bias_rows(out->data, out->dtype, bias, M, N));
    return SD_OK;
}

// The checks of linear: x (..., K), w (N, K), bias (N) or NULL, out (..., N).
static sd_status cuda_linear_check(const sd_tensor *x, const sd_tensor *w, const sd_tensor *bias,
                                   const sd_tensor *out) {
    SD_TRY(cuda_need(x, "linear", "x"));
    SD_TRY(cuda_need_ndim(w, 2, "linear", "weight"));
    SD_TRY(cuda_need(out, "linear", "out"));
    SD_TRY(cuda_need_dtype(x, out, "linear", "out"));
    int64_t K = x->shape[x->ndim - 1], N = w->shape[0];
    if (w->shape[1] != K)
        return g_host->fail(SD_ERR_INVALID,
                            "linear: argument 'weight' has %lld input features, 'x' has %lld",
                            (long long)w->shape[1], (long long)K);
    if (bias)
        SD_TRY(cuda_need_vector(bias, N, "linear", "bias"));
    int64_t M = cuda_numel(x) / K;
    if (out->ndim != x->ndim || out->shape[out->ndim - 1] != N || cuda_numel(out) != M * N)
        return g_host->fail(SD_ERR_INVALID, "linear: argument 'out' must be x's shape with %lld "
                                            "features last",
                            (long long)N);
    return SD_OK;
}

// x (..., K), w (N, K), bias (N) or NULL -> out (..., N)
static sd_status cuda_linear(const sd_backend *, const sd_tensor *x, const sd_tensor *w,
                             const sd_tensor *bias, sd_tensor *out) {
    SD_TRY(cuda_linear_check(x, w, bias, out));
    int64_t K = x->shape[x->ndim - 1], N = w->shape[0], M = cuda_numel(x) / K;
    return linear_into(x, w, bias, M, N, K, out, false);
}

// x (..., K), w (N, K), bias (N) or NULL, res like out (may be out itself)
//   -> out (..., N) = linear(x) + res
static sd_status cuda_linear_add(const sd_backend *be, const sd_tensor *x, const sd_tensor *w,
                                 const sd_tensor *bias, const sd_tensor *res, sd_tensor *out) {
    SD_TRY(cuda_linear_check(x, w, bias, out));
    SD_TRY(cuda_need(res, "linear_add", "res"));
    SD_TRY(cuda_need_dtype(x, res, "linear_add", "res"));
    SD_TRY(cuda_need_shape(out, res, "linear_add", "res"));
    int64_t K = x->shape[x->ndim - 1], N = w->shape[0], M = cuda_numel(x) / K;
    if (res->data != out->data)
        SD_TRY(be->copy(be, out, res));
    return linear_into(x, w, bias, M, N, K, out, true);
}

// a (M, K) @ b (K, N), or b (N, K) with trans_b -> out (M, N)
static sd_status cuda_matmul(const sd_backend *, const sd_tensor *a, const sd_tensor *b,
                             int trans_b, sd_tensor *out) {
    SD_TRY(cuda_need_ndim(a, 2, "matmul", "a"));
    SD_TRY(cuda_need_ndim(b, 2, "matmul", "b"));
    SD_TRY(cuda_need_ndim(out, 2, "matmul", "out"));
    SD_TRY(cuda_need_dtype(a, out, "matmul", "out"));
    int64_t M = a->shape[0], K = a->shape[1];
    int64_t N = trans_b ? b->shape[0] : b->shape[1];
    int64_t Kb = trans_b ? b->shape[1] : b->shape[0];
    if (Kb != K)
        return g_host->fail(SD_ERR_INVALID, "matmul: inner dims differ: 'a' has %lld, 'b' has %lld",
                            (long long)K, (long long)Kb);
    if (out->shape[0] != M || out->shape[1] != N)
        return g_host->fail(SD_ERR_INVALID, "matmul: argument 'out' must have shape (%lld, %lld)",
                            (long long)M, (long long)N);
    const void *bd;
    SD_TRY(cuda_as_dtype(b, a->dtype, SCRATCH_CAST_A, &bd));
    return cuda_gemm(trans_b != 0, M, N, K, a->data, K, 0, bd, b->shape[1], 0, out->data, N, 0, 1,
                     a->dtype, out->dtype, false);
}

void cuda_fill_matmul(sd_backend *be) {
    be->linear = cuda_linear;
    be->linear_add = cuda_linear_add;
    be->matmul = cuda_matmul;
}
