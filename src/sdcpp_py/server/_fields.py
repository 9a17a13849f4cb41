"""Request fields: the HTTP APIs' names and values turned into ``Context.generate`` keywords, and errors
turned back into the field the client sent. No FastAPI here."""

from __future__ import annotations

import base64
import binascii
import io
import re
from typing import Any, Dict, Optional

import numpy as np

from .._enums import Sampler, Scheduler
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


def image(field: str, data: bytes, mode: str, max_pixels: int) -> np.ndarray:
    """The pixels of an encoded image file: (H, W, 3) uint8 for ``mode`` "RGB"; for a mask (H, W), 255 where
    the image may change: white, or for "openai_mask" the transparent pixels, for "mask" (A1111's) the opaque
    pixels of an image whose alpha is not all opaque."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as picture:
            # Refused before decoding: a small file can hold a huge image.
            if picture.width * picture.height > max_pixels:
                raise FieldError(400, field, f"{field} is {picture.width}x{picture.height}, more than the "
                                 f"server's {max_pixels} pixels")
            picture.load()
            if mode == "RGB":
                return np.asarray(picture.convert("RGB"))
            if picture.mode in ("RGBA", "LA", "PA") or "transparency" in picture.info:
                alpha = np.asarray(picture.convert("RGBA"))[:, :, 3]
                if mode == "openai_mask":  # OpenAI: transparent pixels are the ones to edit
                    return np.where(alpha == 0, 255, 0).astype(np.uint8)
                if alpha.min() < 255:  # A1111: an alpha mask, opaque where to repaint
                    return np.where(alpha > 128, 255, 0).astype(np.uint8)
            return np.asarray(picture.convert("L"))
    except FieldError:
        raise
    except Exception as error:  # Pillow raises many kinds for broken files; all mean "not an image"
        raise FieldError(400, field, f"{field} is not an image Pillow can read ({type(error).__name__})") from None


def base64_image(field: str, text: Any, mode: str, max_pixels: int) -> np.ndarray:
    return image(field, decode_base64(field, text), mode, max_pixels)


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
