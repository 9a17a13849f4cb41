"""`inspect(path)`: what a component file is, from its header alone (no weight reads)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Dict, Optional

from ._headers import FileHeader, TensorInfo, check_component


@dataclass(frozen=True)
class ComponentInfo:
    path: str
    format: str  # "safetensors", "gguf" or "other"
    role: str  # a Context argument name, "all_in_one", "lora" or "unknown"
    architecture: Optional[str]
    tensor_count: int
    parameter_count: int
    file_size: int
    weight_types: Dict[str, float] = field(default_factory=dict)  # type -> share of tensor bytes
    reason: str = ""  # why the role is "unknown"


def _find(tensors: Dict[str, TensorInfo], suffix: str) -> Optional[TensorInfo]:
    for name, info in tensors.items():
        if name.endswith(suffix):
            return info
    return None


def classify_tensors(tensors: Dict[str, TensorInfo]):
    """(role, architecture) of a file from its tensor names and shapes."""
    names = tensors.keys()
    has = lambda part: any(part in name for name in names)  # noqa: E731
    if any(k in name for name in names for k in ("lora_up", "lora_down", "lora_A.", "lora_B.")):
        return "lora", None
    has_unet_or_dit = has("model.diffusion_model.")
    if has_unet_or_dit and (has("cond_stage_model.") or has("conditioner.")) and has("first_stage_model."):
        if has("conditioner.embedders.1."):
            return "all_in_one", "SDXL"
        if has("cond_stage_model.model.token_embedding"):
            return "all_in_one", "SD2"
        return "all_in_one", "SD1"
    if has("blocks.0.cross_attn.norm_k.weight"):  # the core's own Wan marker
        return "diffusion_model", "Wan"
    if has("double_stream_modulation_img.lin.weight"):  # the core's own Flux.2 marker
        return "diffusion_model", "Flux.2"
    if has("double_blocks.0.img_attn.qkv.weight"):
        return "diffusion_model", "Flux.1"
    if has("joint_blocks.0."):
        return "diffusion_model", "SD3"
    if has("encoder.block.0.layer.0.SelfAttention.q.weight"):
        shared = _find(tensors, "shared.weight")
        return "t5xxl", "UMT5-XXL" if shared is not None and max(shared.shape) > 200_000 else "T5-XXL"
    q_proj = _find(tensors, "encoder.layers.0.self_attn.q_proj.weight")
    if q_proj is not None and has("text_model."):
        width = max(q_proj.shape)
        return ("clip_l", "CLIP-L") if width == 768 else ("clip_g", "CLIP-G") if width == 1280 else ("unknown", None)
    q_norm = _find(tensors, "layers.0.self_attn.q_norm.weight")
    if q_norm is not None and has("embed_tokens.weight"):
        return "llm", "Qwen3"  # per-head q/k norms: Qwen3 (Qwen2.5 has none)
    if has("decoder.conv1.weight") and has("decoder.head.0.gamma"):
        return "vae", "Wan VAE"
    conv_in = _find(tensors, "decoder.conv_in.weight")
    if conv_in is not None and not has_unet_or_dit:
        latent_channels = conv_in.shape[1] if len(conv_in.shape) == 4 else None
        return "vae", {32: "Flux.2 VAE", 16: "Flux/SD3 VAE", 4: "SD VAE"}.get(latent_channels, "KL VAE")
    return "unknown", None


def inspect(path: "str | os.PathLike[str]") -> ComponentInfo:
    """Describe a model file from its header: role, architecture, sizes and weight types.

    Raises:
        FileNotFoundError: no such file.
        InvalidComponentError: a safetensors/GGUF header is malformed.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"path: no such file: {path!r}")
    header: Optional[FileHeader] = check_component("path", path)
    if header is None:
        return ComponentInfo(path, "other", "unknown", None, 0, 0, os.path.getsize(path),
                             reason="not safetensors or GGUF: only the core can read it")
    role, architecture = classify_tensors(header.tensors)
    total_bytes = sum(t.nbytes for t in header.tensors.values()) or 1
    shares: Dict[str, float] = {}
    for tensor in header.tensors.values():
        shares[tensor.dtype] = shares.get(tensor.dtype, 0.0) + tensor.nbytes / total_bytes
    return ComponentInfo(
        path=path, format=header.format, role=role, architecture=architecture,
        tensor_count=len(header.tensors),
        parameter_count=sum(math.prod(t.shape) for t in header.tensors.values()),
        file_size=header.file_size, weight_types=dict(sorted(shares.items(), key=lambda kv: -kv[1])),
        reason="" if role != "unknown" else "no tensor names of a known component",
    )


_TEXT_ENCODERS = ("clip_l", "clip_g", "t5xxl", "llm")
_BUNDLED_PARTS = ("vae.", "first_stage_model.", "text_encoders.", "cond_stage_model.", "conditioner.")


def slot_mismatch(slot: str, header: FileHeader) -> Optional[str]:
    """Why a file must not go into Context argument ``slot`` (None when it may, or when we cannot tell).

    Only clear cases are refused: a file whose tensor names say it is a different component.
    """
    role, architecture = classify_tensors(header.tensors)
    what = f"{architecture} " if architecture else ""
    if role == "lora":
        return f"{slot}: this file is a LoRA; pass it in loras= (or name it in the prompt with lora_dir=)"
    if role == "all_in_one" and slot != "model":
        return f"{slot}: this file is an all-in-one {what}checkpoint; pass it as model="
    if role in _TEXT_ENCODERS + ("vae",) and slot != role and not (role == "vae" and slot == "taesd"):
        return f"{slot}: this file looks like a {what}{role} component; pass it as {role}="
    if role == "diffusion_model" and slot not in ("diffusion_model", "high_noise_diffusion_model", "model"):
        return f"{slot}: this file is a {what}diffusion model; pass it as diffusion_model="
    if role == "diffusion_model" and slot == "model":
        bundled = any(name.startswith(_BUNDLED_PARTS) for name in header.tensors)
        if not bundled:
            return (f"model: this file is a bare {what}diffusion model (no text encoder or VAE inside); pass it as "
                    "diffusion_model= with its parts")
    return None
