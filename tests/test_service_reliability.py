"""A client's mistakes and hostile requests: each gets a clear answer and costs the server
nothing else. Each test here failed before the behaviour it checks was added."""

import io
import json
import signal
import socket
import sys
import threading
import time

import grpc
import numpy as np
import pytest
from engine_double import EngineDouble, seed_colour
from PIL import Image
from sdcore.service.batcher import Batcher, Job, Params
from sdcore.service.core import caller
from sdcore.service.errors import NotFound
from sdcore.service.gen import sdcore_service_pb2 as pb
from sdcore.service.gen import sdcore_service_pb2_grpc as pb_grpc
from service_harness import ServerThread, make_config
from test_service_process import start_process

STEP = 0.02


def wait_for(predicate, timeout=5.0, what="condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def status(srv):
    return srv.stub().GetStatus(pb.StatusRequest())


def start_blocker(srv, steps=200, metadata=None):
    future = srv.stub().Generate.future(
        pb.GenerateRequest(prompt="block", steps=steps, job_id="blocker"), metadata=metadata
    )
    wait_for(lambda: status(srv).jobs_in_flight == 1, what="the blocker to run")
    return future


def image_colour(png):
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))[0, 0]


# -- the per-request cost cap -----------------------------------------------------------------


def test_a_request_over_the_cost_budget_is_refused_before_any_work():
    engine = EngineDouble()
    with ServerThread(make_config(max_request_cost=1.0), [engine]) as srv:
        # 512x512 x 8 steps x 1 image = 2 units of 2^20 pixel-steps
        big = pb.GenerateRequest(prompt="x", width=512, height=512, steps=8)
        for call in (srv.stub().Generate, lambda r: list(srv.stub().GenerateStream(r))):
            with pytest.raises(grpc.RpcError) as e:
                call(big)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "--max-request-cost" in e.value.details() and "2 units" in e.value.details()
        assert engine.calls == []
        # within the budget: 512x512 x 4 steps = 1 unit
        reply = srv.stub().Generate(pb.GenerateRequest(prompt="x", width=512, height=512, steps=4))
        assert reply.images[0].width == 512


def test_the_queue_bounds_its_total_work():
    engine = EngineDouble(step_seconds=STEP)
    # 64x64 x 64 steps = 0.25 units: the queue holds 3 such requests, not 4
    config = make_config(max_request_cost=0.5, max_queue_cost=0.8, queue_size=16)
    with ServerThread(config, [engine]) as srv:
        blocker = start_blocker(srv, steps=100)
        request = pb.GenerateRequest(prompt="q", steps=64)
        queued = [srv.stub().Generate.future(request) for _ in range(3)]
        wait_for(lambda: status(srv).queue_depth == 3, what="three jobs to queue")
        with pytest.raises(grpc.RpcError) as e:
            srv.stub().Generate(request)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "--max-queue-cost" in e.value.details()
        # a cheaper request still fits
        small = srv.stub().Generate.future(pb.GenerateRequest(prompt="q", steps=4))
        srv.stub().Cancel(pb.CancelRequest(job_id="blocker"))
        for future in [*queued, small]:
            assert future.result(timeout=30).images
        with pytest.raises(grpc.RpcError):
            blocker.result(timeout=5)


def test_a_reply_larger_than_the_message_limit_is_refused_before_any_work():
    engine = EngineDouble()
    with ServerThread(make_config(max_message_size=256 * 1024), [engine]) as srv:
        with pytest.raises(grpc.RpcError) as e:
            srv.stub().Generate(pb.GenerateRequest(prompt="x", width=512, height=512, steps=1))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "--max-message-size" in e.value.details()
        assert engine.calls == []


# -- isolation --------------------------------------------------------------------------------


def test_a_failing_request_fails_alone_not_its_batch():
    engine = EngineDouble(step_seconds=STEP, fail_on="explode")
    with ServerThread(make_config(max_batch_size=4), [engine]) as srv:
        blocker = start_blocker(srv, steps=20)
        prompts = ["a", "explode", "b", "c"]
        futures = [
            srv.stub().Generate.future(pb.GenerateRequest(prompt=p, seed=i, steps=2))
            for i, p in enumerate(prompts)
        ]
        wait_for(lambda: status(srv).queue_depth == 4, what="four jobs to queue")
        blocker.result(timeout=30)
        for i, (prompt, future) in enumerate(zip(prompts, futures, strict=True)):
            if prompt == "explode":
                with pytest.raises(grpc.RpcError) as e:
                    future.result(timeout=30)
                assert e.value.code() == grpc.StatusCode.INTERNAL
            else:
                reply = future.result(timeout=30)
                assert (image_colour(reply.images[0].png) == seed_colour(i)).all()
        # the four were tried as one batch, then one by one
        batch_calls = [c[0] for c in engine.calls if c[0] != ["block"]]
        assert sorted(batch_calls[0]) == sorted(prompts)
        assert sorted(p for c in batch_calls[1:] for p in c) == sorted(prompts)


