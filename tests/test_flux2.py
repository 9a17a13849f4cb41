"""Flux.2 klein with synthetic parts: a tiny Flux.2 DiT, a tiny Qwen3 text encoder (llm=) and the Flux.2 VAE.
txt2img and reference-image editing, with pixel parity against the vendored sd-cli."""

import numpy as np
import pytest
from PIL import Image

import sdcpp_py
from sdcpp_py.testing import flux2

PROMPT = "a cat"
SEED = 1
STEPS = 2
# Each prompt costs ~1 s (the core pads klein prompts to 512 tokens); encoding the reference with the full-width
# VAE encoder costs ~5 s at 64x64.
BASE = dict(width=64, height=64, steps=STEPS, cfg_scale=1.0, seed=SEED)
CLI_BASE = ["-p", PROMPT, "-W", "64", "-H", "64", "--cfg-scale", "1", "-s", str(SEED), "--steps", str(STEPS)]


@pytest.fixture(scope="module")
def parts(synthetic_dir) -> dict:
    """Tiny Flux.2 DiT + one-layer Qwen3 + Flux.2 VAE with its encoder (reference images are encoded)."""
    return flux2.flux2_components(synthetic_dir / "flux2")


@pytest.fixture(scope="module")
def ref() -> np.ndarray:
    return (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def plain(ctx) -> np.ndarray:
    return ctx.txt2img(PROMPT, **BASE)[0]


@pytest.fixture(scope="module")
def edited(ctx, ref) -> np.ndarray:
    return ctx.edit(PROMPT, [ref], **BASE)[0]


def test_txt2img_gives_an_image_and_is_deterministic(ctx, plain):
    assert not ctx.vae_decode_only, "the VAE encoder is in the file, so the Context loads it"
    assert plain.shape == (64, 64, 3)
    assert plain.dtype == np.uint8
    assert plain.std() > 1.0, "a constant image means the pipeline produced nothing"
    np.testing.assert_array_equal(ctx.txt2img(PROMPT, **BASE)[0], plain)


def test_the_reference_image_changes_the_result(plain, edited):
    assert edited.shape == (64, 64, 3)
    assert edited.dtype == np.uint8
    assert edited.std() > 1.0
    assert np.abs(edited.astype(int) - plain.astype(int)).mean() > 0.5, "the reference image changed nothing"


def test_txt2img_matches_sd_cli(parts, plain, run_sd_cli, tmp_path):
    theirs = run_sd_cli(tmp_path / "out.png", parts, *CLI_BASE)
    np.testing.assert_array_equal(plain, theirs)


def test_edit_matches_sd_cli(parts, edited, ref, run_sd_cli, tmp_path):
    Image.fromarray(ref).save(tmp_path / "ref.png")
    theirs = run_sd_cli(tmp_path / "out.png", parts, *CLI_BASE, "-r", str(tmp_path / "ref.png"))
    np.testing.assert_array_equal(edited, theirs)


def test_flux2_parts_are_recognised_and_refused_in_the_wrong_slot(parts):
    expected = {"diffusion_model": ("diffusion_model", "Flux.2"), "llm": ("llm", "Qwen3"),
                "vae": ("vae", "Flux.2 VAE")}
    for name, path in parts.items():
        info = sdcpp_py.inspect(path)
        assert (info.role, info.architecture) == expected[name], name
    with pytest.raises(ValueError, match="t5xxl: this file looks like a Qwen3 llm component; pass it as llm="):
        sdcpp_py.Context(**{**parts, "t5xxl": parts["llm"]})
