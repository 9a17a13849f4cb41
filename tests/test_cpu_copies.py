"""ggml-cpu's transposing copies and f32 concatenations as our build compiles them (patch 0020: 16 x 16 tiles
and whole rows instead of a call or a branch per element).

A speed-only patch: every copy must hold numpy's values, at every thread count. (SDCPP_PY_CPU_COPIES=ggml,
read once per process, keeps ggml's own loops; benchmarks/cpu_kernels.py times both.)
"""

import itertools

import numpy as np
import pytest

import sdcpp_py
from native_hooks import hooks

_test_hooks = hooks()


def _values(shape, dtype, seed):
    # Distinct values everywhere (float16: distinct finite bit patterns), so that any element out of place shows.
    n = int(np.prod(shape))
    order = np.random.default_rng(seed).permutation(n)
    if dtype == np.float16:
        assert n < 0x7C00  # below the infinities' and NaNs' patterns
        return order.astype(np.uint16).view(np.float16).reshape(shape)
    return order.astype(dtype).reshape(shape)


def _same(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a.view(np.uint8), b.view(np.uint8))


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("shape", [
    (2, 5, 17, 33),   # tiles cut at both edges, a batch
    (1, 40, 16, 16),  # an SD1 transformer's permute at a small level (16 + 16 + 8 channels per tile row)
    (3, 33, 18),      # three dimensions, part tiles
    (7, 16),          # two: a plain transpose
    (1, 8, 2, 48),    # fewer rows than a tile: every tile a part one
    (1, 1, 20, 40),   # one slab: fewer 16-row units than threads, so units of fewer rows
])
def test_permuted_copies_hold_numpys_values(shape, dtype):
    x = _values(shape, dtype, len(shape))
    for axes in itertools.permutations(range(len(shape))):
        expected = np.ascontiguousarray(x.transpose(axes))
        for threads in (1, 2, 3, 5):
            copied = _test_hooks._cpu_permuted_copy(x, list(axes), threads)
            assert _same(copied, expected), (axes, threads)


def test_the_sd1_transformer_permutes_round_trip():
    x = np.random.default_rng(0).standard_normal((2, 320, 32, 32), dtype=np.float32)
    tokens = _test_hooks._cpu_permuted_copy(x, [0, 2, 3, 1], 2).reshape(2, 32 * 32, 320)
    assert _same(tokens, np.ascontiguousarray(x.transpose(0, 2, 3, 1)).reshape(2, 32 * 32, 320))
    back = _test_hooks._cpu_permuted_copy(tokens, [0, 2, 1], 2).reshape(x.shape)
    assert _same(back, x)


@pytest.mark.parametrize("shape_a, shape_b, axis", [
    ((2, 320, 8, 8), (2, 640, 8, 8), 1),  # a skip connection: channels, whole planes copied at once
    ((3, 4, 5), (2, 4, 5), 0),            # 3-D: planes along ggml's dimension 2
    ((2, 3, 5, 7), (2, 3, 4, 7), 2),      # rows
    ((2, 3, 5, 7), (1, 3, 5, 7), 0),      # the batch
    ((2, 3, 5, 7), (2, 3, 5, 9), 3),      # the first ggml dimension: ggml's own loop
    ((4, 6), (5, 6), 0),
])
def test_concatenations_hold_numpys_values(shape_a, shape_b, axis):
    a, b = _values(shape_a, np.float32, 1), _values(shape_b, np.float32, 2) + 0.5
    expected = np.concatenate((a, b), axis)
    for threads in (1, 2, 3):
        assert _same(_test_hooks._cpu_concat(a, b, axis, threads), expected), threads


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
    with pytest.raises(ValueError, match="size along axis 1"):  # ggml would abort the process
        _test_hooks._cpu_concat(x, np.zeros((2, 4), dtype=np.float32), 0, 1)


def test_the_build_lists_the_patch():
    assert "0020-cpu-copies-without-per-element-calls" in sdcpp_py.core_patches()
