/* The UNet2DConditionModel (see unet.h). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "blocks.h"
#include "transformer.h"
#include "unet.h"
#include "runtime/arena.h"
#include "runtime/plan.h"

#define CHECK(expr)                    \
    do {                               \
        if ((s = (expr)) != SD_OK)     \
            goto done;                 \
    } while (0)

/* A down or up block: resnets, each followed by a Transformer2D in the cross-attention
 * kinds, then an optional 3x3 conv that halves (down) or follows a 2x nearest upsample
 * (up). */
typedef struct {
    int out_ch, num_layers, has_attention;
    sd_resnet_block resnets[SD_UNET_MAX_LAYERS + 1];
    sd_transformer2d attentions[SD_UNET_MAX_LAYERS + 1];
    const sd_tensor *sampler_w, *sampler_b; /* (out, out, 3, 3), (out) or NULL */
} unet_block;

/* One recorded step: the inputs are copied into fixed buffers, then the graph of the
 * whole forward is replayed; the first call for a shape runs directly (it plans the
 * arena and the backend's workspaces), the second records. */
#define UNET_GRAPHS 8
typedef struct {
    int64_t B, H, W, T;
    sd_tensor sample, context, out; /* fixed buffers the graph reads and writes */
    void *graph;                    /* NULL until recorded */
    uint64_t arena_epoch;           /* of the arena when recorded */
    uint64_t planned_epoch;         /* of the arena after a direct run of these shapes */
} unet_graph;

typedef struct sd_unet sd_unet;
static void graphs_free(sd_unet *m);

struct sd_unet {
    sd_unet_config cfg;
    const sd_backend *be;
    int temb_dim; /* 4 * block_out_channels[0] */
    const sd_tensor *conv_in_w, *conv_in_b;
    const sd_tensor *time1_w, *time1_b, *time2_w, *time2_b;
    unet_block down[SD_UNET_MAX_BLOCKS], up[SD_UNET_MAX_BLOCKS]; /* up in up order */
    sd_resnet_block mid_resnets[2];
    sd_transformer2d mid_attention;
    const sd_tensor *norm_out_w, *norm_out_b, *conv_out_w, *conv_out_b;
    sd_arena arena;
    /* recorded steps, one per input shape (on backends with graphs) */
    unet_graph graphs[UNET_GRAPHS];
    int graph_count;
    int use_graphs;
};

/* Every down block's outputs (and conv_in's) wait here for the up block that uses them. */
#define MAX_SKIPS (1 + SD_UNET_MAX_BLOCKS * (SD_UNET_MAX_LAYERS + 1))
typedef struct {
    sd_tensor items[MAX_SKIPS];
    int count;
} skip_stack;

static sd_status skip_push(skip_stack *st, const sd_tensor *t) {
    if (st->count == MAX_SKIPS)
        return sd_fail(SD_ERR_INVALID, "unet: skip stack overflow");
    st->items[st->count++] = *t;
    return SD_OK;
}

static sd_status skip_pop(skip_stack *st, sd_tensor *t) {
    if (st->count == 0)
        return sd_fail(SD_ERR_INVALID, "unet: skip stack underflow");
    *t = st->items[--st->count];
    return SD_OK;
}

sd_unet_config sd_unet_config_sd15(void) {
    sd_unet_config c = {
        .in_channels = 4,
        .out_channels = 4,
        .num_blocks = 4,
        .block_out_channels = {320, 640, 1280, 1280},
        .layers_per_block = {2, 2, 2, 2},
        .down_cross_attention = {1, 1, 1, 0},
        .up_cross_attention = {0, 1, 1, 1},
        .cross_attention_dim = 768,
        .attention_heads = {8, 8, 8, 8},
        .transformer_layers_per_block = {1, 1, 1, 1},
        .norm_num_groups = 32,
        .norm_eps = 1e-5f,
        .use_linear_projection = 0,
        .flip_sin_to_cos = 1,
        .freq_shift = 0.0f,
    };
    return c;
}

const sd_unet_config *sd_unet_get_config(const sd_unet *m) { return &m->cfg; }

size_t sd_unet_activation_bytes(const sd_unet *m) { return sd_arena_bytes(&m->arena); }

/* ------------------------------------------------------------- config --- */

/* Channels of up block i's j-th skip as diffusers builds it (res_skip_channels) */
static int up_skip_channels(const sd_unet_config *c, int i, int j) {
    int n = c->num_blocks, level = n - 1 - i;
    int below = c->block_out_channels[level > 0 ? level - 1 : 0];
    return j == c->layers_per_block[level] ? below : c->block_out_channels[level];
}

