"""`Context`: one loaded model made of separately given component files."""

from __future__ import annotations

import math
import os
import secrets
import warnings
from pathlib import Path
from typing import Callable, Iterable, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from . import _core
from ._devices import accelerator_missing, default_device
from ._headers import check_component
from ._images import ImageLike, as_mask, as_rgb, as_rgb_list, check_size, fs_path, native_path, regular_file
from ._inspect import classify_tensors, slot_mismatch, wan_video_inputs
from ._options import (
    _CORE as _OPTION_DEFAULTS, Cache, Hires, Lora, PhotoMaker, check_bool as _check_bool,
    check_float as _check_float, check_int as _check_int, check_tensor_type_rules, photo_maker_prompt_problem,
    prompt_loras,
)
from ._enums import (
    HiresUpscaler, Preview, PREDICTION_AUTO, RNG_TYPE_AUTO, SAMPLER_AUTO, SCHEDULER_AUTO, WEIGHT_TYPE_AUTO,
    LoraApplyMode, Prediction, RngType, Sampler, Scheduler, WeightType,
)

PathLike = Union[str, bytes, "os.PathLike[str]"]
ProgressCallback = Callable[[int, int, float], object]
PreviewCallback = Callable[[int, np.ndarray, bool], object]

# Component slots, in the order of sd_ctx_params_t.
COMPONENTS = (
    "model", "clip_l", "clip_g", "clip_vision", "t5xxl", "llm", "llm_vision", "diffusion_model",
    "high_noise_diffusion_model", "vae", "taesd", "control_net", "photo_maker",
)

MAX_SEED = 2**63 - 1
_CORE_DEFAULTS = _OPTION_DEFAULTS  # sd_img_gen_params_init, read once in _options
_VIDEO_DEFAULTS = _core.VideoGenParams()  # sd_vid_gen_params_init
# Diffusion-model architectures that never carry their VAE in the same file.
VAE_IS_A_SEPARATE_FILE = ("Flux.1", "Flux.2", "SD3")
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
    """A model file path (str, bytes or os.PathLike) as a str, refused unless it is a regular file: nothing
    the package opens may be a FIFO or a device, which would block the process or never end. Pass it to the
    native layer as ``native_path(path)`` (bytes), so a file name that is not UTF-8 loads too."""
    return regular_file(argument, fs_path(argument, value), "file")


def _embedding_pairs(embeddings) -> list:
    """(name, path) pairs for the native layer, both as bytes; the files are checked first."""
    if embeddings is None:
        return []
    if isinstance(embeddings, Mapping):
        items = list(embeddings.items())
    elif isinstance(embeddings, (str, bytes, os.PathLike)) or not isinstance(embeddings, Iterable):
        raise TypeError("embeddings must be a mapping {name: path} or a list of paths")
    else:
        items = [(Path(fs_path("embeddings[]", p)).stem, p) for p in embeddings]
    pairs = []
    for name, path in items:
        argument = f"embeddings[{name!r}]"
        if not isinstance(name, str):
            raise TypeError(f"{argument}: an embedding name must be a str, not {type(name).__name__}")
        name = fs_path(f"{argument} (the name)", name)  # no NUL, encodable
        path = _resolve_path(argument, path)
        check_component(argument, path)
        pairs.append((native_path(name), native_path(path)))
    return pairs


