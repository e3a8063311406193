/* The activation arena (see arena.h). */
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/arena.h"

/* The GPU's pool, shared by every arena on a non-CPU backend (there is one such backend
 * per process). Touched only at model creation and destruction (under the GIL) and by
 * forward passes (under the binding's GPU lock). */
static sd_arena_pool device_pool;
/* guards attaching and detaching (models are made with the GIL released) */
static pthread_mutex_t device_pool_lock = PTHREAD_MUTEX_INITIALIZER;

void sd_arena_init(sd_arena *a, const sd_backend *be) {
    memset(a, 0, sizeof *a);
    a->be = be;
    a->dtype = SD_F32;
    if (be->device == SD_CPU) {
        a->pool = &a->own;
        a->own.be = be;
        a->own.users = 1;
        return;
    }
    pthread_mutex_lock(&device_pool_lock);
    a->pool = &device_pool;
    device_pool.be = be;
    device_pool.users++;
    pthread_mutex_unlock(&device_pool_lock);
}

sd_status sd_arena_set_dtype(sd_arena *a, sd_dtype dtype, const char *model) {
    if (dtype != SD_F32 && dtype != SD_F16 && dtype != SD_BF16)
        return sd_fail(SD_ERR_INVALID, "%s: unknown activation dtype %d", model, (int)dtype);
    if (dtype != SD_F32 && a->be->device == SD_CPU)
        return sd_fail(SD_ERR_UNSUPPORTED,
                       "%s: the CPU backend computes in float32; %s activations need a GPU", model,
                       sd_dtype_name(dtype));
    a->dtype = dtype;
    return SD_OK;
}

/* A backend buffer of `bytes` (a multiple of SD_ARENA_ALIGN). */
static sd_status buffer_alloc(const sd_backend *be, size_t bytes, void **out) {
    sd_tensor t = sd_tensor_view(NULL, SD_F32, be->device, 1,
                                 (const int64_t[]){(int64_t)(bytes / sizeof(float))});
    SD_TRY(be->alloc(be, &t));
    *out = t.data;
    return SD_OK;
}

static void buffer_free(const sd_backend *be, void *data) {
    if (!data)
        return;
    sd_tensor t = {.data = data, .device = be->device};
    be->free(be, &t);
}

static void free_spills(sd_arena_pool *p) {
    for (int i = 0; i < p->spill_count; i++)
        buffer_free(p->be, p->spill[i]);
    p->spill_count = 0;
}

void sd_arena_free(sd_arena *a) {
    sd_arena_pool *p = a->pool;
    if (!p) {
        memset(a, 0, sizeof *a);
        return;
    }
    bool shared = p == &device_pool;
    if (shared)
        pthread_mutex_lock(&device_pool_lock);
    if (--p->users == 0) {
        free_spills(p);
        free(p->spill);
        buffer_free(p->be, p->base);
        uint64_t epoch = p->epoch; /* kept: a later arena must not see an old epoch again */
        memset(p, 0, sizeof *p);
        p->epoch = epoch + 1;
    }
    if (shared)
        pthread_mutex_unlock(&device_pool_lock);
    memset(a, 0, sizeof *a);
}

sd_status sd_arena_reset(sd_arena *a) {
    sd_arena_pool *p = a->pool;
    a->top = 0;
    if (p->deepest <= p->capacity && p->spill_count == 0)
        return SD_OK;
    /* the last runs went deeper than the buffer: one buffer of the deepest size instead
     * (the backend's free waits for queued work first) */
    free_spills(p);
    buffer_free(p->be, p->base);
    p->base = NULL;
    p->capacity = 0;
    p->epoch++;
    SD_TRY(buffer_alloc(p->be, p->deepest, &p->base));
    p->capacity = p->deepest;
    return SD_OK;
}

sd_status sd_arena_tensor(sd_arena *a, sd_tensor *t, sd_dtype dtype, int ndim,
                          const int64_t *shape) {
    sd_arena_pool *p = a->pool;
    *t = sd_tensor_view(NULL, dtype, a->be->device, ndim, shape);
    size_t need = (sd_nbytes(t) + SD_ARENA_ALIGN - 1) / SD_ARENA_ALIGN * SD_ARENA_ALIGN;
    if (need == 0)
        need = SD_ARENA_ALIGN;
    size_t at = a->top;
    a->top += need;
    if (a->top > p->deepest)
        p->deepest = a->top;
    if (a->planning) {
        t->data = (void *)(uintptr_t)(SD_ARENA_ALIGN + at); /* never dereferenced */
        return SD_OK;
    }
    if (a->top <= p->capacity) {
        t->data = (char *)p->base + at;
        return SD_OK;
    }
    /* planning: a buffer of its own until the next reset makes room for the whole stack */
    if (p->spill_count == p->spill_cap) {
        int ncap = p->spill_cap ? p->spill_cap * 2 : 64;
        void **n = realloc(p->spill, sizeof(void *) * (size_t)ncap);
        if (!n) {
            a->top = at;
            return sd_fail(SD_ERR_NOMEM, "cannot grow the activation arena");
        }
        p->spill = n;
        p->spill_cap = ncap;
    }
    sd_status s = buffer_alloc(p->be, need, &t->data);
    if (s != SD_OK) {
        a->top = at;
        return s;
    }
    p->spill[p->spill_count++] = t->data;
    p->epoch++;
    return SD_OK;
}

sd_status sd_arena_act(sd_arena *a, sd_tensor *t, int ndim, int64_t d0, int64_t d1, int64_t d2,
                       int64_t d3) {
    int64_t shape[4] = {d0, d1, d2, d3};
    return sd_arena_tensor(a, t, a->dtype, ndim, shape);
}

size_t sd_arena_bytes(const sd_arena *a) {
    const sd_arena_pool *p = a->pool;
    return p->deepest > p->capacity ? p->deepest : p->capacity;
}
