"""Option records of a generation call: LoRAs, hires fix, step caches, PhotoMaker.

Defaults are read from the core's own initialisers (sd_img_gen_params_init and friends), never restated.
"""

from __future__ import annotations

import math
import os
import re
import stat
from dataclasses import dataclass, field, fields
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import _core
from ._enums import CacheMode, HiresUpscaler
from ._checks import FLOAT32_MAX, INT32_MAX, check_bool, check_float, check_int
from ._images import fs_path

PathLike = Union[str, "os.PathLike[str]"]
_CORE = _core.ImageGenParams()  # the core's defaults


@dataclass(frozen=True)
class Lora:
    """A LoRA applied for one call: ``Lora("style.safetensors", 0.8)``. ``high_noise`` applies it to the
    high-noise diffusion model of a two-model video setup only (refused where a call has none)."""

    path: PathLike
    multiplier: float = 1.0
    high_noise: bool = False


@dataclass(frozen=True)
class Hires:
    """Hires fix: generate, upscale (latent or pixel, or an ESRGAN model), then refine at the larger size.

    ``width``/``height`` of 0 mean ``scale`` times the first pass; ``steps`` of 0 means the call's steps.
    """

    upscaler: Union[HiresUpscaler, str] = HiresUpscaler(_CORE.hires_upscaler)
    scale: float = _CORE.hires_scale
    width: int = _CORE.hires_target_width
    height: int = _CORE.hires_target_height
    steps: int = _CORE.hires_steps
    denoising_strength: float = _CORE.hires_denoising_strength
    model_path: Optional[PathLike] = None
    tile_size: int = _CORE.hires_upscale_tile_size


def _cache_default(name: str):
    return field(default=getattr(_CORE, f"cache_{name}"))


@dataclass(frozen=True)
class Cache:
    """A step or block cache (sd-cli ``--cache-mode``): reuses diffusion outputs to skip computes.

    Field names follow ``sd_cache_params_t``; ``reuse_threshold`` of inf means the mode's own default.
    """

    mode: Union[CacheMode, str] = CacheMode.EASYCACHE
    reuse_threshold: float = _cache_default("reuse_threshold")
    start_percent: float = _cache_default("start_percent")
    end_percent: float = _cache_default("end_percent")
    error_decay_rate: float = _cache_default("error_decay_rate")
    use_relative_threshold: bool = _cache_default("use_relative_threshold")
    reset_error_on_compute: bool = _cache_default("reset_error_on_compute")
    Fn_compute_blocks: int = _cache_default("Fn_compute_blocks")
    Bn_compute_blocks: int = _cache_default("Bn_compute_blocks")
    residual_diff_threshold: float = _cache_default("residual_diff_threshold")
    max_warmup_steps: int = _cache_default("max_warmup_steps")
    max_cached_steps: int = _cache_default("max_cached_steps")
    max_continuous_cached_steps: int = _cache_default("max_continuous_cached_steps")
    taylorseer_n_derivatives: int = _cache_default("taylorseer_n_derivatives")
    taylorseer_skip_interval: int = _cache_default("taylorseer_skip_interval")
    scm_mask: str = ""
    scm_policy_dynamic: bool = _cache_default("scm_policy_dynamic")
    spectrum_w: float = _cache_default("spectrum_w")
    spectrum_m: int = _cache_default("spectrum_m")
    spectrum_lam: float = _cache_default("spectrum_lam")
    spectrum_window_size: int = _cache_default("spectrum_window_size")
    spectrum_flex_window: float = _cache_default("spectrum_flex_window")
    spectrum_warmup_steps: int = _cache_default("spectrum_warmup_steps")
    spectrum_stop_percent: float = _cache_default("spectrum_stop_percent")

    def apply(self, request) -> None:
        """Write these fields into an ImageGenParams/VideoGenParams, checking them (TypeError for a wrong
        type, ValueError for a bad value, as every other argument)."""
        request.cache_mode = int(CacheMode.coerce(self.mode, "cache.mode"))
        for spec in fields(self):
            if spec.name in ("mode", "scm_mask"):
                continue
            value = getattr(self, spec.name)
            argument = f"cache.{spec.name}"
            if spec.type == "bool":
                value = check_bool(argument, value)
            elif spec.type == "int":
                value = check_int(argument, value, -1, INT32_MAX)  # -1: no limit (max_cached_steps, ...)
            else:
                default = getattr(_CORE, f"cache_{spec.name}")
                if math.isinf(default) and isinstance(value, (float, np.floating)) and value == default:
                    value = default  # the core's own "none given" (reuse_threshold): the mode's default
                else:
                    value = check_float(argument, value)
            setattr(request, f"cache_{spec.name}", value)
        if not isinstance(self.scm_mask, str):
            raise TypeError(f"cache.scm_mask must be a str of comma-separated 0/1 flags, not "
                            f"{type(self.scm_mask).__name__}")
        if any(part.strip() not in ("0", "1") for part in self.scm_mask.split(",") if self.scm_mask):
            raise ValueError(f"cache.scm_mask={self.scm_mask!r} must be comma-separated 0/1 flags")
        request.cache_scm_mask = self.scm_mask


