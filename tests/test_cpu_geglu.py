"""The core's GEGLU feed-forward on the CPU backend as our build compiles it (patch 0008: one fused node).

A speed-only patch: the node must give bitwise the values of the core's split / cont / gelu / mul graph.
"""

import time

import numpy as np
import pytest

from native_hooks import PACKED_KERNEL, hooks

from sdcpp_py import _core

_test_hooks = hooks()

needs_fused_geglu = pytest.mark.skipif(
    not PACKED_KERNEL, reason="patch 0008 fuses GEGLU where patch 0004's AVX2 kernel is compiled")


@needs_fused_geglu
@pytest.mark.parametrize("rows, width", [(4096, 2560), (77, 64), (5, 2), (33, 2 * 1279)])
def test_fused_geglu_is_one_node_bitwise_the_core_graph(rows, width):
    # Values across GELU's table range and past its +-10 cut-offs.
    x = (np.random.default_rng(rows).standard_normal((rows, width), dtype=np.float32) * 4).astype(np.float32)
    unfused, core_ops, _ = _test_hooks._core_geglu(x, 2, on_cpu_backend=False)
    assert {"CONT", "GELU", "MUL"} <= set(core_ops), core_ops
    for threads in (1, 2, 3):
        fused, ops, _ = _test_hooks._core_geglu(x, threads)
        assert ops == ["CUSTOM"]
        assert fused.shape == (rows, width // 2) and fused.dtype == np.float32
        assert np.array_equal(fused, unfused), (threads, float(np.abs(fused - unfused).max()))


@needs_fused_geglu
@pytest.mark.parametrize("rows, width", [(4096, 2560), (7, 66)])
def test_the_projections_bias_add_is_folded_into_the_node_bitwise(rows, width):
    # ggml_ext_linear's in-place bias add before GEGLU: the fused node adds it itself, so the ADD node is
    # left out of the graph and the values are still the core's add / split / gelu / mul.
    rng = np.random.default_rng(width)
    x = (rng.standard_normal((rows, width), dtype=np.float32) * 4).astype(np.float32)
    bias = (rng.standard_normal(width, dtype=np.float32) * 3).astype(np.float32)
    unfused, core_ops, _ = _test_hooks._core_geglu(x, 2, on_cpu_backend=False, bias=bias)
    assert {"ADD", "CONT", "GELU", "MUL"} <= set(core_ops), core_ops
    unbiased, _, _ = _test_hooks._core_geglu(x, 2)
    assert not np.array_equal(unfused, unbiased)  # the bias matters to the result
    for threads in (1, 2, 3):
        fused, ops, _ = _test_hooks._core_geglu(x.copy(), threads, bias=bias)
        assert ops == ["CUSTOM"]
        assert np.array_equal(fused, unfused), (threads, float(np.abs(fused - unfused).max()))


@needs_fused_geglu
def test_every_f16_table_entry_and_the_cut_offs_bitwise():
    # The node's vectorised GELU reads ggml's f16 table itself: every f16 value (infinities and NaNs
    # included), the +-10 cut-offs and their neighbours, f16 rounding ties.
    gates = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32)
    edges = np.array([10, -10, np.nextafter(10, 0), np.nextafter(-10, 0), 65520, -65520, 1e-8, -1e-8,
                      1 + 2.0**-11, 1 + 3 * 2.0**-11], np.float32)
    gates = np.concatenate([gates, edges, np.full(6, np.nan, np.float32)])  # 65552 = 32 rows of 2 x 1024 + 16
    gates = np.concatenate([gates, np.zeros(1024 - len(gates) % 1024, np.float32)]).reshape(-1, 1024)
    x = np.concatenate([np.full_like(gates, 1.5), gates], axis=1)
    unfused, _, _ = _test_hooks._core_geglu(x, 2, on_cpu_backend=False)
    fused, ops, _ = _test_hooks._core_geglu(x, 2)
    assert ops == ["CUSTOM"]
    assert np.array_equal(fused.view(np.uint32), unfused.view(np.uint32))


def test_geglu_matches_numpy():
    x = np.random.default_rng(0).standard_normal((64, 256), dtype=np.float32) * 3
    value, gate = x[:, :128].astype(np.float64), x[:, 128:].astype(np.float64)
    gelu = 0.5 * gate * (1 + np.tanh(np.sqrt(2 / np.pi) * (gate + 0.044715 * gate**3)))
    result, _, _ = _test_hooks._core_geglu(x, 2)
    # ggml's GELU reads an f16 table: about 3 significant digits.
    assert np.allclose(result, value * gelu, rtol=2e-3, atol=2e-3)


def _tanh_geglu(x, bias=None):
    x = x.astype(np.float64) + (0 if bias is None else bias.astype(np.float64))
    half = x.shape[1] // 2
    value, gate = x[:, :half], x[:, half:]
    gelu = 0.5 * gate * (1 + np.tanh(np.sqrt(2 / np.pi) * (gate + 0.044715 * gate**3)))
    return value * np.where(gate <= -10, 0.0, gelu)


@needs_fused_geglu
@pytest.mark.skipif(not _core.cpu_bf16_products(), reason="no bf16 graphs here (AVX512_BF16 CPU, x86-64 build)")
def test_a_bf16_graph_computes_the_gelu_instead_of_reading_the_f16_table():
    # cpu_precision="bf16": the GELU to ~1e-6 from its formula rather than ggml's table, which rounds the gate
    # and the result to f16 (3 digits). Values across the range, the +-10 cut-off, a tail shorter than a vector.
    rng = np.random.default_rng(3)
    gates = np.concatenate([rng.standard_normal(1000) * 4, [10, -10, 9.99, -9.99, 30, -30, 0, 1e-30, 5]])
    assert len(gates) % 16 != 0  # the last values of a row take the masked tail
    x = np.concatenate([rng.standard_normal((4, len(gates))) * 3, np.tile(gates, (4, 1))], axis=1).astype(np.float32)
    bias = (rng.standard_normal(2 * len(gates)) * 0.5).astype(np.float32)
    for b in (None, bias):
        expected = _tanh_geglu(x, b)
        tabled, _, _ = _test_hooks._core_geglu(x, 2, bias=b)
        outputs = [_test_hooks._core_geglu(x, threads, bias=b, bf16=True) for threads in (1, 2, 3)]
        assert all(ops == ["CUSTOM"] for _, ops, _ in outputs)
        computed = outputs[0][0]
        assert all(np.array_equal(out, computed) for out, _, _ in outputs)
        assert np.allclose(computed, expected, rtol=2e-6, atol=1e-6), float(np.abs(computed - expected).max())
        assert not np.allclose(tabled, expected, rtol=2e-6, atol=1e-6)  # the table's f16 steps


def test_the_hooks_clock_times_the_graph_compute_alone():
    # benchmarks/cpu_kernels.py reads it: the compute, inside the call, without the graph's set-up.
    x = np.ones((512, 256), np.float32)
    for call in (lambda: _test_hooks._core_geglu(x, 2), lambda: _test_hooks._cpu_mul_mat(x[:, :64], x[:, :64], 2)):
        started = time.perf_counter()
        call()
        wall = time.perf_counter() - started
        assert 0 < _test_hooks._last_compute_seconds() <= wall


def test_bad_shape_is_refused_with_the_argument_named():
    with pytest.raises(ValueError, match="x: expected"):
        _test_hooks._core_geglu(np.zeros((4, 3), np.float32))
    with pytest.raises(ValueError, match="bias: expected"):
        _test_hooks._core_geglu(np.zeros((4, 6), np.float32), bias=np.zeros(3, np.float32))
