/* PyTorch's CPU generator and its torch.randn, reproduced bit for bit (see rng.h).
 *
 * Every float operation below is rounded exactly where torch's compiled code rounds it:
 * a fused multiply-add would change the last bit, so contraction is off for this file
 * whatever flags it is built with. */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include "core/rng.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define MT_M 397
#define MT_MATRIX_A 0x9908b0dfu
#define MT_UPPER 0x80000000u
#define MT_LOWER 0x7fffffffu

/* c10::pi<double> */
#define PI_D 3.14159265358979323846

/* ------------------------------------------------------------- mt19937 ---- */

void sd_rng_seed(sd_rng *rng, uint64_t seed) {
    if (rng->kernel != SD_RNG_KERNEL_AVX2 && rng->kernel != SD_RNG_KERNEL_SCALAR)
        rng->kernel = sd_rng_auto_kernel();
    rng->seed = seed;
    /* torch keeps all 64 bits as the initial seed but seeds the engine with the low 32 */
    rng->mt[0] = (uint32_t)seed;
    for (uint32_t i = 1; i < SD_RNG_MT_N; i++)
        rng->mt[i] = 1812433253u * (rng->mt[i - 1] ^ (rng->mt[i - 1] >> 30)) + i;
    /* the first draw twists, as in torch's engine */
    rng->left = 1;
    rng->next = 0;
    rng->has_cached_normal = 0;
    rng->cached_normal = 0.0;
}

static void mt_twist(sd_rng *rng) {
    uint32_t *mt = rng->mt;
    for (int i = 0; i < SD_RNG_MT_N; i++) {
        uint32_t succ = mt[(i + 1) % SD_RNG_MT_N];
        uint32_t y = (mt[i] & MT_UPPER) | (succ & MT_LOWER);
        mt[i] = mt[(i + MT_M) % SD_RNG_MT_N] ^ (y >> 1) ^ ((succ & 1u) ? MT_MATRIX_A : 0u);
    }
    rng->left = SD_RNG_MT_N;
    rng->next = 0;
}

uint32_t sd_rng_next_u32(sd_rng *rng) {
    if (--rng->left == 0)
        mt_twist(rng);
    uint32_t y = rng->mt[rng->next++];
    y ^= y >> 11;
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    y ^= y >> 18;
    return y;
}

/* torch's random64(): the first output is the high half */
static uint64_t next_u64(sd_rng *rng) {
    uint64_t hi = sd_rng_next_u32(rng);
    uint64_t lo = sd_rng_next_u32(rng);
    return (hi << 32) | lo;
}

/* at::uniform_real_distribution<float>(0, 1): 24 random bits of one 32-bit draw */
static float uniform_f32(sd_rng *rng) {
    return (float)(sd_rng_next_u32(rng) & 0xffffffu) * (1.0f / 16777216.0f);
}

/* at::uniform_real_distribution<double>(0, 1): 53 random bits of one 64-bit draw */
static double uniform_f64(sd_rng *rng) {
    return (double)(next_u64(rng) & ((UINT64_C(1) << 53) - 1)) * (1.0 / 9007199254740992.0);
}

/* at::normal_distribution<double>(0, 1), the path of tensors under 16 elements: a
 * Box-Muller pair in double whose sine half is kept for the next call. */
static double normal_f64(sd_rng *rng) {
    double z;
    if (rng->has_cached_normal) {
        rng->has_cached_normal = 0;
        z = rng->cached_normal;
    } else {
        double u1 = uniform_f64(rng);
        double u2 = uniform_f64(rng);
        double r = sqrt(-2.0 * log1p(-u2));
        double theta = 2.0 * PI_D * u1;
        rng->cached_normal = r * sin(theta);
        rng->has_cached_normal = 1;
        z = r * cos(theta);
    }
    /* torch returns z * std + mean with std 1 and mean 0: the + 0.0 turns -0 into +0 */
    return z + 0.0;
}

/* ------------------------------------------- Cephes log and sincos (float) ---- */

/* torch's AVX2 kernel evaluates log, sin and cos with the Cephes polynomials of
 * avx_mathfun.h, eight lanes at a time. These are the same operations on one lane,
 * rounded where torch's x86-64 build rounds them: its compiler fused most multiply-add
 * pairs of the polynomials and of the pi/4 reduction into FMA instructions (read off
 * the torch 2.13 wheel's machine code), so those are fmaf calls here and every other
 * step is a separately rounded float operation. The constants are double literals
 * rounded to float, as the vector constants are. */

