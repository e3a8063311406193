"""The `sdcore` command."""

import argparse
import json
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


def cmd_serve(args):
    from service.server import run

    return run(args)


def cmd_client(args):
    from service.client import run

    return run(args)


def _add_service_commands(sub):
    """`serve` and `client` need the gRPC packages; without them the other commands still work."""
    try:
        from service import client, config
    except ImportError as e:
        reason = f"needs the service package and its dependencies ({e})"
        for name in ("serve", "client"):
            p = sub.add_parser(name, help=reason)
            p.set_defaults(func=lambda args, reason=reason: sys.exit(f"sdcore: {reason}"))
        return
    p = sub.add_parser("serve", help="serve text-to-image generation over gRPC (port 50051)")
    config.add_arguments(p)
    p.set_defaults(func=cmd_serve)
    p = sub.add_parser("client", help="talk to a running sdcore server")
    client.add_arguments(p)
    p.set_defaults(func=cmd_client)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="sdcore", description="Stable Diffusion in C and CUDA")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="how sdcore was built and which devices it can use")
    p.set_defaults(func=cmd_info)
    _add_service_commands(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
