"""Header-only reading and checking of safetensors and GGUF component files.

The core trusts file headers; a malformed one can take the interpreter down. These checks read only the
header (never the weights), so they cost milliseconds on multi-GB files, and they raise
``InvalidComponentError`` (a ValueError) naming the argument, the file and what is wrong.

GGUF: a file passes only if ggml's ``gguf_init_from_file`` (ggml/src/gguf.cpp) would parse it, because when
that fails the core falls back to a lax reader of its own that can crash on bad input. safetensors: a file
is checked whenever the core's ``is_safetensors_file`` could take it for one (the name does not matter to
the core), and refused where the core's JSON code would throw. Other formats (.ckpt, .pt) are left to the
core. This module needs nothing from the compiled core.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass, field
from typing import BinaryIO

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


class InvalidComponentError(ValueError):
    """A component file whose header is malformed or does not fit the slot it was given in."""


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


def _fail(argument: str, path: str, reason: str) -> InvalidComponentError:
    return InvalidComponentError(f"{argument}: {path!r} is not a valid model file: {reason}")


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


def read_header(path: str, argument: str = "path") -> FileHeader | None:
    """Parse and check the header of a safetensors or GGUF file; None for other formats."""
    kind = sniff_format(path)
    if kind is None:
        return None
    file_size = os.path.getsize(path)
    with open(path, "rb") as handle:
        if kind == "gguf":
            return _read_gguf(handle, path, file_size, argument)
        return _read_safetensors(handle, path, file_size, argument)


# --------------------------------------------------------------------------- safetensors


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


def _read_safetensors(handle: BinaryIO, path: str, file_size: int, argument: str) -> FileHeader:
    def fail(reason: str) -> InvalidComponentError:
        return _fail(argument, path, reason)

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


# --------------------------------------------------------------------------- GGUF


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

    def _truncated(self) -> InvalidComponentError:
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


def _read_gguf(handle: BinaryIO, path: str, file_size: int, argument: str) -> FileHeader:
    def fail(reason: str) -> InvalidComponentError:
        return _fail(argument, path, reason)

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


def check_component(argument: str, path: str) -> FileHeader | None:
    """Read and check a component's header; raise InvalidComponentError naming the argument."""
    try:
        header = read_header(path, argument)
    except OSError as exc:
        raise InvalidComponentError(f"{argument}: cannot read {path!r}: {exc.strerror or exc}") from None
    if header is not None and not header.tensors:
        raise _fail(argument, path, "it holds no tensors")
    return header
