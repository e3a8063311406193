"""Checkpoints: what a model file or folder holds, as configs and named weights.

``load_model(path)`` reads either layout users download:

- a single ``.safetensors`` file with the original CompVis names
  (``model.diffusion_model.*``, ``first_stage_model.*``,
  ``cond_stage_model.transformer.text_model.*``), whose configs are inferred from tensor
  names and shapes;
- a diffusers folder (``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``,
  ``scheduler/``), whose configs are read from each ``config.json``.

Either way the text encoder, UNet and VAE come out the same: a config dict with the
transformers ``CLIPTextConfig`` / diffusers ``UNet2DConditionModel`` / ``AutoencoderKL``
keys, and an ``sdcore._C.Weights`` whose tensor names are those models' state-dict
names (``text_model.encoder.layers.0.self_attn.q_proj.weight``,
``down_blocks.0.resnets.0.conv1.weight``, ``decoder.up_blocks.0.resnets.0.norm1.weight``)
with the shapes those models have. A single file's tensors are renamed without a copy
(``Weights.subset``); every tensor the config calls for is checked to be present with
its shape before the model is returned.

VAE attention: CompVis stores the mid-block attention projections (q, k, v,
proj_out) as 1x1 convolutions, (C, C, 1, 1); diffusers as linear layers, (C, C). The
memory is the same, so the single-file loader exposes them as (C, C) views under the
diffusers names (``to_q.weight`` ...): the VAE code reads ``to_q/to_k/to_v/to_out.0``
as linear weights, (C, C), from either layout. Old diffusers folders that name them
``query/key/value/proj_attn`` are exposed under the new names the same way.

The model family is decided in one place (``detect_family`` for single files,
``detect_family_from_configs`` for folders); SD 2.x and SDXL are additions there and
in ``FAMILIES``, not changes to the layout code.

No torch here: shapes come from the configs by the rules of the diffusers and
transformers model classes, written out below.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import NamedTuple

from sdcore import _C
from sdcore._C import FormatError, UnsupportedError

__all__ = [
    "Component",
    "Model",
    "detect_family",
    "detect_family_from_configs",
    "ldm_names",
    "load_model",
    "text_encoder_params",
    "unet_params",
    "vae_params",
]

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."

# ------------------------------------------------------------------ results ------


@dataclass
class Component:
    """One network of the pipeline: its config and its weights (diffusers names)."""

    config: dict
    weights: _C.Weights

    def __repr__(self):
        return f"Component({len(self.weights)} tensors, config keys {sorted(self.config)[:6]}...)"


@dataclass
class Model:
    """A loaded checkpoint: text encoder, UNet and VAE, plus what the pipeline needs."""

    name: str
    family: str
    text_encoder: Component
    unet: Component
    vae: Component
    scheduler_config: dict
    tokenizer_dir: str | None = None
    path: str = ""
    metadata: dict = field(default_factory=dict)


# ------------------------------------------------------------------ families -----

# Defaults of Stable Diffusion 1.x (the configs of the SD 1.5 release): values that
# cannot be read from tensor shapes, and what a folder's config.json may leave out.
SD1_UNET_CONFIG = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "center_input_sample": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    "only_cross_attention": False,
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "dropout": 0.0,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "norm_eps": 1e-05,
    "cross_attention_dim": 768,
    "transformer_layers_per_block": 1,
    "encoder_hid_dim": None,
    "encoder_hid_dim_type": None,
    # diffusers' name for the number of heads in SD 1.x (8 everywhere, head size C / 8);
    # weights do not show it, so it is the family's constant
    "attention_head_dim": 8,
    "num_attention_heads": None,
    "dual_cross_attention": False,
    "use_linear_projection": False,
    "class_embed_type": None,
    "addition_embed_type": None,
    "num_class_embeds": None,
    "upcast_attention": False,
    "resnet_time_scale_shift": "default",
    "time_embedding_type": "positional",
    "time_embedding_dim": None,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
}

SD1_VAE_CONFIG = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "act_fn": "silu",
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 512,
    "scaling_factor": 0.18215,
    "shift_factor": None,
    "latents_mean": None,
    "latents_std": None,
    "force_upcast": True,
    "use_quant_conv": True,
    "use_post_quant_conv": True,
    "mid_block_add_attention": True,
}

SD1_TEXT_CONFIG = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "projection_dim": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-05,
    "attention_dropout": 0.0,
    "initializer_range": 0.02,
    "initializer_factor": 1.0,
    "pad_token_id": 1,
    "bos_token_id": 0,
    "eos_token_id": 2,
}

SD1_SCHEDULER_CONFIG = {
    "_class_name": "PNDMScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "trained_betas": None,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "prediction_type": "epsilon",
}

# CLIP ViT-L/14 (SD 1.x's text encoder) has 64-wide attention heads
SD1_TEXT_HEAD_SIZE = 64


@dataclass(frozen=True)
class Family:
    name: str
    unet: dict
    vae: dict
    text_encoder: dict
    scheduler: dict
    text_head_size: int


FAMILIES = {
    "sd1": Family(
        "sd1",
        SD1_UNET_CONFIG,
        SD1_VAE_CONFIG,
        SD1_TEXT_CONFIG,
        SD1_SCHEDULER_CONFIG,
        SD1_TEXT_HEAD_SIZE,
    ),
}


def detect_family(names) -> str:
    """The family of a single-file checkpoint from its tensor names."""
    names = set(names)

    def has(prefix):
        return any(n.startswith(prefix) for n in names)

    if has("conditioner.embedders.1.model."):
        raise UnsupportedError("SDXL checkpoints are not supported yet (found conditioner.*)")
    if has("cond_stage_model.model.transformer."):
        raise UnsupportedError(
            "SD 2.x checkpoints (OpenCLIP text encoder, cond_stage_model.model.*) are not "
            "supported yet"
        )
    if has(CLIP_PREFIX) and has(UNET_PREFIX):
        return "sd1"
    missing = [p for p in (UNET_PREFIX, CLIP_PREFIX, VAE_PREFIX) if not has(p)]
    raise FormatError(
        "not a Stable Diffusion 1.x checkpoint: no tensors named "
        + ", ".join(f"{p}*" for p in missing)
    )


def detect_family_from_configs(folder, configs) -> str:
    """The family of a diffusers folder from its component configs."""
    if os.path.isdir(os.path.join(folder, "text_encoder_2")):
        raise UnsupportedError(f"{folder}: SDXL folders (text_encoder_2/) are not supported yet")
    text = configs["text_encoder"]
    if text.get("hidden_act") == "gelu" or configs["unet"].get("use_linear_projection"):
        raise UnsupportedError(
            f"{folder}: SD 2.x folders (OpenCLIP text encoder, linear projections) are not "
            "supported yet"
        )
    return "sd1"


# ------------------------------------------------------------------ layouts ------


class Param(NamedTuple):
    """One tensor of a model: diffusers name and shape, and its CompVis counterpart."""

    name: str
    shape: tuple
    ldm: str
    ldm_shape: tuple


def _linear(out, name, ldm, n_out, n_in, bias=True):
    out.append(Param(f"{name}.weight", (n_out, n_in), f"{ldm}.weight", (n_out, n_in)))
    if bias:
        out.append(Param(f"{name}.bias", (n_out,), f"{ldm}.bias", (n_out,)))


def _conv(out, name, ldm, n_out, n_in, k):
    out.append(Param(f"{name}.weight", (n_out, n_in, k, k), f"{ldm}.weight", (n_out, n_in, k, k)))
    out.append(Param(f"{name}.bias", (n_out,), f"{ldm}.bias", (n_out,)))


def _norm(out, name, ldm, c):
    out.append(Param(f"{name}.weight", (c,), f"{ldm}.weight", (c,)))
    out.append(Param(f"{name}.bias", (c,), f"{ldm}.bias", (c,)))


def _conv_as_linear(out, name, ldm, n_out, n_in):
    """A diffusers linear layer that CompVis stores as a 1x1 conv."""
    out.append(Param(f"{name}.weight", (n_out, n_in), f"{ldm}.weight", (n_out, n_in, 1, 1)))
    out.append(Param(f"{name}.bias", (n_out,), f"{ldm}.bias", (n_out,)))


def _as_list(value, n, key):
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise FormatError(f"config '{key}' has {len(value)} entries, expected {n}")
        return list(value)
    return [value] * n


def _unet_resnet(out, name, ldm, c_in, c_out, temb):
    _norm(out, f"{name}.norm1", f"{ldm}.in_layers.0", c_in)
    _conv(out, f"{name}.conv1", f"{ldm}.in_layers.2", c_out, c_in, 3)
    _linear(out, f"{name}.time_emb_proj", f"{ldm}.emb_layers.1", c_out, temb)
    _norm(out, f"{name}.norm2", f"{ldm}.out_layers.0", c_out)
    _conv(out, f"{name}.conv2", f"{ldm}.out_layers.3", c_out, c_out, 3)
    if c_in != c_out:
        _conv(out, f"{name}.conv_shortcut", f"{ldm}.skip_connection", c_out, c_in, 1)


def _unet_transformer(out, name, ldm, c, cross, depth, linear_proj):
    """Transformer2DModel; CompVis' SpatialTransformer uses the same inner names."""
    _norm(out, f"{name}.norm", f"{ldm}.norm", c)
    proj = _linear if linear_proj else (lambda o, n, m, a, b: _conv(o, n, m, a, b, 1))
    proj(out, f"{name}.proj_in", f"{ldm}.proj_in", c, c)
    for k in range(depth):
        n, m = f"{name}.transformer_blocks.{k}", f"{ldm}.transformer_blocks.{k}"
        for attn, kv in (("attn1", c), ("attn2", cross)):
            _linear(out, f"{n}.{attn}.to_q", f"{m}.{attn}.to_q", c, c, bias=False)
            _linear(out, f"{n}.{attn}.to_k", f"{m}.{attn}.to_k", c, kv, bias=False)
            _linear(out, f"{n}.{attn}.to_v", f"{m}.{attn}.to_v", c, kv, bias=False)
            _linear(out, f"{n}.{attn}.to_out.0", f"{m}.{attn}.to_out.0", c, c)
        for i in (1, 2, 3):
            _norm(out, f"{n}.norm{i}", f"{m}.norm{i}", c)
        _linear(out, f"{n}.ff.net.0.proj", f"{m}.ff.net.0.proj", 8 * c, c)  # GEGLU: 2 x 4c
        _linear(out, f"{n}.ff.net.2", f"{m}.ff.net.2", c, 4 * c)
    proj(out, f"{name}.proj_out", f"{ldm}.proj_out", c, c)


