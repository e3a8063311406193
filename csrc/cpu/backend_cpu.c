/* The CPU backend table: argument checks, weight widening, then the plain ops. */
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "cpu_ops.h"
#include "sampling/sampler_ops.h"

/* ------------------------------------------------------------- checks ---- */

static sd_status need(const sd_tensor *t, const char *op, const char *arg) {
    if (!t || !t->data)
        return sd_fail(SD_ERR_INVALID, "%s: argument '%s' is missing", op, arg);
    if (t->device != SD_CPU)
        return sd_fail(SD_ERR_INVALID, "%s: argument '%s' is not on the CPU", op, arg);
    if (t->ndim < 1 || t->ndim > SD_MAX_DIMS)
        return sd_fail(SD_ERR_INVALID, "%s: argument '%s' has %d dims", op, arg, t->ndim);
    for (int i = 0; i < t->ndim; i++)
        if (t->shape[i] < 1)
            return sd_fail(SD_ERR_INVALID, "%s: argument '%s' has an empty dim %d", op, arg, i);
    return SD_OK;
}

/* an activation: present, on the CPU, f32 */
static sd_status need_f32(const sd_tensor *t, const char *op, const char *arg) {
    SD_TRY(need(t, op, arg));
    if (t->dtype != SD_F32)
        return sd_fail(SD_ERR_INVALID, "%s: argument '%s' must be float32, got %s", op, arg,
                       sd_dtype_name(t->dtype));
    return SD_OK;
}

static sd_status need_ndim(const sd_tensor *t, int ndim, const char *op, const char *arg) {
    if (t->ndim != ndim)
        return sd_fail(SD_ERR_INVALID, "%s: argument '%s' must have %d dims, got %d", op, arg,
                       ndim, t->ndim);
    return SD_OK;
}

static sd_status need_same_shape(const sd_tensor *a, const sd_tensor *b, const char *op,
                                 const char *arg) {
    char sa[96], sb[96];
    if (a->ndim != b->ndim || memcmp(a->shape, b->shape, sizeof a->shape) != 0)
        return sd_fail(SD_ERR_INVALID, "%s: argument '%s' has shape %s, expected %s", op, arg,
                       sd_shape_str(b, sb, sizeof sb), sd_shape_str(a, sa, sizeof sa));
    return SD_OK;
}

static sd_status need_vector(const sd_tensor *t, int64_t len, const char *op, const char *arg) {
    SD_TRY(need(t, op, arg));
    if (t->ndim != 1 || t->shape[0] != len)
        return sd_fail(SD_ERR_INVALID, "%s: argument '%s' must have shape (%lld,)", op, arg,
                       (long long)len);
    return SD_OK;
}

/* The f32 data of a weight; a f16/bf16 weight is widened into a buffer the caller frees. */
static sd_status weight_f32(const sd_tensor *w, const float **data, float **owned,
                            const char *op) {
    *owned = NULL;
    if (w->dtype == SD_F32) {
        *data = w->data;
        return SD_OK;
    }
    *owned = malloc(sizeof(float) * (size_t)sd_numel(w));
    if (!*owned)
        return sd_fail(SD_ERR_NOMEM, "%s: cannot allocate a widened weight", op);
    cpu_widen_to_f32(w->data, w->dtype, *owned, sd_numel(w));
    *data = *owned;
    return SD_OK;
}

/* ------------------------------------------------------------- memory ---- */

static sd_status cpu_alloc(const sd_backend *be, sd_tensor *t) {
    (void)be;
    size_t bytes = sd_nbytes(t);
    /* 64-byte alignment for AVX-512 loads; aligned_alloc wants a multiple of it */
    size_t rounded = (bytes + 63) / 64 * 64;
    t->data = aligned_alloc(64, rounded ? rounded : 64);
    if (!t->data)
        return sd_fail(SD_ERR_NOMEM, "cannot allocate %zu bytes on the CPU", bytes);
    t->device = SD_CPU;
    return SD_OK;
}

static void cpu_free(const sd_backend *be, sd_tensor *t) {
    (void)be;
    free(t->data);
    t->data = NULL;
}

