"""Where sdcore's device memory goes: random SD 1.5 weights (float16) at 512x512 with
guidance, device memory in use (cudaMemGetInfo) after each phase of a generation.

    python tools/gpu_memory.py

Loads the pipeline, then runs the UNet step three times (plans the activation arena,
settles it, records the CUDA graph), a VAE decode, the text encoder and a 30-step
generation, printing the growth of each and the activation arena's size. It builds the
model on the CPU with diffusers, so PyTorch holds no device memory here.
"""

import sys
import tempfile

import numpy as np

import sdcore
from sdcore import _C
from sdcore.configs import SD15_SCHEDULER, SD15_TEXT_ENCODER, SD15_UNET, SD15_VAE

MIB = 2**20


def save_models(folder):
    import diffusers
    import torch
    import transformers

    torch.manual_seed(0)
    diffusers.UNet2DConditionModel(**SD15_UNET).half().save_pretrained(f"{folder}/unet")
    diffusers.AutoencoderKL(**SD15_VAE).half().save_pretrained(f"{folder}/vae")
    text = transformers.CLIPTextModel(transformers.CLIPTextConfig(**SD15_TEXT_ENCODER)).half()
    text.save_pretrained(f"{folder}/text_encoder")
    scheduler = diffusers.EulerDiscreteScheduler.from_config(
        SD15_SCHEDULER, timestep_spacing="leading"
    )
    scheduler.save_pretrained(f"{folder}/scheduler")


def main():
    ok, why = sdcore.cuda_available()
    if not ok:
        sys.exit(f"tools/gpu_memory.py needs a GPU: {why}")
    rng = np.random.default_rng(0)
    sample = rng.standard_normal((2, 4, 64, 64)).astype(np.float32)
    timesteps = np.full(2, 500.0, np.float32)
    context = rng.standard_normal((2, 77, 768)).astype(np.float32)
    latent = rng.standard_normal((1, 4, 64, 64)).astype(np.float32)
    ids = rng.integers(0, 49408, (2, 77)).astype(np.int32)
    with tempfile.TemporaryDirectory() as folder:
        save_models(folder)
        free0, total = _C.cuda_memory_info()
        _C.cuda_memory_peak(reset=True)
        last = [free0]

        def report(what):
            free, _ = _C.cuda_memory_info()
            grew, used = (last[0] - free) / MIB, (free0 - free) / MIB
            print(f"{what:<40} +{grew:8.1f} MiB   in use {used:8.1f} MiB", flush=True)
            last[0] = free

        pipe = sdcore.Pipeline.from_pretrained(folder, device="cuda")
        report("weights (UNet, VAE decoder, text)")
        for k, what in enumerate(["planning run", "settled run", "graph recorded + replayed"]):
            pipe.unet.forward(sample, timesteps, context)
            report(f"UNet step {k + 1} ({what})")
        pipe.unet.forward(sample, timesteps, context)
        report("UNet step 4 (replay)")
        for k in range(2):
            pipe.vae.decode(latent)
            report(f"VAE decode {k + 1}")
        for k in range(2):
            pipe.text_encoder.encode(ids)
            report(f"text encoder {k + 1}")
        for k in range(2):
            pipe("a red circle", num_inference_steps=30, width=512, height=512, seed=1)
            report(f"30-step generation {k + 1}")
        print(f"activation arena (shared pool): {pipe.unet.activation_bytes / MIB:.1f} MiB")
        peak = (_C.cuda_memory_peak() - (total - free0)) / MIB
        print(f"most in use at any allocation: {peak:.1f} MiB")
        print(f"device: {total / MIB:.0f} MiB in all")


if __name__ == "__main__":
    main()
