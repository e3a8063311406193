/* The sampler object's life cycle and dispatch: names and config defaults, create (checks
 * the config, then builds the schedule of schedule.c and the family's timesteps), the
 * per-generation state, step, and free. */
#include "sampling/sampler_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char *const kind_names[SD_SAMPLER_COUNT] = {
    [SD_SAMPLER_DDIM] = "ddim",
    [SD_SAMPLER_EULER] = "euler",
    [SD_SAMPLER_EULER_A] = "euler_a",
    [SD_SAMPLER_DPMPP_2M] = "dpmpp_2m",
    [SD_SAMPLER_DPMPP_2M_KARRAS] = "dpmpp_2m_karras",
    [SD_SAMPLER_PNDM] = "pndm",
    [SD_SAMPLER_LMS] = "lms",
};

int sd_sampler_parse_kind(const char *name) {
    if (!name)
        return -1;
    for (int k = 0; k < SD_SAMPLER_COUNT; k++)
        if (strcmp(name, kind_names[k]) == 0)
            return k;
    return -1;
}

const char *sd_sampler_kind_name(int kind) {
    return kind >= 0 && kind < SD_SAMPLER_COUNT ? kind_names[kind] : NULL;
}

void sd_sampler_config_default(sd_sampler_config *cfg) {
    memset(cfg, 0, sizeof *cfg);
    cfg->num_train_timesteps = 1000;
    cfg->beta_start = 0.00085;
    cfg->beta_end = 0.012;
    cfg->beta_schedule = SD_BETA_SCALED_LINEAR;
    cfg->trained_betas = NULL;
    cfg->prediction_type = SD_PREDICT_EPSILON;
    cfg->steps_offset = 1;
    cfg->timestep_spacing = SD_SPACING_DEFAULT;
    cfg->clip_sample = 0;
    cfg->clip_sample_range = 1.0;
    cfg->set_alpha_to_one = 0;
    cfg->use_karras_sigmas = 0;
    cfg->final_sigmas_type = SD_FINAL_SIGMA_ZERO;
    cfg->lower_order_final = 1;
    cfg->euler_at_final = 0;
}

void sd_sampler_config_class_default(int kind, sd_sampler_config *cfg) {
    /* the __init__ defaults every diffusers scheduler class mirrored here shares */
    sd_sampler_config_default(cfg);
    cfg->beta_start = 0.0001;
    cfg->beta_end = 0.02;
    cfg->beta_schedule = SD_BETA_LINEAR;
    cfg->steps_offset = 0;
    /* DDIMScheduler alone clips x0 and takes alpha_prod 1 past t = 0 by default;
     * PNDMScheduler defaults set_alpha_to_one to False */
    cfg->clip_sample = kind == SD_SAMPLER_DDIM;
    cfg->set_alpha_to_one = kind == SD_SAMPLER_DDIM;
}

/* ----------------------------------------------------------------- create ---- */

