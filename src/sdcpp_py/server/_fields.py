"""Request fields: the HTTP APIs' names and values turned into ``Context.generate`` keywords, and errors
turned back into the field the client sent. No FastAPI here."""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
import re
from typing import Any, Dict, List, Optional

import numpy as np

from .._enums import Sampler, Scheduler
from .._images import pil_to_array
from .._params import IMAGE

# Rows a JSON value can fill as it is (the API checks it); "other" rows take images, records or callables.
JSON_KINDS = ("int", "float", "bool", "text", "enum", "ints", "floats")
JSON_ROWS = tuple(row.name for row in IMAGE if row.kind in JSON_KINDS) + (
    "seed", "vae_tile_size", "vae_relative_tile_size")
IMAGE_FIELDS = ("init_image", "mask", "control_image")  # base64 images in the native job API

# AUTOMATIC1111's display names -> the core's names. The core's own names are accepted as well.
A1111_SAMPLERS = {
    "Euler": "euler", "Euler a": "euler_a", "Heun": "heun", "DPM2": "dpm2", "DPM++ 2S a": "dpm++2s_a",
    "DPM++ 2M": "dpm++2m", "LCM": "lcm", "iPNDM": "ipndm", "iPNDM_v": "ipndm_v", "TCD": "tcd",
    "Res Multistep": "res_multistep", "Res 2s": "res_2s", "ER SDE": "er_sde",
}
A1111_SCHEDULERS = {
    "Automatic": None, "Normal": "discrete", "Karras": "karras", "Exponential": "exponential",
    "Align Your Steps": "ays", "align_your_steps": "ays", "Align Your Steps GITS": "gits",
    "SGM Uniform": "sgm_uniform", "Simple": "simple", "KL Optimal": "kl_optimal", "Smoothstep": "smoothstep",
    "Bong Tangent": "bong_tangent",
}
_SAMPLERS = {label.lower(): core for label, core in A1111_SAMPLERS.items()}
_SCHEDULERS = {label.lower(): core for label, core in A1111_SCHEDULERS.items()}
# The display names /sdapi/v1/samplers and /schedulers list (the first A1111 name of each core name).
SAMPLER_LABELS = {core: label for label, core in reversed(list(A1111_SAMPLERS.items()))}
SCHEDULER_LABELS = {core: label for label, core in reversed(list(A1111_SCHEDULERS.items())) if core}
_SIZE = re.compile(r"^\s*(\d{1,6})\s*[xX]\s*(\d{1,6})\s*$")


class FieldError(Exception):
    """A request the server refuses: HTTP ``status`` and the ``field`` it is about (None: the request)."""

    def __init__(self, status: int, field: Optional[str], message: str, headers: Optional[dict] = None):
        super().__init__(message)
        self.status, self.field, self.message, self.headers = status, field, message, headers or {}


def sampler(field: str, value: Any):
    """A sampler by the core's name or A1111's ("Euler a"); None for "the model's default"."""
    if value is None:
        return None
    if isinstance(value, str):
        value = _SAMPLERS.get(value.strip().lower(), value)
    return _coerce(Sampler, field, value)


def scheduler(field: str, value: Any):
    if value is None:
        return None
    if isinstance(value, str):
        key = value.strip().lower()
        if key in _SCHEDULERS:
            value = _SCHEDULERS[key]
            if value is None:
                return None
    return _coerce(Scheduler, field, value)


def sampler_and_scheduler(field: str, value: Any):
    """A1111 before 1.9 named the schedule in the sampler ("DPM++ 2M Karras"): (sampler, scheduler or None)."""
    if isinstance(value, str):
        for label, core in _SCHEDULERS.items():
            if core and value.lower().endswith(" " + label) and value[:-len(label) - 1].strip():
                try:
                    return sampler(field, value[:-len(label) - 1]), core
                except FieldError:
                    break
    return sampler(field, value), None


