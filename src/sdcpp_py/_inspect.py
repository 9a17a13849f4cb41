"""`inspect(path)`: what a component file is, from its header alone (no weight reads)."""

from __future__ import annotations

import math
import os
import stat
from dataclasses import dataclass, field
from typing import Dict, Optional

from ._formats import FileHeader, TensorInfo
from ._headers import check_component


@dataclass(frozen=True)
class ComponentInfo:
    path: str
    format: str  # "safetensors", "gguf", "torch-zip" or "torch-legacy" (a .pt/.ckpt file)
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
    # One substring search over all names instead of a scan per question (a name with a newline could only
    # make a part look present, which at worst refuses a slot).
    joined = "\n".join(names)
    has = lambda part: part in joined  # noqa: E731
    if any(has(k) for k in ("lora_up", "lora_down", "lora_A.", "lora_B.")):
        return "lora", None
    has_unet_or_dit = has("model.diffusion_model.")
    if has("control_model.input_hint_block."):  # lllyasviel's ControlNet 1.0 .pth: a whole SD1 model beside it
        return "control_net", _unet_family(tensors, suffix=" ControlNet")
    if has_unet_or_dit and (has("cond_stage_model.") or has("conditioner.")) and has("first_stage_model."):
        if has("conditioner.embedders.1."):
            return "all_in_one", "SDXL"
        if has("cond_stage_model.model.token_embedding"):
            return "all_in_one", "SD2"
        return "all_in_one", "SD1"
    if has("fuse_module."):  # pmid.hpp
        return "photo_maker", "PhotoMaker v2" if has("qformer_perceiver.") else "PhotoMaker v1"
    if has("input_hint_block."):  # control.hpp; the width its cross attention expects names the family
        return "control_net", _unet_family(tensors, suffix=" ControlNet")
    if (has("conv_first.weight") and has("conv_last.weight")) or (has("model.0.weight") and has("model.1.sub.")):
        return "upscaler", "ESRGAN"  # the core's RRDBNet names, or the original ESRGAN ones it converts
    if any(name.endswith(("emb_params", "string_to_param.*")) or name in ("clip_l", "clip_g")
           for name in names) and len(tensors) <= 2:
        return "embedding", "textual inversion"
    if not has_unet_or_dit and has("input_blocks.0.0.weight") and has("middle_block."):
        return "diffusion_model", _unet_family(tensors)  # a bare LDM UNet (what split writes)
    if has("blocks.0.cross_attn.norm_k.weight"):  # the core's own Wan marker
        return "diffusion_model", wan_variant(tensors) or "Wan"
    if has("double_stream_modulation_img.lin.weight"):  # the core's own Flux.2 marker
        return "diffusion_model", "Flux.2"
    # DiT families by the markers of the core's get_sd_version (model.cpp), Flux.1 derivatives first.
    for marker, family in (("nerf_final_layer_conv.", "Chroma Radiance"), ("distilled_guidance_layer.", "Chroma"),
                           ("double_blocks.0.img_mlp.gate_proj.weight", "Ovis-Image"),
                           ("transformer_blocks.0.img_mod.1.weight", "Qwen-Image"),
                           ("cap_embedder.0.weight", "Z-Image"), ("layers.0.adaLN_sa_ln.weight", "Ernie-Image"),
                           ("llm_adapter.blocks.0.cross_attn.q_proj.weight", "Anima")):
        if has(marker):
            return "diffusion_model", family
    if has("double_blocks.0.img_attn.qkv.weight"):
        return "diffusion_model", "Flux.1"
    if has("joint_blocks.0."):
        return "diffusion_model", "SD3"
    if has("encoder.block.0.layer.0.SelfAttention.q.weight"):
        shared = _find(tensors, "shared.weight")
        return "t5xxl", "UMT5-XXL" if shared is not None and max(shared.shape, default=0) > 200_000 else "T5-XXL"
    vision_q = _find(tensors, "vision_model.encoder.layers.0.self_attn.q_proj.weight")
    if vision_q is not None and not has("text_model.") and not has("fuse_module."):
        width = max(vision_q.shape, default=0)  # a scalar or empty shape: no width
        return "clip_vision", {1024: "CLIP-ViT-L/14", 1280: "CLIP-ViT-H/14", 1664: "CLIP-ViT-bigG/14"}.get(width)
    # q_proj is (d, d); a fused in_proj (OpenCLIP layout, e.g. a clip_g written by split) is (3d, d).
    q_proj = (_find(tensors, "encoder.layers.0.self_attn.q_proj.weight")
              or _find(tensors, "encoder.layers.0.self_attn.in_proj.weight"))
    if q_proj is not None and has("text_model."):
        width = min(q_proj.shape, default=0)
        return ("clip_l", "CLIP-L") if width == 768 else ("clip_g", "CLIP-G") if width == 1280 else ("unknown", None)
    q_norm = _find(tensors, "layers.0.self_attn.q_norm.weight")
    if q_norm is not None and has("embed_tokens.weight"):
        return "llm", "Qwen3"  # per-head q/k norms: Qwen3 (Qwen2.5 has none)
    if has("decoder.layers.") and has(".conv.4.weight"):  # tae.hpp TinyDecoder blocks
        return "taesd", "TAESD"
    if (has("visual.blocks.") or has("v.blk.")) and not has("embed_tokens."):
        return "llm_vision", "Qwen2.5-VL vision"  # the vision tower alone, HF or GGUF mmproj names
    if has("visual.blocks.") and has("embed_tokens."):
        return "llm", "Qwen2.5-VL"  # the whole model (ComfyUI's qwen_2.5_vl_7b): the core takes its tower too
    if has("decoder.conv1.weight") and has("decoder.head.0.gamma"):
        return "vae", "Wan VAE"
    conv_in = _find(tensors, "decoder.conv_in.weight")
    if conv_in is not None and not has_unet_or_dit:
        latent_channels = conv_in.shape[1] if len(conv_in.shape) == 4 else None
        return "vae", {32: "Flux.2 VAE", 16: "Flux/SD3 VAE", 4: "SD VAE"}.get(latent_channels, "KL VAE")
    return "unknown", None


