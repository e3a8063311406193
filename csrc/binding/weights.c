/* sdcore._C.Weights: a set of named tensors held by the engine (sd_weights).
 *
 * Made from NumPy arrays (tests, converted checkpoints) or from a file; `subset`
 * renames and selects tensors without copying, which is how one checkpoint's
 * tensors are handed to the text encoder, UNet and VAE under the names they expect. */
#include "binding.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "io/safetensors.h"
#include "models/tensors.h"

typedef struct {
    PyObject_HEAD
    sd_weights *weights;
    PyObject *keepalive; /* the arrays or the parent Weights whose memory is borrowed */
} WeightsObject;

PyObject *sd_weights_type; /* set in sd_weights_type_init */

sd_weights *sd_weights_from_py(PyObject *obj, const char *op, const char *arg) {
    if (!obj || !PyObject_TypeCheck(obj, (PyTypeObject *)sd_weights_type)) {
        PyErr_Format(PyExc_TypeError, "%s: argument '%s' must be sdcore._C.Weights, got %s", op,
                     arg, obj ? Py_TYPE(obj)->tp_name : "NULL");
        return NULL;
    }
    return ((WeightsObject *)obj)->weights;
}

static PyObject *weights_wrap(PyTypeObject *type, sd_weights *w, PyObject *keepalive) {
    WeightsObject *self = (WeightsObject *)type->tp_alloc(type, 0);
    if (!self) {
        sd_weights_free(w);
        return NULL;
    }
    self->weights = w;
    self->keepalive = Py_XNewRef(keepalive);
    return (PyObject *)self;
}

PyObject *sd_weights_to_py(sd_weights *w, PyObject *keepalive) {
    return weights_wrap((PyTypeObject *)sd_weights_type, w, keepalive);
}

PyObject *sd_decls_to_py(sd_status status, sd_tensor_decls *d) {
    PyObject *list = status == SD_OK ? PyList_New(d->count) : NULL;
    for (int i = 0; list && i < d->count; i++) {
        const sd_tensor_decl *t = &d->items[i];
        PyObject *shape = PyTuple_New(t->ndim);
        for (int k = 0; shape && k < t->ndim; k++) {
            PyObject *dim = PyLong_FromLongLong(t->shape[k]);
            if (!dim)
                Py_CLEAR(shape);
            else
                PyTuple_SET_ITEM(shape, k, dim);
        }
        PyObject *item = shape ? Py_BuildValue("(sOO)", t->name, shape,
                                               t->flags & SD_DECL_OPTIONAL ? Py_False : Py_True)
                               : NULL;
        Py_XDECREF(shape);
        if (!item)
            Py_CLEAR(list);
        else
            PyList_SET_ITEM(list, i, item);
    }
    sd_decls_free(d);
    if (status != SD_OK)
        return sd_raise(status);
    return list;
}

