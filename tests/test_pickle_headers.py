"""`_pickle_headers.read_torch_header`: the tensors the core's own pickle reader finds in PyTorch files, and the
files it must refuse (5-D tensors its loader aborts on, pickle bombs, truncated or inconsistent archives).

Pickles are written opcode by opcode here (the layout ``torch.save`` writes: protocol 2, OrderedDict, REDUCE of
``torch._utils._rebuild_tensor_v2`` over BINPERSID storages), archives with zipfile; torch is not needed.
"""

from __future__ import annotations

import collections
import io
import pickle
import pickletools
import random
import struct
import subprocess
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest

from sdcpp_py import _pickle_headers
from sdcpp_py._formats import MalformedFileError, read_header, write_safetensors
from sdcpp_py._pickle_headers import read_torch_header

ITEMSIZE = {"FloatStorage": 4, "HalfStorage": 2, "BFloat16Storage": 2, "LongStorage": 8, "DoubleStorage": 8,
            "IntStorage": 4, "ByteStorage": 1}

# --------------------------------------------------------------------------- builders


def op_str(text: str) -> bytes:
    raw = text.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def op_int(value: int) -> bytes:
    if 0 <= value < 256:
        return b"K" + bytes([value])
    if 0 <= value < 65536:
        return b"M" + struct.pack("<H", value)
    if -2**31 <= value < 2**31:
        return b"J" + struct.pack("<i", value)
    return b"\x8a\x08" + struct.pack("<q", value)  # LONG1


def op_tuple(values) -> bytes:
    """As pickle writes tuples: EMPTY_TUPLE, TUPLE1-3, else MARK ... TUPLE."""
    body = b"".join(op_int(v) for v in values)
    if not values:
        return b")"
    if len(values) <= 3:
        return body + bytes([0x84 + len(values)])
    return b"(" + body + b"t"


def contiguous_strides(shape) -> tuple:
    strides, step = [], 1
    for dim in reversed(shape):
        strides.append(step)
        step *= dim
    return tuple(reversed(strides))


def tensor_expr(storage: str, key: str, numel: int, shape, offset: int = 0, stride=None, *, legacy: bool = False,
                first: bool = True) -> bytes:
    """A tensor as torch writes it: _rebuild_tensor_v2 (memoized once, then fetched) over a BINPERSID storage."""
    stride = contiguous_strides(shape) if stride is None else stride
    rebuild = b"ctorch._utils\n_rebuild_tensor_v2\nq\x02" if first else b"h\x02"
    pid = (b"(" + op_str("storage") + f"ctorch\n{storage}\n".encode() + op_str(key) + op_str("cpu")
           + op_int(numel) + (b"N" if legacy else b"") + b"t")
    return (rebuild + b"(" + pid + b"Q" + op_int(offset) + op_tuple(shape) + op_tuple(stride) + b"\x89"
            + b"ccollections\nOrderedDict\n)R" + b"tR")


def tensor_ops(name: str, *args, **kwargs) -> bytes:
    """One ``name: tensor`` pair of a state dict."""
    return op_str(name) + tensor_expr(*args, **kwargs)


def state_dict_pickle(tensors, *, legacy: bool = False, prefix: bytes = b"") -> bytes:
    """An OrderedDict of tensors: each item (name, storage class, key, numel, shape[, offset[, stride]])."""
    body = b"".join(tensor_ops(*item[:5], *item[5:], legacy=legacy, first=index == 0)
                    for index, item in enumerate(tensors))
    return b"\x80\x02" + prefix + b"ccollections\nOrderedDict\nq\x00)Rq\x01(" + body + b"u."


def storage_bytes(tensors) -> dict:
    """key -> (numel, zero bytes) for the storages the tensors name (the largest numel per key)."""
    result = {}
    for _, storage, key, numel, *_ in tensors:
        if numel >= result.get(key, (0, b""))[0]:
            result[key] = (numel, bytes(numel * ITEMSIZE[storage]))
    return result


def write_zip(path: Path, pkl: bytes, storages: dict, *, folder: str = "archive", compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression) as archive:
        archive.writestr(f"{folder}/data.pkl", pkl)
        for key, (_, data) in storages.items():
            archive.writestr(f"{folder}/data/{key}", data)
        archive.writestr(f"{folder}/version", "3\n")
    return path