def _coerce(enum, field: str, value: Any):
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise FieldError(400, field, f"{field} must be a name, not {type(value).__name__}")
    try:
        return enum.coerce(value, field)
    except ValueError as error:
        labels = SAMPLER_LABELS if enum is Sampler else SCHEDULER_LABELS
        raise FieldError(400, field, f"{error}; or A1111's: {', '.join(repr(v) for v in labels.values())}") \
            from None


def size(field: str, value: Any):
    """"WxH" as (width, height); None for "auto" or no value."""
    if value is None or value == "auto":
        return None
    match = _SIZE.match(value) if isinstance(value, str) else None
    if match is None:
        raise FieldError(400, field, f"{field}={value!r}: expected WIDTHxHEIGHT, e.g. '512x512'")
    return int(match.group(1)), int(match.group(2))


def decode_base64(field: str, text: Any) -> bytes:
    if not isinstance(text, str):
        raise FieldError(400, field, f"{field} must be a base64 string, not {type(text).__name__}")
    if text.startswith("data:"):  # a data URL: data:image/png;base64,....
        text = text.partition(",")[2]
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise FieldError(400, field, f"{field} is not valid base64") from None


def _open(field: str, data: bytes, max_pixels: int):
    """An image file opened with its header read and nothing decoded; refused over ``max_pixels``, since a
    small file can hold a huge image."""
    from PIL import Image

    try:
        picture = Image.open(io.BytesIO(data))
    except Exception as error:  # Pillow raises many kinds for broken files; all mean "not an image"
        raise FieldError(400, field, f"{field} is not an image Pillow can read ({type(error).__name__})") from None
    if picture.width * picture.height > max_pixels:
        picture.close()
        raise FieldError(400, field, f"{field} is {picture.width}x{picture.height}, more than the "
                                     f"server's {max_pixels} pixels")
    return picture


def image(field: str, data: bytes, mode: str, max_pixels: int) -> np.ndarray:
    """The pixels of an encoded image file: (H, W, 3) uint8 for ``mode`` "RGB"; for a mask (H, W), 255 where
    the image may change: white, or for "openai_mask" the transparent pixels, for "mask" (A1111's) the opaque
    pixels of an image whose alpha is not all opaque."""
    with _open(field, data, max_pixels) as picture:
        try:
            picture.load()
            if mode == "RGB":
                pixels = pil_to_array(picture, field, "RGB")  # 16-bit grey scaled, not clipped white
                return np.repeat(pixels[:, :, None], 3, axis=2) if pixels.ndim == 2 else pixels
            if picture.mode in ("RGBA", "LA", "PA") or "transparency" in picture.info:
                alpha = np.asarray(picture.convert("RGBA"))[:, :, 3]
                if mode == "openai_mask":  # OpenAI: transparent pixels are the ones to edit
                    return np.where(alpha == 0, 255, 0).astype(np.uint8)
                if alpha.min() < 255:  # A1111: an alpha mask, opaque where to repaint
                    return np.where(alpha > 128, 255, 0).astype(np.uint8)
            return pil_to_array(picture, field, "L")
        except ValueError as error:  # a mode that has no 8-bit reading (float pixels), named by pil_to_array
            raise FieldError(400, field, str(error)) from None
        except Exception as error:
            raise FieldError(400, field, f"{field} is not an image Pillow can read ({type(error).__name__})") \
                from None


def base64_image(field: str, text: Any, mode: str, max_pixels: int) -> np.ndarray:
    return image(field, decode_base64(field, text), mode, max_pixels)


def base64_images(field: str, texts: Any, max_count: int, max_pixels: int, max_total: int) -> List[np.ndarray]:
    """A list of base64 RGB images, its count and its pixels together checked from the files' headers before
    any is decoded: copies of a small file of a huge plain image would otherwise decode to gigabytes."""
    if not isinstance(texts, list):
        raise FieldError(400, field, f"{field} must be a list of base64 images")
    if len(texts) > max_count:
        raise FieldError(400, field, f"{field}: {len(texts)} images, over this server's limit of {max_count}")
    files = [decode_base64(f"{field}[{index}]", text) for index, text in enumerate(texts)]
    total = 0
    for index, data in enumerate(files):
        with _open(f"{field}[{index}]", data, max_pixels) as picture:
            total += picture.width * picture.height
    if total > max_total:
        raise FieldError(400, field, f"{field}: {total} pixels together, over this server's limit of {max_total}")
    return [image(f"{field}[{index}]", data, "RGB", max_pixels) for index, data in enumerate(files)]


