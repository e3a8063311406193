"""The samplers' updates on the GPU against the CPU's (skipped without a GPU).

The GPU runs the same float32 expressions as the CPU (core/sampler_ops.h), without
fused multiply-adds, so every intermediate sample of a whole loop must be bit for bit
the CPU's; the CPU samplers themselves are checked against diffusers in test_samplers.
Inputs are fresh random model outputs and noise each run, at the latent shape of a
512x512 image with guidance (2, 4, 64, 64) and at an odd size.
"""

import numpy as np
import pytest

import sdcore
from sdcore import _C
from sdcore.configs import SD15_SCHEDULER as SD15

available, reason = sdcore.cuda_available()
cuda = pytest.mark.skipif(not available, reason=f"no CUDA: {reason}")

VARIANTS = [
    ({}, (2, 4, 64, 64)),
    ({"prediction_type": "v_prediction"}, (1, 4, 9, 7)),
    ({"use_karras_sigmas": True}, (1, 4, 9, 7)),
]


def run_loop(kind, steps, config, device, outputs, noises, x0):
    """Every scaled input and sample of a whole loop on `device`."""
    s = _C.Sampler(kind, steps, config, device=device)
    x, trace = x0.copy(), []
    for i in range(s.num_steps):
        trace.append(s.scale_model_input(i, x))
        x = s.step(i, outputs[i], x, noises[i] if s.needs_noise else None)
        trace.append(x)
    return trace


def ulps(a, b):
    """Largest distance between a and b in float32 units in the last place."""
    ia = a.view(np.int32).astype(np.int64)
    ib = b.view(np.int32).astype(np.int64)
    ia = np.where(ia < 0, -(2**31) - ia, ia)
    ib = np.where(ib < 0, -(2**31) - ib, ib)
    return int(np.abs(ia - ib).max())


@cuda
@pytest.mark.parametrize("kind", _C.sampler_names())
@pytest.mark.parametrize("steps", [1, 4, 20])
@pytest.mark.parametrize("variant", range(len(VARIANTS)))
def test_loop_bitwise(kind, steps, variant):
    extra, shape = VARIANTS[variant]
    if "use_karras_sigmas" in extra and kind not in ("euler", "dpmpp_2m"):
        pytest.skip("karras sigmas: euler and dpmpp_2m only")
    config = {**SD15, **extra}
    rng = np.random.default_rng()
    calls = _C.Sampler(kind, steps, config).num_steps
    outputs = rng.standard_normal((calls, *shape)).astype(np.float32)
    noises = rng.standard_normal((calls, *shape)).astype(np.float32)
    x0 = rng.standard_normal(shape).astype(np.float32) * np.float32(
        _C.Sampler(kind, steps, config).init_noise_sigma
    )
    cpu = run_loop(kind, steps, config, "cpu", outputs, noises, x0)
    gpu = run_loop(kind, steps, config, "cuda", outputs, noises, x0)
    for k, (c, g) in enumerate(zip(cpu, gpu, strict=True)):
        assert np.isfinite(c).all()
        assert np.array_equal(c, g), (
            f"{kind}, {steps} steps: call {k // 2} {'step' if k % 2 else 'input'} differs by "
            f"{ulps(c, g)} ulp"
        )


@cuda
def test_ddim_clip_bitwise():
    config = {**SD15, "clip_sample": True, "clip_sample_range": 0.5}
    rng = np.random.default_rng()
    shape = (2, 4, 16, 16)
    outputs = rng.standard_normal((10, *shape)).astype(np.float32)
    x0 = rng.standard_normal(shape).astype(np.float32)
    cpu = run_loop("ddim", 10, config, "cpu", outputs, outputs, x0)
    gpu = run_loop("ddim", 10, config, "cuda", outputs, outputs, x0)
    for c, g in zip(cpu, gpu, strict=True):
        assert np.array_equal(c, g), f"{ulps(c, g)} ulp"


@cuda
def test_device_step_errors():
    s = _C.Sampler("euler_a", 5, device="cuda")
    x = np.zeros((1, 4, 8, 8), np.float32)
    with pytest.raises(ValueError, match="needs noise"):
        s.step(0, x, x)
    with pytest.raises(ValueError, match="in order"):
        s.step(1, x, x, x)
    out = s.step(0, x, x, x)
    assert out.shape == x.shape


def test_unknown_device():
    with pytest.raises(ValueError, match="device"):
        _C.Sampler("euler", 5, device="tpu")


@pytest.mark.skipif(available, reason="checks the error where no GPU is present")
def test_cuda_without_gpu():
    with pytest.raises(sdcore.SdcoreError, match="not available|CUDA|GPU"):
        _C.Sampler("euler", 5, device="cuda")
