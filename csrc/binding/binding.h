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
/* 'float32', 'float16' or 'bfloat16' -> dtype; -1 with a ValueError naming `what`. */
int sd_dtype_from_name(const char *name, const char *what, sd_dtype *out);

/* A NumPy array argument viewed as a CPU tensor. Checks it is an ndarray (not None), of
 * an allowed dtype (float32; float16 too if allow_f16), C-contiguous, aligned, with
 * ndim in [min_ndim, max_ndim] and no empty dim. Raises TypeError/ValueError naming
 * `op` and `arg`. The tensor borrows the array's memory. */
int sd_array_arg(PyObject *obj, const char *op, const char *arg, int allow_f16, int min_ndim,
                 int max_ndim, sd_tensor *out);

/* The lock a model holds while it runs (device.c): its own on the CPU; on a GPU one lock
 * for every model, since GPU models share the device's activation pool, scratch buffers
 * and stream. Freed with sd_model_lock_free. NULL when out of memory. */
PyThread_type_lock sd_model_lock_new(const sd_backend *be);
void sd_model_lock_free(PyThread_type_lock lock);

/* sdcore._C.Weights (weights.c): the Python face of sd_weights. */
extern PyObject *sd_weights_type;
int sd_weights_type_init(PyObject *module);
/* The sd_weights inside a Weights object, or NULL with a TypeError naming op and arg. */
sd_weights *sd_weights_from_py(PyObject *obj, const char *op, const char *arg);
/* Wrap (and take ownership of) w; keepalive is referenced for as long as it lives. */
PyObject *sd_weights_to_py(sd_weights *w, PyObject *keepalive);
/* A model's tensor declarations (models/tensors.h) as a list of (name, shape tuple,
 * required) for Python; takes the list and frees it. NULL with an exception set when
 * status is not SD_OK (the status's message) or on failure. */
struct sd_tensor_decls_s;
PyObject *sd_decls_to_py(sd_status status, struct sd_tensor_decls_s *decls);

/* sdcore._C.Sampler (sampler.c) */
int sd_sampler_type_init(PyObject *module);
/* sdcore._C.VAE (vae.c) */
int sd_vae_type_init(PyObject *module);
struct sd_vae;
struct sd_vae *sd_vae_from_py(PyObject *obj, PyThread_type_lock *lock, const sd_backend **be);
/* sdcore._C.ClipTextModel (clip.c) */
int sd_clip_type_init(PyObject *module);
/* A scheduler config dict, or a SchedulerConfig parsed from one, -> cfg (sampler.c);
 * betas_out holds trained_betas, if any, for as long as cfg is used. -1 with ValueError
 * naming the key. */
#include "sampling/sampler.h"
int sd_sampler_config_from_py(PyObject *dict, int kind, sd_sampler_config *cfg,
                              PyObject **betas_out);

/* sdcore._C.UNet (unet.c) */
struct sd_unet;
/* The model inside a UNet object, its forward lock and backend; NULL with a TypeError. */
struct sd_unet *sd_unet_from_py(PyObject *obj, PyThread_type_lock *lock, const sd_backend **be);
int sd_unet_type_init(PyObject *module);
/* sdcore._C.Generator (rng.c): torch-compatible seeded noise. */
int sd_rng_type_init(PyObject *module);

/* method tables of each binding file, joined in module.c */
extern PyMethodDef sd_ops_methods[];
extern PyMethodDef sd_device_methods[];
extern PyMethodDef sd_image_methods[];
extern PyMethodDef sd_sampler_methods[];
extern PyMethodDef sd_rng_methods[];
extern PyMethodDef sd_txt2img_methods[];
extern PyMethodDef sd_unet_methods[];
extern PyMethodDef sd_vae_methods[];
extern PyMethodDef sd_clip_methods[];

#endif
