"""The CLIP byte-level BPE tokenizer of the Stable Diffusion 1.x text encoder.

It gives the same ids as ``transformers.CLIPTokenizer`` (which, from transformers 5, is the
``tokenizers``-backed one), step for step:

1. special tokens written in the text (``<|startoftext|>``, ``<|endoftext|>``) become their ids:
   some are found in the raw text, others in the normalised text, as the tokenizer's
   configuration says (see ``ClipTokenizer``); the text between them is handled piece by piece;
2. normalisation: NFC, every run of whitespace becomes one space, then each character is
   lowercased on its own (so no final-sigma rule: "ΣΑΣ" becomes "σασ", not "σας");
3. pre-tokenisation by CLIP's pattern
   ``<|startoftext|>|<|endoftext|>|'s|'t|'re|'ve|'m|'ll|'d|\\p{L}+|\\p{N}|[^\\s\\p{L}\\p{N}]+``,
   whitespace dropped;
4. each piece is written as UTF-8 bytes mapped to printable characters, and merged by BPE with
   ``</w>`` marking the end of the piece.

Why Python and not C: tokenization runs once per prompt, next to a UNet that runs for seconds; it
is string handling, which Python does well; and the pattern above needs the Unicode letter and
number categories, which Python's ``unicodedata`` gives exactly while C would need its own tables.
Only the standard library is used (no ``regex`` package): ``re`` has no ``\\p{L}``, so the split is
a small scanner over ``unicodedata.category``.

The vocabulary comes either from a model's ``tokenizer/`` folder (``vocab.json`` and
``merges.txt``, as diffusers lays it out) or from the OpenAI CLIP BPE file shipped in
``sdcore/data/`` (``bpe_simple_vocab_16e6.txt.gz``, MIT licence, see ``LICENSE-CLIP-BPE.txt``).
"""

from __future__ import annotations

import bisect
import functools
import gzip
import json
import os
import re
import unicodedata

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
MAX_LENGTH = 77
END_OF_WORD = "</w>"

DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
DEFAULT_BPE_FILE = os.path.join(DATA_DIR, "bpe_simple_vocab_16e6.txt.gz")

# The CLIP vocabulary has 49152 entries before its two special tokens; 256 + 256 of them are the
# single byte characters (bare and with </w>), so the file's first 49152 - 256 - 2 merges are used.
CLIP_NUM_MERGES = 49152 - 256 - 2

# A BPE result is kept per distinct piece; a long-running server sees an open-ended set of words,
# so the cache is emptied when it reaches this size rather than growing without bound.
_BPE_CACHE_SIZE = 100_000

# What `\s` matches in the reference's regular expressions (the Unicode White_Space property).
# Python's str.isspace() is not the same set: it also counts U+001C..U+001F as space.
_WHITESPACE = frozenset(
    "\t\n\x0b\x0c\r \x85\xa0\u1680"
    "\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)
_CONTRACTION = re.compile("'(?:s|t|re|ve|m|ll|d)")

# The configuration keys of named special tokens, in the order transformers registers them.
_SPECIAL_TOKEN_KEYS = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)
# How the tokenizer/ folder of SD 1.x models (tokenizer_config.json, special_tokens_map.json)
# leaves the special tokens in transformers: BOS and EOS are declared "normalized", then the pad
# token, the same <|endoftext|> given as a plain string, registers EOS again as matched raw.
SD1_ADDED_TOKENS = [(BOS_TOKEN, True), (EOS_TOKEN, True), (EOS_TOKEN, False)]

# Character classes of the pre-tokenisation pattern.
_LETTER, _NUMBER, _OTHER, _SPACE = 0, 1, 2, 3


@functools.lru_cache(maxsize=4096)
def _char_class(ch: str) -> int:
    if ch in _WHITESPACE:
        return _SPACE
    category = unicodedata.category(ch)
    if category == "Cn":
        # unassigned for this Python, maybe a letter or number of a later Unicode version
        code = ord(ch)
        if _in_ranges(_LATE_LETTER_RANGES, code):
            return _LETTER
        if _in_ranges(_LATE_NUMBER_RANGES, code):
            return _NUMBER
        return _OTHER
    major = category[0]
    if major == "L":
        return _LETTER
    if major == "N":
        return _NUMBER
    return _OTHER


