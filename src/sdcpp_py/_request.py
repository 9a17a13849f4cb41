"""Request building: the keyword arguments of ``Context.generate*``, checked, as the native parameter records.

Nothing here touches a native context, so a call refused for a bad argument leaves the context as it was.
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable, Dict, Optional, Sequence

import numpy as np

from . import _core
from ._checks import (
    MAX_SIDE, check_bool, check_callable, check_float, check_int, check_prompt, check_sequence,
    model_file, resolve_seed,
)
from ._enums import CacheMode, HiresUpscaler, Prediction, Preview, Scheduler
from ._headers import check_component, check_lora
from ._images import as_mask, as_rgb, as_rgb_list, check_size, native_path
from ._model import ModelFacts, _align_up, spatial_multiple
from ._options import Cache, Hires, Lora, PhotoMaker, photo_maker_prompt_problem, prompt_loras
from ._params import HIGH_NOISE, IMAGE, SAMPLING, VIDEO, OptionTable

Values = Dict[str, Any]
MAX_LORA_MULTIPLIER = 100.0


def image_request(prompt: str, values: Values, facts: ModelFacts, lora_dir: Optional[str]):
    """(ImageGenParams, preview arguments) for ``generate``, every argument checked."""
    request = _core.ImageGenParams()
    _common(request, prompt, values)
    init = None if values["init_image"] is None else as_rgb(values["init_image"], "init_image")
    width, height = _size(request, values, init)
    needs_encoder = []
    if init is not None:
        check_size(init, "init_image", width, height)
        request.set_init_image(init)
        needs_encoder.append("init_image")
    if values["mask"] is not None:
        if init is None:
            raise ValueError("mask needs init_image: the mask says which pixels of init_image may change")
        mask = as_mask(values["mask"], "mask")
        check_size(mask, "mask", width, height)
        request.set_mask_image(mask)
    IMAGE.fill(request, values, ("strength", "auto_resize_ref_images", "increase_ref_index"))
    if values["ref_images"] is not None:
        ref_images = as_rgb_list(values["ref_images"], "ref_images")
        if request.auto_resize_ref_image:
            _check_ref_image_resize(ref_images, width, height, facts.architecture)
        request.set_ref_images(ref_images)
        needs_encoder.append("ref_images")
    if values["control_image"] is not None:
        if "control_net" not in facts.components:
            raise ValueError("control_image needs a ControlNet: create the Context with control_net=")
        control = as_rgb(values["control_image"], "control_image")
        check_size(control, "control_image", width, height)
        request.set_control_image(control)
    IMAGE.fill(request, values, ("control_strength",))
    photo_maker = values["photo_maker"]
    if photo_maker is not None:
        _apply_photo_maker(request, photo_maker, facts)
    if values["hires"] is not None and _apply_hires(request, values["hires"], facts):
        needs_encoder.append("hires (pixel-space upscaler)")
    _apply_cache(request, values["cache"])
    if needs_encoder and facts.vae_decode_only:
        raise ValueError(f"{needs_encoder[0]} needs the VAE encoder, which this Context did not load "
                         "(vae_decode_only=True)")
    request.loras = _loras(request, values["loras"], lora_dir, high_noise_model=False)
    _check_photo_maker_prompt(request.prompt, photo_maker, facts)
    sampling(IMAGE, request, values)
    _check_scheduler(values, facts, ("scheduler",))
    _check_flow_shift(request, facts, hires=request.hires_enabled)
    if request.hires_enabled:
        _check_hires_schedule(request, _hires_base_steps(request, img2img=init is not None))
    IMAGE.fill(request, values, ("batch_count",))
    request.seed = resolve_seed(values["seed"], request.batch_count)
    IMAGE.fill(request, values, ("clip_skip",))
    return request, _tiling_and_preview(IMAGE, request, values)


def video_request(prompt: str, values: Values, facts: ModelFacts, lora_dir: Optional[str],
                  supports_video: Callable[[], bool]):
    """(VideoGenParams, preview arguments) for ``generate_video``, every argument checked;
    ``supports_video`` asks the native context whether its model makes videos."""
    request = _core.VideoGenParams()
    _common(request, prompt, values)
    if not supports_video():
        raise ValueError("this Context's model does not generate video (load a video model such as Wan)")
    init = None if values["init_image"] is None else as_rgb(values["init_image"], "init_image")
    width, height = _size(request, values, init)
    facts.check_video_inputs(init_image=values["init_image"], end_image=values["end_image"],
                             control_frames=values["control_frames"])
    for name in ("init_image", "end_image"):
        if values[name] is not None:
            array = init if name == "init_image" else as_rgb(values[name], name)
            check_size(array, name, width, height)
            getattr(request, f"set_{name}")(array)
    if values["control_frames"] is not None:
        arrays = as_rgb_list(values["control_frames"], "control_frames")
        for index, array in enumerate(arrays):
            check_size(array, f"control_frames[{index}]", width, height)
        request.set_control_frames(arrays)
    uses_encoder = values["init_image"] is not None or values["end_image"] is not None or values["control_frames"]
    if uses_encoder and facts.vae_decode_only:
        raise ValueError("video inputs need the VAE encoder, which this Context did not load "
                         "(vae_decode_only=True)")
    VIDEO.fill(request, values, ("frames", "strength", "vace_strength", "moe_boundary"))
    request.loras = _loras(request, values["loras"], lora_dir,
                           high_noise_model="high_noise_diffusion_model" in facts.components)
    _apply_cache(request, values["cache"])
    sampling(VIDEO, request, values)
    sampling(VIDEO, request, values, HIGH_NOISE)
    _check_scheduler(values, facts, ("scheduler", HIGH_NOISE + "scheduler"))
    _check_flow_shift(request, facts)  # the core sets the shift from the main record only
    request.seed = resolve_seed(values["seed"], 1)
    VIDEO.fill(request, values, ("clip_skip",))
    return request, _tiling_and_preview(VIDEO, request, values)


def sampling(table: OptionTable, request, values: Values, prefix: str = "") -> None:
    """The sampling record's fields, or its high-noise copy's with ``prefix``. None is "leave the core's" only
    where the row's own default is None (custom_sigmas); elsewhere the row's check refuses it."""
    sigmas_name = prefix + "custom_sigmas"
    if sigmas_name in values and values[sigmas_name] is not None:
        sigmas = check_sequence(sigmas_name, values[sigmas_name])  # once: it may be an iterator
        if len(sigmas) < 2:
            # The core runs len - 1 steps, and takes an empty list as "use the scheduler".
            raise ValueError(f"{sigmas_name}: need at least 2 values (one step), got {len(sigmas)}; pass None "
                             "for the scheduler's")
        values = {**values, sigmas_name: sigmas}
    table.fill(request, values, [prefix + name for name in SAMPLING if values[prefix + name] is not None
                                 or table.defaults[prefix + name] is not None or table[prefix + name].auto is not None])


# The models the AYS scheduler has noise levels for (the core's SD1.x and SDXL families; SVD is not loadable here).
# For SD2 its interpolation started from no levels (SIGSEGV; patch 0031 made that all-ones sigmas); for any other
# model the core logs an error and samples with every sigma 0: an all-white image, returned as a success.
AYS_ARCHITECTURES = ("SD1", "SDXL")
# UNet families the core samples with eps / v / EDM-v denoisers; it gives every DiT family a flow denoiser.
UNET_ARCHITECTURES = ("SD1", "SD2", "SDXL")
FLOW_PREDICTIONS = (Prediction.SD3_FLOW, Prediction.FLUX_FLOW, Prediction.FLUX2_FLOW)


def flow_denoiser(facts: ModelFacts) -> Optional[bool]:
    """Whether the core samples this Context's model with a flow denoiser (sigmas in [0, 1]); None if unknown."""
    if facts.prediction is not None:
        return facts.prediction in FLOW_PREDICTIONS
    if facts.architecture is None:
        return None
    return facts.architecture not in UNET_ARCHITECTURES


