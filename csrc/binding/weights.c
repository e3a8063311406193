/* sdcore._C.Weights: a set of named tensors held by the engine (sd_weights).
 *
 * Made from NumPy arrays (tests, converted checkpoints) or from a file; `subset`
 * renames and selects tensors without copying, which is how one checkpoint's
 * tensors are handed to the text encoder, UNet and VAE under the names they expect. */
#include "binding.h"

#include <string.h>

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

/* subset({new_name: old_name}) -> Weights sharing this one's memory */
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
        const char *old_name = PyUnicode_Check(value) ? PyUnicode_AsUTF8(value) : NULL;
        if (!new_name || !old_name) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_TypeError, "Weights.subset: names must be str");
            goto fail;
        }
        const sd_tensor *t = sd_weights_find(self->weights, old_name);
        if (!t) {
            PyErr_Format(PyExc_KeyError, "tensor '%s' is not in this checkpoint", old_name);
            goto fail;
        }
        sd_status s = sd_weights_add(w, new_name, *t);
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
    sd_widen_to_f32(t->data, t->dtype, PyArray_DATA((PyArrayObject *)out), sd_numel(t));
    return out;
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
    {"subset", (PyCFunction)weights_subset, METH_O,
     "subset({new_name: old_name}) -> Weights sharing memory with this one"},
    {"names", (PyCFunction)weights_names, METH_NOARGS, "names() -> sorted list of tensor names"},
    {"info", (PyCFunction)weights_info, METH_O, "info(name) -> (dtype, shape)"},
    {"array", (PyCFunction)weights_array, METH_O, "array(name) -> float32 copy"},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot weights_slots[] = {
    {Py_tp_dealloc, weights_dealloc},
    {Py_tp_methods, weights_methods},
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