static sd_status config_check(const sd_unet_config *c) {
    int n = c->num_blocks;
    if (n < 1 || n > SD_UNET_MAX_BLOCKS)
        return sd_fail(SD_ERR_INVALID, "config: block_out_channels must have 1 to %d entries",
                       SD_UNET_MAX_BLOCKS);
    if (c->in_channels < 1 || c->in_channels > 4096)
        return sd_fail(SD_ERR_INVALID, "config: in_channels must be in 1..4096");
    if (c->out_channels < 1 || c->out_channels > 4096)
        return sd_fail(SD_ERR_INVALID, "config: out_channels must be in 1..4096");
    if (c->norm_num_groups < 1)
        return sd_fail(SD_ERR_INVALID, "config: norm_num_groups must be >= 1");
    if (!(c->norm_eps > 0.0f) || !isfinite(c->norm_eps))
        return sd_fail(SD_ERR_INVALID, "config: norm_eps must be a positive number");
    if (c->cross_attention_dim < 1 || c->cross_attention_dim > 65536)
        return sd_fail(SD_ERR_INVALID, "config: cross_attention_dim must be in 1..65536");
    for (int i = 0; i < n; i++) {
        int ch = c->block_out_channels[i];
        if (ch < 1 || ch > 65536)
            return sd_fail(SD_ERR_INVALID, "config: block_out_channels[%d] must be in 1..65536",
                           i);
        if (ch % c->norm_num_groups != 0)
            return sd_fail(SD_ERR_INVALID,
                           "config: block_out_channels[%d] (%d) is not divisible by "
                           "norm_num_groups (%d)",
                           i, ch, c->norm_num_groups);
        if (c->layers_per_block[i] < 1 || c->layers_per_block[i] > SD_UNET_MAX_LAYERS)
            return sd_fail(SD_ERR_INVALID, "config: layers_per_block[%d] must be in 1..%d", i,
                           SD_UNET_MAX_LAYERS);
        if (c->transformer_layers_per_block[i] < 1 || c->transformer_layers_per_block[i] > 64)
            return sd_fail(SD_ERR_INVALID,
                           "config: transformer_layers_per_block[%d] must be in 1..64", i);
        /* blocks with attention at this level: the down block, up block n-1-i, the mid */
        int attends = c->down_cross_attention[i] || c->up_cross_attention[n - 1 - i] ||
                      i == n - 1;
        int heads = c->attention_heads[i];
        if (attends && (heads < 1 || ch % heads != 0))
            return sd_fail(SD_ERR_INVALID,
                           "config: attention_head_dim[%d] (%d, the number of heads) must "
                           "divide block_out_channels[%d] (%d)",
                           i, heads, i, ch);
    }
    if (!(c->block_out_channels[0] / 2.0 - c->freq_shift > 0.0) || !isfinite(c->freq_shift))
        return sd_fail(SD_ERR_INVALID,
                       "config: freq_shift must be below block_out_channels[0] / 2");
    /* the up blocks must find on the skip stack the channels their resnets were built for */
    int stack[MAX_SKIPS], depth = 0;
    stack[depth++] = c->block_out_channels[0];
    for (int i = 0; i < n; i++)
        for (int j = 0; j < c->layers_per_block[i] + (i < n - 1); j++)
            stack[depth++] = c->block_out_channels[i];
    for (int i = 0; i < n; i++)
        for (int j = 0; j <= c->layers_per_block[n - 1 - i]; j++) {
            if (depth == 0 || stack[--depth] != up_skip_channels(c, i, j))
                return sd_fail(SD_ERR_INVALID,
                               "config: layers_per_block does not give up block %d the skip "
                               "connections it expects",
                               i);
        }
    return SD_OK;
}

/* ------------------------------------------------------------- weights --- */

/* The model's tensors, declared once: what sd_unet_create binds and sd_unet_tensors
 * lists. Names are UNet2DConditionModel's state-dict names. */

static sd_status attention_declare(sd_tensor_decls *d, const sd_unet *m, const char *prefix,
                                   int ch, int level, sd_transformer2d *t) {
    const sd_unet_config *c = &m->cfg;
    return sd_transformer2d_declare(d, prefix, ch, c->attention_heads[level],
                                    c->transformer_layers_per_block[level],
                                    c->cross_attention_dim, c->norm_num_groups,
                                    c->use_linear_projection, t);
}

