/* Every backend op callable on NumPy arrays, so each can be tested alone.
 *
 * Pattern of each function: parse the arguments, view the arrays as tensors (checked),
 * allocate the output array, then with the GIL released stage the operands on the
 * chosen backend (a no-op on the CPU; an upload for CUDA), run the op and bring the
 * result back. */
#include "binding.h"

#include <stdlib.h>
#include <string.h>

#define MAX_OPERANDS 6

/* On a GPU backend, float32 operands are staged (and the result computed) in this
 * dtype: float16 runs the kernels the models use; tests set it with
 * set_staging_dtype(). Process-wide, like the backend choice. */
static sd_dtype g_staging_dtype = SD_F32;

typedef struct {
    const char *op;
    const sd_backend *be;
    int n_in;
    sd_tensor host[MAX_OPERANDS];  /* views of the argument arrays */
    sd_tensor dev[MAX_OPERANDS];   /* device copies when the backend is not the CPU */
    int present[MAX_OPERANDS];     /* optional arguments may be absent */
    PyObject *out_array;
    sd_tensor out_host;
    sd_tensor out_dev;
} op_call;

static int call_begin(op_call *c, const char *op, const char *device) {
    memset(c, 0, sizeof *c);
    c->op = op;
    c->be = sd_backend_from_name(device);
    return c->be ? 0 : -1;
}

/* Add an input array; index through call_in(). None is allowed when `optional`. */
static int call_input(op_call *c, PyObject *obj, const char *arg, int allow_f16, int min_ndim,
                      int max_ndim, int optional) {
    int i = c->n_in++;
    if (optional && (obj == NULL || obj == Py_None))
        return 0;
    if (sd_array_arg(obj, c->op, arg, allow_f16, min_ndim, max_ndim, &c->host[i]) < 0)
        return -1;
    c->present[i] = 1;
    return 0;
}

/* Allocate the float32 output array of the given shape. */
static int call_output(op_call *c, int ndim, const int64_t *shape) {
    npy_intp dims[SD_MAX_DIMS];
    for (int i = 0; i < ndim; i++)
        dims[i] = (npy_intp)(shape[i] > 0 ? shape[i] : 1);
    c->out_array = PyArray_SimpleNew(ndim, dims, NPY_FLOAT32);
    if (!c->out_array)
        return -1;
    int64_t s[SD_MAX_DIMS];
    for (int i = 0; i < ndim; i++)
        s[i] = dims[i];
    c->out_host = sd_tensor_view(PyArray_DATA((PyArrayObject *)c->out_array), SD_F32, SD_CPU,
                                 ndim, s);
    return 0;
}

/* The tensor the op sees for input i (NULL when absent), and for the output. */
static const sd_tensor *call_in(op_call *c, int i) {
    if (!c->present[i])
        return NULL;
    return c->be->device == SD_CPU ? &c->host[i] : &c->dev[i];
}

static sd_tensor *call_out(op_call *c) {
    return c->be->device == SD_CPU ? &c->out_host : &c->out_dev;
}

static void call_free_device(op_call *c) {
    for (int i = 0; i < c->n_in; i++)
        if (c->dev[i].data)
            c->be->free(c->be, &c->dev[i]);
    if (c->out_dev.data)
        c->be->free(c->be, &c->out_dev);
}

/* Upload host tensor `h` into `d` (allocated here) in dtype `dt`. */
static sd_status stage_one(const sd_backend *be, const sd_tensor *h, sd_dtype dt, sd_tensor *d) {
    *d = *h;
    d->data = NULL;
    d->dtype = h->dtype == SD_F32 ? dt : h->dtype;
    SD_TRY(be->alloc(be, d));
    if (d->dtype == h->dtype)
        return be->upload(be, d, h->data);
    int64_t n = sd_numel(h);
    void *tmp = malloc((size_t)n * 2);
    if (!tmp)
        return sd_fail(SD_ERR_NOMEM, "out of host memory staging %lld elements", (long long)n);
    sd_narrow_from_f32(h->data, d->dtype, tmp, n);
    sd_status s = be->upload(be, d, tmp);
    free(tmp);
    return s;
}

