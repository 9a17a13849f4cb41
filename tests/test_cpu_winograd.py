"""3x3 stride-1 convolutions as Winograd F(2x2, 3x3) and F(4x4, 3x3) on the CPU (kernels/sdcpp_py_winograd.cpp,
issue 20).

Where an image has at least 16 tiles of 2x2 output pixels (bf16 products: 64), the core's Conv2d runs as two
nodes: the input transform, then 16 products on the packed kernel and the output transform (a batch's images
share each product); with at least 16 tiles of 4x4 pixels and f32 products as F(4x4), 36 products
(SDCPP_PY_CPU_CONV=winograd2x2 keeps F(2x2)). Each is checked against numpy: the
f32 result against a float64 convolution, the bf16 one against numpy's Winograd with the same operands
rounded to bf16, for f16 and q8_0 kernels, odd sizes, padding 0-2, batches, a bias, 1-3 threads, images
whose tiles take more than one band of products.
SDCPP_PY_CPU_CONV=direct keeps the direct node (test_cpu_conv.py tests it bitwise against the core's graph).
"""

import os
import subprocess
import sys

import numpy as np
import pytest
from native_hooks import PACKED_KERNEL, hooks
from test_cpu_bf16 import bf16, needs_bf16, relative_error
from test_cpu_matmul import conv_reference
from test_quantized_conv import q8_0_values

_test_hooks = hooks()

pytestmark = pytest.mark.skipif(not PACKED_KERNEL, reason="the fused CPU kernels need the AVX2 packed kernel")

AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float64)


def input_transform(d):
    """B' d B over the last two axes (4x4), in float32 in the kernel's order of operations."""
    def rows(x):
        return np.stack([x[..., 0, :] - x[..., 2, :], x[..., 1, :] + x[..., 2, :], x[..., 2, :] - x[..., 1, :],
                         x[..., 1, :] - x[..., 3, :]], axis=-2)
    return np.swapaxes(rows(np.swapaxes(rows(d), -1, -2)), -1, -2)


def kernel_transform(g):
    """G g G' over the last two axes (3x3 -> 4x4), in float32 in the kernel's order of operations."""
    half = np.float32(0.5)

    def rows(x):
        return np.stack([x[..., 0, :], half * ((x[..., 0, :] + x[..., 1, :]) + x[..., 2, :]),
                         half * ((x[..., 0, :] - x[..., 1, :]) + x[..., 2, :]), x[..., 2, :]], axis=-2)
    return np.swapaxes(rows(np.swapaxes(rows(g), -1, -2)), -1, -2)


def winograd_reference(kernel, image, padding, round_operands):
    """F(2x2, 3x3) in numpy: transforms in float32, operands rounded by round_operands, products in float64."""
    n, ic, h, w = image.shape
    oh, ow = h + 2 * padding - 2, w + 2 * padding - 2
    th, tw = (oh + 1) // 2, (ow + 1) // 2
    padded = np.zeros((n, ic, 2 * th + 2, 2 * tw + 2), np.float32)
    padded[:, :, padding:padding + h, padding:padding + w] = image[:, :, :2 * th + 2 - padding, :2 * tw + 2 - padding]
    patches = np.lib.stride_tricks.sliding_window_view(padded, (4, 4), axis=(2, 3))[:, :, ::2, ::2]
    v = round_operands(input_transform(patches))
    u = round_operands(kernel_transform(kernel.astype(np.float32)))
    m = np.einsum("ncyxab,ocab->noyxab", v.astype(np.float64), u.astype(np.float64))
    y = np.einsum("ia,noyxab,jb->noyixj", AT, m, AT).reshape(n, -1, 2 * th, 2 * tw)
    return y[:, :, :oh, :ow]


def random_case(n, ic, oc, h, w, seed):
    rng = np.random.default_rng(seed)
    kernel = rng.standard_normal((oc, ic, 3, 3)).astype(np.float16)
    image = rng.standard_normal((n, ic, h, w)).astype(np.float32)
    bias = rng.standard_normal(oc).astype(np.float32)
    return kernel, image, bias


