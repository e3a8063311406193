/* Devices and dtypes: CUDA discovery, host<->device copies, half-precision conversion. */
#include "binding.h"

#include <string.h>

static PyObject *py_cuda_device_count(PyObject *self, PyObject *noargs) {
    (void)self;
    (void)noargs;
    int n = 0;
    sd_status s;
    Py_BEGIN_ALLOW_THREADS;
    s = sd_cuda_device_count(&n);
    Py_END_ALLOW_THREADS;
    /* no driver, no GPU or a CPU-only build all mean zero devices here */
    return PyLong_FromLong(s == SD_OK ? n : 0);
}

static PyObject *py_cuda_memory_info(PyObject *self, PyObject *noargs) {
    (void)self;
    (void)noargs;
    size_t free_bytes = 0, total_bytes = 0;
    sd_status s;
    Py_BEGIN_ALLOW_THREADS;
    s = sd_cuda_memory_info(&free_bytes, &total_bytes);
    Py_END_ALLOW_THREADS;
    if (s != SD_OK)
        return sd_raise(s);
    return Py_BuildValue("(nn)", (Py_ssize_t)free_bytes, (Py_ssize_t)total_bytes);
}

static PyObject *py_cuda_memory_peak(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    static char *keywords[] = {"reset", NULL};
    int reset = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|p:cuda_memory_peak", keywords, &reset))
        return NULL;
    size_t peak = 0;
    sd_status s;
    Py_BEGIN_ALLOW_THREADS;
    s = sd_cuda_memory_peak(&peak, reset);
    Py_END_ALLOW_THREADS;
    if (s != SD_OK)
        return sd_raise(s);
    return PyLong_FromSize_t(peak);
}

static PyObject *py_cuda_available(PyObject *self, PyObject *noargs) {
    (void)self;
    (void)noargs;
    const sd_backend *be = NULL;
    sd_status s;
    Py_BEGIN_ALLOW_THREADS;
    s = sd_cuda_backend(&be);
    Py_END_ALLOW_THREADS;
    if (s == SD_OK)
        return Py_BuildValue("(Os)", Py_True, "");
    return Py_BuildValue("(Os)", Py_False, sd_last_error());
}

static PyObject *py_cuda_devices(PyObject *self, PyObject *noargs) {
    (void)self;
    (void)noargs;
    int n = 0;
    if (sd_cuda_device_count(&n) != SD_OK)
        return PyList_New(0);
    PyObject *list = PyList_New(0);
    if (!list)
        return NULL;
    for (int i = 0; i < n; i++) {
        sd_cuda_device_info info;
        sd_status s = sd_cuda_device_info_get(i, &info);
        if (s != SD_OK) {
            Py_DECREF(list);
            return sd_raise(s);
        }
        PyObject *d = Py_BuildValue("{s:i,s:s,s:(ii),s:i,s:n}", "index", i, "name", info.name,
                                    "compute_capability", info.major, info.minor,
                                    "multiprocessors", info.multiprocessors, "total_memory",
                                    (Py_ssize_t)info.total_memory);
        if (!d || PyList_Append(list, d) < 0) {
            Py_XDECREF(d);
            Py_DECREF(list);
            return NULL;
        }
        Py_DECREF(d);
    }
    return list;
}

/* Copy an array to a backend and back: proves allocation and both copy directions. */
int sd_dtype_from_name(const char *name, const char *what, sd_dtype *out) {
    if (!strcmp(name, "float32"))
        *out = SD_F32;
    else if (!strcmp(name, "float16"))
        *out = SD_F16;
    else if (!strcmp(name, "bfloat16"))
        *out = SD_BF16;
    else {
        PyErr_Format(PyExc_ValueError,
                     "%s: dtype must be 'float32', 'float16' or 'bfloat16', got '%s'", what, name);
        return -1;
    }
    return 0;
}

static PyObject *py_roundtrip(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"x", "device", NULL};
    PyObject *x, *result = NULL;
    const char *device = "cuda";
    sd_tensor host;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|s:roundtrip", kwlist, &x, &device) ||
        sd_array_arg(x, "roundtrip", "x", 1, 1, SD_MAX_DIMS, &host) < 0)
        return NULL;
    const sd_backend *be = sd_backend_from_name(device);
    if (!be)
        return NULL;
    result = PyArray_NewLikeArray((PyArrayObject *)x, NPY_CORDER, NULL, 0);
    if (!result)
        return NULL;
    void *dst = PyArray_DATA((PyArrayObject *)result);
    sd_status s;
    Py_BEGIN_ALLOW_THREADS;
    sd_tensor dev = host;
    dev.data = NULL;
    s = be->alloc(be, &dev);
    if (s == SD_OK)
        s = be->upload(be, &dev, host.data);
    if (s == SD_OK)
        s = be->download(be, dst, &dev);
    if (dev.data)
        be->free(be, &dev);
    Py_END_ALLOW_THREADS;
    if (s != SD_OK) {
        Py_DECREF(result);
        return sd_raise(s);
    }
    return result;
}

