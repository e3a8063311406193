"""Load test of the service: N concurrent clients calling Generate (gRPC), or with --http
POST /sdapi/v1/txt2img (the HTTP API, same queue and engine), for a fixed time.

    # against a running server
    python bench/load.py --server localhost:50051 --clients 8 --duration 30

    # start a server (python -m sdcore.service) on a free port, load it, stop it
    python bench/load.py --start --clients 8 --duration 30 [--model PATH]

    # batching on vs off in the same run: two servers one after the other, same load
    python bench/load.py --start --compare-batching --max-batch-size 4 --clients 8 --duration 30

    # the same load over HTTP (a started server gets --http-port; a running one needs its URL)
    python bench/load.py --start --http --clients 8 --duration 30
    python bench/load.py --server localhost:50051 --http --http-url http://localhost:8080

    # 16 clients for 5 minutes with 8 more that abandon their calls at random moments
    python bench/load.py --start --clients 16 --churn-clients 8 --duration 300

Prints images/s, p50/p99 latency of answered requests, rejections (RESOURCE_EXHAUSTED over
gRPC, 503 queue_full over HTTP) and
other errors by code, and the server's resident memory (from GetStatus) at start and end.
Every client sends the same kind of request (size, steps, sampler), so the server can batch them.
"""

import argparse
import asyncio
import contextlib
import json
import os
import pathlib
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import churn  # noqa: E402  (bench/churn.py, beside this file)
from sdcore.service.gen import sdcore_service_pb2 as pb  # noqa: E402
from sdcore.service.gen import sdcore_service_pb2_grpc as pb_grpc  # noqa: E402


def percentile(values, q):
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def grpc_generate(stub, request, metadata, timeout):
    """A client's call over gRPC: (images, error code or None)."""

    async def call(seed):
        req = pb.GenerateRequest()
        req.CopyFrom(request)
        req.seed = seed
        try:
            reply = await stub.Generate(req, metadata=metadata, timeout=timeout)
        except grpc.aio.AioRpcError as e:
            return 0, e.code().name
        return len(reply.images), None

    return call


def http_generate(client, request, timeout):
    """A client's call over HTTP (POST /sdapi/v1/txt2img): (images, error code or None).
    A full queue (503) counts as RESOURCE_EXHAUSTED, as over gRPC."""
    payload = {
        "prompt": request.prompt,
        "steps": request.steps,
        "width": request.width,
        "height": request.height,
        "sampler_name": request.sampler or None,
    }

    async def call(seed):
        try:
            reply = await client.post("/sdapi/v1/txt2img", json={**payload, "seed": seed},
                                      timeout=timeout)  # fmt: skip
        except httpx.HTTPError as e:
            return 0, type(e).__name__
        if reply.status_code == 503 and reply.json().get("error") == "queue_full":
            return 0, "RESOURCE_EXHAUSTED"
        if reply.status_code != 200:
            return 0, f"HTTP {reply.status_code}"
        return len(reply.json()["images"]), None

    return call


