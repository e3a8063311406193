/* sdcore: the public C interface of the engine.
 *
 * Everything the model code, the backends and the Python binding share lives here:
 * dtypes, devices, the tensor descriptor, status codes with a thread-local message,
 * and the backend interface (a table of function pointers that the CPU and CUDA
 * backends each fill).
 *
 * Layout: a tensor is dense and row-major (C order) with up to 4 dims; there are no
 * strides. Image-like activations are NCHW, sequence activations are (B, T, C).
 */
#ifndef SDCORE_H
#define SDCORE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------- status ---- */

typedef enum {
    SD_OK = 0,
    SD_ERR_INVALID = 1,     /* bad argument: shape, dtype, value */
    SD_ERR_NOMEM = 2,       /* host or device allocation failed */
    SD_ERR_IO = 3,          /* file could not be opened or read */
    SD_ERR_FORMAT = 4,      /* a file's contents are malformed */
    SD_ERR_UNSUPPORTED = 5, /* valid request this build or backend cannot serve */
    SD_ERR_DEVICE = 6,      /* CUDA runtime or cuBLAS reported an error */
    SD_ERR_CANCELLED = 7,   /* a generation was cancelled between steps */
} sd_status;

/* Record an error for the calling thread and return `status` (so callers can write
 * `return sd_fail(SD_ERR_INVALID, "...")`). The message is printf-formatted. */
