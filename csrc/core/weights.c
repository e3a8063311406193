/* Named tensor sets: what a checkpoint file becomes once read. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sdcore.h"

typedef struct {
    char *name;
    sd_tensor tensor;
} named_tensor;

typedef struct {
    void *ptr;
    size_t size;
    void (*release)(void *ptr, size_t size);
} kept_block;

typedef struct {
    char *key, *value;
} metadata_item;

struct sd_weights {
    named_tensor *items;
    int64_t count, cap;
    kept_block *kept;
    int64_t kept_count, kept_cap;
    metadata_item *meta;
    int64_t meta_count, meta_cap;
    int sealed;
};

sd_status sd_weights_create(sd_weights **out) {
    *out = calloc(1, sizeof(sd_weights));
    if (!*out)
        return sd_fail(SD_ERR_NOMEM, "cannot allocate a weight set");
    return SD_OK;
}

void sd_weights_free(sd_weights *w) {
    if (!w)
        return;
    for (int64_t i = 0; i < w->count; i++)
        free(w->items[i].name);
    free(w->items);
    for (int64_t i = 0; i < w->kept_count; i++)
        w->kept[i].release(w->kept[i].ptr, w->kept[i].size);
    free(w->kept);
    for (int64_t i = 0; i < w->meta_count; i++) {
        free(w->meta[i].key);
        free(w->meta[i].value);
    }
    free(w->meta);
    free(w);
}

/* Grow a dynamic array of `elem`-sized items to hold one more. */
static int grow(void **items, int64_t *cap, int64_t count, size_t elem) {
    if (count < *cap)
        return 1;
    int64_t ncap = *cap ? *cap * 2 : 64;
    void *n = realloc(*items, (size_t)ncap * elem);
    if (!n)
        return 0;
    *items = n;
    *cap = ncap;
    return 1;
}

sd_status sd_weights_add(sd_weights *w, const char *name, sd_tensor t) {
    if (!grow((void **)&w->items, &w->cap, w->count, sizeof(named_tensor)))
        return sd_fail(SD_ERR_NOMEM, "cannot grow the weight set");
    char *copy = strdup(name);
    if (!copy)
        return sd_fail(SD_ERR_NOMEM, "cannot copy a tensor name");
    w->items[w->count].name = copy;
    w->items[w->count].tensor = t;
    w->count++;
    w->sealed = 0;
    return SD_OK;
}

sd_status sd_weights_keep(sd_weights *w, void *ptr, size_t size,
                          void (*release)(void *ptr, size_t size)) {
    if (!grow((void **)&w->kept, &w->kept_cap, w->kept_count, sizeof(kept_block))) {
        release(ptr, size); /* the caller hands ownership over either way */
        return sd_fail(SD_ERR_NOMEM, "cannot grow the weight set");
    }
    w->kept[w->kept_count++] = (kept_block){ptr, size, release};
    return SD_OK;
}

sd_status sd_weights_add_metadata(sd_weights *w, const char *key, const char *value) {
    if (!grow((void **)&w->meta, &w->meta_cap, w->meta_count, sizeof(metadata_item)))
        return sd_fail(SD_ERR_NOMEM, "cannot grow the weight set's metadata");
    char *k = strdup(key), *v = strdup(value);
    if (!k || !v) {
        free(k);
        free(v);
        return sd_fail(SD_ERR_NOMEM, "cannot copy a metadata entry");
    }
    w->meta[w->meta_count++] = (metadata_item){k, v};
    return SD_OK;
}

int64_t sd_weights_metadata_count(const sd_weights *w) { return w->meta_count; }

const char *sd_weights_metadata_key(const sd_weights *w, int64_t i) {
    return i >= 0 && i < w->meta_count ? w->meta[i].key : NULL;
}

const char *sd_weights_metadata_value(const sd_weights *w, int64_t i) {
    return i >= 0 && i < w->meta_count ? w->meta[i].value : NULL;
}

static int by_name(const void *a, const void *b) {
    return strcmp(((const named_tensor *)a)->name, ((const named_tensor *)b)->name);
}

sd_status sd_weights_seal(sd_weights *w) {
    if (w->count > 1) /* an empty set has no items array, and qsort's may not be NULL */
        qsort(w->items, (size_t)w->count, sizeof(named_tensor), by_name);
    for (int64_t i = 1; i < w->count; i++)
        if (strcmp(w->items[i - 1].name, w->items[i].name) == 0)
            return sd_fail(SD_ERR_FORMAT, "tensor '%s' appears twice", w->items[i].name);
    w->sealed = 1;
    return SD_OK;
}

int64_t sd_weights_count(const sd_weights *w) { return w->count; }

const char *sd_weights_name(const sd_weights *w, int64_t i) {
    return i >= 0 && i < w->count ? w->items[i].name : NULL;
}

const sd_tensor *sd_weights_at(const sd_weights *w, int64_t i) {
    return i >= 0 && i < w->count ? &w->items[i].tensor : NULL;
}

const sd_tensor *sd_weights_find(const sd_weights *w, const char *name) {
    if (w->sealed) {
        named_tensor key = {.name = (char *)name};
        named_tensor *hit = bsearch(&key, w->items, (size_t)w->count, sizeof(named_tensor), by_name);
        return hit ? &hit->tensor : NULL;
    }
    for (int64_t i = 0; i < w->count; i++)
        if (strcmp(w->items[i].name, name) == 0)
            return &w->items[i].tensor;
    return NULL;
}

