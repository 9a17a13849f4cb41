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
