/* Transformer2DModel and BasicTransformerBlock (see transformer.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "blocks.h"
#include "transformer.h"

#define VEC(n) ((const int64_t[]){(n)})
#define MAT(a, b) ((const int64_t[]){(a), (b)})
#define CHECK(expr)                    \
    do {                               \
        if ((s = (expr)) != SD_OK)     \
            goto done;                 \
    } while (0)

/* diffusers hard-codes these: the Transformer2D GroupNorm and the blocks' LayerNorms */
#define TRANSFORMER_GROUP_NORM_EPS 1e-6f
#define TRANSFORMER_LAYER_NORM_EPS 1e-5f

/* ------------------------------------------------------------- weights --- */

/* "<prefix>.<name>" if the checkpoint has it (shape-checked), else NULL. */
static sd_status optional_param(const sd_weights *w, const char *prefix, const char *name,
                                int ndim, const int64_t *shape, const sd_tensor **out) {
    char full[512];
    *out = NULL;
    int n = snprintf(full, sizeof full, "%s.%s", prefix, name);
    if (n < 0 || (size_t)n >= sizeof full || !sd_weights_find(w, full))
        return SD_OK;
    return sd_block_param(w, prefix, name, ndim, shape, out);
}

static sd_status attention_load(const sd_weights *w, const char *prefix, int C, int kv_dim,
                                sd_attention_weights *a) {
    SD_TRY(sd_block_param(w, prefix, "to_q.weight", 2, MAT(C, C), &a->q_w));
    SD_TRY(optional_param(w, prefix, "to_q.bias", 1, VEC(C), &a->q_b));
    SD_TRY(sd_block_param(w, prefix, "to_k.weight", 2, MAT(C, kv_dim), &a->k_w));
    SD_TRY(optional_param(w, prefix, "to_k.bias", 1, VEC(C), &a->k_b));
    SD_TRY(sd_block_param(w, prefix, "to_v.weight", 2, MAT(C, kv_dim), &a->v_w));
    SD_TRY(optional_param(w, prefix, "to_v.bias", 1, VEC(C), &a->v_b));
    SD_TRY(sd_block_param(w, prefix, "to_out.0.weight", 2, MAT(C, C), &a->out_w));
    SD_TRY(sd_block_param(w, prefix, "to_out.0.bias", 1, VEC(C), &a->out_b));
    return SD_OK;
}

static sd_status transformer_block_load(const sd_weights *w, const char *prefix, int C,
                                        int context_dim, sd_transformer_block *b) {
    char sub[512];
    SD_TRY(sd_block_param(w, prefix, "norm1.weight", 1, VEC(C), &b->norm1_w));
    SD_TRY(sd_block_param(w, prefix, "norm1.bias", 1, VEC(C), &b->norm1_b));
    snprintf(sub, sizeof sub, "%.400s.attn1", prefix);
    SD_TRY(attention_load(w, sub, C, C, &b->attn1));
    SD_TRY(sd_block_param(w, prefix, "norm2.weight", 1, VEC(C), &b->norm2_w));
    SD_TRY(sd_block_param(w, prefix, "norm2.bias", 1, VEC(C), &b->norm2_b));
    snprintf(sub, sizeof sub, "%.400s.attn2", prefix);
    SD_TRY(attention_load(w, sub, C, context_dim, &b->attn2));
    SD_TRY(sd_block_param(w, prefix, "norm3.weight", 1, VEC(C), &b->norm3_w));
    SD_TRY(sd_block_param(w, prefix, "norm3.bias", 1, VEC(C), &b->norm3_b));
    /* GEGLU: one projection to 2 * 4C, split into value and gate */
    SD_TRY(sd_block_param(w, prefix, "ff.net.0.proj.weight", 2, MAT(8 * C, C), &b->ff_in_w));
    SD_TRY(sd_block_param(w, prefix, "ff.net.0.proj.bias", 1, VEC(8 * C), &b->ff_in_b));
    SD_TRY(sd_block_param(w, prefix, "ff.net.2.weight", 2, MAT(C, 4 * C), &b->ff_out_w));
    SD_TRY(sd_block_param(w, prefix, "ff.net.2.bias", 1, VEC(C), &b->ff_out_b));
    return SD_OK;
}

