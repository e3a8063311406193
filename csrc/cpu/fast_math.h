/* Branch-free elementwise math that compilers vectorise.
 *
 * libm's expf and erff are a function call per element, which keeps softmax, SiLU and
 * GELU loops scalar; these inline versions let the loops run 8 or 16 lanes wide. */
#ifndef SDCORE_FAST_MATH_H
#define SDCORE_FAST_MATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>

/* x clamped to [lo, hi] (NaN becomes lo, as with `?:`), as a select on the bits, not a
 * `?:`. With `?:` GCC's jump threading clones the rest of the caller's loop body for
 * the clamped case, where everything is a constant: silu's x / (1 + exp(88)) then runs
 * in every lane and lands in the subnormal range, and each subnormal result costs a
 * microcode assist even in lanes whose result is discarded (silu 6x slower). The bit
 * select has no branch to thread, and vectorises to and/or (or vpternlog). */
static inline float sd_clampf(float x, float lo, float hi) {
    int32_t xi, lo_bits, hi_bits, m;
    memcpy(&xi, &x, 4);
    memcpy(&lo_bits, &lo, 4);
    memcpy(&hi_bits, &hi, 4);
    m = -(int32_t)(x > lo); /* all ones where x is above lo */
    xi = (xi & m) | (lo_bits & ~m);
    memcpy(&x, &xi, 4);
    m = -(int32_t)(x < hi);
    xi = (xi & m) | (hi_bits & ~m);
    memcpy(&x, &xi, 4);
    return x;
}

/* exp(x) with relative error below 2e-7 for x in [-87, 88]; results saturate outside.
 * Range reduction x = n ln2 + r (ln2 split in two so r stays exact), then a degree-6
 * polynomial for e^r and 2^n built in the exponent bits. */
static inline float sd_expf(float x) {
    x = sd_clampf(x, -87.0f, 88.0f);
    /* round x*log2(e) to nearest: adding 1.5*2^23 pushes the fraction out of the mantissa */
    const float shifter = 12582912.0f;
    float n = (x * 1.44269504088896341f + shifter) - shifter;
    float r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, 4);
    return p * scale;
}

/* erfc(z) for z >= 0, relative error about 1e-6 up to z = 5 (erfc = 1.5e-12) and below
 * 5e-6 out to z = 9.3, where it leaves the float range. erfc(z) = t exp(-z^2 + P(t))
 * with t = 1 / (1 + z/2): P varies slowly on t in (0, 1], and a degree-9 polynomial
 * (a least-squares fit of log(erfc(z) e^{z^2} / t) on z in [0, 10]) holds it to 2.5e-7.
 * Being relative, the error stays small in GELU's negative tail, where 1 + erf(z) is
 * erfc(-z) and 1 + erf computed as such would cancel. */
static inline float sd_erfcf_nonneg(float z) {
    float t = 1.0f / (1.0f + 0.5f * z);
    float p = 0.17057829f;
    p = p * t - 0.81119956f;
    p = p * t + 1.44153778f;
    p = p * t - 1.04603931f;
    p = p * t + 0.18495006f;
    p = p * t - 0.12702663f;
    p = p * t + 0.07404765f;
    p = p * t + 0.37923116f;
    p = p * t + 0.99940244f;
    p = p * t - 1.26548164f;
    return t * sd_expf(p - z * z);
}

/* GELU with the exact (erf) form: 0.5 x (1 + erf(x / sqrt 2)), where 1 + erf(z) is
 * erfc(-z) for z < 0 and 2 - erfc(z) otherwise. */
static inline float sd_gelu_erf(float x) {
    float z = x * 0.70710678118654752f;
    float q = sd_erfcf_nonneg(fabsf(z));
    float one_plus_erf = z < 0.0f ? q : 2.0f - q;
    return 0.5f * x * one_plus_erf;
}

/* Row helpers shared by softmax and attention. The reductions keep 16 partial results
 * so the compiler can vectorise them without reassociating (no -ffast-math). */
float sd_max_f32(const float *x, int64_t n);
/* x[i] = exp((x[i] - shift) * scale); returns the sum of the new values */
float sd_exp_shifted_sum(float *x, int64_t n, float shift, float scale);
void sd_scale_inplace(float *x, int64_t n, float s);

#endif
