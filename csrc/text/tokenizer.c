/* The CLIP BPE tokenizer (see tokenizer.h). It follows sdcore/tokenizer.py step for step;
 * the comments name the Python function each part mirrors. */
#include "text/tokenizer.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/json.h"
#include "text/unicode_tables.h"

#define END_OF_WORD "</w>"
#define BOS_TOKEN "<|startoftext|>"
#define EOS_TOKEN "<|endoftext|>"
#define MAX_SPECIALS 16

/* ------------------------------------------------------------ string map ---- */

/* Open addressing from NUL-terminated keys (owned) to ints. */
typedef struct {
    char **keys;
    int32_t *values;
    size_t cap, count;
} str_map;

static uint64_t hash_bytes(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h;
}

static void map_free(str_map *m) {
    for (size_t i = 0; i < m->cap; i++)
        free(m->keys ? m->keys[i] : NULL);
    free(m->keys);
    free(m->values);
    memset(m, 0, sizeof *m);
}

static sd_status map_init(str_map *m, size_t expected) {
    size_t cap = 16;
    while (cap < expected * 2)
        cap *= 2;
    m->keys = calloc(cap, sizeof(char *));
    m->values = calloc(cap, sizeof(int32_t));
    m->cap = cap;
    m->count = 0;
    if (!m->keys || !m->values)
        return sd_fail(SD_ERR_NOMEM, "tokenizer: cannot allocate a table of %zu entries", cap);
    return SD_OK;
}

/* The slot of key s[0, n): its own, or the empty one where it would go. */
static size_t map_slot(const str_map *m, const char *s, size_t n) {
    size_t i = hash_bytes(s, n) & (m->cap - 1);
    while (m->keys[i] && !(strlen(m->keys[i]) == n && memcmp(m->keys[i], s, n) == 0))
        i = (i + 1) & (m->cap - 1);
    return i;
}

/* Insert unless present (the first value wins, as Python's setdefault). */
static sd_status map_put(str_map *m, const char *s, size_t n, int32_t value) {
    size_t i = map_slot(m, s, n);
    if (m->keys[i])
        return SD_OK;
    if ((m->count + 1) * 2 > m->cap)
        return sd_fail(SD_ERR_INVALID, "tokenizer: table full"); /* sized up front */
    char *k = malloc(n + 1);
    if (!k)
        return sd_fail(SD_ERR_NOMEM, "tokenizer: cannot allocate a key");
    memcpy(k, s, n);
    k[n] = '\0';
    m->keys[i] = k;
    m->values[i] = value;
    m->count++;
    return SD_OK;
}

/* The value of s[0, n), or -1. */
static int32_t map_get(const str_map *m, const char *s, size_t n) {
    size_t i = map_slot(m, s, n);
    return m->keys[i] ? m->values[i] : -1;
}

/* ------------------------------------------------------------------ UTF-8 --- */

typedef struct {
    uint32_t *cp;
    size_t len, cap;
} cp_buf;

static int cp_push(cp_buf *b, uint32_t c) {
    if (b->len == b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 64;
        uint32_t *p = realloc(b->cp, cap * sizeof(uint32_t));
        if (!p)
            return 0;
        b->cp = p;
        b->cap = cap;
    }
    b->cp[b->len++] = c;
    return 1;
}

/* Decode s[0, n) (checked: no overlong forms, surrogates or values past U+10FFFF). */
static sd_status utf8_decode(const char *s, size_t n, cp_buf *out) {
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        uint32_t c = u[i];
        size_t k = c < 0x80                 ? 1
                   : c >= 0xC2 && c <= 0xDF ? 2
                   : c >= 0xE0 && c <= 0xEF ? 3
                   : c >= 0xF0 && c <= 0xF4 ? 4
                                            : 0;
        if (k == 0 || i + k > n)
            return sd_fail(SD_ERR_INVALID, "prompt: not valid UTF-8 (byte %zu)", i);
        if (k > 1)
            c &= 0x3F >> (k - 1);
        for (size_t j = 1; j < k; j++) {
            if ((u[i + j] & 0xC0) != 0x80)
                return sd_fail(SD_ERR_INVALID, "prompt: not valid UTF-8 (byte %zu)", i);
            c = (c << 6) | (u[i + j] & 0x3F);
        }
        if ((k == 3 && c < 0x800) || (k == 4 && c < 0x10000) || c > 0x10FFFF ||
            (c >= 0xD800 && c <= 0xDFFF))
            return sd_fail(SD_ERR_INVALID, "prompt: not valid UTF-8 (byte %zu)", i);
        if (!cp_push(out, c))
            return sd_fail(SD_ERR_NOMEM, "tokenizer: out of memory");
        i += k;
    }
    return SD_OK;
}

