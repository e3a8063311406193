/* backend_ops: every op of the backend table (struct sd_backend of sdcore.h) run on the
 * CUDA backend against the CPU backend, on fresh random inputs, at the shapes SD 1.5 uses.
 *
 *   tests/c/backend_ops [--lib-dir DIR] [--op NAME] [--seed N]
 *       each op and shape in float32, float16 and bfloat16 on the GPU against the CPU backend
 *   tests/c/backend_ops --cpu-only [--full] [--op NAME] [--seed N]
 *       each op on the CPU backend against a double-precision reference written here
 *       (--full adds the shapes whose reference takes seconds: the big GEMMs and convs)
 *
 * One line per op, shape and dtype: the largest error relative to the largest reference
 * value (max |a - b| / max |b|), the relative L2 error (||a - b|| / ||b||), each with its
 * bound, OK or FAIL, and the time of the op on each side. The exit status is 1 when any
 * line FAILs or an op returns an error, 0 otherwise; with no CUDA device the GPU run says
 * "no CUDA device: <reason>" and exits 0 (a skip).
 *
 * Staging, as the Python binding's set_staging_dtype does it: on the GPU every float
 * operand (activations and weights alike) and the result are in the dtype under test;
 * the CPU backend computes in float32 on the same inputs rounded to that dtype, so both
 * sides see the same values and what remains is the GPU's arithmetic and the rounding
 * of its result. The bounds are those of the pytest tests (tests/test_cuda*.py): see
 * `bounds_for`. The CUDA library is opened by the engine's own loader
 * (csrc/core/cuda_loader.c, through sd_set_library_dir and sd_cuda_backend). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "sdcore.h"

/* ------------------------------------------------------------- random ---- */

static uint64_t rng_state = 1;

static uint64_t rng_next(void) { /* xorshift64* */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545F4914F6CDD1DULL;
}

static double rng_uniform(void) {
    return (double)(rng_next() >> 11) * 0x1.0p-53;
}

static double rng_normal(void) { /* Box-Muller */
    double u = rng_uniform(), v = rng_uniform();
    return sqrt(-2.0 * log(u > 0 ? u : 0x1.0p-53)) * cos(6.283185307179586 * v);
}

/* ------------------------------------------------------------- cases ----- */

#define MAX_INPUTS 4

typedef struct {
    int ndim;
    int64_t d[SD_MAX_DIMS];
} dims;

#define D1(a)                                                                                      \
    {                                                                                              \
        1, {                                                                                       \
            a                                                                                      \
        }                                                                                          \
    }
#define D2(a, b)                                                                                   \
    {                                                                                              \
        2, {                                                                                       \
            a, b                                                                                   \
        }                                                                                          \
    }
#define D3(a, b, c)                                                                                \
    {                                                                                              \
        3, {                                                                                       \
            a, b, c                                                                                \
        }                                                                                          \
    }
#define D4(a, b, c, d)                                                                             \
    {                                                                                              \
        4, {                                                                                       \
            a, b, c, d                                                                             \
        }                                                                                          \
    }

static int64_t dims_numel(const dims *s) {
    int64_t n = 1;
    for (int i = 0; i < s->ndim; i++)
        n *= s->d[i];
    return n;
}

/* How the GPU result may differ from the CPU one (see bounds_for). */
typedef enum {
    TOL_EXACT,     /* data movement, add/mul/scale, convert: bit for bit */
    TOL_MATH,      /* one transcendental function per element */
    TOL_NORM,      /* reductions: the norms and softmax */
    TOL_GEMM,      /* linear, matmul, conv2d: sums of up to 11520 products */
    TOL_ATTENTION, /* two GEMMs and a softmax, against the unrounded inputs */
} tol_kind;

typedef struct op_case op_case;
/* the op of the case on `be`: in[] and out are tensors of that backend */
typedef sd_status (*op_run)(const sd_backend *be, const op_case *c, const sd_tensor *in,
                            sd_tensor *out);
/* the double-precision reference of --cpu-only: in[] as the CPU op saw them */
typedef void (*op_ref)(const op_case *c, const float *const *in, double *out);

struct op_case {
    const char *op; /* the backend table entry */
    op_run run;
    op_ref ref; /* NULL: no reference here (the line is skipped in --cpu-only) */
    tol_kind tol;
    int n_in;
    dims in[MAX_INPUTS];
    dims out;
    /* input i is spread[i] * N(0, 1) + offset[i] (spread 0 means 1), or with bit i of
     * uniform set, uniform in [offset, offset + spread) */
    float spread[MAX_INPUTS], offset[MAX_INPUTS];
    int uniform;
    int ip[3];     /* integer parameters of the op: groups, heads, stride, padding... */
    float fp[2];   /* float parameters: eps, a scale factor, a shift */
    int keep_f32;  /* bit i: input i stays float32 whatever the dtype */
    int out_fixed; /* the output has dtype out_dtype whatever the dtype */
    sd_dtype out_dtype;
    unsigned dtypes;  /* bit d: run in dtype d on the GPU (0: all three) */
    int heavy;        /* its reference takes seconds: --cpu-only runs it with --full */
    const char *note; /* the op's parameters, printed after the shapes */
};

/* ------------------------------------------------- the ops, on a backend -- */

#define OPT(c, i, in) ((c)->n_in > (i) ? &(in)[i] : NULL)

static sd_status run_linear(const sd_backend *be, const op_case *c, const sd_tensor *in,
                            sd_tensor *out) {
    return be->linear(be, &in[0], &in[1], OPT(c, 2, in), out);
}

/* inputs x, w, res[, bias] */
static sd_status run_linear_add(const sd_backend *be, const op_case *c, const sd_tensor *in,
                                sd_tensor *out) {
    return be->linear_add(be, &in[0], &in[1], OPT(c, 3, in), &in[2], out);
}

static sd_status run_matmul(const sd_backend *be, const op_case *c, const sd_tensor *in,
                            sd_tensor *out) {
    return be->matmul(be, &in[0], &in[1], c->ip[0], out);
}

static sd_status run_conv2d(const sd_backend *be, const op_case *c, const sd_tensor *in,
                            sd_tensor *out) {
    return be->conv2d(be, &in[0], &in[1], OPT(c, 2, in), c->ip[0], c->ip[1], out);
}

/* inputs x, w, res, bias */
static sd_status run_conv2d_add(const sd_backend *be, const op_case *c, const sd_tensor *in,
                                sd_tensor *out) {
    return be->conv2d_add(be, &in[0], &in[1], OPT(c, 3, in), c->ip[0], c->ip[1], &in[2], out);
}

static sd_status run_group_norm(const sd_backend *be, const op_case *c, const sd_tensor *in,
                                sd_tensor *out) {
    return be->group_norm(be, &in[0], &in[1], &in[2], c->ip[0], c->fp[0], c->ip[1], out);
}

static sd_status run_layer_norm(const sd_backend *be, const op_case *c, const sd_tensor *in,
                                sd_tensor *out) {
    return be->layer_norm(be, &in[0], &in[1], &in[2], c->fp[0], out);
}

static sd_status run_attention(const sd_backend *be, const op_case *c, const sd_tensor *in,
                               sd_tensor *out) {
    return be->attention(be, &in[0], &in[1], &in[2], c->ip[0], c->ip[1], out);
}

static sd_status run_softmax(const sd_backend *be, const op_case *c, const sd_tensor *in,
                             sd_tensor *out) {
    return be->softmax(be, &in[0], out);
}

static sd_status run_gelu(const sd_backend *be, const op_case *c, const sd_tensor *in,
                          sd_tensor *out) {
    return be->gelu(be, &in[0], c->ip[0], out);
}

static sd_status run_quick_gelu(const sd_backend *be, const op_case *c, const sd_tensor *in,
                                sd_tensor *out) {
    return be->quick_gelu(be, &in[0], out);
}

static sd_status run_silu(const sd_backend *be, const op_case *c, const sd_tensor *in,
                          sd_tensor *out) {
    return be->silu(be, &in[0], out);
}

static sd_status run_geglu(const sd_backend *be, const op_case *c, const sd_tensor *in,
                           sd_tensor *out) {
    return be->geglu(be, &in[0], out);
}

static sd_status run_upsample(const sd_backend *be, const op_case *c, const sd_tensor *in,
                              sd_tensor *out) {
    return be->upsample_nearest2x(be, &in[0], out);
}

static sd_status run_concat(const sd_backend *be, const op_case *c, const sd_tensor *in,
                            sd_tensor *out) {
    return be->concat_channels(be, &in[0], &in[1], out);
}

static sd_status run_add(const sd_backend *be, const op_case *c, const sd_tensor *in,
                         sd_tensor *out) {
    return be->add(be, &in[0], &in[1], out);
}

static sd_status run_mul(const sd_backend *be, const op_case *c, const sd_tensor *in,
                         sd_tensor *out) {
    return be->mul(be, &in[0], &in[1], out);
}

static sd_status run_scale(const sd_backend *be, const op_case *c, const sd_tensor *in,
                           sd_tensor *out) {
    return be->scale(be, &in[0], c->fp[0], out);
}

static sd_status run_convert(const sd_backend *be, const op_case *c, const sd_tensor *in,
                             sd_tensor *out) {
    return be->convert(be, &in[0], out);
}

static sd_status run_copy(const sd_backend *be, const op_case *c, const sd_tensor *in,
                          sd_tensor *out) {
    return be->copy(be, out, &in[0]);
}

