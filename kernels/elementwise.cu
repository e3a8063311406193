// Elementwise ops of the CUDA backend: add, mul, scale, convert.
//
// All are memory bound: each element is read and written once and the arithmetic is one
// f32 operation, so the kernels are about moving 16 bytes per thread per access.
#include <cstdio>

#include "cuda_common.cuh"

// Internal linkage for everything but the fill function: the other family files may use
// the same names for their own kernels and helpers.
namespace {

// ----------------------------------------------------------------- add, mul ---

// out[i] = a[i] (+ or *) b[(i / repeat) % period], VEC elements a thread.
// same shape: period n, repeat 1; trailing broadcast: period numel(b), repeat 1;
// per channel of NCHW a with b (B, C): period B*C, repeat H*W (as cpu_binary_f32).
// With VEC > 1 the launcher has checked that each run of VEC elements of a meets either one
// aligned run of b (repeat 1, period % VEC == 0) or a single element of b (repeat % VEC == 0);
// either way n % VEC == 0, so there is no tail.
template <typename T, bool IS_MUL, int VEC>
__global__ void binary_kernel(const T *a, const T *b, T *out, int64_t n, int64_t period,
                              int64_t repeat) {
    int64_t i0 = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) * VEC;
    if (i0 >= n)
        return;
    cuda_pack<T, VEC> pa = ld_pack<VEC>(a, i0), pb, po;
    if (repeat == 1) {
        pb = ld_pack<VEC>(b, i0 % period);
    } else {
        T bv = b[(i0 / repeat) % period]; // one division per run, not per element
#pragma unroll
        for (int k = 0; k < VEC; k++)
            pb.v[k] = bv;
    }
#pragma unroll
    for (int k = 0; k < VEC; k++) {
        float x = to_f32(pa.v[k]), y = to_f32(pb.v[k]);
        po.v[k] = from_f32<T>(IS_MUL ? x * y : x + y);
    }
    st_pack<VEC>(out, i0, po);
}

template <typename T, bool IS_MUL>
static void launch_binary(const void *a, const void *b, void *out, int64_t n, int64_t period,
                          int64_t repeat) {
    constexpr int V = cuda_pack16<T>();
    if ((repeat == 1 && period % V == 0) || repeat % V == 0)
        binary_kernel<T, IS_MUL, V><<<cuda_blocks(n / V, 256), 256, 0, cuda_stream()>>>(
            (const T *)a, (const T *)b, (T *)out, n, period, repeat);
    else
        binary_kernel<T, IS_MUL, 1><<<cuda_blocks(n, 256), 256, 0, cuda_stream()>>>(
            (const T *)a, (const T *)b, (T *)out, n, period, repeat);
}

// Shape as text in the CPU backend's form, "(2, 320)", for the broadcast error.
static const char *shape_str(const sd_tensor *t, char *buf, size_t len) {
    int at = std::snprintf(buf, len, "(");
    for (int i = 0; i < t->ndim && at < (int)len; i++)
        at += std::snprintf(buf + at, len - at, i ? ", %lld" : "%lld", (long long)t->shape[i]);
    if (at < (int)len)
        std::snprintf(buf + at, len - at, ")");
    return buf;
}

// How b broadcasts over a (sdcore.h) as a period and a repeat: the CPU backend's
// broadcast_plan, same rules, same message.
static sd_status broadcast_plan(const sd_tensor *a, const sd_tensor *b, const char *op,
                                int64_t *period, int64_t *repeat) {
    int64_t na = cuda_numel(a), nb = cuda_numel(b);
    *repeat = 1;
    *period = nb;
    bool same = a->ndim == b->ndim;
    for (int i = 0; same && i < a->ndim; i++)
        same = a->shape[i] == b->shape[i];
    if (same)
        return SD_OK;
    // per channel: a (B, C, H, W), b (B, C)
    if (a->ndim == 4 && b->ndim == 2 && b->shape[0] == a->shape[0] && b->shape[1] == a->shape[1]) {
        *repeat = a->shape[2] * a->shape[3];
        return SD_OK;
    }
    // trailing: b's dims equal a's last b->ndim dims
    if (b->ndim <= a->ndim) {
        int off = a->ndim - b->ndim;
        bool ok = true;
        for (int i = 0; i < b->ndim; i++)
            ok = ok && b->shape[i] == a->shape[off + i];
        if (ok && na % nb == 0)
            return SD_OK;
    }
    char sa[96], sb[96];
    return g_host->fail(SD_ERR_INVALID,
                        "%s: 'b' of shape %s does not broadcast over 'a' of shape %s", op,
                        shape_str(b, sb, sizeof sb), shape_str(a, sa, sizeof sa));
}

