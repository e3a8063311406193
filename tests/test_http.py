"""The HTTP APIs (service/http.py) against a real server on 127.0.0.1, driven by clients written
elsewhere: `webuiapi` (the web UIs' Python client), the `openai` package, and httpx calls
shaped as the replaced services' clients make them.

Images are checked against a direct `sdcore.Pipeline` call with the parameters the request
asked for (the shipped model, a few steps at 64x64); the queue, batching, cancellation, auth
and error mechanics use tests/engine_double.py, whose speed the test sets.
"""

import base64
import concurrent.futures
import io
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import time

import grpc
import httpx
import numpy as np
import pytest
from engine_double import EngineDouble, seed_colour
from PIL import Image
from sdcore.service import config as config_mod
from sdcore.service.gen import sdcore_service_pb2 as pb
from service_harness import ServerThread, make_config

import sdcore
from sdcore.params import SAMPLER_DISPLAY

fastapi = pytest.importorskip("fastapi", reason="the HTTP API needs the http extra")
from sdcore.service import http as http_mod  # noqa: E402

STEP = 0.02  # seconds per step of the engine double
STEPS = 3  # steps of the real model's generations
SAMPLER_NAMES = {display: ours for ours, display in SAMPLER_DISPLAY.items()}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_server(pipelines, **overrides):
    return ServerThread(make_config(http_port=free_port(), **overrides), pipelines)


def base_url(srv, scheme="http", host="127.0.0.1"):
    return f"{scheme}://{host}:{srv.server.http_port}"


