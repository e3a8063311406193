/* The KL autoencoder (see vae.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "blocks.h"
#include "vae.h"
#include "runtime/arena.h"
#include "runtime/plan.h"

#define VAE_EPS 1e-6f /* every norm of diffusers' VAE uses this */
#define MAX_LAYERS 8

#define CHECK(expr)                \
    do {                           \
        if ((s = (expr)) != SD_OK) \
            goto done;             \
    } while (0)
#define VEC(n) ((const int64_t[]){(n)})

/* The mid block's single-head self-attention over the pixels. Projections are kept as
 * 2-D views whether the checkpoint stores (C, C) or (C, C, 1, 1): same memory. */
typedef struct {
    const sd_tensor *norm_w, *norm_b, *q_b, *k_b, *v_b, *o_b;
    sd_tensor q_w, k_w, v_w, o_w;
} vae_attention;

typedef struct {
    sd_resnet_block res0, res1;
    vae_attention attn;
    int has_attn;
} vae_mid;

typedef struct {
    sd_resnet_block res[MAX_LAYERS];
    int n_res;
    const sd_tensor *resample_w, *resample_b; /* up- or downsampler conv, or NULL */
} vae_block;

typedef struct {
    const sd_tensor *conv_in_w, *conv_in_b, *norm_w, *norm_b, *conv_out_w, *conv_out_b;
    vae_block blocks[SD_VAE_MAX_BLOCKS];
    vae_mid mid;
} vae_coder;

struct sd_vae {
    sd_vae_config cfg;
    const sd_backend *be;
    vae_coder dec, enc;
    int has_encoder;
    const sd_tensor *post_quant_w, *post_quant_b, *quant_w, *quant_b;
    sd_arena arena;
};

/* ------------------------------------------------------------- loading ---- */

/* The model's tensors, declared once: what sd_vae_create binds and sd_vae_tensors lists.
 * Names are AutoencoderKL's state-dict names. */

static sd_status attention_declare(sd_tensor_decls *d, const char *prefix, int C,
                                   vae_attention *a) {
    SD_TRY(sd_decl_norm(d, prefix, "group_norm", C, &a->norm_w, &a->norm_b));
    SD_TRY(sd_decl_view(d, prefix, "to_q.weight", C, &a->q_w));
    SD_TRY(sd_decl(d, prefix, "to_q.bias", 1, VEC(C), 0, &a->q_b));
    SD_TRY(sd_decl_view(d, prefix, "to_k.weight", C, &a->k_w));
    SD_TRY(sd_decl(d, prefix, "to_k.bias", 1, VEC(C), 0, &a->k_b));
    SD_TRY(sd_decl_view(d, prefix, "to_v.weight", C, &a->v_w));
    SD_TRY(sd_decl(d, prefix, "to_v.bias", 1, VEC(C), 0, &a->v_b));
    SD_TRY(sd_decl_view(d, prefix, "to_out.0.weight", C, &a->o_w));
    return sd_decl(d, prefix, "to_out.0.bias", 1, VEC(C), 0, &a->o_b);
}

static sd_status mid_declare(sd_tensor_decls *d, const char *coder, int C, const sd_vae_config *c,
                             vae_mid *m) {
    char p[128];
    snprintf(p, sizeof p, "%s.mid_block.resnets.0", coder);
    SD_TRY(sd_resnet_block_declare(d, p, C, C, 0, c->norm_num_groups, VAE_EPS, &m->res0));
    m->has_attn = c->mid_attention;
    if (m->has_attn) {
        snprintf(p, sizeof p, "%s.mid_block.attentions.0", coder);
        SD_TRY(attention_declare(d, p, C, &m->attn));
    }
    snprintf(p, sizeof p, "%s.mid_block.resnets.1", coder);
    return sd_resnet_block_declare(d, p, C, C, 0, c->norm_num_groups, VAE_EPS, &m->res1);
}

/* decoder.up_blocks.i (i counts from the top level), or encoder.down_blocks.i: resnets,
 * then the resampler's conv where there is one */