static void weights_dealloc(WeightsObject *self) {
    PyTypeObject *tp = Py_TYPE(self);
    sd_weights_free(self->weights);
    Py_XDECREF(self->keepalive);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

/* Weights.from_arrays({name: array}) -- float32 or float16 arrays, borrowed. */
static PyObject *weights_from_arrays(PyObject *cls, PyObject *dict) {
    if (!PyDict_Check(dict)) {
        PyErr_SetString(PyExc_TypeError, "Weights.from_arrays: expected a dict of name -> array");
        return NULL;
    }
    sd_weights *w = NULL;
    PyObject *keep = NULL, *key, *value;
    Py_ssize_t pos = 0;
    if (sd_weights_create(&w) != SD_OK)
        return sd_raise(SD_ERR_NOMEM);
    keep = PyList_New(0);
    if (!keep)
        goto fail;
    while (PyDict_Next(dict, &pos, &key, &value)) {
        if (!PyUnicode_Check(key)) {
            PyErr_SetString(PyExc_TypeError, "Weights.from_arrays: names must be str");
            goto fail;
        }
        const char *name = PyUnicode_AsUTF8(key);
        sd_tensor t;
        if (!name || sd_array_arg(value, "Weights.from_arrays", name, 1, 1, SD_MAX_DIMS, &t) < 0)
            goto fail;
        if (PyList_Append(keep, value) < 0)
            goto fail;
        sd_status s = sd_weights_add(w, name, t);
        if (s != SD_OK) {
            sd_raise(s);
            goto fail;
        }
    }
    sd_status s = sd_weights_seal(w);
    if (s != SD_OK) {
        sd_raise(s);
        goto fail;
    }
    PyObject *out = weights_wrap((PyTypeObject *)cls, w, keep);
    Py_DECREF(keep);
    return out;
fail:
    sd_weights_free(w);
    Py_XDECREF(keep);
    return NULL;
}

/* Weights.open(path, *, skip_unsupported=False, copy=False) -- a safetensors file, mmapped
 * (or read into memory of its own with copy). */
static PyObject *weights_open(PyObject *cls, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"path", "skip_unsupported", "copy", NULL};
    PyObject *path_bytes = NULL;
    int skip = 0, copy = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O&|$pp:open", kwlist, PyUnicode_FSConverter,
                                     &path_bytes, &skip, &copy))
        return NULL;
    const char *path = PyBytes_AS_STRING(path_bytes);
    sd_safetensors_options options = {.skip_unsupported = skip, .copy = copy};
    sd_weights *w = NULL;
    int os_error = 0;
    sd_status s;
    Py_BEGIN_ALLOW_THREADS
    s = sd_safetensors_open_ex(path, &options, &w, &os_error);
    Py_END_ALLOW_THREADS
    if (s != SD_OK) {
        if (s == SD_ERR_IO && os_error) {
            /* OSError(errno, ...) becomes FileNotFoundError, PermissionError, ... */
            PyObject *name = PyUnicode_DecodeFSDefault(path);
            if (name) {
                errno = os_error;
                PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, name);
                Py_DECREF(name);
            }
        } else {
            sd_raise(s);
        }
        Py_DECREF(path_bytes);
        return NULL;
    }
    Py_DECREF(path_bytes);
    return weights_wrap((PyTypeObject *)cls, w, NULL);
}

/* metadata() -> {str: str}: the file's __metadata__ ({} when it had none) */
static PyObject *weights_metadata(WeightsObject *self, PyObject *noargs) {
    (void)noargs;
    PyObject *dict = PyDict_New();
    if (!dict)
        return NULL;
    for (int64_t i = 0; i < sd_weights_metadata_count(self->weights); i++) {
        PyObject *value = PyUnicode_FromString(sd_weights_metadata_value(self->weights, i));
        if (!value || PyDict_SetItemString(dict, sd_weights_metadata_key(self->weights, i),
                                           value) < 0) {
            Py_XDECREF(value);
            Py_DECREF(dict);
            return NULL;
        }
        Py_DECREF(value);
    }
    return dict;
}

/* A subset entry's target: "old_name", or ("old_name", new_shape) for a view of the
 * same elements under another shape (a (C, C, 1, 1) 1x1 conv read as a (C, C) matrix). */
