"""PNG encoding through libpng: exact pixels and the text chunks other tools read."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from sdcore import _C


def chunks(png):
    """(type, data) of every chunk, checking signature and CRCs by hand."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pos, out = 8, []
    while pos < len(png):
        (n,) = struct.unpack(">I", png[pos : pos + 4])
        kind, data = png[pos + 4 : pos + 8], png[pos + 8 : pos + 8 + n]
        (crc,) = struct.unpack(">I", png[pos + 8 + n : pos + 12 + n])
        assert crc == zlib.crc32(kind + data) & 0xFFFFFFFF
        out.append((kind, data))
        pos += 12 + n
    return out


@pytest.mark.parametrize("h,w", [(1, 1), (64, 64), (77, 131), (512, 384)])
def test_pixels_round_trip(rng, h, w):
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    png = _C.encode_png(img)
    decoded = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    assert np.array_equal(decoded, img)


def test_text_chunks():
    img = np.zeros((8, 8, 3), np.uint8)
    params = "a red circle\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a, Seed: 42"
    unicode = "un cercle rouge — 赤い円 🎈"
    png = _C.encode_png(img, {"parameters": params, "prompt": unicode})
    info = Image.open(io.BytesIO(png)).info
    assert info["parameters"] == params
    assert info["prompt"] == unicode
    kinds = [k for k, _ in chunks(png)]
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND"
    assert b"tEXt" in kinds and b"iTXt" in kinds  # ASCII as tEXt, UTF-8 as iTXt
    text = dict(d.split(b"\0", 1) for k, d in chunks(png) if k == b"tEXt")
    assert text[b"parameters"] == params.encode()


@pytest.mark.parametrize(
    "image,text,exc",
    [
        (np.zeros((4, 4), np.uint8), None, ValueError),
        (np.zeros((4, 4, 4), np.uint8), None, ValueError),
        (np.zeros((4, 4, 3), np.float32), None, ValueError),
        (np.zeros((4, 4, 3), np.uint8)[:, ::2], None, ValueError),
        ([[0, 0, 0]], None, TypeError),
        (np.zeros((4, 4, 3), np.uint8), {"": "x"}, ValueError),
        (np.zeros((4, 4, 3), np.uint8), {"k" * 80: "x"}, ValueError),
        (np.zeros((4, 4, 3), np.uint8), {"k": 3}, TypeError),
        (np.zeros((4, 4, 3), np.uint8), "parameters", TypeError),
    ],
)
def test_bad_input(image, text, exc):
    with pytest.raises(exc):
        _C.encode_png(image, text)
