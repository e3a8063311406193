"""GenerationRequest: defaults from the loaded model and every check in one place, through
the Pipeline on the model shipped in the package (or SDCORE_TEST_MODEL)."""

import json
import os

import numpy as np
import pytest

import sdcore
from sdcore.request import LIMITS, GenerationRequest, ValidationError


@pytest.fixture(scope="module")
def pipe():
    return sdcore.Pipeline.from_pretrained(os.environ.get("SDCORE_TEST_MODEL"))


def model_file(pipe, *parts):
    path = os.environ.get("SDCORE_TEST_MODEL") or sdcore.pipeline.DEFAULT_MODEL
    with open(os.path.join(path, *parts)) as f:
        return json.load(f)


def size_multiple(pipe):
    """Hand-derived from the model's configs: each UNet level but the last halves the
    latent, and each VAE level but the last halves the image."""
    unet = model_file(pipe, "unet", "config.json")
    vae = model_file(pipe, "vae", "config.json")
    return 2 ** (len(unet["block_out_channels"]) - 1) * 2 ** (len(vae["block_out_channels"]) - 1)


def refused(pipe, field, **fields):
    with pytest.raises(ValidationError) as e:
        pipe.resolve(GenerationRequest(**{"prompt": "x", **fields}))
    assert e.value.field == field and str(e.value).startswith(field + ": "), str(e.value)
    assert isinstance(e.value, ValueError)
    return str(e.value)


def test_defaults_come_from_the_model(pipe):
    r = pipe.resolve(GenerationRequest("a red circle"))
    sample = model_file(pipe, "unet", "config.json")["sample_size"]
    assert (r.width, r.height) == (sample * 8, sample * 8) == pipe.default_size
    assert r.guidance_scale == pipe.rules.guidance_scale
    if pipe.is_default_model:
        assert r.guidance_scale == sdcore.pipeline.SHIPPED_MODEL_GUIDANCE
    assert r.num_inference_steps == 20 and r.sampler == "euler_a" and r.num_images == 1
    assert r.model == pipe.name and 0 <= r.seed < 2**32 and r.seeds == [r.seed]
    # resolving a resolved request changes nothing
    assert pipe.resolve(r) == r


def test_width_that_the_unet_cannot_take_is_refused_before_any_work(pipe):
    m = size_multiple(pipe)
    bad = m + 8  # 40 on the shipped model (72 with its multiple of 32 fits no level)
    message = refused(pipe, "width", width=bad)
    assert f"multiple of {m}" in message
    assert f"multiple of {m}" in refused(pipe, "height", height=72 if 72 % m else m + 8)
    calls = []
    with pytest.raises(ValidationError, match="^width"):
        pipe("x", width=bad, num_inference_steps=1, callback=lambda *a: calls.append(a))
    assert calls == []
    (image,) = pipe("x", width=2 * m, height=m * 3, num_inference_steps=1, seed=1)
    assert image.shape == (3 * m, 2 * m, 3)


@pytest.mark.parametrize("top", [LIMITS.max_seed, 2**63 - 1], ids=["engine", "int64"])
def test_seed_range_counts_every_image(pipe, top):
    # the engine's seeds are uint64 (as torch.Generator's); a server narrows them to int64
    assert LIMITS.max_seed == 2**64 - 1
    limits = LIMITS.narrowed(max_seed=top)
    for seed, n in ((top, 2), (top - 2, 4), (-2, 1), (top + 1, 1)):
        with pytest.raises(ValidationError, match="^seed: ") as e:
            pipe.resolve(GenerationRequest("x", seed=seed, num_images=n), limits)
        assert e.value.field == "seed"
    r = pipe.resolve(GenerationRequest("x", seed=top - 1, num_images=2), limits)
    assert r.seeds == [top - 1, top]
    with pytest.raises(ValidationError, match="^seed"):
        pipe("x", seed=LIMITS.max_seed, num_images=2, num_inference_steps=1)


@pytest.mark.parametrize(
    "field,value",
    [
        ("prompt", "a\x00b"),
        ("prompt", 7),
        ("negative_prompt", "\x00"),
        ("width", "64"),
        ("width", 64.0),
        ("height", True),
        ("height", 0),
        ("width", 4096),
        ("num_inference_steps", 0),
        ("num_inference_steps", 1.5),
        ("num_inference_steps", LIMITS.max_steps + 1),
        ("guidance_scale", float("nan")),
        ("guidance_scale", float("inf")),
        ("guidance_scale", -0.5),
        ("guidance_scale", LIMITS.max_guidance + 1),
        ("guidance_scale", "7"),
        ("seed", 2**64),
        ("seed", "1"),
        ("sampler", "heun"),
        ("num_images", 0),
        ("num_images", LIMITS.max_images + 1),
        ("num_images", True),
        ("model", "another-model"),
        ("init_image", np.zeros((8, 8, 3), np.uint8)),
        ("mask_image", np.zeros((8, 8), np.uint8)),
        ("strength", 0.5),
        ("loras", ["style:0.8"]),
    ],
)
def test_every_field_has_its_check(pipe, field, value):
    refused(pipe, field, **{field: value})


