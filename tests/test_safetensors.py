"""safetensors reading: files written by the `safetensors` package read back exactly, bad
files raise an exception naming the file and tensor, and mutated files never crash.

Under AddressSanitizer and UndefinedBehaviorSanitizer: `bash tools/sanitize.sh
tests/test_safetensors.py` (docs/asan.md); coverage-guided fuzzing of the same reader:
`bash tests/fuzz/run.sh safetensors json`.
"""

import json
import os
import struct
import time

import numpy as np
import pytest
import torch
from safetensors import SafetensorError, safe_open
from safetensors.numpy import load_file, save_file
from safetensors.torch import save_file as torch_save_file

import sdcore

Weights = sdcore._C.Weights

SUPPORTED = {"F32": np.float32, "F16": np.float16}


def write_raw(path, header, data=b"", header_len=None, pad=True):
    """A safetensors file from a header (dict or raw bytes) and a data area, by hand."""
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    if pad:  # the format pads the header with spaces so the data area is 8-aligned
        text += b" " * (-len(text) % 8)
    n = len(text) if header_len is None else header_len
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", n) + text + data)
    return path


def entry(dtype, shape, begin, end):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": [begin, end]}


def bf16_to_f32(raw):
    return (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)


# ---------------------------------------------------------------- round trips ----


@pytest.mark.parametrize("ndim", [0, 1, 2, 3, 4])
def test_numpy_files_read_back_exactly(tmp_path, rng, ndim):
    tensors = {}
    for dtype in (np.float32, np.float16):
        for i in range(3):
            shape = tuple(int(d) for d in rng.integers(1, 7, ndim))
            a = rng.standard_normal(shape).astype(dtype)
            tensors[f"layer.{i}.{np.dtype(dtype).name}.weight"] = a
    meta = {"format": "pt", "note": "caf\u00e9 \u8d64\u3044 \U0001f388", "empty": ""}
    path = tmp_path / "m.safetensors"
    save_file(tensors, str(path), metadata=meta)
    w = Weights.open(str(path))
    assert sorted(w.names()) == sorted(tensors)
    assert w.metadata() == meta
    for name, a in tensors.items():
        assert w.info(name) == (a.dtype.name, a.shape)
        got = w.array(name)
        assert got.shape == a.shape
        np.testing.assert_array_equal(got, a.astype(np.float32), err_msg=name)


def test_torch_bf16_and_mixed_file(tmp_path, rng):
    g = torch.Generator().manual_seed(int(rng.integers(1 << 31)))
    tensors = {
        "bf16.a": torch.randn(3, 5, generator=g).to(torch.bfloat16),
        "bf16.b": torch.randn(2, 1, 3, 3, generator=g).to(torch.bfloat16),
        "f16": torch.randn(7, generator=g).to(torch.float16),
        "f32": torch.randn(4, 4, 2, generator=g),
    }
    path = tmp_path / "t.safetensors"
    torch_save_file(tensors, str(path), metadata={"k": "v"})
    w = Weights.open(path)  # os.PathLike is accepted
    assert w.metadata() == {"k": "v"}
    assert w.info("bf16.a") == ("bfloat16", (3, 5))
    for name, t in tensors.items():
        np.testing.assert_array_equal(w.array(name), t.float().numpy(), err_msg=name)


def test_no_metadata_and_empty_file(tmp_path):
    path = write_raw(tmp_path / "e.safetensors", {})
    w = Weights.open(str(path))
    assert len(w) == 0 and w.metadata() == {}
    path = tmp_path / "one.safetensors"
    save_file({"x": np.ones(3, np.float32)}, str(path))
    assert Weights.open(str(path)).metadata() == {}


def test_unaligned_tensor_is_copied(tmp_path, rng):
    h = rng.standard_normal(3).astype(np.float16)  # 6 bytes: f32 after it starts at 6
    f = rng.standard_normal((2, 3)).astype(np.float32)
    b = rng.standard_normal(1).astype(np.float32).astype(np.float16)
    header = {
        "h": entry("F16", (3,), 0, 6),
        "f": entry("F32", (2, 3), 6, 30),
        "b": entry("F16", (1,), 30, 32),
        "byte": entry("U8", (1,), 32, 33),  # skipped, and puts "odd" at an odd offset
        "odd": entry("F16", (2,), 33, 37),
    }
    odd = rng.standard_normal(2).astype(np.float16)
    data = h.tobytes() + f.tobytes() + b.tobytes() + b"\x00" + odd.tobytes()
    path = write_raw(tmp_path / "u.safetensors", header, data)
    w = Weights.open(str(path), skip_unsupported=True)
    assert "byte" not in w
    np.testing.assert_array_equal(w.array("h"), h.astype(np.float32))
    np.testing.assert_array_equal(w.array("f"), f)
    np.testing.assert_array_equal(w.array("b"), b.astype(np.float32))
    np.testing.assert_array_equal(w.array("odd"), odd.astype(np.float32))


