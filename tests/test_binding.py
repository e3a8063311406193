"""The binding's contract: bad arguments raise a clear exception naming the argument,
never a crash; ops release the GIL and give correct results from many threads at once."""

import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import sdcore
from sdcore import ops


def f32(*shape):
    return np.ones(shape, dtype=np.float32)


@pytest.mark.parametrize(
    "call,exc,words",
    [
        (lambda: ops.linear(None, f32(3, 4)), TypeError, ["linear", "'x'", "None"]),
        (lambda: ops.linear([1.0, 2.0], f32(3, 2)), TypeError, ["'x'", "list"]),
        (lambda: ops.linear(np.ones((2, 4)), f32(3, 4)), TypeError, ["'x'", "float32"]),
        (lambda: ops.linear(np.ones((2, 4), np.int32), f32(3, 4)), TypeError, ["'x'"]),
        (lambda: ops.linear(f32(2, 4).astype(np.float16), f32(3, 4)), TypeError, ["'x'"]),
        (lambda: ops.linear(f32(4, 2).T, f32(3, 4)), ValueError, ["'x'", "contiguous"]),
        (lambda: ops.linear(f32(2, 4), f32(3, 5)), ValueError, ["input features"]),
        (lambda: ops.linear(f32(2, 4), f32(3, 4), f32(4)), ValueError, ["'bias'"]),
        (lambda: ops.linear(f32(2, 4), f32(3, 4, 1)), ValueError, ["'weight'", "dims"]),
        (lambda: ops.linear(np.ones((0, 4), np.float32), f32(3, 4)), ValueError, ["empty"]),
        (lambda: ops.conv2d(f32(1, 3, 8, 8), f32(4, 2, 3, 3)), ValueError, ["input channels"]),
        (lambda: ops.conv2d(f32(1, 3, 2, 2), f32(4, 3, 3, 3)), ValueError, ["kernel"]),
        (lambda: ops.conv2d(f32(1, 3, 8, 8), f32(4, 3, 3, 3), stride=0), ValueError, ["stride"]),
        (lambda: ops.conv2d(f32(3, 8, 8), f32(4, 3, 3, 3)), ValueError, ["'x'", "4 dims"]),
        (lambda: ops.group_norm(f32(1, 30, 4, 4), f32(30), f32(30), 32), ValueError, ["groups"]),
        (lambda: ops.group_norm(f32(1, 32, 4), f32(30), f32(32), 8), ValueError, ["'gamma'"]),
        (lambda: ops.group_norm(f32(1, 32, 4), f32(32), f32(32), 8, eps=-1.0), ValueError, ["eps"]),
        (lambda: ops.layer_norm(f32(2, 8), f32(8), None), TypeError, ["'beta'", "None"]),
        (
            lambda: ops.attention(f32(1, 4, 10), f32(1, 4, 10), f32(1, 4, 10), 3),
            ValueError,
            ["heads"],
        ),
        (
            lambda: ops.attention(f32(1, 4, 8), f32(1, 5, 8), f32(1, 5, 8), 2, causal=True),
            ValueError,
            ["causal"],
        ),
        (lambda: ops.attention(f32(1, 4, 8), f32(1, 5, 8), f32(1, 6, 8), 2), ValueError, ["'v'"]),
        (lambda: ops.attention(f32(2, 4, 8), f32(1, 5, 8), f32(1, 5, 8), 2), ValueError, ["'k'"]),
        (lambda: ops.geglu(f32(2, 5)), ValueError, ["even"]),
        (lambda: ops.gelu(f32(2), approximate="fast"), ValueError, ["approximate"]),
        (lambda: ops.add(f32(2, 3), f32(4)), ValueError, ["broadcast"]),
        (lambda: ops.concat_channels(f32(1, 2, 4, 4), f32(1, 2, 4, 5)), ValueError, ["differ"]),
        (lambda: ops.upsample_nearest2x(f32(2, 4, 4)), ValueError, ["4 dims"]),
        (lambda: ops.timestep_embedding(f32(3), 1), ValueError, ["dim"]),
        (lambda: ops.scale(f32(3), 2.0, device="tpu"), ValueError, ["device"]),
        (lambda: ops.widen(f32(3), "float16"), TypeError, ["uint16"]),
        (lambda: ops.narrow(f32(3), "float8"), ValueError, ["dtype"]),
        (lambda: ops.linear(f32(2, 4)), TypeError, []),
    ],
)
def test_bad_arguments_raise(call, exc, words):
    with pytest.raises(exc) as info:
        call()
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_cuda_unavailable_is_an_exception_not_a_crash():
    available, reason = sdcore.cuda_available()
    if available:
        pytest.skip("a CUDA device is present")
    assert reason
    with pytest.raises(sdcore.UnsupportedError, match="CUDA"):
        ops.scale(f32(3), 2.0, device="cuda")
    with pytest.raises(sdcore.UnsupportedError):
        ops.roundtrip(f32(3))
    assert sdcore.cuda_devices() == []