sd_status sd_fail(sd_status status, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
/* The calling thread's last error message ("" if none). */
const char *sd_last_error(void);
void sd_clear_error(void);
const char *sd_status_name(sd_status status);

/* Propagate a non-OK status to the caller. */
#define SD_TRY(expr)                   \
    do {                               \
        sd_status sd_try_s_ = (expr);  \
        if (sd_try_s_ != SD_OK)        \
            return sd_try_s_;          \
    } while (0)

/* ---------------------------------------------------------------- tensors --- */

typedef enum { SD_F32 = 0, SD_F16 = 1, SD_BF16 = 2 } sd_dtype;
typedef enum { SD_CPU = 0, SD_CUDA = 1 } sd_device;

#define SD_MAX_DIMS 4

typedef struct {
    void *data;                  /* host pointer (SD_CPU) or device pointer (SD_CUDA) */
    sd_dtype dtype;
    sd_device device;
    int ndim;                    /* 1..SD_MAX_DIMS (0: a scalar read from a file) */
    int64_t shape[SD_MAX_DIMS];  /* dims past ndim are 1 */
} sd_tensor;

size_t sd_dtype_size(sd_dtype dtype);
const char *sd_dtype_name(sd_dtype dtype);
int64_t sd_numel(const sd_tensor *t);
size_t sd_nbytes(const sd_tensor *t);
/* A descriptor over existing memory; dims given as a count and an array. */
sd_tensor sd_tensor_view(void *data, sd_dtype dtype, sd_device device, int ndim,
                         const int64_t *shape);
/* Shape as text, "(2, 320, 64, 64)", into a caller buffer; returns buf. */
const char *sd_shape_str(const sd_tensor *t, char *buf, size_t len);

/* Half-precision conversions (round to nearest even), exact for every input. */
float sd_f16_to_f32(uint16_t h);
uint16_t sd_f32_to_f16(float f);
float sd_bf16_to_f32(uint16_t h);
uint16_t sd_f32_to_bf16(float f);
/* Widen n elements of `src` (any dtype) into f32 `dst`. */
void sd_widen_to_f32(const void *src, sd_dtype dtype, float *dst, int64_t n);
/* Round n f32 elements into `dst` of `dtype` (a copy for f32). */
void sd_narrow_from_f32(const float *src, sd_dtype dtype, void *dst, int64_t n);

/* ---------------------------------------------------------------- weights --- */

/* A set of named tensors (a checkpoint, or one model's part of it). Tensors borrow
 * memory that the set keeps alive: an mmapped file, or buffers handed to
 * sd_weights_keep. Lookups by name are O(log n) once sd_weights_seal has sorted them. */
typedef struct sd_weights sd_weights;

sd_status sd_weights_create(sd_weights **out);
void sd_weights_free(sd_weights *w);
/* Add a tensor under `name` (copied). Fails on a duplicate name once sealed. */
sd_status sd_weights_add(sd_weights *w, const char *name, sd_tensor t);
/* Keep `ptr` alive as long as the set; release(ptr, size) runs at sd_weights_free. */
sd_status sd_weights_keep(sd_weights *w, void *ptr, size_t size,
                          void (*release)(void *ptr, size_t size));
/* Sort for lookup; reports a duplicate name as SD_ERR_FORMAT. */
sd_status sd_weights_seal(sd_weights *w);
int64_t sd_weights_count(const sd_weights *w);
const char *sd_weights_name(const sd_weights *w, int64_t i);
const sd_tensor *sd_weights_at(const sd_weights *w, int64_t i);
/* The tensor called `name`, or NULL. */
const sd_tensor *sd_weights_find(const sd_weights *w, const char *name);
/* Index of the first (host) tensor holding a NaN or an infinity, or -1 when all are finite:
 * a model with such weights can only make non-finite images. */
int64_t sd_weights_first_nonfinite(const sd_weights *w);
/* Text metadata carried with the set (a safetensors file's __metadata__): key and
 * value are copied; keys are kept in the order added and are the caller's to keep
 * distinct. */
sd_status sd_weights_add_metadata(sd_weights *w, const char *key, const char *value);
int64_t sd_weights_metadata_count(const sd_weights *w);
const char *sd_weights_metadata_key(const sd_weights *w, int64_t i);
const char *sd_weights_metadata_value(const sd_weights *w, int64_t i);
/* The tensor called `name` with exactly this shape (ndim dims), or an error that names
 * it: missing, or its shape against the expected one. */
sd_status sd_weights_require(const sd_weights *w, const char *name, int ndim,
                             const int64_t *shape, const sd_tensor **out);

/* A copy of every tensor of `src` in the memory of backend `be` (not the CPU), each
 * converted to `dtype`; names and metadata are kept. The copy owns its device memory. */
typedef struct sd_backend sd_backend;
sd_status sd_weights_to_backend(const sd_weights *src, const sd_backend *be, sd_dtype dtype,
                                sd_weights **out);

/* ---------------------------------------------------------------- backend --- */

/* An element-wise sampler update: out[k] = f(in[0][k], ..., in[5][k]) for k < n, with
 * scalars c[] worked out on the host (see core/sampler_ops.h for each kind). out may
 * be one of the inputs. */
#define SD_SAMPLER_OP_INPUTS 6
typedef struct {
    int kind;  /* sd_sampler_op_kind of core/sampler_ops.h */
    int flags; /* per kind: v-prediction, clipping, order */
    int64_t n;
    float c[8];
    float *out;
    const float *in[SD_SAMPLER_OP_INPUTS];
} sd_sampler_op;

/* Every op writes into an `out` tensor the caller allocated with the right shape.
 * Activations are f32 on the CPU backend; weights (the `w` of linear and conv2d and
 * the affine parameters of the norms) may be f32, f16 or bf16 and are widened.
 * An op checks its shapes and dtypes and returns SD_ERR_INVALID with a message
 * naming the argument, never touching memory out of range. */
struct sd_backend {
    const char *name;
    sd_device device;

    /* memory: `t` arrives with dtype and shape set; alloc sets t->data. */
    sd_status (*alloc)(const sd_backend *be, sd_tensor *t);
    void (*free)(const sd_backend *be, sd_tensor *t);
    /* copies between host memory and a tensor of this backend (same nbytes) */
    sd_status (*upload)(const sd_backend *be, sd_tensor *dst, const void *host_src);
    sd_status (*download)(const sd_backend *be, void *host_dst, const sd_tensor *src);
    sd_status (*synchronize)(const sd_backend *be);

    /* x (..., K), w (N, K), bias (N) or NULL -> out (..., N) */
    sd_status (*linear)(const sd_backend *be, const sd_tensor *x, const sd_tensor *w,
                        const sd_tensor *bias, sd_tensor *out);
    /* linear plus a residual: out = linear(x, w, bias) + res, res shaped like out (res may
     * be out itself: out += linear(x)). One GEMM with the bias and the residual in its
     * epilogue where the backend can. */
    sd_status (*linear_add)(const sd_backend *be, const sd_tensor *x, const sd_tensor *w,
                            const sd_tensor *bias, const sd_tensor *res, sd_tensor *out);
    /* a (M, K) @ b (K, N) -> out (M, N); with trans_b, b is (N, K) */
    sd_status (*matmul)(const sd_backend *be, const sd_tensor *a, const sd_tensor *b,
                        int trans_b, sd_tensor *out);
    /* x (B, C, H, W), w (OC, C, KH, KW), bias (OC) or NULL
     *   -> out (B, OC, (H + 2p - KH) / s + 1, (W + 2p - KW) / s + 1) */
    sd_status (*conv2d)(const sd_backend *be, const sd_tensor *x, const sd_tensor *w,
                        const sd_tensor *bias, int stride, int padding, sd_tensor *out);
    /* conv2d plus a residual: out = conv2d(x, w, bias) + res, res (B, OC, OH, OW) or
     * (B, OC, 1, 1) (one value per image and channel); res may be out (out += conv). The GPU
     * writes res + bias first and lets the GEMM add the product onto it. */
    sd_status (*conv2d_add)(const sd_backend *be, const sd_tensor *x, const sd_tensor *w,
                            const sd_tensor *bias, int stride, int padding, const sd_tensor *res,
                            sd_tensor *out);
    /* x (B, C, ...) with C divisible by groups; gamma, beta (C) -> out like x.
     * With fuse_silu, out = silu(group_norm(x)). out may be x itself (in place). */
    sd_status (*group_norm)(const sd_backend *be, const sd_tensor *x, const sd_tensor *gamma,
                            const sd_tensor *beta, int groups, float eps, int fuse_silu,
                            sd_tensor *out);
    /* x (..., C), gamma, beta (C) -> out like x; normalises over the last dim */
    sd_status (*layer_norm)(const sd_backend *be, const sd_tensor *x, const sd_tensor *gamma,
                            const sd_tensor *beta, float eps, sd_tensor *out);
    /* q (B, Tq, H*D), k and v (B, Tk, H*D) -> out (B, Tq, H*D);
     * softmax(q k^T / sqrt(D)) v per head; causal masks key j > query i (needs Tq == Tk). */
    sd_status (*attention)(const sd_backend *be, const sd_tensor *q, const sd_tensor *k,
                           const sd_tensor *v, int heads, int causal, sd_tensor *out);
    /* softmax over the last dim; out like x */
    sd_status (*softmax)(const sd_backend *be, const sd_tensor *x, sd_tensor *out);
    /* elementwise activations; out like x */
    sd_status (*gelu)(const sd_backend *be, const sd_tensor *x, int tanh_approx, sd_tensor *out);
    sd_status (*quick_gelu)(const sd_backend *be, const sd_tensor *x, sd_tensor *out);
    sd_status (*silu)(const sd_backend *be, const sd_tensor *x, sd_tensor *out);
    /* x (..., 2N) -> out (..., N) = x[..., :N] * gelu(x[..., N:]) (erf gelu) */
    sd_status (*geglu)(const sd_backend *be, const sd_tensor *x, sd_tensor *out);
    /* x (B, C, H, W) -> out (B, C, 2H, 2W) */
    sd_status (*upsample_nearest2x)(const sd_backend *be, const sd_tensor *x, sd_tensor *out);
    /* a (B, Ca, H, W), b (B, Cb, H, W) -> out (B, Ca + Cb, H, W) */
    sd_status (*concat_channels)(const sd_backend *be, const sd_tensor *a, const sd_tensor *b,
                                 sd_tensor *out);
    /* out = a + b, a * b: b is the same shape as a, or broadcasts over a's leading dims
     * (b's numel divides a's and b matches a's trailing elements) or, for NCHW a with
     * b (B, C), per channel. */
    sd_status (*add)(const sd_backend *be, const sd_tensor *a, const sd_tensor *b, sd_tensor *out);
    sd_status (*mul)(const sd_backend *be, const sd_tensor *a, const sd_tensor *b, sd_tensor *out);
    /* out = x * s */
    sd_status (*scale)(const sd_backend *be, const sd_tensor *x, float s, sd_tensor *out);
    /* out = x in out's dtype (same shape): f32, f16 and bf16 each way, rounding to
     * nearest even; the model's boundary between f32 inputs and f16 activations */
    sd_status (*convert)(const sd_backend *be, const sd_tensor *x, sd_tensor *out);
    /* timesteps (N) -> out (N, dim): sinusoidal embedding as diffusers' get_timestep_embedding */
    sd_status (*timestep_embedding)(const sd_backend *be, const sd_tensor *timesteps, int dim,
                                    int flip_sin_to_cos, float downscale_freq_shift,
                                    sd_tensor *out);
    /* x (..., M, N) -> out (..., N, M): the last two dims swapped, e.g. an NCHW image
     * viewed as (B, C, H*W) to the (B, H*W, C) tokens of a transformer, and back */
    sd_status (*transpose_last2)(const sd_backend *be, const sd_tensor *x, sd_tensor *out);
    /* table (V, C) any weight dtype, ids (n) in host memory -> out (n, C): row ids[i] of
     * the table; an id outside [0, V) is an error naming it */
    sd_status (*embedding)(const sd_backend *be, const sd_tensor *table, const int32_t *ids,
                           int64_t n, sd_tensor *out);
    /* x (B, C, H, W) -> out (B, C, H + bottom, W + right): zeros added below and to the
     * right (the VAE encoder's downsampler pads only those sides) */
    sd_status (*pad_bottom_right)(const sd_backend *be, const sd_tensor *x, int bottom, int right,
                                  sd_tensor *out);

    /* One element-wise update of a diffusion sampler on float32 vectors of this backend
     * (core/sampler_ops.h says what each kind computes; the CPU and GPU run the same
     * expressions, in the same order, so their results agree bit for bit). */
    sd_status (*sampler_op)(const sd_backend *be, const sd_sampler_op *op);

    /* dst = src, tensors of this backend with the same number of bytes */
    sd_status (*copy)(const sd_backend *be, sd_tensor *dst, const sd_tensor *src);

    /* Graphs (NULL where a backend has none). The ops issued between graph_begin and
     * graph_end are recorded instead of run; graph_launch replays them on the same
     * buffers, at a fraction of the launch cost. Copies to or from the host, and
     * allocations, must not happen in between. A graph goes stale when the backend
     * moves its own workspaces (graph_valid is then 0): free it and record again. */
    sd_status (*graph_begin)(const sd_backend *be);
    sd_status (*graph_end)(const sd_backend *be, void **graph);
    sd_status (*graph_launch)(const sd_backend *be, void *graph);
    int (*graph_valid)(const sd_backend *be, const void *graph);
    void (*graph_free)(const sd_backend *be, void *graph);
};

/* The CPU backend: always available. */
const sd_backend *sd_cpu_backend(void);

/* The CUDA backend lives in a separate shared library (libsdcore_cuda.so beside the
 * extension) loaded on first use, so a CPU-only machine never needs CUDA libraries.
 * Returns SD_ERR_UNSUPPORTED with the reason when it cannot be used. */
sd_status sd_cuda_backend(const sd_backend **out);

typedef struct {
    char name[256];
    int major, minor;           /* compute capability */
    int multiprocessors;
    size_t total_memory;        /* bytes */
} sd_cuda_device_info;

/* Devices visible to the CUDA backend. With no driver or no GPU these return
 * SD_ERR_UNSUPPORTED and a message saying why; *count is then 0. */
sd_status sd_cuda_device_count(int *count);
sd_status sd_cuda_device_info_get(int index, sd_cuda_device_info *info);
/* Free and total memory of the device in use, in bytes. */
sd_status sd_cuda_memory_info(size_t *free_bytes, size_t *total_bytes);
/* The most device memory in use (bytes, the whole process's, as cudaMemGetInfo counts
 * it) seen right after any allocation of the backend or at this call, since the last
 * call with reset (which starts again from what is in use now). */
sd_status sd_cuda_memory_peak(size_t *peak_used, int reset);

/* Set the directory searched for libsdcore_cuda.so (the binding passes the package dir). */
void sd_set_library_dir(const char *dir);

/* Number of threads the CPU backend uses (OpenMP and BLAS). */
int sd_cpu_threads(void);
void sd_set_cpu_threads(int n);

#ifdef __cplusplus
}
#endif
#endif /* SDCORE_H */
