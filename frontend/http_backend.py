"""The page's way to the engine over the HTTP API (service/http.py), through httpx: the same
methods as backend.Backend, answering with the same messages and raising the same errors, so
that demo.py cannot tell which one it has.

What each call uses, and what the HTTP API cannot say:

- generate_stream: POST /sdapi/v1/txt2img, while GET /sdapi/v1/progress is asked every
  POLL_SECONDS for the step and the preview. /progress shows the oldest running /sdapi job
  of every client, without saying whose: the job shown is taken to be ours when it is the
  only /sdapi job the server holds (job_count 1), or once it has been taken to be ours by
  that rule. With other /sdapi clients' jobs about, the page may show no steps. The place
  in the queue is not told: the page says "Queued" until its job is seen running. Timings
  are measured here (queued and generating to within one poll).
- cancel: /sdapi/v1/interrupt stops every running /sdapi job, and no queued one. It is sent
  when ours runs and is the only /sdapi job; otherwise (queued, or others would be stopped
  too) the request's connection is closed, which the server takes as its client leaving:
  the job leaves the queue, or the engine stops once its whole batch has gone.
- status: /health (model loaded, queue depth, jobs running, version), /sdapi/v1/options
  (the model /sdapi uses) and /api/v1/images/models (its device, random weights). The queue's
  capacity and the images made are not given over HTTP: they come back as -1.
- models: /sdapi/v1/sd-models, /sdapi/v1/options (which is the default), /sdapi/v1/samplers
  (its samplers, by our names), and /api/v1/images/models for each model's size, device and
  default guidance.

The API key goes as `Authorization: Bearer KEY`; an https URL gives TLS (`ca_cert`: the PEM
roots to trust instead of the system's).
"""

import asyncio
import base64
import binascii
import json
import queue
import ssl
import threading
import time

import grpc
import httpx
from sdcore.service.gen import sdcore_service_pb2 as pb

POLL_SECONDS = 0.2  # how often /sdapi/v1/progress is asked while a job waits or runs
CALL_SECONDS = 5.0  # every call but the generation itself
# txt2img's own answer to a job cancelled by /interrupt starts with this
CANCELLED_PREFIX = "cancelled: "
CLOSED = "the page closed its request, and the server drops the job of a client that has gone"

# the HTTP status (and the A1111 error kind, where one status has several meanings) -> the
# gRPC code whose words the page already has
_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.CANCELLED,
    413: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    500: grpc.StatusCode.INTERNAL,
    501: grpc.StatusCode.UNIMPLEMENTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
_KINDS = {"queue_full": grpc.StatusCode.RESOURCE_EXHAUSTED}


class HttpCallError(grpc.RpcError):
    """A failed HTTP call, with the code() and details() the page reads from a failed RPC."""

    def __init__(self, code, details):
        super().__init__(f"{code.name}: {details}")
        self._code = code
        self._details = details

    def code(self):
        return self._code

    def details(self):
        return self._details


def error_of(reply):
    """A non-2xx answer -> HttpCallError with the server's message (the A1111 shape
    {"error", "detail"}, or the plain one {"error", "message"})."""
    try:
        body = reply.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        kind = body.get("error")
        message = body.get("detail") or body.get("message") or reply.reason_phrase
    else:
        kind, message = None, reply.text.strip() or reply.reason_phrase
    if not isinstance(message, str):
        message = json.dumps(message)  # e.g. a validation error list from another server
    code = _KINDS.get(kind) or _CODES.get(reply.status_code, grpc.StatusCode.UNKNOWN)
    if code == grpc.StatusCode.CANCELLED and message.startswith(CANCELLED_PREFIX):
        message = message[len(CANCELLED_PREFIX) :]
    if code == grpc.StatusCode.NOT_FOUND and reply.request.url.path.startswith("/sdapi/"):
        message += " (is this an sdcore server with its HTTP API on?)"
    return HttpCallError(code, message)


def transport_error(error):
    """httpx's failure to get any answer -> HttpCallError."""
    if isinstance(error, httpx.ConnectError) and "SSL" in str(error):
        # someone answers, but TLS failed (most often: a certificate the page does not trust)
        return HttpCallError(grpc.StatusCode.UNAVAILABLE, f"TLS: {error}")
    if isinstance(error, httpx.ConnectError):
        # the words describe_error recognises as "no server there"
        return HttpCallError(grpc.StatusCode.UNAVAILABLE, f"failed to connect: {error}")
    if isinstance(error, httpx.TimeoutException):
        return HttpCallError(grpc.StatusCode.DEADLINE_EXCEEDED, f"no answer in time: {error}")
    return HttpCallError(grpc.StatusCode.UNAVAILABLE, f"{type(error).__name__}: {error}")