UNET_DOWN_TYPES = {"CrossAttnDownBlock2D": True, "DownBlock2D": False}
UNET_UP_TYPES = {"CrossAttnUpBlock2D": True, "UpBlock2D": False}
UNET_MID_TYPES = {"UNetMidBlock2DCrossAttn": True, None: False}


def _unet_check_supported(cfg):
    for key, allowed in (("down_block_types", UNET_DOWN_TYPES), ("up_block_types", UNET_UP_TYPES)):
        for t in cfg[key]:
            if t not in allowed:
                raise UnsupportedError(f"UNet block type '{t}' ({key}) is not supported")
    if cfg["mid_block_type"] not in UNET_MID_TYPES:
        raise UnsupportedError(f"UNet mid block type '{cfg['mid_block_type']}' is not supported")
    for key, ok in (
        ("class_embed_type", None),
        ("addition_embed_type", None),
        ("num_class_embeds", None),
        ("encoder_hid_dim", None),
        ("time_embedding_type", "positional"),
        ("resnet_time_scale_shift", "default"),
        ("dual_cross_attention", False),
        ("only_cross_attention", False),
    ):
        if cfg.get(key, ok) != ok:
            raise UnsupportedError(f"UNet config '{key}' = {cfg[key]!r} is not supported")
    if isinstance(cfg["layers_per_block"], (list, tuple)):
        raise UnsupportedError("UNet with a different layers_per_block per block")


