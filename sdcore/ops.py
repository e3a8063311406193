"""The engine's ops on NumPy arrays, one call each, for tests and experiments.

Each takes float32 arrays (weights may also be float16) and ``device="cpu"`` or
``"cuda"``, and returns a new float32 array. Shapes follow sdcore.h: NCHW images,
(B, T, C) sequences, attention heads packed as (B, T, H*D).
"""

from sdcore._C import (
    add,
    attention,
    concat_channels,
    conv2d,
    embedding,
    geglu,
    gelu,
    group_norm,
    layer_norm,
    linear,
    matmul,
    mul,
    narrow,
    pad_bottom_right,
    quick_gelu,
    roundtrip,
    scale,
    silu,
    softmax,
    timestep_embedding,
    transpose_last2,
    upsample_nearest2x,
    widen,
)

__all__ = [
    "add",
    "attention",
    "concat_channels",
    "conv2d",
    "embedding",
    "geglu",
    "gelu",
    "group_norm",
    "layer_norm",
    "linear",
    "matmul",
    "mul",
    "narrow",
    "pad_bottom_right",
    "quick_gelu",
    "roundtrip",
    "scale",
    "silu",
    "softmax",
    "timestep_embedding",
    "transpose_last2",
    "upsample_nearest2x",
    "widen",
]
