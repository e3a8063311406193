"""Checkpoint loading: diffusers folders and single CompVis-named files give the tensors
and configs of the diffusers/transformers models they were made from.

The reference is diffusers itself: tiny random UNet2DConditionModel, AutoencoderKL and
CLIPTextModel are saved as a folder, and as a single file whose CompVis names are checked
against diffusers' own single-file converters before sdcore reads them.
"""

import json
import os

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
)
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel

import sdcore
from sdcore import checkpoint, configs

# two small architectures: (A) the smallest, text width 32 with 4 heads (not 64-wide, so
# only a folder's config.json can describe it); (B) deeper: 3 levels, 2 layers a block,
# 2 transformer layers per attention, 64-wide text heads as in SD 1.x
TINY = {
    "A": dict(
        unet=dict(
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=8,
            sample_size=16,
        ),
        vae=dict(block_out_channels=(32, 64), layers_per_block=1, sample_size=32),
        text=dict(hidden_size=32, num_attention_heads=4, intermediate_size=64),
    ),
    "B": dict(
        unet=dict(
            block_out_channels=(32, 64, 64),
            layers_per_block=2,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            transformer_layers_per_block=2,
            cross_attention_dim=128,
            attention_head_dim=8,
            sample_size=64,
        ),
        vae=dict(block_out_channels=(32, 32, 64), layers_per_block=2, sample_size=512),
        text=dict(hidden_size=128, num_attention_heads=2, intermediate_size=256),
    ),
}

UNET_KEYS = [
    "in_channels", "out_channels", "block_out_channels", "layers_per_block", "down_block_types",
    "up_block_types", "mid_block_type", "cross_attention_dim", "attention_head_dim",
    "use_linear_projection", "transformer_layers_per_block", "norm_num_groups", "norm_eps",
    "flip_sin_to_cos", "freq_shift", "act_fn", "conv_in_kernel", "conv_out_kernel",
    "time_embedding_dim", "upcast_attention", "center_input_sample",
]  # fmt: skip
VAE_KEYS = [
    "in_channels", "out_channels", "block_out_channels", "layers_per_block", "latent_channels",
    "down_block_types", "up_block_types", "norm_num_groups", "act_fn", "scaling_factor",
    "use_quant_conv", "use_post_quant_conv", "mid_block_add_attention",
]  # fmt: skip
TEXT_KEYS = [
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
    "num_attention_heads", "max_position_embeddings", "hidden_act", "layer_norm_eps",
]  # fmt: skip


def plain(value):
    return list(value) if isinstance(value, tuple) else value


def build(kind, seed):
    """Tiny random models of architecture `kind` and their state dicts (diffusers names;
    the text encoder's under transformers 4's text_model. prefix)."""
    torch.manual_seed(seed)
    spec = TINY[kind]
    unet = UNet2DConditionModel(**spec["unet"]).eval()
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * len(spec["vae"]["block_out_channels"]),
        up_block_types=("UpDecoderBlock2D",) * len(spec["vae"]["block_out_channels"]),
        **spec["vae"],
    ).eval()
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=1000,
            num_hidden_layers=2,
            max_position_embeddings=77,
            bos_token_id=0,
            eos_token_id=2,
            **spec["text"],
        )
    ).eval()
    with torch.no_grad():  # norms start at 1/0: make every tensor distinct
        for m in (unet, vae, text):
            for p in m.parameters():
                p.add_(torch.randn_like(p) * 0.1)
    sds = {
        "unet": dict(unet.state_dict()),
        "vae": dict(vae.state_dict()),
        "text_encoder": {
            (k if k.startswith("text_model.") else "text_model." + k): v
            for k, v in text.state_dict().items()
        },
    }
    return {"unet": unet, "vae": vae, "text_encoder": text}, sds


def model_config(models, component):
    cfg = models[component].config
    return dict(cfg) if component != "text_encoder" else cfg.to_dict()


def to_ldm(models, sds):
    """The single-file (CompVis) state dict, by sdcore's own mapping."""
    ldm = {}
    for component, sd in sds.items():
        names = checkpoint.ldm_names(component, model_config(models, component))
        assert set(names) == set(sd), component
        for name, (old, shape) in names.items():
            ldm[old] = sd[name].reshape(shape).contiguous()
    return ldm


def assert_weights_equal(weights, sd, what):
    assert sorted(weights.names()) == sorted(sd), what
    for name, t in sd.items():
        assert weights.info(name)[1] == tuple(t.shape), name
        np.testing.assert_array_equal(weights.array(name), t.float().numpy(), err_msg=name)


