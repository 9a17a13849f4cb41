"""Stable Diffusion 1.x and SDXL: full-size all-in-one checkpoints (original LDM/SGM names) and the SD1
ControlNet. The core hard-codes these UNets' sizes, so they are full size, aliased and sparse on disk."""

from __future__ import annotations

import os
import pathlib

from ._encoders import clip_l, kl_vae
from ._tensors import Spec, build_component, params_hash


def _unet_sd1(s: Spec, *, controlnet: bool = False) -> None:
    """Original LDM SD1.x UNet (unet.hpp): fixed 320 channels, mult 1,2,4,4,
    attention at ds 1,2,4, 8 heads, context 768. ``controlnet``: its ControlNet instead (control.hpp): the
    encoder half plus the hint encoder and one 1x1 "zero" conv per input block (random here, so the control
    image visibly steers the result)."""
    _unet(s, mult=(1, 2, 4, 4), depth=(1, 1, 1, 0), mid_depth=1, ctx=768, controlnet=controlnet)


def _unet_sdxl(s: Spec) -> None:
    """Original SGM SDXL UNet (unet.hpp, all hard-coded for sd_version_is_sdxl): 320 channels, mult 1,2,4,
    transformer depth 0,2,10 (middle 10), head dim 64 (heads do not change shapes), context 2048, linear
    proj_in/proj_out, and the ``label_emb`` of the 2816-wide pooled-text + size vector."""
    _unet(s, mult=(1, 2, 4), depth=(0, 2, 10), mid_depth=10, ctx=2048, adm=2816, linear_proj=True)


def _unet(s: Spec, *, mult: tuple, depth: tuple, mid_depth: int, ctx: int, adm: int = 0,
          linear_proj: bool = False, controlnet: bool = False) -> None:
    """LDM UNet with 320 base channels and 2 res blocks per level; ``depth[i]`` transformer blocks at level
    i (0: no attention there)."""
    mc, temb, n_res = 320, 1280, 2

    def res(p, c_in, c_out):
        s.norm(p + "in_layers.0", c_in)
        s.conv(p + "in_layers.2", c_in, c_out)
        s.linear(p + "emb_layers.1", temb, c_out)
        s.norm(p + "out_layers.0", c_out)
        s.conv(p + "out_layers.3", c_out, c_out)
        if c_in != c_out:
            s.conv(p + "skip_connection", c_in, c_out, 1)

    def proj(name, c):  # the core picks Linear or 1x1 Conv2d from the weight's rank
        if linear_proj:
            s.linear(name, c, c)
        else:
            s.conv(name, c, c, 1)

    def transformer(p, c, n):
        s.norm(p + "norm", c)
        proj(p + "proj_in", c)
        for k in range(n):
            b = f"{p}transformer_blocks.{k}."
            for attn, c_kv in (("attn1", c), ("attn2", ctx)):
                s.linear(f"{b}{attn}.to_q", c, c, bias=False)
                s.linear(f"{b}{attn}.to_k", c_kv, c, bias=False)
                s.linear(f"{b}{attn}.to_v", c_kv, c, bias=False)
                s.linear(f"{b}{attn}.to_out.0", c, c)
            s.linear(b + "ff.net.0.proj", c, 8 * c)  # GEGLU: 2 x 4c
            s.linear(b + "ff.net.2", 4 * c, c)
            for n_ in ("norm1", "norm2", "norm3"):
                s.norm(b + n_, c)
        proj(p + "proj_out", c)

    s.linear("time_embed.0", mc, temb)
    s.linear("time_embed.2", temb, temb)
    if adm:
        s.linear("label_emb.0.0", adm, temb)
        s.linear("label_emb.0.2", temb, temb)
    s.conv("input_blocks.0.0", 4, mc)
    if controlnet:
        hint = [(3, 16), (16, 16), (16, 32), (32, 32), (32, 96), (96, 96), (96, 256), (256, mc)]
        for i, (c_in, c_out) in enumerate(hint):
            s.conv(f"input_hint_block.{2 * i}", c_in, c_out)
        s.conv("zero_convs.0.0", mc, mc, 1)
    chans, c, idx = [mc], mc, 0
    for i, m in enumerate(mult):
        for _ in range(n_res):
            idx += 1
            res(f"input_blocks.{idx}.0.", c, m * mc)
            c = m * mc
            if depth[i]:
                transformer(f"input_blocks.{idx}.1.", c, depth[i])
            chans.append(c)
            if controlnet:
                s.conv(f"zero_convs.{idx}.0", c, c, 1)
        if i != len(mult) - 1:
            idx += 1
            s.conv(f"input_blocks.{idx}.0.op", c, c)
            chans.append(c)
            if controlnet:
                s.conv(f"zero_convs.{idx}.0", c, c, 1)
    res("middle_block.0.", c, c)
    transformer("middle_block.1.", c, mid_depth)  # its presence marks full SD1/SDXL (not tiny, SSD-1B, Vega)
    res("middle_block.2.", c, c)
    if controlnet:
        s.conv("middle_block_out.0", c, c, 1)
        return
    out = 0
    for i in reversed(range(len(mult))):
        for j in range(n_res + 1):
            res(f"output_blocks.{out}.0.", c + chans.pop(), mult[i] * mc)
            c, up = mult[i] * mc, 1
            if depth[i]:
                transformer(f"output_blocks.{out}.1.", c, depth[i])
                up = 2
            if i and j == n_res:
                s.conv(f"output_blocks.{out}.{up}.conv", c, c)
            out += 1
    s.norm("out.0", mc)
    s.conv("out.2", mc, 4)


