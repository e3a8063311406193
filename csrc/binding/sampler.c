/* sdcore._C.Sampler: the engine's samplers on NumPy arrays, and sampler_names().
 *
 * The config dict takes a diffusers scheduler config as found in a model's
 * scheduler/scheduler_config.json: known keys are read (and checked), keys that only
 * describe another scheduler class are ignored, and keys that would change the
 * numbers in a way these samplers do not implement are refused by name. */
#include "binding.h"

#include <math.h>
#include <string.h>

#include "sampling/sampler.h"

typedef struct {
    PyObject_HEAD
    sd_sampler *sampler;
    /* device="cuda": the backend, its lock, and device copies of step's arrays (n floats
     * each, made by the first call) */
    const sd_backend *be;
    PyThread_type_lock lock;
    sd_tensor d_x, d_mo, d_noise;
} SamplerObject;

static PyObject *sd_sampler_type;

/* ---------------------------------------------------------------- config ---- */

static int config_int(PyObject *v, const char *key, int *out) {
    if (!PyLong_Check(v) || PyBool_Check(v)) {
        PyErr_Format(PyExc_ValueError, "sampler config: %s must be an int, got %s", key,
                     Py_TYPE(v)->tp_name);
        return -1;
    }
    long x = PyLong_AsLong(v);
    if (x == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "sampler config: %s is out of range", key);
        return -1;
    }
    if (x < -1000000000L || x > 1000000000L) {
        PyErr_Format(PyExc_ValueError, "sampler config: %s is out of range: %ld", key, x);
        return -1;
    }
    *out = (int)x;
    return 0;
}

static int config_float(PyObject *v, const char *key, double *out) {
    if (!(PyFloat_Check(v) || (PyLong_Check(v) && !PyBool_Check(v)))) {
        PyErr_Format(PyExc_ValueError, "sampler config: %s must be a number, got %s", key,
                     Py_TYPE(v)->tp_name);
        return -1;
    }
    double x = PyFloat_AsDouble(v);
    if (x == -1.0 && PyErr_Occurred())
        return -1;
    if (!isfinite(x)) {
        PyErr_Format(PyExc_ValueError, "sampler config: %s must be finite", key);
        return -1;
    }
    *out = x;
    return 0;
}

static int config_bool(PyObject *v, const char *key, int *out) {
    if (!PyBool_Check(v)) {
        PyErr_Format(PyExc_ValueError, "sampler config: %s must be true or false, got %s", key,
                     Py_TYPE(v)->tp_name);
        return -1;
    }
    *out = v == Py_True;
    return 0;
}

/* The index of v's string among names (NULL-terminated), or -1 with ValueError. */
static int config_choice(PyObject *v, const char *key, const char *const *names) {
    const char *s = PyUnicode_Check(v) ? PyUnicode_AsUTF8(v) : NULL;
    if (s)
        for (int k = 0; names[k]; k++)
            if (strcmp(s, names[k]) == 0)
                return k;
    if (PyErr_Occurred())
        PyErr_Clear();
    char allowed[256] = "";
    for (int k = 0; names[k]; k++) {
        strncat(allowed, k ? ", " : "", sizeof allowed - strlen(allowed) - 1);
        strncat(allowed, names[k], sizeof allowed - strlen(allowed) - 1);
    }
    PyErr_Format(PyExc_ValueError, "sampler config: %s must be one of %s, got %R", key, allowed,
                 v);
    return -1;
}

/* Keys whose only supported value is diffusers' default (None is also accepted). */
typedef struct {
    const char *key;
    enum { REQ_FALSE, REQ_STRING, REQ_NONE, REQ_NEG_INF } kind;
    const char *string;
} required_default;

