"""The option tables: every option of a Context and of a generation, named once.

A row gives the Python keyword, how the value is checked, sd-cli's flags for it and its default. From these
rows come the keyword signatures of ``Context`` and ``Context.generate*``, their checks, the filling of the
native parameter records, the flags of ``sdcpp generate`` and the sd-cli command lines of the test oracle.
Adding an option is one row here plus one field binding in ``bindings/register_params.cpp``.

Defaults are the core's (``sd_ctx_params_init``, ``sd_img_gen_params_init``, ``sd_vid_gen_params_init``, read
through the native records), except the few rows of ``SD_CLI_DEFAULTS`` (where sd-cli sets another value
than the core, and the package follows sd-cli) and ``PACKAGE_DEFAULTS`` (where a long-lived context in a
service needs another value than a one-shot program; each says why).
"""

from __future__ import annotations

import difflib
import inspect
import math
from dataclasses import dataclass
from typing import Any, Dict, Iterable, Mapping, Optional, Tuple

import numpy as np

from . import _core
from ._checks import MAX_SEED, MAX_SIDE, check_bool, check_enum, check_float, check_int, check_sequence
from ._enums import (
    PREDICTION_AUTO, RNG_TYPE_AUTO, SAMPLER_AUTO, SCHEDULER_AUTO, WEIGHT_TYPE_AUTO, CpuPrecision, LoraApplyMode,
    Prediction, Preview, RngType, Sampler, Scheduler, WeightType,
)

CORE_CONTEXT = _core.ContextParams()
CORE_IMAGE = _core.ImageGenParams()
CORE_VIDEO = _core.VideoGenParams()
_FROM_CORE = object()  # a row's default: read the core's initialiser
HIGH_NOISE = "high_noise_"

# Where sd-cli's defaults differ from the core's and the package follows sd-cli (examples/common/common.cpp).
SD_CLI_DEFAULTS: Dict[str, Any] = {
    "seed": 42,  # the core's -1 draws a random seed; a reproducible default suits a library
    "skip_layers": (7, 8, 9),  # the core has no layers; used only when slg_scale > 0
    "high_noise_skip_layers": (7, 8, 9),
    "auto_resize_ref_images": True,  # the core's zeroed record says False; sd-cli has a flag to turn it off
    "clip_skip": -1,  # "the model's": the core's video record is zeroed (0 means the same there)
}

# Where the package differs from both, and why.
PACKAGE_DEFAULTS: Dict[str, Any] = {
    # The core frees each part's weights after its first use, made for one-shot programs; a context here
    # generates many times. (The native ContextParams starts with this already.)
    "free_params_immediately": False,
    # "auto" merges a LoRA into f16 weights and subtracts it after the call: the rounding residue would make
    # later calls drift from what a fresh context makes.
    "lora_apply_mode": LoraApplyMode.AT_RUNTIME,
    # None: load the VAE encoder when the VAE file has one (the core's True would refuse img2img and edits).
    "vae_decode_only": None,
    # None: the number of physical cores, as the core's initialiser computes it.
    "n_threads": None,
    # Only used with a preview callable, which would show nothing with the core's "none".
    "preview_mode": Preview.PROJ,
}


def _float32(value: float) -> float:
    """A 32-bit core default as the short decimal it was written as (0.01, not 0.009999999776)."""
    return float(str(np.float32(value))) if math.isfinite(value) else value


@dataclass(frozen=True)
class Option:
    """One option. ``kind``: path, bool, int, float, enum, text, ints, floats, or other (checked by the code
    that uses it: images, records). ``auto`` is what None means natively ("the core chooses"); without it
    None is refused. ``field`` is the native record's attribute (default: ``name``)."""

    name: str
    kind: str
    flags: Tuple[str, ...] = ()
    low: Optional[float] = None
    high: Optional[float] = None
    enum: Optional[type] = None
    auto: Any = None
    default: Any = _FROM_CORE
    field: Optional[str] = None
    negated_flags: Tuple[str, ...] = ()  # sd-cli flags that set the option to False
    high_noise_flags: Tuple[str, ...] = ()  # sd-cli flags of the high-noise copy (video sampling rows)
    help: str = ""

    def default_from(self, core_record) -> Any:
        if self.name in PACKAGE_DEFAULTS:
            return PACKAGE_DEFAULTS[self.name]
        if self.name in SD_CLI_DEFAULTS:
            return SD_CLI_DEFAULTS[self.name]
        if self.default is not _FROM_CORE:
            return self.default
        value = getattr(core_record, self.field or self.name)
        if self.kind == "float":
            return None if self.auto is not None and math.isinf(value) else _float32(value)
        if self.kind == "enum":
            return None if self.auto is not None and value == self.auto else self.enum(value)
        if self.kind == "ints":
            return tuple(value)
        if self.kind == "int" and self.auto is not None and value == self.auto:
            return None
        return value

    def native(self, value: Any, argument: str) -> Any:
        """``value`` checked (TypeError / ValueError naming ``argument``) as the native field wants it."""
        if value is None and self.auto is not None and self.kind != "enum":
            return self.auto
        low = -math.inf if self.low is None else self.low
        if self.kind == "bool":
            return check_bool(argument, value)
        if self.kind == "int":
            return check_int(argument, value, int(low) if self.low is not None else -2**31,
                             int(self.high) if self.high is not None else 2**31 - 1)
        if self.kind == "float":
            return check_float(argument, value, low, math.inf if self.high is None else self.high)
        if self.kind == "enum":
            return check_enum(argument, value, self.enum, self.auto)
        if self.kind == "ints":
            return [check_int(f"{argument}[{index}]", item, int(low), int(self.high))
                    for index, item in enumerate(check_sequence(argument, value))]
        if self.kind == "floats":
            return [check_float(f"{argument}[{index}]", item, low) for index, item in
                    enumerate(check_sequence(argument, value))]
        return value

    def renamed(self, prefix: str) -> "Option":
        return Option(prefix + self.name, self.kind, self.high_noise_flags, self.low, self.high, self.enum,
                      self.auto, self.default, prefix + (self.field or self.name), help=self.help)


