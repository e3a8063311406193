"""group_norm (+SiLU), layer_norm and softmax on the CUDA backend against the CPU backend.

float32 staging must agree with the CPU to float32 rounding of the statistics (relative
max error 1e-5). With float16/bfloat16 staging the reference is the CPU op on the
inputs rounded to that dtype, and the bound is measured, not guessed: twice the error
that rounding the reference's own output to that dtype causes. The kernels compute in
f32 from the rounded inputs, so rounding the output is the only error they should add.
"""

import numpy as np
import pytest

import sdcore
from sdcore import ops

available, reason = sdcore.cuda_available()
pytestmark = pytest.mark.skipif(not available, reason=f"no CUDA: {reason}")

F32_REL_MAX = 1e-5


def rel_max(ours, ref):
    assert ours.shape == ref.shape and np.isfinite(ours).all()
    return np.abs(ours.astype(np.float64) - ref).max() / max(np.abs(ref).max(), 1e-30)


def round_to(a, dtype):
    """float32 values rounded to float16 or bfloat16 (nearest even), widened back."""
    a = np.asarray(a, np.float32)
    if dtype == "float16":
        return a.astype(np.float16).astype(np.float32)
    u = a.view(np.uint32).astype(np.uint64)
    u = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16
    return u.astype(np.uint32).view(np.float32)


def check_f32(run):
    """run(device) -> array: the CUDA result within F32_REL_MAX of the CPU one."""
    ref = run("cpu")
    err = rel_max(run("cuda"), ref)
    assert err <= F32_REL_MAX, f"relative max error {err:.3g}"


def check_half(run, inputs, dtype):
    """run(device, *inputs) with `inputs` staged in `dtype` on the GPU, against the CPU
    op on the same inputs rounded to `dtype`."""
    rounded = [round_to(a, dtype) for a in inputs]
    ref = run("cpu", *rounded).astype(np.float64)
    bound = 2 * rel_max(round_to(ref, dtype), ref)
    with ops.staging_dtype(dtype):
        got = run("cuda", *inputs)
    err = rel_max(got, ref)
    assert err <= bound, f"relative max error {err:.3g}, bound {bound:.3g}"


def randn(rng, *shape, scale=1.0, offset=0.0):
    return (rng.standard_normal(shape) * scale + offset).astype(np.float32)


# -------------------------------------------------------------- group_norm ----

# SD 1.5 at 512x512: the UNet's four widths, the VAE decoder's mid and last stages
# (the 512x512 stage at a quarter of its area: same slicing, a quarter of the time).
# (2, 320, 64, 64) and the VAE shapes split each group's statistics over several
# blocks; (2, 1280, 8, 8) runs one block a group.
GROUP_NORM_SHAPES = [
    (2, 320, 64, 64),
    (2, 640, 32, 32),
    (2, 1280, 16, 16),
    (2, 1280, 8, 8),
    (1, 512, 64, 64),
    (1, 128, 256, 256),
]


@pytest.mark.parametrize("shape", GROUP_NORM_SHAPES)
@pytest.mark.parametrize("silu", [False, True])
def test_group_norm_f32(rng, shape, silu):
    # an offset of 3: a variance taken as E[x^2] - E[x]^2 would cancel
    x = randn(rng, *shape, offset=3.0)
    g, b = randn(rng, shape[1]), randn(rng, shape[1])
    check_f32(lambda dev: ops.group_norm(x, g, b, 32, silu=silu, device=dev))


@pytest.mark.parametrize(
    "shape,groups",
    [
        ((3, 96, 5, 7), 32),  # 3 channels a group, planes of 35: no 16-byte packs
        ((2, 40, 9, 9), 8),  # C not a multiple of 32
        ((2, 6, 1, 1), 3),  # one pixel
        ((3, 6, 5), 3),  # (B, C, L)
        ((1, 64, 72, 72), 32),  # split statistics over a group of odd pack count
    ],
)
@pytest.mark.parametrize("silu", [False, True])
def test_group_norm_odd_shapes(rng, shape, groups, silu):
    x = randn(rng, *shape, scale=2.0, offset=-1.0)
    g, b = randn(rng, shape[1]), randn(rng, shape[1])
    check_f32(lambda dev: ops.group_norm(x, g, b, groups, silu=silu, device=dev))