static sd_status run_timestep_embedding(const sd_backend *be, const op_case *c, const sd_tensor *in,
                                        sd_tensor *out) {
    return be->timestep_embedding(be, &in[0], (int)c->out.d[1], c->ip[0], c->fp[0], out);
}

static sd_status run_transpose(const sd_backend *be, const op_case *c, const sd_tensor *in,
                               sd_tensor *out) {
    return be->transpose_last2(be, &in[0], out);
}

/* The ids of an embedding case: CLIP's start and end tokens around pseudo-random rows,
 * the same on both backends (derived from the case, not from the input generator). */
static void embedding_ids(const op_case *c, int32_t *ids, int64_t n) {
    int64_t V = c->in[0].d[0];
    uint64_t h = 0x9E3779B97F4A7C15ULL;
    for (int64_t i = 0; i < n; i++) {
        h = h * 6364136223846793005ULL + 1442695040888963407ULL;
        ids[i] = (int32_t)((h >> 33) % (uint64_t)V);
    }
    ids[0] = (int32_t)(V - 2);
    ids[n - 1] = (int32_t)(V - 1);
}

static sd_status run_embedding(const sd_backend *be, const op_case *c, const sd_tensor *in,
                               sd_tensor *out) {
    int64_t n = c->out.d[0];
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)n);
    if (!ids)
        return sd_fail(SD_ERR_NOMEM, "embedding: no memory for %lld ids", (long long)n);
    embedding_ids(c, ids, n);
    sd_status s = be->embedding(be, &in[0], ids, n, out);
    free(ids);
    return s;
}

static sd_status run_pad(const sd_backend *be, const op_case *c, const sd_tensor *in,
                         sd_tensor *out) {
    return be->pad_bottom_right(be, &in[0], c->ip[0], c->ip[1], out);
}

/* upsample x then add the skip input: recorded as a graph and replayed where the backend
 * has graphs (the CUDA one), run directly where it has none (the CPU one) */
static sd_status run_graph(const sd_backend *be, const op_case *c, const sd_tensor *in,
                           sd_tensor *out) {
    int graphs = be->graph_begin != NULL;
    void *graph = NULL;
    if (graphs)
        SD_TRY(be->graph_begin(be));
    sd_status s = be->upsample_nearest2x(be, &in[0], out);
    if (s == SD_OK)
        s = be->add(be, out, &in[1], out);
    if (!graphs)
        return s;
    sd_status e = be->graph_end(be, &graph); /* ends the capture even after an error */
    if (s == SD_OK)
        s = e;
    if (s == SD_OK && !be->graph_valid(be, graph))
        s = sd_fail(SD_ERR_INVALID, "graph: stale right after it was recorded");
    if (s == SD_OK)
        s = be->graph_launch(be, graph);
    if (s == SD_OK)
        s = be->synchronize(be);
    if (graph)
        be->graph_free(be, graph);
    return s;
}

/* ------------------------------------------ double-precision references -- */

static double gelu_erf(double x) {
    return 0.5 * x * erfc(-x / sqrt(2.0));
}

static double gelu_tanh(double x) {
    return 0.5 * x * (1.0 + tanh(sqrt(2.0 / 3.141592653589793) * (x + 0.044715 * x * x * x)));
}

static double sigmoid(double x) {
    return 1.0 / (1.0 + exp(-x));
}

static void ref_linear(const op_case *c, const float *const *in, double *out) {
    /* x (M, K), w (N, K), bias (N) or NULL [, res (M, N) for linear_add] */
    int64_t K = c->in[0].d[c->in[0].ndim - 1], N = c->in[1].d[0], M = dims_numel(&c->in[0]) / K;
    int add = c->run == run_linear_add;
    const float *bias = add ? (c->n_in > 3 ? in[3] : NULL) : (c->n_in > 2 ? in[2] : NULL);
    for (int64_t m = 0; m < M; m++)
        for (int64_t n = 0; n < N; n++) {
            const float *x = in[0] + m * K, *w = in[1] + n * K;
            double acc = bias ? bias[n] : 0.0;
            for (int64_t k = 0; k < K; k++)
                acc += (double)x[k] * w[k];
            out[m * N + n] = acc + (add ? in[2][m * N + n] : 0.0);
        }
}

static void ref_matmul(const op_case *c, const float *const *in, double *out) {
    /* a (M, K) @ b (K, N), or b (N, K) transposed */
    int64_t M = c->in[0].d[0], K = c->in[0].d[1], N = c->out.d[1];
    for (int64_t m = 0; m < M; m++)
        for (int64_t n = 0; n < N; n++) {
            double acc = 0.0;
            for (int64_t k = 0; k < K; k++)
                acc += (double)in[0][m * K + k] * (c->ip[0] ? in[1][n * K + k] : in[1][k * N + n]);
            out[m * N + n] = acc;
        }
}

static void ref_conv2d(const op_case *c, const float *const *in, double *out) {
    /* x (B, C, H, W), w (OC, C, KH, KW) -> out (B, OC, OH, OW), plus bias and res */
    int add = c->run == run_conv2d_add;
    const float *bias = add ? (c->n_in > 3 ? in[3] : NULL) : (c->n_in > 2 ? in[2] : NULL);
    const float *res = add ? in[2] : NULL;
    int per_channel = add && c->in[2].d[2] == 1 && c->in[2].d[3] == 1;
    int64_t B = c->in[0].d[0], C = c->in[0].d[1], H = c->in[0].d[2], W = c->in[0].d[3];
    int64_t OC = c->in[1].d[0], KH = c->in[1].d[2], KW = c->in[1].d[3];
    int64_t OH = c->out.d[2], OW = c->out.d[3], stride = c->ip[0], pad = c->ip[1];
    for (int64_t b = 0; b < B; b++)
        for (int64_t o = 0; o < OC; o++)
            for (int64_t oy = 0; oy < OH; oy++)
                for (int64_t ox = 0; ox < OW; ox++) {
                    double acc = bias ? bias[o] : 0.0;
                    for (int64_t ci = 0; ci < C; ci++)
                        for (int64_t ky = 0; ky < KH; ky++) {
                            int64_t y = oy * stride - pad + ky;
                            if (y < 0 || y >= H)
                                continue;
                            for (int64_t kx = 0; kx < KW; kx++) {
                                int64_t x = ox * stride - pad + kx;
                                if (x >= 0 && x < W)
                                    acc += (double)in[0][((b * C + ci) * H + y) * W + x] *
                                           in[1][((o * C + ci) * KH + ky) * KW + kx];
                            }
                        }
                    int64_t at = ((b * OC + o) * OH + oy) * OW + ox;
                    if (res)
                        acc += res[per_channel ? b * OC + o : at];
                    out[at] = acc;
                }
}

static void ref_group_norm(const op_case *c, const float *const *in, double *out) {
    int64_t B = c->in[0].d[0], C = c->in[0].d[1], S = dims_numel(&c->in[0]) / (B * C);
    int64_t G = c->ip[0], per = C / G * S;
    for (int64_t b = 0; b < B; b++)
        for (int64_t g = 0; g < G; g++) {
            const float *x = in[0] + (b * C + g * (C / G)) * S;
            double mean = 0.0, var = 0.0;
            for (int64_t i = 0; i < per; i++)
                mean += x[i];
            mean /= (double)per;
            for (int64_t i = 0; i < per; i++)
                var += (x[i] - mean) * (x[i] - mean);
            double inv = 1.0 / sqrt(var / (double)per + c->fp[0]);
            for (int64_t i = 0; i < per; i++) {
                int64_t ch = g * (C / G) + i / S;
                double y = (x[i] - mean) * inv * in[1][ch] + in[2][ch];
                out[(b * C + g * (C / G)) * S + i] = c->ip[1] ? y * sigmoid(y) : y;
            }
        }
}

static void ref_layer_norm(const op_case *c, const float *const *in, double *out) {
    int64_t C = c->in[0].d[c->in[0].ndim - 1], M = dims_numel(&c->in[0]) / C;
    for (int64_t m = 0; m < M; m++) {
        const float *x = in[0] + m * C;
        double mean = 0.0, var = 0.0;
        for (int64_t i = 0; i < C; i++)
            mean += x[i];
        mean /= (double)C;
        for (int64_t i = 0; i < C; i++)
            var += (x[i] - mean) * (x[i] - mean);
        double inv = 1.0 / sqrt(var / (double)C + c->fp[0]);
        for (int64_t i = 0; i < C; i++)
            out[m * C + i] = (x[i] - mean) * inv * in[1][i] + in[2][i];
    }
}

static void ref_attention(const op_case *c, const float *const *in, double *out) {
    int64_t B = c->in[0].d[0], Tq = c->in[0].d[1], HD = c->in[0].d[2], Tk = c->in[1].d[1];
    int64_t H = c->ip[0], D = HD / H;
    double *p = malloc(sizeof(double) * (size_t)Tk);
    if (!p) {
        for (int64_t i = 0; i < B * Tq * HD; i++)
            out[i] = NAN; /* fails the comparison rather than pass unchecked */
        return;
    }
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < H; h++)
            for (int64_t i = 0; i < Tq; i++) {
                const float *q = in[0] + (b * Tq + i) * HD + h * D;
                int64_t keys = c->ip[1] ? i + 1 : Tk;
                double top = -INFINITY, sum = 0.0;
                for (int64_t j = 0; j < keys; j++) {
                    const float *k = in[1] + (b * Tk + j) * HD + h * D;
                    double s = 0.0;
                    for (int64_t d = 0; d < D; d++)
                        s += (double)q[d] * k[d];
                    p[j] = s / sqrt((double)D);
                    top = p[j] > top ? p[j] : top;
                }
                for (int64_t j = 0; j < keys; j++)
                    sum += p[j] = exp(p[j] - top);
                double *o = out + (b * Tq + i) * HD + h * D;
                for (int64_t d = 0; d < D; d++) {
                    double acc = 0.0;
                    for (int64_t j = 0; j < keys; j++)
                        acc += p[j] * in[2][(b * Tk + j) * HD + h * D + d];
                    o[d] = acc / sum;
                }
            }
    free(p);
}

