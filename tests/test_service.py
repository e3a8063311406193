"""The gRPC service against a real server on 127.0.0.1: every RPC, the queue, batching,
cancellation, deadlines, validation, auth, health, reflection, metrics, TLS and shutdown.

The engine here is tests/engine_double.py (a slow engine whose speed the test sets, painting
each image a colour made from its seed); tests/test_service_e2e.py runs the real Pipeline.
"""

import io
import math
import shutil
import socket
import subprocess
import threading
import time
import urllib.request

import grpc
import numpy as np
import pytest
from engine_double import EngineDouble, seed_colour
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image
from sdcore.service.gen import (
    gpu_service_pb2,
    gpu_service_pb2_grpc,
    image_service_pb2,
    image_service_pb2_grpc,
    text2image_pb2,
    text2image_pb2_grpc,
)
from sdcore.service.gen import sdcore_service_pb2 as pb
from service_harness import ServerThread, make_config

STEP = 0.02  # seconds per engine step in the slow tests


def decode(png):
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def assert_image_of_seed(png, seed, size=(64, 64)):
    arr = decode(png)
    assert arr.shape == (size[1], size[0], 3)
    assert (arr == seed_colour(seed)).all(), f"image is not the one of seed {seed}"


@pytest.fixture
def engine():
    return EngineDouble(step_seconds=STEP)


@pytest.fixture
def server(engine):
    with ServerThread(make_config(), [engine]) as srv:
        yield srv


