"""tools/train_default_model.py end to end with tiny models (slow: about a minute on 2 cores)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")


@pytest.mark.slow
def test_smoke_training_writes_a_loadable_pipeline(tmp_path):
    out = tmp_path / "model"
    cmd = [sys.executable, str(ROOT / "tools" / "train_default_model.py"), "--smoke"]
    cmd += ["--device", "cpu", "--out", str(out), "--workers", "2"]
    subprocess.run(cmd, check=True, cwd=ROOT, timeout=600)
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (out / part).is_dir(), part
    log = json.loads((out / "training_log.json").read_text())
    assert log["vae"]["steps"] == 6 and log["unet"]["steps"] == 6
    assert log["latents"]["scaling_factor"] > 0
    samples = json.loads((out / "samples" / "prompts.json").read_text())["samples"]
    assert all((out / "samples" / s["file"]).stat().st_size > 0 for s in samples)

    import torch

    # float16 on disk; float32 here, where the CPU runs it
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(
        str(out), torch_dtype=torch.float32, safety_checker=None
    )
    assert pipe.vae.config.scaling_factor == pytest.approx(log["latents"]["scaling_factor"])
    ids = pipe.tokenizer("a red circle", padding="max_length", max_length=77).input_ids
    assert ids[0] == 49406 and len(ids) == 77
    image = pipe(
        "a red circle",
        num_inference_steps=2,
        height=128,
        width=128,
        generator=torch.Generator("cpu").manual_seed(0),
        output_type="np",
    ).images[0]
    assert image.shape == (128, 128, 3)