static sd_status coder_block_declare(sd_tensor_decls *d, const char *kind, int i, int in_c,
                                     int out_c, int n_res, int resample, const sd_vae_config *c,
                                     vae_block *b) {
    char p[128];
    b->n_res = n_res;
    for (int j = 0; j < n_res; j++) {
        snprintf(p, sizeof p, "%s.%d.resnets.%d", kind, i, j);
        SD_TRY(sd_resnet_block_declare(d, p, j == 0 ? in_c : out_c, out_c, 0, c->norm_num_groups,
                                       VAE_EPS, &b->res[j]));
    }
    if (!resample)
        return SD_OK;
    snprintf(p, sizeof p, "%s.%d.%s.0", kind, i,
             strcmp(kind, "decoder.up_blocks") == 0 ? "upsamplers" : "downsamplers");
    return sd_decl_conv(d, p, "conv", out_c, out_c, 3, &b->resample_w, &b->resample_b);
}

static sd_status decoder_declare(sd_tensor_decls *d, const sd_vae_config *c, vae_coder *dec) {
    int n = c->num_blocks, top = c->block_out_channels[n - 1], bottom = c->block_out_channels[0];
    SD_TRY(sd_decl_conv(d, "decoder", "conv_in", top, c->latent_channels, 3, &dec->conv_in_w,
                        &dec->conv_in_b));
    SD_TRY(mid_declare(d, "decoder", top, c, &dec->mid));
    int prev = top;
    for (int i = 0; i < n; i++) {
        int out_c = c->block_out_channels[n - 1 - i];
        SD_TRY(coder_block_declare(d, "decoder.up_blocks", i, prev, out_c,
                                   c->layers_per_block + 1, i < n - 1, c, &dec->blocks[i]));
        prev = out_c;
    }
    SD_TRY(sd_decl_norm(d, "decoder", "conv_norm_out", bottom, &dec->norm_w, &dec->norm_b));
    return sd_decl_conv(d, "decoder", "conv_out", c->out_channels, bottom, 3, &dec->conv_out_w,
                        &dec->conv_out_b);
}

static sd_status encoder_declare(sd_tensor_decls *d, const sd_vae_config *c, vae_coder *e) {
    int n = c->num_blocks, top = c->block_out_channels[n - 1], bottom = c->block_out_channels[0];
    SD_TRY(sd_decl_conv(d, "encoder", "conv_in", bottom, c->in_channels, 3, &e->conv_in_w,
                        &e->conv_in_b));
    int prev = bottom;
    for (int i = 0; i < n; i++) {
        int out_c = c->block_out_channels[i];
        SD_TRY(coder_block_declare(d, "encoder.down_blocks", i, prev, out_c, c->layers_per_block,
                                   i < n - 1, c, &e->blocks[i]));
        prev = out_c;
    }
    SD_TRY(mid_declare(d, "encoder", top, c, &e->mid));
    SD_TRY(sd_decl_norm(d, "encoder", "conv_norm_out", top, &e->norm_w, &e->norm_b));
    return sd_decl_conv(d, "encoder", "conv_out", 2 * c->latent_channels, top, 3, &e->conv_out_w,
                        &e->conv_out_b);
}

/* Every tensor of v (its config set), each with its slot in v: the decoder's, then the
 * encoder's when with_encoder. */
static sd_status vae_declare(sd_tensor_decls *d, sd_vae *v, int with_encoder) {
    const sd_vae_config *c = &v->cfg;
    int L = c->latent_channels;
    SD_TRY(sd_decl_conv(d, "", "post_quant_conv", L, L, 1, &v->post_quant_w, &v->post_quant_b));
    SD_TRY(decoder_declare(d, c, &v->dec));
    if (!with_encoder)
        return SD_OK;
    SD_TRY(sd_decl_conv(d, "", "quant_conv", 2 * L, 2 * L, 1, &v->quant_w, &v->quant_b));
    return encoder_declare(d, c, &v->enc);
}