static size_t utf8_put(char *out, uint32_t cp) {
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

/* ---------------------------------------------------------- Unicode data --- */

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

static int in_ranges(const uint32_t (*r)[2], size_t n, uint32_t cp) {
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (cp < r[mid][0])
            hi = mid;
        else if (cp > r[mid][1])
            lo = mid + 1;
        else
            return 1;
    }
    return 0;
}

/* The row of a table sorted by its first column whose key is cp, or NULL. */
static const uint32_t *find_row(const uint32_t *rows, size_t n, size_t width, uint32_t cp) {
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        const uint32_t *row = rows + mid * width;
        if (cp < row[0])
            hi = mid;
        else if (cp > row[0])
            lo = mid + 1;
        else
            return row;
    }
    return NULL;
}

/* What `\s` matches in the reference's pattern (Unicode White_Space), as _WHITESPACE. */
static int is_space(uint32_t c) {
    return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
           c == 0x205F || c == 0x3000;
}

enum { CLS_LETTER, CLS_NUMBER, CLS_OTHER, CLS_SPACE };

static int char_class(uint32_t c) { /* _char_class */
    if (is_space(c))
        return CLS_SPACE;
    if (in_ranges(uc_letter_ranges, COUNT(uc_letter_ranges), c))
        return CLS_LETTER;
    if (in_ranges(uc_number_ranges, COUNT(uc_number_ranges), c))
        return CLS_NUMBER;
    return CLS_OTHER;
}

static int combining_class(uint32_t c) {
    const uint32_t *row = find_row(&uc_combining_class[0][0], COUNT(uc_combining_class), 2, c);
    return row ? (int)row[1] : 0;
}

/* Hangul syllables decompose and compose by arithmetic (Unicode chapter 3.12). */
#define H_SBASE 0xAC00u
#define H_LBASE 0x1100u
#define H_VBASE 0x1161u
#define H_TBASE 0x11A7u
#define H_LCOUNT 19u
#define H_VCOUNT 21u
#define H_TCOUNT 28u
#define H_NCOUNT (H_VCOUNT * H_TCOUNT)
#define H_SCOUNT (H_LCOUNT * H_NCOUNT)

static int decompose_into(uint32_t c, cp_buf *out, int depth) {
    if (c >= H_SBASE && c < H_SBASE + H_SCOUNT) {
        uint32_t s = c - H_SBASE, t = s % H_TCOUNT;
        if (!cp_push(out, H_LBASE + s / H_NCOUNT) ||
            !cp_push(out, H_VBASE + (s % H_NCOUNT) / H_TCOUNT))
            return 0;
        return t == 0 || cp_push(out, H_TBASE + t);
    }
    const uint32_t *row = find_row(&uc_decomposition[0][0], COUNT(uc_decomposition), 3, c);
    if (!row || depth > 8)
        return cp_push(out, c);
    if (!decompose_into(row[1], out, depth + 1))
        return 0;
    return row[2] == 0 || decompose_into(row[2], out, depth + 1);
}

static uint32_t compose_pair(uint32_t a, uint32_t b) {
    if (a >= H_LBASE && a < H_LBASE + H_LCOUNT && b >= H_VBASE && b < H_VBASE + H_VCOUNT)
        return H_SBASE + ((a - H_LBASE) * H_VCOUNT + (b - H_VBASE)) * H_TCOUNT;
    if (a >= H_SBASE && a < H_SBASE + H_SCOUNT && (a - H_SBASE) % H_TCOUNT == 0 && b > H_TBASE &&
        b < H_TBASE + H_TCOUNT)
        return a + (b - H_TBASE);
    size_t lo = 0, hi = COUNT(uc_composition);
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        const uint32_t *row = uc_composition[mid];
        if (a < row[0] || (a == row[0] && b < row[1]))
            hi = mid;
        else if (a > row[0] || b > row[1])
            lo = mid + 1;
        else
            return row[2];
    }
    return 0;
}