static void ref_softmax(const op_case *c, const float *const *in, double *out) {
    int64_t N = c->in[0].d[c->in[0].ndim - 1], M = dims_numel(&c->in[0]) / N;
    for (int64_t m = 0; m < M; m++) {
        const float *x = in[0] + m * N;
        double top = -INFINITY, sum = 0.0;
        for (int64_t i = 0; i < N; i++)
            top = x[i] > top ? x[i] : top;
        for (int64_t i = 0; i < N; i++)
            sum += out[m * N + i] = exp(x[i] - top);
        for (int64_t i = 0; i < N; i++)
            out[m * N + i] /= sum;
    }
}

static void ref_gelu(const op_case *c, const float *const *in, double *out) {
    for (int64_t i = 0; i < dims_numel(&c->in[0]); i++)
        out[i] = c->ip[0] ? gelu_tanh(in[0][i]) : gelu_erf(in[0][i]);
}

static void ref_quick_gelu(const op_case *c, const float *const *in, double *out) {
    for (int64_t i = 0; i < dims_numel(&c->in[0]); i++)
        out[i] = in[0][i] * sigmoid(1.702 * in[0][i]);
}

static void ref_silu(const op_case *c, const float *const *in, double *out) {
    for (int64_t i = 0; i < dims_numel(&c->in[0]); i++)
        out[i] = in[0][i] * sigmoid(in[0][i]);
}

static void ref_geglu(const op_case *c, const float *const *in, double *out) {
    int64_t N = c->out.d[c->out.ndim - 1], M = dims_numel(&c->out) / N;
    for (int64_t m = 0; m < M; m++)
        for (int64_t i = 0; i < N; i++)
            out[m * N + i] = in[0][m * 2 * N + i] * gelu_erf(in[0][m * 2 * N + N + i]);
}

static void ref_upsample(const op_case *c, const float *const *in, double *out) {
    int64_t BC = c->in[0].d[0] * c->in[0].d[1], H = c->in[0].d[2], W = c->in[0].d[3];
    for (int64_t p = 0; p < BC; p++)
        for (int64_t y = 0; y < 2 * H; y++)
            for (int64_t x = 0; x < 2 * W; x++)
                out[(p * 2 * H + y) * 2 * W + x] = in[0][(p * H + y / 2) * W + x / 2];
}

static void ref_concat(const op_case *c, const float *const *in, double *out) {
    int64_t B = c->in[0].d[0], Ca = c->in[0].d[1], Cb = c->in[1].d[1];
    int64_t S = c->in[0].d[2] * c->in[0].d[3];
    for (int64_t b = 0; b < B; b++)
        for (int64_t ch = 0; ch < Ca + Cb; ch++)
            for (int64_t s = 0; s < S; s++)
                out[(b * (Ca + Cb) + ch) * S + s] =
                    ch < Ca ? in[0][(b * Ca + ch) * S + s] : in[1][(b * Cb + ch - Ca) * S + s];
}

/* b's element for a's element i: same shape, per channel (a NCHW, b (B, C)) or trailing */
static int64_t broadcast_index(const op_case *c, int64_t i) {
    const dims *a = &c->in[0], *b = &c->in[1];
    if (dims_numel(a) == dims_numel(b))
        return i;
    if (a->ndim == 4 && b->ndim == 2 && b->d[0] == a->d[0] && b->d[1] == a->d[1])
        return i / (a->d[2] * a->d[3]);
    return i % dims_numel(b);
}

/* a + b and a * b in double, then rounded once: exactly the float32 result */
static void ref_add(const op_case *c, const float *const *in, double *out) {
    for (int64_t i = 0; i < dims_numel(&c->in[0]); i++)
        out[i] = (float)((double)in[0][i] + in[1][broadcast_index(c, i)]);
}

static void ref_mul(const op_case *c, const float *const *in, double *out) {
    for (int64_t i = 0; i < dims_numel(&c->in[0]); i++)
        out[i] = (float)((double)in[0][i] * in[1][broadcast_index(c, i)]);
}

static void ref_scale(const op_case *c, const float *const *in, double *out) {
    for (int64_t i = 0; i < dims_numel(&c->in[0]); i++)
        out[i] = (float)((double)in[0][i] * c->fp[0]);
}

/* x rounded to nearest even in float16 or bfloat16 (11 and 8 significant bits), done
 * on the value rather than the bits so that it does not share code with the engine */
static double round_half_ref(double x, sd_dtype dt) {
    if (dt == SD_F32 || !isfinite(x) || x == 0.0)
        return dt == SD_F32 ? (double)(float)x : x;
    int bits = dt == SD_F16 ? 11 : 8, emin = dt == SD_F16 ? -14 : -126;
    double largest = dt == SD_F16 ? 65504.0 : ldexp(2.0 - ldexp(1.0, -7), 127);
    int e;
    frexp(x, &e); /* |x| in [2^(e-1), 2^e) */
    int exp2 = e - 1 < emin ? emin : e - 1;
    double quantum = ldexp(1.0, exp2 - (bits - 1));
    double r = nearbyint(x / quantum) * quantum; /* the default mode: nearest, ties even */
    if (fabs(r) > largest)
        return copysign(INFINITY, x);
    return r;
}

static void ref_convert(const op_case *c, const float *const *in, double *out) {
    sd_dtype dt = c->out_fixed ? c->out_dtype : SD_F32;
    for (int64_t i = 0; i < dims_numel(&c->in[0]); i++)
        out[i] = round_half_ref(in[0][i], dt);
}

static void ref_copy(const op_case *c, const float *const *in, double *out) {
    for (int64_t i = 0; i < dims_numel(&c->in[0]); i++)
        out[i] = in[0][i];
}

/* diffusers' get_timestep_embedding: sin then cos (cos first when flipped), a zero
 * column when dim is odd */
static void ref_timestep_embedding(const op_case *c, const float *const *in, double *out) {
    int64_t N = c->out.d[0], dim = c->out.d[1], half = dim / 2;
    for (int64_t n = 0; n < N; n++) {
        double *o = out + n * dim;
        for (int64_t i = 0; i < half; i++) {
            double freq = exp(-log(10000.0) * (double)i / ((double)half - c->fp[0]));
            double arg = (double)in[0][n] * freq;
            o[c->ip[0] ? half + i : i] = sin(arg);
            o[c->ip[0] ? i : half + i] = cos(arg);
        }
        if (dim % 2)
            o[dim - 1] = 0.0;
    }
}

static void ref_transpose(const op_case *c, const float *const *in, double *out) {
    const dims *s = &c->in[0];
    int64_t M = s->d[s->ndim - 2], N = s->d[s->ndim - 1], batch = dims_numel(s) / (M * N);
    for (int64_t b = 0; b < batch; b++)
        for (int64_t m = 0; m < M; m++)
            for (int64_t n = 0; n < N; n++)
                out[(b * N + n) * M + m] = in[0][(b * M + m) * N + n];
}

static void ref_embedding(const op_case *c, const float *const *in, double *out) {
    int64_t n = c->out.d[0], C = c->out.d[1];
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)n);
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < C; j++)
            out[i * C + j] = NAN; /* stays NAN (and fails) if ids cannot be had */
    if (!ids)
        return;
    embedding_ids(c, ids, n);
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < C; j++)
            out[i * C + j] = in[0][(int64_t)ids[i] * C + j];
    free(ids);
}

static void ref_pad(const op_case *c, const float *const *in, double *out) {
    int64_t P = c->in[0].d[0] * c->in[0].d[1], H = c->in[0].d[2], W = c->in[0].d[3];
    int64_t OH = c->out.d[2], OW = c->out.d[3];
    for (int64_t p = 0; p < P; p++)
        for (int64_t y = 0; y < OH; y++)
            for (int64_t x = 0; x < OW; x++)
                out[(p * OH + y) * OW + x] = y < H && x < W ? in[0][(p * H + y) * W + x] : 0.0;
}

static void ref_graph(const op_case *c, const float *const *in, double *out) {
    ref_upsample(c, in, out);
    for (int64_t i = 0; i < dims_numel(&c->out); i++)
        out[i] = (float)(out[i] + in[1][i]);
}

/* ------------------------------------------------------------ the table -- */

#define HALF_DTYPES ((1u << SD_F16) | (1u << SD_BF16))

/* SD 1.5 at 512x512 (64x64 latents, batch 2 for guidance; widths 320, 640, 1280; 8 heads;
 * 77 text tokens of 768), the VAE, CLIP, and odd sizes that miss the vector paths. Weights
 * are spread as 1/sqrt(fan-in), as trained ones are. One case a line or two: kept out of
 * clang-format, which would give each field a line of its own. */
