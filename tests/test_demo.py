"""The demo page's logic (frontend/demo.py) against a real gRPC server on 127.0.0.1: progress,
previews, results, and what the page says for each failure, with the status codes the server
really sends. The engine is tests/engine_double.py, whose speed the test sets; the page in a
browser, on the real engine, is tests/test_demo_browser.py."""

import pathlib
import socket
import sys
import threading
import time

import pytest
from engine_double import EngineDouble, seed_colour
from PIL import Image
from sdcore.frontend.backend import Backend
from sdcore.frontend.demo import KEEP, Demo, settings_from_controls
from sdcore.service.gen import sdcore_service_pb2 as pb
from service_harness import ServerThread, make_config

from sdcore import cli
from sdcore.request import GenerationRequest


@pytest.fixture
def engine():
    return EngineDouble(step_seconds=0.02)


@pytest.fixture
def server(engine):
    with ServerThread(make_config(queue_size=1), [engine]) as srv:
        yield srv


@pytest.fixture
def demo(server, tmp_path):
    backend = Backend(server.address)
    yield Demo(backend, output_dir=tmp_path)
    backend.close()


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


def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_generate_streams_progress_previews_and_the_pngs(demo):
    updates = list(
        demo.generate(
            GenerationRequest("a red circle", width=64, height=64, num_inference_steps=3, seed=5)
        )
    )
    steps = [u.progress for u in updates if u.progress is not KEEP and "Step" in u.progress]
    assert steps == ["Step 1 of 3", "Step 2 of 3", "Step 3 of 3"]
    previews = [u.preview for u in updates if isinstance(u.preview, Image.Image)]
    assert len(previews) == 3 and previews[0].size == (256, 256)
    final = outcome(updates)
    assert final["message"] == "" and final["seed"] == 5
    assert final["progress"].startswith("Done: 1 image in") and "seed used: 5" in final["progress"]
    [path] = final["files"]
    assert final["gallery"] == [(path, "seed 5, 64x64")] and final["preview"] == path
    png = Image.open(path)
    assert png.text["parameters"] == final["parameters"]
    assert "Seed: 5" in final["parameters"] and "Steps: 3" in final["parameters"]
    assert png.convert("RGB").getpixel((0, 0)) == tuple(int(v) for v in seed_colour(5))


def test_several_images_and_a_random_seed(demo):
    final = outcome(
        demo.generate(GenerationRequest("x", num_inference_steps=1, seed=-1, num_images=3))
    )
    seed = final["seed"]
    assert seed >= 0 and len(final["files"]) == 3
    assert f"seeds used: {seed}, {seed + 1}, {seed + 2}" in final["progress"]
    for i, path in enumerate(final["files"]):
        assert f"Seed: {seed + i}" in Image.open(path).text["parameters"]


def test_invalid_input_shows_the_servers_message(demo):
    final = outcome(
        demo.generate(GenerationRequest("x", width=100, height=64, num_inference_steps=1))
    )
    assert final["message"].startswith("Invalid input: width: must be a multiple of 8")
    assert "files" not in final
    final = outcome(
        demo.generate(GenerationRequest("x", num_inference_steps=1, sampler="no_such_sampler"))
    )
    assert final["message"].startswith("Invalid input: sampler:")


def test_server_unavailable(tmp_path):
    address = f"127.0.0.1:{closed_port()}"
    demo = Demo(Backend(address), output_dir=tmp_path)
    final = outcome(demo.generate(GenerationRequest("x")))
    assert final["message"] == (
        f"The server is unavailable at {address}: no sdcore server answers there "
        "(is `sdcore serve` running?)"
    )
    assert "unavailable" in demo.status_text()
    assert demo.model_defaults().width == 512  # the page still opens, with fallbacks