def assert_configs(model, models):
    for key in UNET_KEYS:
        assert plain(model.unet.config[key]) == plain(models["unet"].config[key]), key
    for key in VAE_KEYS:
        assert plain(model.vae.config[key]) == plain(models["vae"].config[key]), key
    text_cfg = models["text_encoder"].config
    for key in TEXT_KEYS:
        assert model.text_encoder.config[key] == getattr(text_cfg, key), key


def rebuild_and_load(model):
    """diffusers/transformers accept the configs, and the weights fit them exactly."""

    def state(weights, strip=""):
        return {n[len(strip) :]: torch.from_numpy(weights.array(n)) for n in weights.names()}

    UNet2DConditionModel.from_config(model.unet.config).load_state_dict(
        state(model.unet.weights), strict=True
    )
    AutoencoderKL.from_config(model.vae.config).load_state_dict(
        state(model.vae.weights), strict=True
    )
    CLIPTextModel(CLIPTextConfig(**model.text_encoder.config)).load_state_dict(
        state(model.text_encoder.weights, "text_model."), strict=True
    )


@pytest.fixture(params=["A", "B"])
def tiny(request, rng):
    kind = request.param
    models, sds = build(kind, int(rng.integers(1 << 31)))
    return kind, models, sds


# ------------------------------------------------------------------ folders ------


def save_folder(root, models, scheduler=True):
    models["unet"].save_pretrained(os.path.join(root, "unet"))
    models["vae"].save_pretrained(os.path.join(root, "vae"))
    models["text_encoder"].save_pretrained(os.path.join(root, "text_encoder"))
    if scheduler:
        PNDMScheduler(beta_schedule="scaled_linear", steps_offset=1).save_pretrained(
            os.path.join(root, "scheduler")
        )
    os.makedirs(os.path.join(root, "tokenizer"), exist_ok=True)
    return root


def test_diffusers_folder(tmp_path, tiny):
    kind, models, sds = tiny
    folder = save_folder(str(tmp_path / f"tiny-{kind}"), models)
    model = sdcore.load_model(folder)
    assert model.family == "sd1" and model.name == f"tiny-{kind}"
    assert model.tokenizer_dir == os.path.join(folder, "tokenizer")
    assert_weights_equal(model.unet.weights, sds["unet"], "unet")
    assert_weights_equal(model.vae.weights, sds["vae"], "vae")
    assert_weights_equal(model.text_encoder.weights, sds["text_encoder"], "text encoder")
    assert_configs(model, models)
    assert model.unet.config["sample_size"] == models["unet"].config.sample_size
    with open(os.path.join(folder, "scheduler", "scheduler_config.json")) as f:
        saved = json.load(f)
    assert model.scheduler_config == saved


def test_folder_defaults_and_legacy_names(tmp_path, rng):
    """No scheduler/ or tokenizer/: SD 1.5 defaults; text encoder saved with the
    text_model. prefix; VAE attention under the pre-0.14 names query/key/value/proj_attn."""
    models, sds = build("A", int(rng.integers(1 << 31)))
    folder = str(tmp_path / "legacy")
    save_folder(folder, models, scheduler=False)
    os.rmdir(os.path.join(folder, "tokenizer"))
    legacy = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    vae_sd = {}
    for name, t in sds["vae"].items():
        for new, old in legacy.items():
            name = name.replace(f"attentions.0.{new}.", f"attentions.0.{old}.")
        vae_sd[name] = t.contiguous()
    save_file(vae_sd, os.path.join(folder, "vae", "diffusion_pytorch_model.safetensors"))
    text_sd = {k: v.contiguous() for k, v in sds["text_encoder"].items()}
    save_file(text_sd, os.path.join(folder, "text_encoder", "model.safetensors"))
    model = sdcore.load_model(folder)
    assert model.tokenizer_dir is None
    assert model.scheduler_config == configs.SD15_SCHEDULER
    assert_weights_equal(model.vae.weights, sds["vae"], "vae")
    assert_weights_equal(model.text_encoder.weights, sds["text_encoder"], "text encoder")