static sd_status check_config(int kind, const sd_sampler_config *c) {
    if (c->num_train_timesteps < 2 || c->num_train_timesteps > 100000)
        return sd_fail(SD_ERR_INVALID,
                       "sampler config: num_train_timesteps must be in [2, 100000], got %d",
                       c->num_train_timesteps);
    if (!c->trained_betas) {
        if (!(c->beta_start > 0.0 && c->beta_start < 1.0))
            return sd_fail(SD_ERR_INVALID, "sampler config: beta_start must be in (0, 1), got %g",
                           c->beta_start);
        if (!(c->beta_end > 0.0 && c->beta_end < 1.0))
            return sd_fail(SD_ERR_INVALID, "sampler config: beta_end must be in (0, 1), got %g",
                           c->beta_end);
        if (c->beta_schedule != SD_BETA_LINEAR && c->beta_schedule != SD_BETA_SCALED_LINEAR)
            return sd_fail(SD_ERR_INVALID, "sampler config: beta_schedule: unknown value %d",
                           (int)c->beta_schedule);
    } else {
        for (int t = 0; t < c->num_train_timesteps; t++)
            if (!(c->trained_betas[t] > 0.0f && c->trained_betas[t] < 1.0f))
                return sd_fail(SD_ERR_INVALID, "sampler config: trained_betas[%d] = %g is not in "
                               "(0, 1)", t, (double)c->trained_betas[t]);
    }
    if (c->prediction_type != SD_PREDICT_EPSILON && c->prediction_type != SD_PREDICT_V)
        return sd_fail(SD_ERR_INVALID, "sampler config: prediction_type: unknown value %d",
                       (int)c->prediction_type);
    if (c->steps_offset < 0 || c->steps_offset >= c->num_train_timesteps)
        return sd_fail(SD_ERR_INVALID, "sampler config: steps_offset must be in [0, %d), got %d",
                       c->num_train_timesteps, c->steps_offset);
    if (c->timestep_spacing < SD_SPACING_DEFAULT || c->timestep_spacing > SD_SPACING_TRAILING)
        return sd_fail(SD_ERR_INVALID, "sampler config: timestep_spacing: unknown value %d",
                       (int)c->timestep_spacing);
    if (c->final_sigmas_type != SD_FINAL_SIGMA_ZERO && c->final_sigmas_type != SD_FINAL_SIGMA_MIN)
        return sd_fail(SD_ERR_INVALID, "sampler config: final_sigmas_type: unknown value %d",
                       (int)c->final_sigmas_type);
    if (c->clip_sample && !(c->clip_sample_range > 0.0))
        return sd_fail(SD_ERR_INVALID, "sampler config: clip_sample_range must be > 0, got %g",
                       c->clip_sample_range);
    if (c->use_karras_sigmas && kind != SD_SAMPLER_EULER && kind != SD_SAMPLER_DPMPP_2M &&
        kind != SD_SAMPLER_DPMPP_2M_KARRAS)
        return sd_fail(SD_ERR_INVALID, "sampler config: use_karras_sigmas is supported by euler "
                       "and dpmpp_2m only, not %s", kind_names[kind]);
    if (c->clip_sample && kind != SD_SAMPLER_DDIM)
        return sd_fail(SD_ERR_INVALID, "sampler config: clip_sample is supported by ddim only, "
                       "not %s", kind_names[kind]);
    return SD_OK;
}

sd_status sd_sampler_create(int kind, const sd_sampler_config *cfg, int num_steps,
                            sd_sampler **out) {
    if (!out)
        return sd_fail(SD_ERR_INVALID, "sd_sampler_create: out is NULL");
    *out = NULL;
    if (kind < 0 || kind >= SD_SAMPLER_COUNT)
        return sd_fail(SD_ERR_INVALID, "sampler kind %d is not one of the %d samplers", kind,
                       SD_SAMPLER_COUNT);
    sd_sampler_config c;
    if (cfg)
        c = *cfg;
    else
        sd_sampler_config_default(&c);
    SD_TRY(check_config(kind, &c));
    if (num_steps < 1 || num_steps > c.num_train_timesteps)
        return sd_fail(SD_ERR_INVALID, "num_steps must be in [1, num_train_timesteps=%d], got %d",
                       c.num_train_timesteps, num_steps);
    if (c.timestep_spacing == SD_SPACING_DEFAULT)
        c.timestep_spacing = (kind == SD_SAMPLER_DDIM || kind == SD_SAMPLER_PNDM)
                                 ? SD_SPACING_LEADING
                                 : SD_SPACING_LINSPACE;
    const float *trained_betas = c.trained_betas;
    c.trained_betas = NULL;

    sd_sampler *s = calloc(1, sizeof *s);
    if (!s)
        return sd_fail(SD_ERR_NOMEM, "sampler: no memory");
    s->kind = (sd_sampler_kind)kind;
    s->cfg = c;
    s->num_inference_steps = num_steps;
    s->train_timesteps = c.num_train_timesteps;
    s->karras = kind == SD_SAMPLER_DPMPP_2M_KARRAS || c.use_karras_sigmas;
    s->init_noise_sigma = 1.0f;
    sd_status st = sd_make_alphas_cumprod(s, trained_betas);
    if (st == SD_OK) {
        switch (s->kind) {
        case SD_SAMPLER_DDIM: st = sd_ddim_setup(s); break;
        case SD_SAMPLER_EULER:
        case SD_SAMPLER_EULER_A:
        case SD_SAMPLER_LMS: st = sd_euler_setup(s); break;
        case SD_SAMPLER_DPMPP_2M:
        case SD_SAMPLER_DPMPP_2M_KARRAS: st = sd_dpmpp_setup(s); break;
        case SD_SAMPLER_PNDM: st = sd_pndm_setup(s); break;
        default: st = sd_fail(SD_ERR_INVALID, "sampler kind %d", kind); break;
        }
    }
    /* diffusers lets a few (spacing, steps_offset, steps) combinations run past the
     * training range (timestep T with "leading" near T steps, -1 with "trailing" at some
     * counts), where it indexes alphas out of range or repeats a sigma and divides by a
     * zero step; refuse them instead */
    for (int i = 0; st == SD_OK && i < s->num_timesteps; i++)
        if (!(s->timesteps[i] >= 0.0f && s->timesteps[i] <= (float)(s->train_timesteps - 1)))
            st = sd_fail(SD_ERR_INVALID,
                         "timestep_spacing '%s' with steps_offset %d and %d steps gives "
                         "timestep %g, outside [0, num_train_timesteps=%d)",
                         sd_spacing_name(c.timestep_spacing), c.steps_offset, num_steps,
                         (double)s->timesteps[i], s->train_timesteps);
    if (st != SD_OK) {
        sd_sampler_free(s);
        return st;
    }
    *out = s;
    return SD_OK;
}

