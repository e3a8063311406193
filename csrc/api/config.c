/* config.json readers (see config.h). */
#include "api/config.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

sd_status sd_config_read(const char *path, sd_json *out) {
    memset(out, 0, sizeof *out);
    FILE *f = fopen(path, "rb");
    if (!f)
        return sd_fail(SD_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    char *text = NULL;
    size_t len = 0, cap = 0, got;
    do {
        if (len + 4096 > cap) {
            cap = cap ? cap * 2 : 65536;
            if (cap > ((size_t)64 << 20)) {
                free(text);
                fclose(f);
                return sd_fail(SD_ERR_FORMAT, "%s: larger than 64 MB, not a config", path);
            }
            char *p = realloc(text, cap);
            if (!p) {
                free(text);
                fclose(f);
                return sd_fail(SD_ERR_NOMEM, "%s: cannot allocate %zu bytes", path, cap);
            }
            text = p;
        }
        got = fread(text + len, 1, 4096, f);
        len += got;
    } while (got == 4096);
    int err = ferror(f);
    fclose(f);
    if (err) {
        free(text);
        return sd_fail(SD_ERR_IO, "%s: read error", path);
    }
    sd_json_options opt = {.allow_numbers = 1};
    sd_status s = sd_json_parse_ex(text, len, path, &opt, out);
    free(text);
    if (s == SD_OK && out->kind != SD_JSON_OBJECT) {
        sd_json_free(out);
        return sd_fail(SD_ERR_FORMAT, "%s: expected a JSON object", path);
    }
    return s;
}

/* ------------------------------------------------------------- fields ---- */

static int is_null(const sd_json *v) {
    return !v || v->kind == SD_JSON_NULL;
}

static sd_status get_int(const sd_json *cfg, const char *src, const char *key, long fallback,
                         long lo, long hi, int *out) {
    const sd_json *v = sd_json_get(cfg, key);
    long x = fallback;
    if (v) {
        if (v->kind != SD_JSON_INT)
            return sd_fail(SD_ERR_FORMAT, "%s: '%s' must be an integer, got %s", src, key,
                           sd_json_kind_name(v->kind));
        if (v->u.integer < lo || v->u.integer > hi)
            return sd_fail(SD_ERR_FORMAT, "%s: '%s' must be in %ld..%ld, got %lld", src, key, lo,
                           hi, (long long)v->u.integer);
        x = (long)v->u.integer;
    }
    *out = (int)x;
    return SD_OK;
}

static sd_status as_number(const sd_json *v, const char *src, const char *key, double *out) {
    if (v->kind == SD_JSON_INT)
        *out = (double)v->u.integer;
    else if (v->kind == SD_JSON_NUMBER)
        *out = v->u.number;
    else
        return sd_fail(SD_ERR_FORMAT, "%s: '%s' must be a number, got %s", src, key,
                       sd_json_kind_name(v->kind));
    if (!isfinite(*out))
        return sd_fail(SD_ERR_FORMAT, "%s: '%s' must be finite", src, key);
    return SD_OK;
}

static sd_status get_number(const sd_json *cfg, const char *src, const char *key, double fallback,
                            double *out) {
    const sd_json *v = sd_json_get(cfg, key);
    *out = fallback;
    return v ? as_number(v, src, key, out) : SD_OK;
}

static sd_status get_bool(const sd_json *cfg, const char *src, const char *key, int fallback,
                          int *out) {
    const sd_json *v = sd_json_get(cfg, key);
    *out = fallback;
    if (!v)
        return SD_OK;
    if (v->kind == SD_JSON_BOOL)
        *out = v->u.boolean;
    else if (v->kind == SD_JSON_INT && v->u.integer <= 1)
        *out = (int)v->u.integer;
    else
        return sd_fail(SD_ERR_FORMAT, "%s: '%s' must be true or false, got %s", src, key,
                       sd_json_kind_name(v->kind));
    return SD_OK;
}

/* the string at key (fallback when absent), or an error when it is not a string */
static sd_status get_string(const sd_json *cfg, const char *src, const char *key,
                            const char *fallback, const char **out) {
    const sd_json *v = sd_json_get(cfg, key);
    *out = fallback;
    if (!v)
        return SD_OK;
    if (v->kind != SD_JSON_STRING)
        return sd_fail(SD_ERR_FORMAT, "%s: '%s' must be a string, got %s", src, key,
                       sd_json_kind_name(v->kind));
    *out = v->u.string.data;
    return SD_OK;
}

/* An int per block: one int for all, or a list of n. */
static sd_status get_per_block(const sd_json *cfg, const char *src, const char *key, long fallback,
                               int n, long lo, long hi, int *out) {
    const sd_json *v = sd_json_get(cfg, key);
    if (v && v->kind == SD_JSON_ARRAY) {
        if ((int)v->u.array.count != n)
            return sd_fail(SD_ERR_FORMAT, "%s: '%s' must have %d entries (one per block)", src, key,
                           n);
        for (int i = 0; i < n; i++) {
            const sd_json *x = &v->u.array.items[i];
            if (x->kind != SD_JSON_INT || x->u.integer < lo || x->u.integer > hi)
                return sd_fail(SD_ERR_FORMAT, "%s: '%s[%d]' must be an integer in %ld..%ld", src,
                               key, i, lo, hi);
            out[i] = (int)x->u.integer;
        }
        return SD_OK;
    }
    int x = 0;
    SD_TRY(get_int(cfg, src, key, fallback, lo, hi, &x));
    for (int i = 0; i < n; i++)
        out[i] = x;
    return SD_OK;
}

/* n block type names, each `attn` (1) or `plain` (0); `fallback` when absent */
static sd_status get_block_types(const sd_json *cfg, const char *src, const char *key, int n,
                                 const char *attn, const char *plain, const int *fallback,
                                 int *out) {
    const sd_json *v = sd_json_get(cfg, key);
    if (!v) {
        memcpy(out, fallback, sizeof(int) * (size_t)n);
        return SD_OK;
    }
    if (v->kind != SD_JSON_ARRAY || (int)v->u.array.count != n)
        return sd_fail(SD_ERR_FORMAT,
                       "%s: '%s' must be a list of %d block types (one per entry of "
                       "block_out_channels)",
                       src, key, n);
    for (int i = 0; i < n; i++) {
        const sd_json *x = &v->u.array.items[i];
        const char *s = x->kind == SD_JSON_STRING ? x->u.string.data : "";
        if (attn && strcmp(s, attn) == 0)
            out[i] = 1;
        else if (strcmp(s, plain) == 0)
            out[i] = 0;
        else
            return sd_fail(SD_ERR_UNSUPPORTED, "%s: '%s[%d]' must be %s%s%s%s'", src, key, i,
                           attn ? "'" : "", attn ? attn : "", attn ? "' or '" : "'", plain);
    }
    return SD_OK;
}

/* --------------------------------------------------------------- UNet ---- */

/* Fields that choose parts of UNet2DConditionModel sdcore does not have: each may only
 * hold the value SD 1.x and 2.x use (csrc/binding/unet.c has the same list). */
typedef enum { ACC_NULL, ACC_FALSE, ACC_NULL_OR_FALSE, ACC_ONE, ACC_THREE, ACC_STRING } accepted;
static const struct {
    const char *key;
    accepted acc;
    const char *string;
} unet_fixed[] = {
    {"center_input_sample", ACC_FALSE, NULL},
    {"mid_block_type", ACC_STRING, "UNetMidBlock2DCrossAttn"},
    {"only_cross_attention", ACC_FALSE, NULL},
    {"downsample_padding", ACC_ONE, NULL},
    {"mid_block_scale_factor", ACC_ONE, NULL},
    {"act_fn", ACC_STRING, "silu"},
    {"reverse_transformer_layers_per_block", ACC_NULL, NULL},
    {"encoder_hid_dim", ACC_NULL, NULL},
    {"encoder_hid_dim_type", ACC_NULL, NULL},
    {"num_attention_heads", ACC_NULL, NULL},
    {"dual_cross_attention", ACC_FALSE, NULL},
    {"class_embed_type", ACC_NULL, NULL},
    {"addition_embed_type", ACC_NULL, NULL},
    {"addition_time_embed_dim", ACC_NULL, NULL},
    {"num_class_embeds", ACC_NULL, NULL},
    {"resnet_time_scale_shift", ACC_STRING, "default"},
    {"resnet_skip_time_act", ACC_FALSE, NULL},
    {"resnet_out_scale_factor", ACC_ONE, NULL},
    {"time_embedding_type", ACC_STRING, "positional"},
    {"time_embedding_act_fn", ACC_NULL, NULL},
    {"timestep_post_act", ACC_NULL, NULL},
    {"time_cond_proj_dim", ACC_NULL, NULL},
    {"conv_in_kernel", ACC_THREE, NULL},
    {"conv_out_kernel", ACC_THREE, NULL},
    {"projection_class_embeddings_input_dim", ACC_NULL, NULL},
    {"attention_type", ACC_STRING, "default"},
    {"class_embeddings_concat", ACC_FALSE, NULL},
    {"mid_block_only_cross_attention", ACC_NULL_OR_FALSE, NULL},
    {"cross_attention_norm", ACC_NULL, NULL},
};

/* accepted without effect on the computation, or read below */
static const char *const unet_known[] = {
    "sample_size",
    "upcast_attention",
    "dropout",
    "addition_embed_type_num_heads",
    "in_channels",
    "out_channels",
    "block_out_channels",
    "layers_per_block",
    "down_block_types",
    "up_block_types",
    "cross_attention_dim",
    "attention_head_dim",
    "transformer_layers_per_block",
    "norm_num_groups",
    "norm_eps",
    "use_linear_projection",
    "flip_sin_to_cos",
    "freq_shift",
    "time_embedding_dim",
};

static int number_is(const sd_json *v, double x) {
    return (v->kind == SD_JSON_INT && (double)v->u.integer == x) ||
           (v->kind == SD_JSON_NUMBER && v->u.number == x);
}

static sd_status unet_check_fields(const sd_json *cfg, const char *src) {
    for (size_t m = 0; m < cfg->u.object.count; m++) {
        const char *key = cfg->u.object.members[m].key;
        const sd_json *v = &cfg->u.object.members[m].value;
        if (key[0] == '_')
            continue;
        int known = 0;
        for (size_t i = 0; i < COUNT(unet_known) && !known; i++)
            known = strcmp(key, unet_known[i]) == 0;
        for (size_t i = 0; i < COUNT(unet_fixed) && !known; i++) {
            if (strcmp(key, unet_fixed[i].key) != 0)
                continue;
            known = 1;
            int ok = 0;
            switch (unet_fixed[i].acc) {
            case ACC_NULL: ok = v->kind == SD_JSON_NULL; break;
            case ACC_FALSE:
                ok = (v->kind == SD_JSON_BOOL && !v->u.boolean) || number_is(v, 0);
                break;
            case ACC_NULL_OR_FALSE:
                ok = v->kind == SD_JSON_NULL || (v->kind == SD_JSON_BOOL && !v->u.boolean);
                break;
            case ACC_ONE: ok = number_is(v, 1); break;
            case ACC_THREE: ok = number_is(v, 3); break;
            case ACC_STRING:
                ok = v->kind == SD_JSON_STRING &&
                     strcmp(v->u.string.data, unet_fixed[i].string) == 0;
                break;
            }
            if (!ok)
                return sd_fail(SD_ERR_UNSUPPORTED, "%s: '%s' has a value sdcore does not implement",
                               src, key);
        }
        if (!known)
            return sd_fail(SD_ERR_FORMAT, "%s: unknown UNet config field '%s'", src, key);
    }
    return SD_OK;
}

sd_status sd_config_unet(const sd_json *cfg, const char *src, sd_unet_config *c, int *sample_size) {
    memset(c, 0, sizeof *c);
    SD_TRY(unet_check_fields(cfg, src));
    /* missing keys take SD 1.x's values, as sdcore/checkpoint.py fills them */
    const sd_json *blocks = sd_json_get(cfg, "block_out_channels");
    int n = 4;
    if (blocks) {
        if (blocks->kind != SD_JSON_ARRAY || blocks->u.array.count < 1 ||
            blocks->u.array.count > SD_UNET_MAX_BLOCKS)
            return sd_fail(SD_ERR_FORMAT,
                           "%s: 'block_out_channels' must be a list of 1 to %d "
                           "channel counts",
                           src, SD_UNET_MAX_BLOCKS);
        n = (int)blocks->u.array.count;
        SD_TRY(
            get_per_block(cfg, src, "block_out_channels", 0, n, 1, 65536, c->block_out_channels));
    } else {
        static const int sd1[4] = {320, 640, 1280, 1280};
        memcpy(c->block_out_channels, sd1, sizeof sd1);
    }
    c->num_blocks = n;
    SD_TRY(get_int(cfg, src, "in_channels", 4, 1, 4096, &c->in_channels));
    SD_TRY(get_int(cfg, src, "out_channels", 4, 1, 4096, &c->out_channels));
    SD_TRY(get_per_block(cfg, src, "layers_per_block", 2, n, 1, SD_UNET_MAX_LAYERS,
                         c->layers_per_block));
    static const int sd1_down[4] = {1, 1, 1, 0}, sd1_up[4] = {0, 1, 1, 1};
    SD_TRY(get_block_types(cfg, src, "down_block_types", n, "CrossAttnDownBlock2D", "DownBlock2D",
                           sd1_down, c->down_cross_attention));
    SD_TRY(get_block_types(cfg, src, "up_block_types", n, "CrossAttnUpBlock2D", "UpBlock2D", sd1_up,
                           c->up_cross_attention));
    SD_TRY(get_int(cfg, src, "cross_attention_dim", 768, 1, 65536, &c->cross_attention_dim));
    /* diffusers' naming quirk: attention_head_dim is the number of heads */
    SD_TRY(get_per_block(cfg, src, "attention_head_dim", 8, n, 1, 65536, c->attention_heads));
    SD_TRY(get_per_block(cfg, src, "transformer_layers_per_block", 1, n, 1, 64,
                         c->transformer_layers_per_block));
    SD_TRY(get_int(cfg, src, "norm_num_groups", 32, 1, 65536, &c->norm_num_groups));
    double x;
    SD_TRY(get_number(cfg, src, "norm_eps", 1e-5, &x));
    if (!(x > 0))
        return sd_fail(SD_ERR_FORMAT, "%s: 'norm_eps' must be positive", src);
    c->norm_eps = (float)x;
    SD_TRY(get_bool(cfg, src, "use_linear_projection", 0, &c->use_linear_projection));
    SD_TRY(get_bool(cfg, src, "flip_sin_to_cos", 1, &c->flip_sin_to_cos));
    SD_TRY(get_number(cfg, src, "freq_shift", 0, &x));
    c->freq_shift = (float)x;
    const sd_json *temb = sd_json_get(cfg, "time_embedding_dim");
    if (!is_null(temb) && !number_is(temb, 4.0 * c->block_out_channels[0]))
        return sd_fail(SD_ERR_UNSUPPORTED,
                       "%s: 'time_embedding_dim' must be 4 * block_out_channels[0] (or null)", src);
    SD_TRY(get_int(cfg, src, "sample_size", 64, 1, 65536, sample_size));
    return SD_OK;
}

/* ---------------------------------------------------------------- VAE ---- */

sd_status sd_config_vae(const sd_json *cfg, const char *src, sd_vae_config *c,
                        float *scaling_factor) {
    memset(c, 0, sizeof *c);
    /* fields that choose an architecture sdcore does not implement (as sdcore/vae.py) */
    const char *act;
    SD_TRY(get_string(cfg, src, "act_fn", "silu", &act));
    if (strcmp(act, "silu") != 0)
        return sd_fail(SD_ERR_UNSUPPORTED, "%s: 'act_fn' must be 'silu', got '%s'", src, act);
    static const char *const quant[] = {"use_quant_conv", "use_post_quant_conv"};
    for (int k = 0; k < 2; k++) {
        int on;
        SD_TRY(get_bool(cfg, src, quant[k], 1, &on));
        if (!on)
            return sd_fail(SD_ERR_UNSUPPORTED, "%s: '%s' must be true", src, quant[k]);
    }
    const sd_json *blocks = sd_json_get(cfg, "block_out_channels");
    int n = 4;
    if (blocks) {
        if (blocks->kind != SD_JSON_ARRAY || blocks->u.array.count < 1 ||
            blocks->u.array.count > SD_VAE_MAX_BLOCKS)
            return sd_fail(SD_ERR_FORMAT,
                           "%s: 'block_out_channels' must be a list of 1 to %d "
                           "channel counts",
                           src, SD_VAE_MAX_BLOCKS);
        n = (int)blocks->u.array.count;
        SD_TRY(
            get_per_block(cfg, src, "block_out_channels", 0, n, 1, 1 << 20, c->block_out_channels));
    } else {
        static const int sd1[4] = {128, 256, 512, 512};
        memcpy(c->block_out_channels, sd1, sizeof sd1);
    }
    c->num_blocks = n;
    int types[SD_VAE_MAX_BLOCKS], zeros[SD_VAE_MAX_BLOCKS] = {0};
    SD_TRY(
        get_block_types(cfg, src, "down_block_types", n, NULL, "DownEncoderBlock2D", zeros, types));
    SD_TRY(get_block_types(cfg, src, "up_block_types", n, NULL, "UpDecoderBlock2D", zeros, types));
    SD_TRY(get_int(cfg, src, "in_channels", 3, 1, 4096, &c->in_channels));
    SD_TRY(get_int(cfg, src, "out_channels", 3, 1, 4096, &c->out_channels));
    SD_TRY(get_int(cfg, src, "latent_channels", 4, 1, 4096, &c->latent_channels));
    SD_TRY(get_int(cfg, src, "layers_per_block", 2, 1, 64, &c->layers_per_block));
    SD_TRY(get_int(cfg, src, "norm_num_groups", 32, 1, 65536, &c->norm_num_groups));
    SD_TRY(get_bool(cfg, src, "mid_block_add_attention", 1, &c->mid_attention));
    double scale;
    SD_TRY(get_number(cfg, src, "scaling_factor", 0.18215, &scale));
    if (!(scale > 0))
        return sd_fail(SD_ERR_FORMAT, "%s: 'scaling_factor' must be positive", src);
    *scaling_factor = (float)scale;
    return SD_OK;
}

/* --------------------------------------------------------------- CLIP ---- */

sd_status sd_config_clip(const sd_json *cfg, const char *src, sd_clip_config *c) {
    memset(c, 0, sizeof *c);
    const long big = 2147483647L;
    SD_TRY(get_int(cfg, src, "vocab_size", 49408, 1, big, &c->vocab_size));
    SD_TRY(get_int(cfg, src, "hidden_size", 768, 1, big, &c->hidden_size));
    SD_TRY(get_int(cfg, src, "intermediate_size", 3072, 1, big, &c->intermediate_size));
    SD_TRY(get_int(cfg, src, "num_hidden_layers", 12, 1, big, &c->num_hidden_layers));
    SD_TRY(get_int(cfg, src, "num_attention_heads", 12, 1, big, &c->num_attention_heads));
    SD_TRY(get_int(cfg, src, "max_position_embeddings", 77, 1, big, &c->max_position_embeddings));
    double eps;
    SD_TRY(get_number(cfg, src, "layer_norm_eps", 1e-5, &eps));
    if (!(eps > 0))
        return sd_fail(SD_ERR_FORMAT, "%s: 'layer_norm_eps' must be finite and positive", src);
    c->layer_norm_eps = (float)eps;
    const char *act;
    SD_TRY(get_string(cfg, src, "hidden_act", "quick_gelu", &act));
    if (strcmp(act, "quick_gelu") == 0)
        c->quick_gelu = 1;
    else if (strcmp(act, "gelu") == 0)
        /* the OpenCLIP text encoder of SD 2.x (sdcore/checkpoint.py refuses it too) */
        return sd_fail(SD_ERR_UNSUPPORTED,
                       "%s: SD 2.x folders (OpenCLIP text encoder, hidden_act 'gelu') are not "
                       "supported yet",
                       src);
    else
        return sd_fail(SD_ERR_FORMAT,
                       "%s: 'hidden_act' must be one of 'gelu', 'quick_gelu', got '%s'", src, act);
    if (c->hidden_size % c->num_attention_heads)
        return sd_fail(SD_ERR_FORMAT, "%s: 'num_attention_heads' must divide 'hidden_size'", src);
    return SD_OK;
}

/* ------------------------------------------------------------ sampler ---- */

/* diffusers lists the keys it filled with its own defaults in "_use_default_values";
 * from_config treats them as unset (see csrc/binding/sampler.c). */
static int unset_default(const sd_json *cfg, const char *key) {
    const sd_json *listed = sd_json_get(cfg, "_use_default_values");
    if (!listed || listed->kind != SD_JSON_ARRAY)
        return 0;
    for (size_t i = 0; i < listed->u.array.count; i++) {
        const sd_json *x = &listed->u.array.items[i];
        if (x->kind == SD_JSON_STRING && strcmp(x->u.string.data, key) == 0)
            return 1;
    }
    return 0;
}

/* the value of key unless absent, null or listed as a default */
static const sd_json *sched_get(const sd_json *cfg, const char *key) {
    const sd_json *v = sd_json_get(cfg, key);
    return is_null(v) || unset_default(cfg, key) ? NULL : v;
}

static sd_status sched_choice(const sd_json *cfg, const char *src, const char *key,
                              const char *const *names, int *out) {
    const sd_json *v = sched_get(cfg, key);
    if (!v)
        return SD_OK;
    for (int k = 0; names[k]; k++)
        if (v->kind == SD_JSON_STRING && strcmp(v->u.string.data, names[k]) == 0) {
            *out = k;
            return SD_OK;
        }
    return sd_fail(SD_ERR_UNSUPPORTED, "%s: '%s' is not one the samplers implement", src, key);
}

static sd_status sched_bool(const sd_json *cfg, const char *src, const char *key, int *out) {
    const sd_json *v = sched_get(cfg, key);
    if (!v)
        return SD_OK;
    if (v->kind != SD_JSON_BOOL)
        return sd_fail(SD_ERR_FORMAT, "%s: '%s' must be true or false", src, key);
    *out = v->u.boolean;
    return SD_OK;
}

sd_status sd_config_sampler(const sd_json *cfg, const char *src, sd_sampler_config *c,
                            float **betas) {
    static const char *const schedules[] = {"scaled_linear", "linear", NULL};
    static const char *const predictions[] = {"epsilon", "v_prediction", NULL};
    static const char *const spacings[] = {"leading", "linspace", "trailing", NULL};
    static const char *const finals[] = {"zero", "sigma_min", NULL};
    sd_sampler_config_default(c);
    *betas = NULL;
    const sd_json *v;
    if ((v = sched_get(cfg, "num_train_timesteps"))) {
        if (v->kind != SD_JSON_INT || v->u.integer > 1000000000)
            return sd_fail(SD_ERR_FORMAT, "%s: 'num_train_timesteps' must be an int", src);
        c->num_train_timesteps = (int)v->u.integer;
    }
    if ((v = sched_get(cfg, "beta_start")))
        SD_TRY(as_number(v, src, "beta_start", &c->beta_start));
    if ((v = sched_get(cfg, "beta_end")))
        SD_TRY(as_number(v, src, "beta_end", &c->beta_end));
    int k = -1;
    SD_TRY(sched_choice(cfg, src, "beta_schedule", schedules, &k));
    if (k >= 0)
        c->beta_schedule = k == 0 ? SD_BETA_SCALED_LINEAR : SD_BETA_LINEAR;
    k = -1;
    SD_TRY(sched_choice(cfg, src, "prediction_type", predictions, &k));
    if (k >= 0)
        c->prediction_type = k == 0 ? SD_PREDICT_EPSILON : SD_PREDICT_V;
    if ((v = sched_get(cfg, "steps_offset"))) {
        if (v->kind != SD_JSON_INT || v->u.integer > 1000000000)
            return sd_fail(SD_ERR_FORMAT, "%s: 'steps_offset' must be an int", src);
        c->steps_offset = (int)v->u.integer;
    }
    k = -1;
    SD_TRY(sched_choice(cfg, src, "timestep_spacing", spacings, &k));
    if (k >= 0)
        c->timestep_spacing = k == 0   ? SD_SPACING_LEADING
                              : k == 1 ? SD_SPACING_LINSPACE
                                       : SD_SPACING_TRAILING;
    SD_TRY(sched_bool(cfg, src, "clip_sample", &c->clip_sample));
    if ((v = sched_get(cfg, "clip_sample_range")))
        SD_TRY(as_number(v, src, "clip_sample_range", &c->clip_sample_range));
    SD_TRY(sched_bool(cfg, src, "set_alpha_to_one", &c->set_alpha_to_one));
    SD_TRY(sched_bool(cfg, src, "use_karras_sigmas", &c->use_karras_sigmas));
    k = -1;
    SD_TRY(sched_choice(cfg, src, "final_sigmas_type", finals, &k));
    if (k >= 0)
        c->final_sigmas_type = k == 0 ? SD_FINAL_SIGMA_ZERO : SD_FINAL_SIGMA_MIN;
    SD_TRY(sched_bool(cfg, src, "lower_order_final", &c->lower_order_final));
    SD_TRY(sched_bool(cfg, src, "euler_at_final", &c->euler_at_final));
    /* keys whose only supported value is diffusers' default (null is accepted too) */
    static const char *const must_be_false[] = {
        "thresholding",   "rescale_betas_zero_snr", "use_exponential_sigmas", "use_beta_sigmas",
        "use_lu_lambdas", "use_flow_sigmas",        "use_dynamic_shifting"};
    static const char *const must_be_string[][2] = {{"interpolation_type", "linear"},
                                                    {"timestep_type", "discrete"},
                                                    {"solver_type", "midpoint"}};
    static const char *const must_be_null[] = {"variance_type", "sigma_min", "sigma_max"};
    for (size_t i = 0; i < COUNT(must_be_false); i++)
        if (!is_null(v = sd_json_get(cfg, must_be_false[i])) &&
            !(v->kind == SD_JSON_BOOL && !v->u.boolean))
            return sd_fail(SD_ERR_UNSUPPORTED, "%s: '%s' is not supported by sdcore's samplers",
                           src, must_be_false[i]);
    for (size_t i = 0; i < COUNT(must_be_string); i++)
        if (!is_null(v = sd_json_get(cfg, must_be_string[i][0])) &&
            !(v->kind == SD_JSON_STRING && strcmp(v->u.string.data, must_be_string[i][1]) == 0))
            return sd_fail(SD_ERR_UNSUPPORTED, "%s: '%s' is not supported by sdcore's samplers",
                           src, must_be_string[i][0]);
    for (size_t i = 0; i < COUNT(must_be_null); i++)
        if (!is_null(sd_json_get(cfg, must_be_null[i])))
            return sd_fail(SD_ERR_UNSUPPORTED, "%s: '%s' is not supported by sdcore's samplers",
                           src, must_be_null[i]);
    v = sd_json_get(cfg, "lambda_min_clipped");
    if (!is_null(v) && !(v->kind == SD_JSON_NUMBER && isinf(v->u.number) && v->u.number < 0))
        return sd_fail(SD_ERR_UNSUPPORTED,
                       "%s: 'lambda_min_clipped' is not supported by sdcore's samplers", src);
    if ((v = sched_get(cfg, "trained_betas"))) {
        if (v->kind != SD_JSON_ARRAY || (long)v->u.array.count != c->num_train_timesteps)
            return sd_fail(SD_ERR_FORMAT,
                           "%s: 'trained_betas' must be a list of num_train_timesteps (%d) "
                           "numbers",
                           src, c->num_train_timesteps);
        float *b = malloc(sizeof(float) * v->u.array.count);
        if (!b)
            return sd_fail(SD_ERR_NOMEM, "%s: cannot allocate trained_betas", src);
        for (size_t i = 0; i < v->u.array.count; i++) {
            double x = 0;
            sd_status s = as_number(&v->u.array.items[i], src, "trained_betas", &x);
            if (s != SD_OK) {
                free(b);
                return s;
            }
            b[i] = (float)x;
        }
        c->trained_betas = b;
        *betas = b;
    }
    return SD_OK;
}