def test_folder_errors(tmp_path, rng):
    models, sds = build("A", int(rng.integers(1 << 31)))
    folder = save_folder(str(tmp_path / "f"), models)
    unet_file = os.path.join(folder, "unet", "diffusion_pytorch_model.safetensors")
    sd = {k: v.contiguous() for k, v in sds["unet"].items()}
    del sd["down_blocks.0.attentions.0.proj_in.weight"]
    save_file(sd, unet_file)
    with pytest.raises(sdcore.FormatError, match=r"unet.*'down_blocks\.0\.attentions\.0\.proj_in"):
        sdcore.load_model(folder)
    sd["down_blocks.0.attentions.0.proj_in.weight"] = torch.zeros(32, 32)
    save_file(sd, unet_file)
    with pytest.raises(sdcore.FormatError, match=r"proj_in.weight' has shape \(32, 32\)"):
        sdcore.load_model(folder)
    os.remove(unet_file)
    with pytest.raises(FileNotFoundError, match="unet"):
        sdcore.load_model(folder)
    os.remove(os.path.join(folder, "vae", "config.json"))
    with pytest.raises(FileNotFoundError, match="vae"):
        sdcore.load_model(folder)


# ------------------------------------------------------------------ single file --


@pytest.mark.parametrize("kind", ["B"])
def test_mapping_matches_diffusers_converters(rng, kind):
    """sdcore's CompVis names, read back by diffusers' single-file converters, give the
    diffusers state dicts exactly."""
    models, sds = build(kind, int(rng.integers(1 << 31)))
    ldm = to_ldm(models, sds)
    back = {
        "unet": convert_ldm_unet_checkpoint(ldm, model_config(models, "unet")),
        "vae": convert_ldm_vae_checkpoint(ldm, model_config(models, "vae")),
        "text_encoder": convert_ldm_clip_checkpoint(ldm),
    }
    for component, sd in sds.items():
        assert sorted(back[component]) == sorted(sd), component
        for name, t in sd.items():
            assert torch.equal(back[component][name].reshape(t.shape), t), name
            assert back[component][name].shape == t.shape, name


def single_file(path, models, sds, dtype=torch.float32, extra=True):
    ldm = {k: v.to(dtype) for k, v in to_ldm(models, sds).items()}
    if extra:  # what real SD 1.x files also hold, and no model reads
        ldm["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77)[
            None
        ]
        ldm["alphas_cumprod"] = torch.linspace(1, 0, 1000)
        ldm["model_ema.decay"] = torch.tensor(0.9999)
        ldm["model_ema.num_updates"] = torch.tensor(1000, dtype=torch.int32)
    save_file(ldm, str(path), metadata={"format": "pt"})
    return ldm


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_single_file(tmp_path, rng, dtype):
    models, sds = build("B", int(rng.integers(1 << 31)))
    path = tmp_path / "tiny-sd.safetensors"
    single_file(path, models, sds, dtype)
    model = sdcore.load_model(path)
    assert (model.name, model.family, model.tokenizer_dir) == ("tiny-sd", "sd1", None)
    assert model.metadata == {"format": "pt"}
    assert model.scheduler_config == configs.SD15_SCHEDULER
    want = {c: {k: v.to(dtype) for k, v in sd.items()} for c, sd in sds.items()}
    assert_weights_equal(model.unet.weights, want["unet"], "unet")
    assert_weights_equal(model.vae.weights, want["vae"], "vae")
    assert_weights_equal(model.text_encoder.weights, want["text_encoder"], "text encoder")
    assert model.vae.weights.info("encoder.mid_block.attentions.0.to_q.weight") == (
        {torch.float32: "float32", torch.float16: "float16"}[dtype],
        (64, 64),
    )
    assert_configs(model, models)
    rebuild_and_load(model)


def test_single_file_without_text_model_wrapper(tmp_path, rng):
    """Old checkpoints: cond_stage_model.transformer.embeddings.* (no text_model.)."""
    models, sds = build("B", int(rng.integers(1 << 31)))
    ldm = to_ldm(models, sds)
    ldm = {k.replace("transformer.text_model.", "transformer."): v for k, v in ldm.items()}
    path = tmp_path / "old.safetensors"
    save_file(ldm, str(path))
    model = sdcore.load_model(path)
    assert_weights_equal(model.text_encoder.weights, sds["text_encoder"], "text encoder")


