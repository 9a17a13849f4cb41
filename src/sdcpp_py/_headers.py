"""Checks of component files before the core sees them, built on the header reader of ``_formats``.

The core trusts file headers; a malformed one can take the interpreter down. ``check_component`` reads only
the header (never the weights), so it costs milliseconds on multi-GB files, and raises
``InvalidComponentError`` (a ValueError) naming the argument, the file and what is wrong. Other formats
(.ckpt, .pt) are left to the core. This module needs nothing from the compiled core.
"""

from __future__ import annotations

from ._formats import FileHeader, MalformedFileError, read_header


class InvalidComponentError(ValueError):
    """A component file whose header is malformed or does not fit the slot it was given in."""


def check_component(argument: str, path: str) -> FileHeader | None:
    """Read and check a component's header; raise InvalidComponentError naming the argument."""
    try:
        header = read_header(path)
    except OSError as exc:
        raise InvalidComponentError(f"{argument}: cannot read {path!r}: {exc.strerror or exc}") from None
    except MalformedFileError as exc:
        raise InvalidComponentError(f"{argument}: {exc}") from None
    if header is not None and not header.tensors:
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
