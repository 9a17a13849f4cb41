"""Wan 2.1 parts (text-to-video, I2V, VACE): the core hard-codes every size, so all are full size, aliased
and sparse on disk (a few MB each)."""

from __future__ import annotations

import os
import pathlib

from ._encoders import clip_vision, t5_xxl
from ._tensors import Spec, build_component, cached_path


def _wan_dit(s: Spec, variant: str = "t2v", vace_layers: int = 3) -> None:
    """Wan 2.1 1.3B DiT, Comfy/original names (wan.hpp Wan).  WanRunner reads only the depth from the file
    (highest ``blocks.N`` + 1) and accepts 30 or 40 (anything else aborts); the rest is hard-coded per depth,
    so the smallest is the full 1.3B: dim 1536, 12 heads, ffn 8960, text 4096, 16 latent channels in
    1x2x2 patches.  Detected as VERSION_WAN2 by ``blocks.0.cross_attn.norm_k.weight``.

    ``variant``: "t2v"; "i2v" (Wan2.1-I2V-1.3B: ``img_emb`` projects CLIP-vision-H features, each block's
    cross attention gets image keys/values, and the patch embedding takes 36 channels: 16 noise + 4 mask +
    16 encoded conditioning frames); "vace" (Wan2.1-VACE-1.3B: ``vace_layers`` extra blocks fed by the
    control video through ``vace_patch_embedding``; the real model has 15, fewer keep tests light, and the
    core spreads them evenly over the 30 blocks)."""
    if variant not in ("t2v", "i2v", "vace"):
        raise ValueError(f"variant must be 't2v', 'i2v' or 'vace', not {variant!r}")
    depth, d, ffn, freq_dim, text_dim, z, patch = 30, 1536, 8960, 256, 4096, 16, (1, 2, 2)
    in_ch = 36 if variant == "i2v" else z
    s.conv("patch_embedding", in_ch, d, patch)  # 5-D; the core reads the version from its in*out
    s.linear("text_embedding.0", text_dim, d)
    s.linear("text_embedding.2", d, d)
    s.linear("time_embedding.0", freq_dim, d)
    s.linear("time_embedding.2", d, d)
    s.linear("time_projection.1", d, 6 * d)

    def block(p: str) -> None:
        s.add(p + "modulation", (1, 6, d), "zero")  # F32 in the core
        for attn in ("self_attn", "cross_attn"):
            for proj in "qkvo":
                s.linear(f"{p}{attn}.{proj}", d, d)
            s.norm(f"{p}{attn}.norm_q", d, bias=False)  # RMSNorm
            s.norm(f"{p}{attn}.norm_k", d, bias=False)
        if variant == "i2v":
            s.linear(p + "cross_attn.k_img", d, d)
            s.linear(p + "cross_attn.v_img", d, d)
            s.norm(p + "cross_attn.norm_k_img", d, bias=False)
        s.norm(p + "norm3", d)  # cross_attn_norm; norm1/norm2 have no weights
        s.linear(p + "ffn.0", d, ffn)
        s.linear(p + "ffn.2", ffn, d)

    for i in range(depth):
        block(f"blocks.{i}.")
    if variant == "i2v":
        s.norm("img_emb.proj.0", 1280)
        s.linear("img_emb.proj.1", 1280, 1280)
        s.linear("img_emb.proj.3", 1280, d)
        s.norm("img_emb.proj.4", d)
    if variant == "vace":
        if not 1 <= vace_layers <= depth or depth % vace_layers:
            raise ValueError(f"vace_layers must divide {depth}, not {vace_layers}")
        # control video latent (2 x 16: inactive + reactive) + the 8x8 mask folded into 64 channels
        s.conv("vace_patch_embedding", 2 * z + 64, d, patch)
        for i in range(vace_layers):
            block(f"vace_blocks.{i}.")
            if i == 0:
                s.linear(f"vace_blocks.{i}.before_proj", d, d)
            s.linear(f"vace_blocks.{i}.after_proj", d, d)
    s.add("head.modulation", (1, 2, d), "zero")
    s.linear("head.head", d, z * patch[0] * patch[1] * patch[2])


def _clip_vision_h(s: Spec) -> None:
    """OpenCLIP ViT-H/14 vision tower (width 1280, 32 layers, ffn 5120, projection 1024), Wan I2V's
    ``clip_vision`` file."""
    clip_vision(s, 1280, 5120, 32, 1024)


