"""PyTorch files (.pt, .pth, .ckpt): the tensors the core's own pickle reader would find, checked before it runs.

The core parses PyTorch files itself (vendor/stable-diffusion.cpp/src/model_io: torch_zip_io.cpp for the zip format
that ``torch.save`` writes by default, torch_legacy_io.cpp for the older sequence of pickles, both through
pickle_io.cpp). That reader copies its pickle values by value (on every memo get, DUP, tuple build...), so a tiny
pickle that keeps duplicating a value exhausts memory; it recurses on nested values on its C++ stack; it keeps
tensors of 5 dimensions that its loader then aborts on (its zip loader's use after free on a tensor that is a view
of a larger storage is patch 0023's). This module never executes a pickle: it walks the opcodes the core supports,
with the core's semantics (its integer widths, its string and memo rules), keeps GLOBAL, REDUCE and persistent ids
symbolic, and counts the nodes the core would materialize, copies included (shared snapshots keep our own work
linear). Files are decided as the core decides them: a zip archive that its miniz would open, else a legacy file.
Only pickles and zip directories are read (capped), never weights. Refusals raise ``MalformedFileError`` naming the
file and what is wrong; an unreadable file raises OSError. This module needs nothing from the compiled core.
"""

from __future__ import annotations

import os
import struct
import zipfile
from typing import BinaryIO

from ._formats import FileHeader, MalformedFileError, TensorInfo, sniff_format

# Caps, far above real checkpoints: an SD1 state dict is ~1,100 tensors, SDXL ~2,500, Flux-sized ~3,000, and
# their pickles are well under 1 MB, ~30 opcodes and ~25 live pickle nodes per tensor. A training checkpoint with
# optimizer state has a few times that.
MAX_PICKLE_BYTES = 64 * 1024 * 1024  # one state-dict pickle (data.pkl, or the legacy file's 4th pickle)
MAX_LEGACY_PICKLES_BYTES = 128 * 1024 * 1024  # all the pickles that open a legacy file
MAX_OPCODES = 5_000_000  # per file; also bounds our own time (~1 s per million)
# One node is one C++ PickleValue (~350 bytes there: it embeds a TensorStorage), so the live cap is ~3.5 GB of
# the core's memory at worst; copies cost its time (deep copies with allocations).
MAX_LIVE_NODES = 10_000_000
MAX_COPIED_NODES = 100_000_000
STRING_BYTES_PER_NODE = 256  # a string's payload counts as this many bytes per extra node
MAX_TENSORS = 1_000_000  # tensors collected from one pickle (a name may repeat: the last one wins)
# The core copies, destroys and walks values recursively: deep nesting overflows its stack. Real: under 10.
MAX_NESTING = 256
MAX_ZIP_ENTRIES = 262_144  # zipfile keeps a ZipInfo (~600 bytes) per entry; torch zips have one per storage
MAX_ZIP_DIRECTORY_BYTES = 64 * 1024 * 1024
# The core finds each tensor's storage entry by a linear scan of the archive (torch_zip_io.cpp find_zip_entry):
# entries opened in all, ~3 million for SDXL.
MAX_ZIP_LOOKUPS = 200_000_000
MAX_DEFLATE_RATIO = 1100  # deflate cannot expand more than ~1032:1; a larger declared size is a lie

INT64_MAX = 2**63 - 1
LEGACY_MAGIC = bytes.fromhex("6cfc9c46f9206aa85019")  # 0x1950a86a20f9469cfc6c, little-endian
LEGACY_PROTOCOL_VERSION = 1001
LEGACY_STORAGE_HEADER = 8  # each raw storage is preceded by its element count
MAX_CORE_DIMS = 5  # SD_MAX_DIMS: the pickle reader fails on a 6th dimension
MAX_LOADER_DIMS = 4  # the loader compares ne[0..3] only, then asserts on the byte count

# The storage classes pickle_io.cpp parse_storage_type knows -> (safetensors-style dtype, bytes per element).
# Double and Long are read as F32 and I32 by the core (converted on load); their files hold 8-byte elements.
STORAGE_DTYPES = {b"torch.FloatStorage": ("F32", 4), b"torch.DoubleStorage": ("F64", 8),
                  b"torch.HalfStorage": ("F16", 2), b"torch.BFloat16Storage": ("BF16", 2),
                  b"torch.IntStorage": ("I32", 4), b"torch.LongStorage": ("I64", 8)}
_REBUILD_TENSOR = (b"torch._utils._rebuild_tensor_v2", b"torch._utils._rebuild_tensor")

_ZIP_LOCAL_SIG, _ZIP_CENTRAL_SIG = b"PK\x03\x04", b"PK\x01\x02"
_ZIP_END_SIG, _ZIP64_END_SIG, _ZIP64_LOCATOR_SIG = b"PK\x05\x06", b"PK\x06\x06", b"PK\x06\x07"
_ZIP_END_SIZE, _ZIP64_END_SIZE, _ZIP64_LOCATOR_SIZE = 22, 56, 20
_ZIP_CENTRAL_SIZE, _ZIP_LOCAL_SIZE = 46, 30
_U16, _U32, _I32, _U64 = struct.Struct("<H"), struct.Struct("<I"), struct.Struct("<i"), struct.Struct("<Q")


class _Refused(Exception):
    """Internal: the reason a file is refused (the caller adds the path)."""


def read_torch_header(path: str) -> FileHeader | None:
    """The tensors the core would read from a PyTorch file; None when the core would not take the file for one.

    Formats are decided in the core's order (model.cpp ``init_from_file``): GGUF and safetensors files (see
    ``_formats.read_header``) give None; then a zip archive is the torch zip format (``format="torch-zip"``);
    then a file that starts with a pickle PROTO opcode is the legacy format (``"torch-legacy"``). Tensor names
    are the state dict's keys as the core reads them (nested dicts flattened, the inner key kept), dtypes are
    safetensors names ("F32", "F16", "BF16", "F64", "I32", "I64"), shapes in torch (row-major) order, nbytes the
    bytes stored in the file; offsets are not resolved (-1).

    Raises:
        MalformedFileError: a file the core would refuse, or could crash or exhaust memory on.
        OSError: the file cannot be read.
    """
    path = os.fsdecode(os.fspath(path))
    if sniff_format(path) is not None:
        return None
    with open(path, "rb") as handle:
        file_size = os.fstat(handle.fileno()).st_size
        if file_size == 0:
            return None
        try:
            directory = _miniz_directory(handle, file_size)
            handle.seek(0)
            first = handle.read(4)
            if directory is not None:
                if first[:1] == b"\x80":
                    # The core's miniz might refuse the archive where our zipfile accepts it, and then parse the
                    # same bytes as a legacy pickle that we never checked.
                    raise _Refused("the file is both a zip archive and a pickle")
                return _read_zip(handle, path, file_size, directory)
            if first == _ZIP_LOCAL_SIG:
                raise _Refused("it starts like a zip archive but has no readable central directory (truncated?)")
            if first[:1] != b"\x80":
                return None  # both of the core's legacy paths need a pickle PROTO first
            return _read_legacy(handle, path, file_size)
        except _Refused as exc:
            raise MalformedFileError(path, str(exc)) from None
        except (MalformedFileError, OSError):
            raise
        except RecursionError:
            raise MalformedFileError(path, "torch file nested too deeply to read") from None
        except MemoryError:
            raise MalformedFileError(path, "torch file too large to read") from None
        except Exception as exc:  # zipfile, zlib, struct, decoding: anything malformed the checks above missed
            raise MalformedFileError(path, f"unreadable torch file ({type(exc).__name__}: {exc})") from None


