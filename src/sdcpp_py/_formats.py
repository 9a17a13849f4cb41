"""Model-file formats: reading and writing safetensors and GGUF headers, with numpy data for the writers.

Reading mirrors what the core accepts, because the core trusts headers and a malformed one can take the
interpreter down. GGUF: a file passes only if ggml's ``gguf_init_from_file`` (ggml/src/gguf.cpp) would parse
it, because when that fails the core falls back to a lax reader of its own that can crash on bad input.
safetensors: a file is read whenever the core's ``is_safetensors_file`` could take it for one (the name does
not matter to the core), and refused where the core's JSON code would throw. Only headers are read (never the
weights), so this costs milliseconds on multi-GB files. Refusals raise ``MalformedFileError`` (a ValueError)
naming the file and what is wrong.

Writing: one safetensors writer (numpy arrays, optionally aliased into shared pools, or byte chunks copied
from another file) and one GGUF writer. Zero runs become file holes. This module needs nothing from the
compiled core.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pathlib
import struct
from dataclasses import dataclass, field
from typing import BinaryIO, Iterable, Mapping, Sequence

import numpy as np

GGUF_MAGIC = b"GGUF"
MAX_DIMS_SAFETENSORS = 5  # the core folds a 5th dimension into the 4th
MAX_DIMS_GGUF = 4  # GGML_MAX_DIMS
MAX_HEADER_BYTES = 100 * 1024 * 1024
MAX_ENTRIES = 1_000_000  # safetensors tensors
# GGUF counts: far above real models (a few thousand tensors, tens of keys); ggml's duplicate checks are
# quadratic in them, so a file claiming millions would stall the core for hours.
MAX_GGUF_TENSORS = 65536
MAX_GGUF_KEYS = 65536
KEEP_ARRAY_ITEMS = 1024  # larger GGUF metadata arrays are walked, not stored (see SkippedValue)
KEEP_STRING_BYTES = 1 << 20
# ggml holds all metadata in memory (a std::string per string item); past this a bad_alloc would fail its
# reader and send the file to the core's fallback. Real files have a few MB.
MAX_GGUF_METADATA_MEMORY = 1 << 30

# gguf.cpp's limits and constants at the pinned ggml.
GGUF_MAX_STRING_LENGTH = 1 << 30
GGUF_MAX_ARRAY_ELEMENTS = 1 << 30
GGUF_DEFAULT_ALIGNMENT = 32
GGML_MAX_NAME = 128  # the core compiles ggml with GGML_MAX_NAME=128 (its CMakeLists.txt)
INT64_MAX = 2**63 - 1
SIZE_MAX = 2**64 - 1

# ggml type id -> (name, elements per block, bytes per block), from enum ggml_type (ggml/include/ggml.h) and
# type_traits (ggml/src/ggml.c) of the pinned ggml. Ids 4, 5, 31-33 and 36-38 are removed types (block size
# 0 in type_traits), which gguf.cpp refuses. tests/test_headers.py checks this against the compiled ggml.
GGML_TYPE_COUNT = 41
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("f32", 1, 4), 1: ("f16", 1, 2), 2: ("q4_0", 32, 18), 3: ("q4_1", 32, 20), 6: ("q5_0", 32, 22),
    7: ("q5_1", 32, 24), 8: ("q8_0", 32, 34), 9: ("q8_1", 32, 36), 10: ("q2_K", 256, 84), 11: ("q3_K", 256, 110),
    12: ("q4_K", 256, 144), 13: ("q5_K", 256, 176), 14: ("q6_K", 256, 210), 15: ("q8_K", 256, 292),
    16: ("iq2_xxs", 256, 66), 17: ("iq2_xs", 256, 74), 18: ("iq3_xxs", 256, 98), 19: ("iq1_s", 256, 50),
    20: ("iq4_nl", 32, 18), 21: ("iq3_s", 256, 110), 22: ("iq2_s", 256, 82), 23: ("iq4_xs", 256, 136),
    24: ("i8", 1, 1), 25: ("i16", 1, 2), 26: ("i32", 1, 4), 27: ("i64", 1, 8), 28: ("f64", 1, 8),
    29: ("iq1_m", 256, 56), 30: ("bf16", 1, 2), 34: ("tq1_0", 256, 54), 35: ("tq2_0", 256, 66),
    39: ("mxfp4", 32, 17), 40: ("nvfp4", 64, 36),
}

# safetensors dtype -> bytes per element, for the dtypes the core's reader accepts (U8 is skipped by it).
SAFETENSORS_ITEMSIZE = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8, "F8_E4M3": 1, "F8_E5M2": 1, "I32": 4, "I64": 8,
                        "U8": 1}

# GGUF metadata value types (enum gguf_type): id -> (name, struct format; "" for string and array).
_GGUF_STRING, _GGUF_ARRAY = 8, 9
_GGUF_VALUE_TYPES = {0: ("u8", "B"), 1: ("i8", "b"), 2: ("u16", "H"), 3: ("i16", "h"), 4: ("u32", "I"),
                     5: ("i32", "i"), 6: ("f32", "f"), 7: ("bool", "?"), 8: ("str", ""), 9: ("arr", ""),
                     10: ("u64", "Q"), 11: ("i64", "q"), 12: ("f64", "d")}
_SCALAR_STRUCTS = {kind: struct.Struct("<" + fmt) for kind, (_, fmt) in _GGUF_VALUE_TYPES.items() if fmt}
_U32, _I32, _U64, _I64 = struct.Struct("<I"), struct.Struct("<i"), struct.Struct("<Q"), struct.Struct("<q")
_JSON_VALUE_START = b'{["-0123456789tfn'
_JSON_SPACE = b" \t\r\n"
_BOM = b"\xef\xbb\xbf"


class MalformedFileError(ValueError):
    """A safetensors or GGUF file whose header the core would refuse, or could crash on."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path!r} is not a valid model file: {reason}")
        self.path, self.reason = path, reason


