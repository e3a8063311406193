/* The activation arena (see arena.h). */
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "arena.h"

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
        for (int i = 0; i < p->count; i++) {
            sd_tensor t = {.data = p->slots[i].data, .device = p->be->device};
            if (t.data)
                p->be->free(p->be, &t);
        }
        free(p->slots);
        uint64_t epoch = p->epoch; /* kept: a later arena must not see an old epoch again */
        memset(p, 0, sizeof *p);
        p->epoch = epoch + 1;
    }
    if (shared)
        pthread_mutex_unlock(&device_pool_lock);
    memset(a, 0, sizeof *a);
}

void sd_arena_reset(sd_arena *a) { a->next = 0; }

sd_status sd_arena_tensor(sd_arena *a, sd_tensor *t, sd_dtype dtype, int ndim,
                          const int64_t *shape) {
    sd_arena_pool *p = a->pool;
    if (a->next == p->cap) {
        int ncap = p->cap ? p->cap * 2 : 64;
        sd_arena_slot *n = realloc(p->slots, sizeof(sd_arena_slot) * (size_t)ncap);
        if (!n)
            return sd_fail(SD_ERR_NOMEM, "cannot grow the activation arena");
        memset(n + p->cap, 0, sizeof(sd_arena_slot) * (size_t)(ncap - p->cap));
        p->slots = n;
        p->cap = ncap;
    }
    *t = sd_tensor_view(NULL, dtype, a->be->device, ndim, shape);
    size_t need = sd_nbytes(t);
    sd_arena_slot *slot = &p->slots[a->next];
    if (slot->capacity < need) {
        sd_tensor old = {.data = slot->data, .device = a->be->device};
        if (old.data)
            a->be->free(a->be, &old);
        slot->data = NULL;
        slot->capacity = 0;
        sd_tensor fresh = *t;
        SD_TRY(a->be->alloc(a->be, &fresh));
        slot->data = fresh.data;
        slot->capacity = need;
        p->epoch++;
    }
    t->data = slot->data;
    a->next++;
    if (a->next > p->count)
        p->count = a->next;
    return SD_OK;
}

sd_status sd_arena_act(sd_arena *a, sd_tensor *t, int ndim, int64_t d0, int64_t d1, int64_t d2,
                       int64_t d3) {
    int64_t shape[4] = {d0, d1, d2, d3};
    return sd_arena_tensor(a, t, a->dtype, ndim, shape);
}

size_t sd_arena_bytes(const sd_arena *a) {
    size_t total = 0;
    for (int i = 0; i < a->pool->count; i++)
        total += a->pool->slots[i].capacity;
    return total;
}
