"""The whole text-to-image pipeline against diffusers' StableDiffusionPipeline.

A small SD 1.x-shaped model with random weights is written by diffusers as a folder;
sdcore loads it through its normal loader and must draw the same image from the same
prompt, negative prompt, seed and sampler: within 2/255 per pixel."""

import numpy as np
import pytest
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

import sdcore
from sdcore.configs import SD15_SCHEDULER, SD15_SPECIAL_TOKENS_MAP, SD15_TOKENIZER_CONFIG
from sdcore.pipeline import Pipeline
from sdcore.request import LIMITS

SCHEDULERS = {
    "ddim": (DDIMScheduler, {}),
    "euler": (EulerDiscreteScheduler, {}),
    "euler_a": (EulerAncestralDiscreteScheduler, {}),
    "dpmpp_2m": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++"}),
    "dpmpp_2m_karras": (
        DPMSolverMultistepScheduler,
        {"algorithm_type": "dpmsolver++", "use_karras_sigmas": True},
    ),
    "pndm": (PNDMScheduler, {}),
    "lms": (LMSDiscreteScheduler, {}),
}


def clip_tokenizer(path):
    """transformers' CLIPTokenizer from the BPE data sdcore ships (no hub access here)."""
    from test_tokenizer import clip_vocab_and_merges, write_folder

    vocab, merges = clip_vocab_and_merges()
    folder = write_folder(path, vocab, merges, SD15_TOKENIZER_CONFIG, SD15_SPECIAL_TOKENS_MAP)
    return CLIPTokenizer.from_pretrained(str(folder))


