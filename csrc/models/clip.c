/* The CLIP text encoder (see clip.h). */
#include <stdio.h>
#include <stdlib.h>

#include "clip.h"
#include "runtime/arena.h"
#include "runtime/plan.h"

typedef struct {
    const sd_tensor *ln1_w, *ln1_b, *ln2_w, *ln2_b;
    const sd_tensor *q_w, *q_b, *k_w, *k_b, *v_w, *v_b, *o_w, *o_b;
    const sd_tensor *fc1_w, *fc1_b, *fc2_w, *fc2_b;
} clip_layer;

struct sd_clip {
    sd_clip_config cfg;
    const sd_backend *be;
    const sd_tensor *token_embedding, *position_embedding; /* (V, C), (P, C) */
    const sd_tensor *final_w, *final_b;
    clip_layer *layers;
    sd_arena arena;
    int32_t *position_ids; /* 0..P-1 repeated for a batch, host */
    int position_ids_len;
};

static sd_status check_config(const sd_clip_config *c) {
    if (c->vocab_size < 1 || c->hidden_size < 1 || c->intermediate_size < 1 ||
        c->num_hidden_layers < 1 || c->num_attention_heads < 1 || c->max_position_embeddings < 1)
        return sd_fail(SD_ERR_INVALID, "text encoder config: sizes must be positive");
    if (c->hidden_size % c->num_attention_heads)
        return sd_fail(SD_ERR_INVALID,
                       "text encoder config: num_attention_heads (%d) must divide hidden_size (%d)",
                       c->num_attention_heads, c->hidden_size);
    if (!(c->layer_norm_eps > 0.0f))
        return sd_fail(SD_ERR_INVALID, "text encoder config: layer_norm_eps must be positive");
    return SD_OK;
}

/* The model's tensors, declared once: what sd_clip_create binds and sd_clip_tensors lists.
 * Names are CLIPTextModel's state-dict names (transformers 4, with the text_model. wrapper). */

static sd_status layer_declare(sd_tensor_decls *d, int i, int C, int F, clip_layer *l) {
    char p[128];
    snprintf(p, sizeof p, "text_model.encoder.layers.%d", i);
    SD_TRY(sd_decl_linear(d, p, "self_attn.q_proj", C, C, &l->q_w, &l->q_b));
    SD_TRY(sd_decl_linear(d, p, "self_attn.k_proj", C, C, &l->k_w, &l->k_b));
    SD_TRY(sd_decl_linear(d, p, "self_attn.v_proj", C, C, &l->v_w, &l->v_b));
    SD_TRY(sd_decl_linear(d, p, "self_attn.out_proj", C, C, &l->o_w, &l->o_b));
    SD_TRY(sd_decl_norm(d, p, "layer_norm1", C, &l->ln1_w, &l->ln1_b));
    SD_TRY(sd_decl_linear(d, p, "mlp.fc1", F, C, &l->fc1_w, &l->fc1_b));
    SD_TRY(sd_decl_linear(d, p, "mlp.fc2", C, F, &l->fc2_w, &l->fc2_b));
    return sd_decl_norm(d, p, "layer_norm2", C, &l->ln2_w, &l->ln2_b);
}

/* Every tensor of m (its config set and its layers allocated), each with its slot in m. */
static sd_status clip_declare(sd_tensor_decls *d, sd_clip *m) {
    const sd_clip_config *c = &m->cfg;
    int C = c->hidden_size;
    SD_TRY(sd_decl(d, "text_model.embeddings", "token_embedding.weight", 2,
                   (const int64_t[]){c->vocab_size, C}, 0, &m->token_embedding));
    SD_TRY(sd_decl(d, "text_model.embeddings", "position_embedding.weight", 2,
                   (const int64_t[]){c->max_position_embeddings, C}, 0, &m->position_embedding));
    for (int i = 0; i < c->num_hidden_layers; i++)
        SD_TRY(layer_declare(d, i, C, c->intermediate_size, &m->layers[i]));
    return sd_decl_norm(d, "text_model", "final_layer_norm", C, &m->final_w, &m->final_b);
}