# (N, IC, OC, H, W, padding) with 16+ 4x4 tiles: F(4x4) by default.
CASES_4X4 = [
    (2, 17, 7, 33, 35, 0),     # batch 2, part tiles at both edges, 7 output channels, channels not a multiple of 8
    (1, 16, 24, 66, 66, 1),    # 289 tiles: three bands of products, the second starting mid-row
    (1, 320, 200, 34, 34, 2),  # two blocks of depth, rounds of one column each, padding 2
    (2, 16, 12, 90, 26, 1),    # 7 tiles a row (no 8-tile vectors), 161 tiles an image: bands across images
    (1, 16, 8, 3, 258, 1),     # one row of 65 tiles
]
CASES = [
    (1, 64, 64, 32, 32, 1),    # SD1's level 0 in small: whole slivers of 16 tiles, 8-tile rows
    (1, 17, 40, 20, 37, 1),    # odd width (a half tile dropped), channels not a multiple of 8, 190 tiles
    (2, 32, 7, 17, 19, 2),     # batch 2, padding 2, 7 output channels (a short register-tile column)
    (1, 24, 30, 18, 18, 0),    # no padding: 16 4x4 tiles, the fewest that take F(4x4)
    (1, 24, 30, 10, 10, 0),    # 16 2x2 tiles, the fewest that take this path
    (2, 40, 30, 8, 8, 1),      # batch 2 of 16 tiles: both images in one sliver-aligned product each
    (3, 24, 14, 14, 6, 1),     # batch 3 of 21 tiles (part slivers between the images)
    (1, 16, 24, 43, 43, 1),    # 484 tiles: two bands of products, the second starting mid-row
    (1, 320, 200, 16, 16, 1),  # two blocks of depth (KC 256); 200 channels: rounds of kernels taken by the threads
]


@pytest.fixture(autouse=True)
def winograd_allowed(monkeypatch):
    monkeypatch.delenv("SDCPP_PY_CPU_CONV", raising=False)


@pytest.mark.parametrize("mode", ["winograd2x2", "default"])
@pytest.mark.parametrize("n, ic, oc, h, w, padding", CASES + CASES_4X4)
def test_winograd_convolution_matches_numpy(n, ic, oc, h, w, padding, mode, monkeypatch):
    if mode != "default":
        monkeypatch.setenv("SDCPP_PY_CPU_CONV", mode)
    four_by_four = mode == "default" and (h + 2 * padding - 2 + 3) // 4 * ((w + 2 * padding - 2 + 3) // 4) >= 16
    kernel, image, bias = random_case(n, ic, oc, h, w, ic * oc)
    expected = conv_reference(kernel, image, 1, padding) + bias[None, :, None, None]
    results = []
    for threads in (1, 2, 3):
        out, ops, _ = _test_hooks._core_conv_2d(kernel.view(np.uint16), image, 1, padding, 1, threads, bias=bias)
        assert ops == ["CUSTOM", "CUSTOM"], ops
        # f32 throughout: the image is not rounded to f16 as the direct node's (im2col's) is. F(4x4)'s kernel
        # factors (1/6, 1/12, 1/24) are rounded and its sums larger: about 5x F(2x2)'s error.
        assert relative_error(out, expected) < (5e-5 if four_by_four else 5e-6), threads
        results.append(out)
    assert all(np.array_equal(results[0], other) for other in results[1:]), "each output summed by one thread"
    if four_by_four:  # it is not F(2x2)'s result
        monkeypatch.setenv("SDCPP_PY_CPU_CONV", "winograd2x2")
        two_by_two = _test_hooks._core_conv_2d(kernel.view(np.uint16), image, 1, padding, 1, 2, bias=bias)[0]
        assert not np.array_equal(results[0], two_by_two)
        assert relative_error(two_by_two, expected) < 5e-6


def units_of(ranges):
    return sum(u1 - u0 for u0, u1 in ranges)


@pytest.mark.parametrize("units, max_units, min_units, threads", [(54, 8, 2, 2), (214, 2, 2, 3), (7, 4, 2, 4),
                                                                  (1, 1, 1, 2), (0, 4, 2, 2), (33, 5, 9, 2)])
def test_rounds_are_each_taken_once_and_the_counters_left_at_zero(units, max_units, min_units, threads):
    runs, counters = _test_hooks._claimed_ranges(units, max_units, min_units, threads, runs=3)
    assert counters == (0, 0), "the last thread done puts the shared counters back for the node's next run"
    min_units = min(min_units, max_units)
    for per_thread in runs:
        taken = sorted(r for ranges in per_thread for r in ranges)
        starts, ends = [u0 for u0, _ in taken], [u1 for _, u1 in taken]
        assert starts == [0] + ends[:-1] and ends[-1:] == [units] if units else taken == [], "no gap, no overlap"
        for u0, u1 in taken:
            assert u1 - u0 <= max_units and (u1 - u0 >= min_units or u1 == units), (u0, u1)


