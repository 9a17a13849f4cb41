"""`Context`: one loaded model made of separately given component files."""

from __future__ import annotations

import math
import os
import secrets
from pathlib import Path
from typing import Callable, Iterable, Mapping, Optional, Sequence, Union

import numpy as np

from . import _core
from ._headers import check_component
from ._inspect import classify_tensors
from ._enums import (
    Preview, PREDICTION_AUTO, RNG_TYPE_AUTO, SAMPLER_AUTO, SCHEDULER_AUTO, WEIGHT_TYPE_AUTO,
    LoraApplyMode, Prediction, RngType, Sampler, Scheduler, WeightType,
)

PathLike = Union[str, "os.PathLike[str]"]
ProgressCallback = Callable[[int, int, float], object]
PreviewCallback = Callable[[int, np.ndarray, bool], object]

# Component slots, in the order of sd_ctx_params_t.
COMPONENTS = (
    "model", "clip_l", "clip_g", "clip_vision", "t5xxl", "llm", "llm_vision", "diffusion_model",
    "high_noise_diffusion_model", "vae", "taesd", "control_net", "photo_maker",
)

MAX_SEED = 2**63 - 1
# Diffusion-model architectures that never carry their VAE in the same file.
VAE_IS_A_SEPARATE_FILE = ("Flux.1", "SD3")
MAX_SIDE = 16384


class GenerationResult(list):
    """The images of one call (a list of (H, W, 3) uint8 arrays) and the seed that made them.

    Image i of a batch was made with seed + i.
    """

    seed: int

    def __init__(self, images: Iterable[np.ndarray], seed: int):
        super().__init__(images)
        self.seed = seed


def _resolve_path(argument: str, value: PathLike) -> str:
    try:
        path = os.fspath(value)
    except TypeError:
        raise TypeError(f"{argument} must be a str or os.PathLike, not {type(value).__name__}") from None
    if not isinstance(path, str):
        path = os.fsdecode(path)
    if not path:
        raise ValueError(f"{argument} is an empty path")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{argument}: no such file: {path!r}")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{argument}: expected a model file, got a directory: {path!r}")
    return path


