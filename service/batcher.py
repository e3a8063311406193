"""The bounded request queue and the batcher.

Jobs wait in one FIFO queue. When a model's engine is free, the batcher takes the oldest job
for it and every later waiting job with the same (model, width, height, steps, sampler), up to
max_batch_size images, and runs them as one engine call in a worker thread. The event loop
never runs the engine: it only moves jobs, progress events and results.

A job whose client goes away (cancel, deadline) is dropped from the queue at once. If it is
already running, its RPC ends at once too; the engine call stops at its next step when every
job in the batch has gone, and otherwise finishes for the others.
"""

import asyncio
import collections
import dataclasses
import logging
import math
import threading
import time
import uuid

import numpy as np
from sdcore.service.errors import (
    AlreadyExists,
    DeadlinePassed,
    EngineError,
    JobCancelled,
    NotFound,
    QueueFull,
    Unavailable,
    quoted,
)

import sdcore

log = logging.getLogger("service.batcher")

# Largest side of a preview PNG sent with progress events.
PREVIEW_MAX_SIDE = 64

# On shutdown, how long a cancelled engine call is given to reach its next step and stop.
ENGINE_STOP_WAIT_S = 2.0

_DONE = object()  # put on a job's event queue once its future has its outcome


@dataclasses.dataclass(frozen=True)
class Params:
    """A validated request, with every default filled in and the seed chosen."""

    prompt: str
    negative_prompt: str
    width: int
    height: int
    steps: int
    guidance_scale: float
    seed: int
    sampler: str
    num_images: int
    model: str

    @property
    def batch_key(self):
        return (self.model, self.width, self.height, self.steps, self.sampler)

    @property
    def cost(self):
        """The request's work in 2^20 pixel-steps: what --max-request-cost bounds."""
        return request_cost(self.width, self.height, self.steps, self.num_images)


def request_cost(width, height, steps, num_images):
    return width * height * steps * num_images / 2**20


@dataclasses.dataclass(frozen=True)
class EmbeddingParams:
    """A GetEmbedding call: it waits in the same queue as generations, and runs alone."""

    prompt: str
    model: str
    num_images = 0
    batch_key = None  # never batched
    cost = 0.0


@dataclasses.dataclass
class ImageResult:
    png: bytes
    seed: int
    width: int
    height: int
    parameters: str


class Job:
    def __init__(
        self, params, job_id=None, want_events=False, preview=False, deadline=None, owner=None
    ):
        self.id = job_id or uuid.uuid4().hex
        self.params = params
        self.owner = owner  # who may Cancel it: an API key's digest, or the caller's address
        self.preview = preview
        self.deadline = deadline  # time.monotonic() value, or None
        self.state = "new"  # new, queued, running, done, failed, cancelled
        self.future = asyncio.get_running_loop().create_future()
        # the RPC may be gone by the time the job fails; its error is then nobody's to read
        self.future.add_done_callback(lambda f: f.cancelled() or f.exception())
        self.events = asyncio.Queue() if want_events else None
        self.stop = threading.Event()  # read by the engine thread
        self.position = None
        self.t_arrive = time.monotonic()
        self.t_start = None
        self.t_end = None
        self.batch_requests = 0
        self.generate_seconds = 0.0

    def should_stop(self):
        """Engine-thread side: this job's client is gone or its deadline has passed."""
        if self.stop.is_set():
            return True
        return self.deadline is not None and time.monotonic() > self.deadline

    def push(self, event):
        if self.events is not None:
            self.events.put_nowait(event)

    def finish(self, result=None, error=None):
        """Settle the job's future once; later calls (a cancel racing the engine) do nothing."""
        if self.future.done():
            return False
        self.t_end = time.monotonic()
        if error is not None:
            self.future.set_exception(error)
            self.state = "cancelled" if isinstance(error, JobCancelled) else "failed"
        else:
            self.future.set_result(result)
            self.state = "done"
        self.push(_DONE)
        return True

    async def next_event(self):
        """The next stream event, or raises the job's error, or returns None after the result."""
        event = await self.events.get()
        if event is _DONE:
            return None
        return event


class ModelSlot:
    """One loaded pipeline.

    `busy` (loop side) keeps a second batch of this model from being dispatched while one runs.
    `lock` (thread side) makes whole pipeline calls one at a time: prompt encoding, the
    sampling loop and the preview map the pipeline refits afterwards, also when a batch's task
    is gone but its engine thread still runs. The C calls inside need no lock here: the
    binding's per-model locks (csrc/binding/device.c) guard each model's activations."""

    def __init__(self, pipeline):
        self.pipeline = pipeline
        self.name = pipeline.name
        self.lock = threading.Lock()
        self.busy = False  # loop side: a batch of this model is dispatched