static const required_default required_defaults[] = {
    {"thresholding", REQ_FALSE, NULL},
    {"rescale_betas_zero_snr", REQ_FALSE, NULL},
    {"use_exponential_sigmas", REQ_FALSE, NULL},
    {"use_beta_sigmas", REQ_FALSE, NULL},
    {"use_lu_lambdas", REQ_FALSE, NULL},
    {"use_flow_sigmas", REQ_FALSE, NULL},
    {"use_dynamic_shifting", REQ_FALSE, NULL},
    {"interpolation_type", REQ_STRING, "linear"},
    {"timestep_type", REQ_STRING, "discrete"},
    {"solver_type", REQ_STRING, "midpoint"},
    {"variance_type", REQ_NONE, NULL},
    {"sigma_min", REQ_NONE, NULL},
    {"sigma_max", REQ_NONE, NULL},
    {"lambda_min_clipped", REQ_NEG_INF, NULL},
};

static int check_required_default(const required_default *r, PyObject *v) {
    if (v == Py_None)
        return 0;
    int ok = 0;
    switch (r->kind) {
    case REQ_FALSE: ok = v == Py_False; break;
    case REQ_STRING: {
        const char *s = PyUnicode_Check(v) ? PyUnicode_AsUTF8(v) : NULL;
        ok = s && strcmp(s, r->string) == 0;
        break;
    }
    case REQ_NONE: ok = 0; break;
    case REQ_NEG_INF:
        ok = PyFloat_Check(v) && isinf(PyFloat_AsDouble(v)) && PyFloat_AsDouble(v) < 0;
        break;
    }
    if (PyErr_Occurred())
        PyErr_Clear();
    if (ok)
        return 0;
    PyErr_Format(PyExc_ValueError, "sampler config: %s=%R is not supported by sdcore's samplers",
                 r->key, v);
    return -1;
}

/* diffusers saves every config key, listing those it filled with its own defaults in
 * "_use_default_values"; from_config treats them as unset, so a scheduler class swapped
 * in keeps its own default (Euler's "linspace" spacing under a PNDM config's "leading"). */
static int is_unset_default(PyObject *dict, const char *key) {
    PyObject *listed = PyDict_GetItemString(dict, "_use_default_values");
    if (!listed || !(PyList_Check(listed) || PyTuple_Check(listed)))
        return 0;
    for (Py_ssize_t i = 0; i < PySequence_Size(listed); i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(listed, i);
        const char *name = PyUnicode_Check(item) ? PyUnicode_AsUTF8(item) : NULL;
        if (name && strcmp(name, key) == 0)
            return 1;
    }
    PyErr_Clear();
    return 0;
}

/* sdcore._C.SchedulerConfig(dict): a scheduler config parsed once, when a model is
 * loaded, then given to every txt2img call (or Sampler) in place of the dict. A key the dict
 * leaves out means what it means to each sampler's diffusers class, so the dict is parsed
 * once per sampler kind; a kind the config does not fit (pndm under skip_prk_steps false)
 * keeps its error for the call that asks for it. */
typedef struct {
    PyObject_HEAD
    sd_sampler_config cfg[SD_SAMPLER_COUNT];
    PyObject *betas[SD_SAMPLER_COUNT]; /* the float32 arrays cfg[k].trained_betas point into */
    PyObject *error[SD_SAMPLER_COUNT]; /* the ValueError message for kind k, or NULL */
} SchedulerConfigObject;

static PyObject *scheduler_config_type;

/* Fill cfg for a sampler of `kind` from a dict; betas_out receives a float32 array holding
 * trained_betas when the dict has them (the caller releases it once the sampler is
 * created). None gives SD 1.5's config. A dict starts from the defaults of the diffusers
 * class that `kind` mirrors, as from_config does, so a key left out means what it means to
 * that class (DDIMScheduler without clip_sample clips); keys that class does not have are
 * ignored, as from_config ignores them (Euler under a DDIM config with clip_sample). */
static int config_from_dict(PyObject *dict, int kind, sd_sampler_config *cfg,
                            PyObject **betas_out);

