/* sdcore._C.Generator and sdcore._C.randn: torch-compatible seeded noise (core/rng.h).
 *
 * A Generator owns one sd_rng and a lock: randn releases the GIL while it fills the
 * array, and the lock keeps two threads sharing one Generator from interleaving inside
 * the state. Separate Generators never contend. */
#include "binding.h"

#include <string.h>

#include "core/rng.h"

typedef struct {
    PyObject_HEAD
    sd_rng rng;
    PyThread_type_lock lock;
} GeneratorObject;

static PyObject *generator_type; /* set in sd_rng_type_init */

/* ------------------------------------------------------------ arguments ---- */

/* torch.Generator.manual_seed takes an int in [-2**63, 2**64); a negative seed is
 * used modulo 2**64. bool and float are refused, as torch refuses them. */
static int parse_seed(PyObject *obj, const char *fn, uint64_t *seed) {
    if (PyBool_Check(obj) || PyFloat_Check(obj) || !PyIndex_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s: seed must be an int, got %s", fn,
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    PyObject *value = PyNumber_Index(obj);
    if (!value)
        return -1;
    int rc = 0;
    int overflow = 0;
    long long signed_seed = PyLong_AsLongLongAndOverflow(value, &overflow);
    if (signed_seed == -1 && PyErr_Occurred()) {
        rc = -1;
    } else if (overflow == 0) {
        *seed = (uint64_t)signed_seed; /* two's complement: -1 -> 2**64 - 1 */
    } else if (overflow > 0) {
        unsigned long long u = PyLong_AsUnsignedLongLong(value);
        if (u == (unsigned long long)-1 && PyErr_Occurred()) {
            PyErr_Clear();
            rc = -1;
        } else {
            *seed = (uint64_t)u;
        }
    } else {
        rc = -1;
    }
    if (rc < 0 && !PyErr_Occurred())
        PyErr_Format(PyExc_ValueError, "%s: seed must be in [-2**63, 2**64), got %S", fn, value);
    Py_DECREF(value);
    return rc;
}

/* shape: an int or a sequence of ints >= 0 (a 0 dim gives an empty array, () one value,
 * as torch.randn does). At most NPY_MAXDIMS dims. */
static int parse_shape(PyObject *obj, const char *fn, int *ndim, npy_intp *dims, int64_t *numel) {
    PyObject *seq = NULL;
    int rc = -1;
    if (!PyBool_Check(obj) && !PyFloat_Check(obj) && PyIndex_Check(obj)) {
        seq = PyTuple_Pack(1, obj);
    } else if (PyTuple_Check(obj) || PyList_Check(obj)) {
        seq = PySequence_Tuple(obj);
    } else {
        PyErr_Format(PyExc_TypeError, "%s: shape must be an int or a tuple of ints, got %s", fn,
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    if (!seq)
        return -1;
    Py_ssize_t n = PyTuple_GET_SIZE(seq);
    if (n > NPY_MAXDIMS) {
        PyErr_Format(PyExc_ValueError, "%s: shape has %zd dims, at most %d are supported", fn, n,
                     (int)NPY_MAXDIMS);
        goto done;
    }
    int64_t total = 1;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyTuple_GET_ITEM(seq, i);
        if (PyBool_Check(item) || PyFloat_Check(item) || !PyIndex_Check(item)) {
            PyErr_Format(PyExc_TypeError, "%s: shape[%zd] must be an int, got %s", fn, i,
                         Py_TYPE(item)->tp_name);
            goto done;
        }
        PyObject *index = PyNumber_Index(item);
        if (!index)
            goto done;
        long long d = PyLong_AsLongLong(index);
        Py_DECREF(index);
        if (d == -1 && PyErr_Occurred())
            goto done;
        if (d < 0) {
            PyErr_Format(PyExc_ValueError, "%s: shape[%zd] must be >= 0, got %lld", fn, i, d);
            goto done;
        }
        /* 2**40 elements is far past any memory; the bound keeps the product exact */
        if (d > 0 && total > 0 && d > (INT64_C(1) << 40) / total) {
            PyErr_Format(PyExc_ValueError, "%s: shape %R has too many elements", fn, obj);
            goto done;
        }
        total *= d;
        dims[i] = (npy_intp)d;
    }
    *ndim = (int)n;
    *numel = total;
    rc = 0;
done:
    Py_DECREF(seq);
    return rc;
}

/* dtype: None / float32 (default) or float64, anything np.dtype() accepts. */
static int parse_dtype(PyObject *obj, const char *fn, int *type_num) {
    *type_num = NPY_FLOAT32;
    if (!obj || obj == Py_None)
        return 0;
    PyArray_Descr *descr = NULL;
    if (!PyArray_DescrConverter(obj, &descr))
        return -1;
    int t = descr->type_num;
    Py_DECREF(descr);
    if (t != NPY_FLOAT32 && t != NPY_FLOAT64) {
        PyErr_Format(PyExc_TypeError, "%s: dtype must be float32 or float64, got %R", fn, obj);
        return -1;
    }
    *type_num = t;
    return 0;
}

static const char *kernel_names[] = {"auto", "avx2", "scalar"};

static int parse_kernel(const char *name, const char *fn, sd_rng_kernel *kernel) {
    for (int i = 0; i < 3; i++) {
        if (strcmp(name, kernel_names[i]) == 0) {
            *kernel = (sd_rng_kernel)i;
            return 0;
        }
    }
    PyErr_Format(PyExc_ValueError, "%s: kernel must be 'auto', 'avx2' or 'scalar', got '%s'", fn,
                 name);
    return -1;
}

/* ---------------------------------------------------------------- draws ---- */

/* Allocate the array, then fill it from rng with the GIL released (lock, when given,
 * is taken around the fill). */
static PyObject *draw(sd_rng *rng, PyThread_type_lock lock, int ndim, const npy_intp *dims,
                      int64_t numel, int type_num) {
    PyObject *arr = PyArray_SimpleNew(ndim, (npy_intp *)dims, type_num);
    if (!arr)
        return NULL;
    void *data = PyArray_DATA((PyArrayObject *)arr);
    sd_status s;
    Py_BEGIN_ALLOW_THREADS;
    if (lock)
        PyThread_acquire_lock(lock, WAIT_LOCK);
    if (type_num == NPY_FLOAT32)
        s = sd_rng_randn(rng, (float *)data, numel);
    else
        s = sd_rng_randn_f64(rng, (double *)data, numel);
    if (lock)
        PyThread_release_lock(lock);
    Py_END_ALLOW_THREADS;
    if (s != SD_OK) {
        Py_DECREF(arr);
        return sd_raise(s);
    }
    return arr;
}

/* Take the Generator's lock, waiting without the GIL if another thread holds it. */
static void lock_generator(GeneratorObject *self) {
    if (PyThread_acquire_lock(self->lock, NOWAIT_LOCK))
        return;
    Py_BEGIN_ALLOW_THREADS;
    PyThread_acquire_lock(self->lock, WAIT_LOCK);
    Py_END_ALLOW_THREADS;
}

/* ------------------------------------------------------------ Generator ---- */

static PyObject *generator_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"seed", "kernel", NULL};
    PyObject *seed_obj;
    const char *kernel_name = "auto";
    uint64_t seed;
    sd_rng_kernel kernel;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|$s:Generator", kwlist, &seed_obj,
                                     &kernel_name))
        return NULL;
    if (parse_seed(seed_obj, "Generator", &seed) < 0 ||
        parse_kernel(kernel_name, "Generator", &kernel) < 0)
        return NULL;
    GeneratorObject *self = (GeneratorObject *)type->tp_alloc(type, 0);
    if (!self)
        return NULL;
    self->lock = PyThread_allocate_lock();
    if (!self->lock) {
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    memset(&self->rng, 0, sizeof self->rng);
    sd_rng_set_kernel(&self->rng, kernel);
    sd_rng_seed(&self->rng, seed);
    return (PyObject *)self;
}