static sd_status cpu_upload(const sd_backend *be, sd_tensor *dst, const void *src) {
    (void)be;
    memcpy(dst->data, src, sd_nbytes(dst));
    return SD_OK;
}

static sd_status cpu_download(const sd_backend *be, void *dst, const sd_tensor *src) {
    (void)be;
    memcpy(dst, src->data, sd_nbytes(src));
    return SD_OK;
}

static sd_status cpu_synchronize(const sd_backend *be) {
    (void)be;
    return SD_OK;
}

/* ---------------------------------------------------------------- ops ---- */

/* out = linear(x, w, bias) [+ res]; op names the caller in errors */
static sd_status linear_run(const sd_tensor *x, const sd_tensor *w, const sd_tensor *bias,
                            const sd_tensor *res, sd_tensor *out, const char *op) {
    SD_TRY(need_f32(x, op, "x"));
    SD_TRY(need(w, op, "weight"));
    SD_TRY(need_ndim(w, 2, op, "weight"));
    int64_t K = x->shape[x->ndim - 1], N = w->shape[0];
    if (w->shape[1] != K)
        return sd_fail(SD_ERR_INVALID, "%s: weight has %lld input features, x has %lld", op,
                       (long long)w->shape[1], (long long)K);
    if (bias)
        SD_TRY(need_vector(bias, N, op, "bias"));
    SD_TRY(need_f32(out, op, "out"));
    int64_t M = sd_numel(x) / K;
    if (out->ndim != x->ndim || sd_numel(out) != M * N || out->shape[out->ndim - 1] != N)
        return sd_fail(SD_ERR_INVALID, "%s: argument 'out' must be x's shape with last dim %lld",
                       op, (long long)N);
    if (res) {
        SD_TRY(need_f32(res, op, "res"));
        SD_TRY(need_same_shape(out, res, op, "res"));
    }
    const float *wd = NULL, *bd = NULL;
    float *wown, *bown = NULL;
    SD_TRY(weight_f32(w, &wd, &wown, op));
    if (bias) {
        sd_status s = weight_f32(bias, &bd, &bown, op);
        if (s != SD_OK) {
            free(wown);
            return s;
        }
    }
    cpu_linear_f32(x->data, wd, bd, res ? res->data : NULL, out->data, M, K, N);
    free(wown);
    free(bown);
    return SD_OK;
}

static sd_status cpu_linear(const sd_backend *be, const sd_tensor *x, const sd_tensor *w,
                            const sd_tensor *bias, sd_tensor *out) {
    (void)be;
    return linear_run(x, w, bias, NULL, out, "linear");
}

/* the GEMM accumulates onto res + bias (res may be out) */
static sd_status cpu_linear_add(const sd_backend *be, const sd_tensor *x, const sd_tensor *w,
                                const sd_tensor *bias, const sd_tensor *res, sd_tensor *out) {
    (void)be;
    SD_TRY(need(res, "linear_add", "res"));
    return linear_run(x, w, bias, res, out, "linear_add");
}

static sd_status cpu_matmul(const sd_backend *be, const sd_tensor *a, const sd_tensor *b,
                            int trans_b, sd_tensor *out) {
    (void)be;
    const char *op = "matmul";
    SD_TRY(need_f32(a, op, "a"));
    SD_TRY(need_f32(b, op, "b"));
    SD_TRY(need_f32(out, op, "out"));
    SD_TRY(need_ndim(a, 2, op, "a"));
    SD_TRY(need_ndim(b, 2, op, "b"));
    SD_TRY(need_ndim(out, 2, op, "out"));
    int64_t M = a->shape[0], K = a->shape[1];
    int64_t bk = trans_b ? b->shape[1] : b->shape[0], N = trans_b ? b->shape[0] : b->shape[1];
    if (bk != K)
        return sd_fail(SD_ERR_INVALID, "matmul: inner dims differ (%lld and %lld)", (long long)K,
                       (long long)bk);
    if (out->shape[0] != M || out->shape[1] != N)
        return sd_fail(SD_ERR_INVALID, "matmul: argument 'out' must be (%lld, %lld)",
                       (long long)M, (long long)N);
    cpu_sgemm(trans_b, M, N, K, 1.0f, a->data, K, b->data, trans_b ? K : N, 0.0f, out->data, N);
    return SD_OK;
}