int sd_sampler_config_from_py(PyObject *obj, int kind, sd_sampler_config *cfg,
                              PyObject **betas_out) {
    if (scheduler_config_type && PyObject_TypeCheck(obj, (PyTypeObject *)scheduler_config_type)) {
        SchedulerConfigObject *parsed = (SchedulerConfigObject *)obj;
        if (parsed->error[kind]) {
            PyErr_SetObject(PyExc_ValueError, parsed->error[kind]);
            return -1;
        }
        *cfg = parsed->cfg[kind];
        *betas_out = Py_XNewRef(parsed->betas[kind]);
        return 0;
    }
    return config_from_dict(obj, kind, cfg, betas_out);
}

static int config_from_dict(PyObject *dict, int kind, sd_sampler_config *cfg,
                            PyObject **betas_out) {
    static const char *const schedules[] = {"scaled_linear", "linear", NULL};
    static const char *const predictions[] = {"epsilon", "v_prediction", NULL};
    static const char *const spacings[] = {"leading", "linspace", "trailing", NULL};
    static const char *const finals[] = {"zero", "sigma_min", NULL};
    PyObject *v;
    sd_sampler_config_default(cfg);
    *betas_out = NULL;
    if (dict == NULL || dict == Py_None)
        return 0;
    if (!PyDict_Check(dict)) {
        PyErr_Format(PyExc_TypeError, "Sampler: config must be a dict or None, got %s",
                     Py_TYPE(dict)->tp_name);
        return -1;
    }
    sd_sampler_config_class_default(kind, cfg);
    const int is_ddim = kind == SD_SAMPLER_DDIM, is_pndm = kind == SD_SAMPLER_PNDM;
    const int is_euler = kind == SD_SAMPLER_EULER;
    const int is_dpmpp = kind == SD_SAMPLER_DPMPP_2M || kind == SD_SAMPLER_DPMPP_2M_KARRAS;
#define GET(key)                                                                            \
    ((v = PyDict_GetItemString(dict, key)) != NULL && v != Py_None &&                      \
     !is_unset_default(dict, key))
    if (GET("num_train_timesteps") && config_int(v, "num_train_timesteps",
                                                 &cfg->num_train_timesteps) < 0)
        return -1;
    if (GET("beta_start") && config_float(v, "beta_start", &cfg->beta_start) < 0)
        return -1;
    if (GET("beta_end") && config_float(v, "beta_end", &cfg->beta_end) < 0)
        return -1;
    if (GET("beta_schedule")) {
        int k = config_choice(v, "beta_schedule", schedules);
        if (k < 0)
            return -1;
        cfg->beta_schedule = k == 0 ? SD_BETA_SCALED_LINEAR : SD_BETA_LINEAR;
    }
    if (GET("prediction_type")) {
        int k = config_choice(v, "prediction_type", predictions);
        if (k < 0)
            return -1;
        cfg->prediction_type = k == 0 ? SD_PREDICT_EPSILON : SD_PREDICT_V;
    }
    if (GET("steps_offset") && config_int(v, "steps_offset", &cfg->steps_offset) < 0)
        return -1;
    if (GET("timestep_spacing")) {
        int k = config_choice(v, "timestep_spacing", spacings);
        if (k < 0)
            return -1;
        cfg->timestep_spacing = k == 0   ? SD_SPACING_LEADING
                                : k == 1 ? SD_SPACING_LINSPACE
                                         : SD_SPACING_TRAILING;
    }
    if (is_ddim && GET("clip_sample") && config_bool(v, "clip_sample", &cfg->clip_sample) < 0)
        return -1;
    if (is_ddim && GET("clip_sample_range") &&
        config_float(v, "clip_sample_range", &cfg->clip_sample_range) < 0)
        return -1;
    if ((is_ddim || is_pndm) && GET("set_alpha_to_one") &&
        config_bool(v, "set_alpha_to_one", &cfg->set_alpha_to_one) < 0)
        return -1;
    /* lms has the key too in diffusers; read, so that true is refused rather than dropped */
    if (!is_ddim && !is_pndm && kind != SD_SAMPLER_EULER_A && GET("use_karras_sigmas") &&
        config_bool(v, "use_karras_sigmas", &cfg->use_karras_sigmas) < 0)
        return -1;
    if ((is_euler || is_dpmpp) && GET("final_sigmas_type")) {
        int k = config_choice(v, "final_sigmas_type", finals);
        if (k < 0)
            return -1;
        cfg->final_sigmas_type = k == 0 ? SD_FINAL_SIGMA_ZERO : SD_FINAL_SIGMA_MIN;
    }
    /* pndm is PNDMScheduler with skip_prk_steps=True (SD 1.5's choice): no Runge-Kutta
     * warm-up; a config that asks for one is refused rather than run without it */
    if (is_pndm && GET("skip_prk_steps") && v != Py_True) {
        PyErr_Format(PyExc_ValueError, "sampler config: skip_prk_steps=%R is not supported by "
                     "sdcore's pndm (it always skips the Runge-Kutta steps)", v);
        return -1;
    }
    if (is_dpmpp && GET("lower_order_final") &&
        config_bool(v, "lower_order_final", &cfg->lower_order_final) < 0)
        return -1;
    if (is_dpmpp && GET("euler_at_final") &&
        config_bool(v, "euler_at_final", &cfg->euler_at_final) < 0)
        return -1;
    if (GET("trained_betas")) {
        PyObject *arr = PyArray_FROMANY(v, NPY_FLOAT32, 1, 1, NPY_ARRAY_CARRAY);
        if (!arr) {
            PyErr_Clear();
            PyErr_SetString(PyExc_ValueError,
                            "sampler config: trained_betas must be a list of numbers or null");
            return -1;
        }
        if (PyArray_SIZE((PyArrayObject *)arr) != cfg->num_train_timesteps) {
            PyErr_Format(PyExc_ValueError,
                         "sampler config: trained_betas has %zd values, num_train_timesteps "
                         "is %d",
                         (Py_ssize_t)PyArray_SIZE((PyArrayObject *)arr),
                         cfg->num_train_timesteps);
            Py_DECREF(arr);
            return -1;
        }
        cfg->trained_betas = (const float *)PyArray_DATA((PyArrayObject *)arr);
        *betas_out = arr;
    }
    for (size_t k = 0; k < sizeof required_defaults / sizeof required_defaults[0]; k++) {
        v = PyDict_GetItemString(dict, required_defaults[k].key);
        if (v && check_required_default(&required_defaults[k], v) < 0) {
            Py_CLEAR(*betas_out);
            return -1;
        }
    }
#undef GET
    return 0;
}