def _unet_family(tensors: Dict[str, TensorInfo], suffix: str = "") -> Optional[str]:
    """SD1/SD2/SDXL from the text width a UNet's cross attention expects (768/1024/2048: never one of its
    channel counts, 320/640/1280, so the axis order of the file does not matter)."""
    to_k = _find(tensors, "attn2.to_k.weight")
    widths = {768: "SD1", 1024: "SD2", 2048: "SDXL"}
    family = next((widths[d] for d in (to_k.shape if to_k else ()) if d in widths), None)
    return family + suffix if family else None


def _max_block(tensors: Dict[str, TensorInfo], marker: str) -> int:
    """1 + the highest N in ``<marker>N.`` among the tensor names (0 if none)."""
    highest = -1
    for name in tensors:
        at = name.find(marker)
        if at >= 0 and (at == 0 or name[at - 1] == "."):  # so "blocks." never matches inside "vace_blocks."
            index = name[at + len(marker):].split(".", 1)[0]
            if index.isdigit():
                highest = max(highest, int(index))
    return highest + 1


def wan_variant(tensors: Dict[str, TensorInfo]) -> Optional[str]:
    """The core's name for a Wan DiT (WanRunner's ``desc``, e.g. "Wan2.1-VACE-1.3B"), decided as the core
    decides: depth 30 or 40, VACE blocks, an image embedder, and the patch embedding's input channels
    (the product in*out is format-independent: GGUF folds the 5-D kernel into 4 dims)."""
    depth = _max_block(tensors, "blocks.")
    q = _find(tensors, "blocks.0.self_attn.q.weight")
    patch = _find(tensors, "patch_embedding.weight")
    if depth not in (30, 40) or q is None or patch is None or max(q.shape, default=0) == 0:
        return None  # not one the core builds (a zero-size q would divide by zero here)
    in_channels = math.prod(patch.shape) // 4 // max(q.shape)  # kernel 1x2x2
    vace = _max_block(tensors, "vace_blocks.") > 0
    image_embedder = any("img_emb." in name for name in tensors)
    if depth == 30:
        if in_channels == 48:
            return "Wan2.2-TI2V-5B"
        return "Wan2.1-VACE-1.3B" if vace else "Wan2.1-I2V-1.3B" if image_embedder else "Wan2.1-T2V-1.3B"
    if image_embedder:
        return "Wan2.1-FLF2V-14B" if any("img_emb.emb_pos" in name for name in tensors) else "Wan2.1-I2V-14B"
    if in_channels == 36:
        return "Wan2.2-I2V-14B"
    return "Wan2.x-VACE-14B" if vace else "Wan2.x-T2V-14B"