static sd_status check_config(const sd_vae_config *c) {
    if (c->num_blocks < 1 || c->num_blocks > SD_VAE_MAX_BLOCKS)
        return sd_fail(SD_ERR_INVALID, "VAE config: block_out_channels must have 1 to %d entries",
                       SD_VAE_MAX_BLOCKS);
    if (c->layers_per_block < 1 || c->layers_per_block + 1 > MAX_LAYERS)
        return sd_fail(SD_ERR_INVALID, "VAE config: layers_per_block must be 1 to %d",
                       MAX_LAYERS - 1);
    if (c->in_channels < 1 || c->out_channels < 1 || c->latent_channels < 1 ||
        c->norm_num_groups < 1)
        return sd_fail(SD_ERR_INVALID, "VAE config: channel counts must be positive");
    for (int i = 0; i < c->num_blocks; i++)
        if (c->block_out_channels[i] < 1 || c->block_out_channels[i] % c->norm_num_groups)
            return sd_fail(SD_ERR_INVALID,
                           "VAE config: block_out_channels[%d] (%d) must be a positive multiple "
                           "of norm_num_groups (%d)",
                           i, c->block_out_channels[i], c->norm_num_groups);
    return SD_OK;
}

/* Name the first op the VAE calls that this backend does not provide, rather than
 * calling through a NULL pointer later. */
static sd_status check_backend(const sd_backend *be) {
    const struct {
        const char *name;
        int present;
    } ops[] = {
        {"conv2d", be->conv2d != NULL},
        {"group_norm", be->group_norm != NULL},
        {"linear", be->linear != NULL},
        {"attention", be->attention != NULL},
        {"add", be->add != NULL},
        {"scale", be->scale != NULL},
        {"upsample_nearest2x", be->upsample_nearest2x != NULL},
        {"transpose_last2", be->transpose_last2 != NULL},
        {"pad_bottom_right", be->pad_bottom_right != NULL},
    };
    for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++)
        if (!ops[i].present)
            return sd_fail(SD_ERR_UNSUPPORTED, "VAE: the %s backend has no %s op", be->name,
                           ops[i].name);
    return SD_OK;
}

sd_status sd_vae_tensors(const sd_vae_config *config, int with_encoder, sd_tensor_decls *out) {
    if (!config || !out)
        return sd_fail(SD_ERR_INVALID, "VAE: config and a list are required");
    SD_TRY(check_config(config));
    sd_vae *v = calloc(1, sizeof *v);
    if (!v)
        return sd_fail(SD_ERR_NOMEM, "cannot allocate the VAE");
    v->cfg = *config;
    sd_status s = vae_declare(out, v, with_encoder);
    sd_decls_detach(out);
    free(v);
    return s;
}

sd_status sd_vae_create(const sd_vae_config *config, const sd_weights *weights, int with_encoder,
                        const sd_backend *be, sd_vae **out) {
    if (!out)
        return sd_fail(SD_ERR_INVALID, "VAE: no place for the model");
    *out = NULL;
    if (!config || !weights || !be)
        return sd_fail(SD_ERR_INVALID, "VAE: config, weights and backend are required");
    SD_TRY(check_config(config));
    SD_TRY(check_backend(be));
    sd_vae *v = calloc(1, sizeof *v);
    if (!v)
        return sd_fail(SD_ERR_NOMEM, "cannot allocate the VAE");
    v->cfg = *config;
    v->be = be;
    sd_arena_init(&v->arena, be);
    sd_tensor_decls d;
    sd_decls_init(&d);
    sd_status s = vae_declare(&d, v, with_encoder);
    if (s == SD_OK)
        s = sd_decls_bind(&d, weights);
    sd_decls_free(&d);
    if (s == SD_OK && v->post_quant_w->device != be->device)
        s = sd_fail(SD_ERR_UNSUPPORTED,
                    "VAE: the weights are not on the %s backend's device; move them there first",
                    be->name);
    if (s != SD_OK) {
        sd_vae_free(v);
        return s;
    }
    v->has_encoder = with_encoder != 0;
    *out = v;
    return SD_OK;
}