def unet_params(cfg) -> list[Param]:
    """Every tensor of a UNet2DConditionModel with this config (SD 1.x/2.x blocks)."""
    _unet_check_supported(cfg)
    ch = list(cfg["block_out_channels"])
    n, layers = len(ch), cfg["layers_per_block"]
    cross = cfg["cross_attention_dim"]
    depth = _as_list(cfg["transformer_layers_per_block"], n, "transformer_layers_per_block")
    linear_proj = cfg["use_linear_projection"]
    down_attn = [UNET_DOWN_TYPES[t] for t in cfg["down_block_types"]]
    up_attn = [UNET_UP_TYPES[t] for t in cfg["up_block_types"]]
    if len(down_attn) != n or len(up_attn) != n:
        raise FormatError("UNet config: block type lists and block_out_channels differ in length")
    temb = cfg.get("time_embedding_dim") or 4 * ch[0]
    k_in, k_out = cfg["conv_in_kernel"], cfg["conv_out_kernel"]
    out = []
    _conv(out, "conv_in", "input_blocks.0.0", ch[0], cfg["in_channels"], k_in)
    _linear(out, "time_embedding.linear_1", "time_embed.0", temb, ch[0])
    _linear(out, "time_embedding.linear_2", "time_embed.2", temb, temb)

    c_prev = ch[0]
    for i, c in enumerate(ch):
        for j in range(layers):
            ldm = f"input_blocks.{1 + i * (layers + 1) + j}"
            name = f"down_blocks.{i}"
            _unet_resnet(out, f"{name}.resnets.{j}", f"{ldm}.0", c_prev if j == 0 else c, c, temb)
            if down_attn[i]:
                _unet_transformer(
                    out, f"{name}.attentions.{j}", f"{ldm}.1", c, cross, depth[i], linear_proj
                )
        if i < n - 1:
            ldm = f"input_blocks.{(i + 1) * (layers + 1)}.0.op"
            _conv(out, f"down_blocks.{i}.downsamplers.0.conv", ldm, c, c, 3)
        c_prev = c

    c = ch[-1]
    if cfg["mid_block_type"] is not None:
        _unet_resnet(out, "mid_block.resnets.0", "middle_block.0", c, c, temb)
        _unet_transformer(
            out, "mid_block.attentions.0", "middle_block.1", c, cross, depth[-1], linear_proj
        )
        _unet_resnet(out, "mid_block.resnets.1", "middle_block.2", c, c, temb)

    rev = ch[::-1]
    rev_depth = depth[::-1]
    c_out = rev[0]
    for i in range(n):
        c_prev_out, c_out = c_out, rev[i]
        c_in = rev[min(i + 1, n - 1)]
        for j in range(layers + 1):
            ldm = f"output_blocks.{i * (layers + 1) + j}"
            name = f"up_blocks.{i}"
            skip = c_in if j == layers else c_out
            res_in = (c_prev_out if j == 0 else c_out) + skip
            _unet_resnet(out, f"{name}.resnets.{j}", f"{ldm}.0", res_in, c_out, temb)
            if up_attn[i]:
                _unet_transformer(
                    out,
                    f"{name}.attentions.{j}",
                    f"{ldm}.1",
                    c_out,
                    cross,
                    rev_depth[i],
                    linear_proj,
                )
        if i < n - 1:
            ldm = f"output_blocks.{i * (layers + 1) + layers}.{2 if up_attn[i] else 1}.conv"
            _conv(out, f"up_blocks.{i}.upsamplers.0.conv", ldm, c_out, c_out, 3)

    _norm(out, "conv_norm_out", "out.0", ch[0])
    _conv(out, "conv_out", "out.2", cfg["out_channels"], ch[0], k_out)
    return out