sd_status sd_weights_require(const sd_weights *w, const char *name, int ndim,
                             const int64_t *shape, const sd_tensor **out) {
    const sd_tensor *t = sd_weights_find(w, name);
    *out = NULL;
    if (!t)
        return sd_fail(SD_ERR_FORMAT, "tensor '%s' is missing from the checkpoint", name);
    int ok = t->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++)
        ok = t->shape[i] == shape[i];
    if (!ok) {
        sd_tensor expect = sd_tensor_view(NULL, t->dtype, t->device, ndim, shape);
        char got[96], want[96];
        return sd_fail(SD_ERR_FORMAT, "tensor '%s' has shape %s, expected %s", name,
                       sd_shape_str(t, got, sizeof got), sd_shape_str(&expect, want, sizeof want));
    }
    *out = t;
    return SD_OK;
}

/* ------------------------------------------------------------ on a device -- */

/* Device blocks of sd_weights_to_backend go back to the CUDA backend (the only
 * backend with memory of its own). */
static void release_device_block(void *ptr, size_t size) {
    (void)size;
    const sd_backend *be = NULL;
    if (sd_cuda_backend(&be) == SD_OK) {
        sd_tensor t = {.data = ptr, .device = be->device};
        be->free(be, &t);
    }
}

#define DEVICE_ALIGN 256

sd_status sd_weights_to_backend(const sd_weights *src, const sd_backend *be, sd_dtype dtype,
                                sd_weights **out) {
    *out = NULL;
    if (be->device == SD_CPU)
        return sd_fail(SD_ERR_INVALID, "weights: the CPU reads weights where they are");
    if (be->device != SD_CUDA)
        return sd_fail(SD_ERR_UNSUPPORTED, "weights: no device copy for the %s backend", be->name);
    /* one block for all tensors: one allocation, one free, no fragmentation */
    size_t total = 0, largest = 0;
    for (int64_t i = 0; i < src->count; i++) {
        const sd_tensor *t = &src->items[i].tensor;
        if (t->device != SD_CPU)
            return sd_fail(SD_ERR_INVALID, "weights: '%s' is already on a device",
                           src->items[i].name);
        size_t bytes = (size_t)sd_numel(t) * sd_dtype_size(dtype);
        total += (bytes + DEVICE_ALIGN - 1) / DEVICE_ALIGN * DEVICE_ALIGN;
        largest = bytes > largest ? bytes : largest;
    }
    sd_weights *w = NULL;
    SD_TRY(sd_weights_create(&w));
    sd_tensor block = sd_tensor_view(NULL, SD_F32, be->device, 1,
                                     (const int64_t[]){(int64_t)(total / 4 + 1)});
    sd_status s = be->alloc(be, &block);
    if (s != SD_OK) {
        sd_weights_free(w);
        return s;
    }
    s = sd_weights_keep(w, block.data, total, release_device_block);
    /* widened to f32 then narrowed: any stored dtype to any wanted one */
    float *wide = s == SD_OK ? malloc(largest / sd_dtype_size(dtype) * sizeof(float) + 1) : NULL;
    void *narrow = s == SD_OK ? malloc(largest + 1) : NULL;
    if (s == SD_OK && (!wide || !narrow))
        s = sd_fail(SD_ERR_NOMEM, "weights: no host memory to convert a %zu-byte tensor",
                    largest);
    size_t at = 0;
    for (int64_t i = 0; s == SD_OK && i < src->count; i++) {
        const sd_tensor *t = &src->items[i].tensor;
        int64_t n = sd_numel(t);
        sd_tensor d = *t;
        d.dtype = dtype;
        d.device = be->device;
        d.data = (char *)block.data + at;
        at += ((size_t)n * sd_dtype_size(dtype) + DEVICE_ALIGN - 1) / DEVICE_ALIGN * DEVICE_ALIGN;
        const void *host = t->data;
        if (t->dtype != dtype) {
            sd_widen_to_f32(t->data, t->dtype, wide, n);
            sd_narrow_from_f32(wide, dtype, narrow, n);
            host = narrow;
        }
        if (n > 0)
            s = be->upload(be, &d, host);
        if (s == SD_OK)
            s = sd_weights_add(w, src->items[i].name, d);
    }
    free(wide);
    free(narrow);
    for (int64_t i = 0; s == SD_OK && i < src->meta_count; i++)
        s = sd_weights_add_metadata(w, src->meta[i].key, src->meta[i].value);
    if (s == SD_OK)
        s = sd_weights_seal(w);
    if (s != SD_OK) {
        sd_weights_free(w);
        return s;
    }
    *out = w;
    return SD_OK;
}

/* Whether n elements of dtype at src are all finite: the exponent field is all ones exactly
 * for NaN and the infinities, in each of the three formats. */
static int all_finite(const void *src, sd_dtype dtype, int64_t n) {
    int bad = 0;
    if (dtype == SD_F32) {
        const uint32_t *x = src;
#pragma omp parallel for reduction(| : bad)
        for (int64_t i = 0; i < n; i++)
            bad |= (x[i] & 0x7f800000u) == 0x7f800000u;
    } else {
        const uint16_t *x = src;
        const uint16_t mask = dtype == SD_F16 ? 0x7c00u : 0x7f80u;
#pragma omp parallel for reduction(| : bad)
        for (int64_t i = 0; i < n; i++)
            bad |= (x[i] & mask) == mask;
    }
    return !bad;
}

int64_t sd_weights_first_nonfinite(const sd_weights *w) {
    for (int64_t i = 0; i < w->count; i++) {
        const sd_tensor *t = &w->items[i].tensor;
        if (t->device == SD_CPU && !all_finite(t->data, t->dtype, sd_numel(t)))
            return i;
    }
    return -1;
}