/* out = conv2d(x, w, bias) [+ res: (B, OC, OH, OW) or (B, OC, 1, 1)]; op names the caller */
static sd_status conv2d_run(const sd_tensor *x, const sd_tensor *w, const sd_tensor *bias,
                            int stride, int padding, const sd_tensor *res, sd_tensor *out,
                            const char *op) {
    SD_TRY(need_f32(x, op, "x"));
    SD_TRY(need_ndim(x, 4, op, "x"));
    SD_TRY(need(w, op, "weight"));
    SD_TRY(need_ndim(w, 4, op, "weight"));
    int64_t B = x->shape[0], C = x->shape[1], H = x->shape[2], W = x->shape[3];
    int64_t OC = w->shape[0], KH = w->shape[2], KW = w->shape[3];
    if (w->shape[1] != C)
        return sd_fail(SD_ERR_INVALID, "%s: weight has %lld input channels, x has %lld", op,
                       (long long)w->shape[1], (long long)C);
    if (stride < 1 || padding < 0)
        return sd_fail(SD_ERR_INVALID, "%s: stride must be >= 1 and padding >= 0", op);
    if (H + 2 * padding < KH || W + 2 * padding < KW)
        return sd_fail(SD_ERR_INVALID, "%s: kernel larger than the padded input", op);
    if (bias)
        SD_TRY(need_vector(bias, OC, op, "bias"));
    SD_TRY(need_f32(out, op, "out"));
    int64_t OH = (H + 2 * padding - KH) / stride + 1, OW = (W + 2 * padding - KW) / stride + 1;
    if (out->ndim != 4 || out->shape[0] != B || out->shape[1] != OC || out->shape[2] != OH ||
        out->shape[3] != OW)
        return sd_fail(SD_ERR_INVALID, "%s: argument 'out' must be (%lld, %lld, %lld, %lld)", op,
                       (long long)B, (long long)OC, (long long)OH, (long long)OW);
    bool per_channel = false;
    if (res) {
        SD_TRY(need_f32(res, op, "res"));
        SD_TRY(need_ndim(res, 4, op, "res"));
        per_channel = res->shape[2] == 1 && res->shape[3] == 1;
        if (res->shape[0] != B || res->shape[1] != OC ||
            !(per_channel || (res->shape[2] == OH && res->shape[3] == OW)))
            return sd_fail(SD_ERR_INVALID,
                           "%s: argument 'res' must have shape (%lld, %lld, %lld, %lld) or "
                           "(%lld, %lld, 1, 1)",
                           op, (long long)B, (long long)OC, (long long)OH, (long long)OW,
                           (long long)B, (long long)OC);
    }
    const float *wd = NULL, *bd = NULL;
    float *wown, *bown = NULL;
    SD_TRY(weight_f32(w, &wd, &wown, op));
    sd_status s = bias ? weight_f32(bias, &bd, &bown, op) : SD_OK;
    if (s == SD_OK)
        s = cpu_conv2d_f32(x->data, wd, bd, res ? res->data : NULL, per_channel, out->data,
                           (int)B, (int)C, (int)H, (int)W, (int)OC, (int)KH, (int)KW, stride,
                           padding);
    free(wown);
    free(bown);
    return s;
}

static sd_status cpu_conv2d(const sd_backend *be, const sd_tensor *x, const sd_tensor *w,
                            const sd_tensor *bias, int stride, int padding, sd_tensor *out) {
    (void)be;
    return conv2d_run(x, w, bias, stride, padding, NULL, out, "conv2d");
}

/* the GEMM accumulates onto res + bias (res may be out) */
static sd_status cpu_conv2d_add(const sd_backend *be, const sd_tensor *x, const sd_tensor *w,
                                const sd_tensor *bias, int stride, int padding,
                                const sd_tensor *res, sd_tensor *out) {
    (void)be;
    SD_TRY(need(res, "conv2d_add", "res"));
    return conv2d_run(x, w, bias, stride, padding, res, out, "conv2d_add");
}

