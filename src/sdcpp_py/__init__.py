"""sdcpp_py: stable-diffusion.cpp from Python, with model components loaded from separate files.

    import sdcpp_py
    with sdcpp_py.Context(diffusion_model="flux1-schnell-q4_0.gguf", clip_l="clip_l.safetensors",
                          t5xxl="t5xxl_q8_0.gguf", vae="ae.safetensors") as ctx:
        images = ctx.txt2img("a lighthouse at dusk", width=1024, height=1024, steps=4, seed=7)
"""

from __future__ import annotations

import atexit
import logging
import os

from . import _core

if _core.PORTABLE_CPU:
    # A portable wheel carries ggml's CPU variants beside _core: load the best for this CPU before anything
    # asks ggml for a backend (its own search looks beside the Python executable, not here).
    for _line in _core._load_backends(os.path.dirname(os.path.abspath(_core.__file__))):
        logging.getLogger("sdcpp_py").debug("%s", _line.rstrip())
from ._context import COMPONENTS, Context, GenerationResult
from ._devices import Device, backends, default_device, devices
from ._core import Cancelled, SdcppError, core_commit, core_patches, core_version, physical_cores, system_info
from ._headers import InvalidComponentError
from ._inspect import ComponentInfo, inspect
from ._enums import (
    CacheMode, CpuPrecision, HiresUpscaler, LoraApplyMode, Prediction, Preview, RngType, Sampler, Scheduler,
    WeightType,
)
from ._options import Cache, Hires, Lora, PhotoMaker
from ._split import SplitResult, split
from ._tools import Upscaler, convert, preprocess_canny

__version__ = "0.1.0"
BACKEND: str = _core.BACKEND

# The core logs through the "sdcpp_py" logger; stay quiet unless the application configures logging.
logging.getLogger("sdcpp_py").addHandler(logging.NullHandler())
atexit.register(_core._shutdown)
if hasattr(os, "register_at_fork"):
    # Only the forking thread lives on in a child: it gets a core thread of its own when it first needs one.
    os.register_at_fork(after_in_child=_core._reset_after_fork)

__all__ = [
    "BACKEND",
    "COMPONENTS",
    "Cache",
    "CacheMode",
    "CpuPrecision",
    "Cancelled",
    "ComponentInfo",
    "Context",
    "Device",
    "GenerationResult",
    "Hires",
    "HiresUpscaler",
    "InvalidComponentError",
    "Lora",
    "LoraApplyMode",
    "PhotoMaker",
    "Prediction",
    "Preview",
    "RngType",
    "Sampler",
    "Scheduler",
    "SdcppError",
    "SplitResult",
    "Upscaler",
    "WeightType",
    "__version__",
    "backends",
    "core_commit",
    "core_patches",
    "convert",
    "core_version",
    "default_device",
    "devices",
    "inspect",
    "physical_cores",
    "preprocess_canny",
    "split",
    "system_info",
]
