"""What the page does, without the page: run a generation over GenerateStream (or its HTTP
equivalent, frontend/http_backend.py) and say what happened, as a series of updates that
app.py shows. Tests drive this directly."""

import dataclasses
import io
import pathlib
import shutil
import tempfile
import threading
import uuid

import grpc
from PIL import Image
from sdcore.frontend.backend import describe_error

from sdcore.request import GenerationRequest, ValidationError

KEEP = object()  # an Update field left as it is on the page
KEPT_RESULTS = 200  # job folders of PNGs kept for download; older ones are deleted


@dataclasses.dataclass
class Update:
    """One change to the page. Fields left at KEEP are not touched."""

    progress: object = KEEP  # a line: queued, step i of n, done
    preview: object = KEEP  # PIL image of the latest step (then a PNG path), or None to clear
    gallery: object = KEEP  # [(png path, caption)]
    files: object = KEEP  # [png path] for download
    parameters: object = KEEP  # the infotext of each image
    message: object = KEEP  # an error for the person at the page; "" clears it
    seed: object = KEEP  # the seed actually used


@dataclasses.dataclass
class ModelDefaults:
    """What the controls start at, from ListModels; the fallback when the server is down
    (guidance None: the field starts empty and the server uses the model's own)."""

    width: int = 512
    height: int = 512
    samplers: tuple = ("euler_a", "euler", "ddim", "dpmpp_2m", "dpmpp_2m_karras", "pndm", "lms")
    sampler: str = "euler_a"
    guidance: float | None = None


class Demo:
    def __init__(self, backend, output_dir=None):
        self.backend = backend
        self.output_dir = pathlib.Path(output_dir or tempfile.mkdtemp(prefix="sdcore-demo-"))
        self._jobs = {}  # page session -> job id running for it, for Cancel
        self._lock = threading.Lock()

    def model_defaults(self):
        try:
            models = self.backend.models()
        except grpc.RpcError:
            return ModelDefaults()
        default = next((m for m in models if m.is_default), models[0] if models else None)
        if default is None:
            return ModelDefaults()
        samplers = tuple(default.samplers) or ModelDefaults.samplers
        sampler = "euler_a" if "euler_a" in samplers else samplers[0]
        guidance = default.default_guidance_scale or ModelDefaults.guidance
        return ModelDefaults(
            default.default_width, default.default_height, samplers, sampler, guidance
        )

    def status_text(self):
        """The status panel, in Markdown: model, device, queue, or why the server is not there."""
        address = self.backend.address
        try:
            s = self.backend.status()
        except grpc.RpcError as e:
            return f"**Server** `{address}` · {describe_error(e, address)}"
        model = s.model or "(none loaded)"
        if s.random_weights:
            model += " (random weights)"
        state = "ready" if s.model_loaded else "loading the model"
        # -1: a figure this backend's API does not give (the HTTP API: capacity, images made)
        capacity = f" of {s.queue_capacity}" if s.queue_capacity >= 0 else ""
        made = f"**Images made** {s.images_generated} · " if s.images_generated >= 0 else ""
        device = f"**Device** {s.device} · " if s.device else ""
        return (
            f"**Model** {model} · {device}"
            f"**Queue** {s.queue_depth} waiting{capacity}, {s.jobs_in_flight} running · {made}"
            f"**Server** `{address}` ({state}, sdcore {s.version}, {self.backend.api} API)"
        )

    def generate(self, request, session="", job_id=None):
        """Yield Updates while the server works on `request`; the last one is the outcome."""
        job_id = job_id or f"demo-{uuid.uuid4().hex[:12]}"
        yield Update(progress="Sending the request...", preview=None, message="")
        with self._lock:
            self._jobs[session] = job_id
        call = None
        try:
            call = self.backend.generate_stream(request, job_id)
            for event in call:
                kind = event.WhichOneof("event")
                if kind == "queued":
                    yield Update(progress=_queued_text(event.queued.position))
                elif kind == "progress":
                    yield _progress_update(event.progress, request)
                else:
                    yield self._result_update(event.result)
                    return
            yield Update(progress="", message="The server ended the stream without a result")
        except grpc.RpcError as e:
            yield Update(progress="", message=describe_error(e, self.backend.address))
        finally:
            if call is not None:
                call.cancel()  # no-op once it ended; if the page went away, the job stops
            with self._lock:
                if self._jobs.get(session) == job_id:
                    del self._jobs[session]

    def cancel(self, session=""):
        """Cancel the job this page session is running; a line saying what happened."""
        with self._lock:
            job_id = self._jobs.get(session)
        if job_id is None:
            return "Nothing to cancel"
        try:
            reply = self.backend.cancel(job_id)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                return "Nothing to cancel: the job has already finished"
            return describe_error(e, self.backend.address)
        return f"Cancelling job {job_id} ({reply.previous_state})"

    def _result_update(self, result):
        folder = self.output_dir / result.job_id
        folder.mkdir(parents=True, exist_ok=True)
        self._delete_old_results()
        paths, gallery = [], []
        for i, image in enumerate(result.images):
            # the server's PNG bytes, untouched: they carry the `parameters` chunk
            path = folder / f"sdcore-{image.seed}-{i}.png"
            path.write_bytes(image.png)
            paths.append(str(path))
            gallery.append((str(path), f"seed {image.seed}, {image.width}x{image.height}"))
        t = result.timings
        count = len(result.images)
        seeds = ", ".join(str(s) for s in result.seeds)
        # 0 s generating: not known (over HTTP, a job never seen running)
        split = (
            f" (queued {t.queued_seconds:.2f} s, generating {t.generate_seconds:.2f} s)"
            if t.generate_seconds > 0
            else ""
        )
        return Update(
            progress=(
                f"Done: {count} image{'s' if count != 1 else ''} in {t.total_seconds:.2f} s"
                f"{split}; seed{'s' if count != 1 else ''} used: {seeds}"
            ),
            preview=paths[0] if paths else None,  # the last picture of the job is its result
            gallery=gallery,
            files=paths,
            parameters="\n\n".join(image.parameters for image in result.images),
            message="",
            seed=result.seeds[0] if result.seeds else KEEP,
        )

    def _delete_old_results(self):
        """A page left open for days must not fill the disk: keep the newest job folders."""
        folders = sorted(self.output_dir.iterdir(), key=lambda p: p.stat().st_mtime)
        for old in folders[:-KEPT_RESULTS]:
            shutil.rmtree(old, ignore_errors=True)

    def close(self):
        """Delete every PNG written for download."""
        shutil.rmtree(self.output_dir, ignore_errors=True)


