"""sdcore and diffusers side by side on one GPU, in one run: SD 1.5 with random weights at
512x512, batch 2 (classifier-free guidance), float16.

    python bench/gpu.py                 # sdcore, diffusers eager, diffusers + torch.compile
    python bench/gpu.py --no-compile    # without the torch.compile column (it compiles
                                        # for minutes)

Times the UNet step, the VAE decode of one image, the text encoder (B=2, 77 tokens) and
a whole 30-step generation (Euler), and prints a table with the ratio sdcore/peer for
each, then peak device memory. GPU times are wall clock around synchronised calls, best
of --repeat after a warm-up. diffusers' generation gets its prompt embeddings from the
same text encoder (it has no tokenizer here); its time includes that encode.

Memory: sdcore's is the most device memory in use (cudaMemGetInfo) less what was in use
before it started, sampled after every one of its allocations (its use only grows at
those) and at the end. diffusers': PyTorch's peak reserved memory
(torch.cuda.max_memory_reserved), its allocator's high-water mark.
"""

import argparse
import gc
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch

import sdcore
from sdcore import _C
from sdcore.configs import SD15_SCHEDULER, SD15_TEXT_ENCODER, SD15_UNET, SD15_VAE


def best_time(fn, repeat):
    fn()  # warm-up: plans buffers, picks GEMM algorithms
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def log(*args):
    print(*args, flush=True)


def build_models(folder):
    """Random SD 1.5 models in float16 on the GPU, saved as a diffusers folder for sdcore."""
    import diffusers
    import transformers

    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(**SD15_UNET).half().cuda().eval()
    vae = diffusers.AutoencoderKL(**SD15_VAE).half().cuda().eval()
    text = transformers.CLIPTextModel(transformers.CLIPTextConfig(**SD15_TEXT_ENCODER))
    text = text.half().cuda().eval()
    scheduler = diffusers.EulerDiscreteScheduler.from_config(
        SD15_SCHEDULER, timestep_spacing="leading"
    )
    unet.save_pretrained(os.path.join(folder, "unet"))
    vae.save_pretrained(os.path.join(folder, "vae"))
    text.save_pretrained(os.path.join(folder, "text_encoder"))
    scheduler.save_pretrained(os.path.join(folder, "scheduler"))
    return unet, vae, text, scheduler


