"""ggml's CPU matrix product as our build compiles it (patch 0004 on AVX2), against numpy in float64.

Every convolution and linear layer of every model runs through this product, so a wrong tile edge here would
show up only as subtly wrong pixels: odd shapes are checked directly.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
from native_hooks import PACKED_KERNEL, hooks

_test_hooks = hooks()


def reference(a, b):
    return b.astype(np.float64) @ a.astype(np.float64).T


def relative_error(result, expected):
    return float(np.abs(result - expected).max() / np.sqrt(np.mean(expected**2)))


@pytest.mark.parametrize("m, n, k", [(16, 6, 8), (17, 7, 9), (33, 130, 517), (1024, 13, 40), (77, 300, 64),
                                     (300, 301, 1000), (5, 3, 7)])
@pytest.mark.parametrize("a_dtype, b_dtype", [(np.float16, np.float16), (np.float16, np.float32),
                                              (np.float32, np.float32)])
def test_products_match_numpy_on_odd_shapes(m, n, k, a_dtype, b_dtype):
    rng = np.random.default_rng(m * 1000 + n)
    a = rng.standard_normal((m, k)).astype(a_dtype)
    b = rng.standard_normal((n, k)).astype(b_dtype)
    for threads in (1, 2, 3):
        result = _test_hooks._cpu_mul_mat(a, b, threads)
        assert result.shape == (n, m) and result.dtype == np.float32
        # Same-type inputs: only f32 summation errs. Mixed: products too small for the packed kernel take
        # ggml's path, which rounds b to f16 (see the next test).
        tolerance = 1e-4 if a_dtype == b_dtype else 2e-3
        assert relative_error(result, reference(a, b)) < tolerance, (threads, a_dtype, b_dtype)


@pytest.mark.skipif(not PACKED_KERNEL, reason="patch 0004's kernel is for AVX2 builds without AVX-512")
def test_f32_activations_keep_f32_precision_against_f16_weights():
    # Linear layers: f16 weights (a) times f32 activations (b). ggml's own path rounds the activations to
    # f16 first (relative error ~5e-4); the packed kernel reads them as they are.
    rng = np.random.default_rng(7)
    a = rng.standard_normal((320, 768)).astype(np.float16)
    b = rng.standard_normal((64, 768)).astype(np.float32)
    error = relative_error(_test_hooks._cpu_mul_mat(a, b, 2), reference(a, b))
    assert error < 2e-5, f"relative error {error:.1e}: the activations were rounded to f16"


def test_results_do_not_depend_on_the_thread_count():
    rng = np.random.default_rng(3)
    a = rng.standard_normal((200, 2880)).astype(np.float16)
    b = rng.standard_normal((96, 2880)).astype(np.float16)
    one = _test_hooks._cpu_mul_mat(a, b, 1)
    assert all(np.array_equal(one, _test_hooks._cpu_mul_mat(a, b, threads)) for threads in (2, 4))


TILE_PRODUCTS = """
import sys
import numpy as np
from sdcpp_py import _test_hooks as hooks
rng = np.random.default_rng(11)
a = rng.standard_normal((83, 300)).astype(np.float16)  # 5 slivers + 3 rows: pairs, a single, an edge
b = rng.standard_normal((50, 300), dtype=np.float32)
few = rng.standard_normal((40, 300), dtype=np.float32)  # against few slivers of A, B read in place
kernel = rng.standard_normal((30, 27, 3, 3)).astype(np.float16)  # 27 channels: 3 groups of 8 and a tail
image = rng.standard_normal((2, 27, 17, 19), dtype=np.float32)  # direct (stride 2) and F(4x4) nodes
q, k, v = (rng.standard_normal((70, 64), dtype=np.float32) for _ in range(3))
results = [hooks._cpu_mul_mat(a, b, 2), hooks._cpu_mul_mat(a[:40], few, 2),
           hooks._core_conv_2d(kernel.view(np.uint16), image, 2, 1, 1, 2)[0],
           hooks._core_conv_2d(kernel.view(np.uint16), image, 1, 1, 1, 2)[0],
           hooks._cpu_attention(q, k, v, 2, 2, on_cpu_backend=True)[0]]
