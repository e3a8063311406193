/* sdcore._C.ClipTextModel: the CLIP text encoder on a Weights set.
 *
 * The config arrives as plain numbers; sdcore/text_encoder.py reads transformers'
 * config dict and names any bad field before it gets here. */
#include "binding.h"

#include "models/clip.h"

typedef struct {
    PyObject_HEAD
    sd_clip *model;
    const sd_backend *be;
    int hidden;
    PyObject *weights;       /* the Weights whose tensors the model borrows */
    PyThread_type_lock lock; /* one forward at a time: the activations are the model's */
} ClipObject;

static PyObject *clip_type;

static PyObject *clip_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"weights", "vocab_size", "hidden_size", "intermediate_size",
                             "num_hidden_layers", "num_attention_heads",
                             "max_position_embeddings", "layer_norm_eps", "quick_gelu", "device",
                             "dtype", NULL};
    PyObject *weights_obj;
    sd_clip_config cfg = {0};
    const char *device = "cpu", *dtype = "float32";
    sd_dtype act;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "Oiiiiiifp|ss:ClipTextModel", kwlist,
                                     &weights_obj, &cfg.vocab_size, &cfg.hidden_size,
                                     &cfg.intermediate_size, &cfg.num_hidden_layers,
                                     &cfg.num_attention_heads, &cfg.max_position_embeddings,
                                     &cfg.layer_norm_eps, &cfg.quick_gelu, &device, &dtype) ||
        sd_dtype_from_name(dtype, "ClipTextModel", &act) < 0)
        return NULL;
    sd_weights *w = sd_weights_from_py(weights_obj, "ClipTextModel", "weights");
    if (!w)
        return NULL;
    const sd_backend *be = sd_backend_from_name(device);
    if (!be)
        return NULL;
    ClipObject *self = (ClipObject *)type->tp_alloc(type, 0);
    if (!self)
        return NULL;
    self->lock = sd_model_lock_new(be);
    if (!self->lock) {
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    sd_status s;
    Py_BEGIN_ALLOW_THREADS;
    s = sd_clip_create(&cfg, w, be, &self->model);
    if (s == SD_OK)
        s = sd_clip_set_activation_dtype(self->model, act);
    Py_END_ALLOW_THREADS;
    if (s != SD_OK) {
        Py_DECREF(self);
        return sd_raise(s);
    }
    self->be = be;
    self->hidden = cfg.hidden_size;
    self->weights = Py_NewRef(weights_obj);
    return (PyObject *)self;
}

static void clip_dealloc(ClipObject *self) {
    PyTypeObject *tp = Py_TYPE(self);
    sd_clip_free(self->model);
    sd_model_lock_free(self->lock);
    Py_XDECREF(self->weights);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

/* encode(ids int32 (B, T), clip_skip=1) -> float32 (B, T, hidden) */
static PyObject *clip_encode(ClipObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"ids", "clip_skip", NULL};
    PyObject *ids_obj;
    int clip_skip = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|i:encode", kwlist, &ids_obj, &clip_skip))
        return NULL;
    if (!PyArray_Check(ids_obj) || PyArray_TYPE((PyArrayObject *)ids_obj) != NPY_INT32 ||
        PyArray_NDIM((PyArrayObject *)ids_obj) != 2 ||
        !PyArray_IS_C_CONTIGUOUS((PyArrayObject *)ids_obj)) {
        PyErr_SetString(PyExc_TypeError,
                        "encode: argument 'ids' must be a contiguous int32 array (B, T)");
        return NULL;
    }
    PyArrayObject *ids = (PyArrayObject *)ids_obj;
    int B = (int)PyArray_DIM(ids, 0), T = (int)PyArray_DIM(ids, 1);
    if (B < 1 || T < 1) {
        PyErr_SetString(PyExc_ValueError, "encode: argument 'ids' is empty");
        return NULL;
    }
    npy_intp dims[3] = {B, T, self->hidden};
    PyObject *out = PyArray_SimpleNew(3, dims, NPY_FLOAT32);
    if (!out)
        return NULL;
    const int32_t *id = PyArray_DATA(ids);
    float *host = PyArray_DATA((PyArrayObject *)out);
    const sd_backend *be = self->be;
    sd_status s;
    Py_BEGIN_ALLOW_THREADS;
    PyThread_acquire_lock(self->lock, WAIT_LOCK);
    int64_t shape[3] = {B, T, self->hidden};
    sd_tensor o = sd_tensor_view(be->device == SD_CPU ? host : NULL, SD_F32, be->device, 3, shape);
    s = be->device == SD_CPU ? SD_OK : be->alloc(be, &o);
    if (s == SD_OK)
        s = sd_clip_forward(self->model, id, B, T, clip_skip, &o);
    if (s == SD_OK && be->device != SD_CPU)
        s = be->download(be, host, &o);
    if (be->device != SD_CPU && o.data)
        be->free(be, &o);
    PyThread_release_lock(self->lock);
    Py_END_ALLOW_THREADS;
    if (s != SD_OK) {
        Py_DECREF(out);
        return sd_raise(s);
    }
    return out;
}