/* down_blocks.i: resnets (in -> out, then out -> out), attentions, downsamplers.0.conv */
static sd_status down_block_declare(sd_tensor_decls *d, sd_unet *m, int i, int in_ch) {
    const sd_unet_config *c = &m->cfg;
    unet_block *blk = &m->down[i];
    char prefix[128];
    blk->out_ch = c->block_out_channels[i];
    blk->num_layers = c->layers_per_block[i];
    blk->has_attention = c->down_cross_attention[i];
    for (int j = 0; j < blk->num_layers; j++) {
        snprintf(prefix, sizeof prefix, "down_blocks.%d.resnets.%d", i, j);
        SD_TRY(sd_resnet_block_declare(d, prefix, j == 0 ? in_ch : blk->out_ch, blk->out_ch,
                                       m->temb_dim, c->norm_num_groups, c->norm_eps,
                                       &blk->resnets[j]));
        if (blk->has_attention) {
            snprintf(prefix, sizeof prefix, "down_blocks.%d.attentions.%d", i, j);
            SD_TRY(attention_declare(d, m, prefix, blk->out_ch, i, &blk->attentions[j]));
        }
    }
    if (i < c->num_blocks - 1) {
        snprintf(prefix, sizeof prefix, "down_blocks.%d.downsamplers.0", i);
        SD_TRY(sd_decl_conv(d, prefix, "conv", blk->out_ch, blk->out_ch, 3, &blk->sampler_w,
                            &blk->sampler_b));
    }
    return SD_OK;
}

/* up_blocks.i (up order; level n-1-i of the down path): layers_per_block + 1 resnets over
 * (hidden ++ skip) channels, attentions, upsamplers.0.conv */
static sd_status up_block_declare(sd_tensor_decls *d, sd_unet *m, int i, int prev_ch) {
    const sd_unet_config *c = &m->cfg;
    int level = c->num_blocks - 1 - i;
    unet_block *blk = &m->up[i];
    char prefix[128];
    blk->out_ch = c->block_out_channels[level];
    blk->num_layers = c->layers_per_block[level] + 1;
    blk->has_attention = c->up_cross_attention[i];
    for (int j = 0; j < blk->num_layers; j++) {
        int hidden_ch = j == 0 ? prev_ch : blk->out_ch;
        snprintf(prefix, sizeof prefix, "up_blocks.%d.resnets.%d", i, j);
        SD_TRY(sd_resnet_block_declare(d, prefix, hidden_ch + up_skip_channels(c, i, j),
                                       blk->out_ch, m->temb_dim, c->norm_num_groups,
                                       c->norm_eps, &blk->resnets[j]));
        if (blk->has_attention) {
            snprintf(prefix, sizeof prefix, "up_blocks.%d.attentions.%d", i, j);
            SD_TRY(attention_declare(d, m, prefix, blk->out_ch, level, &blk->attentions[j]));
        }
    }
    if (i < c->num_blocks - 1) {
        snprintf(prefix, sizeof prefix, "up_blocks.%d.upsamplers.0", i);
        SD_TRY(sd_decl_conv(d, prefix, "conv", blk->out_ch, blk->out_ch, 3, &blk->sampler_w,
                            &blk->sampler_b));
    }
    return SD_OK;
}

/* Set m's block sizes from its config and declare every tensor, each with its slot in m. */
static sd_status unet_declare(sd_tensor_decls *d, sd_unet *m) {
    const sd_unet_config *c = &m->cfg;
    int n = c->num_blocks, ch0 = c->block_out_channels[0], top = c->block_out_channels[n - 1];
    int groups = c->norm_num_groups, temb = m->temb_dim;
    SD_TRY(sd_decl_conv(d, "", "conv_in", ch0, c->in_channels, 3, &m->conv_in_w, &m->conv_in_b));
    SD_TRY(sd_decl_linear(d, "time_embedding", "linear_1", temb, ch0, &m->time1_w, &m->time1_b));
    SD_TRY(sd_decl_linear(d, "time_embedding", "linear_2", temb, temb, &m->time2_w, &m->time2_b));
    for (int i = 0; i < n; i++)
        SD_TRY(down_block_declare(d, m, i, c->block_out_channels[i > 0 ? i - 1 : 0]));
    SD_TRY(sd_resnet_block_declare(d, "mid_block.resnets.0", top, top, temb, groups, c->norm_eps,
                                   &m->mid_resnets[0]));
    SD_TRY(attention_declare(d, m, "mid_block.attentions.0", top, n - 1, &m->mid_attention));
    SD_TRY(sd_resnet_block_declare(d, "mid_block.resnets.1", top, top, temb, groups, c->norm_eps,
                                   &m->mid_resnets[1]));
    for (int i = 0; i < n; i++)
        SD_TRY(up_block_declare(d, m, i, i == 0 ? top : m->up[i - 1].out_ch));
    SD_TRY(sd_decl_norm(d, "", "conv_norm_out", ch0, &m->norm_out_w, &m->norm_out_b));
    return sd_decl_conv(d, "", "conv_out", c->out_channels, ch0, 3, &m->conv_out_w,
                        &m->conv_out_b);
}