async def run_load(target, clients, duration, request, api_key=None, timeout=600.0, http=None):
    """Run `clients` loops of Generate for `duration` seconds; returns the statistics.

    With `http` (the server's HTTP base URL) the clients call POST /sdapi/v1/txt2img instead;
    the server's memory is still read with GetStatus over gRPC."""
    metadata = (("x-api-key", api_key),) if api_key else None
    options = [("grpc.max_receive_message_length", 256 * 1024 * 1024)]
    latencies, codes = [], {}
    images = 0
    async with contextlib.AsyncExitStack() as stack:
        channel = await stack.enter_async_context(
            grpc.aio.insecure_channel(target, options=options)
        )
        stub = pb_grpc.SdcoreStub(channel)
        if http:
            headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
            limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
            client = await stack.enter_async_context(
                httpx.AsyncClient(base_url=http, headers=headers, limits=limits)
            )
            generate = http_generate(client, request, timeout)
        else:
            generate = grpc_generate(stub, request, metadata, timeout)
        start_status = await stub.GetStatus(pb.StatusRequest(), metadata=metadata)
        end_at = time.monotonic() + duration

        async def client_loop(i):
            nonlocal images
            n = 0
            while time.monotonic() < end_at:
                seed = i * 100000 + n
                n += 1
                t0 = time.monotonic()
                count, code = await generate(seed)
                if code is not None:
                    codes[code] = codes.get(code, 0) + 1
                    if code == "RESOURCE_EXHAUSTED":
                        await asyncio.sleep(0.05)  # back off a little, as a real client would
                    continue
                latencies.append(time.monotonic() - t0)
                images += count
                codes["OK"] = codes.get("OK", 0) + 1

        warm = {}

        async def sample_after_warm_up():
            # the first generations plan the engine's buffers; growth is measured after them
            await asyncio.sleep(min(30.0, duration * 0.1))
            warm["status"] = await stub.GetStatus(pb.StatusRequest(), metadata=metadata)

        t0 = time.monotonic()
        await asyncio.gather(sample_after_warm_up(), *(client_loop(i) for i in range(clients)))
        elapsed = time.monotonic() - t0
        end_status = await stub.GetStatus(pb.StatusRequest(), metadata=metadata)
    return {
        "api": "http" if http else "grpc",
        "clients": clients,
        "seconds": elapsed,
        "images": images,
        "images_per_s": images / elapsed,
        "p50_s": percentile(latencies, 50),
        "p99_s": percentile(latencies, 99),
        "rejections": codes.get("RESOURCE_EXHAUSTED", 0),
        "codes": codes,
        "rss_start_mib": start_status.rss_bytes / 2**20,
        "rss_end_mib": end_status.rss_bytes / 2**20,
        "rss_warm_mib": warm["status"].rss_bytes / 2**20,
        "rss_growth_after_warm_up": end_status.rss_bytes / warm["status"].rss_bytes - 1,
        "model": end_status.model,
        "device": end_status.device,
    }


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class StartedServer:
    """A server process on a free port of 127.0.0.1, ready (model loaded) on entry."""

    def __init__(self, command, extra_args, env=None, ready_timeout=600, http=False):
        self.command = command
        self.http = http
        self.http_url = None
        self.extra_args = extra_args
        self.env = env
        self.ready_timeout = ready_timeout
        self.proc = None
        self.target = None

    def __enter__(self):
        port, http_port = free_port(), free_port()
        self.log = tempfile.TemporaryFile(mode="w+")
        argv = [*self.command, "--host", "127.0.0.1", "--port", str(port), *self.extra_args]
        if self.http:
            argv += ["--http-port", str(http_port)]
            self.http_url = f"http://127.0.0.1:{http_port}"
        self.proc = subprocess.Popen(argv, cwd=ROOT, stderr=self.log, env=self.env)
        self.target = f"127.0.0.1:{port}"
        channel = grpc.insecure_channel(self.target)
        health = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + self.ready_timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"the server exited with {self.proc.returncode}:\n" + self.read_log()
                )
            try:
                reply = health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    break
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not become ready:\n" + self.read_log())
            time.sleep(0.1)
        channel.close()
        return self

    def read_log(self):
        self.log.seek(0)
        return self.log.read()[-4000:]

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def report(label, stats):
    codes = ", ".join(f"{k} {v}" for k, v in sorted(stats["codes"].items()) if k != "OK")
    print(
        f"{label}: {stats['images_per_s']:.3f} images/s ({stats['images']} images in "
        f"{stats['seconds']:.1f} s, {stats['clients']} clients); latency p50 "
        f"{stats['p50_s']:.3f} s, p99 {stats['p99_s']:.3f} s; rejections "
        f"{stats['rejections']}{'; errors ' + codes if codes else ''}; server RSS "
        f"{stats['rss_start_mib']:.0f} MiB at start, {stats['rss_warm_mib']:.0f} MiB after "
        f"warm-up, {stats['rss_end_mib']:.0f} MiB at end "
        f"(growth after warm-up {100 * stats['rss_growth_after_warm_up']:+.1f}%)"
    )


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--server", help="host:port of a running server")
    p.add_argument("--start", action="store_true", help="start a server for the run")
    p.add_argument(
        "--http",
        action="store_true",
        help="drive the HTTP API (POST /sdapi/v1/txt2img) instead of gRPC Generate",
    )
    p.add_argument(
        "--http-url",
        help="with --http and --server: the running server's HTTP base URL (http://host:port)",
    )
    p.add_argument(
        "--server-cmd",
        default=f"{sys.executable} -m sdcore.service",
        help="command that starts a server (with --start); it gets --host/--port",
    )
    p.add_argument("--model", help="--model for the started server")
    p.add_argument("--device", help="--device for the started server")
    p.add_argument("--max-batch-size", type=int, default=4, help="for the started server")
    p.add_argument("--queue-size", type=int, default=64, help="for the started server")
    p.add_argument(
        "--compare-batching",
        action="store_true",
        help="run twice, --max-batch-size N then 1, and print the ratio",
    )
    p.add_argument("--clients", type=int, default=8)
    p.add_argument(
        "--churn-clients",
        type=int,
        default=0,
        help="also run this many clients that cancel, deadline and disconnect their calls at "
        "random moments (bench/churn.py) for the same duration",
    )
    p.add_argument("--duration", type=float, default=30.0, help="seconds of load per run")
    p.add_argument("--prompt", default="a red circle on a blue background")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--width", type=int, default=0)
    p.add_argument("--height", type=int, default=0)
    p.add_argument("--sampler", default="")
    p.add_argument("--api-key", default=os.environ.get("GRPC_API_KEY"))
    p.add_argument("--json", action="store_true", help="print the statistics as JSON too")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    if not args.start and not args.server:
        sys.exit("give --server HOST:PORT or --start")
    if args.compare_batching and not args.start:
        sys.exit("--compare-batching starts its own servers: add --start")
    if args.http and not args.start and not args.http_url:
        sys.exit("--http against a running server needs --http-url http://HOST:PORT")
    request = pb.GenerateRequest(
        prompt=args.prompt,
        steps=args.steps,
        width=args.width,
        height=args.height,
        sampler=args.sampler,
    )

    def load(target, http_url=None):
        churning = None
        if args.churn_clients:
            # clients that abandon their calls at random moments, beside the load (bench/churn.py)
            churning = {}
            thread = threading.Thread(
                target=lambda: churning.update(
                    result=churn.churn(
                        target, args.churn_clients, 10**9, args.duration, request=request
                    )
                )
            )
            thread.start()
        stats = asyncio.run(
            run_load(target, args.clients, args.duration, request, args.api_key, http=http_url)
        )
        if churning is not None:
            thread.join()
            result = churning["result"]
            stats["churn_calls"] = result.calls
            stats["churn_failures"] = result.failures
            print(f"churn beside the load: {result.calls} calls (seed {result.seed})")
            print(result.table())
            for failure in result.failures[:10]:
                print("churn failure:", failure)
        return stats

    if not args.start:
        stats = load(args.server, args.http_url if args.http else None)
        report(f"server {args.server}", stats)
        results = {"run": stats}
    else:
        base = ["--queue-size", str(args.queue_size), "--log-level", "WARNING"]
        if args.model:
            base += ["--model", args.model]
        if args.device:
            base += ["--device", args.device]
        env = dict(os.environ)
        env.pop("GRPC_PORT", None)
        if args.api_key:
            env.update(GRPC_REQUIRE_API_KEY="true", GRPC_API_KEY=args.api_key)
        sizes = [args.max_batch_size, 1] if args.compare_batching else [args.max_batch_size]
        results = {}
        for size in sizes:
            extra = [*base, "--max-batch-size", str(size)]
            command = shlex.split(args.server_cmd)
            with StartedServer(command, extra, env=env, http=args.http) as server:
                stats = load(server.target, server.http_url)
            label = f"max batch {size}{' (HTTP)' if args.http else ''}"
            report(label, stats)
            results[label] = stats
        if args.compare_batching:
            on, off = (results[label] for label in results)
            print(
                f"batching on/off: images/s x{on['images_per_s'] / off['images_per_s']:.2f}, "
                f"p50 latency x{on['p50_s'] / off['p50_s']:.2f}"
            )
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except RuntimeError as e:
        sys.exit(f"bench/load.py: {e}")