def test_escapes_in_names_and_empty_tensors(tmp_path):
    raw = (
        b'{"caf\\u00e9 \\ud83c\\udf88 \\"q\\" \\\\ \\/ \\t":'
        b'{"dtype":"F32","shape":[2],"data_offsets":[0,8]},'
        b' "empty" : {"dtype":"F16","shape":[0,3],"data_offsets":[8,8]},'
        b'"last":{"shape":[1],"dtype":"F32","data_offsets":[8,12]},'
        b'"empty.end":{"shape":[4,0],"dtype":"BF16","data_offsets":[12,12]}}'
    )
    data = np.array([1.5, -2.0], np.float32).tobytes() + struct.pack("<f", 3.0)
    w = Weights.open(str(write_raw(tmp_path / "n.safetensors", raw, data)))
    name = 'caf\u00e9 \U0001f388 "q" \\ / \t'
    assert sorted(w.names()) == sorted([name, "empty", "last", "empty.end"])
    np.testing.assert_array_equal(w.array(name), [1.5, -2.0])
    assert w.array("empty").shape == (0, 3)
    assert w.array("empty.end").shape == (4, 0)
    np.testing.assert_array_equal(w.array("last"), [3.0])


def test_skip_unsupported(tmp_path, rng):
    path = tmp_path / "s.safetensors"
    f = rng.standard_normal((2, 2)).astype(np.float32)
    save_file({"ids": np.arange(77, dtype=np.int64)[None], "w": f}, str(path))
    with pytest.raises(sdcore.FormatError, match="'ids' has dtype I64"):
        Weights.open(str(path))
    w = Weights.open(str(path), skip_unsupported=True)
    assert w.names() == ["w"]
    np.testing.assert_array_equal(w.array("w"), f)
    # a skipped tensor's entry is still checked
    bad = {"ids": entry("I64", (1, 77), 0, 600), "w": entry("F32", (1,), 616, 620)}
    write_raw(path, bad, bytes(620))
    with pytest.raises(sdcore.FormatError, match="'ids'.*needs 616 bytes"):
        Weights.open(str(path), skip_unsupported=True)


def test_weights_outlive_python_references(tmp_path, rng):
    path = tmp_path / "k.safetensors"
    a = rng.standard_normal((4, 4)).astype(np.float32)
    save_file({"a": a}, str(path))
    sub = Weights.open(str(path)).subset({"renamed": "a", "flat": ("a", (16,))})
    os.remove(path)  # the mapping holds the data
    np.testing.assert_array_equal(sub.array("renamed"), a)
    np.testing.assert_array_equal(sub.array("flat"), a.ravel())


def test_subset_view_needs_same_numel(tmp_path):
    path = tmp_path / "v.safetensors"
    save_file({"c": np.ones((8, 8, 1, 1), np.float32)}, str(path), metadata={"m": "1"})
    w = Weights.open(str(path))
    v = w.subset({"to_q.weight": ("c", (8, 8))})
    assert v.info("to_q.weight") == ("float32", (8, 8))
    assert v.metadata() == {"m": "1"}
    with pytest.raises(ValueError, match="'c'.*element count"):
        w.subset({"x": ("c", (8, 7))})
    with pytest.raises(ValueError, match="element count"):
        w.subset({"x": ("c", (1, 1, 1, 8, 8))})
    with pytest.raises(KeyError, match="'nope'"):
        w.subset({"x": ("nope", (8, 8))})
    with pytest.raises(TypeError):
        w.subset({"x": ("c",)})


# ---------------------------------------------------------------- bad files ------