/* Copy inputs to the backend and allocate the output there (no GIL needed). */
static sd_status call_stage(op_call *c) {
    if (c->be->device == SD_CPU)
        return SD_OK;
    for (int i = 0; i < c->n_in; i++) {
        if (!c->present[i])
            continue;
        SD_TRY(stage_one(c->be, &c->host[i], g_staging_dtype, &c->dev[i]));
    }
    c->out_dev = c->out_host;
    c->out_dev.data = NULL;
    c->out_dev.dtype = g_staging_dtype;
    return c->be->alloc(c->be, &c->out_dev);
}

/* Bring the device result into the float32 output array, widening a half result. */
static sd_status fetch_result(op_call *c) {
    if (c->out_dev.dtype == SD_F32)
        return c->be->download(c->be, c->out_host.data, &c->out_dev);
    int64_t n = sd_numel(&c->out_dev);
    void *tmp = malloc((size_t)n * 2);
    if (!tmp)
        return sd_fail(SD_ERR_NOMEM, "out of host memory for %lld elements", (long long)n);
    sd_status s = c->be->download(c->be, tmp, &c->out_dev);
    if (s == SD_OK)
        sd_widen_to_f32(tmp, c->out_dev.dtype, c->out_host.data, n);
    free(tmp);
    return s;
}

static sd_status call_unstage(op_call *c, sd_status s) {
    if (c->be->device == SD_CPU)
        return s;
    if (s == SD_OK)
        s = c->be->synchronize(c->be);
    if (s == SD_OK)
        s = fetch_result(c);
    call_free_device(c);
    return s;
}

/* Finish: the output array, or NULL with the exception for a failed status. */
static PyObject *call_end(op_call *c, sd_status s) {
    if (s != SD_OK) {
        Py_CLEAR(c->out_array);
        return sd_raise(s);
    }
    return c->out_array;
}

static PyObject *unsupported(op_call *c) {
    Py_CLEAR(c->out_array);
    PyErr_Format(sd_exc_unsupported, "%s is not implemented on the %s backend", c->op,
                 c->be->name);
    return NULL;
}

/* Run `expr` (a backend call) with the GIL released, staging around it. */
#define RUN_OP(c, fn, expr)                          \
    do {                                             \
        if (!(c).be->fn)                             \
            return unsupported(&(c));                \
        sd_status s_;                                \
        Py_BEGIN_ALLOW_THREADS;                      \
        s_ = call_stage(&(c));                       \
        if (s_ == SD_OK)                             \
            s_ = (expr);                             \
        s_ = call_unstage(&(c), s_);                 \
        Py_END_ALLOW_THREADS;                        \
        return call_end(&(c), s_);                   \
    } while (0)

/* ---------------------------------------------------------------- ops ---- */

/* The output of a linear of inputs 0 (x) and 1 (weight): x's shape, weight's rows last. */
static int linear_output(op_call *c) {
    int64_t shape[SD_MAX_DIMS];
    memcpy(shape, c->host[0].shape, sizeof shape);
    shape[c->host[0].ndim - 1] = c->host[1].shape[0];
    return call_output(c, c->host[0].ndim, shape);
}

static PyObject *py_linear(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"x", "weight", "bias", "device", NULL};
    PyObject *x, *w, *b = Py_None;
    const char *device = "cpu";
    op_call c;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|Os:linear", kwlist, &x, &w, &b, &device) ||
        call_begin(&c, "linear", device) < 0 || call_input(&c, x, "x", 0, 1, 4, 0) < 0 ||
        call_input(&c, w, "weight", 1, 2, 2, 0) < 0 || call_input(&c, b, "bias", 1, 1, 1, 1) < 0)
        return NULL;
    if (linear_output(&c) < 0)
        return NULL;
    RUN_OP(c, linear, c.be->linear(c.be, call_in(&c, 0), call_in(&c, 1), call_in(&c, 2),
                                   call_out(&c)));
}

