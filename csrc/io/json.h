/* A small strict JSON reader for untrusted file headers (safetensors).
 *
 * Objects, arrays, strings (with escapes, \uXXXX and surrogate pairs), non-negative
 * integers, true/false/null. Rejected, with the byte offset in the message: fractions
 * and exponents, negative numbers, integers above INT64_MAX, leading zeros, duplicate
 * keys in one object, nesting deeper than SD_JSON_MAX_DEPTH, more than
 * SD_JSON_MAX_VALUES values, invalid UTF-8, control characters or \u0000 in strings,
 * lone surrogates, and anything but whitespace after the top-level value. */
#ifndef SDCORE_JSON_H
#define SDCORE_JSON_H

#include <stddef.h>
#include <stdint.h>

#include "sdcore.h"

#define SD_JSON_MAX_DEPTH 32
/* bounds what a hostile header can make the parser allocate */
#define SD_JSON_MAX_VALUES ((size_t)1 << 22)

typedef enum {
    SD_JSON_NULL,
    SD_JSON_BOOL,
    SD_JSON_INT,
    SD_JSON_STRING,
    SD_JSON_ARRAY,
    SD_JSON_OBJECT,
    SD_JSON_NUMBER, /* any other number; only with sd_json_options.allow_numbers */
} sd_json_kind;

typedef struct sd_json sd_json;
typedef struct sd_json_member sd_json_member;

struct sd_json {
    sd_json_kind kind;
    union {
        int boolean;
        int64_t integer;
        double number;
        struct {
            char *data; /* decoded UTF-8, NUL-terminated */
            size_t len;
        } string;
        struct {
            sd_json *items;
            size_t count;
        } array;
        struct {
            sd_json_member *members; /* in file order */
            size_t count;
        } object;
    } u;
};

struct sd_json_member {
    char *key;
    sd_json value;
};

/* Parse text[0, len) into *out; `source` names the input in error messages.
 * On failure *out needs no freeing. */
sd_status sd_json_parse(const char *text, size_t len, const char *source, sd_json *out);
void sd_json_free(sd_json *value);

/* For trusted-format documents such as a model's config.json. allow_numbers: fractions,
 * exponents, negative numbers and Python's Infinity, -Infinity and NaN are read as
 * SD_JSON_NUMBER (a double, as strtod rounds it, which is what Python's json gives);
 * non-negative integers stay SD_JSON_INT. Every other check is the same. */
typedef struct {
    int allow_numbers;
} sd_json_options;
sd_status sd_json_parse_ex(const char *text, size_t len, const char *source,
                           const sd_json_options *options, sd_json *out);
/* The member `key` of an object, or NULL. */
const sd_json *sd_json_get(const sd_json *object, const char *key);
/* "an integer", "a string", ... for messages */
const char *sd_json_kind_name(sd_json_kind kind);

#endif