/* NFC in place: decompose, order the marks by combining class, compose (_nfc). */
static sd_status nfc(cp_buf *text) {
    cp_buf d = {0};
    for (size_t i = 0; i < text->len; i++)
        if (!decompose_into(text->cp[i], &d, 0)) {
            free(d.cp);
            return sd_fail(SD_ERR_NOMEM, "tokenizer: out of memory");
        }
    /* canonical order: a stable insertion sort of each run of non-starters */
    for (size_t i = 1; i < d.len; i++) {
        int cc = combining_class(d.cp[i]);
        if (cc == 0)
            continue;
        size_t j = i;
        uint32_t c = d.cp[i];
        while (j > 0 && combining_class(d.cp[j - 1]) > cc) {
            d.cp[j] = d.cp[j - 1];
            j--;
        }
        d.cp[j] = c;
    }
    size_t out = 0;
    if (d.len) {
        size_t starter = 0;
        int last = combining_class(d.cp[0]) ? 256 : 0;
        out = 1;
        for (size_t i = 1; i < d.len; i++) {
            uint32_t c = d.cp[i];
            int cc = combining_class(c);
            uint32_t composite = compose_pair(d.cp[starter], c);
            if (composite && (last < cc || last == 0)) {
                d.cp[starter] = composite;
                continue;
            }
            if (cc == 0)
                starter = out;
            last = cc;
            d.cp[out++] = c;
        }
    }
    free(text->cp);
    *text = d;
    text->len = out;
    return SD_OK;
}

/* NFC, whitespace runs to one space, then per-character lowercase (normalize). */
static sd_status normalize(const uint32_t *in, size_t n, cp_buf *out) {
    cp_buf t = {0};
    for (size_t i = 0; i < n; i++)
        if (!cp_push(&t, in[i])) {
            free(t.cp);
            return sd_fail(SD_ERR_NOMEM, "tokenizer: out of memory");
        }
    sd_status s = nfc(&t);
    int in_space = 0;
    for (size_t i = 0; s == SD_OK && i < t.len; i++) {
        uint32_t c = t.cp[i];
        if (is_space(c)) {
            if (!in_space && !cp_push(out, ' '))
                s = sd_fail(SD_ERR_NOMEM, "tokenizer: out of memory");
            in_space = 1;
            continue;
        }
        in_space = 0;
        const uint32_t *row = find_row(&uc_lowercase[0][0], COUNT(uc_lowercase), 4, c);
        for (int k = 0; k < 3 && s == SD_OK; k++) {
            uint32_t l = row ? row[1 + k] : (k == 0 ? c : 0);
            if (l && !cp_push(out, l))
                s = sd_fail(SD_ERR_NOMEM, "tokenizer: out of memory");
        }
    }
    free(t.cp);
    return s;
}

/* ------------------------------------------------------------- tokenizer --- */

typedef struct {
    uint32_t *text; /* code points to look for */
    size_t len;
    int32_t id;
} special;

struct sd_tokenizer {
    str_map vocab;  /* token -> id */
    str_map merges; /* "a b" -> rank */
    int32_t bos_id, eos_id, pad_id, unk_id;
    int max_length;
    special raw[MAX_SPECIALS], norm[MAX_SPECIALS]; /* longest first */
    int n_raw, n_norm;
    char byte_char[256][3]; /* byte -> its printable character, UTF-8 (bytes_to_unicode) */
};

int32_t sd_tokenizer_bos_id(const sd_tokenizer *t) {
    return t->bos_id;
}
int32_t sd_tokenizer_eos_id(const sd_tokenizer *t) {
    return t->eos_id;
}
int32_t sd_tokenizer_pad_id(const sd_tokenizer *t) {
    return t->pad_id;
}
int sd_tokenizer_max_length(const sd_tokenizer *t) {
    return t->max_length;
}

void sd_tokenizer_free(sd_tokenizer *t) {
    if (!t)
        return;
    map_free(&t->vocab);
    map_free(&t->merges);
    for (int i = 0; i < t->n_raw; i++)
        free(t->raw[i].text);
    for (int i = 0; i < t->n_norm; i++)
        free(t->norm[i].text);
    free(t);
}

static void build_byte_chars(sd_tokenizer *t) { /* bytes_to_unicode */
    int extra = 0;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
        uint32_t cp = printable ? (uint32_t)b : 256u + (uint32_t)extra++;
        memset(t->byte_char[b], 0, 3);
        utf8_put(t->byte_char[b], cp);
    }
}

