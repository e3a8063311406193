/* Blocks shared by the UNet and the VAE (see blocks.h). */
#include "blocks.h"

sd_status sd_resnet_block_declare(sd_tensor_decls *d, const char *prefix, int in_ch, int out_ch,
                                  int temb_ch, int groups, float eps, sd_resnet_block *rb) {
    *rb = (sd_resnet_block){.in_ch = in_ch, .out_ch = out_ch, .temb_ch = temb_ch,
                            .groups = groups, .eps = eps};
    SD_TRY(sd_decl_norm(d, prefix, "norm1", in_ch, &rb->norm1_w, &rb->norm1_b));
    SD_TRY(sd_decl_conv(d, prefix, "conv1", out_ch, in_ch, 3, &rb->conv1_w, &rb->conv1_b));
    if (temb_ch > 0)
        SD_TRY(sd_decl_linear(d, prefix, "time_emb_proj", out_ch, temb_ch, &rb->temb_w,
                              &rb->temb_b));
    SD_TRY(sd_decl_norm(d, prefix, "norm2", out_ch, &rb->norm2_w, &rb->norm2_b));
    SD_TRY(sd_decl_conv(d, prefix, "conv2", out_ch, out_ch, 3, &rb->conv2_w, &rb->conv2_b));
    if (in_ch != out_ch)
        SD_TRY(sd_decl_conv(d, prefix, "conv_shortcut", out_ch, in_ch, 1, &rb->short_w,
                            &rb->short_b));
    return SD_OK;
}

sd_status sd_resnet_block_forward(const sd_backend *be, sd_arena *arena,
                                  const sd_resnet_block *rb, const sd_tensor *x,
                                  const sd_tensor *temb_silu, sd_tensor *out) {
    return sd_resnet_block_forward_scratch(be, arena, rb, x, temb_silu, NULL, out);
}

/* a temporary (B, C, H, W): in the scratch buffer when there is one, else the arena's */
static sd_status block_temp(sd_arena *arena, const sd_tensor *scratch, int64_t B, int64_t C,
                            int64_t H, int64_t W, sd_tensor *t) {
    if (!scratch)
        return sd_arena_act(arena, t, 4, B, C, H, W);
    *t = sd_tensor_view(scratch->data, arena->dtype, scratch->device, 4,
                        (const int64_t[]){B, C, H, W});
    return SD_OK;
}

sd_status sd_resnet_block_forward_scratch(const sd_backend *be, sd_arena *arena,
                                          const sd_resnet_block *rb, const sd_tensor *x,
                                          const sd_tensor *temb_silu, const sd_tensor *scratch,
                                          sd_tensor *out) {
    int64_t B = x->shape[0], H = x->shape[2], W = x->shape[3];
    int64_t widest = rb->in_ch > rb->out_ch ? rb->in_ch : rb->out_ch;
    if (scratch && (scratch->dtype != arena->dtype || sd_numel(scratch) < B * widest * H * W))
        return sd_fail(SD_ERR_INVALID, "resnet block: the scratch buffer is too small");
    size_t mark = sd_arena_mark(arena);
    sd_tensor a, h;
    sd_status s;
    /* Two full-size temporaries at most: h lives through the block; the space after it
     * holds a, then the shortcut (a is dead by then), and a small one t. */
    if ((s = sd_arena_act(arena, &h, 4, B, rb->out_ch, H, W)))
        goto done;
    size_t inner = sd_arena_mark(arena);
    /* a (B, in, H, W) = silu(norm1(x)) */
    if ((s = block_temp(arena, scratch, B, rb->in_ch, H, W, &a)) ||
        (s = be->group_norm(be, x, rb->norm1_w, rb->norm1_b, rb->groups, rb->eps, 1, &a)))
        goto done;
    /* t (B, out) = time_emb_proj(silu(temb)), added to every pixel of its channel: it
     * goes in as conv1's residual, so the GPU adds bias and t while writing h */
    sd_tensor t4, *t_res = NULL;
    if (rb->temb_ch > 0 && temb_silu) {
        sd_tensor t;
        if ((s = sd_arena_act(arena, &t, 2, B, rb->out_ch, 1, 1)) ||
            (s = be->linear(be, temb_silu, rb->temb_w, rb->temb_b, &t)))
            goto done;
        t4 = sd_tensor_view(t.data, t.dtype, t.device, 4,
                            (const int64_t[]){B, rb->out_ch, 1, 1});
        t_res = &t4;
    }
    /* h (B, out, H, W) = conv1(a) [+ t] */
    s = t_res ? be->conv2d_add(be, &a, rb->conv1_w, rb->conv1_b, 1, 1, t_res, &h)
              : be->conv2d(be, &a, rb->conv1_w, rb->conv1_b, 1, 1, &h);
    if (s)
        goto done;
    sd_arena_release(arena, inner);
    /* h = silu(norm2(h)), in place; out = conv2(h) + shortcut(x) */
    if ((s = be->group_norm(be, &h, rb->norm2_w, rb->norm2_b, rb->groups, rb->eps, 1, &h)))
        goto done;
    if (rb->short_w) {
        sd_tensor sc;
        if ((s = block_temp(arena, scratch, B, rb->out_ch, H, W, &sc)) ||
            (s = be->conv2d(be, x, rb->short_w, rb->short_b, 1, 0, &sc)) ||
            (s = be->conv2d_add(be, &h, rb->conv2_w, rb->conv2_b, 1, 1, &sc, out)))
            goto done;
    } else {
        s = be->conv2d_add(be, &h, rb->conv2_w, rb->conv2_b, 1, 1, x, out);
    }
done:
    sd_arena_release(arena, mark);
    return s;
}