def open_fails(path, exc, *words):
    with pytest.raises(exc) as info:
        Weights.open(str(path))
    msg = str(info.value)
    for word in (str(path), *words):
        assert word in msg, f"{word!r} not in {msg!r}"
    return msg


@pytest.mark.parametrize("dtype", ["F64", "I64", "I32", "U8", "I8", "BOOL", "F8_E4M3", "F8_E5M2"])
def test_unsupported_dtype_is_named(tmp_path, dtype):
    size = {"F64": 8, "I64": 8, "I32": 4}.get(dtype, 1)
    header = {"ok": entry("F32", (2,), 0, 8), "bad.weight": entry(dtype, (3,), 8, 8 + 3 * size)}
    path = write_raw(tmp_path / "d.safetensors", header, bytes(8 + 3 * size))
    open_fails(path, sdcore.FormatError, "'bad.weight'", dtype)


def test_unknown_dtype(tmp_path):
    path = write_raw(tmp_path / "d.safetensors", {"x": entry("F128", (1,), 0, 16)}, bytes(16))
    open_fails(path, sdcore.FormatError, "'x'", "unknown dtype 'F128'")


def test_more_than_four_dims(tmp_path):
    path = tmp_path / "5d.safetensors"
    save_file({"five.d": np.ones((1, 2, 1, 2, 1), np.float32)}, str(path))
    open_fails(path, sdcore.FormatError, "'five.d'", "5 dims")


def test_truncated_file(tmp_path, rng):
    path = tmp_path / "t.safetensors"
    save_file({"a": np.ones(16, np.float32), "b": np.ones(16, np.float32)}, str(path))
    full = path.read_bytes()
    path.write_bytes(full[:-10])
    open_fails(path, sdcore.FormatError, "data_offsets", "data area")
    path.write_bytes(full[:40])
    open_fails(path, sdcore.FormatError, "header length", "larger than the file")
    path.write_bytes(full[:5])
    open_fails(path, sdcore.FormatError, "too short")
    path.write_bytes(b"")
    open_fails(path, sdcore.FormatError, "0 bytes")


def test_header_length_field(tmp_path):
    path = tmp_path / "h.safetensors"
    write_raw(path, {"a": entry("F32", (1,), 0, 4)}, bytes(4), header_len=1 << 40)
    open_fails(path, sdcore.FormatError, "larger than the file")
    write_raw(path, {"a": entry("F32", (1,), 0, 4)}, bytes(4), header_len=(1 << 64) - 1)
    open_fails(path, sdcore.FormatError, "larger than the file")
    big = 100_000_008
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", big))
        f.truncate(8 + big)  # sparse: no disk used
    open_fails(path, sdcore.FormatError, "over the limit")


def test_overlapping_ranges(tmp_path):
    header = {"first": entry("F32", (4,), 0, 16), "second": entry("F32", (2,), 12, 20)}
    path = write_raw(tmp_path / "o.safetensors", header, bytes(20))
    open_fails(path, sdcore.FormatError, "'first'", "'second'", "overlap")
    # contained inside a larger range, listed in either order
    header = {"inner": entry("F16", (2,), 4, 8), "outer": entry("F32", (4,), 0, 16)}
    path = write_raw(tmp_path / "o.safetensors", header, bytes(16))
    open_fails(path, sdcore.FormatError, "'inner'", "'outer'", "overlap")


def refused_by_reference(path):
    """Whether the `safetensors` library refuses the file (it checks the layout on open)."""
    try:
        with safe_open(str(path), "np") as f:
            list(f.keys())
    except SafetensorError:
        return True
    return False


