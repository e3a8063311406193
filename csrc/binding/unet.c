/* sdcore._C.UNet: the UNet2DConditionModel built from a Weights set and a diffusers
 * config dict.
 *
 * The config is the dict of the model's config.json (or UNet2DConditionModel.config).
 * Fields it lacks take diffusers' defaults; fields that would select an architecture
 * sdcore does not implement must hold the SD 1.x/2.x value; unknown fields are an error,
 * so a config that means something else is never run silently. */
#include "binding.h"

#include <math.h>
#include <string.h>

#include "models/unet.h"

typedef struct {
    PyObject_HEAD
    sd_unet *model;
    const sd_backend *be;
    PyObject *weights; /* the Weights whose tensors the model borrows */
    PyObject *config;  /* a copy of the dict given */
    PyThread_type_lock lock; /* one forward at a time: the activations are the model's */
} UNetObject;

static PyObject *unet_type;

sd_unet *sd_unet_from_py(PyObject *obj, PyThread_type_lock *lock, const sd_backend **be) {
    if (!unet_type || !PyObject_TypeCheck(obj, (PyTypeObject *)unet_type)) {
        PyErr_Format(PyExc_TypeError, "expected sdcore._C.UNet, got %s", Py_TYPE(obj)->tp_name);
        return NULL;
    }
    UNetObject *u = (UNetObject *)obj;
    *lock = u->lock;
    *be = u->be;
    return u->model;
}

/* ------------------------------------------------------------- config ---- */

static int config_error(const char *field, const char *what) {
    PyErr_Format(PyExc_ValueError, "UNet config: '%s' %s", field, what);
    return -1;
}

/* an int (not a bool) in [lo, hi] */
static int parse_int(PyObject *v, const char *field, long lo, long hi, int *out) {
    if (PyBool_Check(v) || !PyIndex_Check(v))
        return config_error(field, "must be an integer");
    long x = PyLong_AsLong(v);
    if (x == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        return config_error(field, "is out of range");
    }
    if (x < lo || x > hi) {
        PyErr_Format(PyExc_ValueError, "UNet config: '%s' must be in %ld..%ld, got %ld", field,
                     lo, hi, x);
        return -1;
    }
    *out = (int)x;
    return 0;
}

static int parse_bool(PyObject *v, const char *field, int *out) {
    if (PyBool_Check(v)) {
        *out = v == Py_True;
        return 0;
    }
    int x;
    if (PyIndex_Check(v) && parse_int(v, field, 0, 1, &x) == 0) {
        *out = x;
        return 0;
    }
    PyErr_Clear();
    return config_error(field, "must be true or false");
}

static int parse_float(PyObject *v, const char *field, float *out) {
    if (PyBool_Check(v) || !(PyFloat_Check(v) || PyIndex_Check(v)))
        return config_error(field, "must be a number");
    double x = PyFloat_AsDouble(v);
    if (x == -1.0 && PyErr_Occurred())
        return -1;
    if (!isfinite(x))
        return config_error(field, "must be finite");
    *out = (float)x;
    return 0;
}

/* an int for every block, or a list/tuple with one per block */
static int parse_int_per_block(PyObject *v, const char *field, int n, long lo, long hi,
                               int *out) {
    if (PyList_Check(v) || PyTuple_Check(v)) {
        if (PySequence_Size(v) != n) {
            PyErr_Format(PyExc_ValueError, "UNet config: '%s' must have %d entries (one per block)",
                         field, n);
            return -1;
        }
        for (int i = 0; i < n; i++) {
            char name[96];
            snprintf(name, sizeof name, "%s[%d]", field, i);
            if (parse_int(PySequence_Fast_GET_ITEM(v, i), name, lo, hi, &out[i]) < 0)
                return -1;
        }
        return 0;
    }
    int x;
    if (parse_int(v, field, lo, hi, &x) < 0)
        return -1;
    for (int i = 0; i < n; i++)
        out[i] = x;
    return 0;
}