def _check_scheduler(values: Values, facts: ModelFacts, names: Sequence[str]) -> None:
    """AYS and GITS are tables of noise levels made for SD's eps / v denoisers (sigma up to ~14.6): a flow
    denoiser's sigmas run from 1 to 0: GITS gave it sigmas far outside that range and AYS all zeros (a white
    image), each returned as a success."""
    for name in names:
        if values[name] is None:
            continue
        scheduler = Scheduler.coerce(values[name], name)
        if scheduler not in (Scheduler.AYS, Scheduler.GITS):
            continue
        if flow_denoiser(facts):
            model = f"a {facts.architecture} model" if facts.architecture else "this model"
            how = "" if facts.prediction is None else f" (prediction={Prediction(facts.prediction).core_name!r})"
            raise ValueError(f"{name}={scheduler.core_name!r}: its sigmas are SD's (eps or v prediction, up to ~14.6), "
                             f"and {model} is sampled by flow{how}, sigmas from 1 to 0; choose another scheduler")
        if scheduler == Scheduler.AYS and facts.architecture is not None \
                and facts.architecture not in AYS_ARCHITECTURES:
            raise ValueError(f"{name}='ays': the AYS scheduler has noise levels for SD1.x and SDXL models only, and "
                             f"this Context's model is {facts.architecture}; choose another scheduler")


