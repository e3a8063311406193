"""The KL autoencoder, built from a diffusers AutoencoderKL config dict and a Weights set."""

import numpy as np

from sdcore import _C
from sdcore.devices import compute_dtype, place_weights

# AutoencoderKL fields that choose an architecture sdcore does not implement: each must
# hold the value Stable Diffusion uses (or be absent).
FIXED = {
    "act_fn": "silu",
    "use_quant_conv": True,
    "use_post_quant_conv": True,
}
BLOCK_TYPES = {"down_block_types": "DownEncoderBlock2D", "up_block_types": "UpDecoderBlock2D"}


def _positive_int(config, key, default):
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"VAE config: '{key}' must be a positive integer, got {value!r}")
    return value


def engine_config(config):
    """The arguments of ``_C.VAE`` and ``_C.vae_tensors`` for an AutoencoderKL config dict;
    a ValueError names the first bad field."""
    if not isinstance(config, dict):
        raise TypeError("VAE config must be a dict")
    for key, want in FIXED.items():
        if key in config and config[key] != want:
            raise ValueError(f"VAE config: '{key}' must be {want!r}, got {config[key]!r}")
    blocks = config.get("block_out_channels", (64,))
    if not isinstance(blocks, (list, tuple)) or not blocks:
        raise ValueError("VAE config: 'block_out_channels' must be a non-empty list")
    for i, c in enumerate(blocks):
        if isinstance(c, bool) or not isinstance(c, int) or c < 1:
            raise ValueError(f"VAE config: 'block_out_channels[{i}]' must be a positive int")
    for key, want in BLOCK_TYPES.items():
        types = config.get(key, [want] * len(blocks))
        if list(types) != [want] * len(blocks):
            raise ValueError(f"VAE config: '{key}' must be {len(blocks)} x {want!r}, got {types!r}")
    return dict(
        in_channels=_positive_int(config, "in_channels", 3),
        out_channels=_positive_int(config, "out_channels", 3),
        latent_channels=_positive_int(config, "latent_channels", 4),
        block_out_channels=tuple(blocks),
        layers_per_block=_positive_int(config, "layers_per_block", 1),
        norm_num_groups=_positive_int(config, "norm_num_groups", 32),
        mid_attention=bool(config.get("mid_block_add_attention", True)),
    )


def tensors(config, with_encoder=True):
    """Every tensor of the AutoencoderKL with this config, as the engine declares it:
    [(diffusers name, shape, required)]."""
    return _C.vae_tensors(**engine_config(config), with_encoder=with_encoder)


class VAE:
    """``decode(z)`` and ``encode(image)`` as AutoencoderKL does, with the scaling
    factor left to the caller (decode wants z / scaling_factor)."""

    def __init__(self, config, weights, device="cpu", with_encoder=True, dtype=None):
        args = engine_config(config)
        self.config = dict(config)
        self.scaling_factor = float(config.get("scaling_factor", 0.18215))
        self.factor = 2 ** (len(args["block_out_channels"]) - 1)
        self.device = device
        self.dtype = compute_dtype(device, dtype)
        self._model = _C.VAE(
            place_weights(weights, device, self.dtype),
            **args,
            with_encoder=with_encoder,
            device=device,
            dtype=self.dtype,
        )

    def decode(self, z):
        """z (B, latent, h, w), already divided by scaling_factor -> (B, 3, h*f, w*f)."""
        return self._model.decode(z)

    def encode(self, image, noise=None):
        """image (B, 3, H, W) in [-1, 1] -> the latent distribution's mean (unscaled).

        With ``noise`` (float32, the mean's shape, standard normal) it returns a sample
        ``mean + exp(0.5 * clip(logvar, -30, 20)) * noise`` instead, as diffusers'
        ``latent_dist.sample(generator)`` draws it from ``randn`` of that generator."""
        if noise is None:
            return self._model.encode(image)
        mean, logvar = self._model.encode_moments(image)
        noise = np.asarray(noise)
        if noise.dtype != np.float32 or noise.shape != mean.shape:
            raise ValueError(
                f"VAE.encode: noise must be float32 of shape {mean.shape}, "
                f"got {noise.dtype} {noise.shape}"
            )
        std = np.exp(0.5 * np.clip(logvar, -30.0, 20.0))
        return mean + std * noise

    def encode_moments(self, image):
        """image (B, 3, H, W) in [-1, 1] -> (mean, logvar) of the latent distribution,
        each (B, latent, H/f, W/f); logvar as the encoder outputs it (unclamped)."""
        return self._model.encode_moments(image)
