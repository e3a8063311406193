#!/usr/bin/env python3
"""Score a shapes model on held-out prompts: does the image show the colour and shape asked for?

The prompts come from ``held_out_prompts`` of ``tools/make_shapes_dataset.py``: (object colour,
shape, background) triples that never occur in the training data, one medium object in the
centre. Each prompt is drawn once (seed = its index) by sdcore's ``Pipeline`` or, with
``--engine diffusers``, by diffusers' ``StableDiffusionPipeline`` on the same folder, and the image
is scored with no model:

- background: the named colour (``COLORS``) most common among the pixels near the border;
- foreground: the largest connected region of pixels far from that background colour; its colour
  is the named colour most common in the region's interior;
- shape: the region's coverage (alpha, from the foreground and background colours) is centred on
  its centroid and scaled to unit area, then compared with each shape rendered the same way; the
  shape of the highest soft IoU wins.

Usage::

    python tools/eval_default_model.py --model MODEL_DIR                     # sdcore
    python tools/eval_default_model.py --model MODEL_DIR --engine diffusers --device cuda
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import make_shapes_dataset as ds  # noqa: E402

COLOR_NAMES = list(ds.COLORS)
COLOR_RGB = np.array([ds.COLORS[c] for c in COLOR_NAMES], dtype=np.float32)  # (K, 3)

BORDER = 3  # pixels of each edge that count as "near the border"
FOREGROUND_DISTANCE = 45.0  # RGB distance from the background colour; named colours are >= 90 apart
GRID = 64  # side of the canonical coverage image
GRID_EXTENT = 1.15  # the grid spans [-GRID_EXTENT, GRID_EXTENT] in units of sqrt(area)


def nearest_color(pixels: np.ndarray) -> np.ndarray:
    """Index into ``COLOR_NAMES`` of the nearest named colour of each ``(..., 3)`` pixel."""
    p = np.asarray(pixels, dtype=np.float32)
    d = ((p[..., None, :] - COLOR_RGB) ** 2).sum(-1)  # (..., K)
    return d.argmin(-1)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """Largest 4-connected region of a boolean mask (label propagation, numpy only)."""
    h, w = mask.shape
    if not mask.any():
        return mask
    labels = np.where(mask, np.arange(1, h * w + 1).reshape(h, w), 0)
    while True:
        m = labels.copy()
        m[1:] = np.maximum(m[1:], labels[:-1])
        m[:-1] = np.maximum(m[:-1], labels[1:])
        m[:, 1:] = np.maximum(m[:, 1:], labels[:, :-1])
        m[:, :-1] = np.maximum(m[:, :-1], labels[:, 1:])
        m = np.where(mask, m, 0)
        if np.array_equal(m, labels):
            break
        labels = m
    ids, counts = np.unique(labels[mask], return_counts=True)
    return labels == ids[counts.argmax()]


def _erode(mask: np.ndarray) -> np.ndarray:
    out = mask.copy()
    out[1:] &= mask[:-1]
    out[:-1] &= mask[1:]
    out[:, 1:] &= mask[:, :-1]
    out[:, :-1] &= mask[:, 1:]
    out[0], out[-1], out[:, 0], out[:, -1] = False, False, False, False
    return out


def _dilate(mask: np.ndarray) -> np.ndarray:
    out = mask.copy()
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    out[:, 1:] |= mask[:, :-1]
    out[:, :-1] |= mask[:, 1:]
    return out


def canonical(alpha: np.ndarray) -> np.ndarray | None:
    """Coverage resampled on a ``GRID``-square grid centred on its centroid, scaled so that the
    area is 1 (bilinear sampling); None when there is nothing."""
    area = float(alpha.sum())
    if area < 4.0:
        return None
    h, w = alpha.shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64) + 0.5
    cx, cy = float((alpha * xs).sum() / area), float((alpha * ys).sum() / area)
    scale = np.sqrt(area)
    u = (np.arange(GRID) + 0.5) / GRID * 2.0 * GRID_EXTENT - GRID_EXTENT
    px = cx + u[None, :] * scale - 0.5  # (GRID, GRID) sample positions in pixel indices
    py = cy + u[:, None] * scale - 0.5
    px, py = np.broadcast_to(px, (GRID, GRID)), np.broadcast_to(py, (GRID, GRID))
    x0, y0 = np.floor(px).astype(int), np.floor(py).astype(int)
    fx, fy = px - x0, py - y0
    padded = np.pad(alpha, 1)  # outside the image is background

    def at(yy, xx):
        return padded[np.clip(yy + 1, 0, h + 1), np.clip(xx + 1, 0, w + 1)]

    return (
        at(y0, x0) * (1 - fx) * (1 - fy)
        + at(y0, x0 + 1) * fx * (1 - fy)
        + at(y0 + 1, x0) * (1 - fx) * fy
        + at(y0 + 1, x0 + 1) * fx * fy
    )


@functools.cache
def templates() -> dict[str, np.ndarray]:
    """Canonical coverage of each shape, drawn large (white on black)."""
    out = {}
    for shape in ds.SHAPES:
        meta = {
            "background": "black",
            "objects": [{"shape": shape, "color": "white", "center": [0.5, 0.5], "radius": 0.3}],
        }
        image = ds.render(meta, 256).astype(np.float32)
        bg, fg = COLOR_RGB[COLOR_NAMES.index("black")], COLOR_RGB[COLOR_NAMES.index("white")]
        alpha = np.clip(((image - bg) @ (fg - bg)) / float((fg - bg) @ (fg - bg)), 0.0, 1.0)
        out[shape] = canonical(alpha)
    return out


def score_image(image: np.ndarray) -> dict:
    """Background colour, foreground colour and shape of an ``(H, W, 3) uint8`` image.

    Returns ``{"background", "color", "shape", "shape_iou", "ious"}``; ``color`` and ``shape``
    are None when no foreground is found."""
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3), not {img.shape}")
    img = img.astype(np.float32)
    h, w, _ = img.shape
    labels = nearest_color(img)  # (H, W)
    border = np.zeros((h, w), bool)
    border[:BORDER], border[-BORDER:], border[:, :BORDER], border[:, -BORDER:] = (True,) * 4
    bg_label = int(np.bincount(labels[border], minlength=len(COLOR_NAMES)).argmax())
    bg_rgb = np.median(img[border & (labels == bg_label)], axis=0)
    result = {"background": COLOR_NAMES[bg_label], "color": None, "shape": None}
    result.update({"shape_iou": 0.0, "ious": {}})

    far = np.linalg.norm(img - bg_rgb, axis=-1) > FOREGROUND_DISTANCE
    region = _largest_component(far)
    if region.sum() < 4:
        return result
    core = _erode(region)
    if core.sum() < 4:
        core = region
    counts = np.bincount(labels[core], minlength=len(COLOR_NAMES))
    if counts.sum() > counts[bg_label]:
        counts[bg_label] = 0  # a foreground of the background's name is not an object
    result["color"] = COLOR_NAMES[int(counts.argmax())]

    fg_rgb = np.median(img[core], axis=0)
    d = fg_rgb - bg_rgb
    alpha = np.clip(((img - bg_rgb) @ d) / max(float(d @ d), 1e-6), 0.0, 1.0)
    alpha = np.where(_dilate(region), alpha, 0.0)
    canon = canonical(alpha)
    if canon is None:
        return result
    ious = {}
    for shape, tpl in templates().items():
        ious[shape] = float(np.minimum(canon, tpl).sum() / np.maximum(canon, tpl).sum())
    best = max(ious, key=ious.get)
    result.update(shape=best, shape_iou=ious[best], ious=ious)
    return result


# ---- evaluation ----


def held_out_items(n: int, seed: int = 0) -> list[dict]:
    """The ``n`` held-out prompts with the expected colour, shape and background."""
    items = []
    for item in ds.held_out_prompts(n, seed):
        obj = item["meta"]["objects"][0]
        items.append(
            {
                "prompt": item["prompt"],
                "color": obj["color"],
                "shape": obj["shape"],
                "background": item["meta"]["background"],
                "meta": item["meta"],
            }
        )
    return items


def _judge(item: dict, image: np.ndarray, seed: int) -> dict:
    s = score_image(image)
    return {
        "prompt": item["prompt"],
        "seed": seed,
        "want": {k: item[k] for k in ("color", "shape", "background")},
        "got": {k: s[k] for k in ("color", "shape", "background")},
        "shape_iou": round(s["shape_iou"], 4),
    }


def evaluate_sdcore(pipe, items, steps=20, guidance=5.0, size=128, save_dir=None) -> list[dict]:
    """Images from sdcore's ``Pipeline`` (seed = index of the prompt), scored."""
    rows = []
    for i, item in enumerate(items):
        out = pipe(
            item["prompt"],
            num_inference_steps=steps,
            guidance_scale=guidance,
            width=size,
            height=size,
            seed=i,
        )
        if hasattr(out, "images"):
            out = out.images
        if isinstance(out, (list, tuple)):
            out = out[0]
        image = np.asarray(out.array if hasattr(out, "array") else out, dtype=np.uint8)
        rows.append(_judge(item, image, i))
        _save(save_dir, i, item, image)
    return rows


