/* sd_model_load: a diffusers folder into the engine's models (see sdcore_api.h).
 *
 * The folder layout as sdcore/checkpoint.py's _load_folder reads it: each component's
 * config.json, its safetensors file (diffusion_pytorch_model / model, .safetensors or
 * .fp16.safetensors; pickle .bin files are refused), the scheduler's
 * scheduler_config.json (SD 1.x's when absent) and tokenizer/. Tensor names are the
 * diffusers and transformers state-dict names the models look up, with the two renamings
 * real folders need: text encoders saved by transformers 5 lack the "text_model." prefix,
 * and diffusers folders from before 0.14 name the VAE attention projections
 * query/key/value/proj_attn. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "api/api_internal.h"
#include "io/safetensors.h"

static int is_file(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

static int is_dir(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

/* The weights file of a component, into path (PATH_MAX bytes). */
static sd_status component_file(const char *folder, const char *component, const char *base,
                                char *path, size_t size) {
    static const char *const kinds[] = {".safetensors", ".fp16.safetensors"};
    for (int k = 0; k < 2; k++) {
        snprintf(path, size, "%s/%s/%s%s", folder, component, base, kinds[k]);
        if (is_file(path))
            return SD_OK;
    }
    static const char *const pickles[] = {".bin", ".fp16.bin"};
    for (int k = 0; k < 2; k++) {
        snprintf(path, size, "%s/%s/%s%s", folder, component, base, pickles[k]);
        if (is_file(path))
            return sd_fail(SD_ERR_UNSUPPORTED,
                           "%s: pickle weights are not read; convert the folder to safetensors",
                           path);
    }
    snprintf(path, size, "%s/%s/%s.safetensors", folder, component, base);
    return sd_fail(SD_ERR_IO, "%s: no weights for the %s", path, component);
}

static void release_weights(void *ptr, size_t size) {
    (void)size;
    sd_weights_free(ptr);
}

/* A new name for `name`, into buf, or NULL to keep it. */
typedef const char *(*rename_fn)(const char *name, char *buf, size_t size);

static const char *text_model_prefix(const char *name, char *buf, size_t size) {
    snprintf(buf, size, "text_model.%s", name);
    return buf;
}

/* "...attentions.0.query.weight" -> "...attentions.0.to_q.weight" (and key, value,
 * proj_attn), as sdcore/checkpoint.py's LEGACY_VAE_ATTENTION */
static const char *legacy_vae_attention(const char *name, char *buf, size_t size) {
    static const char *const old_new[][2] = {
        {"query", "to_q"}, {"key", "to_k"}, {"value", "to_v"}, {"proj_attn", "to_out.0"}};
    const char *at = strstr(name, ".attentions.0.");
    if (!at)
        return NULL;
    const char *layer = at + strlen(".attentions.0.");
    const char *dot = strchr(layer, '.');
    if (!dot || strchr(dot + 1, '.'))
        return NULL;
    for (int k = 0; k < 4; k++)
        if ((size_t)(dot - layer) == strlen(old_new[k][0]) &&
            strncmp(layer, old_new[k][0], (size_t)(dot - layer)) == 0) {
            snprintf(buf, size, "%.*s%s%s", (int)(layer - name), name, old_new[k][1], dot);
            return buf;
        }
    return NULL;
}

/* `*w` with every tensor renamed by fn (the same memory; the new set keeps the old one). */
static sd_status rename_weights(sd_weights **w, rename_fn fn) {
    sd_weights *out;
    SD_TRY(sd_weights_create(&out));
    sd_status s = SD_OK;
    for (int64_t i = 0; i < sd_weights_count(*w) && s == SD_OK; i++) {
        char buf[1024];
        const char *name = sd_weights_name(*w, i);
        const char *renamed = fn(name, buf, sizeof buf);
        /* a tensor already under the new name wins over a legacy one */
        if (renamed && fn != text_model_prefix && sd_weights_find(*w, renamed))
            continue;
        s = sd_weights_add(out, renamed ? renamed : name, *sd_weights_at(*w, i));
    }
    if (s == SD_OK)
        s = sd_weights_seal(out);
    if (s == SD_OK)
        s = sd_weights_keep(out, *w, 0, release_weights);
    if (s != SD_OK) {
        sd_weights_free(out);
        return s;
    }
    *w = out;
    return SD_OK;
}