static sd_status read_file(const char *path, char **data, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f)
        return sd_fail(SD_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    char *buf = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (n + 65536 + 1 > cap) {
            cap = cap ? cap * 2 : 1 << 20;
            char *p = realloc(buf, cap);
            if (!p) {
                free(buf);
                fclose(f);
                return sd_fail(SD_ERR_NOMEM, "%s: cannot allocate %zu bytes", path, cap);
            }
            buf = p;
        }
        size_t got = fread(buf + n, 1, 65536, f);
        n += got;
        if (got < 65536)
            break;
    }
    int err = ferror(f);
    fclose(f);
    if (err) {
        free(buf);
        return sd_fail(SD_ERR_IO, "%s: read error", path);
    }
    buf[n] = '\0';
    *data = buf;
    *len = n;
    return SD_OK;
}

static sd_status read_json_file(const char *path, sd_json *out) {
    char *text;
    size_t len;
    SD_TRY(read_file(path, &text, &len));
    sd_json_options opt = {.allow_numbers = 1};
    sd_status s = sd_json_parse_ex(text, len, path, &opt, out);
    free(text);
    return s;
}

static sd_status load_vocab(sd_tokenizer *t, const char *path) {
    sd_json v;
    SD_TRY(read_json_file(path, &v));
    sd_status s = SD_OK;
    if (v.kind != SD_JSON_OBJECT)
        s = sd_fail(SD_ERR_FORMAT, "%s: expected a JSON object of token: id", path);
    if (s == SD_OK)
        s = map_init(&t->vocab, v.u.object.count);
    for (size_t i = 0; s == SD_OK && i < v.u.object.count; i++) {
        const sd_json_member *m = &v.u.object.members[i];
        if (m->value.kind != SD_JSON_INT || m->value.u.integer > INT32_MAX)
            s = sd_fail(SD_ERR_FORMAT, "%s: the id of token '%s' is not an integer id", path,
                        m->key);
        else
            s = map_put(&t->vocab, m->key, strlen(m->key), (int32_t)m->value.u.integer);
    }
    sd_json_free(&v);
    return s;
}

static sd_status load_merges(sd_tokenizer *t, const char *path) {
    char *text;
    size_t len;
    SD_TRY(read_file(path, &text, &len));
    size_t lines = 1;
    for (size_t i = 0; i < len; i++)
        lines += text[i] == '\n';
    sd_status s = map_init(&t->merges, lines);
    int32_t rank = 0;
    size_t line_no = 0;
    for (char *line = text; s == SD_OK && line && *line;) {
        char *next = strchr(line, '\n');
        if (next)
            *next++ = '\0';
        line_no++;
        size_t n = strlen(line);
        if (n && line[n - 1] == '\r') /* _parse_merge splits on any whitespace */
            line[--n] = '\0';
        if (n == 0 || strncmp(line, "#version", 8) == 0) {
            line = next;
            continue;
        }
        char *sp = strchr(line, ' ');
        if (!sp || sp == line || !sp[1] || strchr(sp + 1, ' ')) {
            s = sd_fail(SD_ERR_FORMAT, "%s: line %zu: bad merge line '%.60s'", path, line_no, line);
            break;
        }
        /* a merge must make a token of the vocabulary */
        size_t a = (size_t)(sp - line), b = n - a - 1;
        char joined[1024];
        if (a + b >= sizeof joined) {
            s = sd_fail(SD_ERR_FORMAT, "%s: line %zu: merge too long", path, line_no);
            break;
        }
        memcpy(joined, line, a);
        memcpy(joined + a, sp + 1, b);
        if (map_get(&t->vocab, joined, a + b) < 0) {
            s = sd_fail(SD_ERR_FORMAT,
                        "%s: line %zu: merge '%s' makes '%.*s', which is not in "
                        "the vocabulary",
                        path, line_no, line, (int)(a + b), joined);
            break;
        }
        s = map_put(&t->merges, line, n, rank++);
        line = next;
    }
    free(text);
    return s;
}

/* ---- special tokens, as sdcore/tokenizer.py's from_folder and _added_token_order ---- */

typedef struct {
    const char *content;
    int is_str; /* a plain string: matched raw */
    int normalized, lstrip, rstrip, single_word, special;
} token_spec;

static const char *token_content(const sd_json *v) { /* _token_content */
    if (v && v->kind == SD_JSON_OBJECT)
        v = sd_json_get(v, "content");
    return v && v->kind == SD_JSON_STRING ? v->u.string.data : NULL;
}

static int json_flag(const sd_json *obj, const char *key, int fallback) {
    const sd_json *v = sd_json_get(obj, key);
    return v && v->kind == SD_JSON_BOOL ? v->u.boolean : fallback;
}