void sd_vae_free(sd_vae *v) {
    if (!v)
        return;
    sd_arena_free(&v->arena);
    free(v);
}

int sd_vae_has_encoder(const sd_vae *v) { return v->has_encoder; }

sd_dtype sd_vae_activation_dtype(const sd_vae *v) { return v->arena.dtype; }

sd_status sd_vae_set_activation_dtype(sd_vae *v, sd_dtype dtype) {
    return sd_arena_set_dtype(&v->arena, dtype, "VAE");
}

/* ------------------------------------------------------------- forward ---- */

static sd_tensor view4(const sd_tensor *buf, int64_t c, int64_t h, int64_t w) {
    return sd_tensor_view(buf->data, buf->dtype, buf->device, 4, (const int64_t[]){1, c, h, w});
}

/* The float32 input x in the activation dtype: x itself, or converted into an arena
 * tensor (kept until the caller releases its mark). */
static sd_status input_as_act(sd_vae *v, const sd_tensor *x, sd_tensor *tmp,
                              const sd_tensor **use) {
    *use = x;
    if (x->dtype == v->arena.dtype)
        return SD_OK;
    SD_TRY(sd_arena_tensor(&v->arena, tmp, v->arena.dtype, x->ndim, x->shape));
    *use = tmp;
    return v->be->convert(v->be, x, tmp);
}

/* x (1, C, H, W) -> out (1, C, H, W) = x + to_out(attention(q, k, v of group_norm(x))) */
static sd_status attention_forward(sd_vae *v, const vae_attention *a, const sd_tensor *x,
                                   sd_tensor *out) {
    const sd_backend *be = v->be;
    sd_arena *ar = &v->arena;
    int64_t C = x->shape[1], S = x->shape[2] * x->shape[3];
    size_t mark = sd_arena_mark(ar);
    sd_tensor n, tok, q, k, val, o;
    sd_status s;
    CHECK(sd_arena_act(ar, &n, 4, 1, C, x->shape[2], x->shape[3]));
    CHECK(sd_arena_act(ar, &tok, 3, 1, S, C, 1));
    CHECK(sd_arena_act(ar, &q, 3, 1, S, C, 1));
    CHECK(sd_arena_act(ar, &k, 3, 1, S, C, 1));
    CHECK(sd_arena_act(ar, &val, 3, 1, S, C, 1));
    CHECK(sd_arena_act(ar, &o, 3, 1, S, C, 1));
    sd_tensor n_cs = sd_tensor_view(n.data, n.dtype, n.device, 3, (const int64_t[]){1, C, S});
    CHECK(be->group_norm(be, x, a->norm_w, a->norm_b, v->cfg.norm_num_groups, VAE_EPS, 0, &n));
    CHECK(be->transpose_last2(be, &n_cs, &tok));        // (1, S, C)
    CHECK(be->linear(be, &tok, &a->q_w, a->q_b, &q));   // (1, S, C)
    CHECK(be->linear(be, &tok, &a->k_w, a->k_b, &k));
    CHECK(be->linear(be, &tok, &a->v_w, a->v_b, &val));
    CHECK(be->attention(be, &q, &k, &val, 1, 0, &o));   // one head of width C
    CHECK(be->linear(be, &o, &a->o_w, a->o_b, &tok));   // (1, S, C)
    CHECK(be->transpose_last2(be, &tok, &n_cs));        // (1, C, S)
    CHECK(be->add(be, &n, x, out));
done:
    sd_arena_release(ar, mark);
    return s;
}

/* mid block: resnet, attention, resnet. x (1, C, H, W) -> the result in `a`; `b` is
 * scratch; all three distinct. */
static sd_status mid_forward(sd_vae *v, const vae_mid *m, const sd_tensor *x, sd_tensor *a,
                             sd_tensor *b) {
    if (!m->has_attn) {
        SD_TRY(sd_resnet_block_forward(v->be, &v->arena, &m->res0, x, NULL, b));
        return sd_resnet_block_forward(v->be, &v->arena, &m->res1, b, NULL, a);
    }
    SD_TRY(sd_resnet_block_forward(v->be, &v->arena, &m->res0, x, NULL, a));
    SD_TRY(attention_forward(v, &m->attn, a, b));
    return sd_resnet_block_forward(v->be, &v->arena, &m->res1, b, NULL, a);
}