@dataclass
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]  # as stored: safetensors row-major, GGUF ggml order (ne0 first; () read as (1,))
    nbytes: int
    offset: int = -1  # where the tensor's data starts in the file


@dataclass(frozen=True)
class SkippedValue:
    """A GGUF metadata value too large to keep (a long array or string): walked and checked, not stored."""

    type: str  # "arr[u8]", "arr[str]", "str", ...
    count: int  # items of an array, bytes of a string


@dataclass
class FileHeader:
    path: str
    format: str  # "safetensors" or "gguf"
    file_size: int
    tensors: dict[str, TensorInfo] = field(default_factory=dict)
    metadata: dict[str, object] = field(default_factory=dict)


def _looks_like_safetensors(handle: BinaryIO, file_size: int) -> bool:
    """Whether the core's is_safetensors_file could accept the file: a header size in range and a header
    whose first significant byte (after nlohmann's optional BOM and JSON whitespace) starts a JSON value.
    A superset of the core's test, which parses the whole header; we parse it next and refuse what fails."""
    if file_size <= 8:
        return False
    handle.seek(0)
    raw = handle.read(8)
    if len(raw) < 8:  # shrunk since we sized it
        return False
    header_size = _U64.unpack(raw)[0]
    if not 2 < header_size <= file_size - 8:
        return False
    left, first = header_size, True
    while left:
        chunk = handle.read(min(left, 1 << 16))
        if not chunk:
            return False
        left -= len(chunk)
        if first and chunk.startswith(_BOM):
            chunk = chunk[len(_BOM):]
        first = False
        chunk = chunk.lstrip(_JSON_SPACE)
        if chunk:
            return chunk[0] in _JSON_VALUE_START  # a NUL ends the core's parse: not JSON
    return False


def sniff_format(path: str) -> str | None:
    """'gguf', 'safetensors' or None (a format left to the core), decided in the core's order
    (model.cpp ``init_from_file``: GGUF magic, then safetensors). A ``.safetensors`` name always means
    safetensors, so that a truncated or garbled one is refused rather than handed to the torch readers."""
    file_size = os.path.getsize(path)
    with open(path, "rb") as handle:
        if handle.read(4) == GGUF_MAGIC:
            return "gguf"
        if path.lower().endswith(".safetensors") or _looks_like_safetensors(handle, file_size):
            return "safetensors"
    return None


def read_header(path: str) -> FileHeader | None:
    """Parse and check the header of a safetensors or GGUF file; None for other formats.

    Raises:
        MalformedFileError: the header is one the core would refuse or could crash on.
        OSError: the file cannot be read.
    """
    kind = sniff_format(path)
    if kind is None:
        return None
    file_size = os.path.getsize(path)
    with open(path, "rb") as handle:
        if kind == "gguf":
            return _read_gguf(handle, path, file_size)
        return _read_safetensors(handle, path, file_size)


