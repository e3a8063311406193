/* The activation arena (see arena.h). */
#include <stdlib.h>
#include <string.h>

#include "arena.h"

void sd_arena_init(sd_arena *a, const sd_backend *be) {
    memset(a, 0, sizeof *a);
    a->be = be;
    a->dtype = SD_F32;
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
    for (int i = 0; i < a->count; i++) {
        sd_tensor t = {.data = a->slots[i].data, .device = a->be->device};
        if (t.data)
            a->be->free(a->be, &t);
    }
    free(a->slots);
    memset(a, 0, sizeof *a);
}

void sd_arena_reset(sd_arena *a) { a->next = 0; }

sd_status sd_arena_tensor(sd_arena *a, sd_tensor *t, sd_dtype dtype, int ndim,
                          const int64_t *shape) {
    if (a->next == a->cap) {
        int ncap = a->cap ? a->cap * 2 : 64;
        sd_arena_slot *n = realloc(a->slots, sizeof(sd_arena_slot) * (size_t)ncap);
        if (!n)
            return sd_fail(SD_ERR_NOMEM, "cannot grow the activation arena");
        memset(n + a->cap, 0, sizeof(sd_arena_slot) * (size_t)(ncap - a->cap));
        a->slots = n;
        a->cap = ncap;
    }
    *t = sd_tensor_view(NULL, dtype, a->be->device, ndim, shape);
    size_t need = sd_nbytes(t);
    sd_arena_slot *slot = &a->slots[a->next];
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
        a->epoch++;
    }
    t->data = slot->data;
    a->next++;
    if (a->next > a->count)
        a->count = a->next;
    return SD_OK;
}

sd_status sd_arena_act(sd_arena *a, sd_tensor *t, int ndim, int64_t d0, int64_t d1, int64_t d2,
                       int64_t d3) {
    int64_t shape[4] = {d0, d1, d2, d3};
    return sd_arena_tensor(a, t, a->dtype, ndim, shape);
}

size_t sd_arena_bytes(const sd_arena *a) {
    size_t total = 0;
    for (int i = 0; i < a->count; i++)
        total += a->slots[i].capacity;
    return total;
}