def wait_for(predicate, timeout=5.0, what="condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def status(srv):
    return srv.stub().GetStatus(pb.StatusRequest())


def enqueue(srv, request):
    """Start a Generate call and wait until it is queued, so that queue order is call order."""
    depth = status(srv).queue_depth
    future = srv.stub().Generate.future(request)
    wait_for(lambda: status(srv).queue_depth == depth + 1, what="the job to queue")
    return future


def start_blocker(srv, steps=200, job_id="blocker"):
    """A long job that occupies the engine; returns its future once it is running."""
    future = srv.stub().Generate.future(
        pb.GenerateRequest(prompt="block", steps=steps, job_id=job_id)
    )
    wait_for(lambda: status(srv).jobs_in_flight == 1, what="the blocker to run")
    return future


# -- the RPCs -------------------------------------------------------------------------------


def test_generate_returns_images_seeds_and_timings(server):
    call = server.stub().Generate.with_call(
        pb.GenerateRequest(prompt="a red circle", seed=41, num_images=3, steps=3)
    )
    reply, rpc = call
    assert list(reply.seeds) == [41, 42, 43]
    for image, seed in zip(reply.images, [41, 42, 43], strict=True):
        assert image.seed == seed and (image.width, image.height) == (64, 64)
        assert_image_of_seed(image.png, seed)
        assert f"Seed: {seed}" in image.parameters
        assert Image.open(io.BytesIO(image.png)).text["parameters"] == image.parameters
    assert reply.timings.generate_seconds > 0
    assert reply.timings.total_seconds >= reply.timings.generate_seconds
    assert reply.timings.batch_requests == 1
    assert reply.model == "double"
    assert dict(rpc.initial_metadata())["x-job-id"] == reply.job_id


def test_random_seed_is_reported(server):
    for request in (
        pb.GenerateRequest(prompt="x", seed=-1, num_images=2),
        pb.GenerateRequest(prompt="x"),
    ):
        reply = server.stub().Generate(request)
        s = reply.seeds[0]
        assert 0 <= s < 2**32 and list(reply.seeds) == [s + i for i in range(len(reply.seeds))]
        assert_image_of_seed(reply.images[-1].png, reply.seeds[-1])


def test_defaults_and_explicit_size(server, engine):
    reply = server.stub().Generate(pb.GenerateRequest(prompt="x", seed=3, width=128, height=72))
    assert (reply.images[0].width, reply.images[0].height) == (128, 72)
    assert_image_of_seed(reply.images[0].png, 3, size=(128, 72))
    _prompts, steps, _w, _h = engine.calls[-1]
    assert steps == 4  # the server's default_steps in the test config


def test_stream_order_queued_progress_then_images(server):
    steps = 5
    events = list(
        server.stub().GenerateStream(
            pb.GenerateRequest(prompt="x", seed=9, steps=steps, preview=True)
        )
    )
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds == ["queued"] + ["progress"] * steps + ["result"], kinds
    job_id = events[0].queued.job_id
    assert [e.progress.step for e in events[1:-1]] == list(range(1, steps + 1))
    assert all(e.progress.total == steps and e.progress.job_id == job_id for e in events[1:-1])
    preview = decode(events[1].progress.preview_png)
    assert preview.ndim == 3 and max(preview.shape[:2]) <= 64
    result = events[-1].result
    assert result.job_id == job_id
    assert_image_of_seed(result.images[0].png, 9)


def test_stream_without_preview_sends_no_png(server):
    events = list(server.stub().GenerateStream(pb.GenerateRequest(prompt="x", steps=2)))
    assert all(e.progress.preview_png == b"" for e in events if e.HasField("progress"))


def test_stream_reports_queue_position(server):
    blocker = start_blocker(server, steps=40)
    stream = server.stub().GenerateStream(pb.GenerateRequest(prompt="y", steps=2))
    first = next(stream)
    assert first.WhichOneof("event") == "queued" and first.queued.position == 0
    rest = [e.WhichOneof("event") for e in stream]
    assert rest[-1] == "result" and rest.count("progress") == 2
    blocker.result(timeout=30)


def test_list_models_and_status(server):
    models = server.stub().ListModels(pb.ListModelsRequest()).models
    assert [m.name for m in models] == ["double"]
    m = models[0]
    assert m.is_default and m.random_weights and (m.default_width, m.default_height) == (64, 64)
    assert "euler_a" in m.samplers
    st = status(server)
    assert st.model == "double" and st.device == "cpu" and st.model_loaded and st.random_weights
    assert st.rss_bytes > 0 and st.peak_rss_bytes >= st.rss_bytes
    assert st.uptime_seconds > 0 and st.queue_capacity == 16 and st.version


def test_get_embedding(server, engine):
    reply = server.stub().GetEmbedding(pb.EmbeddingRequest(prompt="a blue square"))
    expected = engine.encode_prompt("a blue square")
    assert list(reply.shape) == list(expected.shape)
    got = np.array(reply.values, dtype=np.float32).reshape(reply.shape)
    np.testing.assert_array_equal(got, expected)


# -- cancel, deadlines, queue ---------------------------------------------------------------


def test_cancel_rpc_stops_a_running_job(server, engine):
    future = start_blocker(server, job_id="job-1")
    reply = server.stub().Cancel(pb.CancelRequest(job_id="job-1"))
    assert reply.previous_state == "running"
    with pytest.raises(grpc.RpcError) as e:
        future.result(timeout=5)
    assert e.value.code() == grpc.StatusCode.CANCELLED
    wait_for(lambda: engine.stopped_calls == 1, what="the engine to stop")
    assert status(server).jobs_in_flight == 0


def test_cancel_rpc_removes_a_queued_job(server):
    blocker = start_blocker(server)
    queued = server.stub().Generate.future(pb.GenerateRequest(prompt="q", job_id="job-2", steps=7))
    wait_for(lambda: status(server).queue_depth == 1, what="the job to queue")
    assert server.stub().Cancel(pb.CancelRequest(job_id="job-2")).previous_state == "queued"
    with pytest.raises(grpc.RpcError) as e:
        queued.result(timeout=5)
    assert e.value.code() == grpc.StatusCode.CANCELLED
    assert status(server).queue_depth == 0
    server.stub().Cancel(pb.CancelRequest(job_id="blocker"))
    with pytest.raises(grpc.RpcError):
        blocker.result(timeout=5)


def test_cancel_unknown_job(server):
    with pytest.raises(grpc.RpcError) as e:
        server.stub().Cancel(pb.CancelRequest(job_id="nope"))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND and "job_id" in e.value.details()


def test_duplicate_job_id(server):
    blocker = start_blocker(server, job_id="same")
    with pytest.raises(grpc.RpcError) as e:
        server.stub().Generate(pb.GenerateRequest(prompt="x", job_id="same"))
    assert e.value.code() == grpc.StatusCode.ALREADY_EXISTS
    blocker.cancel()


def test_client_cancel_mid_generation_stops_the_engine(server, engine):
    steps = 200
    stream = server.stub().GenerateStream(pb.GenerateRequest(prompt="x", steps=steps))
    for event in stream:
        if event.HasField("progress") and event.progress.step == 3:
            break
    stream.cancel()
    t0 = time.monotonic()
    wait_for(lambda: engine.stopped_calls == 1, what="the engine to stop")
    assert time.monotonic() - t0 < 20 * STEP + 1.0
    wait_for(lambda: status(server).jobs_in_flight == 0, what="the job to leave")
    # the engine is free again at once
    reply = server.stub().Generate(pb.GenerateRequest(prompt="after", seed=5, steps=2), timeout=5)
    assert_image_of_seed(reply.images[0].png, 5)


def test_unary_client_cancel(server, engine):
    future = start_blocker(server)
    future.cancel()
    wait_for(lambda: engine.stopped_calls == 1, what="the engine to stop")


def test_deadline_stops_the_job(server, engine):
    t0 = time.monotonic()
    with pytest.raises(grpc.RpcError) as e:
        server.stub().Generate(pb.GenerateRequest(prompt="x", steps=500), timeout=0.3)
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - t0 < 2.0
    wait_for(lambda: engine.stopped_calls == 1, what="the engine to stop")
    wait_for(lambda: status(server).jobs_in_flight == 0, what="the job to leave")


def test_deadline_while_queued_frees_the_place(server):
    blocker = start_blocker(server)
    with pytest.raises(grpc.RpcError) as e:
        server.stub().Generate(pb.GenerateRequest(prompt="x", steps=3), timeout=0.2)
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    wait_for(lambda: status(server).queue_depth == 0, what="the queue to empty")
    blocker.cancel()


def test_queue_full_is_refused_at_once():
    engine = EngineDouble(step_seconds=STEP)
    with ServerThread(make_config(queue_size=2), [engine]) as srv:
        blocker = start_blocker(srv)
        queued = [
            srv.stub().Generate.future(pb.GenerateRequest(prompt=f"q{i}", steps=50 + i))
            for i in range(2)
        ]
        wait_for(lambda: status(srv).queue_depth == 2, what="two queued jobs")
        t0 = time.monotonic()
        with pytest.raises(grpc.RpcError) as e:
            srv.stub().Generate(pb.GenerateRequest(prompt="one too many"))
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert time.monotonic() - t0 < 1.0
        with pytest.raises(grpc.RpcError) as e:
            next(iter(srv.stub().GenerateStream(pb.GenerateRequest(prompt="stream too"))))
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # a cancelled waiter frees its place
        queued[0].cancel()
        wait_for(lambda: status(srv).queue_depth == 1, what="a free place")
        late = srv.stub().Generate.future(pb.GenerateRequest(prompt="late", steps=1, seed=2))
        blocker.cancel()
        queued[1].cancel()
        assert_image_of_seed(late.result(timeout=10).images[0].png, 2)


# -- batching -------------------------------------------------------------------------------


def test_compatible_requests_share_one_engine_call(server, engine):
    blocker = start_blocker(server, steps=60)
    futures = [
        enqueue(server, pb.GenerateRequest(prompt=f"p{i}", seed=100 * i, steps=3)) for i in range(2)
    ]
    odd = enqueue(server, pb.GenerateRequest(prompt="odd", seed=7, steps=5))
    futures += [
        enqueue(server, pb.GenerateRequest(prompt=f"p{i}", seed=100 * i, steps=3))
        for i in range(2, 4)
    ]
    server.stub().Cancel(pb.CancelRequest(job_id="blocker"))
    for i, f in enumerate(futures):
        reply = f.result(timeout=10)
        assert reply.timings.batch_requests == 4
        assert_image_of_seed(reply.images[0].png, 100 * i)
    assert odd.result(timeout=10).timings.batch_requests == 1
    batched = [c for c in engine.calls if c[1] == 3]
    assert len(batched) == 1 and batched[0][0] == ["p0", "p1", "p2", "p3"]
    with pytest.raises(grpc.RpcError):
        blocker.result()


def test_batch_counts_images_not_requests(server, engine):
    blocker = start_blocker(server, steps=60)
    a = enqueue(server, pb.GenerateRequest(prompt="a", seed=10, num_images=3, steps=2))
    b = enqueue(server, pb.GenerateRequest(prompt="b", seed=20, num_images=2, steps=2))
    c = enqueue(server, pb.GenerateRequest(prompt="c", seed=30, steps=2))
    server.stub().Cancel(pb.CancelRequest(job_id="blocker"))
    ra, rb, rc = (f.result(timeout=10) for f in (a, b, c))
    assert list(ra.seeds) == [10, 11, 12] and list(rb.seeds) == [20, 21]
    assert ra.timings.batch_requests == 2 and rc.timings.batch_requests == 2  # 3 + 1 images
    assert rb.timings.batch_requests == 1
    for reply in (ra, rb, rc):
        for image in reply.images:
            assert_image_of_seed(image.png, image.seed)
    with pytest.raises(grpc.RpcError):
        blocker.result()


def test_batching_off():
    engine = EngineDouble(step_seconds=STEP)
    with ServerThread(make_config(max_batch_size=1), [engine]) as srv:
        blocker = start_blocker(srv, steps=60)
        futures = [
            srv.stub().Generate.future(pb.GenerateRequest(prompt=f"p{i}", steps=2))
            for i in range(3)
        ]
        wait_for(lambda: status(srv).queue_depth == 3, what="three queued jobs")
        srv.stub().Cancel(pb.CancelRequest(job_id="blocker"))
        assert all(f.result(timeout=10).timings.batch_requests == 1 for f in futures)
        assert [len(c[0]) for c in engine.calls if c[1] == 2] == [1, 1, 1]
        with pytest.raises(grpc.RpcError):
            blocker.result()


def test_one_cancelled_job_does_not_stop_its_batch(server, engine):
    blocker = start_blocker(server, steps=60)
    keep = server.stub().Generate.future(pb.GenerateRequest(prompt="keep", seed=4, steps=20))
    drop = server.stub().Generate.future(pb.GenerateRequest(prompt="drop", steps=20, job_id="drop"))
    wait_for(lambda: status(server).queue_depth == 2, what="two queued jobs")
    server.stub().Cancel(pb.CancelRequest(job_id="blocker"))
    wait_for(lambda: status(server).jobs_in_flight == 2, what="the batch to run")
    server.stub().Cancel(pb.CancelRequest(job_id="drop"))
    with pytest.raises(grpc.RpcError) as e:
        drop.result(timeout=5)
    assert e.value.code() == grpc.StatusCode.CANCELLED
    assert_image_of_seed(keep.result(timeout=10).images[0].png, 4)
    assert engine.stopped_calls == 1  # only the blocker's call
    with pytest.raises(grpc.RpcError):
        blocker.result()


def test_engine_never_runs_two_calls_at_once(server, engine):
    futures = [
        server.stub().Generate.future(pb.GenerateRequest(prompt="x", steps=2 + i % 3))
        for i in range(9)
    ]
    for f in futures:
        f.result(timeout=30)
    assert engine.max_active == 1


# -- validation and errors ------------------------------------------------------------------

BAD_FIELDS = [
    ("prompt", dict(prompt="x" * 5000)),
    ("negative_prompt", dict(negative_prompt="x" * 5000)),
    ("width", dict(width=-8)),
    ("width", dict(width=100)),
    ("width", dict(width=4096)),
    ("height", dict(height=-8)),
    ("height", dict(height=36)),
    ("steps", dict(steps=-1)),
    ("steps", dict(steps=1001)),
    ("guidance_scale", dict(guidance_scale=math.nan)),
    ("guidance_scale", dict(guidance_scale=math.inf)),
    ("guidance_scale", dict(guidance_scale=-1.0)),
    ("guidance_scale", dict(guidance_scale=51.0)),
    ("seed", dict(seed=-2)),
    ("sampler", dict(sampler="heun_9000")),
    ("num_images", dict(num_images=-1)),
    ("num_images", dict(num_images=9)),
    ("model", dict(model="sd-99")),
    ("job_id", dict(job_id="x" * 200)),
]


@pytest.mark.parametrize(
    "field,values", BAD_FIELDS, ids=[f"{f}={list(v.values())[0]!r}"[:40] for f, v in BAD_FIELDS]
)
def test_bad_field_is_invalid_argument_naming_it(server, field, values):
    request = pb.GenerateRequest(**{"prompt": "ok", **values})
    for call in (server.stub().Generate, lambda r: list(server.stub().GenerateStream(r))):
        with pytest.raises(grpc.RpcError) as e:
            call(request)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert e.value.details().startswith(field + ":"), e.value.details()


def test_every_request_field_has_a_bad_value_test():
    checked = {f for f, _ in BAD_FIELDS} | {"preview"}  # preview is a bool: no bad value
    assert set(pb.GenerateRequest.DESCRIPTOR.fields_by_name) == checked


# Requests that must be refused before any work, each naming its field.
REFUSED = [
    ("prompt", dict(prompt="a\x00b")),
    ("negative_prompt", dict(negative_prompt="\x00")),
    # 666 chunks after BREAK, in 3996 characters
    ("prompt", dict(prompt="BREAK " * 666)),
    # about 1000 nested brackets used to weigh 1.1 ** 1000: inf, then a NaN image
    ("prompt", dict(prompt="(" * 1000 + "red")),
    ("prompt", dict(prompt="(red:1000)")),
    # every seed s .. s + num_images - 1 must fit an int64
    ("seed", dict(seed=2**63 - 1, num_images=2)),
    ("seed", dict(seed=2**63 - 3, num_images=4)),
]


@pytest.mark.parametrize(
    "field,values", REFUSED, ids=[f"{f}={list(v.values())[0]!r}"[:40] for f, v in REFUSED]
)
def test_refused_before_any_work(server, engine, field, values):
    request = pb.GenerateRequest(**{"prompt": "ok", **values})
    for call in (server.stub().Generate, lambda r: list(server.stub().GenerateStream(r))):
        with pytest.raises(grpc.RpcError) as e:
            call(request)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert e.value.details().startswith(field + ":"), e.value.details()
    assert engine.calls == [] and status(server).queue_depth == 0


def test_last_seeds_that_fit_are_accepted(server):
    top = 2**63 - 1
    reply = server.stub().Generate(pb.GenerateRequest(prompt="x", seed=top - 1, num_images=2))
    assert list(reply.seeds) == [top - 1, top]


def test_size_multiple_comes_from_the_model():
    # a model whose UNet needs sides that are multiples of 32, as the shipped one does
    engine = EngineDouble(size_multiple=32)
    with ServerThread(make_config(), [engine]) as srv:
        for field in ("width", "height"):
            with pytest.raises(grpc.RpcError) as e:
                srv.stub().Generate(pb.GenerateRequest(prompt="x", **{field: 72}))
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert e.value.details().startswith(f"{field}: must be a multiple of 32")
        assert engine.calls == []
        reply = srv.stub().Generate(pb.GenerateRequest(prompt="x", width=96, seed=1))
        assert (reply.images[0].width, reply.images[0].height) == (96, 64)


LONG = "x" * 10000


@pytest.mark.parametrize(
    "call,field,code",
    [
        (
            lambda s: s.Generate(pb.GenerateRequest(prompt="x", model=LONG)),
            "model",
            "INVALID_ARGUMENT",
        ),
        (
            lambda s: s.Generate(pb.GenerateRequest(prompt="x", sampler=LONG)),
            "sampler",
            "INVALID_ARGUMENT",
        ),
        (
            lambda s: s.GetEmbedding(pb.EmbeddingRequest(prompt="x", model=LONG)),
            "model",
            "INVALID_ARGUMENT",
        ),
        # a job id within the 128 characters an id may have, but longer than what is echoed
        (lambda s: s.Cancel(pb.CancelRequest(job_id=LONG[:100])), "job_id", "NOT_FOUND"),
    ],
    ids=["model", "sampler", "embedding-model", "cancel-job-id"],
)
def test_echoed_input_is_cut_short(server, call, field, code):
    with pytest.raises(grpc.RpcError) as e:
        call(server.stub())
    assert e.value.code().name == code
    details = e.value.details()
    assert details.startswith(field + ":") and "x" * 64 in details and "x" * 65 not in details
    assert len(details) < 300, details


@pytest.mark.parametrize(
    "request_",
    [
        pb.EmbeddingRequest(prompt="a\x00b"),
        pb.EmbeddingRequest(prompt="BREAK " * 666),
        pb.EmbeddingRequest(prompt="(" * 1000 + "red"),
        pb.EmbeddingRequest(prompt="x" * 5000),
    ],
    ids=["nul", "break-flood", "nesting", "too-long"],
)
def test_get_embedding_validates_its_prompt(server, request_):
    with pytest.raises(grpc.RpcError) as e:
        server.stub().GetEmbedding(request_)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.details().startswith("prompt:"), e.value.details()


def test_compat_services_name_their_own_fields(server, engine):
    stub = image_service_pb2_grpc.ImageServiceStub(server.channel())
    with pytest.raises(grpc.RpcError) as e:
        stub.GenerateImage(image_service_pb2.ImageRequest(positive_prompt="a\x00"))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.details().startswith("positive_prompt:")
    stub = text2image_pb2_grpc.Text2ImageServiceStub(server.channel())
    with pytest.raises(grpc.RpcError) as e:
        stub.GenerateImage(
            text2image_pb2.GenerateImageRequest(prompt="x", num_inference_steps=5000)
        )
    assert e.value.details().startswith("num_inference_steps:")
    assert engine.calls == []


def test_server_limits_narrow_the_request_limits():
    engine = EngineDouble()
    with ServerThread(make_config(max_steps=10, max_images_per_request=2), [engine]) as srv:
        for values, field in ((dict(steps=11), "steps"), (dict(num_images=3), "num_images")):
            with pytest.raises(grpc.RpcError) as e:
                srv.stub().Generate(pb.GenerateRequest(prompt="x", **values))
            assert e.value.details().startswith(f"{field}: must be between 1 and ")
        assert (
            len(srv.stub().Generate(pb.GenerateRequest(prompt="x", steps=10, num_images=2)).images)
            == 2
        )


def test_engine_error_is_internal_and_the_server_goes_on():
    engine = EngineDouble(fail_on="explode")
    with ServerThread(make_config(), [engine]) as srv:
        with pytest.raises(grpc.RpcError) as e:
            srv.stub().Generate(pb.GenerateRequest(prompt="explode"))
        assert e.value.code() == grpc.StatusCode.INTERNAL
        assert "scripted failure on prompt 'explode'" in e.value.details()
        with pytest.raises(grpc.RpcError) as e:
            list(srv.stub().GenerateStream(pb.GenerateRequest(prompt="explode")))
        assert e.value.code() == grpc.StatusCode.INTERNAL
        reply = srv.stub().Generate(pb.GenerateRequest(prompt="fine", seed=1))
        assert_image_of_seed(reply.images[0].png, 1)


# -- compatibility services -----------------------------------------------------------------


def test_gpu_service_prompt(server):
    stub = gpu_service_pb2_grpc.GpuServiceStub(server.channel())
    reply = stub.Prompt(gpu_service_pb2.PromptRequest(prompt="a green triangle"))
    assert reply.status == "completed"
    assert decode(reply.image).shape == (64, 64, 3)


def test_image_service_generate_image(server, engine):
    stub = image_service_pb2_grpc.ImageServiceStub(server.channel())
    reply = stub.GenerateImage(
        image_service_pb2.ImageRequest(positive_prompt="a cat", negative_prompt="dogs")
    )
    assert reply.mime_type == "image/png" and reply.filename_hint.endswith(".png")
    assert decode(reply.image).shape == (64, 64, 3)
    assert engine.calls[-1][0] == ["a cat"]
    # the same service under the package name img_service, called by its path
    call = server.channel().unary_unary(
        "/img_service.ImageService/GenerateImage",
        request_serializer=image_service_pb2.ImageRequest.SerializeToString,
        response_deserializer=image_service_pb2.ImageResponse.FromString,
    )
    reply = call(image_service_pb2.ImageRequest(positive_prompt="a dog"))
    assert reply.mime_type == "image/png" and decode(reply.image).shape == (64, 64, 3)


def test_text2image_generate_and_status(server, engine):
    stub = text2image_pb2_grpc.Text2ImageServiceStub(server.channel())
    reply = stub.GenerateImage(
        text2image_pb2.GenerateImageRequest(
            prompt="a red circle",
            height=72,
            width=96,
            guidance_scale=5.0,
            num_inference_steps=3,
            negative_prompt="blur",
            seed=12,
        )
    )
    assert (reply.prompt, reply.height, reply.width, reply.num_inference_steps) == (
        "a red circle",
        72,
        96,
        3,
    )
    assert reply.guidance_scale == 5.0 and reply.negative_prompt == "blur" and reply.seed == 12
    assert_image_of_seed(reply.image, 12, size=(96, 72))
    random = stub.GenerateImage(text2image_pb2.GenerateImageRequest(prompt="x", seed=-1))
    assert random.seed >= 0 and random.num_inference_steps == 4
    assert_image_of_seed(random.image, random.seed)
    with pytest.raises(grpc.RpcError) as e:
        stub.GenerateImage(text2image_pb2.GenerateImageRequest(prompt="x", width=13, seed=1))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    st = stub.GetStatus(text2image_pb2.StatusRequest())
    assert st.status == "ready" and "double" in st.model_version and st.memory_rss_bytes > 0


# -- many clients ---------------------------------------------------------------------------


def test_eight_concurrent_clients_all_answered_correctly(server):
    results, errors = {}, []

    def client(i):
        try:
            with server.channel() as channel:
                from sdcore.service.gen import sdcore_service_pb2_grpc

                stub = sdcore_service_pb2_grpc.SdcoreStub(channel)
                if i % 2:
                    events = list(
                        stub.GenerateStream(
                            pb.GenerateRequest(prompt=f"c{i}", seed=1000 + i, steps=3)
                        )
                    )
                    results[i] = events[-1].result
                else:
                    results[i] = stub.Generate(
                        pb.GenerateRequest(prompt=f"c{i}", seed=1000 + i, steps=3, num_images=2)
                    )
        except Exception as e:  # reported below
            errors.append((i, e))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    for i in range(8):
        reply = results[i]
        assert reply.seeds[0] == 1000 + i and len(reply.images) == (1 if i % 2 else 2)
        for image in reply.images:
            assert_image_of_seed(image.png, image.seed)
    assert status(server).images_generated == 12


# -- auth, health, reflection, metrics, TLS -------------------------------------------------


def test_api_key_required():
    engine = EngineDouble()
    cfg = make_config(require_api_key=True, api_key="s3cret")
    with ServerThread(cfg, [engine]) as srv:
        stub = srv.stub()
        request = pb.GenerateRequest(prompt="x", steps=1)
        for metadata in (None, (("x-api-key", "wrong"),)):
            for call in (
                lambda md: stub.Generate(request, metadata=md),
                lambda md: list(stub.GenerateStream(request, metadata=md)),
                lambda md: stub.GetStatus(pb.StatusRequest(), metadata=md),
                lambda md: gpu_service_pb2_grpc.GpuServiceStub(srv.channel()).Prompt(
                    gpu_service_pb2.PromptRequest(prompt="x"), metadata=md
                ),
            ):
                with pytest.raises(grpc.RpcError) as e:
                    call(metadata)
                assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        good = (("x-api-key", "s3cret"),)
        assert len(stub.Generate(request, metadata=good).images) == 1
        assert list(stub.GenerateStream(request, metadata=good))[-1].HasField("result")
        health = health_pb2_grpc.HealthStub(srv.channel())
        assert health.Check(health_pb2.HealthCheckRequest()).status == (
            health_pb2.HealthCheckResponse.SERVING
        )


def test_api_key_off_needs_no_metadata(server):
    assert server.stub().GetStatus(pb.StatusRequest()).model == "double"


def test_health_transitions(monkeypatch):
    import sdcore

    release = threading.Event()

    class SlowLoading:
        @staticmethod
        def from_pretrained(path, device="cpu", copy_weights=False):
            assert path is None and device == "cpu"
            release.wait(10)
            return EngineDouble()

    monkeypatch.setattr(sdcore, "Pipeline", SlowLoading, raising=False)
    srv = ServerThread(make_config()).start(wait_ready=False)
    try:
        health = health_pb2_grpc.HealthStub(srv.channel())
        watch = health.Watch(health_pb2.HealthCheckRequest(service=""))
        seen = [next(watch).status]
        assert seen == [health_pb2.HealthCheckResponse.NOT_SERVING]
        check = health.Check(health_pb2.HealthCheckRequest(service="sdcore.v1.Sdcore"))
        assert check.status == health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(grpc.RpcError) as e:
            srv.stub().Generate(pb.GenerateRequest(prompt="x"))
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        assert not status(srv).model_loaded
        release.set()
        seen.append(next(watch).status)
        assert seen[-1] == health_pb2.HealthCheckResponse.SERVING
        assert srv.stub().Generate(pb.GenerateRequest(prompt="x", steps=1)).images
        for name in (
            "sdcore.v1.Sdcore",
            "gpu.GpuService",
            "ImageService",
            "text2image.Text2ImageService",
        ):
            check = health.Check(health_pb2.HealthCheckRequest(service=name))
            assert check.status == health_pb2.HealthCheckResponse.SERVING, name
        srv.call(srv.server.health.enter_graceful_shutdown())
        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
        watch.cancel()
    finally:
        release.set()
        srv.stop()


def _reflected_services(srv):
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    return set(ProtoReflectionDescriptorDatabase(srv.channel()).get_services())


def test_reflection_on_and_off():
    with ServerThread(make_config(enable_reflection=True), [EngineDouble()]) as srv:
        services = _reflected_services(srv)
        assert {
            "sdcore.v1.Sdcore",
            "gpu.GpuService",
            "ImageService",
            "text2image.Text2ImageService",
            "grpc.health.v1.Health",
        } <= services
        from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
            ProtoReflectionDescriptorDatabase,
        )

        db = ProtoReflectionDescriptorDatabase(srv.channel())
        assert db.FindFileContainingSymbol("sdcore.v1.GenerateRequest").name == (
            "sdcore_service.proto"
        )
    with ServerThread(make_config(enable_reflection=False), [EngineDouble()]) as srv:
        with pytest.raises(grpc.RpcError) as e:
            _reflected_services(srv)
        assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_every_reflected_service_is_describable_and_known_to_health():
    from google.protobuf import descriptor_pool
    from grpc_reflection.v1alpha import reflection
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    with ServerThread(make_config(enable_reflection=True), [EngineDouble()]) as srv:
        db = ProtoReflectionDescriptorDatabase(srv.channel())
        pool = descriptor_pool.DescriptorPool(db)
        services = set(db.get_services())
        assert "img_service.ImageService" in services
        health = health_pb2_grpc.HealthStub(srv.channel())
        for name in sorted(services):
            service = pool.FindServiceByName(name)
            assert service.methods, name
            for method in service.methods:
                assert pool.FindMessageTypeByName(method.input_type.full_name)
                assert pool.FindMessageTypeByName(method.output_type.full_name)
            if name in (reflection.SERVICE_NAME, "grpc.health.v1.Health"):
                continue
            check = health.Check(health_pb2.HealthCheckRequest(service=name))
            assert check.status == health_pb2.HealthCheckResponse.SERVING, name
        # the alias answers with ImageService's messages, called through its described path
        method = pool.FindServiceByName("img_service.ImageService").methods_by_name["GenerateImage"]
        assert method.input_type.full_name == "ImageRequest"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_metrics_endpoint():
    cfg = make_config(metrics_port=free_port(), metrics_host="127.0.0.1")
    with ServerThread(cfg, [EngineDouble()]) as srv:
        srv.stub().Generate(pb.GenerateRequest(prompt="x", num_images=2, steps=1))
        with pytest.raises(grpc.RpcError):
            srv.stub().Generate(pb.GenerateRequest(prompt="x", width=3))
        url = f"http://127.0.0.1:{srv.server.metrics_port}/metrics"
        text = urllib.request.urlopen(url, timeout=5).read().decode()
    assert 'sdcore_requests_total{code="OK",rpc="Generate"} 1.0' in text
    assert 'sdcore_requests_total{code="INVALID_ARGUMENT",rpc="Generate"} 1.0' in text
    assert "sdcore_images_total 2.0" in text
    assert "sdcore_queue_depth 0.0" in text
    assert 'sdcore_request_latency_seconds_count{rpc="Generate"} 2.0' in text


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_tls(tmp_path):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    cfg = make_config(use_tls=True, cert_file=str(cert), key_file=str(key))
    with ServerThread(cfg, [EngineDouble()]) as srv:
        creds = grpc.ssl_channel_credentials(cert.read_bytes())
        with grpc.secure_channel(f"localhost:{srv.server.port}", creds) as channel:
            from sdcore.service.gen import sdcore_service_pb2_grpc

            stub = sdcore_service_pb2_grpc.SdcoreStub(channel)
            assert stub.Generate(pb.GenerateRequest(prompt="x", steps=1)).images
        with srv.channel() as plain:  # a plaintext client cannot talk to it
            from sdcore.service.gen import sdcore_service_pb2_grpc

            with pytest.raises(grpc.RpcError) as e:
                sdcore_service_pb2_grpc.SdcoreStub(plain).GetStatus(pb.StatusRequest(), timeout=2)
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE


