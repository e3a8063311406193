/* A diffusers folder's config.json files read into the engine's config structs.
 *
 * Each reader follows the Python side's rules for the same file (sdcore/checkpoint.py
 * fills keys a folder leaves out with the SD 1.x values; csrc/binding/unet.c,
 * sdcore/vae.py, sdcore/text_encoder.py and csrc/binding/sampler.c check the fields), so
 * the same folder gives the same model either way. An error names the file and the key. */
#ifndef SDCORE_API_CONFIG_H
#define SDCORE_API_CONFIG_H

#include "io/json.h"
#include "models/clip.h"
#include "models/unet.h"
#include "models/vae.h"
#include "sampling/sampler.h"

/* Read and parse a JSON file whose top level must be an object. */
sd_status sd_config_read(const char *path, sd_json *out);

/* UNet2DConditionModel; *sample_size is the latent size the model was trained at. */
sd_status sd_config_unet(const sd_json *cfg, const char *source, sd_unet_config *out,
                         int *sample_size);
/* AutoencoderKL; *scaling_factor divides latents before decoding. */
sd_status sd_config_vae(const sd_json *cfg, const char *source, sd_vae_config *out,
                        float *scaling_factor);
/* transformers' CLIPTextConfig. */
sd_status sd_config_clip(const sd_json *cfg, const char *source, sd_clip_config *out);
/* A scheduler_config.json; *betas receives trained_betas (malloc'd) when the file has
 * them, and cfg->trained_betas points at it. */
sd_status sd_config_sampler(const sd_json *cfg, const char *source, sd_sampler_config *out,
                            float **betas);

#endif