@pytest.mark.parametrize(
    "tensors,size,words",
    [
        # a hole between two tensors
        ({"a": ("F32", (2,), 0, 8), "b": ("F32", (1,), 12, 16)}, 16, ["[8, 12)", "'b'"]),
        # bytes after the last tensor
        ({"a": ("F32", (2,), 0, 8)}, 9, ["[8, 9)", "after the last tensor 'a'"]),
        ({"a": ("F16", (2,), 0, 4), "b": ("F32", (1,), 4, 8)}, 16, ["[8, 16)", "'b'"]),
        # bytes before the first tensor
        ({"a": ("F32", (1,), 4, 8)}, 8, ["[0, 4)", "'a'"]),
        # a data area and no tensor at all, or only empty ones
        ({}, 8, ["8 bytes", "no tensor"]),
        ({"e": ("F32", (0,), 0, 0)}, 4, ["[0, 4)", "'e'"]),
        # an unsupported tensor covers its bytes, but not the hole after it
        (
            {"a": ("F32", (1,), 0, 4), "i": ("I32", (1,), 4, 8), "b": ("F32", (1,), 12, 16)},
            16,
            ["[8, 12)", "'b'"],
        ),
        # an empty tensor must sit at a boundary, not inside another tensor's bytes
        ({"a": ("F32", (4,), 0, 16), "e": ("F32", (0,), 8, 8)}, 16, ["'a'", "'e'", "overlap"]),
    ],
)
def test_unused_bytes_are_refused(tmp_path, rng, tensors, size, words):
    header = {name: entry(*spec) for name, spec in tensors.items()}
    data = rng.bytes(size)
    path = write_raw(tmp_path / "u.safetensors", header, data)
    with pytest.raises(sdcore.FormatError) as info:
        Weights.open(str(path), skip_unsupported=True)
    for word in (str(path), *words):
        assert word in str(info.value), f"{word!r} not in {info.value}"
    assert refused_by_reference(path)
    # the same tensors with the unused bytes cut out load, in both readers
    layout = sorted((b, e, n) for n, (_, _, b, e) in tensors.items())
    fixed, pos = {}, 0
    for begin, end, name in layout:
        dtype, shape = tensors[name][:2]
        fixed[name] = entry(dtype, shape, pos, pos + end - begin)
        pos += end - begin
    packed = b"".join(data[b:e] for b, e, _ in layout)
    path = write_raw(tmp_path / "fixed.safetensors", fixed, packed)
    w = Weights.open(str(path), skip_unsupported=True)
    assert not refused_by_reference(path)
    for begin, end, name in layout:
        dtype = tensors[name][0]
        if dtype in SUPPORTED:
            expect = np.frombuffer(data[begin:end], SUPPORTED[dtype]).astype(np.float32)
            np.testing.assert_array_equal(w.array(name).ravel(), expect, err_msg=name)


def test_shape_beyond_what_can_be_indexed(tmp_path, rng):
    """An empty tensor holds no bytes, but each of its dims must still be indexable: a
    shape whose dims (a zero counted as 1) multiply past SD_SAFETENSORS_MAX_SPAN
    (INT64_MAX // 8) is refused at open, whatever the order of its dims."""
    limit = (2**63 - 1) // 8
    path = tmp_path / "s.safetensors"
    big = int(rng.integers(limit + 1, 2**63))  # any dim past the limit
    a, b = (int(x) for x in rng.integers(2**31, 2**32, 2))  # a * b * 2**29 > limit
    for shape in ([0, 2**62], [2**62, 0], [0, big], [0, a, b, 2**29], [a, 0, b, 2**29]):
        shape = shape if rng.integers(2) else shape[::-1]
        write_raw(path, {"huge.weight": entry("F16", shape, 0, 0)})
        open_fails(path, sdcore.FormatError, "'huge.weight'", "too large")
        # the same check holds for a tensor that would be skipped
        write_raw(path, {"huge.ids": entry("I64", shape, 0, 0)})
        with pytest.raises(sdcore.FormatError, match="'huge.ids'.*too large"):
            Weights.open(str(path), skip_unsupported=True)
    # at the limit the shape is accepted and NumPy can make its (empty) array
    for shape in ([0, limit], [limit, 0], [0, 2**30, 2**30 - 1], [2**20 - 1, 2**20, 0, 2**20]):
        write_raw(path, {"edge": entry("F32", shape, 0, 0)})
        w = Weights.open(str(path))
        assert w.info("edge") == ("float32", tuple(shape))
        assert w.array("edge").shape == tuple(shape)


@pytest.mark.parametrize(
    "offsets,words",
    [
        ([0, 12], ["'a'", "needs 8 bytes", "hold 12"]),
        ([8, 24], ["'a'", "data area (16 bytes)"]),
        ([12, 4], ["'a'", "not a range"]),
        ([0, 1 << 62], ["'a'", "data area"]),
        ([0], ["'a'", "two integers"]),
        ([0, 8, 8], ["'a'", "two integers"]),
        ([0, "8"], ["'a'", "two integers"]),
        ("0,8", ["'a'", "two integers"]),
    ],
)
def test_bad_offsets(tmp_path, offsets, words):
    header = {"a": {"dtype": "F32", "shape": [2], "data_offsets": offsets}}
    path = write_raw(tmp_path / "r.safetensors", header, bytes(16))
    open_fails(path, sdcore.FormatError, *words)


