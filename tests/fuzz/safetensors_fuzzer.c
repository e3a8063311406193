/* libFuzzer target: the safetensors reader (csrc/io/safetensors.c, and the JSON parser
 * under it) on arbitrary bytes. Built with ASan and UBSan by tests/fuzz/run.sh.
 *
 * The input is a whole file. It goes to a memfd opened by its /proc path, so the reader
 * runs as it does on a file on disk (open, fstat, mmap). Each input is read twice, strict
 * and with skip_unsupported. Besides the sanitizers, the target aborts when:
 * - a refusal is not SD_ERR_FORMAT (SD_ERR_NOMEM aside) or its message does not name the
 *   file;
 * - a strict read succeeds where the lenient one fails, or keeps a different count;
 * - a loaded tensor has a bad shape, or its bytes sum past the data in the file; every
 *   byte of every tensor and every metadata string is read, so a pointer outside the
 *   mapping faults or is reported by ASan. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "io/safetensors.h"

static int file_fd = -1;
static char file_path[64];

static void fail(const char *what, const char *detail) {
    fprintf(stderr, "safetensors_fuzzer: %s: %s\n", what, detail ? detail : "");
    abort();
}

/* Reads every byte of every tensor and metadata string; returns the tensors' total size. */
static uint64_t touch_all(const sd_weights *w, unsigned *sink) {
    uint64_t total = 0;
    for (int64_t i = 0; i < sd_weights_count(w); i++) {
        const sd_tensor *t = sd_weights_at(w, i);
        const char *name = sd_weights_name(w, i);
        if (t->ndim < 0 || t->ndim > SD_MAX_DIMS)
            fail("ndim out of range", name);
        for (int d = 0; d < SD_MAX_DIMS; d++)
            if (t->shape[d] < 0 || (d >= t->ndim && t->shape[d] != 1))
                fail("bad dim", name);
        if (sd_weights_find(w, name) != t)
            fail("a tensor is not found by its name", name);
        size_t n = sd_nbytes(t);
        const unsigned char *p = t->data;
        for (size_t k = 0; k < n; k++)
            *sink += p[k];
        total += n;
    }
    for (int64_t i = 0; i < sd_weights_metadata_count(w); i++)
        *sink += (unsigned)strlen(sd_weights_metadata_key(w, i)) +
                 (unsigned)strlen(sd_weights_metadata_value(w, i));
    return total;
}

/* Opens the file; returns the tensor count, or -1 for a clean refusal. */
static int64_t read_once(size_t size, int skip_unsupported) {
    sd_safetensors_options options = {.skip_unsupported = skip_unsupported};
    sd_weights *w = NULL;
    int os_error = 0;
    sd_clear_error();
    sd_status s = sd_safetensors_open_ex(file_path, &options, &w, &os_error);
    if (s != SD_OK) {
        if (w)
            fail("a failed open left a weight set", NULL);
        if (s != SD_ERR_FORMAT && s != SD_ERR_NOMEM)
            fail(sd_status_name(s), sd_last_error());
        if (!strstr(sd_last_error(), file_path))
            fail("the message does not name the file", sd_last_error());
        return -1;
    }
    volatile unsigned sink = 0;
    unsigned local = 0;
    uint64_t total = touch_all(w, &local);
    sink += local;
    if (size < 8 || total > size - 8)
        fail("tensors hold more bytes than the file", NULL);
    int64_t count = sd_weights_count(w);
    sd_weights_free(w);
    return count;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (file_fd < 0) {
        file_fd = memfd_create("fuzz.safetensors", MFD_CLOEXEC);
        if (file_fd < 0)
            fail("memfd_create", NULL);
        snprintf(file_path, sizeof file_path, "/proc/self/fd/%d", file_fd);
    }
    if (ftruncate(file_fd, 0) != 0 || pwrite(file_fd, data, size, 0) != (ssize_t)size)
        fail("cannot write the input to the memfd", NULL);
    int64_t strict = read_once(size, 0);
    int64_t lenient = read_once(size, 1);
    if (strict >= 0 && strict != lenient)
        fail("a strict read succeeded where skip_unsupported did not, or kept other tensors",
             NULL);
    return 0;
}