class Batcher:
    def __init__(
        self,
        slots,
        executor,
        queue_size,
        max_batch_size,
        batch_wait_s=0.0,
        metrics=None,
        max_queue_cost=math.inf,
    ):
        self.slots = slots  # name -> ModelSlot
        self.executor = executor
        self.queue_size = queue_size
        self.max_queue_cost = max_queue_cost
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_s
        self.metrics = metrics
        self.pending = collections.deque()
        self.running = {}  # job id -> Job
        self.jobs = {}  # job id -> Job, queued or running
        self.images_generated = 0
        self.accepting = True
        self._wake = asyncio.Event()
        self._batches = set()
        self._task = None

    # -- the loop side ------------------------------------------------------------------

    def start(self):
        self._task = asyncio.get_running_loop().create_task(self._dispatch_loop())

    def submit(self, job):
        if not self.accepting:
            raise Unavailable("the server is shutting down")
        if job.params.model not in self.slots:
            raise Unavailable("the model is not loaded yet")
        if job.id in self.jobs:
            raise AlreadyExists(f"job_id: {quoted(job.id)} is already queued or running")
        if len(self.pending) >= self.queue_size:
            if self.metrics:
                self.metrics.rejections.inc()
            raise QueueFull(f"the queue is full ({self.queue_size} jobs waiting); try again later")
        waiting = self.queued_cost()
        if waiting > 0 and waiting + job.params.cost > self.max_queue_cost:
            if self.metrics:
                self.metrics.rejections.inc()
            raise QueueFull(
                f"the queue holds {waiting:.4g} units of work and this request is "
                f"{job.params.cost:.4g}, over the queue's budget of {self.max_queue_cost:.4g} "
                "(--max-queue-cost); try again later"
            )
        job.state = "queued"
        self.pending.append(job)
        self.jobs[job.id] = job
        self._queue_changed()
        self._wake.set()
        return job

    def cancel(self, job_id, reason="cancelled", owner=None):
        """Stop a job; returns the state it was in. NotFound if it is not queued or running, or
        if it belongs to another caller (whose job ids are not this caller's to learn)."""
        job = self.jobs.get(job_id)
        if job is None or job.owner != owner:
            raise NotFound(f"job_id: no queued or running job {quoted(job_id)} of this caller")
        previous = job.state
        self._drop(job, JobCancelled(reason))
        return previous

    def abandon(self, job, reason):
        """The job's RPC is over (client cancelled, deadline): free its place."""
        if job.id in self.jobs:
            error = DeadlinePassed(reason) if "deadline" in reason else JobCancelled(reason)
            self._drop(job, error)

    def _drop(self, job, error):
        job.stop.set()
        if job.state == "queued":
            self.pending.remove(job)
            self._queue_changed()
        self.jobs.pop(job.id, None)
        job.finish(error=error)

    def queue_depth(self):
        return len(self.pending)

    def queued_cost(self):
        return sum(job.params.cost for job in self.pending)

    def in_flight(self):
        return len(self.running)

    def _queue_changed(self):
        for position, job in enumerate(self.pending):
            if job.position != position:
                job.position = position
                job.push(("queued", position))
        if self.metrics:
            self.metrics.queue_depth.set(len(self.pending))

    async def _dispatch_loop(self):
        while True:
            batch = self._take_batch()
            if batch is None:
                self._wake.clear()
                await self._wake.wait()
                continue
            slot, jobs = batch
            task = asyncio.get_running_loop().create_task(self._run_batch(slot, jobs))
            self._batches.add(task)
            task.add_done_callback(self._batches.discard)

    def _take_batch(self):
        """The oldest job whose model is free, with the compatible jobs queued after it."""
        for first in self.pending:
            slot = self.slots[first.params.model]
            if slot.busy:
                continue
            jobs = [first]
            images = first.params.num_images
            for job in self.pending if first.params.batch_key is not None else ():
                if job is first or job.params.batch_key != first.params.batch_key:
                    continue
                if images + job.params.num_images > self.max_batch_size:
                    continue
                jobs.append(job)
                images += job.params.num_images
            if (
                self.batch_wait_s > 0
                and first.params.batch_key is not None
                and images < self.max_batch_size
            ):
                wait = first.t_arrive + self.batch_wait_s - time.monotonic()
                if wait > 0:
                    # let compatible requests gather while the engine is idle anyway
                    asyncio.get_running_loop().call_later(wait, self._wake.set)
                    return None
            slot.busy = True
            for job in jobs:
                self.pending.remove(job)
                job.state = "running"
                job.t_start = time.monotonic()
                job.batch_requests = len(jobs)
                self.running[job.id] = job
            self._queue_changed()
            if self.metrics:
                self.metrics.jobs_in_flight.set(len(self.running))
                self.metrics.batch_requests.observe(len(jobs))
            return slot, jobs
        return None

    async def _run_batch(self, slot, jobs):
        try:
            await self._run_jobs(slot, jobs)
        finally:
            for job in jobs:
                self.running.pop(job.id, None)
                self.jobs.pop(job.id, None)
            slot.busy = False
            if self.metrics:
                self.metrics.jobs_in_flight.set(len(self.running))
            self._wake.set()

    async def _run_jobs(self, slot, jobs):
        """One engine call for `jobs`. If it fails, each job still wanted is run again alone, so
        that a request the engine cannot serve (a prompt that decodes to non-finite values, say)
        fails by itself and never the requests batched with it."""
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        try:
            results = await loop.run_in_executor(self.executor, _engine_call, slot, jobs, loop)
        except sdcore.CancelledError:
            for job in jobs:
                late = job.deadline is not None and time.monotonic() > job.deadline
                error = (
                    DeadlinePassed("deadline passed during generation")
                    if late
                    else JobCancelled("cancelled during generation")
                )
                job.finish(error=error)
        except Exception as e:  # the engine's failure is the batch's, not the server's
            wanted = [job for job in jobs if not job.future.done()]
            if len(jobs) > 1 and wanted:
                log.warning(
                    "batch failed; running its jobs one by one",
                    extra={"jobs": [j.id for j in jobs], "error": _cut(str(e))},
                )
                for job in wanted:
                    await self._run_jobs(slot, [job])
                return
            log.error(
                "engine call failed",
                exc_info=True,
                extra={"jobs": [j.id for j in jobs], "error": _cut(str(e))},
            )
            for job in jobs:
                job.finish(error=EngineError(f"engine error: {type(e).__name__}: {_cut(str(e))}"))
        else:
            seconds = time.monotonic() - started
            for job, images in zip(jobs, results, strict=True):
                job.generate_seconds = seconds
                if job.finish(result=images) and not isinstance(job.params, EmbeddingParams):
                    self.images_generated += len(images)
                    if self.metrics:
                        self.metrics.images.inc(len(images))

    async def close(self, grace, engine_wait=ENGINE_STOP_WAIT_S):
        """Refuse new jobs; give queued and running ones `grace` seconds, then answer them
        UNAVAILABLE. Returns True when the engine is idle, False when an engine call is still
        in its current step after `engine_wait` more seconds (it stops at the step's end, which
        for a large image may be minutes away: the caller need not wait for it)."""
        self.accepting = False
        deadline = time.monotonic() + grace
        while self.jobs and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for job in list(self.jobs.values()):
            self._drop(job, Unavailable("the server shut down before the job finished"))
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._batches:
            await asyncio.wait(set(self._batches), timeout=engine_wait)
        return not self._batches


