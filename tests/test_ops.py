"""Every CPU op against a float64 PyTorch reference on fresh random inputs.

Shapes are the ones SD 1.5 uses (a 512x512 image is a 64x64 latent; UNet widths 320,
640, 1280; 8 heads of 40..160 dims; 77 text tokens). Tolerance: the relative L2
error ||ours - ref|| / ||ref|| below 1e-5 and the largest error below 1e-4 of the
largest reference value, both well inside float32 rounding of these sums.
"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sdcore import ops

REL_L2 = 1e-5
REL_MAX = 1e-4


def check(ours, ref, rel_l2=REL_L2, rel_max=REL_MAX):
    ref = ref.detach().numpy() if isinstance(ref, torch.Tensor) else np.asarray(ref)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    assert ours.dtype == np.float32
    assert np.isfinite(ours).all()
    diff = ours.astype(np.float64) - ref
    scale = np.abs(ref).max()
    l2 = np.linalg.norm(diff) / max(np.linalg.norm(ref), 1e-30)
    mx = np.abs(diff).max() / max(scale, 1e-30)
    assert l2 <= rel_l2 and mx <= rel_max, f"relative L2 {l2:.3g}, relative max {mx:.3g}"


def randn(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def t64(a):
    return torch.from_numpy(np.asarray(a, dtype=np.float64))


# ------------------------------------------------------------------ linear ----


@pytest.mark.parametrize(
    "M,K,N",
    [(8192, 320, 1280), (154, 768, 320), (4096, 1280, 320), (77, 768, 3072), (3, 5, 7)],
)
def test_linear(rng, M, K, N):
    x, w, b = randn(rng, M, K), randn(rng, N, K, scale=K**-0.5), randn(rng, N)
    check(ops.linear(x, w, b), F.linear(t64(x), t64(w), t64(b)))
    check(ops.linear(x, w), F.linear(t64(x), t64(w)))


@pytest.mark.parametrize("M,K,N", [(77, 768, 320), (3, 5, 7)])
def test_linear_add(rng, M, K, N):
    x, w, b = randn(rng, 2, M, K), randn(rng, N, K, scale=K**-0.5), randn(rng, N)
    res = randn(rng, 2, M, N)
    check(ops.linear_add(x, w, b, res), F.linear(t64(x), t64(w), t64(b)) + t64(res))
    check(ops.linear_add(x, w, None, res), F.linear(t64(x), t64(w)) + t64(res))
    with pytest.raises(ValueError, match="res"):
        ops.linear_add(x, w, b, res[:, :1])


def test_linear_batched_input_and_half_weights(rng):
    x, w, b = randn(rng, 2, 77, 768), randn(rng, 320, 768, scale=0.03), randn(rng, 320)
    w16, b16 = w.astype(np.float16), b.astype(np.float16)
    # the f16 weights widen exactly, so the reference uses the same rounded values
    ref = F.linear(t64(x), t64(w16.astype(np.float32)), t64(b16.astype(np.float32)))
    check(ops.linear(x, w16, b16), ref)


def test_matmul(rng):
    a, b = randn(rng, 300, 200), randn(rng, 200, 100)
    check(ops.matmul(a, b), t64(a) @ t64(b))
    bt = np.ascontiguousarray(b.T)
    check(ops.matmul(a, bt, trans_b=True), t64(a) @ t64(b))


# ------------------------------------------------------------------ conv2d ----


@pytest.mark.parametrize(
    "B,C,OC,H,W,k,stride,pad",
    [
        (2, 320, 320, 64, 64, 3, 1, 1),  # UNet down block 1
        (2, 4, 320, 64, 64, 3, 1, 1),  # conv_in
        (2, 320, 320, 64, 64, 3, 2, 1),  # downsampler
        (2, 640, 320, 32, 32, 1, 1, 0),  # resnet shortcut
        (1, 512, 512, 16, 16, 3, 1, 1),  # VAE mid
        (1, 3, 5, 9, 7, 3, 2, 0),  # odd sizes, no padding
        (1, 8, 6, 5, 5, 1, 2, 0),  # 1x1 with stride
    ],
)
def test_conv2d(rng, B, C, OC, H, W, k, stride, pad):
    x = randn(rng, B, C, H, W)
    w = randn(rng, OC, C, k, k, scale=(C * k * k) ** -0.5)
    b = randn(rng, OC)
    ref = F.conv2d(t64(x), t64(w), t64(b), stride=stride, padding=pad)
    check(ops.conv2d(x, w, b, stride=stride, padding=pad), ref)


@pytest.mark.parametrize(
    "H,W,k,stride,pad",
    [
        (7, 6, 3, 2, 2),  # padding wider than the kernel's reach past the edge
        (4, 5, 5, 1, 3),  # output columns that see only padding
        (9, 8, 3, 3, 1),  # stride 3: the valid columns end inside the row
        (6, 11, 1, 1, 2),  # 1x1 with padding: not the plain GEMM
    ],
)
def test_conv2d_padding_edges(rng, H, W, k, stride, pad):
    # im2col copies each row's in-bounds run and zero-fills the rest
    x, w, b = randn(rng, 2, 3, H, W), randn(rng, 4, 3, k, k), randn(rng, 4)
    ref = F.conv2d(t64(x), t64(w), t64(b), stride=stride, padding=pad)
    check(ops.conv2d(x, w, b, stride=stride, padding=pad), ref)


@pytest.mark.parametrize("per_channel", [False, True])
def test_conv2d_add(rng, per_channel):
    x, w, b = randn(rng, 2, 16, 12, 10), randn(rng, 8, 16, 3, 3, scale=0.1), randn(rng, 8)
    res = randn(rng, 2, 8, 1, 1) if per_channel else randn(rng, 2, 8, 12, 10)
    ref = F.conv2d(t64(x), t64(w), t64(b), padding=1) + t64(res)
    check(ops.conv2d_add(x, w, b, res, padding=1), ref)
    check(ops.conv2d_add(x, w, None, res, padding=1), ref - t64(b)[None, :, None, None])
    with pytest.raises(ValueError, match="res"):
        ops.conv2d_add(x, w, b, res[:, :4], padding=1)


def test_conv2d_no_bias_and_half_weight(rng):
    x, w = randn(rng, 1, 16, 12, 12), randn(rng, 8, 16, 3, 3, scale=0.1)
    w16 = w.astype(np.float16)
    ref = F.conv2d(t64(x), t64(w16.astype(np.float32)), padding=1)
    check(ops.conv2d(x, w16, padding=1), ref)


# ------------------------------------------------------------------- norms ----


@pytest.mark.parametrize(
    "shape,groups,silu",
    [
        ((2, 320, 64, 64), 32, False),
        ((2, 320, 64, 64), 32, True),
        ((2, 1280, 8, 8), 32, True),
        ((1, 128, 128, 128), 32, True),  # VAE decoder at a 1024 px output's last stage scale
        ((3, 6, 5), 3, False),  # (B, C, T) input
    ],
)
def test_group_norm(rng, shape, groups, silu):
    # a large common offset checks that the variance does not cancel
    x = randn(rng, *shape) + np.float32(3.0)
    g, b = randn(rng, shape[1]), randn(rng, shape[1])
    ref = F.group_norm(t64(x), groups, t64(g), t64(b), eps=1e-5)
    if silu:
        ref = F.silu(ref)
    check(ops.group_norm(x, g, b, groups, eps=1e-5, silu=silu), ref)


@pytest.mark.parametrize("shape", [(2, 4096, 320), (1, 77, 768), (2, 64, 1280), (5, 3)])
def test_layer_norm(rng, shape):
    x = randn(rng, *shape) * 2 + 1
    g, b = randn(rng, shape[-1]), randn(rng, shape[-1])
    ref = F.layer_norm(t64(x), (shape[-1],), t64(g), t64(b), eps=1e-5)
    check(ops.layer_norm(x, g, b, eps=1e-5), ref)


# --------------------------------------------------------------- attention ----


def attention_ref(q, k, v, heads, causal=False):
    B, Tq, HD = q.shape
    Tk = k.shape[1]
    D = HD // heads

    def split(t, T):
        return t64(t).reshape(B, T, heads, D).transpose(1, 2)

    out = F.scaled_dot_product_attention(split(q, Tq), split(k, Tk), split(v, Tk), is_causal=causal)
    return out.transpose(1, 2).reshape(B, Tq, HD)


@pytest.mark.parametrize(
    "B,Tq,Tk,heads,D",
    [
        (1, 4096, 4096, 2, 40),  # self-attention at 64x64, SD 1.5's first level
        (2, 4096, 77, 8, 40),  # cross-attention over the prompt
        (1, 1024, 1024, 4, 80),
        (2, 1024, 77, 8, 80),
        (1, 256, 256, 4, 160),
        (2, 256, 77, 8, 160),
        (2, 77, 77, 12, 64),  # CLIP text encoder
        (1, 5, 3, 1, 7),
    ],
)
def test_attention(rng, B, Tq, Tk, heads, D):
    q, k, v = (
        randn(rng, B, Tq, heads * D),
        randn(rng, B, Tk, heads * D),
        randn(rng, B, Tk, heads * D),
    )
    check(ops.attention(q, k, v, heads), attention_ref(q, k, v, heads))


@pytest.mark.parametrize("T", [77, 3, 130])
def test_attention_causal(rng, T):
    q, k, v = randn(rng, 2, T, 768), randn(rng, 2, T, 768), randn(rng, 2, T, 768)
    check(ops.attention(q, k, v, 12, causal=True), attention_ref(q, k, v, 12, causal=True))


def test_attention_large_logits(rng):
    # scores near +-500 after scaling: the softmax must subtract the row max first
    q, k, v = (
        randn(rng, 1, 64, 40, scale=30),
        randn(rng, 1, 64, 40, scale=30),
        randn(rng, 1, 64, 40),
    )
    check(ops.attention(q, k, v, 1), attention_ref(q, k, v, 1), rel_l2=1e-4, rel_max=1e-3)


# ------------------------------------------------------------- activations ----


def test_softmax(rng):
    x = randn(rng, 16, 4096, scale=5)
    check(ops.softmax(x), torch.softmax(t64(x), dim=-1))
    x = randn(rng, 3, 7, 77)
    check(ops.softmax(x), torch.softmax(t64(x), dim=-1))


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu(rng, approximate):
    x = randn(rng, 2, 4096, 1280, scale=3)
    check(ops.gelu(x, approximate=approximate), F.gelu(t64(x), approximate=approximate))


def test_quick_gelu(rng):
    x = randn(rng, 1, 77, 3072, scale=4)
    check(ops.quick_gelu(x), t64(x) * torch.sigmoid(1.702 * t64(x)))


def test_silu(rng):
    x = randn(rng, 2, 320, 64, 64, scale=4)
    check(ops.silu(x), F.silu(t64(x)))
    # far tails: silu(-100) is a tiny negative number, silu(100) is 100
    tails = np.array([-100.0, -30.0, 0.0, 30.0, 100.0], dtype=np.float32)
    check(ops.silu(tails), F.silu(t64(tails)))


def test_geglu(rng):
    x = randn(rng, 2, 4096, 2560, scale=2)
    a, gate = t64(x).chunk(2, dim=-1)
    check(ops.geglu(x), a * F.gelu(gate))


@pytest.mark.parametrize("shape", [(2, 256, 1024), (2, 64, 1024), (1, 3, 10)])
def test_geglu_small_model_shapes(rng, shape):
    # the shipped model's feed-forward (width 128, inner 512) at 16x16 and 8x8 latents,
    # and a row shorter than one vector
    x = randn(rng, *shape, scale=3)
    a, gate = t64(x).chunk(2, dim=-1)
    check(ops.geglu(x), a * F.gelu(gate))


def test_gelu_negative_tail_is_accurate_relative_to_the_value():
    # 0.5 x (1 + erf(x / sqrt 2)) cancels for x << 0 when computed as written; the value
    # is 0.5 x erfc(-x / sqrt 2), taken here from the standard library in double
    x = np.linspace(-12.0, -2.0, 4001).astype(np.float32)
    ref = np.array([0.5 * v * math.erfc(-v / math.sqrt(2.0)) for v in x.astype(np.float64)])
    rel = np.abs(ops.gelu(x).astype(np.float64) - ref) / np.abs(ref)
    assert rel.max() < 2e-5, f"largest relative error {rel.max():.3g} at x = {x[rel.argmax()]}"


# ------------------------------------------------------ data movement, misc ----


def test_upsample_nearest2x(rng):
    x = randn(rng, 2, 1280, 8, 8)
    check(ops.upsample_nearest2x(x), F.interpolate(t64(x), scale_factor=2.0, mode="nearest"))


def test_concat_channels(rng):
    a, b = randn(rng, 2, 1280, 16, 16), randn(rng, 2, 640, 16, 16)
    check(ops.concat_channels(a, b), torch.cat([t64(a), t64(b)], dim=1))


def test_add_mul_scale(rng):
    a, b = randn(rng, 2, 320, 64, 64), randn(rng, 2, 320, 64, 64)
    check(ops.add(a, b), t64(a) + t64(b))
    check(ops.mul(a, b), t64(a) * t64(b))
    check(ops.scale(a, 0.18215), t64(a) * 0.18215, rel_l2=1e-6, rel_max=1e-6)
    # per-channel: the time embedding added to every pixel of each channel
    emb = randn(rng, 2, 320)
    check(ops.add(a, emb), t64(a) + t64(emb)[:, :, None, None])
    # trailing: a position embedding over the batch
    x, pos = randn(rng, 3, 77, 768), randn(rng, 77, 768)
    check(ops.add(x, pos), t64(x) + t64(pos))


def test_mul_trailing_vector(rng):
    x, s = randn(rng, 3, 77, 768), randn(rng, 768)
    check(ops.mul(x, s), t64(x) * t64(s))


def diffusers_timestep_embedding(t, dim, flip, shift):
    """diffusers' get_timestep_embedding (max_period 10000, scale 1) in float64."""
    half = dim // 2
    exponent = -np.log(10000.0) * np.arange(half, dtype=np.float64) / (half - shift)
    args = np.asarray(t, dtype=np.float64)[:, None] * np.exp(exponent)[None, :]
    emb = np.concatenate([np.sin(args), np.cos(args)], axis=-1)
    if flip:
        emb = np.concatenate([emb[:, half:], emb[:, :half]], axis=-1)
    if dim % 2:
        emb = np.pad(emb, ((0, 0), (0, 1)))
    return emb