def wait_for(predicate, timeout=10.0, what="condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def batcher(srv):
    return srv.server.core.batcher


def start_blocker(srv, steps=300, job_id="blocker"):
    """A long gRPC job that occupies the engine; its future, once it runs."""
    future = srv.stub().Generate.future(
        pb.GenerateRequest(prompt="block", steps=steps, job_id=job_id)
    )
    wait_for(lambda: batcher(srv).in_flight() == 1, what="the blocker to run")
    return future


def parse_infotext(text):
    """The parameters chunk -> (prompt, negative prompt, {setting: value})."""
    lines = text.split("\n")
    settings = dict(item.split(": ", 1) for item in lines[-1].split(", "))
    negative = ""
    if len(lines) > 2 and lines[1].startswith("Negative prompt: "):
        negative = lines[1][len("Negative prompt: ") :]
    return lines[0], negative, settings


def png_parameters(png):
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG"
    return image, image.text["parameters"]


def assert_matches_direct_call(pipe, png, prompt, negative="", size=(64, 64), **expected):
    """The PNG has the asked size, its chunk records the request, and its pixels are those of
    a direct Pipeline call with the chunk's parameters."""
    image, text = png_parameters(png)
    assert image.size == size
    got_prompt, got_negative, settings = parse_infotext(text)
    assert (got_prompt, got_negative) == (prompt, negative)
    assert settings["Size"] == f"{size[0]}x{size[1]}"
    for key, value in expected.items():
        assert settings[key] == str(value), (key, settings)
    direct = pipe(
        prompt,
        negative_prompt=negative,
        num_inference_steps=int(settings["Steps"]),
        guidance_scale=float(settings["CFG scale"]),
        width=size[0],
        height=size[1],
        seed=int(settings["Seed"]),
        sampler=SAMPLER_NAMES[settings["Sampler"]],
    )[0]
    arr = np.asarray(image.convert("RGB")).astype(int)
    diff = np.abs(arr - direct.array.astype(int))
    # batched with other requests, float rounding may differ a little from a lone call
    assert diff.mean() < 0.5 and diff.max() <= 4, (diff.mean(), diff.max())
    return settings


# -- the real model, through clients written elsewhere ------------------------------------


@pytest.fixture(scope="module")
def pipe():
    if not hasattr(sdcore, "Pipeline"):
        pytest.skip("sdcore.Pipeline is not in this build")
    return sdcore.Pipeline.from_pretrained(os.environ.get("SDCORE_TEST_MODEL"), device="cpu")


@pytest.fixture(scope="module")
def model_server(pipe):
    with http_server([pipe], default_steps=STEPS) as srv:
        yield srv


def test_webuiapi_txt2img_and_info(model_server, pipe):
    webuiapi = pytest.importorskip("webuiapi")
    api = webuiapi.WebUIApi(
        host="127.0.0.1", port=model_server.server.http_port, sampler="Euler a", steps=STEPS
    )
    result = api.txt2img(
        prompt="a red circle on a blue background",
        negative_prompt="green",
        seed=1234,
        cfg_scale=4.5,
        width=64,
        height=64,
        batch_size=2,
    )
    info = result.info
    assert info["all_seeds"] == [1234, 1235] and info["seed"] == 1234
    assert (info["width"], info["height"], info["steps"]) == (64, 64, STEPS)
    assert info["sampler_name"] == "Euler a" and info["cfg_scale"] == 4.5
    assert info["sd_model_name"] == pipe.name
    assert result.parameters["prompt"] == "a red circle on a blue background"
    assert result.parameters["seed"] == 1234
    raw = [base64.b64decode(b) for b in result.json["images"]]
    assert len(result.images) == 2
    for i, png in enumerate(raw):
        assert result.images[i].size == (64, 64)
        settings = assert_matches_direct_call(
            pipe,
            png,
            "a red circle on a blue background",
            "green",
            Seed=1234 + i,
            Steps=STEPS,
            Sampler="Euler a",
        )
        assert settings["CFG scale"] == "4.5"
        assert png_parameters(png)[1] == info["infotexts"][i]
    assert sorted(m["title"] for m in api.get_sd_models()) == [pipe.name]
    assert {s["name"] for s in api.get_samplers()} >= {"Euler a", "DDIM", "DPM++ 2M Karras"}
    assert api.util_get_current_model() == pipe.name


def test_webuiapi_dpmpp_2m_with_karras_scheduler(model_server, pipe):
    webuiapi = pytest.importorskip("webuiapi")
    api = webuiapi.WebUIApi(host="127.0.0.1", port=model_server.server.http_port, steps=STEPS)
    result = api.txt2img(
        prompt="a yellow star",
        seed=99,
        width=64,
        height=64,
        sampler_name="DPM++ 2M",
        scheduler="Karras",
    )
    png = base64.b64decode(result.json["images"][0])
    assert_matches_direct_call(pipe, png, "a yellow star", Seed=99, Sampler="DPM++ 2M Karras")


def test_openai_client_b64_json(model_server, pipe):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(
        base_url=base_url(model_server) + "/v1", api_key="not-checked", max_retries=0
    )
    response = client.images.generate(
        prompt="a green triangle",
        model=pipe.name,
        n=2,
        size="64x96",
        response_format="b64_json",
    )
    assert len(response.data) == 2
    seeds = []
    for item in response.data:
        png = base64.b64decode(item.b64_json)
        settings = assert_matches_direct_call(
            pipe, png, "a green triangle", size=(64, 96), Steps=STEPS
        )
        seeds.append(int(settings["Seed"]))
    assert seeds[1] == seeds[0] + 1
    with pytest.raises(openai.BadRequestError) as e:
        client.images.generate(prompt="x", response_format="url")
    assert e.value.status_code == 400
    assert e.value.body["param"] == "response_format" and "b64_json" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:
        client.images.generate(prompt="x", model="dall-e-3")
    assert e.value.body["param"] == "model" and pipe.name in e.value.body["message"]


def test_replaced_services_routes(model_server, pipe):
    url = base_url(model_server)
    with httpx.Client(base_url=url, timeout=60) as client:
        reply = client.post(
            "/generateimage",
            json={"positivePrompt": "a blue square", "negativePrompt": "red"},
        )
        assert reply.status_code == 200 and reply.headers["content-type"] == "image/png"
        disposition = reply.headers["content-disposition"]
        assert re.fullmatch(r'inline; filename="sdcore-\d+\.png"', disposition), disposition
        w, h = pipe.default_size
        settings = assert_matches_direct_call(pipe, reply.content, "a blue square", "red", (w, h))
        assert disposition == f'inline; filename="sdcore-{settings["Seed"]}.png"'

        reply = client.post(
            "/api/v1/images/generate",
            json={
                "prompt": "a white circle",
                "negative_prompt": "black",
                "width": 96,
                "height": 64,
                "num_inference_steps": 2,
                "guidance_scale": 6.0,
                "seed": 77,
            },
        )
        assert reply.status_code == 200
        body = reply.json()
        assert body["seed"] == 77 and body["image_url"].startswith("data:image/png;base64,")
        png = base64.b64decode(body["image_url"].split(",", 1)[1])
        assert_matches_direct_call(pipe, png, "a white circle", "black", (96, 64), Seed=77, Steps=2)
        p = body["parameters"]
        assert (p["width"], p["height"], p["num_inference_steps"], p["seed"]) == (96, 64, 2, 77)
        assert p["guidance_scale"] == 6.0 and p["model"] == pipe.name

        random = client.post("/api/v1/images/generate", json={"prompt": "x", "seed": -1}).json()
        assert 0 <= random["seed"] < 2**32 and random["parameters"]["seed"] == random["seed"]

        models = client.get("/api/v1/images/models").json()
        assert [m["name"] for m in models["models"]] == [pipe.name]
        assert models["models"][0]["default"] and models["default"] == pipe.name
        health = client.get("/health")
        assert health.status_code == 200 and health.json()["status"] == "ok"


# -- the engine double: queue, batching, cancellation, errors ---------------------------------


@pytest.fixture
def engine():
    return EngineDouble(step_seconds=STEP)


@pytest.fixture
def server(engine):
    with http_server([engine]) as srv:
        yield srv


@pytest.fixture
def client(server):
    with httpx.Client(base_url=base_url(server), timeout=30) as c:
        yield c


def test_grpc_and_http_requests_share_one_queue_and_batch(server, engine, client):
    blocker = start_blocker(server)
    pool = concurrent.futures.ThreadPoolExecutor(2)
    from_http = pool.submit(
        client.post,
        "/api/v1/images/generate",
        json={"prompt": "from http", "seed": 3, "num_inference_steps": 3},
    )
    wait_for(lambda: batcher(server).queue_depth() == 1, what="the HTTP job to queue")
    from_webui = pool.submit(
        client.post,
        "/sdapi/v1/txt2img",
        json={"prompt": "from the web UI", "seed": 5, "steps": 3},
    )
    wait_for(lambda: batcher(server).queue_depth() == 2, what="the web UI job to queue")
    from_grpc = server.stub().Generate.future(
        pb.GenerateRequest(prompt="from grpc", seed=4, steps=3)
    )
    wait_for(lambda: batcher(server).queue_depth() == 3, what="the gRPC job to queue")
    server.stub().Cancel(pb.CancelRequest(job_id="blocker"))
    reply = from_grpc.result(timeout=10)
    assert reply.timings.batch_requests == 3
    assert (reply.images[0].png[:8], reply.seeds[0]) == (b"\x89PNG\r\n\x1a\n", 4)
    http_reply, webui_reply = from_http.result(10), from_webui.result(10)
    assert http_reply.status_code == 200 and webui_reply.status_code == 200
    png = base64.b64decode(http_reply.json()["image_url"].split(",", 1)[1])
    assert (np.asarray(Image.open(io.BytesIO(png))) == seed_colour(3)).all()
    webui_png = base64.b64decode(webui_reply.json()["images"][0])
    assert (np.asarray(Image.open(io.BytesIO(webui_png))) == seed_colour(5)).all()
    batched = [c for c in engine.calls if c[1] == 3]
    assert batched == [(["from http", "from the web UI", "from grpc"], 3, 64, 64)]
    with pytest.raises(grpc.RpcError):
        blocker.result()
    pool.shutdown()


def _raw_post(srv, path, payload):
    """Send a POST on a plain socket and leave it open: the test closes it to disconnect."""
    body = json.dumps(payload).encode()
    sock = socket.create_connection(("127.0.0.1", srv.server.http_port))
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    sock.sendall(head + body)
    return sock


def test_disconnect_while_running_stops_the_engine(server, engine, client):
    sock = _raw_post(server, "/sdapi/v1/txt2img", {"prompt": "long", "steps": 500})
    wait_for(lambda: batcher(server).in_flight() == 1, what="the job to run")
    wait_for(lambda: client.get("/sdapi/v1/progress").json()["state"]["sampling_step"] >= 2)
    t0 = time.monotonic()
    sock.close()
    wait_for(lambda: engine.stopped_calls == 1, what="the engine to stop")
    assert time.monotonic() - t0 < 20 * STEP + 2.0
    wait_for(lambda: batcher(server).in_flight() == 0, what="the job to leave")
    assert client.get("/sdapi/v1/progress").json()["state"]["job_count"] == 0
    # the engine is free at once for the next request
    reply = client.post("/api/v1/images/generate", json={"prompt": "next", "seed": 9})
    assert reply.status_code == 200 and reply.json()["seed"] == 9
    closed = 'sdcore_http_requests_total{route="/sdapi/v1/txt2img",status="499"} 1.0'
    wait_for(lambda: closed in server.server.metrics.render(), what="the 499 to be counted")


def test_disconnect_while_queued_frees_the_place(server, engine):
    blocker = start_blocker(server)
    socks = [
        _raw_post(server, path, payload)
        for path, payload in (
            ("/api/v1/images/generate", {"prompt": "queued", "num_inference_steps": 5}),
            ("/generateimage", {"positivePrompt": "queued too"}),
            ("/v1/images/generations", {"prompt": "queued three"}),
        )
    ]
    wait_for(lambda: batcher(server).queue_depth() == 3, what="three queued jobs")
    for i, sock in enumerate(socks):
        sock.close()
        wait_for(lambda i=i: batcher(server).queue_depth() == 2 - i, what="a freed place")
    assert batcher(server).in_flight() == 1 and engine.stopped_calls == 0
    blocker.cancel()
    wait_for(lambda: engine.stopped_calls == 1, what="the blocker to stop")


def test_full_queue_is_503_with_retry_after():
    engine = EngineDouble(step_seconds=STEP)
    with http_server([engine], queue_size=1) as srv:
        blocker = start_blocker(srv)
        waiting = srv.stub().Generate.future(pb.GenerateRequest(prompt="waits", steps=2))
        wait_for(lambda: batcher(srv).queue_depth() == 1, what="a full queue")
        with httpx.Client(base_url=base_url(srv), timeout=10) as client:
            for path, payload, error in (
                ("/sdapi/v1/txt2img", {"prompt": "x"}, lambda b: b["error"]),
                ("/v1/images/generations", {"prompt": "x"}, lambda b: b["error"]["code"]),
                ("/generateimage", {"positivePrompt": "x"}, lambda b: b["error"]),
                ("/api/v1/images/generate", {"prompt": "x"}, lambda b: b["error"]),
            ):
                t0 = time.monotonic()
                reply = client.post(path, json=payload)
                assert time.monotonic() - t0 < 2.0
                assert reply.status_code == 503, (path, reply.text)
                assert int(reply.headers["retry-after"]) >= 1
                assert error(reply.json()) == "queue_full" and "queue is full" in reply.text
        openai = pytest.importorskip("openai")
        oa = openai.OpenAI(base_url=base_url(srv) + "/v1", api_key="x", max_retries=0)
        with pytest.raises(openai.APIStatusError) as e:
            oa.images.generate(prompt="x")
        assert e.value.status_code == 503 and e.value.response.headers["retry-after"]
        blocker.cancel()
        waiting.cancel()


def test_api_key():
    engine = EngineDouble()
    cfg = dict(require_api_key=True, api_key="s3cret")
    with http_server([engine], **cfg) as srv:
        url = base_url(srv)
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"x-api-key": "nope"}):
            for path, payload, shape in (
                ("/sdapi/v1/txt2img", {"prompt": "x"}, lambda b: b["error"]),
                ("/generateimage", {"positivePrompt": "x"}, lambda b: b["error"]),
                ("/api/v1/images/generate", {"prompt": "x"}, lambda b: b["error"]),
                ("/v1/images/generations", {"prompt": "x"}, lambda b: b["error"]["code"]),
            ):
                reply = httpx.post(url + path, json=payload, headers=headers)
                assert reply.status_code == 401, (path, headers)
                assert shape(reply.json()) == "unauthorized" and "Bearer" in reply.text
            assert httpx.get(url + "/sdapi/v1/sd-models", headers=headers).status_code == 401
        assert engine.calls == []
        assert httpx.get(url + "/health").status_code == 200  # open to load balancers
        assert httpx.get(url + "/openapi.json").status_code == 200
        for headers in (
            {"Authorization": "Bearer s3cret"},
            {"x-api-key": "s3cret"},
            {"Authorization": "Basic " + base64.b64encode(b"anyone:s3cret").decode()},
        ):
            reply = httpx.post(
                url + "/generateimage", json={"positivePrompt": "x"}, headers=headers
            )
            assert reply.status_code == 200, headers
        openai = pytest.importorskip("openai")
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).images.generate(
                prompt="x"
            )
        good = openai.OpenAI(base_url=url + "/v1", api_key="s3cret", max_retries=0)
        assert len(good.images.generate(prompt="x", n=2).data) == 2
        webuiapi = pytest.importorskip("webuiapi")
        api = webuiapi.WebUIApi(port=srv.server.http_port, username="me", password="s3cret")
        assert api.txt2img(prompt="x", width=64, height=64, steps=2).image.size == (64, 64)