def test_every_field_is_checked_somewhere():
    import dataclasses
    import inspect

    tested = {p[0] for p in test_every_field_has_its_check.pytestmark[0].args[1]}
    assert {f.name for f in dataclasses.fields(GenerationRequest)} == tested
    assert "field" in inspect.signature(ValidationError).parameters


def test_prompt_length_is_counted_in_chunks_after_break(pipe):
    n = LIMITS.max_prompt_chunks
    assert pipe.resolve(GenerationRequest("BREAK " * (n - 1) + "x")).prompt
    message = refused(pipe, "prompt", prompt="BREAK " * n + "x")
    assert f"{n + 1} chunks" in message and f"at most {n}" in message
    # the 4000-character prompt that made 51,282 tokens
    refused(pipe, "prompt", prompt=("BREAK " * 700)[:4000])
    refused(pipe, "negative_prompt", negative_prompt="BREAK " * n + "x")
    refused(pipe, "prompt", prompt="x" * (LIMITS.max_prompt_chars + 1))


def test_deep_emphasis_is_refused_not_a_nan_image(pipe):
    # ~1000 nested brackets weighed 1.1 ** 1000, beyond float32: the image became NaN
    with pytest.raises(ValidationError, match="^prompt: brackets nest more than 100"):
        pipe("(" * 1000 + "a red circle", num_inference_steps=1, seed=1)
    with pytest.raises(ValidationError, match="^negative_prompt: emphasis weight"):
        pipe("x", negative_prompt="(" * 60 + "blue", num_inference_steps=1, seed=1)
    with pytest.raises(ValidationError, match="^prompt: brackets"):
        pipe.encode_prompt("[" * 101 + "x")
    # within the bounds the conditioning stays finite
    emb = pipe.encode_prompt("(" * 48 + "a red circle")
    assert np.isfinite(emb).all()


def test_encode_prompt_checks_as_a_request_does(pipe):
    with pytest.raises(ValidationError, match="^prompt: contains a NUL"):
        pipe.encode_prompt("a\x00")
    with pytest.raises(ValidationError, match="^prompt: .* chunks"):
        pipe.encode_prompt("BREAK " * 100)


def test_echoed_names_are_cut_short(pipe):
    for field in ("model", "sampler"):
        message = refused(pipe, field, **{field: "y" * 5000})
        assert "y" * 64 in message and "y" * 65 not in message and len(message) < 300


def test_limits_narrow_but_never_widen():
    narrow = LIMITS.narrowed(max_steps=150, max_images=8, max_prompt_chars=None)
    assert (narrow.max_steps, narrow.max_images) == (150, 8)
    assert narrow.max_prompt_chars == LIMITS.max_prompt_chars
    assert LIMITS.narrowed(max_steps=10**6).max_steps == LIMITS.max_steps


def test_narrowed_limits_apply(pipe):
    limits = LIMITS.narrowed(max_steps=5)
    with pytest.raises(ValidationError, match="^num_inference_steps: must be between 1 and 5"):
        pipe.resolve(GenerationRequest("x", num_inference_steps=6), limits)


def test_batch_lists_are_checked_per_prompt(pipe):
    with pytest.raises(ValidationError, match="^negative_prompt: has 1 entries for 2 prompts"):
        pipe(["a", "b"], negative_prompt=["x"], num_inference_steps=1)
    with pytest.raises(ValidationError, match="^prompt: no prompt"):
        pipe([], num_inference_steps=1)


def test_the_engine_double_takes_the_same_requests(pipe):
    from engine_double import EngineDouble, seed_colour

    double = EngineDouble(size_multiple=pipe.rules.size_multiple)
    request = GenerationRequest("a red circle", width=72, seed=5, num_images=2)
    for model in (pipe, double):  # the same rules refuse the same width
        with pytest.raises(ValidationError, match="^width"):
            model.resolve(request)
    request = double.resolve(GenerationRequest("a red circle", seed=5, num_images=2))
    images = double.generate([request])
    assert [im.seed for im in images] == [5, 6]
    assert (images[1].array == seed_colour(6)).all()
