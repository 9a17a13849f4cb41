"""Header-only reading and checking of safetensors and GGUF component files.

The core trusts file headers; a malformed one can take the interpreter down. These checks read only the
header (never the weights), so they cost milliseconds on multi-GB files, and they raise
``InvalidComponentError`` (a ValueError) naming the argument, the file and what is wrong.
Formats other than safetensors and GGUF (.ckpt, .pt) are left to the core.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass, field
from typing import BinaryIO, Dict, List, Optional, Tuple

from . import _core

GGUF_MAGIC = b"GGUF"
MAX_DIMS_SAFETENSORS = 5  # the core folds a 5th dimension into the 4th
MAX_DIMS_GGUF = 4
MAX_HEADER_BYTES = 100 * 1024 * 1024
MAX_ENTRIES = 1_000_000

# safetensors dtype -> bytes per element, for the dtypes the core's reader accepts (U8 is skipped by it).
SAFETENSORS_ITEMSIZE = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8, "F8_E4M3": 1, "F8_E5M2": 1, "I32": 4, "I64": 8,
                        "U8": 1}


class InvalidComponentError(ValueError):
    """A component file whose header is malformed or does not fit the slot it was given in."""


@dataclass
class TensorInfo:
    name: str
    dtype: str
    shape: Tuple[int, ...]
    nbytes: int
    offset: int = -1  # where the tensor's data starts in the file


@dataclass
class FileHeader:
    path: str
    format: str  # "safetensors" or "gguf"
    file_size: int
    tensors: Dict[str, TensorInfo] = field(default_factory=dict)
    metadata: Dict[str, object] = field(default_factory=dict)


def _fail(argument: str, path: str, reason: str) -> InvalidComponentError:
    return InvalidComponentError(f"{argument}: {path!r} is not a valid model file: {reason}")


def sniff_format(path: str) -> Optional[str]:
    """'gguf', 'safetensors' or None (a format left to the core), from the first bytes."""
    with open(path, "rb") as handle:
        head = handle.read(9)
    if head[:4] == GGUF_MAGIC:
        return "gguf"
    if path.lower().endswith(".safetensors") or (len(head) == 9 and head[8:9] == b"{"):
        return "safetensors"
    return None


def read_header(path: str, argument: str = "path") -> Optional[FileHeader]:
    """Parse and check the header of a safetensors or GGUF file; None for other formats."""
    kind = sniff_format(path)
    if kind is None:
        return None
    file_size = os.path.getsize(path)
    with open(path, "rb") as handle:
        if kind == "gguf":
            return _read_gguf(handle, path, file_size, argument)
        return _read_safetensors(handle, path, file_size, argument)


def _read_safetensors(handle: BinaryIO, path: str, file_size: int, argument: str) -> FileHeader:
    raw = handle.read(8)
    if len(raw) < 8:
        raise _fail(argument, path, f"file is {file_size} bytes, too short for a safetensors header")
    header_size = struct.unpack("<Q", raw)[0]
    if header_size > min(file_size - 8, MAX_HEADER_BYTES):
        raise _fail(argument, path, f"safetensors header claims {header_size} bytes but the file has {file_size}")
    try:
        header = json.loads(handle.read(header_size))
    except (UnicodeDecodeError, ValueError) as exc:
        raise _fail(argument, path, f"safetensors header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise _fail(argument, path, "safetensors header is not a JSON object")
    data_size = file_size - 8 - header_size
    result = FileHeader(path, "safetensors", file_size)
    metadata = header.pop("__metadata__", {})
    if isinstance(metadata, dict):
        result.metadata = dict(metadata)
    for name, entry in header.items():
        if not isinstance(entry, dict):
            raise _fail(argument, path, f"tensor {name!r}: entry is not an object")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if dtype not in SAFETENSORS_ITEMSIZE:
            raise _fail(argument, path, f"tensor {name!r}: unsupported dtype {dtype!r}")
        if (not isinstance(shape, list) or len(shape) > MAX_DIMS_SAFETENSORS
                or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
            raise _fail(argument, path, f"tensor {name!r}: bad shape {shape!r}")
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
                or not 0 <= offsets[0] <= offsets[1]):
            raise _fail(argument, path, f"tensor {name!r}: bad data_offsets {offsets!r}")
        if offsets[1] > data_size:
            raise _fail(argument, path, f"tensor {name!r}: data ends at byte {offsets[1]} of a {data_size}-byte "
                                        "data section (truncated file?)")
        nbytes = math.prod(shape) * SAFETENSORS_ITEMSIZE[dtype]
        if nbytes != offsets[1] - offsets[0]:
            raise _fail(argument, path, f"tensor {name!r}: shape {shape} of {dtype} needs {nbytes} bytes, "
                                        f"data_offsets give {offsets[1] - offsets[0]}")
        result.tensors[name] = TensorInfo(name, dtype, tuple(shape), nbytes, 8 + header_size + offsets[0])
    return result


class _GGUFReader:
    _SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}

    def __init__(self, handle: BinaryIO, file_size: int, fail):
        self.handle, self.file_size, self.fail = handle, file_size, fail

    def take(self, count: int) -> bytes:
        data = self.handle.read(count)
        if len(data) != count:
            raise self.fail("header runs past the end of the file (truncated?)")
        return data

    def unpack(self, fmt: str):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        length = self.unpack("<Q")
        if length > self.file_size:
            raise self.fail(f"string of {length} bytes in a {self.file_size}-byte file")
        try:
            return self.take(length).decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail("a header string is not UTF-8") from None

    def value(self, kind: int, depth: int = 0):
        if kind in self._SCALARS:
            return self.unpack(self._SCALARS[kind])
        if kind == 8:
            return self.string()
        if kind == 9 and depth == 0:
            item_kind, count = self.unpack("<I"), self.unpack("<Q")
            if count > self.file_size:
                raise self.fail(f"array of {count} items in a {self.file_size}-byte file")
            return [self.value(item_kind, depth + 1) for _ in range(count)]
        raise self.fail(f"unknown metadata value type {kind}")


def _read_gguf(handle: BinaryIO, path: str, file_size: int, argument: str) -> FileHeader:
    def fail(reason: str) -> InvalidComponentError:
        return _fail(argument, path, reason)

    reader = _GGUFReader(handle, file_size, fail)
    reader.take(4)
    version = reader.unpack("<I")
    if version not in (2, 3):
        raise fail(f"GGUF version {version} (this core reads 2 and 3)")
    n_tensors, n_kv = reader.unpack("<Q"), reader.unpack("<Q")
    if n_tensors > MAX_ENTRIES or n_kv > MAX_ENTRIES:
        raise fail(f"header claims {n_tensors} tensors and {n_kv} metadata entries")
    result = FileHeader(path, "gguf", file_size)
    for _ in range(n_kv):
        key = reader.string()
        result.metadata[key] = reader.value(reader.unpack("<I"))
    alignment = result.metadata.get("general.alignment", 32)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise fail(f"general.alignment {alignment!r} is not a power of two")
    layouts = _core.GGML_TYPE_LAYOUTS
    names = {value: name for name, value in _core.WEIGHT_TYPES.items()}
    ranges: List[Tuple[str, int, int]] = []
    for _ in range(n_tensors):
        name = reader.string()
        n_dims = reader.unpack("<I")
        if not 1 <= n_dims <= MAX_DIMS_GGUF:
            raise fail(f"tensor {name!r}: {n_dims} dimensions")
        shape = tuple(reader.unpack("<Q") for _ in range(n_dims))
        type_id, offset = reader.unpack("<I"), reader.unpack("<Q")
        if type_id not in layouts:
            raise fail(f"tensor {name!r}: unknown ggml type {type_id}")
        block, type_size = layouts[type_id]
        if any(d == 0 for d in shape) or math.prod(shape) > file_size * 64:
            raise fail(f"tensor {name!r}: bad shape {list(shape)}")
        if shape[0] % block:
            raise fail(f"tensor {name!r}: first dimension {shape[0]} is not a multiple of the "
                       f"{names.get(type_id, type_id)} block size {block}")
        nbytes = math.prod(shape) // block * type_size
        if name in result.tensors:
            raise fail(f"tensor {name!r} appears twice")
        result.tensors[name] = TensorInfo(name, names.get(type_id, str(type_id)), shape, nbytes)
        ranges.append((name, offset, nbytes))
    data_start = -(-handle.tell() // alignment) * alignment
    for name, offset, nbytes in ranges:
        if offset % alignment:
            raise fail(f"tensor {name!r}: offset {offset} is not aligned to {alignment}")
        if data_start + offset + nbytes > file_size:
            raise fail(f"tensor {name!r}: data ends at byte {data_start + offset + nbytes} of a "
                       f"{file_size}-byte file (truncated?)")
        result.tensors[name].offset = data_start + offset
    return result


def check_component(argument: str, path: str) -> Optional[FileHeader]:
    """Read and check a component's header; raise InvalidComponentError naming the argument."""
    try:
        header = read_header(path, argument)
    except OSError as exc:
        raise InvalidComponentError(f"{argument}: cannot read {path!r}: {exc.strerror or exc}") from None
    if header is not None and not header.tensors:
        raise _fail(argument, path, "it holds no tensors")
    return header
