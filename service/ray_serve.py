"""sdcore as a Ray Serve application: many engine replicas behind Ray Serve's gRPC proxy, one
endpoint, no router of our own.

Two deployments make the application:

- `SdcoreEngine`: one replica per GPU (or per CPU slot), each with the model loaded once and
  the same ServiceCore (validation, queue, batcher) and SdcoreServicer as the single-process
  server. Its methods take the RPC's request bytes and answer the reply bytes, the status and
  the metadata `x-replica-id` / `x-job-id`.
- `SdcoreIngress`: the application's ingress, which Serve's gRPC proxy calls by RPC name
  (Generate, GenerateStream, ...). It forwards each call to the engine through a deployment
  handle, so that Serve's own router (power of two choices over ongoing requests) picks the
  replica with the shorter queue, and it turns Ray's failures into gRPC codes: a replica that
  dies under a request answers UNAVAILABLE, not INTERNAL (which is what the proxy would say
  were the engine itself the ingress). Serve restarts the dead replica.

So a plain sdcore.v1 client (`sdcore client generate --server HOST:PORT`, the stubs in
service/gen) talks to the proxy unchanged. The compatibility services (gpu.GpuService,
ImageService, Text2ImageService) are not served here: Serve's proxy routes by method name
alone, and they share names with sdcore.v1 (GenerateImage, GetStatus).

Metrics: the engine's metrics (service/metrics.py: sdcore_requests, sdcore_queue_depth, ...)
are recorded through Ray's metrics (ray.serve.metrics), with the same names, help and buckets,
tagged by Serve with application, deployment and replica, and exported by every node's Ray
metrics agent (Prometheus format, `ray_` prefixed) next to Serve's own serve_* metrics.

Start it with `sdcore serve --ray-address ADDRESS --replicas N`, or with Serve's CLI and
deploy/ray/serve.yaml (`import_path: sdcore.service.ray_serve:build_app`).
"""

import asyncio
import dataclasses
import hmac
import logging
import os
import signal
import sys
import threading

import grpc
import prometheus_client as prom
import ray
from ray import serve
from ray.serve.config import gRPCOptions
from ray.serve.exceptions import (
    BackPressureError,
    DeploymentUnavailableError,
    ReplicaUnavailableError,
    RequestCancelledError,
)
from sdcore.service import config as config_mod
from sdcore.service import ray_grpc  # noqa: F401  (the message modules under their own names)
from sdcore.service.auth import API_KEY_HEADER
from sdcore.service.core import ServiceCore, caller
from sdcore.service.gen import sdcore_service_pb2 as pb
from sdcore.service.metrics import Metrics
from sdcore.service.servicers import SdcoreServicer

log = logging.getLogger("service")

APP_NAME = "sdcore"
# What Serve's gRPC proxy must serve: the import path of our generated add-function.
GRPC_SERVICER_FUNCTIONS = ["sdcore.service.ray_grpc.add_SdcoreServicer_to_server"]
SERVICE = pb.DESCRIPTOR.services_by_name["Sdcore"]
# Ray's failures that mean "the replica serving this request is gone": UNAVAILABLE, retry.
REPLICA_GONE = (
    ray.exceptions.RayActorError,
    ray.exceptions.ActorUnavailableError,
    ReplicaUnavailableError,
    DeploymentUnavailableError,
)
QUEUES_FULL = "the queue is full on every replica; retry later"
# Requests one ingress replica forwards at once (it only waits on the engine).
INGRESS_MAX_ONGOING = 1000


# -- the configuration ---------------------------------------------------------------------


@dataclasses.dataclass
class RayOptions:
    replicas: int = 1  # engine replicas; with max_replicas, the autoscaler's minimum
    max_replicas: int | None = None  # None: a fixed number of replicas
    replica_cpus: float = 1.0  # CPUs Ray reserves for one engine replica
    ingress_replicas: int = 1

    def check(self):
        if self.replicas < 1:
            raise config_mod.ConfigError(f"--replicas: {self.replicas} is below 1")
        if self.max_replicas is not None and self.max_replicas < self.replicas:
            raise config_mod.ConfigError(
                f"--max-replicas: {self.max_replicas} is below --replicas ({self.replicas})"
            )
        if not self.replica_cpus > 0:
            raise config_mod.ConfigError(f"--replica-cpus: {self.replica_cpus} is not positive")
        if self.ingress_replicas < 1:
            raise config_mod.ConfigError(f"ingress_replicas: {self.ingress_replicas} is below 1")
        return self