def a1111_body(request):
    """A GenerationRequest as txt2img's JSON (None or 0: the server's default)."""
    body = {
        "prompt": request.prompt,
        "negative_prompt": request.negative_prompt or "",
        "width": request.width or 0,
        "height": request.height or 0,
        "steps": request.num_inference_steps or 0,
        "seed": -1 if request.seed is None else request.seed,
        "sampler_name": request.sampler or None,  # our names are accepted as they are
        "batch_size": request.num_images,
        "n_iter": 1,
    }
    if request.guidance_scale is not None:
        body["cfg_scale"] = request.guidance_scale
    if request.model:
        body["override_settings"] = {"sd_model_checkpoint": request.model}
    return body


class HttpBackend:
    """The HTTP API of one server, at `url` (http:// or https://). Blocking calls, as
    Backend's; the requests run on an event loop of this object's own thread, so that a
    generation can be stopped by closing its connection."""

    api = "HTTP"

    def __init__(self, url, api_key=None, ca_cert=None, timeout=None):
        self.address = url.rstrip("/")
        self.timeout = timeout  # seconds for a whole generation; None: no limit
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        verify = ssl.create_default_context(cafile=ca_cert) if ca_cert else True
        self._calls = {}  # the page's job id -> its _Generation
        self._lock = threading.Lock()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

        async def make_client():
            return httpx.AsyncClient(
                base_url=self.address, headers=headers, verify=verify, timeout=CALL_SECONDS
            )

        self.client = self.run(make_client())

    def run(self, coro, timeout=None):
        """Run a coroutine on the backend's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def get_json(self, path, ok=(200,), **kwargs):
        """GET path's JSON; HttpCallError unless its status is in `ok`."""
        try:
            reply = await self.client.get(path, **kwargs)
        except httpx.HTTPError as e:
            raise transport_error(e) from None
        if reply.status_code not in ok:
            raise error_of(reply)
        try:
            return reply.json()
        except ValueError:
            raise HttpCallError(
                grpc.StatusCode.INTERNAL, f"GET {path}: the answer is not JSON"
            ) from None

    # -- status and models ------------------------------------------------------------------

    def status(self, timeout=CALL_SECONDS):
        return self.run(self._status(), timeout)

    async def _status(self):
        health = await self.get_json("/health", ok=(200, 503))
        s = pb.StatusResponse(
            version=str(health.get("version", "")),
            model_loaded=health.get("status") == "ok",
            queue_depth=int(health.get("queue_depth", 0)),
            jobs_in_flight=int(health.get("jobs_in_flight", 0)),
            model=health.get("model") or "",
            queue_capacity=-1,  # not given over HTTP
            images_generated=-1,
        )
        if not s.model_loaded:
            return s
        options = await self.get_json("/sdapi/v1/options")
        s.model = options.get("sd_model_checkpoint") or s.model
        for model in (await self.get_json("/api/v1/images/models")).get("models", []):
            if model.get("name") == s.model:
                s.device = model.get("device") or ""
                s.random_weights = bool(model.get("random_weights"))
        return s

    def models(self, timeout=CALL_SECONDS):
        return self.run(self._models(), timeout)

    async def _models(self):
        names = [m["model_name"] for m in await self.get_json("/sdapi/v1/sd-models")]
        current = (await self.get_json("/sdapi/v1/options")).get("sd_model_checkpoint")
        # /samplers answers for the model /sdapi uses: the labels' aliases are our names
        samplers = [s["aliases"][0] for s in await self.get_json("/sdapi/v1/samplers")]
        try:
            details = await self.get_json("/api/v1/images/models")
        except HttpCallError as e:
            if e.code() != grpc.StatusCode.NOT_FOUND:
                raise
            details = {}  # not an sdcore server: sizes unknown, the page's fallbacks stand
        by_name = {m.get("name"): m for m in details.get("models", [])}
        infos = []
        for name in names:
            m = by_name.get(name, {})
            infos.append(
                pb.ModelInfo(
                    name=name,
                    device=m.get("device") or "",
                    is_default=name == current,
                    random_weights=bool(m.get("random_weights")),
                    default_width=int(m.get("default_width") or 0),
                    default_height=int(m.get("default_height") or 0),
                    samplers=samplers if name == current else m.get("samplers", []),
                    default_guidance_scale=float(m.get("default_guidance_scale") or 0),
                )
            )
        return infos

    # -- generation -------------------------------------------------------------------------

    def generate_stream(self, request, job_id):
        """GenerateStream's events, as Backend gives them: queued (position -1: not told),
        progress (with the preview), then the result; a failure raises HttpCallError."""
        generation = _Generation(self, request, job_id)
        with self._lock:
            self._calls[job_id] = generation
        generation.start()
        return generation

    def _forget(self, job_id, generation):
        with self._lock:
            if self._calls.get(job_id) is generation:
                del self._calls[job_id]

    def cancel(self, job_id):
        with self._lock:
            generation = self._calls.get(job_id)
        if generation is None or generation.finished():
            raise HttpCallError(grpc.StatusCode.NOT_FOUND, f"job_id: no job {job_id!r}")
        previous = self.run(generation.stop(), CALL_SECONDS * 2)
        return pb.CancelResponse(job_id=job_id, previous_state=previous)

    def close(self):
        try:
            self.run(self.client.aclose(), CALL_SECONDS)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)


_END = object()  # the last item of a generation's event queue


