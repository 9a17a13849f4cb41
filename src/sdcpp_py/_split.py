"""`split(checkpoint, out_dir)`: an all-in-one checkpoint as separate component files that can be shared."""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Tuple, Union

from ._enums import WeightType
from ._formats import TensorInfo, write_safetensors_chunks
from ._headers import check_component
from ._inspect import classify_tensors

PathLike = Union[str, "os.PathLike[str]"]

# Per architecture: checkpoint name prefix -> Context keyword. The prefix is stripped, because the core adds
# its own per slot when it loads a part (stable-diffusion.cpp: init_from_file(path, prefix)).
_LAYOUTS: Dict[str, Tuple[Tuple[str, str], ...]] = {
    "SD1": (("model.diffusion_model.", "diffusion_model"), ("cond_stage_model.transformer.", "clip_l"),
            ("first_stage_model.", "vae")),
    "SDXL": (("model.diffusion_model.", "diffusion_model"), ("conditioner.embedders.0.transformer.", "clip_l"),
             ("conditioner.embedders.1.", "clip_g"), ("first_stage_model.", "vae")),
}
_COPY_CHUNK = 1 << 22

# OpenCLIP text-tower names (SDXL's second encoder in a checkpoint) -> the HF names a separate clip_g file has.
# The core renames them only under a checkpoint's own prefix, so a split-out clip_g must carry the HF names.
_OPEN_CLIP_TEXT = {
    "model.token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "model.positional_embedding": "text_model.embeddings.position_embedding.weight",
    "model.ln_final.weight": "text_model.final_layer_norm.weight",
    "model.ln_final.bias": "text_model.final_layer_norm.bias",
    "model.text_projection": "text_model.text_projection",
}
_OPEN_CLIP_BLOCK = {
    "attn.in_proj_weight": "self_attn.in_proj.weight", "attn.in_proj_bias": "self_attn.in_proj.bias",
    "attn.out_proj.weight": "self_attn.out_proj.weight", "attn.out_proj.bias": "self_attn.out_proj.bias",
    "ln_1.weight": "layer_norm1.weight", "ln_1.bias": "layer_norm1.bias",
    "ln_2.weight": "layer_norm2.weight", "ln_2.bias": "layer_norm2.bias",
    "mlp.c_fc.weight": "mlp.fc1.weight", "mlp.c_fc.bias": "mlp.fc1.bias",
    "mlp.c_proj.weight": "mlp.fc2.weight", "mlp.c_proj.bias": "mlp.fc2.bias",
}


def _open_clip_to_hf(name: str) -> Optional[str]:
    """The HF name of an OpenCLIP text-tower tensor; None for tensors the core does not use (logit_scale)."""
    if name in _OPEN_CLIP_TEXT:
        return _OPEN_CLIP_TEXT[name]
    block = "model.transformer.resblocks."
    if name.startswith(block):
        index, _, rest = name[len(block):].partition(".")
        if index.isdigit() and rest in _OPEN_CLIP_BLOCK:
            return f"text_model.encoder.layers.{index}.{_OPEN_CLIP_BLOCK[rest]}"
    return None


_RENAME = {("SDXL", "clip_g"): _open_clip_to_hf}


@dataclass(frozen=True)
class SplitResult:
    """What ``split`` wrote. ``parts`` maps Context keywords to files: ``Context(**result.parts, **result.options)``
    loads them and gives the checkpoint's pixels."""
    parts: Dict[str, pathlib.Path]
    architecture: str
    bytes_before: int  # the checkpoint's size
    part_bytes: Dict[str, int]  # per Context keyword
    reused: Tuple[str, ...]  # parts an earlier split already wrote (same content, same file)
    dropped: Tuple[str, ...] = field(default=())  # tensors no part uses (EMA copies, training buffers)
    # Context keywords that make the parts behave as the checkpoint did: the core scales an SDXL checkpoint's
    # own VAE convolutions by 1/32 (fp16 overflow) but trusts a separate VAE file to be the fixed one.
    options: Dict[str, object] = field(default_factory=dict)

    @property
    def bytes_after(self) -> int:
        return sum(self.part_bytes.values())

    def bytes_saved(self, models: int = 1) -> int:
        """Bytes saved when ``models`` checkpoints of this kind, each split this way, share one set of text
        encoders and VAE (their diffusion models differ): ``models`` checkpoints minus the split files."""
        if models < 1:
            raise ValueError(f"models must be at least 1, not {models}")
        shared = self.bytes_after - self.part_bytes["diffusion_model"]
        return models * self.bytes_before - (models * self.part_bytes["diffusion_model"] + shared)


