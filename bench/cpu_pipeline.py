"""sdcore and diffusers side by side on the CPU, in one run: whole generations with the
shipped model, and SD 1.5-sized UNet steps and VAE decodes with random weights.

    python bench/cpu_pipeline.py            # the shipped model: 20 steps at 128x128
    python bench/cpu_pipeline.py --sd15     # also SD 1.5 at 512x512 (B=2 for CFG): minutes

Prints seconds and peak resident memory for each side and the ratio sdcore/diffusers.
Peak memory is the growth of the process's high-water mark during the measured call
(reset before each call through /proc/self/clear_refs).
"""

import argparse
import os
import time

import numpy as np
import torch

import sdcore


def reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def rss_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


# what measure() times by: wall time, or with one thread the calling thread's CPU time
# (which leaves out time the scheduler gave to other jobs on a shared machine)
CLOCK = {"wall": time.perf_counter, "thread": time.thread_time}
clock = CLOCK["wall"]


def measure(fn, repeat):
    """(best seconds over `repeat` calls after the first, peak memory growth in MiB of the
    first call, which is the one that allocates its working memory)."""
    reset_peak()
    base = rss_kib("VmRSS")
    fn()
    peak = (rss_kib("VmHWM") - base) / 1024
    best = float("inf")
    for _ in range(repeat):
        t0 = clock()
        fn()
        best = min(best, clock() - t0)
    return best, peak


def row(name, ours, theirs):
    print(
        f"{name:40s} {ours[0]:9.3f} {theirs[0]:9.3f} {ours[0] / theirs[0]:6.2f}"
        f" {ours[1]:9.0f} {theirs[1]:9.0f}",
        flush=True,
    )


def header():
    print(
        f"{'':40s} {'sdcore s':>9s} {'diff. s':>9s} {'ratio':>6s} {'sd MiB':>9s} {'diff MiB':>9s}"
    )


def shipped_model(repeat):
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionPipeline

    pipe = sdcore.Pipeline.from_pretrained()
    path = os.path.dirname(sdcore.pipeline.DEFAULT_MODEL + "/")
    ref = StableDiffusionPipeline.from_pretrained(
        path, safety_checker=None, torch_dtype=torch.float32
    )
    ref.scheduler = EulerAncestralDiscreteScheduler.from_config(ref.scheduler.config)
    ref.set_progress_bar_config(disable=True)
    prompt = "a red circle on a blue background"

    def ours():
        pipe(
            prompt,
            num_inference_steps=20,
            guidance_scale=7.5,
            width=128,
            height=128,
            seed=1,
            sampler="euler_a",
        )

    def theirs():
        with torch.inference_mode():
            ref(
                prompt,
                num_inference_steps=20,
                guidance_scale=7.5,
                width=128,
                height=128,
                generator=torch.Generator("cpu").manual_seed(1),
                output_type="np",
            )

    header()
    row("shipped model, 20 steps 128x128 (CFG)", measure(ours, repeat), measure(theirs, repeat))


def sd15(repeat):
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from sdcore.configs import SD15_UNET, SD15_VAE
    from sdcore.vae import VAE

    print("building random SD 1.5 UNet and VAE ...", flush=True)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**SD15_UNET).eval()
    vae = AutoencoderKL(**SD15_VAE).eval()
    u_state = {k: v.numpy() for k, v in unet.state_dict().items()}
    v_state = {k: v.numpy() for k, v in vae.state_dict().items()}
    our_unet = sdcore._C.UNet(sdcore._C.Weights.from_arrays(u_state), dict(unet.config))
    our_vae = VAE(dict(vae.config), sdcore._C.Weights.from_arrays(v_state), with_encoder=False)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 64, 64)).astype(np.float32)
    ctx = rng.standard_normal((2, 77, 768)).astype(np.float32)
    t = np.array([500.0, 500.0], np.float32)
    z = rng.standard_normal((1, 4, 64, 64)).astype(np.float32)
    tx, tctx, tt, tz = map(torch.from_numpy, (x, ctx, t, z))

    def unet_theirs():
        with torch.inference_mode():
            unet(tx, tt, tctx)

    def vae_theirs():
        with torch.inference_mode():
            vae.decode(tz)

    header()
    row(
        "SD 1.5 UNet step, 512x512, B=2",
        measure(lambda: our_unet.forward(x, t, ctx), repeat),
        measure(unet_theirs, repeat),
    )
    row(
        "SD 1.5 VAE decode, 512x512",
        measure(lambda: our_vae.decode(z), repeat),
        measure(vae_theirs, repeat),
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sd15", action="store_true", help="also the SD 1.5-sized stages")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, help="threads for both sides (default: all)")
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCK),
        default="wall",
        help="wall time, or the calling thread's CPU time (needs --threads 1)",
    )
    args = parser.parse_args()
    if args.clock == "thread" and args.threads != 1:
        parser.error("--clock thread counts one thread's CPU time: it needs --threads 1")
    global clock
    clock = CLOCK[args.clock]
    if args.threads:
        torch.set_num_threads(args.threads)
        sdcore._C.set_cpu_threads(args.threads)
    print(
        f"cores: {os.cpu_count()}, torch {torch.__version__} threads {torch.get_num_threads()},"
        f" sdcore threads {sdcore._C.build_info()['cpu_threads']}, clock {args.clock}"
    )
    # run as a script, sdcore comes from the installed copy, which may not be this
    # checkout's build (PYTHONPATH=. measures the checkout)
    print(f"sdcore from {os.path.dirname(sdcore.__file__)}")
    shipped_model(args.repeat)
    if args.sd15:
        sd15(max(1, args.repeat - 2))


if __name__ == "__main__":
    main()
