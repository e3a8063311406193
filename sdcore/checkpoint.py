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
its shape, and none is left over, before the model is returned.

VAE attention: CompVis stores the mid-block attention projections (q, k, v,
proj_out) as 1x1 convolutions, (C, C, 1, 1); diffusers as linear layers, (C, C). The
memory is the same, so the single-file loader exposes them as (C, C) views under the
diffusers names (``to_q.weight`` ...): the VAE code reads ``to_q/to_k/to_v/to_out.0``
as linear weights, (C, C), from either layout. Old diffusers folders that name them
``query/key/value/proj_attn`` are exposed under the new names the same way.

The model family is decided in one place (``detect_family`` for single files,
``detect_family_from_configs`` for folders); SD 2.x and SDXL are additions there and
in ``FAMILIES``, not changes to the layout code.

Which tensors a config calls for, with their shapes, is declared once, by the engine
next to each model (``_C.unet_tensors``, ``vae_tensors``, ``clip_tensors``); this module
holds only the renaming between those diffusers names and the CompVis ones, and the
inference of a config from a single file's names and shapes. No torch here.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import NamedTuple

from sdcore import _C
from sdcore._C import FormatError, UnsupportedError
from sdcore.configs import (
    SD15_SCHEDULER,
    SD15_TEXT_ENCODER,
    SD15_TEXT_HEAD_SIZE,
    SD15_UNET,
    SD15_VAE,
)
from sdcore.text_encoder import tensors as text_encoder_tensors
from sdcore.vae import tensors as vae_tensors

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


# A family's configs are its defaults: values that cannot be read from tensor shapes, and
# what a folder's config.json may leave out (sdcore/configs.py declares SD 1.x's).
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
        SD15_UNET,
        SD15_VAE,
        SD15_TEXT_ENCODER,
        SD15_SCHEDULER,
        SD15_TEXT_HEAD_SIZE,
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
#
# Which tensors a model of a given config has, with their shapes, is declared once, by
# the engine (csrc/models/unet.c, vae.c, clip.c: sdcore._C.unet_tensors, vae_tensors,
# clip_tensors). What is here is only the renaming of those diffusers names to the
# original CompVis ones of single-file checkpoints.


class Param(NamedTuple):
    """One tensor of a model: diffusers name and shape, and its CompVis counterpart.
    `required` is False for tensors used when present (attention q/k/v biases)."""

    name: str
    shape: tuple
    ldm: str
    ldm_shape: tuple
    required: bool = True


def _declared(component, config):
    """[(diffusers name, shape, required)] of a component, as the engine declares it."""
    if component == "unet":
        return _C.unet_tensors(config)
    if component == "vae":
        return vae_tensors(config)
    if component == "text_encoder":
        return text_encoder_tensors(config)
    raise ValueError(f"unknown component {component!r}")


# ResnetBlock2D's modules in CompVis' UNet ResBlock
UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
UNET_TOP = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
# the mid block's three modules, one sequence in CompVis
UNET_MID = {
    "resnets.0": "middle_block.0",
    "attentions.0": "middle_block.1",
    "resnets.1": "middle_block.2",
}


def _unet_ldm_name(name, cfg):
    """The CompVis name of a UNet2DConditionModel tensor. CompVis numbers the down path
    as one sequence (input_blocks: conv_in, then per block its resnets [+ attention] and
    a downsampler) and the up path likewise (output_blocks); a Transformer2D keeps its
    inner names."""
    module, leaf = name.rsplit(".", 1)
    if module in UNET_TOP:
        return f"{UNET_TOP[module]}.{leaf}"
    layers = cfg.get("layers_per_block", 2)
    if isinstance(layers, (list, tuple)):
        if len(set(layers)) != 1:
            raise UnsupportedError("UNet with a different layers_per_block per block")
        layers = layers[0]
    parts = name.split(".")
    if parts[0] == "mid_block":
        base, kind, rest = UNET_MID[".".join(parts[1:3])], parts[1], parts[3:]
    elif parts[2] == "downsamplers":
        return f"input_blocks.{(int(parts[1]) + 1) * (layers + 1)}.0.op.{leaf}"
    elif parts[2] == "upsamplers":
        i = int(parts[1])
        attends = cfg["up_block_types"][i] == "CrossAttnUpBlock2D"
        return f"output_blocks.{i * (layers + 1) + layers}.{2 if attends else 1}.conv.{leaf}"
    else:
        i, kind, j, rest = int(parts[1]), parts[2], int(parts[3]), parts[4:]
        index = 1 + i * (layers + 1) + j if parts[0] == "down_blocks" else i * (layers + 1) + j
        where = "input_blocks" if parts[0] == "down_blocks" else "output_blocks"
        base = f"{where}.{index}.{0 if kind == 'resnets' else 1}"
    if kind == "resnets":
        rest = [UNET_RESNET[rest[0]], *rest[1:]]
    return ".".join([base, *rest])