# The models the core gives a Flux flow denoiser, whose shift is an exponent: sigma = e^shift / (e^shift + 1/t - 1)
# in 32-bit floats, so past ln(largest float) = 88.72 every sigma was inf / inf, NaN, and the image all white.
FLUX_SHIFT_ARCHITECTURES = ("Flux.1", "Chroma", "Chroma Radiance", "Ovis-Image")
# The SD3-style flow denoiser's sigma is shift t / (1 + (shift - 1) t): at t = 1 it is shift / 0 when shift - 1
# rounds to -1 in floats (a shift of 2^-25 or less, 0 included): a NaN or inf first sigma, a white image.


def _shift_kind(facts: ModelFacts) -> Optional[str]:
    """Which flow denoiser the core gives the model ("flux", "flux2", "sd3"), None for none or unknown."""
    if facts.prediction is not None:
        return {Prediction.FLUX_FLOW: "flux", Prediction.FLUX2_FLOW: "flux2",
                Prediction.SD3_FLOW: "sd3"}.get(Prediction(facts.prediction))
    if not flow_denoiser(facts):
        return None
    return "flux" if facts.architecture in FLUX_SHIFT_ARCHITECTURES else \
        "flux2" if facts.architecture == "Flux.2" else "sd3"


def _check_flow_shift(request, facts: ModelFacts, hires: bool = False) -> None:
    """Refuse a flow shift that makes the core's sigmas NaN, or that the model's denoiser never reads. The shift is
    read only where the core makes sigmas: the schedule (not with custom sigmas), a hires pass's, and the
    easycache / ucache step ranges."""
    if request.custom_sigmas and not hires and request.cache_mode not in (CacheMode.EASYCACHE, CacheMode.UCACHE):
        return
    shift = request.flow_shift
    kind = _shift_kind(facts)
    model = f"the {facts.architecture} model" if facts.prediction is None else \
        f"prediction={Prediction(facts.prediction).core_name!r}"
    if math.isinf(shift):  # "the model's"
        if facts.prediction is not None and kind in ("flux", "sd3"):
            # The core's default shift is set only where it picks the prediction itself: overridden, it is inf.
            raise ValueError(f"{model} needs flow_shift= (the core sets a default shift only with the model's own "
                             "prediction; without one every sigma is NaN and the image white): e.g. 3.0 for "
                             "SD3-style flow, 1.15 for Flux")
        return
    if flow_denoiser(facts) is False:  # the core sets a shift on flow denoisers only
        raise ValueError(f"flow_shift={shift:g}: {model} is not sampled by flow (its denoiser has no shift, so the "
                         "value would be ignored); leave flow_shift out")
    if kind == "flux2" and not request.custom_sigmas:
        # Flux2FlowDenoiser sets its shift from the image size and steps where it makes sigmas, over a given one (with
        # custom sigmas it makes none, and the easycache / ucache step ranges read the given shift)
        raise ValueError(f"flow_shift={shift:g}: {model} computes its own shift from the image size and step count "
                         "(a given one would be ignored); leave flow_shift out")
    if kind == "flux":
        with np.errstate(over="ignore"):
            overflows = not np.isfinite(np.exp(np.float32(shift)))
        if overflows:
            raise ValueError(f"flow_shift={shift:g}: with {model} the shift is an exponent (e^flow_shift) in 32-bit "
                             "floats, which overflow past 88.72 (every sigma NaN, a white image)")
    elif kind == "sd3" and np.float32(1) + (np.float32(shift) - np.float32(1)) == 0:  # the core's floats at t = 1
        raise ValueError(f"flow_shift={shift:g}: with {model} the first sigma is flow_shift / (1 + (flow_shift - 1)), "
                         "which divides by 0 in 32-bit floats (a NaN or infinite sigma, a white image); use a shift "
                         "above 2^-25 (about 3e-8), e.g. 3.0")