def _open_clip_bigg(s: Spec) -> None:
    """OpenCLIP ViT-bigG/14 text tower in OpenCLIP names, as SDXL checkpoints store it (clip.hpp, fixed
    size: width 1280, 32 layers, ffn 5120, 77 positions; name_conversion.cpp maps the names, and the fused
    ``attn.in_proj_weight`` makes the core build its attention with one qkv matrix)."""
    d, ffn = 1280, 5120
    s.add("token_embedding.weight", (49408, d))
    s.add("positional_embedding", (77, d))
    for i in range(32):
        p = f"transformer.resblocks.{i}."
        s.norm(p + "ln_1", d)
        s.add(p + "attn.in_proj_weight", (3 * d, d))
        s.add(p + "attn.in_proj_bias", (3 * d,), "zero")
        s.linear(p + "attn.out_proj", d, d)
        s.norm(p + "ln_2", d)
        s.linear(p + "mlp.c_fc", d, ffn)
        s.linear(p + "mlp.c_proj", ffn, d)
    s.norm("ln_final", d)
    s.add("text_projection", (d, 1280))  # pooled output -> the 1280 of SDXL's 2816-wide label vector


def _checkpoint_path(path_or_dir: str | os.PathLike, params: dict) -> pathlib.Path:
    """An all-in-one checkpoint's file: the path itself if it ends in .safetensors, else a file in that
    directory named by kind and parameter hash."""
    if params["vae_ch"] % 32:
        raise ValueError("vae_ch must be a multiple of 32")
    p = pathlib.Path(path_or_dir)
    if p.suffix != ".safetensors":
        p = p / f"{params['kind']}-{params_hash(params)[0]}.safetensors"
    return p


def sd1_checkpoint(path_or_dir: str | os.PathLike, *, seed: int = 0, vae_ch: int = 32,
                   vae_encoder: bool = True) -> pathlib.Path:
    """All-in-one SD1.x checkpoint (original LDM names): full-size UNet
    (860M params, ~1.7 GB RAM as F16), CLIP-L and a KL VAE with decoder width
    ``vae_ch``; aliased/sparse on disk (~8 MB).

    Detected as SD1 by the core because the CLIP token embedding is 768 wide
    and ``middle_block.1`` / ``output_blocks.7.1`` exist.  A path ending in
    ``.safetensors`` is used as is (cached via its metadata); otherwise it is
    a directory and the file name carries the parameter hash.
    """
    params = dict(kind="sd1", seed=seed, vae_ch=vae_ch, vae_encoder=vae_encoder)
    p = _checkpoint_path(path_or_dir, params)

    def build(s: Spec) -> None:
        _unet_sd1(s.sub("model.diffusion_model."))
        clip_l(s.sub("cond_stage_model.transformer.text_model."))
        kl_vae(s.sub("first_stage_model."), 4, vae_ch, vae_encoder, quant=True)

    return build_component(p, params, build, alias=True)


def sdxl_checkpoint(path_or_dir: str | os.PathLike, *, seed: int = 0, vae_ch: int = 32,
                    vae_encoder: bool = True) -> pathlib.Path:
    """All-in-one SDXL checkpoint (original SGM names): full-size UNet (2.57B params, ~5.1 GB RAM as F16),
    CLIP-L and OpenCLIP bigG text towers (0.82B params, ~1.6 GB RAM) and a KL VAE with decoder width
    ``vae_ch``; aliased/sparse on disk (~16 MB used).

    Detected as SDXL by the core: a UNet plus ``conditioner.embedders.1``, with ``middle_block.1`` (else it
    would be SSD-1B or Vega).  A path ending in ``.safetensors`` is used as is; otherwise it is a
    directory and the file name carries the parameter hash.
    """
    params = dict(kind="sdxl", seed=seed, vae_ch=vae_ch, vae_encoder=vae_encoder)
    p = _checkpoint_path(path_or_dir, params)

    def build(s: Spec) -> None:
        _unet_sdxl(s.sub("model.diffusion_model."))
        clip_l(s.sub("conditioner.embedders.0.transformer.text_model."))
        _open_clip_bigg(s.sub("conditioner.embedders.1.model."))
        kl_vae(s.sub("first_stage_model."), 4, vae_ch, vae_encoder, quant=True)

    return build_component(p, params, build, alias=True)


def sd1_controlnet(out_path: str | os.PathLike, *, seed: int = 0, prefix: str = "control_model.") -> pathlib.Path:
    """A full-size SD1.x ControlNet (control.hpp names under ``prefix``, as the original ControlNet files have
    them), aliased/sparse on disk; use with ``sd1_checkpoint``."""
    params = dict(kind="sd1-controlnet", seed=seed, prefix=prefix)
    return build_component(pathlib.Path(out_path), params, lambda s: _unet_sd1(s.sub(prefix), controlnet=True),
                      alias=True)