@pytest.mark.parametrize(
    "entry_json,words",
    [
        ('"F32"', ["'a'", "expected an object"]),
        ('{"dtype":"F32","shape":[2]}', ["'a'", "two integers"]),
        ('{"shape":[2],"data_offsets":[0,8]}', ["'a'", "'dtype'"]),
        ('{"dtype":"F32","data_offsets":[0,8]}', ["'a'", "'shape'"]),
        ('{"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":1}', ["'a'", "unexpected key"]),
        ('{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}', ["non-integer"]),
        ('{"dtype":"F32","shape":[2],"data_offsets":[0,8.0]}', ["non-integer"]),
        ('{"dtype":"F32","shape":[2],"data_offsets":[0,8e0]}', ["non-integer"]),
        ('{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}', ["negative"]),
        ('{"dtype":"F32","shape":[2],"data_offsets":[-0,8]}', ["negative"]),
        ('{"dtype":"F32","shape":[2],"data_offsets":[0,99999999999999999999]}', ["too large"]),
        ('{"dtype":"F32","shape":[2],"data_offsets":[0,9223372036854775808]}', ["too large"]),
        ('{"dtype":"F32","shape":[2],"data_offsets":[00,8]}', ["leading zero"]),
        (
            '{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,8]}',
            ["'a'", "too large"],
        ),
        ('{"dtype":"F32","shape":[2],"data_offsets":[0,8],"dtype":"F32"}', ["twice"]),
        ('{"dtype":"F32","shape":[2],"data_offsets":[0,8]', ["expected ','"]),
        ('{"dtype":"F32" "shape":[2],"data_offsets":[0,8]}', ["expected ','"]),
        ('{"dtype":"F32","shape":[2,],"data_offsets":[0,8]}', ["expected a value"]),
        ('{"dtype":F32,"shape":[2],"data_offsets":[0,8]}', ["expected a value"]),
        ('{"dtype":"F\\x32","shape":[2],"data_offsets":[0,8]}', ["invalid escape"]),
        ('{"dtype":"F\\u003","shape":[2],"data_offsets":[0,8]}', ["four hex digits"]),
        ('{"dtype":"F\\ud800","shape":[2],"data_offsets":[0,8]}', ["surrogate"]),
        ('{"dtype":"F\\udc00\\ud800","shape":[2],"data_offsets":[0,8]}', ["surrogate"]),
        ('{"dtype":"F\\u0000","shape":[2],"data_offsets":[0,8]}', ["NUL"]),
        ('{"dtype":"F\t32","shape":[2],"data_offsets":[0,8]}', ["control character"]),
        ('{"dtype":"F32","shape":[2],"data_offsets":[0,8]} x', ["expected ','"]),
        ('{"dtype":truth,"shape":[2],"data_offsets":[0,8]}', ["literal"]),
        ('{"dtype":null,"shape":[2],"data_offsets":[0,8]}', ["'dtype'"]),
    ],
)
def test_bad_json(tmp_path, entry_json, words):
    raw = ('{"a":' + entry_json + "}").encode()
    path = write_raw(tmp_path / "j.safetensors", raw, bytes(8))
    open_fails(path, sdcore.FormatError, *words)


@pytest.mark.parametrize(
    "raw,words",
    [
        (b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}}', ["after the JSON value"]),
        (b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}\x00', ["after the JSON"]),
        (b"[1, 2]", ["the header is an array"]),
        (b"", ["end of the header"]),
        (b'"x', ["unterminated string"]),
        (b'{"x\\', ["unterminated string"]),
        (b'{"\xc3\x28":1}', ["UTF-8"]),
        (b'{"\xed\xa0\x80":1}', ["UTF-8"]),  # an encoded surrogate
        (b'{"\xc0\xaf":1}', ["UTF-8"]),  # overlong
        (b'{"\xf4\x90\x80\x80":1}', ["UTF-8"]),  # past U+10FFFF
        (b'{"__metadata__": {"k": 1}}', ["'__metadata__'", "'k'", "expected a string"]),
        (b'{"__metadata__": ["k"]}', ["'__metadata__'", "expected an object"]),
        (b'{"a": 1, "a": 2}', ["'a' appears twice"]),
        (b"[" * 70 + b"]" * 70, ["nesting too deep"]),
        (b'{"x":' * 70 + b"1" + b"}" * 70, ["nesting too deep"]),
    ],
)
def test_bad_header(tmp_path, raw, words):
    path = write_raw(tmp_path / "b.safetensors", raw, pad=False)
    open_fails(path, sdcore.FormatError, *words)