def bench_sdcore(folder, args, inputs):
    sample, timesteps, context, latent, ids = inputs
    gc.collect()
    free0, total = _C.cuda_memory_info()
    _C.cuda_memory_peak(reset=True)
    pipe = sdcore.Pipeline.from_pretrained(folder, device="cuda")
    t = {}
    t["unet"] = best_time(lambda: pipe.unet.forward(sample, timesteps, context), args.repeat)
    log(f"  sdcore UNet step {t['unet'] * 1e3:.2f} ms")
    t["vae"] = best_time(lambda: pipe.vae.decode(latent), args.repeat)
    log(f"  sdcore VAE decode {t['vae'] * 1e3:.2f} ms")
    t["text"] = best_time(lambda: pipe.text_encoder.encode(ids), args.repeat)
    log(f"  sdcore text encoder {t['text'] * 1e3:.2f} ms")

    def generate():
        pipe(
            "a photograph of an astronaut riding a horse",
            num_inference_steps=30,
            guidance_scale=7.5,
            width=512,
            height=512,
            seed=1,
            sampler="euler",
        )

    t["generate"] = best_time(generate, max(1, args.repeat // 5))
    log(f"  sdcore 30-step generation {t['generate']:.3f} s")
    free1, _ = _C.cuda_memory_info()
    peak = _C.cuda_memory_peak() - (total - free0)
    t["memory"] = max(peak, free0 - free1) / 2**20
    end = (free0 - free1) / 2**20
    log(f"  sdcore device memory {t['memory']:.0f} MiB at most, {end:.0f} MiB at the end")
    pipe = None  # drops the models: their device memory is freed
    gc.collect()
    return t


def bench_diffusers(models, args, inputs, compiled):
    import diffusers

    unet, vae, text, scheduler = models
    sample, timesteps, context, latent, ids = inputs
    dev = lambda a: torch.from_numpy(a).cuda().half()  # noqa: E731
    s, ts, c, z = dev(sample), torch.from_numpy(timesteps).cuda(), dev(context), dev(latent)
    tid = torch.from_numpy(ids.astype(np.int64)).cuda()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    if compiled:
        unet = torch.compile(unet, mode="reduce-overhead", fullgraph=True)
        vae.decode = torch.compile(vae.decode, mode="reduce-overhead", fullgraph=True)
        text = torch.compile(text, mode="reduce-overhead", fullgraph=True)
        log("  compiling (the first calls take minutes)...")
    t = {}
    with torch.inference_mode():
        t["unet"] = best_time(lambda: unet(s, ts, c), args.repeat)
        log(f"  UNet step {t['unet'] * 1e3:.2f} ms")
        t["vae"] = best_time(lambda: vae.decode(z), args.repeat)
        log(f"  VAE decode {t['vae'] * 1e3:.2f} ms")
        t["text"] = best_time(lambda: text(tid), args.repeat)
        log(f"  text encoder {t['text'] * 1e3:.2f} ms")
        pipe = diffusers.StableDiffusionPipeline(
            vae=vae if not compiled else vae,
            text_encoder=text,
            tokenizer=None,
            unet=unet,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        pipe.set_progress_bar_config(disable=True)

        def generate():
            emb = text(tid)[0]
            pipe(
                prompt_embeds=emb[1:2],
                negative_prompt_embeds=emb[0:1],
                num_inference_steps=30,
                guidance_scale=7.5,
                width=512,
                height=512,
                generator=torch.Generator("cpu").manual_seed(1),
                output_type="np",
            )

        t["generate"] = best_time(generate, max(1, args.repeat // 5))
        log(f"  30-step generation {t['generate']:.3f} s")
    t["memory"] = torch.cuda.max_memory_reserved() / 2**20
    return t


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=10)
    p.add_argument("--no-compile", action="store_true", help="skip diffusers + torch.compile")
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args()
    ok, why = sdcore.cuda_available()
    if not ok or not torch.cuda.is_available():
        sys.exit(f"bench/gpu.py needs a GPU for both sdcore and PyTorch: {why}")
    log(f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    rng = np.random.default_rng(0)
    inputs = (
        rng.standard_normal((2, 4, 64, 64)).astype(np.float32),
        np.full(2, 500.0, np.float32),
        rng.standard_normal((2, 77, 768)).astype(np.float32),
        rng.standard_normal((1, 4, 64, 64)).astype(np.float32),
        rng.integers(0, 49408, (2, 77)).astype(np.int32),
    )
    with tempfile.TemporaryDirectory() as folder:
        models = build_models(folder)
        results = {}
        log("sdcore:")
        results["sdcore"] = bench_sdcore(folder, args, inputs)
        log("diffusers eager:")
        results["eager"] = bench_diffusers(models, args, inputs, compiled=False)
        if not args.no_compile:
            log("diffusers + torch.compile(mode='reduce-overhead'):")
            torch.cuda.reset_peak_memory_stats()
            results["compiled"] = bench_diffusers(models, args, inputs, compiled=True)
    peers = [k for k in ("eager", "compiled") if k in results]
    log("")
    head = "| | sdcore | " + " | ".join(f"diffusers {k}" for k in peers)
    head += " | " + " | ".join(f"sdcore / {k}" for k in peers) + " |"
    log(head)
    log("|" + " --- |" * (2 + 2 * len(peers)))
    rows = [
        ("UNet step (ms)", "unet", 1e3),
        ("VAE decode (ms)", "vae", 1e3),
        ("text encoder (ms)", "text", 1e3),
        ("30-step generation (s)", "generate", 1),
        ("peak device memory (MiB)", "memory", 1),
    ]
    for label, key, mult in rows:
        ours = results["sdcore"][key] * mult
        cells = [f"{results[k][key] * mult:.2f}" for k in peers]
        ratios = [f"{ours / (results[k][key] * mult):.2f}" for k in peers]
        log(f"| {label} | {ours:.2f} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