# the VAE mid attention's modules in CompVis' AttnBlock (1x1 convs for q, k, v, proj_out)
VAE_ATTENTION = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
}


def _vae_ldm_name(name, cfg):
    """The CompVis name of an AutoencoderKL tensor and whether CompVis stores it as a 1x1
    conv where diffusers has a linear layer. CompVis counts the decoder's levels from the
    bottom (decoder.up.0 is diffusers' last up block)."""
    coder, _, rest = name.partition(".")
    if coder not in ("encoder", "decoder"):
        return name, False  # quant_conv, post_quant_conv
    parts = rest.split(".")
    if parts[0] == "conv_norm_out":
        return f"{coder}.norm_out.{parts[1]}", False
    if parts[0] in ("conv_in", "conv_out"):
        return name, False
    if parts[0] == "mid_block":
        if parts[1] == "resnets":
            tail = ".".join(parts[3:]).replace("conv_shortcut", "nin_shortcut")
            return f"{coder}.mid.block_{int(parts[2]) + 1}.{tail}", False
        module, leaf = ".".join(parts[3:]).rsplit(".", 1)
        conv = module != "group_norm" and leaf == "weight"
        return f"{coder}.mid.attn_1.{VAE_ATTENTION[module]}.{leaf}", conv
    n = len(cfg["block_out_channels"])
    i = int(parts[1])
    level, path = (i, "down") if coder == "encoder" else (n - 1 - i, "up")
    if parts[2] in ("downsamplers", "upsamplers"):
        return f"{coder}.{path}.{level}.{path}sample.conv.{parts[-1]}", False
    tail = ".".join(parts[4:]).replace("conv_shortcut", "nin_shortcut")
    return f"{coder}.{path}.{level}.block.{parts[3]}.{tail}", False


def _params(component, config, ldm_name) -> list[Param]:
    """The declared tensors of a component with their CompVis names (ldm_name(name) ->
    (CompVis name, stored as a 1x1 conv))."""
    out = []
    for name, shape, required in _declared(component, config):
        old, conv = ldm_name(name)
        out.append(Param(name, shape, old, shape + (1, 1) if conv else shape, required))
    return out


def unet_params(cfg, optional=False) -> list[Param]:
    """Every tensor of a UNet2DConditionModel with this config (as the engine declares
    it), with its CompVis name; with `optional`, also those used only when present."""
    params = _params("unet", cfg, lambda n: (_unet_ldm_name(n, cfg), False))
    return [p for p in params if optional or p.required]


def vae_params(cfg, optional=False) -> list[Param]:
    """Every tensor of an AutoencoderKL with this config, with its CompVis name."""
    params = _params("vae", cfg, lambda n: _vae_ldm_name(n, cfg))
    return [p for p in params if optional or p.required]


def text_encoder_params(cfg, optional=False) -> list[Param]:
    """Every tensor of a transformers CLIPTextModel with this config, under the names
    of transformers 4 (``text_model.``...), which checkpoints and folders use;
    transformers 5 drops the ``text_model.`` wrapper from its state dict.

    CompVis stores the same transformers module, so the names only gain a prefix."""
    params = _params("text_encoder", cfg, lambda n: (n, False))
    return [p for p in params if optional or p.required]


PARAMS = {"unet": unet_params, "vae": vae_params, "text_encoder": text_encoder_params}
PREFIXES = {"unet": UNET_PREFIX, "vae": VAE_PREFIX, "text_encoder": CLIP_PREFIX}


def ldm_names(component, config) -> dict:
    """{diffusers name: (CompVis name, CompVis shape)} of a component, the CompVis names
    with their full single-file prefix."""
    if component not in PARAMS:
        raise ValueError(f"unknown component {component!r}")
    prefix = PREFIXES[component]
    return {p.name: (prefix + p.ldm, p.ldm_shape) for p in PARAMS[component](config)}


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


# What files hold that no model reads: the text encoder's position_ids buffer (saved by
# transformers before 4.31) and the training loss (discriminator) a CompVis VAE may carry.
NOT_PARAMETERS = {"text_encoder": ("embeddings.position_ids",), "vae": ("loss.",)}


