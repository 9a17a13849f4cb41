"""A minimal PNG writer (numpy only, so the install check and the CLI need no Pillow)."""

from __future__ import annotations

import os
import struct
import zlib

import numpy as np

_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _keyword(key: str) -> bytes:
    # PNG keywords are 1-79 Latin-1 bytes and end at the first NUL, in tEXt and iTXt alike.
    try:
        encoded = key.encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError(f"PNG text key {key!r}: must be Latin-1") from None
    if not 1 <= len(encoded) <= 79 or b"\0" in encoded:
        raise ValueError(f"PNG text key {key!r}: must be 1 to 79 characters without NUL")
    return encoded


def text_chunk(key: str, value: str) -> bytes:
    """``tEXt`` when the value is Latin-1, else ``iTXt`` (uncompressed, no language tag, UTF-8 text), so that
    no character is lost."""
    keyword = _keyword(key)
    try:
        return _chunk(b"tEXt", keyword + b"\0" + value.encode("latin-1"))
    except UnicodeEncodeError:
        flags = b"\0\0"  # compression flag and method: uncompressed
        empty = b"\0"  # an empty language tag or translated keyword
        return _chunk(b"iTXt", keyword + b"\0" + flags + empty + empty + value.encode("utf-8", "backslashreplace"))


def encode_png(image: np.ndarray, text: dict[str, str] | None = None) -> bytes:
    """PNG bytes of an (H, W, C) uint8 image, C 1 (grey), 3 (RGB) or 4 (RGBA), with ``text`` as text chunks."""
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4) or image.dtype != np.uint8:
        raise ValueError(f"PNG: expected an (H, W, 1|3|4) uint8 image, got {image.shape} {image.dtype}")
    height, width, channels = image.shape
    color_type = {1: 0, 3: 2, 4: 6}[channels]
    # Filter type 0 (none) in front of every row.
    rows = np.hstack([np.zeros((height, 1), np.uint8), np.ascontiguousarray(image).reshape(height, width * channels)])
    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    texts = b"".join(text_chunk(key, value) for key, value in (text or {}).items())
    return (_SIGNATURE + _chunk(b"IHDR", header) + texts + _chunk(b"IDAT", zlib.compress(rows.tobytes()))
            + _chunk(b"IEND", b""))


def write_png(path: str | os.PathLike[str], image: np.ndarray, text: dict[str, str] | None = None) -> None:
    """Write ``image`` as a PNG file; see encode_png."""
    data = encode_png(image, text)  # encode first: a bad key or image leaves no half-written file
    with open(path, "wb") as file:
        file.write(data)
