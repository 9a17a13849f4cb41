#!/usr/bin/env python
"""Structure-aware fuzzing of sdcpp_py's model loaders, LoRA files, generation keywords and calls across threads
(issue 17).

    python tools/fuzz.py components --mutants 20000 --seed 1 --jobs 2 --timeout 20 --out fuzz-out
    python tools/fuzz.py calls --sequences 200 --seed 1 --jobs 1 --timeout 60 --out fuzz-out
    python tools/fuzz.py loras --cases 2000 --seed 1 --jobs 2 --timeout 60 --out fuzz-out
    python tools/fuzz.py params --cases 2000 --seed 1 --jobs 2 --timeout 90 --out fuzz-out
    python tools/fuzz.py replay fuzz-out/crashes/crash-components-s1-i123.json [--repeat 20] [--gdb]

``components``: mutants of small valid component files made by ``sdcpp_py.testing`` (the tiny Flux DiT as
safetensors and as Q8_0 GGUF, its VAE, CLIP-L), one file at a time, each read by ``sdcpp_py.inspect()`` and
loaded by ``sdcpp_py.Context()``; when that loads, one tiny generation (some bad files load and crash only
then). Mutations know the formats: the safetensors JSON header (dtypes, shapes, offsets, keys, nesting,
metadata, the length field, whitespace, encodings) and the GGUF header (version, counts, key strings,
metadata value types, tensor dims, ggml type ids, offsets, alignment), many of them kept self-consistent so
that they get past the header checks to the core; plus truncation, byte flips and file-name extensions.

``loras``: generated LoRA files (safetensors, some GGUF) for the tiny Flux parts (DiT, CLIP-L, VAE; the DiT
also as Q8_0) and, in some cases, the synthetic SD1 checkpoint (its UNet's convolutions; f16 or q8_0): 1-6
layers each, in the spellings trainers write (kohya, diffusers, LyCORIS) and the kinds the core applies (LoRA,
LoCon with a middle kernel, LoHa, LoKr, raw differences), with 0-3 mutations (a dimension off, swapped, dropped
or 0, another layer's shape, a huge rank, integer dtypes, NaN/inf/huge values, odd alphas and scales, missing
or renamed tensors), applied in 1-3 calls with multipliers from 0 to 1000 and NaN, at run time or merged. A
refused call must leave the context usable: a plain call follows it ("broken" if that fails).

``params``: random keywords of ``Context.generate`` / ``txt2img`` / ``img2img`` / ``inpaint`` / ``edit``, drawn from
the option tables (``sdcpp_py._params``): mostly values the package should take, at their edges too (one step,
huge finite floats, images in every layout it accepts, hires, caches, LoRAs, callbacks that raise or cancel),
with one bad keyword in some calls, and now and then a Context option (weight type, rng, prediction, flags), on
the tiny Flux and Flux.2 parts, 1-3 calls a case. An accepted call must return batch_count (H, W, 3) uint8
images at the size asked for (rounded up to the model's multiple; else "wrong"), a refused call must leave the
context usable ("broken" otherwise); accepted calls whose image is one colour are listed.

``calls``: random sequences across 2-4 threads on one or two tiny Flux contexts (and an ESRGAN upscaler):
generations whose progress/preview callbacks call back into the package (cancel, close, another
generation, Canny, dropping a context, raising), cancel/close/drop from other threads, interpreter exit
with generations running.

A long-lived server process per job imports sdcpp_py once and forks a child per mutant or sequence (a fresh
interpreter per mutant would cost more than most mutants); it kills a child past --timeout. Outcomes: ok,
refused (a Python exception), crash (the child died: signal or exit status), hang (timed out). Crashes and
hangs are saved under --out/crashes with what replays them; the exit status is 1 when there is any.
``replay --gdb`` runs one under gdb and prints the stack of the thread that took the signal.
"""

from __future__ import annotations

import argparse
import collections
import copy
import json
import math
import os
import random
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

M32, M64 = 2**32 - 1, 2**64 - 1
OUTCOMES = ("ok", "refused", "crash", "hang")
# what a campaign reports as found: also "broken" (loras, params: a refused call left the context refusing plain
# calls) and "wrong" (params: an accepted call returned images of another count, size or layout than asked for)
BAD_OUTCOMES = ("crash", "hang", "fuzzer_error", "broken", "wrong")

# --------------------------------------------------------------------------- seeds


def default_seed_dir() -> Path:
    # The test suite's cache (tests/conftest.py): the same synthetic files, made once.
    base = os.environ.get("SDCPP_PY_SYNTHETIC_DIR")
    return (Path(base) if base else Path.home() / ".cache" / "sdcpp-py" / "synthetic") / "flux"


def make_seed_files(seed_dir: Path) -> Dict[str, Path]:
    """The valid files every mutant starts from (cached by sdcpp_py.testing)."""
    from sdcpp_py.testing import extras, flux1

    parts = flux1.flux_components(seed_dir)
    gguf = flux1.flux_components(seed_dir, diffusion_format="gguf", diffusion_type="Q8_0")["diffusion_model"]
    esrgan = extras.esrgan_upscaler(seed_dir / "fuzz-esrgan-x2.safetensors", scale=2, blocks=1)
    return {**{k: Path(v) for k, v in parts.items()}, "diffusion_model.gguf": Path(gguf), "esrgan": Path(esrgan)}


@dataclass
class Data:
    """A data section: its length and its non-zero stretches (the synthetic files are sparse)."""

    length: int
    extents: List[Tuple[int, bytes]]

    def read(self, begin: int, end: int) -> bytes:
        out = bytearray(max(0, end - begin))
        for offset, chunk in self.extents:
            lo, hi = max(begin, offset), min(end, offset + len(chunk))
            if lo < hi:
                out[lo - begin:hi - begin] = chunk[lo - offset:hi - offset]
        return bytes(out)


def read_extents(path: Path, start: int) -> Data:
    """The file from `start` on, without reading its holes (CLIP-L is 76 MB apparent, 8 MB on disk)."""
    size = path.stat().st_size
    extents = []
    with open(path, "rb") as handle:
        fd, pos = handle.fileno(), start
        while pos < size:
            try:
                data_at = os.lseek(fd, pos, os.SEEK_DATA)
                hole_at = os.lseek(fd, data_at, os.SEEK_HOLE)
            except OSError:  # no SEEK_DATA here (or only holes left)
                if pos == start and not extents:
                    data_at, hole_at = pos, size
                else:
                    break
            handle.seek(data_at)
            extents.append((data_at - start, handle.read(hole_at - data_at)))
            pos = hole_at
    return Data(size - start, extents)


# --------------------------------------------------------------------------- safetensors model


class Obj(list):
    """A JSON object as its (key, value) pairs: keeps order and allows duplicate keys."""

    def get(self, key, default=None):
        for k, v in self:
            if k == key:
                return v
        return default

    def set(self, key, value) -> None:
        for i, (k, _) in enumerate(self):
            if k == key:
                self[i] = (k, value)
                return
        self.append((key, value))

    def drop(self, key) -> None:
        self[:] = [(k, v) for k, v in self if k != key]


class Raw:
    """JSON text put into a header as is (NaN, 1e400, deep nesting, invalid tokens)."""

    def __init__(self, text: bytes):
        self.text = text

    def __deepcopy__(self, memo):
        return self


def to_json(value) -> bytes:
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, Obj):
        return b"{" + b",".join(json_key(k) + b":" + to_json(v) for k, v in value) + b"}"
    if isinstance(value, list):
        return b"[" + b",".join(to_json(v) for v in value) + b"]"
    return json.dumps(value).encode()


def json_key(key) -> bytes:
    return b'"' + key + b'"' if isinstance(key, bytes) else json.dumps(key).encode()


@dataclass
class StModel:
    top: Obj
    data: Data
    prefix: bytes = b""  # before the JSON, inside the header (whitespace, a BOM)
    suffix: bytes = b""  # after the JSON, inside the header
    pad: bytes = b" "  # the spec pads the header to 8 bytes with spaces
    length: Optional[int] = None  # header length field, when not the real one
    encoding: Optional[str] = None  # the header text re-encoded (utf-16, ...)

    def entries(self) -> List[Tuple[object, Obj]]:
        return [(k, v) for k, v in self.top if k != "__metadata__" and isinstance(v, Obj)]

    def head(self) -> bytes:
        text = to_json(self.top)
        if self.encoding:
            # Another mutation may have put bytes that are not UTF-8 in the JSON: those become U+FFFD.
            text = text.decode("utf-8", "replace").encode(self.encoding, "surrogatepass")
        text = self.prefix + text + self.suffix
        if self.pad:
            text += self.pad[:1] * (-len(text) % 8)
        size = len(text) if self.length is None else self.length
        return struct.pack("<Q", size & M64) + text


def parse_safetensors(path: Path) -> StModel:
    with open(path, "rb") as handle:
        size = struct.unpack("<Q", handle.read(8))[0]
        top = json.loads(handle.read(size), object_pairs_hook=Obj)
    return StModel(top, read_extents(path, 8 + size))


# --------------------------------------------------------------------------- GGUF model

GGUF_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
GGUF_TYPE_NAMES = {0: "UINT8", 1: "INT8", 2: "UINT16", 3: "INT16", 4: "UINT32", 5: "INT32", 6: "FLOAT32", 7: "BOOL",
                   8: "STRING", 9: "ARRAY", 10: "UINT64", 11: "INT64", 12: "FLOAT64"}


def gguf_str(raw: bytes, length: Optional[int] = None) -> bytes:
    return struct.pack("<Q", (len(raw) if length is None else length) & M64) + raw


def gguf_value_end(raw: bytes, pos: int, kind: int) -> int:
    if kind in GGUF_SCALAR:
        return pos + struct.calcsize(GGUF_SCALAR[kind])
    if kind == 8:
        return pos + 8 + struct.unpack_from("<Q", raw, pos)[0]
    if kind == 9:
        item, count = struct.unpack_from("<IQ", raw, pos)
        pos += 12
        for _ in range(count):
            pos = gguf_value_end(raw, pos, item)
        return pos
    raise ValueError(f"GGUF value type {kind}")


@dataclass
class GgufKV:
    key: bytes
    type: int
    value: bytes  # encoded, without the type
    key_len: Optional[int] = None  # length field, when not the real one


@dataclass
class GgufTensor:
    name: bytes
    dims: List[int]
    type: int
    offset: int
    blob: bytes
    name_len: Optional[int] = None
    n_dims: Optional[int] = None  # count field, when not len(dims)