def _check_int(argument: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{argument} must be an int, not {type(value).__name__}")
    if not low <= int(value) <= high:
        raise ValueError(f"{argument}={value} is out of range [{low}, {high}]")
    return int(value)


def _check_float(argument: str, value: object, low: float = -math.inf, high: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{argument} must be a number, not {type(value).__name__}")
    number = float(value)
    if math.isnan(number) or not low <= number <= high:
        raise ValueError(f"{argument}={value} is out of range [{low}, {high}]")
    return number


def _embedding_pairs(embeddings) -> list:
    if embeddings is None:
        return []
    if isinstance(embeddings, Mapping):
        items = list(embeddings.items())
    else:
        items = [(Path(os.fspath(p)).stem, p) for p in embeddings]
    pairs = [(str(name), _resolve_path(f"embeddings[{name!r}]", path)) for name, path in items]
    for name, path in pairs:
        check_component(f"embeddings[{name!r}]", path)
    return pairs


class Context:
    """A stable-diffusion.cpp model assembled from component files.

    Give either ``model`` (an all-in-one checkpoint) or ``diffusion_model`` plus the parts it needs
    (text encoders, VAE). Every argument is keyword-only; scalar defaults are those of the core's
    ``sd_ctx_params_init``. The weights are loaded with the GIL released.

    Raises:
        FileNotFoundError: a component path does not exist (the message names the argument).
        InvalidComponentError: a safetensors/GGUF header is malformed (a ValueError naming the argument).
        ValueError: no model or no text encoder was given, or an option has an invalid value.
        SdcppError: the core could not build a context; the message carries the core's error lines.
    """

    def __init__(
        self,
        *,
        model: Optional[PathLike] = None,
        diffusion_model: Optional[PathLike] = None,
        high_noise_diffusion_model: Optional[PathLike] = None,
        clip_l: Optional[PathLike] = None,
        clip_g: Optional[PathLike] = None,
        clip_vision: Optional[PathLike] = None,
        t5xxl: Optional[PathLike] = None,
        llm: Optional[PathLike] = None,
        llm_vision: Optional[PathLike] = None,
        vae: Optional[PathLike] = None,
        taesd: Optional[PathLike] = None,
        control_net: Optional[PathLike] = None,
        photo_maker: Optional[PathLike] = None,
        embeddings: Union[Mapping[str, PathLike], Sequence[PathLike], None] = None,
        tensor_type_rules: str = "",
        n_threads: Optional[int] = None,
        weight_type: Union[WeightType, str, int, None] = None,
        rng: Union[RngType, str, int] = RngType.CUDA,
        sampler_rng: Union[RngType, str, int, None] = None,
        prediction: Union[Prediction, str, int, None] = None,
        lora_apply_mode: Union[LoraApplyMode, str, int] = LoraApplyMode.AUTO,
        offload_params_to_cpu: bool = False,
        mmap: bool = False,
        keep_clip_on_cpu: bool = False,
        keep_vae_on_cpu: bool = False,
        keep_control_net_on_cpu: bool = False,
        flash_attn: bool = False,
        diffusion_flash_attn: bool = False,
        diffusion_conv_direct: bool = False,
        vae_conv_direct: bool = False,
        vae_decode_only: bool = True,
        tae_preview_only: bool = False,
        circular_x: bool = False,
        circular_y: bool = False,
        force_sdxl_vae_conv_scale: bool = False,
        chroma_use_dit_mask: bool = True,
        chroma_use_t5_mask: bool = False,
        chroma_t5_mask_pad: int = 1,
        qwen_image_zero_cond_t: bool = False,
        max_vram: float = 0.0,
    ) -> None:
        self._native = None
        given = {
            "model": model, "clip_l": clip_l, "clip_g": clip_g, "clip_vision": clip_vision, "t5xxl": t5xxl,
            "llm": llm, "llm_vision": llm_vision, "diffusion_model": diffusion_model,
            "high_noise_diffusion_model": high_noise_diffusion_model, "vae": vae, "taesd": taesd,
            "control_net": control_net, "photo_maker": photo_maker,
        }
        if model is None and diffusion_model is None:
            raise ValueError("no model given: pass model= (an all-in-one checkpoint) or diffusion_model=")
        self.components = {name: _resolve_path(name, path) for name, path in given.items() if path is not None}
        headers = {name: check_component(name, path) for name, path in self.components.items()}
        text_encoders = ("clip_l", "clip_g", "t5xxl", "llm")
        if model is None and not any(name in self.components for name in text_encoders):
            # The core loads such a model, then dereferences a missing encoder at the first prompt.
            raise ValueError("diffusion_model needs at least one text encoder: pass clip_l=, clip_g=, t5xxl= or "
                             "llm= (whichever the model was trained with)")
        dit_header = headers.get("diffusion_model")
        if model is None and "vae" not in self.components and dit_header is not None:
            role, architecture = classify_tensors(dit_header.tensors)
            if architecture in VAE_IS_A_SEPARATE_FILE:
                # The core would fail listing every missing decoder tensor.
                raise ValueError(f"diffusion_model is a {architecture} model, whose VAE is a separate file: pass vae=")

        params = _core.ContextParams()
        for name, path in self.components.items():
            setattr(params, name, path)
        params.embeddings = _embedding_pairs(embeddings)
        params.tensor_type_rules = str(tensor_type_rules)
        params.n_threads = _core.physical_cores() if n_threads is None else _check_int("n_threads", n_threads, 1, 1024)
        params.weight_type = WEIGHT_TYPE_AUTO if weight_type is None else int(WeightType.coerce(weight_type, "weight_type"))
        params.rng = int(RngType.coerce(rng, "rng"))
        params.sampler_rng = RNG_TYPE_AUTO if sampler_rng is None else int(RngType.coerce(sampler_rng, "sampler_rng"))
        params.prediction = PREDICTION_AUTO if prediction is None else int(Prediction.coerce(prediction, "prediction"))
        params.lora_apply_mode = int(LoraApplyMode.coerce(lora_apply_mode, "lora_apply_mode"))
        flags = {
            "offload_params_to_cpu": offload_params_to_cpu, "mmap": mmap, "keep_clip_on_cpu": keep_clip_on_cpu,
            "keep_vae_on_cpu": keep_vae_on_cpu, "keep_control_net_on_cpu": keep_control_net_on_cpu,
            "flash_attn": flash_attn, "diffusion_flash_attn": diffusion_flash_attn,
            "diffusion_conv_direct": diffusion_conv_direct, "vae_conv_direct": vae_conv_direct,
            "vae_decode_only": vae_decode_only, "tae_preview_only": tae_preview_only,
            "circular_x": circular_x, "circular_y": circular_y,
            "force_sdxl_vae_conv_scale": force_sdxl_vae_conv_scale,
            "chroma_use_dit_mask": chroma_use_dit_mask, "chroma_use_t5_mask": chroma_use_t5_mask,
            "qwen_image_zero_cond_t": qwen_image_zero_cond_t,
        }
        for name, value in flags.items():
            if not isinstance(value, (bool, np.bool_)):
                raise TypeError(f"{name} must be a bool, not {type(value).__name__}")
            setattr(params, name, bool(value))
        params.chroma_t5_mask_pad = _check_int("chroma_t5_mask_pad", chroma_t5_mask_pad, 0, 4096)
        params.max_vram = _check_float("max_vram", max_vram, 0.0)
        self.n_threads = params.n_threads
        self._native = _core.NativeContext(params)

    # -- lifecycle -----------------------------------------------------------------------------------
    def close(self) -> None:
        """Free the native context now. Safe to call more than once."""
        native, self._native = self._native, None
        if native is not None:
            native.close()

    def cancel(self) -> None:
        """Stop this context's generation in flight, from any thread; it raises ``Cancelled``.

        Calls waiting for this context at that moment are cancelled too; later calls are not. Sampling stops
        within the current step (on the CPU, within one graph operation); a cancel during text encoding
        takes effect when sampling starts, one during VAE decoding when the decode ends. The context stays
        usable and gives the same pixels as before.
        """
        native = self._native
        if native is not None:
            native.cancel()

    @property
    def closed(self) -> bool:
        return self._native is None

    def __enter__(self) -> "Context":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __del__(self) -> None:
        native = getattr(self, "_native", None)
        if native is not None:
            native.close()

    def __repr__(self) -> str:
        parts = ", ".join(f"{name}={os.path.basename(path)!r}" for name, path in self.components.items())
        state = "closed" if self.closed else f"backend={_core.BACKEND!r}"
        return f"<sdcpp_py.Context {parts}, {state}>"

    def _require_native(self):
        native = self._native
        if native is None:
            raise ValueError("this Context is closed")
        return native

    # -- model-dependent defaults ------------------------------------------------------------------
    @property
    def default_sampler(self) -> Sampler:
        """The sampler the core picks for this model when none is given."""
        return Sampler(self._require_native().default_sample_method())

    def default_scheduler(self, sampler: Union[Sampler, str, int, None] = None) -> Scheduler:
        """The scheduler the core picks for this model and sampler when none is given."""
        chosen = self.default_sampler if sampler is None else Sampler.coerce(sampler, "sampler")
        return Scheduler(self._require_native().default_scheduler(int(chosen)))

    # -- generation ----------------------------------------------------------------------------------
    def txt2img(
        self,
        prompt: str,
        *,
        negative_prompt: str = "",
        width: int = 512,
        height: int = 512,
        steps: int = 20,
        cfg_scale: float = 7.0,
        img_cfg_scale: Optional[float] = None,
        guidance: float = 3.5,
        sampler: Union[Sampler, str, int, None] = None,
        scheduler: Union[Scheduler, str, int, None] = None,
        seed: int = 42,
        batch_count: int = 1,
        clip_skip: int = -1,
        eta: Optional[float] = None,
        flow_shift: Optional[float] = None,
        shifted_timestep: int = 0,
        skip_layers: Sequence[int] = (7, 8, 9),
        slg_scale: float = 0.0,
        slg_start: float = 0.01,
        slg_end: float = 0.2,
        custom_sigmas: Optional[Sequence[float]] = None,
        vae_tiling: bool = False,
        progress: Optional[ProgressCallback] = None,
        preview: Optional[PreviewCallback] = None,
        preview_mode: Union[Preview, str, int] = Preview.PROJ,
        preview_interval: int = 1,
        preview_noisy: bool = False,
    ) -> GenerationResult:
        """Generate images from a text prompt.

        Defaults are those of the vendored ``sd-cli``. ``sampler``/``scheduler`` of None let the core pick
        the model's default (see ``default_sampler``). ``seed=-1`` draws a random 63-bit seed; the seed
        used is ``result.seed``. The core rounds width and height up to the model's spatial multiple.

        Arguments:
            progress: called as ``progress(step, steps, seconds_per_step)`` on the calling thread.
            preview: called as ``preview(step, frames, is_noisy)`` every ``preview_interval`` steps with a
                (F, H, W, 3) uint8 copy of the current latent rendered by ``preview_mode`` ("proj": a cheap
                linear projection; "vae": the loaded VAE; "tae": a TAESD given as ``taesd=``).
                ``preview_noisy`` shows the noisy input instead of the denoised estimate.

        Returns:
            A ``GenerationResult``: a list of ``batch_count`` (height, width, 3) uint8 arrays that own the
            core's pixel buffers (no copy), with the seed in ``.seed``.

        Raises:
            ValueError / TypeError: an argument is invalid (the message names it).
            Cancelled: ``cancel()`` was called while this call ran or waited.
            KeyboardInterrupt: Ctrl-C (on the main thread) stopped the generation.
            Exception: whatever ``progress`` or ``preview`` raised, unchanged; it stops the generation.
            SdcppError: the core failed, with its error lines.
        """
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a str, not {type(prompt).__name__}")
        if not isinstance(negative_prompt, str):
            raise TypeError(f"negative_prompt must be a str, not {type(negative_prompt).__name__}")
        if progress is not None and not callable(progress):
            raise TypeError("progress must be callable as progress(step, steps, seconds)")
        if preview is not None and not callable(preview):
            raise TypeError("preview must be callable as preview(step, frames, is_noisy)")
        mode = Preview.coerce(preview_mode, "preview_mode")
        if preview is not None and mode == Preview.NONE:
            raise ValueError("preview_mode='none' with a preview callable: choose 'proj', 'vae' or 'tae'")
        request = _core.ImageGenParams()
        request.prompt = prompt
        request.negative_prompt = negative_prompt
        request.width = _check_int("width", width, 1, MAX_SIDE)
        request.height = _check_int("height", height, 1, MAX_SIDE)
        request.steps = _check_int("steps", steps, 1, 10000)
        request.cfg_scale = _check_float("cfg_scale", cfg_scale, 0.0)
        request.img_cfg_scale = math.inf if img_cfg_scale is None else _check_float("img_cfg_scale", img_cfg_scale, 0.0)
        request.guidance = _check_float("guidance", guidance, 0.0)
        request.sampler = SAMPLER_AUTO if sampler is None else int(Sampler.coerce(sampler, "sampler"))
        request.scheduler = SCHEDULER_AUTO if scheduler is None else int(Scheduler.coerce(scheduler, "scheduler"))
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise TypeError(f"seed must be an int, not {type(seed).__name__}")
        seed = int(seed)
        if seed == -1:
            seed = secrets.randbits(63)
        request.seed = _check_int("seed", seed, 0, MAX_SEED)
        request.batch_count = _check_int("batch_count", batch_count, 1, 64)
        request.clip_skip = _check_int("clip_skip", clip_skip, -1, 64)
        request.eta = math.inf if eta is None else _check_float("eta", eta, 0.0)
        request.flow_shift = math.inf if flow_shift is None else _check_float("flow_shift", flow_shift, 0.0)
        request.shifted_timestep = _check_int("shifted_timestep", shifted_timestep, 0, 1000)
        request.skip_layers = [_check_int("skip_layers[]", layer, 0, 1024) for layer in skip_layers]
        request.slg_scale = _check_float("slg_scale", slg_scale, 0.0)
        request.slg_start = _check_float("slg_start", slg_start, 0.0, 1.0)
        request.slg_end = _check_float("slg_end", slg_end, 0.0, 1.0)
        if custom_sigmas is not None:
            request.custom_sigmas = [_check_float("custom_sigmas[]", s, 0.0) for s in custom_sigmas]
        request.vae_tiling = bool(vae_tiling)
        images = self._require_native().generate_image(
            request, progress, preview, int(mode), _check_int("preview_interval", preview_interval, 1, 10000),
            bool(preview_noisy))
        return GenerationResult(images, seed)