static void block_free(unet_block *blk) {
    for (int j = 0; j < SD_UNET_MAX_LAYERS + 1; j++)
        sd_transformer2d_free(&blk->attentions[j]);
}

/* what unet_declare allocated (the transformers' block arrays) */
static void declared_free(sd_unet *m) {
    for (int i = 0; i < SD_UNET_MAX_BLOCKS; i++) {
        block_free(&m->down[i]);
        block_free(&m->up[i]);
    }
    sd_transformer2d_free(&m->mid_attention);
}

/* A model with its config and sizes set, its tensors declared into d (slots unset). */
static sd_status unet_skeleton(const sd_unet_config *config, sd_tensor_decls *d, sd_unet **out) {
    *out = NULL;
    SD_TRY(config_check(config));
    sd_unet *m = calloc(1, sizeof *m);
    if (!m)
        return sd_fail(SD_ERR_NOMEM, "unet: cannot allocate the model");
    m->cfg = *config;
    m->temb_dim = 4 * config->block_out_channels[0];
    sd_status s = unet_declare(d, m);
    if (s != SD_OK) {
        declared_free(m);
        free(m);
        return s;
    }
    *out = m;
    return SD_OK;
}

sd_status sd_unet_tensors(const sd_unet_config *config, sd_tensor_decls *out) {
    if (!config || !out)
        return sd_fail(SD_ERR_INVALID, "unet: config and a list are required");
    sd_unet *m;
    SD_TRY(unet_skeleton(config, out, &m));
    sd_decls_detach(out);
    declared_free(m);
    free(m);
    return SD_OK;
}

sd_status sd_unet_create(const sd_unet_config *config, const sd_weights *weights,
                         const sd_backend *be, sd_unet **out) {
    *out = NULL;
    if (!config || !weights || !be)
        return sd_fail(SD_ERR_INVALID, "unet: config, weights and backend are required");
    if (!be->transpose_last2)
        return sd_fail(SD_ERR_UNSUPPORTED, "unet: the %s backend has no transpose_last2",
                       be->name);
    sd_tensor_decls d;
    sd_decls_init(&d);
    sd_unet *m;
    sd_status s = unet_skeleton(config, &d, &m);
    if (s != SD_OK) {
        sd_decls_free(&d);
        return s;
    }
    m->be = be;
    m->use_graphs = be->graph_begin != NULL;
    sd_arena_init(&m->arena, be);
    s = sd_decls_bind(&d, weights);
    sd_decls_free(&d);
    if (s == SD_OK && m->conv_in_w->device != be->device)
        s = sd_fail(SD_ERR_UNSUPPORTED,
                    "unet: the weights are not on the %s backend's device; move them there "
                    "first",
                    be->name);
    if (s != SD_OK) {
        sd_unet_free(m);
        return s;
    }
    *out = m;
    return SD_OK;
}

void sd_unet_free(sd_unet *m) {
    if (!m)
        return;
    declared_free(m);
    graphs_free(m);
    sd_arena_free(&m->arena);
    free(m);
}

/* ------------------------------------------------------------- forward --- */

static sd_tensor image_view(const sd_tensor *buf, int64_t B, int64_t C, int64_t H, int64_t W) {
    int64_t shape[4] = {B, C, H, W};
    return sd_tensor_view(buf->data, buf->dtype, buf->device, 4, shape);
}

/* Everything a block needs besides its weights. */
typedef struct {
    const sd_backend *be;
    sd_arena *arena;
    const sd_tensor *temb_silu; /* (B, temb_dim) */
    const sd_tensor *context;   /* (B, T, cross_attention_dim) */
} unet_run;

/* h (B, in, H, W) -> h (B, out, H/2, W/2) or (B, out, H, W) in the last block.
 * Every output (after each resnet+attention, and after the downsampler) gets its own
 * arena tensor and is pushed: they stay live until the up blocks have used them. */
