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

/* _get_prev_sample: x_t -> x_{t_prev} from the combined noise prediction (float32). */
static sd_status pndm_prev_sample(const sd_sampler *s, const float *sample, int t, int prev_t,
                                  const float *model_output, float *out, int64_t n) {
    if (t < 0 || t >= s->train_timesteps)
        return sd_fail(SD_ERR_INVALID, "pndm: timestep %d outside [0, %d)", t,
                       s->train_timesteps);
    float a_t = s->alphas_cumprod[t];
    float a_prev = prev_t >= 0 ? s->alphas_cumprod[prev_t]
                               : (s->cfg.set_alpha_to_one ? 1.0f : s->alphas_cumprod[0]);
    float b_t = 1.0f - a_t, b_prev = 1.0f - a_prev;
    float sample_coeff = sqrtf(a_prev / a_t);
    float denom = a_t * sqrtf(b_prev) + sqrtf(a_t * b_t * a_prev);
    float diff = a_prev - a_t;
    int v = s->cfg.prediction_type == SD_PREDICT_V;
    float sqrt_a = sqrtf(a_t), sqrt_b = sqrtf(b_t);
    for (int64_t k = 0; k < n; k++) {
        float e = v ? sqrt_a * model_output[k] + sqrt_b * sample[k] : model_output[k];
        out[k] = sample_coeff * sample[k] - diff * e / denom;
    }
    return SD_OK;
}

sd_status sd_pndm_step(sd_sampler *s, int i, const float *eps, float *x, int64_t n) {
    int ratio = s->train_timesteps / s->num_inference_steps;
    int t = (int)s->timesteps[i];
    int prev_t = t - ratio;
    int counter = i;
    if (counter != 1) {
        sd_sampler_history_push(s, eps, 4);
    } else {
        prev_t = t;
        t = t + ratio;
    }
    float *mo = s->scratch;
    const float *sample = x;
    int len = s->history_len;
    const float *e1 = s->history[len - 1];
    if (len == 1 && counter == 0) {
        memcpy(mo, eps, sizeof(float) * (size_t)n);
        memcpy(s->cur_sample, x, sizeof(float) * (size_t)n);
    } else if (len == 1 && counter == 1) {
        for (int64_t k = 0; k < n; k++)
            mo[k] = (eps[k] + e1[k]) / 2.0f;
        sample = s->cur_sample;
    } else if (len == 2) {
        const float *e2 = s->history[len - 2];
        for (int64_t k = 0; k < n; k++)
            mo[k] = (3.0f * e1[k] - e2[k]) / 2.0f;
    } else if (len == 3) {
        const float *e2 = s->history[len - 2], *e3 = s->history[len - 3];
        for (int64_t k = 0; k < n; k++)
            mo[k] = (23.0f * e1[k] - 16.0f * e2[k] + 5.0f * e3[k]) / 12.0f;
    } else {
        const float *e2 = s->history[len - 2], *e3 = s->history[len - 3];
        const float *e4 = s->history[len - 4];
        const float c = (float)(1.0 / 24.0);
        for (int64_t k = 0; k < n; k++)
            mo[k] = c * (55.0f * e1[k] - 59.0f * e2[k] + 37.0f * e3[k] - 9.0f * e4[k]);
    }
    /* the output may overwrite x even when sample is cur_sample: each element is read
     * before it is written */
    return pndm_prev_sample(s, sample, t, prev_t, mo, x, n);
}