static void generator_dealloc(GeneratorObject *self) {
    PyTypeObject *tp = Py_TYPE(self);
    if (self->lock)
        PyThread_free_lock(self->lock);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static PyObject *generator_manual_seed(GeneratorObject *self, PyObject *seed_obj) {
    uint64_t seed;
    if (parse_seed(seed_obj, "Generator.manual_seed", &seed) < 0)
        return NULL;
    lock_generator(self);
    sd_rng_seed(&self->rng, seed);
    PyThread_release_lock(self->lock);
    return Py_NewRef(self);
}

static PyObject *generator_initial_seed(GeneratorObject *self, PyObject *noargs) {
    (void)noargs;
    lock_generator(self);
    uint64_t seed = self->rng.seed;
    PyThread_release_lock(self->lock);
    return PyLong_FromUnsignedLongLong(seed);
}

static PyObject *generator_randn(GeneratorObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"shape", "dtype", NULL};
    PyObject *shape_obj, *dtype_obj = NULL;
    int ndim, type_num;
    npy_intp dims[NPY_MAXDIMS];
    int64_t numel;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|O:randn", kwlist, &shape_obj, &dtype_obj))
        return NULL;
    if (parse_shape(shape_obj, "Generator.randn", &ndim, dims, &numel) < 0 ||
        parse_dtype(dtype_obj, "Generator.randn", &type_num) < 0)
        return NULL;
    return draw(&self->rng, self->lock, ndim, dims, numel, type_num);
}

