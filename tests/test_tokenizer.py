"""sdcore.tokenizer against transformers.CLIPTokenizer, id for id.

The reference is built from vocab.json / merges.txt that the test writes from the shipped CLIP BPE
file (so nothing comes from the hub), with the tokenizer_config.json and special_tokens_map.json of
SD 1.x models. Every run also draws fresh random strings; the seed is in the failure message, and
SDCORE_TEST_SEED=<seed> replays it.
"""

import gzip
import json
import os
import random

import pytest

transformers = pytest.importorskip("transformers")

from sdcore import tokenizer as tk  # noqa: E402
from sdcore.configs import SD15_SPECIAL_TOKENS_MAP, SD15_TOKENIZER_CONFIG  # noqa: E402

BOS, EOS = 49406, 49407
SEED = int(os.environ.get("SDCORE_TEST_SEED", random.randrange(2**32)))


def clip_vocab_and_merges():
    """CLIP's vocabulary written out from the BPE file the way OpenAI's tokenizer builds it."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    others = [b for b in range(256) if b not in printable]
    chars = [chr(b) for b in printable] + [chr(256 + n) for n in range(len(others))]
    with gzip.open(tk.DEFAULT_BPE_FILE, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def write_folder(path, vocab, merges, tokenizer_config=None, special_tokens_map=None):
    path.mkdir()
    (path / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", "utf-8")
    if tokenizer_config is not None:
        (path / "tokenizer_config.json").write_text(json.dumps(tokenizer_config), "utf-8")
    if special_tokens_map is not None:
        (path / "special_tokens_map.json").write_text(json.dumps(special_tokens_map), "utf-8")
    return path


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("clip_tokenizer")
    vocab, merges = clip_vocab_and_merges()
    sd2_config = dict(SD15_TOKENIZER_CONFIG, pad_token="!")
    sd2_map = dict(SD15_SPECIAL_TOKENS_MAP, pad_token="!")
    return {
        "sd1": write_folder(
            root / "sd1", vocab, merges, SD15_TOKENIZER_CONFIG, SD15_SPECIAL_TOKENS_MAP
        ),
        "bare": write_folder(root / "bare", vocab, merges),
        "sd2": write_folder(root / "sd2", vocab, merges, sd2_config, sd2_map),
        "vocab": vocab,
    }


@pytest.fixture(scope="module")
def reference(folders):
    return transformers.CLIPTokenizer.from_pretrained(str(folders["sd1"]))


# ---- the corpus ----

SUBJECTS = [
    "a red circle on a blue background",
    "portrait of an old fisherman",
    "a cat wearing a wizard hat",
    "an astronaut riding a horse on mars",
    "a bowl of ramen, steam rising",
    "medieval castle on a cliff at sunset",
    "cyberpunk city street at night, neon signs",
    "a cozy cabin in the snowy woods",
    "close-up of a dragonfly's wing",
    "the Eiffel Tower made of LEGO",
    "a Shiba Inu in a spacesuit",
    "still life with apples and a jug",
    "a girl reading under a cherry tree",
    "underwater coral reef, sunrays",
    "an ancient temple overgrown with vines",
    "a robot painting a self-portrait",
    "two green triangles and a yellow square",
    "Mt. Fuji in the background",
    "a 1960s diner, chrome & red leather",
    "a watercolor map of Middle-earth",
]
STYLES = [
    "highly detailed",
    "8k",
    "4K UHD",
    "trending on ArtStation",
    "by Greg Rutkowski and Alphonse Mucha",
    "octane render",
    "Unreal Engine 5",
    "35mm photo, f/1.8, ISO-200",
    "(masterpiece:1.2)",
    "((best quality))",
    "[blurry:0.5]",
    "{cinematic lighting}",
    "oil on canvas",
    "Studio Ghibli style",
    "sharp focus",
    "dramatic lighting -- v 5.2",
    "hdr | vivid colors",
    "art nouveau",
    "photorealistic!!!",
    "ultra-wide angle (14mm)",
    "50% opacity",
    "#digitalart @artist",
    "rule-of-thirds composition",
    "depth of field; bokeh",
]

FIXED = [
    "",
    " ",
    "a",
    "A",
    "a photo of a cat",
    "A Photo Of A CAT",
    "hello world",
    # punctuation and digits
    "a, b. c! d? e: f; g",
    "...!!!???,,,;;;:::",
    "(((a))) [[b]] {{c}} <d> </w>",
    "a--b__c~~d``e^^f",
    "$100 & 50% off @ #1 shop * + = |",
    "1234567890 3.14159 1,000,000 2024-01-01 12:30",
    "x1y22z333 v2.0 mp4 h264 1080p 4k60fps",
    "ISO100 f2.8 1/250s",
    # apostrophes and contractions
    "it's can't we're they've i'm you'll he'd",
    "IT'S CAN'T WE'RE THEY'VE I'M YOU'LL HE'D",
    "It'S cAn'T",
    "dog's cats' rock'n'roll o'clock ma'am y'all",
    "'s 't 're 've 'm 'll 'd",
    "'S 'T 'RE 'VE 'M 'LL 'D",
    "?'s !'re ''s '''s 's's",
    "'quoted' \"double\" `back`",
    "it’s the ‘best’ “photo”",
    "l’été d’hiver",
    # accents and precomposed vs decomposed
    "café naïve résumé piñata über straße",
    "CAFÉ NAÏVE ÜBER ẞ",
    "cafe\u0301 pin\u0303ata u\u0308ber A\u030angström",
    "\u212b \u2126 \u212a",  # Angstrom, ohm and Kelvin signs: NFC maps them to letters
    "Señor José María García",
    "Łódź Żółć Čeština İstanbul ışık",
    "ǅ ǆ Ǆ ẛ\u0323",
    "ﬁ ﬂ ﬀ",
    # scripts
    "кот в шляпе, МОСКВА зимой",
    "ΣΑΣ ΟΔΟΣ αβγ άέή",
    "一只猫在屋顶上，水墨画",
    "猫が屋根の上にいる。カタカナ",
    "지붕 위의 고양이, 수채화",
    "\u1100\u1161\u11a8 \u1112\u1161\u11ab",  # conjoining jamo: NFC composes syllables
    "قطة على السطح ١٢٣",
    "छत पर ब\u093fल\u094dल\u0940 १२३",
    "חתול על הגג",
    "แมวบนหล\u0e31งคา",
    "Ｆｕｌｌｗｉｄｔｈ １２３",
    "Ⅰ Ⅱ Ⅻ ² ½ ①",
    # emoji
    "a cat 🐱 on the moon 🌙",
    "👨\u200d👩\u200d👧\u200d👦 family",
    "🏳\ufe0f\u200d🌈 🇺🇸 🇯🇵 🇫🇷",
    "👍🏽 ❤\ufe0f ☕ ☺\ufe0e",
    "🧑\u200d🚀🌌✨",
    # whitespace
    "a\tb\nc\r\nd",
    "  leading and trailing  ",
    "multiple     spaces\t\t\ttabs",
    "non\xa0breaking\xa0space",
    "ideographic\u3000space em\u2003space thin\u2009space",
    "line\u2028separator paragraph\u2029separator",
    "zero\u200bwidth joiner\u200dnon\u200cjoiner word\u2060joiner",
    "soft\xadhyphen",
    "\ufeffbom at start",
    # control characters
    "null\x00char bell\x07 escape\x1b[0m",
    "file\x1cgroup\x1drecord\x1eunit\x1f",
    "\x7f del \x85 nel \x9f",
    # special tokens written in the text
    "<|startoftext|>",
    "<|endoftext|>",
    "<|startoftext|>a cat<|endoftext|>",
    "a<|endoftext|>b",
    "a <|endoftext|> b <|startoftext|> c",
    "<|EndOfText|> and <|StartOfText|>",
    "<|endoftext|>!! <|endoftext|>'s",
    "x<|endoftext|>'s <|startoftext|>!",
    "< |endoftext| > <|end of text|> <|endoftext|",
    "<|startoftext|><|endoftext|><|startoftext|>",
    # words that BPE splits
    "supercalifragilisticexpialidocious",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "pneumonoultramicroscopicsilicovolcanoconiosis",
    "éééééé ñññ",
    "qwzxjk vbnmlp trgfds",
]


def _over_long(rng):
    words = [w for s in SUBJECTS + STYLES for w in s.split()]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(60, 150))) for _ in range(30)]


def _sd_prompts(rng, n):
    prompts = []
    for _ in range(n):
        parts = [rng.choice(SUBJECTS)] + rng.sample(STYLES, rng.randint(0, 6))
        text = ", ".join(parts)
        if rng.random() < 0.2:
            text = text.upper()
        prompts.append(text)
    return prompts


# Unicode ranges for random strings: scripts, marks, emoji, spaces and controls, and the scripts
# encoded after Unicode 13 (where Python's and the reference's Unicode data differ)
RANGES = [
    (0x20, 0x7E),
    (0x00, 0x20),
    (0x7F, 0xFF),
    (0x100, 0x24F),
    (0x300, 0x36F),
    (0x370, 0x3FF),
    (0x400, 0x4FF),
    (0x530, 0x58F),
    (0x590, 0x5FF),
    (0x600, 0x6FF),
    (0x870, 0x8FF),
    (0x900, 0x97F),
    (0xE00, 0xE7F),
    (0x1100, 0x11FF),
    (0x1AB0, 0x1AFF),
    (0x1C80, 0x1C8F),
    (0x1DC0, 0x1DFF),
    (0x1E00, 0x1EFF),
    (0x2000, 0x206F),
    (0x2100, 0x218F),
    (0x2C00, 0x2C7F),
    (0x3000, 0x30FF),
    (0x4E00, 0x9FFF),
    (0xA7C0, 0xA7FF),
    (0xAC00, 0xD7A3),
    (0xF900, 0xFAFF),
    (0xFB00, 0xFB4F),
    (0xFE00, 0xFE0F),
    (0xFF00, 0xFFEF),
    (0x10570, 0x105FF),
    (0x10D40, 0x10D8F),
    (0x11380, 0x113FF),
    (0x11900, 0x1195F),
    (0x16100, 0x1613F),
    (0x16D40, 0x16D7F),
    (0x16EA0, 0x16EDF),
    (0x1D400, 0x1D7FF),
    (0x1E5D0, 0x1E5FF),
    (0x1F1E6, 0x1F1FF),
    (0x1F300, 0x1FAFF),
    (0x20000, 0x2A6DF),
    (0x31350, 0x323AF),
    (0xE0000, 0xE007F),
    (0x10000, 0x10FFFF),
]
JOINERS = ["\u200d", "\ufe0f", "\u0301", "\u0323", "'", "'s", " ", "  ", "\n"]


def _random_char(rng):
    lo, hi = rng.choice(RANGES)
    while True:
        c = rng.randint(lo, hi)
        if not 0xD800 <= c <= 0xDFFF:
            return chr(c)


def _random_strings(rng, n):
    out = []
    for _ in range(n):
        chars = []
        for _ in range(rng.randint(1, 40)):
            chars.append(_random_char(rng) if rng.random() < 0.85 else rng.choice(JOINERS))
        out.append("".join(chars))
    return out


@pytest.fixture(scope="module")
def corpus():
    rng = random.Random(SEED)
    texts = FIXED + _sd_prompts(rng, 250) + _over_long(rng) + _random_strings(rng, 400)
    assert len(texts) >= 500
    return texts


def _reference_ids(reference, texts):
    return reference(texts, padding="max_length", max_length=77, truncation=True).input_ids


def _first_mismatch(ours_fn, reference_ids, texts):
    for text, want in zip(texts, reference_ids, strict=True):
        got = ours_fn(text)
        if got != want:
            return f"seed {SEED}: {text!r}\n ours      {got}\n reference {want}"
    return None


# ---- tests ----


def test_default_tokenizer_matches_transformers(reference, corpus):
    tok = tk.default_tokenizer()
    mismatch = _first_mismatch(tok, _reference_ids(reference, corpus), corpus)
    assert mismatch is None, mismatch


def test_known_ids():
    # ids of the real CLIP vocabulary, as SD 1.x pipelines produce them
    tok = tk.default_tokenizer()
    assert tok("a photo of a cat", pad=False) == [BOS, 320, 1125, 539, 320, 2368, EOS]
    assert tok.encode("A Red Circle!") == [320, 736, 7117, 256]
    assert tok.encode("café") == [15304]
    assert tok.id_to_token[0] == "!" and tok.id_to_token[256] == "!</w>"
    assert tok.id_to_token[188] == "\u0100" and tok.id_to_token[255] == "\u0143"


def test_tokenize_is_77_ids_with_eos_padding():
    ids = tk.tokenize("a red circle")
    assert len(ids) == 77
    assert ids[0] == BOS and ids[-1] == EOS
    assert ids[1:4] == tk.default_tokenizer().encode("a red circle")
    assert ids[4:] == [EOS] * 73
    tok = tk.default_tokenizer()
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (BOS, EOS, EOS)
    assert tok.vocab_size == 49408


def test_truncation_and_padding_options():
    tok = tk.default_tokenizer()
    long_text = "red " * 100
    assert tok(long_text) == [BOS] + [tok.encode("red")[0]] * 75 + [EOS]
    assert len(tok(long_text, truncate=False)) == 102
    assert tok("a cat", pad=False) == [BOS, *tok.encode("a cat"), EOS]
    assert tok("a cat", max_length=8) == [BOS, *tok.encode("a cat"), EOS] + [EOS] * 4
    assert tok("", max_length=2) == [BOS, EOS]
    with pytest.raises(ValueError):
        tok("a", max_length=1)
    with pytest.raises(TypeError):
        tok.encode(b"bytes")


def test_shipped_vocabulary_is_clip(folders):
    assert tk.default_tokenizer().vocab == folders["vocab"]


def test_folder_loading_matches(folders, reference, corpus):
    texts = corpus[:: max(1, len(corpus) // 300)]
    want = _reference_ids(reference, texts)
    tok = tk.ClipTokenizer.load(folders["sd1"])
    assert tok.max_length == 77
    mismatch = _first_mismatch(tok, want, texts)
    assert mismatch is None, mismatch


@pytest.mark.parametrize("name", ["bare", "sd2"])
def test_other_folder_configurations_match(folders, corpus, name):
    """Without configuration files every special token is matched raw; SD 2.x-style folders pad
    with "!" (id 0), which transformers then also finds as a special token in the text."""
    texts = [t for t in FIXED if "<|" in t or "!" in t] + corpus[::10]
    reference = transformers.CLIPTokenizer.from_pretrained(str(folders[name]))
    tok = tk.ClipTokenizer.load(folders[name])
    assert tok.pad_id == reference.pad_token_id
    mismatch = _first_mismatch(tok, _reference_ids(reference, texts), texts)
    assert mismatch is None, mismatch


def test_tokenizer_json_folder(folders, tmp_path, corpus):
    """A folder as transformers 5 saves it: tokenizer.json and tokenizer_config.json only."""
    for name in ("sd1", "sd2"):
        saved = tmp_path / name
        transformers.CLIPTokenizer.from_pretrained(str(folders[name])).save_pretrained(saved)
        for leftover in ("vocab.json", "merges.txt"):
            (saved / leftover).unlink(missing_ok=True)
        reference = transformers.CLIPTokenizer.from_pretrained(str(saved))
        texts = FIXED + corpus[::20]
        tok = tk.ClipTokenizer.load(saved)
        mismatch = _first_mismatch(tok, _reference_ids(reference, texts), texts)
        assert mismatch is None, mismatch


def test_decode_round_trip_and_matches_transformers(reference, corpus):
    tok = tk.default_tokenizer()
    rng = random.Random(SEED)
    words = [w.strip(",.()") for s in SUBJECTS for w in s.lower().split()]
    words = [w for w in words if w.isalpha()]
    for _ in range(100):
        prompt = " ".join(rng.choice(words) for _ in range(rng.randint(1, 20)))
        assert tok.decode(tok(prompt)) == prompt, f"seed {SEED}"
    assert tok.decode(tok.encode("A Red Circle, on blue!!")) == "a red circle , on blue !!"
    for text in corpus[:200]:
        ids = tok(text)
        want = reference.decode(ids, skip_special_tokens=True)
        assert tok.decode(ids) == want, f"seed {SEED}: {text!r}"
    ids = tok("<|endoftext|> a cat", pad=False)
    assert tok.decode(ids, skip_special_tokens=False) == reference.decode(ids)


def test_special_tokens_in_text():
    tok = tk.default_tokenizer()
    assert tok.encode("a<|endoftext|>b") == [*tok.encode("a"), EOS, *tok.encode("b")]
    # in SD 1.x folders BOS is matched after normalisation, EOS only as written
    assert tok.encode("<|StartOfText|>") == [BOS]
    assert EOS not in tok.encode("<|EndOfText|>")
    assert tok.tokens("<|EndOfText|>") == ["<", "|</w>", "endof", "text</w>", "|", "></w>"]
