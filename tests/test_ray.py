"""sdcore as a Ray Serve application (service/ray_serve.py) on a real local Ray cluster on
127.0.0.1: two CPU engine replicas of the shipped model behind Serve's gRPC proxy, called with
the ordinary sdcore.v1 stubs; a replica killed under load answers UNAVAILABLE and comes back."""

import io
import os
import pathlib
import re
import signal
import socket
import tempfile
import time
import urllib.request

import grpc
import numpy as np
import pytest
from PIL import Image

ray = pytest.importorskip(
    "ray", reason="ray is not installed: the Ray Serve tests need pip install 'sdcore[ray]'"
)
serve = pytest.importorskip("ray.serve", reason="ray[serve] is not installed")

from sdcore.service import config as config_mod  # noqa: E402
from sdcore.service import ray_serve  # noqa: E402
from sdcore.service.gen import sdcore_service_pb2 as pb  # noqa: E402
from sdcore.service.gen import sdcore_service_pb2_grpc  # noqa: E402

import sdcore  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
SIZE = 64
STEPS = 2
DEADLINE_S = 120.0  # per request: any hang fails the test instead of holding it

pytestmark = pytest.mark.slow


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster of 2 CPUs on 127.0.0.1 with Serve and the sdcore application: two
    engine replicas. Always shut down, whatever happens."""
    # the cluster's workers import this checkout's sdcore and service packages
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), saved]))
    temp = tempfile.mkdtemp(prefix="sdray-", dir="/tmp")  # Ray's socket paths must be short
    metrics_port = free_port()
    cfg = config_mod.ServerConfig(
        host="127.0.0.1",
        port=free_port(),
        default_steps=STEPS,
        max_batch_size=4,
        log_json=True,
    ).check()
    try:
        ray.init(
            address="local",
            num_cpus=2,
            _node_ip_address="127.0.0.1",
            _temp_dir=temp,
            include_dashboard=True,
            dashboard_host="127.0.0.1",
            log_to_driver=False,
            _metrics_export_port=metrics_port,
        )
        ray_serve.deploy(cfg, ray_serve.RayOptions(replicas=2).check(), None, free_port())
        yield cfg, metrics_port
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            if saved is None:
                os.environ.pop("PYTHONPATH", None)
            else:
                os.environ["PYTHONPATH"] = saved


@pytest.fixture(scope="module")
def stub(cluster):
    cfg, _ = cluster
    channel = grpc.insecure_channel(f"127.0.0.1:{cfg.port}")
    yield sdcore_service_pb2_grpc.SdcoreStub(channel)
    channel.close()


def request(seed):
    return pb.GenerateRequest(
        prompt="a red circle", width=SIZE, height=SIZE, steps=STEPS, seed=seed, sampler="euler"
    )


def send_all(stub, seeds):
    return [stub.Generate.future(request(s), timeout=DEADLINE_S) for s in seeds]


def replica_of(future):
    return dict(future.trailing_metadata() or ()).get("x-replica-id")


def decode(png):
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def engine_replicas():
    """Serve's view: {state: count} of the engine deployment's replicas."""
    app = serve.status().applications[ray_serve.APP_NAME]
    return dict(app.deployments["SdcoreEngine"].replica_states)


def test_both_replicas_serve_and_images_match_a_direct_call(stub, rng):
    seeds = [int(s) for s in rng.integers(0, 2**31, size=32)]
    futures = send_all(stub, seeds)
    replies = [f.result() for f in futures]
    replicas = {replica_of(f) for f in futures}
    assert len(replicas) == 2 and None not in replicas, replicas
    pipe = sdcore.Pipeline.from_pretrained(None, device="cpu")
    for seed, reply in list(zip(seeds, replies, strict=True))[:3]:
        (expected,) = pipe(
            "a red circle",
            num_inference_steps=STEPS,
            width=SIZE,
            height=SIZE,
            seed=seed,
            sampler="euler",
        )
        # batched on a replica vs alone here: the same image up to float rounding
        diff = np.abs(decode(reply.images[0].png).astype(int) - expected.array.astype(int))
        assert diff.mean() < 0.5 and diff.max() <= 4, (seed, diff.mean(), diff.max())


def test_bad_request_names_the_field_through_the_proxy(stub):
    with pytest.raises(grpc.RpcError) as e:
        stub.Generate(pb.GenerateRequest(prompt="x", steps=-1), timeout=DEADLINE_S)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.details().startswith("steps:")


def test_stream_through_the_proxy(stub):
    events = list(stub.GenerateStream(request(5), timeout=DEADLINE_S))
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds == ["queued"] + ["progress"] * STEPS + ["result"], kinds


def test_engine_metrics_reach_rays_exporter(cluster, stub):
    """The engine's sdcore_* metrics, recorded through ray.serve.metrics, are on the node's
    Prometheus endpoint with Serve's replica tag (Ray exports every few seconds)."""
    _, metrics_port = cluster
    stub.Generate(request(3), timeout=DEADLINE_S)
    sample = re.compile(r"^ray_sdcore_requests(?:_total)?\{([^}]*)\} ([0-9.e+]+)$", re.M)
    t0, lines = time.monotonic(), []
    while time.monotonic() - t0 < 60:
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        text = urllib.request.urlopen(url, timeout=10).read().decode()
        served = [
            float(value)
            for labels, value in sample.findall(text)
            if 'rpc="Generate"' in labels and 'code="OK"' in labels and 'replica="' in labels
        ]
        if sum(served) >= 1:
            return
        lines = [line for line in text.splitlines() if "sdcore" in line]
        time.sleep(1)
    pytest.fail(f"no ray_sdcore_requests sample of a served Generate: {lines[:20]}")


