/* Seeded Gaussian noise that reproduces PyTorch's CPU generator bit for bit.
 *
 * `torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed))` is how
 * Stable Diffusion front ends draw the initial latents, and ancestral samplers keep
 * drawing from the same generator step after step. sd_rng holds the same state as
 * torch's CPUGeneratorImpl (an mt19937 engine plus one cached double-precision normal
 * sample) and consumes it in the same way, so a sequence of sd_rng_randn calls gives
 * the same floats as the same sequence of torch.randn calls.
 *
 * What torch does (torch 2.x, CPU, contiguous tensors):
 *  - manual_seed(s) keeps s as the initial seed, seeds a standard mt19937 with the low
 *    32 bits of s (Knuth's 1812433253 initialiser) and drops the cached normal sample.
 *  - A float uniform in [0, 1) takes one 32-bit output u and is (u & 0xFFFFFF) * 2^-24;
 *    a double uniform takes two outputs hi, lo and is (((hi << 32) | lo) & (2^53 - 1)) *
 *    2^-53.
 *  - n < 16 (either dtype): each element is a double Box-Muller draw, two at a time:
 *    u1, u2 double uniforms, r = sqrt(-2 log1p(-u2)), t = 2 pi u1; the element is
 *    r cos t (cast to float for float32) and r sin t is cached for the next element,
 *    even across later calls; a large draw neither uses nor clears that cache.
 *  - n >= 16: all n uniforms are drawn first (float or double, by dtype); each block of
 *    16 is turned into normals pairwise, element j with j + 8: u1 = 1 - x[j], u2 =
 *    x[j+8], r = sqrt(-2 log u1), t = 2 pi u2, x[j] = r cos t, x[j+8] = r sin t. If
 *    n % 16 != 0, 16 fresh uniforms overwrite the last 16 elements (part of the last
 *    full block included) and are transformed as one more block; the uniforms first
 *    drawn for the tail are wasted.
 *  - For float32 the transform depends on the CPU torch runs on: on x86 with AVX2 and
 *    FMA (AVX-512 CPUs included: torch registers no AVX-512 normal kernel) it is done in
 *    float with Cephes polynomial log and sincos (avx_mathfun); otherwise (non-x86, or
 *    ATEN_CPU_CAPABILITY=default) with the C library's logf/cosf/sinf, t computed in
 *    double and rounded to float. float64 always uses the C library's log/cos/sin.
 */
#ifndef SDCORE_RNG_H
#define SDCORE_RNG_H

#include <stdint.h>

#include "sdcore.h"

#ifdef __cplusplus
extern "C" {
#endif

#define SD_RNG_MT_N 624

/* Which of torch's float32 kernels to reproduce (see above). */
typedef enum {
    SD_RNG_KERNEL_AUTO = 0,   /* as torch would choose on this CPU (ATEN_CPU_CAPABILITY too) */
    SD_RNG_KERNEL_AVX2 = 1,   /* torch on an x86 CPU with AVX2 and FMA (AVX-512 too) */
    SD_RNG_KERNEL_SCALAR = 2, /* torch on an older or non-x86 CPU, or capability "default" */
} sd_rng_kernel;

/* The state of torch's CPU generator. Plain data: copy it to fork a stream. Not
 * thread-safe: one thread at a time per sd_rng. */
typedef struct {
    uint64_t seed;                 /* the initial seed, as torch's initial_seed() reports */
    uint32_t mt[SD_RNG_MT_N];      /* mt19937 state words */
    int left;                      /* outputs left before the next twist, plus one */
    int next;                      /* index of the next state word to temper */
    int has_cached_normal;         /* whether cached_normal is valid */
    double cached_normal;          /* the sine half of the last double Box-Muller pair */
    sd_rng_kernel kernel;          /* resolved: never SD_RNG_KERNEL_AUTO */
} sd_rng;

/* Seed like torch.Generator("cpu").manual_seed(seed) (a negative Python seed is seed
 * modulo 2^64). Keeps the kernel choice; a zeroed sd_rng gets SD_RNG_KERNEL_AUTO's. */
void sd_rng_seed(sd_rng *rng, uint64_t seed);

/* Choose the float32 kernel; AUTO resolves it now. SD_ERR_INVALID for an unknown value. */
sd_status sd_rng_set_kernel(sd_rng *rng, sd_rng_kernel kernel);

/* The kernel AUTO resolves to on this machine. */
sd_rng_kernel sd_rng_auto_kernel(void);

/* The next 32-bit output of the mt19937 engine (torch's random()). */
uint32_t sd_rng_next_u32(sd_rng *rng);

/* Fill out[0..n) with what torch.randn(n) (float32 / float64, contiguous) gives for the
 * same generator state, and advance the state as torch does. n == 0 draws nothing. */
sd_status sd_rng_randn(sd_rng *rng, float *out, int64_t n);
sd_status sd_rng_randn_f64(sd_rng *rng, double *out, int64_t n);

#ifdef __cplusplus
}
#endif

#endif
