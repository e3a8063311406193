/* Euler and Euler ancestral (Karras et al. 2022, k-diffusion): diffusers'
 * EulerDiscreteScheduler and EulerAncestralDiscreteScheduler. The schedule set up here
 * (float timesteps, sigmas interpolated at them) is also LMSDiscreteScheduler's. */
#include "sampling/sampler_internal.h"

#include <math.h>
#include <stdlib.h>

/* Float32 timesteps of the Euler-family set_timesteps, descending; returns the count. */
static int float_timesteps(const sd_sampler *s, float *out) {
    int n = s->num_inference_steps, T = s->train_timesteps;
    switch (s->cfg.timestep_spacing) {
    case SD_SPACING_LEADING: {
        /* (arange(n) * (T // n)).round()[::-1].astype(float32) + steps_offset */
        int64_t ratio = T / n;
        for (int k = 0; k < n; k++)
            out[n - 1 - k] = (float)((int64_t)k * ratio) + (float)s->cfg.steps_offset;
        return n;
    }
    case SD_SPACING_TRAILING: {
        /* arange(T, 0, -T / n).round().astype(float32) - 1 */
        double ratio = (double)T / (double)n;
        double len_d = ceil((0.0 - (double)T) / -ratio);
        int len = len_d > 0 ? (int)len_d : 0;
        if (len > n + 1)
            len = n + 1;
        double delta = ((double)T - ratio) - (double)T;
        for (int k = 0; k < len; k++) {
            double v = k == 0 ? (double)T : (k == 1 ? (double)T - ratio : T + (double)k * delta);
            out[k] = (float)nearbyint(v) - 1.0f;
        }
        return len;
    }
    default:
        /* np.linspace(0, T - 1, n, dtype=float32)[::-1]: float64 values cast to float32 */
        for (int k = 0; k < n; k++)
            out[n - 1 - k] = (float)sd_np_linspace(0.0, (double)(T - 1), n, k);
        return n;
    }
}

sd_status sd_euler_setup(sd_sampler *s) {
    int n = s->num_inference_steps, T = s->train_timesteps;
    sd_status st = SD_OK;
    float *train_sigmas = malloc(sizeof(float) * (size_t)T);
    float *log_sigmas = malloc(sizeof(float) * (size_t)T);
    double *sig = malloc(sizeof(double) * (size_t)(n + 2));
    s->timesteps = malloc(sizeof(float) * (size_t)(n + 1));
    s->sigmas = malloc(sizeof(float) * (size_t)(n + 2));
    if (!train_sigmas || !log_sigmas || !sig || !s->timesteps || !s->sigmas) {
        st = sd_fail(SD_ERR_NOMEM, "%s: no memory for the schedule",
                     sd_sampler_kind_name(s->kind));
        goto done;
    }
    sd_training_sigmas(s, train_sigmas);
    for (int t = 0; t < T; t++)
        log_sigmas[t] = logf(train_sigmas[t]); /* np.log of a float32 array */
    int count = float_timesteps(s, s->timesteps);
    for (int k = 0; k < count; k++)
        sig[k] = sd_np_interp((double)s->timesteps[k], train_sigmas, T);
    if (s->karras) {
        /* _convert_to_karras(sigmas, num_inference_steps), then timesteps from sigmas */
        double sigma_min = sig[count - 1], sigma_max = sig[0];
        count = n;
        sd_karras_sigmas(sigma_min, sigma_max, count, sig);
        for (int k = 0; k < count; k++)
            s->timesteps[k] = (float)sd_sigma_to_t(sig[k], log_sigmas, T);
    }
    float last = 0.0f;
    if (s->kind == SD_SAMPLER_EULER && s->cfg.final_sigmas_type == SD_FINAL_SIGMA_MIN)
        last = train_sigmas[0];
    for (int k = 0; k < count; k++)
        s->sigmas[k] = (float)sig[k];
    s->sigmas[count] = last;
    s->num_timesteps = count;

    float max_sigma = 0.0f;
    for (int k = 0; k <= count; k++)
        if (s->sigmas[k] > max_sigma)
            max_sigma = s->sigmas[k];
    if (s->cfg.timestep_spacing == SD_SPACING_LEADING)
        s->init_noise_sigma = sqrtf(max_sigma * max_sigma + 1.0f);
    else
        s->init_noise_sigma = max_sigma;
done:
    free(train_sigmas);
    free(log_sigmas);
    free(sig);
    return st;
}

/* x0 = sd_sop_sigma_x0 (sampler_ops.h): x - sigma eps, or for v-prediction
 * eps * (-sigma / sqrt(sigma^2 + 1)) + x / (sigma^2 + 1) */
sd_status sd_euler_step(sd_sampler *s, int i, const float *eps, float *x, int64_t n) {
    (void)n;
    /* s_churn = 0: gamma = 0 and sigma_hat = sigma * (gamma + 1) = sigma */
    float sigma = s->sigmas[i];
    float sigma_hat = sigma * (0.0f + 1.0f);
    float v_in_div = sigma * sigma + 1.0f;
    /* per element: derivative = (x - x0) / sigma_hat; x = x + derivative * dt */
    sd_sampler_op op = sd_sampler_op_make(
        s, SD_SOP_EULER, s->cfg.prediction_type == SD_PREDICT_V ? SD_SOP_V_PREDICTION : 0, x);
    op.in[0] = x;
    op.in[1] = eps;
    op.c[0] = sigma_hat;
    op.c[1] = -sigma / sqrtf(v_in_div);
    op.c[2] = v_in_div;
    op.c[3] = s->sigmas[i + 1] - sigma_hat; /* dt */
    return sd_sampler_run(s, &op);
}

sd_status sd_euler_a_step(sd_sampler *s, int i, const float *eps, float *x, const float *noise,
                          int64_t n) {
    (void)n;
    float sigma = s->sigmas[i];
    float from2 = sigma * sigma, to = s->sigmas[i + 1], to2 = to * to;
    float sigma_up = sqrtf(to2 * (from2 - to2) / from2);
    float sigma_down = sqrtf(to2 - sigma_up * sigma_up);
    float v_in_div = sigma * sigma + 1.0f;
    /* per element: prev = x + (x - x0) / sigma * dt; x = prev + noise * sigma_up */
    sd_sampler_op op = sd_sampler_op_make(
        s, SD_SOP_EULER_A, s->cfg.prediction_type == SD_PREDICT_V ? SD_SOP_V_PREDICTION : 0, x);
    op.in[0] = x;
    op.in[1] = eps;
    op.in[2] = noise;
    op.c[0] = sigma;
    op.c[1] = -sigma / sqrtf(v_in_div);
    op.c[2] = v_in_div;
    op.c[3] = sigma_down - sigma; /* dt */
    op.c[4] = sigma_up;
    return sd_sampler_run(s, &op);
}
