/* libFuzzer target: the JSON header parser (csrc/io/json.c) on arbitrary bytes, with no
 * terminating NUL after them, so that ASan sees any read past the end. Built with ASan
 * and UBSan by tests/fuzz/run.sh.
 *
 * Besides the sanitizers, the target aborts when a refusal is not SD_ERR_FORMAT
 * (SD_ERR_NOMEM aside) or its message lacks the byte offset, when an accepted value breaks
 * what json.h promises (strings NUL-free and NUL-terminated, no duplicate keys, non-negative
 * integers, depth within SD_JSON_MAX_DEPTH), or when the value written back as JSON does not
 * parse to the same value. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/json.h"

static void fail(const char *what, const char *detail) {
    fprintf(stderr, "json_fuzzer: %s: %s\n", what, detail ? detail : "");
    abort();
}

typedef struct {
    char *data;
    size_t len, cap;
} buffer;

static void put(buffer *b, const char *s, size_t n) {
    if (b->len + n + 1 > b->cap) {
        b->cap = (b->len + n + 1) * 2;
        b->data = realloc(b->data, b->cap);
        if (!b->data)
            fail("out of memory", NULL);
    }
    memcpy(b->data + b->len, s, n);
    b->len += n;
}

static void put_string(buffer *b, const char *s, size_t len) {
    put(b, "\"", 1);
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        char esc[8];
        if (c == '"' || c == '\\') {
            esc[0] = '\\', esc[1] = (char)c;
            put(b, esc, 2);
        } else if (c < 0x20) {
            snprintf(esc, sizeof esc, "\\u%04x", c);
            put(b, esc, 6);
        } else {
            put(b, (const char *)&s[i], 1);
        }
    }
    put(b, "\"", 1);
}

/* Checks the promises of json.h and writes the value back as JSON. */
static void check_and_write(const sd_json *v, int depth, buffer *b) {
    char num[32];
    if (depth > SD_JSON_MAX_DEPTH)
        fail("nesting deeper than SD_JSON_MAX_DEPTH was accepted", NULL);
    switch (v->kind) {
    case SD_JSON_NULL: put(b, "null", 4); break;
    case SD_JSON_BOOL: put(b, v->u.boolean ? "true" : "false", v->u.boolean ? 4 : 5); break;
    case SD_JSON_INT:
        if (v->u.integer < 0)
            fail("a negative integer was accepted", NULL);
        put(b, num, (size_t)snprintf(num, sizeof num, "%lld", (long long)v->u.integer));
        break;
    case SD_JSON_STRING:
        if (strlen(v->u.string.data) != v->u.string.len)
            fail("a string holds a NUL or its length is wrong", v->u.string.data);
        put_string(b, v->u.string.data, v->u.string.len);
        break;
    case SD_JSON_ARRAY:
        put(b, "[", 1);
        for (size_t i = 0; i < v->u.array.count; i++) {
            if (i)
                put(b, ",", 1);
            check_and_write(&v->u.array.items[i], depth + 1, b);
        }
        put(b, "]", 1);
        break;
    case SD_JSON_OBJECT:
        put(b, "{", 1);
        for (size_t i = 0; i < v->u.object.count; i++) {
            const sd_json_member *m = &v->u.object.members[i];
            for (size_t j = 0; j < i; j++)
                if (strcmp(v->u.object.members[j].key, m->key) == 0)
                    fail("a duplicate key was accepted", m->key);
            if (sd_json_get(v, m->key) != &m->value)
                fail("sd_json_get does not find a key", m->key);
            if (i)
                put(b, ",", 1);
            put_string(b, m->key, strlen(m->key));
            put(b, ":", 1);
            check_and_write(&m->value, depth + 1, b);
        }
        put(b, "}", 1);
        break;
    default: fail("unknown kind", NULL);
    }
}

static int same(const sd_json *a, const sd_json *b) {
    if (a->kind != b->kind)
        return 0;
    switch (a->kind) {
    case SD_JSON_NULL: return 1;
    case SD_JSON_BOOL: return a->u.boolean == b->u.boolean;
    case SD_JSON_INT: return a->u.integer == b->u.integer;
    case SD_JSON_STRING:
        return a->u.string.len == b->u.string.len &&
               memcmp(a->u.string.data, b->u.string.data, a->u.string.len) == 0;
    case SD_JSON_ARRAY:
        if (a->u.array.count != b->u.array.count)
            return 0;
        for (size_t i = 0; i < a->u.array.count; i++)
            if (!same(&a->u.array.items[i], &b->u.array.items[i]))
                return 0;
        return 1;
    case SD_JSON_OBJECT:
        if (a->u.object.count != b->u.object.count)
            return 0;
        for (size_t i = 0; i < a->u.object.count; i++)
            if (strcmp(a->u.object.members[i].key, b->u.object.members[i].key) != 0 ||
                !same(&a->u.object.members[i].value, &b->u.object.members[i].value))
                return 0;
        return 1;
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    /* a copy of exactly `size` bytes: libFuzzer's buffer is exact too, but this keeps the
     * target's guarantee independent of it */
    char *text = malloc(size ? size : 1);
    if (!text)
        return 0;
    memcpy(text, data, size);
    sd_json value;
    sd_clear_error();
    sd_status s = sd_json_parse(text, size, "fuzz", &value);
    if (s != SD_OK) {
        if (s != SD_ERR_FORMAT && s != SD_ERR_NOMEM)
            fail(sd_status_name(s), sd_last_error());
        if (s == SD_ERR_FORMAT && !strstr(sd_last_error(), "fuzz: bad JSON header"))
            fail("the message does not say where", sd_last_error());
        free(text);
        return 0;
    }
    buffer b = {0};
    check_and_write(&value, 0, &b);
    sd_json again;
    if (sd_json_parse(b.data, b.len, "written back", &again) != SD_OK)
        fail("the value written back does not parse", sd_last_error());
    if (!same(&value, &again))
        fail("the value written back parses to another value", NULL);
    sd_json_free(&again);
    sd_json_free(&value);
    free(b.data);
    free(text);
    return 0;
}
