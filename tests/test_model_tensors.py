"""The tensors each model declares (csrc/models: _C.unet_tensors, vae_tensors,
clip_tensors) against the state dicts of the diffusers / transformers models built from
the same configs, and a checkpoint's tensors checked against that declaration.

The declaration is what the engine binds when it builds a model and what
sdcore.checkpoint checks a file against; the reference is the set of (name, shape) of
UNet2DConditionModel, AutoencoderKL and CLIPTextModel. SD 1.5's configs are the ones
the benchmarks and tools build SD 1.5 from (sdcore/configs.py, which bench/gpu.py reads)
and the ones sdcore loads single files with (checkpoint.FAMILIES["sd1"]); its models are
built on the meta device (shapes without memory), the tiny ones with random weights.
"""

import importlib.util
import os

import pytest
import torch
from safetensors.torch import save_file
from test_checkpoint import TINY, build, save_folder, single_file
from test_unet import FOUR_LEVEL, THREE_LEVEL, TWO_LEVEL

import sdcore
from sdcore import _C, checkpoint, text_encoder, vae

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

BENCH_GPU = os.path.join(os.path.dirname(__file__), "..", "bench", "gpu.py")


def bench_sd15():
    """The SD 1.5 configs bench/gpu.py builds its models from (tools/gpu_memory.py too)."""
    spec = importlib.util.spec_from_file_location("bench_gpu", BENCH_GPU)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.SD15_UNET, module.SD15_VAE, module.SD15_TEXT_ENCODER


def shapes(state_dict, prefix=""):
    return {
        (k if k.startswith(prefix) else prefix + k): tuple(v.shape) for k, v in state_dict.items()
    }


def required(declared):
    return {name: shape for name, shape, req in declared if req}


def check_unet(model):
    declared = _C.unet_tensors(dict(model.config))
    assert required(declared) == shapes(model.state_dict())
    # optional: exactly the q/k/v biases of every attention, which diffusers' SD UNet lacks
    optional = {name: shape for name, shape, req in declared if not req}
    weights = {n for n in required(declared) if n.endswith(("to_q.weight", "to_k.weight"))}
    weights |= {n for n in required(declared) if n.endswith("to_v.weight")}
    assert set(optional) == {n.replace(".weight", ".bias") for n in weights}
    assert len(declared) == len({name for name, _, _ in declared})


def check_vae(model):
    config = dict(model.config)
    want = shapes(model.state_dict())
    assert required(vae.tensors(config)) == want
    assert all(req for _, _, req in vae.tensors(config))
    # the decoder alone: everything but the encoder and quant_conv
    decoder = {k: v for k, v in want.items() if not k.startswith(("encoder.", "quant_conv."))}
    assert required(vae.tensors(config, with_encoder=False)) == decoder


def check_text(model):
    declared = text_encoder.tensors(model.config.to_dict())
    assert all(req for _, _, req in declared)
    assert required(declared) == shapes(model.state_dict(), "text_model.")


def test_sd15_from_bench_configs():
    unet_cfg, vae_cfg, text_cfg = bench_sd15()
    with torch.device("meta"):
        unet = diffusers.UNet2DConditionModel(**unet_cfg)
        autoencoder = diffusers.AutoencoderKL(**vae_cfg)
        text = transformers.CLIPTextModel(transformers.CLIPTextConfig(**text_cfg))
    check_unet(unet)
    check_vae(autoencoder)
    check_text(text)
    assert [len(required(_C.unet_tensors(dict(unet.config)))), len(unet.state_dict())] == [686] * 2


def test_sd15_family_configs():
    """The configs single SD 1.x files are read with give the same tensors as diffusers'
    models of those configs, CompVis names included (the renaming covers every one)."""
    family = checkpoint.FAMILIES["sd1"]
    with torch.device("meta"):
        unet = diffusers.UNet2DConditionModel(**family.unet)
        autoencoder = diffusers.AutoencoderKL(**family.vae)
        text = transformers.CLIPTextModel(transformers.CLIPTextConfig(**family.text_encoder))
    assert required(_C.unet_tensors(family.unet)) == shapes(unet.state_dict())
    assert required(vae.tensors(family.vae)) == shapes(autoencoder.state_dict())
    assert required(text_encoder.tensors(family.text_encoder)) == shapes(
        text.state_dict(), "text_model."
    )
    for component, config in (("unet", family.unet), ("vae", family.vae)):
        names = checkpoint.ldm_names(component, config)
        olds = [old for old, _ in names.values()]
        assert len(set(olds)) == len(olds), component  # one CompVis name each