static PyMethodDef clip_methods[] = {
    {"encode", (PyCFunction)(void (*)(void))clip_encode, METH_VARARGS | METH_KEYWORDS,
     "encode(ids int32 (B, T), clip_skip=1) -> float32 (B, T, hidden)"},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot clip_slots[] = {
    {Py_tp_new, clip_new},
    {Py_tp_dealloc, clip_dealloc},
    {Py_tp_methods, clip_methods},
    {Py_tp_doc, "ClipTextModel(weights, vocab_size, hidden_size, intermediate_size, "
                "num_hidden_layers, num_attention_heads, max_position_embeddings, "
                "layer_norm_eps, quick_gelu, device='cpu')"},
    {0, NULL},
};

static PyType_Spec clip_spec = {
    .name = "sdcore._C.ClipTextModel",
    .basicsize = sizeof(ClipObject),
    .flags = Py_TPFLAGS_DEFAULT,
    .slots = clip_slots,
};

/* clip_tensors(vocab_size, ..., max_position_embeddings) -> [(name, shape, required)]:
 * every tensor the text encoder of this config reads (sd_clip_tensors) */
static PyObject *py_clip_tensors(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"vocab_size", "hidden_size", "intermediate_size",
                             "num_hidden_layers", "num_attention_heads",
                             "max_position_embeddings", NULL};
    /* norm eps and activation shape no tensor: fixed to valid values */
    sd_clip_config cfg = {.layer_norm_eps = 1e-5f, .quick_gelu = 1};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "iiiiii:clip_tensors", kwlist, &cfg.vocab_size,
                                     &cfg.hidden_size, &cfg.intermediate_size,
                                     &cfg.num_hidden_layers, &cfg.num_attention_heads,
                                     &cfg.max_position_embeddings))
        return NULL;
    sd_tensor_decls d;
    sd_decls_init(&d);
    return sd_decls_to_py(sd_clip_tensors(&cfg, &d), &d);
}

PyMethodDef sd_clip_methods[] = {
    {"clip_tensors", (PyCFunction)(void (*)(void))py_clip_tensors, METH_VARARGS | METH_KEYWORDS,
     "clip_tensors(vocab_size, hidden_size, intermediate_size, num_hidden_layers, "
     "num_attention_heads, max_position_embeddings) -> [(name, shape, required)]: every "
     "tensor of the CLIPTextModel with this config (transformers 4 names, text_model.*)"},
    {NULL, NULL, 0, NULL},
};

int sd_clip_type_init(PyObject *module) {
    clip_type = PyType_FromModuleAndSpec(module, &clip_spec, NULL);
    if (!clip_type)
        return -1;
    return PyModule_AddObjectRef(module, "ClipTextModel", clip_type);
}