static PyObject *generator_get_kernel(GeneratorObject *self, void *closure) {
    (void)closure;
    return PyUnicode_FromString(kernel_names[self->rng.kernel]);
}

static PyMethodDef generator_methods[] = {
    {"manual_seed", (PyCFunction)generator_manual_seed, METH_O,
     "manual_seed(seed) -> self: restart the stream as torch.Generator.manual_seed does"},
    {"initial_seed", (PyCFunction)generator_initial_seed, METH_NOARGS,
     "initial_seed() -> int: the last seed, in [0, 2**64)"},
    {"randn", (PyCFunction)(void (*)(void))generator_randn, METH_VARARGS | METH_KEYWORDS,
     "randn(shape, dtype=float32) -> ndarray: the next torch.randn(shape) of this stream"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef generator_getset[] = {
    {"kernel", (getter)generator_get_kernel, NULL,
     "the float32 Box-Muller kernel reproduced: 'avx2' or 'scalar'", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot generator_slots[] = {
    {Py_tp_new, generator_new},
    {Py_tp_dealloc, generator_dealloc},
    {Py_tp_methods, generator_methods},
    {Py_tp_getset, generator_getset},
    {Py_tp_doc, "Generator(seed, *, kernel='auto'): the state of torch.Generator('cpu') "
                "after manual_seed(seed); randn continues the stream."},
    {0, NULL},
};

static PyType_Spec generator_spec = {
    .name = "sdcore._C.Generator",
    .basicsize = sizeof(GeneratorObject),
    .flags = Py_TPFLAGS_DEFAULT,
    .slots = generator_slots,
};

int sd_rng_type_init(PyObject *module) {
    generator_type = PyType_FromModuleAndSpec(module, &generator_spec, NULL);
    if (!generator_type)
        return -1;
    return PyModule_AddObjectRef(module, "Generator", generator_type);
}

/* ---------------------------------------------------------------- randn ---- */

static PyObject *py_randn(PyObject *module, PyObject *args, PyObject *kwargs) {
    (void)module;
    static char *kwlist[] = {"shape", "seed", "dtype", "kernel", NULL};
    PyObject *shape_obj, *seed_obj, *dtype_obj = NULL;
    const char *kernel_name = "auto";
    int ndim, type_num;
    npy_intp dims[NPY_MAXDIMS];
    int64_t numel;
    uint64_t seed;
    sd_rng_kernel kernel;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO|O$s:randn", kwlist, &shape_obj, &seed_obj,
                                     &dtype_obj, &kernel_name))
        return NULL;
    if (parse_shape(shape_obj, "randn", &ndim, dims, &numel) < 0 ||
        parse_seed(seed_obj, "randn", &seed) < 0 ||
        parse_dtype(dtype_obj, "randn", &type_num) < 0 ||
        parse_kernel(kernel_name, "randn", &kernel) < 0)
        return NULL;
    sd_rng *rng = PyMem_RawCalloc(1, sizeof *rng);
    if (!rng)
        return PyErr_NoMemory();
    sd_rng_set_kernel(rng, kernel);
    sd_rng_seed(rng, seed);
    PyObject *out = draw(rng, NULL, ndim, dims, numel, type_num);
    PyMem_RawFree(rng);
    return out;
}

PyMethodDef sd_rng_methods[] = {
    {"randn", (PyCFunction)(void (*)(void))py_randn, METH_VARARGS | METH_KEYWORDS,
     "randn(shape, seed, dtype=float32, *, kernel='auto') -> ndarray: torch.randn(shape, "
     "generator=torch.Generator('cpu').manual_seed(seed))"},
    {NULL, NULL, 0, NULL},
};
