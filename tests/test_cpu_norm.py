"""The core's GroupNorm and LayerNorm blocks on the CPU backend as our build compiles them (patch 0017: one
fused node each instead of the norm, ggml_mul and ggml_add).

A speed-only patch: the node must give bitwise the values of the core's three nodes.
"""

import numpy as np
import pytest

import sdcpp_py
from native_hooks import PACKED_KERNEL, hooks

_test_hooks = hooks()

needs_fused_norms = pytest.mark.skipif(
    not PACKED_KERNEL, reason="patch 0017 fuses the norms where patch 0004's AVX2 kernel is compiled")


def _values(shape, seed):
    rng = np.random.default_rng(seed)
    # An offset and a spread per row, so that the centring and the scale both matter.
    x = rng.standard_normal(shape, dtype=np.float32) * 3 + rng.standard_normal(shape[:-1] + (1,), dtype=np.float32) * 5
    return x.astype(np.float32)


def _affine(channels, seed):
    rng = np.random.default_rng(seed + 1)
    return (rng.standard_normal(channels, dtype=np.float32) * 2).astype(np.float32), \
        rng.standard_normal(channels, dtype=np.float32)


@needs_fused_norms
@pytest.mark.parametrize("shape, groups", [
    ((1, 320, 64, 64), 32),  # SD1 UNet level 0 at 512x512
    ((2, 640, 16, 16), 32),  # rows a multiple of 8 wide: summed 32 rows side by side
    ((1, 96, 24, 8), 32),    # 72 rows of 8 per group: two blocks of 32 rows, one of 8
    ((1, 32, 3, 16), 32),    # 3 rows of 16 per group: fewer than 8 side by side
    ((1, 32, 13, 8), 32),    # 13 rows: 8 side by side, then 4 at a time, then one
    ((2, 64, 5, 7), 32),     # a batch, odd planes, rows not a multiple of the four summed at once
    ((1, 40, 3, 3), 32),     # channels not a multiple of the groups: the last groups are empty
    ((1, 70, 3, 3), 32),     # 3 per group: the 24th holds one channel, the rest are empty
    ((1, 6, 1, 1), 3),
])
def test_group_norm_block_is_one_node_bitwise_the_core_graph(shape, groups):
    x = _values(shape, shape[1])
    weight, bias = _affine(shape[1], shape[1])
    unfused, core_ops, _ = _test_hooks._core_norm(x, weight, bias, groups=groups, n_threads=2, on_cpu_backend=False)
    assert {"GROUP_NORM", "MUL", "ADD"} <= set(core_ops), core_ops
    for threads in (1, 2, 3):
        fused, ops, _ = _test_hooks._core_norm(x, weight, bias, groups=groups, n_threads=threads)
        assert ops == ["CUSTOM"]
        assert fused.shape == x.shape and fused.dtype == np.float32
        assert np.array_equal(fused, unfused), (threads, float(np.abs(fused - unfused).max()))


@needs_fused_norms
@pytest.mark.parametrize("rows, width, with_bias, eps", [
    (4096, 320, True, 1e-5),  # an SD1 transformer block's norms at 512x512
    (77, 768, True, 1e-5),    # CLIP's
    (45, 64, True, 1e-5),     # per thread: rows summed 32 and 8 side by side, the rest one at a time
    (5, 13, False, 1e-6),     # no bias; a row shorter than one vector and a scalar tail
])
def test_layer_norm_block_is_one_node_bitwise_the_core_graph(rows, width, with_bias, eps):
    x = _values((rows, width), width)
    weight, bias = _affine(width, width)
    bias = bias if with_bias else None
    unfused, core_ops, _ = _test_hooks._core_norm(x, weight, bias, eps=eps, n_threads=2, on_cpu_backend=False)
    assert {"NORM", "MUL"} <= set(core_ops) and (("ADD" in core_ops) == with_bias), core_ops
    for threads in (1, 2, 3):
        fused, ops, _ = _test_hooks._core_norm(x, weight, bias, eps=eps, n_threads=threads)
        assert ops == ["CUSTOM"]
        assert np.array_equal(fused, unfused), (threads, float(np.abs(fused - unfused).max()))


def test_norms_match_numpy():
    x = _values((2, 64, 6, 5), 0)
    weight, bias = _affine(64, 0)
    result, _, _ = _test_hooks._core_norm(x, weight, bias, groups=32, n_threads=2)
    grouped = x.astype(np.float64).reshape(2, 32, -1)
    normed = (grouped - grouped.mean(-1, keepdims=True)) / np.sqrt(grouped.var(-1, keepdims=True) + 1e-6)
    expected = normed.reshape(x.shape) * weight[None, :, None, None] + bias[None, :, None, None]
    assert np.allclose(result, expected, rtol=1e-5, atol=1e-5)

    rows = _values((9, 40), 1)
    weight, bias = _affine(40, 1)
    result, _, _ = _test_hooks._core_norm(rows, weight, bias, eps=1e-5)
    r = rows.astype(np.float64)
    expected = (r - r.mean(-1, keepdims=True)) / np.sqrt(r.var(-1, keepdims=True) + 1e-5) * weight + bias
    assert np.allclose(result, expected, rtol=1e-5, atol=1e-5)


@needs_fused_norms
def test_the_fused_norms_are_listed():
    kernels = sdcpp_py._core.fused_cpu_kernels()
    assert "sdcpp_py_cpu_group_norm" in kernels and "sdcpp_py_cpu_layer_norm" in kernels


@pytest.mark.parametrize("kwargs, match", [
    (dict(x=np.zeros((1, 4, 2), np.float32), weight=np.ones(4, np.float32), bias=np.zeros(4, np.float32),
          groups=2), "x: expected"),
    (dict(x=np.zeros((1, 4, 2, 2), np.float32), weight=np.ones(3, np.float32), bias=np.zeros(4, np.float32),
          groups=2), "weight: expected"),
    (dict(x=np.zeros((3, 4), np.float32), weight=np.ones(4, np.float32), bias=np.zeros(5, np.float32)),
     "bias: expected"),
    (dict(x=np.zeros((1, 4, 2, 2), np.float32), weight=np.ones(4, np.float32), groups=2), "bias: a GroupNorm"),
    (dict(x=np.zeros((3, 4), np.float32), weight=np.ones(4, np.float32), groups=-1), "groups: expected"),
])
def test_bad_arguments_are_refused_with_the_argument_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _test_hooks._core_norm(**kwargs)