def test_deadline_stops_the_job_on_its_replica(stub):
    """The client's deadline ends the call at the proxy; the cancel reaches the engine, which
    drops the job at its next step: a job of minutes leaves every replica idle in seconds."""
    long_job = pb.GenerateRequest(prompt="x", width=128, height=128, steps=150, seed=1)
    with pytest.raises(grpc.RpcError) as e:
        stub.Generate(long_job, timeout=2.0)
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    t0, idle = time.monotonic(), {}
    while len(idle) < 2 or not all(idle.values()):
        assert time.monotonic() - t0 < 15, idle
        reply, call = stub.GetStatus.with_call(pb.StatusRequest(), timeout=DEADLINE_S)
        idle[replica_of(call)] = reply.jobs_in_flight == 0 and reply.queue_depth == 0
        time.sleep(0.1)


def test_cancel_by_job_id_through_the_proxy(stub, rng):
    job_id = f"job-{rng.integers(2**62)}"
    long_job = pb.GenerateRequest(
        prompt="x", width=128, height=128, steps=150, seed=1, job_id=job_id
    )
    events = stub.GenerateStream(long_job, timeout=DEADLINE_S)
    kinds = []
    with pytest.raises(grpc.RpcError) as e:
        for event in events:
            kinds.append(event.WhichOneof("event"))
            if kinds[-1] == "progress" and len(kinds) == 2:
                reply = stub.Cancel(pb.CancelRequest(job_id=job_id), timeout=DEADLINE_S)
                assert reply.job_id == job_id
    assert e.value.code() == grpc.StatusCode.CANCELLED, e.value
    assert kinds[0] == "queued" and "result" not in kinds
    with pytest.raises(grpc.RpcError) as e:
        stub.Cancel(pb.CancelRequest(job_id=job_id), timeout=DEADLINE_S)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_killed_replica_fails_its_requests_unavailable_and_comes_back(stub, rng):
    from ray.util.state import list_actors

    seeds = [int(s) for s in rng.integers(0, 2**31, size=32)]
    futures = send_all(stub, seeds)
    # wait for the first answer: then both replicas hold queued work
    t0 = time.monotonic()
    while not any(f.done() for f in futures):
        assert time.monotonic() - t0 < DEADLINE_S, "no answer at all"
        time.sleep(0.05)
    victim = next(replica_of(f) for f in futures if f.done() and f.exception() is None)
    # this test's own cluster, named: with no address the state API picks "the" local cluster
    # and fails when another one runs on the machine
    gcs = ray.get_runtime_context().gcs_address
    actors = list_actors(address=gcs, filters=[("state", "=", "ALIVE")], detail=True)
    (pid,) = [a.pid for a in actors if a.name and a.name.endswith("#" + victim)]
    os.kill(pid, signal.SIGKILL)

    codes, served_by = [], set()
    for f in futures:
        error = f.exception()  # waits; every future has a deadline
        codes.append(grpc.StatusCode.OK if error is None else error.code())
        if error is None:
            served_by.add(replica_of(f))
    counts = {c: codes.count(c) for c in set(codes)}
    assert set(counts) <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}, counts
    assert counts.get(grpc.StatusCode.UNAVAILABLE, 0) >= 1, counts
    assert counts.get(grpc.StatusCode.OK, 0) >= 1, counts

    # Serve starts a replacement; the deployment is back to two running replicas
    t0 = time.monotonic()
    while engine_replicas() != {"RUNNING": 2}:
        assert time.monotonic() - t0 < 180, engine_replicas()
        time.sleep(0.5)
    # ... and the routers learn of it (asynchronously): it serves requests again
    t0, after = time.monotonic(), set()
    while not after - served_by:
        assert time.monotonic() - t0 < 90, f"the replacement replica served nothing: {after}"
        futures = send_all(stub, seeds[:8])
        after |= {replica_of(f) for f in futures if f.result() is not None}
    assert victim not in after


