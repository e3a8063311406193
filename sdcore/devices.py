"""Where the models run: the CPU, or a GPU through the CUDA backend.

On the CPU every model computes in float32 and reads its weights where they lie (the
mmapped file). On a GPU the weights are copied once to device memory, converted to the
compute dtype (float16 by default), and the activations are in that dtype too.
"""

from sdcore import _C
from sdcore._C import UnsupportedError

DTYPES = ("float32", "float16", "bfloat16")


def compute_dtype(device, dtype=None):
    """The activation dtype for `device`: float32 on the CPU, float16 by default on a GPU."""
    if dtype is None:
        return "float32" if device == "cpu" else "float16"
    if dtype not in DTYPES:
        raise ValueError(f"dtype: must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if device == "cpu" and dtype != "float32":
        raise ValueError(f"dtype: the CPU computes in float32, got {dtype!r}")
    return dtype


def place_weights(weights, device, dtype):
    """The weights as the model on `device` reads them: as they are on the CPU, a device
    copy in `dtype` on a GPU."""
    if device == "cpu" or weights.device == device:
        return weights
    return weights.to(device, dtype)


def require_cuda():
    """Raise UnsupportedError saying why, when no GPU can be used."""
    ok, reason = _C.cuda_available()
    if not ok:
        raise UnsupportedError(f"device 'cuda' is not available: {reason}")
