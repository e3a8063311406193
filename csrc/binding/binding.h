/* Shared by the binding's source files: the only code that includes Python.h/NumPy. */
#ifndef SDCORE_BINDING_H
#define SDCORE_BINDING_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* every file but module.c sees the array API imported once, in module.c */
#define PY_ARRAY_UNIQUE_SYMBOL sdcore_ARRAY_API
#ifndef SDCORE_BINDING_MAIN
#define NO_IMPORT_ARRAY
#endif
#define NPY_NO_DEPRECATED_API NPY_1_22_API_VERSION
#include <numpy/arrayobject.h>

#include "sdcore.h"

/* The module's exception types (created in module.c). */
extern PyObject *sd_exc_error;       /* base: sdcore.SdcoreError (RuntimeError) */
extern PyObject *sd_exc_format;      /* malformed file (also a ValueError) */
extern PyObject *sd_exc_unsupported; /* not available in this build or on this backend */
extern PyObject *sd_exc_device;      /* CUDA reported an error */
extern PyObject *sd_exc_cancelled;   /* a generation was cancelled */

/* Raise the Python exception for a non-OK status with the engine's message; returns NULL. */
PyObject *sd_raise(sd_status status);

/* The backend named by a `device` argument ("cpu" or "cuda"); NULL with an exception set. */
const sd_backend *sd_backend_from_name(const char *device);

/* A NumPy array argument viewed as a CPU tensor. Checks it is an ndarray (not None), of
 * an allowed dtype (float32; float16 too if allow_f16), C-contiguous, aligned, with
 * ndim in [min_ndim, max_ndim] and no empty dim. Raises TypeError/ValueError naming
 * `op` and `arg`. The tensor borrows the array's memory. */
int sd_array_arg(PyObject *obj, const char *op, const char *arg, int allow_f16, int min_ndim,
                 int max_ndim, sd_tensor *out);

/* sdcore._C.Weights (weights.c): the Python face of sd_weights. */
extern PyObject *sd_weights_type;
int sd_weights_type_init(PyObject *module);
/* The sd_weights inside a Weights object, or NULL with a TypeError naming op and arg. */
sd_weights *sd_weights_from_py(PyObject *obj, const char *op, const char *arg);
/* Wrap (and take ownership of) w; keepalive is referenced for as long as it lives. */
PyObject *sd_weights_to_py(sd_weights *w, PyObject *keepalive);

/* sdcore._C.Generator (rng.c): torch-compatible seeded noise. */
int sd_rng_type_init(PyObject *module);

/* method tables of each binding file, joined in module.c */
extern PyMethodDef sd_ops_methods[];
extern PyMethodDef sd_device_methods[];
extern PyMethodDef sd_rng_methods[];

#endif
