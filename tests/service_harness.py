"""A real gRPC server on 127.0.0.1 (ephemeral port), run on its own event loop in a thread, so
that tests can talk to it with ordinary blocking gRPC clients."""

import asyncio
import dataclasses
import threading

import grpc
from sdcore.service.config import ServerConfig
from sdcore.service.gen import sdcore_service_pb2_grpc
from sdcore.service.server import SdcoreServer


def make_config(**overrides):
    base = dict(
        host="127.0.0.1",
        port=0,
        log_json=True,
        grace_period=2.0,
        queue_size=16,
        max_batch_size=4,
        default_steps=4,
        max_steps=1000,
        max_workers=2,
    )
    base.update(overrides)
    return ServerConfig(**base).check()


class ServerThread:
    def __init__(self, config, pipelines=None):
        self.config = config
        self.pipelines = pipelines
        self.loop = asyncio.new_event_loop()
        self.server = None
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self, wait_ready=True, timeout=120):
        self._thread.start()
        self.server = SdcoreServer(self.config, self.pipelines)
        self.call(self.server.start(), timeout)
        if wait_ready:
            self.call(self.server.wait_ready(), timeout)
        return self

    def call(self, coro, timeout=60):
        """Run a coroutine on the server's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def run_on_loop(self, fn):
        """Call fn() on the server's loop thread (for state only the loop may touch)."""

        async def wrapper():
            return fn()

        return self.call(wrapper())

    @property
    def address(self):
        return f"127.0.0.1:{self.server.port}"

    def channel(self):
        return grpc.insecure_channel(self.address)

    def stub(self):
        return sdcore_service_pb2_grpc.SdcoreStub(self.channel())

    def stop(self, grace=0.5):
        try:
            self.call(self.server.stop(grace), timeout=60)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def replace(config, **changes):
    return dataclasses.replace(config, **changes).check()
