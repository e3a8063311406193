/* Planning a forward pass without running it.
 *
 * The activation arena must know how deep a model's stack of temporaries goes for a
 * shape before it hands out the first tensor, or it would have to give the overflow
 * buffers of their own and then hold two sets at once. A model finds out by walking its
 * forward pass with the planning backend, whose ops do nothing and return SD_OK, while
 * its arena is in planning mode (sd_arena_plan_begin): requests only move the stack
 * offset. The walk costs microseconds; afterwards sd_arena_reset sizes the buffer for
 * the deepest stack seen, and the real run allocates nothing. */
#ifndef SDCORE_PLAN_H
#define SDCORE_PLAN_H

#include "runtime/arena.h"

/* A backend on the device of `real` whose every op does nothing. */
const sd_backend *sd_plan_backend(const sd_backend *real);

#endif