static token_spec token_key(const sd_json *v) { /* _token_key */
    token_spec k = {0};
    k.content = token_content(v);
    if (v->kind == SD_JSON_STRING) {
        k.is_str = 1;
        return k;
    }
    k.special = json_flag(v, "special", 0);
    k.normalized = json_flag(v, "normalized", !k.special);
    k.lstrip = json_flag(v, "lstrip", 0);
    k.rstrip = json_flag(v, "rstrip", 0);
    k.single_word = json_flag(v, "single_word", 0);
    return k;
}

static int same_key(const token_spec *a, const token_spec *b) {
    return a->is_str == b->is_str && strcmp(a->content, b->content) == 0 &&
           (a->is_str ||
            (a->normalized == b->normalized && a->lstrip == b->lstrip && a->rstrip == b->rstrip &&
             a->single_word == b->single_word && a->special == b->special));
}

static sd_status add_special(sd_tokenizer *t, const char *folder, const char *content,
                             int normalized) {
    int32_t id = map_get(&t->vocab, content, strlen(content));
    if (id < 0)
        return sd_fail(SD_ERR_FORMAT, "%s: special token '%s' is not in the vocabulary", folder,
                       content);
    cp_buf raw = {0}, text = {0};
    sd_status s = utf8_decode(content, strlen(content), &raw);
    if (s == SD_OK && normalized)
        s = normalize(raw.cp, raw.len, &text);
    if (!normalized) {
        text = raw;
        raw.cp = NULL;
    }
    free(raw.cp);
    if (s != SD_OK) {
        free(text.cp);
        return s;
    }
    /* a later entry for the same content replaces an earlier one, in either list */
    special *lists[2] = {t->raw, t->norm};
    int *counts[2] = {&t->n_raw, &t->n_norm};
    for (int l = 0; l < 2; l++)
        for (int i = 0; i < *counts[l]; i++)
            if (lists[l][i].id == id) {
                free(lists[l][i].text);
                lists[l][i] = lists[l][--*counts[l]];
                i--;
            }
    special *list = normalized ? t->norm : t->raw;
    int *n = normalized ? &t->n_norm : &t->n_raw;
    if (*n == MAX_SPECIALS) {
        free(text.cp);
        return sd_fail(SD_ERR_UNSUPPORTED, "%s: more than %d special tokens", folder, MAX_SPECIALS);
    }
    /* longest first: at one position the longest match wins */
    int at = *n;
    while (at > 0 && list[at - 1].len < text.len) {
        list[at] = list[at - 1];
        at--;
    }
    list[at] = (special){text.cp, text.len, id};
    (*n)++;
    return SD_OK;
}