def legacy_file_bytes(pkl: bytes, storages: dict, *, magic: bool = True) -> bytes:
    """The legacy layout: magic, protocol 1001, sys info, state dict, sorted storage keys, raw storages."""
    head = b""
    if magic:
        head = (pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2) + pickle.dumps(1001, protocol=2)
                + pickle.dumps({"protocol_version": 1001, "little_endian": True,
                                "type_sizes": {"short": 2, "int": 4, "long": 4}}, protocol=2))
    keys = sorted(storages)
    out = head + pkl + pickle.dumps(keys, protocol=2)
    for key in keys:
        numel, data = storages[key]
        out += struct.pack("<q", numel) + data
    return out


def patch_central_record(data: bytes, name: str, field: int, value: int) -> bytes:
    """The archive with a 32-bit field of ``name``'s central directory record replaced (24: uncompressed size)."""
    data, raw = bytearray(data), name.encode()
    record = data.find(b"PK\x01\x02")
    while data[record + 46:record + 46 + len(raw)] != raw:
        record = data.find(b"PK\x01\x02", record + 4)
    struct.pack_into("<I", data, record + field, value)
    return bytes(data)


def write_legacy(path: Path, tensors, **kwargs) -> Path:
    path.write_bytes(legacy_file_bytes(state_dict_pickle(tensors, legacy=True), storage_bytes(tensors), **kwargs))
    return path


def write_torch_zip(path: Path, tensors, **kwargs) -> Path:
    return write_zip(path, state_dict_pickle(tensors), storage_bytes(tensors), **kwargs)


def as_zip64(data: bytes) -> bytes:
    """The archive with zip64 end records, as torch's miniz writes them, and the classic record saturated so that
    only the zip64 one holds the directory."""
    end = data.rindex(b"PK\x05\x06")
    entries, size, offset = struct.unpack_from("<HII", data, end + 10)
    record = struct.pack("<4sQHHIIQQQQ", b"PK\x06\x06", 44, 45, 45, 0, 0, entries, entries, size, offset)
    locator = struct.pack("<4sIQI", b"PK\x06\x07", 0, end, 1)
    classic = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    return data[:end] + record + locator + classic


# name, storage class, key, numel, shape[, offset]: ranks 1-4, six dtypes, two tensors tied to one storage.
TENSORS = [
    ("model.conv.weight", "FloatStorage", "0", 120, (2, 3, 4, 5)),
    ("model.conv.bias", "HalfStorage", "1", 5, (5,)),
    ("model.embed.weight", "BFloat16Storage", "2", 12, (3, 4)),
    ("model.position_ids", "LongStorage", "3", 7, (1, 7)),
    ("model.scale", "DoubleStorage", "4", 8, (2, 2, 2)),
    ("model.ids", "IntStorage", "5", 8, (8,)),
    ("model.ids_tied", "IntStorage", "5", 8, (2, 4)),
]
EXPECTED = {
    "model.conv.weight": ("F32", (2, 3, 4, 5), 480),
    "model.conv.bias": ("F16", (5,), 10),
    "model.embed.weight": ("BF16", (3, 4), 24),
    "model.position_ids": ("I64", (1, 7), 56),
    "model.scale": ("F64", (2, 2, 2), 64),
    "model.ids": ("I32", (8,), 32),
    "model.ids_tied": ("I32", (2, 4), 32),
}
# Two views into parts of one storage: fine in the legacy format, refused in the zip one (see below).
VIEWS = [("model.ids.low", "IntStorage", "6", 8, (2,), 0), ("model.ids.high", "IntStorage", "6", 8, (6,), 2)]


def described(header) -> dict:
    return {name: (t.dtype, t.shape, t.nbytes) for name, t in header.tensors.items()}


def refused(path, *fragments: str) -> str:
    with pytest.raises(MalformedFileError) as caught:
        read_torch_header(str(path))
    for fragment in fragments:
        assert fragment in caught.value.reason, caught.value.reason
    return caught.value.reason


# --------------------------------------------------------------------------- valid files