/* A state array of n floats where the sampler's arrays live. */
static sd_status state_buffer(const sd_sampler *s, int64_t n, float **out) {
    if (!s->be) {
        *out = malloc(sizeof(float) * (size_t)n);
        if (!*out)
            return sd_fail(SD_ERR_NOMEM, "sampler: no memory for %lld floats", (long long)n);
        return SD_OK;
    }
    sd_tensor t = sd_tensor_view(NULL, SD_F32, s->be->device, 1, (const int64_t[]){n});
    SD_TRY(s->be->alloc(s->be, &t));
    *out = t.data;
    return SD_OK;
}

static void state_buffer_free(const sd_sampler *s, float **p) {
    if (*p && !s->be) {
        free(*p);
    } else if (*p) {
        sd_tensor t = {.data = *p, .device = s->be->device};
        s->be->free(s->be, &t);
    }
    *p = NULL;
}

static void state_free(sd_sampler *s) {
    for (int k = 0; k < SD_SAMPLER_MAX_HISTORY; k++)
        state_buffer_free(s, &s->history[k]);
    state_buffer_free(s, &s->cur_sample);
    state_buffer_free(s, &s->scratch);
    s->n = 0;
}

void sd_sampler_free(sd_sampler *s) {
    if (!s)
        return;
    free(s->alphas_cumprod);
    free(s->timesteps);
    free(s->sigmas);
    state_free(s);
    free(s);
}

sd_status sd_sampler_use_backend(sd_sampler *s, const sd_backend *be) {
    if (s->next_step > 0)
        return sd_fail(SD_ERR_INVALID, "sampler: choose its memory before the first step");
    if (be && !be->sampler_op)
        return sd_fail(SD_ERR_UNSUPPORTED, "sampler: the %s backend has no sampler updates",
                       be->name);
    state_free(s);
    s->be = be;
    return SD_OK;
}

sd_status sd_sampler_run(const sd_sampler *s, const sd_sampler_op *op) {
    if (s->be)
        return s->be->sampler_op(s->be, op);
    for (int64_t k = 0; k < op->n; k++)
        op->out[k] = sd_sampler_op_elem(op, k);
    return SD_OK;
}

/* -------------------------------------------------------------- accessors ---- */

sd_sampler_kind sd_sampler_kind_of(const sd_sampler *s) { return s->kind; }
int sd_sampler_num_steps(const sd_sampler *s) { return s->num_timesteps; }
float sd_sampler_init_noise_sigma(const sd_sampler *s) { return s->init_noise_sigma; }
const float *sd_sampler_sigmas(const sd_sampler *s) { return s->sigmas; }
const float *sd_sampler_alphas_cumprod(const sd_sampler *s) { return s->alphas_cumprod; }
int sd_sampler_num_train_timesteps(const sd_sampler *s) { return s->train_timesteps; }
int sd_sampler_needs_noise(const sd_sampler *s) { return s->kind == SD_SAMPLER_EULER_A; }

float sd_sampler_timestep(const sd_sampler *s, int i) {
    if (i < 0 || i >= s->num_timesteps)
        return NAN;
    return s->timesteps[i];
}

static int uses_sigma_scaling(const sd_sampler *s) {
    return s->kind == SD_SAMPLER_EULER || s->kind == SD_SAMPLER_EULER_A ||
           s->kind == SD_SAMPLER_LMS;
}

