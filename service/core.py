"""What every servicer shares: the loaded models, request validation, the scheduler, and the
wrapper that turns service errors into gRPC status codes, counts RPCs and logs them."""

import asyncio
import concurrent.futures
import dataclasses
import functools
import logging
import resource
import time

import grpc

import sdcore
from sdcore.request import LIMITS, ValidationError, echo
from service.errors import InvalidArgument, ServiceError, Unavailable
from service.scheduler import Job, ModelSlot, Params, Scheduler

log = logging.getLogger("service")


class ServiceCore:
    def __init__(self, config, metrics):
        self.config = config
        self.metrics = metrics
        self.slots = {}
        self.default_model = None
        self.executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=config.max_workers, thread_name_prefix="sdcore-engine"
        )
        self.scheduler = Scheduler(
            self.slots,
            self.executor,
            queue_size=config.queue_size,
            max_batch_size=config.max_batch_size,
            batch_wait_s=config.batch_wait_ms / 1000.0,
            metrics=metrics,
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
            functools.partial(sdcore.Pipeline.from_pretrained, model_path, device=device),
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
                    f"{names.get('model', 'model')}: unknown model {echo(request.model)}; "
                    f"this server has {sorted(self.slots)}"
                )
        if request.num_inference_steps is None:
            request = dataclasses.replace(request, num_inference_steps=cfg.default_steps)
        limits = LIMITS.narrowed(
            max_steps=cfg.max_steps,
            max_images=cfg.max_images_per_request,
            max_prompt_chars=cfg.max_prompt_chars,
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

    def submit(self, params, context, job_id="", want_events=False, preview=False):
        remaining = context.time_remaining() if context is not None else None
        deadline = time.monotonic() + remaining if remaining is not None else None
        job = Job(
            params,
            job_id=job_id or None,
            want_events=want_events,
            preview=preview,
            deadline=deadline,
        )
        return self.scheduler.submit(job)

    async def result(self, job, context):
        """Wait for the job's images. If the RPC is cancelled meanwhile, the job is dropped."""
        try:
            return await asyncio.shield(job.future)
        except asyncio.CancelledError:
            self.abandon(job, context)
            raise

    def abandon(self, job, context):
        remaining = context.time_remaining() if context is not None else None
        late = remaining is not None and remaining <= 0
        self.scheduler.abandon(job, "deadline passed" if late else "the client cancelled")

    async def generate(self, params, context):
        """Submit and wait: what the unary RPCs do."""
        job = self.submit(params, context)
        return job, await self.result(job, context)

    async def close(self, grace):
        self.state = "shutting_down"
        await self.scheduler.close(grace)
        self.executor.shutdown(wait=True, cancel_futures=True)

    # -- status ---------------------------------------------------------------------------

    def uptime(self):
        return time.monotonic() - self.started


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


def _cancel_code(context):
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        return grpc.StatusCode.DEADLINE_EXCEEDED
    return grpc.StatusCode.CANCELLED


def rpc_method(name, streaming=False):
    """Wrap a servicer method: ServiceError -> its status code, anything else -> INTERNAL with
    the message (the server goes on serving); count, time and log every call."""

    def finish(self, context, started, code, error=None):
        seconds = time.monotonic() - started
        self.core.metrics.observe_rpc(name, code, seconds)
        extra = {
            "rpc": name,
            "code": code.name,
            "seconds": round(seconds, 4),
            "peer": context.peer(),
        }
        if error:
            extra["error"] = error
        log.log(
            logging.WARNING if code == grpc.StatusCode.INTERNAL else logging.INFO,
            "rpc",
            extra=extra,
        )

    def decorate(fn):
        if not streaming:

            @functools.wraps(fn)
            async def unary(self, request, context):
                started, code, error = time.monotonic(), grpc.StatusCode.OK, None
                try:
                    return await fn(self, request, context)
                except ServiceError as e:
                    code, error = e.code, e.message
                except asyncio.CancelledError:
                    code = _cancel_code(context)
                    raise
                except Exception as e:
                    log.exception("unexpected error", extra={"rpc": name})
                    code, error = grpc.StatusCode.INTERNAL, f"{type(e).__name__}: {e}"
                finally:
                    finish(self, context, started, code, error)
                await context.abort(code, error)

            return unary

        @functools.wraps(fn)
        async def stream(self, request, context):
            started, code, error = time.monotonic(), grpc.StatusCode.OK, None
            try:
                async for item in fn(self, request, context):
                    yield item
            except ServiceError as e:
                code, error = e.code, e.message
            except (asyncio.CancelledError, GeneratorExit):
                code = _cancel_code(context)
                raise
            except Exception as e:
                log.exception("unexpected error", extra={"rpc": name})
                code, error = grpc.StatusCode.INTERNAL, f"{type(e).__name__}: {e}"
            finally:
                finish(self, context, started, code, error)
            if error is not None:
                await context.abort(code, error)

        return stream

    return decorate
