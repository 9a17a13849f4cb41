"""Image inputs: numpy arrays, PIL images or paths, checked and brought to the layout the core reads."""

from __future__ import annotations

import os
import stat
from typing import Sequence, Union

import numpy as np

ImageLike = Union[np.ndarray, "os.PathLike[str]", str, bytes, "PIL.Image.Image"]  # noqa: F821


def fs_path(argument: str, value: object) -> str:
    """A path argument (str, bytes or os.PathLike) as a str. A file name that is not valid UTF-8 (legal on
    Linux) decodes with surrogate escapes (os.fsdecode), which ``native_path`` turns back into its bytes."""
    try:
        path = os.fspath(value)
    except TypeError:
        raise TypeError(f"{argument} must be a str, bytes or os.PathLike, not {type(value).__name__}") from None
    path = os.fsdecode(path)
    if not path:
        raise ValueError(f"{argument} is an empty path")
    if "\0" in path:
        raise ValueError(f"{argument} contains a NUL character, which no file name can hold: {path!r}")
    try:
        os.fsencode(path)
    except UnicodeEncodeError:  # a lone surrogate that is no surrogate escape
        raise ValueError(f"{argument}: {path!r} is not a file name (it cannot be encoded)") from None
    return path


def native_path(path: str) -> bytes:
    """The bytes of a path for the native layer: its std::string fields take bytes as they are, where a str
    holding surrogate escapes (a name that is not UTF-8) could not be converted."""
    return os.fsencode(path)


def regular_file(argument: str, path: str, what: str = "file") -> str:
    """Refuse ``path`` unless it is a regular file (symlinks followed), before anything opens it: open() on a
    FIFO blocks until a writer comes, and a character device can stream without end."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        raise FileNotFoundError(f"{argument}: no such {what}: {path!r}") from None
    except OSError as error:
        raise type(error)(error.errno, f"{argument}: {error.strerror}", path) from None
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(f"{argument}: expected a {what}, got a directory: {path!r}")
    if not stat.S_ISREG(mode):
        raise ValueError(f"{argument}: {path!r} is not a regular file (a FIFO or device would block or never "
                         "end when opened)")
    return path


def _open_path(value, argument: str):
    path = regular_file(argument, fs_path(argument, value), "image file")
    try:
        from PIL import Image
    except ImportError:  # an optional dependency: arrays need nothing
        raise ValueError(f"{argument}: reading the image file {path!r} needs Pillow (pip install pillow); or "
                         "pass the pixels as a numpy array") from None
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except (OSError, Image.DecompressionBombError) as error:
        raise ValueError(f"{argument}: {path!r} is not a readable image ({error})") from None


def _to_array(value, argument: str, pil_mode: str) -> np.ndarray:
    if isinstance(value, (str, bytes, os.PathLike)):
        value = _open_path(value, argument)
    if not isinstance(value, np.ndarray):
        try:
            from PIL import Image
        except ImportError:  # optional: without it no value is a PIL image
            Image = None
        if Image is not None and isinstance(value, Image.Image):
            return pil_to_array(value, argument, pil_mode)
        raise TypeError(f"{argument} must be a numpy array, a PIL image or a path, not {type(value).__name__}")
    if value.dtype != np.uint8:
        raise ValueError(f"{argument} must be uint8 pixels (0-255), got dtype {value.dtype}")
    return value


def pil_to_array(image, argument: str, pil_mode: str) -> np.ndarray:
    """The pixels of a PIL image as uint8: in ``pil_mode``, or (H, W) grey for a grey image of more than 8 bits,
    which PIL's convert would clip to 255 (a 16-bit depth map comes out white); those are scaled instead."""
    mode = image.mode
    if mode == "F":
        # Float pixels have no agreed range (0-1, 0-255, depth in metres): any guess would be silently wrong.
        raise ValueError(f"{argument}: a PIL image of mode 'F' (32-bit floats) has no agreed range; scale it to "
                         "0-255 and pass a uint8 array or a mode 'L' image")
    high_bit = mode == "I" or mode.startswith("I;16")
    try:
        if not high_bit:
            return np.asarray(image.convert(pil_mode))
        pixels = np.asarray(image)  # loads a lazily opened image, as convert does
    except OSError as error:  # a lazily opened image is read only now: a truncated or corrupt file fails here
        raise ValueError(f"{argument}: the PIL image (mode {mode!r}) could not be loaded ({error})") from None
    except ValueError as error:  # a mode PIL cannot convert, such as "La", or "LAB" to "L"
        raise ValueError(f"{argument}: a PIL image of mode {mode!r} cannot be converted to {pil_mode!r} "
                         f"({error}); pass an 'RGB' or 'L' image, or a uint8 array") from None
    if mode == "I":
        # 32-bit integers: what some Pillow versions open a 16-bit PNG as, so read as 16-bit when they fit; values
        # up to 255 are an 8-bit image converted to "I" (PIL's convert kept them).
        low, high = (int(pixels.min()), int(pixels.max())) if pixels.size else (0, 0)
        if low >= 0 and high <= 255:
            return pixels.astype(np.uint8)
        if low < 0 or high > 65535:
            raise ValueError(f"{argument}: a PIL image of mode 'I' (32-bit integers) is read as 16-bit grey "
                             f"(0-65535), but its values span {low}..{high}; scale it to 0-255 and pass a uint8 "
                             "array or a mode 'L' image")
    return (pixels.astype(np.uint16) >> 8).astype(np.uint8)  # 16-bit to 8 by the full range: the high byte


def as_rgb(value: ImageLike, argument: str) -> np.ndarray:
    """A C-contiguous (H, W, 3) uint8 array. Accepts (H, W), (H, W, 1) (grey), (H, W, 3), (H, W, 4) (alpha
    dropped), a PIL image (converted to RGB; 16-bit grey scaled to 8 bits) or an image file path."""
    array = _to_array(value, argument, "RGB")
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ValueError(f"{argument} must have shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got {array.shape}")
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise ValueError(f"{argument} is empty: shape {array.shape}")
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    elif array.shape[2] == 4:
        array = array[:, :, :3]
    return np.ascontiguousarray(array)


def as_mask(value: ImageLike, argument: str) -> np.ndarray:
    """A C-contiguous (H, W, 1) uint8 array: 255 where the image may change, 0 where it is kept."""
    array = _to_array(value, argument, "L")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim != 2:
        raise ValueError(f"{argument} must have shape (H, W) or (H, W, 1), got {array.shape}")
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise ValueError(f"{argument} is empty: shape {array.shape}")
    return np.ascontiguousarray(array[:, :, None])


def as_rgb_list(values: Sequence[ImageLike], argument: str) -> list:
    if isinstance(values, (str, bytes, os.PathLike, np.ndarray)) or not isinstance(values, Sequence):
        raise TypeError(f"{argument} must be a list of images")
    return [as_rgb(value, f"{argument}[{index}]") for index, value in enumerate(values)]


def check_size(array: np.ndarray, argument: str, width: int, height: int) -> None:
    if array.shape[:2] != (height, width):
        raise ValueError(f"{argument} is {array.shape[1]}x{array.shape[0]} (WxH) but the output is {width}x{height}; "
                         "resize it or pass width=/height= to match")