@pytest.mark.parametrize(
    "config",
    [TWO_LEVEL, THREE_LEVEL, FOUR_LEVEL, TINY["A"]["unet"], TINY["B"]["unet"]],
    ids=["two_level", "three_level_linear_proj", "four_level_head_list", "tiny_a", "tiny_b"],
)
def test_tiny_unet(config):
    torch.manual_seed(0)
    check_unet(diffusers.UNet2DConditionModel(**config))


@pytest.mark.parametrize(
    "config",
    [
        dict(block_out_channels=(32, 64), layers_per_block=1),
        dict(block_out_channels=(32, 32, 64), layers_per_block=2, latent_channels=8),
        dict(block_out_channels=(16, 32), norm_num_groups=8, mid_block_add_attention=False),
    ],
    ids=["two_level", "three_level", "no_mid_attention"],
)
def test_tiny_vae(config):
    n = len(config["block_out_channels"])
    model = diffusers.AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        **config,
    )
    check_vae(model)


@pytest.mark.parametrize("kind", ["A", "B"])
def test_tiny_text_encoder(kind):
    config = transformers.CLIPTextConfig(
        vocab_size=1000, num_hidden_layers=3, max_position_embeddings=40, **TINY[kind]["text"]
    )
    check_text(transformers.CLIPTextModel(config))


def test_bad_config_is_named():
    config = dict(TWO_LEVEL, block_out_channels=(32, 60))  # 60 is not a multiple of 8 groups
    with pytest.raises(ValueError, match="block_out_channels"):
        _C.unet_tensors(config)
    with pytest.raises(ValueError, match="unknown field 'not_a_field'"):
        _C.unet_tensors(dict(TWO_LEVEL, not_a_field=1))
    with pytest.raises(ValueError, match="layers_per_block"):
        vae.tensors({"block_out_channels": [32], "layers_per_block": 0})
    with pytest.raises(ValueError, match="num_attention_heads"):
        text_encoder.tensors({"hidden_size": 30, "num_attention_heads": 4})


# ------------------------------------------------------------------ checkpoints --


def test_unexpected_tensor_in_single_file_is_named(tmp_path, rng):
    """A tensor under a model's prefix that its config does not call for (a class
    embedding, as unCLIP UNets have; a fourth resnet in a VAE block of three) is an error
    naming it, never silently left out."""
    models, sds = build("B", int(rng.integers(1 << 31)))
    path = tmp_path / "extra.safetensors"
    ldm = single_file(path, models, sds)
    extra = "model.diffusion_model.label_emb.0.0.weight"
    save_file({**ldm, extra: torch.ones(128, 32)}, str(path))
    with pytest.raises(sdcore.FormatError, match=f"UNet tensor '{extra}' is not part"):
        sdcore.load_model(path)
    extra = "first_stage_model.decoder.up.0.block.9.conv1.weight"
    save_file({**ldm, extra: torch.ones(2)}, str(path))
    with pytest.raises(sdcore.FormatError, match=f"VAE tensor '{extra}' is not part"):
        sdcore.load_model(path)


def test_unexpected_tensor_in_folder_is_named(tmp_path, rng):
    models, sds = build("A", int(rng.integers(1 << 31)))
    folder = save_folder(str(tmp_path / "f"), models)
    vae_file = os.path.join(folder, "vae", "diffusion_pytorch_model.safetensors")
    extra = "decoder.up_blocks.0.resnets.7.norm1.weight"
    state = {k: v.contiguous() for k, v in sds["vae"].items()}
    save_file({**state, extra: torch.ones(3)}, vae_file)
    with pytest.raises(sdcore.FormatError, match=f"vae.*VAE tensor '{extra}' is not part"):
        sdcore.load_model(folder)


def test_optional_attention_biases_are_kept(tmp_path, rng):
    """q/k/v biases, which diffusers' SD UNet does not have, are declared optional: a file
    that has them loads with them (the engine uses them), one without loads without."""
    models, sds = build("A", int(rng.integers(1 << 31)))
    folder = save_folder(str(tmp_path / "f"), models)
    unet_file = os.path.join(folder, "unet", "diffusion_pytorch_model.safetensors")
    bias = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.bias"
    state = {k: v.contiguous() for k, v in sds["unet"].items()}
    save_file({**state, bias: torch.randn(32)}, unet_file)
    model = sdcore.load_model(folder)
    assert bias in model.unet.weights
    assert len(model.unet.weights) == len(state) + 1
    _C.UNet(model.unet.weights, model.unet.config)  # binds it
    save_file({**state, bias: torch.randn(33)}, unet_file)
    with pytest.raises(sdcore.FormatError, match=rf"'{bias}' has shape \(33,\)"):
        sdcore.load_model(folder)