# -- GetEmbedding takes its place in the queue ------------------------------------------------


def test_get_embedding_waits_in_the_queue_and_is_refused_when_it_is_full():
    engine = EngineDouble(step_seconds=STEP)
    with ServerThread(make_config(queue_size=2), [engine]) as srv:
        blocker = start_blocker(srv, steps=50)
        embedding = srv.stub().GetEmbedding.future(pb.EmbeddingRequest(prompt="a cat"))
        wait_for(lambda: status(srv).queue_depth == 1, what="the embedding to queue")
        filler = srv.stub().Generate.future(pb.GenerateRequest(prompt="f", steps=1))
        wait_for(lambda: status(srv).queue_depth == 2, what="the queue to fill")
        with pytest.raises(grpc.RpcError) as e:
            srv.stub().GetEmbedding(pb.EmbeddingRequest(prompt="a dog"))
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert not embedding.done()  # it waits behind the running job
        reply = embedding.result(timeout=30)
        blocker.result(timeout=30)  # the blocker ran first; max_active below: never beside it
        expected = engine.encode_prompt("a cat")
        assert list(reply.shape) == list(expected.shape)
        assert np.array_equal(np.asarray(reply.values, dtype=np.float32), expected.ravel())
        filler.result(timeout=30)
        assert engine.max_active == 1


# -- Cancel: bounded input, and only the caller's own jobs -------------------------------------


def test_cancel_quotes_no_huge_job_id():
    engine = EngineDouble()
    with ServerThread(make_config(), [engine]) as srv:
        huge = "j" * 1_000_000
        with pytest.raises(grpc.RpcError) as e:
            srv.stub().Cancel(pb.CancelRequest(job_id=huge))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert len(e.value.details()) < 200
        with pytest.raises(grpc.RpcError) as e:
            srv.stub().Cancel(pb.CancelRequest(job_id="no-such-job"))
        assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_cancel_acts_only_on_the_callers_jobs(rng):
    # batcher level: another owner's job is not found, and keeps running
    import asyncio

    async def scenario():
        slots = {}
        batcher = Batcher(slots, None, queue_size=4, max_batch_size=1)
        slots["m"] = type("Slot", (), {"busy": True})()  # a busy engine keeps the job queued
        params = Params("p", "", 64, 64, 4, 5.0, int(rng.integers(1000)), "euler", 1, "m")
        job = batcher.submit(Job(params, job_id="j1", owner="peer:ipv4:10.1.1.1"))
        with pytest.raises(NotFound):
            batcher.cancel("j1", owner="peer:ipv4:10.2.2.2")
        assert job.state == "queued"
        assert batcher.cancel("j1", owner="peer:ipv4:10.1.1.1") == "queued"

    asyncio.run(scenario())

    # the caller: the API key's digest when there is one, else the address without its port
    class Context:
        def __init__(self, peer, metadata=()):
            self._peer, self._metadata = peer, metadata

        def peer(self):
            return self._peer

        def invocation_metadata(self):
            return self._metadata

    assert caller(Context("ipv4:127.0.0.1:5000")) == caller(Context("ipv4:127.0.0.1:6000"))
    assert caller(Context("ipv4:127.0.0.1:5000")) != caller(Context("ipv6:[::1]:5000"))
    keyed = caller(Context("ipv4:127.0.0.1:5000", (("x-api-key", "k1"),)))
    assert keyed == caller(Context("ipv6:[::1]:9", (("x-api-key", "k1"),)))
    assert keyed != caller(Context("ipv4:127.0.0.1:5000", (("x-api-key", "k2"),)))
    assert "k1" not in keyed  # the key itself is never kept


def test_cancel_from_another_address_is_refused_over_grpc():
    engine = EngineDouble(step_seconds=STEP)
    with ServerThread(make_config(host="[::]"), [engine]) as srv:
        v4 = pb_grpc.SdcoreStub(grpc.insecure_channel(f"127.0.0.1:{srv.server.port}"))
        v6 = pb_grpc.SdcoreStub(grpc.insecure_channel(f"[::1]:{srv.server.port}"))
        running = v4.Generate.future(pb.GenerateRequest(prompt="x", steps=100, job_id="mine"))
        wait_for(lambda: v4.GetStatus(pb.StatusRequest()).jobs_in_flight == 1, what="the job")
        with pytest.raises(grpc.RpcError) as e:
            v6.Cancel(pb.CancelRequest(job_id="mine"))
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
        assert v4.Cancel(pb.CancelRequest(job_id="mine")).previous_state == "running"
        with pytest.raises(grpc.RpcError) as e:
            running.result(timeout=10)
        assert e.value.code() == grpc.StatusCode.CANCELLED