sd_status sd_sampler_scale_model_input(const sd_sampler *s, int i, const float *x, float *out,
                                       int64_t n) {
    if (i < 0 || i >= s->num_timesteps)
        return sd_fail(SD_ERR_INVALID, "scale_model_input: step %d out of range [0, %d)", i,
                       s->num_timesteps);
    if (n < 1 || !x || !out)
        return sd_fail(SD_ERR_INVALID, "scale_model_input: empty sample");
    if (!uses_sigma_scaling(s)) {
        sd_sampler_op op = {.kind = SD_SOP_COPY, .n = n, .out = out, .in = {x}};
        return out == x ? SD_OK : sd_sampler_run(s, &op);
    }
    /* sample / ((sigma**2 + 1) ** 0.5), a float32 division per element */
    float sigma = s->sigmas[i];
    sd_sampler_op op = {.kind = SD_SOP_DIV, .n = n, .out = out, .in = {x}};
    op.c[0] = sqrtf(sigma * sigma + 1.0f);
    return sd_sampler_run(s, &op);
}

/* ------------------------------------------------------------------ state ---- */

sd_status sd_sampler_state_alloc(sd_sampler *s, int64_t n, int history_slots) {
    if (s->n == n)
        return SD_OK;
    state_free(s);
    sd_status st = SD_OK;
    for (int k = 0; k < history_slots && st == SD_OK; k++)
        st = state_buffer(s, n, &s->history[k]);
    if (st == SD_OK)
        st = state_buffer(s, n, &s->cur_sample);
    if (st == SD_OK)
        st = state_buffer(s, n, &s->scratch);
    if (st != SD_OK) {
        state_free(s);
        return st;
    }
    s->n = n;
    return SD_OK;
}

float *sd_sampler_history_next(sd_sampler *s, int keep) {
    if (s->history_len == keep) {
        /* rotate the oldest buffer to the end and overwrite it */
        float *oldest = s->history[0];
        for (int k = 1; k < keep; k++)
            s->history[k - 1] = s->history[k];
        s->history[keep - 1] = oldest;
        s->history_len--;
    }
    return s->history[s->history_len++];
}

sd_status sd_sampler_step(sd_sampler *s, int i, const float *model_output, float *sample,
                          const float *noise, int64_t n) {
    if (i < 0 || i >= s->num_timesteps)
        return sd_fail(SD_ERR_INVALID, "sampler step %d out of range [0, %d)", i,
                       s->num_timesteps);
    if (i != s->next_step)
        return sd_fail(SD_ERR_INVALID,
                       "sampler steps must come in order: expected step %d, got %d (create a "
                       "new sampler to start again)",
                       s->next_step, i);
    if (n < 1 || !model_output || !sample)
        return sd_fail(SD_ERR_INVALID, "sampler step: empty sample or model_output");
    if (s->n && n != s->n)
        return sd_fail(SD_ERR_INVALID, "sampler step: sample has %lld elements, earlier steps "
                       "had %lld", (long long)n, (long long)s->n);
    if (sd_sampler_needs_noise(s) && !noise)
        return sd_fail(SD_ERR_INVALID, "sampler %s needs a noise array every step",
                       kind_names[s->kind]);
    SD_TRY(sd_sampler_state_alloc(s, n, SD_SAMPLER_MAX_HISTORY));
    sd_status st;
    switch (s->kind) {
    case SD_SAMPLER_DDIM: st = sd_ddim_step(s, i, model_output, sample, n); break;
    case SD_SAMPLER_EULER: st = sd_euler_step(s, i, model_output, sample, n); break;
    case SD_SAMPLER_EULER_A: st = sd_euler_a_step(s, i, model_output, sample, noise, n); break;
    case SD_SAMPLER_DPMPP_2M:
    case SD_SAMPLER_DPMPP_2M_KARRAS: st = sd_dpmpp_step(s, i, model_output, sample, n); break;
    case SD_SAMPLER_PNDM: st = sd_pndm_step(s, i, model_output, sample, n); break;
    case SD_SAMPLER_LMS: st = sd_lms_step(s, i, model_output, sample, n); break;
    default: st = sd_fail(SD_ERR_INVALID, "sampler kind %d", (int)s->kind); break;
    }
    if (st == SD_OK)
        s->next_step++;
    return st;
}
