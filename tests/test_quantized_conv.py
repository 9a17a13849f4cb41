"""Quantized convolution kernels (patch 0015): with weight_type="q8_0" (or a tensor_type_rules rule) a diffusion
model's square conv kernels are held as q8_0 (KW*KH*IC, OC) matrices instead of staying f16, so the UNet takes
about half the memory of f16. On the CPU our fused convolution and packed product dequantize q8_0 weights as
they pack them (activations stay f32); elsewhere the core multiplies by the flattened kernel through im2col.

Each path is checked against numpy with the kernel's q8_0 values (the loader's quantization, round-tripped by
a hook); the SD1 model against its f16 self (memory, pixels) and against sd-cli built from the same sources.
"""

import json
import logging
import re
import subprocess
import sys

import numpy as np
import pytest
from native_hooks import hooks
from test_cpu_bf16 import BF16, bf16, needs_bf16, relative_error
from test_cpu_matmul import conv_reference

import sdcpp_py

_test_hooks = hooks()


def q8_0_values(kernel_f16: np.ndarray) -> np.ndarray:
    """The values the loader's q8_0 copy of an (OC, IC, KH, KW) f16 kernel holds, as float32."""
    oc = kernel_f16.shape[0]
    rows = kernel_f16.astype(np.float32).reshape(oc, -1)
    return _test_hooks._q8_0_round_trip(rows).reshape(kernel_f16.shape)


CONV_CASES = [
    # n, ic, oc, size, kernel_size, stride, padding
    (1, 32, 64, 9, 3, 1, 1),      # 288 values per output channel: 9 blocks
    (2, 64, 40, 12, 3, 2, 1),     # a downsampler, batch 2
    (1, 64, 24, 7, 1, 1, 0),      # a 1x1 projection: two blocks
    (1, 320, 96, 8, 3, 1, 1),     # SD1's widths at a small size
]


@pytest.mark.parametrize("n, ic, oc, size, kernel_size, stride, padding", CONV_CASES)
def test_fused_convolution_with_a_q8_0_kernel_matches_numpy(n, ic, oc, size, kernel_size, stride, padding,
                                                            monkeypatch):
    # The direct node (3x3 stride-1 cases of 16+ tiles run as Winograd otherwise: test_cpu_winograd.py).
    monkeypatch.setenv("SDCPP_PY_CPU_CONV", "direct")
    rng = np.random.default_rng(ic + oc)
    kernel = rng.standard_normal((oc, ic, kernel_size, kernel_size)).astype(np.float16)
    image = rng.standard_normal((n, ic, size, size)).astype(np.float32)
    bias = rng.standard_normal(oc).astype(np.float32)
    values = q8_0_values(kernel)
    assert not np.array_equal(values, kernel.astype(np.float32)), "the kernel was not quantized"
    # f32 image values meet the dequantized kernel: only the f32 summation order differs.
    expected = conv_reference(values, image, stride, padding) + bias[None, :, None, None]
    for threads in (1, 2):
        out, ops, _ = _test_hooks._core_conv_2d(kernel.view(np.uint16), image, stride, padding, 1, threads,
                                                bias=bias, q8_0=True)
        assert any("CUSTOM" in op for op in ops) and not any("IM2COL" in op for op in ops), ops
        assert relative_error(out, expected) < 1e-5, threads


@pytest.mark.parametrize("n, ic, oc, size, kernel_size, stride, padding", CONV_CASES[:3])
def test_other_backends_multiply_by_the_flattened_q8_0_kernel(n, ic, oc, size, kernel_size, stride, padding):
    # The graph other backends run (im2col in f32, then the product with the q8_0 matrix), here on the CPU,
    # where that product is our packed kernel's (f32 image values against the kernel's q8_0 values).
    rng = np.random.default_rng(ic * oc)
    kernel = rng.standard_normal((oc, ic, kernel_size, kernel_size)).astype(np.float16)
    image = rng.standard_normal((n, ic, size, size)).astype(np.float32)
    expected = conv_reference(q8_0_values(kernel), image, stride, padding)
    out, ops, _ = _test_hooks._core_conv_2d(kernel.view(np.uint16), image, stride, padding, 1, 2,
                                            on_cpu_backend=False, q8_0=True)
    assert "IM2COL" in ops and "MUL_MAT" in ops and not any("CUSTOM" in op for op in ops), ops
    assert out.shape == expected.shape
    assert relative_error(out, expected) < 1e-5  # f32 sums in another order (ggml's q8_0 product: ~1e-2)


