"""Python enums generated from the core's own name tables (sd_sample_method_name etc.)."""

from __future__ import annotations

import enum
import re
from typing import Optional, Type, TypeVar, Union

from . import _core

E = TypeVar("E", bound="CoreEnum")


class CoreEnum(enum.IntEnum):
    """An enum of the core whose members also answer to the core's own string names."""

    @property
    def core_name(self) -> str:
        return self._core_names_[self.value]  # type: ignore[attr-defined]

    def __str__(self) -> str:
        return self.core_name

    @classmethod
    def coerce(cls: Type[E], value: Union[E, int, str], argument: str) -> E:
        """Accept a member, its int value, its core name ("dpm++2m") or member name ("DPMPP2M")."""
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            wanted = value.strip().lower()
            for member in cls:
                if wanted in (member.core_name.lower(), member.name.lower()):
                    return member
        elif isinstance(value, int) and not isinstance(value, bool):
            try:
                return cls(value)
            except ValueError:
                pass
        valid = ", ".join(repr(member.core_name) for member in cls)
        raise ValueError(f"{argument}={value!r} is not a valid {cls.__name__}; valid values: {valid}")


def _identifier(core_name: str) -> str:
    name = core_name.replace("++", "PP").replace("+", "P")
    name = re.sub(r"[^0-9A-Za-z]+", "_", name).strip("_").upper()
    return name if not name[:1].isdigit() else f"_{name}"


def _make(class_name: str, core_names: list, values: Optional[list] = None, doc: str = "") -> Type[CoreEnum]:
    values = list(range(len(core_names))) if values is None else values
    members = [(_identifier(n), v) for n, v in zip(core_names, values)]
    cls = CoreEnum(class_name, members, module=__name__)  # type: ignore[call-overload]
    cls._core_names_ = dict(zip(values, core_names))
    cls.__doc__ = doc
    return cls


_tables = _core.NAME_TABLES
Sampler = _make("Sampler", _tables["sample_method"], doc="Sampling methods (sd-cli --sampling-method).")
Scheduler = _make("Scheduler", _tables["scheduler"], doc="Noise schedules (sd-cli --scheduler).")
RngType = _make("RngType", _tables["rng_type"], doc="Random number generators (sd-cli --rng).")
Prediction = _make("Prediction", _tables["prediction"], doc="Model prediction types (sd-cli --prediction).")
Preview = _make("Preview", _tables["preview"], doc="Preview modes.")
LoraApplyMode = _make("LoraApplyMode", _tables["lora_apply_mode"], doc="How LoRAs are applied.")
HiresUpscaler = _make("HiresUpscaler", _tables["hires_upscaler"], doc="Hires-fix upscalers.")
CacheMode = _make("CacheMode", list(_core.CACHE_MODES.keys()), list(_core.CACHE_MODES.values()),
                  doc="Step/block caches that skip diffusion computes (sd-cli --cache-mode; no core name table).")
# Only the types the core can convert weights to: ggml aborts the process on the others (q8_1, q8_K, the
# integer types, f64) and the removed repacking types divide by zero.
_CONVERTIBLE = {name: value for name, value in _core.WEIGHT_TYPES.items() if name in _core.TENSOR_RULE_TYPES}
WeightType = _make(
    "WeightType", list(_CONVERTIBLE.keys()), list(_CONVERTIBLE.values()),
    doc="Weight types (ggml types) for loading or converting weights (sd-cli --type).",
)
# Ours, not the core's (patch 0014): "bf16" rounds the operands of the CPU's matrix products to bfloat16,
# summing in f32, where the CPU has AVX512_BF16 (Zen 4, Sapphire Rapids): about twice as fast, not the
# same pixels.
CpuPrecision = _make("CpuPrecision", ["f32", "bf16"],
                     doc="Precision of the matrix products a Context runs on the CPU (Context cpu_precision).")

# Sentinels the core reads as "choose for me" (the *_COUNT value of each C enum).
SAMPLER_AUTO = len(Sampler)
SCHEDULER_AUTO = len(Scheduler)
WEIGHT_TYPE_AUTO = _core.SD_TYPE_COUNT
RNG_TYPE_AUTO = len(RngType)
PREDICTION_AUTO = len(Prediction)
