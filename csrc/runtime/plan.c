/* The planning backend (see plan.h). */
#include <stdint.h>

#include "runtime/plan.h"

/* Where planned tensors "are": never dereferenced, since no op touches memory. */
static sd_status plan_alloc(const sd_backend *be, sd_tensor *t) {
    (void)be;
    t->data = (void *)(uintptr_t)SD_ARENA_ALIGN;
    return SD_OK;
}

static void plan_free(const sd_backend *be, sd_tensor *t) {
    (void)be;
    t->data = NULL;
}

/* Every op: nothing to compute, nothing to check (the real run checks). */

static sd_status plan_upload(const sd_backend *be, sd_tensor *dst, const void *host_src) {
    return SD_OK;
}

static sd_status plan_download(const sd_backend *be, void *host_dst, const sd_tensor *src) {
    return SD_OK;
}

static sd_status plan_synchronize(const sd_backend *be) {
    return SD_OK;
}

static sd_status plan_linear(const sd_backend *be, const sd_tensor *x, const sd_tensor *w,
                             const sd_tensor *bias, sd_tensor *out) {
    return SD_OK;
}

static sd_status plan_linear_add(const sd_backend *be, const sd_tensor *x, const sd_tensor *w,
                                 const sd_tensor *bias, const sd_tensor *res, sd_tensor *out) {
    return SD_OK;
}

static sd_status plan_matmul(const sd_backend *be, const sd_tensor *a, const sd_tensor *b,
                             int trans_b, sd_tensor *out) {
    return SD_OK;
}

static sd_status plan_conv2d(const sd_backend *be, const sd_tensor *x, const sd_tensor *w,
                             const sd_tensor *bias, int stride, int padding, sd_tensor *out) {
    return SD_OK;
}

static sd_status plan_conv2d_add(const sd_backend *be, const sd_tensor *x, const sd_tensor *w,
                                 const sd_tensor *bias, int stride, int padding,
                                 const sd_tensor *res, sd_tensor *out) {
    return SD_OK;
}

static sd_status plan_group_norm(const sd_backend *be, const sd_tensor *x, const sd_tensor *gamma,
                                 const sd_tensor *beta, int groups, float eps, int fuse_silu,
                                 sd_tensor *out) {
    return SD_OK;
}

static sd_status plan_layer_norm(const sd_backend *be, const sd_tensor *x, const sd_tensor *gamma,
                                 const sd_tensor *beta, float eps, sd_tensor *out) {
    return SD_OK;
}

static sd_status plan_attention(const sd_backend *be, const sd_tensor *q, const sd_tensor *k,
                                const sd_tensor *v, int heads, int causal, sd_tensor *out) {
    return SD_OK;
}

static sd_status plan_softmax(const sd_backend *be, const sd_tensor *x, sd_tensor *out) {
    return SD_OK;
}

static sd_status plan_gelu(const sd_backend *be, const sd_tensor *x, int tanh_approx,
                           sd_tensor *out) {
    return SD_OK;
}

static sd_status plan_quick_gelu(const sd_backend *be, const sd_tensor *x, sd_tensor *out) {
    return SD_OK;
}

static sd_status plan_silu(const sd_backend *be, const sd_tensor *x, sd_tensor *out) {
    return SD_OK;
}

static sd_status plan_geglu(const sd_backend *be, const sd_tensor *x, sd_tensor *out) {
    return SD_OK;
}

static sd_status plan_upsample_nearest2x(const sd_backend *be, const sd_tensor *x, sd_tensor *out) {
    return SD_OK;
}

static sd_status plan_concat_channels(const sd_backend *be, const sd_tensor *a, const sd_tensor *b,
                                      sd_tensor *out) {
    return SD_OK;
}

static sd_status plan_add(const sd_backend *be, const sd_tensor *a, const sd_tensor *b,
                          sd_tensor *out) {
    return SD_OK;
}

static sd_status plan_mul(const sd_backend *be, const sd_tensor *a, const sd_tensor *b,
                          sd_tensor *out) {
    return SD_OK;
}

static sd_status plan_scale(const sd_backend *be, const sd_tensor *x, float s, sd_tensor *out) {
    return SD_OK;
}

static sd_status plan_convert(const sd_backend *be, const sd_tensor *x, sd_tensor *out) {
    return SD_OK;
}

static sd_status plan_timestep_embedding(const sd_backend *be, const sd_tensor *timesteps, int dim,
                                         int flip_sin_to_cos, float downscale_freq_shift,
                                         sd_tensor *out) {
    return SD_OK;
}

static sd_status plan_transpose_last2(const sd_backend *be, const sd_tensor *x, sd_tensor *out) {
    return SD_OK;
}

static sd_status plan_embedding(const sd_backend *be, const sd_tensor *table, const int32_t *ids,
                                int64_t n, sd_tensor *out) {
    return SD_OK;
}

static sd_status plan_pad_bottom_right(const sd_backend *be, const sd_tensor *x, int bottom,
                                       int right, sd_tensor *out) {
    return SD_OK;
}

static sd_status plan_sampler_op(const sd_backend *be, const sd_sampler_op *op) {
    return SD_OK;
}

static sd_status plan_copy(const sd_backend *be, sd_tensor *dst, const sd_tensor *src) {
    return SD_OK;
}

/* Every op of the table, for each device kind (models read be->device). */
#define PLAN_OPS                                                                                   \
    .alloc = plan_alloc, .free = plan_free, .upload = plan_upload, .download = plan_download,      \
    .synchronize = plan_synchronize, .linear = plan_linear, .linear_add = plan_linear_add,         \
    .matmul = plan_matmul, .conv2d = plan_conv2d, .conv2d_add = plan_conv2d_add,                   \
    .group_norm = plan_group_norm, .layer_norm = plan_layer_norm, .attention = plan_attention,     \
    .softmax = plan_softmax, .gelu = plan_gelu, .quick_gelu = plan_quick_gelu, .silu = plan_silu,  \
    .geglu = plan_geglu, .upsample_nearest2x = plan_upsample_nearest2x,                            \
    .concat_channels = plan_concat_channels, .add = plan_add, .mul = plan_mul,                     \
    .scale = plan_scale, .convert = plan_convert, .timestep_embedding = plan_timestep_embedding,   \
    .transpose_last2 = plan_transpose_last2, .embedding = plan_embedding,                          \
    .pad_bottom_right = plan_pad_bottom_right, .sampler_op = plan_sampler_op, .copy = plan_copy

static const sd_backend plan_cpu = {.name = "plan", .device = SD_CPU, PLAN_OPS};
static const sd_backend plan_gpu = {.name = "plan", .device = SD_CUDA, PLAN_OPS};

const sd_backend *sd_plan_backend(const sd_backend *real) {
    return real->device == SD_CPU ? &plan_cpu : &plan_gpu;
}
