"""What the component files of a Context say about the model, decided from their headers before the core
reads them: the architecture, whether the VAE encoder is there, which video inputs a Wan model uses, and
the combinations the core would load and then crash on (refused here with the argument named)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Mapping, Optional

import numpy as np

from ._checks import MAX_SIDE, check_bool, model_file
from ._headers import check_component
from ._inspect import classify_tensors, slot_mismatch, wan_video_inputs

# Diffusion-model architectures that never carry their VAE in the same file.
VAE_IS_A_SEPARATE_FILE = ("Flux.1", "Flux.2", "SD3")
TEXT_ENCODERS = ("clip_l", "clip_g", "t5xxl", "llm")
_VIDEO_INPUT_USERS = {
    "init_image": "image-to-video (Wan I2V, FLF2V, TI2V) and VACE models",
    "end_image": "image-to-video models (Wan I2V, FLF2V)",
    "control_frames": "VACE models",
}


@dataclass
class ModelFacts:
    components: Dict[str, str]  # slot -> checked path
    architecture: Optional[str]  # what inspect() calls the model ("Flux.1", "SD1", ...); None if unknown
    vae_decode_only: bool
    video_inputs: object  # wan_video_inputs(...) for a Wan model, else None
    prediction: Optional[int] = None  # the Context's prediction= override (the core's enum value), else None

    @classmethod
    def from_components(cls, given: Mapping[str, object], vae_decode_only: Optional[bool]) -> "ModelFacts":
        """Check the component files (given as slot -> path or None) and decide the model's facts.
        ``vae_decode_only`` None: True unless the VAE file has an encoder."""
        if given.get("model") is None and given.get("diffusion_model") is None:
            raise ValueError("no model given: pass model= (an all-in-one checkpoint) or diffusion_model=")
        components = {name: model_file(name, path) for name, path in given.items() if path is not None}
        headers = {name: check_component(name, path) for name, path in components.items()}
        for name, header in headers.items():
            problem = None if header is None else slot_mismatch(name, header)
            if problem:
                raise ValueError(problem)
        asked = vae_decode_only is not None
        if asked:
            vae_decode_only = check_bool("vae_decode_only", vae_decode_only)
        if vae_decode_only is None:
            vae_header = headers.get("vae") or headers.get("model")
            if vae_header is None and headers.get("taesd") is not None:
                # TAESD as the only VAE: decoder-only files of it exist (taef1_decoder.safetensors).
                vae_decode_only = not any(name.startswith("encoder.layers.") for name in headers["taesd"].tensors)
            else:
                vae_decode_only = not has_vae_encoder(vae_header)
        all_in_one = "model" in components
        if not all_in_one and not any(name in components for name in TEXT_ENCODERS):
            # The core loads such a model, then dereferences a missing encoder at the first prompt.
            raise ValueError("diffusion_model needs at least one text encoder: pass clip_l=, clip_g=, t5xxl= or "
                             "llm= (whichever the model was trained with)")
        model_header = headers.get("diffusion_model") or headers.get("model")
        architecture = None if model_header is None else classify_tensors(model_header.tensors)[1]
        if (not all_in_one and "vae" not in components and "taesd" not in components
                and architecture in VAE_IS_A_SEPARATE_FILE):
            # The core would fail listing every missing decoder tensor. TAESD alone is a full decoder (and
            # encoder): sd-cli generates with it as the only VAE.
            raise ValueError(f"diffusion_model is a {architecture} model, whose VAE is a separate file: "
                             "pass vae= (or taesd=)")
        if "high_noise_diffusion_model" in components and architecture and not architecture.startswith("Wan"):
            # The core loads it beside the model and never runs it.
            raise ValueError(f"high_noise_diffusion_model: the {architecture} model does not use one (Wan2.2 "
                             "A14B models do)")
        video_inputs = wan_video_inputs(architecture) if architecture and architecture.startswith("Wan2") else None
        if video_inputs is not None:
            if video_inputs.needs_clip_vision and "clip_vision" not in components:
                # The core would load it with an empty vision tower and fail at the first call.
                raise ValueError(f"diffusion_model is a {architecture} model, which needs the CLIP vision "
                                 "encoder: pass clip_vision=")
            if video_inputs.always_encodes and vae_decode_only:
                why = "vae_decode_only=True" if asked else "the VAE file has no encoder"
                raise ValueError(f"diffusion_model is a {architecture} model, which runs the VAE encoder on "
                                 f"every call, but {why}")
        return cls(components, architecture, bool(vae_decode_only), video_inputs)

    def check_video_inputs(self, **given) -> None:
        """Refuse an input the loaded Wan model would silently ignore."""
        if self.video_inputs is None:
            return
        for name, value in given.items():
            if value is not None and not getattr(self.video_inputs, name):
                raise ValueError(f"{name}: the {self.architecture} model does not use it (only "
                                 f"{_VIDEO_INPUT_USERS[name]} do)")

    def check_hires_size(self, request) -> None:
        """Refuse a hires output larger than MAX_SIDE a side, computed as the core's resolve_hires does
        (stable-diffusion.cpp): both sides given, or one for both, or round(side * scale) of the first pass
        (itself aligned up to the model's spatial multiple), all aligned up to that multiple. Past ~26,755
        pixels a side the core's int pixel count overflows."""
        multiple = spatial_multiple(self.architecture)
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


def has_vae_encoder(header) -> bool:
    """Whether a VAE (or all-in-one) file carries the encoder; unknown formats are assumed to."""
    if header is None:
        return True
    # conv_in: the LDM KL VAE; conv1: the Wan VAE.
    return any(name.endswith(("encoder.conv_in.weight", "encoder.conv1.weight")) and "decoder" not in name
               for name in header.tensors)


def spatial_multiple(architecture: Optional[str]) -> int:
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