# Keys of build_app's args that are Ray's, not the server's (ServerConfig).
RAY_ARGS = {f.name for f in dataclasses.fields(RayOptions)}


def check_server_config(cfg):
    """What the single-process server supports but Serve's proxy does not."""
    if cfg.use_tls:
        raise config_mod.ConfigError(
            "--tls (GRPC_USE_TLS): Ray Serve's gRPC proxy serves plaintext; terminate TLS in "
            "front of it (a load balancer or the cluster's ingress)"
        )
    return cfg


def max_ongoing_requests(cfg):
    """Requests Serve lets one engine replica hold: its queue plus a running batch. Past that
    they wait at the router for the first replica with room."""
    return cfg.queue_size + cfg.max_batch_size


def max_queued_requests(cfg):
    """Requests that may wait at the router (every replica full) before the next one is
    answered RESOURCE_EXHAUSTED, as one server answers when its queue is full."""
    return cfg.queue_size


def target_ongoing_requests(cfg):
    """The autoscaler's aim per replica: one batch running and one waiting."""
    return 2 * cfg.max_batch_size


# -- metrics through Ray -------------------------------------------------------------------


class _Labelled:
    """prometheus_client's `.labels(**tags)` on a Ray metric."""

    def __init__(self, metric, tags=None):
        self._metric = metric
        self._tags = tags

    def labels(self, **tags):
        return _Labelled(self._metric, {k: str(v) for k, v in tags.items()})

    def inc(self, value=1.0):
        self._metric.inc(value, tags=self._tags)

    def set(self, value):
        self._metric.set(value, tags=self._tags)

    def observe(self, value):
        self._metric.observe(value, tags=self._tags)


class RayMetrics(Metrics):
    """service.metrics.Metrics whose counters, gauges and histograms are Ray Serve metrics of
    the same name, help, labels and buckets; Metrics stays the one place they are declared."""

    def __init__(self):
        super().__init__()
        from ray.serve import metrics as serve_metrics

        for attr, metric in list(vars(self).items()):
            kind = type(metric)
            if kind not in (prom.Counter, prom.Gauge, prom.Histogram):
                continue
            options = dict(
                name=metric._name,
                description=metric._documentation,
                tag_keys=tuple(metric._labelnames),
            )
            if kind is prom.Counter:
                ray_metric = serve_metrics.Counter(**options)
            elif kind is prom.Gauge:
                ray_metric = serve_metrics.Gauge(**options)
            else:
                bounds = [b for b in metric._upper_bounds if b != float("inf")]
                ray_metric = serve_metrics.Histogram(**options, boundaries=bounds)
            setattr(self, attr, _Labelled(ray_metric))

    def start_http(self, port, host="0.0.0.0"):
        raise RuntimeError("under Ray Serve, metrics are exported by Ray's metrics agent")


# -- the engine replica --------------------------------------------------------------------


class Aborted(Exception):
    """What context.abort() raises inside a replica; the engine answers it as a status."""

    def __init__(self, code, details):
        super().__init__(details)
        self.code = code
        self.details = details


class ReplicaCallContext:
    """The part of a grpc.aio ServicerContext that the servicers use, for a call that reached
    this replica through Serve: the client's metadata and address, a place for initial
    metadata, abort() and, for streams, write()."""

    def __init__(self, metadata, peer):
        self._metadata = tuple(metadata)
        self._peer = peer
        self.initial_metadata = ()
        self.writes = asyncio.Queue()

    def invocation_metadata(self):
        return self._metadata

    def peer(self):
        return self._peer

    def time_remaining(self):
        # the client's deadline ends at the proxy, which cancels the call when it passes
        return None

    async def send_initial_metadata(self, metadata):
        self.initial_metadata = tuple(metadata)

    async def abort(self, code, details=""):
        raise Aborted(code, details)

    async def write(self, message):
        await self.writes.put(message)