/* Three activation buffers, each as large as the largest activation of one image;
 * every stage reads one and writes another, and a resnet block keeps its own largest
 * temporaries in the third. */
typedef struct {
    sd_tensor buf[3];
    int cur; /* the buffer holding the current activation */
} rotation;

static sd_tensor *next_buf(rotation *r, int skip) {
    for (int i = 0; i < 3; i++)
        if (i != r->cur && i != skip)
            return &r->buf[i];
    return NULL;
}

static int index_of(rotation *r, const sd_tensor *t) { return (int)(t - r->buf); }

static sd_status rotation_init(sd_vae *v, rotation *r, int64_t max_elems) {
    for (int i = 0; i < 3; i++)
        SD_TRY(sd_arena_act(&v->arena, &r->buf[i], 1, max_elems, 1, 1, 1));
    r->cur = 0;
    return SD_OK;
}

/* largest activation (elements) of decoding one (latent, h, w) latent */
static int64_t decoder_max_elems(const sd_vae_config *c, int64_t h, int64_t w) {
    int n = c->num_blocks;
    int64_t best = (int64_t)c->block_out_channels[n - 1] * h * w, prev = c->block_out_channels[n - 1];
    for (int i = 0; i < n; i++) {
        int64_t out_c = c->block_out_channels[n - 1 - i];
        int64_t widest = prev > out_c ? prev : out_c;
        if (widest * h * w > best)
            best = widest * h * w;
        if (i < n - 1) {
            h *= 2;
            w *= 2;
            if (out_c * h * w > best)
                best = out_c * h * w;
        }
        prev = out_c;
    }
    return best;
}

static sd_status decode_one(sd_vae *v, const sd_tensor *z, sd_tensor *image) {
    const sd_backend *be = v->be;
    const sd_vae_config *c = &v->cfg;
    const vae_coder *d = &v->dec;
    int n = c->num_blocks;
    int64_t h = z->shape[2], w = z->shape[3];
    size_t mark = sd_arena_mark(&v->arena);
    rotation r;
    sd_status s;
    sd_tensor z_act, image_act;
    const sd_tensor *zin;
    CHECK(input_as_act(v, z, &z_act, &zin));
    if (image->dtype != v->arena.dtype)
        CHECK(sd_arena_tensor(&v->arena, &image_act, v->arena.dtype, 4, image->shape));
    CHECK(rotation_init(v, &r, decoder_max_elems(c, h, w)));
    int64_t C = c->block_out_channels[n - 1];
    /* post_quant_conv (1x1) then conv_in, (1, L, h, w) -> (1, C, h, w) */
    sd_tensor a = view4(&r.buf[1], c->latent_channels, h, w), x = view4(&r.buf[0], C, h, w);
    CHECK(be->conv2d(be, zin, v->post_quant_w, v->post_quant_b, 1, 0, &a));
    CHECK(be->conv2d(be, &a, d->conv_in_w, d->conv_in_b, 1, 1, &x));
    sd_tensor m1 = view4(&r.buf[1], C, h, w), m2 = view4(&r.buf[2], C, h, w);
    CHECK(mid_forward(v, &d->mid, &x, &m1, &m2));
    r.cur = 1;
    for (int i = 0; i < n; i++) {
        const vae_block *b = &d->blocks[i];
        int64_t out_c = c->block_out_channels[n - 1 - i];
        for (int j = 0; j < b->n_res; j++) {
            sd_tensor *dst = next_buf(&r, -1);
            sd_tensor *spare = &r.buf[3 - r.cur - index_of(&r, dst)]; /* the third one */
            sd_tensor in = view4(&r.buf[r.cur], b->res[j].in_ch, h, w);
            sd_tensor out = view4(dst, out_c, h, w);
            CHECK(sd_resnet_block_forward_scratch(be, &v->arena, &b->res[j], &in, NULL, spare,
                                                  &out));
            r.cur = index_of(&r, dst);
        }
        if (b->resample_w) { /* nearest 2x, then a 3x3 conv */
            sd_tensor *up_buf = next_buf(&r, -1);
            sd_tensor *conv_buf = next_buf(&r, index_of(&r, up_buf));
            sd_tensor in = view4(&r.buf[r.cur], out_c, h, w);
            sd_tensor up = view4(up_buf, out_c, 2 * h, 2 * w);
            sd_tensor out = view4(conv_buf, out_c, 2 * h, 2 * w);
            CHECK(be->upsample_nearest2x(be, &in, &up));
            CHECK(be->conv2d(be, &up, b->resample_w, b->resample_b, 1, 1, &out));
            r.cur = index_of(&r, conv_buf);
            h *= 2;
            w *= 2;
        }
    }
    int64_t bottom = c->block_out_channels[0];
    sd_tensor in = view4(&r.buf[r.cur], bottom, h, w);
    sd_tensor act = view4(next_buf(&r, -1), bottom, h, w);
    CHECK(be->group_norm(be, &in, d->norm_w, d->norm_b, c->norm_num_groups, VAE_EPS, 1, &act));
    if (image->dtype == v->arena.dtype) {
        CHECK(be->conv2d(be, &act, d->conv_out_w, d->conv_out_b, 1, 1, image));
    } else {
        CHECK(be->conv2d(be, &act, d->conv_out_w, d->conv_out_b, 1, 1, &image_act));
        CHECK(be->convert(be, &image_act, image));
    }
done:
    sd_arena_release(&v->arena, mark);
    return s;
}