def test_a_slow_thread_takes_fewer_rounds():
    # The last thread sleeps 0.2 s after each range it takes; the other takes its ranges at once (it has that
    # long to start).
    runs, counters = _test_hooks._claimed_ranges(54, 8, 2, 2, runs=2, slow_us=200000)
    assert counters == (0, 0)
    for fast, slow in runs:
        assert units_of(slow) <= 8 < units_of(fast), (fast, slow)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_without_counters_each_thread_takes_its_fixed_share(threads):
    # Images too large for the cache: each round reads the image from memory, so rounds stay as few as the
    # fixed shares allow (one thread alone takes its rounds this way too).
    runs, counters = _test_hooks._claimed_ranges(54, 8, 2, threads, runs=2, slow_us=1000, fixed=True)
    assert counters == (0, 0)
    for per_thread in runs:
        for t, ranges in enumerate(per_thread):
            first, last = 54 * t // threads, 54 * (t + 1) // threads
            assert ranges == [(u, min(u + 8, last)) for u in range(first, last, 8)], (t, ranges)


def test_the_backend_reports_the_winograd_kernel():
    from sdcpp_py import _core
    assert "sdcpp_py_cpu_winograd_conv" in _core.fused_cpu_kernels()


def test_direct_convolution_stays_on_request_and_below_16_tiles(monkeypatch):
    kernel, image, _ = random_case(1, 16, 16, 16, 16, 1)
    _, ops, _ = _test_hooks._core_conv_2d(kernel.view(np.uint16), image, 1, 1, 1, 2)
    assert ops == ["CUSTOM", "CUSTOM"]
    monkeypatch.setenv("SDCPP_PY_CPU_CONV", "direct")
    direct, ops, _ = _test_hooks._core_conv_2d(kernel.view(np.uint16), image, 1, 1, 1, 2)
    assert ops == ["CUSTOM"]
    # The direct node rounds the image to f16 as im2col does.
    expected = conv_reference(kernel, image.astype(np.float16), 1, 1)
    assert relative_error(direct, expected) < 2e-6
    monkeypatch.delenv("SDCPP_PY_CPU_CONV")
    for shape, stride in (((1, 16, 6, 6), 1), ((2, 16, 4, 4), 1), ((1, 16, 32, 32), 2)):  # 9 tiles; 4; stride 2
        _, ops, _ = _test_hooks._core_conv_2d(kernel.view(np.uint16), np.zeros(shape, np.float32), stride, 1, 1, 2)
        assert ops == ["CUSTOM"], (shape, stride)
    _, ops, _ = _test_hooks._core_conv_2d(kernel.view(np.uint16), np.zeros((1, 16, 8, 8), np.float32), 1, 1, 1, 2)
    assert ops == ["CUSTOM", "CUSTOM"], "16 tiles take Winograd"
    # An image-in layer (4 channels) and transformed images over 64 MiB: F(2x2), 129x129 tiles x 64 channels
    # x 16 positions (128x128: 64 MiB exactly); F(4x4), 87x87 tiles x 64 channels x 36 (85x85: 63.6 MiB).
    few_channels = np.zeros((16, 4, 3, 3), np.float16)
    _, ops, _ = _test_hooks._core_conv_2d(few_channels.view(np.uint16), np.zeros((1, 4, 32, 32), np.float32), 1, 1)
    assert ops == ["CUSTOM"]
    wide = np.zeros((8, 64, 3, 3), np.float16)
    for mode, over, at in (("winograd2x2", 258, 256), ("default", 346, 338)):
        if mode == "default":
            monkeypatch.delenv("SDCPP_PY_CPU_CONV")
        else:
            monkeypatch.setenv("SDCPP_PY_CPU_CONV", mode)
        _, ops, _ = _test_hooks._core_conv_2d(wide.view(np.uint16), np.zeros((1, 64, over, over), np.float32), 1, 1,
                                              1, 2)
        assert ops == ["CUSTOM"], mode
        _, ops, _ = _test_hooks._core_conv_2d(wide.view(np.uint16), np.zeros((1, 64, at, at), np.float32), 1, 1, 1, 2)
        assert ops == ["CUSTOM", "CUSTOM"], (mode, "up to 64 MiB is allowed")
        # The limit is per image: an image's convolution does not depend on its batch (guidance passes as one).
        _, ops, _ = _test_hooks._core_conv_2d(wide.view(np.uint16), np.zeros((2, 64, at, at), np.float32), 1, 1, 1, 2)
        assert ops == ["CUSTOM", "CUSTOM"], (mode, "up to 64 MiB per image, in a batch of two")