/* proj_in / proj_out: a 1x1 conv (C, C, 1, 1) or, with linear projection, a linear (C, C) */
static sd_status projection_load(const sd_weights *w, const char *prefix, const char *name,
                                 int C, int linear_proj, const sd_tensor **weight,
                                 const sd_tensor **bias) {
    char wname[64], bname[64];
    snprintf(wname, sizeof wname, "%s.weight", name);
    snprintf(bname, sizeof bname, "%s.bias", name);
    if (linear_proj)
        SD_TRY(sd_block_param(w, prefix, wname, 2, MAT(C, C), weight));
    else
        SD_TRY(sd_block_param(w, prefix, wname, 4, ((const int64_t[]){C, C, 1, 1}), weight));
    return sd_block_param(w, prefix, bname, 1, VEC(C), bias);
}

sd_status sd_transformer2d_load(const sd_weights *w, const char *prefix, int channels, int heads,
                                int depth, int context_dim, int groups, int linear_proj,
                                sd_transformer2d *t) {
    memset(t, 0, sizeof *t);
    if (heads < 1 || channels % heads != 0)
        return sd_fail(SD_ERR_INVALID, "%s: %d channels do not split into %d attention heads",
                       prefix, channels, heads);
    if (depth < 1)
        return sd_fail(SD_ERR_INVALID, "%s: transformer depth must be >= 1", prefix);
    *t = (sd_transformer2d){.channels = channels, .heads = heads, .depth = depth,
                            .context_dim = context_dim, .groups = groups,
                            .linear_proj = linear_proj};
    int C = channels;
    SD_TRY(sd_block_param(w, prefix, "norm.weight", 1, VEC(C), &t->norm_w));
    SD_TRY(sd_block_param(w, prefix, "norm.bias", 1, VEC(C), &t->norm_b));
    SD_TRY(projection_load(w, prefix, "proj_in", C, linear_proj, &t->proj_in_w, &t->proj_in_b));
    SD_TRY(projection_load(w, prefix, "proj_out", C, linear_proj, &t->proj_out_w,
                           &t->proj_out_b));
    t->blocks = calloc((size_t)depth, sizeof *t->blocks);
    if (!t->blocks)
        return sd_fail(SD_ERR_NOMEM, "%s: cannot allocate %d transformer blocks", prefix, depth);
    for (int i = 0; i < depth; i++) {
        char sub[512];
        snprintf(sub, sizeof sub, "%.400s.transformer_blocks.%d", prefix, i);
        sd_status s = transformer_block_load(w, sub, C, context_dim, &t->blocks[i]);
        if (s != SD_OK) {
            sd_transformer2d_free(t);
            return s;
        }
    }
    return SD_OK;
}

void sd_transformer2d_free(sd_transformer2d *t) {
    free(t->blocks);
    t->blocks = NULL;
}

/* ------------------------------------------------------------- forward --- */

/* h (B, T, C) += to_out(attention(to_q(x), to_k(kv), to_v(kv)))
 * x (B, T, C) is the normed tokens; kv (B, Tk, Ckv) is x itself or the context. */
static sd_status attention_forward(const sd_backend *be, sd_arena *arena,
                                   const sd_attention_weights *a, int heads, const sd_tensor *x,
                                   const sd_tensor *kv, sd_tensor *h) {
    int64_t B = x->shape[0], T = x->shape[1], C = x->shape[2], Tk = kv->shape[1];
    size_t mark = sd_arena_mark(arena);
    sd_tensor q, k, v, o;
    sd_status s = SD_OK;
    CHECK(sd_arena_act(arena, &q, 3, B, T, C, 1));
    CHECK(sd_arena_act(arena, &k, 3, B, Tk, C, 1));
    CHECK(sd_arena_act(arena, &v, 3, B, Tk, C, 1));
    CHECK(sd_arena_act(arena, &o, 3, B, T, C, 1));
    CHECK(be->linear(be, x, a->q_w, a->q_b, &q));   // (B, T, C)
    CHECK(be->linear(be, kv, a->k_w, a->k_b, &k));  // (B, Tk, C)
    CHECK(be->linear(be, kv, a->v_w, a->v_b, &v));  // (B, Tk, C)
    CHECK(be->attention(be, &q, &k, &v, heads, 0, &o)); // (B, T, heads * C/heads)
    CHECK(be->linear_add(be, &o, a->out_w, a->out_b, h, h)); // h += to_out(o)
done:
    sd_arena_release(arena, mark);
    return s;
}