static sd_status down_block_forward(const unet_run *r, const unet_block *blk, sd_tensor *h,
                                    skip_stack *skips) {
    const sd_backend *be = r->be;
    int64_t B = h->shape[0], H = h->shape[2], W = h->shape[3];
    for (int j = 0; j < blk->num_layers; j++) {
        sd_tensor y;
        SD_TRY(sd_arena_act(r->arena, &y, 4, B, blk->out_ch, H, W));
        SD_TRY(sd_resnet_block_forward(be, r->arena, &blk->resnets[j], h, r->temb_silu, &y));
        if (blk->has_attention)
            SD_TRY(sd_transformer2d_forward(be, r->arena, &blk->attentions[j], &y, r->context,
                                            &y)); // (B, out, H, W)
        SD_TRY(skip_push(skips, &y));
        *h = y;
    }
    if (blk->sampler_w) {
        sd_tensor y;
        SD_TRY(sd_arena_act(r->arena, &y, 4, B, blk->out_ch, H / 2, W / 2));
        SD_TRY(be->conv2d(be, h, blk->sampler_w, blk->sampler_b, 2, 1, &y)); // (B, out, H/2, W/2)
        SD_TRY(skip_push(skips, &y));
        *h = y;
    }
    return SD_OK;
}

/* Two buffers the mid and up blocks alternate between: each result goes to the one the
 * input is not in. */
typedef struct {
    sd_tensor buf[2];
    int cur; /* the buffer holding h */
} ping_pong;

static sd_tensor *pp_next(ping_pong *pp) { return &pp->buf[1 - pp->cur]; }

/* h (B, top, H, W) -> h: resnet, Transformer2D, resnet */
static sd_status mid_block_forward(const unet_run *r, const sd_unet *m, sd_tensor *h,
                                   ping_pong *pp) {
    int64_t B = h->shape[0], C = h->shape[1], H = h->shape[2], W = h->shape[3];
    sd_tensor a = image_view(&pp->buf[0], B, C, H, W), b = image_view(&pp->buf[1], B, C, H, W);
    SD_TRY(sd_resnet_block_forward(r->be, r->arena, &m->mid_resnets[0], h, r->temb_silu, &a));
    SD_TRY(sd_transformer2d_forward(r->be, r->arena, &m->mid_attention, &a, r->context, &a));
    SD_TRY(sd_resnet_block_forward(r->be, r->arena, &m->mid_resnets[1], &a, r->temb_silu, &b));
    *h = b;
    pp->cur = 1;
    return SD_OK;
}

/* h (B, prev, H, W) -> h (B, out, 2H, 2W), or (B, out, H, W) in the last block.
 * Each resnet takes h ++ a skip popped from the stack. */
static sd_status up_block_forward(const unet_run *r, const unet_block *blk, sd_tensor *h,
                                  ping_pong *pp, skip_stack *skips) {
    const sd_backend *be = r->be;
    int64_t B = h->shape[0], H = h->shape[2], W = h->shape[3];
    sd_status s = SD_OK;
    for (int j = 0; j < blk->num_layers; j++) {
        sd_tensor skip, cat;
        SD_TRY(skip_pop(skips, &skip));
        sd_tensor y = image_view(pp_next(pp), B, blk->out_ch, H, W);
        size_t mark = sd_arena_mark(r->arena);
        CHECK(sd_arena_act(r->arena, &cat, 4, B, h->shape[1] + skip.shape[1], H, W));
        CHECK(be->concat_channels(be, h, &skip, &cat)); // (B, h + skip, H, W)
        CHECK(sd_resnet_block_forward(be, r->arena, &blk->resnets[j], &cat, r->temb_silu, &y));
        sd_arena_release(r->arena, mark);
        if (blk->has_attention)
            CHECK(sd_transformer2d_forward(be, r->arena, &blk->attentions[j], &y, r->context,
                                           &y)); // (B, out, H, W)
        *h = y;
        pp->cur = 1 - pp->cur;
    }
    if (blk->sampler_w) {
        sd_tensor up;
        sd_tensor y = image_view(pp_next(pp), B, blk->out_ch, 2 * H, 2 * W);
        size_t mark = sd_arena_mark(r->arena);
        CHECK(sd_arena_act(r->arena, &up, 4, B, blk->out_ch, 2 * H, 2 * W));
        CHECK(be->upsample_nearest2x(be, h, &up));                          // (B, out, 2H, 2W)
        CHECK(be->conv2d(be, &up, blk->sampler_w, blk->sampler_b, 1, 1, &y)); // (B, out, 2H, 2W)
        sd_arena_release(r->arena, mark);
        *h = y;
        pp->cur = 1 - pp->cur;
    }
    return SD_OK;
done:
    /* a failed step leaves its temporaries; the next forward resets the arena anyway */
    return s;
}

/* The largest hidden state of the mid and up path: the ping-pong buffers' size. */
static int64_t up_path_numel(const sd_unet_config *c, int64_t B, int64_t H, int64_t W) {
    int64_t most = 0;
    for (int level = 0; level < c->num_blocks; level++) {
        int64_t ch = c->block_out_channels[level];
        int64_t here = ch * (H >> level) * (W >> level);
        /* an up block at level >= 1 ends upsampled to the level above */
        int64_t upsampled = level > 0 ? ch * (H >> (level - 1)) * (W >> (level - 1)) : 0;
        most = here > most ? here : most;
        most = upsampled > most ? upsampled : most;
    }
    return B * most;
}

