"""The demo page's logic (frontend/demo.py) over the HTTP API (frontend/http_backend.py), against
a real server on 127.0.0.1 with its HTTP API on: the same outcomes as over gRPC
(tests/test_demo.py) — images with their parameters, progress with previews, the server's
message naming a bad field, a full queue, cancel, a refused API key — with the statuses the
HTTP API really sends. The engine is tests/engine_double.py, whose speed the test sets."""

import dataclasses
import os
import socket
import subprocess
import threading
import time

import numpy as np
import pytest
from engine_double import EngineDouble, seed_colour
from PIL import Image
from sdcore.frontend import http_backend
from sdcore.frontend.demo import KEEP, Demo
from sdcore.frontend.http_backend import HttpBackend, a1111_body
from sdcore.frontend.main import make_backend, server_problem
from sdcore.service.gen import sdcore_service_pb2 as pb
from service_harness import ServerThread, make_config

import sdcore
from sdcore import cli
from sdcore.request import GenerationRequest

pytest.importorskip("fastapi", reason="the HTTP API needs the http extra")

STEP = 0.05  # seconds per step of the engine double
POLL = 0.02  # the page's polls of /progress, faster than a step


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_server(engine, **overrides):
    config = make_config(http_port=free_port(), queue_size=1, **overrides)
    return ServerThread(config, [engine])


def url_of(srv):
    return f"http://127.0.0.1:{srv.server.http_port}"


@pytest.fixture(autouse=True)
def fast_polls(monkeypatch):
    monkeypatch.setattr(http_backend, "POLL_SECONDS", POLL)


@pytest.fixture
def engine():
    return EngineDouble(step_seconds=STEP)


@pytest.fixture
def server(engine):
    with http_server(engine) as srv:
        yield srv


@pytest.fixture
def backend(server):
    backend = HttpBackend(url_of(server))
    yield backend
    backend.close()


@pytest.fixture
def demo(backend, tmp_path):
    return Demo(backend, output_dir=tmp_path)


def outcome(updates):
    """The last value each field of the page was given."""
    final = {}
    for update in updates:
        for name, value in vars(update).items():
            if value is not KEEP:
                final[name] = value
    return final


