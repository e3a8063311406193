/* PNG encoding through libpng, with text chunks for the generation parameters. */
#ifndef SDCORE_PNG_H
#define SDCORE_PNG_H

#include <stddef.h>
#include <stdint.h>

#include "sdcore.h"

typedef struct {
    const char *key;   /* Latin-1 keyword, 1..79 bytes, e.g. "parameters" */
    const char *value; /* UTF-8 text: stored as an iTXt chunk */
} sd_png_text;

/* rgb (H, W, 3) uint8 -> a PNG in memory. *out is malloc'd; the caller frees it. */
sd_status sd_png_encode(const uint8_t *rgb, int width, int height, const sd_png_text *texts,
                        int n_texts, uint8_t **out, size_t *out_len);

#endif
