/* safetensors reader: mmap, a checked header, tensors that borrow the mapping. */
#include "io/safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io/json.h"

typedef struct {
    const char *name;
    unsigned bits;  /* per element; sub-byte formats pack several in a byte */
    int sd_dtype;   /* the engine's dtype, or -1 where the engine has none */
} dtype_info;

/* every dtype the safetensors format defines, so that a file with tensors the
 * engine cannot use is still checked whole (and named in the error) */
static const dtype_info dtypes[] = {
    {"F32", 32, SD_F32},  {"F16", 16, SD_F16},     {"BF16", 16, SD_BF16},
    {"F64", 64, -1},      {"I64", 64, -1},         {"U64", 64, -1},
    {"I32", 32, -1},      {"U32", 32, -1},         {"I16", 16, -1},
    {"U16", 16, -1},      {"I8", 8, -1},           {"U8", 8, -1},
    {"BOOL", 8, -1},      {"F8_E4M3", 8, -1},      {"F8_E5M2", 8, -1},
    {"F8_E8M0", 8, -1},   {"F6_E2M3", 6, -1},      {"F6_E3M2", 6, -1},
    {"F4", 4, -1},        {"C64", 64, -1},
};

static const dtype_info *find_dtype(const char *name) {
    for (size_t i = 0; i < sizeof dtypes / sizeof dtypes[0]; i++)
        if (strcmp(dtypes[i].name, name) == 0)
            return &dtypes[i];
    return NULL;
}

/* One header entry, checked. */
typedef struct {
    const char *name; /* borrowed from the parsed header */
    const dtype_info *dtype;
    int ndim;
    int64_t shape[SD_MAX_DIMS];
    uint64_t begin, end; /* within the data area */
    int keep;            /* becomes a tensor (not an unsupported dtype being skipped) */
} entry;

typedef struct {
    const char *path;
    uint64_t data_size;
    int skip_unsupported;
} reader;

static sd_status get_offsets(const reader *r, const char *name, const sd_json *offsets,
                             uint64_t *begin, uint64_t *end) {
    if (!offsets || offsets->kind != SD_JSON_ARRAY || offsets->u.array.count != 2 ||
        offsets->u.array.items[0].kind != SD_JSON_INT ||
        offsets->u.array.items[1].kind != SD_JSON_INT)
        return sd_fail(SD_ERR_FORMAT,
                       "%s: tensor '%s': data_offsets must be an array of two integers",
                       r->path, name);
    *begin = (uint64_t)offsets->u.array.items[0].u.integer;
    *end = (uint64_t)offsets->u.array.items[1].u.integer;
    if (*begin > *end || *end > r->data_size)
        return sd_fail(SD_ERR_FORMAT,
                       "%s: tensor '%s': data_offsets [%llu, %llu] are not a range inside the "
                       "data area (%llu bytes)",
                       r->path, name, (unsigned long long)*begin, (unsigned long long)*end,
                       (unsigned long long)r->data_size);
    return SD_OK;
}

/* Check one tensor's header entry. e->keep says whether it becomes a tensor (it does
 * not when its dtype is unsupported and the caller asked to skip those). */