/* --------------------------------------------------------------- Sampler ---- */

static PyObject *sampler_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"kind", "num_steps", "config", "device", NULL};
    const char *name = NULL, *device = "cpu";
    int num_steps = 0;
    PyObject *config = Py_None, *betas = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "si|Os:Sampler", keywords, &name, &num_steps,
                                     &config, &device))
        return NULL;
    const sd_backend *be = sd_backend_from_name(device);
    if (!be)
        return NULL;
    int kind = sd_sampler_parse_kind(name);
    if (kind < 0) {
        char names[256] = "";
        for (int k = 0; k < SD_SAMPLER_COUNT; k++) {
            strncat(names, k ? ", " : "", sizeof names - strlen(names) - 1);
            strncat(names, sd_sampler_kind_name(k), sizeof names - strlen(names) - 1);
        }
        PyErr_Format(PyExc_ValueError, "Sampler: kind '%s' is not one of %s", name, names);
        return NULL;
    }
    sd_sampler_config cfg;
    if (sd_sampler_config_from_py(config, kind, &cfg, &betas) < 0)
        return NULL;
    sd_sampler *s = NULL;
    sd_status st = sd_sampler_create(kind, &cfg, num_steps, &s);
    Py_XDECREF(betas);
    if (st != SD_OK)
        return sd_raise(st);
    SamplerObject *self = (SamplerObject *)type->tp_alloc(type, 0);
    if (!self) {
        sd_sampler_free(s);
        return NULL;
    }
    self->sampler = s;
    if (be->device != SD_CPU) {
        self->be = be;
        self->lock = sd_model_lock_new(be);
        st = sd_sampler_use_backend(s, be);
        int no_lock = !self->lock;
        if (no_lock || st != SD_OK) {
            Py_DECREF(self);
            return no_lock ? PyErr_NoMemory() : sd_raise(st);
        }
    }
    return (PyObject *)self;
}