// clang-format off
static const op_case CASES[] = {
    /* linear: x (..., K), w (N, K), bias (N) */
    {"linear", run_linear, ref_linear, TOL_GEMM, 3, {D3(2, 4096, 320), D2(1280, 320), D1(1280)},
     D3(2, 4096, 1280), .spread = {1, 0.056f}, .heavy = 1, .note = "320->1280"},
    {"linear", run_linear, ref_linear, TOL_GEMM, 3, {D2(2, 320), D2(1280, 320), D1(1280)},
     D2(2, 1280), .spread = {1, 0.056f}, .note = "time embedding"},
    {"linear", run_linear, ref_linear, TOL_GEMM, 2, {D3(2, 77, 768), D2(320, 768)},
     D3(2, 77, 320), .spread = {1, 0.036f}, .note = "cross-attention k, no bias"},
    {"linear", run_linear, ref_linear, TOL_GEMM, 3, {D2(3, 5), D2(7, 5), D1(7)}, D2(3, 7),
     .spread = {1, 0.45f}},
    /* linear_add: x, w, res[, bias] */
    {"linear_add", run_linear_add, ref_linear, TOL_GEMM, 4,
     {D3(2, 4096, 320), D2(320, 320), D3(2, 4096, 320), D1(320)}, D3(2, 4096, 320),
     .spread = {1, 0.056f}, .heavy = 1, .note = "attention out + residual"},
    {"linear_add", run_linear_add, ref_linear, TOL_GEMM, 4,
     {D3(1, 77, 768), D2(768, 768), D3(1, 77, 768), D1(768)}, D3(1, 77, 768),
     .spread = {1, 0.036f}, .note = "CLIP out_proj + residual"},
    {"linear_add", run_linear_add, ref_linear, TOL_GEMM, 3, {D2(3, 5), D2(7, 5), D2(3, 7)},
     D2(3, 7), .spread = {1, 0.45f}, .note = "no bias"},
    /* matmul: a (M, K) @ b (K, N), or b (N, K) with trans_b ip[0] */
    {"matmul", run_matmul, ref_matmul, TOL_GEMM, 2, {D2(300, 200), D2(200, 100)}, D2(300, 100)},
    {"matmul", run_matmul, ref_matmul, TOL_GEMM, 2, {D2(4096, 40), D2(77, 40)}, D2(4096, 77),
     .ip = {1}, .note = "trans_b: one head's scores"},
    /* conv2d: x, w, bias; stride ip[0], padding ip[1] */
    {"conv2d", run_conv2d, ref_conv2d, TOL_GEMM, 3,
     {D4(2, 320, 64, 64), D4(320, 320, 3, 3), D1(320)}, D4(2, 320, 64, 64),
     .spread = {1, 0.0186f}, .ip = {1, 1}, .heavy = 1, .note = "3x3 s1 p1"},
    {"conv2d", run_conv2d, ref_conv2d, TOL_GEMM, 3, {D4(2, 4, 64, 64), D4(320, 4, 3, 3), D1(320)},
     D4(2, 320, 64, 64), .spread = {1, 0.167f}, .ip = {1, 1}, .note = "conv_in 3x3"},
    {"conv2d", run_conv2d, ref_conv2d, TOL_GEMM, 3,
     {D4(2, 320, 64, 64), D4(320, 320, 3, 3), D1(320)}, D4(2, 320, 32, 32),
     .spread = {1, 0.0186f}, .ip = {2, 1}, .heavy = 1, .note = "downsampler 3x3 s2 p1"},
    {"conv2d", run_conv2d, ref_conv2d, TOL_GEMM, 3,
     {D4(2, 640, 32, 32), D4(320, 640, 1, 1), D1(320)}, D4(2, 320, 32, 32),
     .spread = {1, 0.0395f}, .ip = {1, 0}, .heavy = 1, .note = "shortcut 1x1"},
    {"conv2d", run_conv2d, ref_conv2d, TOL_GEMM, 3, {D4(1, 4, 64, 64), D4(4, 4, 1, 1), D1(4)},
     D4(1, 4, 64, 64), .spread = {1, 0.5f}, .ip = {1, 0}, .note = "VAE post_quant 1x1"},
    {"conv2d", run_conv2d, ref_conv2d, TOL_GEMM, 2, {D4(1, 3, 9, 7), D4(5, 3, 3, 3)},
     D4(1, 5, 4, 3), .spread = {1, 0.19f}, .ip = {2, 0}, .note = "3x3 s2 p0, no bias"},
    /* conv2d_add: x, w, res, bias; res (B, OC, 1, 1) is one value per image and channel */
    {"conv2d_add", run_conv2d_add, ref_conv2d, TOL_GEMM, 4,
     {D4(2, 320, 64, 64), D4(320, 320, 3, 3), D4(2, 320, 1, 1), D1(320)}, D4(2, 320, 64, 64),
     .spread = {1, 0.0186f}, .ip = {1, 1}, .heavy = 1, .note = "resnet conv1 + time emb"},
    {"conv2d_add", run_conv2d_add, ref_conv2d, TOL_GEMM, 4,
     {D4(2, 320, 16, 16), D4(320, 320, 1, 1), D4(2, 320, 16, 16), D1(320)},
     D4(2, 320, 16, 16), .spread = {1, 0.056f}, .ip = {1, 0}, .note = "proj_out + input"},
    {"conv2d_add", run_conv2d_add, ref_conv2d, TOL_GEMM, 3,
     {D4(1, 3, 9, 7), D4(5, 3, 3, 3), D4(1, 5, 9, 7)}, D4(1, 5, 9, 7), .spread = {1, 0.19f},
     .ip = {1, 1}, .note = "no bias"},
    /* group_norm: x, gamma, beta; groups ip[0], silu ip[1], eps fp[0]; an offset of 3
     * catches a variance taken as E[x^2] - E[x]^2 */
    {"group_norm", run_group_norm, ref_group_norm, TOL_NORM, 3,
     {D4(2, 320, 64, 64), D1(320), D1(320)}, D4(2, 320, 64, 64), .offset = {3}, .ip = {32, 0},
     .fp = {1e-5f}, .note = "32 groups"},
    {"group_norm", run_group_norm, ref_group_norm, TOL_NORM, 3,
     {D4(2, 320, 64, 64), D1(320), D1(320)}, D4(2, 320, 64, 64), .offset = {3}, .ip = {32, 1},
     .fp = {1e-5f}, .note = "32 groups + silu"},
    {"group_norm", run_group_norm, ref_group_norm, TOL_NORM, 3,
     {D4(2, 1280, 8, 8), D1(1280), D1(1280)}, D4(2, 1280, 8, 8), .offset = {3}, .ip = {32, 1},
     .fp = {1e-5f}, .note = "32 groups + silu"},
    {"group_norm", run_group_norm, ref_group_norm, TOL_NORM, 3,
     {D4(1, 512, 64, 64), D1(512), D1(512)}, D4(1, 512, 64, 64), .offset = {3}, .ip = {32, 1},
     .fp = {1e-6f}, .note = "VAE, eps 1e-6, + silu"},
    {"group_norm", run_group_norm, ref_group_norm, TOL_NORM, 3, {D3(3, 6, 5), D1(6), D1(6)},
     D3(3, 6, 5), .offset = {3}, .ip = {3, 1}, .fp = {1e-5f}, .note = "3 groups + silu"},
    /* layer_norm: x, gamma, beta; eps fp[0] */
    {"layer_norm", run_layer_norm, ref_layer_norm, TOL_NORM, 3,
     {D3(2, 4096, 320), D1(320), D1(320)}, D3(2, 4096, 320), .spread = {2}, .offset = {1},
     .fp = {1e-5f}},
    {"layer_norm", run_layer_norm, ref_layer_norm, TOL_NORM, 3, {D3(1, 77, 768), D1(768), D1(768)},
     D3(1, 77, 768), .spread = {2}, .offset = {1}, .fp = {1e-5f}, .note = "CLIP"},
    {"layer_norm", run_layer_norm, ref_layer_norm, TOL_NORM, 3,
     {D3(2, 256, 1280), D1(1280), D1(1280)}, D3(2, 256, 1280), .spread = {2}, .offset = {1},
     .fp = {1e-5f}},
    {"layer_norm", run_layer_norm, ref_layer_norm, TOL_NORM, 3, {D2(5, 3), D1(3), D1(3)}, D2(5, 3),
     .spread = {2}, .offset = {1}, .fp = {1e-5f}, .dtypes = 1,
     .note = "f32 only: 15 values"},
    /* attention: q, k, v; heads ip[0], causal ip[1] */
    {"attention", run_attention, ref_attention, TOL_ATTENTION, 3,
     {D3(1, 4096, 80), D3(1, 4096, 80), D3(1, 4096, 80)}, D3(1, 4096, 80), .ip = {2, 0},
     .heavy = 1, .note = "self, 2 heads of 40"},
    {"attention", run_attention, ref_attention, TOL_ATTENTION, 3,
     {D3(2, 4096, 320), D3(2, 77, 320), D3(2, 77, 320)}, D3(2, 4096, 320), .ip = {8, 0},
     .heavy = 1, .note = "cross, 8 heads of 40"},
    {"attention", run_attention, ref_attention, TOL_ATTENTION, 3,
     {D3(2, 256, 320), D3(2, 77, 320), D3(2, 77, 320)}, D3(2, 256, 320), .ip = {8, 0},
     .note = "cross, 8 heads of 40"},
    {"attention", run_attention, ref_attention, TOL_ATTENTION, 3,
     {D3(2, 1024, 640), D3(2, 77, 640), D3(2, 77, 640)}, D3(2, 1024, 640), .ip = {10, 0},
     .note = "cross, 10 heads of 64"},
    {"attention", run_attention, ref_attention, TOL_ATTENTION, 3,
     {D3(2, 77, 768), D3(2, 77, 768), D3(2, 77, 768)}, D3(2, 77, 768), .ip = {12, 1},
     .note = "CLIP causal, 12 heads of 64"},
    {"attention", run_attention, ref_attention, TOL_ATTENTION, 3,
     {D3(1, 1024, 512), D3(1, 1024, 512), D3(1, 1024, 512)}, D3(1, 1024, 512), .ip = {1, 0},
     .heavy = 1, .note = "VAE, 1 head of 512"},
    {"attention", run_attention, ref_attention, TOL_ATTENTION, 3,
     {D3(1, 5, 7), D3(1, 3, 7), D3(1, 3, 7)}, D3(1, 5, 7), .ip = {1, 0}, .note = "1 head of 7"},
    /* softmax over the last dim */
    {"softmax", run_softmax, ref_softmax, TOL_NORM, 1, {D2(64, 4096)}, D2(64, 4096),
     .spread = {5}, .note = "scores of 4096 keys"},
    {"softmax", run_softmax, ref_softmax, TOL_NORM, 1, {D3(3, 7, 77)}, D3(3, 7, 77),
     .spread = {5}, .note = "scores of 77 tokens"},
    {"softmax", run_softmax, ref_softmax, TOL_NORM, 1, {D2(5, 33)}, D2(5, 33), .spread = {5}},
    /* activations; gelu's tanh form with ip[0] */
    {"gelu", run_gelu, ref_gelu, TOL_MATH, 1, {D3(2, 4096, 1280)}, D3(2, 4096, 1280),
     .spread = {3}, .note = "erf"},
    {"gelu", run_gelu, ref_gelu, TOL_MATH, 1, {D3(2, 4096, 1280)}, D3(2, 4096, 1280),
     .spread = {3}, .ip = {1}, .note = "tanh"},
    {"gelu", run_gelu, ref_gelu, TOL_MATH, 1, {D3(3, 7, 13)}, D3(3, 7, 13), .spread = {3},
     .note = "erf"},
    {"quick_gelu", run_quick_gelu, ref_quick_gelu, TOL_MATH, 1, {D3(1, 77, 3072)},
     D3(1, 77, 3072), .spread = {4}, .note = "CLIP mlp"},
    {"silu", run_silu, ref_silu, TOL_MATH, 1, {D4(2, 320, 64, 64)}, D4(2, 320, 64, 64),
     .spread = {4}},
    {"silu", run_silu, ref_silu, TOL_MATH, 1, {D2(2, 1280)}, D2(2, 1280), .spread = {4},
     .note = "time embedding"},
    {"geglu", run_geglu, ref_geglu, TOL_MATH, 1, {D3(2, 4096, 2560)}, D3(2, 4096, 1280),
     .spread = {2}, .note = "feed-forward 320"},
    {"geglu", run_geglu, ref_geglu, TOL_MATH, 1, {D3(3, 5, 14)}, D3(3, 5, 7), .spread = {2}},
    /* layout: exact in every dtype */
    {"upsample_nearest2x", run_upsample, ref_upsample, TOL_EXACT, 1, {D4(2, 1280, 16, 16)},
     D4(2, 1280, 32, 32)},
    {"upsample_nearest2x", run_upsample, ref_upsample, TOL_EXACT, 1, {D4(1, 3, 5, 7)},
     D4(1, 3, 10, 14)},
    {"concat_channels", run_concat, ref_concat, TOL_EXACT, 2,
     {D4(2, 640, 32, 32), D4(2, 320, 32, 32)}, D4(2, 960, 32, 32), .note = "skip connection"},
    {"concat_channels", run_concat, ref_concat, TOL_EXACT, 2, {D4(1, 3, 5, 5), D4(1, 2, 5, 5)},
     D4(1, 5, 5, 5)},
    {"transpose_last2", run_transpose, ref_transpose, TOL_EXACT, 1, {D3(2, 320, 4096)},
     D3(2, 4096, 320), .note = "NCHW -> tokens"},
    {"transpose_last2", run_transpose, ref_transpose, TOL_EXACT, 1, {D3(2, 4096, 320)},
     D3(2, 320, 4096), .note = "tokens -> NCHW"},
    {"transpose_last2", run_transpose, ref_transpose, TOL_EXACT, 1, {D4(2, 3, 31, 47)},
     D4(2, 3, 47, 31)},
    {"pad_bottom_right", run_pad, ref_pad, TOL_EXACT, 1, {D4(1, 128, 256, 256)},
     D4(1, 128, 257, 257), .ip = {1, 1}, .note = "VAE encoder downsampler"},
    {"pad_bottom_right", run_pad, ref_pad, TOL_EXACT, 1, {D4(2, 3, 5, 7)}, D4(2, 3, 7, 7),
     .ip = {2, 0}},
    {"embedding", run_embedding, ref_embedding, TOL_EXACT, 1, {D2(49408, 768)}, D2(77, 768),
     .spread = {0.02f}, .note = "CLIP tokens"},
    /* element-wise arithmetic: one float32 operation rounded once */
    {"add", run_add, ref_add, TOL_EXACT, 2, {D4(2, 320, 64, 64), D4(2, 320, 64, 64)},
     D4(2, 320, 64, 64), .note = "residual"},
    {"add", run_add, ref_add, TOL_EXACT, 2, {D4(2, 320, 64, 64), D2(2, 320)},
     D4(2, 320, 64, 64), .note = "per channel"},
    {"add", run_add, ref_add, TOL_EXACT, 2, {D3(2, 77, 768), D2(77, 768)}, D3(2, 77, 768),
     .note = "position embedding"},
    {"add", run_add, ref_add, TOL_EXACT, 2, {D3(2, 4096, 320), D1(320)}, D3(2, 4096, 320),
     .note = "trailing vector"},
    {"add", run_add, ref_add, TOL_EXACT, 2, {D3(5, 3, 7), D3(5, 3, 7)}, D3(5, 3, 7)},
    {"mul", run_mul, ref_mul, TOL_EXACT, 2, {D3(2, 4096, 1280), D3(2, 4096, 1280)},
     D3(2, 4096, 1280)},
    {"mul", run_mul, ref_mul, TOL_EXACT, 2, {D3(3, 77, 768), D1(768)}, D3(3, 77, 768),
     .note = "trailing vector"},
    {"mul", run_mul, ref_mul, TOL_EXACT, 2, {D4(2, 3, 5, 5), D2(2, 3)}, D4(2, 3, 5, 5),
     .note = "per channel"},
    {"scale", run_scale, ref_scale, TOL_EXACT, 1, {D4(2, 4, 64, 64)}, D4(2, 4, 64, 64),
     .fp = {0.18215f}, .note = "x 0.18215"},
    /* convert: from float32 to each half, and from each half to float32 */
    {"convert", run_convert, ref_convert, TOL_EXACT, 1, {D4(2, 4, 64, 64)}, D4(2, 4, 64, 64),
     .spread = {30}, .keep_f32 = 1, .out_fixed = 1, .out_dtype = SD_F16, .dtypes = 1,
     .note = "to float16"},
    {"convert", run_convert, ref_convert, TOL_EXACT, 1, {D4(2, 4, 64, 64)}, D4(2, 4, 64, 64),
     .spread = {30}, .keep_f32 = 1, .out_fixed = 1, .out_dtype = SD_BF16, .dtypes = 1,
     .note = "to bfloat16"},
    {"convert", run_convert, ref_convert, TOL_EXACT, 1, {D4(2, 4, 64, 64)}, D4(2, 4, 64, 64),
     .spread = {30}, .out_fixed = 1, .out_dtype = SD_F32, .dtypes = HALF_DTYPES,
     .note = "to float32"},
    {"copy", run_copy, ref_copy, TOL_EXACT, 1, {D4(2, 320, 64, 64)}, D4(2, 320, 64, 64)},
    /* timestep_embedding: timesteps in [0, 1000); flip_sin_to_cos ip[0], shift fp[0] */
    {"timestep_embedding", run_timestep_embedding, ref_timestep_embedding, TOL_MATH, 1, {D1(2)},
     D2(2, 320), .spread = {1000}, .uniform = 1, .ip = {1}, .fp = {0}, .note = "flip, shift 0"},
    {"timestep_embedding", run_timestep_embedding, ref_timestep_embedding, TOL_MATH, 1, {D1(8)},
     D2(8, 256), .spread = {1000}, .uniform = 1, .ip = {0}, .fp = {1}, .note = "shift 1"},
    {"timestep_embedding", run_timestep_embedding, ref_timestep_embedding, TOL_MATH, 1, {D1(8)},
     D2(8, 7), .spread = {1000}, .uniform = 1, .ip = {1}, .fp = {0}, .note = "odd dim"},
    /* graph_begin/end/valid/launch/free: an up block's upsample and skip add, replayed */
    {"graph", run_graph, ref_graph, TOL_EXACT, 2, {D4(2, 1280, 16, 16), D4(2, 1280, 32, 32)},
     D4(2, 1280, 32, 32), .note = "upsample + add, recorded"},
};
// clang-format on