def _vae_resnet(out, name, ldm, c_in, c_out):
    _norm(out, f"{name}.norm1", f"{ldm}.norm1", c_in)
    _conv(out, f"{name}.conv1", f"{ldm}.conv1", c_out, c_in, 3)
    _norm(out, f"{name}.norm2", f"{ldm}.norm2", c_out)
    _conv(out, f"{name}.conv2", f"{ldm}.conv2", c_out, c_out, 3)
    if c_in != c_out:
        _conv(out, f"{name}.conv_shortcut", f"{ldm}.nin_shortcut", c_out, c_in, 1)


def _vae_mid(out, name, ldm, c, attention):
    _vae_resnet(out, f"{name}.resnets.0", f"{ldm}.block_1", c, c)
    if attention:
        a, m = f"{name}.attentions.0", f"{ldm}.attn_1"
        _norm(out, f"{a}.group_norm", f"{m}.norm", c)
        for new, old in (("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out")):
            _conv_as_linear(out, f"{a}.{new}", f"{m}.{old}", c, c)
    _vae_resnet(out, f"{name}.resnets.1", f"{ldm}.block_2", c, c)


def vae_params(cfg) -> list[Param]:
    """Every tensor of an AutoencoderKL with this config."""
    for key, want in (
        ("down_block_types", "DownEncoderBlock2D"),
        ("up_block_types", "UpDecoderBlock2D"),
    ):
        for t in cfg[key]:
            if t != want:
                raise UnsupportedError(f"VAE block type '{t}' ({key}) is not supported")
    ch = list(cfg["block_out_channels"])
    n, layers, lat = len(ch), cfg["layers_per_block"], cfg["latent_channels"]
    attention = cfg.get("mid_block_add_attention", True)
    out = []
    _conv(out, "encoder.conv_in", "encoder.conv_in", ch[0], cfg["in_channels"], 3)
    c_prev = ch[0]
    for i, c in enumerate(ch):
        for j in range(layers):
            _vae_resnet(
                out,
                f"encoder.down_blocks.{i}.resnets.{j}",
                f"encoder.down.{i}.block.{j}",
                c_prev if j == 0 else c,
                c,
            )
        if i < n - 1:
            name, ldm = (
                f"encoder.down_blocks.{i}.downsamplers.0.conv",
                f"encoder.down.{i}.downsample.conv",
            )
            _conv(out, name, ldm, c, c, 3)
        c_prev = c
    _vae_mid(out, "encoder.mid_block", "encoder.mid", ch[-1], attention)
    _norm(out, "encoder.conv_norm_out", "encoder.norm_out", ch[-1])
    _conv(out, "encoder.conv_out", "encoder.conv_out", 2 * lat, ch[-1], 3)
    if cfg.get("use_quant_conv", True):
        _conv(out, "quant_conv", "quant_conv", 2 * lat, 2 * lat, 1)
    if cfg.get("use_post_quant_conv", True):
        _conv(out, "post_quant_conv", "post_quant_conv", lat, lat, 1)

    rev = ch[::-1]
    _conv(out, "decoder.conv_in", "decoder.conv_in", rev[0], lat, 3)
    _vae_mid(out, "decoder.mid_block", "decoder.mid", rev[0], attention)
    c_prev = rev[0]
    for i, c in enumerate(rev):
        ldm = f"decoder.up.{n - 1 - i}"  # CompVis counts decoder levels from the top
        for j in range(layers + 1):
            _vae_resnet(
                out,
                f"decoder.up_blocks.{i}.resnets.{j}",
                f"{ldm}.block.{j}",
                c_prev if j == 0 else c,
                c,
            )
        if i < n - 1:
            _conv(out, f"decoder.up_blocks.{i}.upsamplers.0.conv", f"{ldm}.upsample.conv", c, c, 3)
        c_prev = c
    _norm(out, "decoder.conv_norm_out", "decoder.norm_out", ch[0])
    _conv(out, "decoder.conv_out", "decoder.conv_out", cfg["out_channels"], ch[0], 3)
    return out


