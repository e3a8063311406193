"""HTTP APIs beside the gRPC service: the same process, event loop, ServiceCore, queue and engine.

Three families of routes, each answering in the shapes its existing clients expect:

- `/sdapi/v1/...`: the txt2img API of the common Stable Diffusion web UIs (A1111), with its
  model, sampler, scheduler, progress, interrupt and options routes;
- `/v1/images/generations`: the OpenAI Images API (b64_json only);
- `/generateimage`, `/health`, `/api/v1/images/...`: the HTTP services sdcore replaces.

Every generation is built by ServiceCore.params (the one validation of field values; this
module checks only the JSON's shape and types), queued with core.submit and batched by the
batcher with gRPC requests. A client that disconnects while its request waits or runs
cancels its job. API key, TLS, the body size limit, metrics and logs follow the server's
configuration. FastAPI runs on uvicorn, whose Server.serve() is a task on the gRPC loop.
"""

import asyncio
import base64
import binascii
import contextlib
import hmac
import json
import logging
import math
import socket
import time
from typing import Any

import fastapi
import uvicorn
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict
from sdcore.service.errors import (
    AlreadyExists,
    DeadlinePassed,
    EngineError,
    InvalidArgument,
    JobCancelled,
    NotFound,
    QueueFull,
    ServiceError,
    Unavailable,
)
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

import sdcore
from sdcore.params import SAMPLER_DISPLAY
from sdcore.request import DEFAULT_SAMPLER, GenerationRequest

log = logging.getLogger("service.http")

# Paths that need no API key: load balancers' health checks and the API's own description.
OPEN_PATHS = frozenset({"/health", "/docs", "/docs/oauth2-redirect", "/openapi.json"})
# Seconds a client is told to wait (Retry-After) when the queue is full or the model loads.
RETRY_AFTER_FULL = 1
RETRY_AFTER_LOADING = 5
# Status logged and counted for a request whose client went away before its answer.
CLIENT_CLOSED = 499


