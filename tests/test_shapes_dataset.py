"""Tests for tools/make_shapes_dataset.py (the default model's training data)."""

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "make_shapes_dataset.py"


@pytest.fixture(scope="module")
def ds():
    spec = importlib.util.spec_from_file_location("make_shapes_dataset", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def _words(text):
    return re.findall(r"[a-z]+", text)


def test_vocabulary(ds):
    assert len(ds.COLORS) >= 10
    for name in ["red", "green", "blue", "yellow", "orange", "purple", "pink", "white", "black"]:
        assert name in ds.COLORS
    rgb = np.array(list(ds.COLORS.values()), dtype=float)
    dists = np.linalg.norm(rgb[:, None] - rgb[None], axis=-1)
    assert dists[~np.eye(len(rgb), dtype=bool)].min() > 60  # well separated
    for shape in ["circle", "square", "triangle", "star", "ring", "cross", "heart"]:
        assert shape in ds.SHAPES
    for pos in ["left", "right", "top", "bottom", "center", "top left", "bottom right"]:
        assert pos in ds.POSITIONS


def test_determinism(ds):
    img_a, cap_a, meta_a = ds.sample(7, 123)
    img_b, cap_b, meta_b = ds.sample(7, 123)
    assert img_a.dtype == np.uint8 and img_a.shape == (128, 128, 3)
    assert img_a.tobytes() == img_b.tobytes()
    assert cap_a == cap_b and meta_a == meta_b
    img_c, _, _ = ds.sample(7, 124)
    assert img_a.tobytes() != img_c.tobytes()
    img_d, _, _ = ds.sample(8, 123)
    assert img_a.tobytes() != img_d.tobytes()
    # different indices give many different captions
    caps = {ds.sample_meta(0, i)[0] for i in range(200)}
    assert len(caps) > 150
    # render() from a JSON round-tripped meta reproduces the image exactly
    meta_json = json.loads(json.dumps(meta_a))
    assert ds.render(meta_json, 128).tobytes() == img_a.tobytes()
    assert ds.sample(7, 123, size=64)[0].shape == (64, 64, 3)


def test_captions_true_of_meta(ds):
    color_words = {w: name for name, ws in ds.COLOR_WORDS.items() for w in ws}
    shape_words = {s: s for s in ds.SHAPES} | {ds._plural(s): s for s in ds.SHAPES}
    kinds = set()
    for i in range(1500):
        caption, meta = ds.sample_meta(3, i)
        words = _words(caption)
        objs, bg, st = meta["objects"], meta["background"], meta["stated"]
        assert caption == caption.strip() and "  " not in caption
        assert 1 <= len(objs) <= 2
        # colours: each object's colour is named; nothing else but the background is named
        named = {color_words[w] for w in words if w in color_words}
        assert {o["color"] for o in objs} <= named, caption
        assert named <= {o["color"] for o in objs} | {bg}, caption
        if st["background"]:
            assert "background" in words or bg in named, caption
            assert bg in named, caption
        else:
            assert "background" not in words, caption
        for o in objs:
            assert o["color"] != bg
        # shapes
        assert {shape_words[w] for w in words if w in shape_words} == {o["shape"] for o in objs}
        # counts
        same = len(objs) == 2 and (objs[0]["shape"], objs[0]["color"]) == (
            objs[1]["shape"],
            objs[1]["color"],
        )
        assert ("two" in words) == same, caption
        if same:
            assert ds._plural(objs[0]["shape"]) in words
        # each colour is bound to its own shape ("a red circle and a blue square")
        for o in objs:
            nouns = (o["shape"], ds._plural(o["shape"]))
            bound = [f"{w} {n}" for w in ds.COLOR_WORDS[o["color"]] for n in nouns]
            assert any(re.search(rf"\b{b}\b", caption) for b in bound), caption
        kinds.add("two_same" if same else len(objs))
        # sizes
        sizes = {w for w in words if w in ds.SIZES}
        if st["size"]:
            assert sizes == {o["size"] for o in objs}, caption
        else:
            assert not sizes, caption
        # positions
        if st["position"]:
            rel = [
                r for r in ("to the left of", "to the right of", "above", "below") if r in caption
            ]
            if rel:
                (a, b) = objs
                dx = b["center"][0] - a["center"][0]
                dy = b["center"][1] - a["center"][1]
                expect = {
                    "to the left of": dx > 0.2,
                    "to the right of": dx < -0.2,
                    "above": dy > 0.2,
                    "below": dy < -0.2,
                }
                assert expect[rel[0]], caption
            else:
                for o in objs:
                    phrases = ds.POSITION_PHRASES[o["position"]] + (o["position"],)
                    assert any(p in caption for p in phrases), caption
        else:
            assert not any(p in caption for p in ("left", "right", "top", "bottom", "middle"))
            assert not any(w in words for w in ("center", "centre")), caption
        # geometry matches the position names
        for o in objs:
            nx, ny = ds.POSITIONS[o["position"]]
            cx, cy = o["center"]
            assert abs(cx - nx) < 0.1 and abs(cy - ny) < 0.1
            r = o["radius"] / ds.SIZES[o["size"]]
            assert 0.9 < r < 1.1
    assert kinds == {1, 2, "two_same"}


def test_unstated_attributes_mostly_default(ds):
    n = bg_default = pos_default = size_default = 0
    for i in range(1000):
        _, meta = ds.sample_meta(5, i)
        objs, st = meta["objects"], meta["stated"]
        if len(objs) != 1:
            continue
        n += 1
        white = objs[0]["color"] == "white"
        if not st["background"]:
            bg_default += meta["background"] == ("black" if white else "white")
        if not st["position"]:
            pos_default += objs[0]["position"] == "center"
        if not st["size"]:
            size_default += objs[0]["size"] == "medium"
    assert n > 400
    assert bg_default > 0.25 * n and pos_default > 0.3 * n and size_default > 0.3 * n


def test_pixel_colours(ds):
    size = 128
    checked = 0
    for i in range(150):
        img, _, meta = ds.sample(11, i, size)
        bg = ds.COLORS[meta["background"]]
        assert tuple(img[0, 0]) == bg and tuple(img[-1, -1]) == bg
        for o in meta["objects"]:
            x = int(o["center"][0] * size)
            y = int(o["center"][1] * size)
            if o["solid"]:
                assert tuple(img[y, x]) == ds.COLORS[o["color"]], (i, o)
                checked += 1
            else:
                assert tuple(img[y, x]) == bg
        # the two objects of a pair do not overlap
        if len(meta["objects"]) == 2:
            a, b = meta["objects"]
            assert ds._apart(a, b)
    assert checked > 100
    # anti-aliased: edge pixels take intermediate values
    img, _, meta = ds.sample(11, 0, size)
    colours = {tuple(c) for c in img.reshape(-1, 3)}
    assert len(colours) > len(meta["objects"]) + 3


def test_every_shape_draws(ds):
    for shape in ds.SHAPES:
        obj = {
            "shape": shape,
            "color": "red",
            "center": [0.5, 0.5],
            "radius": ds.SIZES["large"],
            "size": "large",
            "position": "center",
            "solid": shape in ds.SOLID_SHAPES,
        }
        img = ds.render({"background": "white", "objects": [obj]}, 128)
        red = np.all(img == ds.COLORS["red"], axis=-1)
        area = red.mean()
        assert 0.04 < area < 0.35, (shape, area)
        ys, xs = np.nonzero(red)
        # roughly centred
        assert abs(xs.mean() - 63.5) < 6 and abs(ys.mean() - 63.5) < 10, shape
        # stays inside its bounding box
        half = ds.EXTENT * ds.SIZES["large"] * 128 + 1
        assert xs.min() >= 64 - half and xs.max() <= 64 + half, shape
        assert ys.min() >= 64 - half and ys.max() <= 64 + half, shape


def test_held_out(ds):
    assert len(ds.HELD_OUT) > 20
    for i in range(4000):
        _, meta = ds.sample_meta(0, i)
        assert not ds.is_held_out(meta)
    for i in range(500):
        _, meta = ds.sample_meta(1234, i)
        assert not ds.is_held_out(meta)
    prompts = ds.held_out_prompts(40, seed=1)
    assert len(prompts) == 40
    assert prompts == ds.held_out_prompts(40, seed=1)
    assert len({p["prompt"] for p in prompts}) == 40
    for p in prompts:
        assert ds.is_held_out(p["meta"])
        o = p["meta"]["objects"][0]
        words = _words(p["prompt"])
        assert o["color"] in words and o["shape"] in words and p["meta"]["background"] in words
        img = ds.render(p["meta"], 64)
        assert img.shape == (64, 64, 3)
    # every colour, shape and background still occurs in training
    seen = {"color": set(), "shape": set(), "bg": set()}
    for i in range(2000):
        _, meta = ds.sample_meta(2, i)
        seen["bg"].add(meta["background"])
        for o in meta["objects"]:
            seen["color"].add(o["color"])
            seen["shape"].add(o["shape"])
    assert seen["color"] == set(ds.COLORS) and seen["bg"] == set(ds.COLORS)
    assert seen["shape"] == set(ds.SHAPES)


def test_cli_writes_dataset(ds, tmp_path):
    out = tmp_path / "data"
    png = tmp_path / "preview.png"
    cmd = [sys.executable, str(SCRIPT), "--out", str(out), "--count", "40", "--seed", "9"]
    cmd += ["--size", "64", "--workers", "2", "--preview", str(png)]
    res = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert len(res.stdout.strip().splitlines()) == 16
    images = np.load(out / "images.npy")
    assert images.shape == (40, 64, 64, 3) and images.dtype == np.uint8
    lines = (out / "captions.jsonl").read_text().splitlines()
    assert len(lines) == 40
    for i, line in enumerate(lines):
        rec = json.loads(line)
        assert rec["index"] == i
        img, cap, meta = ds.sample(9, i, 64)
        assert rec["caption"] == cap and rec["meta"] == meta
        assert images[i].tobytes() == img.tobytes()
    # a single worker writes the same bytes
    out1 = tmp_path / "one"
    ds.build(str(out1), 40, 9, 64, workers=1)
    assert np.load(out1 / "images.npy").tobytes() == images.tobytes()
    assert (out1 / "captions.jsonl").read_text() == (out / "captions.jsonl").read_text()
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width == height == 4 * 64 + 5 * 4
