#!/usr/bin/env python3
"""Procedural captioned-image dataset of coloured shapes.

This is the training data of the default model shipped with sdcore: plain backgrounds with one or
two coloured shapes, each image paired with a caption that is true of it.

Every sample is a pure function of ``(seed, index)``: the per-sample generator is
``numpy.random.default_rng([seed, index])``, so the dataset is identical however many workers
produce it and in whatever order.

Library use::

    from make_shapes_dataset import sample, render, COLORS
    image, caption, meta = sample(seed=0, index=17)      # uint8 (128, 128, 3), str, dict
    again = render(meta, 128)                            # identical to image

Command line::

    python tools/make_shapes_dataset.py --out DIR --count 10000 --seed 0 --workers 2
    python tools/make_shapes_dataset.py --preview preview.png --seed 0

``DIR/images.npy`` holds ``(N, H, W, 3) uint8`` and ``DIR/captions.jsonl`` one
``{"index", "caption", "meta"}`` object per line, in index order.

Meta layout (all geometry is a fraction of the image side, x to the right, y down)::

    {"background": "white",
     "objects": [{"shape": "star", "color": "red", "center": [0.51, 0.49], "radius": 0.16,
                  "size": "medium", "position": "center", "solid": true}],
     "stated": {"size": false, "position": false, "background": false}}

``stated`` says which attributes the caption mentions. An attribute the caption leaves out takes
its default most of the time (``DEFAULTS``: medium size, centred single object, left/right for a
pair, white background, black where an object is white), so a model trained on the data learns
what an unspecified prompt should look like.

A fixed set of (object colour, shape, background) triples is never generated (``is_held_out``);
``held_out_prompts`` builds evaluation prompts from exactly those triples.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import struct
import sys
import time
import zlib
from concurrent.futures import ProcessPoolExecutor

import numpy as np

# --------------------------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------------------------

#: Named colours with their exact RGB values; every object and background pixel far from an edge
#: is exactly one of these.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (250, 220, 30),
    "orange": (250, 130, 20),
    "purple": (130, 40, 170),
    "pink": (250, 140, 200),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
    "gray": (128, 128, 128),
    "brown": (120, 70, 30),
    "cyan": (40, 210, 230),
}

#: Words a caption may use for each colour (the first is the canonical name).
COLOR_WORDS: dict[str, tuple[str, ...]] = {name: (name,) for name in COLORS}
COLOR_WORDS["gray"] = ("gray", "grey")

#: Shape names. ``SOLID_SHAPES`` are filled at their centre (a ring is not).
SHAPES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "star",
    "ring",
    "cross",
    "heart",
    "diamond",
    "hexagon",
)
SOLID_SHAPES = frozenset(s for s in SHAPES if s != "ring")

#: Named positions and their nominal centres (x, y), as fractions of the image side.
POSITIONS: dict[str, tuple[float, float]] = {
    "center": (0.5, 0.5),
    "left": (0.25, 0.5),
    "right": (0.75, 0.5),
    "top": (0.5, 0.25),
    "bottom": (0.5, 0.75),
    "top left": (0.25, 0.25),
    "top right": (0.75, 0.25),
    "bottom left": (0.25, 0.75),
    "bottom right": (0.75, 0.75),
}

#: Phrases a caption may use for each position.
POSITION_PHRASES: dict[str, tuple[str, ...]] = {
    "center": ("in the center", "in the centre", "in the middle"),
    "left": ("on the left", "on the left side"),
    "right": ("on the right", "on the right side"),
    "top": ("at the top", "at the top of the image"),
    "bottom": ("at the bottom", "at the bottom of the image"),
    "top left": ("in the top left corner", "in the top left", "in the upper left corner"),
    "top right": ("in the top right corner", "in the top right", "in the upper right corner"),
    "bottom left": ("in the bottom left corner", "in the bottom left", "in the lower left corner"),
    "bottom right": (
        "in the bottom right corner",
        "in the bottom right",
        "in the lower right corner",
    ),
}

#: Object radius (half extent) as a fraction of the image side.
SIZES: dict[str, float] = {"small": 0.1, "medium": 0.16, "large": 0.25}

#: What an attribute that the caption leaves out usually is.
DEFAULTS = {
    "size": "medium",
    "position": "center",
    "pair_positions": ("left", "right"),
    "background": "white",
    "background_if_white_object": "black",
}

DEFAULT_PROB = 0.8  # chance that an unstated attribute takes its default value
POSITION_JITTER = 0.035  # max offset of an object centre from its nominal position
RADIUS_JITTER = 0.08  # relative radius jitter
PAIR_SIZES = ("small", "medium")  # sizes used when there are two objects
PAIR_GAP = 0.03  # min gap between the extents of two objects

# Pairs of positions far enough apart for two objects.
_PAIR_POSITIONS = tuple(
    (a, b)
    for a in POSITIONS
    for b in POSITIONS
    if a != b and math.dist(POSITIONS[a], POSITIONS[b]) >= 0.35
)

# --------------------------------------------------------------------------------------------
# Held-out combinations
# --------------------------------------------------------------------------------------------

HELD_OUT_MODULUS = 12  # about one (colour, shape, background) triple in 12 is held out


def _triple_is_held_out(color: str, shape: str, background: str) -> bool:
    key = f"{color}|{shape}|{background}".encode()
    return zlib.crc32(key) % HELD_OUT_MODULUS == 0


#: All held-out (object colour, shape, background) triples, sorted.
HELD_OUT: tuple[tuple[str, str, str], ...] = tuple(
    sorted(
        (c, s, b)
        for c in COLORS
        for s in SHAPES
        for b in COLORS
        if b != c and _triple_is_held_out(c, s, b)
    )
)
_HELD_OUT_SET = frozenset(HELD_OUT)


def is_held_out(meta: dict) -> bool:
    """True when any object of ``meta`` forms a held-out (colour, shape, background) triple.

    ``sample`` never produces such a meta; ``held_out_prompts`` only produces such metas.
    """
    bg = meta["background"]
    return any((o["color"], o["shape"], bg) in _HELD_OUT_SET for o in meta["objects"])


# --------------------------------------------------------------------------------------------
# Rendering: signed distance functions, analytic coverage
# --------------------------------------------------------------------------------------------
# Shapes live in unit coordinates (radius 1, x right, y down). Each SDF returns the signed
# distance in those units; coverage of a pixel is clip(0.5 - distance_in_pixels, 0, 1), which is
# the box-filtered area of a straight edge crossing the pixel.


def _regular(n: int, radius: float, start_deg: float) -> np.ndarray:
    a = np.deg2rad(start_deg + 360.0 * np.arange(n) / n)
    return np.stack([radius * np.cos(a), radius * np.sin(a)], axis=1)


def _star(points: int, outer: float, inner: float, dy: float) -> np.ndarray:
    a = np.deg2rad(-90.0 + 180.0 * np.arange(2 * points) / points)
    r = np.where(np.arange(2 * points) % 2 == 0, outer, inner)
    return np.stack([r * np.cos(a), r * np.sin(a) + dy], axis=1)


def _cross(half_width: float, length: float) -> np.ndarray:
    w, L = half_width, length
    return np.array(
        [
            (-w, -L),
            (w, -L),
            (w, -w),
            (L, -w),
            (L, w),
            (w, w),
            (w, L),
            (-w, L),
            (-w, w),
            (-L, w),
            (-L, -w),
            (-w, -w),
        ]
    )


_TRI_R = 1.1
_POLYGONS: dict[str, np.ndarray] = {
    "square": np.array([(-0.76, -0.76), (0.76, -0.76), (0.76, 0.76), (-0.76, 0.76)]),
    "triangle": _regular(3, _TRI_R, -90.0) + np.array([0.0, 0.2]),
    "star": _star(5, 1.05, 0.47, 0.1),
    "cross": _cross(0.29, 0.9),
    "diamond": np.array([(0.0, -1.05), (0.72, 0.0), (0.0, 1.05), (-0.72, 0.0)]),
    "hexagon": _regular(6, 0.94, 0.0),
}
_POLYGONS = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in _POLYGONS.items()}

# Half extent of each shape's bounding box in unit coordinates (used for cropping and bounds).
EXTENT = 1.05


def _sd_polygon(px: np.ndarray, py: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Exact signed distance to a simple polygon (negative inside)."""
    d = (px - v[0, 0]) ** 2 + (py - v[0, 1]) ** 2
    inside = np.zeros(px.shape, dtype=bool)
    n = len(v)
    for i in range(n):
        j = i - 1
        ex, ey = float(v[j, 0] - v[i, 0]), float(v[j, 1] - v[i, 1])
        wx, wy = px - float(v[i, 0]), py - float(v[i, 1])
        t = np.clip((wx * ex + wy * ey) * (1.0 / (ex * ex + ey * ey)), 0.0, 1.0)
        bx, by = wx - ex * t, wy - ey * t
        np.minimum(d, bx * bx + by * by, out=d)
        c1 = py >= float(v[i, 1])
        c2 = py < float(v[j, 1])
        c3 = ex * wy > ey * wx
        inside ^= (c1 & c2 & c3) | ~(c1 | c2 | c3)
    d = np.sqrt(d)
    return np.where(inside, -d, d)