def text_encoder_params(cfg) -> list[Param]:
    """Every tensor of a transformers CLIPTextModel with this config, under the names
    of transformers 4 (``text_model.``...), which checkpoints and folders use;
    transformers 5 drops the ``text_model.`` wrapper from its state dict.

    CompVis stores the same transformers module, so the names only gain a prefix."""
    d, inner = cfg["hidden_size"], cfg["intermediate_size"]
    out = []
    e = "text_model.embeddings"
    out.append(Param(f"{e}.token_embedding.weight", (cfg["vocab_size"], d), "", ()))
    out.append(Param(f"{e}.position_embedding.weight", (cfg["max_position_embeddings"], d), "", ()))
    for k in range(cfg["num_hidden_layers"]):
        layer = f"text_model.encoder.layers.{k}"
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            _linear(out, f"{layer}.self_attn.{proj}", "", d, d)
        _norm(out, f"{layer}.layer_norm1", "", d)
        _linear(out, f"{layer}.mlp.fc1", "", inner, d)
        _linear(out, f"{layer}.mlp.fc2", "", d, inner)
        _norm(out, f"{layer}.layer_norm2", "", d)
    _norm(out, "text_model.final_layer_norm", "", d)
    return [p._replace(ldm=p.name, ldm_shape=p.shape) for p in out]


def ldm_names(component, config) -> dict:
    """{diffusers name: (CompVis name, CompVis shape)} of a component, the CompVis names
    with their full single-file prefix."""
    if component == "unet":
        prefix, params = UNET_PREFIX, unet_params(config)
    elif component == "vae":
        prefix, params = VAE_PREFIX, vae_params(config)
    elif component == "text_encoder":
        prefix, params = CLIP_PREFIX, text_encoder_params(config)
    else:
        raise ValueError(f"unknown component {component!r}")
    return {p.name: (prefix + p.ldm, p.ldm_shape) for p in params}


# ------------------------------------------------------------------ inference ----