static void sampler_dealloc(SamplerObject *self) {
    PyTypeObject *tp = Py_TYPE(self);
    sd_tensor *dev[] = {&self->d_x, &self->d_mo, &self->d_noise};
    for (int k = 0; k < 3; k++)
        if (dev[k]->data)
            self->be->free(self->be, dev[k]);
    sd_sampler_free(self->sampler);
    sd_model_lock_free(self->lock);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static PyObject *float_array(const float *src, npy_intp n) {
    PyObject *a = PyArray_SimpleNew(1, &n, NPY_FLOAT32);
    if (a)
        memcpy(PyArray_DATA((PyArrayObject *)a), src, sizeof(float) * (size_t)n);
    return a;
}

static PyObject *sampler_get_timesteps(SamplerObject *self, void *closure) {
    (void)closure;
    int n = sd_sampler_num_steps(self->sampler);
    PyObject *a = PyArray_SimpleNew(1, &(npy_intp){n}, NPY_FLOAT32);
    if (!a)
        return NULL;
    float *p = PyArray_DATA((PyArrayObject *)a);
    for (int i = 0; i < n; i++)
        p[i] = sd_sampler_timestep(self->sampler, i);
    return a;
}

static PyObject *sampler_get_sigmas(SamplerObject *self, void *closure) {
    (void)closure;
    const float *sigmas = sd_sampler_sigmas(self->sampler);
    if (!sigmas)
        Py_RETURN_NONE;
    return float_array(sigmas, sd_sampler_num_steps(self->sampler) + 1);
}

static PyObject *sampler_get_alphas_cumprod(SamplerObject *self, void *closure) {
    (void)closure;
    return float_array(sd_sampler_alphas_cumprod(self->sampler),
                       sd_sampler_num_train_timesteps(self->sampler));
}

static PyObject *sampler_get_init_noise_sigma(SamplerObject *self, void *closure) {
    (void)closure;
    return PyFloat_FromDouble((double)sd_sampler_init_noise_sigma(self->sampler));
}

static PyObject *sampler_get_needs_noise(SamplerObject *self, void *closure) {
    (void)closure;
    return PyBool_FromLong(sd_sampler_needs_noise(self->sampler));
}

static PyObject *sampler_get_kind(SamplerObject *self, void *closure) {
    (void)closure;
    return PyUnicode_FromString(sd_sampler_kind_name(sd_sampler_kind_of(self->sampler)));
}

static PyObject *sampler_get_num_steps(SamplerObject *self, void *closure) {
    (void)closure;
    return PyLong_FromLong(sd_sampler_num_steps(self->sampler));
}

/* A new float32 array shaped like t, holding a copy of t's data. */
static PyObject *copy_like(const sd_tensor *t, PyObject *like) {
    PyArrayObject *a = (PyArrayObject *)like;
    PyObject *out = PyArray_SimpleNew(PyArray_NDIM(a), PyArray_DIMS(a), NPY_FLOAT32);
    if (out)
        memcpy(PyArray_DATA((PyArrayObject *)out), t->data, sd_nbytes(t));
    return out;
}

static int same_shape(PyObject *a, PyObject *b) {
    PyArrayObject *x = (PyArrayObject *)a, *y = (PyArrayObject *)b;
    return PyArray_NDIM(x) == PyArray_NDIM(y) &&
           PyArray_CompareLists(PyArray_DIMS(x), PyArray_DIMS(y), PyArray_NDIM(x));
}

/* n floats on the sampler's device in *t, reusing it when it has that size */
static sd_status device_buffer(SamplerObject *self, sd_tensor *t, int64_t n) {
    if (t->data && t->shape[0] == n)
        return SD_OK;
    if (t->data)
        self->be->free(self->be, t);
    *t = sd_tensor_view(NULL, SD_F32, self->be->device, 1, (const int64_t[]){n});
    return self->be->alloc(self->be, t);
}

/* scale_model_input on the device: x in, out back (host arrays of n floats) */
static sd_status scale_on_device(SamplerObject *self, int i, float *x, int64_t n) {
    const sd_backend *be = self->be;
    SD_TRY(device_buffer(self, &self->d_x, n));
    SD_TRY(device_buffer(self, &self->d_mo, n));
    SD_TRY(be->upload(be, &self->d_x, x));
    SD_TRY(sd_sampler_scale_model_input(self->sampler, i, self->d_x.data, self->d_mo.data, n));
    return be->download(be, x, &self->d_mo);
}

/* step on the device: the arrays go up, x comes back updated */
static sd_status step_on_device(SamplerObject *self, int i, const float *mo, float *x,
                                const float *noise, int64_t n) {
    const sd_backend *be = self->be;
    SD_TRY(device_buffer(self, &self->d_x, n));
    SD_TRY(device_buffer(self, &self->d_mo, n));
    SD_TRY(be->upload(be, &self->d_x, x));
    SD_TRY(be->upload(be, &self->d_mo, mo));
    if (noise) {
        SD_TRY(device_buffer(self, &self->d_noise, n));
        SD_TRY(be->upload(be, &self->d_noise, noise));
    }
    SD_TRY(sd_sampler_step(self->sampler, i, self->d_mo.data, self->d_x.data,
                           noise ? self->d_noise.data : NULL, n));
    return be->download(be, x, &self->d_x);
}

static PyObject *sampler_scale_model_input(SamplerObject *self, PyObject *args) {
    int i;
    PyObject *x_obj;
    sd_tensor x;
    if (!PyArg_ParseTuple(args, "iO:scale_model_input", &i, &x_obj))
        return NULL;
    if (sd_array_arg(x_obj, "Sampler.scale_model_input", "x", 0, 1, SD_MAX_DIMS, &x) < 0)
        return NULL;
    PyObject *out = copy_like(&x, x_obj);
    if (!out)
        return NULL;
    float *o = PyArray_DATA((PyArrayObject *)out);
    sd_status st;
    if (self->be) {
        Py_BEGIN_ALLOW_THREADS;
        PyThread_acquire_lock(self->lock, WAIT_LOCK);
        st = scale_on_device(self, i, o, sd_numel(&x));
        PyThread_release_lock(self->lock);
        Py_END_ALLOW_THREADS;
    } else {
        st = sd_sampler_scale_model_input(self->sampler, i, o, o, sd_numel(&x));
    }
    if (st != SD_OK) {
        Py_DECREF(out);
        return sd_raise(st);
    }
    return out;
}

static PyObject *sampler_step(SamplerObject *self, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"i", "model_output", "sample", "noise", NULL};
    int i;
    PyObject *mo_obj, *x_obj, *noise_obj = Py_None;
    sd_tensor mo, x, noise = {0};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "iOO|O:step", keywords, &i, &mo_obj, &x_obj,
                                     &noise_obj))
        return NULL;
    if (sd_array_arg(mo_obj, "Sampler.step", "model_output", 0, 1, SD_MAX_DIMS, &mo) < 0 ||
        sd_array_arg(x_obj, "Sampler.step", "sample", 0, 1, SD_MAX_DIMS, &x) < 0)
        return NULL;
    if (!same_shape(mo_obj, x_obj)) {
        PyErr_SetString(PyExc_ValueError,
                        "Sampler.step: model_output and sample must have the same shape");
        return NULL;
    }
    if (noise_obj != Py_None) {
        if (sd_array_arg(noise_obj, "Sampler.step", "noise", 0, 1, SD_MAX_DIMS, &noise) < 0)
            return NULL;
        if (!same_shape(noise_obj, x_obj)) {
            PyErr_SetString(PyExc_ValueError,
                            "Sampler.step: noise must have the shape of sample");
            return NULL;
        }
    } else if (sd_sampler_needs_noise(self->sampler)) {
        PyErr_Format(PyExc_ValueError, "Sampler.step: sampler '%s' needs noise (a float32 "
                     "standard-normal array shaped like sample) every step",
                     sd_sampler_kind_name(sd_sampler_kind_of(self->sampler)));
        return NULL;
    }
    PyObject *out = copy_like(&x, x_obj);
    if (!out)
        return NULL;
    float *xo = PyArray_DATA((PyArrayObject *)out);
    const float *nz = noise.data ? (const float *)noise.data : NULL;
    sd_status st;
    if (self->be) {
        Py_BEGIN_ALLOW_THREADS;
        PyThread_acquire_lock(self->lock, WAIT_LOCK);
        st = step_on_device(self, i, (const float *)mo.data, xo, nz, sd_numel(&x));
        PyThread_release_lock(self->lock);
        Py_END_ALLOW_THREADS;
    } else {
        st = sd_sampler_step(self->sampler, i, (const float *)mo.data, xo, nz, sd_numel(&x));
    }
    if (st != SD_OK) {
        Py_DECREF(out);
        return sd_raise(st);
    }
    return out;
}