/* a list of n block type names, each one of the two kinds: 1 for `attn_name`, 0 for `plain_name` */
static int parse_block_types(PyObject *v, const char *field, int n, const char *attn_name,
                             const char *plain_name, int *out) {
    if (!(PyList_Check(v) || PyTuple_Check(v)) || PySequence_Size(v) != n) {
        PyErr_Format(PyExc_ValueError,
                     "UNet config: '%s' must be a list of %d block types (one per entry of "
                     "block_out_channels)",
                     field, n);
        return -1;
    }
    for (int i = 0; i < n; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(v, i);
        const char *s = PyUnicode_Check(item) ? PyUnicode_AsUTF8(item) : NULL;
        if (s && strcmp(s, attn_name) == 0)
            out[i] = 1;
        else if (s && strcmp(s, plain_name) == 0)
            out[i] = 0;
        else {
            PyErr_Clear();
            PyErr_Format(PyExc_ValueError, "UNet config: '%s[%d]' must be '%s' or '%s', got %R",
                         field, i, attn_name, plain_name, item);
            return -1;
        }
    }
    return 0;
}

/* Fields that choose parts of UNet2DConditionModel sdcore does not have: each must hold one
 * of the values fixed_accepted gives, the ones SD 1.x and 2.x use. */
static const char *fixed_fields[] = {
    "center_input_sample",
    "mid_block_type",
    "only_cross_attention",
    "downsample_padding",
    "mid_block_scale_factor",
    "act_fn",
    "reverse_transformer_layers_per_block",
    "encoder_hid_dim",
    "encoder_hid_dim_type",
    "num_attention_heads",
    "dual_cross_attention",
    "class_embed_type",
    "addition_embed_type",
    "addition_time_embed_dim",
    "num_class_embeds",
    "resnet_time_scale_shift",
    "resnet_skip_time_act",
    "resnet_out_scale_factor",
    "time_embedding_type",
    "time_embedding_act_fn",
    "timestep_post_act",
    "time_cond_proj_dim",
    "conv_in_kernel",
    "conv_out_kernel",
    "projection_class_embeddings_input_dim",
    "attention_type",
    "class_embeddings_concat",
    "mid_block_only_cross_attention",
    "cross_attention_norm",
};

static PyObject *fixed_accepted(const char *name) {
    if (strcmp(name, "mid_block_type") == 0)
        return Py_BuildValue("(s)", "UNetMidBlock2DCrossAttn");
    if (strcmp(name, "act_fn") == 0)
        return Py_BuildValue("(s)", "silu");
    if (strcmp(name, "resnet_time_scale_shift") == 0)
        return Py_BuildValue("(s)", "default");
    if (strcmp(name, "time_embedding_type") == 0)
        return Py_BuildValue("(s)", "positional");
    if (strcmp(name, "attention_type") == 0)
        return Py_BuildValue("(s)", "default");
    if (strcmp(name, "downsample_padding") == 0 || strcmp(name, "mid_block_scale_factor") == 0 ||
        strcmp(name, "resnet_out_scale_factor") == 0)
        return Py_BuildValue("(i)", 1);
    if (strcmp(name, "conv_in_kernel") == 0 || strcmp(name, "conv_out_kernel") == 0)
        return Py_BuildValue("(i)", 3);
    if (strcmp(name, "mid_block_only_cross_attention") == 0)
        return Py_BuildValue("(OO)", Py_None, Py_False);
    if (strcmp(name, "center_input_sample") == 0 || strcmp(name, "only_cross_attention") == 0 ||
        strcmp(name, "dual_cross_attention") == 0 || strcmp(name, "resnet_skip_time_act") == 0 ||
        strcmp(name, "class_embeddings_concat") == 0)
        return Py_BuildValue("(O)", Py_False);
    return Py_BuildValue("(O)", Py_None);
}

/* accepted but without effect on the computation */
static const char *ignored_fields[] = {
    "sample_size",     /* the training resolution; any multiple of 2^(blocks-1) runs */
    "upcast_attention", /* sdcore's attention is f32 on the CPU and accumulates in f32 on CUDA */
    "dropout",          /* inference */
    "addition_embed_type_num_heads", /* used only with an addition embedding */
};

static const char *used_fields[] = {
    "in_channels",        "out_channels",      "block_out_channels",
    "layers_per_block",   "down_block_types",  "up_block_types",
    "cross_attention_dim", "attention_head_dim", "transformer_layers_per_block",
    "norm_num_groups",    "norm_eps",          "use_linear_projection",
    "flip_sin_to_cos",    "freq_shift",        "time_embedding_dim",
};