#define N_CASES ((int)(sizeof CASES / sizeof CASES[0]))

/* ------------------------------------------------------------ the runs --- */

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

static const char *dtype_short(sd_dtype dt) {
    return dt == SD_F32 ? "f32" : dt == SD_F16 ? "f16" : "bf16";
}

/* x rounded to dt (nearest even) and widened back, in place; the engine's conversions */
static int round_to(float *x, int64_t n, sd_dtype dt) {
    if (dt == SD_F32)
        return 0;
    uint16_t *tmp = malloc(sizeof(uint16_t) * (size_t)n);
    if (!tmp)
        return -1;
    sd_narrow_from_f32(x, dt, tmp, n);
    sd_widen_to_f32(tmp, dt, x, n);
    free(tmp);
    return 0;
}

/* A tensor of `be` in dtype dt holding the host float32 values (narrowed on the host). */
static sd_status stage(const sd_backend *be, const float *host, const dims *s, sd_dtype dt,
                       sd_tensor *t) {
    *t = sd_tensor_view(NULL, dt, be->device, s->ndim, s->d);
    SD_TRY(be->alloc(be, t));
    if (dt == SD_F32)
        return be->upload(be, t, host);
    int64_t n = dims_numel(s);
    uint16_t *tmp = malloc(sizeof(uint16_t) * (size_t)n);
    if (!tmp)
        return sd_fail(SD_ERR_NOMEM, "no host memory to stage %lld values", (long long)n);
    sd_narrow_from_f32(host, dt, tmp, n);
    sd_status s2 = be->upload(be, t, tmp);
    free(tmp);
    return s2;
}