static sd_status load_specials(sd_tokenizer *t, const char *folder) {
    static const char *const keys[] = {"bos_token", "eos_token", "unk_token", "sep_token",
                                       "pad_token", "cls_token", "mask_token"};
    sd_json files[2] = {{0}, {0}};
    const sd_json *named[7] = {0};
    const sd_json *decoder = NULL;
    int max_length = 77;
    sd_status s = SD_OK;
    const char *names[2] = {"tokenizer_config.json", "special_tokens_map.json"};
    for (int f = 0; f < 2 && s == SD_OK; f++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", folder, names[f]);
        FILE *probe = fopen(path, "rb");
        if (!probe)
            continue;
        fclose(probe);
        s = read_json_file(path, &files[f]);
        if (s == SD_OK && files[f].kind != SD_JSON_OBJECT)
            s = sd_fail(SD_ERR_FORMAT, "%s: expected a JSON object", path);
        if (s != SD_OK)
            break;
        for (int k = 0; k < 7; k++) /* the later file wins, as dict.update */
            if (sd_json_get(&files[f], keys[k]))
                named[k] = sd_json_get(&files[f], keys[k]);
        const sd_json *d = sd_json_get(&files[f], "added_tokens_decoder");
        if (d)
            decoder = d;
        const sd_json *len = sd_json_get(&files[f], "model_max_length");
        if (len && len->kind == SD_JSON_INT && len->u.integer >= 2 && len->u.integer <= 4096)
            max_length = (int)len->u.integer;
    }
    /* transformers' defaults for the tokens a folder does not name */
    static const sd_json bos = {SD_JSON_STRING, .u.string = {BOS_TOKEN, sizeof BOS_TOKEN - 1}};
    static const sd_json eos = {SD_JSON_STRING, .u.string = {EOS_TOKEN, sizeof EOS_TOKEN - 1}};
    const sd_json *defaults[7] = {&bos, &eos, &eos, NULL, &eos, NULL, NULL};
    for (int k = 0; k < 7; k++)
        if (defaults[k] && !token_content(named[k]))
            named[k] = defaults[k];
    if (s == SD_OK) {
        const char *c;
        int32_t *ids[7] = {&t->bos_id, &t->eos_id, &t->unk_id, NULL, &t->pad_id, NULL, NULL};
        for (int k = 0; k < 7 && s == SD_OK; k++) {
            if (!ids[k])
                continue;
            c = token_content(named[k]);
            *ids[k] = map_get(&t->vocab, c, strlen(c));
            if (*ids[k] < 0)
                s = sd_fail(SD_ERR_FORMAT, "%s: special token '%s' is not in the vocabulary",
                            folder, c);
        }
    }
    /* the added tokens in the order transformers registers them: the decoder's listed
     * entries (by id), then each named token not among them */
    token_spec order[64];
    int n_order = 0;
    if (s == SD_OK && decoder && decoder->kind == SD_JSON_OBJECT) {
        /* keys are ids written as strings: take the entries in id order */
        size_t count = decoder->u.object.count;
        if (count > 48)
            s = sd_fail(SD_ERR_UNSUPPORTED, "%s: more than 48 added tokens", folder);
        long ids[48];
        const sd_json *values[48];
        for (size_t i = 0; s == SD_OK && i < count; i++) {
            long id = strtol(decoder->u.object.members[i].key, NULL, 10);
            size_t at = i;
            while (at > 0 && ids[at - 1] > id) {
                ids[at] = ids[at - 1];
                values[at] = values[at - 1];
                at--;
            }
            ids[at] = id;
            values[at] = &decoder->u.object.members[i].value;
        }
        for (size_t i = 0; s == SD_OK && i < count; i++)
            if (token_content(values[i]))
                order[n_order++] = token_key(values[i]);
    }
    int n_listed = n_order;
    for (int k = 0; k < 7 && s == SD_OK; k++) {
        const char *c = token_content(named[k]);
        if (!c)
            continue;
        int skip = 0;
        for (int j = 0; j < n_listed; j++)
            skip |= strcmp(order[j].content, c) == 0;
        token_spec key = token_key(named[k]);
        for (int j = 0; j < n_order; j++)
            skip |= same_key(&order[j], &key);
        if (!skip)
            order[n_order++] = key;
    }
    for (int j = 0; j < n_order && s == SD_OK; j++) {
        if (!order[j].is_str && order[j].single_word)
            s = sd_fail(SD_ERR_UNSUPPORTED, "%s: special token '%s': single_word is not supported",
                        folder, order[j].content);
        else if (order[j].content[0])
            s = add_special(t, folder, order[j].content, !order[j].is_str && order[j].normalized);
    }
    t->max_length = max_length;
    sd_json_free(&files[0]);
    sd_json_free(&files[1]);
    return s;
}

sd_status sd_tokenizer_load(const char *folder, sd_tokenizer **out) {
    *out = NULL;
    sd_tokenizer *t = calloc(1, sizeof *t);
    if (!t)
        return sd_fail(SD_ERR_NOMEM, "tokenizer: out of memory");
    build_byte_chars(t);
    char path[4096];
    snprintf(path, sizeof path, "%s/vocab.json", folder);
    sd_status s = load_vocab(t, path);
    if (s == SD_OK) {
        snprintf(path, sizeof path, "%s/merges.txt", folder);
        s = load_merges(t, path);
    }
    if (s == SD_OK)
        s = load_specials(t, folder);
    if (s != SD_OK) {
        sd_tokenizer_free(t);
        return s;
    }
    *out = t;
    return SD_OK;
}

/* ---------------------------------------------------------------- encode --- */

typedef struct {
    int32_t *ids;
    int64_t n, cap;
} id_buf;

static int id_push(id_buf *b, int32_t id) {
    if (b->n == b->cap) {
        int64_t cap = b->cap ? b->cap * 2 : 64;
        int32_t *p = realloc(b->ids, (size_t)cap * sizeof(int32_t));
        if (!p)
            return 0;
        b->ids = p;
        b->cap = cap;
    }
    b->ids[b->n++] = id;
    return 1;
}

/* The special of `list` starting at text[i] (the longest), or NULL. */
static const special *match_special(const special *list, int n, const uint32_t *text, size_t len,
                                    size_t i) {
    for (int k = 0; k < n; k++)
        if (list[k].len && list[k].len <= len - i &&
            memcmp(text + i, list[k].text, list[k].len * sizeof(uint32_t)) == 0)
            return &list[k];
    return NULL;
}