static sd_status open_weights(const char *folder, const char *component, const char *base,
                              sd_weights **out) {
    char path[4096];
    SD_TRY(component_file(folder, component, base, path, sizeof path));
    /* text encoders carry an I64 position_ids no model reads */
    sd_safetensors_options opt = {.skip_unsupported = 1};
    return sd_safetensors_open_ex(path, &opt, out, NULL);
}

static sd_status read_component_config(const char *folder, const char *component, const char *file,
                                       sd_json *cfg, char *path, size_t size) {
    snprintf(path, size, "%s/%s/%s", folder, component, file);
    if (!is_file(path))
        return sd_fail(SD_ERR_IO, "%s: the %s's config is missing", path, component);
    return sd_config_read(path, cfg);
}

/* sdcore.json: the model's display name and default guidance, both optional. */
static sd_status read_model_defaults(const char *folder, sd_model *m) {
    char path[4096];
    snprintf(path, sizeof path, "%s/sdcore.json", folder);
    size_t n = strlen(folder);
    while (n > 1 && folder[n - 1] == '/') /* "models/default/" is "default" */
        n--;
    const char *base = folder;
    for (size_t i = 0; i < n; i++)
        if (folder[i] == '/')
            base = folder + i + 1;
    m->name = strndup(base, (size_t)(folder + n - base));
    m->default_guidance = SD_DEFAULT_GUIDANCE;
    if (!m->name)
        return sd_fail(SD_ERR_NOMEM, "model: out of memory");
    if (!is_file(path))
        return SD_OK;
    sd_json cfg;
    SD_TRY(sd_config_read(path, &cfg));
    sd_status s = SD_OK;
    const sd_json *name = sd_json_get(&cfg, "name");
    const sd_json *g = sd_json_get(&cfg, "guidance_scale");
    if (name && (name->kind != SD_JSON_STRING || !name->u.string.len))
        s = sd_fail(SD_ERR_FORMAT, "%s: 'name' must be a non-empty string", path);
    else if (g &&
             !((g->kind == SD_JSON_NUMBER && g->u.number >= 0 && g->u.number <= SD_MAX_GUIDANCE) ||
               (g->kind == SD_JSON_INT && g->u.integer <= (int64_t)SD_MAX_GUIDANCE)))
        s = sd_fail(SD_ERR_FORMAT, "%s: 'guidance_scale' must be a number between 0 and %g", path,
                    SD_MAX_GUIDANCE);
    if (s == SD_OK && name) {
        char *copy = strdup(name->u.string.data);
        if (!copy)
            s = sd_fail(SD_ERR_NOMEM, "model: out of memory");
        else {
            free(m->name);
            m->name = copy;
        }
    }
    if (s == SD_OK && g)
        m->default_guidance = g->kind == SD_JSON_INT ? (double)g->u.integer : g->u.number;
    sd_json_free(&cfg);
    return s;
}