def bytes_to_unicode() -> dict[int, str]:
    """CLIP's (and GPT-2's) map of the 256 byte values to printable characters.

    Printable Latin-1 bytes map to themselves; the others (controls, space, ...) to U+0100 and up,
    so that a BPE token is always a plain, visible string. The order of the entries (printable
    bytes first) is the order of the first 256 tokens of the CLIP vocabulary.
    """
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


_BYTE_TO_CHAR = bytes_to_unicode()
_CHAR_TO_BYTE = {c: b for b, c in _BYTE_TO_CHAR.items()}


def _nfc(text: str) -> str:
    """NFC as the reference computes it, with Unicode 9.0 normalisation data: characters whose
    normalisation properties came later are plain starters to it, so the text is normalised in
    pieces around them (a starter that composes with nothing is a wall NFC does not cross)."""
    if _NFC_UNKNOWN_RE.search(text) is None:
        return unicodedata.normalize("NFC", text)
    parts = _NFC_UNKNOWN_RE.split(text)
    return "".join(p if k % 2 else unicodedata.normalize("NFC", p) for k, p in enumerate(parts))


def normalize(text: str) -> str:
    """The reference's normaliser: NFC, whitespace runs to one space, per-character lowercase."""
    text = _nfc(text)
    out = []
    in_space = False
    for ch in text:
        if ch in _WHITESPACE:
            if not in_space:
                out.append(" ")
            in_space = True
            continue
        in_space = False
        # per character, as the reference does: str.lower() on the whole string would apply the
        # final-sigma rule, which the reference does not
        out.append(_LATE_LOWERCASE_MAP.get(ch) or ch.lower())
    return "".join(out)


def pre_tokenize(text: str) -> list[str]:
    """Split normalised text into the pieces that BPE works on, by CLIP's pattern.

    At each position the alternatives are tried in the pattern's order: the special-token
    strings, the contractions, a run of letters, one number character, a run of anything that is
    neither letter, number nor whitespace. A run of "other" characters is greedy and swallows
    apostrophes, as the regular expression does ("?'s" gives "?'" and "s").
    """
    pieces = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        cls = _char_class(ch)
        if cls == _SPACE:
            i += 1
            continue
        if ch == "<" and (text.startswith(BOS_TOKEN, i) or text.startswith(EOS_TOKEN, i)):
            # the pattern keeps "<|endoftext|>" whole, but the byte-level step of the reference
            # then splits it again by GPT-2's pattern into "<|", "endoftext", "|>"
            name = BOS_TOKEN if text.startswith(BOS_TOKEN, i) else EOS_TOKEN
            pieces += ["<|", name[2:-2], "|>"]
            i += len(name)
            continue
        if ch == "'":
            m = _CONTRACTION.match(text, i)
            if m:
                pieces.append(m.group())
                i = m.end()
                continue
        j = i + 1
        if cls != _NUMBER:  # numbers are taken one character at a time
            while j < n and _char_class(text[j]) == cls:
                j += 1
        pieces.append(text[i:j])
        i = j
    return pieces


def _to_byte_chars(piece: str) -> str:
    # str.translate maps code points, so the bytes go through Latin-1 (byte b -> code point b)
    return piece.encode("utf-8").decode("latin-1").translate(_BYTE_TO_CHAR)


