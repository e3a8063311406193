"""The engine as a C library (csrc/sdcore_api.h, libsdcore.a) and its examples.

The library is built with make (csrc/Makefile through examples/Makefile) and its
programs are compared with the Python package: examples/txt2img must write the same
pixels as ``sdcore generate``, and the C tokenizer (examples/tokenize) must give the same
ids as transformers' CLIPTokenizer and sdcore's Python tokenizer on fresh random text.
"""

import os
import random
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import sdcore
from sdcore.pipeline import DEFAULT_MODEL, Pipeline
from sdcore.tokenizer import ClipTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
TOKENIZER_DIR = os.path.join(DEFAULT_MODEL, "tokenizer")
PROMPT = "a red circle on a blue background"

COLOURS = ["red", "green", "blue", "yellow", "orange", "purple", "pink", "white", "black"]
SHAPES = ["circle", "square", "triangle", "star", "ring", "cross", "heart", "diamond"]


@pytest.fixture(scope="module")
def built():
    """Build libsdcore.a and the examples with make; skip where there is no make or C
    compiler."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed: the C library is built with make")
    if shutil.which(os.environ.get("CC", "cc")) is None:
        pytest.skip("no C compiler (cc) to build the C library with")
    cmd = ["make", "-C", EXAMPLES, f"-j{os.cpu_count() or 1}", f"PYTHON={sys.executable}"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}"
    return {name: os.path.join(EXAMPLES, name) for name in ("txt2img", "tokenize")}


def _pixels(path):
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")), im.text.get("parameters")


def _run(args, **kw):
    return subprocess.run(args, capture_output=True, text=True, timeout=600, **kw)


def test_txt2img_matches_sdcore_generate(built, tmp_path):
    out, ref = tmp_path / "out.png", tmp_path / "ref.png"
    # the command of the README, run as a user would (relative model path, from the root)
    done = _run(
        [built["txt2img"], os.path.relpath(DEFAULT_MODEL, ROOT), PROMPT, "7", str(out)], cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    cli = [sys.executable, "-m", "sdcore.cli", "generate", PROMPT, "--seed", "7", "-o", str(ref)]
    done = _run(cli, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    got, got_text = _pixels(out)
    want, want_text = _pixels(ref)
    assert got.shape == want.shape == (128, 128, 3)
    assert np.array_equal(got, want), f"{int((got != want).any(-1).sum())} pixels differ"
    assert got_text == want_text
    assert "CFG scale: 5," in got_text  # the shipped model's guidance, from its sdcore.json


def test_txt2img_random_prompt_seed_and_negative(built, tmp_path, rng):
    """A fresh prompt, negative prompt and seed each run, against sdcore.Pipeline."""
    colour, other = rng.choice(COLOURS, 2, replace=False)
    prompt = f"a {colour} {rng.choice(SHAPES)} on a {other} background"
    negative = f"{rng.choice(COLOURS)} {rng.choice(SHAPES)}"
    seed = int(rng.integers(0, 2**63)) * 2 + int(rng.integers(0, 2))  # the full 64-bit range
    out = tmp_path / "out.png"
    done = _run([built["txt2img"], DEFAULT_MODEL, prompt, str(seed), str(out), negative])
    assert done.returncode == 0, done.stderr
    want = Pipeline.from_pretrained()(prompt, negative_prompt=negative, seed=seed)[0]
    got, text = _pixels(out)
    assert np.array_equal(got, want.array), f"{prompt!r} / {negative!r}, seed {seed}"
    assert text == want.parameters


def test_txt2img_reports_bad_input(built, tmp_path):
    out = str(tmp_path / "out.png")
    done = _run([built["txt2img"], str(tmp_path / "nowhere"), PROMPT, "7", out])
    assert done.returncode != 0 and "does not exist" in done.stderr
    done = _run([built["txt2img"], DEFAULT_MODEL, "a (red:1.3) circle", "7", out])
    assert done.returncode != 0 and "prompt: '(' is prompt emphasis syntax" in done.stderr
    done = _run([built["txt2img"], DEFAULT_MODEL, PROMPT, "-1", out])
    assert done.returncode != 0 and "seed" in done.stderr
    broken = tmp_path / "model"
    shutil.copytree(DEFAULT_MODEL, broken)
    cfg = (broken / "unet" / "config.json").read_text()
    (broken / "unet" / "config.json").write_text(cfg.replace('"norm_eps"', '"norm_epsilon"'))
    done = _run([built["txt2img"], str(broken), PROMPT, "7", out])
    assert done.returncode != 0 and "unknown UNet config field 'norm_epsilon'" in done.stderr
    assert not os.path.exists(out)


def test_library_version_is_the_package_version():
    with open(os.path.join(ROOT, "csrc", "sdcore_api.h"), encoding="utf-8") as f:
        version = re.search(r'#define SDCORE_VERSION "([^"]+)"', f.read()).group(1)
    assert version == sdcore.__version__


# ---- the C tokenizer ----


def _c_token_ids(built, texts):
    lines = [t.replace("\\", "\\\\").replace("\n", "\\n") for t in texts]
    done = subprocess.run(
        [built["tokenize"], TOKENIZER_DIR],
        input="".join(line + "\n" for line in lines).encode("utf-8"),
        capture_output=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr.decode()
    rows = done.stdout.decode("utf-8").split("\n")[:-1]
    assert len(rows) == len(texts)
    return [row if row.startswith("error:") else [int(x) for x in row.split()] for row in rows]


@pytest.fixture(scope="module")
def corpus():
    """Fresh random text each run: SD-style prompts, over-long prompts and random Unicode
    (scripts, marks to compose, emoji, whitespace), from tests/test_tokenizer.py."""
    import test_tokenizer as tt

    rng = random.Random(tt.SEED)
    texts = tt.FIXED + tt._sd_prompts(rng, 150) + tt._over_long(rng) + tt._random_strings(rng, 400)
    # a C string ends at NUL: the C API cannot be handed one (sdcore refuses NUL in prompts)
    return [t for t in texts if "\x00" not in t]


def test_c_tokenizer_matches_transformers_and_python(built, corpus):
    transformers = pytest.importorskip("transformers")
    reference = transformers.CLIPTokenizer.from_pretrained(TOKENIZER_DIR)
    ours = ClipTokenizer.load(TOKENIZER_DIR)
    got = _c_token_ids(built, corpus)
    want = reference(corpus, add_special_tokens=False).input_ids
    for text, g, w in zip(corpus, got, want, strict=True):
        assert g == w, f"{text!r}\n C           {g}\n transformers {w}"
        assert g == ours.encode(text), f"{text!r}: C and sdcore.tokenizer differ"


def test_c_tokenizer_rejects_invalid_utf8(built):
    done = subprocess.run(
        [built["tokenize"], TOKENIZER_DIR], input=b"ok\n\xff\xfe\n", capture_output=True
    )
    rows = done.stdout.decode().split("\n")
    assert rows[0] == " ".join(map(str, ClipTokenizer.load(TOKENIZER_DIR).encode("ok")))
    assert rows[1].startswith("error: prompt: not valid UTF-8 (byte 0)")