/* A model with its config set and its layer table allocated. */
static sd_status clip_skeleton(const sd_clip_config *config, sd_clip **out) {
    *out = NULL;
    SD_TRY(check_config(config));
    sd_clip *m = calloc(1, sizeof *m);
    if (m)
        m->layers = calloc((size_t)config->num_hidden_layers, sizeof(clip_layer));
    if (!m || !m->layers) {
        free(m);
        return sd_fail(SD_ERR_NOMEM, "cannot allocate the text encoder");
    }
    m->cfg = *config;
    *out = m;
    return SD_OK;
}

sd_status sd_clip_tensors(const sd_clip_config *config, sd_tensor_decls *out) {
    if (!config || !out)
        return sd_fail(SD_ERR_INVALID, "text encoder: config and a list are required");
    sd_clip *m;
    SD_TRY(clip_skeleton(config, &m));
    sd_status s = clip_declare(out, m);
    sd_decls_detach(out);
    free(m->layers);
    free(m);
    return s;
}

sd_status sd_clip_create(const sd_clip_config *config, const sd_weights *weights,
                         const sd_backend *be, sd_clip **out) {
    *out = NULL;
    SD_TRY(check_config(config));
    if (!be->embedding)
        return sd_fail(SD_ERR_UNSUPPORTED, "the %s backend has no embedding op", be->name);
    sd_clip *m;
    SD_TRY(clip_skeleton(config, &m));
    m->be = be;
    sd_arena_init(&m->arena, be);
    sd_tensor_decls d;
    sd_decls_init(&d);
    sd_status s = clip_declare(&d, m);
    if (s == SD_OK)
        s = sd_decls_bind(&d, weights);
    sd_decls_free(&d);
    if (s != SD_OK) {
        sd_clip_free(m);
        return s;
    }
    *out = m;
    return SD_OK;
}

void sd_clip_free(sd_clip *m) {
    if (!m)
        return;
    sd_arena_free(&m->arena);
    free(m->layers);
    free(m->position_ids);
    free(m);
}

/* h (B, T, C) += out_proj(attention(ln1(h))) with a causal mask */
static sd_status attention_block(sd_clip *m, const clip_layer *l, sd_tensor *h, int B, int T) {
    const sd_backend *be = m->be;
    sd_arena *a = &m->arena;
    int C = m->cfg.hidden_size;
    size_t mark = sd_arena_mark(a);
    sd_tensor x, q, k, v, o;
    sd_status s;
    if ((s = sd_arena_act(a, &x, 3, B, T, C, 1)) || (s = sd_arena_act(a, &q, 3, B, T, C, 1)) ||
        (s = sd_arena_act(a, &k, 3, B, T, C, 1)) || (s = sd_arena_act(a, &v, 3, B, T, C, 1)) ||
        (s = sd_arena_act(a, &o, 3, B, T, C, 1)) ||
        (s = be->layer_norm(be, h, l->ln1_w, l->ln1_b, m->cfg.layer_norm_eps, &x)) ||
        (s = be->linear(be, &x, l->q_w, l->q_b, &q)) ||
        (s = be->linear(be, &x, l->k_w, l->k_b, &k)) ||
        (s = be->linear(be, &x, l->v_w, l->v_b, &v)) ||
        (s = be->attention(be, &q, &k, &v, m->cfg.num_attention_heads, 1, &o)) ||
        (s = be->linear(be, &o, l->o_w, l->o_b, &x)) || (s = be->add(be, h, &x, h)))
        goto done;
done:
    sd_arena_release(a, mark);
    return s;
}

/* h (B, T, C) += fc2(act(fc1(ln2(h)))) */
static sd_status mlp_block(sd_clip *m, const clip_layer *l, sd_tensor *h, int B, int T) {
    const sd_backend *be = m->be;
    sd_arena *a = &m->arena;
    int C = m->cfg.hidden_size, F = m->cfg.intermediate_size;
    size_t mark = sd_arena_mark(a);
    sd_tensor x, f, y;
    sd_status s;
    if ((s = sd_arena_act(a, &x, 3, B, T, C, 1)) || (s = sd_arena_act(a, &f, 3, B, T, F, 1)) ||
        (s = sd_arena_act(a, &y, 3, B, T, C, 1)) ||
        (s = be->layer_norm(be, h, l->ln2_w, l->ln2_b, m->cfg.layer_norm_eps, &x)) ||
        (s = be->linear(be, &x, l->fc1_w, l->fc1_b, &f)) ||
        (s = m->cfg.quick_gelu ? be->quick_gelu(be, &f, &f) : be->gelu(be, &f, 0, &f)) ||
        (s = be->linear(be, &f, l->fc2_w, l->fc2_b, &y)) || (s = be->add(be, h, &y, h)))
        goto done;
done:
    sd_arena_release(a, mark);
    return s;
}

