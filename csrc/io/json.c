/* Strict JSON parsing of untrusted headers (see json.h for what is accepted). */
#include "io/json.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const unsigned char *text;
    size_t len, pos;
    const char *source;
    size_t values; /* parsed so far, against SD_JSON_MAX_VALUES */
    int allow_numbers;
} parser;

static sd_status parse_error(const parser *p, const char *what) {
    return sd_fail(SD_ERR_FORMAT, "%s: bad JSON header at byte %zu: %s", p->source, p->pos, what);
}

static void skip_space(parser *p) {
    while (p->pos < p->len) {
        unsigned char c = p->text[p->pos];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r')
            break;
        p->pos++;
    }
}

/* Literal `word` at the cursor (true, false, null). */
static int take_word(parser *p, const char *word) {
    size_t n = strlen(word);
    if (p->len - p->pos < n || memcmp(p->text + p->pos, word, n) != 0)
        return 0;
    p->pos += n;
    return 1;
}

static int hex_value(unsigned char c) {
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Four hex digits at the cursor (after "\u") -> code unit, or -1. */
static long read_hex4(parser *p) {
    if (p->len - p->pos < 4)
        return -1;
    long v = 0;
    for (int i = 0; i < 4; i++) {
        int h = hex_value(p->text[p->pos + i]);
        if (h < 0)
            return -1;
        v = v * 16 + h;
    }
    p->pos += 4;
    return v;
}

static size_t put_utf8(char *out, unsigned long cp) {
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Length of the well-formed UTF-8 sequence at s[0, avail), or 0: rejects overlong
 * forms, surrogates and code points past U+10FFFF (RFC 3629). */
static size_t utf8_sequence(const unsigned char *s, size_t avail) {
    unsigned char c = s[0];
    size_t n;
    unsigned long cp;
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF)
        n = 2, cp = c & 0x1F;
    else if (c >= 0xE0 && c <= 0xEF)
        n = 3, cp = c & 0x0F;
    else if (c >= 0xF0 && c <= 0xF4)
        n = 4, cp = c & 0x07;
    else
        return 0;
    if (avail < n)
        return 0;
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    if ((n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000) || cp > 0x10FFFF ||
        (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;
    return n;
}

/* A string at the cursor (on its opening quote) -> a decoded, NUL-terminated copy.
 * The decoded text is never longer than the raw text, so one allocation of the raw
 * length is enough. */
static sd_status parse_string(parser *p, char **out, size_t *out_len) {
    *out = NULL;
    p->pos++; /* the opening quote */
    size_t start = p->pos, end = start;
    while (end < p->len && p->text[end] != '"')
        end += p->text[end] == '\\' ? 2 : 1;
    if (end >= p->len)
        return parse_error(p, "unterminated string");
    char *buf = malloc(end - start + 1);
    if (!buf)
        return sd_fail(SD_ERR_NOMEM, "%s: cannot allocate a header string", p->source);
    size_t n = 0;
    while (p->pos < end) {
        unsigned char c = p->text[p->pos];
        if (c < 0x20) {
            free(buf);
            return parse_error(p, "control character in a string");
        }
        if (c >= 0x80) {
            size_t k = utf8_sequence(p->text + p->pos, end - p->pos);
            if (!k) {
                free(buf);
                return parse_error(p, "invalid UTF-8 in a string");
            }
            memcpy(buf + n, p->text + p->pos, k);
            n += k;
            p->pos += k;
            continue;
        }
        if (c != '\\') {
            buf[n++] = (char)c;
            p->pos++;
            continue;
        }
        unsigned char e = p->text[p->pos + 1]; /* in range: the scan above stepped over it */
        p->pos += 2;
        const char *simple = strchr("\"\\/bfnrt", e);
        if (e && simple) {
            static const char decoded[] = "\"\\/\b\f\n\r\t";
            buf[n++] = decoded[simple - "\"\\/bfnrt"];
            continue;
        }
        if (e != 'u') {
            p->pos -= 2;
            free(buf);
            return parse_error(p, "invalid escape in a string");
        }
        long cp = read_hex4(p);
        if (cp >= 0xD800 && cp <= 0xDBFF) {
            long low = -1;
            if (p->len - p->pos >= 2 && p->text[p->pos] == '\\' && p->text[p->pos + 1] == 'u') {
                p->pos += 2;
                low = read_hex4(p);
            }
            if (low < 0xDC00 || low > 0xDFFF) {
                free(buf);
                return parse_error(p, "unpaired UTF-16 surrogate in a \\u escape");
            }
            cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
        } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
            free(buf);
            return parse_error(p, "unpaired UTF-16 surrogate in a \\u escape");
        }
        if (cp < 0) {
            free(buf);
            return parse_error(p, "\\u must be followed by four hex digits");
        }
        if (cp == 0) {
            free(buf);
            return parse_error(p, "NUL character (\\u0000) in a string");
        }
        /* the escape was at least 6 raw bytes (12 for a pair) and decodes to at most 4 */
        n += put_utf8(buf + n, (unsigned long)cp);
    }
    if (p->pos != end) { /* a surrogate pair's second escape ran past the closing quote */
        free(buf);
        return parse_error(p, "unterminated string");
    }
    p->pos = end + 1;
    buf[n] = '\0';
    *out = buf;
    *out_len = n;
    return SD_OK;
}

static sd_status parse_integer(parser *p, int64_t *out) {
    if (p->text[p->pos] == '-')
        return parse_error(p, "negative number (only non-negative integers are allowed)");
    size_t start = p->pos;
    uint64_t v = 0;
    while (p->pos < p->len && p->text[p->pos] >= '0' && p->text[p->pos] <= '9') {
        unsigned d = p->text[p->pos] - '0';
        if (v > ((uint64_t)INT64_MAX - d) / 10)
            return parse_error(p, "integer too large (over 2^63 - 1)");
        v = v * 10 + d;
        p->pos++;
    }
    if (p->pos == start)
        return parse_error(p, "expected a value");
    if (p->pos - start > 1 && p->text[start] == '0') {
        p->pos = start;
        return parse_error(p, "number with a leading zero");
    }
    if (p->pos < p->len) {
        unsigned char c = p->text[p->pos];
        if (c == '.' || c == 'e' || c == 'E')
            return parse_error(p, "non-integer number (only integers are allowed)");
    }
    *out = (int64_t)v;
    return SD_OK;
}

/* Any JSON number (and Python's Infinity, -Infinity, NaN) as a double: the cursor is on
 * its first character. Integers that parse_integer takes are left to it. */
static sd_status parse_number(parser *p, sd_json *out) {
    static const char *const words[] = {"Infinity", "-Infinity", "NaN"};
    static const double values[] = {INFINITY, -INFINITY, NAN};
    for (int k = 0; k < 3; k++)
        if (take_word(p, words[k])) {
            out->kind = SD_JSON_NUMBER;
            out->u.number = values[k];
            return SD_OK;
        }
    size_t start = p->pos, end = start;
    if (end < p->len && p->text[end] == '-')
        end++;
    size_t digits = end;
    while (end < p->len && p->text[end] >= '0' && p->text[end] <= '9')
        end++;
    if (end == digits)
        return parse_error(p, "expected a value");
    if (end - digits > 1 && p->text[digits] == '0')
        return parse_error(p, "number with a leading zero");
    int plain = p->text[start] != '-';
    if (end < p->len && p->text[end] == '.') {
        plain = 0;
        size_t frac = ++end;
        while (end < p->len && p->text[end] >= '0' && p->text[end] <= '9')
            end++;
        if (end == frac)
            return parse_error(p, "a fraction needs digits");
    }
    if (end < p->len && (p->text[end] == 'e' || p->text[end] == 'E')) {
        plain = 0;
        end++;
        if (end < p->len && (p->text[end] == '+' || p->text[end] == '-'))
            end++;
        size_t exp = end;
        while (end < p->len && p->text[end] >= '0' && p->text[end] <= '9')
            end++;
        if (end == exp)
            return parse_error(p, "an exponent needs digits");
    }
    if (plain) {
        out->kind = SD_JSON_INT;
        return parse_integer(p, &out->u.integer);
    }
    char buf[64];
    if (end - start >= sizeof buf)
        return parse_error(p, "number too long");
    memcpy(buf, p->text + start, end - start);
    buf[end - start] = '\0';
    out->kind = SD_JSON_NUMBER;
    out->u.number = strtod(buf, NULL);
    p->pos = end;
    return SD_OK;
}

static sd_status parse_value(parser *p, int depth, sd_json *out);

/* Grow a dynamic array of `elem`-sized items to hold one more. */
static int grow(void **items, size_t *cap, size_t count, size_t elem) {
    if (count < *cap)
        return 1;
    size_t ncap = *cap ? *cap * 2 : 4;
    void *n = realloc(*items, ncap * elem);
    if (!n)
        return 0;
    *items = n;
    *cap = ncap;
    return 1;
}

static sd_status parse_array(parser *p, int depth, sd_json *out) {
    sd_json *items = NULL;
    size_t count = 0, cap = 0;
    sd_status s = SD_OK;
    p->pos++; /* [ */
    skip_space(p);
    if (p->pos < p->len && p->text[p->pos] == ']') {
        p->pos++;
        goto done;
    }
    for (;;) {
        if (!grow((void **)&items, &cap, count, sizeof(sd_json))) {
            s = sd_fail(SD_ERR_NOMEM, "%s: cannot grow a header array", p->source);
            goto done;
        }
        s = parse_value(p, depth + 1, &items[count]);
        if (s != SD_OK)
            goto done;
        count++;
        skip_space(p);
        if (p->pos < p->len && p->text[p->pos] == ',') {
            p->pos++;
            continue;
        }
        if (p->pos < p->len && p->text[p->pos] == ']') {
            p->pos++;
            break;
        }
        s = parse_error(p, "expected ',' or ']' in an array");
        goto done;
    }
done:
    out->kind = SD_JSON_ARRAY;
    out->u.array.items = items;
    out->u.array.count = count;
    if (s != SD_OK)
        sd_json_free(out);
    return s;
}

static int compare_keys(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Sorting a copy of the key pointers finds a duplicate in O(n log n), so a header
 * with millions of keys cannot make the check quadratic. */
static sd_status check_duplicate_keys(parser *p, const sd_json_member *members, size_t count) {
    if (count < 2)
        return SD_OK;
    char **keys = malloc(count * sizeof(char *));
    if (!keys)
        return sd_fail(SD_ERR_NOMEM, "%s: cannot check header keys", p->source);
    for (size_t i = 0; i < count; i++)
        keys[i] = members[i].key;
    qsort(keys, count, sizeof(char *), compare_keys);
    sd_status s = SD_OK;
    for (size_t i = 1; i < count && s == SD_OK; i++)
        if (strcmp(keys[i - 1], keys[i]) == 0)
            s = sd_fail(SD_ERR_FORMAT, "%s: bad JSON header: key '%s' appears twice in an object",
                        p->source, keys[i]);
    free(keys);
    return s;
}

static sd_status parse_object(parser *p, int depth, sd_json *out) {
    sd_json_member *members = NULL;
    size_t count = 0, cap = 0;
    sd_status s = SD_OK;
    p->pos++; /* { */
    skip_space(p);
    if (p->pos < p->len && p->text[p->pos] == '}') {
        p->pos++;
        goto done;
    }
    for (;;) {
        skip_space(p);
        if (p->pos >= p->len || p->text[p->pos] != '"') {
            s = parse_error(p, "expected a string key in an object");
            goto done;
        }
        if (!grow((void **)&members, &cap, count, sizeof(sd_json_member))) {
            s = sd_fail(SD_ERR_NOMEM, "%s: cannot grow a header object", p->source);
            goto done;
        }
        size_t key_len;
        s = parse_string(p, &members[count].key, &key_len);
        if (s != SD_OK)
            goto done;
        skip_space(p);
        if (p->pos >= p->len || p->text[p->pos] != ':') {
            free(members[count].key);
            s = parse_error(p, "expected ':' after an object key");
            goto done;
        }
        p->pos++;
        s = parse_value(p, depth + 1, &members[count].value);
        if (s != SD_OK) {
            free(members[count].key);
            goto done;
        }
        count++;
        skip_space(p);
        if (p->pos < p->len && p->text[p->pos] == ',') {
            p->pos++;
            continue;
        }
        if (p->pos < p->len && p->text[p->pos] == '}') {
            p->pos++;
            break;
        }
        s = parse_error(p, "expected ',' or '}' in an object");
        goto done;
    }
    s = check_duplicate_keys(p, members, count);
done:
    out->kind = SD_JSON_OBJECT;
    out->u.object.members = members;
    out->u.object.count = count;
    if (s != SD_OK)
        sd_json_free(out);
    return s;
}

static sd_status parse_value(parser *p, int depth, sd_json *out) {
    memset(out, 0, sizeof *out);
    if (depth > SD_JSON_MAX_DEPTH)
        return parse_error(p, "nesting too deep");
    if (++p->values > SD_JSON_MAX_VALUES)
        return parse_error(p, "too many values");
    skip_space(p);
    if (p->pos >= p->len)
        return parse_error(p, "unexpected end of the header");
    switch (p->text[p->pos]) {
    case '{': return parse_object(p, depth, out);
    case '[': return parse_array(p, depth, out);
    case '"':
        out->kind = SD_JSON_STRING;
        return parse_string(p, &out->u.string.data, &out->u.string.len);
    case 't':
    case 'f':
        out->kind = SD_JSON_BOOL;
        out->u.boolean = p->text[p->pos] == 't';
        if (take_word(p, out->u.boolean ? "true" : "false"))
            return SD_OK;
        return parse_error(p, "unknown literal");
    case 'n':
        out->kind = SD_JSON_NULL;
        if (take_word(p, "null"))
            return SD_OK;
        return parse_error(p, "unknown literal");
    default:
        if (p->allow_numbers)
            return parse_number(p, out);
        out->kind = SD_JSON_INT;
        return parse_integer(p, &out->u.integer);
    }
}

sd_status sd_json_parse(const char *text, size_t len, const char *source, sd_json *out) {
    return sd_json_parse_ex(text, len, source, NULL, out);
}

sd_status sd_json_parse_ex(const char *text, size_t len, const char *source,
                           const sd_json_options *options, sd_json *out) {
    parser p = {(const unsigned char *)text, len, 0, source, 0, options && options->allow_numbers};
    sd_status s = parse_value(&p, 0, out);
    if (s != SD_OK)
        return s;
    skip_space(&p);
    if (p.pos != p.len) {
        sd_json_free(out);
        return parse_error(&p, "unexpected data after the JSON value");
    }
    return SD_OK;
}

void sd_json_free(sd_json *value) {
    switch (value->kind) {
    case SD_JSON_STRING: free(value->u.string.data); break;
    case SD_JSON_ARRAY:
        for (size_t i = 0; i < value->u.array.count; i++)
            sd_json_free(&value->u.array.items[i]);
        free(value->u.array.items);
        break;
    case SD_JSON_OBJECT:
        for (size_t i = 0; i < value->u.object.count; i++) {
            free(value->u.object.members[i].key);
            sd_json_free(&value->u.object.members[i].value);
        }
        free(value->u.object.members);
        break;
    default: break;
    }
    memset(value, 0, sizeof *value);
}

const sd_json *sd_json_get(const sd_json *object, const char *key) {
    if (object->kind != SD_JSON_OBJECT)
        return NULL;
    for (size_t i = 0; i < object->u.object.count; i++)
        if (strcmp(object->u.object.members[i].key, key) == 0)
            return &object->u.object.members[i].value;
    return NULL;
}

const char *sd_json_kind_name(sd_json_kind kind) {
    switch (kind) {
    case SD_JSON_NULL: return "null";
    case SD_JSON_BOOL: return "a boolean";
    case SD_JSON_INT: return "an integer";
    case SD_JSON_STRING: return "a string";
    case SD_JSON_ARRAY: return "an array";
    case SD_JSON_OBJECT: return "an object";
    case SD_JSON_NUMBER: return "a number";
    }
    return "unknown";
}