@dataclasses.dataclass
class EngineReply:
    """One answer (or one stream item) of an engine replica, as plain data."""

    payload: bytes = b""  # the serialised reply message; empty with an error
    code: str = "OK"  # grpc.StatusCode name
    details: str = ""
    metadata: tuple = ()


_STREAM_END = object()


class Engine:
    """One engine replica (deployment SdcoreEngine)."""

    async def __init__(self, config):
        cfg = config_mod.ServerConfig(**config).check()
        self.replica_id = serve.get_replica_context().replica_id.unique_id
        self.core = ServiceCore(cfg, RayMetrics())
        self.servicer = SdcoreServicer(self.core)
        self.core.batcher.start()
        await self.core.load(cfg.model, cfg.device)
        self.core.state = "ready"
        log.info("replica ready", extra={"replica_id": self.replica_id, "pid": os.getpid()})

    def _metadata(self, context):
        return (("x-replica-id", self.replica_id),) + context.initial_metadata

    async def unary(self, method, request_bytes, metadata, peer):
        """A unary RPC of sdcore.v1 by name, through the servicer."""
        spec = SERVICE.methods_by_name[method]
        request = _message_class(spec.input_type).FromString(request_bytes)
        context = ReplicaCallContext(metadata, peer)
        try:
            reply = await getattr(self.servicer, method)(request, context)
        except Aborted as e:
            return EngineReply(
                code=e.code.name, details=e.details, metadata=self._metadata(context)
            )
        return EngineReply(payload=reply.SerializeToString(), metadata=self._metadata(context))

    async def stream(self, method, request_bytes, metadata, peer):
        """A server-streaming RPC: yields one EngineReply per message, the first one empty
        (only the metadata), the last one with the status when it is not OK."""
        spec = SERVICE.methods_by_name[method]
        request = _message_class(spec.input_type).FromString(request_bytes)
        context = ReplicaCallContext(metadata, peer)
        yield EngineReply(metadata=self._metadata(context))
        call = asyncio.ensure_future(getattr(self.servicer, method)(request, context))
        call.add_done_callback(lambda _: context.writes.put_nowait(_STREAM_END))
        try:
            while (message := await context.writes.get()) is not _STREAM_END:
                yield EngineReply(payload=message.SerializeToString())
            await call
        except Aborted as e:
            yield EngineReply(code=e.code.name, details=e.details)
        finally:
            call.cancel()


def _message_class(descriptor):
    return getattr(pb, descriptor.name)


# Serve pickles a deployment's class by reference (module and name) only once the module has
# the class under that name: so the decorator is applied here, after the class statement.
SdcoreEngine = serve.deployment(name="SdcoreEngine")(Engine)


# -- the ingress ---------------------------------------------------------------------------


def _metadata_list(grpc_context):
    return [(k, v) for k, v in grpc_context.invocation_metadata()]


class _Refused(Exception):
    """Raised by the ingress after it set a non-OK code on the Serve gRPC context."""


def _fail(grpc_context, code, details):
    grpc_context.set_code(code)
    grpc_context.set_details(details)
    raise _Refused(details)