# --------------------------------------------------------------------------- reading safetensors


class _JSONRefused(Exception):
    pass


def _pairs(pairs: list[tuple[str, object]]) -> dict:
    result = dict(pairs)
    if len(result) != len(pairs):  # nlohmann keeps one of them silently; which one is not ours to guess
        seen = set()
        duplicate = next(key for key, _ in pairs if key in seen or seen.add(key))
        raise _JSONRefused(f"key {duplicate!r} appears twice")
    return result


def _constant(name: str):
    raise _JSONRefused(f"{name} is not JSON (the core's parser refuses it)")


def _has_lone_surrogate(value: object) -> bool:
    """Python's json decodes an unpaired \\ud800 escape; nlohmann refuses the whole header for it."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _read_safetensors(handle: BinaryIO, path: str, file_size: int) -> FileHeader:
    def fail(reason: str) -> MalformedFileError:
        return MalformedFileError(path, reason)

    raw = handle.read(8)
    if len(raw) < 8:
        raise fail(f"file is {file_size} bytes, too short for a safetensors header")
    header_size = _U64.unpack(raw)[0]
    if header_size > file_size - 8:
        raise fail(f"safetensors header claims {header_size} bytes but the file has {file_size}")
    if header_size > MAX_HEADER_BYTES:
        raise fail(f"safetensors header of {header_size} bytes (more than {MAX_HEADER_BYTES} is not plausible)")
    text = handle.read(header_size)
    if len(text) != header_size:
        raise fail("safetensors header runs past the end of the file (truncated?)")
    if b"\0" in text:  # the core parses the header as a C string: it would see only the part before the NUL
        raise fail(f"safetensors header has a NUL byte at offset {8 + text.index(0)}")
    text = text.removeprefix(_BOM)  # nlohmann skips one; Python's json would not
    try:
        decoded = text.decode("utf-8")
        header = json.loads(decoded, object_pairs_hook=_pairs, parse_constant=_constant)
    except _JSONRefused as exc:
        raise fail(f"safetensors header: {exc}") from None
    except RecursionError:
        raise fail("safetensors header is nested too deeply") from None
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise fail(f"safetensors header is not valid JSON ({exc})") from None
    if "\\u" in decoded and _has_lone_surrogate(header):
        raise fail("safetensors header has an unpaired UTF-16 surrogate escape (the core's parser refuses it)")
    if not isinstance(header, dict):
        raise fail(f"safetensors header is a JSON {type(header).__name__}, not an object")
    if len(header) > MAX_ENTRIES:
        raise fail(f"safetensors header lists {len(header)} entries")
    data_size = file_size - 8 - header_size
    result = FileHeader(path, "safetensors", file_size)
    metadata = header.pop("__metadata__", {})  # the core skips it whatever it holds
    if isinstance(metadata, dict):
        result.metadata = dict(metadata)
    for name, entry in header.items():
        if "\0" in name:
            raise fail(f"tensor {name!r}: name has a NUL character")
        if not isinstance(entry, dict):
            raise fail(f"tensor {name!r}: entry is a JSON {type(entry).__name__}, not an object")
        missing = [key for key in ("dtype", "shape", "data_offsets") if key not in entry]
        if missing:
            raise fail(f"tensor {name!r}: entry has no {', '.join(missing)}")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if not isinstance(dtype, str):
            raise fail(f"tensor {name!r}: dtype is a JSON {type(dtype).__name__}, not a string")
        if dtype not in SAFETENSORS_ITEMSIZE:
            raise fail(f"tensor {name!r}: unsupported dtype {dtype!r}")
        # The core reads dims as int64 and multiplies them in int64.
        if (not isinstance(shape, list) or len(shape) > MAX_DIMS_SAFETENSORS
                or not all(_is_int(d) and 0 <= d <= INT64_MAX for d in shape)
                or math.prod(d for d in shape if d) > INT64_MAX):
            raise fail(f"tensor {name!r}: bad shape {shape!r} (a list of at most {MAX_DIMS_SAFETENSORS} "
                       "non-negative integers)")
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_int(o) for o in offsets)
                or not 0 <= offsets[0] <= offsets[1]):
            raise fail(f"tensor {name!r}: bad data_offsets {offsets!r} (two integers, begin <= end)")
        if offsets[1] > data_size:
            raise fail(f"tensor {name!r}: data ends at byte {offsets[1]} of a {data_size}-byte "
                       "data section (truncated file?)")
        nbytes = math.prod(shape) * SAFETENSORS_ITEMSIZE[dtype]
        if nbytes != offsets[1] - offsets[0]:
            raise fail(f"tensor {name!r}: shape {shape} of {dtype} needs {nbytes} bytes, "
                       f"data_offsets give {offsets[1] - offsets[0]}")
        result.tensors[name] = TensorInfo(name, dtype, tuple(shape), nbytes, 8 + header_size + offsets[0])
    return result


# --------------------------------------------------------------------------- reading GGUF


class _Cursor:
    """Sequential reads of a GGUF header through one large buffer (a read() per field or array item is what
    made long metadata arrays slow), counting the bytes left in the file as gguf.cpp's reader does."""

    CHUNK = 1 << 20

    def __init__(self, handle: BinaryIO, file_size: int, fail):
        self.handle, self.file_size, self.fail = handle, file_size, fail
        self.buf, self.pos, self.base = b"", 0, 0  # buf holds the file from offset base on
        self.strings = 0  # strings read or walked so far

    @property
    def offset(self) -> int:
        return self.base + self.pos

    def left(self) -> int:
        return self.file_size - self.base - self.pos

    def _truncated(self) -> MalformedFileError:
        return self.fail("header runs past the end of the file (truncated?)")

    def _fill(self, count: int) -> None:
        """Make buf[pos:pos + count] available."""
        rest = self.buf[self.pos:]
        self.base += self.pos
        self.handle.seek(self.base + len(rest))
        self.buf = rest + self.handle.read(max(count - len(rest), self.CHUNK))
        self.pos = 0
        if len(self.buf) < count:
            raise self._truncated()

    def take(self, count: int) -> bytes:
        if count > self.left():
            raise self._truncated()
        if self.pos + count > len(self.buf):
            self._fill(count)
        data = self.buf[self.pos:self.pos + count]
        self.pos += count
        return data

    def unpack(self, fmt: struct.Struct):
        if self.pos + fmt.size > len(self.buf):
            if fmt.size > self.left():
                raise self._truncated()
            self._fill(fmt.size)
        value = fmt.unpack_from(self.buf, self.pos)[0]
        self.pos += fmt.size
        return value

    def skip(self, count: int) -> None:
        if count > self.left():
            raise self._truncated()
        if self.pos + count <= len(self.buf):
            self.pos += count
        else:  # the next read seeks
            self.base, self.buf, self.pos = self.base + self.pos + count, b"", 0

    def string_length(self, what: str) -> int:
        length = self.unpack(_U64)
        if length > GGUF_MAX_STRING_LENGTH:
            raise self.fail(f"{what}: string of {length} bytes (ggml's limit is {GGUF_MAX_STRING_LENGTH})")
        if length > self.left():
            raise self.fail(f"{what}: string of {length} bytes runs past the end of the file")
        self.strings += 1
        return length

    def skip_strings(self, count: int, what: str) -> None:
        """Walk ``count`` length-prefixed strings: a tight loop over the buffer, a refill at its edge."""
        unpack, done, strings = _U64.unpack_from, 0, self.strings + count
        while done < count:
            buf, pos = self.buf, self.pos
            limit = len(buf) - 8
            while done < count and pos <= limit:
                length = unpack(buf, pos)[0]
                end = pos + 8 + length
                if end > len(buf) or length > GGUF_MAX_STRING_LENGTH:
                    break  # the slow path below reads it again and says what is wrong
                pos, done = end, done + 1
            self.pos = pos
            if done < count:
                self.skip(self.string_length(what))
                done += 1
        self.strings = strings