def test_zip_format_tensors(tmp_path):
    header = read_torch_header(str(write_torch_zip(tmp_path / "model.ckpt", TENSORS)))
    assert header.format == "torch-zip"
    assert header.file_size == (tmp_path / "model.ckpt").stat().st_size
    assert described(header) == EXPECTED
    assert list(header.tensors) == [item[0] for item in TENSORS]  # the pickle's order
    assert all(t.offset == -1 for t in header.tensors.values())


def test_zip64_end_records(tmp_path):
    path = tmp_path / "zip64.ckpt"
    path.write_bytes(as_zip64(write_torch_zip(tmp_path / "plain.ckpt", TENSORS).read_bytes()))
    assert described(read_torch_header(str(path))) == EXPECTED


def test_pickles_written_by_the_pickle_module(tmp_path, monkeypatch):
    """What Python's pickler writes for a torch-like checkpoint (stand-in torch classes): BINPUT on everything,
    LONG_BINPUT past 255, SETITEMS in batches of 1000, a nested state dict."""
    torch = types.ModuleType("torch")
    torch_utils = types.ModuleType("torch._utils")
    for name in ("FloatStorage", "HalfStorage"):
        setattr(torch, name, type(name, (), {"__module__": "torch"}))

    def _rebuild_tensor_v2(*args):
        raise AssertionError("never called")

    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
    torch_utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    torch._utils = torch_utils
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", torch_utils)

    class Storage:
        def __init__(self, kind, key, numel):
            self.kind, self.key, self.numel = kind, key, numel

    class Tensor:
        def __init__(self, storage, shape, offset=0):
            self.storage, self.shape, self.offset = storage, shape, offset

        def __reduce_ex__(self, protocol):
            return (_rebuild_tensor_v2, (self.storage, self.offset, self.shape, contiguous_strides(self.shape),
                                         False, collections.OrderedDict()))

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", obj.kind, obj.key, "cpu", obj.numel) if isinstance(obj, Storage) else None

    state, storages, expected = collections.OrderedDict(), {}, {}
    for index in range(1500):
        shape = (8, 4, 3, 3) if index % 3 == 0 else (16,)
        kind, itemsize = (torch.FloatStorage, 4) if index % 2 else (torch.HalfStorage, 2)
        numel = 288 if index % 3 == 0 else 16
        state[f"model.block{index}.weight"] = Tensor(Storage(kind, str(index), numel), shape)
        storages[str(index)] = (numel, bytes(numel * itemsize))
        expected[f"model.block{index}.weight"] = ("F32" if index % 2 else "F16", shape, numel * itemsize)
    shared = Storage(torch.FloatStorage, "shared", 10)  # tied weights: one storage pickled twice
    state["tied.a"], state["tied.b"] = Tensor(shared, (10,)), Tensor(shared, (2, 5))
    storages["shared"] = (10, bytes(40))
    expected.update({"tied.a": ("F32", (10,), 40), "tied.b": ("F32", (2, 5), 40)})
    buffer = io.BytesIO()
    Pickler(buffer, protocol=2).dump({"epoch": 6, "global_step": 470000, "state_dict": state})
    used = {opcode.name for opcode, _, _ in pickletools.genops(buffer.getvalue())}
    assert {"LONG_BINPUT", "BINGET", "SETITEMS", "BINPERSID", "REDUCE"} <= used
    header = read_torch_header(str(write_zip(tmp_path / "pickled.ckpt", buffer.getvalue(), storages)))
    assert described(header) == expected


def test_legacy_format_tensors(tmp_path):
    header = read_torch_header(str(write_legacy(tmp_path / "model.pt", TENSORS + VIEWS)))
    assert header.format == "torch-legacy"
    assert described(header) == {**EXPECTED, "model.ids.low": ("I32", (2,), 8), "model.ids.high": ("I32", (6,), 24)}


