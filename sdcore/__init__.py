"""sdcore: Stable Diffusion text-to-image in C and CUDA.

The engine lives in the extension ``sdcore._C``; this package adds the Python API
around it. PyTorch is never imported here.
"""

import ctypes
import os

__version__ = "0.1.0"


def _preload_blas():
    """Load OpenBLAS from the scipy-openblas32 wheel before the extension needs it.

    The extension's rpath points at it for normal installs; loading it here by path
    also covers in-place and editable builds, where that relative path does not hold.
    """
    try:
        import scipy_openblas32
    except ImportError as e:  # pragma: no cover - a dependency of the package
        raise ImportError("sdcore needs the scipy-openblas32 package: pip install sdcore") from e
    lib_dir = scipy_openblas32.get_lib_dir()
    path = os.path.join(lib_dir, f"lib{scipy_openblas32.get_library()}.so")
    if os.path.exists(path):
        ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)


# Idle OpenMP threads sleep rather than spin: the engine alternates OpenMP loops with
# OpenBLAS calls that have their own threads, and spinning workers would take the
# cores from them. Only a default: a user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
_preload_blas()

from sdcore import _C  # noqa: E402
from sdcore._C import (  # noqa: E402
    CancelledError,
    DeviceError,
    FormatError,
    SdcoreError,
    UnsupportedError,
)


def cuda_available():
    """(available, reason): whether device='cuda' can be used here, and if not, why."""
    return _C.cuda_available()


def cuda_devices():
    """The CUDA devices visible to sdcore (an empty list without a GPU or driver)."""
    return _C.cuda_devices()


__all__ = [
    "CancelledError",
    "DeviceError",
    "FormatError",
    "Model",
    "SdcoreError",
    "UnsupportedError",
    "cuda_available",
    "cuda_devices",
    "GeneratedImage",
    "Pipeline",
    "load_model",
    "ops",
    "random",
    "samplers",
]

from sdcore import ops, random, samplers  # noqa: E402
from sdcore.checkpoint import Model, load_model  # noqa: E402
from sdcore.pipeline import GeneratedImage, Pipeline  # noqa: E402