@dataclass(frozen=True)
class PhotoMaker:
    """PhotoMaker identity conditioning (needs ``photo_maker=`` on the Context): the face images (at least
    one), the precomputed id embedding file PhotoMaker v2 also needs, and the style strength in percent
    (the steps before that share of the sampling use the prompt without the id)."""

    id_images: Sequence = ()
    id_embed_path: Optional[PathLike] = None
    style_strength: float = _CORE.pm_style_strength


PHOTO_MAKER_TRIGGER = "img"  # conditioner.hpp: the core's hard-coded trigger word
# What ends a stretch of prompt text the core tokenizes on its own (util.cpp parse_prompt_attention):
# escapes stay text; "(", ")", "[", "]", ":weight)" and BREAK start a new stretch.
_ATTENTION = re.compile(r"\\[()\[\]\\]|:[+-]?[.\d]+\)|[()\[\]]|\bBREAK\b")
# The core's CLIP word split (clip_tokenizer.cpp token_split, ASCII classes as std::regex has them).
_CLIP_WORDS = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[a-z]+|[0-9]|[^\sa-z0-9]+", re.ASCII | re.IGNORECASE)


def photo_maker_prompt_problem(prompt: str) -> Optional[str]:
    """Why the core cannot run PhotoMaker on ``prompt``, or None.  The core needs the trigger word "img"
    exactly once, as a word of its own, right after the class word it stacks the id embeddings on
    ("a photo of a man img"); otherwise it aborts the process (GGML_ASSERT, or indexes before the
    token list).  Conservative: a weighted stretch that the core would merge with its neighbour is
    still read on its own."""
    stretches, current, end = [], [], 0
    for m in _ATTENTION.finditer(prompt):
        current.append(prompt[end:m.start()])
        if m.group().startswith("\\"):
            current.append(m.group()[1:])  # an escaped bracket is text
        else:
            stretches.append("".join(current))
            current = []
        end = m.end()
    current.append(prompt[end:])
    stretches.append("".join(current))
    found = [(stretch, k) for stretch in stretches
             for k, word in enumerate(_CLIP_WORDS.findall(stretch)) if word.lower() == PHOTO_MAKER_TRIGGER]
    hint = f'put it once right after a class word, as in "a photo of a man {PHOTO_MAKER_TRIGGER}"'
    if not found:
        return f"the prompt {prompt!r} lacks the trigger word {PHOTO_MAKER_TRIGGER!r}: {hint}"
    if len(found) > 1:
        return f"the prompt {prompt!r} has the trigger word {PHOTO_MAKER_TRIGGER!r} {len(found)} times: {hint}"
    if found[0][1] == 0:
        return (f"the trigger word {PHOTO_MAKER_TRIGGER!r} in {prompt!r} has no class word before it in its "
                f"stretch of text: {hint}")
    return None


