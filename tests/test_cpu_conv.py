"""The core's Conv2d convolution on the CPU backend as our build compiles it (patch 0007: one fused node).

Patch 0007 replaces ggml_conv_2d's im2col, matrix product and permuted copy with one node whose product
reads the image directly. Its output must be bitwise the unfused graph's, so that pixels do not move; the
shapes below cover what the fast path special-cases: 16 output pixels in one row, the image's edges,
strides, dilation, 1x1 kernels, batches and rows narrower than 16 pixels. (Larger 3x3 stride-1 convolutions
run as Winograd by default: test_cpu_winograd.py; here SDCPP_PY_CPU_CONV=direct keeps the direct node.)
"""

import numpy as np
import pytest

from native_hooks import PACKED_KERNEL, hooks

from sdcpp_py import _core

_test_hooks = hooks()


@pytest.fixture(autouse=True)
def direct_convolution(monkeypatch):
    """The direct node (3x3 stride-1 convolutions of 16 tiles or more run as Winograd: test_cpu_winograd.py)."""
    monkeypatch.setenv("SDCPP_PY_CPU_CONV", "direct")


needs_fused_conv = pytest.mark.skipif(
    not PACKED_KERNEL, reason="patch 0007 fuses convolutions where patch 0004's AVX2 kernel is compiled")


def random_conv(n, ic, oc, h, w, k, seed):
    rng = np.random.default_rng(seed)
    kernel = rng.standard_normal((oc, ic, k, k)).astype(np.float16)
    image = rng.standard_normal((n, ic, h, w), dtype=np.float32)
    return kernel, image


