"""`Context`: one loaded model made of separately given component files.

The Context keeps the lifecycle, the locking (native) and thin public methods; the option tables are in
``_params``, the model facts in ``_model``, the request building in ``_request``.
"""

from __future__ import annotations

import inspect
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Optional, Sequence, Union

import numpy as np

from . import _core
from ._checks import MAX_SEED, MAX_SIDE, check_tensor_type_rules, model_file
from ._devices import accelerator_missing, default_device
from ._enums import PREDICTION_AUTO, CpuPrecision, Sampler, Scheduler
from ._headers import check_component, check_embedding
from ._images import ImageLike, fs_path, native_path
from ._model import ModelFacts
from ._owner import NativeOwner
from ._params import COMPONENTS, CONTEXT, CONTEXT_NATIVE_FIELDS, IMAGE, VIDEO
from ._request import image_request, video_request

PathLike = Union[str, bytes, "os.PathLike[str]"]
ProgressCallback = Callable[[int, int, float], object]
PreviewCallback = Callable[[int, np.ndarray, bool], object]
__all__ = ["COMPONENTS", "Context", "GenerationResult", "MAX_SEED", "MAX_SIDE"]


class GenerationResult(list):
    """The images of one call (a list of (H, W, 3) uint8 arrays) and the seed that made them.

    Image i of a batch was made with seed + i.
    """

    seed: int

    def __init__(self, images: Iterable[np.ndarray], seed: int):
        super().__init__(images)
        self.seed = seed


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
        path = model_file(argument, path)
        header = check_component(argument, path)
        if header is not None:
            check_embedding(argument, header)
        pairs.append((native_path(name), native_path(path)))
    return pairs


def _keywords(table, leading=()):
    """Give a method the table's keyword signature (help(), IDEs, inspect) over its ``**options``."""
    def decorate(method):
        self_parameter = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
        method.__signature__ = table.signature((self_parameter, *leading))
        return method
    return decorate


_PROMPT = (inspect.Parameter("prompt", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=str),)


@dataclass
class PreparedContext:
    """Everything a Context checks before the core loads anything: the model facts, the prompt-LoRA folder
    and the filled native parameters."""

    facts: ModelFacts
    lora_dir: Optional[str]
    params: object  # _core.ContextParams


def prepare_context(options: Mapping[str, object], where: str = "Context") -> PreparedContext:
    """Check Context keywords (names, values, component files' headers) without loading: what ``Context()``
    raises for them, it raises here (a server checks its configured models at startup this way)."""
    values = CONTEXT.bind(options, where)
    lora_dir = None
    if values["lora_dir"] is not None:
        lora_dir = fs_path("lora_dir", values["lora_dir"])
        if not os.path.isdir(lora_dir):
            raise NotADirectoryError(f"lora_dir: no such directory: {lora_dir!r}")
    facts = ModelFacts.from_components({name: values[name] for name in COMPONENTS}, values["vae_decode_only"])
    params = _core.ContextParams()
    for name, path in facts.components.items():
        setattr(params, name, native_path(path))
    params.embeddings = _embedding_pairs(values["embeddings"])
    params.tensor_type_rules = check_tensor_type_rules("tensor_type_rules", values["tensor_type_rules"])
    if values["n_threads"] is None:
        values["n_threads"] = _core.physical_cores()
    CONTEXT.fill(params, values, CONTEXT_NATIVE_FIELDS)
    if params.cpu_precision == CpuPrecision.BF16 and not _core.cpu_bf16_products():
        # The loaded CPU backend has the bf16 kernel where it was compiled for AVX512_BF16: then only the
        # SDCPP_PY_CPU_KERNELS restriction (read when the backend first needs it) can have taken it away.
        compiled = _core.cpu_features().get("AVX512_BF16") == "1" and bool(_core.fused_cpu_kernels())
        reason = ("SDCPP_PY_CPU_KERNELS=avx2 turned it off in this process" if compiled else
                  "this CPU or build lacks it (AVX512_BF16, in an x86-64 build with our kernels)")
        raise ValueError(f"cpu_precision='bf16' needs bf16 products on the CPU: {reason}; use cpu_precision='f32'")
    params.vae_decode_only = facts.vae_decode_only
    facts.prediction = None if params.prediction == PREDICTION_AUTO else int(params.prediction)
    return PreparedContext(facts, lora_dir, params)