/* BPE of one piece, already written as byte characters (_bpe). */
static sd_status bpe(const sd_tokenizer *t, const char *piece, size_t len, id_buf *out) {
    if (len == 0) /* pieces are never empty; nothing to encode if one were */
        return SD_OK;
    /* symbols as [start, end) of a working copy that has "</w>" appended */
    size_t cap = len + sizeof END_OF_WORD;
    char *word = malloc(cap);
    size_t *start = malloc((len + 1) * sizeof(size_t)), *end = malloc((len + 1) * sizeof(size_t));
    char *pair = malloc(cap + 1);
    if (!word || !start || !end || !pair) {
        free(word), free(start), free(end), free(pair);
        return sd_fail(SD_ERR_NOMEM, "tokenizer: out of memory");
    }
    memcpy(word, piece, len);
    memcpy(word + len, END_OF_WORD, sizeof END_OF_WORD);
    size_t n = 0;
    for (size_t i = 0; i < len;) { /* one symbol per UTF-8 character */
        size_t k = 1;
        while (i + k < len && (((unsigned char)piece[i + k]) & 0xC0) == 0x80)
            k++;
        start[n] = i;
        end[n++] = i + k;
        i += k;
    }
    end[n - 1] = len + strlen(END_OF_WORD);
    while (n > 1) {
        /* the lowest-ranked adjacent pair is merged everywhere, left to right; symbols stay
         * contiguous in `word`, so a pair is start[i]..end[i + 1] with a space between */
        int32_t best = -1;
        size_t best_i = 0;
        for (size_t i = 0; i + 1 < n; i++) {
            size_t a = end[i] - start[i], b = end[i + 1] - start[i + 1];
            memcpy(pair, word + start[i], a);
            pair[a] = ' ';
            memcpy(pair + a + 1, word + start[i + 1], b);
            int32_t r = map_get(&t->merges, pair, a + 1 + b);
            if (r >= 0 && (best < 0 || r < best)) {
                best = r;
                best_i = i;
            }
        }
        if (best < 0)
            break;
        size_t fa = end[best_i] - start[best_i], fb = end[best_i + 1] - start[best_i + 1];
        const char *first = word + start[best_i], *second = word + start[best_i + 1];
        char *f = malloc(fa + 1), *sc = malloc(fb + 1);
        if (!f || !sc) {
            free(f), free(sc), free(word), free(start), free(end), free(pair);
            return sd_fail(SD_ERR_NOMEM, "tokenizer: out of memory");
        }
        memcpy(f, first, fa);
        memcpy(sc, second, fb);
        size_t m = 0;
        for (size_t i = 0; i < n;) {
            if (i + 1 < n && end[i] - start[i] == fa && memcmp(word + start[i], f, fa) == 0 &&
                end[i + 1] - start[i + 1] == fb && memcmp(word + start[i + 1], sc, fb) == 0) {
                start[m] = start[i];
                end[m++] = end[i + 1];
                i += 2;
            } else {
                start[m] = start[i];
                end[m++] = end[i];
                i++;
            }
        }
        n = m;
        free(f);
        free(sc);
    }
    sd_status s = SD_OK;
    for (size_t i = 0; i < n && s == SD_OK; i++) {
        int32_t id = map_get(&t->vocab, word + start[i], end[i] - start[i]);
        if (!id_push(out, id < 0 ? t->unk_id : id))
            s = sd_fail(SD_ERR_NOMEM, "tokenizer: out of memory");
    }
    free(word), free(start), free(end), free(pair);
    return s;
}

/* A piece of code points -> its UTF-8 bytes as byte characters -> BPE. */
static sd_status encode_piece(const sd_tokenizer *t, const uint32_t *cp, size_t n, id_buf *out) {
    char *bytes = malloc(n * 4 + 1), *chars = malloc(n * 4 * 2 + 1);
    if (!bytes || !chars) {
        free(bytes), free(chars);
        return sd_fail(SD_ERR_NOMEM, "tokenizer: out of memory");
    }
    size_t nb = 0, nc = 0;
    for (size_t i = 0; i < n; i++)
        nb += utf8_put(bytes + nb, cp[i]);
    for (size_t i = 0; i < nb; i++) {
        const char *c = t->byte_char[(unsigned char)bytes[i]];
        size_t k = strnlen(c, 3);
        memcpy(chars + nc, c, k);
        nc += k;
    }
    sd_status s = bpe(t, chars, nc, out);
    free(bytes);
    free(chars);
    return s;
}