static PyObject *py_linear_add(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"x", "weight", "bias", "res", "device", NULL};
    PyObject *x, *w, *b, *res;
    const char *device = "cpu";
    op_call c;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOO|s:linear_add", kwlist, &x, &w, &b, &res,
                                     &device) ||
        call_begin(&c, "linear_add", device) < 0 || call_input(&c, x, "x", 0, 1, 4, 0) < 0 ||
        call_input(&c, w, "weight", 1, 2, 2, 0) < 0 || call_input(&c, b, "bias", 1, 1, 1, 1) < 0 ||
        call_input(&c, res, "res", 0, 1, 4, 0) < 0)
        return NULL;
    if (linear_output(&c) < 0)
        return NULL;
    RUN_OP(c, linear_add, c.be->linear_add(c.be, call_in(&c, 0), call_in(&c, 1), call_in(&c, 2),
                                           call_in(&c, 3), call_out(&c)));
}

static PyObject *py_matmul(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"a", "b", "trans_b", "device", NULL};
    PyObject *a, *b;
    int trans_b = 0;
    const char *device = "cpu";
    op_call c;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|ps:matmul", kwlist, &a, &b, &trans_b,
                                     &device) ||
        call_begin(&c, "matmul", device) < 0 || call_input(&c, a, "a", 0, 2, 2, 0) < 0 ||
        call_input(&c, b, "b", 0, 2, 2, 0) < 0)
        return NULL;
    int64_t shape[2] = {c.host[0].shape[0], c.host[1].shape[trans_b ? 0 : 1]};
    if (call_output(&c, 2, shape) < 0)
        return NULL;
    RUN_OP(c, matmul, c.be->matmul(c.be, call_in(&c, 0), call_in(&c, 1), trans_b, call_out(&c)));
}

/* The output of a convolution of inputs 0 (x) and 1 (weight); -1 with ValueError. */
static int conv_output(op_call *c, int stride, int padding) {
    if (stride < 1 || padding < 0) {
        PyErr_Format(PyExc_ValueError, "%s: stride must be >= 1 and padding >= 0", c->op);
        return -1;
    }
    const int64_t *xs = c->host[0].shape, *ws = c->host[1].shape;
    int64_t shape[4] = {xs[0], ws[0], (xs[2] + 2 * padding - ws[2]) / stride + 1,
                        (xs[3] + 2 * padding - ws[3]) / stride + 1};
    return call_output(c, 4, shape);
}

static PyObject *py_conv2d(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"x", "weight", "bias", "stride", "padding", "device", NULL};
    PyObject *x, *w, *b = Py_None;
    int stride = 1, padding = 0;
    const char *device = "cpu";
    op_call c;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|Oiis:conv2d", kwlist, &x, &w, &b, &stride,
                                     &padding, &device) ||
        call_begin(&c, "conv2d", device) < 0 || call_input(&c, x, "x", 0, 4, 4, 0) < 0 ||
        call_input(&c, w, "weight", 1, 4, 4, 0) < 0 || call_input(&c, b, "bias", 1, 1, 1, 1) < 0)
        return NULL;
    if (conv_output(&c, stride, padding) < 0)
        return NULL;
    RUN_OP(c, conv2d, c.be->conv2d(c.be, call_in(&c, 0), call_in(&c, 1), call_in(&c, 2), stride,
                                   padding, call_out(&c)));
}

static PyObject *py_conv2d_add(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"x", "weight", "bias", "res", "stride", "padding", "device", NULL};
    PyObject *x, *w, *b, *res;
    int stride = 1, padding = 0;
    const char *device = "cpu";
    op_call c;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOO|iis:conv2d_add", kwlist, &x, &w, &b, &res,
                                     &stride, &padding, &device) ||
        call_begin(&c, "conv2d_add", device) < 0 || call_input(&c, x, "x", 0, 4, 4, 0) < 0 ||
        call_input(&c, w, "weight", 1, 4, 4, 0) < 0 || call_input(&c, b, "bias", 1, 1, 1, 1) < 0 ||
        call_input(&c, res, "res", 0, 4, 4, 0) < 0)
        return NULL;
    if (conv_output(&c, stride, padding) < 0)
        return NULL;
    RUN_OP(c, conv2d_add, c.be->conv2d_add(c.be, call_in(&c, 0), call_in(&c, 1), call_in(&c, 2),
                                           stride, padding, call_in(&c, 3), call_out(&c)));
}

