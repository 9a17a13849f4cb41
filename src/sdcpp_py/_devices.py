"""What this build runs on: its backend and the devices ggml sees."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List

from . import _core


@dataclass(frozen=True)
class Device:
    name: str
    description: str
    type: str  # "cpu", "gpu", "igpu" or "accel"
    backend: str
    memory_free: int  # bytes
    memory_total: int


def devices() -> List[Device]:
    """The devices in ggml's registry for this build (the CPU always; GPUs when built with their backend)."""
    return [Device(**entry) for entry in _core.devices()]


def default_device() -> Device:
    """The device a Context computes on: as the core picks it, the first GPU, else an integrated GPU, else
    the CPU."""
    found = devices()
    for wanted in ("gpu", "igpu", "cpu"):
        for device in found:
            if device.type == wanted:
                return device
    raise RuntimeError("ggml reports no device at all")


def backends() -> dict:
    """``{"built_with": "cpu"|"cuda"|"vulkan"|"metal", "devices": [...], "default_device": Device}``."""
    return {"built_with": _core.BACKEND, "devices": devices(), "default_device": default_device()}


def accelerator_missing() -> bool:
    """True when the build has a GPU backend but ggml found no GPU device: work would silently go to the CPU."""
    return _core.BACKEND != "cpu" and all(device.type == "cpu" for device in devices())
