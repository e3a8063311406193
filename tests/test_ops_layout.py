"""transpose_last2: the NCHW <-> tokens layout change, against NumPy (exact: it only moves
values)."""

import numpy as np
import pytest
import torch

from sdcore import ops


@pytest.mark.parametrize(
    "shape",
    [
        (2, 320, 64 * 64),  # NCHW (B, C, H*W) of SD 1.5's first level -> tokens
        (2, 64 * 64, 320),  # and back
        (1, 1280, 8 * 8),
        (3, 33, 65),  # sizes that are not multiples of the 32x32 tile
        (1, 1, 7),
        (5, 1),  # 2 dims
        (2, 3, 31, 47),  # 4 dims: two leading batch dims
    ],
)
def test_transpose_last2(rng, shape):
    x = rng.standard_normal(shape).astype(np.float32)
    out = ops.transpose_last2(x)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, np.swapaxes(x, -1, -2))


def test_transpose_last2_roundtrip_of_an_image(rng):
    B, C, H, W = 2, 40, 12, 7
    x = rng.standard_normal((B, C, H, W)).astype(np.float32)
    tokens = ops.transpose_last2(x.reshape(B, C, H * W))
    np.testing.assert_array_equal(tokens, x.transpose(0, 2, 3, 1).reshape(B, H * W, C))
    back = ops.transpose_last2(tokens).reshape(B, C, H, W)
    np.testing.assert_array_equal(back, x)


def test_transpose_last2_bad_input():
    with pytest.raises(ValueError, match="transpose_last2.*'x'.*dims"):
        ops.transpose_last2(np.zeros(5, np.float32))
    with pytest.raises(TypeError, match="transpose_last2.*float32"):
        ops.transpose_last2(np.zeros((2, 3), np.float64))
    with pytest.raises(ValueError, match="C-contiguous"):
        ops.transpose_last2(np.zeros((4, 6), np.float32)[:, ::2])


def test_pad_bottom_right(rng):
    import torch.nn.functional as F

    x = rng.standard_normal((2, 3, 5, 7)).astype(np.float32)
    ref = F.pad(torch.from_numpy(x), (0, 1, 0, 1)).numpy()
    assert np.array_equal(ops.pad_bottom_right(x, 1, 1), ref)
    assert np.array_equal(
        ops.pad_bottom_right(x, 2, 0), np.pad(x, ((0, 0), (0, 0), (0, 2), (0, 0)))
    )
    with pytest.raises(ValueError, match="padding"):
        ops.pad_bottom_right(x, -1, 0)