static const sd_tensor *subset_source(WeightsObject *self, PyObject *value, const char *new_name,
                                      sd_tensor *view) {
    PyObject *shape_obj = NULL;
    PyObject *old_obj = value;
    if (PyTuple_Check(value)) {
        if (PyTuple_GET_SIZE(value) != 2) {
            PyErr_Format(PyExc_TypeError,
                         "Weights.subset: '%s' must map to an old name or (old name, shape)",
                         new_name);
            return NULL;
        }
        old_obj = PyTuple_GET_ITEM(value, 0);
        shape_obj = PyTuple_GET_ITEM(value, 1);
    }
    const char *old_name = PyUnicode_Check(old_obj) ? PyUnicode_AsUTF8(old_obj) : NULL;
    if (!old_name) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "Weights.subset: names must be str");
        return NULL;
    }
    const sd_tensor *t = sd_weights_find(self->weights, old_name);
    if (!t) {
        PyErr_Format(PyExc_KeyError, "tensor '%s' is not in this checkpoint", old_name);
        return NULL;
    }
    *view = *t;
    if (!shape_obj)
        return t;
    PyObject *seq = PySequence_Fast(shape_obj, "Weights.subset: a shape must be a sequence");
    if (!seq)
        return NULL;
    Py_ssize_t ndim = PySequence_Fast_GET_SIZE(seq);
    int64_t shape[SD_MAX_DIMS], numel = 1;
    int ok = ndim >= 1 && ndim <= SD_MAX_DIMS;
    for (Py_ssize_t i = 0; ok && i < ndim; i++) {
        long long d = PyLong_AsLongLong(PySequence_Fast_GET_ITEM(seq, i));
        if (d == -1 && PyErr_Occurred()) {
            Py_DECREF(seq);
            return NULL;
        }
        ok = d >= 0 && (d == 0 || numel <= INT64_MAX / d);
        shape[i] = d;
        numel *= ok ? d : 1;
    }
    Py_DECREF(seq);
    if (!ok || numel != sd_numel(t)) {
        char buf[96];
        PyErr_Format(PyExc_ValueError,
                     "Weights.subset: '%s' cannot view tensor '%s' of shape %s with the %zd-dim "
                     "shape given: the element count must stay the same (1 to %d dims)",
                     new_name, old_name, sd_shape_str(t, buf, sizeof buf), ndim, SD_MAX_DIMS);
        return NULL;
    }
    *view = sd_tensor_view(t->data, t->dtype, t->device, (int)ndim, shape);
    return t;
}

/* subset({new_name: old_name or (old_name, shape)}) -> Weights sharing this one's memory */
static PyObject *weights_subset(WeightsObject *self, PyObject *mapping) {
    if (!PyDict_Check(mapping)) {
        PyErr_SetString(PyExc_TypeError, "Weights.subset: expected a dict of new -> old name");
        return NULL;
    }
    sd_weights *w = NULL;
    PyObject *key, *value;
    Py_ssize_t pos = 0;
    if (sd_weights_create(&w) != SD_OK)
        return sd_raise(SD_ERR_NOMEM);
    while (PyDict_Next(mapping, &pos, &key, &value)) {
        const char *new_name = PyUnicode_Check(key) ? PyUnicode_AsUTF8(key) : NULL;
        if (!new_name) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_TypeError, "Weights.subset: names must be str");
            goto fail;
        }
        sd_tensor view;
        if (!subset_source(self, value, new_name, &view))
            goto fail;
        sd_status s = sd_weights_add(w, new_name, view);
        if (s != SD_OK) {
            sd_raise(s);
            goto fail;
        }
    }
    for (int64_t i = 0; i < sd_weights_metadata_count(self->weights); i++) {
        sd_status s = sd_weights_add_metadata(w, sd_weights_metadata_key(self->weights, i),
                                              sd_weights_metadata_value(self->weights, i));
        if (s != SD_OK) {
            sd_raise(s);
            goto fail;
        }
    }
    sd_status s = sd_weights_seal(w);
    if (s != SD_OK) {
        sd_raise(s);
        goto fail;
    }
    return weights_wrap(Py_TYPE(self), w, (PyObject *)self);
fail:
    sd_weights_free(w);
    return NULL;
}

static PyObject *weights_names(WeightsObject *self, PyObject *noargs) {
    (void)noargs;
    int64_t n = sd_weights_count(self->weights);
    PyObject *list = PyList_New((Py_ssize_t)n);
    if (!list)
        return NULL;
    for (int64_t i = 0; i < n; i++) {
        PyObject *s = PyUnicode_FromString(sd_weights_name(self->weights, i));
        if (!s) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)i, s);
    }
    return list;
}

