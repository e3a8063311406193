"""Clients that abandon their calls at any moment never take the server down.

A real `python -m sdcore.service` process on the shipped model, and hundreds of GenerateStream and
Generate calls cancelled, deadlined and disconnected at random moments from several threads
(bench/churn.py). Before the streaming wrapper drove its generators itself, this killed the
server with a segmentation fault within a few hundred calls.
"""

import io
import json
import os
import pathlib
import subprocess
import sys
import time

import grpc
import numpy as np
import pytest
from PIL import Image
from sdcore.service.gen import sdcore_service_pb2 as pb
from sdcore.service.gen import sdcore_service_pb2_grpc as pb_grpc

import sdcore

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import churn  # noqa: E402

CALLS = int(os.environ.get("SDCORE_CHURN_CALLS", "240"))


def start_server(log_path):
    log_file = open(log_path, "w")  # a file, not a pipe: a pipe nobody reads would block the server
    proc = subprocess.Popen(
        [sys.executable, "-X", "faulthandler", "-m", "sdcore.service"]
        + ["--host", "127.0.0.1", "--port", "0"],
        cwd=ROOT,
        stderr=log_file,
        stdout=log_file,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the server exited at start:\n" + log_path.read_text()
        for line in log_path.read_text().splitlines():
            entry = json.loads(line)
            if entry.get("msg") == "model loaded":
                port = next(
                    json.loads(x)["port"]
                    for x in log_path.read_text().splitlines()
                    if json.loads(x).get("msg") == "listening"
                )
                return proc, port, log_file
        time.sleep(0.1)
    proc.kill()
    raise AssertionError("the server did not load its model:\n" + log_path.read_text())


@pytest.mark.slow
def test_churn_of_abandoned_calls_never_takes_the_server_down(tmp_path):
    log_path = tmp_path / "server.log"
    proc, port, log_file = start_server(log_path)
    address = f"127.0.0.1:{port}"
    try:
        request = pb.GenerateRequest(prompt="a red circle", steps=8, width=64, height=64)
        result = churn.churn(address, clients=8, calls=CALLS, duration=150, request=request)
        assert proc.poll() is None, (
            f"the server died (exit {proc.returncode}) after {result.calls} calls "
            f"(churn seed {result.seed}):\n" + log_path.read_text()[-4000:]
        )
        assert result.calls == CALLS, f"only {result.calls} of {CALLS} calls in the time given"
        assert not result.failures, result.failures[:5]
        # every kind of abandonment was exercised, and some calls were really cut short
        kinds = {kind for kind, _ in result.outcomes}
        assert kinds == set(churn.KINDS), result.table()
        codes = {outcome for _, outcome in result.outcomes}
        assert {"CANCELLED", "DEADLINE_EXCEEDED"} <= codes, result.table()

        # the server still serves, and what it serves is right: the same image as the engine
        # makes in this process for the same request
        with grpc.insecure_channel(address) as channel:
            stub = pb_grpc.SdcoreStub(channel)
            # abandoned work drains: a running batch stops at its next step, and a server
            # learns of a disconnect a moment after the client has gone; nothing stays stuck
            deadline = time.monotonic() + 30
            while True:
                status = stub.GetStatus(pb.StatusRequest(), timeout=30)
                if status.queue_depth == 0 and status.jobs_in_flight == 0:
                    break
                assert time.monotonic() < deadline, f"work left behind by the churn: {status}"
                time.sleep(0.1)
            reply = stub.Generate(
                pb.GenerateRequest(prompt="a blue square", steps=8, width=64, height=64, seed=11),
                timeout=60,
            )
        served = np.asarray(Image.open(io.BytesIO(reply.images[0].png)).convert("RGB"))
        pipe = sdcore.Pipeline.from_pretrained()
        local = pipe("a blue square", num_inference_steps=8, width=64, height=64, seed=11)[0]
        assert np.array_equal(served, local.array)
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(60)
        log_file.close()
    entries = [json.loads(line) for line in log_path.read_text().splitlines()]
    # no call ended as a server fault
    assert not [e for e in entries if e.get("code") == "INTERNAL" or e["level"] == "ERROR"]
