"""The `sdcore` command: generate images, report the build, and (with the service
installed) serve and call the gRPC API, and show the demo page."""

import argparse
import json
import os
import sys


def cmd_info(args):
    import sdcore

    available, reason = sdcore.cuda_available()
    info = {
        "version": sdcore.__version__,
        "build": sdcore._C.build_info(),
        "cuda_available": available,
        "cuda_devices": sdcore.cuda_devices(),
    }
    if not available:
        info["cuda_unavailable_because"] = reason
    print(json.dumps(info, indent=2))
    return 0


def cmd_generate(args):
    from tqdm import tqdm

    import sdcore
    from sdcore.pipeline import Pipeline
    from sdcore.samplers import SAMPLERS

    if args.sampler not in SAMPLERS:
        print(f"sdcore: --sampler must be one of {', '.join(SAMPLERS)}", file=sys.stderr)
        return 2
    try:
        pipe = Pipeline.from_pretrained(args.model, device=args.device)
        pipe.validate(
            prompt=args.prompt,
            negative_prompt=args.negative,
            num_inference_steps=args.steps,
            guidance_scale=args.cfg,
            width=args.width,
            height=args.height,
            seed=args.seed,
            sampler=args.sampler,
            num_images=args.num_images,
        )
    except (OSError, ValueError, sdcore.SdcoreError) as e:
        print(f"sdcore: {e}", file=sys.stderr)
        return 2
    bar = tqdm(total=None, unit="step", desc="generating", file=sys.stderr)

    def progress(step, total, latents):
        bar.total = total
        bar.update(step - bar.n)

    try:
        images = pipe(
            args.prompt,
            negative_prompt=args.negative,
            num_inference_steps=args.steps,
            guidance_scale=args.cfg,
            width=args.width,
            height=args.height,
            seed=args.seed,
            sampler=args.sampler,
            num_images=args.num_images,
            callback=progress,
        )
    except KeyboardInterrupt:
        bar.close()
        print("sdcore: interrupted", file=sys.stderr)
        return 130
    finally:
        bar.close()
    base, ext = os.path.splitext(args.output)
    for i, img in enumerate(images):
        path = args.output if len(images) == 1 else f"{base}-{i}{ext or '.png'}"
        img.save(path)
        print(f"{path}  seed {img.seed}")
    return 0


def cmd_serve(args):
    if args.ray_address is None:
        from service.server import run

        for flag in ("replicas", "max_replicas", "replica_cpus"):
            if getattr(args, flag) is not None:
                name = "--" + flag.replace("_", "-")
                print(f"sdcore serve: {name} needs --ray-address", file=sys.stderr)
                return 2
        return run(args)
    try:
        from service.ray_serve import run
    except ImportError as e:
        print(f"sdcore serve: --ray-address needs pip install 'sdcore[ray]' ({e})", file=sys.stderr)
        return 2
    return run(args)


def _add_ray_arguments(parser):
    g = parser.add_argument_group("ray (a Ray Serve application instead of one process)")
    g.add_argument(
        "--ray-address",
        help="serve on this Ray cluster (auto = the one `ray start` made here, HOST:PORT or "
        "ray://HOST:10001 = a remote one, local = start one in this process) behind Ray "
        "Serve's gRPC proxy on --port; without it, one process serves",
    )
    g.add_argument(
        "--replicas",
        type=int,
        help="engine replicas, each with the model loaded once (with --max-replicas, the "
        "fewest the autoscaler keeps; default 1)",
    )
    g.add_argument(
        "--max-replicas",
        type=int,
        help="autoscale between --replicas and this on ongoing requests per replica "
        "(default: a fixed --replicas)",
    )
    g.add_argument(
        "--replica-cpus",
        type=float,
        help="CPUs Ray reserves per replica, and its engine threads (default 1); with --device "
        "cuda each replica also takes one GPU",
    )


def cmd_client(args):
    from service.client import run

    return run(args)


def cmd_demo(args):
    from frontend.main import run

    return run(args)


def _add_service_commands(sub):
    """`serve`, `client` and `demo` need the gRPC packages; without them the other commands
    still work. `demo` also needs Gradio, which it asks for when it runs."""
    try:
        from frontend import main as demo
        from service import client, config
    except ImportError as e:
        reason = f"needs the service package and its dependencies ({e})"
        for name in ("serve", "client", "demo"):
            p = sub.add_parser(name, help=reason)
            p.set_defaults(func=lambda args, reason=reason: sys.exit(f"sdcore: {reason}"))
        return
    p = sub.add_parser("serve", help="serve text-to-image generation over gRPC (port 50051)")
    config.add_arguments(p)
    _add_ray_arguments(p)
    p.set_defaults(func=cmd_serve)
    p = sub.add_parser("client", help="talk to a running sdcore server")
    client.add_arguments(p)
    p.set_defaults(func=cmd_client)
    p = sub.add_parser("demo", help="the Gradio demo page over the gRPC service (port 7860)")
    demo.add_arguments(p)
    p.set_defaults(func=cmd_demo)


def build_parser():
    parser = argparse.ArgumentParser(prog="sdcore", description="Stable Diffusion in C and CUDA")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="how sdcore was built and which devices it can use")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("generate", help="one prompt to PNG files")
    p.add_argument("prompt")
    p.add_argument("-o", "--output", default="out.png", help="PNG path (-N added per image)")
    p.add_argument(
        "--model",
        default=None,
        help="diffusers folder or .safetensors file (default: the model shipped with sdcore)",
    )
    p.add_argument("--negative", default=None, help="negative prompt")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument(
        "--cfg",
        type=float,
        default=None,
        help="classifier-free guidance scale (default: the model's: 5 for the shipped model, "
        "7.5 for others)",
    )
    p.add_argument("--seed", type=int, default=-1, help="-1: random")
    p.add_argument("--sampler", default="euler_a")
    p.add_argument("--width", type=int, default=None, help="default: the model's size")
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--num-images", type=int, default=1)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.set_defaults(func=cmd_generate)
    _add_service_commands(sub)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
