/* Text to image (see txt2img.h).
 *
 * Per step, the UNet sees one batch of 2n: the n latents twice, with the negative
 * prompts' embeddings first and the prompts' second (diffusers' order), and the
 * guided noise is uncond + g * (cond - uncond). Image i's noise comes from its own
 * generator seeded with seeds[i], drawn exactly as a one-image run would draw it, so
 * an image is reproducible from its seed alone whatever batch it ran in. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/rng.h"
#include "core/sampler_ops.h"
#include "txt2img.h"

/* Everything in sd_tensor lives on the backend (host memory on the CPU backend): the
 * latents stay there for the whole loop, and the sampler's updates run there too. */
typedef struct {
    sd_sampler *sampler;
    sd_rng *rngs;       /* (n) */
    float *host;        /* (n, 4, h, w): initial noise, per-step noise, latents for on_step */
    float *timesteps;   /* (2n) */
    float *pixels;      /* (3, H, W) host, one image at a time */
    sd_tensor d_x;      /* (n, 4, h, w) the latents */
    sd_tensor d_in;     /* (batch, 4, h, w) the UNet input, scaled, twice when guided */
    sd_tensor d_out;    /* (batch, 4, h, w) its prediction */
    sd_tensor d_eps;    /* (n, 4, h, w) the guided prediction */
    sd_tensor d_noise;  /* (n, 4, h, w) ancestral samplers' noise of the step */
    sd_tensor d_ctx;    /* (batch, T, C) */
    sd_tensor d_lat, d_img;
} txt2img_state;

static void state_free(const sd_backend *be, txt2img_state *s) {
    sd_sampler_free(s->sampler);
    free(s->rngs);
    free(s->host);
    free(s->timesteps);
    free(s->pixels);
    sd_tensor *dev[] = {&s->d_x,   &s->d_in,  &s->d_out, &s->d_eps,
                        &s->d_noise, &s->d_ctx, &s->d_lat, &s->d_img};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++)
        if (dev[i]->data)
            be->free(be, dev[i]);
}

static sd_status backend_tensor(const sd_backend *be, sd_tensor *t, int ndim, int64_t d0,
                                int64_t d1, int64_t d2, int64_t d3) {
    int64_t shape[4] = {d0, d1, d2, d3};
    *t = sd_tensor_view(NULL, SD_F32, be->device, ndim, shape);
    return be->alloc(be, t);
}

static sd_status check_params(const sd_txt2img_params *p) {
    if (p->n < 1)
        return sd_fail(SD_ERR_INVALID, "txt2img: the batch is empty");
    if (p->vae_factor < 1 || p->latent_channels < 1)
        return sd_fail(SD_ERR_INVALID, "txt2img: bad VAE factor or latent channels");
    if (p->width < p->vae_factor || p->height < p->vae_factor || p->width % p->vae_factor ||
        p->height % p->vae_factor)
        return sd_fail(SD_ERR_INVALID, "txt2img: width and height must be multiples of %d",
                       p->vae_factor);
    if (!p->cond || !p->uncond || !p->guidance || !p->seeds || p->tokens < 1 || p->width_ctx < 1)
        return sd_fail(SD_ERR_INVALID, "txt2img: embeddings, guidance and seeds are required");
    if (!(p->vae_scaling_factor > 0.0f))
        return sd_fail(SD_ERR_INVALID, "txt2img: vae_scaling_factor must be positive");
    for (int i = 0; i < p->n; i++)
        if (!isfinite(p->guidance[i]))
            return sd_fail(SD_ERR_INVALID, "txt2img: guidance_scale of image %d is not finite", i);
    return SD_OK;
}

/* float in [-1, 1] -> uint8 as diffusers does: clamp((x + 1) / 2) * 255, rounded to even */
static void to_uint8_hwc(const float *chw, int H, int W, uint8_t *hwc) {
    int64_t plane = (int64_t)H * W;
    for (int64_t i = 0; i < plane; i++)
        for (int c = 0; c < 3; c++) {
            float v = chw[c * plane + i] / 2.0f + 0.5f;
            v = v < 0.0f ? 0.0f : (v > 1.0f ? 1.0f : v);
            hwc[i * 3 + c] = (uint8_t)rintf(v * 255.0f);
        }
}

