"""The infotext that other Stable Diffusion tools read from a PNG's ``parameters`` chunk.
(A request's fields are checked in sdcore.request.)"""

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