def _wan_vae(s: Spec, encoder: bool) -> None:
    """Wan 2.1 VAE (wan.hpp WanVAE), fixed size: dim 96, z 16, mult 1,2,4,4, 2 res blocks.  Causal 3-D
    convs are 5-D (out, in, t, h, w); RMS_norm gammas (c, 1, 1, 1), in the attention block (c, 1, 1)."""
    dim, z, mult, n_res, k3 = 96, 16, (1, 2, 4, 4), 2, (3, 3, 3)

    def res(p, c_in, c_out):
        s.add(p + "residual.0.gamma", (c_in, 1, 1, 1), "one")
        s.conv(p + "residual.2", c_in, c_out, k3)
        s.add(p + "residual.3.gamma", (c_out, 1, 1, 1), "one")
        s.conv(p + "residual.6", c_out, c_out, k3)
        if c_in != c_out:
            s.conv(p + "shortcut", c_in, c_out, (1, 1, 1))

    def middle(p, c):
        res(p + "middle.0.", c, c)
        s.add(p + "middle.1.norm.gamma", (c, 1, 1), "one")
        s.conv(p + "middle.1.to_qkv", c, 3 * c, 1)
        s.conv(p + "middle.1.proj", c, c, 1)
        res(p + "middle.2.", c, c)

    def resample(p, c, up, temporal):  # Wan 2.1: upsampling convs halve the channels
        s.conv(p + "resample.1", c, c // 2 if up else c)
        if temporal:
            s.conv(p + "time_conv", c, 2 * c if up else c, (3, 1, 1))

    def head(p, c, c_out):
        s.add(p + "head.0.gamma", (c, 1, 1, 1), "one")
        s.conv(p + "head.2", c, c_out, k3)

    dims = [dim * mult[-1]] + [dim * m for m in reversed(mult)]
    s.conv("decoder.conv1", z, dims[0], k3)
    middle("decoder.", dims[0])
    idx = 0
    for i, temporal in enumerate((True, True, False, None)):
        c_in, c_out = dims[i] // (2 if i else 1), dims[i + 1]  # after an upsample: half the channels
        for _ in range(n_res + 1):
            res(f"decoder.upsamples.{idx}.", c_in, c_out)
            c_in, idx = c_out, idx + 1
        if temporal is not None:
            resample(f"decoder.upsamples.{idx}.", c_out, True, temporal)
            idx += 1
    head("decoder.", c_out, 3)
    s.conv("conv2", z, z, (1, 1, 1))
    if encoder:
        dims = [dim] + [dim * m for m in mult]
        s.conv("encoder.conv1", 3, dim, k3)
        idx = 0
        for i, temporal in enumerate((False, True, True, None)):
            c_in, c_out = dims[i], dims[i + 1]
            for _ in range(n_res):
                res(f"encoder.downsamples.{idx}.", c_in, c_out)
                c_in, idx = c_out, idx + 1
            if temporal is not None:
                resample(f"encoder.downsamples.{idx}.", c_out, False, temporal)
                idx += 1
        middle("encoder.", c_out)
        head("encoder.", c_out, 2 * z)
        s.conv("conv1", 2 * z, 2 * z, (1, 1, 1))


def wan_components(out_dir: str | os.PathLike, *, seed: int = 0, vae_encoder: bool = False,
                   variant: str = "t2v", high_noise: bool = False) -> dict[str, pathlib.Path]:
    """Synthetic Wan 2.1 component files, keyed by Context argument name, for
    ``Context(**parts).generate_video(...)``.  Every part is aliased/sparse on disk (a few MB each), but
    nothing can be made small: the core hard-codes all the sizes.

    - "diffusion_model": Wan 2.1 1.3B DiT (30 blocks of width 1536; the core accepts only depths 30 and 40
      and derives every width from the depth): ~2.8 GB RAM as F16.  ``variant``: "t2v" (text to video),
      "i2v" (Wan2.1-I2V-1.3B: init and end image; adds "clip_vision") or "vace" (Wan2.1-VACE-1.3B: control
      frames, vace strength, init image as reference).  I2V and VACE always run the VAE encoder, so they
      imply ``vae_encoder``.
    - "high_noise_diffusion_model" (``high_noise``): a second DiT of the same variant and another seed, for
      the Wan 2.2 style two-expert sampling (high-noise steps first, switching at ``moe_boundary``).
    - "clip_vision" (i2v): OpenCLIP ViT-H/14 vision tower (632M params, ~1.3 GB RAM as F16).
    - "t5xxl": full-size umt5-xxl encoder (5.7B params with its 256384-token vocabulary; ~11.4 GB RAM as
      F16, minutes of CPU per prompt: the core always encodes 512 tokens).
    - "vae": Wan 2.1 VAE (dim 96, z 16; 127M params with the encoder, ~0.15 GB RAM for the decoder).
      The encoder is only needed for video inputs; add it with ``vae_encoder`` (the Context then loads it).
    """
    out_dir = pathlib.Path(out_dir)
    vae_encoder = vae_encoder or variant != "t2v"
    dit = dict(kind=f"wan2.1-{variant}-dit", seed=seed)
    t5 = dict(kind="umt5xxl", seed=seed)
    vae = dict(kind="wan2.1-vae", seed=seed, encoder=vae_encoder)
    parts = {"diffusion_model": build_component(cached_path(out_dir, dit), dit,
                                           lambda s: _wan_dit(s, variant), alias=True)}
    if high_noise:
        high = dict(kind=f"wan2.1-{variant}-dit", seed=seed + 1)
        parts["high_noise_diffusion_model"] = build_component(cached_path(out_dir, high), high,
                                                         lambda s: _wan_dit(s, variant), alias=True)
    if variant == "i2v":
        vision = dict(kind="clip-vision-h", seed=seed)
        parts["clip_vision"] = build_component(cached_path(out_dir, vision), vision, _clip_vision_h, alias=True)
    parts["t5xxl"] = build_component(cached_path(out_dir, t5), t5, lambda s: t5_xxl(s, umt5=True), alias=True)
    parts["vae"] = build_component(cached_path(out_dir, vae), vae, lambda s: _wan_vae(s, vae_encoder), alias=True)
    return parts