static int in_list(const char *name, const char **list, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (strcmp(name, list[i]) == 0)
            return 1;
    return 0;
}

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

static int check_fields(PyObject *dict) {
    PyObject *key, *value;
    Py_ssize_t pos = 0;
    while (PyDict_Next(dict, &pos, &key, &value)) {
        const char *name = PyUnicode_Check(key) ? PyUnicode_AsUTF8(key) : NULL;
        if (!name) {
            PyErr_Clear();
            PyErr_SetString(PyExc_ValueError, "UNet config: field names must be str");
            return -1;
        }
        if (name[0] == '_' || in_list(name, ignored_fields, COUNT(ignored_fields)) ||
            in_list(name, used_fields, COUNT(used_fields)))
            continue;
        int known = 0;
        for (size_t i = 0; i < COUNT(fixed_fields); i++) {
            if (strcmp(name, fixed_fields[i]) != 0)
                continue;
            known = 1;
            PyObject *accepted = fixed_accepted(name);
            if (!accepted)
                return -1;
            int ok = PySequence_Contains(accepted, value);
            Py_DECREF(accepted);
            if (ok < 0) {
                PyErr_Clear();
                ok = 0;
            }
            if (!ok) {
                PyObject *again = fixed_accepted(name);
                PyErr_Format(PyExc_ValueError,
                             "UNet config: '%s' = %R is not supported (sdcore implements %R)",
                             name, value, again ? PyTuple_GET_ITEM(again, 0) : Py_None);
                Py_XDECREF(again);
                return -1;
            }
        }
        if (!known) {
            PyErr_Format(PyExc_ValueError, "UNet config: unknown field '%s'", name);
            return -1;
        }
    }
    return 0;
}

/* A new reference to the value of `name`, or else to `fallback` (which it takes). */
static PyObject *field(PyObject *dict, const char *name, PyObject *fallback) {
    PyObject *v = PyDict_GetItemString(dict, name);
    if (v) {
        Py_XDECREF(fallback);
        return Py_NewRef(v);
    }
    return fallback;
}

