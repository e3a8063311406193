/* The CLIP text encoder (transformers' CLIPTextModel) on the backend interface.
 *
 *   ids (B, T) -> token embedding + position embedding -> (B, T, C)
 *     -> encoder layers: h += attn(ln1(h)) with a causal mask; h += mlp(ln2(h))
 *     -> final layer norm -> (B, T, C)
 *
 * SD 1.x uses OpenAI's ViT-L/14 text tower: C 768, 12 layers, 12 heads, quick GELU. */
#ifndef SDCORE_CLIP_H
#define SDCORE_CLIP_H

#include "sdcore.h"
#include "tensors.h"

typedef struct {
    int vocab_size;              /* 49408 */
    int hidden_size;             /* 768 */
    int intermediate_size;       /* 3072 */
    int num_hidden_layers;       /* 12 */
    int num_attention_heads;     /* 12 */
    int max_position_embeddings; /* 77 */
    float layer_norm_eps;        /* 1e-5 */
    int quick_gelu;              /* 1: x * sigmoid(1.702 x) (OpenAI CLIP); 0: erf GELU */
} sd_clip_config;

typedef struct sd_clip sd_clip;

/* Every tensor the model with this config reads, appended to `out` (an initialised list,
 * freed by the caller): the transformers names (text_model.embeddings...,
 * text_model.encoder.layers.{i}..., text_model.final_layer_norm) and shapes. An invalid
 * config is the error. */
sd_status sd_clip_tensors(const sd_clip_config *config, sd_tensor_decls *out);

/* Check the config, then find and shape-check every tensor sd_clip_tensors lists.
 * The model borrows the tensors: `weights` must outlive it. */
sd_status sd_clip_create(const sd_clip_config *config, const sd_weights *weights,
                         const sd_backend *be, sd_clip **out);
void sd_clip_free(sd_clip *m);

/* ids (B, T) in host memory, T <= max_position_embeddings -> out (B, T, hidden) on the
 * backend. clip_skip as the common front ends count it: 1 uses the last layer's output,
 * 2 the one before it, ...; the final layer norm is applied in every case. */
/* Compute in f16 or bf16 on a GPU (default f32); inputs and outputs stay f32. */
sd_status sd_clip_set_activation_dtype(sd_clip *m, sd_dtype dtype);
sd_status sd_clip_forward(sd_clip *m, const int32_t *ids, int B, int T, int clip_skip,
                          sd_tensor *out);

#endif