# -- auth, job ids, the wire -------------------------------------------------------------------


def test_an_api_key_alone_turns_auth_on():
    engine = EngineDouble()
    with ServerThread(make_config(api_key="sesame"), [engine]) as srv:
        for metadata in (None, (("x-api-key", "wrong"),)):
            with pytest.raises(grpc.RpcError) as e:
                srv.stub().GetStatus(pb.StatusRequest(), metadata=metadata)
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        srv.stub().GetStatus(pb.StatusRequest(), metadata=(("x-api-key", "sesame"),))


def test_unary_generate_sends_its_job_id_before_the_work():
    engine = EngineDouble(step_seconds=STEP)
    with ServerThread(make_config(), [engine]) as srv:
        # read as any HTTP/2 client can: the headers of a call, apart from its reply
        generate = srv.channel().unary_stream(
            "/sdcore.v1.Sdcore/Generate",
            request_serializer=pb.GenerateRequest.SerializeToString,
            response_deserializer=pb.GenerateResponse.FromString,
        )
        call = generate(pb.GenerateRequest(prompt="x", steps=100))
        job_id = dict(call.initial_metadata())["x-job-id"]
        assert status(srv).jobs_in_flight + status(srv).queue_depth == 1  # still at work
        assert srv.stub().Cancel(pb.CancelRequest(job_id=job_id)).previous_state in (
            "queued",
            "running",
        )
        with pytest.raises(grpc.RpcError) as e:
            list(call)
        assert e.value.code() == grpc.StatusCode.CANCELLED


@pytest.mark.parametrize(
    "payload,reason",
    [(b"\xff\xff\xff", "Wire format was corrupt"), (b"\x0a\x02\xff\xfe", "bad UTF-8")],
)
def test_a_request_that_does_not_parse_is_invalid_argument(payload, reason):
    engine = EngineDouble()
    with ServerThread(make_config(), [engine]) as srv:
        for method in ("Generate", "GenerateStream", "GetEmbedding", "Cancel"):
            path = f"/sdcore.v1.Sdcore/{method}"
            with pytest.raises(grpc.RpcError) as e:
                if method == "GenerateStream":
                    list(srv.channel().unary_stream(path)(payload, timeout=10))
                else:
                    srv.channel().unary_unary(path)(payload, timeout=10)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, method
            assert reason in e.value.details()
        assert engine.calls == []


def test_metrics_listen_only_on_the_host_asked_for():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with ServerThread(make_config(host="127.0.0.1", metrics_port=port), [EngineDouble()]) as srv:
        assert srv.server.metrics._http.server_address[0] == "127.0.0.1"


# -- SIGTERM while an engine step runs ----------------------------------------------------------


def test_sigterm_answers_unavailable_and_exits_within_the_grace_period():
    # one engine step of 60 s: the engine cannot stop before it ends
    proc, port, lines = start_process("--grace-period", "1", env={"DOUBLE_STEP_SECONDS": "60"})
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = pb_grpc.SdcoreStub(channel)
        wait_for(lambda: stub.GetStatus(pb.StatusRequest()).model_loaded, timeout=30)
        running = stub.Generate.future(pb.GenerateRequest(prompt="x", steps=2))
        queued = stub.Generate.future(pb.GenerateRequest(prompt="y", steps=2, width=128))
        wait_for(lambda: stub.GetStatus(pb.StatusRequest()).queue_depth == 1, what="queueing")
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        for future in (running, queued):
            with pytest.raises(grpc.RpcError) as e:
                future.result(timeout=20)
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        assert proc.wait(20) == 0
        assert time.monotonic() - t0 < 10
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    entries = [json.loads(line) for line in lines + proc.stderr.readlines()]
    assert entries[-1]["msg"] == "stopped" and entries[-1]["engine_idle"] is False


def test_cancelled_streams_from_many_threads_leave_the_server_serving():
    """The in-process counterpart of tests/test_service_churn.py: streams abandoned while
    queued, running and finishing, against the double; nothing leaks into the next call."""
    engine = EngineDouble(step_seconds=0.005)
    with ServerThread(make_config(queue_size=64), [engine]) as srv:
        sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent))
        from bench import churn

        request = pb.GenerateRequest(prompt="c", steps=20)
        result = churn.churn(srv.address, clients=6, calls=120, duration=60, request=request)
        assert result.calls == 120 and not result.failures, result.table()
        wait_for(lambda: status(srv).jobs_in_flight == 0 and status(srv).queue_depth == 0)
        reply = srv.stub().Generate(pb.GenerateRequest(prompt="after", seed=5, steps=2))
        assert (image_colour(reply.images[0].png) == seed_colour(5)).all()
        assert threading.active_count() < 100