static sd_status binary(const sd_tensor *a, const sd_tensor *b, sd_tensor *out, bool is_mul) {
    const char *op = is_mul ? "mul" : "add";
    SD_TRY(cuda_need(a, op, "a"));
    SD_TRY(cuda_need(b, op, "b"));
    SD_TRY(cuda_need(out, op, "out"));
    SD_TRY(cuda_need_dtype(a, b, op, "b"));
    SD_TRY(cuda_need_dtype(a, out, op, "out"));
    SD_TRY(cuda_need_shape(a, out, op, "out"));
    int64_t period, repeat;
    SD_TRY(broadcast_plan(a, b, op, &period, &repeat));
    int64_t n = cuda_numel(a);
    if (is_mul) {
        CUDA_DISPATCH(a->dtype, T,
                      launch_binary<T, true>(a->data, b->data, out->data, n, period, repeat));
    } else {
        CUDA_DISPATCH(a->dtype, T,
                      launch_binary<T, false>(a->data, b->data, out->data, n, period, repeat));
    }
    return cuda_launched("binary_kernel");
}

static sd_status cuda_add(const sd_backend *, const sd_tensor *a, const sd_tensor *b,
                          sd_tensor *out) {
    return binary(a, b, out, false);
}

static sd_status cuda_mul(const sd_backend *, const sd_tensor *a, const sd_tensor *b,
                          sd_tensor *out) {
    return binary(a, b, out, true);
}

// ----------------------------------------------------------------- scale ------

template <typename T> __global__ void scale_kernel(const T *x, float s, T *out, int64_t n) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        st_f32(out, i, ld_f32(x, i) * s);
}

static sd_status cuda_scale(const sd_backend *, const sd_tensor *x, float s, sd_tensor *out) {
    SD_TRY(cuda_need(x, "scale", "x"));
    SD_TRY(cuda_need(out, "scale", "out"));
    SD_TRY(cuda_need_shape(x, out, "scale", "out"));
    SD_TRY(cuda_need_dtype(x, out, "scale", "out"));
    int64_t n = cuda_numel(x);
    CUDA_DISPATCH(x->dtype, T,
                  scale_kernel<T><<<cuda_blocks(n, 256), 256, 0, cuda_stream()>>>(
                      (const T *)x->data, s, (T *)out->data, n));
    return cuda_launched("scale_kernel");
}

// ----------------------------------------------------------------- convert ----

// out[i] = x[i] rounded to D, through f32: widening is exact and __float2half_rn /
// __float2bfloat16_rn round to nearest even like sd_narrow_from_f32, NaN and inf kept.
// VEC elements a thread when n % VEC == 0 (the launcher's choice), else VEC is 1.
template <typename S, typename D, int VEC>
__global__ void convert_kernel(const S *x, D *out, int64_t n) {
    int64_t i0 = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) * VEC;
    if (i0 >= n)
        return;
    cuda_pack<S, VEC> px = ld_pack<VEC>(x, i0);
    cuda_pack<D, VEC> po;
#pragma unroll
    for (int k = 0; k < VEC; k++)
        po.v[k] = from_f32<D>(to_f32(px.v[k]));
    st_pack<VEC>(out, i0, po);
}

template <typename S, typename D> static void launch_convert(const void *x, void *out, int64_t n) {
    // 16-byte accesses on the wider side: 4 elements with an f32 side, else 8
    constexpr int V = sizeof(S) == 4 || sizeof(D) == 4 ? 4 : 8;
    if (n % V == 0)
        convert_kernel<S, D, V><<<cuda_blocks(n / V, 256), 256, 0, cuda_stream()>>>(
            (const S *)x, (D *)out, n);
    else
        convert_kernel<S, D, 1><<<cuda_blocks(n, 256), 256, 0, cuda_stream()>>>((const S *)x,
                                                                                (D *)out, n);
}

// The exception to one dtype per op: x and out may differ, that is the point.
static sd_status cuda_convert(const sd_backend *, const sd_tensor *x, sd_tensor *out) {
    SD_TRY(cuda_need(x, "convert", "x"));
    SD_TRY(cuda_need(out, "convert", "out"));
    SD_TRY(cuda_need_shape(x, out, "convert", "out"));
    int64_t n = cuda_numel(x);
    if (x->dtype == out->dtype) {
        if (x->data == out->data)
            return SD_OK;
        // a device-to-device copy on the op stream: allowed inside a captured graph
        return cuda_check(cudaMemcpyAsync(out->data, x->data, sd_nbytes_dev(x),
                                          cudaMemcpyDeviceToDevice, cuda_stream()),
                          "convert (cudaMemcpyAsync device to device)");
    }
    if (x->data == out->data)
        return g_host->fail(SD_ERR_INVALID,
                            "convert: 'out' must not be 'x' when the dtypes differ (not in place)");
    CUDA_DISPATCH(x->dtype, S,
                  CUDA_DISPATCH(out->dtype, D, launch_convert<S, D>(x->data, out->data, n)));
    return cuda_launched("convert_kernel");
}

} // namespace

void cuda_fill_elementwise(sd_backend *be) {
    be->add = cuda_add;
    be->mul = cuda_mul;
    be->scale = cuda_scale;
    be->convert = cuda_convert;
}
