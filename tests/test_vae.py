"""The KL autoencoder against diffusers' AutoencoderKL with random weights."""

import time

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL

import sdcore
from sdcore import _C
from sdcore.vae import VAE

SMALL = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    block_out_channels=(32, 64),
    down_block_types=("DownEncoderBlock2D",) * 2,
    up_block_types=("UpDecoderBlock2D",) * 2,
    layers_per_block=1,
    norm_num_groups=16,
    sample_size=32,
)


def make_vae(seed, **config):
    torch.manual_seed(seed)
    vae = AutoencoderKL(**config).eval()
    with torch.no_grad():  # every parameter with noticeable random values
        for name, p in vae.named_parameters():
            if name.endswith("weight") and "norm" in name:
                p.copy_(1 + 0.2 * torch.randn_like(p))
            else:
                p.copy_(
                    torch.randn_like(p) * (0.5 / max(1, p[0].numel()) ** 0.5 if p.ndim > 1 else 0.1)
                )
    state = {k: v.detach().numpy().copy() for k, v in vae.state_dict().items()}
    return vae, state


def rel_err(ours, ref):
    return np.abs(ours - ref).max() / np.abs(ref).max()


@pytest.mark.parametrize("B,h,w", [(1, 8, 8), (2, 6, 10)])
def test_decode_matches_diffusers(rng, B, h, w):
    vae, state = make_vae(int(rng.integers(1 << 30)), **SMALL)
    ours = VAE(dict(vae.config), _C.Weights.from_arrays(state))
    z = rng.standard_normal((B, 4, h, w)).astype(np.float32)
    with torch.no_grad():
        ref = vae.decode(torch.from_numpy(z)).sample.numpy()
    assert rel_err(ours.decode(z), ref) <= 1e-4


def test_encode_matches_diffusers(rng):
    vae, state = make_vae(int(rng.integers(1 << 30)), **SMALL)
    ours = VAE(dict(vae.config), _C.Weights.from_arrays(state))
    x = rng.uniform(-1, 1, (2, 3, 32, 48)).astype(np.float32)
    with torch.no_grad():
        ref = vae.encode(torch.from_numpy(x)).latent_dist.mean.numpy()
    assert rel_err(ours.encode(x), ref) <= 1e-4


def test_conv_shaped_attention_weights(rng):
    """Old single-file checkpoints store the mid attention as 1x1 convs (C, C, 1, 1)."""
    vae, state = make_vae(int(rng.integers(1 << 30)), **SMALL)
    conv = {
        k: (v[:, :, None, None] if v.ndim == 2 and "attentions" in k else v)
        for k, v in state.items()
    }
    ours = VAE(dict(vae.config), _C.Weights.from_arrays(conv))
    z = rng.standard_normal((1, 4, 8, 8)).astype(np.float32)
    with torch.no_grad():
        ref = vae.decode(torch.from_numpy(z)).sample.numpy()
    assert rel_err(ours.decode(z), ref) <= 1e-4


def test_three_levels_and_two_layers(rng):
    config = dict(
        SMALL,
        block_out_channels=(16, 32, 32),
        layers_per_block=2,
        norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
    )
    vae, state = make_vae(int(rng.integers(1 << 30)), **config)
    ours = VAE(dict(vae.config), _C.Weights.from_arrays(state))
    z = rng.standard_normal((1, 4, 5, 7)).astype(np.float32)
    x = rng.uniform(-1, 1, (1, 3, 24, 16)).astype(np.float32)
    with torch.no_grad():
        ref_dec = vae.decode(torch.from_numpy(z)).sample.numpy()
        ref_enc = vae.encode(torch.from_numpy(x)).latent_dist.mean.numpy()
    assert rel_err(ours.decode(z), ref_dec) <= 1e-4
    assert rel_err(ours.encode(x), ref_enc) <= 1e-4


def test_sd_vae_config(rng):
    """SD 1.x's 83M-parameter VAE decoding a 16x16 latent (a 128x128 image)."""
    config = dict(
        SMALL,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        norm_num_groups=32,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        sample_size=512,
    )
    vae, state = make_vae(int(rng.integers(1 << 30)), **config)
    ours = VAE(dict(vae.config), _C.Weights.from_arrays(state))
    z = rng.standard_normal((1, 4, 16, 16)).astype(np.float32)
    t0 = time.perf_counter()
    with torch.no_grad():
        ref = vae.decode(torch.from_numpy(z)).sample.numpy()
    t1 = time.perf_counter()
    got = ours.decode(z)
    t2 = time.perf_counter()
    # for information only (pytest -s): the first call of ours also plans the arena
    print(f"\nSD VAE decode 1x4x16x16: sdcore {t2 - t1:.2f} s, diffusers {t1 - t0:.2f} s")
    assert rel_err(got, ref) <= 1e-4