def test_zip_views_of_larger_storages_load_and_convert(tmp_path):
    # Tensors that are views of one storage (torch.chunk, slicing): model.cpp's zip loader read such a tensor
    # into a vector it then resized under the pointer it had read into (patch 0023): converting this file to
    # f16 corrupted the heap (SIGABRT). Run in a child: without the patch the process dies.
    code = """
import sys, numpy as np
from pathlib import Path
import sdcpp_py
from sdcpp_py import _formats
out, values = Path(sys.argv[1]), np.arange(64, dtype=np.float32) / 8
raw = (out / "views.gguf")
sdcpp_py.convert(out / "views.ckpt", raw, weight_type="f16")
header, data = _formats.read_header(str(raw)), raw.read_bytes()
for name, start, count in (("first_stage_model.a.weight", 0, 16), ("first_stage_model.b.weight", 16, 32)):
    got = np.frombuffer(data, np.float16, count, header.tensors[name].offset).astype(np.float32)
    assert np.array_equal(got, values[start:start + count]), name
print("ok")
"""
    values = np.arange(64, dtype=np.float32) / 8
    entries = [("first_stage_model.a.weight", "FloatStorage", "0", 64, (2, 8), 0),
               ("first_stage_model.b.weight", "FloatStorage", "0", 64, (4, 8), 16)]
    path = write_zip(tmp_path / "views.ckpt", state_dict_pickle(entries), {"0": (64, values.tobytes())})
    assert {name: t.shape for name, t in read_torch_header(str(path)).tensors.items()} == {
        "first_stage_model.a.weight": (2, 8), "first_stage_model.b.weight": (4, 8)}
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


def test_legacy_without_magic_number(tmp_path):
    # The core's second legacy path: the file is the state-dict pickle, the key list and the storages.
    header = read_torch_header(str(write_legacy(tmp_path / "bare.pt", TENSORS, magic=False)))
    assert header.format == "torch-legacy"
    assert described(header) == EXPECTED


def test_zip_with_another_folder_and_deflate(tmp_path):
    path = write_torch_zip(tmp_path / "m.pt", TENSORS[:3], folder="my_model", compression=zipfile.ZIP_DEFLATED)
    assert set(read_torch_header(str(path)).tensors) == {item[0] for item in TENSORS[:3]}


def test_nested_dicts_keep_inner_keys(tmp_path):
    # {"state_dict": OrderedDict(...), "epoch": 3}: the core recurses into dict values and keeps the inner key.
    inner = state_dict_pickle(TENSORS[:2])[2:-1]  # the OrderedDict on the stack, without PROTO and STOP
    pkl = b"\x80\x02}q\x10(" + op_str("epoch") + op_int(3) + op_str("state_dict") + inner + b"u."
    header = read_torch_header(str(write_zip(tmp_path / "nested.ckpt", pkl, storage_bytes(TENSORS[:2]))))
    assert set(header.tensors) == {"model.conv.weight", "model.conv.bias"}


def test_scalar_and_duplicate_names(tmp_path):
    tensors = [("step", "LongStorage", "0", 1, ()), ("w", "FloatStorage", "1", 4, (4,)),
               ("w", "HalfStorage", "2", 2, (2,))]
    header = read_torch_header(str(write_torch_zip(tmp_path / "dup.ckpt", tensors)))
    assert described(header) == {"step": ("I64", (), 8), "w": ("F16", (2,), 4)}  # the later "w" wins, as in the core


def test_parameters_and_other_objects_are_not_tensors(tmp_path):
    # _rebuild_parameter(tensor, ...) is another REDUCE: the core keeps None for it, so only "b" is a tensor.
    parameter = (op_str("a") + b"ctorch._utils\n_rebuild_parameter\n(" + tensor_expr("FloatStorage", "0", 2, (2,))
                 + b"\x88ccollections\nOrderedDict\n)RtR")
    body = parameter + tensor_ops("b", "FloatStorage", "1", 3, (3,), first=False)
    pkl = b"\x80\x02ccollections\nOrderedDict\nq\x00)Rq\x01(" + body + b"u."
    path = write_zip(tmp_path / "p.ckpt", pkl, {"0": (2, bytes(8)), "1": (3, bytes(12))})
    assert set(read_torch_header(str(path)).tensors) == {"b"}


