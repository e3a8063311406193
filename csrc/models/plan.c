/* The planning backend (see plan.h). */
#include <stdint.h>

#include "plan.h"

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

static void fill(sd_backend *b, const sd_backend *real) {
    b->name = "plan";
    b->device = real->device;
    b->alloc = plan_alloc;
    b->free = plan_free;
    b->upload = plan_upload;
    b->download = plan_download;
    b->synchronize = plan_synchronize;
    b->linear = plan_linear;
    b->linear_add = plan_linear_add;
    b->matmul = plan_matmul;
    b->conv2d = plan_conv2d;
    b->conv2d_add = plan_conv2d_add;
    b->group_norm = plan_group_norm;
    b->layer_norm = plan_layer_norm;
    b->attention = plan_attention;
    b->softmax = plan_softmax;
    b->gelu = plan_gelu;
    b->quick_gelu = plan_quick_gelu;
    b->silu = plan_silu;
    b->geglu = plan_geglu;
    b->upsample_nearest2x = plan_upsample_nearest2x;
    b->concat_channels = plan_concat_channels;
    b->add = plan_add;
    b->mul = plan_mul;
    b->scale = plan_scale;
    b->convert = plan_convert;
    b->timestep_embedding = plan_timestep_embedding;
    b->transpose_last2 = plan_transpose_last2;
    b->embedding = plan_embedding;
    b->pad_bottom_right = plan_pad_bottom_right;
    b->sampler_op = plan_sampler_op;
    b->copy = plan_copy;
}

const sd_backend *sd_plan_backend(const sd_backend *real) {
    /* one per device kind, filled on first use (under the GIL or the model lock: the
     * same values each time, so a race writes what is already there) */
    static sd_backend cpu, gpu;
    sd_backend *b = real->device == SD_CPU ? &cpu : &gpu;
    if (!b->name)
        fill(b, real);
    return b;
}