# -- the engine thread ----------------------------------------------------------------------


def _engine_call(slot, jobs, loop):
    """Run one batch on the pipeline; returns, per job, its list of ImageResult.

    Each job with num_images n is given to the engine as n entries with seeds s..s+n-1, which
    the engine contract makes the same images as one entry with num_images n; so requests that
    ask for different counts still share a call.
    """
    if isinstance(jobs[0].params, EmbeddingParams):
        with slot.lock:
            embedding = slot.pipeline.encode_prompt(jobs[0].params.prompt)
        return [np.asarray(embedding, dtype=np.float32)]
    prompts, negatives, guidance, seeds = [], [], [], []
    for job in jobs:
        p = job.params
        for i in range(p.num_images):
            prompts.append(p.prompt)
            negatives.append(p.negative_prompt)
            guidance.append(p.guidance_scale)
            seeds.append(p.seed + i)
    first = jobs[0].params

    def should_stop():
        return all(job.should_stop() for job in jobs)

    def callback(step, total, preview):
        offset = 0
        for job in jobs:
            if job.events is not None and not job.future.done():
                png = b""
                if job.preview and preview is not None:
                    to_rgb = getattr(slot.pipeline, "latents_to_rgb", None)
                    png = _preview_png(to_rgb(preview) if to_rgb else preview, offset)
                loop.call_soon_threadsafe(job.push, ("progress", step, total, png))
            offset += job.params.num_images

    with slot.lock:
        images = slot.pipeline(
            prompts,
            negative_prompt=negatives,
            num_inference_steps=first.steps,
            guidance_scale=guidance,
            width=first.width,
            height=first.height,
            seed=seeds,
            sampler=first.sampler,
            num_images=1,
            callback=callback,
            should_stop=should_stop,
        )
    if len(images) != len(prompts):
        raise RuntimeError(f"the engine returned {len(images)} images for {len(prompts)} prompts")
    results, offset = [], 0
    for job in jobs:
        n = job.params.num_images
        results.append([_image_result(img) for img in images[offset : offset + n]])
        offset += n
    return results


def _cut(text, limit=300):
    """An engine message as it goes into an error or a log line: bounded in length."""
    return text if len(text) <= limit else text[:limit] + "..."


def _image_result(img):
    height, width = img.array.shape[:2]
    return ImageResult(img.png_bytes(), int(img.seed), int(width), int(height), img.parameters)


def _preview_png(preview, index):
    """A small PNG of image `index` of the batch preview ((N, H, W, 3) or one (H, W, 3))."""
    arr = np.asarray(preview)
    if arr.ndim == 4:
        arr = arr[min(index, arr.shape[0] - 1)]
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    step = max(1, -(-max(arr.shape[:2]) // PREVIEW_MAX_SIDE))
    arr = np.ascontiguousarray(arr[::step, ::step, :3])
    return sdcore._C.encode_png(arr)
