/* Linear multistep, order 4 (k-diffusion's sample_lms): diffusers' LMSDiscreteScheduler.
 *
 * The coefficient of each past derivative is the integral over [sigma_i, sigma_{i+1}]
 * of its Lagrange basis polynomial. diffusers integrates it numerically with
 * scipy.integrate.quad; the integrand is a polynomial of degree <= 3, so a 3-point
 * Gauss-Legendre rule (exact up to degree 5) gives the same integral in closed form. */
#include "sampling/sampler_internal.h"

#include <math.h>

#define LMS_ORDER 4

/* Lagrange basis polynomial j over the nodes sigmas[i], sigmas[i-1], ..., at tau. */
static double lms_basis(const float *sigmas, int i, int order, int j, double tau) {
    double prod = 1.0;
    for (int k = 0; k < order; k++) {
        if (k == j)
            continue;
        prod *= (tau - (double)sigmas[i - k]) / ((double)sigmas[i - j] - (double)sigmas[i - k]);
    }
    return prod;
}

static double lms_coefficient(const float *sigmas, int i, int order, int j) {
    static const double nodes[3] = {-0.77459666924148337704, 0.0, 0.77459666924148337704};
    static const double weights[3] = {5.0 / 9.0, 8.0 / 9.0, 5.0 / 9.0};
    double a = (double)sigmas[i], b = (double)sigmas[i + 1];
    double half = 0.5 * (b - a), mid = 0.5 * (a + b);
    double sum = 0.0;
    for (int q = 0; q < 3; q++)
        sum += weights[q] * lms_basis(sigmas, i, order, j, mid + half * nodes[q]);
    return half * sum;
}

sd_status sd_lms_step(sd_sampler *s, int i, const float *eps, float *x, int64_t n) {
    (void)n;
    float sigma = s->sigmas[i];
    float v_in_div = sigma * sigma + 1.0f;
    /* the derivative (x - x0) / sigma becomes the newest history entry */
    sd_sampler_op d = sd_sampler_op_make(
        s, SD_SOP_LMS_DERIV, s->cfg.prediction_type == SD_PREDICT_V ? SD_SOP_V_PREDICTION : 0,
        sd_sampler_history_next(s, LMS_ORDER));
    d.in[0] = x;
    d.in[1] = eps;
    d.c[0] = sigma;
    d.c[1] = -sigma / sqrtf(v_in_div);
    d.c[2] = v_in_div;
    SD_TRY(sd_sampler_run(s, &d));

    /* sample + sum(coeff * derivative), newest derivative first, summed left to right */
    int order = i + 1 < LMS_ORDER ? i + 1 : LMS_ORDER;
    sd_sampler_op op = sd_sampler_op_make(s, SD_SOP_LMS_SUM, order, x);
    op.in[0] = x;
    for (int j = 0; j < order; j++) {
        op.c[j] = (float)lms_coefficient(s->sigmas, i, order, j); /* cast as torch does */
        op.in[1 + j] = s->history[s->history_len - 1 - j];
    }
    return sd_sampler_run(s, &op);
}