def _hires_base_steps(request, img2img: bool) -> int:
    """The steps the core scales for the hires pass when hires.steps is 0: the first pass's after its cuts
    (stable-diffusion.cpp: SamplePlan::resolve, then the img2img cut). With n sigmas (custom, else steps + 1) it
    runs min(steps, n - 1); img2img at strength < 1 keeps the sigmas from index steps - t_enc - 1 on."""
    sigmas = len(request.custom_sigmas) if request.custom_sigmas else request.steps + 1
    steps = min(request.steps, sigmas - 1)
    if img2img and np.float32(request.strength) < 1:
        t_enc = int(np.float32(steps) * np.float32(request.strength))
        if t_enc == steps:
            t_enc -= 1
        steps = sigmas - steps + t_enc
    return steps


def _check_hires_schedule(request, base: int) -> None:
    """The hires pass schedules base / denoising_strength steps and runs the last strength share of them (the
    core's float arithmetic). Past 10000, the most ``steps`` takes, the schedulers' float grids leave their
    tables (reads before the core's sigma table; LCM's uint32 index wraps past ~86 million) and the schedule
    alone takes seconds and hundreds of MB."""
    if request.hires_steps > 0:
        base = request.hires_steps
    strength = np.float32(request.hires_denoising_strength)  # at least 1e-4 (_apply_hires)
    scheduled = np.floor(np.float32(base) / strength)  # the core's static_cast<int>
    if not scheduled <= 10000:
        raise ValueError(f"hires: {base} steps at denoising_strength={request.hires_denoising_strength:g} schedule "
                         f"{float(scheduled):.0f} steps to run the last {request.hires_denoising_strength:g} of them; "
                         "at most 10000: raise denoising_strength or lower hires.steps")


def _common(request, prompt, values: Values) -> None:
    check_prompt("prompt", prompt)
    check_prompt("negative_prompt", values["negative_prompt"])
    check_callable("progress", values["progress"], "progress(step, steps, seconds)")
    check_callable("preview", values["preview"], "preview(step, frames, is_noisy)")
    request.prompt = prompt
    request.negative_prompt = values["negative_prompt"]


def _size(request, values: Values, init) -> tuple:
    """Width and height: given, else the init image's, else the core's 512."""
    width, height = values["width"], values["height"]
    if width is None and height is None and init is not None:
        width, height = init.shape[1], init.shape[0]
    request.width = check_int("width", request.width if width is None else width, 1, MAX_SIDE)
    request.height = check_int("height", request.height if height is None else height, 1, MAX_SIDE)
    return request.width, request.height