/* The tensor's values widened to float32 on the host. */
static sd_status fetch(const sd_backend *be, const sd_tensor *t, float *host) {
    if (t->dtype == SD_F32)
        return be->download(be, host, t);
    int64_t n = sd_numel(t);
    uint16_t *tmp = malloc(sizeof(uint16_t) * (size_t)n);
    if (!tmp)
        return sd_fail(SD_ERR_NOMEM, "no host memory to fetch %lld values", (long long)n);
    sd_status s = be->download(be, tmp, t);
    if (s == SD_OK)
        sd_widen_to_f32(tmp, t->dtype, host, n);
    free(tmp);
    return s;
}

/* Run case c on be with input i staged in in_dt[i] and the output in out_dt; the result
 * widened into `result`. *ms: the first run's time when reps is 0, else the mean of
 * `reps` more runs (the first one then warms up). */
static sd_status run_on(const sd_backend *be, const op_case *c, float *const *inputs,
                        const sd_dtype *in_dt, sd_dtype out_dt, int reps, float *result,
                        double *ms) {
    sd_tensor in[MAX_INPUTS] = {0}, out = {0};
    sd_status s = SD_OK;
    for (int i = 0; i < c->n_in && s == SD_OK; i++)
        s = stage(be, inputs[i], &c->in[i], in_dt[i], &in[i]);
    if (s == SD_OK) {
        out = sd_tensor_view(NULL, out_dt, be->device, c->out.ndim, c->out.d);
        s = be->alloc(be, &out);
    }
    double t0 = now_ms();
    if (s == SD_OK)
        s = c->run(be, c, in, &out);
    if (s == SD_OK)
        s = be->synchronize(be);
    *ms = now_ms() - t0;
    if (s == SD_OK && reps > 0) {
        /* enough runs for ~50 ms, at most `reps` */
        int n = *ms > 0 ? (int)(50.0 / *ms) : reps;
        n = n < 1 ? 1 : n > reps ? reps : n;
        t0 = now_ms();
        for (int r = 0; r < n && s == SD_OK; r++)
            s = c->run(be, c, in, &out);
        if (s == SD_OK)
            s = be->synchronize(be);
        *ms = (now_ms() - t0) / n;
    }
    if (s == SD_OK)
        s = fetch(be, &out, result);
    for (int i = 0; i < c->n_in; i++)
        if (in[i].data)
            be->free(be, &in[i]);
    if (out.data)
        be->free(be, &out);
    return s;
}

typedef struct {
    double max, l2; /* relative to the reference's largest value and its L2 norm */
    int64_t differ; /* elements not bit for bit equal (NaN equals NaN) */
} errors;

static errors compare(const float *got, const double *ref, int64_t n) {
    errors e = {0, 0, 0};
    double top = 0, diff2 = 0, ref2 = 0, worst = 0;
    for (int64_t i = 0; i < n; i++) {
        float r = (float)ref[i];
        if (!(got[i] == r || (isnan(got[i]) && isnan(r))))
            e.differ++;
        double d = fabs((double)got[i] - ref[i]);
        if (!isfinite(got[i]) && isfinite(ref[i]))
            d = INFINITY;
        if (isnan(d) && !(isnan(got[i]) && isnan(ref[i])))
            d = INFINITY;
        if (isnan(d)) /* both NaN, or both the same infinity */
            d = 0;
        worst = d > worst ? d : worst;
        diff2 += d * d;
        if (isfinite(ref[i])) {
            top = fabs(ref[i]) > top ? fabs(ref[i]) : top;
            ref2 += ref[i] * ref[i];
        }
    }
    e.max = worst / (top > 1e-30 ? top : 1e-30);
    e.l2 = sqrt(diff2) / (ref2 > 1e-60 ? sqrt(ref2) : 1e-30);
    return e;
}

typedef struct {
    double max, l2; /* INFINITY: not bounded */
} bounds;

/* unit roundoff of each half dtype */
static double roundoff(sd_dtype dt) {
    return dt == SD_F16 ? 0x1.0p-11 : 0x1.0p-8;
}

/* The bounds of tests/test_cuda*.py for a result in dt. `yard` is the error that rounding
 * the reference itself to dt causes (for the attention: the CPU result on the rounded
 * inputs, rounded, against the reference on the unrounded ones): the least a result
 * stored in dt can have. */
static bounds bounds_for(tol_kind k, sd_dtype dt, errors yard) {
    bounds none = {INFINITY, INFINITY};
    switch (k) {
    case TOL_EXACT: return (bounds){0, 0}; /* and no element may differ */
    case TOL_MATH:                         /* test_cuda_elementwise.py */
        if (dt == SD_F32)
            return (bounds){2e-6, 1e-6};
        return (bounds){3 * yard.max, 3 * yard.l2};
    case TOL_NORM: /* test_cuda_norm.py: the largest error only */
        none.max = dt == SD_F32 ? 1e-5 : 2 * yard.max;
        return none;
    case TOL_GEMM: /* test_cuda.py */
        if (dt == SD_F32)
            return (bounds){1e-4, 1e-5};
        return dt == SD_F16 ? (bounds){4e-3, 2e-3} : (bounds){3.2e-2, 1.6e-2};
    case TOL_ATTENTION: /* test_cuda_attention.py */
        if (dt == SD_F32)
            return (bounds){1e-4, 1e-5};
        return (bounds){fmax(6 * yard.max, 2 * roundoff(dt)), fmax(3 * yard.l2, roundoff(dt))};
    }
    return none;
}

/* the CPU backend against the double references: tests/test_ops.py's bounds */
#define CPU_REL_L2 1e-5
#define CPU_REL_MAX 1e-4

typedef struct {
    int cpu_only, full, reps;
    const char *only_op;
    const char *perturb_op; /* --perturb: spoil this op's results (the runner's own check) */
    int failed, passed, skipped;
} options;

/* --perturb: one element of the result moved by half the reference's largest value, which
 * every bound here refuses: shows that a wrong result does FAIL */
static void perturb(const options *o, const op_case *c, float *got, const double *ref, int64_t n) {
    if (!o->perturb_op || strcmp(o->perturb_op, c->op) != 0)
        return;
    double top = 0;
    for (int64_t i = 0; i < n; i++)
        top = fabs(ref[i]) > top ? fabs(ref[i]) : top;
    got[n / 2] += (float)(top > 0 ? 0.5 * top : 1.0);
}

/* "x(2,320,64,64) w(320,320,3,3) b(320)": every input's shape */
static const char *shapes_text(const op_case *c, char *buf, size_t len) {
    size_t at = 0;
    buf[0] = '\0';
    for (int i = 0; i < c->n_in && at < len; i++) {
        at += (size_t)snprintf(buf + at, len - at, "%s(", i ? " " : "");
        for (int d = 0; d < c->in[i].ndim && at < len; d++)
            at += (size_t)snprintf(buf + at, len - at, d ? ",%lld" : "%lld",
                                   (long long)c->in[i].d[d]);
        if (at < len)
            at += (size_t)snprintf(buf + at, len - at, ")");
    }
    return buf;
}

static void print_header(int cpu_only) {
    printf("%-18s %-44s %-28s %-8s %-18s %-18s %-4s %10s %10s\n", "op", "inputs", "note", "dtype",
           "max err (bound)", "L2 err (bound)", "", "cpu ms", cpu_only ? "" : "gpu ms");
}

static void print_line(const op_case *c, const char *dtype, errors e, bounds b, int exact, int ok,
                       double cpu_ms, double gpu_ms) {
    char shapes[160], maxs[40], l2s[40];
    if (exact) {
        snprintf(maxs, sizeof maxs, "%.2e (exact)", e.max);
        snprintf(l2s, sizeof l2s, "%lld differ", (long long)e.differ);
    } else {
        snprintf(maxs, sizeof maxs, "%.2e (%.1e)", e.max, b.max);
        if (isinf(b.l2))
            snprintf(l2s, sizeof l2s, "%.2e (-)", e.l2);
        else
            snprintf(l2s, sizeof l2s, "%.2e (%.1e)", e.l2, b.l2);
    }
    char gpu[24] = "";
    if (gpu_ms >= 0)
        snprintf(gpu, sizeof gpu, "%10.3f", gpu_ms);
    printf("%-18s %-44s %-28s %-8s %-18s %-18s %-4s %10.2f %10s\n", c->op,
           shapes_text(c, shapes, sizeof shapes), c->note ? c->note : "", dtype, maxs, l2s,
           ok ? "OK" : "FAIL", cpu_ms, gpu);
    fflush(stdout);
}