static PyObject *py_group_norm(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"x", "gamma", "beta", "groups", "eps", "silu", "device", NULL};
    PyObject *x, *g, *b;
    int groups, silu = 0;
    float eps = 1e-5f;
    const char *device = "cpu";
    op_call c;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOi|fps:group_norm", kwlist, &x, &g, &b,
                                     &groups, &eps, &silu, &device) ||
        call_begin(&c, "group_norm", device) < 0 || call_input(&c, x, "x", 0, 2, 4, 0) < 0 ||
        call_input(&c, g, "gamma", 1, 1, 1, 0) < 0 || call_input(&c, b, "beta", 1, 1, 1, 0) < 0 ||
        call_output(&c, c.host[0].ndim, c.host[0].shape) < 0)
        return NULL;
    RUN_OP(c, group_norm, c.be->group_norm(c.be, call_in(&c, 0), call_in(&c, 1), call_in(&c, 2),
                                           groups, eps, silu, call_out(&c)));
}

static PyObject *py_layer_norm(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"x", "gamma", "beta", "eps", "device", NULL};
    PyObject *x, *g, *b;
    float eps = 1e-5f;
    const char *device = "cpu";
    op_call c;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOO|fs:layer_norm", kwlist, &x, &g, &b, &eps,
                                     &device) ||
        call_begin(&c, "layer_norm", device) < 0 || call_input(&c, x, "x", 0, 1, 4, 0) < 0 ||
        call_input(&c, g, "gamma", 1, 1, 1, 0) < 0 || call_input(&c, b, "beta", 1, 1, 1, 0) < 0 ||
        call_output(&c, c.host[0].ndim, c.host[0].shape) < 0)
        return NULL;
    RUN_OP(c, layer_norm, c.be->layer_norm(c.be, call_in(&c, 0), call_in(&c, 1), call_in(&c, 2),
                                           eps, call_out(&c)));
}

static PyObject *py_attention(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"q", "k", "v", "heads", "causal", "device", NULL};
    PyObject *q, *k, *v;
    int heads, causal = 0;
    const char *device = "cpu";
    op_call c;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOi|ps:attention", kwlist, &q, &k, &v, &heads,
                                     &causal, &device) ||
        call_begin(&c, "attention", device) < 0 || call_input(&c, q, "q", 0, 3, 3, 0) < 0 ||
        call_input(&c, k, "k", 0, 3, 3, 0) < 0 || call_input(&c, v, "v", 0, 3, 3, 0) < 0 ||
        call_output(&c, 3, c.host[0].shape) < 0)
        return NULL;
    RUN_OP(c, attention, c.be->attention(c.be, call_in(&c, 0), call_in(&c, 1), call_in(&c, 2),
                                         heads, causal, call_out(&c)));
}

/* one array in, an output of the same shape */
#define UNARY_BEGIN(name)                                                                  \
    PyObject *x;                                                                           \
    const char *device = "cpu";                                                            \
    op_call c;                                                                             \
    static char *kwlist[] = {"x", "device", NULL};                                         \
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|s:" name, kwlist, &x, &device) ||        \
        call_begin(&c, name, device) < 0 || call_input(&c, x, "x", 0, 1, 4, 0) < 0)        \
        return NULL;

static PyObject *py_softmax(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    UNARY_BEGIN("softmax");
    if (call_output(&c, c.host[0].ndim, c.host[0].shape) < 0)
        return NULL;
    RUN_OP(c, softmax, c.be->softmax(c.be, call_in(&c, 0), call_out(&c)));
}

static PyObject *py_quick_gelu(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    UNARY_BEGIN("quick_gelu");
    if (call_output(&c, c.host[0].ndim, c.host[0].shape) < 0)
        return NULL;
    RUN_OP(c, quick_gelu, c.be->quick_gelu(c.be, call_in(&c, 0), call_out(&c)));
}

static PyObject *py_silu(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    UNARY_BEGIN("silu");
    if (call_output(&c, c.host[0].ndim, c.host[0].shape) < 0)
        return NULL;
    RUN_OP(c, silu, c.be->silu(c.be, call_in(&c, 0), call_out(&c)));
}