def test_a_few_output_channels_take_ggmls_own_q8_0_product():
    # 4 output channels: too few for the fused node and the packed kernel; ggml's q8_0 product rounds the
    # image columns to q8_0 too, so the result is close to, not at, the reference.
    rng = np.random.default_rng(8)
    kernel = rng.standard_normal((4, 64, 3, 3)).astype(np.float16)
    image = rng.standard_normal((1, 64, 9, 9)).astype(np.float32)
    expected = conv_reference(q8_0_values(kernel), image, 1, 1)
    for on_cpu_backend in (True, False):
        out, ops, _ = _test_hooks._core_conv_2d(kernel.view(np.uint16), image, 1, 1, 1, 2,
                                                on_cpu_backend=on_cpu_backend, q8_0=True)
        assert "IM2COL" in ops and "MUL_MAT" in ops, ops
        assert 1e-5 < relative_error(out, expected) < 3e-2


@needs_bf16
def test_bf16_convolution_with_a_q8_0_kernel_rounds_both_operands(monkeypatch):
    monkeypatch.setenv("SDCPP_PY_CPU_CONV", "direct")  # the direct node's operands (25 tiles take Winograd)
    rng = np.random.default_rng(5)
    kernel = rng.standard_normal((48, 64, 3, 3)).astype(np.float16)
    image = rng.standard_normal((1, 64, 10, 10)).astype(np.float32)
    values = q8_0_values(kernel)
    expected = conv_reference(bf16(values), bf16(image), 1, 1)
    out, _, _ = _test_hooks._core_conv_2d(kernel.view(np.uint16), image, 1, 1, 1, 2, q8_0=True, bf16=True)
    assert relative_error(out, expected) < 2e-6
    assert relative_error(out, conv_reference(values, image, 1, 1)) > 1e-4


@pytest.mark.parametrize("m, n, k", [(16, 6, 32), (40, 77, 320), (320, 300, 640)])
@pytest.mark.parametrize("use_bf16", [False, True])
def test_q8_0_linear_weights_meet_f32_activations(m, n, k, use_bf16):
    if use_bf16 and not BF16:
        pytest.skip("no bf16 products here")
    rng = np.random.default_rng(m + n + k)
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((n, k)).astype(np.float32)
    values = _test_hooks._q8_0_round_trip(a)
    if use_bf16:
        expected = bf16(b).astype(np.float64) @ bf16(values).astype(np.float64).T
    else:
        expected = b.astype(np.float64) @ values.astype(np.float64).T
    result = _test_hooks._cpu_mul_mat(a, b, 2, bf16=use_bf16, q8_0_a=True)
    # Our packed kernel reads the weights' q8_0 values and the activations as they are (ggml's own q8_0
    # product, which rounds the activations to q8_0 too, is ~1e-2 away).
    assert relative_error(result, expected) < 2e-6


class _ParamsLog(logging.Handler):
    """The core's 'total params memory size' line: the diffusion model's MB."""

    def __init__(self):
        super().__init__()
        self.diffusion_mb = []

    def emit(self, record):
        found = re.search(r"diffusion_model ([0-9.]+)MB", record.getMessage())
        if found:
            self.diffusion_mb.append(float(found.group(1)))


SD1_ARGS = dict(width=64, height=64, steps=2, cfg_scale=7.0, seed=3)