def wait_for(predicate, timeout=10.0, what="condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def batcher(srv):
    return srv.server.core.batcher


def in_thread(demo, request, session):
    """demo.generate(request) run in a thread as the page runs it; (thread, its updates)."""
    updates = []
    thread = threading.Thread(
        target=lambda: updates.extend(demo.generate(request, session=session)), daemon=True
    )
    thread.start()
    return thread, updates


def test_generate_shows_progress_previews_and_the_pngs(demo, engine):
    steps = 12
    updates = list(
        demo.generate(
            GenerationRequest(
                "a red circle", width=64, height=64, num_inference_steps=steps, seed=5
            )
        )
    )
    assert updates[1].progress == "Queued"  # the HTTP API does not tell the place
    shown = [u.progress for u in updates if u.progress is not KEEP and "Step" in u.progress]
    # polled, not streamed: some steps are seen, in order, each at most once
    numbers = [int(text.split()[1]) for text in shown]
    assert len(numbers) >= 2 and numbers == sorted(set(numbers))
    assert all(text.endswith(f" of {steps}") for text in shown)
    assert 1 <= numbers[0] and numbers[-1] <= steps
    previews = [u.preview for u in updates if isinstance(u.preview, Image.Image)]
    assert len(previews) == len(shown) and previews[0].size == (256, 256)
    final = outcome(updates)
    assert final["message"] == "" and final["seed"] == 5
    assert final["progress"].startswith("Done: 1 image in") and "seed used: 5" in final["progress"]
    assert "generating" in final["progress"]  # the job was seen running
    [path] = final["files"]
    assert final["gallery"] == [(path, "seed 5, 64x64")] and final["preview"] == path
    png = Image.open(path)
    assert png.text["parameters"] == final["parameters"]
    assert "Seed: 5" in final["parameters"] and f"Steps: {steps}" in final["parameters"]
    assert png.convert("RGB").getpixel((0, 0)) == tuple(int(v) for v in seed_colour(5))


def test_several_images_and_a_random_seed(demo, engine):
    final = outcome(
        demo.generate(
            GenerationRequest(
                "x", num_inference_steps=2, seed=-1, num_images=3, sampler="ddim", width=96
            )
        )
    )
    seed = final["seed"]
    assert seed >= 0 and len(final["files"]) == 3
    assert f"seeds used: {seed}, {seed + 1}, {seed + 2}" in final["progress"]
    assert engine.calls[-1] == (["x"] * 3, 2, 96, 64)
    for i, path in enumerate(final["files"]):
        image = Image.open(path)
        assert image.text["parameters"] == f"x\nSteps: 2, Sampler: ddim, Seed: {seed + i}"
        assert image.convert("RGB").getpixel((0, 0)) == tuple(int(v) for v in seed_colour(seed + i))


@pytest.fixture(scope="module")
def pipe():
    if not hasattr(sdcore, "Pipeline"):
        pytest.skip("sdcore.Pipeline is not in this build")
    return sdcore.Pipeline.from_pretrained(os.environ.get("SDCORE_TEST_MODEL"), device="cpu")


def test_the_real_model_images_and_their_parameters(pipe, tmp_path):
    """The shipped model behind the HTTP API: each PNG is the one a direct Pipeline call
    makes with the page's settings, and says so in its parameters chunk."""
    settings = dict(
        negative_prompt="green", width=64, height=64, num_inference_steps=3,
        guidance_scale=3.5, sampler="dpmpp_2m", seed=11,
    )  # fmt: skip
    with ServerThread(make_config(http_port=free_port()), [pipe]) as srv:
        backend = HttpBackend(url_of(srv))
        try:
            demo = Demo(backend, output_dir=tmp_path)
            request = GenerationRequest("a red circle", num_images=2, **settings)
            final = outcome(demo.generate(request))
        finally:
            backend.close()
    assert final["message"] == "" and len(final["files"]) == 2
    direct = pipe("a red circle", num_images=2, **settings)
    for i, path in enumerate(final["files"]):
        image = Image.open(path)
        text = image.text["parameters"]
        assert text.startswith("a red circle\nNegative prompt: green\n")
        for field in (f"Seed: {11 + i}", "Steps: 3", "Sampler: DPM++ 2M", "CFG scale: 3.5"):
            assert field in text
        diff = np.abs(np.asarray(image.convert("RGB")).astype(int) - direct[i].array)
        assert diff.max() <= 2, diff.max()


def test_invalid_input_shows_the_servers_message(demo):
    final = outcome(
        demo.generate(GenerationRequest("x", width=100, height=64, num_inference_steps=1))
    )
    assert final["message"].startswith("Invalid input: width: must be a multiple of 8")
    assert "files" not in final
    final = outcome(
        demo.generate(GenerationRequest("x", num_inference_steps=1, sampler="no_such_sampler"))
    )
    # named as the HTTP API's JSON names the field
    assert final["message"].startswith("Invalid input: sampler_name: unknown sampler")


def test_server_unavailable(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    backend = HttpBackend(url)
    try:
        demo = Demo(backend, output_dir=tmp_path)
        final = outcome(demo.generate(GenerationRequest("x")))
        assert final["message"].startswith(
            f"The server is unavailable at {url}: no sdcore server answers there"
        )
        assert "unavailable" in demo.status_text()
        assert demo.model_defaults().width == 512  # the page still opens, with fallbacks
    finally:
        backend.close()


def test_queue_full(server, demo):
    blocker = server.stub().Generate.future(pb.GenerateRequest(prompt="block", steps=300))
    wait_for(lambda: batcher(server).in_flight() == 1, what="the blocker to run")
    waiting = server.stub().Generate.future(pb.GenerateRequest(prompt="wait", steps=1))
    wait_for(lambda: batcher(server).queue_depth() == 1, what="the queue to fill")
    final = outcome(demo.generate(GenerationRequest("x", num_inference_steps=1)))
    assert final["message"].startswith("The server's queue is full; try again in a moment")
    assert "1 waiting, 1 running" in demo.status_text()
    blocker.cancel()
    waiting.cancel()


def test_cancel_a_running_job_interrupts_it(server, demo):
    thread, updates = in_thread(demo, GenerationRequest("x", num_inference_steps=300), "s1")
    wait_for(lambda: any("Step" in str(u.progress) for u in updates), what="a step")
    assert demo.cancel(session="other") == "Nothing to cancel"
    reply = demo.cancel(session="s1")
    assert reply.startswith("Cancelling job demo-") and reply.endswith("(running)")
    thread.join(10)
    assert not thread.is_alive()
    # /sdapi/v1/interrupt stopped it: the server's own answer, not a closed connection
    assert outcome(updates)["message"] == "Cancelled: interrupted by /sdapi/v1/interrupt"
    assert "files" not in outcome(updates)
    wait_for(lambda: batcher(server).in_flight() == 0, what="the engine to stop")
    assert demo.cancel(session="s1") == "Nothing to cancel"


def test_cancel_a_queued_job_takes_it_out_of_the_queue(server, demo):
    blocker = server.stub().Generate.future(pb.GenerateRequest(prompt="block", steps=300))
    wait_for(lambda: batcher(server).in_flight() == 1, what="the blocker to run")
    thread, updates = in_thread(demo, GenerationRequest("x", num_inference_steps=1), "s1")
    wait_for(lambda: batcher(server).queue_depth() == 1, what="the page's job to queue")
    assert any(u.progress == "Queued" for u in updates)
    assert demo.cancel(session="s1").endswith("(queued)")
    thread.join(10)
    assert not thread.is_alive()
    assert outcome(updates)["message"].startswith("Cancelled: the page closed its request")
    wait_for(lambda: batcher(server).queue_depth() == 0, what="the place to be freed")
    assert batcher(server).in_flight() == 1  # /interrupt was not sent: the gRPC job runs on
    blocker.cancel()


def test_cancel_beside_another_clients_job_stops_only_ours(server, engine, demo):
    """Two /sdapi jobs: /interrupt would stop both, so the page closes its own request."""
    other = HttpBackend(url_of(server))
    try:
        theirs = other.generate_stream(GenerationRequest("theirs", num_inference_steps=60), "t")
        wait_for(lambda: batcher(server).in_flight() == 1, what="their job to run")
        thread, updates = in_thread(demo, GenerationRequest("x", num_inference_steps=1), "s1")
        wait_for(lambda: batcher(server).queue_depth() == 1, what="the page's job to queue")
        assert demo.cancel(session="s1").endswith("(queued)")
        thread.join(10)
        assert outcome(updates)["message"].startswith("Cancelled: the page closed its request")
        events = list(theirs)  # theirs ran to the end
        assert events[-1].WhichOneof("event") == "result"
    finally:
        other.close()


def test_cancel_after_the_end_says_so(demo, backend):
    outcome(demo.generate(GenerationRequest("x", num_inference_steps=1), session="s1"))
    with pytest.raises(http_backend.HttpCallError) as info:
        backend.cancel("demo-gone")
    assert info.value.code().name == "NOT_FOUND"


def test_status_and_model_defaults_come_from_the_server(server, engine, demo):
    engine.rules = dataclasses.replace(engine.rules, guidance_scale=4.25)
    text = demo.status_text()
    assert "**Model** double (random weights)" in text and "**Device** cpu" in text
    assert "0 waiting, 0 running" in text and url_of(server) in text
    assert "HTTP API" in text and "ready" in text
    assert "Images made" not in text  # not given over HTTP
    defaults = demo.model_defaults()
    assert (defaults.width, defaults.height, defaults.sampler) == (64, 64, "euler_a")
    assert set(defaults.samplers) == set(EngineDouble().samplers)
    assert defaults.guidance == 4.25


def test_api_key(engine, tmp_path):
    with http_server(engine, require_api_key=True, api_key="s3cret") as srv:
        for key in (None, "wrong"):
            backend = HttpBackend(url_of(srv), api_key=key)
            try:
                demo = Demo(backend, output_dir=tmp_path)
                final = outcome(demo.generate(GenerationRequest("x", num_inference_steps=1)))
                assert final["message"].startswith("The server refused the API key: missing")
                assert "The server refused the API key" in demo.status_text()
            finally:
                backend.close()
        backend = HttpBackend(url_of(srv), api_key="s3cret")
        try:
            demo = Demo(backend, output_dir=tmp_path)
            final = outcome(demo.generate(GenerationRequest("x", num_inference_steps=1, seed=3)))
            assert final["message"] == "" and final["seed"] == 3
            assert "ready" in demo.status_text()
        finally:
            backend.close()


def test_the_request_as_txt2img_json():
    body = a1111_body(GenerationRequest("p", width=96, num_inference_steps=7, seed=None, model="m"))
    assert body["width"] == 96 and body["height"] == 0 and body["steps"] == 7
    assert body["seed"] == -1 and body["batch_size"] == 1 and "cfg_scale" not in body
    assert body["override_settings"] == {"sd_model_checkpoint": "m"}
    assert a1111_body(GenerationRequest("p", guidance_scale=0.0))["cfg_scale"] == 0.0


def test_demo_command_line_picks_the_backend_by_scheme():
    parse = cli.build_parser().parse_args
    args = parse(["demo", "--server", "https://gpu-box:8443", "--api-key", "k"])
    assert server_problem(args) is None
    backend = make_backend(args.server, args)
    try:
        assert isinstance(backend, HttpBackend) and backend.api == "HTTP"
        assert backend.client.headers["authorization"] == "Bearer k"
    finally:
        backend.close()
    args = parse(["demo", "--server", "gpu-box:50051"])
    backend = make_backend(args.server, args)
    assert backend.api == "gRPC"
    backend.close()
    assert "https://" in server_problem(parse(["demo", "--server", "http://h:1", "--tls"]))
    assert server_problem(parse(["demo", "--server", "ftp://h:1"])).startswith("--server:")
    assert server_problem(parse(["demo", "--server", "h:1", "--http"])).startswith("--http:")
    assert server_problem(parse(["demo", "--http-port", "8080"])).startswith("--http-port:")
    assert server_problem(parse(["demo", "--http", "--http-port", "8080"])) is None


def test_demo_refuses_flags_that_do_not_fit(capsys):
    pytest.importorskip("gradio")
    args = cli.build_parser().parse_args(["demo", "--server", "http://h:1", "--tls"])
    assert args.func(args) == 2
    assert "--tls: an HTTP server is reached with TLS by an https:// URL" in (
        capsys.readouterr().err
    )


def test_https_with_the_servers_certificate(engine, tmp_path):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    tls = dict(use_tls=True, cert_file=str(cert), key_file=str(key))
    with http_server(engine, **tls) as srv:
        url = f"https://localhost:{srv.server.http_port}"
        backend = HttpBackend(url, ca_cert=str(cert))
        try:
            final = outcome(
                Demo(backend, output_dir=tmp_path / "out").generate(
                    GenerationRequest("x", num_inference_steps=1, seed=9)
                )
            )
            assert final["message"] == "" and final["seed"] == 9
        finally:
            backend.close()
        backend = HttpBackend(url)  # the system's roots do not trust this certificate
        try:
            final = outcome(Demo(backend, output_dir=tmp_path / "out").generate(
                GenerationRequest("x", num_inference_steps=1)
            ))  # fmt: skip
            assert final["message"].startswith(f"The server is unavailable at {url}: ")
            assert "CERTIFICATE_VERIFY_FAILED" in final["message"]
        finally:
            backend.close()
