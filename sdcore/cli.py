"""The `sdcore` command: generate images, report the build, and (with the service
installed) serve and call the gRPC API, and show the demo page."""

import argparse
import json
import os
import sys


def cmd_info(args):
    import sdcore

    available, reason = sdcore.cuda_available()
    build = sdcore._C.build_info()
    info = {
        "version": sdcore.__version__,
        "build": build,
        "cuda_available": available,
        "cuda_devices": sdcore.cuda_devices(),
    }
    if not available:
        # a build without the backend says why it was left out and how to get it
        info["cuda_unavailable_because"] = (
            reason if build["cuda_built"] else build["cuda_not_built_because"]
        )
    print(json.dumps(info, indent=2))
    return 0


def check_output_path(output):
    """None when PNGs can be written at `output`, else a one-line reason. Checked before any
    work, so that a typo in the folder does not cost a model load and a generation."""
    folder = os.path.dirname(os.path.abspath(output))
    if os.path.isdir(output):
        return f"--output: {output} is a folder; give a file name such as {output}/out.png"
    if not os.path.isdir(folder):
        return f"--output: the folder {folder} does not exist"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"--output: cannot write in {folder}"
    return None


def output_paths(output, count):
    """The PNG paths of `count` images: `output` itself for one, NAME-i.EXT for several."""
    if count == 1:
        return [output]
    base, ext = os.path.splitext(output)
    return [f"{base}-{i}{ext or '.png'}" for i in range(count)]


def cmd_generate(args):
    from tqdm import tqdm

    import sdcore
    from sdcore.pipeline import Pipeline
    from sdcore.request import GenerationRequest

    problem = check_output_path(args.output)
    if problem:
        print(f"sdcore: {problem}", file=sys.stderr)
        return 2
    request = GenerationRequest(
        prompt=args.prompt,
        negative_prompt=args.negative_prompt,
        width=args.width,
        height=args.height,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance_scale,
        seed=args.seed,
        sampler=args.sampler,
        num_images=args.num_images,
    )
    try:
        pipe = Pipeline.from_pretrained(args.model, device=args.device)
        request = pipe.resolve(request)
    except (OSError, ValueError, sdcore.SdcoreError) as e:
        print(f"sdcore: {e}", file=sys.stderr)
        return 2
    bar = tqdm(total=None, unit="step", desc="generating", file=sys.stderr)

    def progress(step, total, latents):
        bar.total = total
        bar.update(step - bar.n)

    try:
        images = pipe.generate([request], callback=progress)
    except KeyboardInterrupt:
        bar.close()
        print("sdcore: interrupted", file=sys.stderr)
        return 130
    finally:
        bar.close()
    for path, img in zip(output_paths(args.output, len(images)), images, strict=True):
        img.save(path)
        print(f"{path}  seed {img.seed}")
    return 0


def cmd_serve(args):
    if args.ray_address is None:
        from sdcore.service.server import run

        for flag in ("replicas", "max_replicas", "replica_cpus"):
            if getattr(args, flag) is not None:
                name = "--" + flag.replace("_", "-")
                print(f"sdcore serve: {name} needs --ray-address", file=sys.stderr)
                return 2
        return run(args)
    try:
        from sdcore.service.ray_serve import run
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
    from sdcore.service.client import run

    return run(args)


def cmd_demo(args):
    from sdcore.frontend.main import run

    return run(args)


def _add_service_commands(sub):
    """`serve`, `client` and `demo` need the gRPC packages; without them the other commands
    still work. `demo` also needs Gradio, which it asks for when it runs."""
    try:
        from sdcore.frontend import main as demo
        from sdcore.service import client, config
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
    p = sub.add_parser("demo", help="the Gradio demo page, over gRPC or HTTP (port 7860)")
    demo.add_arguments(p)
    p.set_defaults(func=cmd_demo)


def add_request_arguments(parser):
    """The flags of one generation request, spelt alike by `sdcore generate` and `sdcore
    client generate`. Unset: the model's default (the server's, for the client)."""
    from sdcore.pipeline import SHIPPED_MODEL_GUIDANCE
    from sdcore.request import DEFAULT_GUIDANCE, DEFAULT_SAMPLER, DEFAULT_STEPS
    from sdcore.samplers import SAMPLERS

    parser.add_argument("prompt", help="what to draw; (word:1.2) and BREAK as in other front ends")
    parser.add_argument("--negative-prompt", "--negative", default="", help="what not to draw")
    parser.add_argument(
        "--width", type=int, default=None, help="image width (default: the model's)"
    )
    parser.add_argument(
        "--height", type=int, default=None, help="image height (default: the model's)"
    )
    parser.add_argument(
        "--steps",
        "--num-inference-steps",
        dest="steps",
        type=int,
        default=None,
        help=f"denoising steps (default: {DEFAULT_STEPS})",
    )
    parser.add_argument(
        "--guidance-scale",
        "--cfg",
        type=float,
        default=None,
        help=f"classifier-free guidance scale (default: the model's: "
        f"{SHIPPED_MODEL_GUIDANCE:g} for the shipped model, {DEFAULT_GUIDANCE:g} for others)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=-1,
        help="seed of the first image; image i uses seed + i (-1: random)",
    )
    parser.add_argument(
        "--sampler", default=None, choices=SAMPLERS, help=f"sampler (default: {DEFAULT_SAMPLER})"
    )
    parser.add_argument(
        "--num-images", type=int, default=1, help="how many images (seeds s, s+1, ...)"
    )
    return parser


def build_parser():
    parser = argparse.ArgumentParser(prog="sdcore", description="Stable Diffusion in C and CUDA")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="how sdcore was built and which devices it can use")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("generate", help="one prompt to PNG files")
    add_request_arguments(p)
    p.add_argument(
        "-o", "--output", default="out.png", help="PNG path; with several images NAME-0.png, ..."
    )
    p.add_argument(
        "--model",
        default=None,
        help="diffusers folder or .safetensors file (default: the model shipped with sdcore)",
    )
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where to run")
    p.set_defaults(func=cmd_generate)
    _add_service_commands(sub)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