# -- shutdown -------------------------------------------------------------------------------


def test_graceful_shutdown_lets_work_finish_and_refuses_new_calls():
    engine = EngineDouble(step_seconds=STEP)
    srv = ServerThread(make_config(), [engine]).start()
    running = srv.stub().Generate.future(pb.GenerateRequest(prompt="x", seed=8, steps=30))
    wait_for(lambda: status(srv).jobs_in_flight == 1, what="the job to run")
    channel = srv.channel()
    stop = threading.Thread(target=srv.stop, kwargs={"grace": 10.0})
    stop.start()
    wait_for(lambda: srv.server.core.state == "shutting_down", what="shutdown to begin")
    from sdcore.service.gen import sdcore_service_pb2_grpc

    with pytest.raises(grpc.RpcError) as e:
        sdcore_service_pb2_grpc.SdcoreStub(channel).Generate(
            pb.GenerateRequest(prompt="late"), timeout=2
        )
    # gRPC itself refuses calls once stop() has begun (CANCELLED on a live connection)
    assert e.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
    assert_image_of_seed(running.result(timeout=10).images[0].png, 8)
    stop.join(15)
    assert not stop.is_alive()
    assert engine.stopped_calls == 0


def test_shutdown_cancels_work_past_the_grace_period():
    engine = EngineDouble(step_seconds=STEP)
    srv = ServerThread(make_config(), [engine]).start()
    running = srv.stub().Generate.future(pb.GenerateRequest(prompt="x", steps=1000))
    wait_for(lambda: status(srv).jobs_in_flight == 1, what="the job to run")
    t0 = time.monotonic()
    srv.stop(grace=0.3)
    assert time.monotonic() - t0 < 3.0
    with pytest.raises(grpc.RpcError) as e:
        running.result(timeout=5)
    assert e.value.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)
    assert engine.stopped_calls == 1