static const sd_tensor *lookup(WeightsObject *self, PyObject *name_obj) {
    const char *name = PyUnicode_Check(name_obj) ? PyUnicode_AsUTF8(name_obj) : NULL;
    if (!name) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "tensor names are str");
        return NULL;
    }
    const sd_tensor *t = sd_weights_find(self->weights, name);
    if (!t)
        PyErr_Format(PyExc_KeyError, "tensor '%s' is not in this checkpoint", name);
    return t;
}

/* info(name) -> (dtype name, shape tuple) */
static PyObject *weights_info(WeightsObject *self, PyObject *name) {
    const sd_tensor *t = lookup(self, name);
    if (!t)
        return NULL;
    PyObject *shape = PyTuple_New(t->ndim);
    if (!shape)
        return NULL;
    for (int i = 0; i < t->ndim; i++)
        PyTuple_SET_ITEM(shape, i, PyLong_FromLongLong(t->shape[i]));
    PyObject *out = Py_BuildValue("(sO)", sd_dtype_name(t->dtype), shape);
    Py_DECREF(shape);
    return out;
}

/* array(name) -> a float32 copy of the tensor (widened from f16/bf16) */
static PyObject *weights_array(WeightsObject *self, PyObject *name) {
    const sd_tensor *t = lookup(self, name);
    if (!t)
        return NULL;
    npy_intp dims[SD_MAX_DIMS];
    for (int i = 0; i < t->ndim; i++)
        dims[i] = (npy_intp)t->shape[i];
    PyObject *out = PyArray_SimpleNew(t->ndim, dims, NPY_FLOAT32);
    if (!out)
        return NULL;
    if (t->device == SD_CPU) {
        sd_widen_to_f32(t->data, t->dtype, PyArray_DATA((PyArrayObject *)out), sd_numel(t));
        return out;
    }
    /* a device copy: bring it back first */
    const sd_backend *be = NULL;
    void *host = malloc(sd_nbytes(t) + 1);
    sd_status s = host ? sd_cuda_backend(&be) : sd_fail(SD_ERR_NOMEM, "Weights.array: no memory");
    if (s == SD_OK)
        s = be->download(be, host, t);
    if (s == SD_OK)
        sd_widen_to_f32(host, t->dtype, PyArray_DATA((PyArrayObject *)out), sd_numel(t));
    free(host);
    if (s != SD_OK) {
        Py_DECREF(out);
        return sd_raise(s);
    }
    return out;
}

/* to(device, dtype='float16') -> Weights: a copy of every tensor on the device */
static PyObject *weights_to(WeightsObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"device", "dtype", NULL};
    const char *device, *dtype = "float16";
    if (!PyArg_ParseTupleAndKeywords(args, kw, "s|s:to", kwlist, &device, &dtype))
        return NULL;
    sd_dtype dt;
    if (sd_dtype_from_name(dtype, "Weights.to", &dt) < 0)
        return NULL;
    const sd_backend *be = sd_backend_from_name(device);
    if (!be)
        return NULL;
    if (be->device == SD_CPU) {
        PyErr_SetString(PyExc_ValueError, "Weights.to: the CPU uses weights where they are; "
                                          "name a GPU device ('cuda')");
        return NULL;
    }
    sd_weights *w = NULL;
    sd_status s;
    Py_BEGIN_ALLOW_THREADS;
    s = sd_weights_to_backend(self->weights, be, dt, &w);
    Py_END_ALLOW_THREADS;
    if (s != SD_OK)
        return sd_raise(s);
    return weights_wrap(Py_TYPE(self), w, NULL);
}

static PyObject *weights_get_device(WeightsObject *self, void *closure) {
    (void)closure;
    int64_t n = sd_weights_count(self->weights);
    return PyUnicode_FromString(n > 0 && sd_weights_at(self->weights, 0)->device == SD_CUDA
                                    ? "cuda"
                                    : "cpu");
}