static sd_status load_parts(const char *folder, sd_model *m) {
    char path[4096];
    snprintf(path, sizeof path, "%s/text_encoder_2", folder);
    if (is_dir(path))
        return sd_fail(SD_ERR_UNSUPPORTED,
                       "%s: SDXL folders (text_encoder_2/) are not supported "
                       "yet",
                       folder);
    SD_TRY(read_model_defaults(folder, m));

    /* configs first: a bad field is reported before any weights are mapped */
    sd_json cfg;
    SD_TRY(read_component_config(folder, "text_encoder", "config.json", &cfg, path, sizeof path));
    sd_status s = sd_config_clip(&cfg, path, &m->clip_config);
    sd_json_free(&cfg);
    SD_TRY(s);
    SD_TRY(read_component_config(folder, "unet", "config.json", &cfg, path, sizeof path));
    int sample_size = 64;
    s = sd_config_unet(&cfg, path, &m->unet_config, &sample_size);
    sd_json_free(&cfg);
    SD_TRY(s);
    if (m->unet_config.use_linear_projection)
        return sd_fail(SD_ERR_UNSUPPORTED,
                       "%s: SD 2.x folders (linear projections) are not "
                       "supported yet",
                       folder);
    SD_TRY(read_component_config(folder, "vae", "config.json", &cfg, path, sizeof path));
    s = sd_config_vae(&cfg, path, &m->vae_config, &m->vae_scaling_factor);
    sd_json_free(&cfg);
    SD_TRY(s);
    m->vae_factor = 1 << (m->vae_config.num_blocks - 1);
    snprintf(path, sizeof path, "%s/scheduler/scheduler_config.json", folder);
    sd_sampler_config_default(&m->scheduler);
    if (is_file(path)) {
        SD_TRY(sd_config_read(path, &cfg));
        s = sd_config_sampler(&cfg, path, &m->scheduler, &m->trained_betas);
        sd_json_free(&cfg);
        SD_TRY(s);
    }
    /* the size the model was trained at, within the sizes a request may ask for */
    int size = sample_size * m->vae_factor;
    size = size / 8 * 8;
    m->default_size = size < SD_MIN_SIZE ? SD_MIN_SIZE : size > SD_MAX_SIZE ? SD_MAX_SIZE : size;

    snprintf(path, sizeof path, "%s/tokenizer", folder);
    if (!is_dir(path))
        return sd_fail(SD_ERR_IO,
                       "%s: the tokenizer folder is missing (the C library does not "
                       "ship a vocabulary of its own)",
                       path);
    SD_TRY(sd_tokenizer_load(path, &m->tokenizer));

    const sd_backend *be = m->be;
    SD_TRY(open_weights(folder, "text_encoder", "model", &m->clip_weights));
    /* transformers 5 saves CLIPTextModel without its text_model. wrapper name */
    if (!sd_weights_find(m->clip_weights, "text_model.embeddings.token_embedding.weight"))
        SD_TRY(rename_weights(&m->clip_weights, text_model_prefix));
    SD_TRY(sd_clip_create(&m->clip_config, m->clip_weights, be, &m->clip));

    SD_TRY(open_weights(folder, "unet", "diffusion_pytorch_model", &m->unet_weights));
    SD_TRY(sd_unet_create(&m->unet_config, m->unet_weights, be, &m->unet));

    SD_TRY(open_weights(folder, "vae", "diffusion_pytorch_model", &m->vae_weights));
    SD_TRY(rename_weights(&m->vae_weights, legacy_vae_attention));
    SD_TRY(sd_vae_create(&m->vae_config, m->vae_weights, 0, be, &m->vae));
    return SD_OK;
}

sd_status sd_model_load(const char *path, sd_model **out) {
    *out = NULL;
    if (!path || !*path)
        return sd_fail(SD_ERR_INVALID, "model: no path given");
    if (!is_dir(path)) {
        if (is_file(path))
            return sd_fail(SD_ERR_UNSUPPORTED,
                           "model: %s is a file; the C library reads diffusers folders only "
                           "(single-file checkpoints load in the Python package)",
                           path);
        return sd_fail(SD_ERR_IO, "model: %s does not exist", path);
    }
    sd_model *m = calloc(1, sizeof *m);
    if (!m)
        return sd_fail(SD_ERR_NOMEM, "model: out of memory");
    m->be = sd_cpu_backend();
    sd_status s = load_parts(path, m);
    if (s != SD_OK) {
        sd_model_free(m);
        return s;
    }
    *out = m;
    return SD_OK;
}

void sd_model_free(sd_model *m) {
    if (!m)
        return;
    sd_clip_free(m->clip);
    sd_unet_free(m->unet);
    sd_vae_free(m->vae);
    sd_weights_free(m->clip_weights);
    sd_weights_free(m->unet_weights);
    sd_weights_free(m->vae_weights);
    sd_tokenizer_free(m->tokenizer);
    free(m->trained_betas);
    free(m->name);
    free(m);
}

const char *sd_model_name(const sd_model *m) {
    return m->name;
}
int sd_model_default_size(const sd_model *m) {
    return m->default_size;
}
double sd_model_default_guidance(const sd_model *m) {
    return m->default_guidance;
}
const char *sd_version(void) {
    return SDCORE_VERSION;
}