class _Generation:
    """One txt2img call and the polls of /progress beside it. Iterated in the page's thread;
    the work runs on the backend's loop and hands events over through a queue."""

    def __init__(self, backend, request, job_id):
        self.backend = backend
        self.request = request
        self.job_id = job_id
        self.events = queue.Queue()
        self.task_id = None  # the server's "task(...)" of our job, once seen running
        self.job_count = 0  # /sdapi jobs the server held at the last poll
        self.seen_running = None  # monotonic time our job was first seen running
        self.future = None

    def start(self):
        self.future = asyncio.run_coroutine_threadsafe(self._run(), self.backend.loop)

    def finished(self):
        return self.future.done()

    def __iter__(self):
        try:
            while True:
                try:
                    item = self.events.get(timeout=0.5)
                except queue.Empty:
                    if self.future.cancelled():  # stopped before its coroutine began
                        raise HttpCallError(grpc.StatusCode.CANCELLED, CLOSED) from None
                    continue
                if item is _END:
                    return
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            self.backend._forget(self.job_id, self)

    def cancel(self):
        """Close the request, if it is still open (the page left, or the call is over)."""
        if self.future is not None:
            self.future.cancel()

    async def stop(self):
        """Cancel from the page: "running" or "queued", as the job was."""
        try:
            await self._poll()
        except HttpCallError:
            pass  # decided on what was seen last
        if self.task_id is not None and self.job_count == 1:
            reply = await self.backend.client.post("/sdapi/v1/interrupt")
            if reply.status_code != 200:
                raise error_of(reply)
            return "running"
        self.future.cancel()  # the connection closes: the server drops the job
        return "running" if self.task_id is not None else "queued"

    async def _run(self):
        backend = self.backend
        started = time.monotonic()
        post = asyncio.ensure_future(
            backend.client.post(
                "/sdapi/v1/txt2img",
                json=a1111_body(self.request),
                timeout=httpx.Timeout(backend.timeout, connect=CALL_SECONDS),
            )
        )
        try:
            self.events.put(pb.GenerateEvent(queued=pb.Queued(job_id=self.job_id, position=-1)))
            last_step = 0
            while not post.done():
                await asyncio.wait({post}, timeout=POLL_SECONDS)
                if post.done():
                    break
                try:
                    progress = await self._poll()
                except HttpCallError:
                    continue  # the call itself will say what is wrong
                if progress is not None and progress.step != last_step:
                    last_step = progress.step
                    self.events.put(pb.GenerateEvent(progress=progress))
            try:
                reply = post.result()
            except httpx.HTTPError as e:
                raise transport_error(e) from None
            if reply.status_code != 200:
                raise error_of(reply)
            self.events.put(pb.GenerateEvent(result=self._result(reply, started)))
        except asyncio.CancelledError:
            self.events.put(HttpCallError(grpc.StatusCode.CANCELLED, CLOSED))
            raise
        except HttpCallError as e:
            self.events.put(e)
        except Exception as e:  # an answer of an unexpected shape: say so, never hang
            self.events.put(HttpCallError(grpc.StatusCode.INTERNAL, f"bad answer: {e!r}"))
        finally:
            if not post.done():
                post.cancel()  # closes the connection
                await asyncio.gather(post, return_exceptions=True)
            self.events.put(_END)

    async def _poll(self):
        """Ask /progress; a Progress event when the job it shows is ours, else None."""
        reply = await self.backend.get_json(
            "/sdapi/v1/progress", params={"skip_current_image": "false"}
        )
        state = reply.get("state") or {}
        self.job_count = int(state.get("job_count") or 0)
        shown = state.get("job") or None
        if shown is None or (shown != self.task_id and self.job_count != 1):
            return None  # nothing running, or a job of another client
        if self.task_id is None:
            self.seen_running = time.monotonic()
        self.task_id = shown
        step = int(state.get("sampling_step") or 0)
        if step <= 0:
            return None
        preview = b""
        if reply.get("current_image"):
            try:
                preview = base64.b64decode(reply["current_image"], validate=True)
            except (binascii.Error, ValueError):
                preview = b""
        return pb.Progress(
            job_id=self.job_id,
            step=step,
            total=int(state.get("sampling_steps") or 0),
            preview_png=preview,
        )

    def _result(self, reply, started):
        body = reply.json()
        info = json.loads(body["info"])
        seeds = [int(s) for s in info["all_seeds"]]
        images = [
            pb.Image(
                png=base64.b64decode(data),
                seed=seeds[i],
                width=int(info["width"]),
                height=int(info["height"]),
                parameters=info["infotexts"][i],
            )
            for i, data in enumerate(body["images"])
        ]
        done = time.monotonic()
        timings = pb.Timings(total_seconds=done - started)
        if self.seen_running is not None:
            timings.queued_seconds = self.seen_running - started
            timings.generate_seconds = done - self.seen_running
        return pb.GenerateResponse(
            images=images,
            seeds=seeds,
            timings=timings,
            job_id=self.job_id,
            model=info.get("sd_model_name") or "",
        )