class OptionTable:
    """Rows in signature order, with the defaults of one native record."""

    def __init__(self, rows: Iterable[Option], core_record) -> None:
        self.rows: Dict[str, Option] = {}
        for row in rows:
            assert row.name not in self.rows, row.name
            self.rows[row.name] = row
        self.defaults = {name: row.default_from(core_record) for name, row in self.rows.items()}

    def __iter__(self):
        return iter(self.rows.values())

    def __getitem__(self, name: str) -> Option:
        return self.rows[name]

    def __contains__(self, name: str) -> bool:
        return name in self.rows

    def bind(self, given: Mapping[str, Any], where: str) -> Dict[str, Any]:
        """The defaults overridden by ``given``; an unknown keyword is a TypeError naming close matches."""
        unknown = [name for name in given if name not in self.rows]
        if unknown:
            name = unknown[0]
            close = difflib.get_close_matches(name, self.rows, n=3)
            hint = f"; did you mean {' or '.join(close)}?" if close else ""
            raise TypeError(f"{where}() got an unexpected keyword argument {name!r}{hint}")
        values = dict(self.defaults)
        values.update(given)
        return values

    def signature(self, leading: Tuple[inspect.Parameter, ...] = ()) -> inspect.Signature:
        keywords = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=self.defaults[name],
                                      annotation=_ANNOTATIONS.get(row.kind, inspect.Parameter.empty)
                                      if row.enum is None else f"{row.enum.__name__} | str | int")
                    for name, row in self.rows.items()]
        return inspect.Signature([*leading, *keywords])

    def fill(self, record, values: Mapping[str, Any], names: Iterable[str]) -> None:
        """Check ``names`` of ``values`` and write them into the native ``record``."""
        for name in names:
            row = self.rows[name]
            setattr(record, row.field or name, row.native(values[name], name))


_ANNOTATIONS = {"path": "str | bytes | os.PathLike | None", "bool": "bool", "int": "int", "float": "float",
                "text": "str", "ints": "Sequence[int]", "floats": "Sequence[float] | None"}


def _path(name: str, *flags: str, help: str = "") -> Option:
    return Option(name, "path", flags, default=None, help=help)


def _flag(name: str, *flags: str, negated: Tuple[str, ...] = (), help: str = "") -> Option:
    return Option(name, "bool", flags, negated_flags=negated, help=help)


# -- Context -----------------------------------------------------------------------------------------
# Component slots, in the order of sd_ctx_params_t.
COMPONENT_ROWS = (
    _path("model", "-m", "--model", help="an all-in-one checkpoint"),
    _path("clip_l", "--clip_l"),
    _path("clip_g", "--clip_g"),
    _path("clip_vision", "--clip_vision"),
    _path("t5xxl", "--t5xxl"),
    _path("llm", "--llm", "--qwen2vl", help="the LLM text encoder (Qwen-Image, Flux.2, Z-Image, ...)"),
    _path("llm_vision", "--llm_vision", "--qwen2vl_vision"),
    _path("diffusion_model", "--diffusion-model"),
    _path("high_noise_diffusion_model", "--high-noise-diffusion-model"),
    _path("vae", "--vae"),
    _path("taesd", "--taesd", "--tae"),
    _path("control_net", "--control-net"),
    _path("photo_maker", "--photo-maker"),
)
COMPONENTS = tuple(row.name for row in COMPONENT_ROWS)

