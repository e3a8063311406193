"""The engine's ops on NumPy arrays, one call each, for tests and experiments.

Each takes float32 arrays (weights may also be float16) and ``device="cpu"`` or
``"cuda"``, and returns a new float32 array. Shapes follow sdcore.h: NCHW images,
(B, T, C) sequences, attention heads packed as (B, T, H*D).

On the GPU the float32 operands can be staged in float16 or bfloat16, so that the ops
run the kernels the models use::

    with ops.staging_dtype("float16"):
        y = ops.group_norm(x, gamma, beta, 32, device="cuda")  # computed in float16
"""

import contextlib

from sdcore._C import (
    add,
    attention,
    concat_channels,
    conv2d,
    conv2d_add,
    convert,
    embedding,
    geglu,
    gelu,
    get_staging_dtype,
    group_norm,
    layer_norm,
    linear,
    linear_add,
    matmul,
    mul,
    narrow,
    pad_bottom_right,
    quick_gelu,
    roundtrip,
    scale,
    set_staging_dtype,
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
    "conv2d_add",
    "convert",
    "embedding",
    "geglu",
    "gelu",
    "group_norm",
    "layer_norm",
    "linear",
    "linear_add",
    "matmul",
    "mul",
    "narrow",
    "pad_bottom_right",
    "quick_gelu",
    "roundtrip",
    "scale",
    "silu",
    "softmax",
    "staging_dtype",
    "timestep_embedding",
    "transpose_last2",
    "upsample_nearest2x",
    "widen",
]


@contextlib.contextmanager
def staging_dtype(name):
    """Within the block, GPU ops take their float32 operands in dtype `name`."""
    previous = get_staging_dtype()
    set_staging_dtype(name)
    try:
        yield
    finally:
        set_staging_dtype(previous)
