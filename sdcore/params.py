"""Generation parameters: validation with messages that name the field, and the
infotext that other Stable Diffusion tools read from a PNG's ``parameters`` chunk."""

import math
import secrets

from sdcore.samplers import SAMPLERS

MIN_SIZE, MAX_SIZE = 64, 2048
MAX_STEPS = 500
MAX_IMAGES = 16
MAX_PROMPT_CHARS = 20000

# The names the common front ends write in infotext.
SAMPLER_DISPLAY = {
    "ddim": "DDIM",
    "euler": "Euler",
    "euler_a": "Euler a",
    "dpmpp_2m": "DPM++ 2M",
    "dpmpp_2m_karras": "DPM++ 2M Karras",
    "pndm": "PNDM",
    "lms": "LMS",
}


def random_seed():
    """A fresh seed in [0, 2**32), the range front ends show and accept."""
    return secrets.randbits(32)


def check_prompt(value, field="prompt"):
    if not isinstance(value, str):
        raise ValueError(f"{field}: must be a string, got {type(value).__name__}")
    if len(value) > MAX_PROMPT_CHARS:
        raise ValueError(f"{field}: longer than {MAX_PROMPT_CHARS} characters")
    if "\x00" in value:
        raise ValueError(f"{field}: contains a NUL character")
    return value


def check_size(value, field):
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{field}: must be an integer, got {value!r}")
    if value % 8 or not MIN_SIZE <= value <= MAX_SIZE:
        raise ValueError(
            f"{field}: must be a multiple of 8 between {MIN_SIZE} and {MAX_SIZE}, got {value}"
        )
    return value


def check_steps(value, field="num_inference_steps"):
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{field}: must be an integer, got {value!r}")
    if not 1 <= value <= MAX_STEPS:
        raise ValueError(f"{field}: must be between 1 and {MAX_STEPS}, got {value}")
    return value


def check_guidance(value, field="guidance_scale"):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{field}: must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{field}: must be finite, got {value}")
    if not 0.0 <= value <= 100.0:
        raise ValueError(f"{field}: must be between 0 and 100, got {value}")
    return value


def check_seed(value, field="seed"):
    """None or -1: a random seed. Otherwise an integer in [0, 2**64)."""
    if value is None or value == -1:
        return random_seed()
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{field}: must be an integer, got {value!r}")
    if not 0 <= value < 2**64:
        raise ValueError(f"{field}: must be -1 (random) or between 0 and 2**64 - 1, got {value}")
    return value


def check_sampler(value, field="sampler"):
    if value not in SAMPLERS:
        raise ValueError(f"{field}: unknown sampler {value!r}; choose one of {', '.join(SAMPLERS)}")
    return value


def check_num_images(value, field="num_images"):
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{field}: must be an integer, got {value!r}")
    if not 1 <= value <= MAX_IMAGES:
        raise ValueError(f"{field}: must be between 1 and {MAX_IMAGES}, got {value}")
    return value


def format_number(x):
    """7.0 -> "7", 7.5 -> "7.5": as front ends print CFG scale."""
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def infotext(
    prompt, negative_prompt, steps, sampler, guidance_scale, seed, width, height, model, version
):
    """The ``parameters`` text: prompt, optional negative prompt line, then settings."""
    lines = [prompt]
    if negative_prompt:
        lines.append(f"Negative prompt: {negative_prompt}")
    lines.append(
        f"Steps: {steps}, Sampler: {SAMPLER_DISPLAY.get(sampler, sampler)}, "
        f"CFG scale: {format_number(guidance_scale)}, Seed: {seed}, Size: {width}x{height}, "
        f"Model: {model}, Version: sdcore {version}"
    )
    return "\n".join(lines)
