"""Patch 0018: on the CPU a UNet's conditional and unconditional passes run as one batch of two (each weight
read and packed once per step), with the pixels of two passes. SDCPP_PY_CFG_BATCH=0 keeps two passes."""

import re

import numpy as np
import pytest
from native_hooks import PACKED_KERNEL

import sdcpp_py
from sdcpp_py import _core

pytestmark = pytest.mark.skipif(not PACKED_KERNEL, reason="the batch's products are bitwise the same with patch "
                                                          "0004's kernel; ggml's own can sum a batch otherwise")

GUIDED = dict(steps=2, cfg_scale=7.0, seed=5, negative_prompt="blurry, dark")
# (width, height): latents of 8x8 (f32 Winograd: both images' 16 tiles in each product) down to 1x1 (images of
# 64 and 16 pixels stacked into one product, of 4 and 1 in the batch's product), 16x16 (Winograd, F(4x4) in
# f32), 24x24 down to 3x3 (9 pixels: below the packed kernel's 16 rows alone, not in a batch), 32x16 down to 4x2.
SIZES = [(64, 64), (128, 128), (192, 192), (256, 128)]


def generate(ctx, monkeypatch, batched, size):
    if batched:
        monkeypatch.delenv("SDCPP_PY_CFG_BATCH", raising=False)
    else:
        monkeypatch.setenv("SDCPP_PY_CFG_BATCH", "0")
    width, height = size
    return ctx.txt2img("a lighthouse at dusk", width=width, height=height, **GUIDED)[0]


@pytest.fixture(scope="module", params=["f32", "bf16"])
def sd1_ctx(request, sd1_checkpoint):
    if request.param == "bf16" and not _core.cpu_bf16_products():
        pytest.skip("no bf16 products here (AVX512_BF16 CPU and x86-64 build)")
    options = {"cpu_precision": "bf16"} if request.param == "bf16" else {}
    with sdcpp_py.Context(model=sd1_checkpoint, n_threads=2, **options) as ctx:
        yield ctx


@pytest.mark.parametrize("size", SIZES)
def test_one_batch_gives_the_pixels_of_two_passes(sd1_ctx, monkeypatch, size):
    together = generate(sd1_ctx, monkeypatch, True, size)
    apart = generate(sd1_ctx, monkeypatch, False, size)
    assert together.std() > 1.0
    np.testing.assert_array_equal(together, apart)


def unet_compute_buffer_mib(ctx, monkeypatch, caplog, batched):
    caplog.clear()
    with caplog.at_level("DEBUG", logger="sdcpp_py"):
        image = generate(ctx, monkeypatch, batched, (64, 64))
    sizes = [float(m.group(1)) for r in caplog.records
             if (m := re.search(r"unet compute buffer size: ([0-9.]+) MB", r.getMessage()))]
    assert sizes, "the core logged no UNet compute buffer"
    return image, max(sizes)


def test_the_two_passes_run_as_one_batch(sd1_ctx, monkeypatch, caplog):
    # The UNet's compute buffer holds the activations of the images it runs at once: one per pass, or both.
    _, two_passes = unet_compute_buffer_mib(sd1_ctx, monkeypatch, caplog, False)
    _, one_batch = unet_compute_buffer_mib(sd1_ctx, monkeypatch, caplog, True)
    assert one_batch > 1.5 * two_passes


# The core's flash-attention graph is built for a batch of one (a batch of two failed its reshape); ggml's
# direct convolution sums a 2x2 latent's product of 4 columns otherwise than the batch's 8.
@pytest.mark.parametrize("option", ["diffusion_flash_attn", "diffusion_conv_direct"])
def test_options_that_keep_two_passes(sd1_checkpoint, monkeypatch, option):
    with sdcpp_py.Context(model=sd1_checkpoint, n_threads=2, **{option: True}) as ctx:
        together = generate(ctx, monkeypatch, True, (64, 64))
        apart = generate(ctx, monkeypatch, False, (64, 64))
    np.testing.assert_array_equal(together, apart)


def test_sdxl_batch_gives_the_pixels_of_two_passes(synthetic_dir, monkeypatch, caplog):
    # SDXL adds the pooled text vector y (and its label embedding) to the batch.
    from sdcpp_py.testing import sd

    with sdcpp_py.Context(model=sd.sdxl_checkpoint(synthetic_dir / "sdxl"), n_threads=2) as ctx:
        together, one_batch = unet_compute_buffer_mib(ctx, monkeypatch, caplog, True)
        apart, two_passes = unet_compute_buffer_mib(ctx, monkeypatch, caplog, False)
    assert one_batch > 1.5 * two_passes
    assert together.std() > 1.0
    np.testing.assert_array_equal(together, apart)