class _Names:
    """Tensor names and shapes of a weight set under one prefix."""

    def __init__(self, weights, prefix, what, source):
        self.weights, self.prefix, self.what, self.source = weights, prefix, what, source
        self.names = {n[len(prefix) :] for n in weights.names() if n.startswith(prefix)}

    def __contains__(self, name):
        return name in self.names

    def shape(self, name, ndim):
        """The shape of prefix + name, which must have `ndim` dims (an int or a tuple)."""
        if name not in self.names:
            raise FormatError(
                f"{self.source}: tensor '{self.prefix}{name}' is missing; it is needed to "
                f"read the {self.what}'s config"
            )
        shape = self.weights.info(self.prefix + name)[1]
        if len(shape) not in (ndim if isinstance(ndim, tuple) else (ndim,)):
            raise FormatError(
                f"{self.source}: tensor '{self.prefix}{name}' has shape {shape}, which does "
                f"not fit a {self.what}"
            )
        return shape

    def has_prefix(self, prefix):
        return any(n.startswith(prefix) for n in self.names)

    def indices(self, pattern_prefix):
        """Distinct integers k of names starting with pattern_prefix + 'k.'."""
        out = set()
        for n in self.names:
            if n.startswith(pattern_prefix):
                head = n[len(pattern_prefix) :].split(".", 1)[0]
                if head.isdigit():
                    out.add(int(head))
        return sorted(out)


def _infer_unet_config(names: _Names, family: Family) -> dict:
    cfg = dict(family.unet)
    n_input = len(names.indices("input_blocks."))
    downsamplers = [
        k for k in names.indices("input_blocks.") if f"input_blocks.{k}.0.op.weight" in names
    ]
    if downsamplers:
        per_block = downsamplers[0]  # layers_per_block + 1
        n = n_input // per_block
        if n_input % per_block or downsamplers != [(i + 1) * per_block for i in range(n - 1)]:
            raise FormatError(f"{names.source}: the UNet's input_blocks do not form a UNet")
    else:
        n, per_block = 1, n_input
    layers = per_block - 1
    if layers < 1:
        raise FormatError(f"{names.source}: the UNet has no resnets in its input blocks")
    first = [1 + i * per_block for i in range(n)]
    cfg["layers_per_block"] = layers
    cfg["block_out_channels"] = [
        names.shape(f"input_blocks.{k}.0.out_layers.3.weight", 4)[0] for k in first
    ]
    conv_in = names.shape("input_blocks.0.0.weight", 4)
    conv_out = names.shape("out.2.weight", 4)
    cfg["in_channels"], cfg["conv_in_kernel"] = conv_in[1], conv_in[2]
    cfg["out_channels"], cfg["conv_out_kernel"] = conv_out[0], conv_out[2]
    temb = names.shape("time_embed.0.weight", 2)[0]
    cfg["time_embedding_dim"] = None if temb == 4 * cfg["block_out_channels"][0] else temb

    # a block has attention when anything is stored under it: a partial one is then
    # reported as missing tensors rather than read as no attention
    down_attn = [names.has_prefix(f"input_blocks.{k}.1.") for k in first]
    up_attn = [names.has_prefix(f"output_blocks.{i * per_block}.1.") for i in range(n)]
    mid_attn = names.has_prefix("middle_block.1.")
    cfg["down_block_types"] = ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in down_attn]
    cfg["up_block_types"] = ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in up_attn]
    cfg["mid_block_type"] = "UNetMidBlock2DCrossAttn" if mid_attn else None

    attentions = [f"input_blocks.{k}.1" for k, a in zip(first, down_attn, strict=True) if a]
    attentions += ["middle_block.1"] if mid_attn else []
    if attentions:
        a = attentions[0]
        cfg["cross_attention_dim"] = names.shape(f"{a}.transformer_blocks.0.attn2.to_k.weight", 2)[
            1
        ]
        cfg["use_linear_projection"] = len(names.shape(f"{a}.proj_in.weight", (2, 4))) == 2
    # transformer layers per attention, per down block; the mid block uses the last
    # entry, and a block without attention leaves its entry free
    depth = [
        len(names.indices(f"input_blocks.{k}.1.transformer_blocks.")) if a else None
        for k, a in zip(first, down_attn, strict=True)
    ]
    if mid_attn:
        mid_depth = len(names.indices("middle_block.1.transformer_blocks."))
        if depth[-1] not in (None, mid_depth):
            raise UnsupportedError(f"{names.source}: mid block and last block differ in depth")
        depth[-1] = mid_depth
    known = {d for d in depth if d is not None}
    if len(known) <= 1:
        cfg["transformer_layers_per_block"] = known.pop() if known else 1
    else:
        cfg["transformer_layers_per_block"] = [1 if d is None else d for d in depth]
    return cfg


