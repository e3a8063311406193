/* DPM-Solver++(2M) (Lu et al. 2022), optionally on Karras sigmas: diffusers'
 * DPMSolverMultistepScheduler with algorithm_type "dpmsolver++", solver_order 2,
 * solver_type "midpoint". The history holds the last two data predictions x0. */
#include "sampling/sampler_internal.h"

#include <math.h>
#include <stdlib.h>

sd_status sd_dpmpp_setup(sd_sampler *s) {
    int n = s->num_inference_steps, T = s->train_timesteps;
    int last_timestep = T; /* lambda_min_clipped = -inf clips nothing */
    sd_status st = SD_OK;
    float *train_sigmas = malloc(sizeof(float) * (size_t)T);
    float *log_sigmas = malloc(sizeof(float) * (size_t)T);
    double *sig = malloc(sizeof(double) * (size_t)(n + 2));
    int64_t *ts = malloc(sizeof(int64_t) * (size_t)(n + 2));
    s->timesteps = malloc(sizeof(float) * (size_t)(n + 2));
    s->sigmas = malloc(sizeof(float) * (size_t)(n + 3));
    if (!train_sigmas || !log_sigmas || !sig || !ts || !s->timesteps || !s->sigmas) {
        st = sd_fail(SD_ERR_NOMEM, "%s: no memory for the schedule",
                     sd_sampler_kind_name(s->kind));
        goto done;
    }
    sd_training_sigmas(s, train_sigmas);
    for (int t = 0; t < T; t++)
        log_sigmas[t] = logf(train_sigmas[t]);

    /* n + 1 points from the top, the last (t = 0 end) dropped */
    int count = 0;
    switch (s->cfg.timestep_spacing) {
    case SD_SPACING_LEADING: {
        int64_t ratio = last_timestep / (n + 1);
        for (int k = n; k >= 1; k--)
            ts[count++] = (int64_t)k * ratio + s->cfg.steps_offset;
        break;
    }
    case SD_SPACING_TRAILING: {
        double ratio = (double)T / (double)n;
        double len_d = ceil((0.0 - (double)last_timestep) / -ratio);
        int len = len_d > 0 ? (int)len_d : 0;
        if (len > n + 1)
            len = n + 1;
        double start = (double)last_timestep;
        double delta = (start - ratio) - start;
        for (int k = 0; k < len; k++) {
            double v = k == 0 ? start : (k == 1 ? start - ratio : start + (double)k * delta);
            ts[count++] = (int64_t)nearbyint(v) - 1;
        }
        break;
    }
    default:
        for (int k = n; k >= 1; k--)
            ts[count++] = (int64_t)nearbyint(sd_np_linspace(0.0, last_timestep - 1, n + 1, k));
        break;
    }

    if (s->karras) {
        /* in_sigmas = flip(sigmas): min is the t = 0 sigma, max the t = T - 1 one */
        count = n;
        sd_karras_sigmas((double)train_sigmas[0], (double)train_sigmas[T - 1], count, sig);
        for (int k = 0; k < count; k++)
            ts[k] = (int64_t)nearbyint(sd_sigma_to_t(sig[k], log_sigmas, T));
    } else {
        for (int k = 0; k < count; k++)
            sig[k] = sd_np_interp((double)ts[k], train_sigmas, T);
    }
    float last = s->cfg.final_sigmas_type == SD_FINAL_SIGMA_MIN ? train_sigmas[0] : 0.0f;
    for (int k = 0; k < count; k++) {
        s->timesteps[k] = (float)ts[k];
        s->sigmas[k] = (float)sig[k];
    }
    s->sigmas[count] = last;
    s->num_timesteps = count;
    s->init_noise_sigma = 1.0f;
done:
    free(train_sigmas);
    free(log_sigmas);
    free(sig);
    free(ts);
    return st;
}

/* _sigma_to_alpha_sigma_t and lambda = log(alpha) - log(sigma), in float32 */
typedef struct {
    float alpha, sigma, lambda;
} dpm_point;

static dpm_point dpm_point_at(float sigma) {
    dpm_point p;
    p.alpha = 1.0f / sqrtf(sigma * sigma + 1.0f);
    p.sigma = sigma * p.alpha;
    p.lambda = logf(p.alpha) - logf(p.sigma);
    return p;
}

sd_status sd_dpmpp_step(sd_sampler *s, int i, const float *eps, float *x, int64_t n) {
    (void)n;
    int N = s->num_timesteps;
    dpm_point p_s0 = dpm_point_at(s->sigmas[i]);
    dpm_point p_t = dpm_point_at(s->sigmas[i + 1]);

    /* convert_model_output: the data prediction x0, alpha x - sigma eps for
     * v-prediction, else (x - sigma eps) / alpha; it becomes the newest history entry */
    float *m0 = sd_sampler_history_next(s, 2);
    sd_sampler_op x0 = sd_sampler_op_make(
        s, SD_SOP_DPM_X0, s->cfg.prediction_type == SD_PREDICT_V ? SD_SOP_V_PREDICTION : 0, m0);
    x0.in[0] = x;
    x0.in[1] = eps;
    x0.c[0] = p_s0.alpha;
    x0.c[1] = p_s0.sigma;
    SD_TRY(sd_sampler_run(s, &x0));

    int lower_order_final =
        i == N - 1 && (s->cfg.euler_at_final || (s->cfg.lower_order_final && N < 15) ||
                       s->cfg.final_sigmas_type == SD_FINAL_SIGMA_ZERO);
    float h = p_t.lambda - p_s0.lambda;
    float c_x = p_t.sigma / p_s0.sigma;
    float c_d0 = p_t.alpha * (expf(-h) - 1.0f);
    sd_sampler_op op;
    if (s->lower_order_nums < 1 || lower_order_final) {
        /* x = c_x x - c_d0 m0 */
        op = sd_sampler_op_make(s, SD_SOP_DPM_1, 0, x);
        op.in[0] = x;
        op.in[1] = m0;
    } else {
        /* d1 = (m0 - m1) / r0; x = (c_x x - c_d0 m0) - (c_d0 / 2) d1 */
        dpm_point p_s1 = dpm_point_at(s->sigmas[i - 1]);
        float h_0 = p_s0.lambda - p_s1.lambda;
        float r0 = h_0 / h;
        op = sd_sampler_op_make(s, SD_SOP_DPM_2, 0, x);
        op.in[0] = x;
        op.in[1] = m0;
        op.in[2] = s->history[s->history_len - 2];
        op.c[2] = 0.5f * c_d0;
        op.c[3] = 1.0f / r0;
    }
    op.c[0] = c_x;
    op.c[1] = c_d0;
    SD_TRY(sd_sampler_run(s, &op));
    if (s->lower_order_nums < 2)
        s->lower_order_nums++;
    return SD_OK;
}
