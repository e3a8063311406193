"""One generation request, resolved against the loaded model and checked in one place.

    req = GenerationRequest("a red circle", width=512, seed=7)
    req = pipe.resolve(req)          # the same as req.resolve(pipe)
    images = pipe.generate([req])

``resolve`` fills what the request leaves unset (None) from the model: its native size,
its number of steps, its guidance and its sampler; a seed of None or -1 becomes a random
one. It then checks every field against the limits below and the model's own rules, and
raises ``ValidationError(field, message)`` on the first bad one. What it returns is
complete; Pipeline, the CLI, the gRPC service and the page build a request and leave the
checking to it, so that a rule lives here and nowhere else.

The limits of a request (``LIMITS``) are the engine's; a server may narrow them
(``LIMITS.narrowed(max_steps=150)``) but never widen them. The model's rules
(``ModelRules``) come from its config: the UNet halves the latent size at each of its
levels but the last, so a side must be a multiple of ``vae factor * 2 ** (levels - 1)``
pixels (32 for the shipped model, 64 for SD 1.5), and a prompt is counted in 75-token
chunks by the model's own tokenizer after BREAK and emphasis are read.

Fields kept for what comes next (``init_image``, ``mask_image``, ``strength``, ``loras``)
are refused by name when set, so that nothing a caller asks for is dropped silently.
"""

import dataclasses
import math
import operator
import secrets

from sdcore.samplers import SAMPLERS

DEFAULT_GUIDANCE = 7.5  # guidance_scale of a model that names none (diffusers' default)
DEFAULT_STEPS = 20
DEFAULT_SAMPLER = "euler_a"
ECHO_CHARS = 64  # user text quoted back in an error message is cut to this length

# Fields a request may carry but the engine does not implement yet.
NOT_SUPPORTED_YET = ("init_image", "mask_image", "strength", "loras")


class ValidationError(ValueError):
    """A request field with a bad value. ``str(e)`` starts with the field's name;
    ``e.field`` is the name and ``e.detail`` the message without it."""

    def __init__(self, field, message):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.detail = message


def echo(text, limit=ECHO_CHARS):
    """User text as an error message may quote it: repr, cut to `limit` characters."""
    text = str(text)
    if len(text) <= limit:
        return repr(text)
    return repr(text[:limit]) + f"... ({len(text)} characters)"


def random_seed():
    """A fresh seed in [0, 2**32), the range front ends show and accept."""
    return secrets.randbits(32)


@dataclasses.dataclass(frozen=True)
class Limits:
    """The bounds of any request, whatever the model. ``narrowed`` gives tighter ones."""

    min_size: int = 64
    max_size: int = 2048
    max_steps: int = 1000
    max_guidance: float = 50.0
    max_images: int = 16
    max_seed: int = 2**64 - 1  # every seed s .. s + num_images - 1 (the engine's are uint64)
    max_prompt_chars: int = 20000
    max_prompt_chunks: int = 16  # 75-token chunks after BREAK: 1200 tokens

    def narrowed(self, **upper):
        """These limits with each given upper bound applied (None: left as it is); a bound
        above the engine's own leaves the engine's."""
        changes = {}
        for name, value in upper.items():
            if value is not None:
                changes[name] = min(getattr(self, name), value)
        return dataclasses.replace(self, **changes)


LIMITS = Limits()


@dataclasses.dataclass(frozen=True)
class ModelRules:
    """What one loaded model allows and defaults to. ``prompt_chunks(text)`` counts the
    75-token chunks of a prompt with the model's tokenizer (and raises ValidationError on
    the prompt when its emphasis is out of bounds)."""

    name: str
    width: int
    height: int
    size_multiple: int
    prompt_chunks: object
    num_inference_steps: int = DEFAULT_STEPS
    guidance_scale: float = DEFAULT_GUIDANCE
    sampler: str = DEFAULT_SAMPLER
    samplers: tuple = SAMPLERS
    num_train_timesteps: int = 1000
    size_reason: str = ""  # why sides are multiples of size_multiple, for the error message