@dataclass
class GgufModel:
    kvs: List[GgufKV]
    tensors: List[GgufTensor]
    data: Data  # the original data section, for keep_offsets
    version: int = 3
    n_tensors: Optional[int] = None
    n_kv: Optional[int] = None
    keep_offsets: bool = False  # write the tensors' offsets as they are; else lay the blobs out contiguously
    gaps: Dict[int, int] = field(default_factory=dict)  # tensor index -> bytes of gap before it

    def alignment(self) -> int:
        """What the writer lays data out by: a declared integer alignment when it is a sane power of two."""
        for kv in self.kvs:
            if (kv.key == b"general.alignment" and kv.type in GGUF_SCALAR and kv.type not in (6, 12)
                    and len(kv.value) >= struct.calcsize(GGUF_SCALAR[kv.type])):
                value = struct.unpack_from(GGUF_SCALAR[kv.type], kv.value)[0]
                if 0 < value <= 4096 and not value & (value - 1):
                    return int(value)
        return 32

    def build(self) -> Tuple[bytes, Data]:
        align = self.alignment()
        data = self.data
        if not self.keep_offsets:
            offset, extents = 0, []
            for i, t in enumerate(self.tensors):
                offset += self.gaps.get(i, 0)
                t.offset = offset
                extents.append((offset, t.blob))
                offset += -(-len(t.blob) // align) * align
            data = Data(offset, extents)
        head = b"GGUF" + struct.pack("<IQQ", self.version & M32,
                                     (len(self.tensors) if self.n_tensors is None else self.n_tensors) & M64,
                                     (len(self.kvs) if self.n_kv is None else self.n_kv) & M64)
        for kv in self.kvs:
            head += gguf_str(kv.key, kv.key_len) + struct.pack("<I", kv.type & M32) + kv.value
        for t in self.tensors:
            n_dims = len(t.dims) if t.n_dims is None else t.n_dims
            head += (gguf_str(t.name, t.name_len) + struct.pack("<I", n_dims & M32)
                     + b"".join(struct.pack("<Q", d & M64) for d in t.dims)
                     + struct.pack("<IQ", t.type & M32, t.offset & M64))
        return head + b"\0" * (-len(head) % align), data


def ggml_nbytes(type_id: int, dims: List[int]) -> Optional[int]:
    from sdcpp_py import _core

    layout = _core.GGML_TYPE_LAYOUTS.get(type_id)
    if layout is None or not dims or any(d <= 0 for d in dims):
        return None
    return math.prod(dims) // layout[0] * layout[1]


def parse_gguf(path: Path) -> GgufModel:
    raw = path.read_bytes()
    version, n_tensors, n_kv = struct.unpack_from("<IQQ", raw, 4)
    pos, kvs = 24, []
    for _ in range(n_kv):
        (key_len,) = struct.unpack_from("<Q", raw, pos)
        key = raw[pos + 8:pos + 8 + key_len]
        (kind,) = struct.unpack_from("<I", raw, pos + 8 + key_len)
        start = pos + 12 + key_len
        pos = gguf_value_end(raw, start, kind)
        kvs.append(GgufKV(key, kind, raw[start:pos]))
    infos = []
    for _ in range(n_tensors):
        (name_len,) = struct.unpack_from("<Q", raw, pos)
        name = raw[pos + 8:pos + 8 + name_len]
        pos += 8 + name_len
        (n_dims,) = struct.unpack_from("<I", raw, pos)
        dims = list(struct.unpack_from(f"<{n_dims}Q", raw, pos + 4))
        pos += 4 + 8 * n_dims
        type_id, offset = struct.unpack_from("<IQ", raw, pos)
        pos += 12
        infos.append((name, dims, type_id, offset))
    model = GgufModel(kvs, [], Data(0, []), version)
    start = -(-pos // model.alignment()) * model.alignment()
    model.data = Data(len(raw) - start, [(0, raw[start:])])
    for name, dims, type_id, offset in infos:
        nbytes = ggml_nbytes(type_id, dims) or 0
        model.tensors.append(GgufTensor(name, dims, type_id, offset, raw[start + offset:start + offset + nbytes]))
    return model


def gguf_encode(rng: random.Random, kind: int, ints=(32, 64, 1, 0, 3, 7, 2**32 + 32, -32)) -> bytes:
    """A value of GGUF type `kind` (arrays: random items, sometimes arrays of arrays or a lying count)."""
    if kind in GGUF_SCALAR:
        fmt = GGUF_SCALAR[kind]
        if fmt in ("<f", "<d"):
            return struct.pack(fmt, rng.choice([32.0, float("nan"), float("inf"), -1.0, 1e30]))
        if fmt == "<?":
            return struct.pack("<B", rng.choice([0, 1, 2, 255]))
        return struct.pack(fmt.upper(), rng.choice(ints) % (1 << (struct.calcsize(fmt) * 8)))  # two's complement
    if kind == 8:
        return gguf_str(rng.choice([b"32", b"", b"flux", b"\xff\xfe", b"x" * 5000]))
    if kind == 9:
        item = rng.choice(list(GGUF_SCALAR) + [8, 8, 9, 13])
        count = rng.choice([0, 1, 2, 3, 16])
        items = b"".join(gguf_encode(rng, item, ints) for _ in range(count)) if item != 13 else b""
        if rng.random() < 0.2:
            count = rng.choice([count + 1, 2**32, 2**40, 2**63, M64])  # a count the bytes do not back
        return struct.pack("<IQ", item, count & M64) + items
    return rng.randbytes(rng.choice([0, 1, 4, 8]))  # an invalid type: whatever bytes follow


# --------------------------------------------------------------------------- mutations

ST_DTYPES = ["F16", "BF16", "F32", "F64", "F8_E4M3", "F8_E5M2", "F8_E4M3FNUZ", "F8_E5M2FNUZ", "F8_E8M0", "F6_E2M3",
             "F6_E3M2", "F4", "I8", "I16", "I32", "I64", "U8", "U16", "U32", "U64", "BOOL", "C64"]
ST_ITEMSIZE = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E4M3FNUZ": 1,
               "F8_E5M2FNUZ": 1, "F8_E8M0": 1, "I8": 1, "I16": 2, "I32": 4, "I64": 8, "U8": 1, "U16": 2, "U32": 4,
               "U64": 8, "BOOL": 1, "C64": 8}
JUNK_DTYPES = ["", "f16", "Q8_0", "F16 ", "F16\x00", "F" * 5000, 16, None, True, ["F16"], {"dtype": "F16"}, 1.5]
INTERESTING_INTS = [0, 1, -1, 2, 3, 7, 8, 31, 32, 33, 64, 127, 128, 255, 256, 4096, 65535, 65536, 2**31 - 1, 2**31,
                    2**32 - 1, 2**32, 2**53, 2**62, 2**63 - 1, 2**63, 2**64 - 1, 2**64, 2**70, -2**31, -2**63]
ODD_VALUES = [1.5, 2.0, -0.0, 1e300, "4", None, True, False, [], [1], Obj()]
RAW_NUMBERS = [b"1e3", b"1.0", b"-0", b"007", b"0x10", b"NaN", b"Infinity", b"-Infinity", b"1e400", b"+1", b".5",
               b"18446744073709551616", b"-9223372036854775809", b"1E2", b"2e-1", b"0.0e0"]
# Tensors the core reads sizes or the architecture from: mutating them gets furthest.
IMPORTANT = ("txt_in", "img_in", "key_norm", "query_norm", "time_in", "vector_in", "guidance_in", "final_layer",
             "conv_in", "conv_out", "quant_conv", "token_embedding", "position_embedding", "double_blocks.0.",
             "single_blocks.0.", "norm_out", "mid.", "final_layer_norm")
# Names that switch the core's architecture detection (src/model.cpp get_sd_version), bare as in a DiT file.
ARCH_TRIGGERS = ["double_blocks.0.img_mlp.gate_proj.weight", "double_stream_modulation_img.lin.weight",
                 "img_emb.proj.0.weight", "nerf_final_layer_conv.conv.weight", "input_blocks.0.0.weight",
                 "joint_blocks.0.x_block.attn.qkv.weight", "layers.0.adaLN_sa_ln.weight", "cap_embedder.0.weight",
                 "patch_embedding.weight", "transformer_blocks.0.img_mod.1.weight",
                 "blocks.0.cross_attn.norm_k.weight", "single_blocks.47.linear1.weight",
                 "distilled_guidance_layer.in_proj.weight", "middle_block.1.norm.weight",
                 "text_model.embeddings.token_embedding.weight", "encoder.conv_in.weight", "decoder.conv1.weight"]


def pick(rng: random.Random, items: list, names: List[str]):
    """An index into items, half the time one whose name is IMPORTANT."""
    important = [i for i, n in enumerate(names) if any(s in n for s in IMPORTANT)]
    if important and rng.random() < 0.5:
        return rng.choice(important)
    return rng.randrange(len(items))


def st_tensor(rng, m: StModel) -> Tuple[str, Obj]:
    entries = m.entries()
    i = pick(rng, entries, [str(k) for k, _ in entries])
    return str(entries[i][0]), entries[i][1]


def factorize(rng: random.Random, n: int, ndims: int) -> List[int]:
    dims = []
    for _ in range(ndims - 1):
        divisors = [d for d in (1, 2, 3, 4, 8, 16, 32, 64, 128, 256, 3072, n) if d and n % d == 0]
        d = rng.choice(divisors)
        dims.append(d)
        n //= d
    return dims + [n]


def st_dtype(rng, m: StModel) -> str:
    name, t = st_tensor(rng, m)
    new = rng.choice(ST_DTYPES + ST_DTYPES + JUNK_DTYPES)
    old = t.get("dtype")
    t.set("dtype", new)
    return f"{name}: dtype {old} -> {str(new)[:20]!r}"


def st_dtype_consistent(rng, m: StModel) -> str:
    """Another dtype, the last dim scaled so that the byte size still matches the offsets."""
    name, t = st_tensor(rng, m)
    shape, old = list(t.get("shape")), t.get("dtype")
    new = rng.choice(ST_DTYPES)
    if not shape or new not in ST_ITEMSIZE:
        t.set("dtype", new)
        return f"{name}: dtype {old} -> {new} (shape kept)"
    total = shape[-1] * ST_ITEMSIZE[old]
    if total % ST_ITEMSIZE[new]:
        return f"{name}: dtype {old} -> {new} does not fit, left as is"
    shape[-1] = total // ST_ITEMSIZE[new]
    t.set("dtype", new)
    t.set("shape", shape)
    return f"{name}: dtype {old} -> {new}, shape {shape} (same bytes)"


def st_shape(rng, m: StModel) -> str:
    name, t = st_tensor(rng, m)
    shape = list(t.get("shape"))
    mode = rng.choice(["value", "value", "not_list", "empty", "extra_dims", "merge", "drop_last", "permute"])
    if mode == "value" and shape:
        i = rng.randrange(len(shape))
        shape[i] = rng.choice(INTERESTING_INTS + ODD_VALUES)
    elif mode == "not_list":
        shape = rng.choice([5, "5", None, Obj([("0", 1)]), True])
    elif mode == "empty":
        shape = []
    elif mode == "extra_dims":  # ones: same byte size; up to 8 dims
        for _ in range(rng.randint(1, 6)):
            shape.insert(rng.randint(0, len(shape)), 1)
    elif mode == "merge" and len(shape) >= 2:
        shape[:2] = [shape[0] * shape[1]]
    elif mode == "drop_last" and shape:
        shape.pop()
    elif mode == "permute":
        rng.shuffle(shape)
    t.set("shape", shape)
    return f"{name}: shape ({mode}) -> {str(shape)[:60]}"


def st_reshape(rng, m: StModel) -> str:
    """A new element count and shape with offsets to match, inside the data: passes the byte-size checks."""
    name, t = st_tensor(rng, m)
    dtype, (begin, end) = t.get("dtype"), t.get("data_offsets")
    item = ST_ITEMSIZE.get(dtype, 2)
    count = (end - begin) // item
    count = rng.choice([count, count, 1, 2, max(1, count // 2), max(1, count // 3), count * 2, count + 1,
                        max(1, (m.data.length - begin) // item)])
    shape = factorize(rng, count, rng.choice([1, 1, 2, 2, 3, 4, 5]))
    if begin + count * item > m.data.length:
        begin = 0
    if count * item > m.data.length:
        shape, count = [1], 1
    t.set("shape", shape)
    t.set("data_offsets", [begin, begin + count * item])
    return f"{name}: shape -> {shape}, data_offsets [{begin}, {begin + count * item}]"


def st_zero(rng, m: StModel) -> str:
    name, t = st_tensor(rng, m)
    begin = t.get("data_offsets")[0]
    shape = [0, rng.choice([1, 128, 2**31, 2**62, 2**63 - 1])]
    rng.shuffle(shape)
    t.set("shape", shape)
    t.set("data_offsets", [begin, begin])
    return f"{name}: shape {shape}, empty data range"


def st_offsets(rng, m: StModel) -> str:
    name, t = st_tensor(rng, m)
    begin, end = t.get("data_offsets")
    size, k = end - begin, rng.choice([1, 2, 8, 64, 4096])
    shifted = max(0, begin + rng.choice([-k, k]))  # same size, overlapping a neighbour, maybe misaligned
    mode = rng.choice(["reversed", "longer", "shift", "shift", "alias0", "past_end", "negative", "value", "length",
                       "not_list", "huge"])
    offsets = {
        "reversed": [end, begin], "longer": [begin, end + k],
        "shift": [shifted, shifted + size],
        "alias0": [0, size], "past_end": [m.data.length, m.data.length + size], "negative": [-size, 0],
        "value": [begin, rng.choice(INTERESTING_INTS + ODD_VALUES)],
        "length": rng.choice([[begin], [], [begin, end, end]]),
        "not_list": rng.choice([begin, None, "0", Obj([("0", begin)])]), "huge": [2**64 - size, 2**64],
    }[mode]
    t.set("data_offsets", offsets)
    return f"{name}: data_offsets ({mode}) -> {str(offsets)[:60]}"


def st_entry(rng, m: StModel) -> str:
    entries = m.entries()
    name, t = st_tensor(rng, m)
    mode = rng.choice(["drop_field", "extra_field", "not_object", "dup_field"])
    if mode == "drop_field":
        key = rng.choice(["dtype", "shape", "data_offsets"])
        t.drop(key)
        return f"{name}: no {key}"
    if mode == "extra_field":
        t.append((rng.choice(["extra", "", "dtype2", "\x00"]), rng.choice(INTERESTING_INTS + ODD_VALUES)))
        return f"{name}: an extra field"
    if mode == "dup_field":  # the same key twice, the second from another tensor
        other = rng.choice(entries)[1]
        key = rng.choice(["dtype", "shape", "data_offsets"])
        t.append((key, copy.deepcopy(other.get(key))))
        return f"{name}: {key} twice"
    value = rng.choice([5, "x", None, [1, 2], True])
    m.top.set(name, value)
    return f"{name}: entry is {value!r}"


def st_key(rng, m: StModel) -> str:
    entries = m.entries()
    name, t = st_tensor(rng, m)
    mode = rng.choice(["duplicate", "drop", "rename_other", "rename_junk", "rename_junk"])
    i = next(i for i, (k, v) in enumerate(m.top) if v is t)
    if mode == "duplicate":  # the same name again with another tensor's entry
        m.top.insert(rng.randint(0, len(m.top)), (m.top[i][0], copy.deepcopy(rng.choice(entries)[1])))
        return f"{name}: key twice"
    if mode == "drop":
        del m.top[i]
        return f"{name}: tensor removed"
    if mode == "rename_other":
        new = rng.choice(entries)[0]
    else:
        new = rng.choice(["", "\x00", "a" * 100_000, b"\xff\xfe\xfd", b"\\ud800", b"\xc0\x80", "__metadata__",
                          "model.diffusion_model." + name, name.upper(), name + "\x00x"])
    m.top[i] = (new, t)
    return f"{name}: renamed to {str(new)[:40]!r}"


def st_add(rng, m: StModel) -> str:
    name = rng.choice(ARCH_TRIGGERS + [str(k) for k, _ in m.entries()][:5])
    count = rng.choice([1, 4, 16, 128])
    entry = Obj([("dtype", "F32"), ("shape", [count]), ("data_offsets", [0, 4 * count])])
    m.top.insert(rng.randint(0, len(m.top)), (name, entry))
    return f"added tensor {name!r} F32 [{count}]"


def st_nesting(rng, m: StModel) -> str:
    depth = rng.choice([10, 100, 1000, 10_000, 100_000])
    nested = Raw(b"[" * depth + b"]" * depth if rng.random() < 0.5 else b'{"a":' * depth + b"1" + b"}" * depth)
    where = rng.choice(["metadata", "key", "shape"])
    if where == "metadata":
        m.top.set("__metadata__", nested)
    elif where == "key":
        m.top.append(("nested", nested))
    else:
        st_tensor(rng, m)[1].set("shape", nested)
    return f"nesting {depth} deep in {where}"


def st_metadata(rng, m: StModel) -> str:
    mode = rng.choice(["type", "type", "values", "twice", "last"])
    meta = m.top.get("__metadata__")
    if mode == "type":
        value = rng.choice([5, "s", None, [1, 2], True, "x" * 100_000, Obj([("k", Obj([("k", "v")]))])])
        m.top.set("__metadata__", value)
        return f"__metadata__ is {str(value)[:30]!r}"
    if mode == "values":
        m.top.set("__metadata__", Obj([("a", 1), ("b", [1, "x"]), ("c", None), ("d", Obj()), ("e", 1e300)]))
        return "__metadata__ with non-string values"
    if mode == "twice":
        m.top.append(("__metadata__", rng.choice([Obj(), 7, meta])))
        return "__metadata__ twice"
    m.top.drop("__metadata__")
    m.top.append(("__metadata__", meta if meta is not None else Obj()))
    return "__metadata__ last"


def st_header_len(rng, m: StModel) -> str:
    real = len(m.head()) - 8
    file_size = 8 + real + m.data.length
    m.length = rng.choice([0, 1, 2, 3, 7, 8, real - 1, real + 1, real + 8, real // 2, file_size - 8, file_size - 7,
                           file_size, file_size + 1, 2**32, 2**63, 2**64 - 1])
    return f"header length field {m.length} (real {real})"


def st_text(rng, m: StModel) -> str:
    mode = rng.choice(["prefix", "bom", "suffix", "nul_pad", "no_pad"])
    if mode == "prefix":
        m.prefix = rng.choice([b" ", b"\n", b"\t\r\n ", b" " * 4096])
    elif mode == "bom":
        m.prefix = b"\xef\xbb\xbf"
    elif mode == "suffix":
        m.suffix = rng.choice([b"}", b"x", b"\x00" * 8, b",{}", b"  {}", b"]"])
    elif mode == "nul_pad":
        m.pad = b"\x00"
    else:
        m.pad = b""
    return f"header text: {mode}"


def st_number(rng, m: StModel) -> str:
    name, t = st_tensor(rng, m)
    key = rng.choice(["shape", "data_offsets"])
    values = t.get(key)
    if not isinstance(values, list) or not values:
        return f"{name}: {key} has no number to rewrite"
    i, text = rng.randrange(len(values)), rng.choice(RAW_NUMBERS)
    values = list(values)
    values[i] = Raw(text)
    t.set(key, values)
    return f"{name}: {key}[{i}] written {text.decode()}"


def st_encoding(rng, m: StModel) -> str:
    m.encoding = rng.choice(["utf-16", "utf-16-le", "utf-32", "utf-8-sig"])
    return f"header encoded as {m.encoding}"


def st_data_nan(rng, m: StModel) -> Tuple[str, List[Tuple[int, bytes]]]:
    name, t = st_tensor(rng, m)
    begin, end = t.get("data_offsets")
    word = {"F16": rng.choice([b"\x00\x7e", b"\x00\x7c", b"\x00\xfc"]),
            "F32": rng.choice([b"\x00\x00\xc0\x7f", b"\x00\x00\x80\x7f"])}.get(t.get("dtype"), b"\xff")
    return f"{name}: data filled with {word.hex()}", [(begin, word * ((end - begin) // len(word)))]


ST_MUTATORS: Dict[str, Callable] = {
    "st.dtype": st_dtype, "st.dtype_consistent": st_dtype_consistent, "st.shape": st_shape,
    "st.reshape_consistent": st_reshape, "st.zero_dim": st_zero, "st.offsets": st_offsets, "st.entry": st_entry,
    "st.key": st_key, "st.add_tensor": st_add, "st.nesting": st_nesting, "st.metadata": st_metadata,
    "st.header_len": st_header_len, "st.text": st_text, "st.number_syntax": st_number, "st.encoding": st_encoding,
}
ST_WEIGHTS = {"st.dtype": 3, "st.dtype_consistent": 4, "st.shape": 3, "st.reshape_consistent": 6, "st.zero_dim": 2,
              "st.offsets": 4, "st.entry": 2, "st.key": 3, "st.add_tensor": 2, "st.nesting": 1, "st.metadata": 2,
              "st.header_len": 2, "st.text": 2, "st.number_syntax": 2, "st.encoding": 1}


def g_tensor(rng, m: GgufModel) -> GgufTensor:
    return m.tensors[pick(rng, m.tensors, [t.name.decode("utf-8", "replace") for t in m.tensors])]


def g_resize(t: GgufTensor) -> None:
    """Make the blob the size the type and dims need (zeros appended), when that is known and small."""
    nbytes = ggml_nbytes(t.type, t.dims)
    if nbytes is not None and nbytes <= 64 << 20:
        t.blob = (t.blob + bytes(max(0, nbytes - len(t.blob))))[:nbytes]


def g_version(rng, m: GgufModel) -> str:
    m.version = rng.choice([0, 1, 2, 4, 0xFFFF, 2**31, M32, rng.getrandbits(32)])
    return f"version {m.version}"


def g_counts(rng, m: GgufModel) -> str:
    which = rng.choice(["n_tensors", "n_kv"])
    real = len(m.tensors) if which == "n_tensors" else len(m.kvs)
    value = rng.choice([0, real - 1, real + 1, real * 2, 2**31, 2**32, 2**63, M64])
    setattr(m, which, value)
    return f"{which} {value} (real {real})"


def g_kv_key(rng, m: GgufModel) -> str:
    kv = rng.choice(m.kvs)
    mode = rng.choice(["len", "empty", "non_utf8", "long", "dup", "alignment"])
    if mode == "len":
        kv.key_len = rng.choice([len(kv.key) + 1, len(kv.key) - 1, 0, 2**31, 2**63, M64])
    else:
        kv.key = {"empty": b"", "non_utf8": b"\xff\xfe\xfd", "long": b"k" * 5000,
                  "dup": rng.choice(m.kvs).key, "alignment": b"general.alignment"}[mode]
    return f"metadata key ({mode})"


def g_kv_value(rng, m: GgufModel) -> str:
    if rng.random() < 0.5:
        kv = next((kv for kv in m.kvs if kv.key == b"general.alignment"), None)
        if kv is None:
            kv = GgufKV(b"general.alignment", 4, struct.pack("<I", 32))
            m.kvs.insert(rng.randint(0, len(m.kvs)), kv)
    else:
        kv = rng.choice(m.kvs)
    kv.type = rng.choice(list(range(13)) + [13, 255, 2**31, M32])
    kv.value = gguf_encode(rng, kv.type)
    return f"{kv.key.decode('utf-8', 'replace')[:30]}: type {GGUF_TYPE_NAMES.get(kv.type, kv.type)}"


def g_kv_add(rng, m: GgufModel) -> str:
    key = rng.choice([b"general.architecture", b"general.name", b"tokenizer.ggml.tokens", b"general.alignment",
                      b"fuzz.array", b"general.file_type"])
    kind = rng.choice([9, 9, 9, 8, 4, 10, 6, 7])
    m.kvs.insert(rng.randint(0, len(m.kvs)), GgufKV(key, kind, gguf_encode(rng, kind)))
    return f"added {key.decode()} of type {GGUF_TYPE_NAMES.get(kind, kind)}"


def g_alignment(rng, m: GgufModel) -> str:
    """general.alignment as a u32, data laid out by it when it is a power of two."""
    value = rng.choice([1, 2, 8, 16, 64, 128, 4096, 0, 48, 3, 2**31])
    m.kvs = [kv for kv in m.kvs if kv.key != b"general.alignment"]
    m.kvs.insert(rng.randint(0, len(m.kvs)), GgufKV(b"general.alignment", 4, struct.pack("<I", value)))
    return f"general.alignment UINT32 {value}"


def g_alignment_type(rng, m: GgufModel) -> str:
    """general.alignment 64 but not a u32: readers that take any integer lay the file out fine."""
    kind = rng.choice([0, 1, 2, 3, 5, 10, 11, 7, 6, 12, 8, 9])
    value = {6: struct.pack("<f", 64.0), 12: struct.pack("<d", 64.0), 7: b"\x01", 8: gguf_str(b"64"),
             9: struct.pack("<IQI", 4, 1, 64)}.get(kind)
    if value is None:
        fmt = GGUF_SCALAR[kind]
        value = struct.pack(fmt, 64)
    m.kvs = [kv for kv in m.kvs if kv.key != b"general.alignment"]
    m.kvs.insert(rng.randint(0, len(m.kvs)), GgufKV(b"general.alignment", kind, value))
    return f"general.alignment 64 as {GGUF_TYPE_NAMES[kind]}"


def g_name(rng, m: GgufModel) -> str:
    t = g_tensor(rng, m)
    mode = rng.choice(["len", "empty", "non_utf8", "long", "long", "dup"])
    old = t.name.decode("utf-8", "replace")
    if mode == "len":
        t.name_len = rng.choice([len(t.name) + 1, len(t.name) - 1, 0, 2**31, 2**63, M64])
    else:
        t.name = {"empty": b"", "non_utf8": t.name + b"\xff", "dup": rng.choice(m.tensors).name,
                  "long": b"n" * rng.choice([63, 64, 65, 200, 5000])}[mode]
    return f"{old}: name ({mode})"


def g_ndims(rng, m: GgufModel) -> str:
    t = g_tensor(rng, m)
    if rng.random() < 0.5:
        t.n_dims = rng.choice([0, 5, 8, 2**31, M32])
        return f"{t.name.decode('utf-8', 'replace')}: n_dims field {t.n_dims}, {len(t.dims)} dims written"
    t.dims = t.dims + [1] * rng.randint(1, 4)
    return f"{t.name.decode('utf-8', 'replace')}: {len(t.dims)} dims (ones added)"


def g_dims(rng, m: GgufModel) -> str:
    t = g_tensor(rng, m)
    mode = rng.choice(["value", "value", "swap", "zero"])
    if mode == "swap" and len(t.dims) >= 2:
        t.dims[0], t.dims[1] = t.dims[1], t.dims[0]
    else:
        i = rng.randrange(len(t.dims))
        t.dims[i] = 0 if mode == "zero" else rng.choice(INTERESTING_INTS) % 2**64
        g_resize(t)
    return f"{t.name.decode('utf-8', 'replace')}: dims ({mode}) -> {t.dims}"


def g_reshape(rng, m: GgufModel) -> str:
    """New dims (first a multiple of the type's block), data resized: passes the header checks."""
    from sdcpp_py import _core

    t = g_tensor(rng, m)
    block = _core.GGML_TYPE_LAYOUTS.get(t.type, (1, 1))[0]
    count = rng.choice([1, 2, 4, 128, 3072, math.prod(t.dims), math.prod(t.dims) * 2])
    dims = factorize(rng, max(block, count // block * block), rng.choice([1, 2, 2, 3, 4]))
    dims.reverse()
    if dims[0] % block:
        dims = [block * max(1, dims[0] // block)] + dims[1:]
    t.dims = dims
    g_resize(t)
    return f"{t.name.decode('utf-8', 'replace')}: dims -> {dims}"


def g_type(rng, m: GgufModel) -> str:
    from sdcpp_py import _core

    t = g_tensor(rng, m)
    old, t.type = t.type, rng.choice(list(range(42)) + [2**31, M32])
    mode = "raw"
    if rng.random() < 0.6:  # consistent: first dim a block multiple, data resized
        mode = "consistent"
        block = _core.GGML_TYPE_LAYOUTS.get(t.type, (1, 1))[0]
        if t.dims[0] % block:
            t.dims[0] = -(-t.dims[0] // block) * block
        g_resize(t)
    else:
        m.keep_offsets = True
    return f"{t.name.decode('utf-8', 'replace')}: ggml type {old} -> {t.type} ({mode})"


def g_offsets(rng, m: GgufModel) -> str:
    i = pick(rng, m.tensors, [t.name.decode("utf-8", "replace") for t in m.tensors])
    mode = rng.choice(["misaligned", "step", "overlap", "swap", "reverse", "huge", "gap", "gap"])
    if mode == "gap":  # a hole before tensor i, data laid out around it: offsets aligned and inside the file
        m.gaps[i] = m.alignment() * rng.choice([1, 2, 100])
        return f"tensor {i}: gap of {m.gaps[i]} bytes before it"
    m.build()  # fix the contiguous offsets first
    m.keep_offsets = True
    t = m.tensors[i]
    if mode == "misaligned":
        t.offset += rng.choice([1, 2, 16])
    elif mode == "step":
        t.offset += rng.choice([-1, 1]) * m.alignment()
    elif mode == "overlap":
        t.offset = m.tensors[i - 1].offset if i else m.tensors[-1].offset
    elif mode == "swap":
        j = rng.randrange(len(m.tensors))
        t.offset, m.tensors[j].offset = m.tensors[j].offset, t.offset
    elif mode == "reverse":
        offsets = [x.offset for x in m.tensors][::-1]
        for x, o in zip(m.tensors, offsets):
            x.offset = o
    else:
        t.offset = rng.choice([2**32, 2**63, M64 - 31])
    return f"tensor {i}: offset ({mode}) -> {t.offset}"


def g_drop(rng, m: GgufModel) -> str:
    t = m.tensors.pop(pick(rng, m.tensors, [t.name.decode("utf-8", "replace") for t in m.tensors]))
    return f"{t.name.decode('utf-8', 'replace')}: tensor removed"


def g_dup(rng, m: GgufModel) -> str:
    t = copy.deepcopy(g_tensor(rng, m))
    m.tensors.insert(rng.randint(0, len(m.tensors)), t)
    return f"{t.name.decode('utf-8', 'replace')}: tensor twice"


def g_add(rng, m: GgufModel) -> str:
    name = rng.choice(ARCH_TRIGGERS).encode()
    count = rng.choice([32, 128])
    m.tensors.insert(rng.randint(0, len(m.tensors)), GgufTensor(name, [count], 0, 0, bytes(4 * count)))
    return f"added tensor {name.decode()} F32 [{count}]"


def g_data_nan(rng, m: GgufModel) -> str:
    t = g_tensor(rng, m)
    word = {0: b"\x00\x00\xc0\x7f", 1: b"\x00\x7e"}.get(t.type, b"\x00\x7e" + b"\x7f" * 32)  # Q8_0: d NaN
    t.blob = (word * (len(t.blob) // len(word) + 1))[:len(t.blob)]
    return f"{t.name.decode('utf-8', 'replace')}: data filled with NaN"


GGUF_MUTATORS: Dict[str, Callable] = {
    "gguf.version": g_version, "gguf.counts": g_counts, "gguf.kv_key": g_kv_key, "gguf.kv_type": g_kv_value,
    "gguf.kv_add": g_kv_add, "gguf.alignment": g_alignment, "gguf.alignment_type": g_alignment_type,
    "gguf.name": g_name, "gguf.n_dims": g_ndims, "gguf.dims": g_dims, "gguf.reshape_consistent": g_reshape,
    "gguf.type": g_type, "gguf.offsets": g_offsets, "gguf.drop_tensor": g_drop, "gguf.dup_tensor": g_dup,
    "gguf.add_tensor": g_add, "gguf.data_nan": g_data_nan,
}
GGUF_WEIGHTS = {"gguf.version": 1, "gguf.counts": 2, "gguf.kv_key": 2, "gguf.kv_type": 4, "gguf.kv_add": 3,
                "gguf.alignment": 2, "gguf.alignment_type": 2, "gguf.name": 3, "gguf.n_dims": 2, "gguf.dims": 3,
                "gguf.reshape_consistent": 5, "gguf.type": 8, "gguf.offsets": 4, "gguf.drop_tensor": 2,
                "gguf.dup_tensor": 1, "gguf.add_tensor": 2, "gguf.data_nan": 1}

# Which file each role mutates, and how often.
ROLES = {"diffusion_model": 3, "diffusion_model.gguf": 4, "vae": 2, "clip_l": 1}


@dataclass
class Mutant:
    role: str
    ext: str
    ops: List[str]
    notes: List[str]
    head: bytes = b""
    data: Data = field(default_factory=lambda: Data(0, []))
    patches: List[Tuple[int, bytes]] = field(default_factory=list)  # (file position, bytes), written last
    size: Optional[int] = None  # truncate to

    def total(self) -> int:
        return len(self.head) + self.data.length

    def write(self, path: Path) -> None:
        with open(path, "wb") as handle:
            handle.write(self.head)
            handle.truncate(self.total())
            fd, base = handle.fileno(), len(self.head)
            for offset, chunk in self.data.extents:
                if offset < self.data.length:
                    os.pwrite(fd, chunk[:self.data.length - offset], base + offset)
            for pos, chunk in self.patches:
                os.pwrite(fd, chunk, pos)
            if self.size is not None:
                handle.truncate(self.size)


def make_mutant(rng: random.Random, seeds: Dict[str, object]) -> Mutant:
    """One mutant: 1-3 structural mutations of one seed file, sometimes a byte-level one on top."""
    role = rng.choices(list(ROLES), weights=list(ROLES.values()))[0]
    model = copy.deepcopy(seeds[role])
    is_gguf = isinstance(model, GgufModel)
    table, weights = (GGUF_MUTATORS, GGUF_WEIGHTS) if is_gguf else (ST_MUTATORS, ST_WEIGHTS)
    mutant = Mutant(role, ".gguf" if is_gguf else ".safetensors", [], [])
    data_patches: List[Tuple[int, bytes]] = []
    n_structural = rng.choices([0, 1, 2, 3], weights=[2, 12, 4, 2])[0]
    for _ in range(n_structural):
        name = "st.data_nan" if not is_gguf and rng.random() < 0.04 else \
            rng.choices(list(table), weights=[weights[k] for k in table])[0]
        mutant.ops.append(name)
        try:  # a stacked mutation may find the field it wants already mangled
            if name == "st.data_nan":
                note, patches = st_data_nan(rng, model)
                data_patches += patches
            else:
                note = table[name](rng, model)
        except (TypeError, ValueError, KeyError, IndexError, AttributeError, StopIteration) as exc:
            note = f"{name} skipped ({type(exc).__name__})"
        mutant.notes.append(note)
    if is_gguf:
        mutant.head, mutant.data = model.build()
    else:
        mutant.head, mutant.data = model.head(), model.data
    mutant.patches = [(len(mutant.head) + offset, chunk) for offset, chunk in data_patches]
    if n_structural == 0 or rng.random() < 0.2:
        byte_level_mutation(rng, mutant)
    return mutant


def byte_level_mutation(rng: random.Random, mutant: Mutant) -> None:
    mode = rng.choices(["truncate", "flip", "extension"], weights=[3, 4, 1])[0]
    total, head = mutant.total(), len(mutant.head)
    mutant.ops.append(f"bytes.{mode}")
    if mode == "truncate":
        where = rng.choice(["header", "data", "end"])
        mutant.size = {"header": rng.randrange(head), "data": rng.randrange(head, total),
                       "end": total - rng.choice([1, 2, 4, 32])}[where]
        mutant.notes.append(f"truncated at {mutant.size} of {total} ({where})")
    elif mode == "flip":
        flips = []
        for _ in range(rng.choice([1, 1, 2, 4, 8])):
            pos = rng.randrange(head) if rng.random() < 0.8 else rng.randrange(total)
            flips.append((pos, bytes([rng.choice([0, 0xFF, 0x7F, 0x80, rng.randrange(256)])])))
        mutant.patches += flips
        mutant.notes.append("bytes set: " + ", ".join(f"{p}={b.hex()}" for p, b in flips))
    else:
        # Python sniffs safetensors by name or by a '{' at byte 8: another name plus leading whitespace
        # leaves the file to the core's own reader.
        mutant.ext = rng.choice([".bin", ".ckpt", ".pt", "", ".gguf", ".safetensors"])
        if mutant.ext != ".safetensors" and mutant.head[8:9] == b"{" and rng.random() < 0.7:
            size = struct.unpack("<Q", mutant.head[:8])[0]
            mutant.head = struct.pack("<Q", size + 8) + b" " * 8 + mutant.head[8:]
            mutant.patches = [(p + 8, b) for p, b in mutant.patches]
            mutant.notes.append(f"named *{mutant.ext}, header starts with whitespace")
        else:
            mutant.notes.append(f"named *{mutant.ext}")


def load_seed_models(files: Dict[str, Path]) -> Dict[str, object]:
    return {"diffusion_model": parse_safetensors(files["diffusion_model"]),
            "diffusion_model.gguf": parse_gguf(files["diffusion_model.gguf"]),
            "vae": parse_safetensors(files["vae"]), "clip_l": parse_safetensors(files["clip_l"])}


# --------------------------------------------------------------------------- work in the forked child


class Reporter:
    """JSON lines to the server; the last event before a death tells where it happened."""

    def __init__(self, fd: int):
        self.fd, self.lock = fd, threading.Lock()

    def __call__(self, **event) -> None:
        line = (json.dumps(event, default=str) + "\n").encode()
        with self.lock:
            os.write(self.fd, line)


def describe(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:300] if lines else ''}"


def component_work(report: Reporter, mutant_path: Path, role: str, files: Dict[str, Path], gen_size: int,
                   use_mmap: bool, seed: int) -> None:
    import sdcpp_py

    parts = {k: files[k] for k in ("diffusion_model", "clip_l", "vae")}
    parts["diffusion_model" if role.startswith("diffusion_model") else role] = mutant_path
    report(event="stage", stage="inspect")
    try:
        sdcpp_py.inspect(mutant_path)
        inspected = "ok"
    except Exception as exc:
        inspected = describe(exc)
    report(event="inspect", result=inspected)
    report(event="stage", stage="context")
    try:
        with sdcpp_py.Context(**parts, n_threads=1, mmap=use_mmap) as ctx:
            report(event="stage", stage="generate")
            ctx.txt2img("a fuzzed cube", width=gen_size, height=gen_size, steps=1, cfg_scale=1.0, seed=seed)
            report(event="stage", stage="close")
    except Exception as exc:
        report(event="result", outcome="refused", error=describe(exc), exc_type=type(exc).__name__)
        return
    report(event="result", outcome="ok")


class FuzzRaise(Exception):
    """Raised by a callback on purpose: it must reach the caller of that generation."""


CALLBACK_DOES = ["nothing", "cancel_self", "cancel_other", "close_self", "close_other", "gen_other", "gen_self",
                 "canny", "drop_other", "raise", "raise", "inspect", "sleep", "upscale", "gc"]
THREAD_OPS = ["gen", "gen", "gen", "gen", "cancel", "cancel", "close", "drop", "sleep", "canny", "upscale", "reopen",
              "gc", "inspect"]


def make_plan(rng: random.Random) -> dict:
    names = ["A", "B"][:rng.choice([1, 2])]

    def callback() -> Optional[dict]:
        if rng.random() < 0.4:
            return None
        return {"do": rng.choice(CALLBACK_DOES), "at": rng.randint(0, 2), "other": rng.choice(names),
                "reraise": rng.random() < 0.3}

    def action() -> dict:
        op = rng.choice(THREAD_OPS)
        a = {"op": op, "ctx": rng.choice(names), "delay": rng.choice([0, 0, 0.01, 0.05, 0.2])}
        if op == "gen":
            a.update(size=rng.choice([32, 64]), steps=rng.randint(1, 3), progress=callback(), preview=callback(),
                     preview_mode=rng.choice(["proj", "vae"]))
        elif op == "sleep":
            a["seconds"] = rng.choice([0.01, 0.05, 0.2, 0.5])
        return a

    return {"contexts": {n: {"n_threads": rng.choice([1, 2]), "mmap": rng.random() < 0.3} for n in names},
            "upscaler": rng.random() < 0.3, "end": rng.choice(["join", "join", "join", "drop_all", "exit_early"]),
            "exit_after": rng.choice([0.0, 0.02, 0.05, 0.1, 0.2, 0.4]),
            "threads": [[action() for _ in range(rng.randint(1, 4))] for _ in range(rng.randint(2, 4))]}


class ExitForReal(BaseException):
    """Ends a calls child through the interpreter's own exit (atexit, finalization) with threads running."""


def sequence_work(report: Reporter, plan: dict, files: Dict[str, Path]) -> None:
    import numpy as np
    import sdcpp_py

    parts = {k: files[k] for k in ("diffusion_model", "clip_l", "vae")}
    holders: Dict[str, object] = {}
    expected = (sdcpp_py.SdcppError, ValueError, RuntimeError, FuzzRaise)
    unexpected: List[str] = []
    seen: List[str] = []
    lock = threading.Lock()
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)

    def new_context(name: str):
        opts = plan["contexts"][name]
        holders[name] = sdcpp_py.Context(**parts, n_threads=opts["n_threads"], mmap=opts["mmap"])

    for name in plan["contexts"]:
        new_context(name)
    upscaler = sdcpp_py.Upscaler(files["esrgan"], n_threads=1, tile_size=32) if plan["upscaler"] else None

    def record(where: str, exc: BaseException) -> None:
        text = f"{where}: {describe(exc)}"
        with lock:
            seen.append(text)
            if not isinstance(exc, expected):
                unexpected.append(text)

    def small_gen(ctx, **extra):
        return ctx.txt2img("a nested call", width=32, height=32, steps=1, cfg_scale=1.0, **extra)

    def run_callback(spec: dict, ctx) -> None:
        do, other = spec["do"], holders.get(spec["other"])
        if do == "cancel_self":
            ctx.cancel()
        elif do == "cancel_other" and other is not None:
            other.cancel()
        elif do == "close_self":
            ctx.close()
        elif do == "close_other" and other is not None:
            other.close()
        elif do == "gen_other" and other is not None:
            small_gen(other)
        elif do == "gen_self":
            small_gen(ctx)
        elif do == "canny":
            sdcpp_py.preprocess_canny(image)
        elif do == "drop_other":
            holders.pop(spec["other"], None)
            other = None
            import gc
            gc.collect()
        elif do == "raise":
            raise FuzzRaise("raised by a callback on purpose")
        elif do == "inspect":
            sdcpp_py.inspect(files["vae"])
        elif do == "sleep":
            time.sleep(0.05)
        elif do == "upscale" and upscaler is not None:
            upscaler.upscale(image[:16, :16])
        elif do == "gc":
            import gc
            gc.collect()

    def make_callback(spec: Optional[dict], ctx, where: str, fired: list):
        if spec is None:
            return None

        def callback(step, *rest):
            if fired or step < spec["at"]:
                return
            fired.append(spec["do"])
            try:
                run_callback(spec, ctx)
            except FuzzRaise:
                raise
            except BaseException as exc:
                record(f"{where} callback {spec['do']}", exc)
                if spec["reraise"]:
                    raise
        return callback

    def run_action(where: str, a: dict) -> None:
        time.sleep(a["delay"])
        op, ctx = a["op"], holders.get(a["ctx"])
        if op == "gen" and ctx is not None:
            fired_p, fired_v = [], []
            progress = make_callback(a["progress"], ctx, where + " progress", fired_p)
            preview = make_callback(a["preview"], ctx, where + " preview", fired_v)
            try:
                small_gen_args = dict(width=a["size"], height=a["size"], steps=a["steps"], cfg_scale=1.0,
                                      progress=progress, preview=preview, preview_mode=a["preview_mode"])
                ctx.txt2img("a fuzzed call", **small_gen_args)
            except BaseException as exc:
                record(where, exc)
                return
            if "raise" in fired_p + fired_v and not ctx.closed:
                # README: a progress/preview callable that raises stops the call and its exception reaches the
                # caller. (A concurrent cancel or close may win instead; those raise too.)
                with lock:
                    unexpected.append(f"{where}: a callback raised but txt2img returned images")
        elif op == "cancel" and ctx is not None:
            ctx.cancel()
        elif op == "close" and ctx is not None:
            ctx.close()
        elif op == "drop":
            holders.pop(a["ctx"], None)
        elif op == "sleep":
            time.sleep(a["seconds"])
        elif op == "canny":
            sdcpp_py.preprocess_canny(image)
        elif op == "upscale" and upscaler is not None:
            upscaler.upscale(image[:16, :16])
        elif op == "reopen" and (ctx is None or ctx.closed):
            new_context(a["ctx"])
        elif op == "gc":
            import gc
            gc.collect()
        elif op == "inspect":
            sdcpp_py.inspect(files["clip_l"])

    barrier = threading.Barrier(len(plan["threads"]))

    def worker(index: int, actions: List[dict]) -> None:
        try:
            barrier.wait(timeout=30)
        except threading.BrokenBarrierError:
            pass
        for step, a in enumerate(actions):
            where = f"t{index}.{step} {a['op']} {a['ctx']}"
            report(event="act", thread=index, step=step, what=where, state="start")
            try:
                run_action(where, a)
            except BaseException as exc:
                record(where, exc)
            report(event="act", thread=index, step=step, what=where, state="done")

    threads = [threading.Thread(target=worker, args=(i, actions), daemon=True, name=f"fuzz-{i}")
               for i, actions in enumerate(plan["threads"])]
    report(event="stage", stage="threads")
    for t in threads:
        t.start()
    if plan["end"] == "exit_early":
        time.sleep(plan["exit_after"])
        report(event="stage", stage="interpreter exit with threads running")
        report(event="result", outcome="refused" if unexpected else "ok",
               error=unexpected[0] if unexpected else None, exceptions=seen)
        raise ExitForReal()
    for t in threads:
        t.join()
    report(event="stage", stage="end " + plan["end"])
    if plan["end"] == "drop_all":
        holders.clear()
        import gc
        gc.collect()
    else:
        for ctx in list(holders.values()):
            ctx.close()
    if upscaler is not None:
        upscaler.close()
    report(event="result", outcome="refused" if unexpected else "ok", error=unexpected[0] if unexpected else None,
           exceptions=seen)


# --------------------------------------------------------------------------- LoRA files (mode "loras")

# Spellings of a LoRA's tensors for one model tensor, as trainers write them (the core converts each).
LORA_PAIRS = [(".lora_down.weight", ".lora_up.weight"), (".lora_A.weight", ".lora_B.weight"),
              (".lora.down.weight", ".lora.up.weight")]
# diffusers' names for the tiny Flux DiT's layers, some of them parts of a fused weight (qkv, linear1)
FLUX_DIFFUSERS = {
    "transformer.transformer_blocks.0.attn.to_q": (128, 128), "transformer.transformer_blocks.0.attn.to_k": (128, 128),
    "transformer.transformer_blocks.0.attn.to_v": (128, 128),
    "transformer.transformer_blocks.0.attn.add_q_proj": (128, 128),
    "transformer.transformer_blocks.0.attn.add_v_proj": (128, 128),
    "transformer.transformer_blocks.0.attn.to_out.0": (128, 128), "transformer.transformer_blocks.0.ff.net.0.proj": (512, 128),
    "transformer.single_transformer_blocks.0.attn.to_q": (128, 128),
    "transformer.single_transformer_blocks.0.attn.to_k": (128, 128),
    "transformer.single_transformer_blocks.0.attn.to_v": (128, 128),
    "transformer.single_transformer_blocks.0.proj_mlp": (512, 128),
    "transformer.single_transformer_blocks.0.proj_out": (128, 640),
}


def lora_seed_sd1(seed_dir: Path) -> Path:
    """The synthetic SD1 checkpoint beside the Flux seeds (the test suite's cache keeps both)."""
    from sdcpp_py.testing import sd

    return Path(sd.sd1_checkpoint(seed_dir.parent / "sd1"))


def safetensors_shapes(path: Path) -> Dict[str, List[int]]:
    from sdcpp_py._formats import read_header  # the package's own reader

    return {name: list(tensor.shape) for name, tensor in read_header(str(path)).tensors.items()}


def lora_targets(files: Dict[str, Path]) -> Dict[str, List[Tuple[str, Tuple[int, ...]]]]:
    """Per model ("flux": the tiny Flux parts; "sd1": the synthetic SD1 checkpoint, a full-size UNet), (a LoRA's
    base name, the layer's weight shape) for its layers, in several spellings."""
    sd1 = []
    for name, shape in safetensors_shapes(files["sd1"]).items():
        if not name.endswith(".weight") or len(shape) not in (2, 4) or "embed" in name:
            continue
        base = name[:-len(".weight")]
        if base.startswith("model.diffusion_model."):
            base = base[len("model."):]
            sd1 += [(base, tuple(shape)), ("lora_unet_" + base[len("diffusion_model."):].replace(".", "_"), tuple(shape))]
        elif base.startswith("cond_stage_model.transformer.text_model.encoder.layers.0."):
            sd1.append(("lora_te_" + base[len("cond_stage_model.transformer."):].replace(".", "_"), tuple(shape)))
        elif base.startswith("first_stage_model.decoder.") and len(shape) == 4 and "_" not in base[18:]:
            # (the core reads an SD1 LoRA's names with '_' as '.': block_1, attn_1, nin_shortcut find nothing)
            sd1.append(("vae." + base[len("first_stage_model."):], tuple(shape)))
    targets = []
    for name, shape in safetensors_shapes(files["diffusion_model"]).items():
        if name.endswith(".weight") and len(shape) == 2:
            base = name[:-len(".weight")]
            targets += [(f"diffusion_model.{base}", tuple(shape)), (f"lora_unet_{base.replace('.', '_')}", tuple(shape))]
    targets += list(FLUX_DIFFUSERS.items())
    for name, shape in safetensors_shapes(files["clip_l"]).items():
        if ".layers.0." in name and name.endswith(".weight") and len(shape) == 2:
            targets.append((f"lora_te1_{name[:-len('.weight')].replace('.', '_')}", tuple(shape)))
    for name, shape in safetensors_shapes(files["vae"]).items():
        if name.endswith(".weight") and len(shape) == 4 and "decoder" in name:
            targets.append((f"vae.{name[:-len('.weight')]}", tuple(shape)))
    return {"flux": targets, "sd1": sd1}


def lora_module(rng: random.Random, base: str, shape: Tuple[int, ...]) -> Tuple[str, Dict[str, tuple]]:
    """One layer's LoRA tensors as (dtype, shape, fill) specs, in a random kind, mostly well formed."""
    out, rest = shape[0], list(shape[1:])
    fan_in = math.prod(rest)
    rank = rng.choice([1, 2, 4, 8, 16])
    conv = len(shape) == 4
    kind = rng.choices(["lora", "lora_mid", "loha", "lokr", "diff"], weights=[8, 2 if conv else 0, 2, 2, 1])[0]
    t: Dict[str, tuple] = {}
    if kind in ("lora", "lora_mid"):
        down_name, up_name = rng.choice(LORA_PAIRS)
        if kind == "lora_mid":
            t[base + down_name] = ("f16", [rank, rest[0], 1, 1], "randn")
            t[base + ".lora_mid.weight"] = ("f16", [rank, rank, *rest[1:]], "randn")
        else:
            t[base + down_name] = ("f16", [rank, *rest], "randn")
        t[base + up_name] = ("f16", [out, rank] + ([1, 1] if conv else []), "randn")
    elif kind == "loha":
        for w in ("w1", "w2"):
            t[f"{base}.hada_{w}_a"] = ("f16", [out, rank], "randn")
            t[f"{base}.hada_{w}_b"] = ("f16", [rank, fan_in], "randn")
    elif kind == "lokr":
        a = rng.choice([d for d in (1, 2, 4, 8) if out % d == 0])
        c = rng.choice([d for d in (1, 2, 4, 8) if fan_in % d == 0])
        t[f"{base}.lokr_w1"] = ("f16", [a, c], "randn")
        if rng.random() < 0.5:
            t[f"{base}.lokr_w2"] = ("f16", [out // a, fan_in // c] if not conv else [out // a, rest[0] // c, *rest[1:]],
                                    "randn")
        else:
            t[f"{base}.lokr_w2_a"] = ("f16", [out // a, rank], "randn")
            t[f"{base}.lokr_w2_b"] = ("f16", [rank, fan_in // c], "randn")
    else:
        t[f"{base}.diff"] = ("f16", list(shape), "randn")
        if rng.random() < 0.3:
            t[f"{base}.diff_b"] = ("f16", [out], "randn")
    if kind != "diff" and rng.random() < 0.8:
        t[f"{base}.alpha"] = ("f32", [], rng.choice([1.0, float(rank), 0.5 * rank]))
    return kind, t


# tensors whose first dimension is the rank (the others' second)
RANK_FIRST = (".lora_down.weight", ".lora_A.weight", ".lora.down.weight", ".lora_mid.weight", ".hada_w1_b",
              ".hada_w2_b", ".lokr_w1_b", ".lokr_w2_b")
LAYER_SUFFIXES = tuple(sorted({suffix for pair in LORA_PAIRS for suffix in pair} | {
    ".lora_mid.weight", ".alpha", ".scale", ".diff", ".diff_b", ".hada_w1_a", ".hada_w1_b", ".hada_w2_a",
    ".hada_w2_b", ".hada_t1", ".hada_t2", ".lokr_w1", ".lokr_w1_a", ".lokr_w1_b", ".lokr_w2", ".lokr_w2_a",
    ".lokr_w2_b", ".dora_scale"}, key=len, reverse=True))


def layer_of(name: str) -> str:
    """The layer a LoRA tensor's name is for (its name less the LoRA suffix)."""
    for suffix in LAYER_SUFFIXES:
        if name.endswith(suffix):
            return name[:-len(suffix)]
    return name.rsplit(".", 1)[0]


def lora_mutation(rng: random.Random, t: Dict[str, tuple], targets) -> str:
    """One change to a LoRA's tensor specs; returns a note saying what."""
    name = rng.choice(sorted(t))
    dtype, shape, fill = t[name]
    what = rng.choice(["dim", "dim", "swap", "ndims", "zero_dim", "dtype", "alpha", "drop", "values", "rename",
                       "other_shape", "huge_rank", "extra", "scale"])
    if what == "dim" and shape:
        i = rng.randrange(len(shape))
        shape = list(shape)
        shape[i] = max(0, shape[i] + rng.choice([-1, 1, 2, shape[i]]))
        t[name] = (dtype, shape, fill)
    elif what == "swap" and len(shape) >= 2:
        t[name] = (dtype, [shape[1], shape[0], *shape[2:]], fill)
    elif what == "ndims":
        t[name] = (dtype, rng.choice([[], [math.prod(shape) if shape else 1], list(shape) + [1], [1] + list(shape),
                                      list(shape[:1])]), fill)
    elif what == "zero_dim" and shape:
        shape = list(shape)
        shape[rng.randrange(len(shape))] = 0
        t[name] = (dtype, shape, fill)
    elif what == "dtype":
        t[name] = (rng.choice(["f32", "f64", "i32", "i64"]), shape, fill)
    elif what == "alpha":
        alpha = [n for n in t if n.endswith(".alpha")] or [layer_of(name) + ".alpha"]
        name = alpha[0]
        t[name] = (rng.choice(["f32", "f16", "i64"]), rng.choice([[], [], [1], [2]]),
                   rng.choice([0.0, -4.0, 1e30, float("nan"), float("inf"), 1e-30, 3.0]))
    elif what == "drop":
        del t[name]
    elif what == "values":
        t[name] = (dtype, shape, rng.choice(["nan", "inf", "huge", "zeros"]))
    elif what == "rename":
        new = rng.choice([name.replace("0", "7", 1), name + "x", name.replace(".weight", ""),
                          rng.choice(targets)[0] + name[name.find("."):] if "." in name else name])
        del t[name]
        t[new] = (dtype, shape, fill)
        name = f"{name} -> {new}"
    elif what == "other_shape":
        other = list(rng.choice(targets)[1])
        t[name] = (dtype, rng.choice([other, other[:2], other[::-1]]), fill)
    elif what == "huge_rank" and len(shape) >= 2:
        shape = list(shape)
        axis = 0 if name.endswith(RANK_FIRST) else 1
        rest = math.prod(shape) // max(1, shape[axis])
        shape[axis] = min(rng.choice([4096, 20000]), max(1, (1 << 26) // max(1, rest)))  # <= 64M values
        t[name] = (dtype, shape, fill)
    elif what == "extra":
        base = rng.choice(targets)[0]
        t[base + rng.choice([".lora_mid.weight", ".hada_t1", ".lokr_w1_b", ".dora_scale", ".scale", ".lora_up.weight"])] \
            = ("f16", rng.choice([[4, 4, 3, 3], [4], [128, 4], [1]]), "randn")
    elif what == "scale":
        t[layer_of(name) + ".scale"] = ("f32", [], rng.choice([0.0, 1.0, float("nan"), -1e30]))
    return f"{what} {name}"


def make_lora_case(rng: random.Random, targets_of: Dict[str, list]) -> dict:
    """A LoRA case: a model, 1-2 files (each 1-6 layers of random kinds, 0-3 mutations), the context's options
    and 1-3 calls naming them with multipliers."""
    model = "sd1" if rng.random() < 0.15 else "flux"
    targets = targets_of[model]
    files, formats, notes, ops = [], [], [], []
    for _ in range(rng.choice([1, 1, 2])):
        tensors: Dict[str, tuple] = {}
        for _ in range(rng.randint(1, 6)):
            base, shape = rng.choice(targets)
            kind, module = lora_module(rng, base, shape)
            tensors.update(module)
            ops.append(f"kind.{kind}")
        for _ in range(rng.choices([0, 1, 2, 3], weights=[4, 8, 3, 1])[0]):
            note = lora_mutation(rng, tensors, targets)
            ops.append("mut." + note.split(" ", 1)[0])
            notes.append(note)
        files.append({k: list(v) for k, v in tensors.items()})
        formats.append(rng.choices(["safetensors", "gguf", "gguf-q8_0"], weights=[8, 1, 1])[0])
        ops.append(f"file.{formats[-1]}")
    multipliers = {1.0: 30, 0.5: 10, 0.0: 6, -1.0: 6, 2.0: 6, 100.0: 3, 1e3: 1, float("nan"): 1}  # mostly accepted

    def multiplier() -> float:
        return rng.choices(list(multipliers), weights=list(multipliers.values()))[0]

    calls = [[(rng.randrange(len(files)), multiplier()) for _ in range(rng.choice([0, 1, 1, 2, 3]))]
             for _ in range(rng.randint(1, 3))]
    return {"model": model, "files": files, "formats": formats, "calls": calls, "mode": rng.choice(["at_runtime", "immediately", "auto"]),
            "quantized": rng.random() < 0.3, "threads": rng.choice([1, 2]), "notes": notes, "ops": ops}


def write_lora(path: Path, specs: Dict[str, list], seed: int, file_format: str = "safetensors"):
    """A LoRA file of these tensor specs: safetensors, or GGUF (F16/F32 as given, or Q8_0 where a row allows;
    integers as F32 and a scalar as one value: what GGUF holds)."""
    import numpy as np
    from sdcpp_py import _formats

    rng = np.random.default_rng(seed)
    dtypes = {"f16": np.float16, "f32": np.float32, "f64": np.float64, "i32": np.int32, "i64": np.int64}
    arrays = {}
    for name, (dtype, shape, fill) in specs.items():
        if isinstance(fill, float):
            array = np.full(shape, fill)
        elif fill == "randn":  # float32 in place: a huge rank's matrix (up to 64M values) twice in float64 is 1 GB
            array = rng.standard_normal(shape, dtype=np.float32)
            array *= 0.05
        else:
            array = {"nan": np.full(shape, np.nan, np.float32), "inf": np.full(shape, np.inf, np.float32),
                     "huge": np.full(shape, 6e4, np.float32), "zeros": np.zeros(shape, np.float32)}[fill]
        with np.errstate(invalid="ignore", over="ignore"):
            arrays[name] = array.astype(dtypes[dtype]) if dtype.startswith("f") else \
                np.nan_to_num(array, posinf=1, neginf=-1).astype(dtypes[dtype])
    if file_format.startswith("gguf"):
        for name, array in arrays.items():
            array = array.reshape(1) if array.ndim == 0 else array
            arrays[name] = array if array.dtype in (np.float16, np.float32) else array.astype(np.float32)
        try:
            return _formats.write_gguf(path.with_suffix(".gguf"), arrays,
                                       types="Q8_0" if file_format == "gguf-q8_0" else None)
        except ValueError:  # a tensor write_gguf cannot store: the same tensors as safetensors
            pass
    return _formats.write_safetensors(path, arrays)


def lora_work(report: Reporter, case: dict, files: Dict[str, Path], work: Path, gen_size: int, seed: int) -> None:
    import sdcpp_py

    formats = case.get("formats") or ["safetensors"] * len(case["files"])
    paths = [write_lora(work / f"lora-{i}.safetensors", specs, seed + i, file_format)
             for i, (specs, file_format) in enumerate(zip(case["files"], formats))]
    if case.get("model") == "sd1":  # quantized: its f16 UNet as q8_0 at load (convolutions too, patch 0015)
        parts = {"model": files["sd1"], **({"weight_type": "q8_0"} if case["quantized"] else {})}
    else:
        parts = {k: files[k] for k in ("diffusion_model", "clip_l", "vae")}
        if case["quantized"]:
            parts["diffusion_model"] = files["diffusion_model.gguf"]
    report(event="stage", stage="context")
    refusals: List[str] = []
    with sdcpp_py.Context(**parts, n_threads=case["threads"], lora_apply_mode=case["mode"]) as ctx:
        for number, call in enumerate(case["calls"]):
            report(event="stage", stage=f"call {number}")
            try:
                loras = [sdcpp_py.Lora(paths[i], multiplier) for i, multiplier in call]
                ctx.txt2img("a fuzzed cube", width=gen_size, height=gen_size, steps=1, cfg_scale=1.0, seed=seed,
                            loras=loras)
            except Exception as exc:
                refusals.append(f"call {number}: {describe(exc)}")
                report(event="stage", stage=f"plain call after refused call {number}")
                try:  # a refused LoRA must leave the context usable
                    ctx.txt2img("a fuzzed cube", width=gen_size, height=gen_size, steps=1, cfg_scale=1.0, seed=seed)
                except Exception as after:
                    report(event="result", outcome="broken", error=f"after {refusals[-1]}: {describe(after)}")
                    return
        report(event="stage", stage="close")
    report(event="result", outcome="refused" if refusals else "ok", error=refusals[0] if refusals else None,
           exceptions=refusals)


# --------------------------------------------------------------------------- generation keywords (mode "params")

# What a value spec becomes in the child: JSON-safe specs, so that a saved case replays as it ran.
FLOAT_WORDS = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
# Valid values kept cheap where the table's range allows minutes of work (the timeout would call it a hang).
CHEAP_HIGH = {"steps": 6, "high_noise_steps": 6, "batch_count": 3, "width": 96, "height": 96, "hires.steps": 3}


def odd_value(rng: random.Random, kind: str = "other") -> object:
    """A value of a type the option does not take (or, for numbers, one no 32-bit field holds)."""
    pool = [True, [1], {"$obj": "object"}, {"$f": "nan"}]
    if kind != "text":
        pool.append({"$str": "3"})
    if kind != "float":
        pool.append(2**64)
    pool += {"int": [2.5, -2**63 - 1], "float": [{"$f": "inf"}, 1e39]}.get(kind, [])
    return rng.choice(pool)


def number_spec(rng: random.Random, name: str, kind: str, low, high, valid: bool = True) -> object:
    """An int or float option's value. Valid: mostly cheap values in its range, sometimes its edges and (floats
    without a top) huge finite ones; not valid: past the range, non-finite or of another type."""
    if kind == "int":
        lo = int(low) if low is not None else -2**31
        hi = int(high) if high is not None else 2**31 - 1
        if valid:
            cheap = min(hi, CHEAP_HIGH.get(name, hi), max(lo, 0) + 64)
            if rng.random() < 0.8:
                return rng.randint(max(lo, -8), max(max(lo, -8), cheap))
            return rng.choice([lo] + ([hi] if name not in CHEAP_HIGH else []))
        return rng.choice([lo - 1, hi + 1, odd_value(rng, "int"), odd_value(rng, "int")])
    lo = -math.inf if low is None else float(low)
    hi = math.inf if high is None else float(high)
    if valid:
        roll = rng.random()
        if roll < 0.7:
            bottom = max(lo, -2.0)
            return round(rng.uniform(bottom, max(min(hi, 12.0), bottom + 1.0) if hi > bottom + 1.0 else hi), 4)
        edges = [v for v in (lo, hi, -0.0 if lo <= 0 else lo, 1e-30, 1e-7, 100.0, 1e6, 1e30, 3.4e38, -1e30, -3.4e38)
                 if lo <= v <= hi and math.isfinite(v)]
        return rng.choice(edges)
    return rng.choice([{"$f": rng.choice(list(FLOAT_WORDS))}, odd_value(rng, "float"), 1e308, -1e308] +
                      ([lo - 1.0] if math.isfinite(lo) else []) + ([hi + 1.0] if math.isfinite(hi) else []))


def enum_spec(rng: random.Random, enum, valid: bool = True) -> object:
    members = list(enum)
    if valid:
        member = rng.choice(members)
        return rng.choice([member.name.lower(), member.name.lower(), int(member.value),
                           {"$enum": [enum.__name__, member.name]}])
    return rng.choice(["bogus", "", "EULER A", len(members), -1, 999, 2**40, 1.0, True, {"$str": "0"}])


PROMPTS = ["a fuzzed cube", "", "a cube " * 40, "(((cube:1.5))) [cat:dog:0.5] BREAK sky", "(cube:nan) (cat:1e39)",
           "<lora:missing:1>", "\u00e9\u6f22\U0001f600 cube", "((((((((((((((((((cube))))))))))))))))))",
           "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[", "(cube:)", "(cube:-1e30)", "embedding:missing cube",
           "\\(cube\\)", "a" * 20000, "cube, " * 600, "[cube|cat|dog]", "img", "cube (:1.2) ) ( ] [ :", "BREAK"]
BAD_PROMPTS = ["cube\x00nul", "\ud800", "a" * 2_000_000]


def image_spec(rng: random.Random, width: int, height: int, mask: bool = False, valid: bool = True) -> object:
    """An image argument. Valid: the output's size in any layout the package takes (numpy of 1, 3 or 4
    channels, views, read-only, PIL, a PNG path); not valid: another size, shape or dtype, bad paths, odd types."""
    if valid:
        layout = [height, width] if mask or rng.random() < 0.15 else [height, width, rng.choice([3, 3, 3, 1, 4])]
        roll = rng.random()
        if roll < 0.6:
            return {"$img": [layout, "uint8"]}
        if roll < 0.8 and len(layout) == 3:
            return {"$img": [layout, "uint8", rng.choice(["transposed", "strided", "readonly"])]}
        if roll < 0.9:
            return {"$pil": [width, height, "L" if mask else rng.choice(["RGB", "L", "RGBA", "P", "1", "CMYK"])]}
        return {"$path": ["png", width, height]}
    roll = rng.random()
    h, w = rng.choice([(height, width + 8), (1, 1), (height * 2, width), (height, 1)])
    if roll < 0.35:
        shape = rng.choice([[h, w], [height, width, 2], [height, width, 3, 1], [0, width, 3], [height, 0], [height],
                            [], [h, w, 3]])
        return {"$img": [shape, "uint8"]}
    if roll < 0.55:
        return {"$img": [[height, width] if mask else [height, width, 3],
                         rng.choice(["float32", "float64", "bool", "int64", "uint16", "int8", "float16",
                                     "complex64", "object"])]}
    if roll < 0.6:
        return {"$img": [[height, width, 3], "uint8", "nan"]}
    if roll < 0.8:
        return {"$path": rng.choice(["missing", "not_image", "dir", "empty", "bytes_png"])}
    if roll < 0.9:
        return {"$pil": [w, h, rng.choice(["RGB", "I;16", "F", "I"])]}
    return odd_value(rng)


def hires_spec(rng: random.Random, valid: bool = True) -> object:
    if not valid and rng.random() < 0.3:
        return odd_value(rng)
    bad = rng.choice(["upscaler", "scale", "width", "steps", "denoising_strength", "tile_size", "model_path"]) \
        if not valid else None
    upscaler = rng.choice(["latent", "latent_nearest", "latent_nearest_exact", "latent_antialiased", "latent_bicubic",
                           "latent_bicubic_antialiased", "lanczos", "nearest", "model"])
    fields = {"upscaler": enum_spec(rng, _enum("HiresUpscaler"), False) if bad == "upscaler" else upscaler}
    if rng.random() < 0.7:
        fields["scale"] = rng.choice([1.0, 1.25, 1.5, 2.0, 0.5, 1e-3, 3.0])
    else:
        fields["width"], fields["height"] = rng.choice([16, 48, 64, 96, 0]), rng.choice([16, 48, 64, 0])
    for name, kind, low, high in (("steps", "int", 0, 10000), ("denoising_strength", "float", 0.0, 1.0),
                                  ("tile_size", "int", 1, 16384)):
        if rng.random() < 0.4 or bad == name:
            fields[name] = number_spec(rng, "hires." + name, kind, low, high, valid=bad != name)
    if bad in ("scale", "width"):
        fields[bad] = number_spec(rng, "hires." + bad, "float" if bad == "scale" else "int", 0, 16 if bad == "scale"
                                  else MAX_SIDE_SPEC, valid=False)
    if upscaler == "model" or bad == "model_path":
        fields["model_path"] = {"$path": "esrgan" if bad != "model_path" else rng.choice(["missing", "png", "lora"])}
    return {"$hires": fields}


CACHE_FIELDS = (("reuse_threshold", "float"), ("start_percent", "float"), ("end_percent", "float"),
                ("error_decay_rate", "float"), ("use_relative_threshold", "bool"), ("reset_error_on_compute", "bool"),
                ("Fn_compute_blocks", "int"), ("Bn_compute_blocks", "int"), ("residual_diff_threshold", "float"),
                ("max_warmup_steps", "int"), ("max_cached_steps", "int"), ("max_continuous_cached_steps", "int"),
                ("taylorseer_n_derivatives", "int"), ("taylorseer_skip_interval", "int"), ("scm_mask", "text"),
                ("scm_policy_dynamic", "bool"))


def cache_spec(rng: random.Random, valid: bool = True) -> object:
    if not valid and rng.random() < 0.3:
        return odd_value(rng)
    mode = rng.choice(["easycache", "ucache", "dbcache", "taylorseer", "cache_dit", "spectrum", "disabled"])
    bad_mode = not valid and rng.random() < 0.5
    fields = {"mode": enum_spec(rng, _enum("CacheMode"), False) if bad_mode else mode}
    if not valid and not bad_mode:  # a bad field instead
        name = rng.choice(["start_percent", "end_percent", "Fn_compute_blocks", "max_warmup_steps"])
        # the package's ranges: floats only finite, ints from -1 ("no limit") to 2^31 - 1
        fields[name] = number_spec(rng, name, "float", None, None, valid=False) if name.endswith("_percent") else \
            number_spec(rng, name, "int", -1, 2**31 - 1, valid=False)
    for name, kind in rng.sample([f for f in CACHE_FIELDS if f[0] not in fields], rng.randint(0, 4)):
        if kind == "bool":
            fields[name] = rng.choice([True, False])
        elif kind == "text":
            fields[name] = {"$str": rng.choice(["", "1,0,1", "1" * 100, "x", "0,0", "-1", ",", "1e39", "1,1,1,1,0"])}
        elif name.endswith("_percent"):
            fields[name] = number_spec(rng, name, kind, 0.0, 1.0)
        else:
            fields[name] = number_spec(rng, name, kind, -1 if kind == "int" else None, 64 if kind == "int" else None)
    return {"$cache": fields}


def text_spec(rng: random.Random, valid: bool = True) -> object:
    if valid:
        return {"$str": rng.choice(PROMPTS)}
    return {"$str": rng.choice(BAD_PROMPTS)} if rng.random() < 0.6 else odd_value(rng, "text")


MAX_SIDE_SPEC = 16384


def _enum(name: str):
    from sdcpp_py import _enums

    return getattr(_enums, name)


def keyword_spec(rng: random.Random, row, size: Tuple[int, int], valid: bool = True) -> object:
    """A value for one option row of the generation table: one the package should take (valid) or refuse."""
    name, kind = row.name.replace("high_noise_", ""), row.kind
    width, height = size
    if kind in ("int", "float"):
        if name in ("width", "height") and valid and rng.random() < 0.7:
            return rng.choice([8, 16, 24, 32, 33, 40, 48, 63, 64, 65, 72, 96, 1, 2, 4, 9])
        return number_spec(rng, name, kind, row.low, row.high, valid)
    if kind == "bool":
        return rng.choice([True, False]) if valid else rng.choice([0, 1, 2, None, {"$str": "true"}])
    if kind == "enum":
        return enum_spec(rng, row.enum, valid)
    if kind == "text":
        return text_spec(rng, valid)
    if kind == "ints":
        if valid:
            return rng.choice([[rng.choice([0, 1, 2, 7, 8, 9, 1024]) for _ in range(rng.randint(0, 4))], [],
                               {"$tuple": [7, 8, 9]}, list(range(300))])
        return rng.choice([[2**40], [1.5], {"$str": "7,8"}, None, [None], [True], [-1], [1025]])
    if kind == "floats":
        if valid:
            n = rng.choice([2, 2, 3, 5])
            return rng.choice([sorted((round(rng.uniform(0, 15), 3) for _ in range(n)), reverse=True), [1.0, 0.0],
                               [0.0, 0.0], [0.0, 1.0], [1e30, 1.0, 0.0], [3.4e38, 0.0], [1.0] * 100, [1.0, 1.0, 1.0],
                               {"$tuple": [2.0, 0.0]}, None, [0.0, 0.5, 0.0, 1.0]])
        return rng.choice([[1.0], [], [{"$f": "nan"}, 0.0], [{"$f": "inf"}, 0.0], [-1.0, 0.0], [3.5e38, 0.0],
                           [{"$str": "a"}, 0.0]])
    if name in ("init_image", "control_image", "end_image"):
        return image_spec(rng, width, height, valid=valid)
    if name == "mask":
        return image_spec(rng, width, height, mask=True, valid=valid)
    if name in ("ref_images", "control_frames"):
        if not valid:  # one image where a list belongs, or a list with one image bad at any size
            return image_spec(rng, width, height) if rng.random() < 0.3 else [rng.choice([
                {"$img": [[height, width, 2], "uint8"]}, {"$img": [[height, width, 3], "float32"]},
                {"$img": [[0, width, 3], "uint8"]}, {"$path": "missing"}, {"$path": "not_image"}, 7])]
        return [image_spec(rng, rng.choice([16, 32, 48, 64, 200, 1]), rng.choice([16, 32, 40, 64, 3]))
                for _ in range(rng.choice([0, 1, 1, 2, 3]))]
    if name == "hires":
        return hires_spec(rng, valid)
    if name == "cache":
        return cache_spec(rng, valid)
    if name in ("progress", "preview"):
        if valid:
            return {"$cb": rng.choice(["none", "none", "raise", "cancel", "returns_value", "slow"])}
        return rng.choice([42, {"$str": "print"}, {"$cb": "wrong_arity"}])
    if name == "seed":
        if valid:
            return rng.choice([0, 1, 42, -1, 2**63 - 1, 2**32, 2**31, {"$np": ["int64", 5]}, {"$np": ["uint64", 7]}])
        return rng.choice([2**63, -2, 2**64, {"$np": ["uint64", 2**64 - 1]}, {"$f": "nan"}, 1.0, None, {"$str": "7"},
                           True])
    if name == "loras":
        if valid:
            return rng.choice([None, [], [{"$lora": ["lora", rng.choice([1.0, 0.5, -1.0, 0.0, 100.0, -100.0])]}],
                               [{"$path": "lora"}], [{"$lora": ["lora", 1.0]}, {"$lora": ["lora", 1.0]}]])
        return rng.choice([[{"$lora": ["missing", 1.0]}], {"$path": "lora"}, [{"$lora": ["lora", {"$f": "nan"}]}],
                           [{"$lora": ["png", 1.0]}], [{"$lora": ["lora", 150.0]}]])
    if name == "photo_maker":
        return rng.choice([{"$pm": "one_image"}, {"$pm": "no_images"}, 3])
    if name in ("vae_tile_size", "vae_relative_tile_size"):
        kind = "int" if name == "vae_tile_size" else "float"
        one = lambda: number_spec(rng, name, kind, 0, 64 if valid else MAX_SIDE_SPEC, valid)  # noqa: E731
        return rng.choice([one(), one(), {"$tuple": [one(), one()]}] +
                          ([] if valid else [[one()], [one(), one(), one()]]))
    return odd_value(rng)


# Keywords a call draws, with weights: those that need a part the tiny models lack (ControlNet, PhotoMaker) rarely.
KEYWORD_WEIGHTS = {"control_image": 0.2, "control_strength": 0.3, "photo_maker": 0.2, "mask": 0.5, "init_image": 1.5,
                   "hires": 2.0, "cache": 2.0, "sampler": 2.0, "scheduler": 2.0, "custom_sigmas": 1.5}


def make_params_case(rng: random.Random) -> dict:
    """A case: a tiny model with some Context options, then 1-3 calls with random keywords (1-7 each,
    drawn from the option tables) through generate / txt2img / img2img / inpaint / edit."""
    from sdcpp_py._params import CONTEXT, IMAGE

    model = "flux2" if rng.random() < 0.15 else "flux"
    context = {}
    for name in ("weight_type", "rng", "sampler_rng", "prediction", "flash_attn", "diffusion_flash_attn",
                 "diffusion_conv_direct", "vae_conv_direct", "circular_x", "circular_y", "tae_preview_only",
                 "max_vram", "offload_params_to_cpu", "lora_apply_mode", "n_threads", "vae_decode_only"):
        if rng.random() < 0.08:
            row = CONTEXT[name]
            if name == "weight_type":  # a cheap conversion of the tiny model, mostly
                context[name] = rng.choice(["q8_0", "q4_0", "f32", "bf16", "q2_k", "iq4_nl", "tq1_0", "mxfp4"])
            elif name == "n_threads":
                context[name] = rng.choice([1, 2, 0, 1025, -1])
            elif name == "vae_decode_only":
                context[name] = rng.choice([True, False, None])
            else:
                context[name] = keyword_spec(rng, row, (32, 32))
    names = [row.name for row in IMAGE]
    weights = [KEYWORD_WEIGHTS.get(name, 1.0) for name in names]
    calls = []
    for _ in range(rng.randint(1, 3)):
        method = rng.choices(["generate", "txt2img", "img2img", "inpaint", "edit"], weights=[4, 2, 2, 1, 1])[0]
        size = (rng.choice([16, 32, 32, 48, 64]), rng.choice([16, 32, 32, 48]))
        kwargs = {"width": size[0], "height": size[1], "steps": rng.choice([1, 1, 2]), "seed": rng.randint(0, 99)}
        invalid = rng.random() < 0.3  # one keyword of the call the package should refuse
        # the size first (images follow it), then by name: a set's order changes with PYTHONHASHSEED
        chosen = sorted({rng.choices(names, weights)[0] for _ in range(rng.randint(1, 6))},
                        key=lambda name: (name not in ("width", "height"), name))
        for i, name in enumerate(chosen):
            kwargs[name] = keyword_spec(rng, IMAGE[name], size, valid=not (invalid and i == 0))
            if name in ("width", "height") and type(kwargs[name]) is int and 0 < kwargs[name] <= 96:
                size = (kwargs["width"], size[1]) if name == "width" else (size[0], kwargs["height"])
        if "mask" in kwargs and "init_image" not in kwargs and method == "generate" and rng.random() < 0.9:
            kwargs["init_image"] = image_spec(rng, size[0], size[1])
        positional = []
        if method in ("img2img", "inpaint"):
            positional.append(image_spec(rng, size[0], size[1], valid=rng.random() < 0.9))
            kwargs.pop("init_image", None)
        if method == "inpaint":
            positional.append(image_spec(rng, size[0], size[1], mask=True, valid=rng.random() < 0.9))
            kwargs.pop("mask", None)
        if method == "edit":
            positional.append([image_spec(rng, rng.choice([16, 32, 64]), rng.choice([16, 32]), valid=rng.random() < 0.9)])
            kwargs.pop("ref_images", None)
        prompt = text_spec(rng, valid=rng.random() < 0.9) if rng.random() < 0.3 else {"$str": "a fuzzed cube"}
        calls.append({"method": method, "prompt": prompt, "args": positional, "kwargs": kwargs,
                      "invalid": chosen[0] if invalid and chosen[0] in kwargs else None})  # (popped: positional)
    ops = [f"model.{model}"] + [f"ctx.{k}" for k in context] + sorted(
        {f"call.{c['method']}" for c in calls} | {f"kw.{k}" for c in calls for k in c["kwargs"]
                                                   if k not in ("width", "height", "steps", "seed")})
    return {"model": model, "context": context, "calls": calls, "ops": ops}


def params_seed_files(seed_dir: Path) -> Dict[str, Path]:
    """The tiny Flux.2 parts and a LoRA for the tiny Flux DiT, beside the Flux seeds."""
    from sdcpp_py.testing import extras, flux2, flux1

    parts = flux2.flux2_components(seed_dir.parent / "flux2")
    lora = seed_dir / "fuzz-params-lora.safetensors"
    if not lora.exists():
        extras.flux_lora(flux1.flux_components(seed_dir)["diffusion_model"], lora, std=0.05)
    vae = flux1.flux_components(seed_dir, vae_encoder=True)["vae"]  # img2img, inpaint, edit and hires need it
    return {"lora": lora, "vae.encoder": Path(vae), **{f"flux2.{k}": Path(v) for k, v in parts.items()}}


class ParamValues:
    """Builds a case's values in the child: images, records, callbacks and paths from their specs."""

    def __init__(self, files: Dict[str, Path], work: Path, seed: int):
        import numpy as np

        self.np, self.files, self.work = np, files, work
        self.rng = np.random.default_rng(seed)
        self.ctx = None

    def path(self, what) -> str:
        np = self.np
        width, height = 32, 32
        if isinstance(what, list):  # ["png", width, height]
            what, width, height = what
        if what in ("esrgan", "lora"):
            return str(self.files[what])
        if what == "missing":
            return str(self.work / "no-such-file.png")
        if what == "dir":
            return str(self.work)
        if what in ("png", "bytes_png"):
            from PIL import Image

            target = self.work / f"image-{width}x{height}.png"
            if not target.exists():
                Image.fromarray(self.rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(target)
            return str(target) if what == "png" else os.fsencode(str(target))
        target = self.work / ("empty.png" if what == "empty" else "not-an-image.png")
        target.write_bytes(b"" if what == "empty" else b"GIF89a but not really")
        return str(target)

    def image(self, shape, dtype: str, variant: Optional[str] = None):
        np = self.np
        if dtype == "object":
            return np.empty(shape, dtype=object)
        if dtype == "complex64":
            return np.zeros(shape, dtype=np.complex64)
        if dtype == "bool":
            return self.rng.random(shape) < 0.5
        if dtype.startswith(("float")):
            array = self.rng.random(shape).astype(dtype)
        else:
            info = np.iinfo(dtype)
            array = self.rng.integers(max(info.min, -128), min(info.max, 255) + 1, shape).astype(dtype)
        if variant == "transposed" and array.ndim == 3:
            array = np.ascontiguousarray(array.transpose(1, 0, 2)).transpose(1, 0, 2)
        elif variant == "strided" and array.ndim == 3:
            wide = np.zeros((shape[0], shape[1] * 2, shape[2]), array.dtype)
            wide[:, ::2] = array
            array = wide[:, ::2]
        elif variant == "readonly":
            array.setflags(write=False)
        elif variant == "nan":
            array = array.astype(np.float32)
            array[0, 0] = np.nan
        return array

    def callback(self, what: str):
        if what == "none":
            return lambda *args: None
        if what == "raise":
            def raising(*args):
                raise FuzzRaise("raised by a progress or preview callback")
            return raising
        if what == "cancel":
            return lambda *args: self.ctx.cancel()
        if what == "wrong_arity":
            return lambda: None
        if what == "returns_value":
            return lambda *args: ["not", "None"]
        return lambda *args: time.sleep(0.01)

    def __call__(self, spec):
        np = self.np
        if isinstance(spec, list):
            return [self(item) for item in spec]
        if not isinstance(spec, dict):
            return spec
        (tag, value), = spec.items()
        if tag == "$f":
            return FLOAT_WORDS[value]
        if tag == "$str":
            return value
        if tag == "$np":
            return getattr(np, value[0])(value[1])
        if tag == "$obj":
            return object()
        if tag == "$tuple":
            return tuple(self(item) for item in value)
        if tag == "$enum":
            return getattr(_enum(value[0]), value[1])
        if tag == "$img":
            return self.image(*value)
        if tag == "$path":
            return self.path(value)
        if tag == "$pil":
            from PIL import Image

            return Image.new(value[2], (value[0], value[1]))
        if tag == "$cb":
            return self.callback(value)
        if tag == "$lora":
            import sdcpp_py

            return sdcpp_py.Lora(self.path(value[0]), self(value[1]))
        if tag == "$pm":
            import sdcpp_py

            return sdcpp_py.PhotoMaker(id_images=[] if value == "no_images" else [self.image([32, 32, 3], "uint8")])
        if tag in ("$hires", "$cache"):
            import sdcpp_py

            record = sdcpp_py.Hires if tag == "$hires" else sdcpp_py.Cache
            fields = {k: (self.path(v["$path"]) if isinstance(v, dict) and "$path" in v else self(v))
                      for k, v in value.items()}
            return record(**fields)
        raise ValueError(f"unknown spec {spec!r}")


# The exception types a refused call may raise (README: what is refused, and why), and the callbacks' own.
PARAMS_REFUSALS = {"TypeError", "ValueError", "FileNotFoundError", "InvalidComponentError", "Cancelled", "FuzzRaise",
                   "IsADirectoryError", "SdcppError"}


def expected_side(requested, facts) -> Optional[int]:
    from sdcpp_py._model import _align_up, spatial_multiple

    if facts.architecture is None:
        return None
    return _align_up(requested, spatial_multiple(facts.architecture))


def check_images(result, kwargs: dict, facts) -> Optional[str]:
    """What is wrong with an accepted call's result, if anything: a list of batch_count (H, W, 3) uint8 arrays
    at the requested size (rounded up to the model's multiple; hires: its own size)."""
    import numpy as np

    if not isinstance(result, list) or not result:
        return f"result is {type(result).__name__} of {len(result) if isinstance(result, list) else '?'}"
    batch = kwargs.get("batch_count", 1)
    if type(batch) is int and len(result) != batch:
        return f"{len(result)} images for batch_count={batch}"
    for image in result:
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            return f"an image of {getattr(image, 'shape', None)} {getattr(image, 'dtype', type(image).__name__)}"
    width, height = kwargs.get("width"), kwargs.get("height")
    if kwargs.get("hires") is None and type(width) is int and type(height) is int:
        want = (expected_side(height, facts), expected_side(width, facts))
        if None not in want and result[0].shape[:2] != want:
            return f"{result[0].shape[1]}x{result[0].shape[0]} for width={width} height={height} (expected " \
                   f"{want[1]}x{want[0]})"
    return None


def params_work(report: Reporter, case: dict, files: Dict[str, Path], work: Path, seed: int) -> None:
    import sdcpp_py

    values = ParamValues(files, work, seed)
    if case["model"] == "flux2":
        parts = {k: files[f"flux2.{k}"] for k in ("diffusion_model", "llm", "vae")}
    else:
        parts = {"diffusion_model": files["diffusion_model"], "clip_l": files["clip_l"], "vae": files["vae.encoder"]}
    options = {k: values(v) for k, v in case["context"].items()}
    report(event="stage", stage="context")
    try:
        ctx = sdcpp_py.Context(**parts, **{"n_threads": 1, **options})
    except Exception as exc:
        report(event="result", outcome="refused", error=f"Context: {describe(exc)}",
               exceptions=[f"Context: {describe(exc)}"])
        return
    values.ctx = ctx
    from sdcpp_py._enums import Prediction

    # A flow prediction set on the Context needs its shift in every call (the core's default comes with its own).
    plain = {"flow_shift": 1.0} if ctx._facts.prediction in (Prediction.SD3_FLOW, Prediction.FLUX_FLOW) else {}
    refusals: List[str] = []
    blanks: List[str] = []  # accepted calls whose image is one colour (a NaN latent decodes to white)
    accepted_invalid: List[str] = []
    with ctx:
        for number, call in enumerate(case["calls"]):
            report(event="stage", stage=f"call {number} {call['method']}")
            kwargs = {k: values(v) for k, v in call["kwargs"].items()}  # a fuzzer bug here is a fuzzer_error
            args = [values(a) for a in call["args"]]
            prompt = values(call["prompt"])
            try:
                result = getattr(ctx, call["method"])(prompt, *args, **kwargs)
            except Exception as exc:
                refusals.append(f"call {number}: {describe(exc)}")
                report(event="stage", stage=f"plain call after refused call {number}")
                try:  # a refused call must leave the context usable
                    ctx.txt2img("a fuzzed cube", width=32, height=32, steps=1, seed=seed, **plain)
                except Exception as after:
                    report(event="result", outcome="broken", error=f"after {refusals[-1]}: {describe(after)}")
                    return
                continue
            wrong = check_images(result, kwargs, ctx._facts)
            if wrong:
                report(event="result", outcome="wrong", error=f"call {number} {call['method']}: {wrong}")
                return
            if call.get("invalid"):  # a value made to be refused went through: listed, for a look
                accepted_invalid.append(f"{call['method']} {call['invalid']}="
                                        f"{describe_value(call['kwargs'].get(call['invalid']))}")
            if any(image.min() == image.max() for image in result):  # accepted, and a picture of nothing
                blanks.append(f"{call['method']} " + " ".join(
                    f"{k}={describe_value(v)}" for k, v in sorted(call["kwargs"].items())
                    if k not in ("width", "height", "seed")) + f" {' '.join(f'{k}={v}' for k, v in case['context'].items())}")
        report(event="stage", stage="close")
    report(event="result", outcome="refused" if refusals else "ok", error=refusals[0] if refusals else None,
           exceptions=refusals, blanks=blanks, accepted_invalid=accepted_invalid)


def describe_value(spec) -> str:
    text = json.dumps(spec)
    return text if len(text) < 40 else text[:37] + "..."


# --------------------------------------------------------------------------- fork server


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


class ForkServer:
    """Runs in its own process: imports sdcpp_py once, forks one child per request, times it out."""

    def __init__(self, args):
        self.args = args
        self.files = make_seed_files(Path(args.seed_dir))
        self.models = load_seed_models(self.files) if args.mode == "components" else None
        if args.mode == "loras":
            self.files["sd1"] = lora_seed_sd1(Path(args.seed_dir))
        if args.mode == "params":
            self.files.update(params_seed_files(Path(args.seed_dir)))
        self.targets = lora_targets(self.files) if args.mode == "loras" else None
        self.work = Path(args.workdir)
        self.crash_dir = Path(args.out) / "crashes"
        self.warned = False

    def check_single_threaded(self) -> None:
        # fork() copies only the calling thread: a lock held by another thread would stay locked in the child.
        if threading.active_count() != 1:
            raise RuntimeError(f"the fork server has {threading.active_count()} Python threads")
        native = len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else 1
        if native != 1 and not self.warned:
            self.warned = True
            print(f"fuzz: warning: the fork server has {native} native threads", file=sys.stderr)

    def run(self, request: dict) -> dict:
        self.check_single_threaded()
        index = request.get("index", -1)
        read_fd, write_fd = os.pipe()
        stderr_path = self.work / "stderr.txt"
        started = time.monotonic()
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            self.child(request, write_fd, stderr_path)  # never returns
        os.close(write_fd)
        events, status = self.wait(pid, read_fd, started)
        return self.classify(request, index, events, status, time.monotonic() - started, stderr_path)

    def child(self, request: dict, write_fd: int, stderr_path: Path) -> None:
        code = 0
        try:
            os.setpgid(0, 0)  # the server kills the whole group on a timeout (ggml may have forked gdb)
            import faulthandler
            import resource

            null = os.open(os.devnull, os.O_RDWR)
            os.dup2(null, 0)
            os.dup2(null, 1)  # the core prints its load progress to stdout
            err = os.open(stderr_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(err, 2)
            limit = self.args.mem_mb << 20
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            faulthandler.enable(file=sys.stderr, all_threads=True)
            if self.args.timeout > 4:  # Python stacks of every thread, before the server's kill
                faulthandler.dump_traceback_later(self.args.timeout - 2, exit=False)
            report = Reporter(write_fd)
            if self.args.mode == "components":
                self.component_child(request, report)
            elif self.args.mode == "loras":
                self.lora_child(request, report)
            elif self.args.mode == "params":
                self.params_child(request, report)
            else:
                self.calls_child(request, report)
        except ExitForReal:
            raise SystemExit(0)  # through the interpreter's exit: atexit handlers and finalization
        except BaseException as exc:  # a bug of the fuzzer itself, not of the package
            try:
                Reporter(write_fd)(event="fuzzer_error", error=describe(exc))
            except OSError:
                pass
            code = 3
        os._exit(code)

    def component_child(self, request: dict, report: Reporter) -> None:
        seed, index = self.args.seed, request.get("index", -1)
        if "replay" in request:
            info = json.loads(Path(request["replay"]).read_text())
            role, path, use_mmap = info["role"], Path(info["mutant_file"]), info.get("mmap", False)
            report(event="mutant", role=role, ops=info["ops"], notes=info["notes"], ext=path.suffix, mmap=use_mmap)
            seed, index = info["seed"], info["index"]
        else:
            rng = random.Random(f"components:{seed}:{index}")
            mutant = make_mutant(rng, self.models)
            use_mmap = rng.random() < 0.25
            role = mutant.role
            path = self.work / f"mutant-{role.split('.')[0]}{mutant.ext}"
            mutant.write(path)
            report(event="mutant", role=role, ops=mutant.ops, notes=mutant.notes, ext=mutant.ext, mmap=use_mmap,
                   path=str(path))
        component_work(report, path, role, self.files, self.args.gen_size, use_mmap, index % 1000)

    def case_of(self, request: dict, make: Callable[[random.Random], dict]) -> Tuple[dict, int]:
        """A request's case and index: the saved one when replaying, else made from the campaign seed."""
        if "replay" in request:
            info = json.loads(Path(request["replay"]).read_text())
            return info["case"], info["index"]
        index = request.get("index", -1)
        return make(random.Random(f"{self.args.mode}:{self.args.seed}:{index}")), index

    def lora_child(self, request: dict, report: Reporter) -> None:
        case, index = self.case_of(request, lambda rng: make_lora_case(rng, self.targets))
        role = f"lora {case.get('model', 'flux')} {case['mode']}" + (" q8_0" if case["quantized"] else "")
        report(event="mutant", role=role, ops=case["ops"], notes=case["notes"], ext=".safetensors", mmap=False)
        report(event="case", case=case)
        lora_work(report, case, self.files, self.work, self.args.gen_size, index % 1000)

    def params_child(self, request: dict, report: Reporter) -> None:
        case, index = self.case_of(request, make_params_case)
        report(event="mutant", role=f"params {case['model']}", ops=case["ops"], notes=[], ext="", mmap=False)
        report(event="case", case=case)
        params_work(report, case, self.files, self.work, index % 1000)

    def calls_child(self, request: dict, report: Reporter) -> None:
        if "replay" in request:
            plan = json.loads(Path(request["replay"]).read_text())["plan"]
        else:
            plan = make_plan(random.Random(f"calls:{self.args.seed}:{request['index']}"))
        report(event="plan", plan=plan)
        sequence_work(report, plan, self.files)

    def wait(self, pid: int, read_fd: int, started: float):
        deadline, buffer, events, status = started + self.args.timeout, b"", [], None
        open_pipe = True
        while True:
            if open_pipe:
                ready, _, _ = select.select([read_fd], [], [], max(0.0, min(0.2, deadline - time.monotonic())))
                if ready:
                    chunk = os.read(read_fd, 1 << 16)
                    if chunk:
                        buffer += chunk
                        *lines, buffer = buffer.split(b"\n")
                        events += [json.loads(line) for line in lines if line.strip()]
                    else:
                        open_pipe = False
            else:
                time.sleep(0.01)
            done, raw = os.waitpid(pid, os.WNOHANG)
            if done:
                status = raw
                break
            if time.monotonic() > deadline:
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                os.waitpid(pid, 0)
                break
        if open_pipe:
            try:
                while True:  # what it wrote just before it ended
                    ready, _, _ = select.select([read_fd], [], [], 0)
                    chunk = os.read(read_fd, 1 << 16) if ready else b""
                    if not chunk:
                        break
                    buffer += chunk
            except OSError:
                pass
            *lines, _ = (buffer + b"\n").split(b"\n")
            events += [json.loads(line) for line in lines if line.strip()]
        os.close(read_fd)
        try:
            os.killpg(pid, signal.SIGKILL)  # anything it left behind
        except (ProcessLookupError, PermissionError):
            pass
        return events, status

    def classify(self, request: dict, index: int, events: List[dict], status, seconds: float, stderr_path: Path):
        result = {"index": index, "seconds": round(seconds, 3), "stage": None}
        for event in events:
            kind = event.get("event")
            if kind == "mutant":
                result.update(role=event["role"], ops=event["ops"], notes=event["notes"], ext=event["ext"],
                              mmap=event["mmap"])
            elif kind == "plan":
                result["plan"] = event["plan"]
            elif kind == "case":
                result["case"] = event["case"]
            elif kind == "stage":
                result["stage"] = event["stage"]
            elif kind == "inspect":
                result["inspect"] = event["result"]
            elif kind == "result":
                result.update(outcome=event["outcome"], error=event.get("error"), exceptions=event.get("exceptions"))
                for listed in ("blanks", "accepted_invalid"):
                    if event.get(listed):
                        result[listed] = event[listed]
            elif kind == "fuzzer_error":
                result["fuzzer_error"] = event["error"]
        in_flight = {}
        for event in events:
            if event.get("event") == "act":
                if event["state"] == "start":
                    in_flight[event["thread"]] = event["what"]
                else:
                    in_flight.pop(event["thread"], None)
        if status is None:
            result["outcome"] = "hang"
            result["in_flight"] = list(in_flight.values())
        elif os.WIFSIGNALED(status):
            result["outcome"], result["signal"] = "crash", signal_name(os.WTERMSIG(status))
            result["in_flight"] = list(in_flight.values())
        elif os.WEXITSTATUS(status) != 0 or "outcome" not in result:
            if "fuzzer_error" in result:
                result["outcome"] = "fuzzer_error"
            else:
                result["outcome"], result["signal"] = "crash", f"exit status {os.WEXITSTATUS(status)}"
        if result["outcome"] in BAD_OUTCOMES:
            try:
                text = stderr_path.read_text(errors="replace")
            except OSError:
                text = ""
            result["stderr_tail"] = text[-(65536 if "replay" in request else 4000):]
            result["core_line"] = core_line(text)
            result["python_frame"] = python_frame(text)
            if "replay" not in request:
                result["saved"] = self.save(result)
        return result

    def save(self, result: dict) -> str:
        self.crash_dir.mkdir(parents=True, exist_ok=True)
        stem = f"{result['outcome']}-{self.args.mode}-s{self.args.seed}-i{result['index']}"
        info = {"mode": self.args.mode, "seed": self.args.seed, "index": result["index"],
                "seed_dir": str(self.args.seed_dir), **{k: v for k, v in result.items() if k != "saved"}}
        if self.args.mode == "components" and "role" in result and "case" not in result:
            mutant = self.work / f"mutant-{result['role'].split('.')[0]}{result['ext']}"
            target = self.crash_dir / f"{stem}{result['ext'] or '.bin'}"
            if mutant.exists():
                shutil.copyfile(mutant, target)
            info["mutant_file"] = str(target.resolve())
        path = self.crash_dir / f"{stem}.json"
        path.write_text(json.dumps(info, indent=1, default=str))
        return str(path)


def core_line(stderr: str) -> Optional[str]:
    """The core's own last words: an abort's "file:line: message", an uncaught C++ exception, a fatal error."""
    match = re.search(r"^\S+\.(?:c|cc|cpp|h|hpp|inl):\d+: .*$", stderr, re.MULTILINE)
    if match:
        return match.group(0).strip()[:300]
    match = re.search(r"^terminate called.*(?:\n\s*what\(\):\s*(.*))?", stderr, re.MULTILINE)
    if match:
        return ("uncaught C++ exception: " + (match.group(1) or match.group(0))).strip()[:300]
    match = re.search(r"^Fatal Python error:.*$", stderr, re.MULTILINE)
    return match.group(0).strip()[:300] if match else None


def python_frame(stderr: str) -> Optional[str]:
    """The innermost sdcpp_py frame of the thread faulthandler saw die (or of the first thread it lists)."""
    block = re.search(r"^Current thread.*?(?=^\S|\Z)", stderr, re.MULTILINE | re.DOTALL) or \
        re.search(r"^Thread 0x.*?(?=^\S|\Z)", stderr, re.MULTILINE | re.DOTALL)
    if not block:
        return None
    frame = re.search(r'File ".*?(sdcpp_py/[^"]+)", line (\d+) in (\S+)', block.group(0))
    return f"{frame.group(1)}:{frame.group(2)} {frame.group(3)}" if frame else None


def server_main(args) -> None:
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)  # stray prints must not reach the protocol pipe
    import sdcpp_py  # noqa: F401  (once, before any fork)

    server = ForkServer(args)
    protocol.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        if not line.strip():
            continue
        protocol.write(json.dumps(server.run(json.loads(line)), default=str) + "\n")


# --------------------------------------------------------------------------- driver


class ServerProcess:
    def __init__(self, args, mode: str, workdir: Path, backtrace: bool = False):
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1")  # numpy's BLAS pool: a thread in the fork server
        if not backtrace:
            env["GGML_NO_BACKTRACE"] = "1"  # ggml would attach gdb on every abort: seconds each
        workdir.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, os.path.abspath(__file__), "_server", "--mode", mode, "--seed", str(args.seed),
                   "--seed-dir", str(args.seed_dir), "--out", str(args.out), "--timeout", str(args.timeout),
                   "--mem-mb", str(args.mem_mb), "--gen-size", str(args.gen_size), "--workdir", str(workdir)]
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        self.buffer = b""
        self.in_flight: Optional[dict] = None
        self.sent_at = 0.0
        self.ready = False

    def send(self, request: dict) -> None:
        self.in_flight, self.sent_at = request, time.monotonic()
        self.proc.stdin.write((json.dumps(request) + "\n").encode())
        self.proc.stdin.flush()

    def lines(self) -> List[dict]:
        chunk = os.read(self.proc.stdout.fileno(), 1 << 20)
        if not chunk:
            raise EOFError
        self.buffer += chunk
        *lines, self.buffer = self.buffer.split(b"\n")
        return [json.loads(line) for line in lines if line.strip()]

    def stop(self) -> None:
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def drive(args, mode: str, requests: List[dict], on_result: Callable[[dict], None]) -> None:
    """Hands requests to --jobs servers and collects their results; restarts a server that dies."""
    base = Path(tempfile.mkdtemp(prefix="sdcpp-fuzz-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    servers = [ServerProcess(args, mode, base / f"job{i}", args.backtrace) for i in range(args.jobs)]
    queue = collections.deque(requests)
    stop_at = time.monotonic() + args.time_limit if args.time_limit else math.inf
    restarts = 0
    try:
        while True:
            running = time.monotonic() < stop_at
            for server in servers:
                if server.ready and server.in_flight is None and queue and running:
                    server.send(queue.popleft())
            if not any(s.in_flight for s in servers) and (not queue or not running):
                break
            ready, _, _ = select.select([s.proc.stdout for s in servers], [], [], 1.0)
            for i, server in enumerate(servers):
                if server.proc.stdout in ready:
                    try:
                        for message in server.lines():
                            if message.get("ready"):
                                server.ready = True
                                continue
                            server.in_flight = None
                            on_result(message)
                    except EOFError:
                        lost = server.in_flight
                        restarts += 1
                        if restarts > 20 + args.jobs * 2:
                            raise RuntimeError("the fork servers keep dying; run one by hand: "
                                               "python tools/fuzz.py _server --help") from None
                        servers[i] = ServerProcess(args, mode, base / f"job{i}", args.backtrace)
                        if lost is not None:
                            on_result({"index": lost.get("index", -1), "outcome": "crash",
                                       "signal": "the fork server died", "stage": None})
                elif server.in_flight is not None and time.monotonic() - server.sent_at > args.timeout + 120:
                    lost = server.in_flight
                    server.proc.kill()
                    server.proc.wait()
                    servers[i] = ServerProcess(args, mode, base / f"job{i}", args.backtrace)
                    on_result({"index": lost.get("index", -1), "outcome": "hang",
                               "signal": "the fork server stopped answering", "stage": None})
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(base, ignore_errors=True)


def normalize(message: str) -> str:
    """Refusal messages without paths, names and numbers, so that one kind of refusal counts once."""
    message = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", message)
    message = re.sub(r"\b0x[0-9a-f]+\b|-?\d+(\.\d+)?(e[-+]?\d+)?", "N", message)
    return re.sub(r"\[[^\]]*\]", "[…]", message)


# Exception types the README promises for each mode; anything else is listed on its own.
DOCUMENTED = {"components": {"InvalidComponentError", "SdcppError", "ValueError", "FileNotFoundError"},
              "loras": {"InvalidComponentError", "ValueError", "FileNotFoundError"},
              "calls": {"Cancelled", "SdcppError", "ValueError", "RuntimeError", "FuzzRaise"},
              "params": PARAMS_REFUSALS}


class Tally:
    def __init__(self, mode: str, seed: int):
        self.mode, self.seed, self.started = mode, seed, time.monotonic()
        self.counts = collections.Counter()
        self.per_kind: Dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.per_role: Dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.per_stage: Dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.refusals: Dict[str, list] = {}
        self.exc_types = collections.Counter()
        self.odd: Dict[str, list] = {}  # undocumented exception types: normalized message -> [count, example]
        self.disagree = collections.Counter()
        self.bad: List[dict] = []
        self.blanks: List[str] = []
        self.accepted_invalid: List[str] = []
        self.last_print = time.monotonic()

    def add(self, r: dict) -> None:
        outcome = r.get("outcome", "crash")
        self.counts[outcome] += 1
        self.blanks += [f"case {r['index']}: {b}" for b in r.get("blanks") or []]
        self.accepted_invalid += [f"case {r['index']}: {b}" for b in r.get("accepted_invalid") or []]
        for op in sorted(set(r.get("ops") or [])):
            self.per_kind[op][outcome] += 1
        if r.get("role"):
            self.per_role[r["role"]][outcome] += 1
        if r.get("exceptions") is not None:  # calls: every exception of the sequence, less where it was raised
            messages = [m.split(": ", 1)[1] if ": " in m else m for m in r["exceptions"]]
        else:
            messages = [r["error"]] if outcome == "refused" and r.get("error") else []
        for message in messages:
            message = re.sub(r"'/[^']*/mutant-[^']*'", "<mutant>", message)
            key = normalize(message)
            entry = self.refusals.setdefault(key, [0, message])
            entry[0] += 1
            kind = message.split(":", 1)[0]
            self.exc_types[kind] += 1
            if kind not in DOCUMENTED[self.mode]:
                odd = self.odd.setdefault(key, [0, message, r.get("notes") or r.get("index")])
                odd[0] += 1
        if "inspect" in r and outcome in ("ok", "refused"):
            self.disagree[f"inspect {'ok' if r['inspect'] == 'ok' else 'refused'}, Context {outcome}"] += 1
        if outcome in BAD_OUTCOMES:
            self.bad.append(r)
            self.per_stage[str(r.get("stage"))][outcome] += 1
            where = r.get("saved") or ""
            print(f"fuzz: {outcome} {r.get('signal', '')} at index {r['index']} stage={r.get('stage')} "
                  f"{'; '.join(r.get('notes') or [])} {r.get('core_line') or ''} "
                  f"{r.get('error') if outcome in ('broken', 'wrong') else ''} {where}", file=sys.stderr)
        if time.monotonic() - self.last_print > 30:
            self.last_print = time.monotonic()
            print(f"fuzz: {self.line()}", file=sys.stderr)

    def tried(self) -> int:
        return sum(self.counts.values())

    def line(self) -> str:
        seconds = time.monotonic() - self.started
        rate = self.tried() / seconds * 60 if seconds else 0
        shown = [o for o in OUTCOMES + BAD_OUTCOMES[2:] if o in OUTCOMES or self.counts[o]]
        return f"{self.tried()} tried in {seconds:.0f} s ({rate:.0f}/min): " + ", ".join(
            f"{o} {self.counts[o]}" for o in shown)

    def classes(self) -> List[dict]:
        """Crashes and hangs grouped by how they died: signal, stage and the core's last line (else the Python
        frame, else what was in flight), with the mutation kinds that led there."""
        groups: Dict[tuple, dict] = {}
        for r in self.bad:
            where = (r.get("core_line") or r.get("python_frame") or "; ".join(sorted(r.get("in_flight") or []))
                     or r.get("error") or "")
            key = (r["outcome"], r.get("signal"), r.get("stage"), normalize(where))
            group = groups.setdefault(key, {"outcome": r["outcome"], "signal": r.get("signal"), "stage": r.get("stage"),
                                            "core_line": r.get("core_line"), "count": 0, "ops": collections.Counter(),
                                            "example": r})
            group["count"] += 1
            group["ops"].update(set(r.get("ops") or []))
        return sorted(groups.values(), key=lambda g: -g["count"])

    def summary(self) -> dict:
        seconds = time.monotonic() - self.started
        refusals = sorted(self.refusals.values(), key=lambda e: -e[0])
        return {"mode": self.mode, "seed": self.seed, "tried": self.tried(), "seconds": round(seconds, 1),
                "per_minute": round(self.tried() / seconds * 60, 1) if seconds else 0,
                "counts": {o: self.counts[o] for o in OUTCOMES + BAD_OUTCOMES[2:]},
                "per_kind": {k: dict(v) for k, v in sorted(self.per_kind.items())},
                "per_role": {k: dict(v) for k, v in sorted(self.per_role.items())},
                "inspect_vs_context": dict(self.disagree), "exception_types": dict(self.exc_types.most_common()),
                "distinct_refusals": len(refusals), "refusals": [[n, m] for n, m in refusals[:20]],
                "undocumented_exceptions": [[n, m, where] for n, m, where in
                                            sorted(self.odd.values(), key=lambda e: -e[0])],
                "blank_images": self.blanks, "accepted_invalid": self.accepted_invalid,
                "classes": [{k: (dict(v) if k == "ops" else v) for k, v in g.items() if k != "example"}
                            | {"replay": g["example"].get("saved")} for g in self.classes()],
                "bad": self.bad}

    def print_summary(self) -> None:
        s = self.summary()
        out = [f"{self.mode}: {self.line()}; seed {self.seed}"]
        if s["per_role"]:
            out.append("per role:")
            out += [f"  {k:24} " + table_row(v) for k, v in s["per_role"].items()]
        if s["per_kind"]:
            out.append("per mutation kind (a mutant with several counts in each):")
            out += [f"  {k:24} " + table_row(v) for k, v in s["per_kind"].items()]
        if s["inspect_vs_context"]:
            out.append("inspect() against Context(): "
                       + ", ".join(f"{k} {v}" for k, v in s["inspect_vs_context"].items()))
        out.append("exception types: " + ", ".join(f"{k} {v}" for k, v in s["exception_types"].items()))
        what = "exceptions the calls raised" if self.mode == "calls" else "refusals"
        out.append(f"{what} (top 20 of {s['distinct_refusals']} distinct):")
        out += [f"  {n:6}  {m[:200]}" for n, m in s["refusals"]]
        if s["undocumented_exceptions"]:
            out.append("exceptions of types the README does not promise:")
            out += [f"  {n:6}  {m[:200]}" for n, m, _ in s["undocumented_exceptions"]]
        if self.blanks:
            out.append(f"accepted calls that returned a one-colour image: {len(self.blanks)}")
            out += [f"  {b[:220]}" for b in self.blanks[:30]]
        if self.accepted_invalid:
            out.append(f"accepted calls with a value drawn to be refused: {len(self.accepted_invalid)}")
            out += [f"  {b[:220]}" for b in self.accepted_invalid[:30]]
        classes = self.classes()
        out.append(f"crashes and hangs: {len(self.bad)} in {len(classes)} classes")
        for g in classes:
            example = g["example"]
            ops = ", ".join(f"{k} {v}" for k, v in g["ops"].most_common(6))
            out.append(f"  {g['count']:4} x {g['outcome']} {g['signal'] or ''} stage={g['stage']}"
                       + (f" (mutations: {ops})" if ops else ""))
            if g["core_line"]:
                out.append(f"         core: {g['core_line']}")
            if example.get("python_frame"):
                out.append(f"         python: {example['python_frame']}")
            if example.get("notes"):
                out.append(f"         e.g.: {'; '.join(example['notes'])[:300]}")
            if example.get("in_flight"):
                out.append(f"         in flight: {'; '.join(example['in_flight'])[:300]}")
            if example.get("saved"):
                out.append(f"         replay: python tools/fuzz.py replay {example['saved']}")
        print("\n".join(out))


def table_row(counter: dict) -> str:
    total = sum(counter.values())
    shown = OUTCOMES + tuple(o for o in BAD_OUTCOMES if o not in OUTCOMES and counter.get(o))
    return f"{total:7}  " + "  ".join(f"{o} {counter.get(o, 0)}" for o in shown)


def campaign(args) -> int:
    args.seed_dir = Path(args.seed_dir)
    args.out = Path(args.out)
    args.out.mkdir(parents=True, exist_ok=True)
    make_seed_files(args.seed_dir)  # before the servers start, so that they do not race to write them
    if args.mode == "loras":
        lora_seed_sd1(args.seed_dir)
    if args.mode == "params":
        params_seed_files(args.seed_dir)
    count = getattr(args, {"components": "mutants", "loras": "cases", "params": "cases"}.get(args.mode, "sequences"))
    tally = Tally(args.mode, args.seed)
    drive(args, args.mode, [{"index": i} for i in range(args.start, args.start + count)], tally.add)
    tally.print_summary()
    summary = tally.summary()
    (args.out / f"summary-{args.mode}.json").write_text(json.dumps(summary, indent=1, default=str))
    return 1 if any(summary["counts"][o] for o in BAD_OUTCOMES) else 0


def replay(args) -> int:
    info = json.loads(Path(args.file).read_text())
    args.mode, args.seed = info["mode"], info["seed"]
    args.seed_dir = Path(args.seed_dir or info["seed_dir"])
    args.out = Path(tempfile.mkdtemp(prefix="sdcpp-fuzz-replay-"))
    make_seed_files(args.seed_dir)
    results = []
    drive(args, args.mode, [{"index": info["index"], "replay": str(Path(args.file).resolve())}] * args.repeat,
          results.append)
    bad = 0
    for r in results:
        print(f"{r['outcome']} {r.get('signal') or ''} stage={r.get('stage')} {r.get('error') or ''}")
        if r.get("in_flight"):
            print("  in flight: " + "; ".join(r["in_flight"]))
        if r.get("stderr_tail"):
            print(r["stderr_tail"])
        bad += r["outcome"] in BAD_OUTCOMES
    shutil.rmtree(args.out, ignore_errors=True)
    return 1 if bad else 0


def direct(args) -> int:
    """A saved crash or hang run in this process, no fork server: for a debugger (replay --gdb)."""
    info = json.loads(Path(args.file).read_text())
    files = make_seed_files(Path(args.seed_dir or info["seed_dir"]))
    report = Reporter(1)
    if info["mode"] == "components":
        component_work(report, Path(info["mutant_file"]), info["role"], files, args.gen_size, info.get("mmap", False),
                       info["index"] % 1000)
    elif info["mode"] == "loras":
        files["sd1"] = lora_seed_sd1(Path(args.seed_dir or info["seed_dir"]))
        with tempfile.TemporaryDirectory(prefix="sdcpp-fuzz-lora-") as work:
            lora_work(report, info["case"], files, Path(work), args.gen_size, info["index"] % 1000)
    elif info["mode"] == "params":
        files.update(params_seed_files(Path(args.seed_dir or info["seed_dir"])))
        with tempfile.TemporaryDirectory(prefix="sdcpp-fuzz-params-") as work:
            params_work(report, info["case"], files, Path(work), info["index"] % 1000)
    else:
        try:
            sequence_work(report, info["plan"], files)
        except ExitForReal:
            pass  # returning from here is the interpreter's exit
    return 0


def replay_in_gdb(args) -> int:
    """gdb stops at the thread that took the signal: its C++ frames say where in the core it died."""
    command = ["gdb", "-q", "-batch", "-ex", "run", "-ex", "bt 40", "-ex", "info threads", "--args", sys.executable,
               os.path.abspath(__file__), "_direct", args.file, "--gen-size", str(args.gen_size)]
    if args.seed_dir:
        command += ["--seed-dir", str(args.seed_dir)]
    env = dict(os.environ, GGML_NO_BACKTRACE="1", OPENBLAS_NUM_THREADS="1")
    try:
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        print(f"no end within {args.timeout:.0f} s (a hang): replay without --gdb shows the Python stacks")
        return 1
    keep = re.compile(r"^(#\d+|Thread \d+ .*received signal|\*? +\d+ +Thread|\[Inferior .* exited|\{\"event)")
    print("\n".join(line for line in (result.stdout + result.stderr).splitlines() if keep.match(line)))
    return 1 if "received signal" in result.stdout + result.stderr else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p, timeout: float):
        p.add_argument("--seed", type=int, default=0, help="campaign seed: mutant i is the same for the same seed")
        p.add_argument("--jobs", type=int, default=1, help="fork servers running at once")
        p.add_argument("--timeout", type=float, default=timeout, help="seconds per mutant or sequence (a hang)")
        p.add_argument("--time-limit", type=float, default=0, help="stop starting new ones after this many seconds")
        p.add_argument("--out", default="fuzz-out", help="summary and crashes/ (replay files) go here")
        p.add_argument("--seed-dir", default=str(default_seed_dir()), help="where the synthetic seed files are")
        p.add_argument("--start", type=int, default=0, help="first index (to continue a campaign)")
        p.add_argument("--mem-mb", type=int, default=6144, help="address-space limit of each child")
        p.add_argument("--gen-size", type=int, default=32, help="image side of the generation after a load")
        p.add_argument("--backtrace", action="store_true", help="let ggml attach gdb on an abort (slow)")

    p = sub.add_parser("components", help="mutated safetensors/GGUF components through inspect() and Context()")
    p.add_argument("--mutants", type=int, default=1000)
    common(p, 30)
    p = sub.add_parser("loras", help="generated LoRA files, well formed and not, through calls that apply them")
    p.add_argument("--cases", type=int, default=500)
    common(p, 60)
    p = sub.add_parser("params", help="random generation keywords from the option tables, valid and not")
    p.add_argument("--cases", type=int, default=500)
    common(p, 90)
    p = sub.add_parser("calls", help="random call sequences across threads")
    p.add_argument("--sequences", type=int, default=50)
    common(p, 60)
    p = sub.add_parser("replay", help="run a saved crash or hang again (with ggml's gdb backtrace)")
    p.add_argument("file", help="a crashes/*.json file written by a campaign")
    p.add_argument("--repeat", type=int, default=1, help="runs (call sequences depend on timing)")
    p.add_argument("--timeout", type=float, default=60)
    p.add_argument("--seed-dir", default=None)
    p.add_argument("--mem-mb", type=int, default=6144)
    p.add_argument("--gen-size", type=int, default=32)
    p.add_argument("--no-backtrace", dest="backtrace", action="store_false")
    p.add_argument("--gdb", action="store_true", help="run it once under gdb and print the crashing thread's stack")
    p = sub.add_parser("_direct")  # internal: one saved crash in this process (under gdb)
    p.add_argument("file")
    p.add_argument("--seed-dir", default=None)
    p.add_argument("--gen-size", type=int, default=32)
    p = sub.add_parser("_server")  # internal: the fork server
    for name, kind in (("--mode", str), ("--seed", int), ("--seed-dir", str), ("--out", str), ("--timeout", float),
                       ("--mem-mb", int), ("--gen-size", int), ("--workdir", str)):
        p.add_argument(name, type=kind, required=True)
    args = parser.parse_args(argv)
    if args.command == "_server":
        server_main(args)
        return 0
    if args.command == "_direct":
        return direct(args)
    if args.command == "replay":
        if args.gdb:
            return replay_in_gdb(args)
        args.jobs, args.time_limit = 1, 0
        return replay(args)
    args.mode = args.command
    return campaign(args)


if __name__ == "__main__":
    sys.exit(main())