BAD_REQUESTS = [
    # (path, JSON body, status, the field the error names)
    ("/sdapi/v1/txt2img", {"prompt": "x", "steps": "many"}, 422, "steps"),
    ("/sdapi/v1/txt2img", {"prompt": "x", "steps": 5000}, 422, "steps"),
    ("/sdapi/v1/txt2img", {"prompt": "x", "width": 100}, 422, "width"),
    ("/sdapi/v1/txt2img", {"prompt": "x", "cfg_scale": -1}, 422, "cfg_scale"),
    ("/sdapi/v1/txt2img", {"prompt": "x", "seed": -7}, 422, "seed"),
    ("/sdapi/v1/txt2img", {"prompt": "x", "batch_size": 5, "n_iter": 2}, 422, "batch_size"),
    ("/sdapi/v1/txt2img", {"prompt": "x", "enable_hr": True}, 422, "enable_hr"),
    ("/sdapi/v1/txt2img", {"prompt": "x", "restore_faces": True}, 422, "restore_faces"),
    ("/sdapi/v1/txt2img", {"prompt": "x", "tiling": True}, 422, "tiling"),
    ("/sdapi/v1/txt2img", {"prompt": "x", "styles": ["noir"]}, 422, "styles"),
    ("/sdapi/v1/txt2img", {"prompt": "x", "subseed_strength": 0.5}, 422, "subseed_strength"),
    ("/sdapi/v1/txt2img", {"prompt": "x", "script_name": "xyz"}, 422, "script_name"),
    ("/sdapi/v1/txt2img", {"prompt": "x", "refiner_checkpoint": "r"}, 422, "refiner_checkpoint"),
    ("/sdapi/v1/txt2img", {"prompt": "x", "alwayson_scripts": {"c": {}}}, 422, "alwayson_scripts"),
    ("/sdapi/v1/txt2img", {"prompt": "x", "sampler_name": "Heun"}, 422, "sampler_name"),
    ("/sdapi/v1/txt2img", {"prompt": "x", "sampler_name": "Euler", "scheduler": "Karras"}, 422,
     "scheduler"),
    ("/sdapi/v1/txt2img", {"prompt": "x", "scheduler": "Exponential"}, 422, "scheduler"),
    ("/sdapi/v1/txt2img", {"prompt": "x", "sampler_name": "DDIM", "eta": 1.0}, 422, "eta"),
    ("/sdapi/v1/txt2img", {"prompt": "x", "override_settings": {"CLIP_stop_at_last_layers": 2}},
     422, "override_settings.CLIP_stop_at_last_layers"),
    ("/sdapi/v1/txt2img", {"prompt": "x", "override_settings": {"sd_model_checkpoint": "nope"}},
     422, "sd_model_checkpoint"),
    ("/sdapi/v1/txt2img", {"prompt": "x", "no_such_field": 1}, 422, "no_such_field"),
    ("/sdapi/v1/txt2img", ["not", "an", "object"], 422, "body"),
    ("/sdapi/v1/options", {"sd_model_checkpoint": "nope"}, 422, "sd_model_checkpoint"),
    ("/sdapi/v1/options", {"CLIP_stop_at_last_layers": 2}, 422, "CLIP_stop_at_last_layers"),
    ("/v1/images/generations", {"n": 1}, 400, "prompt"),
    ("/v1/images/generations", {"prompt": "x", "size": "big"}, 400, "size"),
    ("/v1/images/generations", {"prompt": "x", "size": "100x100"}, 400, "size"),
    ("/v1/images/generations", {"prompt": "x", "n": 20}, 400, "n"),
    ("/v1/images/generations", {"prompt": "x", "model": "dall-e-3"}, 400, "model"),
    ("/v1/images/generations", {"prompt": "x", "style": "vivid"}, 400, "style"),
    ("/v1/images/generations", {"prompt": "x", "response_format": "url"}, 400, "response_format"),
    ("/v1/images/generations", {"prompt": "x", "output_format": "jpeg"}, 400, "output_format"),
    ("/v1/images/generations", {"prompt": "x", "stream": True}, 400, "stream"),
    ("/v1/images/generations", {"prompt": "x", "moon": 1}, 400, "moon"),
    ("/generateimage", {}, 422, "positivePrompt"),
    ("/generateimage", {"positivePrompt": 5}, 422, "positivePrompt"),
    ("/generateimage", {"positivePrompt": "x" * 5000}, 422, "positivePrompt"),
    ("/generateimage", {"positivePrompt": "x", "negativePrompt": "y" * 5000}, 422,
     "negativePrompt"),
    ("/api/v1/images/generate", {"prompt": "x", "num_inference_steps": 2000}, 422,
     "num_inference_steps"),
    ("/api/v1/images/generate", {"prompt": "x", "guidance_scale": 60}, 422, "guidance_scale"),
    ("/api/v1/images/generate", {"prompt": "x", "height": 36}, 422, "height"),
    ("/api/v1/images/generate", {"prompt": "x", "seed": "lucky"}, 422, "seed"),
]  # fmt: skip


