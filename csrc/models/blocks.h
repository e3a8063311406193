/* Building blocks shared by the UNet and the VAE, on the backend interface.
 *
 * Weight names are the diffusers state-dict names under a prefix, e.g.
 * "down_blocks.0.resnets.1" or "decoder.mid_block.resnets.0". */
#ifndef SDCORE_BLOCKS_H
#define SDCORE_BLOCKS_H

#include "runtime/arena.h"
#include "sdcore.h"
#include "tensors.h"

/* diffusers' ResnetBlock2D:
 *   h = conv1(silu(norm1(x))) [+ time_emb_proj(silu(temb)) per channel]
 *   h = conv2(silu(norm2(h)))
 *   out = shortcut(x) + h     (shortcut: 1x1 conv when channels change, else identity) */
typedef struct {
    int in_ch, out_ch, temb_ch; /* temb_ch 0: no time embedding (the VAE) */
    int groups;
    float eps;
    const sd_tensor *norm1_w, *norm1_b, *conv1_w, *conv1_b;
    const sd_tensor *temb_w, *temb_b; /* (out_ch, temb_ch), (out_ch) or NULL */
    const sd_tensor *norm2_w, *norm2_b, *conv2_w, *conv2_b;
    const sd_tensor *short_w, *short_b; /* (out_ch, in_ch, 1, 1) or NULL */
} sd_resnet_block;

/* Set rb's sizes and declare its tensors under `prefix`, each filling its slot in rb. */
sd_status sd_resnet_block_declare(sd_tensor_decls *d, const char *prefix, int in_ch, int out_ch,
                                  int temb_ch, int groups, float eps, sd_resnet_block *rb);

/* x (B, in_ch, H, W), temb_silu (B, temb_ch) = silu(temb) or NULL -> out (B, out_ch, H, W).
 * out must not be x (conv2 writes out before the shortcut reads x).
 * Temporaries come from the arena and are released before returning. */
sd_status sd_resnet_block_forward(const sd_backend *be, sd_arena *arena,
                                  const sd_resnet_block *rb, const sd_tensor *x,
                                  const sd_tensor *temb_silu, sd_tensor *out);
/* The same with a caller's free buffer for the block's largest temporaries (the normed
 * input, then the shortcut): `scratch` holds at least B * max(in_ch, out_ch) * H * W
 * activations and overlaps none of x, temb_silu and out. The VAE passes the rotation
 * buffer its blocks leave free, so its 512x512 blocks take no arena memory for them. */
sd_status sd_resnet_block_forward_scratch(const sd_backend *be, sd_arena *arena,
                                          const sd_resnet_block *rb, const sd_tensor *x,
                                          const sd_tensor *temb_silu, const sd_tensor *scratch,
                                          sd_tensor *out);

#endif