def test_group_norm_half_weights(rng):
    # float16 gamma and float32 beta with float32 activations: each widened on its own
    x = randn(rng, 2, 320, 32, 32)
    g = randn(rng, 320).astype(np.float16)
    b = randn(rng, 320)
    check_f32(lambda dev: ops.group_norm(x, g, b, 32, silu=True, device=dev))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize(
    "shape,silu",
    [
        ((2, 320, 64, 64), True),
        ((2, 1280, 8, 8), False),
        ((1, 128, 256, 256), True),
        ((3, 6, 5), True),
    ],
)
def test_group_norm_half(rng, dtype, shape, silu):
    x = randn(rng, *shape, offset=3.0)
    g, b = randn(rng, shape[1]), randn(rng, shape[1])
    groups = 32 if shape[1] % 32 == 0 else 3

    def run(dev, x, g, b):
        return ops.group_norm(x, g, b, groups, silu=silu, device=dev)

    check_half(run, [x, g, b], dtype)


# -------------------------------------------------------------- layer_norm ----

LAYER_NORM_SHAPES = [
    (2, 4096, 320),
    (2, 1024, 640),
    (2, 256, 1280),
    (1, 77, 768),
    (5, 3),  # no 16-byte packs
    (3, 20001),  # longer than the row kernels hold in registers
]


@pytest.mark.parametrize("shape", LAYER_NORM_SHAPES)
def test_layer_norm_f32(rng, shape):
    x = randn(rng, *shape, scale=2.0, offset=1.0)
    g, b = randn(rng, shape[-1]), randn(rng, shape[-1])
    check_f32(lambda dev: ops.layer_norm(x, g, b, device=dev))


def test_layer_norm_half_weights(rng):
    x = randn(rng, 1, 77, 768)
    g, b = randn(rng, 768).astype(np.float16), randn(rng, 768).astype(np.float16)
    check_f32(lambda dev: ops.layer_norm(x, g, b, device=dev))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("shape", [(2, 4096, 320), (2, 256, 1280), (1, 77, 768), (3, 20001)])
def test_layer_norm_half(rng, dtype, shape):
    x = randn(rng, *shape, scale=2.0, offset=1.0)
    g, b = randn(rng, shape[-1]), randn(rng, shape[-1])

    def run(dev, x, g, b):
        return ops.layer_norm(x, g, b, device=dev)

    check_half(run, [x, g, b], dtype)


# ----------------------------------------------------------------- softmax ----

# attention-score rows of 4096 keys and of 77 text tokens; an odd short row; a row
# longer than registers hold
SOFTMAX_SHAPES = [(64, 4096), (3, 7, 77), (5, 33), (2, 70000)]


@pytest.mark.parametrize("shape", SOFTMAX_SHAPES)
def test_softmax_f32(rng, shape):
    x = randn(rng, *shape, scale=5.0)
    check_f32(lambda dev: ops.softmax(x, device=dev))


def test_softmax_large_scores(rng):
    # scores near +-500: exp would overflow without the row max subtracted first
    x = randn(rng, 16, 4096, scale=200.0)
    check_f32(lambda dev: ops.softmax(x, device=dev))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("shape", SOFTMAX_SHAPES)
def test_softmax_half(rng, dtype, shape):
    x = randn(rng, *shape, scale=5.0)

    def run(dev, x):
        return ops.softmax(x, device=dev)

    check_half(run, [x], dtype)


# ------------------------------------------------------------------ errors ----


def raised(call):
    try:
        call()
    except Exception as e:  # noqa: BLE001 - the type itself is what is compared
        return type(e), str(e)
    return None


@pytest.mark.parametrize(
    "call",
    [
        # 10 channels do not split into 3 groups
        lambda x, dev: ops.group_norm(
            x, np.ones(10, np.float32), np.zeros(10, np.float32), 3, device=dev
        ),
        # gamma of 9 for 10 channels
        lambda x, dev: ops.group_norm(
            x, np.ones(9, np.float32), np.zeros(10, np.float32), 5, device=dev
        ),
        # beta of 11
        lambda x, dev: ops.group_norm(
            x, np.ones(10, np.float32), np.zeros(11, np.float32), 5, device=dev
        ),
        lambda x, dev: ops.group_norm(
            x, np.ones(10, np.float32), np.zeros(10, np.float32), 5, eps=-1.0, device=dev
        ),
        # layer_norm over the last dim (4): gamma of 10
        lambda x, dev: ops.layer_norm(
            x, np.ones(10, np.float32), np.zeros(4, np.float32), device=dev
        ),
        lambda x, dev: ops.layer_norm(
            x, np.ones(4, np.float32), np.zeros(4, np.float32), eps=-1.0, device=dev
        ),
    ],
    ids=["groups", "gamma", "beta", "gn_eps", "ln_gamma", "ln_eps"],
)
def test_errors_match_cpu(call):
    x = np.ones((2, 10, 4, 4), np.float32)
    on_cpu = raised(lambda: call(x, "cpu"))
    assert on_cpu is not None and on_cpu[0] is ValueError, on_cpu
    assert raised(lambda: call(x, "cuda")) == on_cpu
