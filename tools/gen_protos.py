"""Regenerate the Python gRPC stubs in service/gen/ from proto/*.proto.

    python tools/gen_protos.py            # rewrite service/gen/
    python tools/gen_protos.py --out DIR  # write them somewhere else (the staleness test does)

Needs grpcio-tools (`pip install grpcio-tools`, a test/dev dependency). protoc writes
`import foo_pb2` as a top-level import; the stubs live inside the `service.gen` package, so
those lines are rewritten as relative imports (`from . import foo_pb2`).
"""

import argparse
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
GEN_DIR = ROOT / "service" / "gen"

INIT_TEXT = '"""Stubs generated from proto/ by tools/gen_protos.py; do not edit."""\n'


def proto_files():
    return sorted(PROTO_DIR.glob("*.proto"))


def generate(out_dir):
    """Write the stubs of every proto/*.proto into out_dir; returns the files written."""
    from grpc_tools import protoc

    try:
        import importlib.resources as resources

        include = str(resources.files("grpc_tools") / "_proto")
    except (ImportError, AttributeError):  # pragma: no cover
        import pkg_resources

        include = pkg_resources.resource_filename("grpc_tools", "_proto")
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    protos = proto_files()
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *[str(p) for p in protos],
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed on " + ", ".join(p.name for p in protos))
    modules = {p.stem + "_pb2" for p in protos}
    written = []
    for path in sorted(out_dir.glob("*_pb2*.py*")):
        text = path.read_text()
        for mod in modules:
            text = re.sub(rf"^import {mod} as ", f"from . import {mod} as ", text, flags=re.M)
        path.write_text(text)
        written.append(path)
    init = out_dir / "__init__.py"
    init.write_text(INIT_TEXT)
    written.append(init)
    return written


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(GEN_DIR), help="output folder (default service/gen)")
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
