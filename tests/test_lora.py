"""LoRA layouts that the core applied merged but not at run time (patch 0027): at run time (the default
``lora_apply_mode``) the same LoRA must change the picture as merging it does."""

from __future__ import annotations

import numpy as np

import sdcpp_py
from sdcpp_py import _formats


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = max(float(np.mean((a.astype(np.float64) - b) ** 2)), 1e-12)
    return 10 * np.log10(255**2 / mse)


def merged_and_at_run_time(parts: dict, lora, **call) -> dict:
    images = {}
    for mode in ("immediately", "at_runtime"):
        with sdcpp_py.Context(**parts, n_threads=2, lora_apply_mode=mode) as ctx:
            if mode == "at_runtime":
                images["plain"] = ctx.txt2img("a cube", **call)[0]
            images[mode] = ctx.txt2img("a cube", loras=[lora], **call)[0]
    return images


def test_a_flux_lora_of_q_k_v_without_proj_mlp_applies_at_run_time(flux_parts, tmp_path):
    # diffusers' attention-only Flux LoRAs: the core maps a single block's to_q/to_k/to_v to the first three
    # parts of linear1, whose fourth (proj_mlp) the LoRA lacks. Merging pads the difference with zeros; at run
    # time the three parts' output, narrower than linear1's, failed a check inside the core.
    rng = np.random.default_rng(0)
    tensors = {}
    for part in ("to_q", "to_k", "to_v"):
        block = f"transformer.single_transformer_blocks.0.attn.{part}"
        tensors[f"{block}.lora_A.weight"] = (rng.standard_normal((4, 128)) * 0.5).astype(np.float16)
        tensors[f"{block}.lora_B.weight"] = (rng.standard_normal((128, 4)) * 0.5).astype(np.float16)
    lora = _formats.write_safetensors(tmp_path / "attention-only.safetensors", tensors)
    images = merged_and_at_run_time(flux_parts, lora, width=64, height=64, steps=2, seed=3)
    assert np.abs(images["at_runtime"].astype(int) - images["plain"]).mean() > 2.0  # the LoRA shows
    assert psnr(images["immediately"], images["at_runtime"]) > 30  # as merged, rounding aside


def test_a_tucker_locon_is_the_convolution_it_was_trained_as(sd1_checkpoint, tmp_path):
    # A LyCORIS LoCon with a middle kernel (1x1 down, 3x3 middle, 1x1 up, run in that order) on the UNet's
    # stride-2 downsampler equals the LoCon whose 3x3 down kernel is the middle kernel applied to the 1x1 one.
    # At run time the core gave the stride to the 1x1 down projection (its output a row short of the layer's:
    # a failed check inside the core); merging contracted the middle kernel's ranks the other way round.
    rng = np.random.default_rng(1)
    layer = "diffusion_model.input_blocks.3.0.op"
    down = rng.standard_normal((4, 320)) * 0.5
    middle = rng.standard_normal((4, 4, 3, 3)) * 0.5
    up = rng.standard_normal((320, 4, 1, 1)) * 0.5
    common = {f"{layer}.lora_up.weight": up.astype(np.float16), f"{layer}.alpha": np.array(4.0, np.float32)}
    tucker = _formats.write_safetensors(tmp_path / "tucker.safetensors", {
        **common, f"{layer}.lora_down.weight": down[:, :, None, None].astype(np.float16),
        f"{layer}.lora_mid.weight": middle.astype(np.float16)})
    composed = _formats.write_safetensors(tmp_path / "composed.safetensors", {
        **common, f"{layer}.lora_down.weight": np.einsum("rjkl,ji->rikl", middle, down).astype(np.float16)})
    call = dict(width=64, height=64, steps=1, cfg_scale=1.0, seed=1)
    images = {}
    for mode in ("at_runtime", "immediately"):
        with sdcpp_py.Context(model=sd1_checkpoint, n_threads=2, lora_apply_mode=mode) as ctx:
            images["plain", mode] = ctx.txt2img("a cube", **call)[0]
            for name, lora in (("tucker", tucker), ("composed", composed)):
                images[name, mode] = ctx.txt2img("a cube", loras=[lora], **call)[0]
    reference = images["composed", "at_runtime"]
    assert np.abs(reference.astype(int) - images["plain", "at_runtime"]).mean() > 1.0  # the LoRA shows
    for key in (("tucker", "at_runtime"), ("tucker", "immediately"), ("composed", "immediately")):
        assert psnr(images[key], reference) > 40, key  # f16 rounding of the kernels aside
