/* sdcore's C library: load a model, generate images, write PNGs. No Python needed.
 *
 *     sd_model *model;
 *     if (sd_model_load("sdcore/models/default", &model) != SD_OK)
 *         fprintf(stderr, "%s\n", sd_last_error());
 *     sd_generate_params p;
 *     sd_generate_params_init(&p);      // the model's defaults: size, guidance, 20 steps
 *     p.prompt = "a red circle on a blue background";
 *     p.seed = 7;
 *     sd_image image;
 *     if (sd_generate(model, &p, &image) == SD_OK) {
 *         sd_image_write_png(&image, "out.png");
 *         sd_image_free(&image);
 *     }
 *     sd_model_free(model);
 *
 * For the same settings the pixels equal those of `sdcore generate` and of
 * sdcore.Pipeline: the same tokenizer, text encoder, noise (torch.randn on a CPU
 * generator), sampler, UNet and VAE, on the CPU backend.
 *
 * Every function returns an sd_status; on failure sd_last_error() (sdcore.h) says what
 * went wrong and names the field or file, for the calling thread.
 *
 * What the Python package does and this library does not (yet):
 * - single-file .safetensors checkpoints (CompVis names): only diffusers folders load here;
 * - prompt emphasis ("(word:1.2)", "[word]", escapes) and BREAK: a prompt using that syntax
 *   is refused with SD_ERR_UNSUPPORTED rather than read differently; long prompts (over 75
 *   tokens) are split into 77-token chunks as the Python package does;
 * - a tokenizer/ folder with only tokenizer.json; the GPU backend. */
#ifndef SDCORE_API_H
#define SDCORE_API_H

#include <stdint.h>

#include "sdcore.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Limits a request is checked against (the same as sdcore/params.py's). */
#define SD_MIN_SIZE 64
#define SD_MAX_SIZE 2048
#define SD_MAX_STEPS 500
#define SD_MAX_GUIDANCE 100.0
#define SD_MAX_PROMPT_CHARS 20000 /* Unicode characters */

/* Guidance when the model names none (its folder's sdcore.json may: the shipped model's
 * says 5). */
#define SD_DEFAULT_GUIDANCE 7.5

typedef struct sd_model sd_model;

/* Load a diffusers folder (unet/, vae/, text_encoder/, tokenizer/, scheduler/, each with
 * its config.json or scheduler_config.json, and safetensors weights). The weights stay in
 * the memory-mapped files. An optional sdcore.json in the folder gives the model's display
 * name ("name") and default guidance ("guidance_scale"). */
sd_status sd_model_load(const char *path, sd_model **out);
void sd_model_free(sd_model *model);

/* The model's name (sdcore.json's, else the folder's name), as PNGs record it. */
const char *sd_model_name(const sd_model *model);
/* The size a request gets when it names none: the UNet's sample_size times the VAE's
 * factor, within the limits above. */
int sd_model_default_size(const sd_model *model);
double sd_model_default_guidance(const sd_model *model);

/* Called after every step; return nonzero to cancel (sd_generate then returns
 * SD_ERR_CANCELLED). */
typedef int (*sd_progress_fn)(void *ctx, int step, int total);

typedef struct {
    const char *prompt;          /* UTF-8 */
    const char *negative_prompt; /* UTF-8; NULL or "" for none */
    int width, height;           /* pixels, multiples of 8; 0: the model's default size */
    int num_inference_steps;     /* 1..SD_MAX_STEPS */
    double guidance_scale;       /* 0..SD_MAX_GUIDANCE; negative: the model's default */
    uint64_t seed;               /* the noise is torch.randn of a CPU generator with it */
    const char *sampler;         /* ddim, euler, euler_a, dpmpp_2m, dpmpp_2m_karras, pndm, lms */
    sd_progress_fn on_step;      /* may be NULL */
    void *ctx;
} sd_generate_params;

/* The defaults of `sdcore generate`: 20 steps, euler_a, the model's size and guidance,
 * seed 0, no negative prompt, no callback. prompt is "" and must be set. */
void sd_generate_params_init(sd_generate_params *params);

typedef struct {
    int width, height;
    uint8_t *rgb;     /* (height, width, 3), row-major */
    char *parameters; /* the infotext PNGs carry: prompt, settings, model, version */
} sd_image;

/* One image. Every field is checked first; an error names it ("width: ..."). */
sd_status sd_generate(sd_model *model, const sd_generate_params *params, sd_image *out);
void sd_image_free(sd_image *image);

/* The image as a PNG with its infotext in a "parameters" text chunk. */
sd_status sd_image_write_png(const sd_image *image, const char *path);

/* The library's version, the same as the Python package's (a test checks it). */
#define SDCORE_VERSION "0.1.0"
const char *sd_version(void);

#ifdef __cplusplus
}
#endif
#endif /* SDCORE_API_H */