/* h (B, T, C) in place; context (B, Tc, ctx) */
static sd_status transformer_block_forward(const sd_backend *be, sd_arena *arena,
                                           const sd_transformer_block *blk, int heads,
                                           sd_tensor *h, const sd_tensor *context) {
    int64_t B = h->shape[0], T = h->shape[1], C = h->shape[2];
    float eps = TRANSFORMER_LAYER_NORM_EPS;
    size_t mark = sd_arena_mark(arena);
    sd_tensor n, g, f;
    sd_status s = SD_OK;
    CHECK(sd_arena_act(arena, &n, 3, B, T, C, 1));
    /* self-attention */
    CHECK(be->layer_norm(be, h, blk->norm1_w, blk->norm1_b, eps, &n)); // (B, T, C)
    CHECK(attention_forward(be, arena, &blk->attn1, heads, &n, &n, h));
    /* cross-attention on the text tokens */
    CHECK(be->layer_norm(be, h, blk->norm2_w, blk->norm2_b, eps, &n));
    CHECK(attention_forward(be, arena, &blk->attn2, heads, &n, context, h));
    /* feed-forward: Linear(C, 8C) -> GEGLU -> Linear(4C, C) */
    CHECK(be->layer_norm(be, h, blk->norm3_w, blk->norm3_b, eps, &n));
    CHECK(sd_arena_act(arena, &g, 3, B, T, 8 * C, 1));
    CHECK(sd_arena_act(arena, &f, 3, B, T, 4 * C, 1));
    CHECK(be->linear(be, &n, blk->ff_in_w, blk->ff_in_b, &g)); // (B, T, 8C)
    CHECK(be->geglu(be, &g, &f));                             // (B, T, 4C)
    CHECK(be->linear_add(be, &f, blk->ff_out_w, blk->ff_out_b, h, h)); // h += ff_out(f)
done:
    sd_arena_release(arena, mark);
    return s;
}

/* The same memory seen with another shape (same element count). */
static sd_tensor reshaped(const sd_tensor *t, int ndim, int64_t d0, int64_t d1, int64_t d2,
                          int64_t d3) {
    int64_t shape[4] = {d0, d1, d2, d3};
    return sd_tensor_view(t->data, t->dtype, t->device, ndim, shape);
}

sd_status sd_transformer2d_forward(const sd_backend *be, sd_arena *arena,
                                   const sd_transformer2d *t, const sd_tensor *x,
                                   const sd_tensor *context, sd_tensor *out) {
    int64_t B = x->shape[0], C = x->shape[1], H = x->shape[2], W = x->shape[3], S = H * W;
    if (x->ndim != 4 || C != t->channels)
        return sd_fail(SD_ERR_INVALID, "transformer: x must be (B, %d, H, W)", t->channels);
    if (context->ndim != 3 || context->shape[0] != B || context->shape[2] != t->context_dim)
        return sd_fail(SD_ERR_INVALID, "transformer: context must be (%lld, T, %d)",
                       (long long)B, t->context_dim);
    size_t mark = sd_arena_mark(arena);
    sd_tensor a, b, tok;
    sd_status s = SD_OK;
    CHECK(sd_arena_act(arena, &a, 4, B, C, H, W));
    CHECK(sd_arena_act(arena, &b, 4, B, C, H, W));
    CHECK(sd_arena_act(arena, &tok, 3, B, S, C, 1));
    sd_tensor a_img = reshaped(&a, 3, B, C, S, 1), b_img = reshaped(&b, 3, B, C, S, 1);
    sd_tensor b_tok = reshaped(&b, 3, B, S, C, 1);

    CHECK(be->group_norm(be, x, t->norm_w, t->norm_b, t->groups, TRANSFORMER_GROUP_NORM_EPS, 0,
                         &a)); // (B, C, H, W)
    if (t->linear_proj) {
        CHECK(be->transpose_last2(be, &a_img, &b_tok));                  // (B, S, C)
        CHECK(be->linear(be, &b_tok, t->proj_in_w, t->proj_in_b, &tok)); // (B, S, C)
    } else {
        CHECK(be->conv2d(be, &a, t->proj_in_w, t->proj_in_b, 1, 0, &b)); // (B, C, H, W)
        CHECK(be->transpose_last2(be, &b_img, &tok));                    // (B, S, C)
    }

    for (int i = 0; i < t->depth; i++)
        CHECK(transformer_block_forward(be, arena, &t->blocks[i], t->heads, &tok, context));

    if (t->linear_proj) {
        CHECK(be->linear(be, &tok, t->proj_out_w, t->proj_out_b, &b_tok)); // (B, S, C)
        CHECK(be->transpose_last2(be, &b_tok, &a_img));                    // (B, C, S)
        CHECK(be->add(be, &a, x, out));                                   // (B, C, H, W)
    } else {
        CHECK(be->transpose_last2(be, &tok, &a_img));                      // (B, C, S)
        CHECK(be->conv2d_add(be, &a, t->proj_out_w, t->proj_out_b, 1, 0, x, out)); // + x
    }
done:
    sd_arena_release(arena, mark);
    return s;
}