static PyGetSetDef sampler_getset[] = {
    {"kind", (getter)sampler_get_kind, NULL, "the sampler's name", NULL},
    {"num_steps", (getter)sampler_get_num_steps, NULL,
     "number of model calls (len(timesteps)); pndm makes one more than the steps asked for",
     NULL},
    {"timesteps", (getter)sampler_get_timesteps, NULL,
     "float32 array: the timestep given to the UNet at each step (diffusers' "
     "scheduler.timesteps)",
     NULL},
    {"sigmas", (getter)sampler_get_sigmas, NULL,
     "float32 array of num_steps + 1 sigmas, or None for ddim and pndm", NULL},
    {"alphas_cumprod", (getter)sampler_get_alphas_cumprod, NULL,
     "float32 cumulative alpha products of the training schedule", NULL},
    {"init_noise_sigma", (getter)sampler_get_init_noise_sigma, NULL,
     "scale of the initial noise", NULL},
    {"needs_noise", (getter)sampler_get_needs_noise, NULL,
     "whether step() needs a fresh noise array every step", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef sampler_methods[] = {
    {"scale_model_input", (PyCFunction)sampler_scale_model_input, METH_VARARGS,
     "scale_model_input(i, x) -> the UNet input for step i (a new float32 array)"},
    {"step", (PyCFunction)(void (*)(void))sampler_step, METH_VARARGS | METH_KEYWORDS,
     "step(i, model_output, sample, noise=None) -> the sample after step i (a new array).\n"
     "Steps must come in order 0, 1, ...; noise is required when needs_noise."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot sampler_slots[] = {
    {Py_tp_new, sampler_new},
    {Py_tp_dealloc, sampler_dealloc},
    {Py_tp_methods, sampler_methods},
    {Py_tp_getset, sampler_getset},
    {Py_tp_doc, "Sampler(kind, num_steps, config=None, device='cpu'): a diffusion sampler "
                "matching its diffusers scheduler; config is a scheduler config dict (SD 1.5's "
                "when None). With device='cuda' every update runs on the GPU (the arrays go "
                "there and back each call), as the pipeline runs them."},
    {0, NULL},
};

static PyType_Spec sampler_spec = {
    .name = "sdcore._C.Sampler",
    .basicsize = sizeof(SamplerObject),
    .flags = Py_TPFLAGS_DEFAULT,
    .slots = sampler_slots,
};

static void scheduler_config_clear(SchedulerConfigObject *self) {
    for (int k = 0; k < SD_SAMPLER_COUNT; k++) {
        Py_CLEAR(self->betas[k]);
        Py_CLEAR(self->error[k]);
    }
}

static PyObject *scheduler_config_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"config", NULL};
    PyObject *dict = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|O:SchedulerConfig", kwlist, &dict))
        return NULL;
    SchedulerConfigObject *self = (SchedulerConfigObject *)type->tp_alloc(type, 0);
    if (!self)
        return NULL;
    int usable = 0;
    for (int k = 0; k < SD_SAMPLER_COUNT; k++) {
        if (config_from_dict(dict, k, &self->cfg[k], &self->betas[k]) == 0) {
            usable++;
            continue;
        }
        if (!PyErr_ExceptionMatches(PyExc_ValueError))
            goto fail; /* not a config problem (a TypeError, no memory) */
        PyObject *type_, *value, *tb;
        PyErr_Fetch(&type_, &value, &tb);
        self->error[k] = value ? PyObject_Str(value) : PyUnicode_FromString("sampler config");
        Py_XDECREF(type_);
        Py_XDECREF(value);
        Py_XDECREF(tb);
        if (!self->error[k])
            goto fail;
    }
    if (!usable) { /* wrong for every sampler: say so at load */
        PyErr_SetObject(PyExc_ValueError, self->error[0]);
        goto fail;
    }
    return (PyObject *)self;
fail:
    scheduler_config_clear(self);
    Py_DECREF(self);
    return NULL;
}

static void scheduler_config_dealloc(SchedulerConfigObject *self) {
    PyTypeObject *tp = Py_TYPE(self);
    scheduler_config_clear(self);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static PyType_Slot scheduler_config_slots[] = {
    {Py_tp_new, scheduler_config_new},
    {Py_tp_dealloc, scheduler_config_dealloc},
    {Py_tp_doc, "SchedulerConfig(config=None): a scheduler config dict (SD 1.5's when None) "
                "parsed and checked once; txt2img and Sampler take it in place of the dict."},
    {0, NULL},
};

static PyType_Spec scheduler_config_spec = {
    .name = "sdcore._C.SchedulerConfig",
    .basicsize = sizeof(SchedulerConfigObject),
    .flags = Py_TPFLAGS_DEFAULT,
    .slots = scheduler_config_slots,
};

int sd_sampler_type_init(PyObject *module) {
    sd_sampler_type = PyType_FromModuleAndSpec(module, &sampler_spec, NULL);
    if (!sd_sampler_type || PyModule_AddObjectRef(module, "Sampler", sd_sampler_type) < 0)
        return -1;
    scheduler_config_type = PyType_FromModuleAndSpec(module, &scheduler_config_spec, NULL);
    if (!scheduler_config_type)
        return -1;
    return PyModule_AddObjectRef(module, "SchedulerConfig", scheduler_config_type);
}

static PyObject *sampler_names(PyObject *self, PyObject *noargs) {
    (void)self;
    (void)noargs;
    PyObject *list = PyList_New(SD_SAMPLER_COUNT);
    if (!list)
        return NULL;
    for (int k = 0; k < SD_SAMPLER_COUNT; k++) {
        PyObject *s = PyUnicode_FromString(sd_sampler_kind_name(k));
        if (!s) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, k, s);
    }
    return list;
}

PyMethodDef sd_sampler_methods[] = {
    {"sampler_names", sampler_names, METH_NOARGS,
     "sampler_names() -> the names Sampler accepts"},
    {NULL, NULL, 0, NULL},
};