@pytest.fixture(scope="module")
def sd1_images(sd1_checkpoint):
    """weight_type -> (image, diffusion model MB) for the SD1 checkpoint."""
    logger = logging.getLogger("sdcpp_py")
    handler, level = _ParamsLog(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        results = {}
        for weight_type in ("f16", "q8_0"):
            with sdcpp_py.Context(model=sd1_checkpoint, n_threads=2, weight_type=weight_type) as ctx:
                image = ctx.txt2img("a red cube", negative_prompt="blurry", **SD1_ARGS)[0]
            results[weight_type] = (image, handler.diffusion_mb[-1])
        return results
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def test_a_q8_0_unet_takes_about_half_the_memory_of_f16(sd1_images):
    # conv_in (4 channels in) and out.2 (4 out) stay f16, as upstream keeps a model's first and last layers.
    f16_mb, q8_mb = sd1_images["f16"][1], sd1_images["q8_0"][1]
    # q8_0 is 8.5 bits a value: 0.53 of f16 when every weight is quantized; 0.85 when the kernels stayed f16.
    assert q8_mb < 0.6 * f16_mb, (q8_mb, f16_mb)


def test_a_q8_0_unet_draws_nearly_the_f16_picture(sd1_images):
    full, quantized = sd1_images["f16"][0], sd1_images["q8_0"][0]
    assert quantized.shape == full.shape and quantized.std() > 1.0
    mse = np.mean((full.astype(np.float64) - quantized.astype(np.float64)) ** 2)
    assert 0 < mse and 10 * np.log10(255**2 / mse) > 30


def test_a_q8_0_unet_gives_sd_clis_pixels(sd1_images, sd1_checkpoint, run_sd_cli, tmp_path):
    expected = run_sd_cli(tmp_path / "cli.png", {"model": sd1_checkpoint}, "-p", "a red cube", "-n", "blurry",
                          "-W", "64", "-H", "64", "--steps", "2", "--cfg-scale", "7.0", "-s", "3", "-t", "2",
                          "--type", "q8_0")
    np.testing.assert_array_equal(sd1_images["q8_0"][0], expected)


LORA_CHILD = r"""
import json, sys
from pathlib import Path
import numpy as np
import sdcpp_py
from sdcpp_py.testing import extras, flux1, sd
from sdcpp_py.testing.extras import write_safetensors

synthetic, tmp = Path(sys.argv[1]), Path(sys.argv[2])
flux = flux1.flux_components(synthetic / "flux")
flux_lora = extras.flux_lora(flux["diffusion_model"], tmp / "flux-lora.safetensors")
sd1 = {"model": sd.sd1_checkpoint(synthetic / "sd1")}
rng = np.random.default_rng(0)
tensors = {}  # a LoRA of three of the UNet's convolutions (3x3, 1x1): their kernels are q8_0 matrices
for layer, k in (("input_blocks.1.0.in_layers.2", 3), ("input_blocks.1.1.proj_in", 1)):
    down, up = rng.standard_normal((4, 320, k, k)) * 0.5, rng.standard_normal((320, 4, 1, 1)) * 0.5
    tensors[f"diffusion_model.{layer}.lora_down.weight"] = down.astype(np.float16)
    tensors[f"diffusion_model.{layer}.lora_up.weight"] = up.astype(np.float16)
    tensors[f"diffusion_model.{layer}.alpha"] = np.array(4.0, np.float32)
# A whole difference (".diff"): at runtime it is added to the kernel cast to f32, a flattened f32 kernel then.
diff = rng.standard_normal((320, 320, 3, 3)) * 0.2
tensors["diffusion_model.input_blocks.2.0.in_layers.2.diff"] = diff.astype(np.float16)
sd1_lora = write_safetensors(tmp / "sd1-lora.safetensors", tensors)
results = {}
for name, parts, lora, cfg in (("flux", flux, flux_lora, 1.0), ("sd1", sd1, sd1_lora, 7.0)):
    images = {}
    for mode in ("immediately", "at_runtime"):
        with sdcpp_py.Context(**parts, n_threads=2, weight_type="q8_0", lora_apply_mode=mode) as ctx:
            args = dict(width=64, height=64, steps=2, cfg_scale=cfg, seed=1)
            if mode == "at_runtime":
                images["plain"] = ctx.txt2img("a cube", **args)[0]
            images[mode] = ctx.txt2img("a cube", loras=[lora], **args)[0]
    f = {k: v.astype(np.float64) for k, v in images.items()}
    mse = max(np.mean((f["immediately"] - f["at_runtime"]) ** 2), 1e-12)
    results[name] = {"effect": float(np.abs(f["immediately"] - f["plain"]).mean()),
                     "psnr": float(10 * np.log10(255**2 / mse))}
print(json.dumps(results))
"""


def test_a_lora_merges_into_quantized_weights(synthetic_dir, sd1_checkpoint, flux_parts, tmp_path):
    # lora_apply_mode="immediately" on a q8_0 model: the merge used to abort the process (patch 0016), and so
    # did a difference added at runtime to a flattened kernel; a child runs them. Merged or applied at
    # runtime, the LoRA changes the picture the same way.
    result = subprocess.run([sys.executable, "-c", LORA_CHILD, str(synthetic_dir), str(tmp_path)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    for name, figures in json.loads(result.stdout.strip().splitlines()[-1]).items():
        assert figures["effect"] > 2.0, (name, figures)  # the LoRA shows
        assert figures["psnr"] > 30, (name, figures)     # merged ~ at runtime (only rounding differs)
