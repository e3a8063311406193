"""`sdcore client`: generate images on a running server, or ask for its status."""

import argparse
import json
import os
import pathlib
import sys

import grpc
from sdcore.service import DEFAULT_PORT
from sdcore.service.gen import sdcore_service_pb2 as pb
from sdcore.service.gen import sdcore_service_pb2_grpc as pb_grpc

from sdcore.cli import add_request_arguments, check_output_path, output_paths
from sdcore.request import GenerationRequest


def add_arguments(parser):
    sub = parser.add_subparsers(dest="client_command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--server", default=f"localhost:{DEFAULT_PORT}", help="host:port")
    common.add_argument(
        "--api-key",
        default=os.environ.get("GRPC_API_KEY"),
        help="sent as metadata x-api-key (default: env GRPC_API_KEY)",
    )
    common.add_argument("--tls", action="store_true", help="connect with TLS")
    common.add_argument("--ca-cert", help="PEM root certificate for TLS (default: system roots)")
    common.add_argument("--timeout", type=float, default=None, help="deadline in seconds")

    g = sub.add_parser("generate", parents=[common], help="generate images and save them as PNG")
    add_request_arguments(g)
    g.add_argument(
        "-o",
        "--output",
        default="out.png",
        help="PNG path; with several images, NAME-0.png, NAME-1.png, ...",
    )
    g.add_argument("--stream", action="store_true", help="use GenerateStream and show progress")
    g.add_argument("--model", default="", help="a model the server has (default: its default)")
    g.add_argument("--job-id", default="", help="an id to Cancel the job by")
    g.set_defaults(client_func=cmd_generate)

    s = sub.add_parser("status", parents=[common], help="the server's status and models")
    s.set_defaults(client_func=cmd_status)
    return parser


def _channel(args):
    options = [("grpc.max_receive_message_length", 256 * 1024 * 1024)]
    if args.tls:
        root = pathlib.Path(args.ca_cert).read_bytes() if args.ca_cert else None
        return grpc.secure_channel(args.server, grpc.ssl_channel_credentials(root), options)
    return grpc.insecure_channel(args.server, options)


def _metadata(args):
    return (("x-api-key", args.api_key),) if args.api_key else None


def proto_request(request, job_id="", preview=False):
    """A GenerationRequest as the wire's GenerateRequest (None: 0, "" or unset, the
    server's default)."""
    message = pb.GenerateRequest(
        prompt=request.prompt,
        negative_prompt=request.negative_prompt or "",
        width=request.width or 0,
        height=request.height or 0,
        steps=request.num_inference_steps or 0,
        sampler=request.sampler or "",
        num_images=request.num_images,
        model=request.model or "",
        job_id=job_id,
        preview=preview,
    )
    if request.guidance_scale is not None:
        message.guidance_scale = request.guidance_scale
    if request.seed is not None:
        message.seed = request.seed
    return message


def _request(args):
    return proto_request(
        GenerationRequest(
            prompt=args.prompt,
            negative_prompt=args.negative_prompt,
            width=args.width,
            height=args.height,
            num_inference_steps=args.steps,
            guidance_scale=args.guidance_scale,
            seed=args.seed,
            sampler=args.sampler,
            num_images=args.num_images,
            model=args.model,
        ),
        job_id=args.job_id,
    )


def _generate_stream(stub, request, args):
    from tqdm import tqdm

    bar = None
    try:
        for event in stub.GenerateStream(request, timeout=args.timeout, metadata=_metadata(args)):
            kind = event.WhichOneof("event")
            if kind == "queued":
                print(
                    f"job {event.queued.job_id}: queued at position {event.queued.position}",
                    file=sys.stderr,
                )
            elif kind == "progress":
                if bar is None:
                    bar = tqdm(total=event.progress.total, unit="step", file=sys.stderr)
                bar.update(event.progress.step - bar.n)
            else:
                return event.result
    finally:
        if bar is not None:
            bar.close()
    raise RuntimeError("the stream ended without a result")


def cmd_generate(args):
    problem = check_output_path(args.output)
    if problem:
        print(f"sdcore client: {problem}", file=sys.stderr)
        return 2
    with _channel(args) as channel:
        stub = pb_grpc.SdcoreStub(channel)
        request = _request(args)
        try:
            if args.stream:
                result = _generate_stream(stub, request, args)
            else:
                print("generating...", file=sys.stderr)
                result = stub.Generate(request, timeout=args.timeout, metadata=_metadata(args))
        except grpc.RpcError as e:
            print(f"sdcore client: {e.code().name}: {e.details()}", file=sys.stderr)
            return 1
    paths = output_paths(args.output, len(result.images))
    for path, image in zip(paths, result.images, strict=True):
        pathlib.Path(path).write_bytes(image.png)
        print(f"{path}  seed {image.seed}  {image.width}x{image.height}")
    t = result.timings
    print(
        f"queued {t.queued_seconds:.2f} s, generated {t.generate_seconds:.2f} s "
        f"(batch of {t.batch_requests}), total {t.total_seconds:.2f} s",
        file=sys.stderr,
    )
    return 0


def cmd_status(args):
    from google.protobuf.json_format import MessageToDict

    with _channel(args) as channel:
        stub = pb_grpc.SdcoreStub(channel)
        try:
            status = stub.GetStatus(
                pb.StatusRequest(), timeout=args.timeout, metadata=_metadata(args)
            )
            models = stub.ListModels(
                pb.ListModelsRequest(), timeout=args.timeout, metadata=_metadata(args)
            )
        except grpc.RpcError as e:
            print(f"sdcore client: {e.code().name}: {e.details()}", file=sys.stderr)
            return 1
    info = MessageToDict(
        status, always_print_fields_with_no_presence=True, preserving_proto_field_name=True
    )
    info["models"] = MessageToDict(models, preserving_proto_field_name=True).get("models", [])
    print(json.dumps(info, indent=2))
    return 0


def run(args):
    return args.client_func(args)
