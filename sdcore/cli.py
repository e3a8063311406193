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


def main(argv=None):
    parser = argparse.ArgumentParser(prog="sdcore", description="Stable Diffusion in C and CUDA")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="how sdcore was built and which devices it can use")
    p.set_defaults(func=cmd_info)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
