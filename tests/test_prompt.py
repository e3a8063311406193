"""Prompt emphasis, chunking and weighting, against hand-derived expectations."""

import numpy as np
import pytest

from sdcore.prompt import chunk_count, encode_prompt, parse_weights, tokenize_weighted
from sdcore.tokenizer import default_tokenizer


def approx(parsed):
    return [(t, round(w, 6)) for t, w in parsed]


@pytest.mark.parametrize(
    "text,expected",
    [
        ("a cat", [("a cat", 1.0)]),
        ("a (cat)", [("a ", 1.0), ("cat", 1.1)]),
        ("a ((cat))", [("a ", 1.0), ("cat", 1.21)]),
        ("a [cat]", [("a ", 1.0), ("cat", round(1 / 1.1, 6))]),
        ("a (cat:1.5) dog", [("a ", 1.0), ("cat", 1.5), (" dog", 1.0)]),
        ("(a (cat:2)):", [("a ", 1.1), ("cat", 2.2), (":", 1.0)]),
        (r"a \(cat\)", [("a (cat)", 1.0)]),
        ("a (cat", [("a ", 1.0), ("cat", 1.1)]),  # closed at the end
        ("a cat)", [("a cat)", 1.0)]),  # stray closer is text
        ("a BREAK b", [("a", 1.0), ("BREAK", -1.0), ("b", 1.0)]),
        ("", [("", 1.0)]),
        ("(x:0.5)", [("x", 0.5)]),
        ("[[x]]", [("x", 1 / 1.21)]),
        ("[x", [("x", 1 / 1.1)]),
        ("((a:1.5) b)", [("a", 1.65), (" b", 1.1)]),
        (r"\[x\] \\", [("[x] \\", 1.0)]),
        ("(cat:-1) dog", [("cat", -1.0), (" dog", 1.0)]),  # a weight of -1 is no BREAK
        ("(a BREAK b)", [("a", 1.1), ("BREAK", -1.0), ("b", 1.1)]),
        ("(cat:1.2.3)", [("cat:1.2.3", 1.1)]),  # not a number: text, and ")" closes
        ("(cat:.)", [("cat:.", 1.1)]),
    ],
)
def test_parse(text, expected):
    assert approx(parse_weights(text)) == [(t, round(w, 6)) for t, w in expected]


def test_plain_prompt_ids_match_the_tokenizer():
    tok = default_tokenizer()
    text = "a red circle on a blue background"
    ((ids, weights),) = tokenize_weighted(tok, text)
    assert ids == tok(text)
    assert weights == [1.0] * 77


def test_long_prompt_and_break_chunking():
    tok = default_tokenizer()
    long = " ".join(["cat"] * 100)
    chunks = tokenize_weighted(tok, long)
    assert len(chunks) == 2 and all(len(ids) == 77 for ids, _ in chunks)
    cat = tok.encode("cat")[0]
    assert chunks[0][0][1:76] == [cat] * 75 and chunks[1][0][1:26] == [cat] * 25
    assert chunks[1][0][26:76] == [tok.pad_id] * 50
    assert chunk_count(tok, "a BREAK b") == 2


def test_negative_weight_is_a_word_not_a_break():
    tok = default_tokenizer()
    ((ids, weights),) = tokenize_weighted(tok, "(cat:-1) dog")
    assert ids[1:3] == tok.encode("cat dog") and weights[1:3] == [-1.0, 1.0]


class RecordingEncoder:
    """A deterministic function of the ids, so weighting can be checked by hand."""

    def __init__(self, rng):
        # values away from a zero mean: the rescale divides by the weighted mean, which
        # for zero-centred values can come close to 0 and amplify float32 rounding
        self.table = (1 + 0.5 * rng.standard_normal((49408, 8))).astype(np.float32)

    def encode(self, ids, clip_skip=1):
        return self.table[ids]


def test_weighting_rescales_to_the_original_mean(rng):
    tok = default_tokenizer()
    enc = RecordingEncoder(rng)
    z = encode_prompt(enc, tok, "a (red:1.5) circle")
    ((ids, weights),) = tokenize_weighted(tok, "a (red:1.5) circle")
    base = enc.table[ids][None].astype(np.float64)
    w = np.asarray(weights)[None, :, None]
    expected = base * w * (base.mean() / (base * w).mean())
    np.testing.assert_allclose(z, expected, rtol=1e-5, atol=1e-6)
    assert weights[2] == 1.5 and weights[1] == 1.0


def test_min_chunks_pads_with_empty_chunks(rng):
    tok = default_tokenizer()
    enc = RecordingEncoder(rng)
    z = encode_prompt(enc, tok, "cat", min_chunks=3)
    empty = encode_prompt(enc, tok, "")
    assert z.shape == (1, 231, 8)
    np.testing.assert_array_equal(z[:, 77:154], empty)


def test_weighting_of_a_two_chunk_prompt(rng):
    """Each 77-token chunk is weighted and rescaled to its own unweighted mean."""
    tok = default_tokenizer()
    enc = RecordingEncoder(rng)
    text = "(red circle:1.4) " * 30 + "[blue square] " * 20
    z = encode_prompt(enc, tok, text)
    chunks = tokenize_weighted(tok, text)
    assert len(chunks) == 2 and z.shape == (1, 154, 8)
    for k, (ids, weights) in enumerate(chunks):
        base = enc.table[ids].astype(np.float64)
        w = np.asarray(weights)[:, None]
        expected = base * w * (base.mean() / (base * w).mean())
        np.testing.assert_allclose(z[0, 77 * k : 77 * (k + 1)], expected, rtol=1e-5, atol=1e-6)
    # "red circle" and "blue square" are two tokens each: 60 + 15 tokens, then 25
    square = pytest.approx(1 / 1.1)
    assert chunks[0][1][1:61] == [1.4] * 60 and chunks[0][1][61:76] == [square] * 15
    assert chunks[1][1][1:26] == [square] * 25 and chunks[1][1][26:] == [1.0] * 51


class PadTokenizer:
    """A tokenizer whose pad id differs from EOS (as SD 2.x's): one id per word."""

    bos_id, eos_id, pad_id = 1, 2, 0

    def encode(self, text):
        return [10 + len(word) for word in text.split()]


def test_eos_follows_the_text_and_padding_follows_eos():
    ((ids, weights),) = tokenize_weighted(PadTokenizer(), "ab (abc:2)")
    assert ids[:5] == [1, 12, 13, 2, 0] and ids[5:] == [0] * 72
    assert weights[:4] == [1.0, 1.0, 2.0, 1.0] and weights[4:] == [1.0] * 73
    chunks = tokenize_weighted(PadTokenizer(), "a " * 75 + "BREAK b")
    assert [c[0][:3] for c in chunks] == [[1, 11, 11], [1, 11, 2]]
    assert chunks[0][0][76] == 2 and chunks[1][0][3:] == [0] * 74
