"""What every builder shares: a weight spec (names, shapes, kinds), its seeded values, and the file cache.

Values: matrices ~N(0, 0.02) (or N(0, 1/fan_in) where the caller asks, so that inputs visibly change the
output), norm weights 1, biases 0. Aliased specs draw every matrix of a file from ONE pool, random only in its
first ``rand_bytes`` bytes and zero after that (see ``_formats.write_safetensors``: the pool is stored once and
its zero tail becomes a file hole).

Cache: a file is named after a hash of its parameters and holds them in its metadata; a file already there
with the same parameters is not written again.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
from typing import Mapping

import numpy as np

from .._formats import safetensors_metadata, write_gguf, write_safetensors

GENERATOR_VERSION = 2  # part of every parameter hash: bump it when a builder's output changes
META_KEY = "sdcpp_py.synthetic"  # the metadata key holding the parameters (the old module's name: caches stay valid)


class Spec:
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

    def sub(self, prefix: str) -> "Spec":
        s = Spec(self.prefix + prefix)
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


def params_hash(params: Mapping[str, object]) -> tuple[str, str]:
    text = json.dumps({"generator": GENERATOR_VERSION, **params}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12], text


def cached_path(out_dir: pathlib.Path, params: Mapping[str, object], ext: str = "safetensors") -> pathlib.Path:
    """``out_dir/<kind>-<parameter hash>.<ext>``."""
    return out_dir / f"{params['kind']}-{params_hash(params)[0]}.{ext}"


def build_component(path: pathlib.Path, params: dict, build, *, dtype=np.float16, alias: bool,
                    std: float | None = 0.02, fmt: str = "safetensors",
                    gguf_type: str | None = None, finish=None) -> pathlib.Path:
    """Build and write one component unless an identical one is cached at ``path``.  ``finish`` may edit the
    materialized arrays in place before they are written."""
    _, text = params_hash(params)
    if fmt == "safetensors" and path.exists() and safetensors_metadata(path).get(META_KEY) == text:
        return path
    if fmt == "gguf" and path.exists():  # hash is in the file name
        return path
    spec = Spec()
    build(spec)
    tensors = spec.materialize(params["seed"], dtype, alias=alias, std=std)
    if finish is not None:
        finish(tensors)
    if fmt == "gguf":
        return write_gguf(path, tensors, {META_KEY: text}, types=gguf_type)
    return write_safetensors(path, tensors, {META_KEY: text}, alias=alias)
