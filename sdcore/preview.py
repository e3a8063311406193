"""Quick previews of a generation's latents, without running the VAE.

A linear map takes each latent pixel (its C channels and a constant 1) to the colour of the
block of pixels it decodes to. It is fitted by least squares, first on one decode of random
latents (so it fits whatever autoencoder the model has), then again after each finished
generation on that generation's last latents against its image: real latents fit the map
far better than random ones. The last 32 generations are kept so that one image's colours
do not take over the map.
"""

import numpy as np

# finished generations the map is fitted on, newest last
PREVIEW_FIT_HISTORY = 32


class PreviewMap:
    """The latent-to-colour map of one model's autoencoder."""

    def __init__(self, vae, latent_channels):
        self.vae = vae
        self.latent_channels = latent_channels
        self._map = None  # (C + 1, 3), fitted on first use
        self._data = []  # (feats, blocks) of the last finished generations

    def fit(self):
        """Fit the map on one decode of random latents, unless it is fitted already. It
        runs the VAE: call it while the VAE is free."""
        if self._map is None:
            f = self.vae.factor
            z = np.random.default_rng(0).standard_normal((1, self.latent_channels, 16, 16))
            z = z.astype(np.float32)
            img = self.vae.decode(z / self.vae.scaling_factor)[0]  # (3, 16f, 16f) in [-1, 1]
            blocks = img.reshape(3, 16, f, 16, f).mean(axis=(2, 4)).reshape(3, -1).T
            feats = np.concatenate([z[0].reshape(self.latent_channels, -1).T, np.ones((256, 1))], 1)
            self._map = np.linalg.lstsq(feats, blocks, rcond=None)[0]  # (C + 1, 3)

    def refit(self, latents, pixels):
        """Fit the map again with a finished generation added: its last latents (N, C, h, w)
        against its image (N, H, W, 3) uint8, averaged over the block each latent pixel
        decodes to."""
        f = self.vae.factor
        n, c, h, w = latents.shape
        img = pixels.astype(np.float32) / 127.5 - 1.0  # (N, H, W, 3)
        blocks = img.reshape(n, h, f, w, f, 3).mean(axis=(2, 4)).reshape(-1, 3)
        feats = latents.transpose(0, 2, 3, 1).reshape(-1, c)
        feats = np.concatenate([feats, np.ones((feats.shape[0], 1), np.float32)], 1)
        self._data = self._data[-(PREVIEW_FIT_HISTORY - 1) :] + [(feats, blocks)]
        self._map = np.linalg.lstsq(
            np.concatenate([a for a, _ in self._data]),
            np.concatenate([b for _, b in self._data]),
            rcond=None,
        )[0]

    def to_rgb(self, latents):
        """Latents (N, C, h, w) -> uint8 (N, H, W, 3) at the image size."""
        self.fit()
        lat = np.asarray(latents, dtype=np.float32)
        n, c, h, w = lat.shape
        feats = np.concatenate([lat.transpose(0, 2, 3, 1), np.ones((n, h, w, 1), np.float32)], -1)
        rgb = feats @ self._map.astype(np.float32)  # (N, h, w, 3) in about [-1, 1]
        rgb = np.clip((rgb + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)
        f = self.vae.factor
        return np.repeat(np.repeat(rgb, f, axis=1), f, axis=2)
