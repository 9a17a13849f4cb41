"""TAESD as a model's only VAE (sd-cli ``--taesd`` without ``--vae``): it decodes and encodes, with the pixels
of the vendored sd-cli."""

import numpy as np
import pytest
from PIL import Image

import sdcpp_py
from sdcpp_py.testing import extras

PROMPT = "a red cube"
BASE = {"width": 64, "height": 64, "cfg_scale": 1.0, "seed": 42}
CLI_BASE = ["-p", PROMPT, "-W", "64", "-H", "64", "--cfg-scale", "1.0", "-s", "42", "-t", "2"]


@pytest.fixture(scope="module")
def parts(flux_parts, synthetic_dir) -> dict:
    """The tiny Flux.1 DiT and CLIP-L, with a 16-channel TAESD (TAEF1 shapes) instead of the KL VAE."""
    taesd = extras.taesd(synthetic_dir / "taesd", latent_channels=16)
    return {"diffusion_model": flux_parts["diffusion_model"], "clip_l": flux_parts["clip_l"], "taesd": taesd}


def gradient(flip: bool = False) -> np.ndarray:
    y, x = np.mgrid[0:64, 0:64] / 64
    image = np.stack([x, y, 1 - x * y], axis=-1) * 220
    return (image[::-1, ::-1] if flip else image).astype(np.uint8)


def test_synthetic_taesd_files_are_recognised(synthetic_dir):
    for channels in (4, 16, 32):
        for encoder in (True, False):
            path = extras.taesd(synthetic_dir / "taesd", latent_channels=channels, encoder=encoder)
            info = sdcpp_py.inspect(path)
            assert (info.role, info.architecture) == ("taesd", "TAESD"), (channels, encoder)
            assert info.format == "safetensors" and info.parameter_count > 1_000_000
    with pytest.raises(ValueError, match="latent_channels"):
        extras.taesd(synthetic_dir / "taesd", latent_channels=8)


def test_flux_generates_with_taesd_as_its_only_vae(ctx):
    assert "vae" not in ctx.components and not ctx.vae_decode_only  # the TAE file carries its encoder
    image = ctx.txt2img(PROMPT, steps=2, **BASE)[0]
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    assert image.std() > 10  # noise, not a constant
    assert 0.01 < (image > 127).mean() < 0.99  # and not saturated (the builder centres it on mid-grey)


def test_txt2img_matches_sd_cli(ctx, parts, run_sd_cli, tmp_path):
    ours = ctx.txt2img(PROMPT, steps=2, **BASE)[0]
    theirs = run_sd_cli(tmp_path / "out.png", parts, *CLI_BASE, "--steps", "2")
    np.testing.assert_array_equal(ours, theirs)


def test_img2img_encodes_through_taesd_and_matches_sd_cli(ctx, parts, run_sd_cli, tmp_path):
    # tae.hpp builds TinyEncoder whenever the context is not decode-only. Four steps: at two, strength 0.5
    # leaves one step, and the tiny DiT's last step drowns the init image.
    init = gradient()
    ours = ctx.img2img(PROMPT, init, strength=0.5, steps=4, **BASE)[0]
    Image.fromarray(init).save(tmp_path / "init.png")
    theirs = run_sd_cli(tmp_path / "out.png", parts, *CLI_BASE, "--steps", "4",
                        "-i", str(tmp_path / "init.png"), "--strength", "0.5")
    np.testing.assert_array_equal(ours, theirs)
    other = ctx.img2img(PROMPT, gradient(flip=True), strength=0.5, steps=4, **BASE)[0]
    plain = ctx.txt2img(PROMPT, steps=4, **BASE)[0]
    assert np.abs(ours.astype(int) - other).mean() > 1  # the init image goes through the encoder
    assert np.abs(ours.astype(int) - plain).mean() > 1


def test_a_decoder_only_taesd_with_vae_decode_only(ctx, parts, synthetic_dir):
    decoder = extras.taesd(synthetic_dir / "taesd", latent_channels=16, encoder=False)
    with sdcpp_py.Context(**{**parts, "taesd": decoder}, n_threads=2, vae_decode_only=True) as context:
        image = context.txt2img(PROMPT, steps=2, **BASE)[0]
        with pytest.raises(ValueError, match="VAE encoder"):
            context.img2img(PROMPT, gradient(), strength=0.5, steps=2, **BASE)
    # Same seed, decoder drawn first: the same decoder, so the same picture.
    np.testing.assert_array_equal(image, ctx.txt2img(PROMPT, steps=2, **BASE)[0])


def test_a_decoder_only_taesd_as_the_only_vae_loads_without_asking(flux_parts, tmp_path):
    # With no vae=, whether to load an encoder is read from the TAESD file itself.
    decoder_only = extras.taesd(tmp_path, encoder=False)
    with sdcpp_py.Context(diffusion_model=flux_parts["diffusion_model"], clip_l=flux_parts["clip_l"],
                          taesd=decoder_only, n_threads=2) as ctx:
        assert ctx.vae_decode_only
        assert ctx.txt2img("a red cube", width=64, height=64, steps=1, cfg_scale=1.0)[0].shape == (64, 64, 3)
