// gelu, quick_gelu, silu, geglu on the CUDA backend.
//
// Memory bound like the elementwise ops: 16-byte loads and stores, math in f32 with the
// accurate erff/expf/tanhf (not the __expf intrinsics: their error near 0 would show in
// the f32 comparison with the CPU backend and costs nothing measurable here).
// GEGLU's kernel comes from kernels/dev/geglu.cu (version 2 there).
#include "cuda_common.cuh"

// Internal linkage for everything but the fill function: the other family files may use
// the same names for their own kernels and helpers.
namespace {

// ----------------------------------------------------------------- functions --

// The formulas of csrc/cpu/activation.c, in the same order of operations.
struct gelu_erf_fn {
    __device__ float operator()(float v) const {
        return 0.5f * v * (1.0f + erff(v * 0.70710678118654752f));
    }
};

struct gelu_tanh_fn {
    __device__ float operator()(float v) const {
        float inner = 0.7978845608028654f * (v + 0.044715f * v * v * v);
        return 0.5f * v * (1.0f + tanhf(inner));
    }
};

struct quick_gelu_fn { // x * sigmoid(1.702 x)
    __device__ float operator()(float v) const { return v / (1.0f + expf(-1.702f * v)); }
};

struct silu_fn { // x * sigmoid(x)
    __device__ float operator()(float v) const { return v / (1.0f + expf(-v)); }
};

// ----------------------------------------------------------------- unary ------

// out[i] = f(x[i]), VEC elements a thread; the launcher picks VEC > 1 only when n % VEC == 0.
template <typename T, typename F, int VEC>
__global__ void unary_kernel(const T *x, T *out, int64_t n, F f) {
    int64_t i0 = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) * VEC;
    if (i0 >= n)
        return;
    cuda_pack<T, VEC> p = ld_pack<VEC>(x, i0);
#pragma unroll
    for (int k = 0; k < VEC; k++)
        p.v[k] = from_f32<T>(f(to_f32(p.v[k])));
    st_pack<VEC>(out, i0, p);
}

template <typename T, typename F> static void launch_unary(const void *x, void *out, int64_t n) {
    constexpr int V = cuda_pack16<T>();
    if (n % V == 0)
        unary_kernel<T, F, V><<<cuda_blocks(n / V, 256), 256, 0, cuda_stream()>>>(
            (const T *)x, (T *)out, n, F());
    else
        unary_kernel<T, F, 1><<<cuda_blocks(n, 256), 256, 0, cuda_stream()>>>(
            (const T *)x, (T *)out, n, F());
}

static sd_status unary_check(const sd_tensor *x, const sd_tensor *out, const char *op) {
    SD_TRY(cuda_need(x, op, "x"));
    SD_TRY(cuda_need(out, op, "out"));
    SD_TRY(cuda_need_dtype(x, out, op, "out"));
    return cuda_need_shape(x, out, op, "out");
}

template <typename F> static sd_status unary(const sd_tensor *x, sd_tensor *out, const char *op) {
    SD_TRY(unary_check(x, out, op));
    CUDA_DISPATCH(x->dtype, T, launch_unary<T, F>(x->data, out->data, cuda_numel(x)));
    return cuda_launched("unary_kernel");
}

static sd_status cuda_gelu(const sd_backend *, const sd_tensor *x, int tanh_approx,
                           sd_tensor *out) {
    return tanh_approx ? unary<gelu_tanh_fn>(x, out, "gelu") : unary<gelu_erf_fn>(x, out, "gelu");
}

static sd_status cuda_quick_gelu(const sd_backend *, const sd_tensor *x, sd_tensor *out) {
    return unary<quick_gelu_fn>(x, out, "quick_gelu");
}

static sd_status cuda_silu(const sd_backend *, const sd_tensor *x, sd_tensor *out) {
    return unary<silu_fn>(x, out, "silu");
}

// ----------------------------------------------------------------- geglu ------

// x (M, 2N) -> out (M, N): out[m, j] = x[m, j] * gelu_erf(x[m, N + j]).
// VEC consecutive outputs of one row a thread; with VEC > 1 the launcher has checked
// N % VEC == 0, so a run never crosses a row and both halves' loads are aligned.
template <typename T, int VEC>
__global__ void geglu_kernel(const T *x, T *out, int64_t M, int64_t N) {
    int64_t o0 = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) * VEC;
    if (o0 >= M * N)
        return;
    int64_t m = o0 / N, j = o0 - m * N;
    const T *row = x + m * 2 * N;
    cuda_pack<T, VEC> pv = ld_pack<VEC>(row, j), pg = ld_pack<VEC>(row, N + j), po;
#pragma unroll
    for (int k = 0; k < VEC; k++) {
        float v = to_f32(pv.v[k]), g = to_f32(pg.v[k]);
        po.v[k] = from_f32<T>(v * 0.5f * g * (1.0f + erff(g * 0.70710678118654752f)));
    }
    st_pack<VEC>(out, o0, po);
}

template <typename T> static void launch_geglu(const void *x, void *out, int64_t M, int64_t N) {
    constexpr int V = cuda_pack16<T>();
    if (N % V == 0)
        geglu_kernel<T, V><<<cuda_blocks(M * N / V, 256), 256, 0, cuda_stream()>>>(
            (const T *)x, (T *)out, M, N);
    else
        geglu_kernel<T, 1><<<cuda_blocks(M * N, 256), 256, 0, cuda_stream()>>>((const T *)x,
                                                                              (T *)out, M, N);
}

// x (..., 2N) -> out (..., N)
static sd_status cuda_geglu(const sd_backend *, const sd_tensor *x, sd_tensor *out) {
    SD_TRY(cuda_need(x, "geglu", "x"));
    SD_TRY(cuda_need(out, "geglu", "out"));
    SD_TRY(cuda_need_dtype(x, out, "geglu", "out"));
    int64_t N2 = x->shape[x->ndim - 1];
    if (N2 % 2 != 0)
        return g_host->fail(SD_ERR_INVALID, "geglu: last dim of 'x' (%lld) must be even",
                            (long long)N2);
    sd_tensor expect = *x;
    expect.shape[x->ndim - 1] = N2 / 2;
    SD_TRY(cuda_need_shape(&expect, out, "geglu", "out"));
    int64_t M = cuda_numel(x) / N2;
    CUDA_DISPATCH(x->dtype, T, launch_geglu<T>(x->data, out->data, M, N2 / 2));
    return cuda_launched("geglu_kernel");
}

} // namespace

void cuda_fill_activation(sd_backend *be) {
    be->gelu = cuda_gelu;
    be->quick_gelu = cuda_quick_gelu;
    be->silu = cuda_silu;
    be->geglu = cuda_geglu;
}
