"""Flux.1 parts: a tiny DiT with a full-size CLIP-L (and optionally T5-XXL) and a KL VAE.

The install check (``python -m sdcpp_py.selfcheck``) builds these, so this module and the ones it imports
ship in release wheels. Sizes the core reads from the weights are made tiny: the DiT's depth, single-block
depth and hidden size (from ``txt_in.weight``); the VAE decoder's width (from ``decoder.conv_in.weight``).
Head dim stays 128 (the rope axes sum to 128) and the text width 4096.
"""

from __future__ import annotations

import os
import pathlib

from ._encoders import clip_l, kl_vae, t5_xxl
from ._tensors import Spec, build_component, cached_path


def _flux_dit(s: Spec, depth: int, depth_single: int, hidden: int, guidance: bool) -> None:
    """BFL Flux.1 names (flux.hpp); head dim 128, mlp ratio 4, 16ch latent in 2x2 patches."""
    h, mlp, head_dim, patch_ch = hidden, 4 * hidden, 128, 64
    s.linear("img_in", patch_ch, h)
    s.linear("txt_in", 4096, h)  # context_in_dim and hidden_size are read from this
    s.linear("time_in.in_layer", 256, h)
    s.linear("time_in.out_layer", h, h)
    if guidance:  # presence switches guidance_embed on (flux-dev style)
        s.linear("guidance_in.in_layer", 256, h)
        s.linear("guidance_in.out_layer", h, h)
    s.linear("vector_in.in_layer", 768, h)  # pooled CLIP-L
    s.linear("vector_in.out_layer", h, h)
    for i in range(depth):
        for stream in ("img", "txt"):
            p = f"double_blocks.{i}.{stream}_"
            s.linear(p + "mod.lin", h, 6 * h)
            s.linear(p + "attn.qkv", h, 3 * h)
            s.add(p + "attn.norm.query_norm.scale", (head_dim,), "one")
            s.add(p + "attn.norm.key_norm.scale", (head_dim,), "one")  # head dim read here
            s.linear(p + "attn.proj", h, h)
            s.linear(p + "mlp.0", h, mlp)
            s.linear(p + "mlp.2", mlp, h)
    for i in range(depth_single):
        p = f"single_blocks.{i}."
        s.linear(p + "linear1", h, 3 * h + mlp)
        s.linear(p + "linear2", h + mlp, h)
        s.add(p + "norm.query_norm.scale", (head_dim,), "one")
        s.add(p + "norm.key_norm.scale", (head_dim,), "one")
        s.linear(p + "modulation.lin", h, 3 * h)
    s.linear("final_layer.linear", h, patch_ch)
    s.linear("final_layer.adaLN_modulation.1", h, 2 * h)


def flux_components(
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    t5xxl: bool = False,
    depth: int = 1,
    depth_single_blocks: int = 1,
    hidden_size: int = 128,
    guidance_embed: bool = True,
    diffusion_format: str = "safetensors",
    diffusion_type: str = "F16",
    vae_ch: int = 32,
    vae_encoder: bool = False,
) -> dict[str, pathlib.Path]:
    """Synthetic Flux.1 component files, keyed by Context argument name.

    - "diffusion_model": tiny DiT (hidden_size must be a multiple of 128;
      ~3.2 MB at the defaults).  ``diffusion_format="gguf"`` writes GGUF with
      ``diffusion_type`` "F32", "F16" or "Q8_0" for the matrices.
    - "clip_l": full-size CLIP-L text encoder (123M params, ~250 MB as F16 in
      RAM), aliased/sparse on disk.
    - "vae": 16-channel KL VAE, decoder width ``vae_ch`` (multiple of 32).
      The encoder (fixed ch 128) is only needed when the context is not
      vae_decode_only (img2img, hires, control); add it with ``vae_encoder``.
    - "t5xxl" (``t5xxl=True``): full-size T5-XXL encoder (4.76B params; 9.3 GB
      RAM as F16 when loaded, minutes of CPU per prompt), aliased/sparse on
      disk.  Without it the core feeds zeros of width 4096 to the DiT.
    """
    if hidden_size % 128 or vae_ch % 32:
        raise ValueError("hidden_size must be a multiple of 128 and vae_ch of 32")
    if diffusion_format not in ("safetensors", "gguf"):
        raise ValueError(f"unknown diffusion_format {diffusion_format!r}")
    out_dir = pathlib.Path(out_dir)
    dit = dict(kind="flux-dit", seed=seed, depth=depth, depth_single_blocks=depth_single_blocks,
               hidden_size=hidden_size, guidance_embed=guidance_embed, format=diffusion_format,
               type=diffusion_type if diffusion_format == "gguf" else "F16")
    clip = dict(kind="clip-l", seed=seed)
    vae = dict(kind="flux-vae", seed=seed, ch=vae_ch, encoder=vae_encoder)
    t5 = dict(kind="t5xxl", seed=seed)

    ext = "gguf" if diffusion_format == "gguf" else "safetensors"
    paths = {
        "diffusion_model": build_component(
            cached_path(out_dir, dit, ext), dit,
            lambda s: _flux_dit(s, depth, depth_single_blocks, hidden_size, guidance_embed),
            alias=False, std=None, fmt=diffusion_format, gguf_type=diffusion_type),
        "clip_l": build_component(cached_path(out_dir, clip), clip, lambda s: clip_l(s.sub("text_model.")),
                             alias=True),
        "vae": build_component(cached_path(out_dir, vae), vae,
                          lambda s: kl_vae(s, 16, vae_ch, vae_encoder, quant=False), alias=True),
    }
    if t5xxl:
        paths["t5xxl"] = build_component(cached_path(out_dir, t5), t5, t5_xxl, alias=True)
    return paths