static sd_status check_entry(const reader *r, const char *name, const sd_json *value, entry *e) {
    e->keep = 0;
    if (value->kind != SD_JSON_OBJECT)
        return sd_fail(SD_ERR_FORMAT, "%s: tensor '%s': header entry is %s, expected an object",
                       r->path, name, sd_json_kind_name(value->kind));
    for (size_t i = 0; i < value->u.object.count; i++) {
        const char *key = value->u.object.members[i].key;
        if (strcmp(key, "dtype") && strcmp(key, "shape") && strcmp(key, "data_offsets"))
            return sd_fail(SD_ERR_FORMAT, "%s: tensor '%s': unexpected key '%s' in its entry",
                           r->path, name, key);
    }
    const sd_json *dtype = sd_json_get(value, "dtype");
    const sd_json *shape = sd_json_get(value, "shape");
    if (!dtype || dtype->kind != SD_JSON_STRING)
        return sd_fail(SD_ERR_FORMAT, "%s: tensor '%s': 'dtype' must be a string", r->path,
                       name);
    e->name = name;
    e->dtype = find_dtype(dtype->u.string.data);
    if (!e->dtype)
        return sd_fail(SD_ERR_FORMAT, "%s: tensor '%s' has unknown dtype '%s'", r->path, name,
                       dtype->u.string.data);
    int supported = e->dtype->sd_dtype >= 0;
    if (!supported && !r->skip_unsupported)
        return sd_fail(SD_ERR_FORMAT,
                       "%s: tensor '%s' has dtype %s; sdcore reads F32, F16 and BF16 tensors only",
                       r->path, name, e->dtype->name);
    if (!shape || shape->kind != SD_JSON_ARRAY)
        return sd_fail(SD_ERR_FORMAT, "%s: tensor '%s': 'shape' must be an array of integers",
                       r->path, name);
    size_t ndim = shape->u.array.count;
    if (supported && ndim > SD_MAX_DIMS)
        return sd_fail(SD_ERR_FORMAT, "%s: tensor '%s' has %zu dims; at most %d are supported",
                       r->path, name, ndim, SD_MAX_DIMS);
    /* The span counts a zero dim as 1, so that a dim too large to index is refused even
     * where another dim is 0 (the element count alone would be 0 whatever follows). */
    uint64_t numel = 1, span = 1;
    for (size_t i = 0; i < ndim; i++) {
        const sd_json *dim = &shape->u.array.items[i];
        if (dim->kind != SD_JSON_INT)
            return sd_fail(SD_ERR_FORMAT,
                           "%s: tensor '%s': 'shape' must be an array of integers", r->path,
                           name);
        uint64_t d = (uint64_t)dim->u.integer;
        if (__builtin_mul_overflow(span, d ? d : 1, &span) || span > SD_SAFETENSORS_MAX_SPAN)
            return sd_fail(SD_ERR_FORMAT,
                           "%s: tensor '%s': shape is too large: dim %zu (%llu) takes its dims' "
                           "product (a zero dim counted as 1) past %lld elements",
                           r->path, name, i, (unsigned long long)d,
                           (long long)SD_SAFETENSORS_MAX_SPAN);
        numel *= d; /* numel <= span: no overflow */
        if (i < SD_MAX_DIMS)
            e->shape[i] = dim->u.integer;
    }
    e->ndim = (int)(ndim < SD_MAX_DIMS ? ndim : SD_MAX_DIMS);
    SD_TRY(get_offsets(r, name, sd_json_get(value, "data_offsets"), &e->begin, &e->end));
    /* numel <= SD_SAFETENSORS_MAX_SPAN: neither product below overflows. Sub-byte dtypes
     * pack several elements in a byte and must fill whole bytes. */
    unsigned dtype_bits = e->dtype->bits;
    uint64_t bits = dtype_bits % 8 ? numel * dtype_bits : 0;
    uint64_t nbytes = dtype_bits % 8 ? bits / 8 : numel * (dtype_bits / 8);
    if (bits % 8 != 0 || nbytes != e->end - e->begin)
        return sd_fail(SD_ERR_FORMAT,
                       "%s: tensor '%s' (%s, %zu dims) needs %llu%s bytes but data_offsets "
                       "[%llu, %llu] hold %llu",
                       r->path, name, e->dtype->name, ndim, (unsigned long long)nbytes,
                       bits % 8 ? " and a fraction of" : "", (unsigned long long)e->begin,
                       (unsigned long long)e->end, (unsigned long long)(e->end - e->begin));
    e->keep = supported;
    return SD_OK;
}

static int by_range(const void *a, const void *b) {
    const entry *x = a, *y = b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    return x->end < y->end ? -1 : x->end > y->end;
}

/* The ranges must tile the data area: sorted by (begin, end), each starts where the one
 * before it ended, the first at 0, and the last ends at the end of the data area. Bytes
 * that no tensor covers would let a file carry a second payload unseen (a polyglot), so
 * the format forbids them. An empty tensor sits at a boundary between two others. */
static sd_status check_layout(const reader *r, entry *entries, size_t n) {
    qsort(entries, n, sizeof(entry), by_range);
    const entry *prev = NULL;
    uint64_t pos = 0; /* where the next range must start */
    for (size_t i = 0; i < n; i++) {
        const entry *e = &entries[i];
        if (e->begin < pos)
            return sd_fail(SD_ERR_FORMAT,
                           "%s: tensors '%s' [%llu, %llu] and '%s' [%llu, %llu] overlap in the "
                           "data area",
                           r->path, prev->name, (unsigned long long)prev->begin,
                           (unsigned long long)prev->end, e->name, (unsigned long long)e->begin,
                           (unsigned long long)e->end);
        if (e->begin > pos)
            return sd_fail(SD_ERR_FORMAT,
                           "%s: bytes [%llu, %llu) of the data area, before tensor '%s', belong "
                           "to no tensor; a safetensors file has no unused bytes",
                           r->path, (unsigned long long)pos, (unsigned long long)e->begin,
                           e->name);
        pos = e->end;
        prev = e;
    }
    if (pos != r->data_size) {
        if (prev)
            return sd_fail(SD_ERR_FORMAT,
                           "%s: bytes [%llu, %llu) of the data area, after the last tensor '%s', "
                           "belong to no tensor; a safetensors file has no unused bytes",
                           r->path, (unsigned long long)pos, (unsigned long long)r->data_size,
                           prev->name);
        return sd_fail(SD_ERR_FORMAT,
                       "%s: the data area has %llu bytes but the header names no tensor; a "
                       "safetensors file has no unused bytes",
                       r->path, (unsigned long long)r->data_size);
    }
    return SD_OK;
}

