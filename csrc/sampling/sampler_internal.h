/* Shared by the sampler sources: the sampler object and the schedule helpers. */
#ifndef SD_SAMPLER_INTERNAL_H
#define SD_SAMPLER_INTERNAL_H

#include "sampling/sampler.h"
#include "core/sampler_ops.h"

#define SD_SAMPLER_MAX_HISTORY 4

struct sd_sampler {
    sd_sampler_kind kind;
    sd_sampler_config cfg;    /* resolved: spacing never DEFAULT, trained_betas NULL */
    int num_inference_steps;  /* what was asked for */
    int num_timesteps;        /* model calls: length of timesteps */
    int train_timesteps;
    float *alphas_cumprod;    /* (train_timesteps) */
    float *timesteps;         /* (num_timesteps) */
    float *sigmas;            /* (num_timesteps + 1) or NULL */
    float init_noise_sigma;
    int karras;

    /* where the arrays of a generation live: NULL for host memory, else a backend whose
     * memory step, scale_model_input and the state below use */
    const sd_backend *be;

    /* state of a generation */
    int next_step;            /* the step sd_sampler_step expects */
    int64_t n;                /* elements per sample, fixed by the first step (0 before) */
    float *history[SD_SAMPLER_MAX_HISTORY]; /* oldest first */
    int history_len;
    float *cur_sample;        /* pndm: the sample of its first step */
    float *scratch;           /* (n) */
    int lower_order_nums;     /* dpmpp */
};

/* schedule.c: the training schedule and the timestep spacings */
/* numpy.linspace(start, stop, num)[i] in float64 */
double sd_np_linspace(double start, double stop, int num, int i);
/* numpy.interp(x, arange(len), fp) in float64 */
double sd_np_interp(double x, const float *fp, int len);
/* The fractional training timestep of `sigma` (diffusers' _sigma_to_t). */
double sd_sigma_to_t(double sigma, const float *log_sigmas, int len);
/* Karras et al. (2022) sigmas from sigma_max down to sigma_min, float64 (n values). */
void sd_karras_sigmas(double sigma_min, double sigma_max, int n, double *out);
/* The integer timesteps of ddim/pndm-style spacing; n_out receives the count
 * (allocated array of at most max_out). */
sd_status sd_spacing_int(const sd_sampler *s, int descending, int64_t *out, int *n_out);
/* sqrt((1 - a) / a) for every training alpha_cumprod, float32 as torch computes it. */
void sd_training_sigmas(const sd_sampler *s, float *out);
/* s->alphas_cumprod from trained_betas or s->cfg's beta schedule, as diffusers makes it. */
sd_status sd_make_alphas_cumprod(sd_sampler *s, const float *trained_betas);
/* "leading", "linspace" or "trailing", for messages. */
const char *sd_spacing_name(sd_timestep_spacing sp);

/* sampler.c: the sampler object's per-generation state */
/* Make room for per-generation buffers of n elements (history_slots of them). */
sd_status sd_sampler_state_alloc(sd_sampler *s, int64_t n, int history_slots);
/* The buffer that becomes the newest history entry (the caller fills it), dropping the
 * oldest beyond `keep`. */
float *sd_sampler_history_next(sd_sampler *s, int keep);
/* Runs one element-wise update where the sampler's arrays live. */
sd_status sd_sampler_run(const sd_sampler *s, const sd_sampler_op *op);
/* An op of `kind` over the sampler's n elements writing `out`. */
static inline sd_sampler_op sd_sampler_op_make(const sd_sampler *s, int kind, int flags,
                                               float *out) {
    sd_sampler_op op = {.kind = kind, .flags = flags, .n = s->n, .out = out};
    return op;
}

/* Per-family setup (timesteps, sigmas, init_noise_sigma) and step. */
sd_status sd_ddim_setup(sd_sampler *s);
sd_status sd_ddim_step(sd_sampler *s, int i, const float *eps, float *x, int64_t n);
sd_status sd_euler_setup(sd_sampler *s);
sd_status sd_euler_step(sd_sampler *s, int i, const float *eps, float *x, int64_t n);
sd_status sd_euler_a_step(sd_sampler *s, int i, const float *eps, float *x, const float *noise,
                          int64_t n);
sd_status sd_dpmpp_setup(sd_sampler *s);
sd_status sd_dpmpp_step(sd_sampler *s, int i, const float *eps, float *x, int64_t n);
sd_status sd_pndm_setup(sd_sampler *s);
sd_status sd_pndm_step(sd_sampler *s, int i, const float *eps, float *x, int64_t n);
sd_status sd_lms_step(sd_sampler *s, int i, const float *eps, float *x, int64_t n);

#endif
