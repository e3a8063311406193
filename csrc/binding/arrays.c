/* NumPy arrays in and out, and backend names. */
#include "binding.h"

#include <string.h>

int sd_array_arg(PyObject *obj, const char *op, const char *arg, int allow_f16, int min_ndim,
                 int max_ndim, sd_tensor *out) {
    if (obj == NULL || obj == Py_None) {
        PyErr_Format(PyExc_TypeError, "%s: argument '%s' must be a NumPy array, got None", op,
                     arg);
        return -1;
    }
    if (!PyArray_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s: argument '%s' must be a NumPy array, got %s", op, arg,
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    PyArrayObject *a = (PyArrayObject *)obj;
    int type = PyArray_TYPE(a);
    sd_dtype dtype;
    if (type == NPY_FLOAT32)
        dtype = SD_F32;
    else if (type == NPY_FLOAT16 && allow_f16)
        dtype = SD_F16;
    else {
        PyErr_Format(PyExc_TypeError, "%s: argument '%s' must be float32%s, got %s", op, arg,
                     allow_f16 ? " or float16" : "", PyArray_DESCR(a)->typeobj->tp_name);
        return -1;
    }
    int ndim = PyArray_NDIM(a);
    if (ndim < min_ndim || ndim > max_ndim) {
        if (min_ndim == max_ndim)
            PyErr_Format(PyExc_ValueError, "%s: argument '%s' must have %d dims, got %d", op, arg,
                         min_ndim, ndim);
        else
            PyErr_Format(PyExc_ValueError, "%s: argument '%s' must have %d to %d dims, got %d",
                         op, arg, min_ndim, max_ndim, ndim);
        return -1;
    }
    if (!PyArray_IS_C_CONTIGUOUS(a) || !PyArray_ISALIGNED(a)) {
        PyErr_Format(PyExc_ValueError,
                     "%s: argument '%s' must be C-contiguous and aligned "
                     "(use numpy.ascontiguousarray)",
                     op, arg);
        return -1;
    }
    if (PyArray_ISBYTESWAPPED(a)) {
        PyErr_Format(PyExc_ValueError, "%s: argument '%s' must be in native byte order", op, arg);
        return -1;
    }
    int64_t shape[SD_MAX_DIMS];
    for (int i = 0; i < ndim; i++) {
        shape[i] = PyArray_DIM(a, i);
        if (shape[i] < 1) {
            PyErr_Format(PyExc_ValueError, "%s: argument '%s' has an empty dim %d", op, arg, i);
            return -1;
        }
    }
    *out = sd_tensor_view(PyArray_DATA(a), dtype, SD_CPU, ndim, shape);
    return 0;
}

const sd_backend *sd_backend_from_name(const char *device) {
    if (!device || strcmp(device, "cpu") == 0)
        return sd_cpu_backend();
    if (strcmp(device, "cuda") == 0) {
        const sd_backend *be = NULL;
        sd_status s = sd_cuda_backend(&be);
        if (s != SD_OK) {
            sd_raise(s);
            return NULL;
        }
        return be;
    }
    PyErr_Format(PyExc_ValueError, "device must be 'cpu' or 'cuda', got '%s'", device);
    return NULL;
}