@pytest.mark.parametrize("precision", ["f32", pytest.param("bf16", marks=needs_bf16)])
def test_a_batch_is_each_image_alone(precision):
    for side in (8, 10, 16, 32):  # f32: F(2x2), then F(4x4); bf16: F(2x2). 10: 25 tiles (part slivers)
        kernel, image, bias = random_case(2, 64, 40, side, side, side)
        bits = kernel.view(np.uint16)
        together, ops, _ = _test_hooks._core_conv_2d(bits, image, 1, 1, 1, 2, True, bias, precision == "bf16")
        assert len(ops) == 2, (side, ops)
        for i in range(2):
            alone, _, _ = _test_hooks._core_conv_2d(bits, image[i:i + 1], 1, 1, 1, 2, True, bias, precision == "bf16")
            assert np.array_equal(together[i:i + 1], alone), (side, i)


@pytest.mark.parametrize("ic, side", [(64, 10), (320, 10), (64, 24)])  # 320: two blocks of depth; 24: F(4x4)
def test_q8_0_kernels_are_transformed_from_their_quantized_values(ic, side):
    kernel, image, bias = random_case(1, ic, 48, side, side, 5)
    values = q8_0_values(kernel)
    expected = conv_reference(values, image, 1, 1) + bias[None, :, None, None]
    for threads in (1, 2):
        out, ops, _ = _test_hooks._core_conv_2d(kernel.view(np.uint16), image, 1, 1, 1, threads, bias=bias,
                                                q8_0=True)
        assert ops == ["CUSTOM", "CUSTOM"], ops
        assert relative_error(out, expected) < (5e-5 if side >= 16 else 5e-6)


@needs_bf16
@pytest.mark.parametrize("n, ic, oc, h, w, padding", CASES[:4] + CASES[-2:] + [
    (2, 515, 8, 16, 16, 1),  # an odd channel count past one bf16 block (512): the last pair half zero, batch 2
    (2, 40, 30, 8, 8, 1),    # 16 tiles, the fewest (bf16 products take Winograd from there too)
])
def test_bf16_products_round_the_transformed_operands(n, ic, oc, h, w, padding, monkeypatch):
    monkeypatch.setenv("SDCPP_PY_CPU_CONV", "winograd2x2")  # the reference is F(2x2)
    kernel, image, bias = random_case(n, ic, oc, h, w, ic + oc)
    expected = winograd_reference(kernel, image, padding, bf16) + bias[None, :, None, None]
    exact = conv_reference(kernel, image, 1, padding) + bias[None, :, None, None]
    out, ops, _ = _test_hooks._core_conv_2d(kernel.view(np.uint16), image, 1, padding, 1, 2, bias=bias, bf16=True)
    assert ops == ["CUSTOM", "CUSTOM"]
    other = _test_hooks._core_conv_2d(kernel.view(np.uint16), image, 1, padding, 1, 3, bias=bias, bf16=True)[0]
    assert np.array_equal(out, other), "the thread count changes nothing"
    assert relative_error(out, expected) < 1e-5
    # Against the exact convolution: an RMS error of ~0.4% (the direct node's bf16 products: ~0.24%).
    rms_error = np.sqrt(np.mean((out - exact) ** 2) / np.mean(exact**2))
    assert 1e-3 < rms_error < 6e-3


@needs_bf16
def test_q8_0_kernels_with_bf16_products_round_their_transforms():
    # 25 tiles: Winograd with bf16 products, the transform taken from the q8_0 values, both operands rounded.
    kernel, image, bias = random_case(2, 64, 40, 10, 10, 9)
    values = q8_0_values(kernel)
    expected = winograd_reference(values, image, 1, bf16) + bias[None, :, None, None]
    out, ops, _ = _test_hooks._core_conv_2d(kernel.view(np.uint16), image, 1, 1, 1, 2, bias=bias, q8_0=True, bf16=True)
    assert ops == ["CUSTOM", "CUSTOM"], ops
    assert relative_error(out, expected) < 1e-5
    assert relative_error(out, winograd_reference(values, image, 1, lambda x: x) + bias[None, :, None, None]) > 1e-4