def error_of(path, body):
    """(kind, message, field) from an error body of path's family, checking its shape."""
    if path.startswith("/v1/"):
        assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
        e = body["error"]
        return e["code"], e["message"], e["param"]
    if path.startswith("/sdapi/"):
        assert {"error", "detail", "errors"} <= set(body)
        return body["error"], body["detail"], None
    assert set(body) == {"error", "message"}
    return body["error"], body["message"], None


@pytest.mark.parametrize(
    "path,payload,status,field",
    BAD_REQUESTS,
    ids=[f"{p.rsplit('/', 1)[-1]}-{f}-{i}" for i, (p, _, _, f) in enumerate(BAD_REQUESTS)],
)
def test_bad_request_names_the_field(server, engine, client, path, payload, status, field):
    reply = client.post(path, json=payload)
    assert reply.status_code == status, reply.text
    _kind, message, param = error_of(path, reply.json())
    assert message.startswith(field), message
    if param is not None:
        assert param == field
    assert engine.calls == []


@pytest.mark.parametrize("path", ["/sdapi/v1/txt2img", "/v1/images/generations", "/generateimage"])
def test_malformed_json_is_400(client, path):
    reply = client.post(path, content=b'{"prompt": ', headers={"content-type": "application/json"})
    assert reply.status_code == 400
    kind, message, _ = error_of(path, reply.json())
    assert kind == "invalid_json" and message.startswith("body:")


