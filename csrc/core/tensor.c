/* Tensor descriptors and half-precision conversion. */
#include <stdio.h>
#include <string.h>

#include "sdcore.h"

size_t sd_dtype_size(sd_dtype dtype) { return dtype == SD_F32 ? 4 : 2; }

const char *sd_dtype_name(sd_dtype dtype) {
    switch (dtype) {
    case SD_F32: return "float32";
    case SD_F16: return "float16";
    case SD_BF16: return "bfloat16";
    }
    return "unknown";
}

int64_t sd_numel(const sd_tensor *t) {
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++)
        n *= t->shape[i];
    return n;
}

size_t sd_nbytes(const sd_tensor *t) { return (size_t)sd_numel(t) * sd_dtype_size(t->dtype); }

sd_tensor sd_tensor_view(void *data, sd_dtype dtype, sd_device device, int ndim,
                         const int64_t *shape) {
    sd_tensor t = {.data = data, .dtype = dtype, .device = device, .ndim = ndim};
    for (int i = 0; i < SD_MAX_DIMS; i++)
        t.shape[i] = i < ndim ? shape[i] : 1;
    return t;
}

const char *sd_shape_str(const sd_tensor *t, char *buf, size_t len) {
    size_t used = 0;
    used += (size_t)snprintf(buf, len, "(");
    for (int i = 0; i < t->ndim && used < len; i++)
        used += (size_t)snprintf(buf + used, len - used, i ? ", %lld" : "%lld",
                                 (long long)t->shape[i]);
    if (used < len)
        snprintf(buf + used, len - used, ")");
    return buf;
}

/* ---- half precision ----
 * Written out bit by bit rather than with _Float16 so the results do not depend on
 * the compiler or the CPU's F16C support. */

static uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float bits_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

float sd_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t mant = h & 0x3ff;
    if (exp == 0x1f) /* inf or nan */
        return bits_f32(sign | 0x7f800000u | (mant << 13));
    if (exp == 0) {
        if (mant == 0)
            return bits_f32(sign);
        /* subnormal: value = mant * 2^-24 exactly */
        float v = (float)mant * 5.9604644775390625e-8f;
        return sign ? -v : v;
    }
    return bits_f32(sign | ((exp + 112) << 23) | (mant << 13));
}

uint16_t sd_f32_to_f16(float f) {
    uint32_t u = f32_bits(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000);
    uint32_t abs = u & 0x7fffffffu;
    if (abs >= 0x7f800000u) /* inf or nan (keep nan quiet and non-zero) */
        return sign | 0x7c00 | (abs > 0x7f800000u ? 0x200 : 0);
    if (abs >= 0x477ff000u) /* rounds to >= 65520: overflow to inf */
        return sign | 0x7c00;
    if (abs < 0x38800000u) { /* below the smallest normal 2^-14: subnormal or zero */
        /* f16 subnormal step is 2^-24; adding 0.5 (2^-1) aligns that step with the
         * float's last mantissa bit, so the FPU's own rounding is round-to-nearest-even */
        float v = bits_f32(abs) + 0.5f;
        return sign | (uint16_t)(f32_bits(v) - 0x3f000000u);
    }
    /* normal: rebias the exponent, round the 13 dropped bits to nearest even */
    uint32_t mant_odd = (abs >> 13) & 1;
    abs += 0xc8000fffu + mant_odd; /* (15 - 127) << 23, plus the rounding bias */
    return sign | (uint16_t)(abs >> 13);
}

float sd_bf16_to_f32(uint16_t h) { return bits_f32((uint32_t)h << 16); }

uint16_t sd_f32_to_bf16(float f) {
    uint32_t u = f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) /* nan: keep it a quiet nan */
        return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1); /* round to nearest even */
    return (uint16_t)(u >> 16);
}

void sd_widen_to_f32(const void *src, sd_dtype dtype, float *dst, int64_t n) {
    if (dtype == SD_F32) {
        memcpy(dst, src, (size_t)n * 4);
        return;
    }
    const uint16_t *h = src;
    if (dtype == SD_F16) {
#pragma omp parallel for schedule(static) if (n > 65536)
        for (int64_t i = 0; i < n; i++)
            dst[i] = sd_f16_to_f32(h[i]);
    } else {
#pragma omp parallel for schedule(static) if (n > 65536)
        for (int64_t i = 0; i < n; i++)
            dst[i] = sd_bf16_to_f32(h[i]);
    }
}

void sd_narrow_from_f32(const float *src, sd_dtype dtype, void *dst, int64_t n) {
    if (dtype == SD_F32) {
        memcpy(dst, src, (size_t)n * 4);
        return;
    }
    uint16_t *h = dst;
    if (dtype == SD_F16) {
#pragma omp parallel for schedule(static) if (n > 65536)
        for (int64_t i = 0; i < n; i++)
            h[i] = sd_f32_to_f16(src[i]);
    } else {
#pragma omp parallel for schedule(static) if (n > 65536)
        for (int64_t i = 0; i < n; i++)
            h[i] = sd_f32_to_bf16(src[i]);
    }
}
