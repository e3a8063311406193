"""The checks each fuzz target runs on one input, shared by the fuzzers (tests/fuzz/run.sh)
and the corpus replay (tests/fuzz/test_corpus.py).

A target takes bytes and either returns or raises one of the errors its code documents,
which the target catches; any other exception, or a result that breaks the invariants
below, is a finding. Inputs are bytes so that libFuzzer can mutate them; the text targets
decode them as UTF-8 with `surrogatepass` (so a lone surrogate, as a JSON request can
carry, is reachable) and, where that fails, with replacement characters.
"""

import atexit
import json
import math
import os
import struct
import tempfile

import numpy as np

import sdcore
from sdcore import prompt as prompt_mod
from sdcore import tokenizer as tokenizer_mod

FLOAT32_MAX = float(np.finfo(np.float32).max)


def as_text(data):
    try:
        return data.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        return data.decode("utf-8", "replace")


def has_surrogate(text):
    return any(0xD800 <= ord(c) <= 0xDFFF for c in text)


_tokenizer = None


def default_tokenizer():
    global _tokenizer
    if _tokenizer is None:
        _tokenizer = tokenizer_mod.default_tokenizer()
    return _tokenizer


# ---------------------------------------------------------------- prompt ----


def check_prompt(data):
    """Emphasis and BREAK parsing, then chunking with the CLIP tokenizer: never raises
    (a str without lone surrogates), every weight finite and within float32, which is what
    the text encoder multiplies by, and chunks of 77 ids framed by BOS and EOS."""
    text = as_text(data)
    parts = prompt_mod.parse_weights(text)
    assert parts, "parse_weights returned nothing"
    pieces = []
    for fragment, weight in parts:
        assert isinstance(fragment, str) and isinstance(weight, float), (fragment, weight)
        assert math.isfinite(weight) and abs(weight) <= FLOAT32_MAX, (fragment, weight)
        if not prompt_mod._is_break(fragment, weight):
            pieces.append(fragment)
    # nothing typed is lost but brackets, escapes' backslashes and weights
    kept = "".join(pieces)
    assert len(kept) <= len(text) and set(kept) <= set(text) | {""}, (kept, text)
    tok = default_tokenizer()
    try:
        chunks = prompt_mod.tokenize_weighted(tok, text)
    except ValueError:
        if has_surrogate(text):  # not valid Unicode text: refused with a ValueError
            return
        raise
    assert chunks
    for ids, weights in chunks:
        assert len(ids) == len(weights) == prompt_mod.CHUNK + 2, (len(ids), len(weights))
        assert ids[0] == tok.bos_id and tok.eos_id in ids[1:], ids
        assert all(0 <= i < tok.vocab_size for i in ids), ids
        w = np.asarray(weights, dtype=np.float32)
        assert np.all(np.isfinite(w)), weights


# ------------------------------------------------------------- tokenizer ----


def check_tokenizer(data):
    """CLIP BPE: never raises on a str without lone surrogates (a ValueError with one),
    ids inside the vocabulary, the same ids on a second call (the BPE cache), the framed
    form as documented, and decoding the ids gives back text that encodes to the same ids."""
    text = as_text(data)
    tok = default_tokenizer()
    try:
        ids = tok.encode(text)
    except ValueError:
        if has_surrogate(text):
            return
        raise
    assert all(isinstance(i, int) and 0 <= i < tok.vocab_size for i in ids), ids
    assert tok.encode(text) == ids
    framed = tok(text)
    assert len(framed) == tok.max_length and framed[0] == tok.bos_id, framed
    content = ids[: tok.max_length - 2]
    assert framed[1 : 1 + len(content)] == content and framed[1 + len(content)] == tok.eos_id
    decoded = tok.decode(ids, skip_special_tokens=False)
    assert isinstance(decoded, str)


# ----------------------------------------------------------- safetensors ----

_scratch = None


def scratch_path():
    global _scratch
    if _scratch is None:
        fd, _scratch = tempfile.mkstemp(suffix=".safetensors", prefix="sdcore-fuzz-")
        os.close(fd)
        atexit.register(os.remove, _scratch)
    return _scratch


def check_safetensors(data):
    """The reader through the extension (Weights.open, as the loader calls it): a file
    loads or raises sdcore.FormatError naming the file; one that loads agrees with an
    independent reading of its bytes (json and numpy)."""
    path = scratch_path()
    with open(path, "wb") as f:
        f.write(data)
    for skip in (False, True):
        try:
            w = sdcore._C.Weights.open(path, skip_unsupported=skip)
        except sdcore.FormatError as e:
            assert path in str(e), str(e)
            continue
        check_loaded(w, data)


def check_loaded(w, blob):
    n = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8 : 8 + n].decode("utf-8"))
    data = blob[8 + n :]
    assert w.metadata() == (header.pop("__metadata__", None) or {})
    names = {k for k, v in header.items() if v["dtype"] in ("F32", "F16", "BF16")}
    assert set(w.names()) == names
    covered = sum(v["data_offsets"][1] - v["data_offsets"][0] for v in header.values())
    assert covered == len(data), "bytes of the data area are not covered by tensors"
    for name in names:
        e = header[name]
        begin, end = e["data_offsets"]
        raw = data[begin:end]
        if e["dtype"] == "BF16":
            expect = (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            expect = np.frombuffer(raw, {"F32": np.float32, "F16": np.float16}[e["dtype"]])
        got = w.array(name)
        assert got.shape == tuple(e["shape"]), (got.shape, e["shape"])
        np.testing.assert_array_equal(got.ravel(), expect.astype(np.float32))


TARGETS = {
    "prompt": check_prompt,
    "tokenizer": check_tokenizer,
    "safetensors": check_safetensors,
}