static uint32_t f2u(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float u2f(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* x > 0 here: 1 - u with u in [0, 1) */
static float cephes_logf(float x) {
    const float one = 1.0f;
    int invalid = !(x > 0.0f);
    /* _mm256_max_ps(x, FLT_MIN): the second operand when x is NaN */
    x = (x > u2f(0x00800000u)) ? x : u2f(0x00800000u);
    int32_t exponent = (int32_t)(f2u(x) >> 23) - 0x7f;
    x = u2f((f2u(x) & ~0x7f800000u) | f2u(0.5f)); /* mantissa scaled to [0.5, 1) */
    float e = (float)exponent;
    e = e + one;
    uint32_t below = (x < (float)0.707106781186547524) ? 0xffffffffu : 0u;
    float tmp = u2f(f2u(x) & below);
    x = x - one;
    e = e - u2f(f2u(one) & below);
    x = x + tmp;

    float z = x * x;
    float y = (float)7.0376836292E-2;
    y = fmaf(y, x, (float)-1.1514610310E-1);
    y = fmaf(y, x, (float)1.1676998740E-1);
    y = fmaf(y, x, (float)-1.2420140846E-1);
    y = fmaf(y, x, (float)1.4249322787E-1);
    y = fmaf(y, x, (float)-1.6668057665E-1);
    y = fmaf(y, x, (float)2.0000714765E-1);
    y = fmaf(y, x, (float)-2.4999993993E-1);
    y = fmaf(y, x, (float)3.3333331174E-1);
    y = y * x;
    y = fmaf(y, z, e * (float)-2.12194440e-4);
    y = fmaf(-z, 0.5f, y);
    x = x + y;
    x = fmaf(e, (float)0.693359375, x);
    return invalid ? u2f(0xffffffffu) : x;
}

static void cephes_sincosf(float x, float *sin_out, float *cos_out) {
    uint32_t sign_sin = f2u(x) & 0x80000000u;
    x = u2f(f2u(x) & 0x7fffffffu);

    /* octant j, rounded up to even, as torch's cvttps/add/and sequence does */
    float y = x * (float)1.27323954473516;
    int32_t j = (int32_t)y;
    j = (j + 1) & ~1;
    y = (float)j;
    uint32_t swap_sign_sin = ((uint32_t)j & 4u) << 29;
    uint32_t poly_mask = ((j & 2) == 0) ? 0xffffffffu : 0u;
    uint32_t sign_cos = (~(uint32_t)(j - 2) & 4u) << 29;
    sign_sin ^= swap_sign_sin;

    /* x - j pi/4 in three parts ("extended precision modular arithmetic") */
    x = fmaf(y, (float)-0.78515625, x);
    x = fmaf(y, (float)-2.4187564849853515625e-4, x);
    x = fmaf(y, (float)-3.77489497744594108e-8, x);

    float z = x * x;
    float half_z = z * 0.5f;
    float yc = (float)2.443315711809948E-005;
    yc = fmaf(yc, z, (float)-1.388731625493765E-003);
    yc = fmaf(yc, z, (float)4.166664568298827E-002);
    yc = yc * z;
    yc = fmaf(yc, z, -half_z);
    yc = yc + 1.0f;

    float ys = (float)-1.9515295891E-4;
    ys = fmaf(ys, z, (float)8.3321608736E-3);
    ys = fmaf(ys, z, (float)-1.6666654611E-1);
    ys = ys * z;
    ys = fmaf(ys, x, x);

    /* the same masked subtract-and-add selection as the vector code, signed zeros included */
    float ysin2 = u2f(f2u(ys) & poly_mask);
    float ysin1 = u2f(f2u(yc) & ~poly_mask);
    ys = ys - ysin2;
    yc = yc - ysin1;
    float s = ysin1 + ysin2;
    float c = yc + ys;
    *sin_out = u2f(f2u(s) ^ sign_sin);
    *cos_out = u2f(f2u(c) ^ sign_cos);
}

/* ------------------------------------------------- Box-Muller on 16 values ---- */

/* x[0..16) uniforms in [0, 1) -> normals; element j pairs with j + 8. */
static void box_muller16_avx2(float *x) {
    const float two_pi = (float)(2.0 * PI_D);
    for (int j = 0; j < 8; j++) {
        float u1 = 1.0f - x[j]; /* (0, 1] for the log */
        float u2 = x[j + 8];
        float radius = sqrtf(-2.0f * cephes_logf(u1));
        float theta = two_pi * u2;
        float s, c;
        cephes_sincosf(theta, &s, &c);
        float n1 = radius * c;
        float n2 = radius * s;
        /* torch stores fma(n, std, mean) with std 1, mean 0: exactly n + 0 */
        x[j] = n1 + 0.0f;
        x[j + 8] = n2 + 0.0f;
    }
}

static void box_muller16_scalar(float *x) {
    for (int j = 0; j < 8; j++) {
        float u1 = 1.0f - x[j];
        float u2 = x[j + 8];
        float radius = sqrtf(-2.0f * logf(u1));
        /* the angle is formed in double and rounded to float once */
        float theta = (float)(2.0 * PI_D * (double)u2);
        x[j] = radius * cosf(theta) * 1.0f + 0.0f;
        x[j + 8] = radius * sinf(theta) * 1.0f + 0.0f;
    }
}

static void box_muller16_f64(double *x) {
    for (int j = 0; j < 8; j++) {
        double u1 = 1.0 - x[j];
        double u2 = x[j + 8];
        double radius = sqrt(-2.0 * log(u1));
        double theta = 2.0 * PI_D * u2;
        x[j] = radius * cos(theta) * 1.0 + 0.0;
        x[j + 8] = radius * sin(theta) * 1.0 + 0.0;
    }
}

/* ---------------------------------------------------------------- randn ---- */

static sd_status check_args(const void *out, int64_t n, const char *fn) {
    if (n < 0)
        return sd_fail(SD_ERR_INVALID, "%s: n must be >= 0, got %lld", fn, (long long)n);
    if (n > 0 && !out)
        return sd_fail(SD_ERR_INVALID, "%s: out is NULL", fn);
    return SD_OK;
}

sd_status sd_rng_randn(sd_rng *rng, float *out, int64_t n) {
    SD_TRY(check_args(out, n, "sd_rng_randn"));
    if (n < 16) {
        for (int64_t i = 0; i < n; i++)
            out[i] = (float)normal_f64(rng);
        return SD_OK;
    }
    void (*block)(float *) =
        rng->kernel == SD_RNG_KERNEL_AVX2 ? box_muller16_avx2 : box_muller16_scalar;
    for (int64_t i = 0; i < n; i++)
        out[i] = uniform_f32(rng);
    for (int64_t i = 0; i + 16 <= n; i += 16)
        block(out + i);
    if (n % 16 != 0) {
        /* torch redraws the last 16 values (overlapping the last full block) */
        float *tail = out + n - 16;
        for (int i = 0; i < 16; i++)
            tail[i] = uniform_f32(rng);
        block(tail);
    }
    return SD_OK;
}

sd_status sd_rng_randn_f64(sd_rng *rng, double *out, int64_t n) {
    SD_TRY(check_args(out, n, "sd_rng_randn_f64"));
    if (n < 16) {
        for (int64_t i = 0; i < n; i++)
            out[i] = normal_f64(rng);
        return SD_OK;
    }
    for (int64_t i = 0; i < n; i++)
        out[i] = uniform_f64(rng);
    for (int64_t i = 0; i + 16 <= n; i += 16)
        box_muller16_f64(out + i);
    if (n % 16 != 0) {
        double *tail = out + n - 16;
        for (int i = 0; i < 16; i++)
            tail[i] = uniform_f64(rng);
        box_muller16_f64(tail);
    }
    return SD_OK;
}

/* --------------------------------------------------------- kernel choice ---- */

/* torch's compute_cpu_capability reads ATEN_CPU_CAPABILITY first, then picks AVX-512 or
 * AVX2 when the CPU has it (with FMA). normal_stub has no AVX-512 entry (torch leaves it
 * out on purpose), so an AVX-512 capability falls back to the AVX2 kernel: every x86 CPU
 * with AVX2 and FMA runs the avx_mathfun kernel, and only "default" (and non-x86 CPUs)
 * run the scalar loop. */
sd_rng_kernel sd_rng_auto_kernel(void) {
    const char *env = getenv("ATEN_CPU_CAPABILITY");
    if (env) {
        if (strcmp(env, "avx2") == 0 || strcmp(env, "avx512") == 0)
            return SD_RNG_KERNEL_AVX2;
        if (strcmp(env, "default") == 0)
            return SD_RNG_KERNEL_SCALAR;
        /* torch warns and ignores any other value */
    }
#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return SD_RNG_KERNEL_AVX2;
#endif
    return SD_RNG_KERNEL_SCALAR;
}

sd_status sd_rng_set_kernel(sd_rng *rng, sd_rng_kernel kernel) {
    switch (kernel) {
    case SD_RNG_KERNEL_AUTO: rng->kernel = sd_rng_auto_kernel(); return SD_OK;
    case SD_RNG_KERNEL_AVX2:
    case SD_RNG_KERNEL_SCALAR: rng->kernel = kernel; return SD_OK;
    }
    return sd_fail(SD_ERR_INVALID, "sd_rng_set_kernel: unknown kernel %d", (int)kernel);
}