CONTEXT_VALUE_ROWS = (
    Option("embeddings", "other", default=None, help="{name: path} or a list of paths (sd-cli: --embd-dir)"),
    Option("lora_dir", "other", ("--lora-model-dir",), default=None),
    Option("tensor_type_rules", "other", ("--tensor-type-rules",), default=""),
    Option("n_threads", "int", ("-t", "--threads"), 1, 1024),
    Option("weight_type", "enum", ("--type",), enum=WeightType, auto=WEIGHT_TYPE_AUTO),
    Option("rng", "enum", ("--rng",), enum=RngType),
    Option("sampler_rng", "enum", ("--sampler-rng",), enum=RngType, auto=RNG_TYPE_AUTO),
    Option("prediction", "enum", ("--prediction",), enum=Prediction, auto=PREDICTION_AUTO),
    Option("lora_apply_mode", "enum", ("--lora-apply-mode",), enum=LoraApplyMode),
    # Ours (sd-cli has no such flag; `sdcpp generate` and `sdcpp serve` take it): "bf16" needs a CPU with
    # AVX512_BF16; the Context refuses it elsewhere.
    Option("cpu_precision", "enum", ("--cpu-precision",), enum=CpuPrecision, default=CpuPrecision.F32,
           help="f32, or bf16: the CPU's matrix products on bfloat16 operands (AVX512_BF16; ~2x, other pixels)"),
)
CONTEXT_FLAG_ROWS = (
    _flag("offload_params_to_cpu", "--offload-to-cpu"),
    _flag("free_params_immediately"),
    _flag("mmap", "--mmap"),
    _flag("keep_clip_on_cpu", "--clip-on-cpu"),
    _flag("keep_vae_on_cpu", "--vae-on-cpu"),
    _flag("keep_control_net_on_cpu", "--control-net-cpu"),
    _flag("flash_attn", "--fa"),
    _flag("diffusion_flash_attn", "--diffusion-fa"),
    _flag("diffusion_conv_direct", "--diffusion-conv-direct"),
    _flag("vae_conv_direct", "--vae-conv-direct"),
    Option("vae_decode_only", "other"),  # None: decided from the VAE file (see PACKAGE_DEFAULTS)
    _flag("tae_preview_only", "--taesd-preview-only"),
    _flag("circular_x", "--circularx", "--circular"),
    _flag("circular_y", "--circulary", "--circular"),
    _flag("force_sdxl_vae_conv_scale", "--force-sdxl-vae-conv-scale"),
    _flag("chroma_use_dit_mask", negated=("--chroma-disable-dit-mask",)),
    _flag("chroma_use_t5_mask", "--chroma-enable-t5-mask"),
    Option("chroma_t5_mask_pad", "int", ("--chroma-t5-mask-pad",), 0, 4096),
    _flag("qwen_image_zero_cond_t", "--qwen-image-zero-cond-t"),
    Option("max_vram", "float", ("--max-vram",), 0.0, help="GiB; 0 disables graph splitting"),
)
CONTEXT = OptionTable(COMPONENT_ROWS + CONTEXT_VALUE_ROWS + CONTEXT_FLAG_ROWS, CORE_CONTEXT)
# What the native ContextParams takes from the table as it is (components and lora_dir/embeddings/
# tensor_type_rules/vae_decode_only are prepared by the Context's model checks).
CONTEXT_NATIVE_FIELDS = tuple(row.name for row in CONTEXT if row.kind in ("bool", "int", "float", "enum"))

# -- Generation --------------------------------------------------------------------------------------
# The sampling record (sd_sample_params_t): images and videos share it; a video's high-noise model has its
# own copy, named with the high_noise_ prefix.
SAMPLING_ROWS = (
    Option("steps", "int", ("--steps",), 1, 10000, high_noise_flags=("--high-noise-steps",)),
    Option("cfg_scale", "float", ("--cfg-scale",), 0.0, high_noise_flags=("--high-noise-cfg-scale",)),
    Option("img_cfg_scale", "float", ("--img-cfg-scale",), 0.0, auto=math.inf,
           high_noise_flags=("--high-noise-img-cfg-scale",), help="None: the same as cfg_scale"),
    Option("guidance", "float", ("--guidance",), 0.0, high_noise_flags=("--high-noise-guidance",)),
    Option("sampler", "enum", ("--sampling-method",), enum=Sampler, auto=SAMPLER_AUTO,
           high_noise_flags=("--high-noise-sampling-method",), help="None: the model's default"),
    Option("scheduler", "enum", ("--scheduler",), enum=Scheduler, auto=SCHEDULER_AUTO),
    Option("eta", "float", ("--eta",), 0.0, auto=math.inf, high_noise_flags=("--high-noise-eta",)),
    Option("flow_shift", "float", ("--flow-shift",), 0.0, auto=math.inf),
    Option("shifted_timestep", "int", ("--timestep-shift",), 0, 1000),
    Option("skip_layers", "ints", ("--skip-layers",), 0, 1024, high_noise_flags=("--high-noise-skip-layers",)),
    Option("slg_scale", "float", ("--slg-scale",), 0.0, high_noise_flags=("--high-noise-slg-scale",)),
    Option("slg_start", "float", ("--skip-layer-start",), 0.0, 1.0,
           high_noise_flags=("--high-noise-skip-layer-start",)),
    Option("slg_end", "float", ("--skip-layer-end",), 0.0, 1.0, high_noise_flags=("--high-noise-skip-layer-end",)),
    Option("custom_sigmas", "floats", ("--sigmas",), 0.0, default=None),
)
SAMPLING = tuple(row.name for row in SAMPLING_ROWS)