class Ingress:
    """The application's ingress (deployment SdcoreIngress): the methods Serve's proxy calls,
    one per RPC of sdcore.v1 (added below)."""

    def __init__(self, engine, api_key=None):
        self.engine = engine
        self.api_key = api_key.encode() if api_key else None
        self.forwarded = {}  # (caller, job_id) -> DeploymentResponse(Generator), for Cancel

    def _check_key(self, grpc_context):
        if self.api_key is None:
            return
        for key, value in grpc_context.invocation_metadata():
            if key == API_KEY_HEADER:
                given = value.encode() if isinstance(value, str) else value
                if hmac.compare_digest(given, self.api_key):
                    return
        _fail(
            grpc_context,
            grpc.StatusCode.UNAUTHENTICATED,
            f"missing or wrong API key (metadata {API_KEY_HEADER})",
        )

    def _answer(self, grpc_context, reply, trailing):
        trailing.extend(reply.metadata)
        grpc_context.set_trailing_metadata(list(trailing))
        if reply.code != "OK":
            _fail(grpc_context, grpc.StatusCode[reply.code], reply.details)

    async def _unary(self, method, request, grpc_context):
        """A unary RPC. A failure sets the code on the Serve context and returns an empty
        message (gRPC sends no message with a non-OK status): raising instead would have
        the proxy log a traceback for every refused request."""
        spec = SERVICE.methods_by_name[method]
        empty = _message_class(spec.output_type)()
        try:
            self._check_key(grpc_context)
            if method == "Cancel":
                return self._cancel(request, grpc_context)
            response = self.engine.unary.remote(
                method,
                request.SerializeToString(),
                _metadata_list(grpc_context),
                grpc_context.peer(),
            )
            key = self._track(request, grpc_context, response)
            try:
                reply = await response
            except REPLICA_GONE as e:
                _fail(grpc_context, grpc.StatusCode.UNAVAILABLE, _gone(e))
            except BackPressureError:
                _fail(grpc_context, grpc.StatusCode.RESOURCE_EXHAUSTED, QUEUES_FULL)
            except RequestCancelledError:
                _fail(grpc_context, grpc.StatusCode.CANCELLED, "cancelled by a Cancel request")
            finally:
                self.forwarded.pop(key, None)
            self._answer(grpc_context, reply, [])
        except _Refused:
            return empty
        return _message_class(spec.output_type).FromString(reply.payload)

    async def _stream(self, method, request, grpc_context):
        self._check_key(grpc_context)
        spec = SERVICE.methods_by_name[method]
        responses = self.engine.options(stream=True).stream.remote(
            method,
            request.SerializeToString(),
            _metadata_list(grpc_context),
            grpc_context.peer(),
        )
        key = self._track(request, grpc_context, responses)
        trailing = []
        try:
            async for reply in responses:
                self._answer(grpc_context, reply, trailing)
                if reply.payload:
                    yield _message_class(spec.output_type).FromString(reply.payload)
        except REPLICA_GONE as e:
            _fail(grpc_context, grpc.StatusCode.UNAVAILABLE, _gone(e))
        except BackPressureError:
            _fail(grpc_context, grpc.StatusCode.RESOURCE_EXHAUSTED, QUEUES_FULL)
        except RequestCancelledError:
            _fail(grpc_context, grpc.StatusCode.CANCELLED, "cancelled by a Cancel request")
        finally:
            self.forwarded.pop(key, None)

    def _track(self, request, grpc_context, response):
        job_id = getattr(request, "job_id", "")
        if not job_id:
            return None
        key = (caller(grpc_context), job_id)
        self.forwarded[key] = response
        return key

    def _cancel(self, request, grpc_context):
        """Cancel reaches the jobs this ingress replica forwarded (the engine replica that
        runs a job is Serve's choice, unknown to the client): Serve cancels the engine call,
        whose job is dropped at its next step, and the job's RPC ends with CANCELLED."""
        if not request.job_id:
            _fail(grpc_context, grpc.StatusCode.INVALID_ARGUMENT, "job_id: empty")
        response = self.forwarded.pop((caller(grpc_context), request.job_id), None)
        if response is None:
            _fail(
                grpc_context,
                grpc.StatusCode.NOT_FOUND,
                f"job_id: no queued or running job {request.job_id!r} of this caller",
            )
        response.cancel()
        return pb.CancelResponse(job_id=request.job_id)


def _gone(error):
    return (
        "the replica serving this request stopped before answering; the request may be "
        f"retried ({type(error).__name__})"
    )


def _add_rpc(cls, spec):
    if spec.server_streaming:

        async def method(self, request, grpc_context):
            async for message in self._stream(spec.name, request, grpc_context):
                yield message

    else:

        async def method(self, request, grpc_context):
            return await self._unary(spec.name, request, grpc_context)

    method.__name__ = method.__qualname__ = spec.name
    setattr(cls, spec.name, method)


for _spec in SERVICE.methods:
    _add_rpc(Ingress, _spec)