static int64_t encoder_max_elems(const sd_vae_config *c, int64_t H, int64_t W) {
    int n = c->num_blocks;
    int64_t prev = c->block_out_channels[0], best = prev * H * W;
    for (int i = 0; i < n; i++) {
        int64_t out_c = c->block_out_channels[i];
        int64_t widest = prev > out_c ? prev : out_c;
        if (widest * H * W > best)
            best = widest * H * W;
        if (i < n - 1) {
            if (out_c * (H + 1) * (W + 1) > best)
                best = out_c * (H + 1) * (W + 1);
            H /= 2;
            W /= 2;
        }
        prev = out_c;
    }
    int64_t L2 = 2 * c->latent_channels;
    return best > L2 * H * W ? best : L2 * H * W;
}

/* img (1, in, H, W) -> mean (1, L, H/f, W/f) and, when logvar is not NULL, logvar likewise */
static sd_status encode_one(sd_vae *v, const sd_tensor *img, sd_tensor *mean, sd_tensor *logvar) {
    const sd_backend *be = v->be;
    const sd_vae_config *c = &v->cfg;
    const vae_coder *e = &v->enc;
    int n = c->num_blocks;
    int64_t H = img->shape[2], W = img->shape[3];
    size_t mark = sd_arena_mark(&v->arena);
    rotation r;
    sd_status s;
    sd_tensor img_act;
    const sd_tensor *imgin;
    CHECK(input_as_act(v, img, &img_act, &imgin));
    CHECK(rotation_init(v, &r, encoder_max_elems(c, H, W)));
    int64_t prev = c->block_out_channels[0];
    sd_tensor x = view4(&r.buf[0], prev, H, W);
    CHECK(be->conv2d(be, imgin, e->conv_in_w, e->conv_in_b, 1, 1, &x));
    r.cur = 0;
    for (int i = 0; i < n; i++) {
        const vae_block *b = &e->blocks[i];
        int64_t out_c = c->block_out_channels[i];
        for (int j = 0; j < b->n_res; j++) {
            sd_tensor *dst = next_buf(&r, -1);
            sd_tensor *spare = &r.buf[3 - r.cur - index_of(&r, dst)]; /* the third one */
            sd_tensor in = view4(&r.buf[r.cur], b->res[j].in_ch, H, W);
            sd_tensor out = view4(dst, out_c, H, W);
            CHECK(sd_resnet_block_forward_scratch(be, &v->arena, &b->res[j], &in, NULL, spare,
                                                  &out));
            r.cur = index_of(&r, dst);
        }
        if (b->resample_w) { /* zero-pad bottom and right by one, then 3x3 stride 2 */
            sd_tensor *pad_buf = next_buf(&r, -1);
            sd_tensor *conv_buf = next_buf(&r, index_of(&r, pad_buf));
            sd_tensor in = view4(&r.buf[r.cur], out_c, H, W);
            sd_tensor padded = view4(pad_buf, out_c, H + 1, W + 1);
            sd_tensor out = view4(conv_buf, out_c, H / 2, W / 2);
            CHECK(be->pad_bottom_right(be, &in, 1, 1, &padded));
            CHECK(be->conv2d(be, &padded, b->resample_w, b->resample_b, 2, 0, &out));
            r.cur = index_of(&r, conv_buf);
            H /= 2;
            W /= 2;
        }
        prev = out_c;
    }
    sd_tensor *m1 = next_buf(&r, -1), *m2 = next_buf(&r, index_of(&r, m1));
    sd_tensor in = view4(&r.buf[r.cur], prev, H, W);
    sd_tensor a = view4(m1, prev, H, W), b = view4(m2, prev, H, W);
    CHECK(mid_forward(v, &e->mid, &in, &a, &b));
    /* a holds the mid output; norm + SiLU into b, conv_out into the old input buffer */
    int64_t L2 = 2 * c->latent_channels;
    sd_tensor moments = view4(&r.buf[r.cur], L2, H, W), q = view4(m1, L2, H, W);
    CHECK(be->group_norm(be, &a, e->norm_w, e->norm_b, c->norm_num_groups, VAE_EPS, 1, &b));
    CHECK(be->conv2d(be, &b, e->conv_out_w, e->conv_out_b, 1, 1, &moments));
    CHECK(be->conv2d(be, &moments, v->quant_w, v->quant_b, 1, 0, &q));
    /* The moments (1, 2L, H, W) are mean then logvar along channels: with one image each
     * half is a contiguous block, converted to the outputs' float32. */
    {
        int64_t L = c->latent_channels;
        sd_tensor first = view4(&q, L, H, W);
        CHECK(be->convert(be, &first, mean));
        if (logvar) {
            sd_tensor second =
                sd_tensor_view((char *)q.data + (size_t)(L * H * W) * sd_dtype_size(q.dtype),
                               q.dtype, q.device, 4, (const int64_t[]){1, L, H, W});
            CHECK(be->convert(be, &second, logvar));
        }
    }
done:
    sd_arena_release(&v->arena, mark);
    return s;
}