@dataclass(frozen=True)
class VideoInputs:
    """Which video inputs a Wan DiT uses (per the core's generate_video), and what it needs to load."""
    init_image: bool
    end_image: bool
    control_frames: bool
    always_encodes: bool  # runs the VAE encoder on every call, inputs or not
    needs_clip_vision: bool


def wan_video_inputs(variant: str) -> VideoInputs:
    image_to_video = variant in ("Wan2.1-I2V-14B", "Wan2.2-I2V-14B", "Wan2.1-I2V-1.3B", "Wan2.1-FLF2V-14B")
    vace = "VACE" in variant
    return VideoInputs(
        init_image=image_to_video or vace or variant == "Wan2.2-TI2V-5B",  # VACE: as the reference image
        end_image=image_to_video,
        control_frames=vace,
        always_encodes=image_to_video or vace,
        needs_clip_vision=variant in ("Wan2.1-I2V-14B", "Wan2.1-I2V-1.3B", "Wan2.1-FLF2V-14B"),
    )


def inspect(path: "str | os.PathLike[str]") -> ComponentInfo:
    """Describe a model file from its header: role, architecture, sizes and weight types.

    Raises:
        FileNotFoundError: no such file.
        IsADirectoryError: the path is a directory.
        ValueError: the path is not a regular file (a device such as /dev/null, a FIFO, a socket).
        InvalidComponentError: a header is malformed, or the file is in none of the core's formats.
    """
    path = os.fsdecode(os.fspath(path))  # bytes paths too, as Context takes them
    # stat, never open, before we know it is a regular file: opening a FIFO for reading blocks until a writer comes.
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):  # the latter: a file named as a folder on the way
        raise FileNotFoundError(f"path: no such file: {path!r}") from None
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(f"path: {path!r} is a directory")
    if not stat.S_ISREG(mode):
        raise ValueError(f"path: {path!r} is not a regular file")
    header: FileHeader = check_component("path", path)
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
    if role in _TEXT_ENCODERS + ("vae", "clip_vision") and slot != role and not (role == "vae" and slot == "taesd"):
        return f"{slot}: this file looks like a {what}{role} component; pass it as {role}="
    if role in ("taesd", "control_net", "photo_maker", "llm_vision") and slot != role:
        return f"{slot}: this file is a {what}{role} component; pass it as {role}="
    if role == "upscaler":
        return f"{slot}: this file is an {what}upscaler; load it with sdcpp_py.Upscaler"
    if role == "embedding":
        return f"{slot}: this file is a textual-inversion embedding; pass it in embeddings="
    if role == "diffusion_model" and slot not in ("diffusion_model", "high_noise_diffusion_model", "model"):
        return f"{slot}: this file is a {what}diffusion model; pass it as diffusion_model="
    if role == "diffusion_model" and slot == "model":
        bundled = any(name.startswith(_BUNDLED_PARTS) for name in header.tensors)
        if not bundled:
            return (f"model: this file is a bare {what}diffusion model (no text encoder or VAE inside); pass it as "
                    "diffusion_model= with its parts")
    return None