_COMMON_FIRST = (
    Option("negative_prompt", "text", ("-n", "--negative-prompt"), default=""),
    Option("init_image", "other", ("-i", "--init-img"), default=None),
)
_IMAGE_INPUTS = (
    Option("mask", "other", ("--mask",), default=None),
    Option("strength", "float", ("--strength",), 0.0, 1.0),
    Option("ref_images", "other", ("-r", "--ref-image"), default=None),
    Option("auto_resize_ref_images", "bool", field="auto_resize_ref_image",
           negated_flags=("--disable-auto-resize-ref-image",)),
    Option("increase_ref_index", "bool", ("--increase-ref-index",)),
    Option("control_image", "other", ("--control-image",), default=None),
    Option("control_strength", "float", ("--control-strength",), 0.0),
    Option("photo_maker", "other", default=None),
    Option("loras", "other", default=None),
    Option("hires", "other", default=None),
    Option("cache", "other", default=None),
)
_SIZE = (
    Option("width", "int", ("-W", "--width"), 1, MAX_SIDE, default=None, help="None: the init image's, else 512"),
    Option("height", "int", ("-H", "--height"), 1, MAX_SIDE, default=None),
)
_SEED = Option("seed", "other", ("-s", "--seed"), -1, MAX_SEED, help="-1 draws a random 63-bit seed")
_CLIP_SKIP = Option("clip_skip", "int", ("--clip-skip",), -1, 64)
_TILING_AND_PREVIEW = (
    Option("vae_tiling", "bool", ("--vae-tiling",)),
    Option("vae_tile_size", "other", ("--vae-tile-size",), default=0, help="int or (x, y); 0: the core's"),
    Option("vae_relative_tile_size", "other", ("--vae-relative-tile-size",), default=0.0,
           help="float or (x, y): < 1 a fraction of the image, >= 1 tiles per side; overrides vae_tile_size"),
    Option("vae_tile_overlap", "float", ("--vae-tile-overlap",), 0.0, 0.9),
    Option("progress", "other", default=None),
    Option("preview", "other", default=None),
    Option("preview_mode", "enum", ("--preview",), enum=Preview),
    Option("preview_interval", "int", ("--preview-interval",), 1, 10000, default=1),
    Option("preview_noisy", "bool", ("--preview-noisy",), default=False),
)
IMAGE = OptionTable(_COMMON_FIRST + _IMAGE_INPUTS + _SIZE + SAMPLING_ROWS + (
    _SEED, Option("batch_count", "int", ("-b", "--batch-count"), 1, 64), _CLIP_SKIP) + _TILING_AND_PREVIEW,
    CORE_IMAGE)

VIDEO = OptionTable(_COMMON_FIRST + (
    Option("end_image", "other", ("--end-img",), default=None),
    Option("control_frames", "other", ("--control-video",), default=None),
    Option("frames", "int", ("--video-frames",), 1, 4096, field="video_frames"),
    Option("strength", "float", ("--strength",), 0.0, 1.0),
    Option("vace_strength", "float", ("--vace-strength",), 0.0),
    Option("moe_boundary", "float", ("--moe-boundary",), 0.0, 1.0),
    Option("loras", "other", default=None),
    Option("cache", "other", default=None),
) + _SIZE + SAMPLING_ROWS + tuple(row.renamed(HIGH_NOISE) for row in SAMPLING_ROWS) + (
    _SEED, _CLIP_SKIP) + _TILING_AND_PREVIEW, CORE_VIDEO)
# The core's -1 high-noise steps: "those of the steps whose sigma is at or above moe_boundary".
assert VIDEO.defaults["high_noise_steps"] == -1
VIDEO.defaults["high_noise_steps"] = None
VIDEO.rows["high_noise_steps"] = Option("high_noise_steps", "int", ("--high-noise-steps",), 1, 10000, auto=-1,
                                        default=None)