# --------------------------------------------------------------------------- symbolic pickle values

# Value kinds, as pickle_io.cpp's PickleValue::Kind (ORDERED_DICT is a DICT here: the core treats them alike).
MARK, NONE, BOOL, INT, STRING, GLOBAL, TUPLE, LIST, DICT, STORAGE, TENSOR = range(11)
_KIND_NAMES = ("mark", "None", "bool", "int", "string", "global", "tuple", "list", "dict", "storage", "tensor")


class _Value:
    """One PickleValue. ``size`` is the node count of the tree the core holds for it, ``depth`` its nesting.
    Immutable: where the core mutates a list or dict in place we make a new snapshot over a shared backing."""

    __slots__ = ("kind", "data", "size", "depth")

    def __init__(self, kind: int, data=None, size: int = 1, depth: int = 1):
        self.kind, self.data, self.size, self.depth = kind, data, size, depth


class _Backing:
    """Items shared by snapshots of one list or dict; a snapshot sees its first ``length`` items. Appending to
    a snapshot that is not the longest forks a copy, which the core paid for already when it copied the value."""

    __slots__ = ("items", "sizes", "depths")

    def __init__(self, items=None, sizes=None, depths=None):
        self.items = items if items is not None else []
        self.sizes = sizes if sizes is not None else [0]  # sizes[i]: nodes in items[:i]
        self.depths = depths if depths is not None else [0]  # depths[i]: deepest of items[:i]


class _Storage:
    __slots__ = ("key", "dtype", "itemsize", "nbytes")

    def __init__(self, key: bytes, dtype: str, itemsize: int, nbytes: int):
        self.key, self.dtype, self.itemsize, self.nbytes = key, dtype, itemsize, nbytes


class _Tensor:
    __slots__ = ("storage", "offset", "shape")

    def __init__(self, storage: _Storage, offset: int, shape: tuple):
        self.storage, self.offset, self.shape = storage, offset, shape


_MARK_VALUE, _NONE_VALUE = _Value(MARK), _Value(NONE)
_TRUE_VALUE, _FALSE_VALUE = _Value(BOOL, True), _Value(BOOL, False)


def _int64(value: int) -> int:
    """Wrap to int64 as the core's arithmetic does."""
    return (value + 2**63) % 2**64 - 2**63


def _strtoll(raw: bytes) -> int:
    """std::strtoll(s.c_str(), nullptr, 10): up to a NUL, leading space, a sign, digits; saturated."""
    text = raw.split(b"\0", 1)[0].lstrip(b" \t\n\v\f\r")
    negative = text[:1] == b"-"
    if text[:1] in (b"-", b"+"):
        text = text[1:]
    digits = len(text) - len(text.lstrip(b"0123456789"))
    number = text[:digits].lstrip(b"0")
    if len(number) > 19:  # int() of a huge digit string is slow (and limited): it saturates anyway
        return -2**63 if negative else INT64_MAX
    value = -int(number or b"0") if negative else int(number or b"0")
    return max(-2**63, min(INT64_MAX, value))


