"""The CLIP text encoder, built from a transformers CLIPTextConfig dict and a Weights set."""

import numpy as np

from sdcore import _C
from sdcore.devices import compute_dtype, place_weights

# CLIPTextConfig's defaults (transformers), for keys a config.json leaves out.
DEFAULTS = {
    "vocab_size": 49408,
    "hidden_size": 512,
    "intermediate_size": 2048,
    "num_hidden_layers": 12,
    "num_attention_heads": 8,
    "max_position_embeddings": 77,
    "layer_norm_eps": 1e-5,
    "hidden_act": "quick_gelu",
}
ACTIVATIONS = {"quick_gelu": True, "gelu": False}


def _int_field(config, key):
    value = config.get(key, DEFAULTS[key])
    # the engine holds sizes in C ints
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value < 2**31:
        raise ValueError(
            f"text encoder config: '{key}' must be a positive integer below 2**31, got {value!r}"
        )
    return value


INT_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "max_position_embeddings",
)


def engine_config(config):
    """The config arguments of ``_C.ClipTextModel`` for a CLIPTextConfig dict; a
    ValueError names the first bad field."""
    if not isinstance(config, dict):
        raise TypeError("text encoder config must be a dict")
    ints = {key: _int_field(config, key) for key in INT_FIELDS}
    eps = config.get("layer_norm_eps", DEFAULTS["layer_norm_eps"])
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < float("inf"):
        raise ValueError(
            f"text encoder config: 'layer_norm_eps' must be finite and positive, got {eps!r}"
        )
    act = config.get("hidden_act", DEFAULTS["hidden_act"])
    if act not in ACTIVATIONS:
        raise ValueError(
            f"text encoder config: 'hidden_act' must be one of {sorted(ACTIVATIONS)}, got {act!r}"
        )
    if ints["hidden_size"] % ints["num_attention_heads"]:
        raise ValueError("text encoder config: 'num_attention_heads' must divide 'hidden_size'")
    return dict(ints, layer_norm_eps=float(eps), quick_gelu=ACTIVATIONS[act])


def tensors(config):
    """Every tensor of the CLIPTextModel with this config, as the engine declares it:
    [(name under text_model., shape, required)]."""
    args = engine_config(config)
    return _C.clip_tensors(**{key: args[key] for key in INT_FIELDS})


class TextEncoder:
    """CLIPTextModel in sdcore: ``encode(ids)`` gives the (B, T, hidden) last hidden state
    after the final layer norm, as Stable Diffusion conditions on it."""

    def __init__(self, config, weights, device="cpu", dtype=None):
        args = engine_config(config)
        self.config = dict(config)
        self.hidden_size = args["hidden_size"]
        self.vocab_size = args["vocab_size"]
        self.max_length = args["max_position_embeddings"]
        self.num_layers = args["num_hidden_layers"]
        self.device = device
        self.dtype = compute_dtype(device, dtype)
        self._model = _C.ClipTextModel(
            place_weights(weights, device, self.dtype),
            **args,
            device=device,
            dtype=self.dtype,
        )

    def encode(self, ids, clip_skip=1):
        """ids (B, T) integers -> float32 (B, T, hidden_size)."""
        ids = np.asarray(ids)
        if ids.ndim == 1:
            ids = ids[None]
        if ids.dtype.kind not in "iu":
            raise TypeError(f"ids must be integers, got {ids.dtype}")
        # checked before the cast to int32, which would wrap a large id onto a valid one
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            bad = ids[(ids < 0) | (ids >= self.vocab_size)].flat[0]
            raise ValueError(f"ids: id {bad} is outside [0, {self.vocab_size})")
        return self._model.encode(np.ascontiguousarray(ids, dtype=np.int32), clip_skip=clip_skip)