/* gamma and beta of a norm over C channels, widened */
static sd_status norm_params(const sd_tensor *gamma, const sd_tensor *beta, int64_t C,
                             const char *op, const float **g, const float **b, float **gown,
                             float **bown) {
    *gown = *bown = NULL;
    SD_TRY(need_vector(gamma, C, op, "gamma"));
    SD_TRY(need_vector(beta, C, op, "beta"));
    SD_TRY(weight_f32(gamma, g, gown, op));
    sd_status s = weight_f32(beta, b, bown, op);
    if (s != SD_OK) {
        free(*gown);
        *gown = NULL;
    }
    return s;
}

static sd_status cpu_group_norm(const sd_backend *be, const sd_tensor *x, const sd_tensor *gamma,
                                const sd_tensor *beta, int groups, float eps, int fuse_silu,
                                sd_tensor *out) {
    (void)be;
    const char *op = "group_norm";
    SD_TRY(need_f32(x, op, "x"));
    if (x->ndim < 2)
        return sd_fail(SD_ERR_INVALID, "group_norm: argument 'x' must be (B, C, ...)");
    int64_t B = x->shape[0], C = x->shape[1], S = sd_numel(x) / (B * C);
    if (groups < 1 || C % groups != 0)
        return sd_fail(SD_ERR_INVALID, "group_norm: %lld channels do not split into %d groups",
                       (long long)C, groups);
    if (!(eps >= 0.0f))
        return sd_fail(SD_ERR_INVALID, "group_norm: eps must be >= 0");
    SD_TRY(need_f32(out, op, "out"));
    SD_TRY(need_same_shape(x, out, op, "out"));
    const float *g, *b;
    float *gown, *bown;
    SD_TRY(norm_params(gamma, beta, C, op, &g, &b, &gown, &bown));
    cpu_group_norm_f32(x->data, g, b, out->data, (int)B, (int)C, S, groups, eps, fuse_silu);
    free(gown);
    free(bown);
    return SD_OK;
}

static sd_status cpu_layer_norm(const sd_backend *be, const sd_tensor *x, const sd_tensor *gamma,
                                const sd_tensor *beta, float eps, sd_tensor *out) {
    (void)be;
    const char *op = "layer_norm";
    SD_TRY(need_f32(x, op, "x"));
    SD_TRY(need_f32(out, op, "out"));
    SD_TRY(need_same_shape(x, out, op, "out"));
    if (!(eps >= 0.0f))
        return sd_fail(SD_ERR_INVALID, "layer_norm: eps must be >= 0");
    int64_t C = x->shape[x->ndim - 1];
    const float *g, *b;
    float *gown, *bown;
    SD_TRY(norm_params(gamma, beta, C, op, &g, &b, &gown, &bown));
    cpu_layer_norm_f32(x->data, g, b, out->data, sd_numel(x) / C, (int)C, eps);
    free(gown);
    free(bown);
    return SD_OK;
}

static sd_status cpu_attention(const sd_backend *be, const sd_tensor *q, const sd_tensor *k,
                               const sd_tensor *v, int heads, int causal, sd_tensor *out) {
    (void)be;
    const char *op = "attention";
    SD_TRY(need_f32(q, op, "q"));
    SD_TRY(need_f32(k, op, "k"));
    SD_TRY(need_f32(v, op, "v"));
    SD_TRY(need_f32(out, op, "out"));
    SD_TRY(need_ndim(q, 3, op, "q"));
    SD_TRY(need_ndim(k, 3, op, "k"));
    SD_TRY(need_same_shape(k, v, op, "v"));
    SD_TRY(need_same_shape(q, out, op, "out"));
    int64_t B = q->shape[0], Tq = q->shape[1], HD = q->shape[2], Tk = k->shape[1];
    if (k->shape[0] != B || k->shape[2] != HD)
        return sd_fail(SD_ERR_INVALID, "attention: argument 'k' must be (%lld, Tk, %lld)", (long long)B,
                       (long long)HD);
    if (heads < 1 || HD % heads != 0)
        return sd_fail(SD_ERR_INVALID, "attention: width %lld does not split into %d heads",
                       (long long)HD, heads);
    if (causal && Tq != Tk)
        return sd_fail(SD_ERR_INVALID, "attention: a causal mask needs as many keys as queries");
    return cpu_attention_f32(q->data, k->data, v->data, out->data, (int)B, (int)Tq, (int)Tk,
                             heads, (int)(HD / heads), causal);
}