def settings_from_controls(
    prompt, negative_prompt, width, height, steps, guidance_scale, seed, random_seed, sampler, count
):
    """The controls' values as a GenerationRequest (an empty control: the model's default);
    the server resolves and checks it. Raises ValidationError for what the page alone can
    tell: a number a control cannot hold."""
    if not random_seed and seed is None:
        raise ValidationError("seed", "enter a number, or tick Random seed")
    return GenerationRequest(
        prompt=prompt or "",
        negative_prompt=negative_prompt or "",
        width=_whole(width, "width") or None,
        height=_whole(height, "height") or None,
        num_inference_steps=_whole(steps, "steps") or None,
        guidance_scale=None if guidance_scale is None else float(guidance_scale),
        seed=-1 if random_seed else _whole(seed, "seed"),
        sampler=sampler or None,
        num_images=_whole(count, "number of images") or 1,
    )


def _whole(value, name):
    """A control's number as an int (empty = 0, the server's default); fractions are refused."""
    if value is None or value == "":
        return 0
    number = float(value)
    if number != int(number):
        raise ValidationError(name, f"must be a whole number, not {value}")
    return int(number)


def _queued_text(position):
    if position < 0:  # not told (the HTTP API)
        return "Queued"
    if position == 0:
        return "Queued: next to run"
    return f"Queued: {position} job{'s' if position != 1 else ''} ahead"


PREVIEW_SIDE = 256  # previews are at most 64 px a side; shown larger so that they can be seen


def _progress_update(progress, request):
    update = Update(progress=f"Step {progress.step} of {progress.total}")
    if progress.preview_png:
        preview = Image.open(io.BytesIO(progress.preview_png)).convert("RGB")
        if _has_shape_of(preview, request.width, request.height):
            scale = PREVIEW_SIDE / max(preview.size)
            size = (round(preview.width * scale), round(preview.height * scale))
            update.preview = preview.resize(size, Image.Resampling.BILINEAR)
    return update


def _has_shape_of(preview, width, height):
    """Whether a preview has the proportions of the image asked for (0: not known, any will
    do). A preview that does not is not a picture of it, and is better left out than shown."""
    if not width or not height:
        return True
    asked, got = width / height, preview.width / preview.height
    return abs(got - asked) <= 0.25 * asked