def test_single_file_errors(tmp_path, rng):
    models, sds = build("B", int(rng.integers(1 << 31)))
    path = tmp_path / "bad.safetensors"
    ldm = to_ldm(models, sds)

    def fails(exc, pattern, d):
        save_file(d, str(path))
        with pytest.raises(exc, match=pattern):
            sdcore.load_model(path)

    q = "first_stage_model.encoder.mid.attn_1.q.weight"
    without_q = {k: v for k, v in ldm.items() if k != q}
    fails(sdcore.FormatError, f"VAE tensor '{q}' is missing", without_q)
    fails(
        sdcore.FormatError,
        rf"'{q}' has shape \(64, 64\), expected \(64, 64, 1, 1\)",
        {**ldm, q: ldm[q].reshape(64, 64)},
    )
    k = "model.diffusion_model.input_blocks.1.1.transformer_blocks.1.attn2.to_k.weight"
    fails(sdcore.FormatError, f"'{k}' has shape", {**ldm, k: torch.zeros(64, 64)})
    fails(
        sdcore.FormatError,
        "'model.diffusion_model.input_blocks.0.0.weight' is missing",
        {n: v for n, v in ldm.items() if n != "model.diffusion_model.input_blocks.0.0.weight"},
    )
    conv_in = "model.diffusion_model.input_blocks.0.0.weight"
    fails(sdcore.FormatError, "does not fit a UNet", {**ldm, conv_in: torch.zeros(10)})
    fails(
        sdcore.FormatError,
        "not a Stable Diffusion",
        {k: v for k, v in ldm.items() if not k.startswith("cond_stage_model")},
    )
    fails(sdcore.UnsupportedError, "SD 2", {"cond_stage_model.model.transformer.x": torch.ones(1)})
    fails(sdcore.UnsupportedError, "SDXL", {"conditioner.embedders.1.model.x": torch.ones(1)})
    # a text encoder of width 32 cannot have SD 1.x's 64-wide heads
    models, sds = build("A", int(rng.integers(1 << 31)))
    fails(sdcore.FormatError, "multiple of the 64-wide heads", to_ldm(models, sds))
    with pytest.raises(sdcore.UnsupportedError, match="pickle"):
        sdcore.load_model(tmp_path / "model.ckpt")
    with pytest.raises(FileNotFoundError):
        sdcore.load_model(tmp_path / "missing.safetensors")


# ------------------------------------------------------------------ SD 1.5 -------


def test_sd15_shapes_and_names():
    """The full SD 1.5 configs: shapes against the diffusers/transformers models built on
    the meta device, CompVis names against diffusers' converters (meta tensors)."""
    cfg = checkpoint.FAMILIES["sd1"]
    with torch.device("meta"):
        unet = UNet2DConditionModel(**cfg.unet)
        vae = AutoencoderKL(**cfg.vae)
        text = CLIPTextModel(CLIPTextConfig(**cfg.text_encoder))
    models = {"unet": unet, "vae": vae, "text_encoder": text}
    sds = {
        "unet": unet.state_dict(),
        "vae": vae.state_dict(),
        "text_encoder": {"text_model." + k: v for k, v in text.state_dict().items()},
    }
    params = {
        "unet": checkpoint.unet_params(cfg.unet),
        "vae": checkpoint.vae_params(cfg.vae),
        "text_encoder": checkpoint.text_encoder_params(cfg.text_encoder),
    }
    for component, sd in sds.items():
        assert {p.name: p.shape for p in params[component]} == {
            k: tuple(v.shape) for k, v in sd.items()
        }, component
    assert [len(sds[c]) for c in ("unet", "vae", "text_encoder")] == [686, 248, 196]
    ldm = to_ldm(models, sds)
    # names as they appear in the SD 1.5 release file
    for name, shape in {
        "model.diffusion_model.input_blocks.3.0.op.weight": (320, 320, 3, 3),
        "model.diffusion_model.output_blocks.2.1.conv.weight": (1280, 1280, 3, 3),
        "model.diffusion_model.output_blocks.5.2.conv.weight": (1280, 1280, 3, 3),
        "model.diffusion_model.output_blocks.8.2.conv.weight": (640, 640, 3, 3),
        "model.diffusion_model.middle_block.1.proj_in.weight": (1280, 1280, 1, 1),
        "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.attn2.to_k.weight": (
            320,
            768,
        ),
        "first_stage_model.decoder.up.3.block.0.conv1.weight": (512, 512, 3, 3),
        "first_stage_model.encoder.mid.attn_1.q.weight": (512, 512, 1, 1),
        "cond_stage_model.transformer.text_model.final_layer_norm.weight": (768,),
    }.items():
        assert tuple(ldm[name].shape) == shape, name
    back = convert_ldm_unet_checkpoint(ldm, cfg.unet)
    assert {k: tuple(v.shape) for k, v in back.items()} == {
        k: tuple(v.shape) for k, v in sds["unet"].items()
    }
    back = convert_ldm_vae_checkpoint(ldm, cfg.vae)
    assert sorted(back) == sorted(sds["vae"])
