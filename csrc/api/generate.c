/* sd_generate and the PNG writer (see sdcore_api.h).
 *
 * One image as sdcore.Pipeline.__call__ makes it: the prompt and the negative prompt are
 * tokenized into 77-token chunks (BOS, 75 ids, EOS, padding; both padded with empty
 * chunks to the same count), each chunk is encoded alone by the text encoder, and the
 * embeddings go to sd_txt2img with the seed and sampler. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api_internal.h"
#include "io/png.h"
#include "pipeline/txt2img.h"

#define CHUNK 75 /* ids of text per 77-token chunk (sdcore/prompt.py's CHUNK) */

void sd_generate_params_init(sd_generate_params *p) {
    memset(p, 0, sizeof *p);
    p->prompt = "";
    p->num_inference_steps = 20;
    p->guidance_scale = -1.0;
    p->sampler = "euler_a";
}

/* ------------------------------------------------------------- checks ---- */

static int64_t utf8_chars(const char *s) {
    int64_t n = 0;
    for (; *s; s++)
        n += ((unsigned char)*s & 0xC0) != 0x80;
    return n;
}

static int ascii_word_char(unsigned char c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}

/* The emphasis syntax of sdcore/prompt.py is read by the Python package only: a prompt
 * that uses it (brackets, backslash escapes, BREAK as a word) is refused here rather than
 * encoded differently. A non-ASCII neighbour may or may not be a word character to
 * Python's \b, so BREAK next to one is refused too. */
static sd_status check_plain_prompt(const char *text, const char *field) {
    const char *bad = strpbrk(text, "()[]\\");
    if (bad)
        return sd_fail(SD_ERR_UNSUPPORTED,
                       "%s: '%c' is prompt emphasis syntax, which the C library does not read "
                       "(use the Python package, or leave it out)",
                       field, *bad);
    for (const char *at = strstr(text, "BREAK"); at; at = strstr(at + 1, "BREAK")) {
        unsigned char before = at > text ? (unsigned char)at[-1] : ' ';
        unsigned char after = (unsigned char)at[5];
        if (!(before < 0x80 && ascii_word_char(before)) &&
            !(after < 0x80 && ascii_word_char(after)))
            return sd_fail(SD_ERR_UNSUPPORTED,
                           "%s: BREAK is prompt syntax, which the C library does not read (use "
                           "the Python package)",
                           field);
    }
    return SD_OK;
}

static sd_status check_text(const char *text, const char *field) {
    if (!text)
        return sd_fail(SD_ERR_INVALID, "%s: no text given", field);
    if (utf8_chars(text) > SD_MAX_PROMPT_CHARS)
        return sd_fail(SD_ERR_INVALID, "%s: longer than %d characters", field, SD_MAX_PROMPT_CHARS);
    return check_plain_prompt(text, field);
}

static sd_status check_size(int value, const char *field) {
    if (value % 8 || value < SD_MIN_SIZE || value > SD_MAX_SIZE)
        return sd_fail(SD_ERR_INVALID, "%s: must be a multiple of 8 between %d and %d, got %d",
                       field, SD_MIN_SIZE, SD_MAX_SIZE, value);
    return SD_OK;
}

/* ------------------------------------------------------------- prompt ---- */

/* Token ids of `text` in chunks: *ids (k, 77), as sdcore/prompt.py's tokenize_weighted
 * lays out a prompt without emphasis. */
static sd_status tokenize_chunks(const sd_tokenizer *tok, const char *text, int32_t **ids,
                                 int *chunks) {
    int32_t *content;
    int64_t n;
    SD_TRY(sd_tokenizer_encode(tok, text, &content, &n));
    int k = n == 0 ? 1 : (int)((n + CHUNK - 1) / CHUNK);
    int32_t *out = malloc(sizeof(int32_t) * (size_t)k * (CHUNK + 2));
    if (!out) {
        free(content);
        return sd_fail(SD_ERR_NOMEM, "prompt: out of memory");
    }
    for (int c = 0; c < k; c++) {
        int32_t *row = out + (size_t)c * (CHUNK + 2);
        int64_t from = (int64_t)c * CHUNK, len = n - from < CHUNK ? n - from : CHUNK;
        row[0] = sd_tokenizer_bos_id(tok);
        for (int64_t i = 0; i < len; i++)
            row[1 + i] = content[from + i];
        /* EOS right after the text, then padding */
        row[1 + len] = sd_tokenizer_eos_id(tok);
        for (int64_t i = len + 2; i < CHUNK + 2; i++)
            row[i] = sd_tokenizer_pad_id(tok);
    }
    free(content);
    *ids = out;
    *chunks = k;
    return SD_OK;
}