def _gguf_value(cursor: _Cursor, kind: int, what: str):
    """One metadata value of gguf type ``kind``, mirroring gguf.cpp's reads and limits."""
    if kind == _GGUF_STRING:
        length = cursor.string_length(what)
        if length > KEEP_STRING_BYTES:
            cursor.skip(length)
            return SkippedValue("str", length)
        return cursor.take(length).decode("utf-8", errors="replace")  # ggml takes any bytes here
    if kind in _SCALAR_STRUCTS:
        return cursor.unpack(_SCALAR_STRUCTS[kind])
    if kind != _GGUF_ARRAY:
        raise cursor.fail(f"{what}: unknown metadata value type {kind}")
    item_kind, count = cursor.unpack(_I32), cursor.unpack(_U64)
    if item_kind == _GGUF_ARRAY or item_kind not in _GGUF_VALUE_TYPES:
        raise cursor.fail(f"{what}: invalid array item type {item_kind}"
                          + (" (arrays of arrays are not GGUF)" if item_kind == _GGUF_ARRAY else ""))
    item_name, item_format = _GGUF_VALUE_TYPES[item_kind]
    if count > GGUF_MAX_ARRAY_ELEMENTS:
        raise cursor.fail(f"{what}: array of {count} items (ggml's limit is {GGUF_MAX_ARRAY_ELEMENTS})")
    item_size = 8 if item_kind == _GGUF_STRING else struct.calcsize("<" + item_format)  # strings: length
    if count * item_size > cursor.left():
        raise cursor.fail(f"{what}: array of {count} {item_name} items runs past the end of the file")
    if item_kind == _GGUF_STRING:
        if count > KEEP_ARRAY_ITEMS:
            cursor.skip_strings(count, what)
            return SkippedValue("arr[str]", count)
        return [cursor.take(cursor.string_length(what)).decode("utf-8", errors="replace") for _ in range(count)]
    if count > KEEP_ARRAY_ITEMS:
        cursor.skip(count * item_size)
        return SkippedValue(f"arr[{item_name}]", count)
    return list(struct.unpack(f"<{count}{item_format}", cursor.take(count * item_size)))


