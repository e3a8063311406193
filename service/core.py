"""What every servicer shares: the loaded models, request validation, the batcher, and the
wrapper that turns service errors into gRPC status codes, counts RPCs and logs them."""

import asyncio
import concurrent.futures
import dataclasses
import functools
import hashlib
import logging
import resource
import time

import grpc
from sdcore.service.auth import API_KEY_HEADER
from sdcore.service.batcher import Batcher, EmbeddingParams, Job, ModelSlot, Params
from sdcore.service.errors import InvalidArgument, ServiceError, Unavailable, quoted

import sdcore
from sdcore.request import LIMITS, ValidationError

log = logging.getLogger("service")

# Seeds travel as int64 on the wire: every seed of a request must fit one.
WIRE_MAX_SEED = 2**63 - 1


class ServiceCore:
    def __init__(self, config, metrics):
        self.config = config
        self.metrics = metrics
        self.slots = {}
        self.default_model = None
        self.executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=config.max_workers, thread_name_prefix="sdcore-engine"
        )
        self.batcher = Batcher(
            self.slots,
            self.executor,
            queue_size=config.queue_size,
            max_batch_size=config.max_batch_size,
            batch_wait_s=config.batch_wait_ms / 1000.0,
            metrics=metrics,
            max_queue_cost=config.max_queue_cost,
        )
        self.started = time.monotonic()
        self.state = "loading"  # loading, ready, shutting_down

    # -- models ---------------------------------------------------------------------------

    def add_pipeline(self, pipeline):
        slot = ModelSlot(pipeline)
        self.slots[slot.name] = slot
        if self.default_model is None:
            self.default_model = slot.name
        if getattr(pipeline, "random_weights", False):
            log.warning(
                "model has random weights: its images are noise, not pictures of the prompt",
                extra={"model": slot.name},
            )
        return slot

    async def load(self, model_path, device):
        """Load the model in a worker thread, so that health checks answer while it loads."""
        if not hasattr(sdcore, "Pipeline"):
            raise RuntimeError("this sdcore build has no Pipeline; the service cannot load a model")
        loop = asyncio.get_running_loop()
        t0 = time.monotonic()
        pipe = await loop.run_in_executor(
            self.executor,
            # the server reads its model files once: a file replaced or cut short while it
            # serves must not take the process down (a mapped file raises SIGBUS then)
            functools.partial(
                sdcore.Pipeline.from_pretrained, model_path, device=device, copy_weights=True
            ),
        )
        slot = self.add_pipeline(pipe)
        log.info(
            "model loaded",
            extra={
                "model": slot.name,
                "device": pipe.device,
                "seconds": round(time.monotonic() - t0, 3),
                "random_weights": bool(getattr(pipe, "random_weights", False)),
            },
        )
        return slot

    def slot(self, name=""):
        if self.state == "loading" or not self.slots:
            raise Unavailable("the model is still loading")
        if not name:
            return self.slots[self.default_model]
        slot = self.slots.get(name)
        if slot is None:
            raise InvalidArgument(
                f"model: unknown model {name!r}; this server has {sorted(self.slots)}"
            )
        return slot

    # -- requests -------------------------------------------------------------------------

    def params(self, request, field_names=None):
        """Resolve a GenerationRequest (None fields: defaults) against its model, within the
        request limits narrowed by this server's configuration; a bad field is
        InvalidArgument, named as the client spelt it (`field_names` maps request names to
        wire names)."""
        cfg = self.config
        names = field_names or {}
        slot = self.slot()  # UNAVAILABLE while loading
        if request.model:
            slot = self.slots.get(request.model)
            if slot is None:
                raise InvalidArgument(
                    f"{names.get('model', 'model')}: unknown model {quoted(request.model)}; "
                    f"this server has {sorted(self.slots)}"
                )
        if request.num_inference_steps is None:
            request = dataclasses.replace(request, num_inference_steps=cfg.default_steps)
        limits = LIMITS.narrowed(
            max_steps=cfg.max_steps,
            max_images=cfg.max_images_per_request,
            max_prompt_chars=cfg.max_prompt_chars,
            max_seed=WIRE_MAX_SEED,
        )
        try:
            r = slot.pipeline.resolve(dataclasses.replace(request, model=slot.name), limits)
        except ValidationError as e:
            raise InvalidArgument(f"{names.get(e.field, e.field)}: {e.detail}") from None
        return Params(
            prompt=r.prompt,
            negative_prompt=r.negative_prompt,
            width=r.width,
            height=r.height,
            steps=r.num_inference_steps,
            guidance_scale=r.guidance_scale,
            seed=r.seed,
            sampler=r.sampler,
            num_images=r.num_images,
            model=slot.name,
        )

    def check_budget(self, params):
        """The service's own limits on one request: its work (--max-request-cost) and the size
        of its reply (--max-message-size). Raised before the job is queued."""
        cfg = self.config
        if params.cost > cfg.max_request_cost:
            raise InvalidArgument(
                f"cost: {params.width}x{params.height} pixels x {params.steps} steps x "
                f"{params.num_images} images is {params.cost:.4g} units of 2^20 pixel-steps, over "
                f"this server's budget of {cfg.max_request_cost:.4g} per request "
                "(--max-request-cost); ask for fewer steps, images or pixels"
            )
        # a PNG is at most its raw rows (one filter byte each) plus zlib's and its chunks' overhead
        raw = params.height * (params.width * 3 + 1)
        reply = params.num_images * (raw + raw // 1000 + 4096)
        if reply > cfg.max_message_size:
            raise InvalidArgument(
                f"num_images: {params.num_images} images of {params.width}x{params.height} may "
                f"need {reply} bytes, more than this server's largest message of "
                f"{cfg.max_message_size} bytes (--max-message-size)"
            )

    def submit(self, params, context, job_id="", want_events=False, preview=False):
        """Queue a job for a validated request; `context` is the RPC's, read here while the
        RPC is certainly alive (never after)."""
        if isinstance(params, Params):
            self.check_budget(params)
        remaining = context.time_remaining() if context is not None else None
        deadline = time.monotonic() + remaining if remaining is not None else None
        job = Job(
            params,
            job_id=job_id or None,
            want_events=want_events,
            preview=preview,
            deadline=deadline,
            owner=caller(context),
        )
        return self.batcher.submit(job)

    async def embedding(self, prompt, model, context):
        """A prompt's embedding, through the same queue as generations."""
        slot = self.slot(model)
        job = self.submit(EmbeddingParams(prompt=prompt, model=slot.name), context)
        return slot, await self.result(job)

    async def result(self, job):
        """Wait for the job's images. If the RPC is cancelled meanwhile, the job is dropped."""
        try:
            return await asyncio.shield(job.future)
        except asyncio.CancelledError:
            self.abandon(job)
            raise

    def abandon(self, job):
        """The job's RPC is over before its result: free its place, stop its work. Reads only the
        job, never the RPC's context, which may be gone by then."""
        late = job.deadline is not None and time.monotonic() >= job.deadline
        self.batcher.abandon(job, "deadline passed" if late else "the client cancelled")

    async def generate(self, params, context):
        """Submit and wait: what the unary RPCs do."""
        job = self.submit(params, context)
        return job, await self.result(job)

    async def close(self, grace):
        """Finish or answer every job within `grace` seconds (and the engine's stop wait).
        Returns False when an engine call is still running its last step."""
        self.state = "shutting_down"
        idle = await self.batcher.close(grace)
        self.executor.shutdown(wait=idle, cancel_futures=True)
        return idle

    # -- status ---------------------------------------------------------------------------

    def uptime(self):
        return time.monotonic() - self.started


def caller(context):
    """Who makes this call, for Cancel's ownership check: the digest of the API key it carries,
    else its address without the port (a client may cancel from another connection)."""
    if context is None:
        return None
    for key, value in context.invocation_metadata() or ():
        if key == API_KEY_HEADER:
            value = value.encode() if isinstance(value, str) else value
            return "key:" + hashlib.sha256(value).hexdigest()
    peer = context.peer() or ""
    return "peer:" + peer.rsplit(":", 1)[0] if peer.count(":") >= 2 else "peer:" + peer


def memory_bytes():
    """(rss, peak rss) of this process."""
    rss = peak = 0
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) * 1024
                elif line.startswith("VmHWM:"):
                    peak = int(line.split()[1]) * 1024
    except OSError:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return rss, peak or rss


