"""Prompts as users type them in the common Stable Diffusion front ends.

Emphasis:
  ``(word)``          weight x 1.1; nesting multiplies: ``((word))`` is x 1.21
  ``(word:1.3)``      weight x 1.3 (any number, also below 1)
  ``[word]``          weight / 1.1
  ``\\(`` ``\\)`` ``\\[`` ``\\]`` ``\\\\``   literal brackets and backslash
  Brackets left open at the end are closed there; a stray closing bracket is kept as text,
  and so is a weight that is not a number (``(word:1.2.3)`` is ``word:1.2.3`` at x 1.1).
  A group that would take a weight past float32's range (the text encoder multiplies by
  float32 weights) is not applied: its ``:number`` is kept as text, as one that is not a
  number is, and a bracket that would overflow is kept as text.
  ``BREAK`` (upper case, as a word) ends the current 75-token chunk early, inside
  brackets too.

Bounds of a request's prompt (check_emphasis, which sdcore.request applies): brackets nest
at most MAX_EMPHASIS_DEPTH (100) deep, and a fragment's weight (the product of its groups'
factors) is at most MAX_EMPHASIS_WEIGHT (100) in magnitude. A prompt beyond either is
refused with ValidationError on the prompt rather than clamped: about 1000 nested brackets
weigh 1.1 ** 1000, past float32, and quietly lowering a weight would draw something other
than what was written. (48 nested ``(`` already weigh 1.1 ** 48 = 97.) parse_weights itself
never raises on any text.

Long prompts: the tokens (without BOS/EOS) are cut into chunks of 75; each chunk becomes
BOS + its tokens + EOS, padded with the pad id to 77 ids (for SD 1.x the pad id is EOS),
and is encoded alone; the chunks' embeddings are
joined along the token axis, (1, 77 * k, hidden). A prompt and its negative prompt are
padded with empty chunks to the same count so classifier-free guidance can pair them.

Weights: each token's embedding is multiplied by its weight, then the whole chunk is
rescaled so its mean equals the mean before weighting (the rule the common front ends
use, chunk by chunk, which keeps the overall magnitude the UNet expects). BOS, EOS and
padding keep weight 1; negative and zero weights are allowed. A prompt with no emphasis is
encoded exactly as diffusers encodes it.
"""

import math
import re

import numpy as np

from sdcore.request import ValidationError

CHUNK = 75
MAX_EMPHASIS_DEPTH = 100
MAX_EMPHASIS_WEIGHT = 100.0
ROUND, SQUARE = 1.1, 1 / 1.1
FLOAT32_MAX = float(np.finfo(np.float32).max)
BREAK = "BREAK"

# one token of the emphasis syntax: an escape, a bracket, ":number)" closing a
# weighted group, a run of plain text, or a lone colon
_TOKEN = re.compile(r"\\[()\[\]\\]|\\|\(|\[|:\s*([+-]?[.\d]+)\s*\)|\)|\]|[^\\()\[\]:]+|:")
_BREAK = re.compile(r"\s*\bBREAK\b\s*")


def parse_weights(text):
    """[(fragment, weight), ...] with runs of equal weight merged; BREAK is (BREAK, -1)."""
    # [text, weight, is_break] lists, so open groups can scale what follows them; a BREAK
    # is flagged rather than told apart by its weight, so that "(cat:-1)" stays a word and
    # a BREAK inside brackets still breaks
    out = []
    open_round, open_square = [], []

    def scale_from(start, factor):
        """Scale the text after `start`; False, scaling nothing, past float32's range."""
        items = [item for item in out[start:] if not item[2]]
        if any(not abs(item[1] * factor) <= FLOAT32_MAX for item in items):
            return False
        for item in items:
            item[1] *= factor
        return True

    def add_text(piece):
        for i, part in enumerate(_BREAK.split(piece)):
            if i:
                out.append([BREAK, -1.0, True])
            out.append([part, 1.0, False])

    for m in _TOKEN.finditer(text):
        piece, number = m.group(0), m.group(1)
        if number is not None:
            weight = _to_float(number)
            if weight is None or not open_round or not scale_from(open_round[-1], weight):
                # not a weight ("(cat:1.2.3)"), nothing to close or out of range: the text
                # before the bracket is kept and the bracket closes a group like a plain ")"
                add_text(piece[:-1])
                piece = ")"
            else:
                open_round.pop()
                continue
        if piece.startswith("\\") and len(piece) == 2:
            out.append([piece[1], 1.0, False])
        elif piece == "(":
            open_round.append(len(out))
        elif piece == "[":
            open_square.append(len(out))
        elif piece == ")" and open_round and scale_from(open_round[-1], ROUND):
            open_round.pop()
        elif piece == "]" and open_square and scale_from(open_square[-1], SQUARE):
            open_square.pop()
        else:
            add_text(piece)
    for start in open_round:
        scale_from(start, ROUND)
    for start in open_square:
        scale_from(start, SQUARE)
    merged = []
    for item in out or [["", 1.0, False]]:
        if merged and not item[2] and not merged[-1][2] and merged[-1][1] == item[1]:
            merged[-1][0] += item[0]
        else:
            merged.append(list(item))
    return [(t, w) for t, w, _ in merged]


