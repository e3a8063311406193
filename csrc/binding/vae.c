/* sdcore._C.VAE: the KL autoencoder on a Weights set.
 *
 * The config arrives as plain numbers; sdcore/vae.py reads diffusers' AutoencoderKL
 * config dict and names any bad field before it gets here. */
#include "binding.h"

#include "models/vae.h"

typedef struct {
    PyObject_HEAD
    sd_vae *model;
    const sd_backend *be;
    sd_vae_config cfg;
    PyObject *weights;
    PyThread_type_lock lock; /* one call at a time: the activations are the model's */
} VAEObject;

static PyObject *vae_type;

sd_vae *sd_vae_from_py(PyObject *obj, PyThread_type_lock *lock, const sd_backend **be) {
    if (!vae_type || !PyObject_TypeCheck(obj, (PyTypeObject *)vae_type)) {
        PyErr_Format(PyExc_TypeError, "expected sdcore._C.VAE, got %s", Py_TYPE(obj)->tp_name);
        return NULL;
    }
    VAEObject *v = (VAEObject *)obj;
    *lock = v->lock;
    *be = v->be;
    return v->model;
}

/* block_out_channels: a tuple of 1 to SD_VAE_MAX_BLOCKS channel counts */
static int parse_blocks(PyObject *blocks, sd_vae_config *cfg) {
    if (!PyTuple_Check(blocks) || PyTuple_Size(blocks) < 1 ||
        PyTuple_Size(blocks) > SD_VAE_MAX_BLOCKS) {
        PyErr_Format(PyExc_ValueError, "VAE: block_out_channels must be a tuple of 1 to %d ints",
                     SD_VAE_MAX_BLOCKS);
        return -1;
    }
    cfg->num_blocks = (int)PyTuple_Size(blocks);
    for (int i = 0; i < cfg->num_blocks; i++) {
        long c = PyLong_AsLong(PyTuple_GET_ITEM(blocks, i));
        if (c == -1 && PyErr_Occurred())
            return -1;
        if (c < 1 || c > (1 << 20)) { /* checked before the cast to int can wrap */
            PyErr_Format(PyExc_ValueError, "VAE: block_out_channels[%d] must be in 1..%d, got %ld",
                         i, 1 << 20, c);
            return -1;
        }
        cfg->block_out_channels[i] = (int)c;
    }
    return 0;
}

static PyObject *vae_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"weights", "in_channels", "out_channels", "latent_channels",
                             "block_out_channels", "layers_per_block", "norm_num_groups",
                             "mid_attention", "with_encoder", "device", "dtype", NULL};
    PyObject *weights_obj, *blocks;
    sd_vae_config cfg = {0};
    int with_encoder = 1;
    const char *device = "cpu", *dtype = "float32";
    sd_dtype act;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OiiiOiip|pss:VAE", kwlist, &weights_obj,
                                     &cfg.in_channels, &cfg.out_channels, &cfg.latent_channels,
                                     &blocks, &cfg.layers_per_block, &cfg.norm_num_groups,
                                     &cfg.mid_attention, &with_encoder, &device, &dtype) ||
        sd_dtype_from_name(dtype, "VAE", &act) < 0 || parse_blocks(blocks, &cfg) < 0)
        return NULL;
    sd_weights *w = sd_weights_from_py(weights_obj, "VAE", "weights");
    if (!w)
        return NULL;
    const sd_backend *be = sd_backend_from_name(device);
    if (!be)
        return NULL;
    VAEObject *self = (VAEObject *)type->tp_alloc(type, 0);
    if (!self)
        return NULL;
    self->lock = sd_model_lock_new(be);
    if (!self->lock) {
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    sd_status s;
    Py_BEGIN_ALLOW_THREADS;
    s = sd_vae_create(&cfg, w, with_encoder, be, &self->model);
    if (s == SD_OK)
        s = sd_vae_set_activation_dtype(self->model, act);
    Py_END_ALLOW_THREADS;
    if (s != SD_OK) {
        Py_DECREF(self);
        return sd_raise(s);
    }
    self->be = be;
    self->cfg = cfg;
    self->weights = Py_NewRef(weights_obj);
    return (PyObject *)self;
}

