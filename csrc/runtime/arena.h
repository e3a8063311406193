/* Activation memory that is planned by the first run and reused by every later one.
 *
 * A model's forward asks for its temporaries in the same order every time it runs
 * with the same shapes, and they follow stack discipline: take a mark, request
 * tensors, release to the mark when they are dead. The arena hands them out from one
 * backend buffer by bumping an offset, so its size is the deepest the stack gets, not
 * the sum of all temporaries.
 *
 * Planning: before a run, the model walks its forward pass in planning mode (plan.h),
 * where requests hand out no memory and only record how deep the stack goes; the reset
 * that starts the real run then replaces the buffer with one of the deepest size seen,
 * if it is not that big already. After that no allocation happens and every tensor
 * lands at the same address, which is what lets the CUDA backend capture a whole step
 * in a graph. Should a run still go deeper than its plan, a request that does not fit
 * gets a buffer of its own until the next reset.
 *
 * The buffer itself belongs to a pool. On the CPU each arena has its own. On a GPU
 * every model's arena shares the device's one pool: the text encoder, the UNet and the
 * VAE run one after another, so device memory holds the deepest of their stacks, not
 * the sum of all three. The caller makes sure that models sharing a pool never run at
 * the same time (the Python binding takes one lock for every GPU model). */
#ifndef SDCORE_ARENA_H
#define SDCORE_ARENA_H

#include "sdcore.h"

/* every tensor starts at a multiple of this many bytes (the kernels' widest loads) */
#define SD_ARENA_ALIGN 256

typedef struct {
    const sd_backend *be;
    void *base;      /* the planned buffer, NULL before the first consolidation */
    size_t capacity; /* its bytes */
    size_t deepest;  /* the deepest stack (bytes) any attached arena has reached */
    void **spill;    /* buffers of requests that did not fit, freed at the next reset */
    int spill_count, spill_cap;
    int users; /* arenas attached */
    /* bumped whenever the buffer moves or a request spills: addresses recorded before
     * are stale */
    uint64_t epoch;
} sd_arena_pool;

typedef struct {
    const sd_backend *be;
    sd_dtype dtype; /* of the activations sd_arena_act gives: f32 unless the model says */
    sd_arena_pool *pool; /* &own, or the device's shared pool */
    sd_arena_pool own;
    size_t top;   /* bytes in use: the offset of the next request */
    int planning; /* requests only move `top` (see plan.h) */
} sd_arena;

/* Attaches the arena to its pool; the arena must not move in memory afterwards. */
void sd_arena_init(sd_arena *a, const sd_backend *be);
/* The dtype of later activations: f32 anywhere; f16 or bf16 only on a GPU backend (the
 * CPU ops compute in f32). `model` names the caller in the error. */
sd_status sd_arena_set_dtype(sd_arena *a, sd_dtype dtype, const char *model);
/* Detaches the arena; a pool's buffers are freed when its last arena goes. */
void sd_arena_free(sd_arena *a);
/* Start a new run: the stack is empty again. When the last runs went deeper than the
 * buffer, the buffer is replaced by one of the deepest size (waiting for the device
 * first), so no work of an earlier run may still be queued on memory of this pool's
 * other arenas either; the binding's GPU lock and the models' synchronous returns see
 * to that. Fails only when that allocation fails. */
sd_status sd_arena_reset(sd_arena *a);
/* A tensor of this dtype and shape on top of the stack. */
sd_status sd_arena_tensor(sd_arena *a, sd_tensor *t, sd_dtype dtype, int ndim,
                          const int64_t *shape);
/* An activation (the arena's dtype), up to 4 dims inline: sd_arena_act(a, &t, 4, B, C, H, W). */
sd_status sd_arena_act(sd_arena *a, sd_tensor *t, int ndim, int64_t d0, int64_t d1, int64_t d2,
                       int64_t d3);
/* Planning mode: from begin to end, requests give placeholder addresses that must not be
 * touched and only move the stack offset; the deepest stack is recorded for the next
 * reset. */
static inline void sd_arena_plan_begin(sd_arena *a) {
    a->top = 0;
    a->planning = 1;
}
static inline void sd_arena_plan_end(sd_arena *a) {
    a->top = 0;
    a->planning = 0;
}
static inline size_t sd_arena_mark(const sd_arena *a) { return a->top; }
static inline void sd_arena_release(sd_arena *a, size_t mark) { a->top = mark; }
/* Bytes the arena's pool holds once planned: its buffer, or the deepest stack seen when
 * that is deeper (for memory reports). */
size_t sd_arena_bytes(const sd_arena *a);
/* Changes whenever any address handed out may differ from the last run's: graphs
 * recorded under another epoch are stale. */
static inline uint64_t sd_arena_epoch(const sd_arena *a) { return a->pool->epoch; }

#endif