def _to_float(number):
    """The weight written after a colon, or None when it is not a finite number."""
    try:
        value = float(number)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _is_break(fragment, weight):
    return fragment == BREAK and weight == -1.0


def tokenize_weighted(tokenizer, text):
    """Chunks of 77 ids and 77 weights: [(ids, weights), ...], at least one."""
    chunks, ids, weights = [], [], []

    def close_chunk():
        pad = CHUNK - len(ids)
        chunks.append(
            (
                # EOS right after the text, then padding: the layout the tokenizer itself
                # (and diffusers) gives when the pad id is not EOS, as in SD 2.x
                [tokenizer.bos_id] + ids + [tokenizer.eos_id] + [tokenizer.pad_id] * pad,
                [1.0] + weights + [1.0] + [1.0] * pad,
            )
        )
        ids.clear()
        weights.clear()

    for fragment, weight in parse_weights(text):
        if _is_break(fragment, weight):
            close_chunk()
            continue
        for token in tokenizer.encode(fragment):
            if len(ids) == CHUNK:
                close_chunk()
            ids.append(token)
            weights.append(weight)
    if ids or not chunks:
        close_chunk()
    return chunks


def encode_prompt(text_encoder, tokenizer, text, clip_skip=1, min_chunks=1):
    """The conditioning of `text`: float32 (1, 77 * k, hidden), k >= min_chunks."""
    chunks = tokenize_weighted(tokenizer, text)
    while len(chunks) < min_chunks:
        chunks.extend(tokenize_weighted(tokenizer, ""))
    out = []
    for ids, weights in chunks:
        z = text_encoder.encode(np.asarray([ids], dtype=np.int32), clip_skip=clip_skip)
        w = np.asarray(weights, dtype=np.float32)
        if np.any(w != 1.0):
            mean = z.mean(dtype=np.float64)
            z = z * w[None, :, None]
            weighted_mean = z.mean(dtype=np.float64)
            # weights that cancel the mean exactly leave nothing to rescale by
            if weighted_mean != 0.0:
                z = z * np.float32(mean / weighted_mean)
        out.append(z)
    return np.concatenate(out, axis=1).astype(np.float32, copy=False)


def chunk_count(tokenizer, text):
    """How many 77-token chunks `text` needs."""
    return len(tokenize_weighted(tokenizer, text))


def check_emphasis(text):
    """Raise ValidationError on the prompt when its brackets nest deeper than
    MAX_EMPHASIS_DEPTH or a fragment weighs more than MAX_EMPHASIS_WEIGHT either way."""
    rounds = squares = 0
    for m in _TOKEN.finditer(text):
        piece = m.group(0)
        if piece in ("(", "["):
            if rounds + squares == MAX_EMPHASIS_DEPTH:
                raise ValidationError(
                    "prompt", f"brackets nest more than {MAX_EMPHASIS_DEPTH} deep"
                )
            if piece == "(":
                rounds += 1
            else:
                squares += 1
        elif (piece == ")" or m.group(1) is not None) and rounds:
            rounds -= 1
        elif piece == "]" and squares:
            squares -= 1
    for fragment, weight in parse_weights(text):
        if not _is_break(fragment, weight) and fragment.strip():
            if not abs(weight) <= MAX_EMPHASIS_WEIGHT:
                raise ValidationError(
                    "prompt",
                    f"emphasis weight {weight:g} of {fragment[:32]!r} is beyond "
                    f"+-{MAX_EMPHASIS_WEIGHT:g}",
                )


def checked_chunk_count(tokenizer, text):
    """chunk_count after check_emphasis: what a request's prompt is measured by."""
    check_emphasis(text)
    return chunk_count(tokenizer, text)
