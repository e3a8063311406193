"""The CUDA elementwise, activation and layout ops against the CPU backend (skipped
without a GPU).

Each op runs at SD 1.5's shapes with the operands staged in float32, float16 and bfloat16.
The reference is the CPU backend (itself tested against float64 torch in test_ops.py) on
the inputs rounded to the staging dtype, so both sides see the same input values and
what remains is the GPU's arithmetic and the rounding of its result:

- data movement (transpose, upsample, concat, pad, embedding) is exact in every dtype;
- add, mul, scale and convert are one f32 operation rounded once to nearest even, so the
  GPU result equals the CPU's f32 result rounded to the staging dtype, bit for bit;
- the transcendental ops (the GELUs, SiLU, GEGLU, the timestep embedding) use CUDA's
  erff/expf/tanhf/sin/cos instead of glibc's and the CPU's polynomial exp: in float32
  within 1e-6 (relative L2) and 2e-6 (relative max) of the CPU; in float16/bfloat16
  within 3x the error that rounding the CPU's result to that dtype causes by itself
  (measured in the test), since the GPU rounds its f32 result once.
Error paths raise the same exception with the same message as on the CPU.
"""

import numpy as np
import pytest
import torch

import sdcore
from sdcore import ops

available, reason = sdcore.cuda_available()
pytestmark = pytest.mark.skipif(not available, reason=f"no CUDA: {reason}")

STAGINGS = ["float32", "float16", "bfloat16"]
F32_REL_L2 = 1e-6
F32_REL_MAX = 2e-6