def _check_ref_image_resize(ref_images: list, width: int, height: int, architecture: Optional[str]) -> None:
    """Refuse a reference image that the core's auto-resize (stable-diffusion.cpp, "auto resize ref images")
    would bring to a side of 0: its interpolate then throws inside the core, which leaves the Context unusable.
    The arithmetic is the core's: an int64 quotient under the square root, doubles after it, std::round."""
    if architecture is None:  # the core's multiple and rounding factor unknown: refuse what any of them would
        configurations = [(multiple, factor) for multiple in (1, 8, 16, 32, 64) for factor in (16, 32)]
    else:
        configurations = [(spatial_multiple(architecture), 32 if architecture == "Qwen-Image" else 16)]
    for index, image in enumerate(ref_images):
        ref_height, ref_width = image.shape[:2]
        for multiple, factor in configurations:
            # The core resizes to about the pixel count of the output as it aligns it, at most 1024 * 1024.
            pixels = min(1024 * 1024, _align_up(width, multiple) * _align_up(height, multiple))
            resized_width = math.sqrt(pixels * ref_width // ref_height)
            resized_height = resized_width * ref_height / ref_width
            resized_width = _round_half_away(resized_width / factor) * factor
            resized_height = _round_half_away(resized_height / factor) * factor
            if min(resized_width, resized_height) < 1:
                why = "a side of 0 pixels"
            elif max(resized_width, resized_height) > MAX_SIDE:
                why = f"a side over the largest, {MAX_SIDE}"
            else:
                continue
            raise ValueError(f"ref_images[{index}] is {ref_width}x{ref_height} (WxH): auto-resizing it to about the "
                             f"pixel count of the {width}x{height} output would make it "
                             f"{resized_width}x{resized_height}, {why}; use a less extreme aspect ratio, or "
                             "auto_resize_ref_images=False")


def _round_half_away(value: float) -> int:
    """std::round of a non-negative double (Python's round goes to even; floor(x + 0.5) misrounds
    0.49999999999999994)."""
    whole = math.floor(value)
    return whole + 1 if value - whole >= 0.5 else whole


def _tiling_and_preview(table: OptionTable, request, values: Values) -> tuple:
    """Fill the VAE tiling fields; return the native call's (preview mode, interval, noisy)."""
    table.fill(request, values, ("vae_tiling",))
    request.vae_tile_size_x, request.vae_tile_size_y = _pair("vae_tile_size", values["vae_tile_size"],
                                                             lambda a, v: check_int(a, v, 0, MAX_SIDE))
    request.vae_tile_rel_size_x, request.vae_tile_rel_size_y = _pair(
        "vae_relative_tile_size", values["vae_relative_tile_size"], lambda a, v: check_float(a, v, 0.0, MAX_SIDE))
    table.fill(request, values, ("vae_tile_overlap",))
    mode = Preview.coerce(values["preview_mode"], "preview_mode")
    if values["preview"] is not None and mode == Preview.NONE:
        raise ValueError("preview_mode='none' with a preview callable: choose 'proj', 'vae' or 'tae'")
    return (int(mode), check_int("preview_interval", values["preview_interval"], 1, 10000),
            check_bool("preview_noisy", values["preview_noisy"]))


def _pair(argument: str, value, check) -> tuple:
    """A number for both sides, or (x, y)."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{argument}={value!r} must be a number or (x, y)")
        return check(argument, value[0]), check(argument, value[1])
    number = check(argument, value)
    return number, number


def _apply_cache(request, cache) -> None:
    if cache is None:
        return
    if not isinstance(cache, Cache):
        raise TypeError(f"cache must be an sdcpp_py.Cache, not {type(cache).__name__}")
    cache.apply(request)


def _apply_photo_maker(request, photo_maker, facts: ModelFacts) -> None:
    if not isinstance(photo_maker, PhotoMaker):
        raise TypeError(f"photo_maker must be an sdcpp_py.PhotoMaker, not {type(photo_maker).__name__}")
    if "photo_maker" not in facts.components:
        raise ValueError("photo_maker needs the PhotoMaker model: create the Context with photo_maker=")
    if not photo_maker.id_images:
        # Without them the core switches PhotoMaker off after planning the merge step, then aborts.
        raise ValueError("photo_maker.id_images is empty: PhotoMaker needs at least one id image")
    request.set_pm_id_images(as_rgb_list(photo_maker.id_images, "photo_maker.id_images"))
    if photo_maker.id_embed_path is not None:
        request.pm_id_embed_path = native_path(model_file("photo_maker.id_embed_path", photo_maker.id_embed_path))
    request.pm_style_strength = check_float("photo_maker.style_strength", photo_maker.style_strength, 0.0, 100.0)


def _check_photo_maker_prompt(prompt: str, photo_maker, facts: ModelFacts) -> None:
    """Refuse what would abort the process inside the core's PhotoMaker path."""
    if photo_maker is None:
        if "photo_maker" in facts.components:
            # The core plans the id-conditioned steps before it sees there are no id images.
            raise ValueError("this Context has a PhotoMaker model, so every call needs "
                             "photo_maker=sdcpp_py.PhotoMaker(id_images=[...]) (the core aborts without it); "
                             "use a Context without photo_maker= for plain generation")
        return
    problem = photo_maker_prompt_problem(prompt)
    if problem:
        raise ValueError(f"photo_maker: {problem}")


def _apply_hires(request, hires, facts: ModelFacts) -> bool:
    """Fill the hires fields; True when the upscaler works on pixels (and so needs the VAE encoder)."""
    if not isinstance(hires, Hires):
        raise TypeError(f"hires must be an sdcpp_py.Hires, not {type(hires).__name__}")
    upscaler = HiresUpscaler.coerce(hires.upscaler, "hires.upscaler")
    if upscaler == HiresUpscaler.NONE:
        raise ValueError("hires.upscaler='none' disables the hires fix: pass hires=None instead")
    request.hires_enabled = True
    request.hires_upscaler = int(upscaler)
    request.hires_scale = check_float("hires.scale", hires.scale, 0.0, 16.0)
    request.hires_target_width = check_int("hires.width", hires.width, 0, MAX_SIDE)
    request.hires_target_height = check_int("hires.height", hires.height, 0, MAX_SIDE)
    facts.check_hires_size(request)
    request.hires_steps = check_int("hires.steps", hires.steps, 0, 10000)
    strength = check_float("hires.denoising_strength", hires.denoising_strength, 0.0, 1.0)
    if strength == 0.0:
        raise ValueError("hires.denoising_strength=0.0 refines nothing: use a value in (0, 1]")
    if np.float32(strength) < np.float32(1e-4):
        raise ValueError(f"hires.denoising_strength={strength:g} is below the core's smallest, 0.0001 (it would "
                         "use 0.0001 instead)")
    request.hires_denoising_strength = strength
    request.hires_upscale_tile_size = check_int("hires.tile_size", hires.tile_size, 1, 16384)
    if upscaler == HiresUpscaler.MODEL:
        if hires.model_path is None:
            raise ValueError("hires.upscaler='model' needs hires.model_path (an ESRGAN model)")
        path = model_file("hires.model_path", hires.model_path)
        check_component("hires.model_path", path)
        request.hires_model_path = native_path(path)
    elif hires.model_path is not None:
        raise ValueError(f"hires.model_path is only used with upscaler='model', not {upscaler.core_name!r}")
    return upscaler in (HiresUpscaler.MODEL, HiresUpscaler.LANCZOS, HiresUpscaler.NEAREST)


def _loras(request, loras, lora_dir: Optional[str], high_noise_model: bool) -> list:
    """The explicit ``loras``, then those named in the prompt when the Context has a ``lora_dir`` (their
    tags are removed from the prompt, as sd-cli does). ``high_noise_model``: whether the Context has a
    high-noise diffusion model for ``high_noise`` LoRAs to apply to."""
    entries = _lora_entries(loras, high_noise_model=high_noise_model)
    if lora_dir is not None:
        request.prompt, from_prompt = prompt_loras(request.prompt, lora_dir)
        entries += _lora_entries(from_prompt,
                                 [f"prompt <lora:{os.path.basename(lora.path)}>" for lora in from_prompt],
                                 high_noise_model=high_noise_model)
    # The core keeps one multiplier per file (the last given): the same file twice adds up instead.
    totals: Dict[tuple, float] = {}
    for argument, path, multiplier, high_noise in entries:
        key = (path, high_noise)
        totals[key] = totals.get(key, 0.0) + multiplier
        if abs(totals[key]) > MAX_LORA_MULTIPLIER:
            # Merged into f16 weights ("immediately", and "auto" on f16 models) a huge one overflows them, and
            # taking it out again leaves them changed: every later image of the Context comes out white.
            raise ValueError(f"{argument}: a LoRA multiplier of {totals[key]:g} (its uses in this call added up); "
                             f"the largest is {MAX_LORA_MULTIPLIER:g} either way")
    return [_core.LoraSpec(path, multiplier, high_noise) for (path, high_noise), multiplier in totals.items()]


def _lora_entries(loras, labels: Optional[Sequence[str]] = None, high_noise_model: bool = False) -> list:
    """(argument, native path, multiplier, high_noise) of each LoRA, checked; ``labels`` name each in messages
    (default ``loras[i]``). A ``high_noise`` LoRA is refused unless ``high_noise_model``: the core would look
    for its weights under the high-noise model's prefix, match none and change nothing."""
    if loras is None:
        return []
    if isinstance(loras, (str, bytes, os.PathLike, Lora)) or not isinstance(loras, Sequence):
        raise TypeError("loras must be a list of sdcpp_py.Lora or paths")
    entries = []
    for index, lora in enumerate(list(loras)):
        if not isinstance(lora, Lora):
            lora = Lora(lora)
        argument = f"loras[{index}]" if labels is None else labels[index]
        path = model_file(f"{argument}.path", lora.path)
        header = check_component(f"{argument}.path", path)
        if header is not None:
            check_lora(f"{argument}.path", header)
        multiplier = check_float(f"{argument}.multiplier", lora.multiplier)
        high_noise = check_bool(f"{argument}.high_noise", lora.high_noise)
        if high_noise and not high_noise_model:
            raise ValueError(f"{argument}.high_noise=True applies the LoRA to a high-noise diffusion model, and "
                             "this call has none (only generate_video on a Context with "
                             "high_noise_diffusion_model= has one)")
        entries.append((argument, native_path(path), multiplier, high_noise))
    return entries