static sd_status cpu_softmax(const sd_backend *be, const sd_tensor *x, sd_tensor *out) {
    (void)be;
    SD_TRY(need_f32(x, "softmax", "x"));
    SD_TRY(need_f32(out, "softmax", "out"));
    SD_TRY(need_same_shape(x, out, "softmax", "out"));
    int64_t N = x->shape[x->ndim - 1];
    cpu_softmax_f32(x->data, out->data, sd_numel(x) / N, N);
    return SD_OK;
}

static sd_status unary_check(const sd_tensor *x, const sd_tensor *out, const char *op) {
    SD_TRY(need_f32(x, op, "x"));
    SD_TRY(need_f32(out, op, "out"));
    return need_same_shape(x, out, op, "out");
}

static sd_status cpu_gelu(const sd_backend *be, const sd_tensor *x, int tanh_approx,
                          sd_tensor *out) {
    (void)be;
    SD_TRY(unary_check(x, out, "gelu"));
    cpu_gelu_f32(x->data, out->data, sd_numel(x), tanh_approx);
    return SD_OK;
}

static sd_status cpu_quick_gelu(const sd_backend *be, const sd_tensor *x, sd_tensor *out) {
    (void)be;
    SD_TRY(unary_check(x, out, "quick_gelu"));
    cpu_quick_gelu_f32(x->data, out->data, sd_numel(x));
    return SD_OK;
}

static sd_status cpu_silu(const sd_backend *be, const sd_tensor *x, sd_tensor *out) {
    (void)be;
    SD_TRY(unary_check(x, out, "silu"));
    cpu_silu_f32(x->data, out->data, sd_numel(x));
    return SD_OK;
}

static sd_status cpu_geglu(const sd_backend *be, const sd_tensor *x, sd_tensor *out) {
    (void)be;
    SD_TRY(need_f32(x, "geglu", "x"));
    SD_TRY(need_f32(out, "geglu", "out"));
    int64_t N2 = x->shape[x->ndim - 1];
    if (N2 % 2 != 0)
        return sd_fail(SD_ERR_INVALID, "geglu: last dim of 'x' (%lld) must be even",
                       (long long)N2);
    sd_tensor expect = *x;
    expect.shape[x->ndim - 1] = N2 / 2;
    SD_TRY(need_same_shape(&expect, out, "geglu", "out"));
    cpu_geglu_f32(x->data, out->data, sd_numel(x) / N2, N2 / 2);
    return SD_OK;
}

static sd_status cpu_upsample_nearest2x(const sd_backend *be, const sd_tensor *x, sd_tensor *out) {
    (void)be;
    const char *op = "upsample_nearest2x";
    SD_TRY(need_f32(x, op, "x"));
    SD_TRY(need_ndim(x, 4, op, "x"));
    SD_TRY(need_f32(out, op, "out"));
    sd_tensor expect = *x;
    expect.shape[2] *= 2;
    expect.shape[3] *= 2;
    SD_TRY(need_same_shape(&expect, out, op, "out"));
    cpu_upsample_nearest2x_f32(x->data, out->data, x->shape[0] * x->shape[1], x->shape[2],
                               x->shape[3]);
    return SD_OK;
}

static sd_status cpu_concat_channels(const sd_backend *be, const sd_tensor *a, const sd_tensor *b,
                                     sd_tensor *out) {
    (void)be;
    const char *op = "concat_channels";
    SD_TRY(need_f32(a, op, "a"));
    SD_TRY(need_f32(b, op, "b"));
    SD_TRY(need_f32(out, op, "out"));
    SD_TRY(need_ndim(a, 4, op, "a"));
    SD_TRY(need_ndim(b, 4, op, "b"));
    if (a->shape[0] != b->shape[0] || a->shape[2] != b->shape[2] || a->shape[3] != b->shape[3])
        return sd_fail(SD_ERR_INVALID, "concat_channels: 'a' and 'b' differ outside channels");
    sd_tensor expect = *a;
    expect.shape[1] += b->shape[1];
    SD_TRY(need_same_shape(&expect, out, op, "out"));
    cpu_concat_channels_f32(a->data, b->data, out->data, a->shape[0], a->shape[1], b->shape[1],
                            a->shape[2] * a->shape[3]);
    return SD_OK;
}