def reference(kernel, image, stride, padding, dilation):
    """float64 convolution of the image rounded to f16 (as im2col stores it) with the f16 kernel."""
    x = np.pad(image.astype(np.float16).astype(np.float64), ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    k = kernel.astype(np.float64)
    oc, _, kh, kw = k.shape
    oh = (x.shape[2] - dilation * (kh - 1) - 1) // stride + 1
    ow = (x.shape[3] - dilation * (kw - 1) - 1) // stride + 1
    out = np.zeros((x.shape[0], oc, oh, ow))
    for i in range(kh):
        for j in range(kw):
            patch = x[:, :, i * dilation:i * dilation + stride * (oh - 1) + 1:stride,
                      j * dilation:j * dilation + stride * (ow - 1) + 1:stride]
            out += np.einsum("nchw,oc->nohw", patch, k[:, :, i, j])
    return out


# (N, IC, OC, H, W, kernel, stride, padding, dilation)
SHAPES = [
    (1, 32, 40, 20, 37, 3, 1, 1, 1),   # rows of 37: slivers straddle rows, edges masked
    (1, 64, 64, 64, 64, 3, 1, 1, 1),   # SD1's level 1 in small: every sliver in one row
    (2, 16, 24, 9, 9, 3, 2, 1, 1),     # batch 2, stride 2 (downsampling)
    (1, 8, 16, 13, 5, 1, 1, 0, 1),     # 1x1, rows of 5
    (1, 12, 20, 17, 19, 3, 1, 2, 2),   # dilation 2, padding 2
    (1, 20, 8, 8, 8, 3, 1, 1, 1),      # rows of 8: two per sliver
    (1, 30, 7, 6, 40, 5, 1, 2, 1),     # 5x5, wide rows, 7 output channels (a short register-tile edge)
    (3, 40, 26, 8, 8, 3, 1, 1, 1),     # batch 3 of 64 pixels: the images stacked into one product
    (2, 24, 16, 8, 8, 3, 2, 1, 1),     # batch 2 of 16 pixels (stride 2), stacked
    (2, 24, 16, 4, 4, 3, 1, 1, 1),     # rows of 4 (four a sliver, masked runs), stacked
    (1, 16, 12, 8, 8, 1, 1, 0, 1),     # 1x1, rows of 8
    (1, 12, 10, 7, 4, 3, 1, 1, 1),     # rows of 4 and 28 pixels: a last part sliver gathered
    (1, 8, 8, 10, 8, 3, 1, 2, 2),      # rows of 8 from input rows of 8, dilation 2: runs masked at both ends
]


@needs_fused_conv
def test_core_conv_is_one_node_without_im2col():
    kernel, image = random_conv(1, 64, 64, 64, 64, 3, seed=1)
    im2col_bytes = 64 * 64 * 64 * 9 * 2
    _, fused_ops, fused_buffer = _test_hooks._core_conv_2d(kernel.view(np.uint16), image, 1, 1, 1, 2, True)
    _, core_ops, core_buffer = _test_hooks._core_conv_2d(kernel.view(np.uint16), image, 1, 1, 1, 2, False)
    assert {"IM2COL", "MUL_MAT", "CONT"} <= set(core_ops) and core_buffer > im2col_bytes
    assert fused_ops == ["CUSTOM"]
    assert fused_buffer < core_buffer - im2col_bytes / 2, (fused_buffer, core_buffer)


@needs_fused_conv
@pytest.mark.parametrize("n, ic, oc, h, w, k, stride, padding, dilation", SHAPES)
def test_fused_conv_is_bitwise_the_core_graph(n, ic, oc, h, w, k, stride, padding, dilation):
    kernel, image = random_conv(n, ic, oc, h, w, k, seed=h * 100 + w)
    bits = kernel.view(np.uint16)
    unfused, core_ops, _ = _test_hooks._core_conv_2d(bits, image, stride, padding, dilation, 2, False)
    assert "IM2COL" in core_ops
    for threads in (1, 2, 3):
        fused, ops, _ = _test_hooks._core_conv_2d(bits, image, stride, padding, dilation, threads, True)
        assert ops == ["CUSTOM"]
        assert np.array_equal(fused, unfused), (threads, float(np.abs(fused - unfused).max()))


@needs_fused_conv
@pytest.mark.parametrize("n, ic, oc, h, w, k, stride, padding, dilation", SHAPES[:3])
def test_fused_conv_adds_the_bias_bitwise_as_the_core_graph(n, ic, oc, h, w, k, stride, padding, dilation):
    kernel, image = random_conv(n, ic, oc, h, w, k, seed=7)
    bias = np.random.default_rng(8).standard_normal(oc, dtype=np.float32)
    bits = kernel.view(np.uint16)
    unfused, core_ops, _ = _test_hooks._core_conv_2d(bits, image, stride, padding, dilation, 2, False, bias)
    assert "ADD" in core_ops
    without_bias, _, _ = _test_hooks._core_conv_2d(bits, image, stride, padding, dilation, 2, True)
    for threads in (1, 2, 3):
        fused, ops, _ = _test_hooks._core_conv_2d(bits, image, stride, padding, dilation, threads, True, bias)
        assert ops == ["CUSTOM"]
        assert np.array_equal(fused, unfused), (threads, float(np.abs(fused - unfused).max()))
    assert np.array_equal(fused, without_bias + bias[None, :, None, None])


@pytest.mark.parametrize("n, ic, oc, h, w, k, stride, padding, dilation",
                         SHAPES + [(1, 2, 3, 4, 4, 3, 1, 1, 1), (1, 24, 16, 3, 3, 3, 1, 1, 1)])
def test_core_conv_matches_numpy(n, ic, oc, h, w, k, stride, padding, dilation):
    kernel, image = random_conv(n, ic, oc, h, w, k, seed=ic)
    expected = reference(kernel, image, stride, padding, dilation)
    result, _, _ = _test_hooks._core_conv_2d(kernel.view(np.uint16), image, stride, padding, dilation, 2)
    assert result.shape == expected.shape and result.dtype == np.float32
    scale = np.sqrt(np.mean(expected**2))
    assert np.abs(result - expected).max() < 1e-5 * scale * np.sqrt(ic * k * k)


def test_sizes_the_packed_kernel_declines_keep_the_core_graph():
    # 3 output channels: the unfused product would not run on the packed kernel, so the graph stays.
    kernel, image = random_conv(1, 2, 3, 4, 4, 3, seed=0)
    _, ops, _ = _test_hooks._core_conv_2d(kernel.view(np.uint16), image, 1, 1, 1, 2, True)
    assert "IM2COL" in ops and "CUSTOM" not in ops


def test_bad_arguments_are_refused_with_the_argument_named():
    kernel, image = random_conv(1, 4, 8, 6, 6, 3, seed=0)
    with pytest.raises(ValueError, match="image: channel count"):
        _test_hooks._core_conv_2d(kernel.view(np.uint16), image[:, :2].copy())
    with pytest.raises(ValueError, match="stride"):
        _test_hooks._core_conv_2d(kernel.view(np.uint16), image, 0)
    with pytest.raises(ValueError, match="image: smaller"):
        _test_hooks._core_conv_2d(kernel.view(np.uint16), image[:, :, :2, :2].copy())
    with pytest.raises(ValueError, match="bias"):
        _test_hooks._core_conv_2d(kernel.view(np.uint16), image, bias=np.zeros(3, np.float32))


@needs_fused_conv
@pytest.mark.parametrize("precision", ["f16", "bf16", "q8_0"])
def test_a_batch_of_small_images_is_each_image_alone(precision):
    # Up to 1024 pixels in whole slivers of 16 a batch's images are one product (the kernel packed once:
    # a UNet's two guidance passes run as one batch); each image's values are those it has alone.
    if precision == "bf16" and not _core.cpu_bf16_products():
        pytest.skip("no bf16 products here (AVX512_BF16 CPU and x86-64 build)")
    options = {"bf16": precision == "bf16", "q8_0": precision == "q8_0"}
    # Images of fewer than 16 pixels (3x3, 2x2, alone below the packed kernel's 16 rows) are fused too.
    for n, ic, oc, side, stride in [(2, 64, 70, 8, 1), (3, 32, 13, 4, 1), (2, 32, 20, 8, 2), (2, 32, 20, 32, 1),
                                    (2, 32, 20, 3, 1), (2, 64, 24, 2, 1)]:
        kernel, image = random_conv(n, ic, oc, side, side, 3, seed=side + n)
        bits = kernel.view(np.uint16)
        bias = np.random.default_rng(side).standard_normal(oc, dtype=np.float32)
        for threads in (1, 2, 3):
            together, ops, _ = _test_hooks._core_conv_2d(bits, image, stride, 1, 1, threads, True, bias, **options)
            assert ops == ["CUSTOM"]
            for i in range(n):
                alone, _, _ = _test_hooks._core_conv_2d(bits, image[i:i + 1], stride, 1, 1, threads, True, bias,
                                                        **options)
                assert np.array_equal(together[i:i + 1], alone), (n, side, stride, threads, i)
