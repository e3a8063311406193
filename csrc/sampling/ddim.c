/* DDIM (Song et al. 2020) with eta = 0: diffusers' DDIMScheduler. */
#include "sampling/sampler_internal.h"

#include <math.h>
#include <stdlib.h>

sd_status sd_ddim_setup(sd_sampler *s) {
    int64_t *buf = malloc(sizeof(int64_t) * (size_t)(s->num_inference_steps + 1));
    if (!buf)
        return sd_fail(SD_ERR_NOMEM, "ddim: no memory for timesteps");
    int count = 0;
    sd_status st = sd_spacing_int(s, 1, buf, &count);
    if (st == SD_OK) {
        s->timesteps = malloc(sizeof(float) * (size_t)count);
        if (!s->timesteps)
            st = sd_fail(SD_ERR_NOMEM, "ddim: no memory for timesteps");
    }
    if (st == SD_OK) {
        for (int k = 0; k < count; k++)
            s->timesteps[k] = (float)buf[k];
        s->num_timesteps = count;
    }
    free(buf);
    return st;
}

sd_status sd_ddim_step(sd_sampler *s, int i, const float *eps, float *x, int64_t n) {
    (void)n;
    int t = (int)s->timesteps[i];
    int prev_t = t - s->train_timesteps / s->num_inference_steps;
    float a_t = s->alphas_cumprod[t];
    float a_prev = prev_t >= 0 ? s->alphas_cumprod[prev_t]
                               : (s->cfg.set_alpha_to_one ? 1.0f : s->alphas_cumprod[0]);
    float b_t = 1.0f - a_t;
    /* per element: x0 = (x - sqrt_b eps) / sqrt_a (v: sqrt_a x - sqrt_b v, with
     * eps = sqrt_a v + sqrt_b x), clamped when clip_sample; x = sqrt_a_prev x0 + dir eps */
    int flags = (s->cfg.prediction_type == SD_PREDICT_V ? SD_SOP_V_PREDICTION : 0) |
                (s->cfg.clip_sample ? SD_SOP_CLIP : 0);
    sd_sampler_op op = sd_sampler_op_make(s, SD_SOP_DDIM, flags, x);
    op.in[0] = x;
    op.in[1] = eps;
    op.c[0] = sqrtf(a_t);
    op.c[1] = sqrtf(b_t);
    op.c[2] = sqrtf(a_prev);
    /* (1 - alpha_prod_t_prev - std_dev_t**2) ** 0.5 with std_dev_t = 0 */
    op.c[3] = sqrtf((1.0f - a_prev) - 0.0f);
    op.c[4] = (float)s->cfg.clip_sample_range;
    return sd_sampler_run(s, &op);
}