_HEART_K = 0.64  # unit coordinates -> heart coordinates
_HEART_CY = 0.552  # vertical centre of the heart in its own coordinates


def _sd_heart(px: np.ndarray, py: np.ndarray) -> np.ndarray:
    # Heart with its tip at the origin, lobes up (y up), about 1.2 wide and 1.1 tall.
    x = np.abs(px) * _HEART_K
    y = _HEART_CY - py * _HEART_K
    upper = np.sqrt((x - 0.25) ** 2 + (y - 0.75) ** 2) - math.sqrt(2.0) / 4.0
    m = 0.5 * np.maximum(x + y, 0.0)
    lower = np.sqrt(np.minimum(x**2 + (y - 1.0) ** 2, (x - m) ** 2 + (y - m) ** 2))
    lower = lower * np.sign(x - y)
    return np.where(x + y > 1.0, upper, lower) / _HEART_K


def shape_sdf(shape: str, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """Signed distance (unit coordinates, negative inside) of ``shape`` at points (px, py)."""
    if shape == "circle":
        return np.sqrt(px * px + py * py) - 0.88
    if shape == "ring":
        return np.abs(np.sqrt(px * px + py * py) - 0.7) - 0.22
    if shape == "heart":
        return _sd_heart(px, py)
    return _sd_polygon(px, py, _POLYGONS[shape])


def render(meta: dict, size: int = 128) -> np.ndarray:
    """Draw ``meta`` (as produced by ``sample``) into a ``(size, size, 3) uint8`` image."""
    bg = np.asarray(COLORS[meta["background"]], dtype=np.float32)
    img = np.empty((size, size, 3), dtype=np.float32)
    img[...] = bg
    for obj in meta["objects"]:
        cx, cy = obj["center"]
        r = obj["radius"] * size
        cxp, cyp = cx * size, cy * size
        half = EXTENT * r + 1.5
        x0, x1 = max(0, math.floor(cxp - half)), min(size, math.ceil(cxp + half))
        y0, y1 = max(0, math.floor(cyp - half)), min(size, math.ceil(cyp + half))
        if x0 >= x1 or y0 >= y1:
            continue
        xs = ((np.arange(x0, x1, dtype=np.float32) + 0.5) - cxp) / r
        ys = ((np.arange(y0, y1, dtype=np.float32) + 0.5) - cyp) / r
        px, py = np.meshgrid(xs, ys)
        d = shape_sdf(obj["shape"], px, py) * r
        a = np.clip(0.5 - d, 0.0, 1.0)[..., None]
        col = np.asarray(COLORS[obj["color"]], dtype=np.float32)
        region = img[y0:y1, x0:x1]
        region += (col - region) * a
    return np.rint(img).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Sampling scenes
# --------------------------------------------------------------------------------------------


def _pick(rng: np.random.Generator, seq):
    return seq[int(rng.integers(len(seq)))]


def _make_object(rng, shape, color, size_name, pos_name) -> dict:
    radius = SIZES[size_name] * (1.0 + rng.uniform(-RADIUS_JITTER, RADIUS_JITTER))
    nx, ny = POSITIONS[pos_name]
    lo, hi = EXTENT * radius + 0.01, 1.0 - EXTENT * radius - 0.01
    cx = float(np.clip(nx + rng.uniform(-POSITION_JITTER, POSITION_JITTER), lo, hi))
    cy = float(np.clip(ny + rng.uniform(-POSITION_JITTER, POSITION_JITTER), lo, hi))
    return {
        "shape": shape,
        "color": color,
        "center": [round(cx, 4), round(cy, 4)],
        "radius": round(float(radius), 4),
        "size": size_name,
        "position": pos_name,
        "solid": shape in SOLID_SHAPES,
    }


def _apart(a: dict, b: dict) -> bool:
    gap = EXTENT * (a["radius"] + b["radius"]) + PAIR_GAP
    return math.dist(a["center"], b["center"]) >= gap


def _choose_background(rng, objects: list[dict], stated: bool) -> str | None:
    used = {o["color"] for o in objects}
    allowed = [
        c
        for c in COLORS
        if c not in used and not any((o["color"], o["shape"], c) in _HELD_OUT_SET for o in objects)
    ]
    if not allowed:
        return None
    if not stated and rng.random() < DEFAULT_PROB:
        default = (
            DEFAULTS["background_if_white_object"] if "white" in used else DEFAULTS["background"]
        )
        if default in allowed:
            return default
    return _pick(rng, allowed)


def _unstated(rng, default, choices):
    return default if rng.random() < DEFAULT_PROB else _pick(rng, choices)


def _scene(rng: np.random.Generator) -> tuple[dict, str]:
    """Draw a scene (meta without caption) and its kind: 'one', 'two_same' or 'two_diff'."""
    u = rng.random()
    kind = "one" if u < 0.6 else ("two_same" if u < 0.76 else "two_diff")
    stated = {
        "size": bool(rng.random() < 0.5),
        "position": bool(rng.random() < 0.5),
        "background": bool(rng.random() < 0.6),
    }
    sizes = list(SIZES)
    for _attempt in range(100):
        if kind == "one":
            shape, color = _pick(rng, SHAPES), _pick(rng, list(COLORS))
            size = _pick(rng, sizes) if stated["size"] else _unstated(rng, "medium", sizes)
            pos_list = list(POSITIONS)
            pos = _pick(rng, pos_list) if stated["position"] else _unstated(rng, "center", pos_list)
            objects = [_make_object(rng, shape, color, size, pos)]
        else:
            shape1, color1 = _pick(rng, SHAPES), _pick(rng, list(COLORS))
            if kind == "two_same":
                shape2, color2 = shape1, color1
            else:
                shape2, color2 = _pick(rng, SHAPES), _pick(rng, list(COLORS))
                if (shape2, color2) == (shape1, color1):
                    continue
            if stated["size"]:
                s1 = _pick(rng, PAIR_SIZES)
                s2 = s1 if kind == "two_same" else _pick(rng, PAIR_SIZES)
            else:
                s1 = s2 = _unstated(rng, "medium", PAIR_SIZES)
            if stated["position"]:
                p1, p2 = _pick(rng, _PAIR_POSITIONS)
            else:
                p1, p2 = _unstated(rng, DEFAULTS["pair_positions"], _PAIR_POSITIONS)
            objects = [
                _make_object(rng, shape1, color1, s1, p1),
                _make_object(rng, shape2, color2, s2, p2),
            ]
            if not _apart(objects[0], objects[1]):
                continue
        bg = _choose_background(rng, objects, stated["background"])
        if bg is None:
            continue
        meta = {"background": bg, "objects": objects, "stated": stated}
        return meta, kind
    raise RuntimeError("could not draw a scene")  # pragma: no cover - practically unreachable


# --------------------------------------------------------------------------------------------
# Captions
# --------------------------------------------------------------------------------------------


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _plural(shape: str) -> str:
    return shape + ("es" if shape.endswith(("s", "x")) else "s")


def _color_word(rng, color: str) -> str:
    words = COLOR_WORDS[color]
    return words[0] if len(words) == 1 or rng.random() < 0.7 else _pick(rng, words[1:])


def _noun_phrase(rng, obj: dict, with_size: bool, with_article: bool = True) -> str:
    words = ([obj["size"]] if with_size else []) + [_color_word(rng, obj["color"]), obj["shape"]]
    text = " ".join(words)
    return f"{_article(text)} {text}" if with_article else text


def _bg_suffix(rng, bg_word: str) -> str:
    forms = (
        " on {a} {c} background",
        " on {a} {c} background",
        " against {a} {c} background",
        " with {a} {c} background",
        ", {c} background",
        " on {c}",
    )
    return _pick(rng, forms).format(a=_article(bg_word), c=bg_word)


_PREFIXES = ("a picture of", "an image of", "a drawing of", "an illustration of", "there is")


def _caption_one(rng, meta: dict) -> str:
    st = meta["stated"]
    obj = meta["objects"][0]
    bg_word = _color_word(rng, meta["background"])
    pos = _pick(rng, POSITION_PHRASES[obj["position"]]) if st["position"] else ""
    style = rng.random()
    if style < 0.2:
        # terse comma style: "small red circle, top left, blue background"
        parts = [_noun_phrase(rng, obj, st["size"], with_article=False)]
        if st["position"]:
            parts.append(obj["position"] if rng.random() < 0.5 else pos)
        if st["background"]:
            parts.append(f"{bg_word} background")
        return ", ".join(parts)
    if style < 0.3 and st["background"]:
        # "a blue background with a red circle in the center"
        text = f"{_article(bg_word)} {bg_word} background with {_noun_phrase(rng, obj, st['size'])}"
        return text + (f" {pos}" if pos else "")
    if style < 0.4 and pos:
        # "in the top left corner, a small red heart"
        text = f"{pos}, {_noun_phrase(rng, obj, st['size'])}"
        return text + (_bg_suffix(rng, bg_word) if st["background"] else "")
    text = _noun_phrase(rng, obj, st["size"])
    if style > 0.8:
        text = f"{_pick(rng, _PREFIXES)} {text}"
    if pos:
        text += f" {pos}"
    if st["background"]:
        text += _bg_suffix(rng, bg_word)
    return text


def _relation(a: dict, b: dict) -> str | None:
    dx = b["center"][0] - a["center"][0]
    dy = b["center"][1] - a["center"][1]
    if dx >= 0.3 and abs(dy) < 0.1:
        return "to the left of"
    if dx <= -0.3 and abs(dy) < 0.1:
        return "to the right of"
    if dy >= 0.3 and abs(dx) < 0.1:
        return "above"
    if dy <= -0.3 and abs(dx) < 0.1:
        return "below"
    return None


def _caption_two(rng, meta: dict, kind: str) -> str:
    st = meta["stated"]
    a, b = meta["objects"]
    bg_word = _color_word(rng, meta["background"])
    bg = _bg_suffix(rng, bg_word) if st["background"] else ""
    if kind == "two_same":
        words = ([a["size"]] if st["size"] else []) + [_color_word(rng, a["color"])]
        text = "two " + " ".join(words + [_plural(a["shape"])])
        if rng.random() < 0.15:
            text = f"{_pick(rng, _PREFIXES[:4])} {text}"
        if st["position"]:
            pa = _pick(rng, POSITION_PHRASES[a["position"]])
            pb = _pick(rng, POSITION_PHRASES[b["position"]])
            text += f", one {pa} and one {pb}"
        return text + bg
    np_a = _noun_phrase(rng, a, st["size"])
    np_b = _noun_phrase(rng, b, st["size"])
    if st["position"]:
        rel = _relation(a, b)
        if rel is not None and rng.random() < 0.4:
            return f"{np_a} {rel} {np_b}{bg}"
        pa = _pick(rng, POSITION_PHRASES[a["position"]])
        pb = _pick(rng, POSITION_PHRASES[b["position"]])
        if rng.random() < 0.2:
            text = ", ".join(
                [
                    _noun_phrase(rng, a, st["size"], with_article=False) + " " + pa,
                    _noun_phrase(rng, b, st["size"], with_article=False) + " " + pb,
                ]
            )
            return text + (f", {bg_word} background" if st["background"] else "")
        return f"{np_a} {pa} and {np_b} {pb}{bg}"
    style = rng.random()
    if style < 0.2:
        text = ", ".join(
            [
                _noun_phrase(rng, a, st["size"], with_article=False),
                _noun_phrase(rng, b, st["size"], with_article=False),
            ]
        )
        return text + (f", {bg_word} background" if st["background"] else "")
    text = f"{np_a} and {np_b}"
    if style > 0.85:
        text = f"{_pick(rng, _PREFIXES[:4])} {text}"
    return text + bg


def sample_meta(seed: int, index: int) -> tuple[str, dict]:
    """Caption and meta of sample ``index`` of the dataset with ``seed`` (no rendering)."""
    rng = np.random.default_rng([int(seed), int(index)])
    meta, kind = _scene(rng)
    caption = _caption_one(rng, meta) if kind == "one" else _caption_two(rng, meta, kind)
    return caption, meta


def sample(seed: int, index: int, size: int = 128) -> tuple[np.ndarray, str, dict]:
    """Image ``(size, size, 3) uint8``, caption and meta of sample ``index``."""
    caption, meta = sample_meta(seed, index)
    return render(meta, size), caption, meta


def held_out_prompts(n: int, seed: int = 0) -> list[dict]:
    """``n`` evaluation prompts built from held-out (colour, shape, background) triples.

    Each item is ``{"prompt": str, "meta": dict}``; ``render(item["meta"])`` draws a reference
    image. The triples never occur in training images, so no training caption has this wording.
    Size and position are left out of the prompt and set to their defaults in the meta.
    """
    rng = np.random.default_rng([int(seed), 0x5EED])
    order = rng.permutation(len(HELD_OUT))
    forms = (
        "{A} {c} {s} on {B} {b} background",
        "{c} {s}, {b} background",
        "{A} {c} {s} against {B} {b} background",
    )
    out = []
    for k in range(n):
        color, shape, bg = HELD_OUT[int(order[k % len(order)])]
        obj = {
            "shape": shape,
            "color": color,
            "center": list(POSITIONS["center"]),
            "radius": SIZES["medium"],
            "size": "medium",
            "position": "center",
            "solid": shape in SOLID_SHAPES,
        }
        meta = {
            "background": bg,
            "objects": [obj],
            "stated": {"size": False, "position": False, "background": True},
        }
        prompt = forms[k % len(forms)].format(
            c=color, s=shape, b=bg, A=_article(color), B=_article(bg)
        )
        out.append({"prompt": prompt, "meta": meta})
    return out


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


def write_png(path: str, image: np.ndarray) -> None:
    """Write an ``(H, W, 3) uint8`` array as an RGB PNG."""
    image = np.ascontiguousarray(image, dtype=np.uint8)
    h, w, _ = image.shape
    raw = np.concatenate([np.zeros((h, 1), np.uint8), image.reshape(h, w * 3)], axis=1)

    def chunk(tag: bytes, data: bytes) -> bytes:
        body = tag + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.write(chunk(b"IHDR", header))
        f.write(chunk(b"IDAT", zlib.compress(raw.tobytes(), 6)))
        f.write(chunk(b"IEND", b""))


def preview(path: str, seed: int, size: int = 128, count: int = 16, start: int = 0) -> list[str]:
    """Write a grid of ``count`` samples to ``path`` and return their captions."""
    cols = math.ceil(math.sqrt(count))
    rows = math.ceil(count / cols)
    gap = 4
    grid = np.full((rows * (size + gap) + gap, cols * (size + gap) + gap, 3), 60, np.uint8)
    captions = []
    for k in range(count):
        image, caption, _ = sample(seed, start + k, size)
        r, c = divmod(k, cols)
        y, x = gap + r * (size + gap), gap + c * (size + gap)
        grid[y : y + size, x : x + size] = image
        captions.append(caption)
    write_png(path, grid)
    return captions


def _work(args: tuple[str, int, int, int, int]) -> list[str]:
    path, seed, size, start, stop = args
    images = np.load(path, mmap_mode="r+")
    lines = []
    for i in range(start, stop):
        image, caption, meta = sample(seed, i, size)
        images[i] = image
        lines.append(json.dumps({"index": i, "caption": caption, "meta": meta}))
    images.flush()
    del images
    return lines


def build(out: str, count: int, seed: int, size: int = 128, workers: int = 1) -> None:
    """Write ``out/images.npy`` and ``out/captions.jsonl`` for indices ``0..count-1``."""
    os.makedirs(out, exist_ok=True)
    img_path = os.path.join(out, "images.npy")
    images = np.lib.format.open_memmap(
        img_path, mode="w+", dtype=np.uint8, shape=(count, size, size, 3)
    )
    del images
    chunk = max(1, min(512, -(-count // max(1, workers * 8))))
    tasks = [(img_path, seed, size, s, min(count, s + chunk)) for s in range(0, count, chunk)]
    tmp_path = os.path.join(out, "captions.jsonl.tmp")
    with open(tmp_path, "w") as f:
        if workers <= 1:
            f.writelines("\n".join(lines) + "\n" for lines in map(_work, tasks))
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                f.writelines("\n".join(lines) + "\n" for lines in pool.map(_work, tasks))
    os.replace(tmp_path, os.path.join(out, "captions.jsonl"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", help="output directory (images.npy, captions.jsonl)")
    p.add_argument("--count", type=int, default=10000, help="number of samples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=128, help="image side in pixels")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--preview", metavar="PNG", help="write a 4x4 grid of samples to this PNG")
    p.add_argument("--preview-start", type=int, default=0, help="first index in the preview")
    args = p.parse_args(argv)
    if not args.out and not args.preview:
        p.error("give --out and/or --preview")
    if args.preview:
        caps = preview(args.preview, args.seed, args.size, 16, args.preview_start)
        for k, cap in enumerate(caps):
            r, c = divmod(k, 4)
            print(f"[{r},{c}] #{args.preview_start + k}: {cap}")
    if args.out:
        t0 = time.perf_counter()
        build(args.out, args.count, args.seed, args.size, args.workers)
        dt = time.perf_counter() - t0
        print(
            f"wrote {args.count} samples ({args.size}x{args.size}) to {args.out} "
            f"in {dt:.1f} s with {args.workers} worker(s)",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