def split(checkpoint: PathLike, out_dir: PathLike, *,
          weight_types: Optional[Mapping[str, Union[WeightType, str, int]]] = None) -> SplitResult:
    """Split an all-in-one SD1.x or SDXL safetensors checkpoint into its diffusion model, text encoder(s) and VAE.

    Each part is written as safetensors with the checkpoint's bytes unchanged, or converted to GGUF with the
    core's converter when ``weight_types`` names a type for it (e.g. ``{"diffusion_model": "q8_0"}``). The text
    encoders and VAE are named by their content (``clip_l-SD1-<hash>.safetensors``), so splitting several
    fine-tunes that share an encoder writes it once; the diffusion model is named after the checkpoint.

    Raises:
        FileNotFoundError / InvalidComponentError: the checkpoint is missing or malformed.
        ValueError: not an all-in-one SD1/SDXL safetensors checkpoint, or a bad ``weight_types`` entry.
    """
    from ._checks import model_file
    from ._tools import convert

    source = model_file("checkpoint", checkpoint)
    header = check_component("checkpoint", source)
    if header is None or header.format != "safetensors":
        raise ValueError(f"checkpoint: {source!r} is not a safetensors file (split reads safetensors checkpoints)")
    role, architecture = classify_tensors(header.tensors)
    if role != "all_in_one" or architecture not in _LAYOUTS:
        what = f"{architecture} {role}" if architecture else role
        raise ValueError(f"checkpoint: split takes an all-in-one SD1 or SDXL checkpoint; this file is {what}")
    layout = _LAYOUTS[architecture]
    types = {}
    for name, value in (weight_types or {}).items():
        if name not in [slot for _, slot in layout]:
            raise ValueError(f"weight_types: {architecture} has no part {name!r} (its parts: "
                             f"{', '.join(slot for _, slot in layout)})")
        types[name] = WeightType.coerce(value, f"weight_types[{name!r}]")
    target = pathlib.Path(out_dir)
    target.mkdir(parents=True, exist_ok=True)

    groups: Dict[str, List[TensorInfo]] = {slot: [] for _, slot in layout}
    dropped = []
    for name, info in header.tensors.items():
        slot = next((slot for prefix, slot in layout if name.startswith(prefix)), None)
        if slot is None:
            dropped.append(name)
            continue
        prefix = next(prefix for prefix, s in layout if s == slot)
        part_name = name[len(prefix):]
        rename = _RENAME.get((architecture, slot))
        if rename is not None and not part_name.startswith("text_model."):  # already HF-named: keep
            part_name = rename(part_name)
            if part_name is None:
                dropped.append(name)
                continue
        groups[slot].append(TensorInfo(part_name, info.dtype, info.shape, info.nbytes, info.offset))

    stem = pathlib.Path(source).stem
    parts, sizes, reused = {}, {}, []
    with open(source, "rb") as handle:
        for _, slot in layout:
            tensors = sorted(groups[slot], key=lambda t: t.name)
            if not tensors:
                raise ValueError(f"checkpoint: no {slot} tensors in this {architecture} checkpoint")
            digest = _content_digest(handle, tensors)
            wtype = types.get(slot)
            suffix = "" if wtype is None else f".{wtype.name.lower()}"
            if slot == "diffusion_model":
                base = f"{stem}.{slot}{suffix}"
            else:
                base = f"{slot}-{architecture}-{digest[:12]}{suffix}"
            final = target / (base + (".gguf" if wtype is not None else ".safetensors"))
            if final.exists() and slot != "diffusion_model":
                reused.append(slot)
            else:
                plain = final if wtype is None else target / (base + ".tmp.safetensors")
                write_safetensors_chunks(plain, tensors, _ranges(handle, tensors), {"sdcpp_py.split": json.dumps(
                    {"from": os.path.basename(source), "part": slot, "content_sha256": digest})})
                if wtype is not None:
                    try:
                        convert(plain, final, weight_type=wtype)
                    finally:
                        plain.unlink()
            parts[slot] = final
            sizes[slot] = final.stat().st_size
    options = {"force_sdxl_vae_conv_scale": True} if architecture == "SDXL" else {}
    return SplitResult(parts, architecture, header.file_size, sizes, tuple(reused), tuple(sorted(dropped)), options)


def _ranges(handle, tensors: List[TensorInfo]):
    for tensor in tensors:
        handle.seek(tensor.offset)
        left = tensor.nbytes
        while left:
            chunk = handle.read(min(left, _COPY_CHUNK))
            if not chunk:
                raise ValueError(f"checkpoint: tensor {tensor.name!r} is truncated")
            left -= len(chunk)
            yield chunk


def _content_digest(handle, tensors: List[TensorInfo]) -> str:
    """sha256 over names, dtypes, shapes and bytes: equal parts of two checkpoints get one file name."""
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(f"{tensor.name}|{tensor.dtype}|{tensor.shape}\n".encode())
    for chunk in _ranges(handle, tensors):
        digest.update(chunk)
    return digest.hexdigest()
