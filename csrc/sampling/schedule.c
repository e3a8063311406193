/* The training schedule (betas, cumulative alphas, sigmas) and the timestep spacings:
 * the numbers a sampler is created with, before any step runs (sampler.c holds the
 * object that uses them).
 *
 * Each helper mirrors one NumPy or torch expression of diffusers; the comments name it,
 * because the casts between float32 and float64 are what makes the numbers agree. */
#include "sampling/sampler_internal.h"

#include <math.h>
#include <stdlib.h>

/* ------------------------------------------------------------- numpy mirrors ---- */

double sd_np_linspace(double start, double stop, int num, int i) {
    if (num == 1)
        return start; /* numpy: div == 0, y = i * delta + start */
    if (i == num - 1)
        return stop;
    double div = (double)(num - 1);
    double delta = stop - start;
    double step = delta / div;
    if (step == 0.0)
        return ((double)i / div) * delta + start;
    return (double)i * step + start;
}

double sd_np_interp(double x, const float *fp, int len) {
    /* xp = 0, 1, ..., len - 1 */
    if (!(x > 0.0))
        return x == x ? (double)fp[0] : x;
    if (x >= (double)(len - 1))
        return (double)fp[len - 1];
    int j = (int)floor(x);
    if ((double)j == x)
        return (double)fp[j];
    double slope = ((double)fp[j + 1] - (double)fp[j]) / 1.0;
    return slope * (x - (double)j) + (double)fp[j];
}

double sd_sigma_to_t(double sigma, const float *log_sigmas, int len) {
    double log_sigma = log(sigma > 1e-10 ? sigma : 1e-10);
    /* low_idx = cumsum(dists >= 0).argmax(), clipped to len - 2 */
    int low = 0, count = 0, best = -1;
    for (int k = 0; k < len; k++) {
        if (log_sigma - (double)log_sigmas[k] >= 0.0)
            count++;
        if (count > best) {
            best = count;
            low = k;
        }
    }
    if (low > len - 2)
        low = len - 2;
    int high = low + 1;
    double lo = (double)log_sigmas[low], hi = (double)log_sigmas[high];
    double w = (lo - log_sigma) / (lo - hi);
    w = w < 0.0 ? 0.0 : (w > 1.0 ? 1.0 : w);
    return (1.0 - w) * (double)low + w * (double)high;
}

void sd_karras_sigmas(double sigma_min, double sigma_max, int n, double *out) {
    const double rho = 7.0;
    double min_inv_rho = pow(sigma_min, 1.0 / rho);
    double max_inv_rho = pow(sigma_max, 1.0 / rho);
    for (int i = 0; i < n; i++) {
        double ramp = sd_np_linspace(0.0, 1.0, n, i);
        out[i] = pow(max_inv_rho + ramp * (min_inv_rho - max_inv_rho), rho);
    }
}

/* Length and element k of numpy.arange(start, stop, step) for floats. */
static int64_t np_arange_len(double start, double stop, double step) {
    double len = ceil((stop - start) / step);
    return len > 0 ? (int64_t)len : 0;
}

static double np_arange_at(double start, double step, int64_t k) {
    if (k == 0)
        return start;
    /* numpy fills from the first two values: delta = (start + step) - start */
    double delta = (start + step) - start;
    return k == 1 ? start + step : start + (double)k * delta;
}

const char *sd_spacing_name(sd_timestep_spacing sp) {
    return sp == SD_SPACING_LEADING    ? "leading"
           : sp == SD_SPACING_LINSPACE ? "linspace"
                                       : "trailing";
}

sd_status sd_spacing_int(const sd_sampler *s, int descending, int64_t *out, int *n_out) {
    int n = s->num_inference_steps, T = s->train_timesteps;
    int count = 0;
    switch (s->cfg.timestep_spacing) {
    case SD_SPACING_LEADING: {
        int64_t ratio = T / n;
        for (int k = 0; k < n; k++)
            out[count++] = (int64_t)k * ratio + s->cfg.steps_offset;
        break;
    }
    case SD_SPACING_LINSPACE:
        for (int k = 0; k < n; k++)
            out[count++] = (int64_t)nearbyint(sd_np_linspace(0.0, T - 1, n, k));
        break;
    case SD_SPACING_TRAILING: {
        /* np.round(np.arange(T, 0, -T / n)) - 1, produced descending */
        double ratio = (double)T / (double)n;
        int64_t len = np_arange_len((double)T, 0.0, -ratio);
        if (len > n + 1)
            return sd_fail(SD_ERR_INVALID, "timestep_spacing 'trailing' gave %lld timesteps",
                           (long long)len);
        for (int64_t k = len - 1; k >= 0; k--)
            out[count++] = (int64_t)nearbyint(np_arange_at((double)T, -ratio, k)) - 1;
        break;
    }
    default:
        return sd_fail(SD_ERR_INVALID, "timestep_spacing: unresolved value %d",
                       (int)s->cfg.timestep_spacing);
    }
    if (descending)
        for (int a = 0, b = count - 1; a < b; a++, b--) {
            int64_t t = out[a];
            out[a] = out[b];
            out[b] = t;
        }
    for (int k = 0; k < count; k++)
        if (out[k] < 0 || out[k] >= T)
            return sd_fail(SD_ERR_INVALID,
                           "timestep_spacing '%s' with steps_offset %d and %d steps gives "
                           "timestep %lld, outside [0, num_train_timesteps=%d)",
                           sd_spacing_name(s->cfg.timestep_spacing), s->cfg.steps_offset, n,
                           (long long)out[k], T);
    *n_out = count;
    return SD_OK;
}

void sd_training_sigmas(const sd_sampler *s, float *out) {
    /* ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5 on float32 tensors */
    for (int t = 0; t < s->train_timesteps; t++) {
        float a = s->alphas_cumprod[t];
        out[t] = sqrtf((1.0f - a) / a);
    }
}

/* ------------------------------------------------------------------ betas ---- */

/* torch.linspace(start, end, steps, dtype=float32): a fused multiply-add from each end
 * (the CPU kernel is compiled with FMA contraction; this matches it bit for bit). */
static float torch_linspace_f32(float start, float end, int steps, int i) {
    if (steps == 1)
        return start;
    float step = (end - start) / (float)(steps - 1);
    if (i < steps / 2)
        return fmaf(step, (float)i, start);
    return fmaf(-step, (float)(steps - i - 1), end);
}

sd_status sd_make_alphas_cumprod(sd_sampler *s, const float *trained_betas) {
    int T = s->train_timesteps;
    s->alphas_cumprod = malloc(sizeof(float) * (size_t)T);
    if (!s->alphas_cumprod)
        return sd_fail(SD_ERR_NOMEM, "sampler: no memory for %d alphas", T);
    /* torch.cumprod of float32 accumulates in double on the CPU */
    double acc = 1.0;
    for (int t = 0; t < T; t++) {
        float beta;
        if (trained_betas) {
            beta = trained_betas[t];
        } else if (s->cfg.beta_schedule == SD_BETA_LINEAR) {
            beta = torch_linspace_f32((float)s->cfg.beta_start, (float)s->cfg.beta_end, T, t);
        } else {
            float r = torch_linspace_f32((float)sqrt(s->cfg.beta_start),
                                         (float)sqrt(s->cfg.beta_end), T, t);
            beta = r * r;
        }
        float alpha = 1.0f - beta;
        acc *= (double)alpha;
        s->alphas_cumprod[t] = (float)acc;
    }
    return SD_OK;
}
