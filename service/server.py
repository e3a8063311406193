"""The grpc.aio server: servicers, health, reflection, auth, TLS, metrics and shutdown; with
--http-port, the HTTP APIs (service/http.py) on the same loop and ServiceCore."""

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from sdcore.service import config as config_mod
from sdcore.service import logs
from sdcore.service.auth import ApiKeyInterceptor
from sdcore.service.compat import GpuServicer, ImageServicer, Text2ImageServicer
from sdcore.service.core import ServiceCore
from sdcore.service.gen import (
    gpu_service_pb2,
    gpu_service_pb2_grpc,
    image_service_pb2,
    image_service_pb2_grpc,
    img_service_pb2,
    img_service_pb2_grpc,
    sdcore_service_pb2,
    sdcore_service_pb2_grpc,
    text2image_pb2,
    text2image_pb2_grpc,
)
from sdcore.service.metrics import Metrics
from sdcore.service.servicers import SdcoreServicer
from sdcore.service.wire import DecodeErrorInterceptor

log = logging.getLogger("service")

# After the jobs have been answered on shutdown, how long the RPCs get to send those answers.
ANSWER_WAIT_S = 1.0

SERVICE_NAMES = (
    sdcore_service_pb2.DESCRIPTOR.services_by_name["Sdcore"].full_name,
    gpu_service_pb2.DESCRIPTOR.services_by_name["GpuService"].full_name,
    image_service_pb2.DESCRIPTOR.services_by_name["ImageService"].full_name,
    # the same ImageService under the package name some clients' copy of the proto declares
    img_service_pb2.DESCRIPTOR.services_by_name["ImageService"].full_name,
    text2image_pb2.DESCRIPTOR.services_by_name["Text2ImageService"].full_name,
)


def bind_problem(host, port):
    """Why (host, port) cannot be listened on, or None; port 0 (any free one) always can."""
    if not port:
        return None
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as grpc binds
            s.bind((host, port))
    except OSError as e:
        return e.strerror or str(e)
    return None


class ListenError(OSError):
    """The server cannot bind its address (most often: another process has the port)."""


