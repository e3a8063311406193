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


def test_missing_cuda_op_is_a_clear_error():
    with pytest.raises(sdcore.UnsupportedError, match="not implemented on the cuda backend"):
        ops.group_norm(
            np.ones((1, 4, 2), np.float32),
            np.ones(4, np.float32),
            np.zeros(4, np.float32),
            2,
            device="cuda",
        )