def test_body_size_limit_is_413():
    limit = 65536  # the smallest --max-message-size
    with http_server([EngineDouble()], max_message_size=limit) as srv:
        url = base_url(srv)
        big = {"prompt": "x" * (limit + 10)}
        reply = httpx.post(url + "/api/v1/images/generate", json=big)
        assert reply.status_code == 413 and reply.json()["error"] == "body_too_large"
        assert str(limit) in reply.json()["message"]

        def chunks():  # no Content-Length: the limit is counted as the body arrives
            for _ in range(4):
                yield b"x" * (limit // 3)

        reply = httpx.post(url + "/sdapi/v1/txt2img", content=chunks())
        assert reply.status_code == 413 and reply.json()["detail"].startswith("body:")
        small = httpx.post(url + "/api/v1/images/generate", json={"prompt": "x" * 1000})
        assert small.status_code == 200


def test_a1111_sampler_names_map_to_ours(server, client):
    cases = [(label, None, ours) for label, ours in SAMPLER_NAMES.items()]
    cases += [
        ("DPM++ 2M", "Karras", "dpmpp_2m_karras"),
        ("DPM++ 2M", "karras", "dpmpp_2m_karras"),
        ("DPM++ 2M Karras", "Automatic", "dpmpp_2m_karras"),
        ("DPM++ 2M", "automatic", "dpmpp_2m"),
        ("euler_a", None, "euler_a"),
        (None, None, "euler_a"),
    ]
    for sampler_name, scheduler_name, ours in cases:
        payload = {"prompt": "x", "steps": 1, "sampler_name": sampler_name}
        if scheduler_name:
            payload["scheduler"] = scheduler_name
        reply = client.post("/sdapi/v1/txt2img", json=payload)
        assert reply.status_code == 200, reply.text
        info = json.loads(reply.json()["info"])
        # the double writes our own sampler name into its infotext
        assert f"Sampler: {ours}," in info["infotexts"][0], (sampler_name, scheduler_name)
    listed = client.get("/sdapi/v1/samplers").json()
    assert {s["name"]: s["aliases"] for s in listed} == {
        label: [ours] for label, ours in SAMPLER_NAMES.items()
    }
    names = {s["name"] for s in client.get("/sdapi/v1/schedulers").json()}
    assert names == {"automatic", "karras"}


def test_a1111_cosmetic_fields_are_accepted(server, client):
    payload = {
        "prompt": "x",
        "steps": 1,
        "seed": 12,
        "send_images": False,
        "save_images": True,
        "do_not_save_samples": True,
        "do_not_save_grid": True,
        "override_settings_restore_afterwards": False,
        "enable_hr": False,
        "hr_scale": 2,
        "denoising_strength": 0.7,
        "eta": 1.0,
        "s_noise": 1,
    }
    reply = client.post("/sdapi/v1/txt2img", json=payload)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["images"] == []  # send_images false, as the web UIs answer
    assert json.loads(body["info"])["all_seeds"] == [12]
    assert body["parameters"]["save_images"] is True and body["parameters"]["seed"] == 12


def test_progress_preview_and_interrupt(server, engine, client):
    pool = concurrent.futures.ThreadPoolExecutor(1)
    pending = pool.submit(client.post, "/sdapi/v1/txt2img", json={"prompt": "slow", "steps": 400})
    wait_for(lambda: client.get("/sdapi/v1/progress").json()["state"]["sampling_step"] >= 3)
    progress = client.get("/sdapi/v1/progress").json()
    assert 0 < progress["progress"] < 1 and progress["eta_relative"] > 0
    assert progress["state"]["job_count"] == 1 and progress["state"]["sampling_steps"] == 400
    preview = Image.open(io.BytesIO(base64.b64decode(progress["current_image"])))
    assert preview.format == "PNG" and max(preview.size) <= 64
    without = client.get("/sdapi/v1/progress", params={"skip_current_image": True}).json()
    assert without["current_image"] is None
    assert client.post("/sdapi/v1/interrupt").json() == {}
    reply = pending.result(10)
    assert reply.status_code == 409 and "interrupt" in reply.json()["detail"]
    wait_for(lambda: engine.stopped_calls == 1, what="the engine to stop")
    idle = client.get("/sdapi/v1/progress").json()
    assert idle["progress"] == 0 and idle["state"]["job_count"] == 0
    assert idle["current_image"] is None
    pool.shutdown()


def test_interrupt_leaves_grpc_jobs_alone(server, engine, client):
    blocker = start_blocker(server, steps=30)
    client.post("/sdapi/v1/interrupt")
    assert blocker.result(timeout=10).images
    assert engine.stopped_calls == 0


def test_options_switch_the_model():
    first, second = EngineDouble(name="double"), EngineDouble(name="double-b")
    with http_server([first, second]) as srv, httpx.Client(base_url=base_url(srv)) as client:
        titles = [m["title"] for m in client.get("/sdapi/v1/sd-models").json()]
        assert titles == ["double", "double-b"]
        assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == "double"
        assert client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "double-b"}).is_success
        assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == "double-b"
        reply = client.post("/sdapi/v1/txt2img", json={"prompt": "on b", "steps": 1})
        assert json.loads(reply.json()["info"])["sd_model_name"] == "double-b"
        assert second.calls and not first.calls
        override = {"sd_model_checkpoint": "double"}
        reply = client.post(
            "/sdapi/v1/txt2img",
            json={"prompt": "on a", "steps": 1, "override_settings": override},
        )
        assert json.loads(reply.json()["info"])["sd_model_name"] == "double"
        assert first.calls[-1][0] == ["on a"]
        # the gRPC default is unchanged
        assert srv.stub().Generate(pb.GenerateRequest(prompt="grpc", steps=1)).model == "double"
        unknown = client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "sd-99"})
        assert unknown.status_code == 422 and "double-b" in unknown.json()["detail"]
        assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == "double-b"


