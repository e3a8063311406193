/* The extension module sdcore._C: exception types, multi-phase init, method tables. */
#define SDCORE_BINDING_MAIN
#include "binding.h"

#include <string.h>

PyObject *sd_exc_error;
PyObject *sd_exc_format;
PyObject *sd_exc_unsupported;
PyObject *sd_exc_device;
PyObject *sd_exc_cancelled;

PyObject *sd_raise(sd_status status) {
    const char *msg = sd_last_error();
    if (!msg[0])
        msg = sd_status_name(status);
    PyObject *type;
    switch (status) {
    case SD_ERR_INVALID: type = PyExc_ValueError; break;
    case SD_ERR_NOMEM: type = PyExc_MemoryError; break;
    case SD_ERR_IO: type = PyExc_OSError; break;
    case SD_ERR_FORMAT: type = sd_exc_format; break;
    case SD_ERR_UNSUPPORTED: type = sd_exc_unsupported; break;
    case SD_ERR_DEVICE: type = sd_exc_device; break;
    case SD_ERR_CANCELLED: type = sd_exc_cancelled; break;
    default: type = sd_exc_error; break;
    }
    PyErr_SetString(type, msg);
    return NULL;
}

/* setup.py defines SDCORE_CUDA_NOT_BUILT as a string saying why the CUDA backend was left
 * out (nvcc or cuBLAS missing, SDCORE_CUDA=0) and how to get it */
#if !defined(SDCORE_WITH_CUDA) && !defined(SDCORE_CUDA_NOT_BUILT)
#define SDCORE_CUDA_NOT_BUILT "built without the CUDA backend"
#endif

static PyObject *build_info(PyObject *self, PyObject *noargs) {
    (void)self;
    (void)noargs;
    return Py_BuildValue("{s:O,s:i,s:s,s:s}", "cuda_built",
#ifdef SDCORE_WITH_CUDA
                         Py_True,
#else
                         Py_False,
#endif
                         "cpu_threads", sd_cpu_threads(), "blas", "OpenBLAS (scipy-openblas32)",
                         "cuda_not_built_because",
#ifdef SDCORE_WITH_CUDA
                         ""
#else
                         SDCORE_CUDA_NOT_BUILT
#endif
    );
}

static PyObject *set_cpu_threads(PyObject *self, PyObject *arg) {
    (void)self;
    long n = PyLong_AsLong(arg);
    if (n == -1 && PyErr_Occurred())
        return NULL;
    if (n < 1 || n > 4096) {
        PyErr_SetString(PyExc_ValueError, "set_cpu_threads: n must be between 1 and 4096");
        return NULL;
    }
    sd_set_cpu_threads((int)n);
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"build_info", build_info, METH_NOARGS, "build_info() -> dict: how this extension was built"},
    {"set_cpu_threads", set_cpu_threads, METH_O,
     "set_cpu_threads(n): threads for CPU ops (OpenMP and BLAS) started from this thread"},
    {NULL, NULL, 0, NULL},
};

static int add_methods(PyObject *module, PyMethodDef *defs) {
    return PyModule_AddFunctions(module, defs);
}

/* every binding file's functions, one table a line */
static PyMethodDef *method_tables[] = {
    module_methods,
    sd_ops_methods,
    sd_device_methods,
    sd_image_methods,
    sd_sampler_methods,
    sd_rng_methods,
    sd_txt2img_methods,
    sd_unet_methods,
    sd_vae_methods,
    sd_clip_methods,
    NULL,
};

/* every binding file's Python types, one a line */
static int (*type_inits[])(PyObject *) = {
    sd_weights_type_init,
    sd_sampler_type_init,
    sd_unet_type_init,
    sd_clip_type_init,
    sd_vae_type_init,
    sd_rng_type_init,
    NULL,
};

static PyObject *new_exception(PyObject *module, const char *name, PyObject *bases,
                               const char *doc) {
    char qualified[128];
    snprintf(qualified, sizeof qualified, "sdcore.%s", name);
    PyObject *exc = PyErr_NewExceptionWithDoc(qualified, doc, bases, NULL);
    if (!exc)
        return NULL;
    if (PyModule_AddObjectRef(module, name, exc) < 0) {
        Py_DECREF(exc);
        return NULL;
    }
    return exc;
}

static int module_exec(PyObject *module) {
    PyObject *bases = NULL;
    int rc = -1;
    for (PyMethodDef **table = method_tables; *table; table++)
        if (add_methods(module, *table) < 0)
            goto done;
    sd_exc_error = new_exception(module, "SdcoreError", PyExc_RuntimeError,
                                 "Base class of the errors the sdcore engine reports.");
    if (!sd_exc_error)
        goto done;
    bases = PyTuple_Pack(2, sd_exc_error, PyExc_ValueError);
    if (!bases)
        goto done;
    sd_exc_format = new_exception(module, "FormatError", bases, "A file is malformed.");
    sd_exc_unsupported = new_exception(module, "UnsupportedError", sd_exc_error,
                                       "Not available in this build or on this device.");
    sd_exc_device = new_exception(module, "DeviceError", sd_exc_error,
                                  "The CUDA runtime or cuBLAS reported an error.");
    sd_exc_cancelled = new_exception(module, "CancelledError", sd_exc_error,
                                     "A generation was cancelled.");
    if (!sd_exc_format || !sd_exc_unsupported || !sd_exc_device || !sd_exc_cancelled)
        goto done;
    for (int (**init)(PyObject *) = type_inits; *init; init++)
        if ((*init)(module) < 0)
            goto done;
    rc = 0;
done:
    Py_XDECREF(bases);
    return rc;
}

static PyModuleDef_Slot module_slots[] = {
    {Py_mod_exec, module_exec},
    {0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "sdcore._C",
    .m_doc = "The sdcore engine: ops, models and pipelines in C and CUDA.",
    .m_size = 0,
    .m_methods = NULL,
    .m_slots = module_slots,
};

PyMODINIT_FUNC PyInit__C(void) {
    /* the one import_array() of the extension */
    import_array();
    return PyModuleDef_Init(&module_def);
}
