/* Diffusion samplers: the schedule (betas, alphas, sigmas, timesteps) and the update
 * x_t -> x_{t-1} of each sampler, matching its diffusers scheduler number for number.
 *
 * Names users pass (sd_sampler_parse_kind), and the diffusers scheduler each matches:
 *   "ddim"             DDIMScheduler (eta = 0)
 *   "euler"            EulerDiscreteScheduler
 *   "euler_a"          EulerAncestralDiscreteScheduler (needs noise every step)
 *   "dpmpp_2m"         DPMSolverMultistepScheduler, algorithm_type "dpmsolver++", solver_order 2
 *   "dpmpp_2m_karras"  the same with use_karras_sigmas=True
 *   "pndm"             PNDMScheduler with skip_prk_steps=True (SD 1.5's default scheduler)
 *   "lms"              LMSDiscreteScheduler (order 4)
 *
 * A loop over one generation:
 *
 *   sd_sampler_create(kind, &cfg, steps, &s);
 *   x = noise * sd_sampler_init_noise_sigma(s);
 *   for (i = 0; i < sd_sampler_num_steps(s); i++) {
 *       sd_sampler_scale_model_input(s, i, x, x_in, n);
 *       eps = unet(x_in, sd_sampler_timestep(s, i));
 *       sd_sampler_step(s, i, eps, x, noise_i_or_NULL, n);
 *   }
 *
 * sd_sampler_num_steps can differ from the steps asked for: pndm makes one extra model
 * call (its second-order warm-up repeats a timestep), and timestep_spacing "trailing"
 * gives whatever count diffusers' float arange gives.
 *
 * Where diffusers would produce a timestep outside [0, num_train_timesteps) ("leading"
 * with steps_offset 1 and about num_train_timesteps steps; "trailing" at a few counts
 * such as 61 steps, whose float arange ends just above 0), create fails instead: diffusers
 * then indexes alphas out of range or repeats a sigma and divides by a zero step.
 *
 * Arithmetic mirrors diffusers: float32 where it uses float32 tensors, double where it
 * uses NumPy float64, with the same casts in between, so that results agree to rounding
 * (1 ulp differences in torch's own sqrt/log remain).
 */
#ifndef SD_SAMPLER_H
#define SD_SAMPLER_H

#include <stdint.h>

#include "sdcore.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    SD_SAMPLER_DDIM = 0,
    SD_SAMPLER_EULER,
    SD_SAMPLER_EULER_A,
    SD_SAMPLER_DPMPP_2M,
    SD_SAMPLER_DPMPP_2M_KARRAS,
    SD_SAMPLER_PNDM,
    SD_SAMPLER_LMS,
    SD_SAMPLER_COUNT
} sd_sampler_kind;

typedef enum { SD_BETA_SCALED_LINEAR = 0, SD_BETA_LINEAR } sd_beta_schedule;
typedef enum { SD_PREDICT_EPSILON = 0, SD_PREDICT_V } sd_prediction_type;
/* DEFAULT: the default of the diffusers scheduler class (leading for ddim and pndm,
 * linspace for the others), which is what from_config gives when the config has no
 * timestep_spacing key, as SD 1.5's has not. */
typedef enum {
    SD_SPACING_DEFAULT = 0,
    SD_SPACING_LEADING,
    SD_SPACING_LINSPACE,
    SD_SPACING_TRAILING
} sd_timestep_spacing;
/* Last sigma of euler and dpmpp: 0 (diffusers' default), or the smallest training sigma. */
typedef enum { SD_FINAL_SIGMA_ZERO = 0, SD_FINAL_SIGMA_MIN } sd_final_sigmas;

/* A model's scheduler/scheduler_config.json, the fields that matter to these samplers.
 * sd_sampler_config_default gives SD 1.5's values. */
