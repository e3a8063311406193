/* Activation buffers that are planned by the first run and reused by every later one.
 *
 * A model's forward asks for its temporaries in the same order every time it runs
 * with the same shapes. The arena keeps one backend buffer per position in that
 * sequence ("slot"), growing a slot only when a request is larger than it. After the
 * first step no allocation happens and every tensor lands at the same address, which
 * is what lets the CUDA backend capture a whole step in a graph.
 *
 * Temporaries follow stack discipline: take a mark, request tensors, release to the
 * mark when they are dead; later requests reuse those slots, so peak memory is the
 * deepest stack, not the sum of all temporaries.
 *
 * The slots themselves live in a pool. On the CPU each arena has its own. On a GPU
 * every model's arena shares the device's one pool: the text encoder, the UNet and the
 * VAE run one after another, so device memory holds the largest model's activations,
 * not the sum of all three. The caller makes sure that models sharing a pool never run
 * at the same time (the Python binding takes one lock for every GPU model). */
#ifndef SDCORE_ARENA_H
#define SDCORE_ARENA_H

#include "sdcore.h"

typedef struct {
    void *data;
    size_t capacity; /* bytes */
} sd_arena_slot;

typedef struct {
    const sd_backend *be;
    sd_arena_slot *slots;
    int count, cap;
    int users; /* arenas attached */
    /* bumped whenever a slot is (re)allocated: addresses recorded before are stale */
    uint64_t epoch;
} sd_arena_pool;

typedef struct {
    const sd_backend *be;
    sd_dtype dtype; /* of the activations sd_arena_act gives: f32 unless the model says */
    sd_arena_pool *pool; /* &own, or the device's shared pool */
    sd_arena_pool own;
    int next; /* the slot the next request takes */
} sd_arena;

/* Attaches the arena to its pool; the arena must not move in memory afterwards. */
void sd_arena_init(sd_arena *a, const sd_backend *be);
/* The dtype of later activations: f32 anywhere; f16 or bf16 only on a GPU backend (the
 * CPU ops compute in f32). `model` names the caller in the error. */
sd_status sd_arena_set_dtype(sd_arena *a, sd_dtype dtype, const char *model);
/* Detaches the arena; a pool's buffers are freed when its last arena goes. */
void sd_arena_free(sd_arena *a);
/* Start a new run: the next request takes slot 0 again. */
void sd_arena_reset(sd_arena *a);
/* A tensor of this dtype and shape in the next slot (allocated or grown as needed). */
sd_status sd_arena_tensor(sd_arena *a, sd_tensor *t, sd_dtype dtype, int ndim,
                          const int64_t *shape);
/* An activation (the arena's dtype), up to 4 dims inline: sd_arena_act(a, &t, 4, B, C, H, W). */
sd_status sd_arena_act(sd_arena *a, sd_tensor *t, int ndim, int64_t d0, int64_t d1, int64_t d2,
                       int64_t d3);
static inline int sd_arena_mark(const sd_arena *a) { return a->next; }
static inline void sd_arena_release(sd_arena *a, int mark) { a->next = mark; }
/* Total bytes held by the arena's pool (for memory reports). */
size_t sd_arena_bytes(const sd_arena *a);
/* Changes whenever any slot of the pool moves: graphs recorded under another epoch are
 * stale. */
static inline uint64_t sd_arena_epoch(const sd_arena *a) { return a->pool->epoch; }

#endif