/* Work out how b broadcasts over a (see sdcore.h) as a period and a repeat. */
static sd_status broadcast_plan(const sd_tensor *a, const sd_tensor *b, const char *op,
                                int64_t *period, int64_t *repeat) {
    int64_t na = sd_numel(a), nb = sd_numel(b);
    *repeat = 1;
    *period = nb;
    if (b->ndim == a->ndim && memcmp(a->shape, b->shape, sizeof a->shape) == 0)
        return SD_OK;
    /* per channel: a (B, C, H, W), b (B, C) */
    if (a->ndim == 4 && b->ndim == 2 && b->shape[0] == a->shape[0] && b->shape[1] == a->shape[1]) {
        *repeat = a->shape[2] * a->shape[3];
        return SD_OK;
    }
    /* trailing: b's dims equal a's last b->ndim dims */
    if (b->ndim <= a->ndim) {
        int off = a->ndim - b->ndim, ok = 1;
        for (int i = 0; i < b->ndim; i++)
            ok &= b->shape[i] == a->shape[off + i];
        if (ok && na % nb == 0)
            return SD_OK;
    }
    char sa[96], sb[96];
    return sd_fail(SD_ERR_INVALID, "%s: 'b' of shape %s does not broadcast over 'a' of shape %s",
                   op, sd_shape_str(b, sb, sizeof sb), sd_shape_str(a, sa, sizeof sa));
}

static sd_status binary(const sd_tensor *a, const sd_tensor *b, sd_tensor *out, int is_mul) {
    const char *op = is_mul ? "mul" : "add";
    SD_TRY(need_f32(a, op, "a"));
    SD_TRY(need_f32(b, op, "b"));
    SD_TRY(need_f32(out, op, "out"));
    SD_TRY(need_same_shape(a, out, op, "out"));
    int64_t period, repeat;
    SD_TRY(broadcast_plan(a, b, op, &period, &repeat));
    cpu_binary_f32(a->data, b->data, out->data, sd_numel(a), period, repeat, is_mul);
    return SD_OK;
}

static sd_status cpu_add(const sd_backend *be, const sd_tensor *a, const sd_tensor *b,
                         sd_tensor *out) {
    (void)be;
    return binary(a, b, out, 0);
}

static sd_status cpu_mul(const sd_backend *be, const sd_tensor *a, const sd_tensor *b,
                         sd_tensor *out) {
    (void)be;
    return binary(a, b, out, 1);
}

static sd_status cpu_scale(const sd_backend *be, const sd_tensor *x, float s, sd_tensor *out) {
    (void)be;
    SD_TRY(unary_check(x, out, "scale"));
    cpu_scale_f32(x->data, s, out->data, sd_numel(x));
    return SD_OK;
}

/* Any dtype to any dtype through f32 (exact for the widening direction). */
static sd_status cpu_convert(const sd_backend *be, const sd_tensor *x, sd_tensor *out) {
    (void)be;
    SD_TRY(need(x, "convert", "x"));
    SD_TRY(need(out, "convert", "out"));
    SD_TRY(need_same_shape(x, out, "convert", "out"));
    int64_t n = sd_numel(x);
    if (x->dtype == out->dtype) {
        memmove(out->data, x->data, sd_nbytes(x));
        return SD_OK;
    }
    if (x->dtype == SD_F32) {
        sd_narrow_from_f32(x->data, out->dtype, out->data, n);
        return SD_OK;
    }
    if (out->dtype == SD_F32) {
        cpu_widen_to_f32(x->data, x->dtype, out->data, n);
        return SD_OK;
    }
    float *tmp = malloc((size_t)n * sizeof(float));
    if (!tmp)
        return sd_fail(SD_ERR_NOMEM, "convert: out of memory for %lld elements", (long long)n);
    cpu_widen_to_f32(x->data, x->dtype, tmp, n);
    sd_narrow_from_f32(tmp, out->dtype, out->data, n);
    free(tmp);
    return SD_OK;
}