def randn(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def rounded(x, staging):
    """x rounded to the staging dtype (nearest even) and widened back, on the CPU."""
    return x if staging == "float32" else ops.convert(x, staging)


def on_gpu(op, staging, *args, **kw):
    with ops.staging_dtype(staging):
        return op(*args, device="cuda", **kw)


def _is_f32(a):
    return isinstance(a, np.ndarray) and a.dtype == np.float32


def on_cpu_rounded(op, staging, *args, **kw):
    """The CPU op on the float32 array arguments rounded as the GPU's staging rounds them."""
    args = [rounded(a, staging) if _is_f32(a) else a for a in args]
    return op(*args, **kw)


def rel_errors(ours, ref):
    diff = ours.astype(np.float64) - ref.astype(np.float64)
    l2 = np.linalg.norm(diff) / max(np.linalg.norm(ref), 1e-30)
    mx = np.abs(diff).max() / max(np.abs(ref).max(), 1e-30)
    return l2, mx


def check_exact(gpu, ref):
    assert gpu.dtype == np.float32 and gpu.shape == ref.shape, (gpu.shape, ref.shape)
    bad = np.flatnonzero(gpu != ref)
    assert bad.size == 0, (
        f"{bad.size} differ, first at {bad[0]}: {gpu.flat[bad[0]]} vs {ref.flat[bad[0]]}"
    )


def check_math(gpu, ref, staging):
    """Transcendental math: tight in float32, within 3x the output rounding otherwise."""
    assert gpu.shape == ref.shape and np.isfinite(gpu).all()
    if staging == "float32":
        tol_l2, tol_max = F32_REL_L2, F32_REL_MAX
    else:
        yard_l2, yard_max = rel_errors(rounded(ref, staging), ref)
        tol_l2, tol_max = 3 * yard_l2, 3 * yard_max
    l2, mx = rel_errors(gpu, ref)
    assert l2 <= tol_l2 and mx <= tol_max, (
        f"{staging}: relative L2 {l2:.3g} (bound {tol_l2:.3g}), "
        f"relative max {mx:.3g} (bound {tol_max:.3g})"
    )


# ------------------------------------------------------------------ add, mul --

BINARY_SHAPES = [
    ((2, 320, 64, 64), (2, 320, 64, 64)),  # resnet residual
    ((2, 320, 64, 64), (2, 320)),  # time embedding per channel
    ((2, 1280, 8, 8), (2, 1280)),
    ((2, 77, 768), (77, 768)),  # position embedding over the batch
    ((2, 4096, 320), (320,)),  # trailing vector
    ((2, 3, 5, 5), (2, 3)),  # per channel, H*W not a multiple of the 16-byte pack
    ((3, 7), (7,)),  # trailing, period not a multiple of the pack
    ((5, 3, 7), (5, 3, 7)),  # same shape, odd size
]


@pytest.mark.parametrize("staging", STAGINGS)
@pytest.mark.parametrize("shape_a,shape_b", BINARY_SHAPES)
@pytest.mark.parametrize("op", [ops.add, ops.mul], ids=["add", "mul"])
def test_add_mul(rng, op, shape_a, shape_b, staging):
    a, b = randn(rng, *shape_a), randn(rng, *shape_b)
    ref = rounded(on_cpu_rounded(op, staging, a, b), staging)
    check_exact(on_gpu(op, staging, a, b), ref)


@pytest.mark.parametrize("staging", STAGINGS)
def test_scale(rng, staging):
    x = randn(rng, 2, 4, 64, 64)
    ref = rounded(on_cpu_rounded(ops.scale, staging, x, 0.18215), staging)
    check_exact(on_gpu(ops.scale, staging, x, 0.18215), ref)


# ------------------------------------------------------------------ convert ----


def special_values(rng):
    """Normal values, subnormals, f16's overflow boundary, infinities and NaN."""
    return np.concatenate(
        [
            randn(rng, 10007, scale=100),  # odd length: the unpacked tail path
            randn(rng, 1000, scale=1e-6),  # f16 subnormals
            np.array(
                [0.0, -0.0, 65504.0, 65519.0, 65520.0, 1e9, -1e9, 1e-40, np.inf, -np.inf, np.nan],
                dtype=np.float32,
            ),
        ]
    )


def same_bits(ours, ref):
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    nan = np.isnan(ref)
    assert np.array_equal(np.isnan(ours), nan)
    assert np.array_equal(ours[~nan].view(np.uint32), ref[~nan].view(np.uint32))


@pytest.mark.parametrize("n", [None, 4096])  # specials of odd length; a multiple of 8
def test_convert_f32_to_half_matches_numpy_and_torch(rng, n):
    x = special_values(rng) if n is None else randn(rng, n, scale=10)
    # f16: numpy's astype rounds to nearest even (and overflows to inf, as it should)
    with np.errstate(over="ignore"):
        ref = x.astype(np.float16).astype(np.float32)
    same_bits(ops.convert(x, "float16", device="cuda"), ref)
    # bf16: torch's conversion rounds to nearest even
    ref = torch.from_numpy(x).to(torch.bfloat16).float().numpy()
    same_bits(ops.convert(x, "bfloat16", device="cuda"), ref)
    # float32 to float32 is a copy
    same_bits(ops.convert(x, "float32", device="cuda"), x)


def test_convert_between_halves(rng):
    with np.errstate(over="ignore"):
        h = special_values(rng).astype(np.float16)
    # f16 -> bf16 on the device, then widened: as torch's f16 -> bf16
    ref = torch.from_numpy(h).to(torch.bfloat16).float().numpy()
    same_bits(ops.convert(h, "bfloat16", device="cuda"), ref)
    # f16 -> f16 (a copy) -> f32: exact widening
    same_bits(ops.convert(h, "float16", device="cuda"), h.astype(np.float32))
    same_bits(ops.convert(h, "float32", device="cuda"), h.astype(np.float32))


def test_convert_matches_cpu(rng):
    x = randn(rng, 2, 4, 64, 64, scale=30)
    for dtype in ("float16", "bfloat16", "float32"):
        same_bits(ops.convert(x, dtype, device="cuda"), ops.convert(x, dtype))


# ------------------------------------------------------------------ activations


@pytest.mark.parametrize("staging", STAGINGS)
@pytest.mark.parametrize("shape", [(2, 4096, 1280), (3, 7, 13)])
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu(rng, approximate, shape, staging):
    x = randn(rng, *shape, scale=3)
    ref = on_cpu_rounded(ops.gelu, staging, x, approximate=approximate)
    check_math(on_gpu(ops.gelu, staging, x, approximate=approximate), ref, staging)


@pytest.mark.parametrize("staging", STAGINGS)
@pytest.mark.parametrize("shape", [(1, 77, 3072), (5, 11)])
def test_quick_gelu(rng, shape, staging):
    x = randn(rng, *shape, scale=4)
    ref = on_cpu_rounded(ops.quick_gelu, staging, x)
    check_math(on_gpu(ops.quick_gelu, staging, x), ref, staging)


@pytest.mark.parametrize("staging", STAGINGS)
@pytest.mark.parametrize("shape", [(2, 320, 64, 64), (2, 1280), (7, 13)])
def test_silu(rng, shape, staging):
    x = randn(rng, *shape, scale=4)
    ref = on_cpu_rounded(ops.silu, staging, x)
    check_math(on_gpu(ops.silu, staging, x), ref, staging)


def test_silu_tails():
    tails = np.array([-100.0, -30.0, 0.0, 30.0, 100.0], dtype=np.float32)
    check_math(ops.silu(tails, device="cuda"), ops.silu(tails), "float32")


@pytest.mark.parametrize("staging", STAGINGS)
@pytest.mark.parametrize("shape", [(2, 4096, 2560), (2, 1024, 5120), (2, 64, 10240), (3, 5, 14)])
def test_geglu(rng, shape, staging):
    x = randn(rng, *shape, scale=2)
    ref = on_cpu_rounded(ops.geglu, staging, x)
    check_math(on_gpu(ops.geglu, staging, x), ref, staging)


# ------------------------------------------------------------------ layout -----


@pytest.mark.parametrize("staging", STAGINGS)
@pytest.mark.parametrize(
    "shape",
    [
        (2, 320, 4096),  # NCHW (B, C, H*W) of SD 1.5's first level -> tokens
        (2, 4096, 320),  # and back
        (2, 1280, 64),
        (3, 33, 65),  # not multiples of the 32x32 tile
        (5, 1),
        (1, 7),
        (2, 3, 31, 47),  # two leading batch dims
    ],
)
def test_transpose_last2(rng, shape, staging):
    x = randn(rng, *shape)
    ref = on_cpu_rounded(ops.transpose_last2, staging, x)
    check_exact(on_gpu(ops.transpose_last2, staging, x), ref)


@pytest.mark.parametrize("staging", STAGINGS)
@pytest.mark.parametrize("shape", [(2, 1280, 16, 16), (2, 640, 32, 32), (1, 3, 5, 7)])
def test_upsample_nearest2x(rng, shape, staging):
    x = randn(rng, *shape)
    ref = on_cpu_rounded(ops.upsample_nearest2x, staging, x)
    check_exact(on_gpu(ops.upsample_nearest2x, staging, x), ref)


@pytest.mark.parametrize("staging", STAGINGS)
@pytest.mark.parametrize(
    "shape_a,shape_b",
    [
        ((2, 640, 32, 32), (2, 320, 32, 32)),  # up block skip connection
        ((2, 1280, 8, 8), (2, 1280, 8, 8)),
        ((1, 3, 5, 5), (1, 2, 5, 5)),  # runs that are not multiples of the pack
    ],
)
def test_concat_channels(rng, shape_a, shape_b, staging):
    a, b = randn(rng, *shape_a), randn(rng, *shape_b)
    ref = on_cpu_rounded(ops.concat_channels, staging, a, b)
    check_exact(on_gpu(ops.concat_channels, staging, a, b), ref)


@pytest.mark.parametrize("staging", STAGINGS)
@pytest.mark.parametrize(
    "shape,bottom,right", [((1, 128, 256, 256), 1, 1), ((2, 3, 5, 7), 2, 0), ((2, 3, 5, 7), 0, 3)]
)
def test_pad_bottom_right(rng, shape, bottom, right, staging):
    x = randn(rng, *shape)
    ref = on_cpu_rounded(ops.pad_bottom_right, staging, x, bottom, right)
    check_exact(on_gpu(ops.pad_bottom_right, staging, x, bottom, right), ref)


@pytest.mark.parametrize("staging", STAGINGS)
@pytest.mark.parametrize("dim,flip,shift", [(320, True, 0.0), (256, False, 1.0), (7, True, 0.0)])
def test_timestep_embedding(rng, dim, flip, shift, staging):
    t = np.concatenate([[0.0, 1.0, 999.0], rng.uniform(0, 1000, 5)]).astype(np.float32)
    kw = dict(flip_sin_to_cos=flip, downscale_freq_shift=shift)
    ref = on_cpu_rounded(ops.timestep_embedding, staging, t, dim, **kw)
    check_math(on_gpu(ops.timestep_embedding, staging, t, dim, **kw), ref, staging)


@pytest.mark.parametrize("staging", STAGINGS)
def test_embedding(rng, staging):
    table = randn(rng, 49408, 768, scale=0.02)  # CLIP's token embedding
    ids = np.concatenate([[49406], rng.integers(0, 49408, 75), [49407]]).astype(np.int32)
    ref = on_cpu_rounded(ops.embedding, staging, table, ids)
    check_exact(on_gpu(ops.embedding, staging, table, ids), ref)


@pytest.mark.parametrize("staging", STAGINGS)
def test_embedding_half_table(rng, staging):
    # a float16 table is staged as it is; the rows come out in the staging dtype
    table = randn(rng, 1000, 768, scale=0.02).astype(np.float16)
    ids = rng.integers(0, 1000, 77).astype(np.int32)
    ref = rounded(ops.embedding(table, ids), staging)
    check_exact(on_gpu(ops.embedding, staging, table, ids), ref)


# ------------------------------------------------------------------ errors -----


def raises_like_cpu(op, *args, **kw):
    """op(*args) fails on the GPU with the CPU's exception type and message."""
    with pytest.raises(Exception) as cpu:
        op(*args, device="cpu", **kw)
    with pytest.raises(Exception) as gpu:
        op(*args, device="cuda", **kw)
    assert type(gpu.value) is type(cpu.value), (gpu.value, cpu.value)
    assert str(gpu.value) == str(cpu.value)
    return gpu.value


@pytest.mark.parametrize("bad", [100, -1, 2**31 - 1])
def test_embedding_bad_id(rng, bad):
    table = randn(rng, 100, 8)
    ids = np.array([1, 2, bad, 3], np.int32)
    err = raises_like_cpu(ops.embedding, table, ids)
    assert isinstance(err, ValueError) and f"id {bad} at position 2" in str(err)


@pytest.mark.parametrize("shape_b", [(3, 5), (2, 321), (8, 9), (1, 320, 8, 8), (320, 8, 9)])
@pytest.mark.parametrize("op", [ops.add, ops.mul], ids=["add", "mul"])
def test_add_mul_bad_broadcast(rng, op, shape_b):
    a = randn(rng, 2, 320, 8, 8)
    err = raises_like_cpu(op, a, randn(rng, *shape_b))
    assert isinstance(err, ValueError) and "does not broadcast" in str(err)


def test_shape_errors_match_cpu(rng):
    x = randn(rng, 2, 4, 8, 8)
    raises_like_cpu(ops.concat_channels, x, randn(rng, 2, 4, 8, 9))
    raises_like_cpu(ops.concat_channels, x, randn(rng, 3, 4, 8, 8))
    raises_like_cpu(ops.geglu, randn(rng, 2, 7))
    t = np.array([1.0, 2.0], np.float32)
    raises_like_cpu(ops.timestep_embedding, t, 4, downscale_freq_shift=2.0)
    raises_like_cpu(ops.pad_bottom_right, x, -1, 0)
    raises_like_cpu(ops.transpose_last2, np.zeros(5, np.float32))
    raises_like_cpu(ops.upsample_nearest2x, randn(rng, 2, 4, 8))
