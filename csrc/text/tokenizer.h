/* The CLIP byte-level BPE tokenizer, in C: the same ids as sdcore/tokenizer.py (and so as
 * transformers' CLIPTokenizer) for plain text.
 *
 *   text -> special tokens written in the text become their ids (some matched in the raw
 *   text, some after normalisation, as the folder's configuration says) -> NFC, whitespace
 *   runs to one space, per-character lowercase -> CLIP's pre-tokenisation pattern
 *   ('s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+) -> UTF-8 bytes as printable
 *   characters -> BPE merges with "</w>" ending each piece.
 *
 * The Unicode data (letter and number categories, lowercase, NFC) is the Python module's,
 * generated into unicode_tables.h by tools/gen_unicode_tables.py.
 *
 * Read from a model's tokenizer/ folder: vocab.json and merges.txt, and the special tokens
 * of tokenizer_config.json and special_tokens_map.json (which wins). A folder with only a
 * tokenizer.json is read by the Python tokenizer only. */
#ifndef SDCORE_TOKENIZER_H
#define SDCORE_TOKENIZER_H

#include <stdint.h>

#include "sdcore.h"

typedef struct sd_tokenizer sd_tokenizer;

/* Read `folder` (a tokenizer/ folder); an error names the file and what is wrong. */
sd_status sd_tokenizer_load(const char *folder, sd_tokenizer **out);
void sd_tokenizer_free(sd_tokenizer *t);

int32_t sd_tokenizer_bos_id(const sd_tokenizer *t);
int32_t sd_tokenizer_eos_id(const sd_tokenizer *t);
int32_t sd_tokenizer_pad_id(const sd_tokenizer *t);
/* ids a sequence holds, BOS and EOS included (77 for CLIP) */
int sd_tokenizer_max_length(const sd_tokenizer *t);

/* The ids of UTF-8 `text` without BOS, EOS or padding: *ids is malloc'd (the caller frees
 * it; NULL when *n is 0). Text that is not valid UTF-8 is SD_ERR_INVALID. */
sd_status sd_tokenizer_encode(const sd_tokenizer *t, const char *text, int32_t **ids, int64_t *n);

#endif