static PyGetSetDef weights_getset[] = {
    {"device", (getter)weights_get_device, NULL, "where the tensors are: 'cpu' or 'cuda'", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

/* Weights.first_nonfinite() -> the name of the first tensor with a NaN or inf, or None */
static PyObject *weights_first_nonfinite(WeightsObject *self, PyObject *unused) {
    int64_t i;
    Py_BEGIN_ALLOW_THREADS
    i = sd_weights_first_nonfinite(self->weights);
    Py_END_ALLOW_THREADS
    if (i < 0)
        Py_RETURN_NONE;
    return PyUnicode_FromString(sd_weights_name(self->weights, i));
}

static Py_ssize_t weights_len(WeightsObject *self) {
    return (Py_ssize_t)sd_weights_count(self->weights);
}

static int weights_contains(WeightsObject *self, PyObject *name_obj) {
    const char *name = PyUnicode_Check(name_obj) ? PyUnicode_AsUTF8(name_obj) : NULL;
    if (!name)
        return PyErr_Occurred() ? -1 : 0;
    return sd_weights_find(self->weights, name) != NULL;
}

static PyMethodDef weights_methods[] = {
    {"from_arrays", (PyCFunction)weights_from_arrays, METH_O | METH_CLASS,
     "from_arrays({name: float32/float16 array}) -> Weights borrowing the arrays"},
    {"open", (PyCFunction)(void (*)(void))weights_open, METH_VARARGS | METH_KEYWORDS | METH_CLASS,
     "open(path, *, skip_unsupported=False, copy=False) -> Weights of a safetensors file\n"
     "(mmapped; read into memory of its own with copy, so that the file may then change).\n"
     "Tensors of dtypes other than F32/F16/BF16 are an error, or left out with "
     "skip_unsupported."},
    {"first_nonfinite", (PyCFunction)weights_first_nonfinite, METH_NOARGS,
     "first_nonfinite() -> name of the first tensor holding a NaN or an infinity, or None"},
    {"subset", (PyCFunction)weights_subset, METH_O,
     "subset({new_name: old_name or (old_name, shape)}) -> Weights sharing memory with this "
     "one;\na shape views the same elements under another shape (same element count). "
     "The metadata is kept."},
    {"metadata", (PyCFunction)weights_metadata, METH_NOARGS,
     "metadata() -> {str: str}: the file's __metadata__ ({} when none)"},
    {"names", (PyCFunction)weights_names, METH_NOARGS, "names() -> sorted list of tensor names"},
    {"info", (PyCFunction)weights_info, METH_O, "info(name) -> (dtype, shape)"},
    {"array", (PyCFunction)weights_array, METH_O, "array(name) -> float32 copy"},
    {"to", (PyCFunction)(void (*)(void))weights_to, METH_VARARGS | METH_KEYWORDS,
     "to(device, dtype='float16') -> Weights: every tensor copied to the device in dtype"},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot weights_slots[] = {
    {Py_tp_dealloc, weights_dealloc},
    {Py_tp_methods, weights_methods},
    {Py_tp_getset, weights_getset},
    {Py_sq_length, weights_len},
    {Py_sq_contains, weights_contains},
    {Py_tp_doc, "A set of named tensors held by the engine (a checkpoint or part of one)."},
    {0, NULL},
};

static PyType_Spec weights_spec = {
    .name = "sdcore._C.Weights",
    .basicsize = sizeof(WeightsObject),
    .flags = Py_TPFLAGS_DEFAULT,
    .slots = weights_slots,
};

int sd_weights_type_init(PyObject *module) {
    sd_weights_type = PyType_FromModuleAndSpec(module, &weights_spec, NULL);
    if (!sd_weights_type)
        return -1;
    return PyModule_AddObjectRef(module, "Weights", sd_weights_type);
}