static sd_status add_metadata(const reader *r, const sd_json *meta, sd_weights *w) {
    if (meta->kind != SD_JSON_OBJECT)
        return sd_fail(SD_ERR_FORMAT, "%s: '__metadata__' is %s, expected an object of strings",
                       r->path, sd_json_kind_name(meta->kind));
    for (size_t i = 0; i < meta->u.object.count; i++) {
        const sd_json_member *m = &meta->u.object.members[i];
        if (m->value.kind != SD_JSON_STRING)
            return sd_fail(SD_ERR_FORMAT, "%s: '__metadata__' entry '%s' is %s, expected a string",
                           r->path, m->key, sd_json_kind_name(m->value.kind));
        SD_TRY(sd_weights_add_metadata(w, m->key, m->value.u.string.data));
    }
    return SD_OK;
}

static void release_mapping(void *ptr, size_t size) { munmap(ptr, size); }
static void release_buffer(void *ptr, size_t size) { free(ptr); }

/* The tensor of a checked entry, borrowing the mapping where its data is aligned. */
static sd_status make_tensor(const reader *r, const entry *e, const unsigned char *data_area,
                             sd_weights *w, sd_tensor *out) {
    sd_dtype dtype = (sd_dtype)e->dtype->sd_dtype;
    size_t nbytes = (size_t)(e->end - e->begin);
    void *data = (void *)(data_area + e->begin);
    /* an empty tensor's pointer is never read, so it need not be aligned */
    if (nbytes != 0 && (uintptr_t)data % sd_dtype_size(dtype) != 0) {
        void *copy = malloc(nbytes);
        if (!copy)
            return sd_fail(SD_ERR_NOMEM, "%s: cannot allocate %zu bytes for tensor '%s'",
                           r->path, nbytes, e->name);
        memcpy(copy, data, nbytes);
        SD_TRY(sd_weights_keep(w, copy, nbytes, release_buffer));
        data = copy;
    }
    *out = sd_tensor_view(data, dtype, SD_CPU, e->ndim, e->shape);
    return SD_OK;
}

/* Check the parsed header whole, then fill w. */
static sd_status read_header(const reader *r, const sd_json *header,
                             const unsigned char *data_area, sd_weights *w) {
    if (header->kind != SD_JSON_OBJECT)
        return sd_fail(SD_ERR_FORMAT, "%s: the header is %s, expected an object", r->path,
                       sd_json_kind_name(header->kind));
    size_t n = header->u.object.count, count = 0;
    entry *entries = calloc(n ? n : 1, sizeof(entry));
    if (!entries)
        return sd_fail(SD_ERR_NOMEM, "%s: cannot allocate %zu header entries", r->path, n);
    sd_status s = SD_OK;
    const sd_json *meta = NULL;
    for (size_t i = 0; i < n && s == SD_OK; i++) {
        const sd_json_member *m = &header->u.object.members[i];
        if (strcmp(m->key, "__metadata__") == 0) {
            meta = &m->value;
            continue;
        }
        s = check_entry(r, m->key, &m->value, &entries[count++]);
    }
    /* skipped tensors take part: their bytes are covered, not unused */
    if (s == SD_OK)
        s = check_layout(r, entries, count);
    if (s == SD_OK && meta)
        s = add_metadata(r, meta, w);
    for (size_t i = 0; i < count && s == SD_OK; i++) {
        if (!entries[i].keep)
            continue;
        sd_tensor t;
        s = make_tensor(r, &entries[i], data_area, w, &t);
        if (s == SD_OK)
            s = sd_weights_add(w, entries[i].name, t);
    }
    free(entries);
    return s == SD_OK ? sd_weights_seal(w) : s;
}

