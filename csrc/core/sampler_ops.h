/* The element-wise arithmetic of the samplers, shared by the CPU (the sampling sources) and the
 * GPU (kernels/sampler.cu): one expression per kind, written once, so both devices
 * compute the same float32 operations in the same order. The GPU file is compiled
 * without multiply-add contraction, as the CPU build is, and their results agree bit for
 * bit.
 *
 * Each kind reads in[0..] at element k and returns out[k]; c[] holds the scalars the
 * sampler worked out on the host for the step. The sampler sources say which diffusers
 * expression each one mirrors. */
#ifndef SD_SAMPLER_OPS_H
#define SD_SAMPLER_OPS_H

#include "sdcore.h"

#ifdef __CUDACC__
#define SD_SAMPLER_FN __host__ __device__ static inline
#else
#define SD_SAMPLER_FN static inline
#endif

typedef enum {
    SD_SOP_COPY = 0,  /* in0 */
    SD_SOP_MUL,       /* in0 * c0 */
    SD_SOP_DIV,       /* in0 / c0 (scale_model_input) */
    SD_SOP_GUIDE,     /* in0 + c0 * (in1 - in0): uncond in0, cond in1, guidance c0 */
    SD_SOP_EULER,     /* x in0, eps in1; sigma c0, v_out_coef c1, v_in_div c2, dt c3 */
    SD_SOP_EULER_A,   /* as EULER, noise in2, sigma_up c4 */
    SD_SOP_DPM_X0,    /* data prediction: x in0, eps in1; alpha c0, sigma c1 */
    SD_SOP_DPM_1,     /* c0 * x - c1 * m0: x in0, m0 in1 */
    SD_SOP_DPM_2,     /* (c0 x - c1 m0) - c2 (c3 (m0 - m1)): x in0, m0 in1, m1 in2 */
    SD_SOP_PNDM_MIX,  /* the combined model output: flags 1 averages this call's (in0)
                       * with the first's (in1); flags 2, 3, 4 mix that many past
                       * outputs, newest in0 (c0 = 1/24 for 4) */
    SD_SOP_PNDM_PREV, /* sample in0, combined output in1; coeff c0, diff c1, denom c2,
                       * sqrt(alpha) c3, sqrt(1 - alpha) c4 */
    SD_SOP_DDIM,      /* x in0, eps in1; sqrt_a c0, sqrt_b c1, sqrt_a_prev c2, dir c3,
                       * clip range c4 */
    SD_SOP_LMS_DERIV, /* (x - x0) / sigma: x in0, eps in1; sigma c0, v_out_coef c1,
                       * v_in_div c2 */
    SD_SOP_LMS_SUM,   /* x + sum of c[j] * in[1 + j] for j < flags: x in0, derivatives
                       * newest first */
    SD_SOP_COUNT
} sd_sampler_op_kind;

/* flags bits of the kinds that take them */
#define SD_SOP_V_PREDICTION 1 /* EULER, EULER_A, DPM_X0, PNDM_PREV, DDIM, LMS_DERIV */
#define SD_SOP_CLIP 2         /* DDIM: clamp x0 to [-c4, c4] */

/* pred_original_sample of the sigma samplers */
SD_SAMPLER_FN float sd_sop_sigma_x0(int v, float x, float eps, float sigma, float v_out_coef,
                                    float v_in_div) {
    if (v)
        return eps * v_out_coef + x / v_in_div;
    return x - sigma * eps;
}