/* Read a diffusers config dict into c (defaults as UNet2DConditionModel's). */
static int config_from_dict(PyObject *dict, sd_unet_config *c) {
    if (!PyDict_Check(dict)) {
        PyErr_SetString(PyExc_TypeError, "UNet: config must be a dict");
        return -1;
    }
    if (check_fields(dict) < 0)
        return -1;
    memset(c, 0, sizeof *c);
    int rc = -1, n, tmp;
    PyObject *v = NULL;

#define GET(name, ...) (Py_XDECREF(v), v = field(dict, name, Py_BuildValue(__VA_ARGS__)))
    if (!GET("block_out_channels", "(iiii)", 320, 640, 1280, 1280))
        goto done;
    if (!(PyList_Check(v) || PyTuple_Check(v)) || PySequence_Size(v) < 1 ||
        PySequence_Size(v) > SD_UNET_MAX_BLOCKS) {
        config_error("block_out_channels", "must be a list of 1 to 4 channel counts");
        goto done;
    }
    n = c->num_blocks = (int)PySequence_Size(v);
    if (parse_int_per_block(v, "block_out_channels", n, 1, 65536, c->block_out_channels) < 0)
        goto done;
    if (!GET("in_channels", "i", 4) || parse_int(v, "in_channels", 1, 4096, &c->in_channels) < 0)
        goto done;
    if (!GET("out_channels", "i", 4) ||
        parse_int(v, "out_channels", 1, 4096, &c->out_channels) < 0)
        goto done;
    if (!GET("layers_per_block", "i", 2) ||
        parse_int_per_block(v, "layers_per_block", n, 1, SD_UNET_MAX_LAYERS,
                            c->layers_per_block) < 0)
        goto done;
    if (!GET("down_block_types", "(ssss)", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
             "CrossAttnDownBlock2D", "DownBlock2D") ||
        parse_block_types(v, "down_block_types", n, "CrossAttnDownBlock2D", "DownBlock2D",
                          c->down_cross_attention) < 0)
        goto done;
    if (!GET("up_block_types", "(ssss)", "UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
             "CrossAttnUpBlock2D") ||
        parse_block_types(v, "up_block_types", n, "CrossAttnUpBlock2D", "UpBlock2D",
                          c->up_cross_attention) < 0)
        goto done;
    if (!GET("cross_attention_dim", "i", 1280) ||
        parse_int(v, "cross_attention_dim", 1, 65536, &c->cross_attention_dim) < 0)
        goto done;
    /* diffusers' naming quirk: attention_head_dim is the number of heads */
    if (!GET("attention_head_dim", "i", 8) ||
        parse_int_per_block(v, "attention_head_dim", n, 1, 65536, c->attention_heads) < 0)
        goto done;
    if (!GET("transformer_layers_per_block", "i", 1) ||
        parse_int_per_block(v, "transformer_layers_per_block", n, 1, 64,
                            c->transformer_layers_per_block) < 0)
        goto done;
    if (!GET("norm_num_groups", "i", 32) ||
        parse_int(v, "norm_num_groups", 1, 65536, &c->norm_num_groups) < 0)
        goto done;
    if (!GET("norm_eps", "d", 1e-5) || parse_float(v, "norm_eps", &c->norm_eps) < 0)
        goto done;
    if (!(c->norm_eps > 0.0f)) {
        config_error("norm_eps", "must be positive");
        goto done;
    }
    if (!GET("use_linear_projection", "O", Py_False) ||
        parse_bool(v, "use_linear_projection", &c->use_linear_projection) < 0)
        goto done;
    if (!GET("flip_sin_to_cos", "O", Py_True) ||
        parse_bool(v, "flip_sin_to_cos", &c->flip_sin_to_cos) < 0)
        goto done;
    if (!GET("freq_shift", "i", 0) || parse_float(v, "freq_shift", &c->freq_shift) < 0)
        goto done;
    if (!GET("time_embedding_dim", "O", Py_None))
        goto done;
    if (v != Py_None) {
        if (parse_int(v, "time_embedding_dim", 1, 1 << 20, &tmp) < 0)
            goto done;
        if (tmp != 4 * c->block_out_channels[0]) {
            config_error("time_embedding_dim", "must be 4 * block_out_channels[0] (or None)");
            goto done;
        }
    }
#undef GET
    rc = 0;
done:
    Py_XDECREF(v);
    return rc;
}

/* ------------------------------------------------------------- the type -- */

static PyObject *unet_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"weights", "config", "device", "dtype", NULL};
    PyObject *weights_obj, *config;
    const char *device = "cpu", *dtype = "float32";
    sd_dtype act;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|ss:UNet", kwlist, &weights_obj, &config,
                                     &device, &dtype) ||
        sd_dtype_from_name(dtype, "UNet", &act) < 0)
        return NULL;
    sd_weights *w = sd_weights_from_py(weights_obj, "UNet", "weights");
    if (!w)
        return NULL;
    sd_unet_config cfg;
    if (config_from_dict(config, &cfg) < 0)
        return NULL;
    const sd_backend *be = sd_backend_from_name(device);
    if (!be)
        return NULL;
    UNetObject *self = (UNetObject *)type->tp_alloc(type, 0);
    if (!self)
        return NULL;
    self->be = be;
    self->weights = Py_NewRef(weights_obj);
    self->config = PyDict_Copy(config);
    self->lock = sd_model_lock_new(be);
    if (!self->config || !self->lock) {
        if (!PyErr_Occurred())
            PyErr_NoMemory();
        Py_DECREF(self);
        return NULL;
    }
    sd_status s;
    Py_BEGIN_ALLOW_THREADS;
    s = sd_unet_create(&cfg, w, be, &self->model);
    if (s == SD_OK)
        s = sd_unet_set_activation_dtype(self->model, act);
    Py_END_ALLOW_THREADS;
    if (s != SD_OK) {
        Py_DECREF(self);
        return sd_raise(s);
    }
    return (PyObject *)self;
}