def test_io_errors(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        Weights.open(str(tmp_path / "missing.safetensors"))
    assert "missing.safetensors" in str(info.value)
    with pytest.raises(IsADirectoryError):
        Weights.open(str(tmp_path))
    fifo = tmp_path / "fifo.safetensors"
    os.mkfifo(fifo)
    with pytest.raises(OSError, match="fifo.safetensors"):
        Weights.open(str(fifo))  # refused, not waiting for a writer
    with pytest.raises(ValueError):
        Weights.open("a\x00b")
    with pytest.raises(TypeError):
        Weights.open(3)


# ---------------------------------------------------------------- fuzzing --------


def seed_files(rng):
    """A few valid files the mutations start from."""
    files = []
    for k in range(4):
        tensors = {}
        for i in range(int(rng.integers(1, 6))):
            shape = tuple(int(d) for d in rng.integers(1, 5, int(rng.integers(1, 5))))
            dtype = [np.float32, np.float16][int(rng.integers(2))]
            tensors[f"model.block.{i}.w{k}"] = rng.standard_normal(shape).astype(dtype)
        meta = {"format": "pt", "k": f"v{k}"} if k % 2 else None
        header = {"__metadata__": meta} if meta else {}
        data, pos = b"", 0
        for name, a in tensors.items():
            dt = "F32" if a.dtype == np.float32 else "F16"
            header[name] = entry(dt, a.shape, pos, pos + a.nbytes)
            data += a.tobytes()
            pos += a.nbytes
        if k == 3:  # a bf16 tensor and an unsupported one
            b = rng.standard_normal(5).astype(np.float32).view(np.uint32) >> 16
            header["bf"] = entry("BF16", (5,), pos, pos + 10)
            header["ids"] = entry("I64", (2,), pos + 10, pos + 26)
            data += b.astype(np.uint16).tobytes() + np.arange(2, dtype=np.int64).tobytes()
        text = json.dumps(header).encode()
        text += b" " * (-len(text) % 8)
        files.append(struct.pack("<Q", len(text)) + text + data)
    return files


JSON_SNIPPETS = [
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b'"',
    b"\\",
    b"\\u",
    b"\\ud800",
    b"-1",
    b"1.5",
    b"1e3",
    b"99999999999999999999",
    b"null",
    b"true",
    b"0",
    b"4",
    b"  ",
    b'"F64"',
    b'"BF16"',
    b'"F32"',
    b'"dtype"',
    b'"shape"',
    b'"data_offsets"',
    b"\x00",
    b"\xff",
    b"\xc3",
    b'"__metadata__"',
    b"[1,2,3,4,5]",
    b"[]",
    b"{}",
]


def mutate(rng, blob):
    """One random edit of a file of at least 9 bytes: byte flips, insertions, deletions,
    truncation, a new length field, or a JSON token swapped in the header."""
    b = bytearray(blob)
    # an earlier edit may have left a length field that lies: stay inside the bytes
    n_header = min(struct.unpack("<Q", blob[:8])[0], len(blob) - 8)
    kind = int(rng.integers(9))
    if n_header < 1 and kind in (0, 2, 6, 7):
        kind = 5
    if kind == 0:  # flip bits in a few header bytes
        for _ in range(int(rng.integers(1, 4))):
            i = int(rng.integers(8, 8 + n_header))
            b[i] ^= 1 << int(rng.integers(8))
    elif kind == 1:  # random bytes anywhere
        for _ in range(int(rng.integers(1, 4))):
            b[int(rng.integers(len(b)))] = int(rng.integers(256))
    elif kind == 2:  # insert bytes in the header (the length field now lies)
        i = int(rng.integers(8, 8 + n_header))
        b[i:i] = rng.bytes(int(rng.integers(1, 5)))
    elif kind == 3:  # delete a run of bytes
        i = int(rng.integers(len(b)))
        del b[i : i + int(rng.integers(1, 9))]
    elif kind == 4:  # truncate
        del b[int(rng.integers(len(b))) :]
    elif kind == 5:  # a new header length
        choices = [0, 1, max(n_header - 1, 0), n_header + 1, len(b), len(b) - 8, 1 << 63, 2**64 - 1]
        choices.append(int(rng.integers(0, 1 << 62)))
        b[:8] = struct.pack("<Q", choices[int(rng.integers(len(choices)))])
    elif kind == 6:  # replace a JSON token with a snippet, keeping the length field right
        header = bytes(b[8 : 8 + n_header])
        i = int(rng.integers(len(header)))
        j = min(len(header), i + int(rng.integers(0, 6)))
        snippet = JSON_SNIPPETS[int(rng.integers(len(JSON_SNIPPETS)))]
        header = header[:i] + snippet + header[j:]
        b = bytearray(struct.pack("<Q", len(header)) + header + blob[8 + n_header :])
    elif kind == 7:  # change a number in the header (offsets, dims)
        header = bytes(b[8 : 8 + n_header])
        digits = [i for i, c in enumerate(header) if 48 <= c <= 57]
        if digits:
            i = digits[int(rng.integers(len(digits)))]
            new = str(int(rng.choice([0, 1, 2, 3, 7, 8, 16, 1 << 31, 1 << 40, 1 << 63]))).encode()
            header = header[:i] + new + header[i + 1 :]
        b = bytearray(struct.pack("<Q", len(header)) + header + blob[8 + n_header :])
    else:  # several edits at once
        for _ in range(2):
            b = bytearray(mutate(rng, bytes(b))) if len(b) >= 9 else b
    return bytes(b)


def check_consistent(w, blob):
    """A file that loaded must agree with an independent reading of its bytes."""
    n = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8 : 8 + n].decode("utf-8"))  # our parser accepted it
    data = blob[8 + n :]
    meta = header.pop("__metadata__", None) or {}
    assert w.metadata() == meta
    names = {k for k, v in header.items() if v["dtype"] in ("F32", "F16", "BF16")}
    assert set(w.names()) == names
    for name in names:
        e = header[name]
        begin, end = e["data_offsets"]
        raw = data[begin:end]
        assert len(raw) == end - begin
        if e["dtype"] == "BF16":
            expect = bf16_to_f32(raw)
        else:
            expect = np.frombuffer(raw, SUPPORTED[e["dtype"]]).astype(np.float32)
        got = w.array(name)
        assert got.shape == tuple(e["shape"])
        np.testing.assert_array_equal(got.ravel(), expect)