static PyObject *py_geglu(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    UNARY_BEGIN("geglu");
    int64_t shape[SD_MAX_DIMS];
    memcpy(shape, c.host[0].shape, sizeof shape);
    shape[c.host[0].ndim - 1] /= 2;
    if (call_output(&c, c.host[0].ndim, shape) < 0)
        return NULL;
    RUN_OP(c, geglu, c.be->geglu(c.be, call_in(&c, 0), call_out(&c)));
}

static PyObject *py_upsample_nearest2x(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    UNARY_BEGIN("upsample_nearest2x");
    int64_t shape[SD_MAX_DIMS];
    memcpy(shape, c.host[0].shape, sizeof shape);
    if (c.host[0].ndim != 4) {
        PyErr_SetString(PyExc_ValueError, "upsample_nearest2x: argument 'x' must have 4 dims");
        return NULL;
    }
    shape[2] *= 2;
    shape[3] *= 2;
    if (call_output(&c, 4, shape) < 0)
        return NULL;
    RUN_OP(c, upsample_nearest2x, c.be->upsample_nearest2x(c.be, call_in(&c, 0), call_out(&c)));
}

static PyObject *py_gelu(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"x", "approximate", "device", NULL};
    PyObject *x;
    const char *approximate = "none", *device = "cpu";
    op_call c;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|ss:gelu", kwlist, &x, &approximate, &device))
        return NULL;
    int tanh_approx = strcmp(approximate, "tanh") == 0;
    if (!tanh_approx && strcmp(approximate, "none") != 0) {
        PyErr_Format(PyExc_ValueError, "gelu: approximate must be 'none' or 'tanh', got '%s'",
                     approximate);
        return NULL;
    }
    if (call_begin(&c, "gelu", device) < 0 || call_input(&c, x, "x", 0, 1, 4, 0) < 0 ||
        call_output(&c, c.host[0].ndim, c.host[0].shape) < 0)
        return NULL;
    RUN_OP(c, gelu, c.be->gelu(c.be, call_in(&c, 0), tanh_approx, call_out(&c)));
}

static PyObject *py_scale(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"x", "s", "device", NULL};
    PyObject *x;
    float s;
    const char *device = "cpu";
    op_call c;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "Of|s:scale", kwlist, &x, &s, &device) ||
        call_begin(&c, "scale", device) < 0 || call_input(&c, x, "x", 0, 1, 4, 0) < 0 ||
        call_output(&c, c.host[0].ndim, c.host[0].shape) < 0)
        return NULL;
    RUN_OP(c, scale, c.be->scale(c.be, call_in(&c, 0), s, call_out(&c)));
}

static PyObject *binary(PyObject *args, PyObject *kw, const char *name, int is_mul) {
    static char *kwlist[] = {"a", "b", "device", NULL};
    PyObject *a, *b;
    const char *device = "cpu";
    op_call c;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|s", kwlist, &a, &b, &device) ||
        call_begin(&c, name, device) < 0 || call_input(&c, a, "a", 0, 1, 4, 0) < 0 ||
        call_input(&c, b, "b", 0, 1, 4, 0) < 0 ||
        call_output(&c, c.host[0].ndim, c.host[0].shape) < 0)
        return NULL;
    if (is_mul)
        RUN_OP(c, mul, c.be->mul(c.be, call_in(&c, 0), call_in(&c, 1), call_out(&c)));
    RUN_OP(c, add, c.be->add(c.be, call_in(&c, 0), call_in(&c, 1), call_out(&c)));
}

static PyObject *py_add(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    return binary(args, kw, "add", 0);
}

static PyObject *py_mul(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    return binary(args, kw, "mul", 1);
}

static PyObject *py_concat_channels(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"a", "b", "device", NULL};
    PyObject *a, *b;
    const char *device = "cpu";
    op_call c;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|s:concat_channels", kwlist, &a, &b, &device) ||
        call_begin(&c, "concat_channels", device) < 0 ||
        call_input(&c, a, "a", 0, 4, 4, 0) < 0 || call_input(&c, b, "b", 0, 4, 4, 0) < 0)
        return NULL;
    int64_t shape[4];
    memcpy(shape, c.host[0].shape, sizeof shape);
    shape[1] += c.host[1].shape[1];
    if (call_output(&c, 4, shape) < 0)
        return NULL;
    RUN_OP(c, concat_channels,
           c.be->concat_channels(c.be, call_in(&c, 0), call_in(&c, 1), call_out(&c)));
}

