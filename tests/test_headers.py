"""The header reader of `_formats` through the checks of `_headers`: one malformed file per rule, refused with
InvalidComponentError.

GGUF files pass only if ggml's gguf_init_from_file would parse them (the core's fallback reader can crash);
safetensors files are checked whenever the core could take them for safetensors, and refused where the
core's JSON code would throw. Files are built by hand here, or by `_formats`' writers and then patched.
"""

from __future__ import annotations

import importlib.util
import io
import json
import random
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import sdcpp_py
from sdcpp_py import _formats, _headers
from sdcpp_py._headers import InvalidComponentError

# --------------------------------------------------------------------------- GGUF builders

U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = range(13)
FORMATS = {U8: "B", I8: "b", U16: "H", I16: "h", U32: "I", I32: "i", F32: "f", BOOL: "?", U64: "Q", I64: "q",
           F64: "d"}


def gstr(text) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw)) + raw


def kv(key, kind: int, value) -> bytes:
    """A metadata entry; value is packed by kind, or passed as raw payload bytes."""
    if isinstance(value, bytes):
        payload = value
    elif kind == STR:
        payload = gstr(value)
    else:
        payload = struct.pack("<" + FORMATS[kind], value)
    return gstr(key) + struct.pack("<i", kind) + payload


def kv_array(key, item_kind: int, items) -> bytes:
    if item_kind == STR:
        body = b"".join(gstr(item) for item in items)
    else:
        body = struct.pack(f"<{len(items)}{FORMATS[item_kind]}", *items)
    return gstr(key) + struct.pack("<iiQ", ARR, item_kind, len(items)) + body


def info(name, dims, type_id: int = 0, offset: int = 0) -> bytes:
    return gstr(name) + struct.pack(f"<I{len(dims)}q", len(dims), *dims) + struct.pack("<iQ", type_id, offset)