class RpcCall:
    """What the service needs of one RPC's context, read while the RPC is certainly alive.

    grpc.aio frees a call's core object once the RPC is over (cancelled, deadline, disconnect);
    a context method called after that (peer(), time_remaining(), ...) reads freed memory and can
    take the process down. So the wrapper reads what it needs at the start, and nothing below it
    touches the context once the RPC may be over.
    """

    def __init__(self, context):
        self.peer = context.peer()
        remaining = context.time_remaining()
        self.deadline = None if remaining is None else time.monotonic() + remaining

    def cancel_code(self):
        if self.deadline is not None and time.monotonic() >= self.deadline:
            return grpc.StatusCode.DEADLINE_EXCEEDED
        return grpc.StatusCode.CANCELLED


def rpc_method(name, streaming=False):
    """Wrap a servicer method: ServiceError -> its status code, anything else -> INTERNAL with
    the message (the server goes on serving); count, time and log every call.

    A streaming method is written as an async generator; the wrapper is a plain coroutine that
    drives it and writes each item with context.write(). grpc.aio would otherwise iterate the
    generator itself and, when the RPC is cancelled, drop it unclosed: its `finally` clauses then
    ran later, from the garbage collector, against a context whose call was already freed (a
    segmentation fault). Here the generator is always closed inside the RPC's own task."""

    def finish(self, call, started, code, error=None):
        seconds = time.monotonic() - started
        self.core.metrics.observe_rpc(name, code, seconds)
        extra = {"rpc": name, "code": code.name, "seconds": round(seconds, 4), "peer": call.peer}
        if error:
            extra["error"] = error
        log.log(
            logging.WARNING if code == grpc.StatusCode.INTERNAL else logging.INFO,
            "rpc",
            extra=extra,
        )

    def decorate(fn):
        async def run(self, request, context, body):
            started, code, error = time.monotonic(), grpc.StatusCode.OK, None
            call = RpcCall(context)
            try:
                return await body(call)
            except ServiceError as e:
                code, error = e.code, e.message
            except asyncio.CancelledError:
                code = call.cancel_code()
                raise
            except Exception as e:
                log.exception("unexpected error", extra={"rpc": name})
                code, error = grpc.StatusCode.INTERNAL, f"{type(e).__name__}: {e}"
            finally:
                finish(self, call, started, code, error)
            await context.abort(code, error)

        if not streaming:

            @functools.wraps(fn)
            async def unary(self, request, context):
                return await run(self, request, context, lambda call: fn(self, request, context))

            return unary

        @functools.wraps(fn)
        async def stream(self, request, context):
            async def body(call):
                items = fn(self, request, context)
                try:
                    async for item in items:
                        await context.write(item)
                finally:
                    await items.aclose()

            await run(self, request, context, body)

        return stream

    return decorate