static PyObject *py_timestep_embedding(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"timesteps", "dim", "flip_sin_to_cos", "downscale_freq_shift",
                             "device", NULL};
    PyObject *t;
    int dim, flip = 1;
    float shift = 0.0f;
    const char *device = "cpu";
    op_call c;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "Oi|pfs:timestep_embedding", kwlist, &t, &dim,
                                     &flip, &shift, &device) ||
        call_begin(&c, "timestep_embedding", device) < 0 ||
        call_input(&c, t, "timesteps", 0, 1, 1, 0) < 0)
        return NULL;
    if (dim < 2 || dim > (1 << 20)) {
        PyErr_SetString(PyExc_ValueError, "timestep_embedding: dim must be in 2..1048576");
        return NULL;
    }
    int64_t shape[2] = {c.host[0].shape[0], dim};
    if (call_output(&c, 2, shape) < 0)
        return NULL;
    RUN_OP(c, timestep_embedding,
           c.be->timestep_embedding(c.be, call_in(&c, 0), dim, flip, shift, call_out(&c)));
}

static PyObject *py_embedding(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"table", "ids", "device", NULL};
    PyObject *table, *ids_obj;
    const char *device = "cpu";
    op_call c;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|s:embedding", kwlist, &table, &ids_obj,
                                     &device) ||
        call_begin(&c, "embedding", device) < 0 || call_input(&c, table, "table", 1, 2, 2, 0) < 0)
        return NULL;
    if (!PyArray_Check(ids_obj) || PyArray_TYPE((PyArrayObject *)ids_obj) != NPY_INT32 ||
        PyArray_NDIM((PyArrayObject *)ids_obj) != 1 ||
        !PyArray_IS_C_CONTIGUOUS((PyArrayObject *)ids_obj)) {
        PyErr_SetString(PyExc_TypeError,
                        "embedding: argument 'ids' must be a contiguous 1-D int32 array");
        return NULL;
    }
    PyArrayObject *ids = (PyArrayObject *)ids_obj;
    int64_t n = PyArray_DIM(ids, 0);
    if (n < 1) {
        PyErr_SetString(PyExc_ValueError, "embedding: argument 'ids' is empty");
        return NULL;
    }
    int64_t shape[2] = {n, c.host[0].shape[1]};
    if (call_output(&c, 2, shape) < 0)
        return NULL;
    const int32_t *id = PyArray_DATA(ids);
    RUN_OP(c, embedding, c.be->embedding(c.be, call_in(&c, 0), id, n, call_out(&c)));
}

static PyObject *py_pad_bottom_right(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"x", "bottom", "right", "device", NULL};
    PyObject *x;
    int bottom, right;
    const char *device = "cpu";
    op_call c;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "Oii|s:pad_bottom_right", kwlist, &x, &bottom,
                                     &right, &device) ||
        call_begin(&c, "pad_bottom_right", device) < 0 || call_input(&c, x, "x", 0, 4, 4, 0) < 0)
        return NULL;
    if (bottom < 0 || right < 0 || bottom > 65536 || right > 65536) {
        PyErr_SetString(PyExc_ValueError, "pad_bottom_right: padding must be in 0..65536");
        return NULL;
    }
    int64_t shape[4];
    memcpy(shape, c.host[0].shape, sizeof shape);
    shape[2] += bottom;
    shape[3] += right;
    if (call_output(&c, 4, shape) < 0)
        return NULL;
    RUN_OP(c, pad_bottom_right,
           c.be->pad_bottom_right(c.be, call_in(&c, 0), bottom, right, call_out(&c)));
}