def test_img2img_is_not_supported_yet(client):
    reply = client.post("/sdapi/v1/img2img", json={"init_images": [], "prompt": "x"})
    assert reply.status_code == 501
    assert "not supported yet" in reply.json()["detail"]


def test_engine_error_is_500_and_the_server_goes_on():
    with http_server([EngineDouble(fail_on="explode")]) as srv:
        url = base_url(srv)
        reply = httpx.post(url + "/generateimage", json={"positivePrompt": "explode"})
        assert reply.status_code == 500 and reply.json()["error"] == "engine_error"
        assert "scripted failure" in reply.json()["message"]
        reply = httpx.post(url + "/v1/images/generations", json={"prompt": "explode"})
        assert reply.status_code == 500 and reply.json()["error"]["type"] == "server_error"
        assert httpx.post(url + "/generateimage", json={"positivePrompt": "ok"}).is_success


def test_openapi_schema_and_docs(client):
    schema = client.get("/openapi.json").json()
    for path in (
        "/sdapi/v1/txt2img",
        "/sdapi/v1/progress",
        "/v1/images/generations",
        "/generateimage",
        "/api/v1/images/generate",
        "/health",
    ):
        assert path in schema["paths"], path
    txt2img = schema["components"]["schemas"]["A1111Txt2Img"]["properties"]
    assert {"prompt", "cfg_scale", "sampler_name", "scheduler"} <= set(txt2img)
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    missing = client.get("/no/such/route")
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"


