/* sdcore._C.txt2img: a whole generation with the GIL released.
 *
 * The progress callback is the only place the GIL is taken during a run: once per step,
 * briefly, to call Python with the step number and a copy of the latents. */
#include "binding.h"

#include <string.h>

#include "pipeline/txt2img.h"

typedef struct {
    PyObject *callback;  /* callable(step, total, latents) -> truthy to cancel, or None */
    PyObject *error;     /* an exception the callback raised, re-raised after the run */
    PyObject *exc_type, *exc_tb;
    npy_intp latent_dims[4];
} step_ctx;

static int on_step(void *ctx_ptr, int step, int total, const float *latents) {
    step_ctx *ctx = ctx_ptr;
    if (!ctx->callback)
        return 0;
    PyGILState_STATE g = PyGILState_Ensure();
    int stop = 0;
    PyObject *arr = Py_NewRef(Py_None), *res = NULL;
    if (latents) {
        Py_DECREF(arr);
        arr = PyArray_SimpleNew(4, ctx->latent_dims, NPY_FLOAT32);
        if (arr)
            memcpy(PyArray_DATA((PyArrayObject *)arr), latents,
                   PyArray_NBYTES((PyArrayObject *)arr));
    }
    if (arr)
        res = PyObject_CallFunction(ctx->callback, "iiO", step, total, arr);
    if (!res) {
        /* keep the callback's exception: the run stops and raises it */
        PyErr_Fetch(&ctx->exc_type, &ctx->error, &ctx->exc_tb);
        stop = 1;
    } else {
        stop = PyObject_IsTrue(res) == 1;
    }
    Py_XDECREF(res);
    Py_XDECREF(arr);
    PyGILState_Release(g);
    return stop;
}

/* an array argument of the given type and dims, contiguous */
static PyArrayObject *typed(PyObject *obj, int type, int ndim, const char *name) {
    if (!PyArray_Check(obj) || PyArray_TYPE((PyArrayObject *)obj) != type ||
        PyArray_NDIM((PyArrayObject *)obj) != ndim ||
        !PyArray_IS_C_CONTIGUOUS((PyArrayObject *)obj)) {
        PyErr_Format(PyExc_TypeError, "txt2img: argument '%s' must be a contiguous %d-D %s array",
                     name, ndim, type == NPY_FLOAT32 ? "float32" : "uint64");
        return NULL;
    }
    return (PyArrayObject *)obj;
}