/* out (n floats) = in, or in * c, on the backend */
static sd_status vec_op(const sd_backend *be, int kind, float *out, const float *in, float c,
                        int64_t n) {
    sd_sampler_op op = {.kind = kind, .n = n, .out = out, .in = {in}};
    op.c[0] = c;
    return be->sampler_op(be, &op);
}

static sd_status denoise(sd_unet *unet, const sd_backend *be, const sd_txt2img_params *p,
                         txt2img_state *s, int64_t per_image, int h, int w) {
    int n = p->n;
    int guided = 0;
    for (int i = 0; i < n; i++)
        guided |= p->guidance[i] > 1.0f;
    int batch = guided ? 2 * n : n;
    int64_t ctx_per_image = (int64_t)p->tokens * p->width_ctx;
    int64_t nel = n * per_image;

    /* the context is the same every step: negative prompts first, then prompts */
    SD_TRY(backend_tensor(be, &s->d_in, 4, batch, p->latent_channels, h, w));
    SD_TRY(backend_tensor(be, &s->d_out, 4, batch, p->latent_channels, h, w));
    SD_TRY(backend_tensor(be, &s->d_eps, 4, n, p->latent_channels, h, w));
    SD_TRY(backend_tensor(be, &s->d_ctx, 3, batch, p->tokens, p->width_ctx, 1));
    if (guided) {
        sd_tensor half = sd_tensor_view(s->d_ctx.data, SD_F32, be->device, 3,
                                        (const int64_t[]){n, p->tokens, p->width_ctx});
        SD_TRY(be->upload(be, &half, p->uncond));
        half.data = (float *)s->d_ctx.data + n * ctx_per_image;
        SD_TRY(be->upload(be, &half, p->cond));
    } else {
        SD_TRY(be->upload(be, &s->d_ctx, p->cond));
    }
    int needs_noise = sd_sampler_needs_noise(s->sampler);
    if (needs_noise)
        SD_TRY(backend_tensor(be, &s->d_noise, 4, n, p->latent_channels, h, w));

    float *x = s->d_x.data, *in = s->d_in.data, *out = s->d_out.data, *eps = s->d_eps.data;
    int total = sd_sampler_num_steps(s->sampler);
    for (int step = 0; step < total; step++) {
        /* (batch, 4, h, w): the scaled latents, twice when guided */
        SD_TRY(sd_sampler_scale_model_input(s->sampler, step, x, in, nel));
        if (guided)
            SD_TRY(vec_op(be, SD_SOP_COPY, in + nel, in, 0.0f, nel));
        float t = sd_sampler_timestep(s->sampler, step);
        for (int i = 0; i < batch; i++)
            s->timesteps[i] = t;
        SD_TRY(sd_unet_forward(unet, &s->d_in, s->timesteps, &s->d_ctx, &s->d_out));
        /* eps = uncond + g (cond - uncond); without guidance, the prompt's prediction */
        for (int i = 0; i < n; i++) {
            float g = p->guidance[i];
            float *e = eps + i * per_image;
            const float *c = out + (guided ? nel : 0) + i * per_image;
            const float *u = out + i * per_image;
            sd_sampler_op op = {.kind = SD_SOP_GUIDE, .n = per_image, .out = e, .in = {u, c}};
            op.c[0] = g;
            if (!(guided && g > 1.0f))
                op = (sd_sampler_op){.kind = SD_SOP_COPY, .n = per_image, .out = e, .in = {c}};
            SD_TRY(be->sampler_op(be, &op));
        }
        if (needs_noise) {
            for (int i = 0; i < n; i++)
                SD_TRY(sd_rng_randn(&s->rngs[i], s->host + i * per_image, per_image));
            SD_TRY(be->upload(be, &s->d_noise, s->host));
        }
        SD_TRY(sd_sampler_step(s->sampler, step, eps, x, needs_noise ? s->d_noise.data : NULL,
                               nel));
        if (p->on_step) {
            const float *latents = NULL;
            if (p->on_step_latents) {
                SD_TRY(be->download(be, s->host, &s->d_x));
                latents = s->host;
            }
            if (p->on_step(p->ctx, step + 1, total, latents))
                return sd_fail(SD_ERR_CANCELLED, "generation cancelled after step %d of %d",
                               step + 1, total);
        }
    }
    return SD_OK;
}

static int all_finite(const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(x[i]))
            return 0;
    return 1;
}