def _not_a_parameter(component, name):
    return any(
        name.endswith(n) if n.endswith("_ids") else name.startswith(n)
        for n in NOT_PARAMETERS.get(component, ())
    )


def _select(weights, params, source, component, prefix):
    """A Weights holding `params` under their diffusers names, each found in `weights` as
    prefix + p.ldm with shape p.ldm_shape (optional ones where present). A required
    tensor missing, one misshaped, or one under the prefix that no param names is an
    error naming it."""
    what = COMPONENT_NAMES[component]
    mapping, known = {}, set()
    for p in params:
        old = prefix + p.ldm
        known.add(old)
        if old not in weights:
            if not p.required:
                continue
            raise FormatError(f"{source}: {what} tensor '{old}' is missing")
        got = weights.info(old)[1]
        if got != p.ldm_shape:
            raise FormatError(
                f"{source}: {what} tensor '{old}' has shape {got}, expected {p.ldm_shape}"
            )
        # a 1x1 conv read as a linear layer: same elements, another shape
        mapping[p.name] = old if p.shape == p.ldm_shape else (old, p.shape)
    unexpected = [
        n
        for n in weights.names()
        if n.startswith(prefix)
        and n not in known
        and not _not_a_parameter(component, n[len(prefix) :])
    ]
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise FormatError(
            f"{source}: {what} tensor '{unexpected[0]}'{more} is not part of the {what} its "
            "config describes"
        )
    return weights.subset(mapping)


COMPONENT_NAMES = {"unet": "UNet", "vae": "VAE", "text_encoder": "text encoder"}


def _load_single_file(path, copy=False) -> Model:
    weights = _C.Weights.open(path, skip_unsupported=True, copy=copy)
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
        for p in text_encoder_params(text_cfg, optional=True)
    ]
    unet = _select(weights, unet_params(unet_cfg, optional=True), path, "unet", UNET_PREFIX)
    vae = _select(weights, vae_params(vae_cfg, optional=True), path, "vae", VAE_PREFIX)
    text = _select(weights, text_params, path, "text_encoder", CLIP_PREFIX)
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


def _load_folder(folder, copy=False) -> Model:
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

    def load(component, config):
        path = _component_file(folder, component)
        weights = _C.Weights.open(path, skip_unsupported=True, copy=copy)
        params = [
            p._replace(ldm=p.name, ldm_shape=p.shape)
            for p in PARAMS[component](config, optional=True)
        ]
        if component == "vae":
            params = _legacy_vae_names(weights, params)
        elif (
            component == "text_encoder"
            and "text_model.embeddings.token_embedding.weight" not in weights
        ):
            # transformers 5 saves CLIPTextModel without its text_model. wrapper name
            params = [p._replace(ldm=p.name[len("text_model.") :]) for p in params]
        return _select(weights, params, path, component, "")

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
        text_encoder=Component(text_cfg, load("text_encoder", text_cfg)),
        unet=Component(unet_cfg, load("unet", unet_cfg)),
        vae=Component(vae_cfg, load("vae", vae_cfg)),
        scheduler_config=scheduler,
        tokenizer_dir=tokenizer if os.path.isdir(tokenizer) else None,
        path=folder,
    )


def load_model(path, copy=False) -> Model:
    """Read a single-file .safetensors checkpoint or a diffusers folder (see the module
    docstring). Tensors stay in the memory-mapped files; nothing is copied, unless `copy`:
    then each file is read once into memory of the model's own, and the model no longer
    depends on its files (a server whose model file is replaced or cut short while it
    serves goes on). Weights holding a NaN or an infinity are refused (FormatError naming
    the tensor): such a model can only make non-finite images."""
    path = os.fspath(path)
    if path.endswith((".ckpt", ".pt", ".pth", ".bin")) and not os.path.isdir(path):
        raise UnsupportedError(
            f"{path}: pickle checkpoints are not read (they can run code); use a .safetensors file"
        )
    model = _load_folder(path, copy) if os.path.isdir(path) else _load_single_file(path, copy)
    for component in ("text_encoder", "unet", "vae"):
        bad = getattr(model, component).weights.first_nonfinite()
        if bad is not None:
            raise FormatError(
                f"{path}: the {COMPONENT_NAMES[component]}'s tensor '{bad}' holds NaN or "
                "infinite values; this checkpoint is damaged"
            )
    return model
