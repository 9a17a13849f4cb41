"""The core's context-free tools: ESRGAN upscaling, the Canny preprocessor, conversion to GGUF."""

from __future__ import annotations

import os
from typing import Callable, Optional, Union

import numpy as np

from . import _core
from ._checks import MAX_SIDE, check_bool, check_float, check_int, check_tensor_type_rules, model_file
from ._enums import WeightType
from ._headers import check_component
from ._images import ImageLike, as_rgb, fs_path, native_path
from ._owner import NativeOwner

PathLike = Union[str, bytes, "os.PathLike[str]"]


class Upscaler(NativeOwner):
    """An ESRGAN-family upscaler (sd-cli ``--upscale-model``)::

        with sdcpp_py.Upscaler("RealESRGAN_x4plus.pth") as up:
            big = up.upscale(image)          # (H*4, W*4, 3) uint8

    ``tile_size`` is the core's tile edge in pixels; ``direct`` uses direct convolution.
    """

    def __init__(self, path: PathLike, *, n_threads: Optional[int] = None, tile_size: int = 128,
                 offload_params_to_cpu: bool = False, direct: bool = False) -> None:
        self._native = None
        self.path = model_file("path", path)
        check_component("path", self.path)
        threads = _core.physical_cores() if n_threads is None else check_int("n_threads", n_threads, 1, 1024)
        tile = check_int("tile_size", tile_size, 1, 16384)
        self._native = _core.NativeUpscaler(native_path(self.path),
                                            check_bool("offload_params_to_cpu", offload_params_to_cpu),
                                            check_bool("direct", direct), threads, tile)

    @property
    def factor(self) -> int:
        """The model's own scale factor (e.g. 4)."""
        return self._require_native().factor()

    def upscale(self, image: ImageLike, factor: Optional[int] = None) -> np.ndarray:
        """Upscale an image (numpy, PIL or path) by the model's factor; returns (H * factor, W * factor, 3).

        ``factor``, if given, must be the model's own (``self.factor``): the core always scales by that.
        The output is at most MAX_SIDE pixels a side."""
        native = self._require_native()
        own = native.factor()
        if factor is not None and check_int("factor", factor, 1, 16) != own:
            raise ValueError(f"factor={factor}: this model upscales by {own} only (resize its output for "
                             "another size)")
        pixels = as_rgb(image, "image")
        height, width = pixels.shape[:2]
        if height * own > MAX_SIDE or width * own > MAX_SIDE:
            # The core counts the output's bytes in an int: past ~26,755 pixels a side it overflows.
            raise ValueError(f"image: {width}x{height} upscaled by {own} is {width * own}x{height * own}, more "
                             f"than {MAX_SIDE} pixels a side")
        return native.upscale(pixels, own)

    def cancel(self) -> None:
        """Stop the upscale in flight, and those waiting, on this upscaler: they raise ``sdcpp_py.Cancelled``.
        Any thread, and from a callback or log handler; later calls are unaffected. ``close()`` cancels too."""
        native = self._native
        if native is not None:
            native.cancel()

    def __repr__(self) -> str:
        return f"<sdcpp_py.Upscaler {os.path.basename(self.path)!r}{' closed' if self._native is None else ''}>"



def preprocess_canny(image: ImageLike, *, high_threshold: float = 0.08, low_threshold: float = 0.08,
                     weak: float = 0.8, strong: float = 1.0, inverse: bool = False) -> np.ndarray:
    """The core's Canny edge detector, as sd-cli ``--canny`` applies it to a control image (sd-cli's values are
    the defaults). Returns a new (H, W, 3) uint8 array; the input is not changed."""
    pixels = as_rgb(image, "image")
    return _core.preprocess_canny(pixels, check_float("high_threshold", high_threshold, 0.0),
                                  check_float("low_threshold", low_threshold, 0.0),
                                  check_float("weak", weak, 0.0), check_float("strong", strong, 0.0),
                                  check_bool("inverse", inverse))


def _check_convertible(argument: str, header) -> None:
    """The core's converter aborts (a failed check on a loader thread) on a 0-dimensional tensor of a PyTorch
    file, which loading a model skips: SD1 .ckpt files hold one (model_ema.decay)."""
    if header.format.startswith("torch"):
        for tensor in header.tensors.values():
            if tensor.shape == ():
                raise ValueError(f"{argument}: tensor {tensor.name!r} of this PyTorch file has no dimensions, which "
                                 "the core's converter cannot copy; save the file without it (or as safetensors)")


def convert(src: PathLike, dst: PathLike, *, weight_type: Union[WeightType, str, int, None] = None,
            tensor_type_rules: str = "", vae: Optional[PathLike] = None, convert_name: bool = False,
            progress: Optional[Callable[[int, int, float], object]] = None) -> None:
    """Convert a model file to GGUF with the core's converter (sd-cli ``-M convert``).

    ``weight_type`` (e.g. "q8_0", "f16"; None keeps each tensor's type) and ``tensor_type_rules``
    ("pattern=type,...") choose the output types; ``vae`` merges a separate VAE into the output.
    ``progress(tensors_done, tensors_total, seconds_per_tensor)`` is called on this thread about every 0.2 s.
    The core cannot stop a conversion part-way: an exception from ``progress`` (or Ctrl-C) is raised when
    it returns.

    Raises:
        FileNotFoundError / InvalidComponentError: ``src`` or ``vae`` is missing or malformed.
        ValueError / TypeError: an argument is invalid (the message names it), e.g. a ``tensor_type_rules``
            item that is not ``pattern=type``, names an unknown type or has a pattern the core cannot use.
        SdcppError: the core could not convert (its error lines are in the message).
    """
    source = model_file("src", src)
    _check_convertible("src", check_component("src", source))
    vae_path = b""
    if vae is not None:
        vae_path = model_file("vae", vae)
        _check_convertible("vae", check_component("vae", vae_path))
        vae_path = native_path(vae_path)
    target = fs_path("dst", dst)
    if os.path.isdir(target):
        raise ValueError(f"dst must be a file path, got the directory {target!r}")
    if os.path.exists(target) and not os.path.isfile(target):
        # The core would open it for writing: a FIFO blocks until a reader comes.
        raise ValueError(f"dst: {target!r} exists and is not a regular file")
    parent = os.path.dirname(os.path.abspath(target))
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"dst: no such directory: {parent!r}")
    type_value = _core.SD_TYPE_COUNT if weight_type is None else int(WeightType.coerce(weight_type, "weight_type"))
    rules = check_tensor_type_rules("tensor_type_rules", tensor_type_rules)
    if progress is not None and not callable(progress):
        raise TypeError(f"progress must be callable, not {type(progress).__name__}")
    _core.convert(native_path(source), vae_path, native_path(target), type_value, rules,
                  check_bool("convert_name", convert_name), progress)