static sd_status forward_check(const sd_unet *m, const sd_tensor *sample, const float *timesteps,
                               const sd_tensor *context, const sd_tensor *out) {
    const sd_unet_config *c = &m->cfg;
    char got[96];
    if (!sample || !context || !out || !timesteps)
        return sd_fail(SD_ERR_INVALID, "unet: sample, timesteps, context and out are required");
    if (sample->ndim != 4 || sample->shape[1] != c->in_channels || sample->dtype != SD_F32)
        return sd_fail(SD_ERR_INVALID, "unet: sample must be float32 (B, %d, h, w), got %s",
                       c->in_channels, sd_shape_str(sample, got, sizeof got));
    int64_t B = sample->shape[0], H = sample->shape[2], W = sample->shape[3];
    int64_t mult = (int64_t)1 << (c->num_blocks - 1);
    if (H % mult != 0 || W % mult != 0)
        return sd_fail(SD_ERR_INVALID,
                       "unet: sample height and width (%lld, %lld) must be multiples of %lld "
                       "(2^(number of blocks - 1))",
                       (long long)H, (long long)W, (long long)mult);
    if (context->ndim != 3 || context->shape[0] != B ||
        context->shape[2] != c->cross_attention_dim || context->dtype != SD_F32)
        return sd_fail(SD_ERR_INVALID, "unet: context must be float32 (%lld, T, %d), got %s",
                       (long long)B, c->cross_attention_dim,
                       sd_shape_str(context, got, sizeof got));
    if (out->ndim != 4 || out->shape[0] != B || out->shape[1] != c->out_channels ||
        out->shape[2] != H || out->shape[3] != W || out->dtype != SD_F32)
        return sd_fail(SD_ERR_INVALID, "unet: out must be float32 (%lld, %d, %lld, %lld)",
                       (long long)B, c->out_channels, (long long)H, (long long)W);
    if (sample->device != m->be->device || context->device != m->be->device ||
        out->device != m->be->device)
        return sd_fail(SD_ERR_INVALID, "unet: sample, context and out must be on the %s backend",
                       m->be->name);
    return SD_OK;
}

/* temb_silu (B, temb_dim) = silu(linear_2(silu(linear_1(sinusoid(t))))): every resnet
 * applies SiLU to the embedding before its own projection, so it is done once here. */
static sd_status time_embedding_forward(sd_unet *m, const sd_tensor *t, int64_t B,
                                        sd_tensor *temb_silu) {
    const sd_backend *be = m->be;
    const sd_unet_config *c = &m->cfg;
    sd_tensor sinus, temb;
    SD_TRY(sd_arena_act(&m->arena, &sinus, 2, B, c->block_out_channels[0], 1, 1));
    SD_TRY(sd_arena_act(&m->arena, &temb, 2, B, m->temb_dim, 1, 1));
    SD_TRY(sd_arena_act(&m->arena, temb_silu, 2, B, m->temb_dim, 1, 1));
    SD_TRY(be->timestep_embedding(be, t, c->block_out_channels[0], c->flip_sin_to_cos,
                                  c->freq_shift, &sinus));                // (B, ch0)
    SD_TRY(be->linear(be, &sinus, m->time1_w, m->time1_b, temb_silu));    // (B, temb)
    SD_TRY(be->silu(be, temb_silu, temb_silu));
    SD_TRY(be->linear(be, temb_silu, m->time2_w, m->time2_b, &temb));     // (B, temb)
    return be->silu(be, &temb, temb_silu);
}

/* The timesteps' tensor, always the arena's first: the recorded graph reads it there. */
static sd_status timesteps_upload(sd_unet *m, const float *timesteps, int64_t B, sd_tensor *t) {
    SD_TRY(sd_arena_reset(&m->arena));
    /* f32 even when the activations are f16: 999 is exact in f16, 999.5 is not */
    SD_TRY(sd_arena_tensor(&m->arena, t, SD_F32, 1, (const int64_t[]){B}));
    return m->be->upload(m->be, t, timesteps);
}

/* Everything after the timesteps' upload: only backend ops on device buffers, so that
 * it can be recorded as a graph. */
