"""Add-on parts: TAESD tiny autoencoders, an ESRGAN upscaler, a PhotoMaker v1 ID encoder (SDXL) and a LoRA
for the Flux.1 DiT."""

from __future__ import annotations

import os
import pathlib

import numpy as np

from .._formats import read_header, write_safetensors
from ._encoders import clip_vision
from ._tensors import Spec, build_component, cached_path, params_hash


def read_tensors(path: str | os.PathLike) -> dict:
    """Every tensor of a safetensors file as a numpy array (BF16 as its uint16 bits), to build variants of a
    synthetic file. Aliased tensors share memory; the arrays are read-only views of one read of the file."""
    header = read_header(os.fspath(path))
    if header is None or header.format != "safetensors":
        raise ValueError(f"{path}: not a safetensors file")
    raw = pathlib.Path(path).read_bytes()
    dtypes = {"F16": np.float16, "F32": np.float32, "BF16": np.uint16, "F64": np.float64, "I32": np.int32,
              "I64": np.int64}
    return {name: np.frombuffer(raw, dtypes[info.dtype], int(np.prod(info.shape, dtype=np.int64)),
                                info.offset).reshape(info.shape)
            for name, info in header.tensors.items()}


def _taesd(s: Spec, z: int, encoder: bool) -> None:
    """Tiny AutoEncoder (tae.hpp TAESD: TinyDecoder / TinyEncoder), madebyollin's ``decoder.layers.N`` and
    ``encoder.layers.N`` names.  Width 64 throughout, so every TAEBlock has the same shapes and no skip conv;
    the indices skipped are the weightless ReLU / Upsample layers.  ``z == 32`` (TAEF2, Flux.2) adds the
    GroupNorm "pool" branch to the three TAEBlocks nearest the latent."""
    ch, gn = 64, z == 32

    def block(p: str, pool: bool = False) -> None:
        if pool:
            s.add(p + "pool.0.weight", (4 * ch, ch, 1, 1))
            s.norm(p + "pool.1", 4 * ch)
            s.add(p + "pool.3.weight", (ch, 4 * ch, 1, 1))
        for k in (0, 2, 4):
            s.conv(f"{p}conv.{k}", ch, ch)

    d = "decoder.layers."
    s.conv(d + "0", z, ch)
    for i in (2, 3, 4):
        block(f"{d}{i}.", gn)
    for up, blocks in ((6, (7, 8, 9)), (11, (12, 13, 14)), (16, (17,))):
        s.add(f"{d}{up}.weight", (ch, ch, 3, 3))  # the conv after each upsample has no bias
        for i in blocks:
            block(f"{d}{i}.")
    s.conv(d + "18", ch, 3)
    if encoder:
        e = "encoder.layers."
        s.conv(e + "0", 3, ch)
        block(e + "1.")
        for down, blocks in ((2, (3, 4, 5)), (6, (7, 8, 9)), (10, (11, 12, 13))):
            s.add(f"{e}{down}.weight", (ch, ch, 3, 3))  # stride-2 conv, no bias
            for i in blocks:
                block(f"{e}{i}.", gn and down == 10)
        s.conv(e + "14", ch, z)


def taesd(path_or_dir: str | os.PathLike, *, latent_channels: int = 16, encoder: bool = True,
          seed: int = 0) -> pathlib.Path:
    """A TAESD-style tiny autoencoder (``Context(taesd=...)``, sd-cli ``--taesd``): 1.2M params per half, F16,
    a few MB.  ``latent_channels`` must match the model, as the core picks the shapes from the model's
    version: 4 for SD1/SD2/SDXL (TAESD, TAESDXL), 16 for Flux.1/SD3 and the other DiTs (TAEF1, TAESD3),
    32 for Flux.2 (TAEF2).  ``encoder`` adds the encoder half (img2img; and a Context given no ``vae=``
    loads it unless ``vae_decode_only=True``).  Weights ~N(0, 1/fan_in); the decoder's output conv is
    scaled down with its bias at 0.5, as the core takes its output for 0..1 pixels (mid-grey noise, hardly
    clipped), and the encoder's scaled up to latents of std ~1.  A path ending in ``.safetensors`` is used
    as is; otherwise it is a directory and the file name carries the parameter hash."""
    if latent_channels not in (4, 16, 32):
        raise ValueError(f"latent_channels must be 4, 16 or 32, not {latent_channels!r}")
    params = {"kind": "taesd", "seed": seed, "latent_channels": latent_channels, "encoder": encoder}
    p = pathlib.Path(path_or_dir)
    if p.suffix != ".safetensors":
        p = cached_path(p, params)

    def finish(tensors: dict) -> None:
        # Decoder output: centred on mid-grey, spread well inside 0..1.
        tensors["decoder.layers.18.weight"] *= np.float16(0.4)
        tensors["decoder.layers.18.bias"][:] = 0.5
        if encoder:  # latents of std ~1 like the noise (~0.25 unscaled), so an init image steers img2img
            tensors["encoder.layers.14.weight"] *= np.float16(4.0)

    return build_component(p, params, lambda s: _taesd(s, latent_channels, encoder), alias=False, std=None,
                      finish=finish)