static void unet_dealloc(UNetObject *self) {
    PyTypeObject *tp = Py_TYPE(self);
    sd_unet_free(self->model);
    sd_model_lock_free(self->lock);
    Py_XDECREF(self->weights);
    Py_XDECREF(self->config);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

/* timesteps: a number or a 1-d array of B numbers, as float32 in host memory */
static PyArrayObject *timesteps_arg(PyObject *obj, int64_t B) {
    PyArrayObject *t = (PyArrayObject *)PyArray_FROMANY(
        obj, NPY_FLOAT32, 0, 1, NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED | NPY_ARRAY_FORCECAST);
    if (!t) {
        PyErr_Clear();
        PyErr_SetString(PyExc_TypeError,
                        "UNet.forward: 'timesteps' must be a number or a 1-d array of numbers");
        return NULL;
    }
    if (PyArray_NDIM(t) == 1 && PyArray_DIM(t, 0) != B) {
        PyErr_Format(PyExc_ValueError,
                     "UNet.forward: 'timesteps' has %ld entries, the batch has %lld",
                     (long)PyArray_DIM(t, 0), (long long)B);
        Py_DECREF(t);
        return NULL;
    }
    npy_intp dims[1] = {(npy_intp)B};
    PyArrayObject *full = (PyArrayObject *)PyArray_SimpleNew(1, dims, NPY_FLOAT32);
    if (!full) {
        Py_DECREF(t);
        return NULL;
    }
    const float *src = PyArray_DATA(t);
    float *dst = PyArray_DATA(full);
    for (int64_t i = 0; i < B; i++) {
        dst[i] = PyArray_NDIM(t) == 0 ? src[0] : src[i];
        if (!isfinite(dst[i])) {
            PyErr_SetString(PyExc_ValueError, "UNet.forward: 'timesteps' must be finite");
            Py_DECREF(t);
            Py_DECREF(full);
            return NULL;
        }
    }
    Py_DECREF(t);
    return full;
}

/* Copy host inputs to the backend, run, copy the result back (a plain call on the CPU). */
static sd_status run_forward(UNetObject *self, const sd_tensor *sample, const float *timesteps,
                             const sd_tensor *context, sd_tensor *out) {
    const sd_backend *be = self->be;
    if (be->device == SD_CPU)
        return sd_unet_forward(self->model, sample, timesteps, context, out);
    sd_tensor ds = *sample, dc = *context, dout = *out;
    ds.data = dc.data = dout.data = NULL;
    sd_status s = be->alloc(be, &ds);
    if (s == SD_OK && (s = be->alloc(be, &dc)) == SD_OK && (s = be->alloc(be, &dout)) == SD_OK &&
        (s = be->upload(be, &ds, sample->data)) == SD_OK &&
        (s = be->upload(be, &dc, context->data)) == SD_OK &&
        (s = sd_unet_forward(self->model, &ds, timesteps, &dc, &dout)) == SD_OK &&
        (s = be->synchronize(be)) == SD_OK)
        s = be->download(be, out->data, &dout);
    if (ds.data)
        be->free(be, &ds);
    if (dc.data)
        be->free(be, &dc);
    if (dout.data)
        be->free(be, &dout);
    return s;
}

static PyObject *unet_forward(UNetObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"sample", "timesteps", "context", NULL};
    PyObject *sample_obj, *t_obj, *context_obj;
    PyArrayObject *t = NULL;
    PyObject *out = NULL;
    sd_tensor sample, context, out_t;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOO:forward", kwlist, &sample_obj, &t_obj,
                                     &context_obj))
        return NULL;
    if (sd_array_arg(sample_obj, "UNet.forward", "sample", 0, 4, 4, &sample) < 0 ||
        sd_array_arg(context_obj, "UNet.forward", "context", 0, 3, 3, &context) < 0)
        return NULL;
    const sd_unet_config *c = sd_unet_get_config(self->model);
    int64_t B = sample.shape[0], H = sample.shape[2], W = sample.shape[3];
    if (!(t = timesteps_arg(t_obj, B)))
        return NULL;
    npy_intp dims[4] = {(npy_intp)B, c->out_channels, (npy_intp)H, (npy_intp)W};
    out = PyArray_SimpleNew(4, dims, NPY_FLOAT32);
    if (!out) {
        Py_DECREF(t);
        return NULL;
    }
    int64_t oshape[4] = {B, c->out_channels, H, W};
    out_t = sd_tensor_view(PyArray_DATA((PyArrayObject *)out), SD_F32, SD_CPU, 4, oshape);
    sd_status s;
    Py_BEGIN_ALLOW_THREADS;
    PyThread_acquire_lock(self->lock, WAIT_LOCK);
    s = run_forward(self, &sample, PyArray_DATA(t), &context, &out_t);
    PyThread_release_lock(self->lock);
    Py_END_ALLOW_THREADS;
    Py_DECREF(t);
    if (s != SD_OK) {
        Py_DECREF(out);
        return sd_raise(s);
    }
    return out;
}