static sd_status cpu_copy(const sd_backend *be, sd_tensor *dst, const sd_tensor *src) {
    (void)be;
    SD_TRY(need(src, "copy", "src"));
    SD_TRY(need(dst, "copy", "dst"));
    if (sd_nbytes(src) != sd_nbytes(dst))
        return sd_fail(SD_ERR_INVALID, "copy: 'dst' has %zu bytes, 'src' %zu", sd_nbytes(dst),
                       sd_nbytes(src));
    memmove(dst->data, src->data, sd_nbytes(src));
    return SD_OK;
}

static sd_status cpu_timestep_embedding(const sd_backend *be, const sd_tensor *timesteps, int dim,
                                        int flip_sin_to_cos, float downscale_freq_shift,
                                        sd_tensor *out) {
    (void)be;
    const char *op = "timestep_embedding";
    SD_TRY(need_f32(timesteps, op, "timesteps"));
    SD_TRY(need_ndim(timesteps, 1, op, "timesteps"));
    SD_TRY(need_f32(out, op, "out"));
    if (dim < 2)
        return sd_fail(SD_ERR_INVALID, "timestep_embedding: dim must be >= 2");
    if ((double)dim / 2 - downscale_freq_shift <= 0.0)
        return sd_fail(SD_ERR_INVALID, "timestep_embedding: downscale_freq_shift too large");
    int64_t N = timesteps->shape[0];
    if (out->ndim != 2 || out->shape[0] != N || out->shape[1] != dim)
        return sd_fail(SD_ERR_INVALID, "timestep_embedding: argument 'out' must be (%lld, %d)",
                       (long long)N, dim);
    cpu_timestep_embedding_f32(timesteps->data, out->data, N, dim, flip_sin_to_cos,
                               downscale_freq_shift);
    return SD_OK;
}

static sd_status cpu_transpose_last2(const sd_backend *be, const sd_tensor *x, sd_tensor *out) {
    (void)be;
    const char *op = "transpose_last2";
    SD_TRY(need_f32(x, op, "x"));
    SD_TRY(need_f32(out, op, "out"));
    if (x->ndim < 2)
        return sd_fail(SD_ERR_INVALID, "transpose_last2: argument 'x' must have at least 2 dims");
    int64_t M = x->shape[x->ndim - 2], N = x->shape[x->ndim - 1];
    sd_tensor expect = *x;
    expect.shape[x->ndim - 2] = N;
    expect.shape[x->ndim - 1] = M;
    SD_TRY(need_same_shape(&expect, out, op, "out"));
    if (x->data == out->data)
        return sd_fail(SD_ERR_INVALID, "transpose_last2: 'out' must not be 'x' (not in place)");
    cpu_transpose_last2_f32(x->data, out->data, sd_numel(x) / (M * N), M, N);
    return SD_OK;
}

static sd_status cpu_embedding(const sd_backend *be, const sd_tensor *table, const int32_t *ids,
                               int64_t n, sd_tensor *out) {
    (void)be;
    const char *op = "embedding";
    SD_TRY(need(table, op, "table"));
    SD_TRY(need_ndim(table, 2, op, "table"));
    SD_TRY(need_f32(out, op, "out"));
    int64_t V = table->shape[0], C = table->shape[1];
    if (!ids || n < 1)
        return sd_fail(SD_ERR_INVALID, "embedding: no ids");
    if (sd_numel(out) != n * C || out->shape[out->ndim - 1] != C)
        return sd_fail(SD_ERR_INVALID, "embedding: argument 'out' must hold (%lld, %lld)",
                       (long long)n, (long long)C);
    for (int64_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= V)
            return sd_fail(SD_ERR_INVALID, "embedding: id %d at position %lld is outside [0, %lld)",
                           ids[i], (long long)i, (long long)V);
    size_t row = (size_t)C * sd_dtype_size(table->dtype);
    float *o = out->data;
    for (int64_t i = 0; i < n; i++)
        cpu_widen_to_f32((const char *)table->data + (size_t)ids[i] * row, table->dtype, o + i * C,
                         C);
    return SD_OK;
}

