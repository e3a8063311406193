/* The C tokenizer on the command line: one text per input line, its ids per output line.
 *
 *     tokenize TOKENIZER_DIR < texts.txt
 *
 * Each input line is a JSON-free escape of the text: "\n" is a newline, "\\" a backslash
 * (other bytes as they are), so texts with newlines fit on one line. Output: the ids
 * without BOS/EOS, space-separated, or "error: MESSAGE". Used by tests/test_c_library.py
 * to compare the C tokenizer with transformers'. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "text/tokenizer.h"

/* undo the line escapes in place */
static void unescape(char *s) {
    char *out = s;
    for (; *s; s++) {
        if (*s == '\\' && (s[1] == 'n' || s[1] == '\\')) {
            *out++ = s[1] == 'n' ? '\n' : '\\';
            s++;
        } else {
            *out++ = *s;
        }
    }
    *out = '\0';
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s TOKENIZER_DIR < texts\n", argv[0]);
        return 2;
    }
    sd_tokenizer *tok;
    if (sd_tokenizer_load(argv[1], &tok) != SD_OK) {
        fprintf(stderr, "tokenize: %s\n", sd_last_error());
        return 1;
    }
    size_t cap = 0;
    char *line = NULL;
    ssize_t len;
    while ((len = getline(&line, &cap, stdin)) >= 0) {
        if (len && line[len - 1] == '\n')
            line[len - 1] = '\0';
        unescape(line);
        int32_t *ids;
        int64_t n;
        if (sd_tokenizer_encode(tok, line, &ids, &n) != SD_OK) {
            printf("error: %s\n", sd_last_error());
            continue;
        }
        for (int64_t i = 0; i < n; i++)
            printf(i ? " %d" : "%d", ids[i]);
        putchar('\n');
        free(ids);
    }
    free(line);
    sd_tokenizer_free(tok);
    return 0;
}