def randomise(module, seed):
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim == 1 and "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
            elif p.ndim == 1:
                p.copy_(0.05 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) / max(1, p[0].numel()) ** 0.5)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_sd")
    seed = int(np.random.default_rng().integers(1 << 30))
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        block_out_channels=(16, 32),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=16,
    )
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
        )
    )
    for i, m in enumerate((unet, vae, text)):
        randomise(m, seed + i)
    pipe = StableDiffusionPipeline(
        vae=vae.eval(),
        text_encoder=text.eval(),
        tokenizer=clip_tokenizer(root / "tok"),
        unet=unet.eval(),
        scheduler=PNDMScheduler.from_config(SD15_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(root / "model")
    # the reference is the folder as diffusers loads it back, as sdcore loads it
    pipe = StableDiffusionPipeline.from_pretrained(
        root / "model", safety_checker=None, torch_dtype=torch.float32
    )
    pipe.saved_scheduler_config = dict(pipe.scheduler.config)
    return root / "model", pipe


def reference(pipe, sampler, prompt, negative, seed, steps, cfg, size):
    cls, extra = SCHEDULERS[sampler]
    pipe.scheduler = cls.from_config(pipe.saved_scheduler_config, **extra)
    out = pipe(
        prompt,
        negative_prompt=negative,
        num_inference_steps=steps,
        guidance_scale=cfg,
        generator=torch.Generator("cpu").manual_seed(seed),
        height=size,
        width=size,
        output_type="np",
    ).images[0]
    return (out * 255).round().astype(np.uint8)


@pytest.mark.parametrize("sampler", list(SCHEDULERS))
def test_same_image_as_diffusers(model_dir, sampler, rng):
    path, pipe = model_dir
    ours = Pipeline.from_pretrained(str(path))
    seed = int(rng.integers(2**31))
    args = dict(
        prompt="a red circle on a blue background",
        negative="blurry",
        seed=seed,
        steps=6,
        cfg=7.0,
        size=64,
    )
    ref = reference(pipe, sampler, **args)
    (img,) = ours(
        args["prompt"],
        negative_prompt=args["negative"],
        num_inference_steps=6,
        guidance_scale=7.0,
        width=64,
        height=64,
        seed=seed,
        sampler=sampler,
    )
    diff = np.abs(img.array.astype(int) - ref.astype(int))
    assert diff.max() <= 2, f"{sampler}: max pixel difference {diff.max()} (seed {seed})"


def test_no_guidance_and_several_images(model_dir, rng):
    path, pipe = model_dir
    ours = Pipeline.from_pretrained(str(path))
    seed = int(rng.integers(2**31))
    imgs = ours(
        "two yellow stars",
        num_inference_steps=4,
        guidance_scale=1.0,
        width=64,
        height=64,
        seed=seed,
        sampler="euler",
        num_images=2,
    )
    assert [i.seed for i in imgs] == [seed, seed + 1]
    for img in imgs:  # image i is the one-image run with seed + i
        ref = reference(pipe, "euler", "two yellow stars", None, img.seed, 4, 1.0, 64)
        assert np.abs(img.array.astype(int) - ref.astype(int)).max() <= 2


def test_png_carries_parameters(model_dir, tmp_path):
    from PIL import Image

    path, _ = model_dir
    ours = Pipeline.from_pretrained(str(path))
    (img,) = ours(
        "a green square",
        negative_prompt="text",
        num_inference_steps=3,
        width=64,
        height=64,
        seed=42,
        sampler="euler_a",
        guidance_scale=7,
    )
    img.save(tmp_path / "out.png")
    info = Image.open(tmp_path / "out.png").info["parameters"]
    assert info.startswith(
        "a green square\nNegative prompt: text\nSteps: 3, Sampler: Euler a, "
        "CFG scale: 7, Seed: 42, Size: 64x64, Model: "
    )


def test_progress_and_cancel(model_dir):
    path, _ = model_dir
    ours = Pipeline.from_pretrained(str(path))
    steps = []
    ours(
        "x",
        num_inference_steps=5,
        width=64,
        height=64,
        seed=1,
        callback=lambda s, t, lat: steps.append((s, t, lat.shape)),
    )
    assert [s for s, _, _ in steps] == [1, 2, 3, 4, 5] and steps[0][2] == (1, 4, 32, 32)
    with pytest.raises(sdcore.CancelledError, match="after step 2"):
        ours(
            "x",
            num_inference_steps=5,
            width=64,
            height=64,
            seed=1,
            should_stop=lambda: len(steps) >= 7,
            callback=lambda *a: steps.append(a),
        )


@pytest.mark.parametrize(
    "kwargs,field",
    [
        (dict(width=33), "width"),
        (dict(height=4096), "height"),
        (dict(num_inference_steps=0), "num_inference_steps"),
        (dict(num_inference_steps=LIMITS.max_steps + 1), "num_inference_steps"),
        (dict(width=66), "width"),  # 2 UNet levels, VAE factor 2: multiples of 4
        (dict(guidance_scale=float("nan")), "guidance_scale"),
        (dict(guidance_scale=float("inf")), "guidance_scale"),
        (dict(sampler="heun"), "sampler"),
        (dict(seed=-5), "seed"),
        (dict(num_images=0), "num_images"),
    ],
)
def test_bad_input_names_the_field(model_dir, kwargs, field):
    path, _ = model_dir
    ours = Pipeline.from_pretrained(str(path))
    with pytest.raises(sdcore.ValidationError, match=f"^{field}") as e:
        ours("x", **kwargs)
    assert e.value.field == field


def test_missing_model_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Pipeline.from_pretrained(str(tmp_path / "nope"))


def test_images_are_arrays_and_top_level_helpers(model_dir):
    path, _ = model_dir
    ours = Pipeline.from_pretrained(str(path))
    (img,) = ours("a red circle", num_inference_steps=2, width=64, height=64, seed=3)
    assert isinstance(img, np.ndarray) and img.dtype == np.uint8 and img.shape == (64, 64, 3)
    assert img.seed == 3 and "Seed: 3" in img.parameters
    assert sdcore.tokenize("a red circle")[:4] == [49406, 320, 736, 7117]
    model = sdcore.load_model(str(path))
    emb = sdcore.encode_prompt(model, "a red circle")
    np.testing.assert_array_equal(emb, ours.encode_prompt("a red circle"))
    assert emb.shape == (1, 77, 32)


@pytest.mark.skipif(sdcore.cuda_available()[0], reason="a GPU is present")
def test_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(sdcore.UnsupportedError, match="'cuda' is not available"):
        sdcore.Pipeline.from_pretrained(device="cuda")
    with pytest.raises(ValueError, match="dtype"):
        sdcore.Pipeline.from_pretrained(dtype="float16")


def test_latent_previews_have_the_image_shape_and_follow_it():
    pipe = sdcore.Pipeline.from_pretrained()
    last = []
    images = pipe(
        "a red circle on a blue background",
        num_inference_steps=6,
        seed=11,
        num_images=2,
        callback=lambda step, total, latents: last.append(np.array(latents)),
    )
    preview = pipe.latents_to_rgb(last[-1])
    assert preview.shape == (2, 128, 128, 3) and preview.dtype == np.uint8
    # fitted on this generation: block for block (the preview is one colour per latent
    # pixel), the preview of its final latents explains most of the image's variance
    image = np.stack([np.asarray(i) for i in images]).astype(np.float64)
    blocks = image.reshape(2, 16, 8, 16, 8, 3).mean(axis=(2, 4))
    residual = ((preview[:, ::8, ::8].astype(np.float64) - blocks) ** 2).mean()
    assert residual < 0.5 * blocks.var()