static sd_status cpu_pad_bottom_right(const sd_backend *be, const sd_tensor *x, int bottom,
                                      int right, sd_tensor *out) {
    (void)be;
    const char *op = "pad_bottom_right";
    SD_TRY(need_f32(x, op, "x"));
    SD_TRY(need_ndim(x, 4, op, "x"));
    SD_TRY(need_f32(out, op, "out"));
    if (bottom < 0 || right < 0)
        return sd_fail(SD_ERR_INVALID, "pad_bottom_right: padding must be >= 0");
    sd_tensor expect = *x;
    expect.shape[2] += bottom;
    expect.shape[3] += right;
    SD_TRY(need_same_shape(&expect, out, op, "out"));
    int64_t planes = x->shape[0] * x->shape[1], H = x->shape[2], W = x->shape[3];
    int64_t OH = H + bottom, OW = W + right;
    const float *src = x->data;
    float *dst = out->data;
#pragma omp parallel for schedule(static) if (planes * OH * OW > 65536)
    for (int64_t p = 0; p < planes; p++) {
        for (int64_t h = 0; h < OH; h++) {
            float *d = dst + (p * OH + h) * OW;
            if (h >= H) {
                memset(d, 0, sizeof(float) * (size_t)OW);
                continue;
            }
            memcpy(d, src + (p * H + h) * W, sizeof(float) * (size_t)W);
            memset(d + W, 0, sizeof(float) * (size_t)right);
        }
    }
    return SD_OK;
}

/* A sampler update on host arrays: the expressions of sampling/sampler_ops.h, element
 * by element (a few thousand latents: one thread is plenty). */
static sd_status cpu_sampler_op(const sd_backend *be, const sd_sampler_op *op) {
    int inputs = sd_sampler_op_inputs(op);
    if (inputs < 0)
        return sd_fail(SD_ERR_INVALID, "sampler_op: unknown kind %d or flags %d", op->kind,
                       op->flags);
    if (op->n < 0 || !op->out)
        return sd_fail(SD_ERR_INVALID, "sampler_op: no output");
    for (int j = 0; j < inputs; j++)
        if (!op->in[j])
            return sd_fail(SD_ERR_INVALID, "sampler_op: input %d is missing", j);
    for (int64_t k = 0; k < op->n; k++)
        op->out[k] = sd_sampler_op_elem(op, k);
    return SD_OK;
}

static const sd_backend cpu_backend = {
    .name = "cpu",
    .device = SD_CPU,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .upload = cpu_upload,
    .download = cpu_download,
    .synchronize = cpu_synchronize,
    .linear = cpu_linear,
    .linear_add = cpu_linear_add,
    .matmul = cpu_matmul,
    .conv2d = cpu_conv2d,
    .conv2d_add = cpu_conv2d_add,
    .group_norm = cpu_group_norm,
    .layer_norm = cpu_layer_norm,
    .attention = cpu_attention,
    .softmax = cpu_softmax,
    .gelu = cpu_gelu,
    .quick_gelu = cpu_quick_gelu,
    .silu = cpu_silu,
    .geglu = cpu_geglu,
    .upsample_nearest2x = cpu_upsample_nearest2x,
    .concat_channels = cpu_concat_channels,
    .add = cpu_add,
    .mul = cpu_mul,
    .scale = cpu_scale,
    .convert = cpu_convert,
    .copy = cpu_copy,
    .timestep_embedding = cpu_timestep_embedding,
    .transpose_last2 = cpu_transpose_last2,
    .embedding = cpu_embedding,
    .pad_bottom_right = cpu_pad_bottom_right,
    .sampler_op = cpu_sampler_op,
};

const sd_backend *sd_cpu_backend(void) {
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, cpu_blas_init);
    return &cpu_backend;
}

int sd_cpu_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

void sd_set_cpu_threads(int n) {
    if (n < 1)
        return;
#ifdef _OPENMP
    omp_set_num_threads(n);
#endif
}
