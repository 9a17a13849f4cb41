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
    """What this build runs on::

        {"built_with": "cpu"|"cuda"|"vulkan"|"metal", "devices": [Device, ...], "default_device": Device,
         "portable_cpu": bool,        # ggml's CPU variants, the best for this machine loaded at import
         "cpu_features": {...},       # what the loaded CPU backend was compiled for, e.g. {"AVX2": "1"}
         "fused_cpu_kernels": [...],  # our fused CPU nodes it has (none without AVX2 + FMA + F16C)
         "cpu_precisions": [...],     # what Context(cpu_precision=...) takes here: "f32", and "bf16" where
                                      # the CPU has AVX512_BF16 and SDCPP_PY_CPU_KERNELS=avx2 is not set
         "cpu_bf16_products": ...}    # what runs those bf16 products: "amx" (Intel AMX tiles, unless
                                      # SDCPP_PY_CPU_KERNELS=avx512), "avx512_bf16", or None
    """
    return {"built_with": _core.BACKEND, "devices": devices(), "default_device": default_device(),
            "portable_cpu": _core.PORTABLE_CPU, "cpu_features": dict(_core.cpu_features()),
            "fused_cpu_kernels": list(_core.fused_cpu_kernels()),
            "cpu_precisions": ["f32", "bf16"] if _core.cpu_bf16_products() else ["f32"],
            "cpu_bf16_products": ("amx" if _core.cpu_amx_bf16_products() else "avx512_bf16")
            if _core.cpu_bf16_products() else None}


def accelerator_missing() -> bool:
    """True when the build has a GPU backend but ggml found no GPU device: work would silently go to the CPU."""
    return _core.BACKEND != "cpu" and all(device.type == "cpu" for device in devices())
