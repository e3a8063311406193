/* diffusers' Transformer2DModel as SD 1.x and 2.x use it, on the backend interface.
 *
 *   x (B, C, H, W) -> GroupNorm(eps 1e-6) -> proj_in -> tokens (B, H*W, C)
 *     -> BasicTransformerBlock x depth -> proj_out -> NCHW, + x
 *
 * proj_in/proj_out are 1x1 convs on NCHW (SD 1.x) or linears on the tokens
 * (use_linear_projection, SD 2.x). A BasicTransformerBlock is
 *   h += attn1(norm1(h))            self-attention
 *   h += attn2(norm2(h), context)   cross-attention on the text tokens
 *   h += ff(norm3(h))               Linear(C, 8C) -> GEGLU -> Linear(4C, C)
 * Heads stay packed in the last dim, (B, T, heads * head_dim), as the attention op takes
 * them, so no head transposes are needed. */
#ifndef SDCORE_TRANSFORMER_H
#define SDCORE_TRANSFORMER_H

#include "runtime/arena.h"
#include "sdcore.h"
#include "tensors.h"

/* One attention of a block: q from the tokens, k and v from the tokens (attn1) or from
 * the context (attn2). diffusers' SD attention has no q/k/v biases; one that a
 * checkpoint carries anyway is used. */
typedef struct {
    const sd_tensor *q_w, *q_b, *k_w, *k_b, *v_w, *v_b; /* (C, C) or (C, ctx); biases may be NULL */
    const sd_tensor *out_w, *out_b;                     /* to_out.0: (C, C), (C) */
} sd_attention_weights;

typedef struct {
    const sd_tensor *norm1_w, *norm1_b, *norm2_w, *norm2_b, *norm3_w, *norm3_b;
    sd_attention_weights attn1, attn2;
    const sd_tensor *ff_in_w, *ff_in_b;   /* ff.net.0.proj: (8C, C), (8C) */
    const sd_tensor *ff_out_w, *ff_out_b; /* ff.net.2: (C, 4C), (C) */
} sd_transformer_block;

typedef struct {
    int channels, heads, depth, context_dim, groups, linear_proj;
    const sd_tensor *norm_w, *norm_b;
    const sd_tensor *proj_in_w, *proj_in_b, *proj_out_w, *proj_out_b;
    sd_transformer_block *blocks; /* depth of them */
} sd_transformer2d;

/* Set t's sizes, allocate its blocks and declare its tensors under `prefix` (e.g.
 * "down_blocks.0.attentions.1"), each filling its slot in t. On failure *t holds nothing
 * to free. */
sd_status sd_transformer2d_declare(sd_tensor_decls *d, const char *prefix, int channels,
                                   int heads, int depth, int context_dim, int groups,
                                   int linear_proj, sd_transformer2d *t);
void sd_transformer2d_free(sd_transformer2d *t);

/* x (B, C, H, W), context (B, Tc, context_dim) -> out (B, C, H, W); out may be x.
 * Temporaries come from the arena and are released before returning. */
sd_status sd_transformer2d_forward(const sd_backend *be, sd_arena *arena,
                                   const sd_transformer2d *t, const sd_tensor *x,
                                   const sd_tensor *context, sd_tensor *out);

#endif
