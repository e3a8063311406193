"""Prompts as users type them in the common Stable Diffusion front ends.

Emphasis:
  ``(word)``          weight x 1.1; nesting multiplies: ``((word))`` is x 1.21
  ``(word:1.3)``      weight x 1.3 (any number, also below 1)
  ``[word]``          weight / 1.1
  ``\\(`` ``\\)`` ``\\[`` ``\\]`` ``\\\\``   literal brackets and backslash
  Brackets left open at the end are closed there; a stray closing bracket is kept as text.
  ``BREAK`` (upper case, as a word) ends the current 75-token chunk early.

Long prompts: the tokens (without BOS/EOS) are cut into chunks of 75; each chunk becomes
BOS + 75 tokens (padded) + EOS = 77 ids and is encoded alone; the chunks' embeddings are
joined along the token axis, (1, 77 * k, hidden). A prompt and its negative prompt are
padded with empty chunks to the same count so classifier-free guidance can pair them.

Weights: each token's embedding is multiplied by its weight, then the whole chunk is
rescaled so its mean equals the mean before weighting (the rule the common front ends
use, which keeps the overall magnitude the UNet expects). A prompt with no emphasis is
encoded exactly as diffusers encodes it.
"""

import re

import numpy as np

CHUNK = 75
ROUND, SQUARE = 1.1, 1 / 1.1

# one token of the emphasis syntax: an escape, a bracket, ":number)" closing a
# weighted group, a run of plain text, or a lone colon
_TOKEN = re.compile(r"\\[()\[\]\\]|\\|\(|\[|:\s*([+-]?[.\d]+)\s*\)|\)|\]|[^\\()\[\]:]+|:")
_BREAK = re.compile(r"\s*\bBREAK\b\s*")


def parse_weights(text):
    """[(fragment, weight), ...] with runs of equal weight merged; BREAK is (BREAK, -1)."""
    out = []  # [text, weight] lists so open groups can scale what follows them
    open_round, open_square = [], []

    def scale_from(start, factor):
        for item in out[start:]:
            item[1] *= factor

    for m in _TOKEN.finditer(text):
        piece, number = m.group(0), m.group(1)
        if piece.startswith("\\") and len(piece) == 2:
            out.append([piece[1], 1.0])
        elif piece == "(":
            open_round.append(len(out))
        elif piece == "[":
            open_square.append(len(out))
        elif number is not None and open_round:
            scale_from(open_round.pop(), float(number))
        elif piece == ")" and open_round:
            scale_from(open_round.pop(), ROUND)
        elif piece == "]" and open_square:
            scale_from(open_square.pop(), SQUARE)
        else:
            for i, part in enumerate(_BREAK.split(piece)):
                if i:
                    out.append(["BREAK", -1.0])
                out.append([part, 1.0])
    for start in open_round:
        scale_from(start, ROUND)
    for start in open_square:
        scale_from(start, SQUARE)
    merged = []
    for item in out or [["", 1.0]]:
        if merged and merged[-1][1] == item[1] and item[1] != -1.0:
            merged[-1][0] += item[0]
        else:
            merged.append(list(item))
    return [(t, w) for t, w in merged]


def tokenize_weighted(tokenizer, text):
    """Chunks of 77 ids and 77 weights: [(ids, weights), ...], at least one."""
    chunks, ids, weights = [], [], []

    def close_chunk():
        pad = CHUNK - len(ids)
        chunks.append(
            (
                [tokenizer.bos_id] + ids + [tokenizer.pad_id] * pad + [tokenizer.eos_id],
                [1.0] + weights + [1.0] * pad + [1.0],
            )
        )
        ids.clear()
        weights.clear()

    for fragment, weight in parse_weights(text):
        if weight == -1.0:  # BREAK
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
            z = z * np.float32(mean / z.mean(dtype=np.float64))
        out.append(z)
    return np.concatenate(out, axis=1).astype(np.float32, copy=False)


def chunk_count(tokenizer, text):
    """How many 77-token chunks `text` needs."""
    return len(tokenize_weighted(tokenizer, text))