static sd_status forward_body(sd_unet *m, const sd_tensor *sample, const sd_tensor *t,
                              const sd_tensor *context, sd_tensor *out) {
    const sd_backend *be = m->be;
    const sd_unet_config *c = &m->cfg;
    int n = c->num_blocks;
    int64_t B = sample->shape[0], H = sample->shape[2], W = sample->shape[3];

    /* inputs in the activation dtype (a no-op for f32) */
    sd_tensor sample_act, context_act;
    if (sample->dtype != m->arena.dtype) {
        SD_TRY(sd_arena_tensor(&m->arena, &sample_act, m->arena.dtype, 4, sample->shape));
        SD_TRY(be->convert(be, sample, &sample_act));
        sample = &sample_act;
    }
    if (context->dtype != m->arena.dtype) {
        SD_TRY(sd_arena_tensor(&m->arena, &context_act, m->arena.dtype, 3, context->shape));
        SD_TRY(be->convert(be, context, &context_act));
        context = &context_act;
    }

    sd_tensor temb_silu;
    SD_TRY(time_embedding_forward(m, t, B, &temb_silu));
    unet_run r = {.be = be, .arena = &m->arena, .temb_silu = &temb_silu, .context = context};

    /* down path: h and every block output stay on the skip stack */
    skip_stack skips = {.count = 0};
    sd_tensor h;
    SD_TRY(sd_arena_act(&m->arena, &h, 4, B, c->block_out_channels[0], H, W));
    SD_TRY(be->conv2d(be, sample, m->conv_in_w, m->conv_in_b, 1, 1, &h)); // (B, ch0, H, W)
    SD_TRY(skip_push(&skips, &h));
    for (int i = 0; i < n; i++)
        SD_TRY(down_block_forward(&r, &m->down[i], &h, &skips));

    /* mid and up path: alternate between two buffers above the skips */
    ping_pong pp = {.cur = 0};
    int64_t numel = up_path_numel(c, B, H, W);
    SD_TRY(sd_arena_act(&m->arena, &pp.buf[0], 1, numel, 1, 1, 1));
    SD_TRY(sd_arena_act(&m->arena, &pp.buf[1], 1, numel, 1, 1, 1));
    SD_TRY(mid_block_forward(&r, m, &h, &pp));
    for (int i = 0; i < n; i++)
        SD_TRY(up_block_forward(&r, &m->up[i], &h, &pp, &skips));
    if (skips.count != 0)
        return sd_fail(SD_ERR_INVALID, "unet: %d skip connections left unused", skips.count);

    /* out: conv_out(silu(group_norm(h))) */
    sd_tensor g;
    SD_TRY(sd_arena_act(&m->arena, &g, 4, B, c->block_out_channels[0], H, W));
    SD_TRY(be->group_norm(be, &h, m->norm_out_w, m->norm_out_b, c->norm_num_groups, c->norm_eps,
                          1, &g));                                          // (B, ch0, H, W)
    if (out->dtype == m->arena.dtype)
        return be->conv2d(be, &g, m->conv_out_w, m->conv_out_b, 1, 1, out); // (B, out, H, W)
    sd_tensor o;
    SD_TRY(sd_arena_act(&m->arena, &o, 4, B, c->out_channels, H, W));
    SD_TRY(be->conv2d(be, &g, m->conv_out_w, m->conv_out_b, 1, 1, &o));
    return be->convert(be, &o, out);
}

static void graph_drop(sd_unet *m, unet_graph *g) {
    if (g->graph)
        m->be->graph_free(m->be, g->graph);
    g->graph = NULL;
}

static void graphs_free(sd_unet *m) {
    for (int i = 0; i < m->graph_count; i++) {
        unet_graph *g = &m->graphs[i];
        graph_drop(m, g);
        if (g->sample.data)
            m->be->free(m->be, &g->sample);
        if (g->context.data)
            m->be->free(m->be, &g->context);
        if (g->out.data)
            m->be->free(m->be, &g->out);
    }
    m->graph_count = 0;
}

static sd_status graph_buffer(const sd_backend *be, sd_tensor *t, const sd_tensor *like) {
    *t = sd_tensor_view(NULL, like->dtype, be->device, like->ndim, like->shape);
    return be->alloc(be, t);
}

/* The graph entry for these shapes, made (with its fixed buffers) when there is none;
 * NULL when all entries are taken by other shapes. */
