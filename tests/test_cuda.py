"""The CUDA backend on a machine with an NVIDIA GPU (skipped elsewhere): device
discovery, host<->device copies, and each CUDA op against the CPU backend."""

import numpy as np
import pytest

import sdcore
from sdcore import ops

available, reason = sdcore.cuda_available()
pytestmark = pytest.mark.skipif(not available, reason=f"no CUDA: {reason}")


def test_devices_listed():
    devices = sdcore.cuda_devices()
    assert devices and _C_count() == len(devices)
    for d in devices:
        assert d["name"] and d["total_memory"] > 2**30 and d["compute_capability"][0] >= 5


def _C_count():
    return sdcore._C.cuda_device_count()


@pytest.mark.parametrize("shape", [(1,), (3, 5), (2, 4, 64, 64), (7, 1, 3)])
def test_roundtrip_exact(rng, shape):
    x = rng.standard_normal(shape).astype(np.float32)
    assert np.array_equal(ops.roundtrip(x), x)
    h = x.astype(np.float16)
    assert np.array_equal(ops.roundtrip(h), h)


def test_scale_matches_cpu(rng):
    x = rng.standard_normal((2, 320, 64, 64)).astype(np.float32)
    assert np.array_equal(ops.scale(x, 0.18215, device="cuda"), ops.scale(x, 0.18215))


# ------------------------------------------------------- GEMMs and convs ----
#
# float32 staging: the GPU result against the CPU backend (itself tested against
# float64 torch) within float32 rounding of sums of up to 11520 terms. float16 and
# bfloat16 staging: against the CPU result on the same inputs rounded to that dtype,
# within a few units of the dtype's rounding (the output itself is rounded once:
# 2^-11 relative for float16, 2^-8 for bfloat16).

HALF_BOUNDS = {"float16": (2e-3, 4e-3), "bfloat16": (1.6e-2, 3.2e-2)}
DTYPES = ["float32", "float16", "bfloat16"]


def _compare(ours, ref, rel_l2, rel_max):
    assert ours.shape == ref.shape and np.isfinite(ours).all()
    diff = ours.astype(np.float64) - ref
    l2 = np.linalg.norm(diff) / max(np.linalg.norm(ref), 1e-30)
    mx = np.abs(diff).max() / max(np.abs(ref).max(), 1e-30)
    assert l2 <= rel_l2 and mx <= rel_max, f"relative L2 {l2:.3g}, relative max {mx:.3g}"


