"""attention on the CUDA backend against the CPU backend (skipped without a GPU).

The CPU op is itself checked against float64 torch in test_ops.py. float32 staging runs
the general path (cuBLAS scores, a softmax kernel, cuBLAS P V) and must agree to float32
rounding. float16/bfloat16 staging runs the fused flash kernel where the head fits
(D % 8 == 0, 32 < D <= 160) and the general path otherwise; its error against the float32
CPU result may be a small multiple of the yardstick: the CPU result computed from inputs
rounded to that dtype, its output rounded too. The kernel adds one more rounding of the
same size (the probabilities, before P V), so the ratio is near 1 when all is well and
a wrong index gives errors of order 1.
"""

import numpy as np
import pytest

import sdcore
from sdcore import ops

available, reason = sdcore.cuda_available()
pytestmark = pytest.mark.skipif(not available, reason=f"no CUDA: {reason}")

# float32: as test_ops.py allows the CPU op against float64
REL_L2, REL_MAX = 1e-5, 1e-4
# unit roundoff of each staging dtype: the floor of the bounds, so that a tiny output
# whose yardstick happens to be near zero does not fail on one rounding
ROUNDOFF = {"float16": 2.0**-11, "bfloat16": 2.0**-8}

SHAPES = [
    # B, Tq, Tk, heads, D
    (1, 4096, 4096, 2, 40),  # self-attention at 64x64 latents, SD 1.5's first level
    (2, 4096, 77, 8, 40),  # cross-attention over the prompt
    (1, 1024, 1024, 4, 80),
    (2, 1024, 77, 8, 80),
    (2, 256, 256, 8, 160),
    (2, 256, 77, 8, 160),
    (2, 64, 64, 8, 160),
    (2, 64, 77, 8, 160),
    (2, 77, 77, 12, 64),  # CLIP's heads, unmasked
    (1, 300, 200, 4, 32),  # small heads: the general path in every dtype
    (1, 1024, 1024, 1, 512),  # the VAE's single head, at 32x32 latents
    (1, 100, 50, 2, 36),  # D % 8 != 0: general path
    (1, 5, 3, 1, 7),
]


def randn(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def errors(ours, ref):
    """(relative L2, largest error relative to the largest reference value)."""
    assert ours.shape == ref.shape and ours.dtype == np.float32
    assert np.isfinite(ours).all()
    diff = ours.astype(np.float64) - ref
    l2 = np.linalg.norm(diff) / max(np.linalg.norm(ref), 1e-30)
    mx = np.abs(diff).max() / max(np.abs(ref).max(), 1e-30)
    return l2, mx


def check_f32(q, k, v, heads, causal=False, rel_l2=REL_L2, rel_max=REL_MAX):
    ref = ops.attention(q, k, v, heads, causal=causal)
    ours = ops.attention(q, k, v, heads, causal=causal, device="cuda")
    l2, mx = errors(ours, ref)
    assert l2 <= rel_l2 and mx <= rel_max, f"relative L2 {l2:.3g}, relative max {mx:.3g}"


def check_half(q, k, v, heads, dtype, causal=False):
    ref = ops.attention(q, k, v, heads, causal=causal)

    def rounded(x):
        return ops.convert(x, dtype=dtype)

    base = rounded(ops.attention(rounded(q), rounded(k), rounded(v), heads, causal=causal))
    base_l2, base_mx = errors(base, ref)
    with ops.staging_dtype(dtype):
        ours = ops.attention(q, k, v, heads, causal=causal, device="cuda")
    l2, mx = errors(ours, ref)
    u = ROUNDOFF[dtype]
    assert l2 <= max(3 * base_l2, u) and mx <= max(6 * base_mx, 2 * u), (
        f"relative L2 {l2:.3g} (inputs rounded: {base_l2:.3g}), "
        f"relative max {mx:.3g} (inputs rounded: {base_mx:.3g})"
    )


def qkv(rng, B, Tq, Tk, heads, D, q_scale=1.0):
    return (
        randn(rng, B, Tq, heads * D, scale=q_scale),
        randn(rng, B, Tk, heads * D),
        randn(rng, B, Tk, heads * D),
    )


@pytest.mark.parametrize("B,Tq,Tk,heads,D", SHAPES)
def test_attention_f32(rng, B, Tq, Tk, heads, D):
    check_f32(*qkv(rng, B, Tq, Tk, heads, D), heads)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("B,Tq,Tk,heads,D", SHAPES)
def test_attention_half(rng, B, Tq, Tk, heads, D, dtype):
    check_half(*qkv(rng, B, Tq, Tk, heads, D), heads, dtype)


# 77: CLIP's text; 130: three 64-query blocks, the last one partial
@pytest.mark.parametrize("T", [77, 130])
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_attention_causal(rng, T, dtype):
    q, k, v = qkv(rng, 2, T, T, 12, 64)
    if dtype == "float32":
        check_f32(q, k, v, 12, causal=True)
    else:
        check_half(q, k, v, 12, dtype, causal=True)


# scores of several hundred: the running max must keep every exponent in range
@pytest.mark.parametrize(
    "B,Tq,Tk,heads,D",
    [(1, 1024, 1024, 2, 40), (2, 256, 77, 8, 80), (1, 256, 256, 1, 512)],
)
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_attention_large_logits(rng, B, Tq, Tk, heads, D, dtype):
    q, k, v = qkv(rng, B, Tq, Tk, heads, D, q_scale=30)
    if dtype == "float32":
        # the logits carry float32 rounding of ~500 * 6e-8 into the exponents
        check_f32(q, k, v, heads, rel_l2=1e-4, rel_max=1e-3)
    else:
        check_half(q, k, v, heads, dtype)


@pytest.mark.parametrize(
    "q_shape,k_shape,heads,causal",
    [
        ((1, 5, 8), (1, 4, 8), 2, True),  # causal needs Tq == Tk
        ((1, 5, 8), (1, 5, 8), 3, False),  # 8 does not split into 3 heads
        ((1, 5, 8), (2, 5, 8), 2, False),  # k of another batch
        ((1, 5, 8), (1, 5, 6), 2, False),  # k of another width
    ],
)
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_attention_errors_as_on_cpu(q_shape, k_shape, heads, causal, dtype):
    q, k = np.ones(q_shape, np.float32), np.ones(k_shape, np.float32)
    with pytest.raises(ValueError) as on_cpu:
        ops.attention(q, k, k, heads, causal=causal)
    with ops.staging_dtype(dtype), pytest.raises(ValueError) as on_cuda:
        ops.attention(q, k, k, heads, causal=causal, device="cuda")
    assert type(on_cuda.value) is type(on_cpu.value)
    assert str(on_cuda.value) == str(on_cpu.value)