static sd_status graph_entry(sd_unet *m, const sd_tensor *sample, const sd_tensor *context,
                             const sd_tensor *out, unet_graph **found) {
    int64_t B = sample->shape[0], H = sample->shape[2], W = sample->shape[3];
    int64_t T = context->shape[1];
    *found = NULL;
    for (int i = 0; i < m->graph_count; i++) {
        unet_graph *g = &m->graphs[i];
        if (g->B == B && g->H == H && g->W == W && g->T == T) {
            *found = g;
            return SD_OK;
        }
    }
    if (m->graph_count == UNET_GRAPHS)
        return SD_OK;
    unet_graph *g = &m->graphs[m->graph_count];
    memset(g, 0, sizeof *g);
    sd_status s = graph_buffer(m->be, &g->sample, sample);
    if (s == SD_OK)
        s = graph_buffer(m->be, &g->context, context);
    if (s == SD_OK)
        s = graph_buffer(m->be, &g->out, out);
    m->graph_count++; /* counted either way, so graphs_free releases what was made */
    if (s != SD_OK)
        return s;
    g->B = B, g->H = H, g->W = W, g->T = T;
    *found = g;
    return SD_OK;
}

/* Record the step into g (inputs already in its buffers, timesteps first in the arena). */
static sd_status graph_record(sd_unet *m, unet_graph *g, const sd_tensor *t) {
    const sd_backend *be = m->be;
    uint64_t epoch = sd_arena_epoch(&m->arena);
    SD_TRY(be->graph_begin(be));
    sd_status s = forward_body(m, &g->sample, t, &g->context, &g->out);
    void *graph = NULL;
    sd_status e = be->graph_end(be, &graph);
    if (s == SD_OK && e == SD_OK && sd_arena_epoch(&m->arena) != epoch)
        s = sd_fail(SD_ERR_INVALID, "unet: the step allocated while being recorded");
    if (s != SD_OK || e != SD_OK) {
        if (graph)
            be->graph_free(be, graph);
        return s != SD_OK ? s : e;
    }
    g->graph = graph;
    g->arena_epoch = sd_arena_epoch(&m->arena);
    return SD_OK;
}

/* Walks the step with the planning backend, as the real run will take its tensors
 * (timesteps first): sizes the arena for these shapes before anything runs (plan.h). */
static sd_status plan(sd_unet *m, const sd_tensor *sample, const sd_tensor *context,
                      sd_tensor *out) {
    const sd_backend *be = m->be;
    sd_tensor t;
    m->be = sd_plan_backend(be);
    sd_arena_plan_begin(&m->arena);
    sd_status s =
        sd_arena_tensor(&m->arena, &t, SD_F32, 1, (const int64_t[]){sample->shape[0]});
    if (s == SD_OK)
        s = forward_body(m, sample, &t, context, out);
    sd_arena_plan_end(&m->arena);
    m->be = be;
    return s;
}

sd_status sd_unet_forward(sd_unet *m, const sd_tensor *sample, const float *timesteps,
                          const sd_tensor *context, sd_tensor *out) {
    SD_TRY(forward_check(m, sample, timesteps, context, out));
    const sd_backend *be = m->be;
    int64_t B = sample->shape[0];
    SD_TRY(plan(m, sample, context, out));
    sd_tensor t;
    unet_graph *g = NULL;
    if (m->use_graphs && be->graph_begin)
        SD_TRY(graph_entry(m, sample, context, out, &g));
    if (!g) { /* no graphs on this backend, or too many shapes: run directly */
        SD_TRY(timesteps_upload(m, timesteps, B, &t));
        return forward_body(m, sample, &t, context, out);
    }
    /* the upload resets the arena, which may move its buffer: check the graph after it */
    SD_TRY(timesteps_upload(m, timesteps, B, &t));
    if (g->graph && (g->arena_epoch != sd_arena_epoch(&m->arena) || !be->graph_valid(be, g->graph)))
        graph_drop(m, g); /* buffers moved since it was recorded */
    SD_TRY(be->copy(be, &g->sample, sample));
    SD_TRY(be->copy(be, &g->context, context));
    if (!g->graph) {
        if (g->planned_epoch != sd_arena_epoch(&m->arena) || sd_arena_epoch(&m->arena) == 0) {
            /* run directly: plans the arena (and the backend's workspaces) for these
             * shapes; the next step finds them in place and records */
            SD_TRY(forward_body(m, &g->sample, &t, &g->context, &g->out));
            g->planned_epoch = sd_arena_epoch(&m->arena);
            return be->copy(be, out, &g->out);
        }
        SD_TRY(graph_record(m, g, &t));
    }
    SD_TRY(be->graph_launch(be, g->graph));
    return be->copy(be, out, &g->out);
}

void sd_unet_use_graphs(sd_unet *m, int on) {
    if (!on)
        graphs_free(m);
    m->use_graphs = on;
}

sd_status sd_unet_set_activation_dtype(sd_unet *m, sd_dtype dtype) {
    return sd_arena_set_dtype(&m->arena, dtype, "unet");
}