static sd_status forward_body(sd_clip *m, const int32_t *ids, int B, int T, int clip_skip,
                              sd_tensor *out);

sd_status sd_clip_forward(sd_clip *m, const int32_t *ids, int B, int T, int clip_skip,
                          sd_tensor *out) {
    const sd_backend *be = m->be;
    int C = m->cfg.hidden_size, L = m->cfg.num_hidden_layers;
    if (B < 1 || T < 1 || T > m->cfg.max_position_embeddings)
        return sd_fail(SD_ERR_INVALID, "text encoder: %d tokens, the model takes 1 to %d", T,
                       m->cfg.max_position_embeddings);
    if (clip_skip < 1 || clip_skip > L)
        return sd_fail(SD_ERR_INVALID, "clip_skip must be between 1 and %d, got %d", L,
                       clip_skip);
    if (out->ndim != 3 || out->shape[0] != B || out->shape[1] != T || out->shape[2] != C)
        return sd_fail(SD_ERR_INVALID, "text encoder: 'out' must be (%d, %d, %d)", B, T, C);
    /* walk the pass with the planning backend first, so the arena is sized before the
     * real run takes its first tensor (plan.h) */
    m->be = sd_plan_backend(be);
    sd_arena_plan_begin(&m->arena);
    sd_status s = forward_body(m, ids, B, T, clip_skip, out);
    sd_arena_plan_end(&m->arena);
    m->be = be;
    SD_TRY(s);
    SD_TRY(sd_arena_reset(&m->arena));
    return forward_body(m, ids, B, T, clip_skip, out);
}

/* After the checks: the pass itself, on m->be. */
static sd_status forward_body(sd_clip *m, const int32_t *ids, int B, int T, int clip_skip,
                              sd_tensor *out) {
    const sd_backend *be = m->be;
    int C = m->cfg.hidden_size, L = m->cfg.num_hidden_layers;
    sd_tensor h, pos;
    /* h (B, T, C) = token_embedding[ids] + position_embedding[0:T] */
    SD_TRY(sd_arena_act(&m->arena, &h, 3, B, T, C, 1));
    SD_TRY(sd_arena_act(&m->arena, &pos, 2, T, C, 1, 1));
    SD_TRY(be->embedding(be, m->token_embedding, ids, (int64_t)B * T, &h));
    if (m->position_ids_len < T) {
        int32_t *p = realloc(m->position_ids, sizeof(int32_t) * (size_t)T);
        if (!p)
            return sd_fail(SD_ERR_NOMEM, "text encoder: cannot allocate position ids");
        for (int i = 0; i < T; i++)
            p[i] = i;
        m->position_ids = p;
        m->position_ids_len = T;
    }
    SD_TRY(be->embedding(be, m->position_embedding, m->position_ids, T, &pos));
    SD_TRY(be->add(be, &h, &pos, &h)); /* pos broadcasts over the batch */
    /* clip_skip 2 stops one layer early: hidden_states[-2] in transformers' terms */
    for (int i = 0; i < L - (clip_skip - 1); i++) {
        SD_TRY(attention_block(m, &m->layers[i], &h, B, T));
        SD_TRY(mlp_block(m, &m->layers[i], &h, B, T));
    }
    if (out->dtype == h.dtype)
        return be->layer_norm(be, &h, m->final_w, m->final_b, m->cfg.layer_norm_eps, out);
    sd_tensor y;
    SD_TRY(sd_arena_act(&m->arena, &y, 3, B, T, C, 1));
    SD_TRY(be->layer_norm(be, &h, m->final_w, m->final_b, m->cfg.layer_norm_eps, &y));
    return be->convert(be, &y, out);
}

sd_status sd_clip_set_activation_dtype(sd_clip *m, sd_dtype dtype) {
    return sd_arena_set_dtype(&m->arena, dtype, "text encoder");
}