def test_stream_position_moves_up_as_the_queue_drains(server):
    blocker = start_blocker(server)
    ahead = enqueue(server, pb.GenerateRequest(prompt="ahead", steps=2, job_id="ahead"))
    stream = server.stub().GenerateStream(pb.GenerateRequest(prompt="behind", steps=2))
    first = next(stream)
    assert first.queued.position == 1
    server.stub().Cancel(pb.CancelRequest(job_id="ahead"))
    second = next(stream)
    assert second.WhichOneof("event") == "queued" and second.queued.position == 0
    server.stub().Cancel(pb.CancelRequest(job_id="blocker"))
    assert [e.WhichOneof("event") for e in stream] == ["progress", "progress", "result"]
    for future in (blocker, ahead):
        with pytest.raises(grpc.RpcError):
            future.result()


def test_max_concurrent_rpcs_is_enforced_by_grpc():
    engine = EngineDouble(step_seconds=STEP)
    with ServerThread(make_config(max_concurrent_rpcs=2), [engine]) as srv:
        blocker = srv.stub().Generate.future(pb.GenerateRequest(prompt="b", steps=200))
        wait_for(lambda: engine.calls, what="the engine to start")
        second = srv.stub().Generate.future(pb.GenerateRequest(prompt="c", steps=200))
        time.sleep(0.2)
        with pytest.raises(grpc.RpcError) as e:
            srv.stub().Generate(pb.GenerateRequest(prompt="d", steps=1), timeout=5)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        blocker.cancel()
        second.cancel()
