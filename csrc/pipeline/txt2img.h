/* Text to image: the sampling loop with classifier-free guidance, then the VAE decode.
 *
 * The text embeddings are computed beforehand (by sdcore/prompt.py with prompt weighting,
 * or by the C library's sd_generate for plain prompts, csrc/api/generate.c); this loop owns
 * everything after that, so a whole generation runs without the GIL. */
#ifndef SDCORE_TXT2IMG_H
#define SDCORE_TXT2IMG_H

#include <stdint.h>

#include "models/unet.h"
#include "models/vae.h"
#include "sampling/sampler.h"
#include "sdcore.h"

/* Called after every step with the current latents (n, 4, h, w) in host memory, or NULL
 * when the params say the callback does not read them (the latents then stay on the
 * device). Return nonzero to cancel: the generation then stops with SD_ERR_CANCELLED. */
typedef int (*sd_step_callback)(void *ctx, int step, int total, const float *latents);

typedef struct {
    int n;                      /* images in the batch */
    int tokens, width_ctx;      /* T and C of the embeddings */
    const float *cond;          /* (n, T, C) host: the prompt of each image */
    const float *uncond;        /* (n, T, C) host: its negative prompt */
    const float *guidance;      /* (n): CFG scale of each image; <= 1 means no guidance */
    const uint64_t *seeds;      /* (n): the seed of each image's noise */
    int width, height;          /* pixels, multiples of vae_factor */
    int steps;                  /* inference steps asked for */
    int sampler;                /* sd_sampler_kind */
    const sd_sampler_config *sampler_config; /* the model's scheduler config (NULL: SD 1.5) */
    float vae_scaling_factor;   /* latents are divided by this before decoding */
    int vae_factor;             /* pixels per latent along each side (8 for SD) */
    int latent_channels;        /* 4 for SD */
    sd_step_callback on_step;   /* may be NULL */
    int on_step_latents;        /* whether on_step reads the latents (a copy to the host) */
    void *ctx;
} sd_txt2img_params;

/* images (n, height, width, 3) uint8 in host memory. */
sd_status sd_txt2img(sd_unet *unet, sd_vae *vae, const sd_backend *be,
                     const sd_txt2img_params *p, uint8_t *images);

#endif