def gguf(kvs=(), infos=None, data=None, *, version: int = 3, alignment: int = 32) -> bytes:
    """A GGUF file: by default one f32 tensor "w" of 8 elements at offset 0."""
    infos = [info("w", [8])] if infos is None else infos
    head = b"GGUF" + struct.pack("<IQQ", version, len(infos), len(kvs)) + b"".join(kvs) + b"".join(infos)
    head += b"\0" * (-len(head) % alignment)
    return head + (bytes(-(-32 // alignment) * alignment) if data is None else data)


def with_kvs(raw: bytes, *kvs: bytes) -> bytes:
    """Insert metadata entries in front of a GGUF file's others; a filler string keeps the header's length a
    multiple of 32, so the data section (and every tensor offset) stays where it was."""
    extra = b"".join(kvs)
    extra += kv("~", STR, "x" * (-(len(extra) + 21) % 32))  # 8 + 1 + 4 + 8 bytes around the filler
    n_kv = struct.unpack("<Q", raw[16:24])[0] + len(kvs) + 1
    return raw[:16] + struct.pack("<Q", n_kv) + extra + raw[24:]


def refused(tmp_path: Path, raw: bytes, match: str, name: str = "bad.gguf") -> str:
    path = tmp_path / name
    path.write_bytes(raw)
    with pytest.raises(InvalidComponentError, match=match) as caught:
        _headers.check_component("diffusion_model", str(path))
    message = str(caught.value)
    assert message.startswith("diffusion_model: ") and name in message
    return message


def accepted(tmp_path: Path, raw: bytes, name: str = "good.gguf") -> _formats.FileHeader:
    path = tmp_path / name
    path.write_bytes(raw)
    header = _headers.check_component("diffusion_model", str(path))
    assert header is not None
    return header


# --------------------------------------------------------------------------- the type table


def test_type_table_is_the_compiled_ggml_one():
    from sdcpp_py import _core

    assert {i: (block, size) for i, (_, block, size) in _formats.GGML_TYPES.items()} == _core.GGML_TYPE_LAYOUTS
    names = {value: name for name, value in _core.WEIGHT_TYPES.items()}
    assert {i: name for i, (name, _, _) in _formats.GGML_TYPES.items()} == {i: names[i] for i in _formats.GGML_TYPES}
    assert _formats.GGML_TYPE_COUNT == max(_core.WEIGHT_TYPES.values()) + 1


def test_the_module_works_without_the_compiled_core(flux_gguf_dit, flux_parts):
    spec = importlib.util.spec_from_file_location("standalone_formats", _formats.__file__)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)  # no package around it: a relative import of _core would fail here
    assert "_core" not in Path(_formats.__file__).read_text()
    assert module.read_header(str(flux_gguf_dit)).tensors
    assert module.read_header(str(flux_parts["vae"])).tensors


# --------------------------------------------------------------------------- valid files


def test_valid_synthetic_files_pass(flux_parts, flux_gguf_dit, sd1_checkpoint, tmp_path):
    for name, path in {**flux_parts, "gguf": flux_gguf_dit, "sd1": sd1_checkpoint}.items():
        header = _headers.check_component(name, str(path))
        assert header is not None and header.tensors, name
    rng = np.random.default_rng(0)
    arrays = {"a.weight": rng.standard_normal((4, 64), dtype=np.float32), "b.bias": np.zeros(3, np.float32),
              "c": np.ones((2, 3, 4, 5), np.float16)}
    for alignment in (32, 64, 1):
        for types in (None, "F16", "Q8_0"):
            path = _formats.write_gguf(tmp_path / f"v{alignment}{types}.gguf", arrays, {"k": 1, "s": "x"},
                                       types=types, alignment=alignment)
            header = accepted(tmp_path, path.read_bytes())
            assert {n: t.shape for n, t in header.tensors.items()} == {n: a.shape[::-1] for n, a in arrays.items()}
            with open(path, "rb") as handle:  # offsets point at the data
                tensor = header.tensors["b.bias"]
                handle.seek(tensor.offset)
                assert handle.read(tensor.nbytes) == bytes(12)
    arrays["c"] = np.ones((2, 3, 4, 5, 6), np.float16)  # the core folds a 5th dimension
    path = _formats.write_safetensors(tmp_path / "v.safetensors", arrays, {"format": "pt"})
    header = accepted(tmp_path, path.read_bytes(), "v.safetensors")
    assert header.metadata == {"format": "pt"} and header.tensors["c"].shape == (2, 3, 4, 5, 6)


# --------------------------------------------------------------------------- the writers


def stored_bytes(path: Path) -> dict[str, bytes]:
    header = _formats.read_header(str(path))
    raw = path.read_bytes()
    return {name: raw[t.offset:t.offset + t.nbytes] for name, t in header.tensors.items()}


def test_the_writers_store_values_unchanged(tmp_path):
    pool = np.random.default_rng(1).standard_normal(1000).astype(np.float16)
    arrays = {"x": pool[:900], "y": pool[50:950].reshape(30, 30), "zeros": np.zeros(3 << 18, np.float32),
              "i": np.arange(5, dtype=np.int64)}
    plain = _formats.write_safetensors(tmp_path / "plain.safetensors", arrays)
    aliased = _formats.write_safetensors(tmp_path / "aliased.safetensors", arrays, alias=True)
    expected = {name: array.tobytes() for name, array in arrays.items()}
    assert stored_bytes(plain) == stored_bytes(aliased) == expected
    assert aliased.stat().st_size < plain.stat().st_size  # the pool once, not two overlapping copies

    # Copied chunk by chunk (as split does): the same file as written from the arrays.
    header = _formats.read_header(str(plain))
    chunks = (plain.read_bytes()[t.offset:t.offset + t.nbytes] for t in header.tensors.values())
    copy = _formats.write_safetensors_chunks(tmp_path / "copy.safetensors", list(header.tensors.values()), chunks)
    assert copy.read_bytes() == plain.read_bytes()

    gguf_path = _formats.write_gguf(tmp_path / "w.gguf", {"w": np.arange(64, dtype=np.float32).reshape(2, 32)})
    assert stored_bytes(gguf_path) == {"w": np.arange(64, dtype=np.float32).tobytes()}


def test_a_failed_write_leaves_no_file(tmp_path):
    def chunks():
        yield b"\1" * 8
        raise OSError("source went away")

    tensor = _formats.TensorInfo("w", "F32", (4,), 16)
    with pytest.raises(OSError, match="went away"):
        _formats.write_safetensors_chunks(tmp_path / "w.safetensors", [tensor], chunks())
    assert list(tmp_path.iterdir()) == []


def test_gguf_with_every_metadata_type_passes(tmp_path):
    kvs = [kv(f"k{kind}", kind, 1) for kind in FORMATS] + [kv("s", STR, "text"), kv_array("a", U16, [1, 2, 3]),
                                                           kv_array("sa", STR, ["x", "", "yz"]),
                                                           kv("general.alignment", U32, 16)]
    header = accepted(tmp_path, gguf(kvs, alignment=16))
    assert header.metadata["s"] == "text" and header.metadata["a"] == [1, 2, 3]
    assert header.metadata["sa"] == ["x", "", "yz"] and header.metadata["k7"] is True
    assert header.tensors["w"].offset % 16 == 0


def test_gguf_zero_dims_is_one_element(tmp_path):
    # ggml allows n_dims == 0 (every ne is 1); the core then sees a 1-element, 1-D tensor (ggml_n_dims).
    header = accepted(tmp_path, gguf(infos=[info("s", [])]))
    assert header.tensors["s"].shape == (1,) and header.tensors["s"].nbytes == 4
    assert sdcpp_py.inspect(tmp_path / "good.gguf").parameter_count == 1


# --------------------------------------------------------------------------- GGUF rules


def test_gguf_version(tmp_path):
    refused(tmp_path, gguf(version=1), "version 1 is no longer supported")
    refused(tmp_path, gguf(version=4), "GGUF version 4")
    refused(tmp_path, gguf(version=0x03000000), "big-endian")
    refused(tmp_path, gguf(version=0), "GGUF version 0")


def test_gguf_counts(tmp_path):
    refused(tmp_path, b"GGUF" + struct.pack("<IQQ", 3, 2**62, 0), "claims")
    refused(tmp_path, b"GGUF" + struct.pack("<IQQ", 3, 1, 2**63 + 1), "claims")
    refused(tmp_path, b"GGUF" + struct.pack("<IQQ", 3, 5, 0), "past the end")  # infos missing
    refused(tmp_path, b"GGUF\x03\x00", "past the end")


def test_gguf_keys(tmp_path):
    refused(tmp_path, gguf([kv("", U32, 1)]), "key 0 is empty")
    refused(tmp_path, gguf([kv("a", U8, 1), kv("a", U8, 2)]), "'a' appears twice")
    refused(tmp_path, gguf([kv(b"a\0b", U8, 1)]), "NUL")
    refused(tmp_path, gguf([kv(b"\xff\xfe", U8, 1)]), "not UTF-8")
    too_long = struct.pack("<Q", 2**31) + b"k"
    refused(tmp_path, gguf([too_long]), "ggml's limit")
    refused(tmp_path, gguf([struct.pack("<Q", 10_000) + b"k"]), "runs past the end")


def test_gguf_value_types(tmp_path):
    refused(tmp_path, gguf([kv("a", 13, b"")]), "unknown metadata value type 13")
    refused(tmp_path, gguf([kv("a", -1, b"")]), "unknown metadata value type -1")
    nested = gstr("a") + struct.pack("<iiQ", ARR, ARR, 1) + struct.pack("<iQ", U8, 0)
    refused(tmp_path, gguf([nested]), "arrays of arrays")
    refused(tmp_path, gguf([gstr("a") + struct.pack("<iiQ", ARR, 99, 0)]), "invalid array item type 99")
    refused(tmp_path, gguf([gstr("a") + struct.pack("<iiQ", ARR, U8, 2**31)]), "ggml's limit")
    refused(tmp_path, gguf([gstr("a") + struct.pack("<iiQ", ARR, U32, 1000)]), "runs past the end")
    refused(tmp_path, gguf([gstr("a") + struct.pack("<iiQ", ARR, STR, 1000)]), "runs past the end")
    refused(tmp_path, gguf([kv("s", STR, struct.pack("<Q", 2**40))]), "ggml's limit")
    # a long string array whose items run past the end: found by the buffered walk
    items = b"".join(gstr("x" * 10) for _ in range(2000)) + struct.pack("<Q", 10**6)
    refused(tmp_path, gguf([gstr("v") + struct.pack("<iiQ", ARR, STR, 2001) + items]), "past the end")


@pytest.mark.parametrize("kind", [U8, I8, U16, I16, I32, F32, BOOL, U64, I64, F64, STR])
def test_gguf_alignment_must_be_u32(tmp_path, kind):
    value = "32" if kind == STR else 1 if kind == BOOL else 32
    message = refused(tmp_path, gguf([kv("general.alignment", kind, value)]), "general.alignment is a")
    assert "needs a u32" in message


def test_gguf_alignment_value_and_arrays(tmp_path):
    refused(tmp_path, gguf([kv_array("general.alignment", U32, [32])]), "general.alignment is a arr")
    refused(tmp_path, gguf([kv("general.alignment", U32, 0)]), "not a power of two")
    refused(tmp_path, gguf([kv("general.alignment", U32, 48)]), "not a power of two")
    accepted(tmp_path, gguf([kv("general.alignment", U32, 64)], alignment=64))
    accepted(tmp_path, gguf([kv("general.alignmen", U8, 3)]))  # other keys may have any type


def test_gguf_tensor_names(tmp_path):
    # The core builds ggml with GGML_MAX_NAME=128: SD1/SDXL GGUFs keep names of 80+ bytes.
    accepted(tmp_path, gguf(infos=[info("model.diffusion_model.output_blocks.2.1.transformer_blocks.0.attn1.to_out.0"
                                        ".weight", [8])]))
    accepted(tmp_path, gguf(infos=[info("n" * 127, [8])]))
    refused(tmp_path, gguf(infos=[info("n" * 128, [8])]), "at most 127")
    refused(tmp_path, gguf(infos=[info("w", [8]), info("w", [8], offset=32)]), "'w' appears twice")
    refused(tmp_path, gguf(infos=[info(b"w\0x", [8])]), "NUL")
    refused(tmp_path, gguf(infos=[info(b"\xc3(", [8])]), "not UTF-8")


def test_gguf_dims(tmp_path):
    refused(tmp_path, gguf(infos=[info("w", [1, 1, 1, 1, 8])]), "5 dimensions")
    refused(tmp_path, gguf(infos=[info("w", [8, -1])]), "negative dimension")
    refused(tmp_path, gguf(infos=[info("w", [8, 0])]), "zero dimension")  # ggml would divide by it
    refused(tmp_path, gguf(infos=[info("w", [0])]), "zero dimension")
    refused(tmp_path, gguf(infos=[info("w", [2**32, 2**32])]), "too many elements")
    refused(tmp_path, gguf(infos=[info("w", [2**20, 2**20, 2**20, 2**3])]), "too many elements")


def test_gguf_tensor_types(tmp_path):
    refused(tmp_path, gguf(infos=[info("w", [8], 41)]), "unknown ggml type 41")
    refused(tmp_path, gguf(infos=[info("w", [8], -1)]), "unknown ggml type -1")
    for removed in (4, 5, 31, 32, 33, 36, 37, 38):
        refused(tmp_path, gguf(infos=[info("w", [32], removed)]), f"ggml type {removed} was removed")
    refused(tmp_path, gguf(infos=[info("w", [16, 2], 8)]), "not a multiple of the q8_0 block size 32")
    refused(tmp_path, gguf(infos=[info("w", [2**31, 2**31], 28)]), "more bytes than size_t")
    header = accepted(tmp_path, gguf(infos=[info("w", [32, 2], 8)], data=bytes(96)))
    assert (header.tensors["w"].dtype, header.tensors["w"].nbytes) == ("q8_0", 68)


def test_gguf_offsets_must_be_exactly_consecutive(tmp_path):
    two = [info("a", [3]), info("b", [8], offset=32)]  # 12 bytes, padded to 32
    accepted(tmp_path, gguf(infos=two, data=bytes(64)))
    refused(tmp_path, gguf(infos=[info("a", [3]), info("b", [8], offset=64)], data=bytes(96)), "ggml expects 32")
    refused(tmp_path, gguf(infos=[info("a", [3]), info("b", [8], offset=12)], data=bytes(64)), "ggml expects 32")
    refused(tmp_path, gguf(infos=[info("a", [8], offset=32)], data=bytes(64)), "offset 32, ggml expects 0")
    refused(tmp_path, gguf(infos=[info("a", [3]), info("b", [8], offset=0)], data=bytes(64)), "ggml expects 32")


def test_gguf_data_must_lie_in_the_file(tmp_path):
    refused(tmp_path, gguf(infos=[info("w", [64])], data=bytes(100)), "truncated")
    accepted(tmp_path, gguf(infos=[info("w", [3])], data=bytes(12)))  # the last tensor's padding may be missing
    refused(tmp_path, gguf(infos=[]), "holds no tensors")


def test_gguf_patched_synthetic_files(tmp_path, flux_gguf_dit):
    raw = flux_gguf_dit.read_bytes()
    accepted(tmp_path, with_kvs(raw, kv("general.alignment", U32, 32)))
    refused(tmp_path, with_kvs(raw, kv("general.alignment", U8, 32)), "general.alignment is a u8")
    refused(tmp_path, with_kvs(raw, kv("", U8, 1)), "is empty")
    refused(tmp_path, raw[: len(raw) // 2], "truncated")


def test_large_metadata_arrays_are_walked_not_stored(tmp_path):
    n = 1_000_000
    numbers = gstr("numbers") + struct.pack("<iiQ", ARR, U8, 30 * n) + bytes(30 * n)
    words = kv_array("words", STR, [b"tok%d" % i for i in range(n)])
    small = kv_array("small", I32, list(range(_formats.KEEP_ARRAY_ITEMS)))
    raw = gguf([numbers, words, small])
    header = accepted(tmp_path, raw)
    assert header.metadata["numbers"] == _formats.SkippedValue("arr[u8]", 30 * n)
    assert header.metadata["words"] == _formats.SkippedValue("arr[str]", n)
    assert header.metadata["small"] == list(range(_formats.KEEP_ARRAY_ITEMS))

    class Counting(io.BytesIO):
        reads = 0

        def read(self, *args):
            Counting.reads += 1
            return super().read(*args)

    header = _formats._read_gguf(Counting(raw), "mem.gguf", len(raw))
    assert header.tensors["w"].offset > 30 * n
    assert Counting.reads < 100  # one buffer refill per MiB, never one read per item


def test_gguf_metadata_memory_is_bounded(tmp_path, monkeypatch):
    # ggml keeps every value in memory, a std::string (32 bytes) per string item; a bad_alloc there would
    # send the file to the core's fallback reader.
    monkeypatch.setattr(_formats, "MAX_GGUF_METADATA_MEMORY", 10_000)
    accepted(tmp_path, gguf([kv_array("v", STR, [""] * 200)]))
    refused(tmp_path, gguf([kv_array("v", STR, [""] * 300)]), "memory in ggml")
    refused(tmp_path, gguf([kv_array("v", STR, [""] * 2000)]), "memory in ggml")  # walked, not stored
    refused(tmp_path, gguf([kv_array("v", U8, [0] * 20_000)]), "memory in ggml")


# --------------------------------------------------------------------------- safetensors rules


def st_file(header, data: bytes = b"", *, raw_json: bytes | None = None, pad: bytes = b"") -> bytes:
    text = raw_json if raw_json is not None else json.dumps(header).encode()
    text = pad + text
    return struct.pack("<Q", len(text)) + text + data


ENTRY = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}


def test_safetensors_detected_as_the_core_does(tmp_path):
    # Not named .safetensors and the JSON does not start at byte 8: the core still reads it as safetensors.
    bad = st_file({"w": {**ENTRY, "dtype": {"x": 1}}}, bytes(8), pad=b" \n\t")
    refused(tmp_path, bad, "dtype is a JSON dict", name="model.sft")
    bom = st_file({"w": {**ENTRY, "dtype": 5}}, bytes(8), pad=b"\xef\xbb\xbf ")
    refused(tmp_path, bom, "dtype is a JSON int", name="model.bin")
    for start in (b"[", b"1", b'"', b"t", b"n", b"-"):  # any JSON value: the core's parse accepts it
        raw = st_file(None, bytes(8), raw_json=start + b"x" * 7)
        refused(tmp_path, raw, "safetensors", name="value.bin")
    refused(tmp_path, st_file(None, bytes(8), raw_json=b"[1, 2]"), "JSON list, not an object", name="list.bin")
    good = accepted(tmp_path, st_file({"w": ENTRY}, bytes(8), pad=b"\r\n  "), name="model.sft")
    assert good.format == "safetensors" and good.tensors["w"].offset == len(st_file({"w": ENTRY}, pad=b"\r\n  "))
    # Not safetensors for the core, whatever the name but .safetensors: not read as safetensors (the PyTorch
    # readers then refuse these too).
    for name, raw in {"zip.ckpt": b"PK\x03\x04\x14\x00\x00\x00\x08\x00" + bytes(100),
                      "pickle.pt": b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19." + bytes(100),
                      "small.bin": struct.pack("<Q", 2) + b"{}" + bytes(10),
                      "nul.bin": struct.pack("<Q", 10) + b"   \0{}    " + bytes(10),
                      "short.bin": b"1234"}.items():
        (tmp_path / name).write_bytes(raw)
        assert _formats.read_header(str(tmp_path / name)) is None, name
        with pytest.raises(InvalidComponentError, match="^model: "):
            _headers.check_component("model", str(tmp_path / name))
    refused(tmp_path, b"PK\x03\x04\x14\x00\x00\x00\x08\x00" + bytes(100), "claims", name="zip.safetensors")


def test_safetensors_deep_nesting(tmp_path):
    deep = b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    refused(tmp_path, st_file(None, raw_json=deep), "nested too deeply", name="deep.sft")
    refused(tmp_path, st_file(None, raw_json=b"[" * 100_000), "safetensors header", name="deep2.bin")


def test_safetensors_json_types(tmp_path):
    cases = {
        "dtype is a JSON list": {"w": {**ENTRY, "dtype": ["F32"]}},
        "dtype is a JSON NoneType": {"w": {**ENTRY, "dtype": None}},
        "unsupported dtype 'Q9'": {"w": {**ENTRY, "dtype": "Q9"}},
        "entry is a JSON list": {"w": [ENTRY]},
        "entry is a JSON str": {"w": "F32"},
        "has no dtype": {"w": {"shape": [2], "data_offsets": [0, 8]}},
        "has no shape, data_offsets": {"w": {"dtype": "F32"}},
        "bad shape": {"w": {**ENTRY, "shape": [2.0]}},
        "bad shape \\['2'\\]": {"w": {**ENTRY, "shape": ["2"]}},
        "bad shape \\[True\\]": {"w": {**ENTRY, "shape": [True]}},
        "bad shape 2 ": {"w": {**ENTRY, "shape": 2}},
        "bad shape \\[-2\\]": {"w": {**ENTRY, "shape": [-2]}},
        "bad shape \\[1, 1, 1, 1, 1, 2\\]": {"w": {**ENTRY, "shape": [1, 1, 1, 1, 1, 2]}},
        "bad shape \\[0, 9223372036854775808\\]": {"w": {**ENTRY, "shape": [0, 2**63], "data_offsets": [0, 0]}},
        "bad shape \\[0, 4294967296, 4294967296\\]": {"w": {**ENTRY, "shape": [0, 2**32, 2**32],
                                                            "data_offsets": [0, 0]}},
        "bad data_offsets \\[0.0, 8\\]": {"w": {**ENTRY, "data_offsets": [0.0, 8]}},
        "bad data_offsets \\[0, 8, 8\\]": {"w": {**ENTRY, "data_offsets": [0, 8, 8]}},
        "bad data_offsets None": {"w": {**ENTRY, "data_offsets": None}},
        "bad data_offsets \\[8, 0\\]": {"w": {**ENTRY, "data_offsets": [8, 0]}},
        "data ends at byte 16": {"w": {**ENTRY, "data_offsets": [8, 16]}},
        "needs 8 bytes, data_offsets give 4": {"w": {**ENTRY, "data_offsets": [0, 4]}},
        "name has a NUL": {"w\0": ENTRY},
    }
    for index, (match, header) in enumerate(cases.items()):
        refused(tmp_path, st_file(header, bytes(8)), match, name=f"case{index}.safetensors")


def test_safetensors_json_the_core_cannot_parse(tmp_path):
    entry = json.dumps(ENTRY).encode()
    refused(tmp_path, st_file(None, bytes(8), raw_json=b'{"w": %s, "w": %s}' % (entry, entry)),
            "'w' appears twice", name="dup.safetensors")
    refused(tmp_path, st_file(None, bytes(8), raw_json=b'{"__metadata__": {"a": "1", "a": "2"}, "w": %s}' % entry),
            "'a' appears twice", name="dupmeta.safetensors")
    refused(tmp_path, st_file(None, bytes(8), raw_json=b'{"__metadata__": {"a": NaN}, "w": %s}' % entry),
            "NaN is not JSON", name="nan.safetensors")
    refused(tmp_path, st_file(None, bytes(8), raw_json=b'{"__metadata__": {"a": ["\\ud800"]}, "w": %s}' % entry),
            "unpaired UTF-16 surrogate", name="surrogate.safetensors")
    accepted(tmp_path, st_file(None, bytes(8), raw_json=b'{"__metadata__": {"a": "\\ud83d\\ude00"}, "w": %s}' % entry),
             name="pair.safetensors")
    refused(tmp_path, st_file(None, bytes(8), raw_json=b'{"w": %s}\0garbage' % entry), "NUL byte at offset",
            name="nul.safetensors")
    refused(tmp_path, st_file(None, bytes(8), raw_json=b'{"w": %s}  \0' % entry), "NUL byte", name="nul2.sft")
    refused(tmp_path, st_file(None, bytes(8), raw_json=b'{"w": "\xff"}'), "not valid JSON", name="utf8.safetensors")
    refused(tmp_path, st_file(None, bytes(8), raw_json=b'{"w": 1' + b"9" * 5000 + b"}"), "not valid JSON",
            name="bigint.safetensors")
    refused(tmp_path, st_file(None, bytes(8), raw_json=b'{"w": %s} x' % entry), "not valid JSON",
            name="trailing.safetensors")


def test_safetensors_sizes(tmp_path):
    refused(tmp_path, b"", "too short", name="empty.safetensors")
    refused(tmp_path, struct.pack("<Q", 2**63) + b"{}", "claims", name="huge.safetensors")
    refused(tmp_path, struct.pack("<Q", 200 * 2**20) + bytes(10), "claims", name="big.safetensors")


# --------------------------------------------------------------------------- only InvalidComponentError escapes


def _mutate(raw: bytes, rng: random.Random, limit: int) -> bytes:
    data = bytearray(raw)
    for _ in range(rng.randint(1, 6)):
        data[rng.randrange(min(limit, len(data)))] = rng.choice([0, 1, 0xFF, 0x80, rng.randrange(256)])
    if rng.random() < 0.1:
        data = data[: rng.randrange(1, len(data))]
    return bytes(data)


def test_random_mutants_raise_only_invalid_component_error(tmp_path):
    gguf_seed = gguf([kv("general.alignment", U32, 32), kv("s", STR, "text"), kv_array("a", STR, ["x", "yz"]),
                      kv_array("n", I16, [1, 2]), kv("b", BOOL, True)],
                     [info("a", [3]), info("b", [32, 2], 8, 32)], bytes(32 + 68))
    st_seed = st_file({"__metadata__": {"format": "pt"}, "a": ENTRY,
                       "b": {"dtype": "F16", "shape": [2, 2], "data_offsets": [8, 16]}}, bytes(16))
    rng = random.Random(17)
    path = tmp_path / "mutant.sft"
    outcomes = {"ok": 0, "refused": 0}
    for index in range(3000):
        seed = (gguf_seed, len(gguf_seed) - 100) if index % 2 else (st_seed, len(st_seed) - 16)
        path.write_bytes(_mutate(seed[0], rng, seed[1]))
        try:
            _headers.check_component("vae", str(path))
            outcomes["ok"] += 1
        except InvalidComponentError as exc:
            assert str(exc).startswith("vae: ")
            outcomes["refused"] += 1
    assert outcomes["refused"] > 1000


# --------------------------------------------------------------------------- the core, in a child process


CHILD = textwrap.dedent("""
    import json, sys
    import sdcpp_py
    cases, parts = json.loads(sys.argv[1]), json.loads(sys.argv[2])
    for name, path in cases.items():
        print("CASE", name, flush=True)
        try:
            with sdcpp_py.Context(diffusion_model=path, clip_l=parts["clip_l"], vae=parts["vae"], n_threads=1):
                print("RESULT", name, "loaded", flush=True)
        except Exception as exc:
            print("RESULT", name, type(exc).__name__, str(exc)[:300], flush=True)
""")


def test_context_refuses_a_non_u32_alignment_in_a_child_process(tmp_path, flux_parts, flux_gguf_dit):
    raw = flux_gguf_dit.read_bytes()
    cases = {"u8": with_kvs(raw, kv("general.alignment", U8, 32)),
             "bool": with_kvs(raw, kv("general.alignment", BOOL, True)),
             "u32": with_kvs(raw, kv("general.alignment", U32, 32))}  # the control: ggml's own type loads
    paths = {}
    for name, data in cases.items():
        paths[name] = tmp_path / f"dit-{name}.gguf"
        paths[name].write_bytes(data)
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps({k: str(v) for k, v in paths.items()}),
                           json.dumps({k: str(v) for k, v in flux_parts.items()})],
                          check=False, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"the child died (exit {proc.returncode}):\n{proc.stdout[-1000:]}{proc.stderr[-2000:]}"
    results = dict(line.split(" ", 2)[1:] for line in proc.stdout.splitlines() if line.startswith("RESULT "))
    assert results["u32"] == "loaded"
    for name in ("u8", "bool"):
        assert results[name].startswith("InvalidComponentError diffusion_model:"), results[name]
        assert "general.alignment" in results[name]