def test_other_formats_give_none(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    png = tmp_path / "image.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    safetensors = write_safetensors(tmp_path / "w.safetensors", {"w": np.zeros(4, np.float32)})
    for path in (text, png, empty, safetensors):
        assert read_torch_header(str(path)) is None


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_five_dimensional_tensor_refused(tmp_path, layout):
    tensors = TENSORS[:2] + [("model.video.weight", "FloatStorage", "9", 32, (2, 2, 2, 2, 2))]
    path = (write_torch_zip if layout == "zip" else write_legacy)(tmp_path / "five.pt", tensors)
    refused(path, "'model.video.weight'", "[2, 2, 2, 2, 2]", "safetensors")


def test_six_dimensions_refused(tmp_path):
    path = write_torch_zip(tmp_path / "six.pt", [("x", "FloatStorage", "0", 64, (2,) * 6)])
    refused(path, "(2, 2, 2, 2, 2, 2)")


@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_dup_tuple_doubling_bomb_refused_fast(tmp_path, layout):
    bomb = b"\x80\x02N" + b"2\x86" * 40 + b"."  # 84 bytes; the core would build a tree of 2**41 values
    assert len(bomb) < 100
    if layout == "zip":
        path = write_zip(tmp_path / "bomb.ckpt", bomb, {})
    else:
        path = tmp_path / "bomb.pt"
        path.write_bytes(bomb + pickle.dumps([], protocol=2))
    refused(path, "pickle bomb")


def test_memo_copy_bomb_refused(tmp_path, monkeypatch):
    # A memoized list fetched again and again: small live state, but the core deep-copies it on every get.
    monkeypatch.setattr(_pickle_headers, "MAX_COPIED_NODES", 100_000)
    pkl = b"\x80\x02](" + b"N" * 1000 + b"eq\x00" + b"h\x000" * 200 + b"."
    refused(write_zip(tmp_path / "copies.ckpt", pkl, {}), "copy more than 100000")


def test_deep_nesting_refused(tmp_path):
    pkl = b"\x80\x02N" + b"\x85" * 1000 + b"."  # 1000 nested 1-tuples: the core recurses on each copy
    refused(write_zip(tmp_path / "deep.ckpt", pkl, {}), "nested more than")


def test_opcode_cap(tmp_path, monkeypatch):
    padded = state_dict_pickle(TENSORS[:2], prefix=b"N0" * 1000)
    path = write_zip(tmp_path / "long.ckpt", padded, storage_bytes(TENSORS[:2]))
    assert read_torch_header(str(path)) is not None
    monkeypatch.setattr(_pickle_headers, "MAX_OPCODES", 1000)
    refused(path, "more than 1000 opcodes")


def test_data_pkl_zip_bomb_capped(tmp_path, monkeypatch):
    monkeypatch.setattr(_pickle_headers, "MAX_PICKLE_BYTES", 1 << 20)
    pkl = state_dict_pickle(TENSORS[:1])
    path = write_zip(tmp_path / "big.ckpt", pkl[:-1] + b"N0" * (2 << 20) + b".", storage_bytes(TENSORS[:1]),
                     compression=zipfile.ZIP_DEFLATED)
    assert path.stat().st_size < 100_000
    refused(path, "data.pkl", "not plausible")


def test_storage_offset_past_storage(tmp_path):
    tensors = [("w", "FloatStorage", "0", 8, (4,), 6)]  # elements 6..9 of an 8-element storage
    for path in (write_torch_zip(tmp_path / "off.ckpt", tensors), write_legacy(tmp_path / "off.pt", tensors)):
        refused(path, "'w'", "ends at byte 40", "which has 32")


def test_stored_storage_entry_declaring_more_than_it_holds(tmp_path):
    # miniz opens it (it checks stored sizes only for entries dated 0:00:00); the core's loader then crashed.
    data = patch_central_record(write_torch_zip(tmp_path / "lie.ckpt", TENSORS).read_bytes(), "archive/data/3",
                                24, 56 * 3)
    (tmp_path / "lie.ckpt").write_bytes(data)
    refused(tmp_path / "lie.ckpt", "'archive/data/3' is stored with 56 bytes but declares 168")


def test_zip_storage_entry_shorter_than_pickle_says(tmp_path):
    pkl = state_dict_pickle([("w", "FloatStorage", "0", 8, (8,))])
    refused(write_zip(tmp_path / "short.ckpt", pkl, {"0": (8, bytes(16))}), "'archive/data/0' has 16 bytes")


def test_zip_storage_entry_missing(tmp_path):
    pkl = state_dict_pickle([("w", "FloatStorage", "7", 8, (8,))])
    refused(write_zip(tmp_path / "missing.ckpt", pkl, {}), "'archive/data/7' was not found")


def test_zip_without_data_pkl(tmp_path):
    path = tmp_path / "plain.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data/0", bytes(16))
    refused(path, "no data.pkl")