/* The embeddings of k chunks of ids, padded with the empty prompt's chunk to `total`:
 * out (total * 77, hidden), each chunk encoded alone. */
static sd_status encode_chunks(sd_model *m, const int32_t *ids, int k, const int32_t *empty,
                               int total, float *out) {
    int T = CHUNK + 2, hidden = m->clip_config.hidden_size;
    for (int c = 0; c < total; c++) {
        int64_t shape[3] = {1, T, hidden};
        sd_tensor o = sd_tensor_view(out + (size_t)c * T * hidden, SD_F32, SD_CPU, 3, shape);
        SD_TRY(sd_clip_forward(m->clip, c < k ? ids + (size_t)c * T : empty, 1, T, 1, &o));
    }
    return SD_OK;
}

/* ------------------------------------------------------------ generate --- */

/* the names infotext readers know (sdcore/params.py's SAMPLER_DISPLAY) */
static const char *sampler_display(int kind) {
    static const char *const names[SD_SAMPLER_COUNT] = {
        [SD_SAMPLER_DDIM] = "DDIM",
        [SD_SAMPLER_EULER] = "Euler",
        [SD_SAMPLER_EULER_A] = "Euler a",
        [SD_SAMPLER_DPMPP_2M] = "DPM++ 2M",
        [SD_SAMPLER_DPMPP_2M_KARRAS] = "DPM++ 2M Karras",
        [SD_SAMPLER_PNDM] = "PNDM",
        [SD_SAMPLER_LMS] = "LMS",
    };
    return names[kind];
}

/* The infotext, as sdcore/params.py's infotext writes it. */
static char *infotext(const sd_model *m, const char *prompt, const char *negative, int steps,
                      int sampler, double guidance, uint64_t seed, int width, int height) {
    char cfg[64];
    if (guidance == floor(guidance))
        snprintf(cfg, sizeof cfg, "%lld", (long long)guidance);
    else
        snprintf(cfg, sizeof cfg, "%g", guidance);
    const char *fmt = "%s%s%s%sSteps: %d, Sampler: %s, CFG scale: %s, Seed: %llu, Size: %dx%d, "
                      "Model: %s, Version: sdcore %s";
    int has_neg = negative && *negative;
    const char *neg_head = has_neg ? "\nNegative prompt: " : "";
    const char *neg = has_neg ? negative : "";
    int n = snprintf(NULL, 0, fmt, prompt, neg_head, neg, "\n", steps, sampler_display(sampler),
                     cfg, (unsigned long long)seed, width, height, m->name, SDCORE_VERSION);
    char *out = malloc((size_t)n + 1);
    if (out)
        snprintf(out, (size_t)n + 1, fmt, prompt, neg_head, neg, "\n", steps,
                 sampler_display(sampler), cfg, (unsigned long long)seed, width, height, m->name,
                 SDCORE_VERSION);
    return out;
}

typedef struct {
    sd_progress_fn fn;
    void *ctx;
} progress_ctx;

static int on_step(void *ctx, int step, int total, const float *latents) {
    (void)latents;
    progress_ctx *p = ctx;
    return p->fn ? p->fn(p->ctx, step, total) : 0;
}