class ClipTokenizer:
    """CLIP BPE tokenizer: text to the ids the CLIP text encoder takes.

    ``tok(text)`` gives ``[BOS] + ids + [EOS]`` truncated to ``max_length`` (77) and padded with
    ``pad_id`` (the EOS id for SD 1.x); ``tok.encode(text)`` gives the ids of a fragment without
    BOS/EOS, for code that assembles the sequence itself (prompt weighting, long prompts).

    Build one with ``ClipTokenizer.load()`` (the shipped CLIP vocabulary),
    ``ClipTokenizer.load(folder)`` (a model's ``tokenizer/`` folder) or
    ``ClipTokenizer.load(path_to_bpe_file)``.

    ``added_tokens`` lists the special tokens that are recognised in the text, as
    ``(content, normalized)`` in the order transformers registers them (a later entry for the same
    content replaces an earlier one). ``normalized=False`` matches the exact string in the raw text;
    ``normalized=True`` matches it after normalisation, so "<|StartOfText|>" counts too. Left out,
    BOS, EOS, unknown and pad tokens are matched raw, as transformers does for tokens given as plain
    strings.
    """

    def __init__(
        self,
        vocab: dict[str, int],
        merges: list[tuple[str, str]],
        *,
        bos_token: str = BOS_TOKEN,
        eos_token: str = EOS_TOKEN,
        pad_token: str = EOS_TOKEN,
        unk_token: str | None = None,
        added_tokens: list[tuple[str, bool]] | None = None,
        max_length: int = MAX_LENGTH,
    ):
        unk_token = eos_token if unk_token is None else unk_token
        if added_tokens is None:
            added_tokens = [(t, False) for t in (bos_token, eos_token, unk_token, pad_token)]
        for name in (bos_token, eos_token, pad_token, unk_token, *(t for t, _ in added_tokens)):
            if name not in vocab:
                raise ValueError(f"special token {name!r} is not in the vocabulary")
        if max_length < 2:
            raise ValueError(f"max_length must be at least 2 (BOS and EOS), not {max_length}")
        self.vocab = dict(vocab)
        self.id_to_token = {i: t for t, i in self.vocab.items()}
        self.bpe_ranks: dict[tuple[str, str], int] = {}
        for rank, (a, b) in enumerate(merges):
            if a + b not in self.vocab:
                raise ValueError(
                    f"merge {a!r} {b!r} makes {a + b!r}, which is not in the vocabulary"
                )
            self.bpe_ranks.setdefault((a, b), rank)
        self.bos_token, self.eos_token, self.pad_token = bos_token, eos_token, pad_token
        self.bos_id = self.vocab[bos_token]
        self.eos_id = self.vocab[eos_token]
        self.pad_id = self.vocab[pad_token]
        # a character missing from the vocabulary becomes the unknown token (for CLIP
        # <|endoftext|>); with a complete byte-level vocabulary this never happens
        self.unk_id = self.vocab[unk_token]
        self.max_length = max_length

        normalized_of = dict(added_tokens)  # the last entry for a content wins
        self.special_ids = {self.vocab[t] for t in normalized_of}
        self.special_ids |= {self.bos_id, self.eos_id, self.pad_id, self.unk_id}
        raw = {t: self.vocab[t] for t, n in normalized_of.items() if not n and t}
        # a normalised token is looked for as the normaliser writes it
        norm = {normalize(t): self.vocab[t] for t, n in normalized_of.items() if n and t}
        self._raw_specials, self._raw_split = raw, _literal_splitter(raw)
        self._norm_specials, self._norm_split = norm, _literal_splitter(norm)
        self._cache: dict[str, tuple[int, ...]] = {}

    # ---- construction ----

    @classmethod
    def load(cls, path: str | os.PathLike | None = None) -> ClipTokenizer:
        """From a ``tokenizer/`` folder, a CLIP BPE file (``.txt`` or ``.txt.gz``), or, with no
        path, the CLIP vocabulary shipped with sdcore."""
        if path is None:
            return cls.from_bpe_file(DEFAULT_BPE_FILE)
        path = os.fspath(path)
        if os.path.isdir(path):
            return cls.from_folder(path)
        if os.path.isfile(path):
            return cls.from_bpe_file(path)
        raise FileNotFoundError(f"no tokenizer folder or BPE file at {path}")

    @classmethod
    def from_bpe_file(cls, path: str | os.PathLike = DEFAULT_BPE_FILE) -> ClipTokenizer:
        """From OpenAI's ``bpe_simple_vocab_16e6.txt(.gz)``, building the vocabulary as CLIP does:
        the 256 byte characters, the same with ``</w>``, each merge joined, then the two specials.

        Special tokens are recognised in the text as with the ``tokenizer/`` folder of SD 1.x
        models (whose configuration marks BOS as normalised and, through the pad token, EOS not).
        """
        path = os.fspath(path)
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rb") as f:
            lines = f.read().decode("utf-8").split("\n")
        merges = [_parse_merge(line, path) for line in lines[1 : CLIP_NUM_MERGES + 1]]
        if len(merges) != CLIP_NUM_MERGES:
            raise ValueError(f"{path}: {len(merges)} merges, CLIP needs {CLIP_NUM_MERGES}")
        tokens = list(_BYTE_TO_CHAR.values())
        tokens += [t + END_OF_WORD for t in tokens]
        tokens += [a + b for a, b in merges]
        tokens += [BOS_TOKEN, EOS_TOKEN]
        vocab = {t: i for i, t in enumerate(tokens)}
        return cls(vocab, merges, added_tokens=SD1_ADDED_TOKENS)

    @classmethod
    def from_folder(cls, folder: str | os.PathLike) -> ClipTokenizer:
        """From a model's ``tokenizer/`` folder: ``vocab.json`` and ``merges.txt`` (or a
        ``tokenizer.json``), with special tokens and length from ``tokenizer_config.json`` and
        ``special_tokens_map.json`` (which wins) when present. SD 2.x folders pad with "!"."""
        folder = os.fspath(folder)
        vocab_path = os.path.join(folder, "vocab.json")
        merges_path = os.path.join(folder, "merges.txt")
        tokenizer_json = os.path.join(folder, "tokenizer.json")
        known: list[dict] = []  # added tokens the files list explicitly, in id order
        if os.path.isfile(vocab_path) and os.path.isfile(merges_path):
            with open(vocab_path, encoding="utf-8") as f:
                vocab = json.load(f)
            with open(merges_path, encoding="utf-8") as f:
                lines = f.read().split("\n")
            merges = [
                _parse_merge(line, merges_path)
                for line in lines
                if line and not line.startswith("#version")
            ]
        elif os.path.isfile(tokenizer_json):
            vocab, merges, known = _read_tokenizer_json(tokenizer_json)
        else:
            raise FileNotFoundError(f"{folder}: no vocab.json and merges.txt, nor tokenizer.json")

        settings = {}
        for name in ("tokenizer_config.json", "special_tokens_map.json"):
            p = os.path.join(folder, name)
            if os.path.isfile(p):
                with open(p, encoding="utf-8") as f:
                    settings.update(json.load(f))
        decoder = settings.get("added_tokens_decoder")
        if isinstance(decoder, dict) and not known:
            known = [decoder[k] for k in sorted(decoder, key=int)]

        named = {key: settings.get(key) for key in _SPECIAL_TOKEN_KEYS}
        # transformers.CLIPTokenizer's defaults for the tokens a folder does not name
        defaults = {
            "bos_token": BOS_TOKEN,
            "eos_token": EOS_TOKEN,
            "unk_token": EOS_TOKEN,
            "pad_token": EOS_TOKEN,
        }
        for key, default in defaults.items():
            if _token_content(named[key]) is None:
                named[key] = default
        kwargs = {key: _token_content(named[key]) for key in defaults}
        kwargs["added_tokens"] = _added_token_order(known, named)
        length = settings.get("model_max_length")
        # transformers writes a huge number to mean "no limit"; keep CLIP's 77 then
        if isinstance(length, int) and 2 <= length <= 4096:
            kwargs["max_length"] = length
        return cls(vocab, merges, **kwargs)

    # ---- encoding ----

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def _bpe(self, piece: str) -> tuple[int, ...]:
        """Ids of one pre-tokenised piece (already in byte-level characters)."""
        cached = self._cache.get(piece)
        if cached is not None:
            return cached
        word = list(piece[:-1]) + [piece[-1] + END_OF_WORD]
        ranks = self.bpe_ranks
        while len(word) > 1:
            # the lowest-ranked adjacent pair is merged everywhere, left to right
            best_rank, best = None, None
            for pair in zip(word[:-1], word[1:], strict=True):
                rank = ranks.get(pair)
                if rank is not None and (best_rank is None or rank < best_rank):
                    best_rank, best = rank, pair
            if best is None:
                break
            first, second = best
            merged = []
            i = 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        ids = tuple(self.vocab.get(token, self.unk_id) for token in word)
        if len(self._cache) >= _BPE_CACHE_SIZE:
            self._cache.clear()
        self._cache[piece] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        """Ids of ``text`` without BOS, EOS or padding.

        As in transformers, the exact strings ``<|startoftext|>`` / ``<|endoftext|>`` written in
        the text become their special ids."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, not {type(text).__name__}")
        ids: list[int] = []
        # special tokens matched raw come out first; the text between them is normalised on its
        # own, then searched for the special tokens that are matched after normalisation
        for k, segment in enumerate(_split(self._raw_split, text)):
            if k % 2 == 1:
                ids.append(self._raw_specials[segment])
                continue
            for k2, part in enumerate(_split(self._norm_split, normalize(segment))):
                if k2 % 2 == 1:
                    ids.append(self._norm_specials[part])
                    continue
                for piece in pre_tokenize(part):
                    ids.extend(self._bpe(_to_byte_chars(piece)))
        return ids

    def tokens(self, text: str) -> list[str]:
        """The token strings of ``text`` (as ``encode``), for inspecting how a prompt is split."""
        return [self.id_to_token[i] for i in self.encode(text)]

    def __call__(
        self,
        text: str,
        max_length: int | None = None,
        pad: bool = True,
        truncate: bool = True,
    ) -> list[int]:
        """``[BOS] + encode(text) + [EOS]``, the content cut to ``max_length - 2`` ids when
        ``truncate``, then padded with ``pad_id`` to ``max_length`` when ``pad``."""
        if max_length is None:
            max_length = self.max_length
        if max_length < 2:
            raise ValueError(f"max_length must be at least 2 (BOS and EOS), not {max_length}")
        ids = self.encode(text)
        if truncate:
            ids = ids[: max_length - 2]
        ids = [self.bos_id, *ids, self.eos_id]
        if pad and len(ids) < max_length:
            ids += [self.pad_id] * (max_length - len(ids))
        return ids

    # ---- decoding ----

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        """Text of ``ids`` as transformers decodes it: ``</w>`` becomes a space, so punctuation
        comes back spaced ("red , blue") and case is lost. Bytes that do not form valid UTF-8
        (a sequence cut inside a character) become U+FFFD."""
        parts = []
        for i in ids:
            i = int(i)
            token = self.id_to_token.get(i)
            if token is None:
                raise ValueError(f"id {i} is not in the vocabulary (size {self.vocab_size})")
            if skip_special_tokens and i in self.special_ids:
                continue
            parts.append(token)
        data = bytes(_CHAR_TO_BYTE[c] for c in "".join(parts))
        return data.decode("utf-8", errors="replace").replace(END_OF_WORD, " ").strip()


def _parse_merge(line: str, path: str) -> tuple[str, str]:
    parts = line.split()
    if len(parts) != 2:
        raise ValueError(f"{path}: bad merge line {line!r}")
    return parts[0], parts[1]


def _read_tokenizer_json(path: str):
    """(vocab, merges, added tokens) of a ``tokenizer.json`` with a BPE model. Its normaliser and
    pre-tokeniser are taken to be CLIP's."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    model = data.get("model") or {}
    if model.get("type") != "BPE":
        raise ValueError(f"{path}: not a BPE tokenizer")
    vocab = dict(model["vocab"])
    added = sorted(data.get("added_tokens", []), key=lambda t: t["id"])
    for token in added:
        vocab.setdefault(token["content"], token["id"])
    merges = []
    for m in model["merges"]:
        if isinstance(m, str):
            merges.append(_parse_merge(m, path))
        else:
            merges.append((m[0], m[1]))
    return vocab, merges, added