static sd_status io_error(const char *path, const char *what, int *os_error) {
    int err = errno;
    if (os_error)
        *os_error = err;
    return sd_fail(SD_ERR_IO, "%s: cannot %s: %s", path, what, strerror(err));
}

/* The file's bytes in anonymous memory, read with pread: what the set then holds no longer
 * depends on the file. Released with munmap like a mapping. */
static sd_status read_into_memory(const char *path, int fd, size_t size, void **map,
                                  int *os_error) {
    void *mem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED)
        return sd_fail(SD_ERR_NOMEM, "%s: cannot allocate %zu bytes to read the file into", path,
                       size);
    size_t done = 0;
    while (done < size) {
        ssize_t n = pread(fd, (char *)mem + done, size - done, (off_t)done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            sd_status s = n < 0 ? io_error(path, "read the file", os_error)
                                : sd_fail(SD_ERR_FORMAT,
                                          "%s: the file ended after %zu of its %zu bytes while "
                                          "being read (it was cut short)",
                                          path, done, size);
            munmap(mem, size);
            return s;
        }
        done += (size_t)n;
    }
    mprotect(mem, size, PROT_READ);
    *map = mem;
    return SD_OK;
}

/* Map the whole file read-only (or read it, with `copy`); *size is its length. */
static sd_status map_file(const char *path, int copy, void **map, size_t *size,
                          int *os_error) {
    /* O_NONBLOCK: opening a FIFO must not wait for a writer; it is then refused as
     * not a regular file (reads of regular files ignore the flag) */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
        return io_error(path, "open the file", os_error);
    struct stat st;
    if (fstat(fd, &st) != 0) {
        sd_status s = io_error(path, "read the file's size", os_error);
        close(fd);
        return s;
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        errno = S_ISDIR(st.st_mode) ? EISDIR : EINVAL;
        return io_error(path, "read it as a safetensors file", os_error);
    }
    if (st.st_size < 8) {
        close(fd);
        return sd_fail(SD_ERR_FORMAT,
                       "%s: file is %lld bytes, too short for a safetensors header length",
                       path, (long long)st.st_size);
    }
    *size = (size_t)st.st_size;
    if (copy) {
        sd_status s = read_into_memory(path, fd, *size, map, os_error);
        close(fd);
        return s;
    }
    *map = mmap(NULL, *size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (*map == MAP_FAILED) {
        sd_status s = io_error(path, "map the file", os_error);
        close(fd);
        return s;
    }
    close(fd); /* the mapping holds its own reference to the file */
    return SD_OK;
}

sd_status sd_safetensors_open_ex(const char *path, const sd_safetensors_options *options,
                                 sd_weights **out, int *os_error) {
    *out = NULL;
    if (os_error)
        *os_error = 0;
    void *map = NULL;
    size_t size = 0;
    SD_TRY(map_file(path, options && options->copy, &map, &size, os_error));
    sd_weights *w = NULL;
    if (sd_weights_create(&w) != SD_OK) {
        munmap(map, size);
        return SD_ERR_NOMEM;
    }
    /* from here the set owns the mapping: freeing it unmaps */
    sd_status s = sd_weights_keep(w, map, size, release_mapping);
    if (s != SD_OK) {
        sd_weights_free(w);
        return s;
    }
    const unsigned char *bytes = map;
    uint64_t header_len = 0;
    for (int i = 7; i >= 0; i--)
        header_len = header_len << 8 | bytes[i];
    if (header_len > size - 8) {
        sd_weights_free(w);
        return sd_fail(SD_ERR_FORMAT,
                       "%s: header length %llu is larger than the file (%zu bytes); the file "
                       "is truncated or not safetensors",
                       path, (unsigned long long)header_len, size);
    }
    if (header_len > SD_SAFETENSORS_MAX_HEADER) {
        sd_weights_free(w);
        return sd_fail(SD_ERR_FORMAT, "%s: header length %llu is over the limit of %u bytes",
                       path, (unsigned long long)header_len, SD_SAFETENSORS_MAX_HEADER);
    }
    reader r = {path, size - 8 - header_len, options && options->skip_unsupported};
    sd_json header;
    s = sd_json_parse((const char *)bytes + 8, (size_t)header_len, path, &header);
    if (s == SD_OK) {
        s = read_header(&r, &header, bytes + 8 + header_len, w);
        sd_json_free(&header);
    }
    if (s != SD_OK) {
        sd_weights_free(w);
        return s;
    }
    *out = w;
    return SD_OK;
}

sd_status sd_safetensors_open(const char *path, sd_weights **out) {
    return sd_safetensors_open_ex(path, NULL, out, NULL);
}