sd_status sd_generate(sd_model *m, const sd_generate_params *p, sd_image *out) {
    memset(out, 0, sizeof *out);
    if (!m || !p)
        return sd_fail(SD_ERR_INVALID, "generate: model and params are required");
    const char *negative = p->negative_prompt ? p->negative_prompt : "";
    SD_TRY(check_text(p->prompt, "prompt"));
    SD_TRY(check_text(negative, "negative_prompt"));
    int width = p->width ? p->width : m->default_size;
    int height = p->height ? p->height : m->default_size;
    SD_TRY(check_size(width, "width"));
    SD_TRY(check_size(height, "height"));
    if (p->num_inference_steps < 1 || p->num_inference_steps > SD_MAX_STEPS)
        return sd_fail(SD_ERR_INVALID, "num_inference_steps: must be between 1 and %d, got %d",
                       SD_MAX_STEPS, p->num_inference_steps);
    double guidance = p->guidance_scale < 0 ? m->default_guidance : p->guidance_scale;
    if (!isfinite(guidance) || guidance > SD_MAX_GUIDANCE)
        return sd_fail(SD_ERR_INVALID, "guidance_scale: must be between 0 and %g, got %g",
                       SD_MAX_GUIDANCE, guidance);
    int sampler = sd_sampler_parse_kind(p->sampler ? p->sampler : "");
    if (sampler < 0)
        return sd_fail(SD_ERR_INVALID,
                       "sampler: unknown sampler '%s'; choose one of ddim, euler, euler_a, "
                       "dpmpp_2m, dpmpp_2m_karras, pndm, lms",
                       p->sampler ? p->sampler : "(null)");

    int32_t *cond_ids = NULL, *uncond_ids = NULL, *empty_ids = NULL;
    float *cond = NULL, *uncond = NULL;
    int kc, ku, ke;
    sd_status s = tokenize_chunks(m->tokenizer, p->prompt, &cond_ids, &kc);
    if (s == SD_OK)
        s = tokenize_chunks(m->tokenizer, negative, &uncond_ids, &ku);
    if (s == SD_OK)
        s = tokenize_chunks(m->tokenizer, "", &empty_ids, &ke);
    int k = kc > ku ? kc : ku;
    size_t T = (size_t)k * (CHUNK + 2), hidden = (size_t)m->clip_config.hidden_size;
    if (s == SD_OK && (int)(CHUNK + 2) > m->clip_config.max_position_embeddings)
        s = sd_fail(SD_ERR_UNSUPPORTED, "model: the text encoder takes %d tokens, fewer than %d",
                    m->clip_config.max_position_embeddings, CHUNK + 2);
    if (s == SD_OK) {
        cond = malloc(sizeof(float) * T * hidden);
        uncond = malloc(sizeof(float) * T * hidden);
        out->rgb = malloc((size_t)width * height * 3);
        if (!cond || !uncond || !out->rgb)
            s = sd_fail(SD_ERR_NOMEM, "generate: out of memory");
    }
    if (s == SD_OK)
        s = encode_chunks(m, cond_ids, kc, empty_ids, k, cond);
    if (s == SD_OK)
        s = encode_chunks(m, uncond_ids, ku, empty_ids, k, uncond);
    if (s == SD_OK) {
        float g = (float)guidance;
        uint64_t seed = p->seed;
        progress_ctx pc = {p->on_step, p->ctx};
        sd_txt2img_params tp = {
            .n = 1,
            .tokens = (int)T,
            .width_ctx = (int)hidden,
            .cond = cond,
            .uncond = uncond,
            .guidance = &g,
            .seeds = &seed,
            .width = width,
            .height = height,
            .steps = p->num_inference_steps,
            .sampler = sampler,
            .sampler_config = &m->scheduler,
            .vae_scaling_factor = m->vae_scaling_factor,
            .vae_factor = m->vae_factor,
            .latent_channels = m->unet_config.in_channels,
            .on_step = on_step,
            .on_step_latents = 0,
            .ctx = &pc,
        };
        s = sd_txt2img(m->unet, m->vae, m->be, &tp, out->rgb);
    }
    if (s == SD_OK) {
        out->width = width;
        out->height = height;
        out->parameters = infotext(m, p->prompt, negative, p->num_inference_steps, sampler,
                                   guidance, p->seed, width, height);
        if (!out->parameters)
            s = sd_fail(SD_ERR_NOMEM, "generate: out of memory");
    }
    free(cond_ids);
    free(uncond_ids);
    free(empty_ids);
    free(cond);
    free(uncond);
    if (s != SD_OK)
        sd_image_free(out);
    return s;
}

void sd_image_free(sd_image *image) {
    if (!image)
        return;
    free(image->rgb);
    free(image->parameters);
    memset(image, 0, sizeof *image);
}

sd_status sd_image_write_png(const sd_image *image, const char *path) {
    if (!image || !image->rgb)
        return sd_fail(SD_ERR_INVALID, "write_png: no image");
    sd_png_text text = {"parameters", image->parameters ? image->parameters : ""};
    uint8_t *png = NULL;
    size_t len = 0;
    SD_TRY(sd_png_encode(image->rgb, image->width, image->height, &text, 1, &png, &len));
    FILE *f = fopen(path, "wb");
    if (!f) {
        free(png);
        return sd_fail(SD_ERR_IO, "%s: cannot open for writing", path);
    }
    size_t wrote = fwrite(png, 1, len, f);
    int closed = fclose(f);
    free(png);
    if (wrote != len || closed != 0)
        return sd_fail(SD_ERR_IO, "%s: write failed", path);
    return SD_OK;
}