class HttpError(Exception):
    """An answer other than 200, rendered in the shape of the route's family."""

    def __init__(self, status, message, kind="invalid_request", field=None, headers=None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.field = field
        self.headers = headers


class ClientGone(Exception):
    """The client closed its connection before its answer was ready."""


# -- error shapes ---------------------------------------------------------------------------


def family(path):
    if path.startswith("/v1/"):
        return "openai"
    if path.startswith("/sdapi/"):
        return "a1111"
    return "plain"


def error_response(path, error):
    """The JSON error of `error` (an HttpError) in the shape of `path`'s family."""
    fam = family(path)
    if fam == "openai":
        body = {
            "error": {
                "message": error.message,
                "type": "server_error" if error.status >= 500 else "invalid_request_error",
                "param": error.field,
                "code": error.kind,
            }
        }
    elif fam == "a1111":
        body = {"error": error.kind, "detail": error.message, "body": "", "errors": error.message}
    else:
        body = {"error": error.kind, "message": error.message}
    return JSONResponse(body, status_code=error.status, headers=error.headers)


def _field_of(message):
    head, sep, _rest = message.partition(":")
    return head if sep and head.replace("_", "").replace(".", "").isalnum() else None


def _renamed(message, names):
    """The message of a field error, with the field named as this route's JSON names it."""
    field = _field_of(message)
    if field in names:
        return names[field] + message[len(field) :]
    return message


def service_error(error, path, names=None):
    """ServiceError -> HttpError: the status each family's clients expect."""
    message = _renamed(error.message, names or {})
    if isinstance(error, InvalidArgument):
        status = 400 if family(path) == "openai" else 422
        return HttpError(status, message, "invalid_value", _field_of(message))
    if isinstance(error, QueueFull):
        return HttpError(503, message, "queue_full", headers={"Retry-After": f"{RETRY_AFTER_FULL}"})
    if isinstance(error, Unavailable):
        return HttpError(
            503, message, "unavailable", headers={"Retry-After": f"{RETRY_AFTER_LOADING}"}
        )
    if isinstance(error, JobCancelled):
        return HttpError(409, f"cancelled: {message}", "cancelled")
    if isinstance(error, DeadlinePassed):
        return HttpError(504, message, "deadline_exceeded")
    if isinstance(error, NotFound):
        return HttpError(404, message, "not_found", _field_of(message))
    if isinstance(error, AlreadyExists):
        return HttpError(409, message, "already_exists", _field_of(message))
    if isinstance(error, EngineError):
        return HttpError(500, message, "engine_error")
    return HttpError(500, message, "internal")


def validation_error(exc, path):
    """pydantic's complaint about the JSON -> HttpError naming the first bad field."""
    first = exc.errors()[0]
    loc = [str(part) for part in first.get("loc", ()) if part not in ("body", "query")]
    field = ".".join(loc) or "body"
    if first.get("type") == "json_invalid":
        return HttpError(400, f"body: not valid JSON ({first.get('msg')})", "invalid_json", "body")
    if first.get("type") == "extra_forbidden":
        message = f"{field}: unknown field; this server does not support it"
        kind = "unsupported_field"
    elif first.get("type") == "missing" and field == "body":
        message = "body: a JSON object is required"
        kind = "invalid_request"
    else:
        message = f"{field}: {first.get('msg')}"
        kind = "invalid_request"
    return HttpError(400 if family(path) == "openai" else 422, message, kind, field)


# -- request bodies -------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class A1111Txt2Img(_Strict):
    """The txt2img request of the common web UIs. Fields this server does not implement are
    accepted only at the value that asks for nothing (see A1111_NEUTRAL)."""

    prompt: str = ""
    negative_prompt: str = ""
    seed: int = -1
    sampler_name: str | None = None
    sampler_index: str | None = None  # the older name of sampler_name
    scheduler: str | None = None
    batch_size: int = 1
    n_iter: int = 1
    steps: int | None = None  # None or 0: the server's --default-steps
    cfg_scale: float | None = None  # None: the model's default guidance
    width: int | None = None  # None or 0: the model's default size
    height: int | None = None
    override_settings: dict[str, Any] | None = None
    # cosmetic: nothing is saved on the server, and every answer is the same either way
    send_images: bool = True
    save_images: bool = False
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    override_settings_restore_afterwards: bool = True
    disable_extra_networks: bool = False
    comments: dict[str, Any] | None = None
    force_task_id: str | None = None
    # not implemented: accepted at their neutral value only
    styles: list[str] | None = None
    subseed: int = -1
    subseed_strength: float = 0.0
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    restore_faces: bool | None = None
    tiling: bool | None = None
    eta: float | None = None
    s_min_uncond: float | None = None
    s_churn: float | None = None
    s_tmax: float | None = None
    s_tmin: float | None = None
    s_noise: float | None = None
    refiner_checkpoint: str | None = None
    refiner_switch_at: float | None = None
    firstpass_image: str | None = None
    infotext: str | None = None
    script_name: str | None = None
    script_args: list[Any] | None = None
    alwayson_scripts: dict[str, Any] | None = None
    enable_hr: bool = False
    # hires fix settings: read by the web UIs only with enable_hr, so ignored here too
    denoising_strength: float | None = None
    firstphase_width: int | None = None
    firstphase_height: int | None = None
    hr_scale: float | None = None
    hr_upscaler: str | None = None
    hr_second_pass_steps: int | None = None
    hr_resize_x: int | None = None
    hr_resize_y: int | None = None
    hr_checkpoint_name: str | None = None
    hr_sampler_name: str | None = None
    hr_scheduler: str | None = None
    hr_prompt: str | None = None
    hr_negative_prompt: str | None = None
    hr_cfg: float | None = None
    hr_additional_modules: list[Any] | None = None


def _empty(value):
    return value is None or value == "" or value == [] or value == {}


# field -> (what it asks for, test that the value asks for nothing)
A1111_NEUTRAL = {
    "enable_hr": ("hires fix", lambda v: not v),
    "restore_faces": ("face restoration", lambda v: not v),
    "tiling": ("tiling", lambda v: not v),
    "styles": ("styles", _empty),
    "subseed_strength": ("variation seeds", lambda v: v == 0),
    "seed_resize_from_h": ("seed resize", lambda v: v in (-1, 0)),
    "seed_resize_from_w": ("seed resize", lambda v: v in (-1, 0)),
    "s_min_uncond": ("negative guidance minimum sigma", lambda v: not v),
    "s_churn": ("sigma churn", lambda v: not v),
    "s_tmax": ("sigma tmax", lambda v: not v or math.isinf(v)),
    "s_tmin": ("sigma tmin", lambda v: not v),
    "s_noise": ("sigma noise", lambda v: v is None or v == 1),
    "refiner_checkpoint": ("refiner", _empty),
    "refiner_switch_at": ("refiner", lambda v: v is None),
    "firstpass_image": ("first-pass image", _empty),
    "infotext": ("infotext parameters", _empty),
    "script_name": ("scripts", _empty),
    "script_args": ("scripts", _empty),
    "alwayson_scripts": ("scripts", _empty),
}

# The sampler's eta this server's samplers use; other values are refused.
_SAMPLER_ETA = {"euler_a": 1.0, "ddim": 0.0}


def a1111_unsupported(req):
    """HttpError naming every field that asks for something this server does not do."""
    bad = [
        f"{name} ({what})"
        for name, (what, neutral) in A1111_NEUTRAL.items()
        if not neutral(getattr(req, name))
    ]
    if bad:
        return HttpError(
            422,
            f"{bad[0].split(' ')[0]}: not supported by this server: {', '.join(bad)}",
            "unsupported_field",
            bad[0].split(" ")[0],
        )
    return None


def a1111_labels(samplers):
    """A1111 label -> our sampler name, for the samplers the model has."""
    return {SAMPLER_DISPLAY[s]: s for s in samplers if s in SAMPLER_DISPLAY}


A1111_SCHEDULERS = [
    {"name": "automatic", "label": "Automatic", "aliases": None, "default_rho": -1.0},
    {"name": "karras", "label": "Karras", "aliases": None, "default_rho": 7.0},
]


def a1111_sampler(samplers, sampler_name, scheduler):
    """The web UIs' sampler (label or our name) and scheduler -> our sampler name.

    "DPM++ 2M" with scheduler Karras is dpmpp_2m_karras, as is "DPM++ 2M Karras"; Automatic
    (or none) keeps each sampler's own schedule. Other schedulers are refused."""
    if not sampler_name:
        sampler = ""
    else:
        by_label = {k.lower(): v for k, v in a1111_labels(samplers).items()}
        sampler = by_label.get(sampler_name.lower())
        if sampler is None and sampler_name in samplers:
            sampler = sampler_name
        if sampler is None:
            raise InvalidArgument(
                f"sampler_name: unknown sampler {sampler_name!r}; one of "
                f"{sorted(a1111_labels(samplers))}"
            )
    schedule = (scheduler or "automatic").lower()
    if schedule == "automatic":
        return sampler
    if schedule == "karras":
        if sampler in ("dpmpp_2m", "dpmpp_2m_karras"):
            return "dpmpp_2m_karras"
        raise InvalidArgument(
            f"scheduler: Karras is supported with DPM++ 2M only, not with {sampler_name!r}"
        )
    raise InvalidArgument(
        f"scheduler: {scheduler!r} is not supported; Automatic, or Karras with DPM++ 2M"
    )


class A1111Options(BaseModel):
    model_config = ConfigDict(extra="allow")

    sd_model_checkpoint: str | None = None


class OpenAIImageRequest(_Strict):
    prompt: str
    model: str | None = None
    n: int | None = None
    size: str | None = None
    response_format: str | None = None
    quality: str | None = None
    style: str | None = None
    background: str | None = None
    moderation: str | None = None
    output_format: str | None = None
    output_compression: int | None = None
    partial_images: int | None = None
    stream: bool | None = None
    user: str | None = None
    safety_identifier: str | None = None


def openai_checks(req):
    """HttpError for a parameter this server cannot honour (400, naming it), else None."""
    refusals = [
        ("response_format", req.response_format not in (None, "b64_json"),
         "this server hosts no files; ask for b64_json"),
        ("quality", req.quality not in (None, "auto", "standard"), "the model has one quality"),
        ("style", req.style is not None, "styles are not supported"),
        ("background", req.background not in (None, "auto", "opaque"),
         "only opaque images are made"),
        ("output_format", req.output_format not in (None, "png"), "only png is made"),
        ("output_compression", req.output_compression is not None, "png is not compressed"),
        ("partial_images", bool(req.partial_images), "partial images are not streamed"),
        ("stream", bool(req.stream), "streaming is not supported"),
    ]  # fmt: skip
    for field, refused, why in refusals:
        if refused:
            value = getattr(req, field)
            message = f"{field}: {value!r} is not supported: {why}"
            return HttpError(400, message, "unsupported_value", field)
    return None


def openai_size(size):
    """'WxH' -> (W, H); None or 'auto' -> (0, 0), the model's default."""
    if size is None or size == "auto":
        return 0, 0
    width, sep, height = size.partition("x")
    if not sep or not width.isdigit() or not height.isdigit():
        raise HttpError(
            400, f"size: {size!r} is not WIDTHxHEIGHT (e.g. 512x512) or auto", "invalid_value",
            "size",
        )  # fmt: skip
    return int(width), int(height)


class GenerateImageRequest(_Strict):
    """POST /generateimage."""

    positivePrompt: str  # noqa: N815 - the replaced service's JSON names
    negativePrompt: str = ""  # noqa: N815


class ImagesGenerateRequest(_Strict):
    """POST /api/v1/images/generate."""

    prompt: str
    negative_prompt: str = ""
    width: int | None = None
    height: int | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    seed: int = -1


# -- the mapping of each route family's JSON onto ServiceCore.params (and nothing else) -------
#
# Each returns the validated request; ServiceCore.params checks every value. The names table
# beside each renames our field names in error messages to the JSON's names.

A1111_NAMES = {
    "num_inference_steps": "steps",
    "guidance_scale": "cfg_scale",
    "sampler": "sampler_name",
    "num_images": "batch_size * n_iter",
    "model": "sd_model_checkpoint",
}


def a1111_params(core, req, sampler, model):
    return core.params(
        GenerationRequest(
            prompt=req.prompt,
            negative_prompt=req.negative_prompt,
            width=req.width or None,
            height=req.height or None,
            num_inference_steps=req.steps or None,
            guidance_scale=req.cfg_scale,
            seed=req.seed,
            sampler=sampler or None,
            num_images=req.batch_size * req.n_iter,
            model=model or None,
        )
    )


OPENAI_NAMES = {"num_images": "n", "width": "size", "height": "size"}


def openai_params(core, req, width, height):
    return core.params(
        GenerationRequest(
            prompt=req.prompt,
            width=width or None,
            height=height or None,
            num_images=1 if req.n is None else req.n,
            model=req.model or None,
        )
    )


GENERATEIMAGE_NAMES = {"prompt": "positivePrompt", "negative_prompt": "negativePrompt"}


def generateimage_params(core, req):
    return core.params(
        GenerationRequest(prompt=req.positivePrompt, negative_prompt=req.negativePrompt)
    )


IMAGES_GENERATE_NAMES = {}


def images_generate_params(core, req):
    return core.params(
        GenerationRequest(
            prompt=req.prompt,
            negative_prompt=req.negative_prompt,
            width=req.width or None,
            height=req.height or None,
            num_inference_steps=req.num_inference_steps or None,
            guidance_scale=req.guidance_scale,
            seed=req.seed,
        )
    )


# -- jobs -----------------------------------------------------------------------------------


async def _disconnected(receive):
    """Return once the client has gone (the ASGI server says http.disconnect)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


class Progress:
    """What /sdapi/v1/progress shows of one web-UI job."""

    def __init__(self, job):
        self.job = job
        self.step = 0
        self.total = job.params.steps
        self.preview = None  # PNG bytes of the latest preview
        self.timestamp = time.strftime("%Y%m%d%H%M%S")


def _b64(png):
    return base64.b64encode(png).decode("ascii")


# -- the app --------------------------------------------------------------------------------


class HttpApi:
    """The FastAPI app over one ServiceCore."""

    def __init__(self, core):
        self.core = core
        self.config = core.config
        self.metrics = core.metrics
        self.a1111_model = ""  # set by POST /sdapi/v1/options; "" = the server's default
        self.a1111_jobs = {}  # job id -> Progress, web-UI jobs queued or running
        self.app = self._build()

    # -- running a job --------------------------------------------------------------------

    async def run(self, request, params, progress=False):
        """Queue `params` and wait for its images. If the client disconnects first, the job
        is dropped (from the queue, or the engine stops when its whole batch has gone)."""
        core = self.core
        job = core.submit(params, None, want_events=progress, preview=progress)
        record = None
        if progress:
            record = self.a1111_jobs[job.id] = Progress(job)
            work = asyncio.ensure_future(self._follow(job, record))
        else:
            work = asyncio.ensure_future(core.result(job))
        gone = asyncio.ensure_future(_disconnected(request.receive))
        try:
            await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
            if work.done():
                return job, work.result()
            raise ClientGone()
        finally:
            gone.cancel()
            if not work.done():
                work.cancel()
                await asyncio.gather(work, return_exceptions=True)
            if not job.future.done():
                core.abandon(job)
            if record is not None:
                self.a1111_jobs.pop(job.id, None)

    async def _follow(self, job, record):
        while True:
            event = await job.next_event()
            if event is None:
                break
            if event[0] == "progress":
                _kind, record.step, record.total, png = event
                record.preview = png or record.preview
        return job.future.result()

    def _model_name(self, name):
        """A model's name as the web UIs title it (their titles may carry ' [hash]')."""
        return name.split(" [", 1)[0] if name else ""

    # -- the routes -----------------------------------------------------------------------

    def _build(self):
        app = fastapi.FastAPI(
            title="sdcore HTTP API",
            version=sdcore.__version__,
            description=(
                "Text-to-image over HTTP, on the same queue and engine as the sdcore gRPC "
                "service: the web UIs' /sdapi/v1 txt2img API, the OpenAI Images API and the "
                "routes of the services sdcore replaces."
            ),
            redoc_url=None,
        )
        app.add_exception_handler(HttpError, self._on_http_error)
        app.add_exception_handler(ServiceError, self._on_service_error)
        app.add_exception_handler(RequestValidationError, self._on_validation_error)
        app.add_exception_handler(StarletteHTTPException, self._on_starlette_error)
        self._a1111_routes(app)
        self._openai_routes(app)
        self._plain_routes(app)
        return app

    async def _on_http_error(self, request, exc):
        return error_response(request.url.path, exc)

    async def _on_service_error(self, request, exc):
        return error_response(request.url.path, service_error(exc, request.url.path))

    async def _on_validation_error(self, request, exc):
        return error_response(request.url.path, validation_error(exc, request.url.path))

    async def _on_starlette_error(self, request, exc):
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        message = f"{request.method} {request.url.path}: {exc.detail}"
        error = HttpError(exc.status_code, message, kind, headers=getattr(exc, "headers", None))
        return error_response(request.url.path, error)

    async def _generate(self, request, build, names, progress=False):
        """params from build(); then the job; ServiceError -> HttpError with the JSON's
        field names; ClientGone -> an answer nobody reads, counted as 499."""
        path = request.url.path
        try:
            params = build()
            job, images = await self.run(request, params, progress)
        except ServiceError as e:
            raise service_error(e, path, names) from None
        except ClientGone:
            return None, None
        return job, images

    def _a1111_routes(self, app):
        api = self
        tags = ["A1111 web UI API"]

        @app.post("/sdapi/v1/txt2img", tags=tags)
        async def txt2img(request: fastapi.Request, req: A1111Txt2Img):
            """Text to image; `info` is a JSON string with seeds and infotexts."""
            refusal = a1111_unsupported(req)
            if refusal is not None:
                raise refusal
            core = api.core
            model = api._model_name((req.override_settings or {}).get("sd_model_checkpoint", ""))
            others = sorted(set(req.override_settings or {}) - {"sd_model_checkpoint"})
            if others:
                raise HttpError(
                    422,
                    f"override_settings.{others[0]}: not supported by this server "
                    "(only sd_model_checkpoint)",
                    "unsupported_field",
                    f"override_settings.{others[0]}",
                )
            model = model or api.a1111_model

            def build():
                samplers = core.slot(model).pipeline.samplers
                name = req.sampler_name or req.sampler_index
                sampler = a1111_sampler(samplers, name, req.scheduler)
                eta = _SAMPLER_ETA.get(sampler or DEFAULT_SAMPLER)
                if req.eta is not None and eta is not None and req.eta != eta:
                    label = SAMPLER_DISPLAY.get(sampler or DEFAULT_SAMPLER)
                    raise InvalidArgument(
                        f"eta: {req.eta} is not supported; {label} here uses eta {eta:g}"
                    )
                return a1111_params(core, req, sampler, model)

            job, images = await api._generate(request, build, A1111_NAMES, progress=True)
            if job is None:
                return Response(status_code=CLIENT_CLOSED)
            return a1111_response(req, job, images)

        @app.post("/sdapi/v1/img2img", tags=tags, status_code=501)
        async def img2img(request: fastapi.Request):
            """Not supported yet: this server generates from text only."""
            raise HttpError(
                501,
                "img2img: not supported yet; this server generates from text only "
                "(use /sdapi/v1/txt2img)",
                "not_implemented",
            )

        @app.get("/sdapi/v1/sd-models", tags=tags)
        async def sd_models():
            return [
                {
                    "title": name,
                    "model_name": name,
                    "hash": None,
                    "sha256": None,
                    "filename": str(getattr(slot.pipeline, "path", None) or name),
                    "config": None,
                }
                for name, slot in api.core.slots.items()
            ]

        @app.get("/sdapi/v1/samplers", tags=tags)
        async def samplers():
            slot = api.core.slot(api.a1111_model)
            return [
                {"name": label, "aliases": [ours], "options": {}}
                for label, ours in a1111_labels(slot.pipeline.samplers).items()
            ]

        @app.get("/sdapi/v1/schedulers", tags=tags)
        async def schedulers():
            return [{**s, "need_inner_model": False} for s in A1111_SCHEDULERS]

        @app.get("/sdapi/v1/scripts", tags=tags)
        async def scripts():
            return {"txt2img": [], "img2img": []}

        @app.get("/sdapi/v1/progress", tags=tags)
        async def progress(skip_current_image: bool = False):
            """The oldest running web-UI job's progress (0..1), its ETA and latest preview."""
            return api.a1111_progress(skip_current_image)

        @app.post("/sdapi/v1/interrupt", tags=tags)
        async def interrupt():
            """Cancel the running web-UI jobs (their txt2img calls answer 409)."""
            api.a1111_stop("interrupted by /sdapi/v1/interrupt")
            return {}

        @app.post("/sdapi/v1/skip", tags=tags)
        async def skip():
            """As /interrupt: each request is one engine call, so there is no next image."""
            api.a1111_stop("skipped by /sdapi/v1/skip")
            return {}

        @app.get("/sdapi/v1/options", tags=tags)
        async def get_options():
            name = api.a1111_model or api.core.default_model
            return {
                "sd_model_checkpoint": name,
                "sd_checkpoint_hash": None,
                "samples_format": "png",
            }

        @app.post("/sdapi/v1/options", tags=tags)
        async def set_options(options: A1111Options):
            """Only sd_model_checkpoint: which of the server's models /sdapi/v1 uses."""
            others = sorted(options.model_extra or {})
            if others:
                raise HttpError(
                    422,
                    f"{others[0]}: option not supported by this server (only sd_model_checkpoint)",
                    "unsupported_field",
                    others[0],
                )
            if options.sd_model_checkpoint is not None:
                name = api._model_name(options.sd_model_checkpoint)
                try:
                    slot = api.core.slot(name)
                except ServiceError as e:
                    raise service_error(e, "/sdapi/", A1111_NAMES) from None
                api.a1111_model = slot.name
            return None

    def a1111_stop(self, reason):
        for record in list(self.a1111_jobs.values()):
            if record.job.state == "running":
                try:
                    self.core.batcher.cancel(record.job.id, reason, owner=record.job.owner)
                except NotFound:
                    pass  # finished meanwhile

    def a1111_progress(self, skip_current_image):
        records = list(self.a1111_jobs.values())
        running = [r for r in records if r.job.state == "running"]
        current = min(running, key=lambda r: r.job.t_start) if running else None
        state = {
            "skipped": False,
            "interrupted": False,
            "stopping_generation": False,
            "job": f"task({current.job.id})" if current else "",
            "job_count": len(records),
            "job_timestamp": current.timestamp if current else "0",
            "job_no": 0,
            "sampling_step": current.step if current else 0,
            "sampling_steps": current.total if current else 0,
        }
        fraction, eta = 0.0, 0.0
        if current is not None and current.total:
            fraction = current.step / current.total
            if current.step:
                elapsed = time.monotonic() - current.job.t_start
                eta = elapsed / current.step * (current.total - current.step)
        image = None
        if current is not None and current.preview and not skip_current_image:
            image = _b64(current.preview)
        return {
            "progress": fraction,
            "eta_relative": eta,
            "state": state,
            "current_image": image,
            "textinfo": None,
            "current_task": f"task({current.job.id})" if current else None,
        }

    def _openai_routes(self, app):
        api = self

        @app.post("/v1/images/generations", tags=["OpenAI Images API"])
        async def generations(request: fastapi.Request, req: OpenAIImageRequest):
            """Images as b64_json (PNG). `size` is WIDTHxHEIGHT or auto; `model` one of the
            server's models."""
            refusal = openai_checks(req)
            if refusal is not None:
                raise refusal
            width, height = openai_size(req.size)

            def build():
                return openai_params(api.core, req, width, height)

            job, images = await api._generate(request, build, OPENAI_NAMES)
            if job is None:
                return Response(status_code=CLIENT_CLOSED)
            return {
                "created": int(time.time()),
                "data": [{"b64_json": _b64(im.png), "revised_prompt": None} for im in images],
                "output_format": "png",
                "size": f"{images[0].width}x{images[0].height}",
            }

    def _plain_routes(self, app):
        api = self
        tags = ["Replaced services"]

        @app.post(
            "/generateimage",
            tags=tags,
            response_class=Response,
            responses={200: {"content": {"image/png": {}}}},
        )
        async def generateimage(request: fastapi.Request, req: GenerateImageRequest):
            """One PNG for {positivePrompt, negativePrompt}."""
            job, images = await api._generate(
                request, lambda: generateimage_params(api.core, req), GENERATEIMAGE_NAMES
            )
            if job is None:
                return Response(status_code=CLIENT_CLOSED)
            return Response(
                images[0].png,
                media_type="image/png",
                headers={"Content-Disposition": f'inline; filename="sdcore-{images[0].seed}.png"'},
            )

        @app.post("/api/v1/images/generate", tags=tags)
        async def images_generate(request: fastapi.Request, req: ImagesGenerateRequest):
            """One image as a data: URL, with the seed and the parameters used."""
            job, images = await api._generate(
                request, lambda: images_generate_params(api.core, req), IMAGES_GENERATE_NAMES
            )
            if job is None:
                return Response(status_code=CLIENT_CLOSED)
            p, image = job.params, images[0]
            return {
                "image_url": "data:image/png;base64," + _b64(image.png),
                "seed": image.seed,
                "parameters": {
                    "prompt": p.prompt,
                    "negative_prompt": p.negative_prompt,
                    "width": image.width,
                    "height": image.height,
                    "num_inference_steps": p.steps,
                    "guidance_scale": p.guidance_scale,
                    "seed": image.seed,
                    "sampler": p.sampler,
                    "model": p.model,
                },
                "infotext": image.parameters,
                "generation_time_seconds": job.generate_seconds,
            }

        @app.get("/api/v1/images/models", tags=tags)
        async def images_models():
            core = api.core
            models = []
            for name, slot in core.slots.items():
                pipe = slot.pipeline
                w, h = pipe.default_size
                models.append(
                    {
                        "id": name,
                        "name": name,
                        "default": name == core.default_model,
                        "device": pipe.device,
                        "default_width": w,
                        "default_height": h,
                        "samplers": list(pipe.samplers),
                        "default_guidance_scale": pipe.rules.guidance_scale,
                        "random_weights": bool(getattr(pipe, "random_weights", False)),
                    }
                )
            return {"models": models, "default": core.default_model}

        @app.get("/health", tags=tags)
        async def health():
            """200 once the model is loaded; 503 while it loads and from the start of shutdown."""
            core = api.core
            status = {"ready": "ok"}.get(core.state, core.state)
            body = {
                "status": status,
                "model": core.default_model,
                "queue_depth": core.batcher.queue_depth(),
                "jobs_in_flight": core.batcher.in_flight(),
                "version": sdcore.__version__,
            }
            return JSONResponse(body, status_code=200 if status == "ok" else 503)


def a1111_response(req, job, images):
    p = job.params
    seeds = [im.seed for im in images]
    n = len(images)
    info = {
        "prompt": p.prompt,
        "all_prompts": [p.prompt] * n,
        "negative_prompt": p.negative_prompt,
        "all_negative_prompts": [p.negative_prompt] * n,
        "seed": seeds[0],
        "all_seeds": seeds,
        "subseed": req.subseed,
        "all_subseeds": [req.subseed] * n,
        "subseed_strength": req.subseed_strength,
        "width": images[0].width,
        "height": images[0].height,
        "sampler_name": SAMPLER_DISPLAY.get(p.sampler, p.sampler),
        "cfg_scale": p.guidance_scale,
        "steps": p.steps,
        "batch_size": req.batch_size,
        "n_iter": req.n_iter,
        "restore_faces": False,
        "face_restoration_model": None,
        "sd_model_name": p.model,
        "sd_model_hash": None,
        "sd_vae_name": None,
        "sd_vae_hash": None,
        "seed_resize_from_w": -1,
        "seed_resize_from_h": -1,
        "denoising_strength": None,
        "extra_generation_params": {},
        "index_of_first_image": 0,
        "infotexts": [im.parameters for im in images],
        "styles": [],
        "job_timestamp": time.strftime("%Y%m%d%H%M%S"),
        "clip_skip": 1,
        "is_using_inpainting_conditioning": False,
        "version": f"sdcore {sdcore.__version__}",
    }
    return {
        "images": [_b64(im.png) for im in images] if req.send_images else [],
        "parameters": req.model_dump(),
        "info": json.dumps(info),
    }


# -- the ASGI layer around the app: metrics and logs, API key, body size ----------------------


def _route_of(app, scope):
    """The route's path template (bounded label values), or 'unmatched'."""
    for route in app.router.routes:
        match, _child = route.matches(scope)
        if match == Match.FULL:
            return route.path
    return "unmatched"


class Observed:
    """Counts every request by route and status, times it, and logs one line for it."""

    def __init__(self, app, fastapi_app, metrics):
        self.app = app
        self.fastapi_app = fastapi_app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        status = [CLIENT_CLOSED]  # nothing sent: the client left (errors are answered 500)

        async def observed_send(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        finally:
            seconds = time.monotonic() - started
            route = _route_of(self.fastapi_app, scope)
            self.metrics.observe_http(route, status[0], seconds)
            client = scope.get("client")
            log.log(
                logging.WARNING if status[0] >= 500 and status[0] != 503 else logging.INFO,
                "http",
                extra={
                    "method": scope["method"],
                    "route": route,
                    "status": status[0],
                    "seconds": round(seconds, 4),
                    "peer": f"{client[0]}:{client[1]}" if client else None,
                },
            )


class Gate:
    """The API key (when the server has one) and the body size limit, before any route runs.

    Accepted credentials: `Authorization: Bearer KEY`, `x-api-key: KEY` (as gRPC clients send
    it), or HTTP Basic auth whose password is KEY (the web UIs' clients). The body is read here
    (413 past `limit` bytes) and handed on; what the client sends afterwards (its disconnect)
    passes through."""

    def __init__(self, app, api_key, limit):
        self.app = app
        self.key = api_key.encode() if api_key else None
        self.limit = limit

    def _allowed(self, headers):
        if self.key is None:
            return True
        given = []
        auth = headers.get(b"authorization", b"")
        scheme, _, value = auth.partition(b" ")
        if scheme.lower() == b"bearer":
            given.append(value.strip())
        elif scheme.lower() == b"basic":
            try:
                given.append(base64.b64decode(value.strip(), validate=True).partition(b":")[2])
            except (binascii.Error, ValueError):
                pass
        if b"x-api-key" in headers:
            given.append(headers[b"x-api-key"])
        return any(hmac.compare_digest(g, self.key) for g in given)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        headers = dict(scope["headers"])
        if path not in OPEN_PATHS and not self._allowed(headers):
            error = HttpError(
                401,
                "missing or wrong API key: send Authorization: Bearer KEY",
                "unauthorized",
                headers={"WWW-Authenticate": "Bearer"},
            )
            await error_response(path, error)(scope, receive, send)
            return
        too_big = HttpError(
            413,
            f"body: larger than {self.limit} bytes (the server's --max-message-size)",
            "body_too_large",
            "body",
        )
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await error_response(path, too_big)(scope, receive, send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # gone before its body arrived
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                await error_response(path, too_big)(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        body = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replay():
            return body.pop() if body else await receive()

        await self.app(scope, replay, send)


# -- the server -----------------------------------------------------------------------------


class _Uvicorn(uvicorn.Server):
    """uvicorn without its signal handlers: the gRPC server's own handle SIGTERM/SIGINT and
    stop both servers."""

    def capture_signals(self):
        return contextlib.nullcontext()

    def install_signal_handlers(self):  # the name of the same hook in older uvicorn
        pass


def _bind(host, port):
    host = host.strip("[]") or None
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family_, kind, proto, _name, address = infos[0]
    sock = socket.socket(family_, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family_ == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    try:
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


class HttpServer:
    """uvicorn serving HttpApi's app as a task on the running (gRPC) event loop."""

    def __init__(self, core):
        self.core = core
        self.api = HttpApi(core)
        cfg = core.config
        app = Observed(
            Gate(self.api.app, cfg.api_key if cfg.require_api_key else None, cfg.max_message_size),
            self.api.app,
            core.metrics,
        )
        self.uv_config = uvicorn.Config(
            app,
            lifespan="off",
            log_config=None,
            access_log=False,
            proxy_headers=False,
            server_header=False,
            ws="none",
            ssl_certfile=cfg.cert_file if cfg.use_tls else None,
            ssl_keyfile=cfg.key_file if cfg.use_tls else None,
        )
        self.server = _Uvicorn(self.uv_config)
        self.task = None
        self.port = None

    async def start(self):
        cfg = self.core.config
        _route_uvicorn_logs()
        sock = _bind(cfg.host, cfg.http_port)
        self.port = sock.getsockname()[1]
        self.task = asyncio.get_running_loop().create_task(self.server.serve(sockets=[sock]))
        while not self.server.started:
            if self.task.done():
                self.task.result()  # raises why it stopped
                raise OSError(f"the HTTP server on port {self.port} stopped at start")
            await asyncio.sleep(0.01)
        return self.port

    def stop_accepting(self):
        """Shutdown begins: uvicorn closes its listening socket and idle connections; requests
        in flight go on (their jobs get the grace period) and their connections close after."""
        self.server.should_exit = True

    async def close(self, timeout):
        """Once every job has its answer: `timeout` seconds to send the last ones, then stop."""
        if self.task is None:
            return
        self.server.should_exit = True
        _done, pending = await asyncio.wait({self.task}, timeout=timeout)
        if pending:
            self.server.force_exit = True
            self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


def _route_uvicorn_logs():
    """uvicorn's own warnings and errors go where the service's logs go (JSON lines)."""
    service = logging.getLogger("service")
    uv = logging.getLogger("uvicorn.error")
    if service.handlers:
        uv.handlers = list(service.handlers)
        uv.propagate = False
    uv.setLevel(logging.WARNING)
