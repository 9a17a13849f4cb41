"""A ResBlock's SiLUs and adds inside the fused group norm and convolution nodes (patch 0019).

A speed-only patch: the block must give bit for bit the values of the separate SiLU and ADD nodes, which
SDCPP_PY_CPU_EPILOGUES=separate keeps.
"""

import collections

import numpy as np
import pytest

from native_hooks import PACKED_KERNEL, hooks
from test_cpu_bf16 import needs_bf16

_test_hooks = hooks()

needs_fused_nodes = pytest.mark.skipif(
    not PACKED_KERNEL, reason="the epilogues go into patches 0007/0017's fused nodes, compiled with the packed kernel")

EMB_CHANNELS = 32


def _parameters(kind, channels, out_channels, seed):
    rng = np.random.default_rng(seed)

    def values(*shape, scale=1.0):
        return (rng.standard_normal(shape, dtype=np.float32) * scale).astype(np.float32)

    def norm(name, width):
        return {f"{name}.weight": 1 + values(width, scale=0.3), f"{name}.bias": values(width, scale=0.3)}

    def conv(name, cin, cout, side):
        return {f"{name}.weight": values(cout, cin, side, side, scale=(cin * side * side) ** -0.5),
                f"{name}.bias": values(cout, scale=0.5)}

    if kind == "unet":
        parameters = {**norm("in_layers.0", channels), **conv("in_layers.2", channels, out_channels, 3),
                      "emb_layers.1.weight": values(out_channels, EMB_CHANNELS, scale=EMB_CHANNELS ** -0.5),
                      "emb_layers.1.bias": values(out_channels, scale=0.5),
                      **norm("out_layers.0", out_channels), **conv("out_layers.3", out_channels, out_channels, 3)}
        shortcut = "skip_connection"
    else:
        parameters = {**norm("norm1", channels), **conv("conv1", channels, out_channels, 3),
                      **norm("norm2", out_channels), **conv("conv2", out_channels, out_channels, 3)}
        shortcut = "nin_shortcut"
    if channels != out_channels:
        parameters.update(conv(shortcut, channels, out_channels, 1))
    return parameters


def _run(kind, batch, channels, out_channels, side, threads, bf16, seed):
    rng = np.random.default_rng(seed + 1)
    x = (rng.standard_normal((batch, channels, side, side), dtype=np.float32) * 2 + 0.5).astype(np.float32)
    emb = rng.standard_normal((batch, EMB_CHANNELS), dtype=np.float32) if kind == "unet" else None
    parameters = _parameters(kind, channels, out_channels, seed)
    return _test_hooks._core_resblock(x, emb, out_channels, parameters, n_threads=threads, bf16=bf16)


@needs_fused_nodes
@pytest.mark.parametrize("kind, batch, channels, out_channels, side, conv", [
    # Winograd (f32 F(4x4), bf16 F(2x2)): 4 tiles a row (the scalar write), the embedding and the residual
    ("unet", 2, 64, 64, 16, None),
    ("unet", 2, 32, 32, 32, None),           # 8-tile rows: the vector write (f32 F(4x4), bf16 F(2x2))
    ("unet", 2, 32, 32, 16, "winograd2x2"),  # the F(2x2) vector write with f32 products
    ("unet", 2, 32, 32, 32, "winograd2x2"),  # F(2x2), f32: 16-tile rows (the AVX-512 write of 16 tiles)
    ("unet", 1, 16, 24, 17, None),           # part tiles at the edges; 24 channels: a short register column
    ("unet", 2, 32, 48, 8, None),            # F(2x2) at its fewest tiles; a 1x1 skip connection
    ("unet", 2, 32, 32, 4, None),            # direct nodes, the batch's 16-pixel images stacked into one product
    ("unet", 2, 24, 40, 5, None),            # direct nodes image by image (25 pixels: part slivers)
    ("vae", 1, 32, 16, 20, None),            # the VAE's ResnetBlock: no embedding, a 1x1 shortcut
])
@pytest.mark.parametrize("precision", ["f32", pytest.param("bf16", marks=needs_bf16)])
def test_resblock_epilogues_are_bitwise_the_separate_nodes(kind, batch, channels, out_channels, side, conv, precision,
                                                           monkeypatch):
    bf16 = precision == "bf16"
    if conv is None:
        monkeypatch.delenv("SDCPP_PY_CPU_CONV", raising=False)
    else:
        monkeypatch.setenv("SDCPP_PY_CPU_CONV", conv)
    monkeypatch.setenv("SDCPP_PY_CPU_EPILOGUES", "separate")
    separate, separate_ops, _ = _run(kind, batch, channels, out_channels, side, 2, bf16, channels + side)
    monkeypatch.delenv("SDCPP_PY_CPU_EPILOGUES")
    # Exactly two SiLUs and the adds after the convolutions (the embedding's and the residual, or the residual)
    # go; the embedding's own SiLU and its Linear's bias add stay.
    gone = collections.Counter({"SILU": 2, "ADD": 2 if kind == "unet" else 1})
    for threads in (1, 2, 3):
        fused, ops, _ = _run(kind, batch, channels, out_channels, side, threads, bf16, channels + side)
        assert collections.Counter(ops) + gone == collections.Counter(separate_ops), (separate_ops, ops)
        assert fused.shape == separate.shape == (batch, out_channels, side, side)
        assert np.isfinite(fused).all()
        assert np.array_equal(fused, separate), (threads, float(np.abs(fused - separate).max()))


@needs_fused_nodes
def test_resblock_parameters_are_checked():
    parameters = _parameters("vae", 8, 8, 0)
    x = np.zeros((1, 8, 4, 4), dtype=np.float32)
    with pytest.raises(ValueError, match="missing norm1.weight"):
        _test_hooks._core_resblock(x, None, 8, {k: v for k, v in parameters.items() if k != "norm1.weight"})
    with pytest.raises(ValueError, match="the block has no conv3.weight"):
        _test_hooks._core_resblock(x, None, 8, {**parameters, "conv3.weight": parameters["conv1.weight"]})
    parameters["conv1.weight"] = parameters["conv1.weight"][:4]
    with pytest.raises(ValueError, match="conv1.weight: wrong number of values"):
        _test_hooks._core_resblock(x, None, 8, parameters)