static void vae_dealloc(VAEObject *self) {
    PyTypeObject *tp = Py_TYPE(self);
    sd_vae_free(self->model);
    sd_model_lock_free(self->lock);
    Py_XDECREF(self->weights);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

/* in -> out (and out2 when the call has a second output, else NULL) */
typedef sd_status (*vae_fn)(sd_vae *, const sd_tensor *, sd_tensor *, sd_tensor *);

static sd_status run_decode(sd_vae *v, const sd_tensor *z, sd_tensor *image, sd_tensor *unused) {
    (void)unused;
    return sd_vae_decode(v, z, image);
}

/* Run decode or encode: host input -> backend -> host output(s). n_out 2 returns a tuple. */
static PyObject *vae_run(VAEObject *self, PyObject *arg, const char *op, int in_c, int out_c,
                         int up, int n_out, vae_fn fn) {
    sd_tensor in;
    if (sd_array_arg(arg, op, "x", 0, 4, 4, &in) < 0)
        return NULL;
    int64_t f = (int64_t)1 << (self->cfg.num_blocks - 1);
    if (in.shape[1] != in_c || (!up && (in.shape[2] % f || in.shape[3] % f))) {
        PyErr_Format(PyExc_ValueError, "%s: argument 'x' must be (B, %d, H, W)%s", op, in_c,
                     up ? "" : " with H and W multiples of the downsampling factor");
        return NULL;
    }
    npy_intp dims[4] = {in.shape[0], out_c, up ? in.shape[2] * f : in.shape[2] / f,
                        up ? in.shape[3] * f : in.shape[3] / f};
    int64_t oshape[4] = {dims[0], dims[1], dims[2], dims[3]};
    PyObject *outs[2] = {NULL, NULL};
    sd_tensor o[2];
    for (int i = 0; i < n_out; i++) {
        outs[i] = PyArray_SimpleNew(4, dims, NPY_FLOAT32);
        if (!outs[i]) {
            Py_XDECREF(outs[0]);
            return NULL;
        }
        o[i] = sd_tensor_view(PyArray_DATA((PyArrayObject *)outs[i]), SD_F32, SD_CPU, 4, oshape);
    }
    const sd_backend *be = self->be;
    sd_status s = SD_OK;
    Py_BEGIN_ALLOW_THREADS;
    PyThread_acquire_lock(self->lock, WAIT_LOCK);
    if (be->device == SD_CPU) {
        s = fn(self->model, &in, &o[0], n_out > 1 ? &o[1] : NULL);
    } else {
        sd_tensor din = in, dout[2] = {o[0], o[1]};
        din.data = dout[0].data = dout[1].data = NULL;
        din.device = dout[0].device = dout[1].device = be->device;
        s = be->alloc(be, &din);
        for (int i = 0; i < n_out && s == SD_OK; i++)
            s = be->alloc(be, &dout[i]);
        if (s == SD_OK && (s = be->upload(be, &din, in.data)) == SD_OK)
            s = fn(self->model, &din, &dout[0], n_out > 1 ? &dout[1] : NULL);
        for (int i = 0; i < n_out && s == SD_OK; i++)
            s = be->download(be, o[i].data, &dout[i]);
        if (din.data)
            be->free(be, &din);
        for (int i = 0; i < n_out; i++)
            if (dout[i].data)
                be->free(be, &dout[i]);
    }
    PyThread_release_lock(self->lock);
    Py_END_ALLOW_THREADS;
    if (s != SD_OK) {
        Py_DECREF(outs[0]);
        Py_XDECREF(outs[1]);
        return sd_raise(s);
    }
    if (n_out == 1)
        return outs[0];
    PyObject *pair = PyTuple_Pack(2, outs[0], outs[1]);
    Py_DECREF(outs[0]);
    Py_DECREF(outs[1]);
    return pair;
}

static PyObject *vae_decode(VAEObject *self, PyObject *arg) {
    return vae_run(self, arg, "decode", self->cfg.latent_channels, self->cfg.out_channels, 1, 1,
                   run_decode);
}

static PyObject *vae_encode(VAEObject *self, PyObject *arg) {
    return vae_run(self, arg, "encode", self->cfg.in_channels, self->cfg.latent_channels, 0, 1,
                   sd_vae_encode_moments);
}

static PyObject *vae_encode_moments(VAEObject *self, PyObject *arg) {
    return vae_run(self, arg, "encode_moments", self->cfg.in_channels, self->cfg.latent_channels,
                   0, 2, sd_vae_encode_moments);
}

static PyMethodDef vae_methods[] = {
    {"decode", (PyCFunction)vae_decode, METH_O,
     "decode(z float32 (B, latent, h, w), already divided by the scaling factor) -> image"},
    {"encode", (PyCFunction)vae_encode, METH_O,
     "encode(image float32 (B, 3, H, W) in [-1, 1]) -> mean (B, latent, H/f, W/f)"},
    {"encode_moments", (PyCFunction)vae_encode_moments, METH_O,
     "encode_moments(image float32 (B, 3, H, W) in [-1, 1]) -> (mean, logvar), each "
     "(B, latent, H/f, W/f); logvar unclamped"},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot vae_slots[] = {
    {Py_tp_new, vae_new},
    {Py_tp_dealloc, vae_dealloc},
    {Py_tp_methods, vae_methods},
    {Py_tp_doc, "VAE(weights, in_channels, out_channels, latent_channels, block_out_channels, "
                "layers_per_block, norm_num_groups, mid_attention, with_encoder=True, "
                "device='cpu')"},
    {0, NULL},
};

static PyType_Spec vae_spec = {
    .name = "sdcore._C.VAE",
    .basicsize = sizeof(VAEObject),
    .flags = Py_TPFLAGS_DEFAULT,
    .slots = vae_slots,
};

/* vae_tensors(in_channels, ..., mid_attention, with_encoder=True) -> [(name, shape,
 * required)]: every tensor the VAE of this config reads (sd_vae_tensors) */
static PyObject *py_vae_tensors(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"in_channels", "out_channels", "latent_channels",
                             "block_out_channels", "layers_per_block", "norm_num_groups",
                             "mid_attention", "with_encoder", NULL};
    PyObject *blocks;
    sd_vae_config cfg = {0};
    int with_encoder = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "iiiOiip|p:vae_tensors", kwlist,
                                     &cfg.in_channels, &cfg.out_channels, &cfg.latent_channels,
                                     &blocks, &cfg.layers_per_block, &cfg.norm_num_groups,
                                     &cfg.mid_attention, &with_encoder) ||
        parse_blocks(blocks, &cfg) < 0)
        return NULL;
    sd_tensor_decls d;
    sd_decls_init(&d);
    return sd_decls_to_py(sd_vae_tensors(&cfg, with_encoder, &d), &d);
}

PyMethodDef sd_vae_methods[] = {
    {"vae_tensors", (PyCFunction)(void (*)(void))py_vae_tensors, METH_VARARGS | METH_KEYWORDS,
     "vae_tensors(in_channels, out_channels, latent_channels, block_out_channels, "
     "layers_per_block, norm_num_groups, mid_attention, with_encoder=True) -> "
     "[(name, shape, required)]: every tensor of the AutoencoderKL with this config"},
    {NULL, NULL, 0, NULL},
};

int sd_vae_type_init(PyObject *module) {
    vae_type = PyType_FromModuleAndSpec(module, &vae_spec, NULL);
    if (!vae_type)
        return -1;
    return PyModule_AddObjectRef(module, "VAE", vae_type);
}