static PyObject *py_transpose_last2(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"x", "device", NULL};
    PyObject *x;
    const char *device = "cpu";
    op_call c;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|s:transpose_last2", kwlist, &x, &device) ||
        call_begin(&c, "transpose_last2", device) < 0 || call_input(&c, x, "x", 0, 2, 4, 0) < 0)
        return NULL;
    int nd = c.host[0].ndim;
    int64_t shape[SD_MAX_DIMS];
    memcpy(shape, c.host[0].shape, sizeof shape);
    shape[nd - 2] = c.host[0].shape[nd - 1];
    shape[nd - 1] = c.host[0].shape[nd - 2];
    if (call_output(&c, nd, shape) < 0)
        return NULL;
    RUN_OP(c, transpose_last2, c.be->transpose_last2(c.be, call_in(&c, 0), call_out(&c)));
}

static PyObject *py_set_staging_dtype(PyObject *self, PyObject *arg) {
    (void)self;
    const char *name = PyUnicode_Check(arg) ? PyUnicode_AsUTF8(arg) : NULL;
    if (!name) {
        PyErr_SetString(PyExc_TypeError, "set_staging_dtype: expected a dtype name");
        return NULL;
    }
    sd_dtype dt;
    if (sd_dtype_from_name(name, "set_staging_dtype", &dt) < 0)
        return NULL;
    g_staging_dtype = dt;
    Py_RETURN_NONE;
}

static PyObject *py_get_staging_dtype(PyObject *self, PyObject *unused) {
    (void)self;
    (void)unused;
    return PyUnicode_FromString(sd_dtype_name(g_staging_dtype));
}

/* convert(x, dtype): x rounded to dtype by the backend's convert, returned as float32 */
static PyObject *py_convert(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"x", "dtype", "device", NULL};
    PyObject *x;
    const char *dtype = "float16", *device = "cpu";
    op_call c;
    sd_dtype to;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|ss:convert", kwlist, &x, &dtype, &device) ||
        sd_dtype_from_name(dtype, "convert", &to) < 0 || call_begin(&c, "convert", device) < 0 ||
        call_input(&c, x, "x", 1, 1, 4, 0) < 0 || call_output(&c, c.host[0].ndim, c.host[0].shape) < 0)
        return NULL;
    if (!c.be->convert)
        return unsupported(&c);
    sd_status s;
    Py_BEGIN_ALLOW_THREADS;
    /* the input as given, the output in `to`: each way through the backend's convert */
    sd_tensor mid = c.host[0];
    mid.dtype = to;
    mid.data = NULL;
    if (c.be->device == SD_CPU) {
        mid.data = malloc(sd_nbytes(&mid));
        s = mid.data ? SD_OK : sd_fail(SD_ERR_NOMEM, "convert: out of host memory");
        if (s == SD_OK)
            s = c.be->convert(c.be, &c.host[0], &mid);
        if (s == SD_OK)
            s = c.be->convert(c.be, &mid, &c.out_host);
        free(mid.data);
    } else {
        s = stage_one(c.be, &c.host[0], c.host[0].dtype, &c.dev[0]);
        c.present[0] = 1;
        if (s == SD_OK)
            s = c.be->alloc(c.be, &mid);
        c.out_dev = c.out_host;
        c.out_dev.data = NULL;
        if (s == SD_OK)
            s = c.be->alloc(c.be, &c.out_dev);
        if (s == SD_OK)
            s = c.be->convert(c.be, &c.dev[0], &mid);
        if (s == SD_OK)
            s = c.be->convert(c.be, &mid, &c.out_dev);
        s = call_unstage(&c, s);
        if (mid.data)
            c.be->free(c.be, &mid);
    }
    Py_END_ALLOW_THREADS;
    return call_end(&c, s);
}

