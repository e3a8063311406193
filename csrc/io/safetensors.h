/* Reading safetensors files into a weight set, by mmap.
 *
 * Layout of a file: 8 bytes little-endian header length N, N bytes of JSON
 * {name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}},
 * then the data area; offsets are relative to its start.
 *
 * Every file is untrusted: the header length, the JSON, every dtype, shape and range
 * are checked before a tensor is made, and a bad file gives SD_ERR_FORMAT with a
 * message naming the file and the tensor. As the format requires (and the reference
 * `safetensors` library checks), the tensors' ranges tile the data area exactly: no
 * overlap, no hole between two tensors, no bytes after the last one. The tensors point into a read-only private
 * mapping that the weight set keeps (and unmaps when freed); a tensor whose offset is
 * not a multiple of its dtype size is copied into an aligned buffer instead. The
 * header's __metadata__ becomes the set's metadata (sd_weights_metadata_*). */
#ifndef SDCORE_SAFETENSORS_H
#define SDCORE_SAFETENSORS_H

#include "sdcore.h"

/* headers of real checkpoints are well under 1 MB */
#define SD_SAFETENSORS_MAX_HEADER (100u * 1000u * 1000u)

/* The most elements a tensor's dims may multiply to, a zero dim counted as 1. An empty
 * tensor such as [0, 2^62] holds no bytes, but the engine and NumPy still index each of
 * its dims: this keeps the byte size of any shape, in any dtype (8 bytes at most), and
 * so its float32 copy, within a signed 64-bit size. */
#define SD_SAFETENSORS_MAX_SPAN (INT64_MAX / 8)

typedef struct {
    /* Leave out tensors of a dtype the engine cannot hold (F64, I64, U8, BOOL, F8_*)
     * instead of failing. Their header entries are still checked. Single-file SD
     * checkpoints carry such tensors that no model reads, e.g. the text encoder's
     * I64 `position_ids`. */
    int skip_unsupported;
    /* Read the file into memory of the set's own instead of mapping it. A mapped file that
     * another process truncates while it is in use raises SIGBUS on the next read of the
     * lost pages, which takes the whole process down; a server that must outlive its model
     * files being replaced or cut short reads them once instead. */
    int copy;
} sd_safetensors_options;

/* Open `path` and read it into a new weight set (strict: any tensor of a dtype other
 * than F32, F16, BF16 is an error). */
sd_status sd_safetensors_open(const char *path, sd_weights **out);

/* As sd_safetensors_open with options (NULL for the defaults). When the file cannot
 * be opened or mapped (SD_ERR_IO) and os_error is not NULL, *os_error is the errno
 * of the failed call, else 0. */
sd_status sd_safetensors_open_ex(const char *path, const sd_safetensors_options *options,
                                 sd_weights **out, int *os_error);

#endif