static int starts_with_ascii(const uint32_t *text, size_t len, size_t i, const char *word) {
    size_t n = strlen(word);
    if (len - i < n)
        return 0;
    for (size_t k = 0; k < n; k++)
        if (text[i + k] != (unsigned char)word[k])
            return 0;
    return 1;
}

static const char *const contractions[] = {"'s", "'t", "'re", "'ve", "'m", "'ll", "'d"};

/* Split normalised text by CLIP's pattern and encode each piece (pre_tokenize). */
static sd_status encode_normalized(const sd_tokenizer *t, const uint32_t *text, size_t n,
                                   id_buf *out) {
    for (size_t i = 0; i < n;) {
        uint32_t ch = text[i];
        int cls = char_class(ch);
        if (cls == CLS_SPACE) {
            i++;
            continue;
        }
        if (ch == '<' && (starts_with_ascii(text, n, i, BOS_TOKEN) ||
                          starts_with_ascii(text, n, i, EOS_TOKEN))) {
            /* kept whole by the pattern, then split by GPT-2's as "<|", name, "|>" */
            size_t len = starts_with_ascii(text, n, i, BOS_TOKEN) ? sizeof BOS_TOKEN - 1
                                                                  : sizeof EOS_TOKEN - 1;
            SD_TRY(encode_piece(t, text + i, 2, out));
            SD_TRY(encode_piece(t, text + i + 2, len - 4, out));
            SD_TRY(encode_piece(t, text + i + len - 2, 2, out));
            i += len;
            continue;
        }
        if (ch == '\'') {
            size_t k;
            for (k = 0; k < COUNT(contractions); k++)
                if (starts_with_ascii(text, n, i, contractions[k]))
                    break;
            if (k < COUNT(contractions)) {
                size_t len = strlen(contractions[k]);
                SD_TRY(encode_piece(t, text + i, len, out));
                i += len;
                continue;
            }
        }
        size_t j = i + 1;
        if (cls != CLS_NUMBER) /* numbers are taken one character at a time */
            while (j < n && char_class(text[j]) == cls)
                j++;
        SD_TRY(encode_piece(t, text + i, j - i, out));
        i = j;
    }
    return SD_OK;
}

/* Normalise a raw segment, then split it around the specials matched after normalisation. */
static sd_status encode_segment(const sd_tokenizer *t, const uint32_t *raw, size_t n, id_buf *out) {
    cp_buf norm = {0};
    sd_status s = normalize(raw, n, &norm);
    size_t from = 0;
    for (size_t i = 0; s == SD_OK && i < norm.len;) {
        const special *sp = match_special(t->norm, t->n_norm, norm.cp, norm.len, i);
        if (!sp) {
            i++;
            continue;
        }
        s = encode_normalized(t, norm.cp + from, i - from, out);
        if (s == SD_OK && !id_push(out, sp->id))
            s = sd_fail(SD_ERR_NOMEM, "tokenizer: out of memory");
        i += sp->len;
        from = i;
    }
    if (s == SD_OK)
        s = encode_normalized(t, norm.cp + from, norm.len - from, out);
    free(norm.cp);
    return s;
}

sd_status sd_tokenizer_encode(const sd_tokenizer *t, const char *text, int32_t **ids, int64_t *n) {
    *ids = NULL;
    *n = 0;
    cp_buf raw = {0};
    id_buf out = {0};
    sd_status s = utf8_decode(text, strlen(text), &raw);
    size_t from = 0;
    /* specials matched in the raw text come out first; the text between is normalised */
    for (size_t i = 0; s == SD_OK && i < raw.len;) {
        const special *sp = match_special(t->raw, t->n_raw, raw.cp, raw.len, i);
        if (!sp) {
            i++;
            continue;
        }
        s = encode_segment(t, raw.cp + from, i - from, &out);
        if (s == SD_OK && !id_push(&out, sp->id))
            s = sd_fail(SD_ERR_NOMEM, "tokenizer: out of memory");
        i += sp->len;
        from = i;
    }
    if (s == SD_OK)
        s = encode_segment(t, raw.cp + from, raw.len - from, &out);
    free(raw.cp);
    if (s != SD_OK) {
        free(out.ids);
        return s;
    }
    *ids = out.ids;
    *n = out.n;
    return SD_OK;
}