def test_metrics_count_http_requests_by_route_and_status(server, client):
    client.post("/generateimage", json={"positivePrompt": "x"})
    client.post("/generateimage", json={"positivePrompt": 1})
    client.get("/health")
    client.get("/no/such/route")
    for line in (
        'sdcore_http_requests_total{route="/generateimage",status="200"} 1.0',
        'sdcore_http_requests_total{route="/generateimage",status="422"} 1.0',
        'sdcore_http_requests_total{route="/health",status="200"} 1.0',
        'sdcore_http_requests_total{route="unmatched",status="404"} 1.0',
        'sdcore_http_request_latency_seconds_count{route="/generateimage"} 2.0',
        "sdcore_images_total 1.0",
    ):
        # a request is counted once its answer is sent: the client may read it a moment before
        wait_for(lambda line=line: line in server.server.metrics.render(), what=line)


def test_health_while_loading_and_after_shutdown(monkeypatch):
    import threading

    release = threading.Event()

    class SlowLoading:
        @staticmethod
        def from_pretrained(path, device="cpu", copy_weights=False):
            release.wait(10)
            return EngineDouble()

    monkeypatch.setattr(sdcore, "Pipeline", SlowLoading, raising=False)
    srv = ServerThread(make_config(http_port=free_port())).start(wait_ready=False)
    try:
        url = base_url(srv)
        loading = httpx.get(url + "/health")
        assert loading.status_code == 503 and loading.json()["status"] == "loading"
        early = httpx.post(url + "/api/v1/images/generate", json={"prompt": "x"})
        assert early.status_code == 503 and "loading" in early.json()["message"]
        assert early.headers["retry-after"]
        release.set()
        srv.call(srv.server.wait_ready())
        assert httpx.get(url + "/health").json()["status"] == "ok"
    finally:
        release.set()
        srv.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/health")