def _string_value(raw: bytes) -> _Value:
    return _Value(STRING, raw, 1 + len(raw) // STRING_BYTES_PER_NODE)


def _tuple_value(items: list) -> _Value:
    size = 1 + sum(item.size for item in items)
    depth = 1 + max((item.depth for item in items), default=0)
    if depth > MAX_NESTING:
        raise _Refused(f"pickle values nested more than {MAX_NESTING} deep (the core recurses on them)")
    return _Value(TUPLE, tuple(items), size, depth)


def _container(kind: int, backing: _Backing, length: int) -> _Value:
    depth = 1 + backing.depths[length]
    if depth > MAX_NESTING:
        raise _Refused(f"pickle values nested more than {MAX_NESTING} deep (the core recurses on them)")
    return _Value(kind, (backing, length), 1 + backing.sizes[length], depth)


def _extended(container: _Value, entries: list, sizes: list, depths: list) -> _Value:
    """``container`` with list items or dict pairs appended: what the core's in-place append leaves."""
    backing, length = container.data
    if length != len(backing.items):
        backing = _Backing(backing.items[:length], backing.sizes[:length + 1], backing.depths[:length + 1])
    items, total, deepest = backing.items, backing.sizes, backing.depths
    for entry, size, depth in zip(entries, sizes, depths):
        items.append(entry)
        total.append(total[-1] + size)
        deepest.append(max(deepest[-1], depth))
    return _container(container.kind, backing, len(items))


def _describe(value: _Value) -> object:
    if value.kind == INT:
        return value.data
    return f"<{_KIND_NAMES[value.kind]}>"


class _Budget:
    """Work limits shared by all the pickles of one file."""

    def __init__(self):
        self.opcodes = 0
        self.copied = 0
        self.pickle_bytes = 0


# --------------------------------------------------------------------------- the core's pickle reader, simulated


def _truncated(at: int, what: str) -> _Refused:
    return _Refused(f"torch pickle ends inside {what} (opcode at offset {at})")


def _line_end(buf: bytes, start: int, end: int) -> int:
    found = buf.find(b"\n", start, end)
    if found < 0:
        raise _Refused(f"torch pickle has an unterminated line at offset {start}")
    return found


def _find_mark(stack: list) -> int:
    index = len(stack) - 1
    while index >= 0 and stack[index].kind != MARK:
        index -= 1
    return index


def _simulate_state_dict(buf: bytes, budget: _Budget) -> tuple[list, dict]:
    """Run pickle_io.cpp ``parse_torch_state_dict_pickle`` on ``buf`` symbolically.

    Returns (tensors in the core's collection order as (name bytes, _Tensor), the core's storage_nbytes map:
    storage key -> bytes). Raises _Refused where the core fails, or where it would exhaust memory or time."""
    budget.pickle_bytes += len(buf)
    if budget.pickle_bytes > MAX_PICKLE_BYTES:
        raise _Refused(f"torch pickle data of more than {MAX_PICKLE_BYTES} bytes")
    if len(buf) < 2 or buf[0] != 0x80 or not 2 <= buf[1] <= 5:
        raise _Refused("not a pickle of protocol 2 to 5 (the core reads only those)")
    stack: list[_Value] = []
    memo: dict[int, _Value] = {}
    storage_nbytes: dict[bytes, int] = {}
    live = 0  # nodes on the stack and in the memo
    copied = budget.copied
    opcodes = budget.opcodes
    end = len(buf)
    p = 2
    max_opcodes, max_live, max_copied = MAX_OPCODES, MAX_LIVE_NODES, MAX_COPIED_NODES  # read per call

    while p < end:
        opcode = buf[p]
        at = p
        p += 1
        opcodes += 1
        if opcodes > max_opcodes:
            raise _Refused(f"torch pickle data of more than {max_opcodes} opcodes")
        if opcode == 0x71 or opcode == 0x72 or opcode == 0x94:  # BINPUT, LONG_BINPUT, MEMOIZE: a copy
            if opcode == 0x71:
                if p >= end:
                    raise _truncated(at, "BINPUT")
                key = buf[p]
                p += 1
            elif opcode == 0x72:
                if p + 4 > end:
                    raise _truncated(at, "LONG_BINPUT")
                key = _I32.unpack_from(buf, p)[0]
                p += 4
            else:
                key = len(memo)  # the core's memo.size(): may land on a key BINPUT stored
            if not stack:
                raise _Refused(f"torch pickle stores an empty stack in its memo at offset {at}")
            value = stack[-1]
            old = memo.get(key)
            live += value.size - (old.size if old is not None else 0)
            copied += value.size
            memo[key] = value
        elif opcode == 0x68 or opcode == 0x6A:  # BINGET, LONG_BINGET: a copy
            if opcode == 0x68:
                if p >= end:
                    raise _truncated(at, "BINGET")
                key = buf[p]
                p += 1
            else:
                if p + 4 > end:
                    raise _truncated(at, "LONG_BINGET")
                key = _I32.unpack_from(buf, p)[0]
                p += 4
            value = memo.get(key)
            if value is None:
                raise _Refused(f"torch pickle reads memo entry {key} that was never stored (offset {at})")
            stack.append(value)
            live += value.size
            copied += value.size
        elif opcode in (0x58, 0x54, 0x42):  # BINUNICODE, BINSTRING, BINBYTES: int32 length
            if p + 4 > end:
                raise _truncated(at, "a string length")
            length = _I32.unpack_from(buf, p)[0]
            p += 4
            if length < 0 or p + length > end:
                raise _truncated(at, "a string")
            value = _string_value(buf[p:p + length])
            p += length
            stack.append(value)
            live += value.size
        elif opcode in (0x8C, 0x55, 0x43):  # SHORT_BINUNICODE, SHORT_BINSTRING, SHORT_BINBYTES
            if p >= end or p + 1 + buf[p] > end:
                raise _truncated(at, "a short string")
            length = buf[p]
            stack.append(_string_value(buf[p + 1:p + 1 + length]))
            p += 1 + length
            live += 1
        elif opcode in (0x8D, 0x8E, 0x96):  # BINUNICODE8, BINBYTES8, BYTEARRAY8
            if p + 8 > end:
                raise _truncated(at, "a string length")
            length = _U64.unpack_from(buf, p)[0]
            p += 8
            if length > end - p:
                raise _truncated(at, "a string")
            value = _string_value(buf[p:p + length])
            p += length
            stack.append(value)
            live += value.size
        elif opcode == 0x4B:  # BININT1
            if p >= end:
                raise _truncated(at, "BININT1")
            stack.append(_Value(INT, buf[p]))
            p += 1
            live += 1
        elif opcode == 0x4D:  # BININT2
            if p + 2 > end:
                raise _truncated(at, "BININT2")
            stack.append(_Value(INT, _U16.unpack_from(buf, p)[0]))
            p += 2
            live += 1
        elif opcode == 0x4A:  # BININT
            if p + 4 > end:
                raise _truncated(at, "BININT")
            stack.append(_Value(INT, _I32.unpack_from(buf, p)[0]))
            p += 4
            live += 1
        elif opcode == 0x8A:  # LONG1: the core ORs the bytes in, unsigned below 8 bytes
            if p >= end:
                raise _truncated(at, "LONG1")
            length = buf[p]
            p += 1
            if p + length > end or length > 8:
                raise _Refused(f"torch pickle has a LONG1 of {length} bytes at offset {at} (the core reads "
                               "at most 8)")
            stack.append(_Value(INT, _int64(int.from_bytes(buf[p:p + length], "little"))))
            p += length
            live += 1
        elif opcode == 0x28:  # MARK
            stack.append(_MARK_VALUE)
            live += 1
        elif opcode == 0x29:  # EMPTY_TUPLE
            stack.append(_Value(TUPLE, ()))
            live += 1
        elif opcode == 0x4E:  # NONE
            stack.append(_NONE_VALUE)
            live += 1
        elif opcode == 0x88 or opcode == 0x89:  # NEWTRUE, NEWFALSE
            stack.append(_TRUE_VALUE if opcode == 0x88 else _FALSE_VALUE)
            live += 1
        elif opcode == 0x7D:  # EMPTY_DICT
            stack.append(_container(DICT, _Backing(), 0))
            live += 1
        elif opcode == 0x5D or opcode == 0x8F:  # EMPTY_LIST, EMPTY_SET (a list to the core)
            stack.append(_container(LIST, _Backing(), 0))
            live += 1
        elif opcode in (0x74, 0x6C, 0x91):  # TUPLE, LIST, FROZENSET: items above the mark, copied
            mark = _find_mark(stack)
            if mark < 0:
                raise _Refused(f"torch pickle builds a tuple or list without a mark at offset {at}")
            items = stack[mark + 1:]
            del stack[mark:]
            moved = sum(item.size for item in items)
            copied += moved
            if opcode == 0x74:
                value = _tuple_value(items)
            else:
                value = _extended(_container(LIST, _Backing(), 0), items, [item.size for item in items],
                                  [item.depth for item in items])
            stack.append(value)
            live += value.size - moved - 1  # the mark is gone
        elif opcode in (0x85, 0x86, 0x87):  # TUPLE1, TUPLE2, TUPLE3 (marks included, as the core does)
            count = opcode - 0x84
            if len(stack) < count:
                raise _Refused(f"torch pickle builds a tuple from an empty stack at offset {at}")
            items = stack[-count:]
            del stack[-count:]
            value = _tuple_value(items)
            copied += value.size - 1
            stack.append(value)
            live += 1
        elif opcode == 0x51:  # BINPERSID: a storage reference
            if not stack:
                raise _Refused(f"torch pickle has a persistent id on an empty stack at offset {at}")
            pid = stack.pop()
            copied += pid.size
            live -= pid.size
            stack.append(_storage_value(pid, at, storage_nbytes))
            live += 1
        elif opcode == 0x52:  # REDUCE: only tensors and OrderedDict() mean something to the core
            if len(stack) < 2:
                raise _Refused(f"torch pickle calls REDUCE on a stack of {len(stack)} at offset {at}")
            args = stack.pop()
            func = stack.pop()
            copied += args.size + func.size
            live -= args.size + func.size
            if func.kind != GLOBAL or args.kind != TUPLE:
                value = _NONE_VALUE
            elif func.data == b"collections.OrderedDict" and not args.data:
                value = _container(DICT, _Backing(), 0)
            elif func.data in _REBUILD_TENSOR and len(args.data) >= 4 and \
                    [item.kind for item in args.data[:4]] == [STORAGE, INT, TUPLE, TUPLE]:
                value = _tensor_value(args.data, at)
            else:
                value = _NONE_VALUE  # any other object: not run, kept as None as the core does
            stack.append(value)
            live += 1
        elif opcode == 0x63:  # GLOBAL: "module\nname\n"
            first = _line_end(buf, p, end)
            second = _line_end(buf, first + 1, end)
            stack.append(_string_value(buf[p:first] + b"." + buf[first + 1:second]))
            stack[-1].kind = GLOBAL
            p = second + 1
            live += stack[-1].size
        elif opcode == 0x93:  # STACK_GLOBAL
            if len(stack) < 2 or stack[-2].kind != STRING or stack[-1].kind != STRING:
                raise _Refused(f"torch pickle has a STACK_GLOBAL without module and name at offset {at}")
            name = stack.pop()
            module = stack.pop()
            copied += name.size + module.size
            live -= name.size + module.size
            value = _string_value(module.data + b"." + name.data)
            value.kind = GLOBAL
            stack.append(value)
            live += value.size
        elif opcode == 0x75:  # SETITEMS: pairs above the mark into the dict below it, copied
            mark = _find_mark(stack)
            if mark <= 0 or stack[mark - 1].kind != DICT:
                raise _Refused(f"torch pickle has SETITEMS without a dict at offset {at}")
            items = stack[mark + 1:]
            pairs = [(items[i], items[i + 1]) for i in range(0, len(items) - 1, 2)]  # an odd last item is lost
            del stack[mark:]
            live -= sum(item.size for item in items) + 1
            sizes = [key.size + value.size for key, value in pairs]
            copied += sum(sizes)
            old = stack[-1]
            stack[-1] = _extended(old, pairs, sizes, [max(key.depth, value.depth) for key, value in pairs])
            live += stack[-1].size - old.size
        elif opcode == 0x73:  # SETITEM: key and value copied twice by the core
            if len(stack) < 3:
                raise _Refused(f"torch pickle has SETITEM on a stack of {len(stack)} at offset {at}")
            value = stack.pop()
            key = stack.pop()
            if stack[-1].kind != DICT:
                raise _Refused(f"torch pickle has SETITEM without a dict at offset {at}")
            size = key.size + value.size
            copied += 2 * size
            old = stack[-1]
            stack[-1] = _extended(old, [(key, value)], [size], [max(key.depth, value.depth)])
            live += stack[-1].size - old.size - size
        elif opcode == 0x65 or opcode == 0x90:  # APPENDS, ADDITEMS: items above the mark into the list below
            mark = _find_mark(stack)
            if mark <= 0 or stack[mark - 1].kind != LIST:
                raise _Refused(f"torch pickle appends to something that is not a list at offset {at}")
            items = stack[mark + 1:]
            del stack[mark:]
            moved = sum(item.size for item in items)
            live -= moved + 1
            copied += moved
            old = stack[-1]
            stack[-1] = _extended(old, items, [item.size for item in items], [item.depth for item in items])
            live += stack[-1].size - old.size
        elif opcode == 0x61:  # APPEND: the item copied twice by the core
            if len(stack) < 2:
                raise _Refused(f"torch pickle has APPEND on a stack of {len(stack)} at offset {at}")
            item = stack.pop()
            if stack[-1].kind != LIST:
                raise _Refused(f"torch pickle appends to something that is not a list at offset {at}")
            copied += 2 * item.size
            old = stack[-1]
            stack[-1] = _extended(old, [item], [item.size], [item.depth])
            live += stack[-1].size - old.size - item.size
        elif opcode == 0x62:  # BUILD: the state is dropped, the object kept
            if len(stack) < 2:
                raise _Refused(f"torch pickle has BUILD on a stack of {len(stack)} at offset {at}")
            live -= stack.pop().size
        elif opcode == 0x30:  # POP
            if not stack:
                raise _Refused(f"torch pickle pops an empty stack at offset {at}")
            live -= stack.pop().size
        elif opcode == 0x31:  # POP_MARK
            mark = _find_mark(stack)
            if mark < 0:
                raise _Refused(f"torch pickle has POP_MARK without a mark at offset {at}")
            live -= sum(item.size for item in stack[mark:])
            del stack[mark:]
        elif opcode == 0x32:  # DUP: a copy
            if not stack:
                raise _Refused(f"torch pickle has DUP on an empty stack at offset {at}")
            stack.append(stack[-1])
            live += stack[-1].size
            copied += stack[-1].size
        elif opcode == 0x95:  # FRAME
            if p + 8 > end:
                raise _truncated(at, "FRAME")
            p += 8
        elif opcode in (0x47, 0x46):  # BINFLOAT, FLOAT: None to the core
            if opcode == 0x47:
                if p + 8 > end:
                    raise _truncated(at, "BINFLOAT")
                p += 8
            else:
                p = _line_end(buf, p, end) + 1
            stack.append(_NONE_VALUE)
            live += 1
        elif opcode in (0x49, 0x4C):  # INT, LONG: decimal lines
            stop = _line_end(buf, p, end)
            text = buf[p:stop]
            p = stop + 1
            if opcode == 0x49 and text in (b"01", b"00"):
                stack.append(_TRUE_VALUE if text == b"01" else _FALSE_VALUE)
            else:
                if opcode == 0x4C and text.endswith(b"L"):
                    text = text[:-1]
                stack.append(_Value(INT, _strtoll(text)))
            live += 1
        elif opcode in (0x53, 0x56):  # STRING (quotes dropped, escapes kept), UNICODE (raw)
            stop = _line_end(buf, p, end)
            text = buf[p:stop]
            p = stop + 1
            if opcode == 0x53 and len(text) >= 2 and text[:1] in (b"'", b'"') and text[-1:] == text[:1]:
                text = text[1:-1]
            value = _string_value(text)
            stack.append(value)
            live += value.size
        elif opcode == 0x2E:  # STOP
            if not stack:
                raise _Refused("torch pickle ends with an empty stack")
            budget.opcodes, budget.copied = opcodes, copied
            tensors = _collect_tensors(stack[-1])
            if not tensors:
                raise _Refused("torch pickle holds no state dict of tensors the core can read (a whole pickled "
                               "model or other object is not supported)")
            return tensors, storage_nbytes
        else:
            raise _Refused(f"torch pickle has opcode 0x{opcode:02X} at offset {at}, which the core does not read")
        if live > max_live:
            raise _Refused(f"torch pickle would make the core hold more than {max_live} values at once (it "
                           "copies values on every memo get, DUP and tuple: a pickle bomb?)")
        if copied > max_copied:
            raise _Refused(f"torch pickle would make the core copy more than {max_copied} values (it copies "
                           "values on every memo get, DUP and tuple: a pickle bomb?)")
    raise _Refused("torch pickle has no STOP opcode (truncated?)")


def _storage_value(pid: _Value, at: int, storage_nbytes: dict) -> _Value:
    """BINPERSID of ('storage', storage class, key, location, element count, ...)."""
    items = pid.data if pid.kind == TUPLE else ()
    if (len(items) < 5 or items[0].kind != STRING or items[0].data != b"storage" or items[1].kind != GLOBAL
            or items[4].kind != INT):
        raise _Refused(f"torch pickle has a persistent id at offset {at} that is not a torch storage")
    raw_key = items[2]
    key = raw_key.data if raw_key.kind == STRING else str(raw_key.data).encode() if raw_key.kind == INT else b""
    if not key:
        raise _Refused(f"torch pickle has a storage without a key at offset {at}")
    kind = STORAGE_DTYPES.get(items[1].data)
    if kind is None:
        known = ", ".join(name.decode() for name in STORAGE_DTYPES)
        raise _Refused(f"storage type {items[1].data.decode('utf-8', 'replace')!r} is not one the core loads "
                       f"({known})")
    numel = items[4].data
    if numel < 0:
        raise _Refused(f"storage {key.decode('utf-8', 'replace')!r} has {numel} elements")
    dtype, itemsize = kind
    storage_nbytes[key] = numel * itemsize  # the last declaration of a key wins, as in the core's map
    return _Value(STORAGE, _Storage(key, dtype, itemsize, numel * itemsize))


def _tensor_value(args: tuple, at: int) -> _Value:
    """_rebuild_tensor_v2(storage, offset, size, stride, ...) as the core reads it: at most 5 int dims, and
    contiguous (strides checked in int64, unless the element count wraps to 0)."""
    storage, offset, size, stride = args[:4]
    for what, dims in (("shape", size.data), ("strides", stride.data)):
        if len(dims) > MAX_CORE_DIMS or any(dim.kind != INT for dim in dims):
            shown = tuple(_describe(dim) for dim in dims)
            raise _Refused(f"a tensor's {what} {shown} is not {MAX_CORE_DIMS} or fewer integers (the core "
                           "refuses it)")
    shape = tuple(dim.data for dim in size.data)
    strides = tuple(dim.data for dim in stride.data)
    count = 1
    for dim in shape:
        count = _int64(count * dim)
    if count != 0:
        expected, contiguous = 1, len(strides) == len(shape)
        for index in range(len(shape) - 1, -1, -1):
            if not contiguous or strides[index] != expected:
                contiguous = False
                break
            expected = _int64(expected * shape[index])
        if not contiguous:
            raise _Refused(f"a tensor of shape {shape} is stored with strides {strides}, not contiguously (the "
                           f"core refuses it); offset {at}")
    return _Value(TENSOR, _Tensor(storage.data, offset.data, shape))


def _collect_tensors(root: _Value) -> list:
    """collect_tensors_from_pickle_value: string keys with tensor values, recursing into dict values, in order."""
    found: list = []
    if root.kind != DICT:
        return found
    walk = [(root.data[0].items, 0, root.data[1])]
    while walk:
        items, index, length = walk.pop()
        while index < length:
            key, value = items[index]
            index += 1
            if key.kind == STRING and value.kind == TENSOR:
                found.append((key.data, value.data))
                if len(found) > MAX_TENSORS:
                    raise _Refused(f"torch pickle holds more than {MAX_TENSORS} tensors (not plausible)")
            elif value.kind == DICT:
                walk.append((items, index, length))
                items, index, length = value.data[0].items, 0, value.data[1]
    return found


def _tensor_info(name: bytes, tensor: _Tensor, declared_nbytes: int) -> TensorInfo:
    """Checks the core's loader needs and does not make; ``declared_nbytes``: the core's storage_nbytes entry."""
    text = name.decode("utf-8", "surrogateescape")
    shape, storage = tensor.shape, tensor.storage
    if b"\0" in name:  # the core keeps the whole name here, but ggml (convert, GGUF) cuts it at the NUL
        raise _Refused(f"tensor {text!r}: name has a NUL byte")
    if len(shape) > MAX_LOADER_DIMS:
        raise _Refused(f"tensor {text!r} has {len(shape)} dimensions {list(shape)}: the core's loader handles at "
                       f"most {MAX_LOADER_DIMS} and would abort on it; convert the file to safetensors")
    if any(dim < 0 for dim in shape):
        raise _Refused(f"tensor {text!r} has a negative dimension in {list(shape)}")
    count = 1
    for dim in shape:
        count *= dim
    nbytes = count * storage.itemsize
    if nbytes > INT64_MAX:
        raise _Refused(f"tensor {text!r}: {list(shape)} of {storage.dtype} overflows int64")
    if tensor.offset < 0:
        raise _Refused(f"tensor {text!r} starts at element {tensor.offset} of its storage")
    end = tensor.offset * storage.itemsize + nbytes
    limit = min(storage.nbytes, declared_nbytes)
    if end > limit:
        raise _Refused(f"tensor {text!r} ({list(shape)} of {storage.dtype} from element {tensor.offset}) ends at "
                       f"byte {end} of its storage {storage.key.decode('utf-8', 'replace')!r}, which has {limit}")
    return TensorInfo(text, storage.dtype, shape, nbytes, -1)


# --------------------------------------------------------------------------- the zip format


def _miniz_directory(handle: BinaryIO, file_size: int) -> tuple[int, int, int, int, int] | None:
    """Where the core's miniz finds the central directory, following mz_zip_reader_read_central_dir, as
    (offset, size, entries, end-record position, zip64 record position or -1); None where miniz refuses the file,
    so the core would try the legacy format."""
    if file_size < _ZIP_END_SIZE:
        return None
    chunk = 4096
    position = -1
    start = max(file_size - chunk, 0)
    while True:  # scan backwards for the last signature with a whole record after it, ~64 KiB at most
        handle.seek(start)
        data = handle.read(min(chunk, file_size - start))
        if len(data) != min(chunk, file_size - start):
            return None
        limit = min(len(data), file_size - start - _ZIP_END_SIZE + 4)
        found = data.rfind(_ZIP_END_SIG, 0, limit) if limit >= 4 else -1
        if found >= 0:
            position = start + found
            break
        if start == 0 or file_size - start >= 0xFFFF + _ZIP_END_SIZE:
            return None
        start = max(start - (chunk - 3), 0)
    handle.seek(position)
    record = handle.read(_ZIP_END_SIZE)
    this_disk, directory_disk, on_disk, total, size, offset = struct.unpack_from("<HHHHII", record, 4)
    zip64_at = -1
    if position >= _ZIP64_LOCATOR_SIZE + _ZIP64_END_SIZE:
        handle.seek(position - _ZIP64_LOCATOR_SIZE)
        locator = handle.read(_ZIP64_LOCATOR_SIZE)
        if locator[:4] == _ZIP64_LOCATOR_SIG:
            record_at = _U64.unpack_from(locator, 8)[0]
            if record_at > file_size - _ZIP64_END_SIZE:
                return None
            handle.seek(record_at)
            record64 = handle.read(_ZIP64_END_SIZE)
            if len(record64) == _ZIP64_END_SIZE and record64[:4] == _ZIP64_END_SIG:
                zip64_at = record_at
                record_size, = struct.unpack_from("<Q", record64, 4)
                this_disk, directory_disk, on_disk, total, size, offset = struct.unpack_from("<IIQQQQ", record64, 16)
                if (record_size < _ZIP64_END_SIZE - 12 or _U32.unpack_from(locator, 16)[0] != 1
                        or max(total, on_disk, size) > 0xFFFFFFFF):
                    return None
    if total != on_disk or ((this_disk | directory_disk) != 0 and (this_disk, directory_disk) != (1, 1)):
        return None
    if size < total * _ZIP_CENTRAL_SIZE or offset + size > file_size:
        return None
    if total and not _miniz_records_valid(handle, file_size, offset, size, total, this_disk):
        return None
    return offset, size, total, position, zip64_at


def _miniz_records_valid(handle: BinaryIO, file_size: int, offset: int, size: int, total: int,
                         this_disk: int) -> bool:
    """miniz's checks of each directory record; zipfile skips most of them (it ignores a record overrunning the
    directory, a disk number, a size that cannot be), so it may read archives that the core cannot open."""
    handle.seek(offset)
    if handle.read(4) != _ZIP_CENTRAL_SIG:
        return False
    # Only now is the file surely meant as a zip archive: refuse what we would not read, not what miniz would.
    if total > MAX_ZIP_ENTRIES:
        raise _Refused(f"zip archive of {total} entries (more than {MAX_ZIP_ENTRIES} is not plausible)")
    if size > MAX_ZIP_DIRECTORY_BYTES:
        raise _Refused(f"zip central directory of {size} bytes (more than {MAX_ZIP_DIRECTORY_BYTES} is not "
                       "plausible)")
    handle.seek(offset)
    records = handle.read(size)
    if len(records) != size:
        return False
    p, left, zip64_seen = 0, size, False
    for _ in range(total):
        if left < _ZIP_CENTRAL_SIZE or records[p:p + 4] != _ZIP_CENTRAL_SIG:
            return False
        flags, method_and_time = struct.unpack_from("<HI", records, p + 8)
        packed, unpacked, name_length, extra_length, comment_length, disk = \
            struct.unpack_from("<IIHHHH", records, p + 20)
        local_offset = _U32.unpack_from(records, p + 42)[0]
        if not zip64_seen and extra_length and max(packed, unpacked, local_offset) == 0xFFFFFFFF:
            if _ZIP_CENTRAL_SIZE + name_length + extra_length > left:
                return False  # miniz reads it elsewhere, but the record overruns the directory: refused below
            extra = records[p + _ZIP_CENTRAL_SIZE + name_length:p + _ZIP_CENTRAL_SIZE + name_length + extra_length]
            while extra:
                if len(extra) < 4:
                    return False
                field_id, field_size = struct.unpack_from("<HH", extra)
                if field_size + 4 > len(extra):
                    return False
                if field_id == 1:  # zip64 sizes: miniz stops checking extras for the rest of the archive
                    zip64_seen = True
                    break
                extra = extra[4 + field_size:]
        # miniz reads the method with the modification time as one 32-bit word (its quirk).
        if packed != 0xFFFFFFFF and unpacked != 0xFFFFFFFF and \
                ((method_and_time == 0 and unpacked != packed) or (unpacked and not packed)):
            return False
        if disk == 0xFFFF or disk not in (this_disk, 1):
            return False
        if packed != 0xFFFFFFFF and local_offset + _ZIP_LOCAL_SIZE + packed > file_size:
            return False
        if flags & 0x2000:  # masked local headers
            return False
        record_size = _ZIP_CENTRAL_SIZE + name_length + extra_length + comment_length
        if record_size > left:
            return False
        p += record_size
        left -= record_size
    return True


def _core_entry_name(info: zipfile.ZipInfo) -> bytes:
    """The name the core compares: the raw bytes, cut at a NUL (as zipfile does), backslashes made slashes."""
    raw = info.filename.encode("utf-8" if info.flag_bits & 0x800 else "cp437")
    return raw.replace(b"\\", b"/")


def _read_zip(handle: BinaryIO, path: str, file_size: int, directory: tuple) -> FileHeader:
    offset, size, total, end_at, zip64_at = directory
    if zip64_at >= 0 and zip64_at != end_at - _ZIP64_LOCATOR_SIZE - _ZIP64_END_SIZE:
        raise _Refused("zip64 end record is not where Python's zipfile looks for it")
    handle.seek(0)
    try:
        archive = zipfile.ZipFile(handle)
    except zipfile.BadZipFile as exc:
        raise _Refused(f"zip archive the core would open but Python's zipfile cannot ({exc})") from None
    with archive:
        infos = archive.infolist()
        # zipfile shifts every offset when data precedes the archive; miniz does not. Both must read the same bytes.
        if archive.start_dir != offset or len(infos) != total:
            raise _Refused("zip directory is read differently by the core's miniz and by Python's zipfile "
                           "(data before the archive?)")
        names = [_core_entry_name(info) for info in infos]
        first_index: dict[bytes, int] = {}
        for index, name in enumerate(names):
            first_index.setdefault(name, index)  # the core takes the first entry of a name
        pickles = [index for index, name in enumerate(names) if b"data.pkl" in name]
        if not pickles:
            raise _Refused("zip archive has no data.pkl (not a torch.save file)")
        budget = _Budget()
        result = FileHeader(path, "torch-zip", file_size)
        lookups = 0
        checked_entries: set[int] = set()
        for index in pickles:
            name = names[index]
            folder = name[:name.index(b"data.pkl")]
            data = _read_member_capped(archive, infos[index])
            tensors, storage_nbytes = _simulate_state_dict(data, budget)
            for tensor_name, tensor in tensors:
                entry_name = folder + b"data/" + tensor.storage.key
                entry = first_index.get(entry_name)
                lookups += entry + 1 if entry is not None else len(infos)
                if lookups > MAX_ZIP_LOOKUPS:
                    raise _Refused(f"the core would scan the zip directory more than {MAX_ZIP_LOOKUPS} times to find "
                                   "the storages (far too many tensors and entries)")
                shown = entry_name.decode("utf-8", "replace")
                if entry is None:
                    raise _Refused(f"storage entry {shown!r} was not found")
                info = infos[entry]
                declared = storage_nbytes[tensor.storage.key]
                if info.file_size < declared:
                    raise _Refused(f"storage entry {shown!r} has {info.file_size} bytes, the pickle says {declared}")
                if entry not in checked_entries:
                    _check_storage_entry(handle, file_size, info, shown)
                    checked_entries.add(entry)
                tensor_info = _tensor_info(tensor_name, tensor, declared)
                result.tensors.pop(tensor_info.name, None)  # a later tensor of the same name replaces it
                result.tensors[tensor_info.name] = tensor_info
    return result


def _read_member_capped(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    """A data.pkl member, read only up to the pickle cap whatever its declared or real size (no zip bomb)."""
    shown = info.filename
    if info.is_dir() or info.external_attr & 0x10:
        raise _Refused(f"{shown!r} is a directory")
    _check_readable_by_miniz(info, shown)
    if info.file_size == 0:
        raise _Refused(f"{shown!r} is empty")
    if info.file_size > MAX_PICKLE_BYTES:
        raise _Refused(f"{shown!r} is {info.file_size} bytes (more than {MAX_PICKLE_BYTES} is not plausible)")
    with archive.open(info) as member:
        data = member.read(MAX_PICKLE_BYTES + 1)
    if len(data) > MAX_PICKLE_BYTES:
        raise _Refused(f"{shown!r} holds more than {MAX_PICKLE_BYTES} bytes")
    if len(data) != info.file_size:
        raise _Refused(f"{shown!r} holds {len(data)} bytes, its directory entry says {info.file_size}")
    return data


def _check_readable_by_miniz(info: zipfile.ZipInfo, shown: str) -> None:
    if info.flag_bits & 0x1:
        raise _Refused(f"{shown!r} is encrypted")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise _Refused(f"{shown!r} uses compression method {info.compress_type} (the core reads stored or "
                       "deflated entries)")


def _check_storage_entry(handle: BinaryIO, file_size: int, info: zipfile.ZipInfo, shown: str) -> None:
    """The core reads a whole storage entry into a buffer of its declared size: that size must be real."""
    _check_readable_by_miniz(info, shown)
    if info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size:
        # miniz lets this pass (unless the entry's time is 0) and the core's loader then crashes reading it
        raise _Refused(f"storage entry {shown!r} is stored with {info.compress_size} bytes but declares "
                       f"{info.file_size}")
    if info.compress_type == zipfile.ZIP_DEFLATED and info.file_size > MAX_DEFLATE_RATIO * max(info.compress_size, 1):
        raise _Refused(f"storage entry {shown!r} declares {info.file_size} bytes from {info.compress_size} "
                       "compressed (deflate cannot expand that much)")
    handle.seek(info.header_offset)
    local = handle.read(_ZIP_LOCAL_SIZE)
    if len(local) != _ZIP_LOCAL_SIZE or local[:4] != _ZIP_LOCAL_SIG:
        raise _Refused(f"storage entry {shown!r} has no local header (truncated file?)")
    name_length, extra_length = struct.unpack_from("<HH", local, 26)
    data_end = info.header_offset + _ZIP_LOCAL_SIZE + name_length + extra_length + info.compress_size
    if data_end > file_size:
        raise _Refused(f"storage entry {shown!r} ends at byte {data_end} of a {file_size}-byte file (truncated?)")


# --------------------------------------------------------------------------- the legacy format


class _NeedMore(Exception):
    """Internal: the scan needs bytes past those read so far."""


def _find_newline(data: bytes, p: int, end: int) -> int:
    """model_io::find_char(p, (int)(end - p), '\\n'): the length is cast to int, so past 2 GiB it goes negative
    (found nothing) or wraps; -1 when not found."""
    window = (end - p) % 2**32
    if window >= 2**31:
        window -= 2**32
    if window <= 0:
        return -1
    found = data.find(b"\n", p, min(p + window, len(data)))
    if found >= 0:
        return found - p
    if p + window > len(data):
        raise _NeedMore
    return -1


_SKIP_FIXED = {0x80: 1, 0x4B: 1, 0x68: 1, 0x71: 1, 0x43: 1, 0x82: 1, 0x4D: 2, 0x83: 2, 0x4A: 4, 0x6A: 4, 0x72: 4,
               0x84: 4, 0x47: 8, 0x95: 8}  # SHORT_BINBYTES (C) skips only its length byte: the core's quirk
_SKIP_LINE = frozenset(b"ILFSVP")
_SKIP_TWO_LINES = frozenset(b"ci")
_SKIP_U32_LENGTH = frozenset((0x8B, 0x42, 0x54, 0x58))
_SKIP_U64_LENGTH = frozenset((0x8D, 0x8E, 0x96))
_SKIP_U8_LENGTH = frozenset((0x8A, 0x55, 0x8C))
_SKIP_NO_ARGUMENT = frozenset(b"}](t)lQRuseab1oN02") | frozenset(range(0x85, 0x8A)) | frozenset(range(0x8F, 0x95)) | \
    frozenset((0x97, 0x98))


def _skip_pickle(data: bytes, start: int, end: int) -> int | None:
    """pickle_io.cpp ``skip_pickle_object`` from ``start`` with the file ending at ``end``: the object's size,
    or None where the core fails. Raises _NeedMore past the bytes read."""
    p = start
    have = len(data)
    while p < end:
        if p >= have:
            raise _NeedMore
        opcode = data[p]
        p += 1
        if opcode == 0x2E:  # STOP
            return p - start
        if opcode in _SKIP_FIXED:
            p += _SKIP_FIXED[opcode]
        elif opcode in _SKIP_LINE or opcode in _SKIP_TWO_LINES:
            for _ in range(2 if opcode in _SKIP_TWO_LINES else 1):
                length = _find_newline(data, p, end)
                if length < 0:
                    return None
                p += length + 1
        elif opcode in _SKIP_U32_LENGTH:
            if p + 4 > end:
                return None
            if p + 4 > have:
                raise _NeedMore
            p += 4 + _U32.unpack_from(data, p)[0]
        elif opcode in _SKIP_U64_LENGTH:
            if p + 8 > end:
                return None
            if p + 8 > have:
                raise _NeedMore
            length = _U64.unpack_from(data, p)[0]
            p += 8
            if length > end - p:
                return None
            p += length
        elif opcode in _SKIP_U8_LENGTH:
            if p >= end:
                return None
            if p >= have:
                raise _NeedMore
            p += 1 + data[p]
        elif opcode not in _SKIP_NO_ARGUMENT:
            return None
        if p > end:
            return None
    return None


def _is_legacy_magic(obj: bytes) -> bool:
    """pickle_object_is_torch_magic_number."""
    return (len(obj) >= 5 and obj[0] == 0x80 and obj[2] == 0x8A and obj[3] == len(LEGACY_MAGIC)
            and 4 + len(LEGACY_MAGIC) < len(obj) and obj[4:4 + len(LEGACY_MAGIC)] == LEGACY_MAGIC
            and obj[4 + len(LEGACY_MAGIC)] == 0x2E)


def _legacy_uint32(obj: bytes) -> int | None:
    """parse_pickle_uint32_object: one BININT1/BININT2/BININT then STOP."""
    if len(obj) < 4 or obj[0] != 0x80:
        return None
    widths = {0x4B: (1, "<B"), 0x4D: (2, "<H"), 0x4A: (4, "<I")}
    if obj[2] not in widths:
        return None
    width, fmt = widths[obj[2]]
    if 3 + width >= len(obj):
        return None
    value = struct.unpack_from(fmt, obj, 3)[0]
    return value if obj[3 + width] == 0x2E else None


class _FileStart:
    """The first bytes of a file, read on demand (doubling) up to a cap."""

    def __init__(self, handle: BinaryIO, file_size: int):
        self.handle, self.file_size = handle, file_size
        self.data = b""

    def skip(self, start: int) -> int | None:
        while True:
            try:
                return _skip_pickle(self.data, start, self.file_size)
            except _NeedMore:
                limit = min(self.file_size, MAX_LEGACY_PICKLES_BYTES)
                if len(self.data) >= limit:
                    raise _Refused(f"legacy torch file whose pickles run past {MAX_LEGACY_PICKLES_BYTES} bytes "
                                   "(not plausible)") from None
                want = min(max(2 * len(self.data), 1 << 16), limit)
                self.handle.seek(len(self.data))
                more = self.handle.read(want - len(self.data))
                if not more:
                    raise _Refused("legacy torch file shrank while being read") from None
                self.data += more


def _read_legacy(handle: BinaryIO, path: str, file_size: int) -> FileHeader:
    """torch_legacy_io.cpp ``read_torch_legacy_file``: magic number, protocol version, sys info, state dict,
    storage keys, then the raw storages sorted by key, each after an 8-byte header. Without the magic number the
    core reads the file as one state-dict pickle followed by the keys."""
    head = _FileStart(handle, file_size)
    first = head.skip(0)
    if first is not None and _is_legacy_magic(head.data[:first]):
        offset = first
        second = head.skip(offset)
        if second is None:
            raise _Refused("legacy torch file whose protocol-version pickle is malformed or truncated")
        version = _legacy_uint32(head.data[offset:offset + second])
        if version != LEGACY_PROTOCOL_VERSION:
            raise _Refused(f"legacy torch file with protocol version {version} (the core reads "
                           f"{LEGACY_PROTOCOL_VERSION})")
        offset += second
        third = head.skip(offset)
        if third is None:
            raise _Refused("legacy torch file whose sys-info pickle is malformed or truncated")
        offset += third
        size = head.skip(offset)
        if size is None:
            raise _Refused("legacy torch file whose state-dict pickle is malformed or truncated")
    else:
        offset, size = 0, first
        if size is None:
            raise _Refused("pickle file that is malformed or truncated, or has opcodes the core does not read")
    if size > MAX_PICKLE_BYTES:
        raise _Refused(f"state-dict pickle of {size} bytes (more than {MAX_PICKLE_BYTES} is not plausible)")
    tensors, storage_nbytes = _simulate_state_dict(head.data[offset:offset + size], _Budget())
    keys_size = head.skip(offset + size)
    if keys_size is None:
        raise _Refused("legacy torch file without a readable storage-key list after its state dict (truncated?)")
    # Storages follow in key order (bytes), each behind an 8-byte element count; all of them must be in the file.
    position = offset + size + keys_size
    for key in sorted(storage_nbytes):
        position += LEGACY_STORAGE_HEADER + storage_nbytes[key]
        if position > file_size:
            raise _Refused(f"storage {key.decode('utf-8', 'replace')!r} ends at byte {position} of a "
                           f"{file_size}-byte file (truncated?)")
    result = FileHeader(path, "torch-legacy", file_size)
    for name, tensor in tensors:
        info = _tensor_info(name, tensor, storage_nbytes[tensor.storage.key])
        result.tensors.pop(info.name, None)  # a later tensor of the same name replaces it, as in the core's map
        result.tensors[info.name] = info
    return result