typedef struct {
    int num_train_timesteps;           /* 1000 */
    double beta_start;                 /* 0.00085 */
    double beta_end;                   /* 0.012 */
    sd_beta_schedule beta_schedule;    /* scaled_linear */
    const float *trained_betas;        /* NULL, or num_train_timesteps betas (then beta_* unused) */
    sd_prediction_type prediction_type; /* epsilon */
    int steps_offset;                  /* 1 */
    sd_timestep_spacing timestep_spacing; /* DEFAULT */
    int clip_sample;                   /* 0; ddim clamps x0 to +-clip_sample_range */
    double clip_sample_range;          /* 1.0 */
    int set_alpha_to_one;              /* 0; ddim and pndm: alpha_prod of the step past t=0 */
    int use_karras_sigmas;             /* 0; euler and dpmpp_2m (dpmpp_2m_karras always) */
    sd_final_sigmas final_sigmas_type; /* zero */
    int lower_order_final;             /* 1; dpmpp: first order on the last step when < 15 */
    int euler_at_final;                /* 0; dpmpp: first order on the last step always */
} sd_sampler_config;

typedef struct sd_sampler sd_sampler;

void sd_sampler_config_default(sd_sampler_config *cfg);
/* What diffusers' from_config gives the scheduler class of `kind` for every key a config
 * leaves out: beta 0.0001 .. 0.02 linear, steps_offset 0, and for ddim clip_sample and
 * set_alpha_to_one true (SD 1.5's config sets all of these otherwise). */
void sd_sampler_config_class_default(int kind, sd_sampler_config *cfg);

/* The kind called `name` (see the list above), or -1. */
int sd_sampler_parse_kind(const char *name);
/* The name of `kind`, or NULL when out of range. */
const char *sd_sampler_kind_name(int kind);

/* A sampler for num_steps inference steps; cfg NULL means the SD 1.5 defaults.
 * Bad kind, steps < 1 or > num_train_timesteps, or a bad config field: SD_ERR_INVALID
 * naming it. The sampler copies what it needs from cfg (trained_betas included). */
sd_status sd_sampler_create(int kind, const sd_sampler_config *cfg, int num_steps,
                            sd_sampler **out);
void sd_sampler_free(sd_sampler *s);

sd_sampler_kind sd_sampler_kind_of(const sd_sampler *s);
/* Number of model calls: the length of diffusers' scheduler.timesteps. */
int sd_sampler_num_steps(const sd_sampler *s);
/* The timestep given to the UNet at step i (diffusers' scheduler.timesteps[i]). */
float sd_sampler_timestep(const sd_sampler *s, int i);
/* Multiply the initial unit-variance noise by this. */
float sd_sampler_init_noise_sigma(const sd_sampler *s);
/* The sigmas of the sigma-parameterised samplers (euler, euler_a, dpmpp, lms):
 * num_steps + 1 values ending in the final sigma; NULL for ddim and pndm. */
const float *sd_sampler_sigmas(const sd_sampler *s);
/* The float32 cumulative alpha products of the training schedule (num_train_timesteps). */
const float *sd_sampler_alphas_cumprod(const sd_sampler *s);
int sd_sampler_num_train_timesteps(const sd_sampler *s);
/* Whether sd_sampler_step wants a fresh standard-normal noise array every step. */
int sd_sampler_needs_noise(const sd_sampler *s);

/* Run the sampler on arrays in the memory of backend `be` (NULL: host memory, the
 * default): from then on the pointers given to scale_model_input and step are that
 * backend's, and so is the sampler's own state (its history of model outputs). Call it
 * before the first step. A GPU backend runs every update on the device, so latents
 * never leave it. */
sd_status sd_sampler_use_backend(sd_sampler *s, const sd_backend *be);

/* out = the UNet input for step i (x divided by sqrt(sigma^2 + 1) for the sigma
 * samplers, a copy otherwise); out may equal x. */
sd_status sd_sampler_scale_model_input(const sd_sampler *s, int i, const float *x, float *out,
                                       int64_t n);
/* One update of `sample` (n floats, in place) from the model output at step i. Steps
 * must come in order 0, 1, ..., since the multistep samplers keep a history; every
 * call must use the same n. `noise` is n standard-normal floats when needs_noise,
 * else ignored (may be NULL). */
sd_status sd_sampler_step(sd_sampler *s, int i, const float *model_output, float *sample,
                          const float *noise, int64_t n);

#ifdef __cplusplus
}
#endif
#endif /* SD_SAMPLER_H */