np.savez(sys.argv[1], *results)
"""


@pytest.mark.skipif(not PACKED_KERNEL, reason="patch 0004's kernel is not in this build")
def test_avx2_tiles_give_the_avx512_tiles_sums(tmp_path):
    # On an AVX-512 build the f32 register tiles are zmm pairs of slivers and Winograd picks an f16 kernel's
    # taps and F(4x4)'s image columns by permutes; SDCPP_PY_CPU_KERNELS=avx2 keeps the AVX2 16x6 tiles and
    # gathers (on an AVX2-only CPU both runs take them). The same operations per value: bitwise equal products, convolutions and
    # attention.
    outputs = {}
    for name, restriction in (("default", None), ("avx2", "avx2")):
        env = {key: value for key, value in os.environ.items() if key != "SDCPP_PY_CPU_KERNELS"}
        if restriction:
            env["SDCPP_PY_CPU_KERNELS"] = restriction
        path = tmp_path / f"{name}.npz"
        child = subprocess.run([sys.executable, "-c", TILE_PRODUCTS, str(path)], env=env, capture_output=True,
                               text=True, timeout=120)
        assert child.returncode == 0, child.stderr
        outputs[name] = np.load(path)
    for key in outputs["default"].files:
        assert np.array_equal(outputs["default"][key], outputs["avx2"][key]), key


@pytest.mark.skipif(not PACKED_KERNEL, reason="patch 0018 changes the products of builds with patch 0004's kernel")
@pytest.mark.parametrize("a_dtype", [np.float16, np.float32])
def test_products_of_few_columns_equal_one_column_at_a_time(a_dtype):
    # Patch 0018: 2-5 columns (a batch-of-two UNet's timestep layers) are ggml's dot products column by column,
    # as one column is; tinyBLAS summed them in another order (differences ~1e-5 without the patch).
    rng = np.random.default_rng(11)
    a = rng.standard_normal((96, 1280)).astype(a_dtype)
    for n in range(1, 6):
        b = rng.standard_normal((n, 1280)).astype(np.float32)
        for threads in (1, 2):
            together = _test_hooks._cpu_mul_mat(a, b, threads)
            apart = np.concatenate([_test_hooks._cpu_mul_mat(a, b[i:i + 1], threads) for i in range(n)])
            np.testing.assert_array_equal(together, apart)


def test_bad_arguments_are_refused_by_name():
    a = np.zeros((4, 8), np.float32)
    with pytest.raises(ValueError, match="b: expected 8 columns"):
        _test_hooks._cpu_mul_mat(a, np.zeros((4, 9), np.float32))
    with pytest.raises(ValueError, match=r"a: expected float32, float16 or uint16 \(bfloat16 bits\)"):
        _test_hooks._cpu_mul_mat(a.astype(np.float64), a)
    with pytest.raises(ValueError, match="n_threads"):
        _test_hooks._cpu_mul_mat(a, a, 0)


def conv_reference(kernel, image, stride, padding):
    """Direct convolution in float64: (N, IC, H, W) x (OC, IC, KH, KW) -> (N, OC, OH, OW)."""
    padded = np.pad(image.astype(np.float64), ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    oc, ic, kh, kw = kernel.shape
    windows = np.lib.stride_tricks.sliding_window_view(padded, (kh, kw), axis=(2, 3))[:, :, ::stride, ::stride]
    return np.einsum("nchwij,ocij->nohw", windows, kernel.astype(np.float64))


@pytest.mark.parametrize("n, ic, oc, size, kernel_size, stride, padding", [
    (1, 4, 320, 17, 3, 1, 1),     # SD1's conv_in on an odd latent
    (2, 64, 96, 12, 3, 2, 1),     # a downsampler, batch 2
    (1, 40, 24, 9, 1, 1, 0),      # a 1x1 shortcut
    (1, 3, 8, 7, 3, 1, 1),        # fewer output rows than threads would like
])
def test_convolutions_match_numpy(n, ic, oc, size, kernel_size, stride, padding):
    rng = np.random.default_rng(oc)
    kernel = rng.standard_normal((oc, ic, kernel_size, kernel_size)).astype(np.float16)
    image = rng.standard_normal((n, ic, size, size)).astype(np.float32)
    # ggml's im2col rounds the image to f16 for f16 kernels: the reference does the same.
    expected = conv_reference(kernel, image.astype(np.float16), stride, padding)
    results = [_test_hooks._cpu_conv_2d(kernel.view(np.uint16), image, stride, padding, threads)
               for threads in (1, 2, 5)]
    assert results[0].shape == expected.shape
    assert relative_error(results[0], expected) < 1e-4
    assert all(np.array_equal(results[0], other) for other in results[1:])