class SdcoreServer:
    """One server. `pipelines` (already loaded) skips loading `config.model`; tests use it."""

    def __init__(self, config, pipelines=None):
        self.config = config
        self.metrics = Metrics()
        self.core = ServiceCore(config, self.metrics)
        self.health = health.aio.HealthServicer()
        self._pipelines = pipelines
        self.server = None
        self.port = None
        self.metrics_port = None
        self.http = None  # service.http.HttpServer, with --http-port
        self.http_port = None
        self.loaded = None  # task: the model load; its exception is the server's failure

    async def start(self):
        cfg = self.config
        options = [
            ("grpc.max_send_message_length", cfg.max_message_size),
            ("grpc.max_receive_message_length", cfg.max_message_size),
            ("grpc.so_reuseport", 0),
        ]
        interceptors = []
        if cfg.require_api_key:
            interceptors.append(ApiKeyInterceptor(cfg.api_key, self.metrics))
        interceptors.append(DecodeErrorInterceptor())
        self.server = grpc.aio.server(
            interceptors=interceptors,
            options=options,
            maximum_concurrent_rpcs=cfg.max_concurrent_rpcs,
        )
        core = self.core
        sdcore_service_pb2_grpc.add_SdcoreServicer_to_server(SdcoreServicer(core), self.server)
        gpu_service_pb2_grpc.add_GpuServiceServicer_to_server(GpuServicer(core), self.server)
        image_servicer = ImageServicer(core)
        image_service_pb2_grpc.add_ImageServiceServicer_to_server(image_servicer, self.server)
        img_service_pb2_grpc.add_ImageServiceServicer_to_server(image_servicer, self.server)
        text2image_pb2_grpc.add_Text2ImageServiceServicer_to_server(
            Text2ImageServicer(core), self.server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        if cfg.enable_reflection:
            names = (
                *SERVICE_NAMES,
                health.SERVICE_NAME,
                reflection.SERVICE_NAME,
            )
            reflection.enable_server_reflection(names, self.server)
        address = f"{cfg.host}:{cfg.port}"
        taken = bind_problem(cfg.host, cfg.port)
        if taken:  # said here: grpc would log its own multi-line error first
            raise ListenError(f"cannot listen on {address}: {taken} (choose another with --port)")
        try:
            if cfg.use_tls:
                with open(cfg.key_file, "rb") as f:
                    key = f.read()
                with open(cfg.cert_file, "rb") as f:
                    cert = f.read()
                credentials = grpc.ssl_server_credentials([(key, cert)])
                self.port = self.server.add_secure_port(address, credentials)
            else:
                self.port = self.server.add_insecure_port(address)
        except RuntimeError:  # grpc's "Failed to bind to address"
            self.port = 0
        if not self.port:
            raise ListenError(
                f"cannot listen on {address}: the port is in use or the address is not this "
                "machine's (choose another with --port)"
            )
        await self.server.start()
        if cfg.http_port:
            from sdcore.service.http import HttpServer

            self.http = HttpServer(core)
            self.http_port = await self.http.start()
        if cfg.metrics_port:
            self.metrics_port = self.metrics.start_http(
                cfg.metrics_port, cfg.metrics_host.strip("[]")
            )
        core.batcher.start()
        log.info(
            "listening",
            extra={
                "address": address,
                "port": self.port,
                "http_port": self.http_port,
                "tls": cfg.use_tls,
                "api_key": cfg.require_api_key,
                "reflection": cfg.enable_reflection,
                "metrics_port": self.metrics_port,
                "queue_size": cfg.queue_size,
                "max_batch_size": cfg.max_batch_size,
                "max_workers": cfg.max_workers,
            },
        )
        self.loaded = asyncio.get_running_loop().create_task(self._load())
        return self

    async def _load(self):
        if self._pipelines is not None:
            for pipe in self._pipelines:
                self.core.add_pipeline(pipe)
        else:
            await self.core.load(self.config.model, self.config.device)
        self.core.state = "ready"
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)

    async def wait_ready(self):
        await self.loaded

    async def _set_health(self, status):
        await self.health.set("", status)
        for name in SERVICE_NAMES:
            await self.health.set(name, status)

    async def stop(self, grace=None):
        """Stop taking jobs; give queued and running ones `grace` seconds; answer what is left
        UNAVAILABLE; then stop the gRPC server. Returns False when an engine call is still in
        its last step (see Batcher.close)."""
        grace = self.config.grace_period if grace is None else grace
        log.info(
            "shutting down",
            extra={
                "grace_seconds": grace,
                "queued": self.core.batcher.queue_depth(),
                "running": self.core.batcher.in_flight(),
            },
        )
        self.core.state = "shutting_down"
        self.core.batcher.accepting = False
        await self.health.enter_graceful_shutdown()
        if self.loaded is not None and not self.loaded.done():
            self.loaded.cancel()
        if self.http is not None:
            self.http.stop_accepting()
        idle = await self.core.close(grace)
        # the RPCs and HTTP requests have their answers now; a moment to send them, then the
        # connections close
        if self.http is None:
            await self.server.stop(ANSWER_WAIT_S)
        else:
            await asyncio.gather(self.server.stop(ANSWER_WAIT_S), self.http.close(ANSWER_WAIT_S))
        self.metrics.stop_http()
        log.info("stopped", extra={"engine_idle": idle})
        return idle


async def serve(config, pipelines=None):
    """Run until SIGTERM or SIGINT, then shut down gracefully. Returns the exit status."""
    server = SdcoreServer(config, pipelines)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    stopper = loop.create_task(stop.wait())
    await asyncio.wait({stopper, server.loaded}, return_when=asyncio.FIRST_COMPLETED)
    status = 0
    if server.loaded.done() and server.loaded.exception() is not None:
        error = server.loaded.exception()
        log.error("cannot load the model", extra={"error": f"{type(error).__name__}: {error}"})
        status = 1
    elif not stop.is_set():
        await stopper
    stopper.cancel()
    idle = await server.stop(0 if status else config.grace_period)
    if not idle:
        # Every job has its answer; an engine thread is still inside one step and would hold the
        # interpreter's exit (it joins worker threads) until the step ends. Exit without it.
        logging.shutdown()
        os._exit(status)
    return status


def build_parser(parser=None):
    parser = parser or argparse.ArgumentParser(
        prog="sdcore serve", description="Serve text-to-image generation over gRPC"
    )
    return config_mod.add_arguments(parser)


def run(args, prog="sdcore serve"):
    """Start from parsed flags; a bad configuration is reported and gives exit status 2."""
    try:
        cfg = config_mod.from_args(args)
    except config_mod.ConfigError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    logs.setup(cfg.log_level, cfg.log_json)
    try:
        return asyncio.run(serve(cfg))
    except ListenError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2


def main(argv=None):
    parser = build_parser(
        argparse.ArgumentParser(
            prog="python -m sdcore.service", description="Serve text-to-image generation over gRPC"
        )
    )
    return run(parser.parse_args(argv), prog="python -m sdcore.service")
