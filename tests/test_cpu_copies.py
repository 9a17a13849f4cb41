"""ggml-cpu's transposing copies and f32 concatenations as our build compiles them (patch 0020: 16 x 16 tiles
and whole rows instead of a call or a branch per element).

A speed-only patch: every copy must hold numpy's values, and the same as ggml's own loops
(SDCPP_PY_CPU_COPIES=ggml), whatever the thread count.
"""

import itertools

import numpy as np
import pytest

import sdcpp_py
from native_hooks import hooks

_test_hooks = hooks()


def _values(shape, dtype, seed):
    # Distinct values everywhere, so that any element out of place shows.
    values = np.random.default_rng(seed).permutation(int(np.prod(shape))).reshape(shape)
    return values.astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("shape", [
    (2, 5, 17, 33),   # tiles cut at both edges, a batch
    (1, 40, 16, 16),  # whole tiles: an SD1 transformer's permute at a small level
    (3, 33, 18),      # three dimensions, part tiles
    (7, 16),          # two: a plain transpose
    (1, 8, 2, 48),    # fewer rows than a tile: every tile a part one
])
def test_permuted_copies_hold_numpys_values(shape, dtype):
    x = _values(shape, dtype, len(shape))
    for axes in itertools.permutations(range(len(shape))):
        expected = np.ascontiguousarray(x.transpose(axes))
        for threads in (1, 2, 3):
            copied = _test_hooks._cpu_permuted_copy(x, list(axes), threads)
            assert copied.dtype == x.dtype and copied.shape == expected.shape, axes
            assert np.array_equal(copied, expected), (axes, threads)


def test_the_sd1_transformer_permutes_equal_ggmls_own_loops(monkeypatch):
    x = np.random.default_rng(0).standard_normal((2, 320, 32, 32), dtype=np.float32)
    tokens = np.ascontiguousarray(x.transpose(0, 2, 3, 1).reshape(2, 32 * 32, 320))
    ours = [_test_hooks._cpu_permuted_copy(x, [0, 2, 3, 1], 2), _test_hooks._cpu_permuted_copy(tokens, [0, 2, 1], 2)]
    monkeypatch.setenv("SDCPP_PY_CPU_COPIES", "ggml")
    theirs = [_test_hooks._cpu_permuted_copy(x, [0, 2, 3, 1], 2), _test_hooks._cpu_permuted_copy(tokens, [0, 2, 1], 2)]
    for a, b in zip(ours, theirs):
        assert np.array_equal(a, b)
    assert np.array_equal(ours[0].reshape(2, 32 * 32, 320), tokens)
    assert np.array_equal(ours[1].reshape(x.shape), x)


@pytest.mark.parametrize("shape_a, shape_b, axis", [
    ((2, 320, 8, 8), (2, 640, 8, 8), 1),  # a skip connection: channels
    ((2, 3, 5, 7), (2, 3, 4, 7), 2),      # rows
    ((2, 3, 5, 7), (1, 3, 5, 7), 0),      # the batch
    ((2, 3, 5, 7), (2, 3, 5, 9), 3),      # the first ggml dimension: ggml's own loop
    ((4, 6), (5, 6), 0),
])
def test_concatenations_hold_numpys_values(shape_a, shape_b, axis, monkeypatch):
    a, b = _values(shape_a, np.float32, 1), _values(shape_b, np.float32, 2) + 0.5
    expected = np.concatenate((a, b), axis)
    for threads in (1, 2, 3):
        joined = _test_hooks._cpu_concat(a, b, axis, threads)
        assert joined.shape == expected.shape and np.array_equal(joined, expected), threads
    monkeypatch.setenv("SDCPP_PY_CPU_COPIES", "ggml")
    assert np.array_equal(_test_hooks._cpu_concat(a, b, axis, 2), expected)


def test_the_hooks_refuse_what_they_cannot_copy():
    x = np.zeros((2, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="axes"):
        _test_hooks._cpu_permuted_copy(x, [0, 0], 1)
    with pytest.raises(ValueError, match="axes"):
        _test_hooks._cpu_permuted_copy(x, [0], 1)
    with pytest.raises(ValueError, match="float32 or float16"):
        _test_hooks._cpu_permuted_copy(x.astype(np.int32), [1, 0], 1)
    with pytest.raises(ValueError, match="axis"):
        _test_hooks._cpu_concat(x, x, 2, 1)


def test_the_build_lists_the_patch():
    assert "0020-cpu-copies-without-per-element-calls" in sdcpp_py.core_patches()