def test_queue_full(server, demo):
    blocker = server.stub().Generate.future(pb.GenerateRequest(prompt="block", steps=300))
    wait_for(lambda: server.stub().GetStatus(pb.StatusRequest()).jobs_in_flight == 1)
    waiting = server.stub().Generate.future(pb.GenerateRequest(prompt="wait", steps=1))
    wait_for(lambda: server.stub().GetStatus(pb.StatusRequest()).queue_depth == 1)
    final = outcome(demo.generate(GenerationRequest("x", num_inference_steps=1)))
    assert final["message"].startswith("The server's queue is full; try again in a moment")
    assert "1 waiting of 1, 1 running" in demo.status_text()
    blocker.cancel()
    waiting.cancel()


def test_cancel_from_the_page(server, demo):
    updates = []
    run = threading.Thread(
        target=lambda: updates.extend(
            demo.generate(GenerationRequest("x", num_inference_steps=300), session="s1")
        )
    )
    run.start()
    wait_for(lambda: server.stub().GetStatus(pb.StatusRequest()).jobs_in_flight == 1)
    assert demo.cancel(session="other") == "Nothing to cancel"
    assert demo.cancel(session="s1").startswith("Cancelling job demo-")
    run.join(10)
    assert outcome(updates)["message"] == "Cancelled: cancelled by a Cancel request"
    assert demo.cancel(session="s1") == "Nothing to cancel"


def test_status_and_model_defaults_come_from_the_server(server, demo):
    text = demo.status_text()
    assert "**Model** double (random weights)" in text and "**Device** cpu" in text
    assert "0 waiting of 1" in text and server.address in text
    defaults = demo.model_defaults()
    assert (defaults.width, defaults.height, defaults.sampler) == (64, 64, "euler_a")
    assert "dpmpp_2m" in defaults.samplers


def test_settings_from_the_controls():
    s = settings_from_controls("p", None, 128, 96.0, 20, 7.0, 42, True, "ddim", 2)
    assert (s.prompt, s.negative_prompt, s.width, s.height, s.seed, s.num_images) == (
        "p",
        "",
        128,
        96,
        -1,
        2,
    )
    assert settings_from_controls("p", "", None, None, None, None, 7, False, "", None).seed == 7
    with pytest.raises(ValueError, match="^width: must be a whole number"):
        settings_from_controls("p", "", 100.5, 64, 20, 7.5, 1, False, "", 1)
    with pytest.raises(ValueError, match="^seed: enter a number"):
        settings_from_controls("p", "", 64, 64, 20, 7.5, None, False, "", 1)


def test_demo_command_line():
    args = cli.build_parser().parse_args(["demo", "--server", "gpu-box:50051", "--port", "8000"])
    assert (args.server, args.port, args.host) == ("gpu-box:50051", 8000, "127.0.0.1")
    assert args.func is cli.cmd_demo


def test_demo_without_gradio_says_how_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio fails
    args = cli.build_parser().parse_args(["demo"])
    assert args.func(args) == 2
    assert "pip install 'sdcore[demo]'" in capsys.readouterr().err


def test_the_page_builds_with_every_control(demo):
    from sdcore.frontend.app import build_app

    app = build_app(demo)
    ids = {block.elem_id for block in app.blocks.values() if getattr(block, "elem_id", None)}
    for name in (
        "prompt negative width height steps cfg seed random-seed sampler count generate cancel "
        "message progress preview gallery parameters downloads status"
    ).split():
        assert f"sd-{name}" in ids


def test_old_results_are_deleted(demo, monkeypatch):
    monkeypatch.setattr("sdcore.frontend.demo.KEPT_RESULTS", 2)
    paths = []
    for seed in (1, 2, 3):
        final = outcome(demo.generate(GenerationRequest("x", num_inference_steps=1, seed=seed)))
        paths += final["files"]
        time.sleep(0.02)  # distinct folder times
    assert [pathlib.Path(p).exists() for p in paths] == [False, True, True]
    demo.close()
    assert not demo.output_dir.exists()