class Context:
    """A stable-diffusion.cpp model assembled from component files.

    Give either ``model`` (an all-in-one checkpoint) or ``diffusion_model`` plus the parts it needs
    (text encoders, VAE). Every argument is keyword-only; scalar defaults are those of the core's
    ``sd_ctx_params_init``, except ``vae_decode_only``: by default the VAE encoder is loaded when the VAE
    file has one, so img2img and edits work (True skips its weights for a txt2img-only service). The
    weights are loaded with the GIL released. ``lora_dir`` makes the prompt's ``<lora:name:weight>`` tags load
    ``name`` from that folder, as sd-cli's ``--lora-model-dir`` (only from inside it: no absolute names, no
    ``..``). Paths are str, bytes or os.PathLike; a file name that is not UTF-8 works.
    ``lora_apply_mode`` defaults to "at_runtime": the core's "auto" merges a LoRA into f16 weights and subtracts it after the call, which leaves rounding
    residue, so later calls would drift from what a fresh context makes. ``free_params_immediately``
    defaults to False (the core's default is True, made for one-shot programs like sd-cli): a context keeps
    its weights for the next call. True frees each part's weights once the first generation is done with it
    (text encoders before sampling, ...), which lowers that call's peak memory by the text encoders' size; the
    context then refuses a second generation. ``architecture`` is what
    ``inspect()`` calls the model file ("Flux.1", "SD1", "Wan2.1-VACE-1.3B", ...).

    Raises:
        FileNotFoundError: a component path does not exist (the message names the argument).
        InvalidComponentError: a safetensors/GGUF header is malformed (a ValueError naming the argument).
        ValueError: no model or no text encoder was given, a part the model needs is missing (a VAE for
            a DiT, CLIP vision or the VAE encoder for a Wan image-to-video or VACE model), a path is not a
            regular file (a FIFO or device would block the load) or holds a NUL, or an option has an invalid
            value (``tensor_type_rules`` is checked item by item as the core parses it).
        TypeError: an option has the wrong type.
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
        lora_dir: Optional[PathLike] = None,
        tensor_type_rules: str = "",
        n_threads: Optional[int] = None,
        weight_type: Union[WeightType, str, int, None] = None,
        rng: Union[RngType, str, int] = RngType.CUDA,
        sampler_rng: Union[RngType, str, int, None] = None,
        prediction: Union[Prediction, str, int, None] = None,
        lora_apply_mode: Union[LoraApplyMode, str, int] = LoraApplyMode.AT_RUNTIME,
        offload_params_to_cpu: bool = False,
        free_params_immediately: bool = False,
        mmap: bool = False,
        keep_clip_on_cpu: bool = False,
        keep_vae_on_cpu: bool = False,
        keep_control_net_on_cpu: bool = False,
        flash_attn: bool = False,
        diffusion_flash_attn: bool = False,
        diffusion_conv_direct: bool = False,
        vae_conv_direct: bool = False,
        vae_decode_only: Optional[bool] = None,
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
        self.lora_dir = None
        if lora_dir is not None:
            self.lora_dir = fs_path("lora_dir", lora_dir)
            if not os.path.isdir(self.lora_dir):
                raise NotADirectoryError(f"lora_dir: no such directory: {self.lora_dir!r}")
        self.components = {name: _resolve_path(name, path) for name, path in given.items() if path is not None}
        headers = {name: check_component(name, path) for name, path in self.components.items()}
        for name, header in headers.items():
            problem = None if header is None else slot_mismatch(name, header)
            if problem:
                raise ValueError(problem)
        vae_decode_only_asked = vae_decode_only is not None
        if vae_decode_only is None:
            vae_header = headers.get("vae") or headers.get("model")
            if vae_header is None and headers.get("taesd") is not None:
                # TAESD as the only VAE: decoder-only files of it exist (taef1_decoder.safetensors).
                vae_decode_only = not any(name.startswith("encoder.layers.") for name in headers["taesd"].tensors)
            else:
                vae_decode_only = not _has_vae_encoder(vae_header)
        text_encoders = ("clip_l", "clip_g", "t5xxl", "llm")
        if model is None and not any(name in self.components for name in text_encoders):
            # The core loads such a model, then dereferences a missing encoder at the first prompt.
            raise ValueError("diffusion_model needs at least one text encoder: pass clip_l=, clip_g=, t5xxl= or "
                             "llm= (whichever the model was trained with)")
        dit_header = headers.get("diffusion_model")
        model_header = dit_header or headers.get("model")
        # What inspect() calls the model ("Flux.1", "SD1", "Wan2.1-VACE-1.3B", ...); None if unknown.
        self.architecture = None if model_header is None else classify_tensors(model_header.tensors)[1]
        if (model is None and "vae" not in self.components and "taesd" not in self.components
                and self.architecture in VAE_IS_A_SEPARATE_FILE):
            # The core would fail listing every missing decoder tensor. TAESD alone is a full decoder (and
            # encoder): sd-cli generates with it as the only VAE.
            raise ValueError(f"diffusion_model is a {self.architecture} model, whose VAE is a separate file: "
                             "pass vae= (or taesd=)")
        self._video_inputs = (wan_video_inputs(self.architecture)
                              if self.architecture and self.architecture.startswith("Wan2") else None)
        if self._video_inputs is not None:
            if self._video_inputs.needs_clip_vision and "clip_vision" not in self.components:
                # The core would load it with an empty vision tower and fail at the first call.
                raise ValueError(f"diffusion_model is a {self.architecture} model, which needs the CLIP vision "
                                 "encoder: pass clip_vision=")
            if self._video_inputs.always_encodes and vae_decode_only:
                why = "vae_decode_only=True" if vae_decode_only_asked else "the VAE file has no encoder"
                raise ValueError(f"diffusion_model is a {self.architecture} model, which runs the VAE encoder on "
                                 f"every call, but {why}")

        params = _core.ContextParams()
        for name, path in self.components.items():
            setattr(params, name, native_path(path))
        params.embeddings = _embedding_pairs(embeddings)
        params.tensor_type_rules = check_tensor_type_rules("tensor_type_rules", tensor_type_rules)
        params.n_threads = _core.physical_cores() if n_threads is None else _check_int("n_threads", n_threads, 1, 1024)
        params.weight_type = WEIGHT_TYPE_AUTO if weight_type is None else int(WeightType.coerce(weight_type, "weight_type"))
        params.rng = int(RngType.coerce(rng, "rng"))
        params.sampler_rng = RNG_TYPE_AUTO if sampler_rng is None else int(RngType.coerce(sampler_rng, "sampler_rng"))
        params.prediction = PREDICTION_AUTO if prediction is None else int(Prediction.coerce(prediction, "prediction"))
        params.lora_apply_mode = int(LoraApplyMode.coerce(lora_apply_mode, "lora_apply_mode"))
        flags = {
            "offload_params_to_cpu": offload_params_to_cpu, "free_params_immediately": free_params_immediately,
            "mmap": mmap, "keep_clip_on_cpu": keep_clip_on_cpu,
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
            setattr(params, name, _check_bool(name, value))
        params.chroma_t5_mask_pad = _check_int("chroma_t5_mask_pad", chroma_t5_mask_pad, 0, 4096)
        params.max_vram = _check_float("max_vram", max_vram, 0.0)
        self.n_threads = params.n_threads
        self.vae_decode_only = bool(vae_decode_only)
        self.free_params_immediately = bool(free_params_immediately)
        if accelerator_missing():
            warnings.warn(f"sdcpp_py was built for {_core.BACKEND} but ggml found no {_core.BACKEND} device: this "
                          "Context runs on the CPU", RuntimeWarning, stacklevel=2)
        self._device = None
        self._native = _core.NativeContext(params)

    @property
    def device(self):
        """The device this context computes on (``sdcpp_py.Device``), as the core picks it."""
        if self._device is None:  # asked lazily: listing devices costs milliseconds of every load otherwise
            self._device = default_device()
        return self._device

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
        # Never waits: it may run in a garbage collection inside a callback or log handler of a core call.
        native = getattr(self, "_native", None)
        if native is not None:
            native.close(wait=False)

    def __repr__(self) -> str:
        parts = ", ".join(f"{name}={os.path.basename(path)!r}" for name, path in self.components.items())
        state = "closed" if self.closed else f"device={self.device.name!r} ({self.device.description})"
        return f"<sdcpp_py.Context {parts}, {state}>"

    def _require_native(self):
        native = self._native
        if native is None:
            raise ValueError("this Context is closed")
        return native

    def _native_for_generation(self):
        """The native context for one generation. With free_params_immediately the native layer runs only the
        first generation that actually starts (a call refused or cancelled before its turn does not count)."""
        return self._require_native()

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
    def generate(
        self,
        prompt: str,
        *,
        negative_prompt: str = "",
        init_image: Optional[ImageLike] = None,
        mask: Optional[ImageLike] = None,
        strength: float = _CORE_DEFAULTS.strength,
        ref_images: Optional[Sequence[ImageLike]] = None,
        auto_resize_ref_images: bool = True,
        increase_ref_index: bool = False,
        control_image: Optional[ImageLike] = None,
        control_strength: float = _CORE_DEFAULTS.control_strength,
        photo_maker: Optional[PhotoMaker] = None,
        loras: Optional[Sequence[Union[Lora, PathLike]]] = None,
        hires: Optional[Hires] = None,
        cache: Optional[Cache] = None,
        width: Optional[int] = None,
        height: Optional[int] = None,
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
        vae_tile_size: Union[int, Tuple[int, int]] = 0,
        vae_tile_overlap: float = 0.5,
        progress: Optional[ProgressCallback] = None,
        preview: Optional[PreviewCallback] = None,
        preview_mode: Union[Preview, str, int] = Preview.PROJ,
        preview_interval: int = 1,
        preview_noisy: bool = False,
    ) -> GenerationResult:
        """Generate images; every feature of the core's ``generate_image`` in one call.

        ``txt2img``, ``img2img``, ``inpaint`` and ``edit`` are this method with their main input named.
        Defaults are those of the vendored ``sd-cli``. Images are numpy (H, W, C) uint8 arrays (C of 1, 3
        or 4; grey is repeated, alpha dropped), PIL images or file paths; a mask is (H, W) or (H, W, 1).

        Arguments:
            init_image / strength: start from this image (img2img); strength 1.0 ignores it entirely.
            mask: inpainting mask over ``init_image``, 255 where the image may change.
            ref_images: reference images for edit models (Flux Kontext, Qwen-Image-Edit, Flux.2);
                ``auto_resize_ref_images`` and ``increase_ref_index`` as sd-cli's options.
            control_image / control_strength: ControlNet input (needs ``control_net=`` on the Context).
            photo_maker: a ``PhotoMaker`` record (needs ``photo_maker=`` on the Context, which then needs it
                on every call); the prompt must hold the trigger word "img" once, right after a class word
                ("a photo of a man img").
            loras: ``Lora`` records or paths (multiplier 1.0), applied for this call only; the prompt's
                ``<lora:name:weight>`` syntax works as well.
            hires: a ``Hires`` record: upscale then refine (hires fix).
            cache: a ``Cache`` record: skip diffusion computes by reuse (easycache, ucache, ...).
            width / height: default to the init image's size, else 512. The core rounds them up to the
                model's spatial multiple.
            sampler / scheduler: None lets the core pick the model's default (``default_sampler``).
            seed: -1 draws a random 63-bit seed; the seed used is ``result.seed``.
            vae_tiling / vae_tile_size / vae_tile_overlap: decode the VAE in tiles (size 0: the core's).
            progress: called as ``progress(step, steps, seconds_per_step)`` on the calling thread.
            preview: called as ``preview(step, frames, is_noisy)`` every ``preview_interval`` steps with a
                (F, H, W, 3) uint8 copy of the current latent rendered by ``preview_mode`` ("proj", "vae",
                "tae"); ``preview_noisy`` shows the noisy input instead of the denoised estimate.

        Returns:
            A ``GenerationResult``: a list of ``batch_count`` (height, width, 3) uint8 arrays that own the
            core's pixel buffers (no copy), with the seed in ``.seed``.

        Raises:
            ValueError / TypeError: an argument is invalid (the message names it).
            FileNotFoundError: an image, LoRA or model path does not exist.
            Cancelled: ``cancel()`` was called while this call ran or waited.
            KeyboardInterrupt: Ctrl-C (on the main thread) stopped the generation.
            Exception: whatever ``progress`` or ``preview`` raised, unchanged; it stops the generation.
            SdcppError: the core failed, with its error lines.
        """
        request = _core.ImageGenParams()
        self._common_request(request, prompt, negative_prompt, progress, preview)
        init = None if init_image is None else as_rgb(init_image, "init_image")
        if width is None and height is None and init is not None:
            width, height = init.shape[1], init.shape[0]
        width = 512 if width is None else width
        height = 512 if height is None else height
        request.width = _check_int("width", width, 1, MAX_SIDE)
        request.height = _check_int("height", height, 1, MAX_SIDE)
        needs_encoder = []
        if init is not None:
            check_size(init, "init_image", request.width, request.height)
            request.set_init_image(init)
            needs_encoder.append("init_image")
        if mask is not None:
            if init is None:
                raise ValueError("mask needs init_image: the mask says which pixels of init_image may change")
            mask_array = as_mask(mask, "mask")
            check_size(mask_array, "mask", request.width, request.height)
            request.set_mask_image(mask_array)
        request.strength = _check_float("strength", strength, 0.0, 1.0)
        if ref_images is not None:
            request.set_ref_images(as_rgb_list(ref_images, "ref_images"))
            needs_encoder.append("ref_images")
        request.auto_resize_ref_image = _check_bool("auto_resize_ref_images", auto_resize_ref_images)
        request.increase_ref_index = _check_bool("increase_ref_index", increase_ref_index)
        if control_image is not None:
            if "control_net" not in self.components:
                raise ValueError("control_image needs a ControlNet: create the Context with control_net=")
            control = as_rgb(control_image, "control_image")
            check_size(control, "control_image", request.width, request.height)
            request.set_control_image(control)
        request.control_strength = _check_float("control_strength", control_strength, 0.0)
        if photo_maker is not None:
            self._apply_photo_maker(request, photo_maker)
        if hires is not None:
            if self._apply_hires(request, hires):
                needs_encoder.append("hires (pixel-space upscaler)")
        if cache is not None:
            if not isinstance(cache, Cache):
                raise TypeError(f"cache must be an sdcpp_py.Cache, not {type(cache).__name__}")
            cache.apply(request)
        if needs_encoder and self.vae_decode_only:
            raise ValueError(f"{needs_encoder[0]} needs the VAE encoder, which this Context did not load "
                             "(vae_decode_only=True)")
        request.loras = self._lora_specs(request, loras)
        self._check_photo_maker_prompt(request.prompt, photo_maker)
        self._sample_request(request, steps=steps, cfg_scale=cfg_scale, img_cfg_scale=img_cfg_scale,
                             guidance=guidance, sampler=sampler, scheduler=scheduler, eta=eta,
                             flow_shift=flow_shift, shifted_timestep=shifted_timestep, skip_layers=skip_layers,
                             slg_scale=slg_scale, slg_start=slg_start, slg_end=slg_end, custom_sigmas=custom_sigmas)
        request.batch_count = _check_int("batch_count", batch_count, 1, 64)
        seed = _resolve_seed(seed, request.batch_count)
        request.seed = seed
        request.clip_skip = _check_int("clip_skip", clip_skip, -1, 64)
        _apply_tiling(request, vae_tiling, vae_tile_size, vae_tile_overlap)
        preview_args = _preview_args(preview, preview_mode, preview_interval, preview_noisy)
        # Every argument is checked: only now is the native context touched (with free_params_immediately,
        # taking it marks the context spent, so a call refused for a bad argument must not get this far).
        images = self._native_for_generation().generate_image(request, progress, preview, *preview_args)
        return GenerationResult(images, seed)

    def txt2img(self, prompt: str, **options) -> GenerationResult:
        """Generate images from a text prompt. Takes every keyword of ``generate``."""
        return self.generate(prompt, **options)

    def img2img(self, prompt: str, image: ImageLike, *, strength: float = _CORE_DEFAULTS.strength,
                **options) -> GenerationResult:
        """Generate from ``image`` (``strength`` 0..1: how far to move from it). Keywords as ``generate``."""
        return self.generate(prompt, init_image=image, strength=strength, **options)

    def inpaint(self, prompt: str, image: ImageLike, mask: ImageLike, *, strength: float = 1.0,
                **options) -> GenerationResult:
        """Repaint the part of ``image`` where ``mask`` is white (255). Keywords as ``generate``."""
        return self.generate(prompt, init_image=image, mask=mask, strength=strength, **options)

    def edit(self, prompt: str, ref_images: Sequence[ImageLike], **options) -> GenerationResult:
        """Edit with reference images (Flux Kontext, Qwen-Image-Edit, Flux.2). Keywords as ``generate``."""
        return self.generate(prompt, ref_images=ref_images, **options)

    def generate_video(
        self,
        prompt: str,
        *,
        negative_prompt: str = "",
        init_image: Optional[ImageLike] = None,
        end_image: Optional[ImageLike] = None,
        control_frames: Optional[Sequence[ImageLike]] = None,
        frames: int = _VIDEO_DEFAULTS.video_frames,
        strength: float = _VIDEO_DEFAULTS.strength,
        vace_strength: float = _VIDEO_DEFAULTS.vace_strength,
        moe_boundary: float = _VIDEO_DEFAULTS.moe_boundary,
        loras: Optional[Sequence[Union[Lora, PathLike]]] = None,
        cache: Optional[Cache] = None,
        width: Optional[int] = None,
        height: Optional[int] = None,
        steps: int = 20,
        cfg_scale: float = 7.0,
        guidance: float = 3.5,
        sampler: Union[Sampler, str, int, None] = None,
        scheduler: Union[Scheduler, str, int, None] = None,
        eta: Optional[float] = None,
        flow_shift: Optional[float] = None,
        high_noise_steps: Optional[int] = None,
        high_noise_cfg_scale: float = 7.0,
        high_noise_sampler: Union[Sampler, str, int, None] = None,
        high_noise_scheduler: Union[Scheduler, str, int, None] = None,
        seed: int = 42,
        clip_skip: int = -1,
        vae_tiling: bool = False,
        vae_tile_size: Union[int, Tuple[int, int]] = 0,
        vae_tile_overlap: float = 0.5,
        progress: Optional[ProgressCallback] = None,
        preview: Optional[PreviewCallback] = None,
        preview_mode: Union[Preview, str, int] = Preview.PROJ,
        preview_interval: int = 1,
        preview_noisy: bool = False,
    ) -> np.ndarray:
        """Generate a video (Wan 2.x and the core's other video models) as one (F, H, W, 3) uint8 array.

        ``init_image`` (image-to-video), ``end_image`` (first-last-frame), ``control_frames`` (VACE, with
        ``vace_strength``); a ``high_noise_diffusion_model`` on the Context is used for the first steps up to
        ``moe_boundary``, with the ``high_noise_*`` sampling options. ``high_noise_steps`` None: of the
        ``steps``, those whose sigma is at or above ``moe_boundary`` go to the high-noise model (the core's
        default); a number runs that many high-noise steps before the ``steps`` (sd-cli's default is 20).
        Other keywords as ``generate``.
        """
        request = _core.VideoGenParams()
        self._common_request(request, prompt, negative_prompt, progress, preview)
        if not self._require_native().supports_video_generation():  # a question only: the context stays as is
            raise ValueError("this Context's model does not generate video (load a video model such as Wan)")
        init = None if init_image is None else as_rgb(init_image, "init_image")
        if width is None and height is None and init is not None:
            width, height = init.shape[1], init.shape[0]
        request.width = _check_int("width", 512 if width is None else width, 1, MAX_SIDE)
        request.height = _check_int("height", 512 if height is None else height, 1, MAX_SIDE)
        self._check_video_inputs(init_image=init_image, end_image=end_image, control_frames=control_frames)
        for name, image in (("init_image", init_image), ("end_image", end_image)):
            if image is not None:
                array = as_rgb(image, name)
                check_size(array, name, request.width, request.height)
                getattr(request, f"set_{name}")(array)
        if control_frames is not None:
            arrays = as_rgb_list(control_frames, "control_frames")
            for index, array in enumerate(arrays):
                check_size(array, f"control_frames[{index}]", request.width, request.height)
            request.set_control_frames(arrays)
        if (init_image is not None or end_image is not None or control_frames) and self.vae_decode_only:
            raise ValueError("video inputs need the VAE encoder, which this Context did not load "
                             "(vae_decode_only=True)")
        request.video_frames = _check_int("frames", frames, 1, 4096)
        request.strength = _check_float("strength", strength, 0.0, 1.0)
        request.vace_strength = _check_float("vace_strength", vace_strength, 0.0)
        request.moe_boundary = _check_float("moe_boundary", moe_boundary, 0.0, 1.0)
        request.loras = self._lora_specs(request, loras)
        if cache is not None:
            if not isinstance(cache, Cache):
                raise TypeError(f"cache must be an sdcpp_py.Cache, not {type(cache).__name__}")
            cache.apply(request)
        self._sample_request(request, steps=steps, cfg_scale=cfg_scale, img_cfg_scale=None, guidance=guidance,
                             sampler=sampler, scheduler=scheduler, eta=eta, flow_shift=flow_shift,
                             shifted_timestep=0, skip_layers=(7, 8, 9), slg_scale=0.0, slg_start=0.01,
                             slg_end=0.2, custom_sigmas=None)
        if high_noise_steps is not None:
            request.high_noise_steps = _check_int("high_noise_steps", high_noise_steps, 1, 10000)
        request.high_noise_cfg_scale = _check_float("high_noise_cfg_scale", high_noise_cfg_scale, 0.0)
        request.high_noise_sampler = (SAMPLER_AUTO if high_noise_sampler is None
                                      else int(Sampler.coerce(high_noise_sampler, "high_noise_sampler")))
        request.high_noise_scheduler = (SCHEDULER_AUTO if high_noise_scheduler is None
                                        else int(Scheduler.coerce(high_noise_scheduler, "high_noise_scheduler")))
        request.seed = _resolve_seed(seed, 1)
        request.clip_skip = _check_int("clip_skip", clip_skip, -1, 64)
        _apply_tiling(request, vae_tiling, vae_tile_size, vae_tile_overlap)
        preview_args = _preview_args(preview, preview_mode, preview_interval, preview_noisy)
        # Every argument is checked: only now is the native context taken (see generate).
        return self._native_for_generation().generate_video(request, progress, preview, *preview_args)

    # -- request building ---------------------------------------------------------------------------
    _VIDEO_INPUT_USERS = {
        "init_image": "image-to-video (Wan I2V, FLF2V, TI2V) and VACE models",
        "end_image": "image-to-video models (Wan I2V, FLF2V)",
        "control_frames": "VACE models",
    }

    def _check_video_inputs(self, **given) -> None:
        """Refuse an input the loaded Wan model would silently ignore."""
        if self._video_inputs is None:
            return
        for name, value in given.items():
            if value is not None and not getattr(self._video_inputs, name):
                raise ValueError(f"{name}: the {self.architecture} model does not use it (only "
                                 f"{self._VIDEO_INPUT_USERS[name]} do)")

    def _lora_specs(self, request, loras) -> list:
        """The explicit ``loras``, then those named in the prompt when the Context has a ``lora_dir`` (their
        tags are removed from the prompt, as sd-cli does)."""
        specs = _lora_specs(loras)
        if self.lora_dir is not None:
            request.prompt, from_prompt = prompt_loras(request.prompt, self.lora_dir)
            specs += _lora_specs(from_prompt, [f"prompt <lora:{os.path.basename(lora.path)}>" for lora in from_prompt])
        return specs

    @staticmethod
    def _common_request(request, prompt, negative_prompt, progress, preview) -> None:
        _check_prompt("prompt", prompt)
        _check_prompt("negative_prompt", negative_prompt)
        if progress is not None and not callable(progress):
            raise TypeError("progress must be callable as progress(step, steps, seconds)")
        if preview is not None and not callable(preview):
            raise TypeError("preview must be callable as preview(step, frames, is_noisy)")
        request.prompt = prompt
        request.negative_prompt = negative_prompt

    @staticmethod
    def _sample_request(request, *, steps, cfg_scale, img_cfg_scale, guidance, sampler, scheduler, eta, flow_shift,
                        shifted_timestep, skip_layers, slg_scale, slg_start, slg_end, custom_sigmas) -> None:
        request.steps = _check_int("steps", steps, 1, 10000)
        request.cfg_scale = _check_float("cfg_scale", cfg_scale, 0.0)
        request.img_cfg_scale = math.inf if img_cfg_scale is None else _check_float("img_cfg_scale", img_cfg_scale, 0.0)
        request.guidance = _check_float("guidance", guidance, 0.0)
        request.sampler = SAMPLER_AUTO if sampler is None else int(Sampler.coerce(sampler, "sampler"))
        request.scheduler = SCHEDULER_AUTO if scheduler is None else int(Scheduler.coerce(scheduler, "scheduler"))
        request.eta = math.inf if eta is None else _check_float("eta", eta, 0.0)
        request.flow_shift = math.inf if flow_shift is None else _check_float("flow_shift", flow_shift, 0.0)
        request.shifted_timestep = _check_int("shifted_timestep", shifted_timestep, 0, 1000)
        request.skip_layers = [_check_int(f"skip_layers[{index}]", layer, 0, 1024)
                               for index, layer in enumerate(_sequence("skip_layers", skip_layers))]
        request.slg_scale = _check_float("slg_scale", slg_scale, 0.0)
        request.slg_start = _check_float("slg_start", slg_start, 0.0, 1.0)
        request.slg_end = _check_float("slg_end", slg_end, 0.0, 1.0)
        if custom_sigmas is not None:
            request.custom_sigmas = [_check_float(f"custom_sigmas[{index}]", sigma, 0.0)
                                     for index, sigma in enumerate(_sequence("custom_sigmas", custom_sigmas))]

    def _apply_photo_maker(self, request, photo_maker) -> None:
        if not isinstance(photo_maker, PhotoMaker):
            raise TypeError(f"photo_maker must be an sdcpp_py.PhotoMaker, not {type(photo_maker).__name__}")
        if "photo_maker" not in self.components:
            raise ValueError("photo_maker needs the PhotoMaker model: create the Context with photo_maker=")
        if not photo_maker.id_images:
            # Without them the core switches PhotoMaker off after planning the merge step, then aborts.
            raise ValueError("photo_maker.id_images is empty: PhotoMaker needs at least one id image")
        request.set_pm_id_images(as_rgb_list(photo_maker.id_images, "photo_maker.id_images"))
        if photo_maker.id_embed_path is not None:
            request.pm_id_embed_path = native_path(_resolve_path("photo_maker.id_embed_path",
                                                                 photo_maker.id_embed_path))
        request.pm_style_strength = _check_float("photo_maker.style_strength", photo_maker.style_strength, 0.0, 100.0)

    def _check_photo_maker_prompt(self, prompt: str, photo_maker) -> None:
        """Refuse what would abort the process inside the core's PhotoMaker path."""
        if photo_maker is None:
            if "photo_maker" in self.components:
                # The core plans the id-conditioned steps before it sees there are no id images.
                raise ValueError("this Context has a PhotoMaker model, so every call needs "
                                 "photo_maker=sdcpp_py.PhotoMaker(id_images=[...]) (the core aborts without it); "
                                 "use a Context without photo_maker= for plain generation")
            return
        problem = photo_maker_prompt_problem(prompt)
        if problem:
            raise ValueError(f"photo_maker: {problem}")

    def _apply_hires(self, request, hires) -> bool:
        """Fill the hires fields; True when the upscaler works on pixels (and so needs the VAE encoder)."""
        if not isinstance(hires, Hires):
            raise TypeError(f"hires must be an sdcpp_py.Hires, not {type(hires).__name__}")
        upscaler = HiresUpscaler.coerce(hires.upscaler, "hires.upscaler")
        if upscaler == HiresUpscaler.NONE:
            raise ValueError("hires.upscaler='none' disables the hires fix: pass hires=None instead")
        request.hires_enabled = True
        request.hires_upscaler = int(upscaler)
        request.hires_scale = _check_float("hires.scale", hires.scale, 0.0, 16.0)
        request.hires_target_width = _check_int("hires.width", hires.width, 0, MAX_SIDE)
        request.hires_target_height = _check_int("hires.height", hires.height, 0, MAX_SIDE)
        self._check_hires_size(request)
        request.hires_steps = _check_int("hires.steps", hires.steps, 0, 10000)
        strength = _check_float("hires.denoising_strength", hires.denoising_strength, 0.0, 1.0)
        if strength == 0.0:
            raise ValueError("hires.denoising_strength=0.0 refines nothing: use a value in (0, 1]")
        request.hires_denoising_strength = strength
        request.hires_upscale_tile_size = _check_int("hires.tile_size", hires.tile_size, 1, 16384)
        if upscaler == HiresUpscaler.MODEL:
            if hires.model_path is None:
                raise ValueError("hires.upscaler='model' needs hires.model_path (an ESRGAN model)")
            path = _resolve_path("hires.model_path", hires.model_path)
            check_component("hires.model_path", path)
            request.hires_model_path = native_path(path)
        elif hires.model_path is not None:
            raise ValueError(f"hires.model_path is only used with upscaler='model', not {upscaler.core_name!r}")
        return upscaler in (HiresUpscaler.MODEL, HiresUpscaler.LANCZOS, HiresUpscaler.NEAREST)

    def _check_hires_size(self, request) -> None:
        """Refuse a hires output larger than MAX_SIDE a side, computed as the core's resolve_hires does
        (stable-diffusion.cpp): both sides given, or one for both, or round(side * scale) of the first pass
        (itself aligned up to the model's spatial multiple), all aligned up to that multiple. Past ~26,755
        pixels a side the core's int pixel count overflows."""
        multiple = _spatial_multiple(self.architecture)
        width, height = request.hires_target_width, request.hires_target_height
        argument = "hires.width/height"
        if width <= 0 and height <= 0:
            argument = "hires.scale"
            scale = np.float32(request.hires_scale)  # the core's float arithmetic: int * float is a float
            width = _round_half_away(np.float32(_align_up(request.width, multiple)) * scale)
            height = _round_half_away(np.float32(_align_up(request.height, multiple)) * scale)
            if width <= 0 or height <= 0:
                # The core would switch the hires fix off with a warning and return the first pass.
                raise ValueError(f"hires.scale={request.hires_scale:g} of {request.width}x{request.height} gives "
                                 f"no pixels ({width}x{height}): use a larger scale, or hires=None")
        elif width <= 0:
            width = height
        elif height <= 0:
            height = width
        width, height = _align_up(width, multiple), _align_up(height, multiple)
        if width > MAX_SIDE or height > MAX_SIDE:
            raise ValueError(f"{argument}: the hires output would be {width}x{height} pixels; the largest side is "
                             f"{MAX_SIDE}")


def _has_vae_encoder(header) -> bool:
    """Whether a VAE (or all-in-one) file carries the encoder; unknown formats are assumed to."""
    if header is None:
        return True
    # conv_in: the LDM KL VAE; conv1: the Wan VAE.
    return any(name.endswith(("encoder.conv_in.weight", "encoder.conv1.weight")) and "decoder" not in name
               for name in header.tensors)


def _spatial_multiple(architecture: Optional[str]) -> int:
    """What the core aligns image sizes up to: its VAE scale factor times the diffusion model's down factor
    (stable-diffusion.cpp get_vae_scale_factor, get_diffusion_model_down_factor). 64, the largest, for a
    model not recognised. All are powers of two dividing MAX_SIDE."""
    if architecture is None:
        return 64
    if architecture.startswith("Wan"):
        return 16 * 2 if architecture in ("Wan2.2-TI2V-5B", "Wan") else 8 * 2
    return {"SD1": 8 * 8, "SD2": 8 * 8, "SDXL": 8 * 8, "Flux.1": 8, "SD3": 8, "Chroma": 8, "Ovis-Image": 8,
            "Qwen-Image": 8, "Z-Image": 8, "Anima": 8, "Flux.2": 16, "Ernie-Image": 16,
            "Chroma Radiance": 1}.get(architecture, 64)


def _align_up(value: int, multiple: int) -> int:
    return value + (multiple - value % multiple) % multiple


def _round_half_away(value) -> int:
    """std::round of a (non-negative) float: halves away from zero, where Python's round goes to even."""
    return math.floor(float(value) + 0.5)


def _check_prompt(argument: str, text: object) -> None:
    """Refuse prompt text the core would misread: it takes C strings (a NUL would end the prompt early),
    UTF-8 (a lone surrogate has none) and a bounded length (its parser recurses per byte; the native layer
    checks the same limit)."""
    if not isinstance(text, str):
        raise TypeError(f"{argument} must be a str, not {type(text).__name__}")
    index = text.find("\0")
    if index >= 0:
        raise ValueError(f"{argument} contains a NUL character (at index {index}), which would end it early")
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError as error:
        raise ValueError(f"{argument} is not valid text: a lone surrogate {text[error.start]!r} at index "
                         f"{error.start} has no UTF-8 encoding") from None
    limit = _core.max_prompt_bytes()
    if size > limit:
        raise ValueError(f"{argument} is {size} bytes of UTF-8; the limit is {limit}")


def _sequence(argument: str, values: object) -> list:
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise TypeError(f"{argument} must be a sequence of numbers, not {type(values).__name__}")
    return list(values)


def _resolve_seed(seed: object, batch_count: int) -> int:
    """The seed of a call; image i of a batch uses seed + i, which the core computes in an int64_t."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, not {type(seed).__name__}")
    seed = int(seed)
    largest = MAX_SEED - (batch_count - 1)
    if seed == -1:
        return secrets.randbelow(largest + 1)
    seed = _check_int("seed", seed, 0, MAX_SEED)
    if seed > largest:
        raise ValueError(f"seed={seed} with batch_count={batch_count}: image i uses seed + i, which must stay at "
                         f"most 2**63-1, so the largest seed for this batch is {largest}")
    return seed


def _preview_args(preview, preview_mode, preview_interval, preview_noisy) -> tuple:
    """(mode, interval, noisy) for the native call, checked."""
    mode = Preview.coerce(preview_mode, "preview_mode")
    if preview is not None and mode == Preview.NONE:
        raise ValueError("preview_mode='none' with a preview callable: choose 'proj', 'vae' or 'tae'")
    return (int(mode), _check_int("preview_interval", preview_interval, 1, 10000),
            _check_bool("preview_noisy", preview_noisy))


def _apply_tiling(request, vae_tiling, vae_tile_size, vae_tile_overlap) -> None:
    request.vae_tiling = _check_bool("vae_tiling", vae_tiling)
    if isinstance(vae_tile_size, (tuple, list)):
        if len(vae_tile_size) != 2:
            raise ValueError(f"vae_tile_size={vae_tile_size!r} must be an int or (x, y)")
        size_x, size_y = vae_tile_size
    else:
        size_x = size_y = vae_tile_size
    request.vae_tile_size_x = _check_int("vae_tile_size", size_x, 0, MAX_SIDE)
    request.vae_tile_size_y = _check_int("vae_tile_size", size_y, 0, MAX_SIDE)
    request.vae_tile_overlap = _check_float("vae_tile_overlap", vae_tile_overlap, 0.0, 0.9)


def _lora_specs(loras, labels: Optional[Sequence[str]] = None) -> list:
    """Native LoRA specs, checked; ``labels`` name each in messages (default ``loras[i]``)."""
    if loras is None:
        return []
    if isinstance(loras, (str, bytes, os.PathLike, Lora)) or not isinstance(loras, Sequence):
        raise TypeError("loras must be a list of sdcpp_py.Lora or paths")
    loras = list(loras)
    specs = []
    for index, lora in enumerate(loras):
        if not isinstance(lora, Lora):
            lora = Lora(lora)
        argument = f"loras[{index}]" if labels is None else labels[index]
        path = _resolve_path(f"{argument}.path", lora.path)
        check_component(f"{argument}.path", path)
        multiplier = _check_float(f"{argument}.multiplier", lora.multiplier)
        specs.append(_core.LoraSpec(native_path(path), multiplier,
                                    _check_bool(f"{argument}.high_noise", lora.high_noise)))
    return specs
