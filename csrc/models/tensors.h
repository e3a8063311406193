/* The tensors a model reads from a checkpoint, declared once.
 *
 * Each model has one function that, given its config, walks its structure and declares
 * every tensor it needs: the diffusers (or transformers) state-dict name, the shape, and
 * the slot of the model's weight struct it fills. Everything else reads that list:
 *
 *   - loading: sd_decls_bind finds each tensor in an sd_weights, checks its shape and
 *     sets the slot (sd_unet_create, sd_vae_create, sd_clip_create);
 *   - listing: sd_unet_tensors, sd_vae_tensors, sd_clip_tensors give the list alone
 *     (slots cleared), for a checkpoint reader in C or in Python (sdcore._C.unet_tensors
 *     ...) to check a file before building anything.
 *
 * Plain C: no Python types, so a C program loading a diffusers folder can use it. */
#ifndef SDCORE_TENSORS_H
#define SDCORE_TENSORS_H

#include "sdcore.h"

/* Used when present, left NULL when absent: q/k/v biases that diffusers' SD attention
 * does not have but a converted checkpoint may. */
#define SD_DECL_OPTIONAL 1
/* A (C, C) linear weight also accepted as a (C, C, 1, 1) 1x1 conv (old VAE checkpoints);
 * the slot is then an sd_tensor that receives a (C, C) view of the same memory. */
#define SD_DECL_CONV1X1_OK 2

typedef struct {
    char *name; /* the state-dict name, e.g. "down_blocks.0.resnets.1.conv1.weight" */
    int ndim;
    int64_t shape[SD_MAX_DIMS];
    int flags;             /* SD_DECL_* */
    const sd_tensor **ref; /* the slot it fills (NULL in a list made for reading) */
    sd_tensor *view;       /* the slot of an SD_DECL_CONV1X1_OK tensor instead */
} sd_tensor_decl;

typedef struct sd_tensor_decls_s {
    sd_tensor_decl *items;
    int count, cap;
} sd_tensor_decls;

void sd_decls_init(sd_tensor_decls *d);
void sd_decls_free(sd_tensor_decls *d);

/* Declare "<prefix>.<name>" (just `name` when prefix is ""), filling *ref on bind. */
sd_status sd_decl(sd_tensor_decls *d, const char *prefix, const char *name, int ndim,
                  const int64_t *shape, int flags, const sd_tensor **ref);
/* The same for an SD_DECL_CONV1X1_OK (C, C) weight: *view receives a (C, C) view. */
sd_status sd_decl_view(sd_tensor_decls *d, const char *prefix, const char *name, int C,
                       sd_tensor *view);

/* The usual pairs: "<name>.weight" and "<name>.bias" under prefix.
 *   norm:   (C), (C)
 *   linear: (out, in), (out); bias NULL declares no bias
 *   conv:   (out, in, k, k), (out) */
sd_status sd_decl_norm(sd_tensor_decls *d, const char *prefix, const char *name, int C,
                       const sd_tensor **w, const sd_tensor **b);
sd_status sd_decl_linear(sd_tensor_decls *d, const char *prefix, const char *name, int out,
                         int in, const sd_tensor **w, const sd_tensor **b);
sd_status sd_decl_conv(sd_tensor_decls *d, const char *prefix, const char *name, int out, int in,
                       int k, const sd_tensor **w, const sd_tensor **b);

/* Find every declared tensor in w, check its shape and fill its slot; the first missing
 * (and not optional) or misshaped tensor is the error, named. */
sd_status sd_decls_bind(const sd_tensor_decls *d, const sd_weights *w);

/* Forget the slots (the list outlives the struct they point into). */
void sd_decls_detach(sd_tensor_decls *d);

#endif
