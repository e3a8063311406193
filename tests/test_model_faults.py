"""A damaged model is refused at load, and a model file changed under a running server costs it
nothing: it serves from memory of its own."""

import io
import os
import re
import shutil

import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import load_file, save_file
from sdcore.service.gen import sdcore_service_pb2 as pb
from service_harness import ServerThread, make_config

import sdcore
from sdcore.pipeline import DEFAULT_MODEL


@pytest.fixture
def model_copy(tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(DEFAULT_MODEL, folder)
    return folder


@pytest.mark.parametrize("component", ["unet", "vae", "text_encoder"])
def test_weights_holding_nan_or_inf_are_refused_at_load(model_copy, component, rng):
    name = (
        "model.safetensors"
        if component == "text_encoder"
        else "diffusion_pytorch_model.safetensors"
    )
    path = model_copy / component / name
    tensors = load_file(path)
    victim = sorted(tensors)[int(rng.integers(len(tensors)))]
    array = tensors[victim].copy()
    array.reshape(-1)[int(rng.integers(array.size))] = rng.choice([np.nan, np.inf, -np.inf])
    tensors[victim] = array
    save_file(tensors, path)
    # named as the engine names it (the text encoder's names gain their text_model. prefix)
    match = f"tensor '[^']*{re.escape(victim)}' holds NaN or infinite"
    with pytest.raises(sdcore.FormatError, match=match):
        sdcore.Pipeline.from_pretrained(str(model_copy))


def test_a_server_outlives_its_model_file_being_cut_short(model_copy):
    pipe = sdcore.Pipeline.from_pretrained(str(model_copy))
    request = dict(num_inference_steps=4, width=64, height=64, seed=21)
    expected = pipe("a red circle", **request)[0].array
    with ServerThread(make_config(model=str(model_copy))) as srv:
        unet = model_copy / "unet" / "diffusion_pytorch_model.safetensors"
        # cut the file in half in place (not a new file under the same name): a mapping of
        # it would now fault on the lost pages
        with open(unet, "r+b") as f:
            f.truncate(os.path.getsize(unet) // 2)
        shutil.rmtree(model_copy / "vae")
        reply = srv.stub().Generate(
            pb.GenerateRequest(prompt="a red circle", steps=4, width=64, height=64, seed=21)
        )
    served = np.asarray(Image.open(io.BytesIO(reply.images[0].png)).convert("RGB"))
    assert np.array_equal(served, expected)


def test_copied_weights_equal_mapped_ones(rng):
    mapped = sdcore.load_model(DEFAULT_MODEL)
    copied = sdcore.load_model(DEFAULT_MODEL, copy=True)
    for component in ("unet", "vae", "text_encoder"):
        a, b = getattr(mapped, component).weights, getattr(copied, component).weights
        assert a.names() == b.names()
        for name in rng.choice(a.names(), size=5, replace=False):
            assert np.array_equal(a.array(name), b.array(name))