static sd_tensor image_slice(const sd_tensor *t, int64_t i) {
    int64_t per = t->shape[1] * t->shape[2] * t->shape[3];
    return sd_tensor_view((char *)t->data + (size_t)(i * per) * sd_dtype_size(t->dtype),
                          t->dtype, t->device, 4,
                          (const int64_t[]){1, t->shape[1], t->shape[2], t->shape[3]});
}

sd_status sd_vae_decode(sd_vae *v, const sd_tensor *z, sd_tensor *image) {
    const sd_vae_config *c = &v->cfg;
    int64_t f = (int64_t)1 << (c->num_blocks - 1);
    if (z->device != v->be->device || image->device != v->be->device)
        return sd_fail(SD_ERR_INVALID, "VAE decode: latents and image must be on the %s device",
                       v->be->name);
    if (z->ndim != 4 || z->shape[1] != c->latent_channels || z->dtype != SD_F32)
        return sd_fail(SD_ERR_INVALID, "VAE decode: latents must be float32 (B, %d, h, w)",
                       c->latent_channels);
    if (image->dtype != SD_F32 || image->ndim != 4 || image->shape[0] != z->shape[0] ||
        image->shape[1] != c->out_channels || image->shape[2] != z->shape[2] * f ||
        image->shape[3] != z->shape[3] * f)
        return sd_fail(SD_ERR_INVALID, "VAE decode: image must be (%lld, %d, %lld, %lld)",
                       (long long)z->shape[0], c->out_channels, (long long)(z->shape[2] * f),
                       (long long)(z->shape[3] * f));
    /* every image takes the same stack: plan one (plan.h), then run them all */
    sd_tensor z0 = image_slice(z, 0), o0 = image_slice(image, 0);
    const sd_backend *be = v->be;
    v->be = sd_plan_backend(be);
    sd_arena_plan_begin(&v->arena);
    sd_status s = decode_one(v, &z0, &o0);
    sd_arena_plan_end(&v->arena);
    v->be = be;
    SD_TRY(s);
    SD_TRY(sd_arena_reset(&v->arena));
    for (int64_t i = 0; i < z->shape[0]; i++) {
        sd_tensor zi = image_slice(z, i), oi = image_slice(image, i);
        SD_TRY(decode_one(v, &zi, &oi));
    }
    return SD_OK;
}