static void print_error(const op_case *c, const char *dtype, const char *side, sd_status s) {
    char shapes[160];
    printf("%-18s %-44s %-28s %-8s FAIL: the %s op returned %s: %s\n", c->op,
           shapes_text(c, shapes, sizeof shapes), c->note ? c->note : "", dtype, side,
           sd_status_name(s), sd_last_error());
    fflush(stdout);
}

/* Fresh random inputs of case c into in[] (host float32). */
static int make_inputs(const op_case *c, float **in) {
    for (int i = 0; i < c->n_in; i++) {
        int64_t n = dims_numel(&c->in[i]);
        in[i] = malloc(sizeof(float) * (size_t)n);
        if (!in[i])
            return -1;
        double spread = c->spread[i] != 0 ? c->spread[i] : 1.0;
        for (int64_t j = 0; j < n; j++)
            in[i][j] = (float)((c->uniform >> i & 1) ? c->offset[i] + spread * rng_uniform()
                                                     : c->offset[i] + spread * rng_normal());
    }
    return 0;
}

static void free_inputs(float **in, int n) {
    for (int i = 0; i < n; i++) {
        free(in[i]);
        in[i] = NULL;
    }
}

/* --cpu-only: the CPU backend on float32 inputs against the double reference */
static void check_cpu(const op_case *c, options *o) {
    const sd_backend *cpu = sd_cpu_backend();
    if (!c->ref || (c->heavy && !o->full)) {
        char shapes[160];
        printf("%-18s %-44s %-28s %-8s SKIP (%s)\n", c->op, shapes_text(c, shapes, sizeof shapes),
               c->note ? c->note : "", "f32",
               c->ref ? "a reference of seconds: --full" : "no reference");
        o->skipped++;
        return;
    }
    float *in[MAX_INPUTS] = {0};
    int64_t n = dims_numel(&c->out);
    float *got = malloc(sizeof(float) * (size_t)n);
    double *ref = malloc(sizeof(double) * (size_t)n);
    sd_dtype in_dt[MAX_INPUTS] = {SD_F32, SD_F32, SD_F32, SD_F32};
    sd_dtype out_dt = c->out_fixed ? c->out_dtype : SD_F32;
    const char *dtype = c->out_fixed && out_dt != SD_F32 ? dtype_short(out_dt) : "f32";
    if (!got || !ref || make_inputs(c, in) < 0) {
        printf("%s: out of host memory\n", c->op);
        o->failed++;
        goto done;
    }
    double ms;
    sd_status s = run_on(cpu, c, in, in_dt, out_dt, 0, got, &ms);
    if (s != SD_OK) {
        print_error(c, dtype, "CPU", s);
        o->failed++;
        goto done;
    }
    c->ref(c, (const float *const *)in, ref);
    perturb(o, c, got, ref, n);
    errors e = compare(got, ref, n);
    int exact = c->tol == TOL_EXACT;
    bounds b = exact ? (bounds){0, 0} : (bounds){CPU_REL_MAX, CPU_REL_L2};
    int ok = exact ? e.differ == 0 : e.max <= b.max && e.l2 <= b.l2;
    print_line(c, dtype, e, b, exact, ok, ms, -1);
    ok ? o->passed++ : o->failed++;
done:
    free_inputs(in, c->n_in);
    free(got);
    free(ref);
}

/* The GPU in dtype dt against the CPU backend on the same inputs rounded to dt. */
static void check_gpu(const op_case *c, const sd_backend *gpu, sd_dtype dt, options *o) {
    const sd_backend *cpu = sd_cpu_backend();
    float *in[MAX_INPUTS] = {0}, *rounded[MAX_INPUTS] = {0};
    int64_t n = dims_numel(&c->out);
    float *got = malloc(sizeof(float) * (size_t)n), *cpu_out = malloc(sizeof(float) * (size_t)n);
    double *ref = malloc(sizeof(double) * (size_t)n);
    sd_dtype gpu_in[MAX_INPUTS], cpu_in[MAX_INPUTS] = {SD_F32, SD_F32, SD_F32, SD_F32};
    sd_dtype gpu_out = c->out_fixed ? c->out_dtype : dt;
    sd_dtype cpu_out_dt = c->out_fixed ? c->out_dtype : SD_F32;
    char dtype[16];
    int attention_half = c->tol == TOL_ATTENTION && dt != SD_F32;
    if (!got || !cpu_out || !ref || make_inputs(c, in) < 0) {
        printf("%s: out of host memory\n", c->op);
        o->failed++;
        goto done;
    }
    sd_dtype shown_in = c->keep_f32 & 1 ? SD_F32 : dt;
    if (c->out_fixed)
        snprintf(dtype, sizeof dtype, "%s>%s", dtype_short(shown_in), dtype_short(gpu_out));
    else
        snprintf(dtype, sizeof dtype, "%s", dtype_short(dt));
    for (int i = 0; i < c->n_in; i++) {
        gpu_in[i] = c->keep_f32 >> i & 1 ? SD_F32 : dt;
        int64_t m = dims_numel(&c->in[i]);
        rounded[i] = malloc(sizeof(float) * (size_t)m);
        if (!rounded[i]) {
            printf("%s: out of host memory\n", c->op);
            o->failed++;
            goto done;
        }
        memcpy(rounded[i], in[i], sizeof(float) * (size_t)m);
        if (round_to(rounded[i], m, gpu_in[i]) < 0) {
            printf("%s: out of host memory\n", c->op);
            o->failed++;
            goto done;
        }
    }
    double cpu_ms, gpu_ms;
    sd_status s = run_on(cpu, c, rounded, cpu_in, cpu_out_dt, 0, cpu_out, &cpu_ms);
    if (s != SD_OK) {
        print_error(c, dtype, "CPU", s);
        o->failed++;
        goto done;
    }
    s = run_on(gpu, c, in, gpu_in, gpu_out, o->reps, got, &gpu_ms);
    if (s != SD_OK) {
        print_error(c, dtype, "CUDA", s);
        o->failed++;
        goto done;
    }
    errors yard = {0, 0, 0};
    if (attention_half) {
        /* the reference on the unrounded inputs; the yardstick is the CPU result on the
         * rounded inputs, rounded to dt */
        float *exact = malloc(sizeof(float) * (size_t)n);
        double ignored;
        s = exact ? run_on(cpu, c, in, cpu_in, SD_F32, 0, exact, &ignored) : SD_ERR_NOMEM;
        if (s != SD_OK) {
            free(exact);
            print_error(c, dtype, "CPU", s);
            o->failed++;
            goto done;
        }
        for (int64_t i = 0; i < n; i++)
            ref[i] = exact[i];
        free(exact);
        round_to(cpu_out, n, dt);
        yard = compare(cpu_out, ref, n);
    } else {
        for (int64_t i = 0; i < n; i++)
            ref[i] = cpu_out[i];
        if (c->tol == TOL_EXACT) {
            /* the GPU rounds the same float32 result once to its dtype */
            round_to(cpu_out, n, gpu_out);
            for (int64_t i = 0; i < n; i++)
                ref[i] = cpu_out[i];
        } else if (dt != SD_F32) {
            round_to(cpu_out, n, dt);
            yard = compare(cpu_out, ref, n);
        }
    }
    perturb(o, c, got, ref, n);
    errors e = compare(got, ref, n);
    bounds b = bounds_for(c->tol, dt, yard);
    int exact = c->tol == TOL_EXACT;
    int ok = exact ? e.differ == 0 : e.max <= b.max && e.l2 <= b.l2;
    print_line(c, dtype, e, b, exact, ok, cpu_ms, gpu_ms);
    ok ? o->passed++ : o->failed++;
done:
    free_inputs(in, c->n_in);
    free_inputs(rounded, c->n_in);
    free(got);
    free(cpu_out);
    free(ref);
}

/* ------------------------------------------------------------- sampler --- */

/* sampler_op: the kinds are those the CPU backend accepts (it refuses an unknown kind or
 * bad flags), so that this file needs no sampler header. Each kind runs with every flags
 * value it accepts, on all SD_SAMPLER_OP_INPUTS inputs (a kind reads the ones it needs),
 * on the GPU and the CPU; the two run the same float32 expressions and must agree bit for
 * bit. One line per kind. */
#define SAMPLER_N (2 * 4 * 64 * 64) /* the latents of a 512x512 image with guidance */
#define SAMPLER_MAX_KIND 64
#define SAMPLER_MAX_FLAGS 8

static int sampler_accepts(int kind, int flags, float *const *host, float *out) {
    sd_sampler_op op = {.kind = kind, .flags = flags, .n = 1, .out = out};
    for (int j = 0; j < SD_SAMPLER_OP_INPUTS; j++)
        op.in[j] = host[j];
    for (int j = 0; j < 8; j++)
        op.c[j] = 1.0f;
    const sd_backend *cpu = sd_cpu_backend();
    sd_status s = cpu->sampler_op(cpu, &op);
    sd_clear_error();
    return s == SD_OK;
}