@pytest.mark.parametrize("dim,flip,shift", [(320, True, 0.0), (256, False, 1.0), (7, True, 0.0)])
def test_timestep_embedding(rng, dim, flip, shift):
    t = np.concatenate([[0.0, 1.0, 999.0], rng.uniform(0, 1000, 5)]).astype(np.float32)
    ref = diffusers_timestep_embedding(t, dim, flip, shift)
    check(
        ops.timestep_embedding(t, dim, flip_sin_to_cos=flip, downscale_freq_shift=shift),
        ref,
        rel_l2=1e-6,
        rel_max=1e-6,
    )


def test_half_conversions(rng):
    x = np.concatenate(
        [
            randn(rng, 10000, scale=100),
            randn(rng, 1000, scale=1e-6),
            np.array([0.0, -0.0, 65504.0, 65520.0, 1e9, -1e9, np.inf, -np.inf], dtype=np.float32),
        ]
    )
    for name, tdtype in (("float16", torch.float16), ("bfloat16", torch.bfloat16)):
        ours = ops.narrow(x, name)
        ref = torch.from_numpy(x).to(tdtype).view(torch.int16).numpy().view(np.uint16)
        assert np.array_equal(ours, ref), name
        back = ops.widen(ours, name)
        ref_back = torch.from_numpy(ref.view(np.int16)).view(tdtype).float().numpy()
        assert np.array_equal(back, ref_back), name
    nan = ops.narrow(np.array([np.nan], np.float32), "float16")
    assert np.isnan(ops.widen(nan, "float16")).all()


def test_convert_widens_every_half_exactly():
    # every float16 bit pattern, three times over (the threaded path) and cut to an odd
    # length (the tail after the last 8-wide group), against NumPy's widening
    x = np.tile(np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16), 3)[:-5]
    ours = ops.convert(x, "float16")
    ref = x.astype(np.float32)
    nan = np.isnan(ref)
    assert ours.dtype == np.float32 and np.isnan(ours[nan]).all()
    assert np.array_equal(ours[~nan].view(np.uint32), ref[~nan].view(np.uint32))
