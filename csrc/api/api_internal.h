/* What the public API's sources share: the model behind sd_model. */
#ifndef SDCORE_API_INTERNAL_H
#define SDCORE_API_INTERNAL_H

#include "api/config.h"
#include "sdcore_api.h"
#include "text/tokenizer.h"

struct sd_model {
    char *name;
    double default_guidance;
    int default_size;
    const sd_backend *be;
    sd_tokenizer *tokenizer;
    sd_clip_config clip_config;
    sd_unet_config unet_config;
    sd_vae_config vae_config;
    float vae_scaling_factor;
    int vae_factor;
    sd_sampler_config scheduler;
    float *trained_betas; /* scheduler.trained_betas points here, or NULL */
    sd_weights *clip_weights, *unet_weights, *vae_weights;
    sd_clip *clip;
    sd_unet *unet;
    sd_vae *vae;
};

#endif