static PyObject *py_txt2img(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"unet", "vae", "cond", "uncond", "guidance", "seeds", "width",
                             "height", "steps", "sampler", "scheduler_config",
                             "vae_scaling_factor", "vae_factor", "latent_channels", "callback",
                             "callback_latents", NULL};
    PyObject *unet_obj, *vae_obj, *cond_obj, *uncond_obj, *g_obj, *seeds_obj;
    PyObject *sched = Py_None, *callback = Py_None, *betas = NULL, *out = NULL;
    int width, height, steps, vae_factor = 8, latent_channels = 4, callback_latents = 1;
    const char *sampler_name;
    float scaling;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOOOiiisOf|iiOp:txt2img", kwlist, &unet_obj,
                                     &vae_obj, &cond_obj, &uncond_obj, &g_obj, &seeds_obj, &width,
                                     &height, &steps, &sampler_name, &sched, &scaling,
                                     &vae_factor, &latent_channels, &callback,
                                     &callback_latents))
        return NULL;
    PyThread_type_lock unet_lock, vae_lock;
    const sd_backend *be, *vae_be;
    sd_unet *unet = sd_unet_from_py(unet_obj, &unet_lock, &be);
    sd_vae *vae = unet ? sd_vae_from_py(vae_obj, &vae_lock, &vae_be) : NULL;
    if (!unet || !vae)
        return NULL;
    if (be != vae_be) {
        PyErr_SetString(PyExc_ValueError, "txt2img: the UNet and the VAE are on different devices");
        return NULL;
    }
    PyArrayObject *cond = typed(cond_obj, NPY_FLOAT32, 3, "cond");
    PyArrayObject *uncond = cond ? typed(uncond_obj, NPY_FLOAT32, 3, "uncond") : NULL;
    PyArrayObject *g = uncond ? typed(g_obj, NPY_FLOAT32, 1, "guidance") : NULL;
    PyArrayObject *seeds = g ? typed(seeds_obj, NPY_UINT64, 1, "seeds") : NULL;
    if (!seeds)
        return NULL;
    npy_intp n = PyArray_DIM(cond, 0);
    if (!PyArray_SAMESHAPE(cond, uncond) || PyArray_DIM(g, 0) != n ||
        PyArray_DIM(seeds, 0) != n) {
        PyErr_SetString(PyExc_ValueError,
                        "txt2img: cond and uncond must share a shape (n, T, C); guidance and "
                        "seeds must have n entries");
        return NULL;
    }
    int kind = sd_sampler_parse_kind(sampler_name);
    if (kind < 0) {
        PyErr_Format(PyExc_ValueError, "sampler: unknown sampler '%s'", sampler_name);
        return NULL;
    }
    if (callback != Py_None && !PyCallable_Check(callback)) {
        PyErr_SetString(PyExc_TypeError, "txt2img: callback must be callable or None");
        return NULL;
    }
    sd_sampler_config cfg;
    if (sd_sampler_config_from_py(sched, kind, &cfg, &betas) < 0)
        return NULL;
    if (vae_factor < 1 || vae_factor > 64 || latent_channels < 1 || latent_channels > 64 ||
        width < vae_factor || height < vae_factor || width % vae_factor || height % vae_factor ||
        width > 4096 || height > 4096) {
        PyErr_Format(PyExc_ValueError, "width and height must be multiples of %d up to 4096",
                     vae_factor);
        goto done;
    }
    npy_intp dims[4] = {n, height, width, 3};
    out = PyArray_SimpleNew(4, dims, NPY_UINT8);
    if (!out)
        goto done;
    step_ctx ctx = {.callback = callback == Py_None ? NULL : callback,
                    .latent_dims = {n, latent_channels, height / vae_factor,
                                    width / vae_factor}};
    sd_txt2img_params p = {
        .n = (int)n,
        .tokens = (int)PyArray_DIM(cond, 1),
        .width_ctx = (int)PyArray_DIM(cond, 2),
        .cond = PyArray_DATA(cond),
        .uncond = PyArray_DATA(uncond),
        .guidance = PyArray_DATA(g),
        .seeds = PyArray_DATA(seeds),
        .width = width,
        .height = height,
        .steps = steps,
        .sampler = kind,
        .sampler_config = &cfg,
        .vae_scaling_factor = scaling,
        .vae_factor = vae_factor,
        .latent_channels = latent_channels,
        .on_step = on_step,
        .on_step_latents = callback_latents,
        .ctx = &ctx,
    };
    uint8_t *pixels = PyArray_DATA((PyArrayObject *)out);
    sd_status s;
    Py_BEGIN_ALLOW_THREADS;
    PyThread_acquire_lock(unet_lock, WAIT_LOCK);
    if (vae_lock != unet_lock) /* GPU models share one lock */
        PyThread_acquire_lock(vae_lock, WAIT_LOCK);
    s = sd_txt2img(unet, vae, be, &p, pixels);
    if (vae_lock != unet_lock)
        PyThread_release_lock(vae_lock);
    PyThread_release_lock(unet_lock);
    Py_END_ALLOW_THREADS;
    if (ctx.exc_type) {
        PyErr_Restore(ctx.exc_type, ctx.error, ctx.exc_tb);
        Py_CLEAR(out);
    } else if (s != SD_OK) {
        Py_CLEAR(out);
        sd_raise(s);
    }
done:
    Py_XDECREF(betas);
    return out;
}

#define KW (PyCFunction)(void (*)(void))
PyMethodDef sd_txt2img_methods[] = {
    {"txt2img", KW py_txt2img, METH_VARARGS | METH_KEYWORDS,
     "txt2img(unet, vae, cond, uncond, guidance, seeds, width, height, steps, sampler, "
     "scheduler_config, vae_scaling_factor, vae_factor=8, latent_channels=4, callback=None, "
     "callback_latents=True) -> uint8 (n, H, W, 3). callback(step, total, latents) runs "
     "after every step and stops the run by returning True; latents is None when "
     "callback_latents is False (they then stay on the device)."},
    {NULL, NULL, 0, NULL},
};