static int parse_half(const char *name, sd_dtype *out) {
    if (strcmp(name, "float16") == 0)
        *out = SD_F16;
    else if (strcmp(name, "bfloat16") == 0)
        *out = SD_BF16;
    else {
        PyErr_Format(PyExc_ValueError, "dtype must be 'float16' or 'bfloat16', got '%s'", name);
        return -1;
    }
    return 0;
}

/* A contiguous array of the given type, or an exception naming the argument. */
static PyArrayObject *typed_array(PyObject *obj, int type, const char *op) {
    if (!obj || obj == Py_None || !PyArray_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s: argument 'x' must be a NumPy array", op);
        return NULL;
    }
    PyArrayObject *a = (PyArrayObject *)obj;
    if (PyArray_TYPE(a) != type) {
        PyErr_Format(PyExc_TypeError, "%s: argument 'x' must be %s", op,
                     type == NPY_UINT16 ? "uint16 (raw half-precision bits)" : "float32");
        return NULL;
    }
    if (!PyArray_IS_C_CONTIGUOUS(a) || !PyArray_ISALIGNED(a) || PyArray_ISBYTESWAPPED(a)) {
        PyErr_Format(PyExc_ValueError, "%s: argument 'x' must be C-contiguous, aligned, native",
                     op);
        return NULL;
    }
    return a;
}

static PyObject *py_widen(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *x;
    const char *name;
    sd_dtype dtype;
    if (!PyArg_ParseTuple(args, "Os:widen", &x, &name) || parse_half(name, &dtype) < 0)
        return NULL;
    PyArrayObject *a = typed_array(x, NPY_UINT16, "widen");
    if (!a)
        return NULL;
    PyObject *out = PyArray_SimpleNew(PyArray_NDIM(a), PyArray_DIMS(a), NPY_FLOAT32);
    if (!out)
        return NULL;
    const void *src = PyArray_DATA(a);
    float *dst = PyArray_DATA((PyArrayObject *)out);
    int64_t n = PyArray_SIZE(a);
    Py_BEGIN_ALLOW_THREADS;
    sd_widen_to_f32(src, dtype, dst, n);
    Py_END_ALLOW_THREADS;
    return out;
}

static PyObject *py_narrow(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *x;
    const char *name;
    sd_dtype dtype;
    if (!PyArg_ParseTuple(args, "Os:narrow", &x, &name) || parse_half(name, &dtype) < 0)
        return NULL;
    PyArrayObject *a = typed_array(x, NPY_FLOAT32, "narrow");
    if (!a)
        return NULL;
    PyObject *out = PyArray_SimpleNew(PyArray_NDIM(a), PyArray_DIMS(a), NPY_UINT16);
    if (!out)
        return NULL;
    const float *src = PyArray_DATA(a);
    uint16_t *dst = PyArray_DATA((PyArrayObject *)out);
    int64_t n = PyArray_SIZE(a);
    Py_BEGIN_ALLOW_THREADS;
    for (int64_t i = 0; i < n; i++)
        dst[i] = dtype == SD_F16 ? sd_f32_to_f16(src[i]) : sd_f32_to_bf16(src[i]);
    Py_END_ALLOW_THREADS;
    return out;
}

#define KW (PyCFunction)(void (*)(void))
PyMethodDef sd_device_methods[] = {
    {"cuda_memory_info", py_cuda_memory_info, METH_NOARGS,
     "cuda_memory_info() -> (free, total): bytes of GPU memory"},
    {"cuda_memory_peak", (PyCFunction)(void (*)(void))py_cuda_memory_peak,
     METH_VARARGS | METH_KEYWORDS,
     "cuda_memory_peak(reset=False) -> the most bytes of GPU memory seen in use (by the "
     "whole process) after any of sdcore's allocations, since the last reset"},
    {"cuda_device_count", py_cuda_device_count, METH_NOARGS,
     "cuda_device_count() -> int: 0 without a driver, a GPU or a CUDA build"},
    {"cuda_available", py_cuda_available, METH_NOARGS,
     "cuda_available() -> (bool, reason): whether the CUDA backend can be used, and why not"},
    {"cuda_devices", py_cuda_devices, METH_NOARGS,
     "cuda_devices() -> list of dicts (index, name, compute_capability, memory)"},
    {"roundtrip", KW py_roundtrip, METH_VARARGS | METH_KEYWORDS,
     "roundtrip(x, device='cuda'): copy x to the device and back"},
    {"widen", py_widen, METH_VARARGS,
     "widen(x uint16, 'float16'|'bfloat16') -> float32: raw half bits to float32"},
    {"narrow", py_narrow, METH_VARARGS,
     "narrow(x float32, 'float16'|'bfloat16') -> uint16: round to nearest even"},
    {NULL, NULL, 0, NULL},
};

static PyThread_type_lock gpu_lock; /* made on first use, with the GIL held; never freed */

PyThread_type_lock sd_model_lock_new(const sd_backend *be) {
    if (be->device == SD_CPU)
        return PyThread_allocate_lock();
    if (!gpu_lock)
        gpu_lock = PyThread_allocate_lock();
    return gpu_lock;
}

void sd_model_lock_free(PyThread_type_lock lock) {
    if (lock && lock != gpu_lock)
        PyThread_free_lock(lock);
}
