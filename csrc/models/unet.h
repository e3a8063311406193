/* The SD 1.x / 2.x UNet (diffusers' UNet2DConditionModel) on the backend interface.
 *
 *   sample (B, in, h, w) -> conv_in -> down blocks (each pushes its outputs on the skip
 *   stack) -> mid block -> up blocks (each pops a skip per resnet and concatenates it)
 *   -> GroupNorm + SiLU -> conv_out -> (B, out, h, w)
 *
 * The time embedding (sinusoidal, then Linear-SiLU-Linear) conditions every resnet;
 * the text context conditions every Transformer2D through cross-attention. */
#ifndef SDCORE_UNET_H
#define SDCORE_UNET_H

#include "sdcore.h"
#include "tensors.h"

#define SD_UNET_MAX_BLOCKS 4
#define SD_UNET_MAX_LAYERS 8 /* resnets in a down block; an up block has one more */

/* The fields of diffusers' UNet2DConditionModel config that SD 1.x and 2.x use. Lists are
 * per down block, in down order (the up blocks use them reversed, as diffusers does). */
typedef struct {
    int in_channels, out_channels;
    int num_blocks;                                 /* len(block_out_channels), 1..4 */
    int block_out_channels[SD_UNET_MAX_BLOCKS];
    int layers_per_block[SD_UNET_MAX_BLOCKS];       /* resnets per down block */
    /* 1 where the block is CrossAttnDownBlock2D (0: DownBlock2D), in down order */
    int down_cross_attention[SD_UNET_MAX_BLOCKS];
    /* 1 where the block is CrossAttnUpBlock2D (0: UpBlock2D), in up order */
    int up_cross_attention[SD_UNET_MAX_BLOCKS];
    int cross_attention_dim;
    /* diffusers' `attention_head_dim`, which is really the NUMBER of heads (8 in SD 1.x,
     * [5, 10, 20, 20] in SD 2.x): head dim = channels / heads */
    int attention_heads[SD_UNET_MAX_BLOCKS];
    int transformer_layers_per_block[SD_UNET_MAX_BLOCKS];
    int norm_num_groups;
    float norm_eps;
    int use_linear_projection; /* 0: proj_in/proj_out are 1x1 convs (SD 1.x); 1: linears */
    int flip_sin_to_cos;
    float freq_shift;
} sd_unet_config;

/* The SD 1.5 config (in 4, out 4, 320/640/1280/1280, 2 layers, 768 context, 8 heads). */
sd_unet_config sd_unet_config_sd15(void);

typedef struct sd_unet sd_unet;

/* Every tensor the model with this config reads, appended to `out` (an initialised list,
 * freed by the caller): diffusers' state-dict names and shapes, in load order. The
 * attentions' q/k/v biases are SD_DECL_OPTIONAL (diffusers' SD UNet has none). An
 * invalid config is the error, naming the field. */
sd_status sd_unet_tensors(const sd_unet_config *config, sd_tensor_decls *out);

/* Check the config, then find and shape-check every tensor sd_unet_tensors lists; an
 * error names the config field or the tensor. The model borrows the tensors: `weights`
 * must outlive it. */
sd_status sd_unet_create(const sd_unet_config *config, const sd_weights *weights,
                         const sd_backend *be, sd_unet **out);
void sd_unet_free(sd_unet *m);
const sd_unet_config *sd_unet_get_config(const sd_unet *m);
/* Bytes of activation memory the model holds (planned by the first forward). */
size_t sd_unet_activation_bytes(const sd_unet *m);

/* On a backend with graphs, record each step shape's forward once and replay it (on by
 * default where available); off frees the recorded graphs. */
void sd_unet_use_graphs(sd_unet *m, int on);

/* Compute in f16 or bf16 on a GPU (default f32); sample, context and out stay f32. */
sd_status sd_unet_set_activation_dtype(sd_unet *m, sd_dtype dtype);

/* The noise prediction. h and w must be multiples of 2^(num_blocks - 1).
 *   sample (B, in, h, w) and context (B, T, cross_attention_dim) on the backend,
 *   timesteps (B) in host memory -> out (B, out, h, w) on the backend.
 * Not reentrant: one forward at a time per model (the activations are the model's). */
sd_status sd_unet_forward(sd_unet *m, const sd_tensor *sample, const float *timesteps,
                          const sd_tensor *context, sd_tensor *out);

#endif
