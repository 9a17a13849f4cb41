"""Checks of component files before the core sees them, built on the header reader of ``_formats``.

The core trusts file headers; a malformed one can take the interpreter down. ``check_component`` reads only
the header (never the weights; of a PyTorch file its pickle), so it costs milliseconds on multi-GB files, and
raises ``InvalidComponentError`` (a ValueError) naming the argument, the file and what is wrong, also for a file in
none of the core's formats. This module needs nothing from the compiled core.
"""

from __future__ import annotations

import math

import numpy as np

from ._formats import FileHeader, MalformedFileError, read_header
from ._pickle_headers import read_torch_header


class InvalidComponentError(ValueError):
    """A component file whose header is malformed or does not fit the slot it was given in."""


def check_component(argument: str, path: str) -> FileHeader:
    """Read and check a component's header (safetensors, GGUF, or a PyTorch file's pickle); raise
    InvalidComponentError naming the argument, also for a file in none of the formats the core reads."""
    try:
        header = read_header(path)
        if header is None:
            header = read_torch_header(path)
    except OSError as exc:
        raise InvalidComponentError(f"{argument}: cannot read {path!r}: {exc.strerror or exc}") from None
    except MalformedFileError as exc:
        raise InvalidComponentError(f"{argument}: {exc}") from None
    if header is None:
        # The core would try it as a legacy PyTorch file, reading it whole into memory first.
        reason = "not GGUF, safetensors or a PyTorch file"
        raise InvalidComponentError(f"{argument}: {MalformedFileError(path, reason)}")
    if not header.tensors:
        raise InvalidComponentError(f"{argument}: {MalformedFileError(path, 'it holds no tensors')}")
    return header


# The core reads an embedding file into a ggml context of 100 MiB (conditioner.hpp load_embedding): more aborts.
EMBEDDING_BYTES = 100 * 2**20
_TENSOR_OVERHEAD = 1024  # ggml's bookkeeping per tensor in that context, rounded up


def check_embedding(argument: str, header: FileHeader) -> None:
    """What the core's textual-inversion loader takes without reading out of bounds: F32 tensors (it reads
    them as the CLIP's F32 token embeddings, whatever their type), of rank 1 or 2 (it sizes them from the first
    two dimensions), 100 MiB in all."""
    total = 0
    for tensor in header.tensors.values():
        if tensor.dtype.upper() != "F32":
            raise InvalidComponentError(
                f"{argument}: tensor {tensor.name!r} is {tensor.dtype}; the core reads textual-inversion embeddings "
                f"as F32 only (it would read other types past their end): save the embedding as float32")
        if len(tensor.shape) > 2:
            raise InvalidComponentError(
                f"{argument}: tensor {tensor.name!r} has shape {list(tensor.shape)}; an embedding is a (vectors, "
                f"width) matrix or one vector")
        total += tensor.nbytes + _TENSOR_OVERHEAD
    if total > EMBEDDING_BYTES:
        raise InvalidComponentError(
            f"{argument}: {total / 2**20:.1f} MiB of tensors; the core reads at most 100 MiB of embeddings per file")


# A LoRA's matrix pairs, by the suffixes the core's name conversion accepts: (down, up).
_LORA_PAIRS = ((".lora_down.weight", ".lora_up.weight"), (".lora_A.weight", ".lora_B.weight"),
               (".lora.down.weight", ".lora.up.weight"), (".lora_down", ".lora_up"))
# Types the core cannot read as a float (patch 0012 refuses them in models; a LoRA's loader ignored the failure
# and used uninitialised memory). Safetensors' U8 is skipped by the core's reader.
_NOT_FLOAT = {"I32", "I64", "I8", "I16", "i8", "i16", "i32", "i64", "f64", "q8_1", "q8_K"}
_FLOAT_ITEMS = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "f32": np.float32, "f16": np.float16}


def _row_major(header: FileHeader, shape: tuple) -> tuple:
    if header.format != "gguf":
        return tuple(shape)
    if len(shape) == 1:  # GGUF drops trailing 1s: a rank-1 down matrix (1, in) is stored as (in,)
        shape = (*shape, 1)
    return tuple(reversed(shape))