/* an output of encode: float32 (B, latent, H / f, W / f) */
static sd_status check_latent_out(const sd_tensor *t, const sd_tensor *image, int64_t latent,
                                  int64_t f, const char *arg) {
    if (t->dtype != SD_F32 || t->ndim != 4 || t->shape[0] != image->shape[0] ||
        t->shape[1] != latent || t->shape[2] != image->shape[2] / f ||
        t->shape[3] != image->shape[3] / f)
        return sd_fail(SD_ERR_INVALID, "VAE encode: '%s' must be float32 (%lld, %lld, %lld, %lld)",
                       arg, (long long)image->shape[0], (long long)latent,
                       (long long)(image->shape[2] / f), (long long)(image->shape[3] / f));
    return SD_OK;
}

sd_status sd_vae_encode_moments(sd_vae *v, const sd_tensor *image, sd_tensor *mean,
                                sd_tensor *logvar) {
    const sd_vae_config *c = &v->cfg;
    int64_t f = (int64_t)1 << (c->num_blocks - 1);
    if (!v->has_encoder)
        return sd_fail(SD_ERR_UNSUPPORTED, "VAE encode: this VAE was loaded without its encoder");
    if (image->ndim != 4 || image->shape[1] != c->in_channels || image->dtype != SD_F32 ||
        image->shape[2] % f || image->shape[3] % f)
        return sd_fail(SD_ERR_INVALID,
                       "VAE encode: images must be float32 (B, %d, H, W) with H and W multiples "
                       "of %lld",
                       c->in_channels, (long long)f);
    if (image->device != v->be->device || mean->device != v->be->device ||
        (logvar && logvar->device != v->be->device))
        return sd_fail(SD_ERR_INVALID, "VAE encode: image and outputs must be on the %s device",
                       v->be->name);
    SD_TRY(check_latent_out(mean, image, c->latent_channels, f, "mean"));
    if (logvar)
        SD_TRY(check_latent_out(logvar, image, c->latent_channels, f, "logvar"));
    sd_tensor x0 = image_slice(image, 0), m0 = image_slice(mean, 0), l0;
    if (logvar)
        l0 = image_slice(logvar, 0);
    const sd_backend *be = v->be;
    v->be = sd_plan_backend(be);
    sd_arena_plan_begin(&v->arena);
    sd_status s = encode_one(v, &x0, &m0, logvar ? &l0 : NULL);
    sd_arena_plan_end(&v->arena);
    v->be = be;
    SD_TRY(s);
    SD_TRY(sd_arena_reset(&v->arena));
    for (int64_t i = 0; i < image->shape[0]; i++) {
        sd_tensor xi = image_slice(image, i), mi = image_slice(mean, i), li;
        if (logvar)
            li = image_slice(logvar, i);
        SD_TRY(encode_one(v, &xi, &mi, logvar ? &li : NULL));
    }
    return SD_OK;
}

sd_status sd_vae_encode(sd_vae *v, const sd_tensor *image, sd_tensor *mean) {
    return sd_vae_encode_moments(v, image, mean, NULL);
}
