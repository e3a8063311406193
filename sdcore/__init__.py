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
    "GenerationRequest",
    "Limits",
    "LIMITS",
    "ModelRules",
    "Pipeline",
    "ValidationError",
    "encode_prompt",
    "load_model",
    "tokenize",
    "ops",
    "random",
    "samplers",
]

from sdcore import ops, random, samplers  # noqa: E402
from sdcore.checkpoint import Model, load_model  # noqa: E402
from sdcore.pipeline import GeneratedImage, Pipeline  # noqa: E402
from sdcore.request import (  # noqa: E402
    LIMITS,
    GenerationRequest,
    Limits,
    ModelRules,
    ValidationError,
)
from sdcore.tokenizer import tokenize  # noqa: E402


def encode_prompt(model, text, clip_skip=1):
    """The CLIP conditioning of `text` for a model: float32 (1, 77 * k, hidden).

    `model` is a Pipeline, or a Model from load_model (its text encoder and tokenizer
    are built for the call). Emphasis and long prompts follow sdcore.prompt's rules."""
    from sdcore.prompt import encode_prompt as _encode
    from sdcore.text_encoder import TextEncoder
    from sdcore.tokenizer import ClipTokenizer

    if isinstance(model, Pipeline):
        return model.encode_prompt(text, clip_skip=clip_skip)
    encoder = TextEncoder(model.text_encoder.config, model.text_encoder.weights)
    return _encode(encoder, ClipTokenizer.load(model.tokenizer_dir), text, clip_skip=clip_skip)