def _first_value(handle, tensor) -> "float | None":
    """The first value of a float tensor, the one the core reads as an alpha (None where its type has no plain
    layout here)."""
    kind = _FLOAT_ITEMS.get(tensor.dtype)
    if kind is None or tensor.offset < 0:
        return None
    handle.seek(tensor.offset)
    raw = handle.read(np.dtype(kind).itemsize)
    return float(np.frombuffer(raw, kind)[0]) if len(raw) == np.dtype(kind).itemsize else None


def check_lora(argument: str, header: FileHeader) -> None:
    """What the core's LoRA code assumes of a file, checked where the file alone says it: every tensor of a
    float type, each down/up pair of matrices sharing a rank above 0, each LoHa Tucker kernel with its matrix,
    and each alpha or scale one finite number. (Whether the shapes fit the model the core checks at the call.)"""
    tensors = header.tensors
    for tensor in tensors.values():
        # One integer alpha is read as a number (diffusers' kohya export writes int64 ones; the core reads i64
        # from safetensors and PyTorch files as i32, GGUF's i64 not at all).
        integer_alpha = (tensor.name.endswith(".alpha") and math.prod(tensor.shape) == 1
                         and tensor.dtype in ("I32", "I64", "i32"))
        if tensor.dtype in _NOT_FLOAT and not integer_alpha:
            raise InvalidComponentError(f"{argument}: tensor {tensor.name!r} is stored as {tensor.dtype}, which the "
                                        "core cannot read as a float (it would use uninitialised memory)")
    for name, tensor in tensors.items():
        for down_suffix, up_suffix in _LORA_PAIRS:
            if not name.endswith(down_suffix):
                continue
            up = tensors.get(name[: -len(down_suffix)] + up_suffix)
            if up is None:
                break
            down_shape, up_shape = _row_major(header, tensor.shape), _row_major(header, up.shape)
            if len(down_shape) not in (2, 4) or len(up_shape) not in (2, 4):
                raise InvalidComponentError(
                    f"{argument}: {name!r} {list(down_shape)} and {up.name!r} {list(up_shape)}: LoRA matrices "
                    "are 2-D (a linear layer's) or 4-D (a convolution's)")
            if down_shape[0] != up_shape[1] or down_shape[0] == 0:
                raise InvalidComponentError(
                    f"{argument}: {name!r} {list(down_shape)} and {up.name!r} {list(up_shape)} do not share a "
                    "rank above 0 (down is rank x in, up is out x rank)")
            break
    for name in tensors:
        # a LoHa's Tucker kernel is used with its w*_a matrix, which the core transposes without looking for it
        for kernel, partner in ((".hada_t1", ".hada_w1_a"), (".hada_t2", ".hada_w2_a")):
            if name.endswith(kernel) and name[: -len(kernel)] + partner not in tensors:
                raise InvalidComponentError(f"{argument}: {name!r} is a LoHa Tucker kernel without its "
                                            f"{name[: -len(kernel)] + partner!r} (the core would crash on it)")
    alphas = [tensor for name, tensor in tensors.items()
              if name.endswith((".alpha", ".scale")) and not name.endswith("dora_scale")]
    with open(header.path, "rb") as handle:  # once for all of them: a LoRA has one per layer
        for tensor in alphas:
            name = tensor.name
            if math.prod(tensor.shape) < 1:
                raise InvalidComponentError(f"{argument}: {name!r} holds no value (shape {list(tensor.shape)})")
            if header.format == "gguf" and tensor.dtype not in ("f32", "f16", "bf16"):
                raise InvalidComponentError(f"{argument}: {name!r} is stored as {tensor.dtype}; the core reads an "
                                            "alpha as one f32, f16 or bf16 number")
            value = _first_value(handle, tensor)
            if value is not None and not math.isfinite(value):
                raise InvalidComponentError(f"{argument}: {name!r} is {value}, not a finite number")
