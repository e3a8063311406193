/* Weights stored in float16 or bfloat16, widened to float32 for the ops.
 *
 * The CPU backend reads weights as they are stored (a mapped file is never copied), so
 * every conv2d and linear widens its weight on each call. For a small model that is a
 * fifth of the time of a step when done one sd_f16_to_f32 call per element; the F16C
 * instruction converts eight halves at once and bfloat16 is a shift, so the loops below
 * run at memory speed. Same values as sd_widen_to_f32, bit for bit (a widening is exact). */
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define SD_HAVE_F16C_PATH 1
#endif

#include "cpu_ops.h"

#define PAR_MIN 65536

#ifdef SD_HAVE_F16C_PATH
__attribute__((target("avx,f16c"))) static void f16_span_f16c(const uint16_t *h, float *out,
                                                                int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m128i halves = _mm_loadu_si128((const __m128i *)(h + i));
        _mm256_storeu_ps(out + i, _mm256_cvtph_ps(halves));
    }
    for (; i < n; i++)
        out[i] = sd_f16_to_f32(h[i]);
}
#endif

static void f16_span(const uint16_t *h, float *out, int64_t n, int f16c) {
#ifdef SD_HAVE_F16C_PATH
    if (f16c) {
        f16_span_f16c(h, out, n);
        return;
    }
#endif
    for (int64_t i = 0; i < n; i++)
        out[i] = sd_f16_to_f32(h[i]);
}

/* bfloat16 is the top half of a float32 */
SD_MULTIVERSION
static void bf16_span(const uint16_t *restrict h, float *restrict out, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        uint32_t bits = (uint32_t)h[i] << 16;
        memcpy(out + i, &bits, 4);
    }
}

void cpu_widen_to_f32(const void *src, sd_dtype dtype, float *dst, int64_t n) {
    if (dtype == SD_F32) {
        memcpy(dst, src, (size_t)n * sizeof(float));
        return;
    }
    const uint16_t *h = src;
    int f16c = 0;
#ifdef SD_HAVE_F16C_PATH
    f16c = __builtin_cpu_supports("f16c") && __builtin_cpu_supports("avx");
#endif
    const int64_t chunk = 16384;
    int64_t chunks = (n + chunk - 1) / chunk;
#pragma omp parallel for schedule(static) if (n > PAR_MIN)
    for (int64_t c = 0; c < chunks; c++) {
        int64_t i0 = c * chunk, len = n - i0 < chunk ? n - i0 : chunk;
        if (dtype == SD_F16)
            f16_span(h + i0, dst + i0, len, f16c);
        else
            bf16_span(h + i0, dst + i0, len);
    }
}