static sd_status sampler_run(const sd_backend *be, int kind, int flags, const float *c8,
                             float *const *host, float *result, double *ms) {
    sd_tensor t[SD_SAMPLER_OP_INPUTS + 1] = {0};
    dims d = D1(SAMPLER_N);
    sd_status s = SD_OK;
    for (int j = 0; j <= SD_SAMPLER_OP_INPUTS && s == SD_OK; j++)
        s = stage(be, host[j < SD_SAMPLER_OP_INPUTS ? j : 0], &d, SD_F32, &t[j]);
    sd_sampler_op op = {.kind = kind, .flags = flags, .n = SAMPLER_N};
    memcpy(op.c, c8, sizeof op.c);
    if (s == SD_OK) {
        op.out = t[SD_SAMPLER_OP_INPUTS].data;
        for (int j = 0; j < SD_SAMPLER_OP_INPUTS; j++)
            op.in[j] = t[j].data;
        double t0 = now_ms();
        s = be->sampler_op(be, &op);
        if (s == SD_OK)
            s = be->synchronize(be);
        *ms = now_ms() - t0;
    }
    if (s == SD_OK)
        s = be->download(be, result, &t[SD_SAMPLER_OP_INPUTS]);
    for (int j = 0; j <= SD_SAMPLER_OP_INPUTS; j++)
        if (t[j].data)
            be->free(be, &t[j]);
    return s;
}

static void check_sampler(const sd_backend *gpu, options *o) {
    static const op_case line = {"sampler_op", .n_in = 0};
    const sd_backend *cpu = sd_cpu_backend();
    if (!gpu) {
        char shape[32];
        snprintf(shape, sizeof shape, "(%d)", SAMPLER_N);
        printf("%-18s %-44s %-28s %-8s SKIP (no reference: the CPU's expressions are the "
               "reference, checked against diffusers by tests/test_samplers.py)\n",
               "sampler_op", shape, "every kind", "f32");
        o->skipped++;
        return;
    }
    float *host[SD_SAMPLER_OP_INPUTS] = {0};
    float *want = malloc(sizeof(float) * SAMPLER_N), *got = malloc(sizeof(float) * SAMPLER_N);
    double *ref = malloc(sizeof(double) * SAMPLER_N);
    for (int j = 0; j < SD_SAMPLER_OP_INPUTS; j++) {
        host[j] = malloc(sizeof(float) * SAMPLER_N);
        if (host[j])
            for (int i = 0; i < SAMPLER_N; i++)
                host[j][i] = (float)rng_normal();
    }
    int ready = want && got && ref;
    for (int j = 0; j < SD_SAMPLER_OP_INPUTS; j++)
        ready = ready && host[j];
    if (!ready) {
        printf("sampler_op: out of host memory\n");
        o->failed++;
        goto done;
    }
    for (int kind = 0; kind < SAMPLER_MAX_KIND; kind++) {
        char note[64];
        int first = -1, last = -1, count = 0, ok = 1;
        double cpu_ms = 0, gpu_ms = 0;
        errors worst = {0, 0, 0};
        for (int flags = 0; flags < SAMPLER_MAX_FLAGS; flags++) {
            if (!sampler_accepts(kind, flags, host, want))
                continue;
            first = first < 0 ? flags : first;
            last = flags;
            count++;
            snprintf(note, sizeof note, "kind %d, flags %d", kind, flags);
            float c8[8];
            for (int j = 0; j < 8; j++)
                c8[j] = (float)(0.5 + rng_uniform()); /* nonzero: some kinds divide */
            double a, b;
            sd_status s = sampler_run(cpu, kind, flags, c8, host, want, &a);
            if (s == SD_OK)
                s = sampler_run(gpu, kind, flags, c8, host, got, &b);
            if (s != SD_OK) {
                op_case named = line;
                named.note = note;
                print_error(&named, "f32", "sampler", s);
                ok = 0;
                break;
            }
            cpu_ms += a;
            gpu_ms += b;
            for (int i = 0; i < SAMPLER_N; i++)
                ref[i] = want[i];
            perturb(o, &line, got, ref, SAMPLER_N);
            errors e = compare(got, ref, SAMPLER_N);
            worst.max = fmax(worst.max, e.max);
            worst.l2 = fmax(worst.l2, e.l2);
            worst.differ += e.differ;
        }
        if (!count)
            continue;
        if (count > 1)
            snprintf(note, sizeof note, "kind %d, flags %d%s%d", kind, first,
                     count == last - first + 1 ? "-" : "..", last);
        static const dims one = D1(SAMPLER_N);
        op_case named = line;
        named.n_in = 1;
        named.in[0] = one;
        named.note = note;
        ok = ok && worst.differ == 0;
        print_line(&named, "f32", worst, (bounds){0, 0}, 1, ok, cpu_ms, gpu_ms);
        ok ? o->passed++ : o->failed++;
    }
done:
    for (int j = 0; j < SD_SAMPLER_OP_INPUTS; j++)
        free(host[j]);
    free(want);
    free(got);
    free(ref);
}

/* ---------------------------------------------------------------- main --- */

static void usage(FILE *f) {
    fprintf(f, "usage: backend_ops [--cpu-only [--full]] [--lib-dir DIR] [--op NAME] "
               "[--seed N] [--reps N] [--cpu-as-device] [--perturb NAME]\n"
               "  CUDA backend against the CPU backend at SD 1.5's shapes, float32/16/bf16;\n"
               "  --cpu-only: the CPU backend against double-precision references instead\n"
               "  --full: with --cpu-only, also the shapes whose reference takes seconds\n"
               "  --lib-dir: the directory of libsdcore_cuda.so (default: this program's)\n"
               "  --op: only the ops of that name; --seed: the inputs' seed (default: the "
               "clock)\n"
               "  --reps: at most this many timed GPU runs per line (default 20)\n"
               "  --cpu-as-device: the GPU run's comparisons with the CPU backend in the\n"
               "    device's place (float32 only): checks the runner itself without a GPU\n"
               "  --perturb NAME: spoil one element of that op's results (must then FAIL)\n");
}

/* the directory holding this program, where the CUDA library is looked for by default */
static void own_dir(char *buf, size_t len) {
    ssize_t n = readlink("/proc/self/exe", buf, len - 1);
    buf[n > 0 ? n : 0] = '\0';
    char *slash = strrchr(buf, '/');
    if (slash)
        *slash = '\0';
}

int main(int argc, char **argv) {
    options o = {.reps = 20};
    const char *lib_dir = NULL;
    int cpu_as_device = 0;
    uint64_t seed = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *next = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--cpu-only"))
            o.cpu_only = 1;
        else if (!strcmp(a, "--full"))
            o.full = 1;
        else if (!strcmp(a, "--cpu-as-device"))
            cpu_as_device = 1;
        else if (!strcmp(a, "--perturb") && next)
            o.perturb_op = argv[++i];
        else if (!strcmp(a, "--lib-dir") && next)
            lib_dir = argv[++i];
        else if (!strcmp(a, "--op") && next)
            o.only_op = argv[++i];
        else if (!strcmp(a, "--seed") && next)
            seed = strtoull(argv[++i], NULL, 10);
        else if (!strcmp(a, "--reps") && next && atoi(next) >= 1)
            o.reps = atoi(argv[++i]);
        else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else {
            fprintf(stderr, "backend_ops: unknown or incomplete argument '%s'\n", a);
            usage(stderr);
            return 2;
        }
    }
    rng_state = seed ? seed : 1;

    const sd_backend *gpu = NULL;
    if (cpu_as_device && !o.cpu_only) {
        gpu = sd_cpu_backend(); /* the GPU run's comparisons, float32 only, without a GPU */
    } else if (!o.cpu_only) {
        char dir[4096];
        if (lib_dir)
            snprintf(dir, sizeof dir, "%s", lib_dir);
        else
            own_dir(dir, sizeof dir);
        sd_set_library_dir(dir);
        if (sd_cuda_backend(&gpu) != SD_OK) {
            printf("no CUDA device: %s\n", sd_last_error());
            printf("SKIP: nothing compared (--cpu-only checks the CPU backend against the "
                   "double-precision references)\n");
            return 0;
        }
        sd_cuda_device_info info;
        if (sd_cuda_device_info_get(0, &info) == SD_OK)
            printf("device: %s (compute %d.%d, %d SMs, %.1f GiB), library from %s\n", info.name,
                   info.major, info.minor, info.multiprocessors, info.total_memory / 1073741824.0,
                   dir);
    }
    printf("backend_ops: %s, seed %llu, %d CPU threads\n",
           o.cpu_only      ? "CPU backend against double references"
           : cpu_as_device ? "CPU backend standing in for the device, against the CPU"
                           : "CUDA backend against the CPU",
           (unsigned long long)seed, sd_cpu_threads());
    print_header(o.cpu_only);

    for (int i = 0; i < N_CASES; i++) {
        const op_case *c = &CASES[i];
        if (o.only_op && strcmp(o.only_op, c->op) != 0)
            continue;
        if (o.cpu_only) {
            check_cpu(c, &o);
            continue;
        }
        /* the CPU backend takes float32 activations only */
        for (int dt = SD_F32; dt <= (gpu->device == SD_CPU ? SD_F32 : SD_BF16); dt++)
            if (!c->dtypes || (c->dtypes >> dt & 1))
                check_gpu(c, gpu, (sd_dtype)dt, &o);
    }
    if (!o.only_op || !strcmp(o.only_op, "sampler_op"))
        check_sampler(gpu, &o);

    printf("%d OK, %d FAIL, %d skipped (seed %llu)\n", o.passed, o.failed, o.skipped,
           (unsigned long long)seed);
    if (o.passed + o.failed + o.skipped == 0) {
        fprintf(stderr, "backend_ops: no op matched%s%s\n", o.only_op ? " --op " : "",
                o.only_op ? o.only_op : "");
        return 2;
    }
    return o.failed ? 1 : 0;
}
