/* Branch-free elementwise math that compilers vectorise.
 *
 * libm's expf is a function call per element, which keeps softmax and SiLU loops
 * scalar; these inline versions let the loops run 8 or 16 lanes wide. */
#ifndef SDCORE_FAST_MATH_H
#define SDCORE_FAST_MATH_H

#include <stdint.h>
#include <string.h>

/* exp(x) with relative error below 2e-7 for x in [-87, 88]; results saturate outside.
 * Range reduction x = n ln2 + r (ln2 split in two so r stays exact), then a degree-6
 * polynomial for e^r and 2^n built in the exponent bits. */
static inline float sd_expf(float x) {
    /* written as max/min so a NaN-free compare maps onto vmaxps/vminps, not a blend */
    x = x > -87.0f ? x : -87.0f;
    x = x < 88.0f ? x : 88.0f;
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

/* Row helpers shared by softmax and attention. The reductions keep 16 partial results
 * so the compiler can vectorise them without reassociating (no -ffast-math). */
float sd_max_f32(const float *x, int64_t n);
/* x[i] = exp((x[i] - shift) * scale); returns the sum of the new values */
float sd_exp_shifted_sum(float *x, int64_t n, float shift, float scale);
void sd_scale_inplace(float *x, int64_t n, float s);

#endif