def _infer_vae_config(names: _Names, family: Family) -> dict:
    cfg = dict(family.vae)
    n = len(names.indices("encoder.down."))
    if n < 1:
        names.shape("encoder.down.0.block.0.conv1.weight", 4)  # raises, naming it
    cfg["block_out_channels"] = [
        names.shape(f"encoder.down.{i}.block.0.conv1.weight", 4)[0] for i in range(n)
    ]
    cfg["layers_per_block"] = len(names.indices("encoder.down.0.block."))
    cfg["down_block_types"] = ["DownEncoderBlock2D"] * n
    cfg["up_block_types"] = ["UpDecoderBlock2D"] * n
    cfg["in_channels"] = names.shape("encoder.conv_in.weight", 4)[1]
    cfg["out_channels"] = names.shape("decoder.conv_out.weight", 4)[0]
    cfg["latent_channels"] = names.shape("decoder.conv_in.weight", 4)[1]
    cfg["use_quant_conv"] = "quant_conv.weight" in names
    cfg["use_post_quant_conv"] = "post_quant_conv.weight" in names
    cfg["mid_block_add_attention"] = names.has_prefix("encoder.mid.attn_1.")
    return cfg


def _infer_text_config(names: _Names, family: Family, wrapper="text_model.") -> dict:
    cfg = dict(family.text_encoder)
    vocab, d = names.shape(f"{wrapper}embeddings.token_embedding.weight", 2)
    cfg["vocab_size"], cfg["hidden_size"] = vocab, d
    position = names.shape(f"{wrapper}embeddings.position_embedding.weight", 2)
    cfg["max_position_embeddings"] = position[0]
    cfg["num_hidden_layers"] = len(names.indices(f"{wrapper}encoder.layers."))
    cfg["intermediate_size"] = names.shape(f"{wrapper}encoder.layers.0.mlp.fc1.weight", 2)[0]
    if d % family.text_head_size:
        raise FormatError(
            f"{names.source}: text encoder width {d} is not a multiple of the "
            f"{family.text_head_size}-wide heads of the {family.name} text encoder"
        )
    cfg["num_attention_heads"] = d // family.text_head_size
    cfg["projection_dim"] = d
    return cfg


# ------------------------------------------------------------------ loading ------


def _select(weights, params, source, what, prefix):
    """A Weights holding exactly `params` under their diffusers names, each found in
    `weights` as prefix + p.ldm with shape p.ldm_shape, and checked."""
    mapping = {}
    for p in params:
        old = prefix + p.ldm
        if old not in weights:
            raise FormatError(f"{source}: {what} tensor '{old}' is missing")
        got = weights.info(old)[1]
        if got != p.ldm_shape:
            raise FormatError(
                f"{source}: {what} tensor '{old}' has shape {got}, expected {p.ldm_shape}"
            )
        # a 1x1 conv read as a linear layer: same elements, another shape
        mapping[p.name] = old if p.shape == p.ldm_shape else (old, p.shape)
    return weights.subset(mapping)


def _load_single_file(path) -> Model:
    weights = _C.Weights.open(path, skip_unsupported=True)
    family = FAMILIES[detect_family(weights.names())]
    text_names = _Names(weights, CLIP_PREFIX, "text encoder", path)
    # checkpoints made with transformers before CLIPTextModel gained its text_model
    # wrapper name the same tensors without it
    wrapper = "" if "embeddings.token_embedding.weight" in text_names else "text_model."
    unet_cfg = _infer_unet_config(_Names(weights, UNET_PREFIX, "UNet", path), family)
    vae_cfg = _infer_vae_config(_Names(weights, VAE_PREFIX, "VAE", path), family)
    text_cfg = _infer_text_config(text_names, family, wrapper)
    text_params = [
        p._replace(ldm=wrapper + p.name[len("text_model.") :])
        for p in text_encoder_params(text_cfg)
    ]
    unet = _select(weights, unet_params(unet_cfg), path, "UNet", UNET_PREFIX)
    vae = _select(weights, vae_params(vae_cfg), path, "VAE", VAE_PREFIX)
    text = _select(weights, text_params, path, "text encoder", CLIP_PREFIX)
    name = os.path.splitext(os.path.basename(path))[0]
    return Model(
        name=name,
        family=family.name,
        text_encoder=Component(text_cfg, text),
        unet=Component(unet_cfg, unet),
        vae=Component(vae_cfg, vae),
        scheduler_config=dict(family.scheduler),
        tokenizer_dir=None,
        path=path,
        metadata=weights.metadata(),
    )