def test_errors(rng):
    vae, state = make_vae(0, **SMALL)
    missing = dict(state)
    del missing["decoder.up_blocks.1.resnets.1.conv2.weight"]
    with pytest.raises(sdcore.FormatError, match=r"up_blocks\.1\.resnets\.1\.conv2\.weight"):
        VAE(dict(vae.config), _C.Weights.from_arrays(missing))
    bad = dict(state)
    bad["decoder.mid_block.attentions.0.to_q.weight"] = np.ones((64, 32), np.float32)
    with pytest.raises(sdcore.FormatError, match="to_q.weight.*shape"):
        VAE(dict(vae.config), _C.Weights.from_arrays(bad))
    with pytest.raises(ValueError, match="act_fn"):
        VAE(dict(vae.config, act_fn="gelu"), _C.Weights.from_arrays(state))
    ours = VAE(dict(vae.config), _C.Weights.from_arrays(state))
    with pytest.raises(ValueError, match=r"\(B, 4, H, W\)"):
        ours.decode(np.zeros((1, 3, 8, 8), np.float32))
    with pytest.raises(ValueError, match="multiples"):
        ours.encode(np.zeros((1, 3, 9, 8), np.float32))


def test_encode_moments_and_sample(rng):
    """logvar, and a sample drawn with given noise as latent_dist.sample(generator) draws it."""
    vae, state = make_vae(int(rng.integers(1 << 30)), **SMALL)
    ours = VAE(dict(vae.config), _C.Weights.from_arrays(state))
    x = rng.uniform(-1, 1, (2, 3, 16, 24)).astype(np.float32)
    seed = int(rng.integers(1 << 30))
    with torch.no_grad():
        dist = vae.encode(torch.from_numpy(x)).latent_dist
        ref_mean, ref_logvar = dist.mean.numpy(), dist.logvar.numpy()  # logvar clamped
        ref_sample = dist.sample(torch.Generator().manual_seed(seed)).numpy()
    noise = torch.randn(ref_mean.shape, generator=torch.Generator().manual_seed(seed)).numpy()
    mean, logvar = ours.encode_moments(x)
    assert rel_err(mean, ref_mean) <= 1e-4
    assert rel_err(np.clip(logvar, -30, 20), ref_logvar) <= 1e-4
    assert rel_err(ours.encode(x, noise=noise), ref_sample) <= 1e-4
    with pytest.raises(ValueError, match="noise"):
        ours.encode(x, noise=noise[:1])


def test_config_and_input_errors(rng):
    vae, state = make_vae(0, **SMALL)
    weights = _C.Weights.from_arrays(state)
    blocks = tuple(vae.config.block_out_channels)
    args = (3, 3, 4, blocks, 1, 16, True)
    _C.VAE(weights, *args)
    with pytest.raises(ValueError, match=r"block_out_channels\[1\]"):
        _C.VAE(weights, 3, 3, 4, (32, 2**33 + 64), 1, 16, True)
    with pytest.raises(ValueError, match="norm_num_groups"):
        _C.VAE(weights, 3, 3, 4, blocks, 1, 24, True)
    with pytest.raises(ValueError, match="layers_per_block"):
        _C.VAE(weights, 3, 3, 4, blocks, 0, 16, True)
    with pytest.raises(ValueError, match="block_out_channels"):
        _C.VAE(weights, 3, 3, 4, (), 1, 16, True)
    with pytest.raises(TypeError, match="Weights"):
        _C.VAE(state, *args)
    with pytest.raises(ValueError, match="block_out_channels"):
        VAE(dict(vae.config, block_out_channels=[32, -64]), weights)
    with pytest.raises(ValueError, match="up_block_types"):
        VAE(dict(vae.config, up_block_types=["AttnUpDecoderBlock2D"] * 2), weights)
    ours = VAE(dict(vae.config), weights)
    with pytest.raises(TypeError):
        ours.decode(np.zeros((1, 4, 8, 8), np.float64))
    with pytest.raises(ValueError):
        ours.decode(np.zeros((4, 8, 8), np.float32))
    with pytest.raises(ValueError, match="multiples"):
        ours.encode_moments(np.zeros((1, 3, 16, 15), np.float32))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        ours.encode(np.zeros((1, 4, 16, 16), np.float32))