AVX2_AND_WIDE_WINOGRAD = """
import hashlib, numpy as np
from sdcpp_py import _test_hooks
rng = np.random.default_rng(8)
digest = hashlib.sha256()
for ic, side in ((17, 16), (24, 10), (40, 16), (48, 24)):  # F(2x2) and F(4x4); 17: a scalar channel tail
    kernel = rng.standard_normal((20, ic, 3, 3)).astype(np.float16)
    image = rng.standard_normal((2, ic, side, side), dtype=np.float32)
    digest.update(_test_hooks._core_conv_2d(kernel.view(np.uint16), image, 1, 1, 1, 2)[0].tobytes())
for ic, side in ((32, 16), (64, 10)):  # q8_0 kernels (rows of whole blocks): F(4x4) and F(2x2)
    kernel = rng.standard_normal((20, ic, 3, 3)).astype(np.float16)
    image = rng.standard_normal((2, ic, side, side), dtype=np.float32)
    digest.update(_test_hooks._core_conv_2d(kernel.view(np.uint16), image, 1, 1, 1, 2, q8_0=True)[0].tobytes())
print(digest.hexdigest())
"""


def test_the_avx2_restriction_gives_the_same_winograd_sums():
    # On AVX-512 the kernel transform takes 16 channels at a time (f16 taps picked by word permutes, q8_0 taps
    # by zmm gathers) and the products run zmm tiles; SDCPP_PY_CPU_KERNELS=avx2 takes 8 by ymm gathers and runs
    # ymm tiles: the same operations per value, so the same bits.
    results = []
    for restriction in ("", "avx2"):
        env = dict(os.environ, SDCPP_PY_CPU_KERNELS=restriction)
        env.pop("SDCPP_PY_CPU_CONV", None)
        done = subprocess.run([sys.executable, "-c", AVX2_AND_WIDE_WINOGRAD], env=env, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        results.append(done.stdout.strip())
    assert results[0] == results[1]


@needs_bf16
def test_bf16_graphs_hold_the_transformed_image_as_pairs(monkeypatch):
    # The input node stores channel pairs already rounded to bf16 (what the product reads): half the bytes.
    monkeypatch.setenv("SDCPP_PY_CPU_CONV", "winograd2x2")  # the same tiles in both precisions
    n, ic, oc, h, w, padding = CASES[-1]
    kernel, image, bias = random_case(n, ic, oc, h, w, 4)
    transformed_f32 = 64 * ic * 16 * 4  # 64 tiles, 16 positions
    _, _, f32_bytes = _test_hooks._core_conv_2d(kernel.view(np.uint16), image, 1, padding, 1, 2, bias=bias)
    _, _, bf16_bytes = _test_hooks._core_conv_2d(kernel.view(np.uint16), image, 1, padding, 1, 2, bias=bias, bf16=True)
    assert f32_bytes - bf16_bytes >= 0.45 * transformed_f32, (f32_bytes, bf16_bytes)


RESTRICTED_BF16_GRAPH = """
import numpy as np
from sdcpp_py import _test_hooks
rng = np.random.default_rng(6)
kernel = rng.standard_normal((24, 33, 3, 3)).astype(np.float16)
image = rng.standard_normal((1, 33, 20, 20), dtype=np.float32)
bf16 = _test_hooks._core_conv_2d(kernel.view(np.uint16), image, 1, 1, 1, 2, bf16=True)
f32 = _test_hooks._core_conv_2d(kernel.view(np.uint16), image, 1, 1, 1, 2)
print(bf16[1], np.array_equal(bf16[0], f32[0]))
"""


def test_a_bf16_graph_under_the_avx2_restriction_runs_f32_winograd():
    # With SDCPP_PY_CPU_KERNELS=avx2 the products cannot run in bf16: a bf16 graph's Winograd nodes then keep
    # the f32 layout (the input node's bf16 pairs would meet an f32 product), and compute the f32 result.
    env = dict(os.environ, SDCPP_PY_CPU_KERNELS="avx2")
    child = subprocess.run([sys.executable, "-c", RESTRICTED_BF16_GRAPH], env=env, capture_output=True, text=True,
                           timeout=120)
    assert child.returncode == 0, child.stderr
    assert child.stdout.split() == ["['CUSTOM',", "'CUSTOM']", "True"], child.stdout


@needs_bf16
def test_bf16_products_take_winograd_from_16_tiles():
    # As f32 products do: 9 tiles stay direct, 16 (SD1's 8x8 level) take Winograd.
    kernel, _, _ = random_case(1, 16, 16, 8, 8, 2)
    for side, nodes in ((6, 1), (8, 2), (16, 2)):  # 9, 16 and 64 tiles
        image = np.zeros((2, 16, side, side), np.float32)
        _, ops, _ = _test_hooks._core_conv_2d(kernel.view(np.uint16), image, 1, 1, 1, 2, bf16=True)
        assert len(ops) == nodes, (side, ops)


@needs_bf16
def test_bf16_products_keep_2x2_tiles(monkeypatch):
    # F(4x4)'s operands rounded to bf16 cost an SD1 picture 13 dB: bf16 graphs take F(2x2) on any image.
    n, ic, oc, h, w, padding = CASES_4X4[0]
    kernel, image, bias = random_case(n, ic, oc, h, w, 3)
    default = _test_hooks._core_conv_2d(kernel.view(np.uint16), image, 1, padding, 1, 2, bias=bias, bf16=True)[0]
    monkeypatch.setenv("SDCPP_PY_CPU_CONV", "winograd2x2")
    two_by_two = _test_hooks._core_conv_2d(kernel.view(np.uint16), image, 1, padding, 1, 2, bias=bias, bf16=True)[0]
    assert np.array_equal(default, two_by_two)
    assert relative_error(default, winograd_reference(kernel, image, padding, bf16) + bias[None, :, None, None]) < 1e-5


def test_numpys_winograd_is_the_convolution():
    # The reference above is itself checked, so that the bf16 test compares against a convolution.
    kernel, image, _ = random_case(2, 5, 6, 9, 12, 9)
    for padding in (0, 1, 2):
        np.testing.assert_allclose(winograd_reference(kernel, image, padding, lambda x: x),
                                   conv_reference(kernel, image, 1, padding), rtol=1e-4, atol=1e-4)


SD1_ARGS = dict(width=128, height=128, steps=2, cfg_scale=7.0, seed=5)


@pytest.fixture(scope="module")
def sd1_winograd_and_direct(sd1_checkpoint):
    """SD1 at 128x128 (16x16 latents: the UNet's first level and the whole VAE decoder take Winograd), and the
    same with SDCPP_PY_CPU_CONV=direct."""
    import os

    import sdcpp_py
    images = {}
    for mode in ("winograd", "direct"):
        if mode == "direct":
            os.environ["SDCPP_PY_CPU_CONV"] = "direct"
        try:
            with sdcpp_py.Context(model=sd1_checkpoint, n_threads=2, vae_decode_only=True) as ctx:
                images[mode] = ctx.txt2img("a red cube", negative_prompt="blurry", **SD1_ARGS)[0]
        finally:
            os.environ.pop("SDCPP_PY_CPU_CONV", None)
    return images


def test_an_sd1_picture_through_winograd_is_nearly_the_direct_one(sd1_winograd_and_direct):
    winograd, direct = sd1_winograd_and_direct["winograd"], sd1_winograd_and_direct["direct"]
    assert winograd.shape == direct.shape == (128, 128, 3) and winograd.std() > 1.0
    mse = np.mean((winograd.astype(np.float64) - direct.astype(np.float64)) ** 2)
    assert 0 < mse, "the same pixels: Winograd did not run"
    assert 10 * np.log10(255**2 / mse) > 35


def test_an_sd1_picture_through_winograd_is_sd_clis(sd1_winograd_and_direct, sd1_checkpoint, run_sd_cli, tmp_path):
    expected = run_sd_cli(tmp_path / "cli.png", {"model": sd1_checkpoint}, "-p", "a red cube", "-n", "blurry",
                          "-W", "128", "-H", "128", "--steps", "2", "--cfg-scale", "7.0", "-s", "5", "-t", "2")
    np.testing.assert_array_equal(sd1_winograd_and_direct["winograd"], expected)