static sd_status decode_all(sd_vae *vae, const sd_backend *be, const sd_txt2img_params *p,
                            txt2img_state *s, int64_t per_image, int h, int w, uint8_t *images) {
    int H = p->height, W = p->width;
    /* one image at a time: a 512x512 decode holds several (1, 128, 512, 512) activations */
    SD_TRY(backend_tensor(be, &s->d_lat, 4, 1, p->latent_channels, h, w));
    SD_TRY(backend_tensor(be, &s->d_img, 4, 1, 3, H, W));
    s->pixels = malloc(sizeof(float) * 3 * (size_t)H * W);
    if (!s->pixels)
        return sd_fail(SD_ERR_NOMEM, "txt2img: cannot allocate the image");
    float inv = 1.0f / p->vae_scaling_factor;
    for (int i = 0; i < p->n; i++) {
        const float *xi = (const float *)s->d_x.data + i * per_image;
        SD_TRY(vec_op(be, SD_SOP_MUL, s->d_lat.data, xi, inv, per_image));
        SD_TRY(sd_vae_decode(vae, &s->d_lat, &s->d_img));
        SD_TRY(be->download(be, s->pixels, &s->d_img));
        if (!all_finite(s->pixels, 3 * (int64_t)H * W) &&
            sd_vae_activation_dtype(vae) == SD_F16) {
            /* f16 activations overflowed (65504 is their largest value): decode this image
             * again in bf16, which has f32's range, rather than return a black image */
            SD_TRY(sd_vae_set_activation_dtype(vae, SD_BF16));
            sd_status st = sd_vae_decode(vae, &s->d_lat, &s->d_img);
            if (st == SD_OK)
                st = be->download(be, s->pixels, &s->d_img);
            sd_vae_set_activation_dtype(vae, SD_F16);
            SD_TRY(st);
        }
        if (!all_finite(s->pixels, 3 * (int64_t)H * W))
            return sd_fail(SD_ERR_DEVICE, "txt2img: image %d decoded to non-finite values", i);
        to_uint8_hwc(s->pixels, H, W, images + (int64_t)i * H * W * 3);
    }
    return SD_OK;
}

sd_status sd_txt2img(sd_unet *unet, sd_vae *vae, const sd_backend *be,
                     const sd_txt2img_params *p, uint8_t *images) {
    SD_TRY(check_params(p));
    int h = p->height / p->vae_factor, w = p->width / p->vae_factor, n = p->n;
    int64_t per_image = (int64_t)p->latent_channels * h * w;
    txt2img_state s;
    memset(&s, 0, sizeof s);
    sd_status st = sd_sampler_create(p->sampler, p->sampler_config, p->steps, &s.sampler);
    if (st != SD_OK)
        return st;
    size_t bytes = sizeof(float) * (size_t)(n * per_image);
    s.rngs = calloc((size_t)n, sizeof(sd_rng));
    s.host = malloc(bytes);
    s.timesteps = malloc(sizeof(float) * 2 * (size_t)n);
    if (!s.rngs || !s.host || !s.timesteps) {
        state_free(be, &s);
        return sd_fail(SD_ERR_NOMEM, "txt2img: cannot allocate the latents");
    }
    /* initial latents: each image's first draw from its own generator, times the
     * sampler's initial sigma (diffusers' prepare_latents), then onto the backend */
    float sigma0 = sd_sampler_init_noise_sigma(s.sampler);
    for (int i = 0; i < n && st == SD_OK; i++) {
        sd_rng_seed(&s.rngs[i], p->seeds[i]);
        float *xi = s.host + i * per_image;
        st = sd_rng_randn(&s.rngs[i], xi, per_image);
        for (int64_t j = 0; j < per_image && st == SD_OK; j++)
            xi[j] *= sigma0;
    }
    if (st == SD_OK)
        st = sd_sampler_use_backend(s.sampler, be);
    if (st == SD_OK)
        st = backend_tensor(be, &s.d_x, 4, n, p->latent_channels, h, w);
    if (st == SD_OK)
        st = be->upload(be, &s.d_x, s.host);
    if (st != SD_OK) {
        state_free(be, &s);
        return st;
    }
    st = denoise(unet, be, p, &s, per_image, h, w);
    if (st == SD_OK)
        st = decode_all(vae, be, p, &s, per_image, h, w, images);
    state_free(be, &s);
    return st;
}
