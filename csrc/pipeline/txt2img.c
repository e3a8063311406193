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
#include "txt2img.h"

typedef struct {
    sd_sampler *sampler;
    sd_rng *rngs;            /* (n) */
    float *x, *noise, *eps;  /* (n, 4, h, w) host */
    float *unet_in;          /* (2n, 4, h, w) host staging */
    float *unet_out;         /* (2n, 4, h, w) host */
    float *timesteps;        /* (2n) */
    sd_tensor d_in, d_ctx, d_out; /* backend copies */
    float *pixels;           /* (3, H, W) host, one image at a time */
    sd_tensor d_lat, d_img;
} txt2img_state;

static void state_free(const sd_backend *be, txt2img_state *s) {
    sd_sampler_free(s->sampler);
    free(s->rngs);
    free(s->x);
    free(s->noise);
    free(s->eps);
    free(s->unet_in);
    free(s->unet_out);
    free(s->timesteps);
    free(s->pixels);
    sd_tensor *dev[] = {&s->d_in, &s->d_ctx, &s->d_out, &s->d_lat, &s->d_img};
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

static sd_status denoise(sd_unet *unet, const sd_backend *be, const sd_txt2img_params *p,
                         txt2img_state *s, int64_t per_image, int h, int w) {
    int n = p->n;
    int guided = 0;
    for (int i = 0; i < n; i++)
        guided |= p->guidance[i] > 1.0f;
    int batch = guided ? 2 * n : n;
    int64_t ctx_per_image = (int64_t)p->tokens * p->width_ctx;

    /* the context is the same every step: negative prompts first, then prompts */
    SD_TRY(backend_tensor(be, &s->d_in, 4, batch, p->latent_channels, h, w));
    SD_TRY(backend_tensor(be, &s->d_out, 4, batch, p->latent_channels, h, w));
    SD_TRY(backend_tensor(be, &s->d_ctx, 3, batch, p->tokens, p->width_ctx, 1));
    if (guided) {
        float *ctx = malloc(sizeof(float) * (size_t)(2 * n * ctx_per_image));
        if (!ctx)
            return sd_fail(SD_ERR_NOMEM, "txt2img: cannot allocate the context");
        memcpy(ctx, p->uncond, sizeof(float) * (size_t)(n * ctx_per_image));
        memcpy(ctx + n * ctx_per_image, p->cond, sizeof(float) * (size_t)(n * ctx_per_image));
        sd_status st = be->upload(be, &s->d_ctx, ctx);
        free(ctx);
        SD_TRY(st);
    } else {
        SD_TRY(be->upload(be, &s->d_ctx, p->cond));
    }

    int total = sd_sampler_num_steps(s->sampler);
    int64_t nel = n * per_image;
    for (int step = 0; step < total; step++) {
        /* (batch, 4, h, w): the scaled latents, twice when guided */
        SD_TRY(sd_sampler_scale_model_input(s->sampler, step, s->x, s->unet_in, nel));
        if (guided)
            memcpy(s->unet_in + nel, s->unet_in, sizeof(float) * (size_t)nel);
        float t = sd_sampler_timestep(s->sampler, step);
        for (int i = 0; i < batch; i++)
            s->timesteps[i] = t;
        SD_TRY(be->upload(be, &s->d_in, s->unet_in));
        SD_TRY(sd_unet_forward(unet, &s->d_in, s->timesteps, &s->d_ctx, &s->d_out));
        SD_TRY(be->download(be, s->unet_out, &s->d_out));
        /* eps = uncond + g (cond - uncond); without guidance, the prompt's prediction */
        for (int i = 0; i < n; i++) {
            float g = p->guidance[i];
            float *e = s->eps + i * per_image;
            const float *c = s->unet_out + (guided ? nel : 0) + i * per_image;
            const float *u = s->unet_out + i * per_image;
            if (guided && g > 1.0f)
                for (int64_t j = 0; j < per_image; j++)
                    e[j] = u[j] + g * (c[j] - u[j]);
            else
                memcpy(e, c, sizeof(float) * (size_t)per_image);
        }
        const float *noise = NULL;
        if (sd_sampler_needs_noise(s->sampler)) {
            for (int i = 0; i < n; i++)
                SD_TRY(sd_rng_randn(&s->rngs[i], s->noise + i * per_image, per_image));
            noise = s->noise;
        }
        SD_TRY(sd_sampler_step(s->sampler, step, s->eps, s->x, noise, nel));
        if (p->on_step && p->on_step(p->ctx, step + 1, total, s->x))
            return sd_fail(SD_ERR_CANCELLED, "generation cancelled after step %d of %d",
                           step + 1, total);
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
        float *lat = s->eps; /* reuse as scratch: the loop is over */
        for (int64_t j = 0; j < per_image; j++)
            lat[j] = s->x[i * per_image + j] * inv;
        SD_TRY(be->upload(be, &s->d_lat, lat));
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
    s.x = malloc(bytes);
    s.noise = malloc(bytes);
    s.eps = malloc(bytes);
    s.unet_in = malloc(2 * bytes);
    s.unet_out = malloc(2 * bytes);
    s.timesteps = malloc(sizeof(float) * 2 * (size_t)n);
    if (!s.rngs || !s.x || !s.noise || !s.eps || !s.unet_in || !s.unet_out || !s.timesteps) {
        state_free(be, &s);
        return sd_fail(SD_ERR_NOMEM, "txt2img: cannot allocate the latents");
    }
    /* initial latents: each image's first draw from its own generator, times the
     * sampler's initial sigma (diffusers' prepare_latents) */
    float sigma0 = sd_sampler_init_noise_sigma(s.sampler);
    for (int i = 0; i < n; i++) {
        sd_rng_seed(&s.rngs[i], p->seeds[i]);
        float *xi = s.x + i * per_image;
        st = sd_rng_randn(&s.rngs[i], xi, per_image);
        if (st != SD_OK) {
            state_free(be, &s);
            return st;
        }
        for (int64_t j = 0; j < per_image; j++)
            xi[j] *= sigma0;
    }
    st = denoise(unet, be, p, &s, per_image, h, w);
    if (st == SD_OK)
        st = decode_all(vae, be, p, &s, per_image, h, w, images);
    state_free(be, &s);
    return st;
}
