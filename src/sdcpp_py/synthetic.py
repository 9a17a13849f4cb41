"""Synthetic model components for running the stable-diffusion.cpp core offline.

The files have the tensor names and shapes the core expects (see the vendored
sources: src/model.cpp version detection, flux.hpp, clip.hpp, t5.hpp, unet.hpp,
auto_encoder_kl.hpp, tae.hpp, wan.hpp) and seeded random weights: matrices ~N(0, 0.02) (the
tiny Flux DiT: N(0, 1/fan_in), so that the prompt visibly changes the image),
norm weights 1, biases 0.  The images are noise, but finite and not constant,
which is all a test of the plumbing needs.

Tricks that keep the files small:

* Sizes the core reads from the weights are made tiny: the Flux DiT's depth,
  single-block depth and hidden size (from ``txt_in.weight``); the VAE
  decoder's width (from ``decoder.conv_in.weight``).  Head dim stays 128
  (the rope axes sum to 128) and the text width 4096.  Flux.2 klein
  (``flux2_components``): also the Qwen3 text encoder's depth and widths
  (llm.hpp); the DiT's text width follows from them.
* Fixed-size parts (CLIP-L, T5-XXL, umt5-xxl, the SD1 UNet, the VAE, the whole
  Wan 2.1 model: the core derives all of the DiT's sizes from its depth, 30 or 40)
  use aliasing in safetensors: every weight of one dtype is a view into ONE shared
  pool, sized for the largest tensor, and the writer stores each pool once.
  The core's safetensors reader (src/model_io/safetensors_io.cpp) checks only
  that ``end - begin`` matches the shape, never that ranges are disjoint.
  Each view starts at its own small offset so that tensors differ.
* A pool is random only in its first ``rand_bytes`` bytes and zero after that;
  zero runs are written as file holes (sparse file), so the 263 MB T5
  embedding pool costs ~8 MB on disk (on filesystems without sparse files the
  apparent size is used: CLIP-L 76 MB, T5-XXL 263 MB, umt5-xxl 2.1 GB, Wan DiT
  29 MB).  Weights larger than the random head have a zero tail, which is fine
  for tests.

Aliased files are NOT valid for the Python ``safetensors`` package (it
requires contiguous, disjoint ranges: "invalid offset"); they are for the core
only.  Unaliased files (the Flux DiT) are standard.  GGUF files
cannot alias: ggml's parser requires contiguous aligned offsets.

Generated files are cached: the file name holds a hash of the parameters, and
the parameters are also stored in the file's metadata.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import struct
from typing import Mapping

import numpy as np

GENERATOR_VERSION = 2
_META_KEY = "sdcpp_py.synthetic"
_CHUNK = 1 << 20  # sparse-write granularity

# --------------------------------------------------------------------------- writers

_ST_DTYPES = {
    np.dtype(np.float32): "F32",
    np.dtype(np.float16): "F16",
    np.dtype(np.float64): "F64",
    np.dtype(np.int32): "I32",
    np.dtype(np.int64): "I64",
}


def _owner(a: np.ndarray) -> tuple[np.ndarray, int] | None:
    """(owning array, byte offset of ``a`` in it) when ``a`` is a contiguous view."""
    root = a
    while isinstance(root.base, np.ndarray):
        root = root.base
    if root is a or not (a.flags.c_contiguous and root.flags.c_contiguous):
        return None
    return root, a.__array_interface__["data"][0] - root.__array_interface__["data"][0]


def _as_bytes(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).reshape(-1).view(np.uint8)


def _write_sparse(f, pos: int, data: np.ndarray) -> None:
    """Write ``data`` (uint8) at ``pos``, leaving all-zero chunks as holes."""
    for i in range(0, data.size, _CHUNK):
        chunk = data[i : i + _CHUNK]
        if chunk.any():
            f.seek(pos + i)
            f.write(memoryview(chunk))


def _atomic_open(path: pathlib.Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    return tmp, open(tmp, "wb")


def write_safetensors(
    path: str | os.PathLike,
    tensors: Mapping[str, np.ndarray],
    metadata: Mapping[str, str] | None = None,
    *,
    alias: bool = False,
) -> pathlib.Path:
    """Write a safetensors file (our own writer, numpy only).

    With ``alias=False`` the file follows the spec (contiguous ranges).  With
    ``alias=True`` data is shared instead of copied: for views into one owning
    array the whole owner is stored once and each view points into it, and
    tensors with identical bytes share one range.  Values are never changed.
    Zero runs become file holes either way.
    """
    path = pathlib.Path(path)
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    regions: list[tuple[int, np.ndarray]] = []  # (offset, uint8 data)
    placed: dict[object, int] = {}
    keep_alive = []  # owners must outlive the id() keys in `placed`
    size = 0

    def place(key, data: np.ndarray) -> int:
        nonlocal size
        if key is None or key not in placed:
            start = size
            regions.append((start, data))
            size = start + data.size  # no padding: the safetensors spec forbids gaps
            if key is None:
                return start
            placed[key] = start
        return placed[key]

    for name, a in tensors.items():
        a = np.asarray(a)
        if a.dtype not in _ST_DTYPES:
            raise ValueError(f"unsupported dtype {a.dtype} for tensor {name!r}")
        owner = _owner(a) if alias else None
        if owner is not None:
            root, offset = owner
            keep_alive.append(root)
            begin = place(("owner", id(root)), _as_bytes(root)) + offset
        else:
            data = _as_bytes(a)
            key = ("bytes", hashlib.blake2b(data, digest_size=16).digest(), data.size) if alias else None
            begin = place(key, data)
        header[name] = {
            "dtype": _ST_DTYPES[a.dtype],
            "shape": list(a.shape),
            "data_offsets": [begin, begin + a.nbytes],
        }

    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # spec: header padded with spaces
    tmp, f = _atomic_open(path)
    with f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        base = 8 + len(blob)
        for offset, data in regions:
            _write_sparse(f, base + offset, data)
        f.truncate(base + size)
    os.replace(tmp, path)
    return path


# GGML type id, block size, bytes per block
_GGML_TYPES = {"F32": (0, 1, 4), "F16": (1, 1, 2), "Q8_0": (8, 32, 34)}


def quantize_q8_0(a: np.ndarray) -> np.ndarray:
    """GGML Q8_0 blocks (f16 scale + 32 int8) along the last axis, as uint8."""
    x = np.asarray(a, dtype=np.float32).reshape(-1, 32)
    d = np.abs(x).max(axis=1) / 127.0
    inv = np.divide(1.0, d, out=np.zeros_like(d), where=d > 0)
    v = x * inv[:, None]
    q = np.trunc(v + np.copysign(0.5, v)).clip(-127, 127).astype(np.int8)  # roundf: half away from 0
    out = np.empty((x.shape[0], 34), dtype=np.uint8)
    out[:, :2] = d.astype(np.float16).view(np.uint8).reshape(-1, 2)
    out[:, 2:] = q.view(np.uint8)
    return out.reshape(-1)


def _gguf_str(s: str) -> bytes:
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def _gguf_kv(key: str, value) -> bytes:
    if isinstance(value, bool):
        v = struct.pack("<I?", 7, value)
    elif isinstance(value, int):
        v = struct.pack("<Iq", 11, value)
    elif isinstance(value, float):
        v = struct.pack("<If", 6, value)
    else:
        v = struct.pack("<I", 8) + _gguf_str(str(value))
    return _gguf_str(key) + v


def write_gguf(
    path: str | os.PathLike,
    tensors: Mapping[str, np.ndarray],
    metadata: Mapping[str, object] | None = None,
    *,
    types: str | Mapping[str, str] | None = None,
    alignment: int = 32,
) -> pathlib.Path:
    """Write a GGUF v3 file (our own minimal writer).

    ``types`` picks the stored type ("F32", "F16", "Q8_0"): one string for
    every tensor with >= 2 dims whose last axis fits the block size (others
    stay F32), or a per-name mapping.  Default: the array's own dtype.
    Offsets are contiguous and aligned, as ggml's parser requires.
    """
    path = pathlib.Path(path)
    infos, datas, offset = [], [], 0
    for name, a in tensors.items():
        a = np.asarray(a)
        if isinstance(types, Mapping):
            t = types.get(name)
        elif types is not None:
            t = types if a.ndim >= 2 and a.shape[-1] % _GGML_TYPES[types][1] == 0 else "F32"
        else:
            t = None
        t = t or ("F16" if a.dtype == np.float16 else "F32")
        type_id, block, _ = _GGML_TYPES[t]
        if a.shape[-1] % block:
            raise ValueError(f"{name!r}: last dim {a.shape[-1]} not a multiple of {block} for {t}")
        if t == "Q8_0":
            data = quantize_q8_0(a)
        else:
            data = _as_bytes(a.astype(np.float16 if t == "F16" else np.float32))
        ne = a.shape[::-1] or (1,)
        infos.append(_gguf_str(name) + struct.pack(f"<I{len(ne)}qIQ", len(ne), *ne, type_id, offset))
        datas.append(data)
        offset += -(-data.size // alignment) * alignment
    kvs = [_gguf_kv(k, v) for k, v in (metadata or {}).items()]
    if alignment != 32:
        kvs.append(_gguf_str("general.alignment") + struct.pack("<II", 4, alignment))
    head = b"GGUF" + struct.pack("<IQQ", 3, len(infos), len(kvs)) + b"".join(kvs) + b"".join(infos)
    head += b"\0" * (-len(head) % alignment)
    tmp, f = _atomic_open(path)
    with f:
        f.write(head)
        for data in datas:
            f.write(memoryview(data))
            f.write(b"\0" * (-data.size % alignment))
    os.replace(tmp, path)
    return path


# --------------------------------------------------------------------------- weight specs


class _Spec:
    """Ordered list of (name, shape, kind); kind is "w" (random), "one" or "zero"."""

    def __init__(self, prefix: str = ""):
        self.prefix = prefix
        self.items: list[tuple[str, tuple[int, ...], str]] = []

    def add(self, name: str, shape, kind: str = "w") -> None:
        self.items.append((self.prefix + name, tuple(int(s) for s in shape), kind))

    def linear(self, name: str, n_in: int, n_out: int, bias: bool = True) -> None:
        self.add(f"{name}.weight", (n_out, n_in))
        if bias:
            self.add(f"{name}.bias", (n_out,), "zero")

    def conv(self, name: str, c_in: int, c_out: int, k: int | tuple[int, ...] = 3) -> None:
        """k: square 2-D kernel size, or the kernel's full shape ((kt, kh, kw) for a 3-D conv)."""
        self.add(f"{name}.weight", (c_out, c_in, *((k, k) if isinstance(k, int) else k)))
        self.add(f"{name}.bias", (c_out,), "zero")

    def norm(self, name: str, n: int, bias: bool = True) -> None:
        self.add(f"{name}.weight", (n,), "one")
        if bias:
            self.add(f"{name}.bias", (n,), "zero")

    def sub(self, prefix: str) -> "_Spec":
        s = _Spec(self.prefix + prefix)
        s.items = self.items  # shared list, longer prefix
        return s

    def materialize(self, seed: int, dtype=np.float16, *, alias: bool, std: float | None = 0.02,
                    rand_bytes: int = 8 << 20) -> dict[str, np.ndarray]:
        """Arrays for all items: matrices in ``dtype``, norms/biases in F32.
        ``std=None`` (unaliased only) scales each matrix by 1/sqrt(fan_in)."""
        rng = np.random.default_rng(seed)
        dtype = np.dtype(dtype)
        out = {}
        if not alias:
            for name, shape, kind in self.items:
                if kind == "w":
                    sd = std or 1.0 / np.sqrt(np.prod(shape[1:]))
                    out[name] = (rng.standard_normal(shape, dtype=np.float32) * sd).astype(dtype)
                else:
                    out[name] = np.full(shape, 1.0 if kind == "one" else 0.0, dtype=np.float32)
            return out
        sizes = {k: max((int(np.prod(s)) for _, s, kk in self.items if kk == k), default=0)
                 for k in ("w", "one", "zero")}
        slack = min(sizes["w"], 1 << 16)  # per-tensor start offsets vary within it
        std = std or 0.02
        pool = np.zeros(sizes["w"] + slack, dtype=dtype)  # calloc: zero tail costs no RAM
        n_rand = min(pool.size, rand_bytes // dtype.itemsize)
        pool[:n_rand] = rng.standard_normal(n_rand, dtype=np.float32) * std
        ones = np.ones(sizes["one"], dtype=np.float32)
        zeros = np.zeros(sizes["zero"], dtype=np.float32)
        for name, shape, kind in self.items:
            n = int(np.prod(shape))
            if kind == "w":
                start = int(rng.integers(0, slack + 1))
                out[name] = pool[start : start + n].reshape(shape)
            else:
                out[name] = (ones if kind == "one" else zeros)[:n].reshape(shape)
        return out


def _flux_dit(s: _Spec, depth: int, depth_single: int, hidden: int, guidance: bool) -> None:
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


def _clip_l(s: _Spec) -> None:
    """HF CLIPTextModel (ViT-L/14 text tower), fixed size in clip.hpp."""
    d = 768
    s.add("embeddings.token_embedding.weight", (49408, d))
    s.add("embeddings.position_embedding.weight", (77, d))
    for i in range(12):
        p = f"encoder.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            s.linear(p + "self_attn." + proj, d, d)
        s.norm(p + "layer_norm1", d)
        s.norm(p + "layer_norm2", d)
        s.linear(p + "mlp.fc1", d, 4 * d)
        s.linear(p + "mlp.fc2", 4 * d, d)
    s.norm("final_layer_norm", d)


def _t5_xxl(s: _Spec, umt5: bool = False) -> None:
    """T5-XXL encoder, fixed size in t5.hpp (24 layers, 4096, ff 10240, 64 heads).  ``umt5``: the
    umt5-xxl encoder of Wan (T5Runner is_umt5): vocab 256384 and a relative attention bias in every block."""
    d, ff = 4096, 10240
    s.add("shared.weight", (256384 if umt5 else 32128, d))
    for i in range(24):
        p = f"encoder.block.{i}.layer."
        for proj in "qkvo":
            s.linear(f"{p}0.SelfAttention.{proj}", d, d, bias=False)
        if umt5 or i == 0:  # relative position buckets x heads; T5: only in block 0
            s.add(p + "0.SelfAttention.relative_attention_bias.weight", (32, 64))
        s.add(p + "0.layer_norm.weight", (d,), "one")
        s.linear(p + "1.DenseReluDense.wi_0", d, ff, bias=False)
        s.linear(p + "1.DenseReluDense.wi_1", d, ff, bias=False)
        s.linear(p + "1.DenseReluDense.wo", ff, d, bias=False)
        s.add(p + "1.layer_norm.weight", (d,), "one")
    s.add("encoder.final_layer_norm.weight", (d,), "one")


def _vae(s: _Spec, z: int, dec_ch: int, encoder: bool, quant: bool) -> None:
    """LDM AutoencoderKL (auto_encoder_kl.hpp). Decoder width is read from
    decoder.conv_in (out = 4 * ch; GroupNorm32 needs ch % 32 == 0); the encoder
    is fixed at ch 128. ``quant`` adds the SD1-style 1x1 (post_)quant_conv."""
    mult, n_res = (1, 2, 4, 4), 2

    def resnet(p, c_in, c_out):
        s.norm(p + "norm1", c_in)
        s.conv(p + "conv1", c_in, c_out)
        s.norm(p + "norm2", c_out)
        s.conv(p + "conv2", c_out, c_out)
        if c_in != c_out:
            s.conv(p + "nin_shortcut", c_in, c_out, 1)

    def mid(p, c):
        resnet(p + "mid.block_1.", c, c)
        s.norm(p + "mid.attn_1.norm", c)
        for proj in ("q", "k", "v", "proj_out"):
            s.conv(p + "mid.attn_1." + proj, c, c, 1)
        resnet(p + "mid.block_2.", c, c)

    c = dec_ch * mult[-1]
    s.conv("decoder.conv_in", z, c)
    mid("decoder.", c)
    for i in reversed(range(len(mult))):
        for j in range(n_res + 1):
            resnet(f"decoder.up.{i}.block.{j}.", c, dec_ch * mult[i])
            c = dec_ch * mult[i]
        if i:
            s.conv(f"decoder.up.{i}.upsample.conv", c, c)
    s.norm("decoder.norm_out", c)
    s.conv("decoder.conv_out", c, 3)
    if quant:
        s.conv("post_quant_conv", z, z, 1)
    if encoder:
        ch = c = 128
        s.conv("encoder.conv_in", 3, c)
        for i, m in enumerate(mult):
            for j in range(n_res):
                resnet(f"encoder.down.{i}.block.{j}.", c, ch * m)
                c = ch * m
            if i != len(mult) - 1:
                s.conv(f"encoder.down.{i}.downsample.conv", c, c)
        mid("encoder.", c)
        s.norm("encoder.norm_out", c)
        s.conv("encoder.conv_out", c, 2 * z)
        if quant:
            s.conv("quant_conv", 2 * z, 2 * z, 1)


def _wan_dit(s: _Spec, variant: str = "t2v", vace_layers: int = 3) -> None:
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


def _clip_vision_h(s: _Spec) -> None:
    """OpenCLIP ViT-H/14 vision tower (width 1280, 32 layers, ffn 5120, projection 1024), Wan I2V's
    ``clip_vision`` file."""
    _clip_vision(s, 1280, 5120, 32, 1024)


def _wan_vae(s: _Spec, encoder: bool) -> None:
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


def _unet_sd1(s: _Spec, *, controlnet: bool = False) -> None:
    """Original LDM SD1.x UNet (unet.hpp): fixed 320 channels, mult 1,2,4,4,
    attention at ds 1,2,4, 8 heads, context 768. ``controlnet``: its ControlNet instead (control.hpp): the
    encoder half plus the hint encoder and one 1x1 "zero" conv per input block (random here, so the control
    image visibly steers the result)."""
    _unet(s, mult=(1, 2, 4, 4), depth=(1, 1, 1, 0), mid_depth=1, ctx=768, controlnet=controlnet)


def _unet_sdxl(s: _Spec) -> None:
    """Original SGM SDXL UNet (unet.hpp, all hard-coded for sd_version_is_sdxl): 320 channels, mult 1,2,4,
    transformer depth 0,2,10 (middle 10), head dim 64 (heads do not change shapes), context 2048, linear
    proj_in/proj_out, and the ``label_emb`` of the 2816-wide pooled-text + size vector."""
    _unet(s, mult=(1, 2, 4), depth=(0, 2, 10), mid_depth=10, ctx=2048, adm=2816, linear_proj=True)


def _unet(s: _Spec, *, mult: tuple, depth: tuple, mid_depth: int, ctx: int, adm: int = 0,
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


# --------------------------------------------------------------------------- generators


def _params_hash(params: Mapping[str, object]) -> tuple[str, str]:
    text = json.dumps({"generator": GENERATOR_VERSION, **params}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12], text


def _st_metadata(path: pathlib.Path) -> dict[str, str]:
    """The __metadata__ of a safetensors file ({} if unreadable)."""
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            return json.loads(f.read(n)).get("__metadata__", {})
    except (OSError, ValueError, struct.error):
        return {}


def _cached_path(out_dir: pathlib.Path, params: Mapping[str, object], ext: str = "safetensors") -> pathlib.Path:
    """``out_dir/<kind>-<parameter hash>.<ext>``."""
    return out_dir / f"{params['kind']}-{_params_hash(params)[0]}.{ext}"


def _component(path: pathlib.Path, params: dict, build, *, dtype=np.float16, alias: bool,
               std: float | None = 0.02, fmt: str = "safetensors",
               gguf_type: str | None = None, finish=None) -> pathlib.Path:
    """Build and write one component unless an identical one is cached at ``path``.  ``finish`` may edit the
    materialized arrays in place before they are written."""
    _, text = _params_hash(params)
    if fmt == "safetensors" and path.exists() and _st_metadata(path).get(_META_KEY) == text:
        return path
    if fmt == "gguf" and path.exists():  # hash is in the file name
        return path
    spec = _Spec()
    build(spec)
    tensors = spec.materialize(params["seed"], dtype, alias=alias, std=std)
    if finish is not None:
        finish(tensors)
    if fmt == "gguf":
        return write_gguf(path, tensors, {_META_KEY: text}, types=gguf_type)
    return write_safetensors(path, tensors, {_META_KEY: text}, alias=alias)


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
        "diffusion_model": _component(
            _cached_path(out_dir, dit, ext), dit,
            lambda s: _flux_dit(s, depth, depth_single_blocks, hidden_size, guidance_embed),
            alias=False, std=None, fmt=diffusion_format, gguf_type=diffusion_type),
        "clip_l": _component(_cached_path(out_dir, clip), clip, lambda s: _clip_l(s.sub("text_model.")),
                             alias=True),
        "vae": _component(_cached_path(out_dir, vae), vae,
                          lambda s: _vae(s, 16, vae_ch, vae_encoder, quant=False), alias=True),
    }
    if t5xxl:
        paths["t5xxl"] = _component(_cached_path(out_dir, t5), t5, _t5_xxl, alias=True)
    return paths


# --------------------------------------------------------------------------- Flux.2 klein

_QWEN3_VOCAB = 151936  # Qwen3's embedding rows; the core's Qwen2Tokenizer ids go up to 151668
_KLEIN_LLM_LAYERS = (9, 18, 27)  # conditioner.hpp: klein concatenates these layers' outputs (1-based)


def _flux2_dit(s: _Spec, depth: int, depth_single: int, hidden: int, context_dim: int, guidance: bool) -> None:
    """BFL Flux.2 names (flux.hpp, FluxRunner for sd_version_is_flux2): no biases at all, one shared
    modulation per stream (``double_stream_modulation_img`` marks the file as Flux.2), SiLU-gated MLPs of
    ratio 3, a 128-channel latent (32 VAE channels in 2x2 patches, DiT patch size 1), head dim 128 (the
    rope axes are 4 x 32).  Fewer than 48 single blocks makes it "klein" (model.cpp), whose text encoder
    is Qwen3; the DiT's text width ``context_dim`` is read from ``txt_in.weight``."""
    h, mlp, head_dim, latent = hidden, 3 * hidden, 128, 128
    s.linear("img_in", latent, h, bias=False)
    s.linear("txt_in", context_dim, h, bias=False)  # context_in_dim and hidden_size are read from this
    s.linear("time_in.in_layer", 256, h, bias=False)
    s.linear("time_in.out_layer", h, h, bias=False)
    if guidance:  # presence switches guidance_embed on (Flux.2 dev style); klein has none
        s.linear("guidance_in.in_layer", 256, h, bias=False)
        s.linear("guidance_in.out_layer", h, h, bias=False)
    s.linear("double_stream_modulation_img.lin", h, 6 * h, bias=False)
    s.linear("double_stream_modulation_txt.lin", h, 6 * h, bias=False)
    s.linear("single_stream_modulation.lin", h, 3 * h, bias=False)
    for i in range(depth):
        for stream in ("img", "txt"):
            p = f"double_blocks.{i}.{stream}_"
            s.linear(p + "attn.qkv", h, 3 * h, bias=False)
            s.add(p + "attn.norm.query_norm.scale", (head_dim,), "one")
            s.add(p + "attn.norm.key_norm.scale", (head_dim,), "one")  # head dim read here
            s.linear(p + "attn.proj", h, h, bias=False)
            s.linear(p + "mlp.0", h, 2 * mlp, bias=False)  # gate and value
            s.linear(p + "mlp.2", mlp, h, bias=False)
    for i in range(depth_single):
        p = f"single_blocks.{i}."
        s.linear(p + "linear1", h, 3 * h + 2 * mlp, bias=False)
        s.linear(p + "linear2", h + mlp, h, bias=False)
        s.add(p + "norm.query_norm.scale", (head_dim,), "one")
        s.add(p + "norm.key_norm.scale", (head_dim,), "one")
    s.linear("final_layer.linear", h, latent, bias=False)
    s.linear("final_layer.adaLN_modulation.1", h, 2 * h, bias=False)


def _qwen3(s: _Spec, layers: int, hidden: int, intermediate: int) -> None:
    """Qwen3 causal-LM text tower, HF names (llm.hpp, LLMRunner arch QWEN3).  The core reads the depth,
    ``hidden`` and the vocabulary (from ``embed_tokens``) and ``intermediate`` (from ``gate_proj``); the
    attention is fixed: 32 query and 8 KV heads of dim 128, RMS q/k norms, no biases."""
    heads, kv_heads, head_dim = 32, 8, 128
    s.add("model.embed_tokens.weight", (_QWEN3_VOCAB, hidden))
    for i in range(layers):
        p = f"model.layers.{i}."
        s.linear(p + "self_attn.q_proj", hidden, heads * head_dim, bias=False)
        s.linear(p + "self_attn.k_proj", hidden, kv_heads * head_dim, bias=False)
        s.linear(p + "self_attn.v_proj", hidden, kv_heads * head_dim, bias=False)
        s.linear(p + "self_attn.o_proj", heads * head_dim, hidden, bias=False)
        s.norm(p + "self_attn.q_norm", head_dim, bias=False)
        s.norm(p + "self_attn.k_norm", head_dim, bias=False)
        s.linear(p + "mlp.gate_proj", hidden, intermediate, bias=False)
        s.linear(p + "mlp.up_proj", hidden, intermediate, bias=False)
        s.linear(p + "mlp.down_proj", intermediate, hidden, bias=False)
        s.norm(p + "input_layernorm", hidden, bias=False)
        s.norm(p + "post_attention_layernorm", hidden, bias=False)
    s.norm("model.norm", hidden, bias=False)


def flux2_components(
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    depth: int = 1,
    depth_single_blocks: int = 1,
    hidden_size: int = 128,
    guidance_embed: bool = False,
    llm_layers: int = 1,
    llm_hidden_size: int = 64,
    llm_intermediate_size: int = 128,
    vae_ch: int = 32,
    vae_encoder: bool = True,
) -> dict[str, pathlib.Path]:
    """Synthetic Flux.2 klein component files, keyed by Context argument name (sd-cli:
    ``--diffusion-model --llm --vae``).

    - "diffusion_model": tiny Flux.2 DiT (hidden_size a multiple of 128, head dim 128; under 48 single
      blocks, so the core takes it for klein; ~2 MB at the defaults).  Its text width is
      ``llm_hidden_size`` times the number of the Qwen3 layers 9, 18 and 27 that exist, or once when
      none does (64 at the defaults, 192 with ``llm_layers=27``).
    - "llm": tiny Qwen3 text encoder, aliased/sparse on disk (19.6 MB apparent, ~8 MB used, whatever the
      depth; in RAM ~18.5 MB plus ~1.3 MB per layer).  The Qwen tokenizer's 151936-row embedding is kept
      (only its first ~65k rows are random: special tokens embed as zeros); the attention is fixed
      (32 x 128 query, 8 x 128 KV heads).  Prompts are padded to 512 tokens, so each layer costs ~1 s
      of CPU per prompt.  klein concatenates the outputs of layers 9, 18 and 27; the default single
      layer gives the final norm's output instead (same plumbing, 27x cheaper), ``llm_layers=27`` runs
      klein's three-layer path.  28 is refused: the core would give a 28-layer Qwen3 16 heads (its
      "Qwen3 2B" rule).
    - "vae": Flux.2 KL VAE (32 latent channels, 1x1 quant convs), decoder width ``vae_ch`` (multiple of
      32); aliased/sparse on disk.  The encoder (fixed ch 128) is needed for reference images (edit),
      img2img and hires, so it is included by default.
    """
    if hidden_size % 128 or vae_ch % 32:
        raise ValueError("hidden_size must be a multiple of 128 and vae_ch of 32")
    if llm_layers < 1 or llm_layers == 28:
        raise ValueError("llm_layers must be >= 1 and not 28 (the core gives a 28-layer Qwen3 16 heads)")
    out_dir = pathlib.Path(out_dir)
    n_out = sum(1 for layer in _KLEIN_LLM_LAYERS if layer <= llm_layers)
    context_dim = llm_hidden_size * max(n_out, 1)
    dit = dict(kind="flux2-klein-dit", seed=seed, depth=depth, depth_single_blocks=depth_single_blocks,
               hidden_size=hidden_size, context_dim=context_dim, guidance_embed=guidance_embed)
    llm = dict(kind="qwen3", seed=seed, layers=llm_layers, hidden_size=llm_hidden_size,
               intermediate_size=llm_intermediate_size)
    vae = dict(kind="flux2-vae", seed=seed, ch=vae_ch, encoder=vae_encoder)
    return {
        "diffusion_model": _component(
            _cached_path(out_dir, dit), dit,
            lambda s: _flux2_dit(s, depth, depth_single_blocks, hidden_size, context_dim, guidance_embed),
            alias=False, std=None),
        "llm": _component(_cached_path(out_dir, llm), llm,
                          lambda s: _qwen3(s, llm_layers, llm_hidden_size, llm_intermediate_size), alias=True),
        "vae": _component(_cached_path(out_dir, vae), vae,
                          lambda s: _vae(s, 32, vae_ch, vae_encoder, quant=True), alias=True),
    }


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
    parts = {"diffusion_model": _component(_cached_path(out_dir, dit), dit,
                                           lambda s: _wan_dit(s, variant), alias=True)}
    if high_noise:
        high = dict(kind=f"wan2.1-{variant}-dit", seed=seed + 1)
        parts["high_noise_diffusion_model"] = _component(_cached_path(out_dir, high), high,
                                                         lambda s: _wan_dit(s, variant), alias=True)
    if variant == "i2v":
        vision = dict(kind="clip-vision-h", seed=seed)
        parts["clip_vision"] = _component(_cached_path(out_dir, vision), vision, _clip_vision_h, alias=True)
    parts["t5xxl"] = _component(_cached_path(out_dir, t5), t5, lambda s: _t5_xxl(s, umt5=True), alias=True)
    parts["vae"] = _component(_cached_path(out_dir, vae), vae, lambda s: _wan_vae(s, vae_encoder), alias=True)
    return parts


def _checkpoint_path(path_or_dir: str | os.PathLike, params: dict) -> pathlib.Path:
    """An all-in-one checkpoint's file: the path itself if it ends in .safetensors, else a file in that
    directory named by kind and parameter hash."""
    if params["vae_ch"] % 32:
        raise ValueError("vae_ch must be a multiple of 32")
    p = pathlib.Path(path_or_dir)
    if p.suffix != ".safetensors":
        p = p / f"{params['kind']}-{_params_hash(params)[0]}.safetensors"
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

    def build(s: _Spec) -> None:
        _unet_sd1(s.sub("model.diffusion_model."))
        _clip_l(s.sub("cond_stage_model.transformer.text_model."))
        _vae(s.sub("first_stage_model."), 4, vae_ch, vae_encoder, quant=True)

    return _component(p, params, build, alias=True)


def flux_lora(diffusion_model: str | os.PathLike, out_path: str | os.PathLike, *, rank: int = 4,
              seed: int = 0, std: float = 0.5) -> pathlib.Path:
    """A LoRA for a (synthetic) Flux.1 DiT: low-rank up/down pairs for every attention and MLP matrix of its
    double and single blocks, kohya-style names (``diffusion_model.<layer>.lora_up.weight``) with an alpha.
    Shapes come from the DiT file's header; ``std`` is large so the LoRA visibly changes the image."""
    from ._headers import read_header

    header = read_header(os.fspath(diffusion_model), "diffusion_model")
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


def esrgan_upscaler(out_path: str | os.PathLike, *, scale: int = 2, blocks: int = 1, seed: int = 0) -> pathlib.Path:
    """A small RRDBNet upscaler in the core's "original" ESRGAN names (``conv_first``, ``body.N.rdbM.convK``,
    ``conv_body``, ``conv_up1``/``conv_up2``, ``conv_hr``, ``conv_last``): 64 features, growth 32, as the core
    assumes; ``blocks`` RRDB blocks; ``scale`` 2 or 4."""
    if scale not in (2, 4):
        raise ValueError("scale must be 2 or 4")
    params = dict(kind="esrgan", seed=seed, scale=scale, blocks=blocks)
    feat, grow = 64, 32

    def build(s: _Spec) -> None:
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

    return _component(pathlib.Path(out_path), params, build, dtype=np.float32, alias=False, std=None)


def sd1_controlnet(out_path: str | os.PathLike, *, seed: int = 0, prefix: str = "control_model.") -> pathlib.Path:
    """A full-size SD1.x ControlNet (control.hpp names under ``prefix``, as the original ControlNet files have
    them), aliased/sparse on disk; use with ``sd1_checkpoint``."""
    params = dict(kind="sd1-controlnet", seed=seed, prefix=prefix)
    return _component(pathlib.Path(out_path), params, lambda s: _unet_sd1(s.sub(prefix), controlnet=True),
                      alias=True)


def _taesd(s: _Spec, z: int, encoder: bool) -> None:
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
        p = _cached_path(p, params)

    def finish(tensors: dict) -> None:
        # Decoder output: centred on mid-grey, spread well inside 0..1.
        tensors["decoder.layers.18.weight"] *= np.float16(0.4)
        tensors["decoder.layers.18.bias"][:] = 0.5
        if encoder:  # latents of std ~1 like the noise (~0.25 unscaled), so an init image steers img2img
            tensors["encoder.layers.14.weight"] *= np.float16(4.0)

    return _component(p, params, lambda s: _taesd(s, latent_channels, encoder), alias=False, std=None,
                      finish=finish)


# --------------------------------------------------------------------------- SDXL and PhotoMaker


def _open_clip_bigg(s: _Spec) -> None:
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


def _clip_vision(s: _Spec, d: int, ffn: int, layers: int, projection: int) -> None:
    """A CLIP vision tower with its projection, HF names as the core keeps them (clip.hpp
    CLIPVisionModelProjection: 224 px in 14 px patches; the sizes are fixed per CLIP version)."""
    patches = (224 // 14) ** 2 + 1
    s.add("vision_model.embeddings.patch_embedding.weight", (d, 3, 14, 14))
    s.add("vision_model.embeddings.class_embedding", (d,))
    s.add("vision_model.embeddings.position_embedding.weight", (patches, d))
    s.norm("vision_model.pre_layernorm", d)
    for i in range(layers):
        p = f"vision_model.encoder.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            s.linear(p + "self_attn." + proj, d, d)
        s.norm(p + "layer_norm1", d)
        s.norm(p + "layer_norm2", d)
        s.linear(p + "mlp.fc1", d, ffn)
        s.linear(p + "mlp.fc2", ffn, d)
    s.norm("vision_model.post_layernorm", d)
    s.add("visual_projection.weight", (projection, d))


def _photomaker_v1(s: _Spec) -> None:
    """PhotoMaker v1 ID encoder (pmid.hpp PhotoMakerIDEncoderBlock; the core adds the ``pmid.`` prefix):
    OpenAI CLIP ViT-L/14 vision tower (width 1024, 24 layers, projection 768), ``visual_projection_2``
    (1024 -> 1280) and the fuse MLPs that mix the 2048-wide id embedding into the class word's prompt
    embedding.  All fixed size."""
    _clip_vision(s, 1024, 4096, 24, 768)
    s.linear("visual_projection_2", 1024, 1280, bias=False)
    e = 2048
    for name, n_in in (("mlp1", 2 * e), ("mlp2", e)):  # FuseBlock: layernorm(in) -> fc1 -> gelu -> fc2
        s.linear(f"fuse_module.{name}.fc1", n_in, e)
        s.linear(f"fuse_module.{name}.fc2", e, e)
        s.norm(f"fuse_module.{name}.layernorm", n_in)
    s.norm("fuse_module.layer_norm", e)


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

    def build(s: _Spec) -> None:
        _unet_sdxl(s.sub("model.diffusion_model."))
        _clip_l(s.sub("conditioner.embedders.0.transformer.text_model."))
        _open_clip_bigg(s.sub("conditioner.embedders.1.model."))
        _vae(s.sub("first_stage_model."), 4, vae_ch, vae_encoder, quant=True)

    return _component(p, params, build, alias=True)


def photomaker_v1(path_or_dir: str | os.PathLike, *, seed: int = 0) -> pathlib.Path:
    """A PhotoMaker v1 ID encoder file for an SDXL model (``Context(photo_maker=...)``, sd-cli
    ``--photo-maker``): 0.33B params, ~0.65 GB RAM as F16, aliased/sparse on disk.  Random fuse weights, so
    the id images visibly change the result.  No LoRA for the UNet (the real file's is optional to the
    core).  The core takes any path containing "v2" for PhotoMaker v2, so such a path is refused."""
    params = dict(kind="photomaker-v1", seed=seed)
    p = pathlib.Path(path_or_dir)
    if p.suffix != ".safetensors":
        p = p / f"photomaker-v1-{_params_hash(params)[0]}.safetensors"
    if "v2" in str(p):
        raise ValueError(f"{p}: the core would read a path containing 'v2' as PhotoMaker v2")
    return _component(p, params, _photomaker_v1, alias=True)