def _token_content(value) -> str | None:
    """The text of a special token as the configuration files write it: a string or a dict."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _token_key(value):
    """What makes two configured tokens "the same" to transformers: equal strings, or dicts
    (AddedToken) equal in every field."""
    if isinstance(value, str):
        return ("str", value)
    special = bool(value.get("special", False))
    return (
        "token",
        value.get("content"),
        bool(value.get("normalized", not special)),
        bool(value.get("lstrip", False)),
        bool(value.get("rstrip", False)),
        bool(value.get("single_word", False)),
        special,
    )


def _added_token_order(known: list[dict], named: dict) -> list[tuple[str, bool]]:
    """(content, normalized) of the added tokens, in the order transformers registers them.

    Tokens the files list explicitly (``added_tokens_decoder``, ``tokenizer.json``) come first;
    then each named special token whose text is not among those and which is not an equal entry
    already. A token given as a plain string is matched raw (normalized=False). lstrip and rstrip
    change nothing here, since whitespace never reaches a token; single_word is not supported.
    """
    order = list(known)
    listed = {_token_content(t) for t in known}
    keys = {_token_key(t) for t in known}
    for key in _SPECIAL_TOKEN_KEYS:
        value = named.get(key)
        if _token_content(value) is None or _token_content(value) in listed:
            continue
        if _token_key(value) not in keys:
            keys.add(_token_key(value))
            order.append(value)
    result = []
    for value in order:
        key = _token_key(value)
        if key[0] == "token" and key[5]:
            raise ValueError(f"special token {key[1]!r}: single_word is not supported")
        normalized = key[0] == "token" and key[2]
        result.append((key[1], normalized))
    return result


def _literal_splitter(strings) -> re.Pattern | None:
    """A pattern that finds any of ``strings``, leftmost and then longest, capturing it."""
    if not strings:
        return None
    alternatives = sorted(strings, key=len, reverse=True)
    return re.compile("(" + "|".join(re.escape(s) for s in alternatives) + ")")


def _split(pattern: re.Pattern | None, text: str) -> list[str]:
    """``text`` split around the matches of ``pattern``: text, match, text, ..., text."""
    return [text] if pattern is None else pattern.split(text)


@functools.lru_cache(maxsize=1)
def default_tokenizer() -> ClipTokenizer:
    """The tokenizer of the shipped CLIP vocabulary, built once."""
    return ClipTokenizer.load()


def tokenize(text: str) -> list[int]:
    """The 77 ids of ``text`` for an SD 1.x text encoder: BOS, content, EOS, EOS padding."""
    return default_tokenizer()(text)


# ---- Unicode versions ----
#
# The reference does not take all its Unicode data from one version, nor from the one this Python
# has (unicodedata is Unicode 14.0 in Python 3.11, 13.0 in 3.10): letter and number categories
# come from Unicode 16.0 (Oniguruma), lowercase mappings from Unicode 17.0 (Rust's
# char::to_lowercase) and NFC from Unicode 9.0 (the unicode-normalization-alignments crate). The
# tables below are those differences for characters encoded after Unicode 13.0, as hexadecimal
# code points and ranges, taken from the Unicode 16.0 database and checked against the reference on
# every code point: letters and numbers that this Python may not know (used only where
# unicodedata says "unassigned"), lowercase mappings it may not know, and the characters with
# normalisation properties (a canonical decomposition, a combining class, a part in a composition)
# encoded from Unicode 10.0 on, which the reference's NFC leaves alone.
_LATE_LETTERS = (
    "0870-0887 0889-088e 08b5 08c8-08c9 0c5d 0cdd 170d 171f 1b4c 1c89-1c8a 2c2f 2c5f 9ffd-9fff "
    "a7c0-a7c1 a7cb-a7cd a7d0-a7d1 a7d3 a7d5-a7dc a7f2-a7f4 10570-1057a 1057c-1058a 1058c-10592 "
    "10594-10595 10597-105a1 105a3-105b1 105b3-105b9 105bb-105bc 105c0-105f3 10780-10785 "
    "10787-107b0 107b2-107ba 10d4a-10d65 10d6f-10d85 10ec2-10ec4 10f70-10f81 11071-11072 11075 "
    "1123f-11240 11380-11389 1138b 1138e 11390-113b5 113b7 113d1 113d3 11740-11746 11ab0-11abf "
    "11bc0-11be0 11f02 11f04-11f10 11f12-11f33 12f90-12ff0 1342f 13441-13446 13460-143fa "
    "16100-1611d 16a70-16abe 16d40-16d6c 18cff 1aff0-1aff3 1aff5-1affb 1affd-1affe 1b11f-1b122 "
    "1b132 1b155 1df00-1df1e 1df25-1df2a 1e030-1e06d 1e290-1e2ad 1e4d0-1e4eb 1e5d0-1e5ed 1e5f0 "
    "1e7e0-1e7e6 1e7e8-1e7eb 1e7ed-1e7ee 1e7f0-1e7fe 2a6de-2a6df 2b735-2b739 2ebf0-2ee5d "
    "31350-323af "
)
_LATE_NUMBERS = (
    "10d40-10d49 116d0-116e3 11bf0-11bf9 11f50-11f59 16130-16139 16ac0-16ac9 16d70-16d79 "
    "1ccf0-1ccf9 1d2c0-1d2d3 1e4f0-1e4f9 1e5f1-1e5fa "
)
_LATE_LOWERCASE = (
    "1c89:1c8a 2c2f:2c5f a7c0:a7c1 a7cb:0264 a7cc:a7cd a7ce:a7cf a7d0:a7d1 a7d2:a7d3 a7d4:a7d5 "
    "a7d6:a7d7 a7d8:a7d9 a7da:a7db a7dc:019b 10570:10597 10571:10598 10572:10599 10573:1059a "
    "10574:1059b 10575:1059c 10576:1059d 10577:1059e 10578:1059f 10579:105a0 1057a:105a1 "
    "1057c:105a3 1057d:105a4 1057e:105a5 1057f:105a6 10580:105a7 10581:105a8 10582:105a9 "
    "10583:105aa 10584:105ab 10585:105ac 10586:105ad 10587:105ae 10588:105af 10589:105b0 "
    "1058a:105b1 1058c:105b3 1058d:105b4 1058e:105b5 1058f:105b6 10590:105b7 10591:105b8 "
    "10592:105b9 10594:105bb 10595:105bc 10d50:10d70 10d51:10d71 10d52:10d72 10d53:10d73 "
    "10d54:10d74 10d55:10d75 10d56:10d76 10d57:10d77 10d58:10d78 10d59:10d79 10d5a:10d7a "
    "10d5b:10d7b 10d5c:10d7c 10d5d:10d7d 10d5e:10d7e 10d5f:10d7f 10d60:10d80 10d61:10d81 "
    "10d62:10d82 10d63:10d83 10d64:10d84 10d65:10d85 16ea0:16ebb 16ea1:16ebc 16ea2:16ebd "
    "16ea3:16ebe 16ea4:16ebf 16ea5:16ec0 16ea6:16ec1 16ea7:16ec2 16ea8:16ec3 16ea9:16ec4 "
    "16eaa:16ec5 16eab:16ec6 16eac:16ec7 16ead:16ec8 16eae:16ec9 16eaf:16eca 16eb0:16ecb "
    "16eb1:16ecc 16eb2:16ecd 16eb3:16ece 16eb4:16ecf 16eb5:16ed0 16eb6:16ed1 16eb7:16ed2 "
    "16eb8:16ed3 "
)
_NFC_UNKNOWN = (
    "07fd 0897-089f 08ca-08d3 09fe 0c3c 0d3b-0d3c 0eba 1715 1abf-1ace 1df6-1dfa a82c 105c9 105d2 "
    "105da 105e4 10d24-10d27 10d69-10d6d 10eab-10eac 10efd-10eff 10f46-10f50 10f82-10f85 11070 "
    "1133b 11382-11385 1138b 1138e 11390-11391 113b8 113bb 113c2 113c5 113c7-113c9 113ce-113d0 "
    "1145e 11839-1183a 11930 11935 11938 1193d-1193e 11943 119e0 11a34 11a47 11a99 11d42 "
    "11d44-11d45 11d97 11f41-11f42 1611e-16129 1612f 16d63 16d67-16d6a 16ff0-16ff1 1e08f "
    "1e130-1e136 1e2ae 1e2ec-1e2ef 1e4ec-1e4ef 1e5ee-1e5ef "
)


def _parse_ranges(spec: str) -> tuple[tuple[int, int], ...]:
    ranges = []
    for item in spec.split():
        first, _, last = item.partition("-")
        ranges.append((int(first, 16), int(last or first, 16)))
    return tuple(ranges)


def _in_ranges(ranges: tuple[tuple[int, int], ...], code: int) -> bool:
    k = bisect.bisect_right(ranges, (code, 0x10FFFF)) - 1
    return k >= 0 and ranges[k][0] <= code <= ranges[k][1]


_LATE_LETTER_RANGES = _parse_ranges(_LATE_LETTERS)
_LATE_NUMBER_RANGES = _parse_ranges(_LATE_NUMBERS)
_LATE_LOWERCASE_MAP = {
    chr(int(upper, 16)): chr(int(lower, 16))
    for upper, lower in (item.split(":") for item in _LATE_LOWERCASE.split())
}
_NFC_UNKNOWN_RE = re.compile(
    "(["
    + "".join(
        f"\\U{a:08x}" if a == b else f"\\U{a:08x}-\\U{b:08x}"
        for a, b in _parse_ranges(_NFC_UNKNOWN)
    )
    + "])"
)