def evaluate_diffusers(
    pipe, items, steps=20, guidance=5.0, size=128, batch=25, save_dir=None
) -> list[dict]:
    """Images from diffusers' ``StableDiffusionPipeline`` (CPU generator seeded with the index of
    the prompt, as sdcore's seeds are), scored."""
    import torch

    rows = []
    for s in range(0, len(items), batch):
        chunk = items[s : s + batch]
        images = pipe(
            [it["prompt"] for it in chunk],
            num_inference_steps=steps,
            guidance_scale=guidance,
            height=size,
            width=size,
            generator=[torch.Generator("cpu").manual_seed(s + k) for k in range(len(chunk))],
            output_type="np",
        ).images
        images = np.clip(np.rint(np.asarray(images) * 255.0), 0, 255).astype(np.uint8)
        for k, (item, image) in enumerate(zip(chunk, images, strict=True)):
            rows.append(_judge(item, image, s + k))
            _save(save_dir, s + k, item, image)
    return rows


def _save(folder, i, item, image):
    if folder:
        os.makedirs(folder, exist_ok=True)
        name = "".join(c if c.isalnum() else "_" for c in item["prompt"])[:60]
        ds.write_png(os.path.join(folder, f"{i:03d}_{name}.png"), image)


def summary(rows: list[dict]) -> dict:
    """Accuracies and the most frequent confusions of ``rows`` from an ``evaluate_*``."""
    n = len(rows)

    def acc(key):
        return sum(r["got"][key] == r["want"][key] for r in rows) / max(1, n)

    both = sum(
        r["got"]["color"] == r["want"]["color"] and r["got"]["shape"] == r["want"]["shape"]
        for r in rows
    ) / max(1, n)
    confusions = {}
    for key in ("color", "shape", "background"):
        c = collections.Counter(
            f"{r['want'][key]}->{r['got'][key]}" for r in rows if r["got"][key] != r["want"][key]
        )
        confusions[key] = dict(c.most_common(10))
    per_shape = {}
    for shape in ds.SHAPES:
        sel = [r for r in rows if r["want"]["shape"] == shape]
        if sel:
            per_shape[shape] = f"{sum(r['got']['shape'] == shape for r in sel)}/{len(sel)}"
    return {
        "n": n,
        "color_accuracy": round(acc("color"), 4),
        "shape_accuracy": round(acc("shape"), 4),
        "color_and_shape_accuracy": round(both, 4),
        "background_accuracy": round(acc("background"), 4),
        "per_shape": per_shape,
        "confusions": confusions,
        "rows": rows,
    }


