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

/* attn1 (kv_dim C) or attn2 (kv_dim the context's): q, k, v without biases as diffusers
 * has them (a converted checkpoint's are used when present), to_out.0 with one */
static sd_status attention_declare(sd_tensor_decls *d, const char *prefix, int C, int kv_dim,
                                   sd_attention_weights *a) {
    SD_TRY(sd_decl(d, prefix, "to_q.weight", 2, MAT(C, C), 0, &a->q_w));
    SD_TRY(sd_decl(d, prefix, "to_q.bias", 1, VEC(C), SD_DECL_OPTIONAL, &a->q_b));
    SD_TRY(sd_decl(d, prefix, "to_k.weight", 2, MAT(C, kv_dim), 0, &a->k_w));
    SD_TRY(sd_decl(d, prefix, "to_k.bias", 1, VEC(C), SD_DECL_OPTIONAL, &a->k_b));
    SD_TRY(sd_decl(d, prefix, "to_v.weight", 2, MAT(C, kv_dim), 0, &a->v_w));
    SD_TRY(sd_decl(d, prefix, "to_v.bias", 1, VEC(C), SD_DECL_OPTIONAL, &a->v_b));
    return sd_decl_linear(d, prefix, "to_out.0", C, C, &a->out_w, &a->out_b);
}

static sd_status transformer_block_declare(sd_tensor_decls *d, const char *prefix, int C,
                                           int context_dim, sd_transformer_block *b) {
    char sub[512];
    SD_TRY(sd_decl_norm(d, prefix, "norm1", C, &b->norm1_w, &b->norm1_b));
    snprintf(sub, sizeof sub, "%.400s.attn1", prefix);
    SD_TRY(attention_declare(d, sub, C, C, &b->attn1));
    SD_TRY(sd_decl_norm(d, prefix, "norm2", C, &b->norm2_w, &b->norm2_b));
    snprintf(sub, sizeof sub, "%.400s.attn2", prefix);
    SD_TRY(attention_declare(d, sub, C, context_dim, &b->attn2));
    SD_TRY(sd_decl_norm(d, prefix, "norm3", C, &b->norm3_w, &b->norm3_b));
    /* GEGLU: one projection to 2 * 4C, split into value and gate */
    SD_TRY(sd_decl_linear(d, prefix, "ff.net.0.proj", 8 * C, C, &b->ff_in_w, &b->ff_in_b));
    return sd_decl_linear(d, prefix, "ff.net.2", C, 4 * C, &b->ff_out_w, &b->ff_out_b);
}

/* proj_in / proj_out: a 1x1 conv (C, C, 1, 1) or, with linear projection, a linear (C, C) */
static sd_status projection_declare(sd_tensor_decls *d, const char *prefix, const char *name,
                                    int C, int linear_proj, const sd_tensor **weight,
                                    const sd_tensor **bias) {
    if (linear_proj)
        return sd_decl_linear(d, prefix, name, C, C, weight, bias);
    return sd_decl_conv(d, prefix, name, C, C, 1, weight, bias);
}

sd_status sd_transformer2d_declare(sd_tensor_decls *d, const char *prefix, int channels,
                                   int heads, int depth, int context_dim, int groups,
                                   int linear_proj, sd_transformer2d *t) {
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
    t->blocks = calloc((size_t)depth, sizeof *t->blocks);
    if (!t->blocks)
        return sd_fail(SD_ERR_NOMEM, "%s: cannot allocate %d transformer blocks", prefix, depth);
    sd_status s;
    if ((s = sd_decl_norm(d, prefix, "norm", C, &t->norm_w, &t->norm_b)) ||
        (s = projection_declare(d, prefix, "proj_in", C, linear_proj, &t->proj_in_w,
                                &t->proj_in_b)))
        goto fail;
    for (int i = 0; i < depth; i++) {
        char sub[512];
        snprintf(sub, sizeof sub, "%.400s.transformer_blocks.%d", prefix, i);
        if ((s = transformer_block_declare(d, sub, C, context_dim, &t->blocks[i])))
            goto fail;
    }
    if ((s = projection_declare(d, prefix, "proj_out", C, linear_proj, &t->proj_out_w,
                                &t->proj_out_b)))
        goto fail;
    return SD_OK;
fail:
    sd_transformer2d_free(t);
    return s;
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