@dataclasses.dataclass(frozen=True)
class GenerationRequest:
    """What a caller asks for. None: the model's default (seed None or -1: random)."""

    prompt: str = ""
    negative_prompt: str = ""
    width: int | None = None
    height: int | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    seed: int | None = None
    sampler: str | None = None
    num_images: int = 1
    model: str | None = None
    init_image: object = None
    mask_image: object = None
    strength: float | None = None
    loras: object = None

    @property
    def seeds(self):
        """The seed of each image: seed, seed + 1, ... (after resolve)."""
        return [self.seed + i for i in range(self.num_images)]

    def resolve(self, model, limits=None):
        """This request complete and checked against `model` (a Pipeline, anything with
        ``rules``, or a ModelRules) and `limits` (default LIMITS). Raises ValidationError
        naming the first bad field."""
        rules = model if isinstance(model, ModelRules) else model.rules
        limits = LIMITS if limits is None else limits
        for field in NOT_SUPPORTED_YET:
            if getattr(self, field) is not None:
                raise ValidationError(field, "not supported yet")
        if self.model not in (None, "", rules.name):
            raise ValidationError(
                "model", f"unknown model {echo(self.model)}; this one is {rules.name!r}"
            )
        prompt = _check_prompt("prompt", self.prompt, rules, limits)
        negative = _check_prompt("negative_prompt", self.negative_prompt, rules, limits)
        width = _check_size("width", _default(self.width, rules.width), rules, limits)
        height = _check_size("height", _default(self.height, rules.height), rules, limits)
        steps = _check_int(
            "num_inference_steps",
            _default(self.num_inference_steps, rules.num_inference_steps),
            1,
            min(limits.max_steps, rules.num_train_timesteps),
        )
        guidance = check_guidance(_default(self.guidance_scale, rules.guidance_scale), limits)
        sampler = _default(self.sampler, rules.sampler)
        if sampler not in rules.samplers:
            raise ValidationError(
                "sampler",
                f"unknown sampler {echo(sampler)}; choose one of {', '.join(rules.samplers)}",
            )
        num_images = _check_int("num_images", self.num_images, 1, limits.max_images)
        seed = _check_seed(self.seed, num_images, limits)
        return dataclasses.replace(
            self,
            prompt=prompt,
            negative_prompt=negative,
            width=width,
            height=height,
            num_inference_steps=steps,
            guidance_scale=guidance,
            seed=seed,
            sampler=sampler,
            num_images=num_images,
            model=rules.name,
        )


def _default(value, default):
    return default if value is None else value


def _as_int(field, value):
    if isinstance(value, bool):
        raise ValidationError(field, f"must be an integer, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise ValidationError(field, f"must be an integer, got {echo(value)}") from None


def _check_int(field, value, low, high):
    value = _as_int(field, value)
    if not low <= value <= high:
        raise ValidationError(field, f"must be between {low} and {high}, got {value}")
    return value


def _check_size(field, value, rules, limits):
    value = _as_int(field, value)
    m = rules.size_multiple
    low = -(-limits.min_size // m) * m
    high = limits.max_size // m * m
    if value % m or not low <= value <= high:
        why = f" ({rules.size_reason})" if rules.size_reason else ""
        raise ValidationError(
            field, f"must be a multiple of {m}{why} between {low} and {high}, got {value}"
        )
    return value


def check_guidance(value, limits=LIMITS):
    """A guidance scale as a float, or ValidationError on guidance_scale."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValidationError("guidance_scale", f"must be a number, got {echo(value)}")
    value = float(value)
    if not math.isfinite(value) or not 0.0 <= value <= limits.max_guidance:
        raise ValidationError(
            "guidance_scale",
            f"must be a finite number between 0 and {limits.max_guidance:g}, got {value}",
        )
    return value


def _check_seed(seed, num_images, limits):
    if seed is None or (not isinstance(seed, bool) and seed == -1):
        return random_seed()
    seed = _as_int("seed", seed)
    top = limits.max_seed - (num_images - 1)
    if not 0 <= seed <= top:
        more = (
            f" (seed + num_images - 1 must be at most {limits.max_seed})" if num_images > 1 else ""
        )
        raise ValidationError(
            "seed", f"must be -1 (random) or between 0 and {top}{more}, got {seed}"
        )
    return seed


def _check_prompt(field, text, rules, limits):
    if text is None:
        text = ""
    if not isinstance(text, str):
        raise ValidationError(field, f"must be a string, got {type(text).__name__}")
    if len(text) > limits.max_prompt_chars:
        raise ValidationError(field, f"{len(text)} characters; at most {limits.max_prompt_chars}")
    if "\x00" in text:
        raise ValidationError(field, "contains a NUL character")
    try:
        chunks = rules.prompt_chunks(text)
    except ValidationError as e:
        raise ValidationError(field, e.detail) from None
    if chunks > limits.max_prompt_chunks:
        raise ValidationError(
            field,
            f"{chunks} chunks of 75 tokens (BREAK starts a new one); at most "
            f"{limits.max_prompt_chunks}",
        )
    return text