static PyObject *unet_get_config(UNetObject *self, void *closure) {
    (void)closure;
    return PyDict_Copy(self->config);
}

static PyObject *unet_get_activation_bytes(UNetObject *self, void *closure) {
    (void)closure;
    return PyLong_FromSize_t(sd_unet_activation_bytes(self->model));
}

static PyObject *unet_get_device(UNetObject *self, void *closure) {
    (void)closure;
    return PyUnicode_FromString(self->be->name);
}

static PyObject *unet_use_graphs(UNetObject *self, PyObject *arg) {
    int on = PyObject_IsTrue(arg);
    if (on < 0)
        return NULL;
    PyThread_acquire_lock(self->lock, WAIT_LOCK);
    sd_unet_use_graphs(self->model, on && self->be->graph_begin != NULL);
    PyThread_release_lock(self->lock);
    Py_RETURN_NONE;
}

static PyMethodDef unet_methods[] = {
    {"use_graphs", (PyCFunction)unet_use_graphs, METH_O,
     "use_graphs(on): replay a recorded graph per input shape (GPU; on by default)"},
    {"forward", (PyCFunction)(void (*)(void))unet_forward, METH_VARARGS | METH_KEYWORDS,
     "forward(sample (B, in, h, w), timesteps (B,) or a number, context (B, T, cross_dim))\n"
     "-> noise prediction (B, out, h, w), all float32"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef unet_getset[] = {
    {"config", (getter)unet_get_config, NULL, "the config dict the model was built from", NULL},
    {"activation_bytes", (getter)unet_get_activation_bytes, NULL,
     "bytes of the activation buffer held (sized before each forward by planning it)", NULL},
    {"device", (getter)unet_get_device, NULL, "the backend the model runs on", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot unet_slots[] = {
    {Py_tp_new, unet_new},
    {Py_tp_dealloc, unet_dealloc},
    {Py_tp_methods, unet_methods},
    {Py_tp_getset, unet_getset},
    {Py_tp_doc, "UNet(weights, config: dict, device='cpu', dtype='float32'): diffusers' UNet2DConditionModel "
                "(SD 1.x/2.x) from tensors under their diffusers names."},
    {0, NULL},
};

static PyType_Spec unet_spec = {
    .name = "sdcore._C.UNet",
    .basicsize = sizeof(UNetObject),
    .flags = Py_TPFLAGS_DEFAULT,
    .slots = unet_slots,
};

/* unet_tensors(config) -> [(name, shape, required)]: every tensor the UNet of this config
 * reads (sd_unet_tensors), for checking a checkpoint before building the model */
static PyObject *py_unet_tensors(PyObject *self, PyObject *config) {
    (void)self;
    sd_unet_config cfg;
    if (config_from_dict(config, &cfg) < 0)
        return NULL;
    sd_tensor_decls d;
    sd_decls_init(&d);
    return sd_decls_to_py(sd_unet_tensors(&cfg, &d), &d);
}

PyMethodDef sd_unet_methods[] = {
    {"unet_tensors", py_unet_tensors, METH_O,
     "unet_tensors(config: dict) -> [(name, shape, required)]: every tensor of the "
     "UNet2DConditionModel with this config, under its diffusers name; required False for "
     "the attentions' q/k/v biases, used when present"},
    {NULL, NULL, 0, NULL},
};

int sd_unet_type_init(PyObject *module) {
    PyObject *type = PyType_FromModuleAndSpec(module, &unet_spec, NULL);
    if (!type)
        return -1;
    unet_type = type; /* the module keeps it alive */
    int rc = PyModule_AddObjectRef(module, "UNet", type);
    Py_DECREF(type);
    return rc;
}
