/* Tensor declarations of the models (see tensors.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tensors.h"

void sd_decls_init(sd_tensor_decls *d) { memset(d, 0, sizeof *d); }

void sd_decls_free(sd_tensor_decls *d) {
    for (int i = 0; i < d->count; i++)
        free(d->items[i].name);
    free(d->items);
    sd_decls_init(d);
}

void sd_decls_detach(sd_tensor_decls *d) {
    for (int i = 0; i < d->count; i++) {
        d->items[i].ref = NULL;
        d->items[i].view = NULL;
    }
}

/* a new item named "<prefix>.<name>", or NULL (out of memory, reported) */
static sd_tensor_decl *append(sd_tensor_decls *d, const char *prefix, const char *name) {
    if (d->count == d->cap) {
        int cap = d->cap ? 2 * d->cap : 256;
        sd_tensor_decl *items = realloc(d->items, (size_t)cap * sizeof *items);
        if (!items) {
            sd_fail(SD_ERR_NOMEM, "cannot grow a tensor list");
            return NULL;
        }
        d->items = items;
        d->cap = cap;
    }
    const char *dot = prefix[0] ? "." : "";
    size_t len = strlen(prefix) + strlen(dot) + strlen(name) + 1;
    char *full = malloc(len);
    if (!full) {
        sd_fail(SD_ERR_NOMEM, "cannot copy a tensor name");
        return NULL;
    }
    snprintf(full, len, "%s%s%s", prefix, dot, name);
    sd_tensor_decl *t = &d->items[d->count++];
    memset(t, 0, sizeof *t);
    t->name = full;
    return t;
}

sd_status sd_decl(sd_tensor_decls *d, const char *prefix, const char *name, int ndim,
                  const int64_t *shape, int flags, const sd_tensor **ref) {
    if (ndim < 1 || ndim > SD_MAX_DIMS)
        return sd_fail(SD_ERR_INVALID, "%s.%s: %d dims declared", prefix, name, ndim);
    sd_tensor_decl *t = append(d, prefix, name);
    if (!t)
        return SD_ERR_NOMEM;
    t->ndim = ndim;
    memcpy(t->shape, shape, (size_t)ndim * sizeof *shape);
    t->flags = flags;
    t->ref = ref;
    return SD_OK;
}

sd_status sd_decl_view(sd_tensor_decls *d, const char *prefix, const char *name, int C,
                       sd_tensor *view) {
    SD_TRY(sd_decl(d, prefix, name, 2, (const int64_t[]){C, C}, SD_DECL_CONV1X1_OK, NULL));
    d->items[d->count - 1].view = view;
    return SD_OK;
}

/* "<name>.weight" and "<name>.bias" */
static sd_status decl_pair(sd_tensor_decls *d, const char *prefix, const char *name, int ndim,
                           const int64_t *shape, const sd_tensor **w, const sd_tensor **b) {
    char leaf[256];
    snprintf(leaf, sizeof leaf, "%s.weight", name);
    SD_TRY(sd_decl(d, prefix, leaf, ndim, shape, 0, w));
    if (!b)
        return SD_OK;
    snprintf(leaf, sizeof leaf, "%s.bias", name);
    return sd_decl(d, prefix, leaf, 1, shape, 0, b);
}

sd_status sd_decl_norm(sd_tensor_decls *d, const char *prefix, const char *name, int C,
                       const sd_tensor **w, const sd_tensor **b) {
    return decl_pair(d, prefix, name, 1, (const int64_t[]){C}, w, b);
}

sd_status sd_decl_linear(sd_tensor_decls *d, const char *prefix, const char *name, int out,
                         int in, const sd_tensor **w, const sd_tensor **b) {
    return decl_pair(d, prefix, name, 2, (const int64_t[]){out, in}, w, b);
}

sd_status sd_decl_conv(sd_tensor_decls *d, const char *prefix, const char *name, int out, int in,
                       int k, const sd_tensor **w, const sd_tensor **b) {
    return decl_pair(d, prefix, name, 4, (const int64_t[]){out, in, k, k}, w, b);
}

/* a 1x1 conv (C, C, 1, 1) where a (C, C) linear is declared */
static int is_conv1x1_of(const sd_tensor *t, const sd_tensor_decl *decl) {
    return t->ndim == 4 && t->shape[0] == decl->shape[0] && t->shape[1] == decl->shape[1] &&
           t->shape[2] == 1 && t->shape[3] == 1;
}

static sd_status bind_one(const sd_tensor_decl *decl, const sd_weights *w) {
    const sd_tensor *t = sd_weights_find(w, decl->name);
    if (!t && (decl->flags & SD_DECL_OPTIONAL)) {
        if (decl->ref)
            *decl->ref = NULL;
        return SD_OK;
    }
    if (t && (decl->flags & SD_DECL_CONV1X1_OK) && is_conv1x1_of(t, decl)) {
        if (decl->view)
            *decl->view = sd_tensor_view(t->data, t->dtype, t->device, 2, decl->shape);
        return SD_OK;
    }
    const sd_tensor *found;
    SD_TRY(sd_weights_require(w, decl->name, decl->ndim, decl->shape, &found));
    if (decl->ref)
        *decl->ref = found;
    if (decl->view)
        *decl->view = *found;
    return SD_OK;
}

sd_status sd_decls_bind(const sd_tensor_decls *d, const sd_weights *w) {
    for (int i = 0; i < d->count; i++)
        SD_TRY(bind_one(&d->items[i], w));
    return SD_OK;
}