def test_exception_hierarchy():
    assert issubclass(sdcore.FormatError, sdcore.SdcoreError)
    assert issubclass(sdcore.FormatError, ValueError)
    assert issubclass(sdcore.SdcoreError, RuntimeError)


def test_weights_from_arrays(rng):
    a = rng.standard_normal((3, 4)).astype(np.float32)
    h = rng.standard_normal(5).astype(np.float16)
    w = sdcore._C.Weights.from_arrays({"a.weight": a, "h": h})
    assert w.names() == ["a.weight", "h"] and len(w) == 2 and "h" in w and "x" not in w
    assert w.info("h") == ("float16", (5,))
    sub = w.subset({"renamed": "a.weight"})
    del w  # the subset keeps the memory alive
    assert np.array_equal(sub.array("renamed"), a)
    with pytest.raises(KeyError, match="missing"):
        sub.subset({"x": "missing"})
    with pytest.raises(TypeError, match="'bad'"):
        sdcore._C.Weights.from_arrays({"bad": np.ones(3)})


def test_ops_from_eight_threads(rng):
    """Each thread runs a mix of ops on its own data; every result is checked."""
    cases = []
    for _ in range(8):
        x = rng.standard_normal((2, 64, 16, 16)).astype(np.float32)
        w = (rng.standard_normal((32, 64, 3, 3)) * 0.05).astype(np.float32)
        g, b = (
            rng.standard_normal(64).astype(np.float32),
            rng.standard_normal(64).astype(np.float32),
        )
        q = rng.standard_normal((1, 256, 64)).astype(np.float32)
        xd = torch.from_numpy(x).double()
        ref_conv = F.conv2d(xd, torch.from_numpy(w).double(), padding=1).numpy()
        ref_gn = F.silu(
            F.group_norm(xd, 32, torch.from_numpy(g).double(), torch.from_numpy(b).double())
        ).numpy()
        qd = torch.from_numpy(q).double().reshape(1, 256, 2, 32).transpose(1, 2)
        ref_att = F.scaled_dot_product_attention(qd, qd, qd).transpose(1, 2).reshape(1, 256, 64)
        cases.append((x, w, g, b, q, ref_conv, ref_gn, ref_att.numpy()))

    errors = []

    def work(case):
        x, w, g, b, q, ref_conv, ref_gn, ref_att = case
        try:
            for _ in range(5):
                for ours, ref in (
                    (ops.conv2d(x, w, padding=1), ref_conv),
                    (ops.group_norm(x, g, b, 32, silu=True), ref_gn),
                    (ops.attention(q, q, q, 2), ref_att),
                ):
                    err = np.abs(ours - ref).max() / np.abs(ref).max()
                    if not err < 1e-4:
                        errors.append(err)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(c,)) for c in cases]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "an op hung"
    assert errors == []


def test_gil_released_during_ops(rng):
    """A Python thread keeps running while a long op computes in another."""
    x = rng.standard_normal((1, 4096, 320)).astype(np.float32)
    ticks = []
    done = threading.Event()

    def ticker():
        while not done.is_set():
            ticks.append(1)
            done.wait(0.001)

    t = threading.Thread(target=ticker)
    t.start()
    try:
        for _ in range(3):
            ops.attention(x, x, x, 8)
    finally:
        done.set()
        t.join()
    assert len(ticks) > 5