def esrgan_upscaler(out_path: str | os.PathLike, *, scale: int = 2, blocks: int = 1, seed: int = 0) -> pathlib.Path:
    """A small RRDBNet upscaler in the core's "original" ESRGAN names (``conv_first``, ``body.N.rdbM.convK``,
    ``conv_body``, ``conv_up1``/``conv_up2``, ``conv_hr``, ``conv_last``): 64 features, growth 32, as the core
    assumes; ``blocks`` RRDB blocks; ``scale`` 2 or 4."""
    if scale not in (2, 4):
        raise ValueError("scale must be 2 or 4")
    params = dict(kind="esrgan", seed=seed, scale=scale, blocks=blocks)
    feat, grow = 64, 32

    def build(s: Spec) -> None:
        s.conv("conv_first", 3, feat)
        for i in range(blocks):
            for j in (1, 2, 3):
                for k in range(1, 6):
                    s.conv(f"body.{i}.rdb{j}.conv{k}", feat + (k - 1) * grow, grow if k < 5 else feat)
        s.conv("conv_body", feat, feat)
        s.conv("conv_up1", feat, feat)
        if scale == 4:
            s.conv("conv_up2", feat, feat)
        s.conv("conv_hr", feat, feat)
        s.conv("conv_last", feat, 3)

    return build_component(pathlib.Path(out_path), params, build, dtype=np.float32, alias=False, std=None)


def flux_lora(diffusion_model: str | os.PathLike, out_path: str | os.PathLike, *, rank: int = 4,
              seed: int = 0, std: float = 0.5) -> pathlib.Path:
    """A LoRA for a (synthetic) Flux.1 DiT: low-rank up/down pairs for every attention and MLP matrix of its
    double and single blocks, kohya-style names (``diffusion_model.<layer>.lora_up.weight``) with an alpha.
    Shapes come from the DiT file's header; ``std`` is large so the LoRA visibly changes the image."""
    header = read_header(os.fspath(diffusion_model))
    rng = np.random.default_rng(seed)
    tensors: dict[str, np.ndarray] = {}
    for name, info in sorted(header.tensors.items()):
        bare = name[len("model.diffusion_model."):] if name.startswith("model.diffusion_model.") else name
        if not (bare.startswith(("double_blocks.", "single_blocks.")) and bare.endswith(".weight")
                and len(info.shape) == 2 and ("attn" in bare or "mlp" in bare or "linear" in bare)):
            continue
        layer = bare[: -len(".weight")]
        n_out, n_in = info.shape  # header shapes are (rows, cols) as in the file
        tensors[f"diffusion_model.{layer}.lora_down.weight"] = (
            rng.standard_normal((rank, n_in), dtype=np.float32) * std).astype(np.float16)
        tensors[f"diffusion_model.{layer}.lora_up.weight"] = (
            rng.standard_normal((n_out, rank), dtype=np.float32) * std).astype(np.float16)
        tensors[f"diffusion_model.{layer}.alpha"] = np.array(float(rank), dtype=np.float32)
    if not tensors:
        raise ValueError(f"{diffusion_model}: no Flux block matrices found")
    return write_safetensors(out_path, tensors)


def _photomaker_v1(s: Spec) -> None:
    """PhotoMaker v1 ID encoder (pmid.hpp PhotoMakerIDEncoderBlock; the core adds the ``pmid.`` prefix):
    OpenAI CLIP ViT-L/14 vision tower (width 1024, 24 layers, projection 768), ``visual_projection_2``
    (1024 -> 1280) and the fuse MLPs that mix the 2048-wide id embedding into the class word's prompt
    embedding.  All fixed size."""
    clip_vision(s, 1024, 4096, 24, 768)
    s.linear("visual_projection_2", 1024, 1280, bias=False)
    e = 2048
    for name, n_in in (("mlp1", 2 * e), ("mlp2", e)):  # FuseBlock: layernorm(in) -> fc1 -> gelu -> fc2
        s.linear(f"fuse_module.{name}.fc1", n_in, e)
        s.linear(f"fuse_module.{name}.fc2", e, e)
        s.norm(f"fuse_module.{name}.layernorm", n_in)
    s.norm("fuse_module.layer_norm", e)


def photomaker_v1(path_or_dir: str | os.PathLike, *, seed: int = 0) -> pathlib.Path:
    """A PhotoMaker v1 ID encoder file for an SDXL model (``Context(photo_maker=...)``, sd-cli
    ``--photo-maker``): 0.33B params, ~0.65 GB RAM as F16, aliased/sparse on disk.  Random fuse weights, so
    the id images visibly change the result.  No LoRA for the UNet (the real file's is optional to the
    core).  The core takes any path containing "v2" for PhotoMaker v2, so such a path is refused."""
    params = dict(kind="photomaker-v1", seed=seed)
    p = pathlib.Path(path_or_dir)
    if p.suffix != ".safetensors":
        p = p / f"photomaker-v1-{params_hash(params)[0]}.safetensors"
    if "v2" in str(p):
        raise ValueError(f"{p}: the core would read a path containing 'v2' as PhotoMaker v2")
    return build_component(p, params, _photomaker_v1, alias=True)