def test_full_queues_answer_resource_exhausted(cluster, stub):
    """Every replica full (its queue and a batch) and the router's queue full: the next request
    is answered RESOURCE_EXHAUSTED at once, as one server with a full queue answers. (Last of
    the cluster's tests: it deploys the application again with tiny queues.)"""
    cfg, _ = cluster
    tiny = config_mod.ServerConfig(
        host="127.0.0.1", port=cfg.port, default_steps=STEPS, max_batch_size=1, queue_size=1
    ).check()
    ray_serve.deploy(tiny, ray_serve.RayOptions(replicas=2).check(), None)
    # room: 2 replicas x (1 queued + 1 running) + 1 at the router
    room = 2 * ray_serve.max_ongoing_requests(tiny) + ray_serve.max_queued_requests(tiny)
    slow = pb.GenerateRequest(prompt="x", width=SIZE, height=SIZE, steps=30, seed=1)
    futures = [stub.Generate.future(slow, timeout=DEADLINE_S) for _ in range(room + 6)]
    codes = [grpc.StatusCode.OK if f.exception() is None else f.exception().code() for f in futures]
    counts = {c: codes.count(c) for c in set(codes)}
    assert set(counts) == {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, counts
    assert counts[grpc.StatusCode.RESOURCE_EXHAUSTED] >= 6, counts


class FakeServeContext:
    def __init__(self, metadata):
        self.metadata, self.code, self.details = metadata, None, None

    def invocation_metadata(self):
        return self.metadata

    def set_code(self, code):
        self.code = code

    def set_details(self, details):
        self.details = details


def test_ingress_checks_the_api_key():
    ingress = ray_serve.Ingress(engine=None, api_key="k1")
    ingress._check_key(FakeServeContext([("x-api-key", "k1")]))
    for metadata in ([], [("x-api-key", "k2")]):
        context = FakeServeContext(metadata)
        with pytest.raises(ray_serve._Refused):
            ingress._check_key(context)
        assert context.code == grpc.StatusCode.UNAUTHENTICATED and "x-api-key" in context.details


def test_build_app_names_a_bad_argument():
    with pytest.raises(config_mod.ConfigError, match="replicas"):
        ray_serve.build_app({"replicas": 0})
    with pytest.raises(config_mod.ConfigError, match="bogus"):
        ray_serve.build_app({"bogus": 1})
    with pytest.raises(config_mod.ConfigError, match="--max-replicas"):
        ray_serve.build_app({"replicas": 3, "max_replicas": 2})


@pytest.mark.parametrize("path", ["deploy/ray/serve.yaml", "deploy/ray/rayservice.yaml"])
def test_shipped_serve_configs_are_valid(path):
    import yaml
    from ray.serve.schema import ServeDeploySchema

    document = yaml.safe_load((ROOT / path).read_text())
    if document.get("kind") == "RayService":
        document = yaml.safe_load(document["spec"]["serveConfigV2"])
    schema = ServeDeploySchema.model_validate(document)
    assert schema.grpc_options.grpc_servicer_functions == ray_serve.GRPC_SERVICER_FUNCTIONS
    (app,) = schema.applications
    assert app.import_path == "sdcore.service.ray_serve:build_app"
    ray_serve.build_app(app.args)  # every argument known and in range