SdcoreIngress = serve.deployment(name="SdcoreIngress")(Ingress)


# -- building and running the application --------------------------------------------------


def build(cfg, options):
    """The application for a checked ServerConfig and RayOptions."""
    check_server_config(cfg)
    engine_options = dict(
        max_ongoing_requests=max_ongoing_requests(cfg),
        max_queued_requests=max_queued_requests(cfg),
        ray_actor_options={
            "num_cpus": options.replica_cpus,
            "num_gpus": 1 if cfg.device == "cuda" else 0,
            # the engine's threads: as many as the CPUs Ray reserved for the replica
            "runtime_env": {"env_vars": _thread_env(options.replica_cpus)},
        },
    )
    if options.max_replicas is None:
        engine_options["num_replicas"] = options.replicas
    else:
        engine_options["autoscaling_config"] = {
            "min_replicas": options.replicas,
            "initial_replicas": options.replicas,
            "max_replicas": options.max_replicas,
            "target_ongoing_requests": target_ongoing_requests(cfg),
        }
    server = dataclasses.asdict(cfg)
    engine = SdcoreEngine.options(**engine_options).bind(server)
    return SdcoreIngress.options(
        num_replicas=options.ingress_replicas,
        max_ongoing_requests=INGRESS_MAX_ONGOING,
        ray_actor_options={"num_cpus": 0},
    ).bind(engine, cfg.api_key)


def _thread_env(cpus):
    threads = str(max(1, int(cpus)))
    return {"OMP_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads}


def build_app(args):
    """Serve's application builder (import_path sdcore.service.ray_serve:build_app): `args` holds
    ServerConfig fields (model, device, queue_size, max_batch_size, ...) and RayOptions fields
    (replicas, max_replicas, replica_cpus, ingress_replicas)."""
    args = dict(args or {})
    ray_args = {k: args.pop(k) for k in list(args) if k in RAY_ARGS}
    known = {f.name for f in dataclasses.fields(config_mod.ServerConfig)}
    unknown = sorted(set(args) - known)
    if unknown:
        raise config_mod.ConfigError(
            f"args: unknown {unknown}; ServerConfig fields or one of {sorted(RAY_ARGS)}"
        )
    cfg = config_mod.ServerConfig(**args).check()
    return build(cfg, RayOptions(**ray_args).check())


def grpc_options(cfg):
    return gRPCOptions(port=cfg.port, grpc_servicer_functions=GRPC_SERVICER_FUNCTIONS)


def deploy(cfg, options, ray_address, http_port=None):
    """Connect to (or start, with "local") a Ray cluster, start Serve's proxies with our gRPC
    servicer and run the application; returns once every replica is up."""
    if not ray.is_initialized():
        ray.init(address=ray_address, log_to_driver=False)
    http = {"host": "127.0.0.1"} if http_port is None else {"host": "127.0.0.1", "port": http_port}
    serve.start(grpc_options=grpc_options(cfg), http_options=http)
    serve.run(build(cfg, options), name=APP_NAME, route_prefix="/", blocking=False)
    log.info(
        "serving through Ray",
        extra={
            "ray_address": ray_address,
            "grpc_port": cfg.port,
            "replicas": options.replicas,
            "max_replicas": options.max_replicas,
            "device": cfg.device,
        },
    )


def run(args, prog="sdcore serve"):
    """`sdcore serve --ray-address ...`: deploy, wait for SIGTERM or SIGINT, delete the app."""
    from sdcore.service import logs

    try:
        cfg = check_server_config(config_mod.from_args(args))
        given = {f: getattr(args, f, None) for f in ("replicas", "max_replicas", "replica_cpus")}
        options = RayOptions(**{f: v for f, v in given.items() if v is not None}).check()
    except config_mod.ConfigError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    logs.setup(cfg.log_level, cfg.log_json)
    stop = threading.Event()
    try:
        deploy(cfg, options, args.ray_address)
        # after ray.init, which installs handlers of its own
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        while not stop.wait(0.5):
            pass
        log.info("deleting the application", extra={"app": APP_NAME})
        serve.delete(APP_NAME)
    finally:
        ray.shutdown()
    return 0