def test_deflated_storage_declaring_impossible_size(tmp_path):
    path = write_torch_zip(tmp_path / "inflate.ckpt", TENSORS[:1], compression=zipfile.ZIP_DEFLATED)
    path.write_bytes(patch_central_record(path.read_bytes(), "archive/data/0", 24, 4_000_000_000))
    refused(path, "deflate cannot expand that much")


def test_truncated_files(tmp_path):
    whole_zip = write_torch_zip(tmp_path / "whole.ckpt", TENSORS).read_bytes()
    whole_legacy = write_legacy(tmp_path / "whole.pt", TENSORS).read_bytes()
    cuts = {"zip_half.ckpt": whole_zip[:len(whole_zip) // 2],
            "legacy_storages.pt": whole_legacy[:-10],  # the last storage loses its end
            "legacy_pickle.pt": whole_legacy[:200]}  # cut inside the state dict
    for name, data in cuts.items():
        (tmp_path / name).write_bytes(data)
        refused(tmp_path / name)


def test_garbage_refused(tmp_path):
    noise = random.Random(7).randbytes(4096)
    for name, data in {"pickle.pt": b"\x80\x02" + noise, "zip.ckpt": b"PK\x03\x04" + noise}.items():
        (tmp_path / name).write_bytes(data)
        refused(tmp_path / name)


@pytest.mark.parametrize("storage, shape, stride, fragment", [
    ("ByteStorage", (4,), None, "torch.ByteStorage"),
    ("FloatStorage", (2, 3), (1, 2), "not contiguously"),
    ("FloatStorage", (-1, -1), (-1, 1), "negative dimension"),  # the core accepts it: one element
    ("FloatStorage", (2**32, 2**32), None, "overflows int64"),  # the core's element count wraps to 0
])
def test_bad_tensors_refused(tmp_path, storage, shape, stride, fragment):
    pkl = state_dict_pickle([("t", storage, "0", 8, shape, 0, stride)])
    refused(write_zip(tmp_path / "bad.ckpt", pkl, {"0": (8, bytes(64))}), fragment)


def test_legacy_wrong_protocol_version(tmp_path):
    data = write_legacy(tmp_path / "v.pt", TENSORS[:1]).read_bytes()
    version = pickle.dumps(1001, protocol=2)
    (tmp_path / "v.pt").write_bytes(data.replace(version, pickle.dumps(1002, protocol=2), 1))
    refused(tmp_path / "v.pt", "protocol version 1002")


def test_whole_pickled_object_refused(tmp_path):
    path = tmp_path / "obj.pt"
    path.write_bytes(pickle.dumps({"a": [1, 2, 3], "b": "text"}, protocol=2) + pickle.dumps([], protocol=2))
    refused(path, "no state dict")


def test_mutations_raise_only_malformed_file_error(tmp_path):
    rng = random.Random(1)
    originals = [write_torch_zip(tmp_path / "m.ckpt", TENSORS).read_bytes(),
                 write_legacy(tmp_path / "m.pt", TENSORS).read_bytes()]
    target = tmp_path / "mutant"
    for round_ in range(300):
        data = bytearray(originals[round_ % 2])
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        if rng.random() < 0.3:
            data = data[:rng.randrange(len(data))]
        target.write_bytes(bytes(data))
        try:
            read_torch_header(str(target))
        except MalformedFileError:
            pass


# --------------------------------------------------------------------------- the core agrees


def _core_convert(source: Path, target: Path) -> subprocess.CompletedProcess:
    code = "import sys, sdcpp_py; sdcpp_py.convert(sys.argv[1], sys.argv[2])"
    # The sdcpp_py these tests import (the installed one in CI, src/ with PYTHONPATH in a source checkout).
    return subprocess.run([sys.executable, "-c", code, str(source), str(target)], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("layout", ["zip", "zip64", "legacy"])
def test_core_reads_the_same_tensors(tmp_path, layout):
    """The core's converter (its own torch reader) writes the tensors it read to GGUF: same names and shapes."""
    source = (write_legacy if layout == "legacy" else write_torch_zip)(tmp_path / "model.pt", TENSORS)
    if layout == "zip64":
        source.write_bytes(as_zip64(source.read_bytes()))
    done = _core_convert(source, tmp_path / "model.gguf")
    assert done.returncode == 0, done.stderr[-2000:]
    core = read_header(str(tmp_path / "model.gguf"))
    ours = read_torch_header(str(source))
    # GGUF keeps ggml order (fastest dimension first) and drops trailing 1s: compare as ggml's 4 dims.
    padded = lambda ne: tuple(ne) + (1,) * (4 - len(ne))  # noqa: E731
    assert {name: padded(t.shape) for name, t in core.tensors.items()} == \
        {name: padded(t.shape[::-1]) for name, t in ours.tensors.items()}


# --------------------------------------------------------------------------- through Context and inspect


def _as_torch_zip(source: Path, target: Path) -> Path:
    """A safetensors file's tensors as a torch.save zip (one storage each)."""
    from sdcpp_py.testing.extras import read_tensors

    arrays = read_tensors(source)
    storage = {np.dtype(np.float32): "FloatStorage", np.dtype(np.float16): "HalfStorage"}
    entries = [(name, storage[array.dtype], str(index), array.size, array.shape)
               for index, (name, array) in enumerate(arrays.items())]
    return write_zip(target, state_dict_pickle(entries),
                     {str(index): (array.size, np.ascontiguousarray(array).tobytes())
                      for index, array in enumerate(arrays.values())})


def test_a_vae_as_a_pytorch_file_loads_and_gives_the_same_pixels(flux_parts, tmp_path):
    import sdcpp_py

    vae = _as_torch_zip(flux_parts["vae"], tmp_path / "vae.pt")
    info = sdcpp_py.inspect(vae)
    assert (info.format, info.role, info.architecture) == ("torch-zip", "vae", "Flux/SD3 VAE")
    call = dict(width=64, height=64, steps=1, seed=6)
    with sdcpp_py.Context(**{**flux_parts, "vae": vae}, n_threads=2) as ctx:
        from_pickle = ctx.txt2img("a cube", **call)[0]
    with sdcpp_py.Context(**flux_parts, n_threads=2) as ctx:
        from_safetensors = ctx.txt2img("a cube", **call)[0]
    np.testing.assert_array_equal(from_pickle, from_safetensors)


def test_pytorch_files_the_core_would_crash_on_are_refused_by_context(flux_parts, tmp_path):
    # Before: a 5-D tensor aborted the process (SIGABRT), the 84-byte bomb grew memory until the OOM killer came,
    # and a file in no format was read whole into memory by the core's legacy reader, then listed as missing
    # tensors.
    import sdcpp_py

    five = write_torch_zip(tmp_path / "five.pt", [("decoder.conv_in.weight", "FloatStorage", "0", 32, (2,) * 5)])
    bomb = write_zip(tmp_path / "bomb.ckpt", b"\x80\x02N" + b"2\x86" * 40 + b".", {})
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"\x00" * 4096)
    for path, message in ((five, "[2, 2, 2, 2, 2]"), (bomb, "pickle bomb"),
                          (garbage, "not GGUF, safetensors or a PyTorch file")):
        with pytest.raises(ValueError, match=r"^vae: .*" + message.replace("[", r"\[").replace("]", r"\]")):
            sdcpp_py.Context(**{**flux_parts, "vae": path})


def test_convert_refuses_a_pytorch_file_with_a_scalar(flux_parts, tmp_path):
    # The core's converter failed a check on a loader thread on it: the process aborted (SIGABRT).
    import sdcpp_py

    path = write_torch_zip(tmp_path / "ema.ckpt", [("model_ema.decay", "FloatStorage", "0", 1, ()),
                                                   ("first_stage_model.w", "FloatStorage", "1", 4, (2, 2))])
    with pytest.raises(ValueError, match="^src: tensor 'model_ema.decay' of this PyTorch file has no dimensions"):
        sdcpp_py.convert(path, tmp_path / "out.gguf")