def test_fuzz_mutated_files(tmp_path, rng):
    """Thousands of damaged files: each loads consistently or raises a clean error."""
    seeds = seed_files(rng)
    path = tmp_path / "fuzz.safetensors"
    loaded = failed = 0
    start = time.perf_counter()
    cases = int(os.environ.get("SDCORE_FUZZ_CASES", 4000))
    for case in range(cases):
        blob = seeds[case % len(seeds)]
        if case >= len(seeds):
            blob = mutate(rng, blob)
        path.write_bytes(blob)
        skip = bool(case % 3 == 0)
        try:
            w = Weights.open(str(path), skip_unsupported=skip)
        except sdcore.FormatError as e:
            assert str(path) in str(e), f"case {case}: {e}"
            failed += 1
            continue
        except (OSError, ValueError) as e:
            assert str(path) in str(e), f"case {case}: {e}"
            failed += 1
            continue
        if not skip:
            hdr = json.loads(blob[8 : 8 + struct.unpack("<Q", blob[:8])[0]])
            assert all(
                v["dtype"] in ("F32", "F16", "BF16") for k, v in hdr.items() if k != "__metadata__"
            )
        check_consistent(w, blob)
        loaded += 1
        try:  # the peer should agree wherever it also reads the file
            ref = load_file(str(path))
        except Exception:
            continue
        for name in w.names():
            np.testing.assert_array_equal(w.array(name), ref[name].astype(np.float32))
    elapsed = time.perf_counter() - start
    print(f"fuzz: {cases} files, {loaded} loaded, {failed} rejected in {elapsed:.1f} s")
    assert loaded > len(seeds) and failed > cases // 2