def _read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except json.JSONDecodeError as e:
        raise FormatError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise FormatError(f"{path}: expected a JSON object")
    return value


WEIGHT_FILES = {
    "unet": "diffusion_pytorch_model",
    "vae": "diffusion_pytorch_model",
    "text_encoder": "model",
}


def _component_file(folder, component):
    base = os.path.join(folder, component, WEIGHT_FILES[component])
    for candidate in (base + ".safetensors", base + ".fp16.safetensors"):
        if os.path.isfile(candidate):
            return candidate
    for pickle in (".bin", ".fp16.bin"):
        if os.path.isfile(base + pickle):
            raise UnsupportedError(
                f"{base + pickle}: pickle weights are not read; convert the folder to safetensors"
            )
    raise FileNotFoundError(f"{base}.safetensors: no weights for the {component}")


def _public(config):
    """A config.json without its bookkeeping keys (_class_name, _diffusers_version)."""
    return {k: v for k, v in config.items() if not k.startswith("_")}


# Old diffusers folders name the VAE attention projections as attention_processor did
# before 0.14; the same tensors, so they are renamed like CompVis' ones.
LEGACY_VAE_ATTENTION = {
    "to_q": "query",
    "to_k": "key",
    "to_v": "value",
    "to_out.0": "proj_attn",
    "group_norm": "group_norm",
}


def _legacy_vae_names(weights, params):
    """Params found under their pre-0.14 names where only those are present."""
    out = []
    for p in params:
        if p.name not in weights and ".attentions.0." in p.name:
            head, tail = p.name.split(".attentions.0.", 1)
            layer, leaf = tail.rsplit(".", 1)
            old = f"{head}.attentions.0.{LEGACY_VAE_ATTENTION.get(layer, layer)}.{leaf}"
            if old in weights:
                # some were saved as 1x1 convs
                conv = p.shape + (1, 1)
                shape = conv if weights.info(old)[1] == conv else p.shape
                p = p._replace(ldm=old, ldm_shape=shape)
        out.append(p)
    return out


def _load_folder(folder) -> Model:
    configs = {}
    for component in ("unet", "vae", "text_encoder"):
        path = os.path.join(folder, component, "config.json")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: the {component}'s config is missing")
        configs[component] = _public(_read_json(path))
    family = FAMILIES[detect_family_from_configs(folder, configs)]
    unet_cfg = {**family.unet, **configs["unet"]}
    vae_cfg = {**family.vae, **configs["vae"]}
    text_cfg = {**family.text_encoder, **configs["text_encoder"]}

    def load(component, params):
        path = _component_file(folder, component)
        weights = _C.Weights.open(path, skip_unsupported=True)
        what = component.replace("_", " ")
        params = [p._replace(ldm=p.name, ldm_shape=p.shape) for p in params]
        if component == "vae":
            params = _legacy_vae_names(weights, params)
        elif (
            component == "text_encoder"
            and "text_model.embeddings.token_embedding.weight" not in weights
        ):
            # transformers 5 saves CLIPTextModel without its text_model. wrapper name
            params = [p._replace(ldm=p.name[len("text_model.") :]) for p in params]
        return _select(weights, params, path, what, "")

    scheduler_path = os.path.join(folder, "scheduler", "scheduler_config.json")
    # the folder's scheduler as saved (the sampler maps its keys); the family's otherwise
    if os.path.isfile(scheduler_path):
        scheduler = _read_json(scheduler_path)
    else:
        scheduler = dict(family.scheduler)
    tokenizer = os.path.join(folder, "tokenizer")
    return Model(
        name=os.path.basename(os.path.normpath(folder)),
        family=family.name,
        text_encoder=Component(text_cfg, load("text_encoder", text_encoder_params(text_cfg))),
        unet=Component(unet_cfg, load("unet", unet_params(unet_cfg))),
        vae=Component(vae_cfg, load("vae", vae_params(vae_cfg))),
        scheduler_config=scheduler,
        tokenizer_dir=tokenizer if os.path.isdir(tokenizer) else None,
        path=folder,
    )


def load_model(path) -> Model:
    """Read a single-file .safetensors checkpoint or a diffusers folder (see the module
    docstring). Tensors stay in the memory-mapped files; nothing is copied."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return _load_folder(path)
    if path.endswith((".ckpt", ".pt", ".pth", ".bin")):
        raise UnsupportedError(
            f"{path}: pickle checkpoints are not read (they can run code); use a .safetensors file"
        )
    return _load_single_file(path)