def json_object(data: bytes) -> Dict[str, Any]:
    """A request body as a JSON object, refused (400 naming the field) where it holds what no JSON answer can
    hold again: NaN or Infinity (JSON has neither) or text that is not Unicode (a lone surrogate, "\\ud800")."""
    try:
        value = json.loads(data, parse_constant=_NonFinite)
    except (ValueError, RecursionError):
        raise FieldError(400, None, "the body is not valid JSON") from None
    if not isinstance(value, dict):
        raise FieldError(400, None, "the body must be a JSON object")
    try:  # the answer's own encoding, at C speed; the slower search for the field only when it fails
        json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except RecursionError:
        raise FieldError(400, None, "the body is nested too deeply") from None
    except (TypeError, ValueError):
        raise _unencodable(value) from None
    return value


class _NonFinite:
    """NaN, Infinity or -Infinity where the body had it, to be refused naming its field."""

    def __init__(self, name: str):
        self.name = name


def _unencodable(body: Dict[str, Any]) -> FieldError:
    """The error naming a field of ``body`` (its path: "styles[0]") that JSON cannot encode."""
    # Depth first with a stack of its own (json.loads nests deeper than a recursive walk could); an entry is
    # (value, its key, its parent's entry), so a path is built for the culprit only.
    stack: List[tuple] = [(body, None, None)]
    while stack:
        entry = stack.pop()
        item = entry[0]
        if isinstance(item, dict):
            for key, child in item.items():
                if not _is_unicode(key):
                    path = _path((None, key, entry))
                    return FieldError(400, path, f"the field name \"{path}\" is not valid Unicode text "
                                                 "(it holds a lone surrogate)")
                stack.append((child, key, entry))
        elif isinstance(item, list):
            stack.extend((child, index, entry) for index, child in enumerate(item))
        elif isinstance(item, _NonFinite):
            path = _path(entry)
            return FieldError(400, path, f"{path}: {item.name} is not a number JSON allows")
        elif isinstance(item, float) and not math.isfinite(item):
            path = _path(entry)
            return FieldError(400, path, f"{path}: the number is too large (infinite as a double)")
        elif isinstance(item, str) and not _is_unicode(item):
            path = _path(entry)
            return FieldError(400, path, f"{path} is not valid Unicode text (it holds a lone surrogate)")
    return FieldError(400, None, "the body holds a value JSON cannot encode")


def _path(entry: tuple) -> str:
    """The path of a stack entry of ``_unencodable``: "styles[0]", "override_settings.key"."""
    parts = []
    while entry[2] is not None:
        key, entry = entry[1], entry[2]
        if isinstance(key, int):
            parts.append(f"[{key}]")
        else:
            name = key if _is_unicode(key) else json.dumps(key)[1:-1]  # escaped: the answer must hold it
            parts.append(name if entry[2] is None else "." + name)
    return "".join(reversed(parts))


def _is_unicode(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


_ARGUMENT = re.compile(r"^(?:generate\(\) got an unexpected keyword argument '([A-Za-z_0-9]+)'|([A-Za-z_]+))")


def from_api_error(error: Exception, fields: Dict[str, str]) -> FieldError:
    """A TypeError/ValueError of ``Context.generate`` (its message starts with the argument) as a 400 naming
    the field the client sent; ``fields`` maps keyword names to the API's field names."""
    message = str(error)
    match = _ARGUMENT.match(message)
    name = (match.group(1) or match.group(2)) if match else None
    if name not in fields and name not in IMAGE and name != "prompt":
        name = None
    field = fields.get(name, name)
    if field is not None and field != name:
        message = f"{field}: {message}"
    return FieldError(400, field, message)