def _unused_part(message: str, components: Mapping[str, str]) -> Optional[str]:
    """The slot of the file the core's loader found no use for (patch 0026), from its error line (where the
    binding wrote each byte of a non-UTF-8 name as U+FFFD)."""
    for slot, path in components.items():
        as_logged = re.sub("[\udc80-\udcff]", "\ufffd", path)
        if f"no tensor of '{as_logged}' is one this model uses" in message:
            return slot
    return None


class Context(NativeOwner):
    """A stable-diffusion.cpp model assembled from component files.

    Give either ``model`` (an all-in-one checkpoint) or ``diffusion_model`` plus the parts it needs
    (text encoders, VAE). Every argument is keyword-only; scalar defaults are those of the core's
    ``sd_ctx_params_init``, except ``vae_decode_only``: by default the VAE encoder is loaded when the VAE
    file has one, so img2img and edits work (True skips its weights for a txt2img-only service). The
    weights are loaded with the GIL released. ``lora_dir`` makes the prompt's ``<lora:name:weight>`` tags load
    ``name`` from that folder, as sd-cli's ``--lora-model-dir`` (only from inside it: no absolute names, no
    ``..``). Paths are str, bytes or os.PathLike; a file name that is not UTF-8 works.
    ``lora_apply_mode`` defaults to "at_runtime": the core's "auto" merges a LoRA into f16 weights and
    subtracts it after the call, which leaves rounding residue, so later calls would drift from what a fresh
    context makes. ``free_params_immediately``
    defaults to False (the core's default is True, made for one-shot programs like sd-cli): a context keeps
    its weights for the next call. True frees each part's weights once the first generation is done with it
    (text encoders before sampling, ...), which lowers that call's peak memory by the text encoders' size; the
    context then refuses a second generation. ``cpu_precision="bf16"`` (ours) runs the matrix products on the
    CPU with bfloat16 operands summed in f32 where the CPU has AVX512_BF16 (other pixels, ~1.5-1.9x faster;
    weights stay as loaded and are rounded as they are packed); elsewhere it raises ValueError with the reason.
    ``architecture`` is what
    ``inspect()`` calls the model file ("Flux.1", "SD1", "Wan2.1-VACE-1.3B", ...).

    Raises:
        FileNotFoundError: a component path does not exist (the message names the argument).
        InvalidComponentError: a safetensors/GGUF header is malformed (a ValueError naming the argument).
        ValueError: no model or no text encoder was given, a part the model needs is missing (a VAE for
            a DiT, CLIP vision or the VAE encoder for a Wan image-to-video or VACE model), the model uses
            none of a file's tensors (an LLM beside Flux.1: a part it does not have), a path is not a
            regular file (a FIFO or device would block the load) or holds a NUL, or an option has an invalid
            value (``tensor_type_rules`` is checked item by item as the core parses it).
        TypeError: an option has the wrong type.
        SdcppError: the core could not build a context; the message carries the core's error lines.
    """

    @_keywords(CONTEXT)
    def __init__(self, **options) -> None:
        self._native = None
        prepared = prepare_context(options)
        self._facts, self.lora_dir, params = prepared.facts, prepared.lora_dir, prepared.params
        self.components = self._facts.components
        # What inspect() calls the model ("Flux.1", "SD1", "Wan2.1-VACE-1.3B", ...); None if unknown.
        self.architecture = self._facts.architecture
        self.n_threads = params.n_threads
        self.vae_decode_only = self._facts.vae_decode_only
        self.free_params_immediately = params.free_params_immediately
        if accelerator_missing():
            warnings.warn(f"sdcpp_py was built for {_core.BACKEND} but ggml found no {_core.BACKEND} device: this "
                          "Context runs on the CPU", RuntimeWarning, stacklevel=2)
        self._device = None
        try:
            self._native = _core.NativeContext(params)
        except _core.SdcppError as error:
            unused = _unused_part(str(error), self.components)
            if unused is None:
                raise
            model = f"this {self.architecture} model" if self.architecture else "this model"
            raise ValueError(f"{unused}: {model} uses none of this file's tensors (a part it does not have, or a "
                             f"part of another model): leave {unused}= out, or pass the file it needs") from error

    @property
    def device(self):
        """The device this context computes on (``sdcpp_py.Device``), as the core picks it."""
        if self._device is None:  # asked lazily: listing devices costs milliseconds of every load otherwise
            self._device = default_device()
        return self._device

    # -- lifecycle -----------------------------------------------------------------------------------
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
    def usable(self) -> bool:
        """False once closed, or once a call failed inside the core (a failed check of its own, which leaves
        it half way): such a context refuses every call, and only a new one (the files loaded again) works."""
        native = self._native
        return native is not None and native.usable

    def __repr__(self) -> str:
        parts = ", ".join(f"{name}={os.path.basename(path)!r}" for name, path in self.components.items())
        state = "closed" if self.closed else f"device={self.device.name!r} ({self.device.description})"
        return f"<sdcpp_py.Context {parts}, {state}>"

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
    @_keywords(IMAGE, _PROMPT)
    def generate(self, prompt: str, **options) -> GenerationResult:
        """Generate images; every feature of the core's ``generate_image`` in one call.

        ``txt2img``, ``img2img``, ``inpaint`` and ``edit`` are this method with their main input named.
        Defaults are those of the vendored ``sd-cli`` (the core's, but for the few rows of
        ``sdcpp_py._params.SD_CLI_DEFAULTS``). Images are numpy (H, W, C) uint8 arrays (C of 1, 3 or 4;
        grey is repeated, alpha dropped), PIL images or file paths; a mask is (H, W) or (H, W, 1).

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
        values = IMAGE.bind(options, "generate")
        request, preview_args = image_request(prompt, values, self._facts, self.lora_dir)
        # Every argument is checked: only now is the native context touched (with free_params_immediately,
        # the native layer runs only the first generation that starts; a refused call must not get this far).
        images = self._require_native().generate_image(request, values["progress"], values["preview"], *preview_args)
        return GenerationResult(images, request.seed)

    def txt2img(self, prompt: str, **options) -> GenerationResult:
        """Generate images from a text prompt. Takes every keyword of ``generate``."""
        return self.generate(prompt, **options)

    def img2img(self, prompt: str, image: ImageLike, *, strength: float = IMAGE.defaults["strength"],
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

    @_keywords(VIDEO, _PROMPT)
    def generate_video(self, prompt: str, **options) -> np.ndarray:
        """Generate a video (Wan 2.x and the core's other video models) as one (F, H, W, 3) uint8 array.

        ``init_image`` (image-to-video), ``end_image`` (first-last-frame), ``control_frames`` (VACE, with
        ``vace_strength``); a ``high_noise_diffusion_model`` on the Context is used for the first steps up to
        ``moe_boundary``, with the ``high_noise_*`` sampling options. ``high_noise_steps`` None: of the
        ``steps``, those whose sigma is at or above ``moe_boundary`` go to the high-noise model (the core's
        default); a number runs that many high-noise steps before the ``steps`` (sd-cli's default is 20).
        ``high_noise_*`` takes every sampling keyword (steps, cfg_scale, guidance, sampler, scheduler, eta,
        slg_*, skip_layers, custom_sigmas, ...) for the high-noise model. Other keywords as ``generate``.
        """
        values = VIDEO.bind(options, "generate_video")
        # Asking whether the model makes videos leaves the context as it is.
        request, preview_args = video_request(prompt, values, self._facts, self.lora_dir,
                                              lambda: self._require_native().supports_video_generation())
        # Every argument is checked: only now is the native context taken (see generate).
        return self._require_native().generate_video(request, values["progress"], values["preview"], *preview_args)