def format_summary(s: dict) -> str:
    lines = [
        f"held-out prompts: {s['n']}",
        f"colour accuracy     {s['color_accuracy']:.1%}",
        f"shape accuracy      {s['shape_accuracy']:.1%}",
        f"colour and shape    {s['color_and_shape_accuracy']:.1%}",
        f"background accuracy {s['background_accuracy']:.1%}",
        "shape hits: " + ", ".join(f"{k} {v}" for k, v in s["per_shape"].items()),
    ]
    for key in ("color", "shape", "background"):
        conf = s["confusions"][key]
        if conf:
            lines.append(
                f"{key} confusions (want->got): " + ", ".join(f"{k} x{v}" for k, v in conf.items())
            )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="model folder (diffusers layout) or file")
    p.add_argument("--engine", choices=("sdcore", "diffusers"), default="sdcore")
    p.add_argument("--device", default=None, help="diffusers engine: cuda or cpu")
    p.add_argument("-n", "--prompts", type=int, default=100, help="number of held-out prompts")
    p.add_argument("--seed", type=int, default=0, help="which held-out prompts")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--save-images", metavar="DIR", help="write each image as a PNG here")
    p.add_argument("--json", metavar="FILE", help="write the scores and every row here")
    args = p.parse_args(argv)

    items = held_out_items(args.prompts, args.seed)
    t0 = time.perf_counter()
    if args.engine == "sdcore":
        import sdcore

        if not hasattr(sdcore, "Pipeline"):
            raise SystemExit(f"sdcore {sdcore.__version__} has no Pipeline: use --engine diffusers")
        pipe = sdcore.Pipeline.from_pretrained(args.model)
        rows = evaluate_sdcore(
            pipe, items, args.steps, args.guidance, args.size, save_dir=args.save_images
        )
    else:
        import torch
        from diffusers import StableDiffusionPipeline

        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        pipe = StableDiffusionPipeline.from_pretrained(
            args.model, torch_dtype=torch.float32, safety_checker=None
        ).to(device)
        pipe.set_progress_bar_config(disable=True)
        rows = evaluate_diffusers(
            pipe, items, args.steps, args.guidance, args.size, save_dir=args.save_images
        )
    s = summary(rows)
    s["engine"] = args.engine
    s["seconds"] = round(time.perf_counter() - t0, 1)
    print(format_summary(s))
    print(f"{args.engine}: {s['n']} images in {s['seconds']} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(s, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