def test_graceful_shutdown_finishes_http_requests():
    engine = EngineDouble(step_seconds=STEP)
    srv = http_server([engine]).start()
    url = base_url(srv)
    pool = concurrent.futures.ThreadPoolExecutor(2)
    running = pool.submit(
        httpx.post, url + "/api/v1/images/generate", json={"prompt": "x", "seed": 8,
                                                           "num_inference_steps": 40}
    )  # fmt: skip
    wait_for(lambda: batcher(srv).in_flight() == 1, what="the job to run")
    stopping = pool.submit(srv.stop, 10.0)
    wait_for(lambda: srv.server.core.state == "shutting_down", what="shutdown to begin")
    reply = running.result(15)
    assert reply.status_code == 200 and reply.json()["seed"] == 8
    stopping.result(15)
    assert engine.stopped_calls == 0
    pool.shutdown()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_tls(tmp_path):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    cfg = dict(use_tls=True, cert_file=str(cert), key_file=str(key))
    with http_server([EngineDouble()], **cfg) as srv:
        url = base_url(srv, "https", "localhost")
        with httpx.Client(verify=ssl.create_default_context(cafile=str(cert))) as client:
            assert client.get(url + "/health").status_code == 200
            reply = client.post(url + "/generateimage", json={"positivePrompt": "x"})
            assert reply.status_code == 200 and reply.content[:4] == b"\x89PNG"
        with pytest.raises(httpx.HTTPError):
            httpx.get(base_url(srv) + "/health", timeout=3)  # plain HTTP is not served


# -- configuration --------------------------------------------------------------------------


def parse(argv, environ=None):
    from sdcore.service.server import build_parser

    return config_mod.from_args(build_parser().parse_args(argv), environ or {})


def test_http_port_flag_and_env():
    assert parse([]).http_port == 0
    assert parse(["--http-port", "8080"]).http_port == 8080
    assert parse([], {"SDCORE_HTTP_PORT": "9000"}).http_port == 9000
    assert parse(["--http-port", "8081"], {"SDCORE_HTTP_PORT": "9000"}).http_port == 8081
    with pytest.raises(config_mod.ConfigError, match="SDCORE_HTTP_PORT"):
        parse([], {"SDCORE_HTTP_PORT": "http"})
    with pytest.raises(config_mod.ConfigError, match="SDCORE_HTTP_PORT"):
        parse(["--http-port", "70000"])
    with pytest.raises(config_mod.ConfigError, match="--http-port"):
        parse(["--http-port", "50051"])


def test_http_port_without_fastapi_exits_2(monkeypatch, capsys):
    import importlib.util

    from sdcore.service.server import build_parser, run

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "fastapi" else real(name)
    )
    args = build_parser().parse_args(["--http-port", "8080"])
    assert run(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "fastapi" in err and "pip install 'sdcore[http]'" in err


def test_a1111_sampler_mapping_unit():
    samplers = list(SAMPLER_NAMES.values())
    assert http_mod.a1111_sampler(samplers, "Euler a", None) == "euler_a"
    assert http_mod.a1111_sampler(samplers, "dpm++ 2m", "Karras") == "dpmpp_2m_karras"
    assert http_mod.a1111_sampler(samplers, "", None) == ""
    with pytest.raises(http_mod.InvalidArgument, match="^sampler_name: unknown sampler 'Heun'"):
        http_mod.a1111_sampler(samplers, "Heun", None)
    with pytest.raises(http_mod.InvalidArgument, match="^scheduler: Karras"):
        http_mod.a1111_sampler(samplers, "LMS", "Karras")


def test_serve_process_sigterm_stops_http_and_grpc_gracefully():
    """`--http-port` on the real server process: SIGTERM (handled by the gRPC server's loop,
    not uvicorn) lets an HTTP request in flight finish, then the process exits 0."""
    import signal

    from test_service_process import start_process

    port = free_port()
    proc, _grpc_port, lines = start_process("--http-port", str(port), "--grace-period", "20")
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: httpx.get(url + "/health").status_code == 200, what="ready")
        pool = concurrent.futures.ThreadPoolExecutor(1)
        payload = {"prompt": "x", "seed": 6, "num_inference_steps": 40}
        running = pool.submit(httpx.post, url + "/api/v1/images/generate", json=payload, timeout=30)
        wait_for(lambda: httpx.get(url + "/health").json()["jobs_in_flight"] == 1, what="a job")
        proc.send_signal(signal.SIGTERM)
        reply = running.result(30)
        assert reply.status_code == 200 and reply.json()["seed"] == 6
        assert proc.wait(30) == 0
        pool.shutdown()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    entries = [json.loads(line) for line in lines + proc.stderr.readlines()]
    assert [e["http_port"] for e in entries if e["msg"] == "listening"] == [port]
    http = [e for e in entries if e["msg"] == "http" and e["route"] == "/api/v1/images/generate"]
    assert http and http[0]["status"] == 200 and http[0]["seconds"] > 0
    assert entries[-1]["msg"] == "stopped"