def _on_gpu(dtype, fn, *arrays, **kw):
    """fn on the GPU with float32 operands staged in dtype, and the CPU reference on the
    same operands rounded to dtype; returns (ours, reference, L2 bound, max bound)."""
    if dtype == "float32":
        return fn(*arrays, device="cuda", **kw), fn(*arrays, **kw), 1e-5, 1e-4
    ref = fn(*[ops.convert(a, dtype) for a in arrays], **kw)
    with ops.staging_dtype(dtype):
        ours = fn(*arrays, device="cuda", **kw)
    return (ours, ref, *HALF_BOUNDS[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M,K,N", [(8192, 320, 1280), (154, 768, 320), (77, 768, 3072), (3, 5, 7)])
def test_linear_matches_cpu(rng, dtype, M, K, N):
    x = rng.standard_normal((M, K)).astype(np.float32)
    w = (rng.standard_normal((N, K)) * K**-0.5).astype(np.float32)
    b = rng.standard_normal(N).astype(np.float32)
    _compare(*_on_gpu(dtype, ops.linear, x, w, b))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M,K,N", [(8192, 320, 320), (154, 1280, 320), (3, 5, 7)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_linear_add_matches_cpu(rng, dtype, M, K, N, with_bias):
    # the bias and the residual in cuBLASLt's epilogue (beta = 1) against linear + add
    x = rng.standard_normal((M, K)).astype(np.float32)
    w = (rng.standard_normal((N, K)) * K**-0.5).astype(np.float32)
    b = rng.standard_normal(N).astype(np.float32) if with_bias else None
    res = rng.standard_normal((M, N)).astype(np.float32)
    if dtype == "float32":
        ours, ref = ops.linear_add(x, w, b, res, device="cuda"), ops.linear_add(x, w, b, res)
        _compare(ours, ref, 1e-5, 1e-4)
        return
    r = [None if a is None else ops.convert(a, dtype) for a in (x, w, b, res)]
    ref = ops.linear_add(*r)
    with ops.staging_dtype(dtype):
        ours = ops.linear_add(x, w, b, res, device="cuda")
    _compare(ours, ref, *HALF_BOUNDS[dtype])


def test_linear_3d_input_half_weight_no_bias(rng):
    x = rng.standard_normal((2, 77, 768)).astype(np.float32)
    w = (rng.standard_normal((320, 768)) * 0.03).astype(np.float16)
    _compare(ops.linear(x, w, device="cuda"), ops.linear(x, w), 1e-5, 1e-4)


@pytest.mark.parametrize("dtype", DTYPES)
def test_matmul_matches_cpu(rng, dtype):
    a = rng.standard_normal((300, 200)).astype(np.float32)
    b = rng.standard_normal((200, 100)).astype(np.float32)
    _compare(*_on_gpu(dtype, ops.matmul, a, b))
    bt = np.ascontiguousarray(b.T)
    _compare(*_on_gpu(dtype, ops.matmul, a, bt, trans_b=True))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "B,C,OC,H,W,k,stride,pad",
    [
        (2, 320, 320, 64, 64, 3, 1, 1),  # UNet down block 1
        (2, 4, 320, 64, 64, 3, 1, 1),  # conv_in
        (2, 320, 320, 64, 64, 3, 2, 1),  # downsampler
        (2, 640, 320, 32, 32, 1, 1, 0),  # resnet shortcut
        (1, 128, 128, 256, 256, 3, 1, 1),  # VAE decoder at 256x256: chunked columns
        (2, 1280, 1280, 8, 8, 3, 1, 1),  # the deepest level
        (1, 8, 8, 10, 24, 3, 1, 1),  # 3x3 kernel with rows of whole 16-byte packs
        (1, 8, 8, 12, 20, 3, 1, 1),  # 3x3 with rows that are not (general kernel in f16)
        (1, 3, 5, 9, 7, 3, 2, 0),  # odd sizes, no padding
        (1, 8, 6, 5, 5, 1, 2, 0),  # 1x1 with stride
    ],
)
def test_conv2d_matches_cpu(rng, dtype, B, C, OC, H, W, k, stride, pad):
    x = rng.standard_normal((B, C, H, W)).astype(np.float32)
    w = (rng.standard_normal((OC, C, k, k)) * (C * k * k) ** -0.5).astype(np.float32)
    b = rng.standard_normal(OC).astype(np.float32)
    _compare(*_on_gpu(dtype, ops.conv2d, x, w, b, stride=stride, padding=pad))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "B,C,OC,H,W,k,per_channel",
    [
        (2, 320, 320, 64, 64, 3, True),  # resnet conv1 + time embedding
        (2, 640, 320, 32, 32, 3, False),  # resnet conv2 + shortcut
        (2, 320, 320, 16, 16, 1, False),  # transformer proj_out + input
        (1, 128, 128, 256, 256, 3, False),  # VAE at 256x256: chunked columns accumulate
        (1, 3, 5, 9, 7, 3, False),  # odd sizes: scalar paths
    ],
)
def test_conv2d_add_matches_cpu(rng, dtype, B, C, OC, H, W, k, per_channel):
    x = rng.standard_normal((B, C, H, W)).astype(np.float32)
    w = (rng.standard_normal((OC, C, k, k)) * (C * k * k) ** -0.5).astype(np.float32)
    b = rng.standard_normal(OC).astype(np.float32)
    shape = (B, OC, 1, 1) if per_channel else (B, OC, H, W)
    res = rng.standard_normal(shape).astype(np.float32)
    kw = dict(padding=k // 2)
    _compare(*_on_gpu(dtype, ops.conv2d_add, x, w, b, res, **kw))


def test_gemm_shape_errors_are_clear():
    with pytest.raises(ValueError, match="weight"):
        ops.linear(np.ones((4, 8), np.float32), np.ones((3, 7), np.float32), device="cuda")
    with pytest.raises(ValueError, match="input channels"):
        ops.conv2d(
            np.ones((1, 3, 8, 8), np.float32), np.ones((4, 2, 3, 3), np.float32), device="cuda"
        )


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_convert_rounds_like_the_cpu(rng, dtype):
    x = (rng.standard_normal((3, 1000)) * 100).astype(np.float32)
    assert np.array_equal(ops.convert(x, dtype, device="cuda"), ops.convert(x, dtype))