def _read_gguf(handle: BinaryIO, path: str, file_size: int) -> FileHeader:
    def fail(reason: str) -> MalformedFileError:
        return MalformedFileError(path, reason)

    cursor = _Cursor(handle, file_size, fail)
    if cursor.take(4) != GGUF_MAGIC:
        raise fail("no GGUF magic")
    version = cursor.unpack(_U32)
    if version == 1:
        raise fail("GGUF version 1 is no longer supported by ggml")
    if version not in (2, 3):
        hint = " (a big-endian file?)" if version & 0xFFFF == 0 and version else ""
        raise fail(f"GGUF version {version}{hint}; this core reads versions 2 and 3")
    n_tensors, n_kv = cursor.unpack(_U64), cursor.unpack(_U64)
    if n_tensors > MAX_GGUF_TENSORS or n_kv > MAX_GGUF_KEYS:
        raise fail(f"header claims {n_tensors} tensors and {n_kv} metadata entries")
    result = FileHeader(path, "gguf", file_size)
    keys = set()
    metadata_start = cursor.offset
    alignment_kind: int | None = None
    for index in range(n_kv):
        raw_key = cursor.take(cursor.string_length(f"metadata key {index}"))
        if not raw_key:
            raise fail(f"metadata key {index} is empty (ggml aborts on it)")
        if b"\0" in raw_key:  # ggml looks keys up as C strings
            raise fail(f"metadata key {raw_key!r} has a NUL byte")
        try:
            key = raw_key.decode("utf-8")
        except UnicodeDecodeError:
            raise fail(f"metadata key {raw_key!r} is not UTF-8") from None
        if key in keys:
            raise fail(f"metadata key {key!r} appears twice")
        keys.add(key)
        kind = cursor.unpack(_I32)
        if key == "general.alignment":
            alignment_kind = kind
        result.metadata[key] = _gguf_value(cursor, kind, f"metadata {key!r}")
        memory = cursor.offset - metadata_start + 32 * cursor.strings  # 32: sizeof(std::string)
        if memory > MAX_GGUF_METADATA_MEMORY:
            raise fail(f"metadata {key!r}: the metadata would take {memory} bytes of memory in ggml "
                       f"(more than {MAX_GGUF_METADATA_MEMORY} is not plausible)")
    # gguf.cpp reads it with gguf_get_val_u32, which asserts (aborts) on any other type.
    alignment = result.metadata.get("general.alignment", GGUF_DEFAULT_ALIGNMENT)
    if alignment_kind is not None and alignment_kind != 4:
        kind_name = _GGUF_VALUE_TYPES.get(alignment_kind, ("type " + str(alignment_kind),))[0]
        raise fail(f"general.alignment is a {kind_name}, ggml needs a u32")
    if alignment == 0 or alignment & (alignment - 1):
        raise fail(f"general.alignment {alignment} is not a power of two")

    planned: list[tuple[str, int, int]] = []  # name, offset, bytes
    for index in range(n_tensors):
        length = cursor.string_length(f"tensor {index}'s name")
        if length >= GGML_MAX_NAME:
            raise fail(f"tensor {index}: name of {length} bytes (ggml allows at most {GGML_MAX_NAME - 1})")
        raw_name = cursor.take(length)
        if b"\0" in raw_name:  # ggml would cut the name there
            raise fail(f"tensor {index}: name {raw_name!r} has a NUL byte")
        try:
            name = raw_name.decode("utf-8")
        except UnicodeDecodeError:
            raise fail(f"tensor {index}: name {raw_name!r} is not UTF-8") from None
        if name in result.tensors:
            raise fail(f"tensor {name!r} appears twice")
        n_dims = cursor.unpack(_U32)
        if n_dims > MAX_DIMS_GGUF:
            # ggml refuses it; the core's fallback reader would fold the extra dims but is unsafe on bad input
            raise fail(f"tensor {name!r}: {n_dims} dimensions (ggml reads at most {MAX_DIMS_GGUF})")
        dims = [cursor.unpack(_I64) for _ in range(n_dims)]
        if any(d < 0 for d in dims):
            raise fail(f"tensor {name!r}: negative dimension in {dims}")
        # ggml divides INT64_MAX by ne1..ne3 (a zero is a crash there) and the core cannot use empty tensors.
        if any(d == 0 for d in dims):
            raise fail(f"tensor {name!r}: zero dimension in {dims}")
        ne = dims + [1] * (MAX_DIMS_GGUF - n_dims)
        if (INT64_MAX // ne[1] <= ne[0] or INT64_MAX // ne[2] <= ne[0] * ne[1]
                or INT64_MAX // ne[3] <= ne[0] * ne[1] * ne[2]):
            raise fail(f"tensor {name!r}: {dims} has too many elements for int64")
        type_id = cursor.unpack(_I32)
        if not 0 <= type_id < GGML_TYPE_COUNT:
            raise fail(f"tensor {name!r}: unknown ggml type {type_id}")
        if type_id not in GGML_TYPES:
            raise fail(f"tensor {name!r}: ggml type {type_id} was removed from ggml")
        type_name, block, type_size = GGML_TYPES[type_id]
        if ne[0] % block:
            raise fail(f"tensor {name!r}: first dimension {ne[0]} is not a multiple of the "
                       f"{type_name} block size {block}")
        blocks = math.prod(ne) // block
        if blocks > SIZE_MAX // type_size:
            raise fail(f"tensor {name!r}: {dims} of {type_name} has more bytes than size_t holds")
        offset = cursor.unpack(_U64)
        result.tensors[name] = TensorInfo(name, type_name, tuple(dims) or (1,), blocks * type_size)
        planned.append((name, offset, blocks * type_size))

    # The data section starts at the next multiple of the alignment; each tensor must start exactly where
    # the previous one ends, padded to the alignment (gguf.cpp refuses any other layout).
    data_start = -(-cursor.offset // alignment) * alignment
    expected = 0
    for name, offset, nbytes in planned:
        if offset != expected:
            raise fail(f"tensor {name!r}: offset {offset}, ggml expects {expected} (tensors are stored "
                       f"back to back, each padded to {alignment} bytes)")
        if data_start + offset + nbytes > file_size:
            raise fail(f"tensor {name!r}: data ends at byte {data_start + offset + nbytes} of a "
                       f"{file_size}-byte file (truncated?)")
        expected += -(-nbytes // alignment) * alignment
        if expected > SIZE_MAX:
            raise fail(f"tensor {name!r}: data section size overflows size_t")
        result.tensors[name].offset = data_start + offset
    return result


# --------------------------------------------------------------------------- writing

# numpy dtype -> the safetensors dtype written for it.
SAFETENSORS_DTYPES = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16", np.dtype(np.float64): "F64",
                      np.dtype(np.int32): "I32", np.dtype(np.int64): "I64"}
GGUF_WRITE_TYPES = ("F32", "F16", "Q8_0")  # what write_gguf can store
_HOLE_CHUNK = 1 << 20  # all-zero chunks of this size are left as holes
_GGUF_TYPE_IDS = {name: kind for kind, (name, _) in _GGUF_VALUE_TYPES.items()}
_GGML_TYPE_IDS = {name.upper(): type_id for type_id, (name, _, _) in GGML_TYPES.items()}


def _write_file(path: str | os.PathLike, head: bytes, regions: Iterable[tuple[int, Iterable]],
                size: int) -> pathlib.Path:
    """Write ``head``, then each region's chunks (bytes-like) from ``offset`` bytes after the head on; the file
    ends ``size`` bytes after the head. All-zero chunks are not written: holes cost no disk (sparse files).
    Written under a temporary name and renamed, so a reader never sees half a file."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as out:
            out.write(head)
            for offset, chunks in regions:
                position = len(head) + offset
                for chunk in chunks:
                    data = np.frombuffer(chunk, np.uint8)
                    if data.any():
                        out.seek(position)
                        out.write(data)
                    position += data.size
            out.truncate(len(head) + size)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def _array_chunks(data: np.ndarray) -> Iterable[np.ndarray]:
    return (data[start:start + _HOLE_CHUNK] for start in range(0, data.size, _HOLE_CHUNK))


def _safetensors_head(entries: Mapping[str, dict], metadata: Mapping[str, object] | None) -> bytes:
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {str(key): str(value) for key, value in metadata.items()}
    header.update(entries)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # padded with spaces: the data section starts 8-byte aligned
    return struct.pack("<Q", len(text)) + text


def _owner(array: np.ndarray) -> tuple[np.ndarray, int] | None:
    """(owning array, byte offset of ``array`` in it) when ``array`` is a contiguous view."""
    root = array
    while isinstance(root.base, np.ndarray):
        root = root.base
    if root is array or not (array.flags.c_contiguous and root.flags.c_contiguous):
        return None
    return root, array.__array_interface__["data"][0] - root.__array_interface__["data"][0]


def _as_bytes(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array).reshape(-1).view(np.uint8)


def write_safetensors(path: str | os.PathLike, tensors: Mapping[str, np.ndarray],
                      metadata: Mapping[str, object] | None = None, *, alias: bool = False) -> pathlib.Path:
    """Write numpy arrays as a safetensors file (values are never changed; zero runs become holes).

    With ``alias=False`` the file follows the spec (contiguous, disjoint ranges). With ``alias=True`` data is
    shared instead of copied: for views into one owning array the whole owner is stored once and each view
    points into it, and tensors with identical bytes share one range. The core's reader checks only that
    ``end - begin`` fits the shape; the Python ``safetensors`` package refuses such files ("invalid offset").
    """
    entries: dict[str, dict] = {}
    regions: list[tuple[int, np.ndarray]] = []  # (offset in the data section, uint8 data)
    placed: dict[object, int] = {}
    keep_alive = []  # owners must outlive the id() keys in `placed`
    size = 0

    def place(key, data: np.ndarray) -> int:
        nonlocal size
        if key is None or key not in placed:
            start = size
            regions.append((start, data))
            size = start + data.size  # no padding: the safetensors spec forbids gaps
            if key is None:
                return start
            placed[key] = start
        return placed[key]

    for name, array in tensors.items():
        array = np.asarray(array)
        if array.dtype not in SAFETENSORS_DTYPES:
            raise ValueError(f"unsupported dtype {array.dtype} for tensor {name!r}")
        owner = _owner(array) if alias else None
        if owner is not None:
            root, offset = owner
            keep_alive.append(root)
            begin = place(("owner", id(root)), _as_bytes(root)) + offset
        else:
            data = _as_bytes(array)
            key = ("bytes", hashlib.blake2b(data, digest_size=16).digest(), data.size) if alias else None
            begin = place(key, data)
        entries[name] = {"dtype": SAFETENSORS_DTYPES[array.dtype], "shape": list(array.shape),
                         "data_offsets": [begin, begin + array.nbytes]}
    head = _safetensors_head(entries, metadata)
    return _write_file(path, head, [(offset, _array_chunks(data)) for offset, data in regions], size)


def write_safetensors_chunks(path: str | os.PathLike, tensors: Sequence[TensorInfo], chunks: Iterable,
                             metadata: Mapping[str, object] | None = None) -> pathlib.Path:
    """Write a standard safetensors file of ``tensors`` (name, dtype, shape, nbytes; stored back to back in
    this order) whose data is the concatenation of ``chunks`` (bytes-like), e.g. ranges copied from another
    file unchanged."""
    entries: dict[str, dict] = {}
    size = 0
    for tensor in tensors:
        entries[tensor.name] = {"dtype": tensor.dtype, "shape": list(tensor.shape),
                                "data_offsets": [size, size + tensor.nbytes]}
        size += tensor.nbytes
    return _write_file(path, _safetensors_head(entries, metadata), [(0, chunks)], size)


def safetensors_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file; {} when the file is missing or unreadable."""
    try:
        with open(path, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            return json.loads(handle.read(length)).get("__metadata__", {})
    except (OSError, ValueError, struct.error):
        return {}


def quantize_q8_0(array: np.ndarray) -> np.ndarray:
    """GGML Q8_0 blocks (f16 scale + 32 int8) along the last axis, as uint8."""
    x = np.asarray(array, dtype=np.float32).reshape(-1, 32)
    d = np.abs(x).max(axis=1) / 127.0
    inverse = np.divide(1.0, d, out=np.zeros_like(d), where=d > 0)
    v = x * inverse[:, None]
    q = np.trunc(v + np.copysign(0.5, v)).clip(-127, 127).astype(np.int8)  # roundf: half away from 0
    out = np.empty((x.shape[0], 34), dtype=np.uint8)
    out[:, :2] = d.astype(np.float16).view(np.uint8).reshape(-1, 2)
    out[:, 2:] = q.view(np.uint8)
    return out.reshape(-1)


def _gguf_string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


def _gguf_metadata_entry(key: str, value) -> bytes:
    """bool, int (as i64), float (as f32), anything else as its str()."""
    if isinstance(value, bool):
        payload = struct.pack("<I?", _GGUF_TYPE_IDS["bool"], value)
    elif isinstance(value, int):
        payload = struct.pack("<Iq", _GGUF_TYPE_IDS["i64"], value)
    elif isinstance(value, float):
        payload = struct.pack("<If", _GGUF_TYPE_IDS["f32"], value)
    else:
        payload = struct.pack("<I", _GGUF_STRING) + _gguf_string(str(value))
    return _gguf_string(key) + payload


def write_gguf(path: str | os.PathLike, tensors: Mapping[str, np.ndarray],
               metadata: Mapping[str, object] | None = None, *,
               types: str | Mapping[str, str] | None = None, alignment: int = GGUF_DEFAULT_ALIGNMENT) -> pathlib.Path:
    """Write a GGUF v3 file that ggml's parser accepts (contiguous, aligned offsets).

    ``types`` picks the stored type (one of GGUF_WRITE_TYPES): one string for every tensor with >= 2 dims
    whose last axis fits the block size (others stay F32), or a per-name mapping. Default: F16 for float16
    arrays, else F32.
    """
    infos, regions, offset = [], [], 0
    for name, array in tensors.items():
        array = np.asarray(array)
        if isinstance(types, Mapping):
            stored = types.get(name)
        elif types is not None:
            block = GGML_TYPES[_GGML_TYPE_IDS[types]][1]
            stored = types if array.ndim >= 2 and array.shape[-1] % block == 0 else "F32"
        else:
            stored = None
        stored = stored or ("F16" if array.dtype == np.float16 else "F32")
        if stored not in GGUF_WRITE_TYPES:
            raise ValueError(f"{name!r}: cannot write type {stored!r} (one of {', '.join(GGUF_WRITE_TYPES)})")
        type_id = _GGML_TYPE_IDS[stored]
        block = GGML_TYPES[type_id][1]
        if array.shape[-1] % block:
            raise ValueError(f"{name!r}: last dim {array.shape[-1]} not a multiple of {block} for {stored}")
        if stored == "Q8_0":
            data = quantize_q8_0(array)
        else:
            data = _as_bytes(array.astype(np.float16 if stored == "F16" else np.float32))
        ne = array.shape[::-1] or (1,)  # ggml order: fastest dimension first
        infos.append(_gguf_string(name) + struct.pack(f"<I{len(ne)}qIQ", len(ne), *ne, type_id, offset))
        regions.append((offset, _array_chunks(data)))
        offset += -(-data.size // alignment) * alignment
    entries = [_gguf_metadata_entry(key, value) for key, value in (metadata or {}).items()]
    if alignment != GGUF_DEFAULT_ALIGNMENT:
        entries.append(_gguf_string("general.alignment") + struct.pack("<II", _GGUF_TYPE_IDS["u32"], alignment))
    head = GGUF_MAGIC + struct.pack("<IQQ", 3, len(infos), len(entries)) + b"".join(entries) + b"".join(infos)
    head += b"\0" * (-len(head) % alignment)
    return _write_file(path, head, regions, offset)
