"""The scorer of tools/eval_default_model.py on images whose answer is known.

Ground-truth images drawn by tools/make_shapes_dataset.py must be scored right: background,
object colour and shape. Random scenes come from a fresh seed each run (the ``rng`` fixture
prints it on failure).
"""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def ev():
    return _load("eval_default_model")


@pytest.fixture(scope="module")
def ds(ev):
    return sys.modules["make_shapes_dataset"]


def _one_object(ds, shape, color, background, size="medium", center=(0.5, 0.5)):
    obj = {
        "shape": shape,
        "color": color,
        "center": list(center),
        "radius": ds.SIZES[size],
        "size": size,
        "position": "center",
        "solid": shape in ds.SOLID_SHAPES,
    }
    return {"background": background, "objects": [obj]}


def test_held_out_prompts_score_perfectly(ev, ds):
    items = ev.held_out_items(100, seed=0)
    rows = [ev._judge(item, ds.render(item["meta"]), i) for i, item in enumerate(items)]
    s = ev.summary(rows)
    assert s["n"] == 100
    assert s["color_accuracy"] == 1.0, s["confusions"]
    assert s["shape_accuracy"] == 1.0, s["confusions"]
    assert s["background_accuracy"] == 1.0, s["confusions"]
    assert min(r["shape_iou"] for r in rows) > 0.9


def test_every_shape_and_colour(ev, ds, rng):
    colors = list(ds.COLORS)
    for shape in ds.SHAPES:
        for color in colors:
            bg = colors[int(rng.integers(len(colors)))]
            while bg == color:
                bg = colors[int(rng.integers(len(colors)))]
            size = ["small", "medium", "large"][int(rng.integers(3))]
            s = ev.score_image(ds.render(_one_object(ds, shape, color, bg, size)))
            assert (s["color"], s["shape"], s["background"]) == (color, shape, bg), (size, s)


def test_random_single_object_scenes(ev, ds, rng):
    """Training-data scenes with one object: any size, position and background."""
    seed = int(rng.integers(2**31))
    checked = 0
    for index in range(200):
        _, meta = ds.sample_meta(seed, index)
        if len(meta["objects"]) != 1:
            continue
        obj = meta["objects"][0]
        s = ev.score_image(ds.render(meta))
        want = (obj["color"], obj["shape"], meta["background"])
        assert (s["color"], s["shape"], s["background"]) == want, (seed, index, s)
        checked += 1
    assert checked > 80


def test_noise_and_blur_do_not_change_the_answer(ev, ds, rng):
    """Generated images are not flat: noise and soft edges must not change the scores."""
    items = ev.held_out_items(30, seed=int(rng.integers(1000)))
    for item in items:
        image = ds.render(item["meta"]).astype(np.float32)
        # a 3x3 box blur for soft edges, then noise
        padded = np.pad(image, ((1, 1), (1, 1), (0, 0)), mode="edge")
        blurred = (
            sum(
                padded[dy : dy + image.shape[0], dx : dx + image.shape[1]]
                for dy in range(3)
                for dx in range(3)
            )
            / 9.0
        )
        noisy = blurred + rng.normal(0.0, 8.0, image.shape)
        noisy = np.clip(np.rint(noisy), 0, 255).astype(np.uint8)
        s = ev.score_image(noisy)
        want = (item["color"], item["shape"], item["background"])
        assert (s["color"], s["shape"], s["background"]) == want, (item["prompt"], s)


def test_blank_and_speckled_images(ev, ds):
    blank = np.full((128, 128, 3), ds.COLORS["blue"], np.uint8)
    s = ev.score_image(blank)
    assert s["background"] == "blue"
    assert s["color"] is None and s["shape"] is None

    # a few isolated specks beside the object are ignored: the largest region wins
    meta = _one_object(ds, "star", "yellow", "purple")
    image = ds.render(meta)
    for y, x in [(5, 60), (100, 10), (120, 120)]:
        image[y, x] = ds.COLORS["green"]
    s = ev.score_image(image)
    assert (s["color"], s["shape"], s["background"]) == ("yellow", "star", "purple")


def test_nearest_color_is_exact_on_named_colours(ev, ds):
    rgb = np.array(list(ds.COLORS.values()), np.uint8)
    assert list(ev.nearest_color(rgb)) == list(range(len(ds.COLORS)))


def test_summary_counts_confusions(ev):
    want = {"color": "red", "shape": "circle", "background": "white"}
    rows = [
        {"prompt": "p", "seed": 0, "want": want, "got": dict(want), "shape_iou": 1.0},
        {
            "prompt": "p",
            "seed": 1,
            "want": want,
            "got": {"color": "orange", "shape": "hexagon", "background": "white"},
            "shape_iou": 0.9,
        },
    ]
    s = ev.summary(rows)
    assert s["color_accuracy"] == 0.5 and s["shape_accuracy"] == 0.5
    assert s["color_and_shape_accuracy"] == 0.5 and s["background_accuracy"] == 1.0
    assert s["confusions"]["shape"] == {"circle->hexagon": 1}
    assert s["per_shape"] == {"circle": "1/2"}
    text = ev.format_summary(s)
    assert "colour accuracy     50.0%" in text and "red->orange x1" in text


def test_bad_image_shape_raises(ev):
    with pytest.raises(ValueError, match="H, W, 3"):
        ev.score_image(np.zeros((16, 16), np.uint8))