_PROMPT_LORA = re.compile(r"<lora:([^:>]+):([^>]+)>")
_LORA_EXTENSIONS = (".gguf", ".safetensors", ".pt")
_HIGH_NOISE_PREFIX = "|high_noise|"


def prompt_loras(prompt: str, lora_dir: PathLike) -> Tuple[str, List[Lora]]:
    """Take sd-cli's ``<lora:name:multiplier>`` tags out of ``prompt``; ``name`` is a file inside ``lora_dir``
    (extension optional: .gguf, .safetensors, .pt); ``|high_noise|name`` targets the high-noise model.
    Repeated names add their multipliers; the LoRAs come sorted by path, as sd-cli's.

    Unlike sd-cli, a tag names a file inside ``lora_dir`` only: a service passes its users' prompts through,
    and an absolute name or a ``..`` would let a prompt open any file the process can (a FIFO would block it).
    Symlinks inside ``lora_dir`` are followed wherever they point: the administrator put them there (model
    stores link their files), which a prompt cannot do.

    Raises ValueError for a multiplier that is not a finite number, a name reaching outside ``lora_dir`` or
    a file that is not a regular file, and FileNotFoundError for a missing file, where sd-cli would drop the
    tag with a warning.
    """
    base = os.path.normpath(os.path.abspath(fs_path("lora_dir", lora_dir)))
    totals: Dict[Tuple[str, bool], float] = {}
    for match in _PROMPT_LORA.finditer(prompt):
        tag, raw_name, raw_multiplier = match.group(0), match.group(1), match.group(2)
        try:
            multiplier = float(raw_multiplier)
        except ValueError:
            raise ValueError(f"prompt: {tag!r} has a multiplier that is not a number") from None
        if not math.isfinite(multiplier) or abs(multiplier) > FLOAT32_MAX:
            raise ValueError(f"prompt: {tag!r} has a multiplier that is not a finite number")
        high_noise = raw_name.startswith(_HIGH_NOISE_PREFIX)
        if high_noise:
            raw_name = raw_name[len(_HIGH_NOISE_PREFIX):]
        path = _lora_in_dir(tag, raw_name, base)
        key = (path, high_noise)
        totals[key] = totals.get(key, 0.0) + multiplier
    for (path, _), total in totals.items():
        if abs(total) > FLOAT32_MAX:
            raise ValueError(f"prompt: the multipliers of the LoRA {os.path.basename(path)!r} add up to {total:g}, "
                             "which is not finite as the core's 32-bit float")
    cleaned = _PROMPT_LORA.sub("", prompt)
    loras = [Lora(path, multiplier, high_noise) for (path, high_noise), multiplier in sorted(totals.items())]
    return cleaned, loras


def _lora_in_dir(tag: str, name: str, base: str) -> str:
    """The regular file a prompt tag names inside ``base`` (already normalised), checked before anything
    opens it."""
    separators = [os.sep] + ([os.altsep] if os.altsep else [])
    parts = re.split("|".join(re.escape(s) for s in separators), name)
    outside = f"prompt: {tag!r}: a LoRA tag names a file inside lora_dir (no absolute path, no '..')"
    if "\0" in name:
        raise ValueError(f"prompt: {tag!r} contains a NUL character")
    if not name or os.path.isabs(name) or ".." in parts:
        raise ValueError(outside)
    path = os.path.normpath(os.path.join(base, name))
    if os.path.commonpath([base, path]) != base:
        raise ValueError(outside)
    not_regular = None
    for candidate in (path, *(path + ext for ext in _LORA_EXTENSIONS)):
        try:
            mode = os.stat(candidate).st_mode
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as error:  # a name too long, a symlink loop, no permission: the prompt's problem
            raise ValueError(f"prompt: {tag!r}: {candidate!r}: {error.strerror or error}") from None
        if stat.S_ISREG(mode):
            return candidate
        not_regular = not_regular or candidate
    if not_regular is not None:
        raise ValueError(f"prompt: {tag!r}: {not_regular!r} is not a regular file")
    raise FileNotFoundError(f"prompt: {tag!r}: no LoRA file {path!r} (tried {', '.join(_LORA_EXTENSIONS)})")