#define KW (PyCFunction)(void (*)(void))
PyMethodDef sd_ops_methods[] = {
    {"linear", KW py_linear, METH_VARARGS | METH_KEYWORDS,
     "linear(x (..., K), weight (N, K), bias=None (N)) -> (..., N)"},
    {"conv2d_add", KW py_conv2d_add, METH_VARARGS | METH_KEYWORDS,
     "conv2d_add(x, weight, bias or None, res (B, OC, OH, OW) or (B, OC, 1, 1), stride=1, "
     "padding=0) -> conv2d + res"},
    {"linear_add", KW py_linear_add, METH_VARARGS | METH_KEYWORDS,
     "linear_add(x (..., K), weight (N, K), bias (N) or None, res (..., N)) -> linear + res"},
    {"matmul", KW py_matmul, METH_VARARGS | METH_KEYWORDS,
     "matmul(a (M, K), b (K, N) or (N, K) with trans_b) -> (M, N)"},
    {"conv2d", KW py_conv2d, METH_VARARGS | METH_KEYWORDS,
     "conv2d(x (B, C, H, W), weight (OC, C, KH, KW), bias=None, stride=1, padding=0)"},
    {"group_norm", KW py_group_norm, METH_VARARGS | METH_KEYWORDS,
     "group_norm(x (B, C, ...), gamma (C), beta (C), groups, eps=1e-5, silu=False)"},
    {"layer_norm", KW py_layer_norm, METH_VARARGS | METH_KEYWORDS,
     "layer_norm(x (..., C), gamma (C), beta (C), eps=1e-5)"},
    {"attention", KW py_attention, METH_VARARGS | METH_KEYWORDS,
     "attention(q (B, Tq, H*D), k (B, Tk, H*D), v (B, Tk, H*D), heads, causal=False)"},
    {"softmax", KW py_softmax, METH_VARARGS | METH_KEYWORDS, "softmax(x) over the last dim"},
    {"gelu", KW py_gelu, METH_VARARGS | METH_KEYWORDS, "gelu(x, approximate='none'|'tanh')"},
    {"quick_gelu", KW py_quick_gelu, METH_VARARGS | METH_KEYWORDS,
     "quick_gelu(x) = x * sigmoid(1.702 x)"},
    {"silu", KW py_silu, METH_VARARGS | METH_KEYWORDS, "silu(x) = x * sigmoid(x)"},
    {"geglu", KW py_geglu, METH_VARARGS | METH_KEYWORDS,
     "geglu(x (..., 2N)) -> x[..., :N] * gelu(x[..., N:])"},
    {"upsample_nearest2x", KW py_upsample_nearest2x, METH_VARARGS | METH_KEYWORDS,
     "upsample_nearest2x(x (B, C, H, W)) -> (B, C, 2H, 2W)"},
    {"concat_channels", KW py_concat_channels, METH_VARARGS | METH_KEYWORDS,
     "concat_channels(a (B, Ca, H, W), b (B, Cb, H, W)) -> (B, Ca + Cb, H, W)"},
    {"add", KW py_add, METH_VARARGS | METH_KEYWORDS, "add(a, b): b same shape, trailing or (B, C)"},
    {"mul", KW py_mul, METH_VARARGS | METH_KEYWORDS, "mul(a, b): b same shape, trailing or (B, C)"},
    {"scale", KW py_scale, METH_VARARGS | METH_KEYWORDS, "scale(x, s) = x * s"},
    {"convert", KW py_convert, METH_VARARGS | METH_KEYWORDS,
     "convert(x, dtype='float16'): x rounded to dtype on the backend, as float32"},
    {"set_staging_dtype", py_set_staging_dtype, METH_O,
     "set_staging_dtype(name): on a GPU, run the ops on float32 arrays in this dtype"},
    {"get_staging_dtype", py_get_staging_dtype, METH_NOARGS, "the dtype set_staging_dtype set"},
    {"timestep_embedding", KW py_timestep_embedding, METH_VARARGS | METH_KEYWORDS,
     "timestep_embedding(timesteps (N), dim, flip_sin_to_cos=True, downscale_freq_shift=0)"},
    {"embedding", KW py_embedding, METH_VARARGS | METH_KEYWORDS,
     "embedding(table (V, C), ids int32 (n)) -> (n, C): rows of the table"},
    {"pad_bottom_right", KW py_pad_bottom_right, METH_VARARGS | METH_KEYWORDS,
     "pad_bottom_right(x (B, C, H, W), bottom, right) -> (B, C, H + bottom, W + right)"},
    {"transpose_last2", KW py_transpose_last2, METH_VARARGS | METH_KEYWORDS,
     "transpose_last2(x (..., M, N)) -> (..., N, M), e.g. (B, C, H*W) <-> (B, H*W, C)"},
    {NULL, NULL, 0, NULL},
};
