/* The KL autoencoder of Stable Diffusion (diffusers' AutoencoderKL) on the backend
 * interface.
 *
 * decode: z (B, 4, h, w) -> post_quant_conv -> conv_in -> mid (resnet, attention, resnet)
 *         -> up blocks (resnets, nearest 2x + conv) -> GroupNorm + SiLU -> conv_out
 *         -> image (B, 3, 8h, 8w) in about [-1, 1]
 * encode: image -> conv_in -> down blocks (resnets, pad + stride-2 conv) -> mid
 *         -> GroupNorm + SiLU -> conv_out -> quant_conv -> mean of the latent distribution
 *
 * The caller scales latents: decode takes z already divided by the scaling factor, and
 * encode returns the mean before multiplying by it, as AutoencoderKL does. */
#ifndef SDCORE_VAE_H
#define SDCORE_VAE_H

#include "sdcore.h"
#include "tensors.h"

#define SD_VAE_MAX_BLOCKS 6

typedef struct {
    int in_channels, out_channels, latent_channels;
    int num_blocks;
    int block_out_channels[SD_VAE_MAX_BLOCKS];
    int layers_per_block;
    int norm_num_groups;
    int mid_attention; /* diffusers' mid_block_add_attention (true for SD) */
} sd_vae_config;

typedef struct sd_vae sd_vae;

/* Every tensor the model with this config reads (the decoder's, and the encoder's when
 * `with_encoder`), appended to `out` (an initialised list, freed by the caller):
 * AutoencoderKL's state-dict names and shapes. The mid attention's projections are
 * declared (C, C) with SD_DECL_CONV1X1_OK. An invalid config is the error. */
sd_status sd_vae_tensors(const sd_vae_config *config, int with_encoder, sd_tensor_decls *out);

/* Compute in f16 or bf16 on a GPU (default f32); latents and images stay f32. */
sd_status sd_vae_set_activation_dtype(sd_vae *v, sd_dtype dtype);
sd_dtype sd_vae_activation_dtype(const sd_vae *v);
/* Find and shape-check every tensor sd_vae_tensors lists. Attention projections may be
 * Linear (C, C) or 1x1 conv (C, C, 1, 1), as old single-file checkpoints store them.
 * The model borrows the tensors. */
sd_status sd_vae_create(const sd_vae_config *config, const sd_weights *weights, int with_encoder,
                        const sd_backend *be, sd_vae **out);
void sd_vae_free(sd_vae *v);
int sd_vae_has_encoder(const sd_vae *v);

/* z (B, latent, h, w) -> image (B, out_channels, h * f, w * f), f = 2^(num_blocks - 1).
 * Images are decoded one at a time: peak memory does not grow with B. */
sd_status sd_vae_decode(sd_vae *v, const sd_tensor *z, sd_tensor *image);
/* image (B, in_channels, H, W), H and W multiples of f -> mean (B, latent, H / f, W / f) */
sd_status sd_vae_encode(sd_vae *v, const sd_tensor *image, sd_tensor *mean);
/* The same, with the log-variance of the latent distribution too (logvar may be NULL),
 * unclamped: a sample is mean + exp(0.5 * clamp(logvar, -30, 20)) * noise, as diffusers'
 * DiagonalGaussianDistribution draws it. */
sd_status sd_vae_encode_moments(sd_vae *v, const sd_tensor *image, sd_tensor *mean,
                                sd_tensor *logvar);

#endif