SD_SAMPLER_FN float sd_sampler_op_elem(const sd_sampler_op *op, int64_t k) {
    const float *const *in = op->in;
    const float *c = op->c;
    int v = op->flags & SD_SOP_V_PREDICTION;
    switch (op->kind) {
    case SD_SOP_COPY: return in[0][k];
    case SD_SOP_MUL: return in[0][k] * c[0];
    case SD_SOP_DIV: return in[0][k] / c[0];
    case SD_SOP_GUIDE: {
        float u = in[0][k];
        return u + c[0] * (in[1][k] - u);
    }
    case SD_SOP_EULER:
    case SD_SOP_EULER_A: {
        float x = in[0][k];
        float x0 = sd_sop_sigma_x0(v, x, in[1][k], c[0], c[1], c[2]);
        float derivative = (x - x0) / c[0];
        float prev = x + derivative * c[3];
        if (op->kind == SD_SOP_EULER)
            return prev;
        return prev + in[2][k] * c[4];
    }
    case SD_SOP_DPM_X0:
        if (v)
            return c[0] * in[0][k] - c[1] * in[1][k];
        return (in[0][k] - c[1] * in[1][k]) / c[0];
    case SD_SOP_DPM_1: return c[0] * in[0][k] - c[1] * in[1][k];
    case SD_SOP_DPM_2: {
        float m0 = in[1][k];
        float d1 = c[3] * (m0 - in[2][k]);
        return (c[0] * in[0][k] - c[1] * m0) - c[2] * d1;
    }
    case SD_SOP_PNDM_MIX:
        switch (op->flags) {
        case 1: /* the second call: this output and the first one's, averaged */
            return (in[0][k] + in[1][k]) / 2.0f;
        case 2: return (3.0f * in[0][k] - in[1][k]) / 2.0f;
        case 3: return (23.0f * in[0][k] - 16.0f * in[1][k] + 5.0f * in[2][k]) / 12.0f;
        default:
            return c[0] *
                   (55.0f * in[0][k] - 59.0f * in[1][k] + 37.0f * in[2][k] - 9.0f * in[3][k]);
        }
    case SD_SOP_PNDM_PREV: {
        float sample = in[0][k];
        float e = v ? c[3] * in[1][k] + c[4] * sample : in[1][k];
        return c[0] * sample - c[1] * e / c[2];
    }
    case SD_SOP_DDIM: {
        float x = in[0][k], eps = in[1][k], x0, e;
        if (v) {
            x0 = c[0] * x - c[1] * eps;
            e = c[0] * eps + c[1] * x;
        } else {
            x0 = (x - c[1] * eps) / c[0];
            e = eps;
        }
        if (op->flags & SD_SOP_CLIP)
            x0 = x0 < -c[4] ? -c[4] : (x0 > c[4] ? c[4] : x0);
        return c[2] * x0 + c[3] * e;
    }
    case SD_SOP_LMS_DERIV: {
        float x = in[0][k];
        float x0 = sd_sop_sigma_x0(v, x, in[1][k], c[0], c[1], c[2]);
        return (x - x0) / c[0];
    }
    case SD_SOP_LMS_SUM: {
        float acc = c[0] * in[1][k];
        for (int j = 1; j < op->flags; j++)
            acc = acc + c[j] * in[1 + j][k];
        return in[0][k] + acc;
    }
    default: return 0.0f; /* unreachable: sd_sampler_op_check refuses other kinds */
    }
}

/* The inputs a kind reads (so that a backend can check them), or -1 for an unknown kind
 * or bad flags. */
SD_SAMPLER_FN int sd_sampler_op_inputs(const sd_sampler_op *op) {
    switch (op->kind) {
    case SD_SOP_COPY:
    case SD_SOP_MUL:
    case SD_SOP_DIV: return 1;
    case SD_SOP_GUIDE:
    case SD_SOP_EULER:
    case SD_SOP_DPM_X0:
    case SD_SOP_DPM_1:
    case SD_SOP_PNDM_PREV:
    case SD_SOP_DDIM:
    case SD_SOP_LMS_DERIV: return 2;
    case SD_SOP_EULER_A:
    case SD_SOP_DPM_2: return 3;
    case SD_SOP_PNDM_MIX:
        return op->flags == 1 ? 2 : (op->flags >= 2 && op->flags <= 4 ? op->flags : -1);
    case SD_SOP_LMS_SUM:
        return op->flags >= 1 && op->flags <= SD_SAMPLER_OP_INPUTS - 1 ? op->flags + 1 : -1;
    default: return -1;
    }
}

#endif
