/* PNDM's pseudo linear multistep part (Liu et al. 2022) with skip_prk_steps=True, SD 1.5's
 * default: diffusers' PNDMScheduler. Without the Runge-Kutta warm-up, the second model
 * call re-evaluates the first timestep's neighbour and the two outputs are averaged, so a
 * generation of n steps makes n + 1 model calls (1 when n = 1). */
#include "sampling/sampler_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

sd_status sd_pndm_setup(sd_sampler *s) {
    int n = s->num_inference_steps;
    int64_t *ts = malloc(sizeof(int64_t) * (size_t)(n + 2));
    s->timesteps = malloc(sizeof(float) * (size_t)(n + 3));
    if (!ts || !s->timesteps) {
        free(ts);
        return sd_fail(SD_ERR_NOMEM, "pndm: no memory for timesteps");
    }
    int c = 0;
    sd_status st = sd_spacing_int(s, 0, ts, &c);
    if (st == SD_OK) {
        /* concatenate([ts[:-1], ts[-2:-1], ts[-1:]])[::-1] */
        int count = 0;
        s->timesteps[count++] = (float)ts[c - 1];
        if (c >= 2)
            s->timesteps[count++] = (float)ts[c - 2];
        for (int k = c - 2; k >= 0; k--)
            s->timesteps[count++] = (float)ts[k];
        s->num_timesteps = count;
    }
    free(ts);
    return st;
}

/* _get_prev_sample: x_t -> x_{t_prev} from the combined noise prediction (float32):
 * out = coeff * sample - diff * e / denom, e the combined output (for v-prediction
 * sqrt(alpha) mo + sqrt(1 - alpha) sample). */
static sd_status pndm_prev_sample(const sd_sampler *s, const float *sample, int t, int prev_t,
                                  const float *model_output, float *out) {
    if (t < 0 || t >= s->train_timesteps)
        return sd_fail(SD_ERR_INVALID, "pndm: timestep %d outside [0, %d)", t,
                       s->train_timesteps);
    float a_t = s->alphas_cumprod[t];
    float a_prev = prev_t >= 0 ? s->alphas_cumprod[prev_t]
                               : (s->cfg.set_alpha_to_one ? 1.0f : s->alphas_cumprod[0]);
    float b_t = 1.0f - a_t, b_prev = 1.0f - a_prev;
    sd_sampler_op op = sd_sampler_op_make(
        s, SD_SOP_PNDM_PREV, s->cfg.prediction_type == SD_PREDICT_V ? SD_SOP_V_PREDICTION : 0,
        out);
    op.in[0] = sample;
    op.in[1] = model_output;
    op.c[0] = sqrtf(a_prev / a_t);
    op.c[1] = a_prev - a_t;
    op.c[2] = a_t * sqrtf(b_prev) + sqrtf(a_t * b_t * a_prev);
    op.c[3] = sqrtf(a_t);
    op.c[4] = sqrtf(b_t);
    return sd_sampler_run(s, &op);
}

sd_status sd_pndm_step(sd_sampler *s, int i, const float *eps, float *x, int64_t n) {
    (void)n;
    int ratio = s->train_timesteps / s->num_inference_steps;
    int t = (int)s->timesteps[i];
    int prev_t = t - ratio;
    int counter = i;
    if (counter != 1) {
        sd_sampler_op push = sd_sampler_op_make(s, SD_SOP_COPY, 0, sd_sampler_history_next(s, 4));
        push.in[0] = eps;
        SD_TRY(sd_sampler_run(s, &push));
    } else {
        prev_t = t;
        t = t + ratio;
    }
    const float *sample = x;
    const float *mo = s->scratch;
    int len = s->history_len;
    /* the combined output: the past outputs mixed, newest first (sampler_ops.h) */
    sd_sampler_op mix = sd_sampler_op_make(s, SD_SOP_PNDM_MIX, 0, s->scratch);
    for (int j = 0; j < len && j < SD_SAMPLER_OP_INPUTS; j++)
        mix.in[j] = s->history[len - 1 - j];
    if (len == 1 && counter == 0) {
        /* the first call: its own output, and its sample kept for the second */
        mo = eps;
        sd_sampler_op keep = sd_sampler_op_make(s, SD_SOP_COPY, 0, s->cur_sample);
        keep.in[0] = x;
        SD_TRY(sd_sampler_run(s, &keep));
    } else if (len == 1 && counter == 1) {
        /* (this output + the first) / 2, applied to the first call's sample */
        mix.flags = 1;
        mix.in[0] = eps;
        mix.in[1] = s->history[0];
        sample = s->cur_sample;
    } else {
        mix.flags = len < 4 ? len : 4;
        mix.c[0] = (float)(1.0 / 24.0);
    }
    if (mix.flags)
        SD_TRY(sd_sampler_run(s, &mix));
    /* the output may overwrite x even when sample is cur_sample: each element is read
     * before it is written */
    return pndm_prev_sample(s, sample, t, prev_t, mo, x);
}
