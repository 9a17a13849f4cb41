"""Text-to-video with a synthetic Wan 2.1 model: the core hard-codes the sizes of all three parts, so the DiT is
the full 1.3B and the text encoder the full umt5-xxl, which encodes a fixed 512 tokens per call (minutes of CPU)."""

import numpy as np
import pytest

import sdcpp_py
from sdcpp_py.testing import video

# The smallest request that runs the whole video path: 5 frames are 2 latent frames, so the VAE's temporal
# upsampling and its causal caches are exercised; 32x32 is a 2x2 token grid per latent frame. The size barely
# matters: nearly all the time is the umt5-xxl encoding of its 512 tokens, once per call.
TINY = dict(width=32, height=32, frames=5, steps=1, cfg_scale=1.0)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wan_parts(synthetic_dir) -> dict:
    """Wan 2.1 T2V 1.3B DiT + umt5-xxl + Wan 2.1 VAE (decoder), aliased/sparse on disk."""
    return video.wan_components(synthetic_dir / "wan")


@pytest.fixture(scope="module")
def wan(wan_parts):
    # Q8_0 instead of the files' F16: umt5-xxl needs about half the CPU time, and the loaded weights take 7.3 GB
    # instead of 13.7 GB. Converting at load costs about a minute and still peaks near 13 GiB RSS.
    with sdcpp_py.Context(**wan_parts, n_threads=2, weight_type="q8_0") as ctx:
        yield ctx


@pytest.fixture(scope="module")
def first_video(wan) -> np.ndarray:
    """Text to video, no init_image."""
    return wan.generate_video("a cat", seed=1, **TINY)


def test_text_to_video_gives_uint8_frames(wan, first_video):
    assert wan.vae_decode_only, "text-to-video needs no VAE encoder"
    assert isinstance(first_video, np.ndarray)
    assert first_video.shape == (TINY["frames"], TINY["height"], TINY["width"], 3)
    assert first_video.dtype == np.uint8
    assert first_video.std() > 1.0, "constant frames mean the pipeline produced nothing"


def test_same_seed_gives_identical_frames(wan, first_video):
    again = wan.generate_video("a cat", seed=1, **TINY)
    np.testing.assert_array_equal(again, first_video)


def test_video_inputs_the_t2v_model_ignores_are_refused(wan):
    frame = np.zeros((TINY["height"], TINY["width"], 3), np.uint8)
    for name, value in (("init_image", frame), ("end_image", frame), ("control_frames", [frame])):
        with pytest.raises(ValueError, match=f"{name}: the Wan2.1-T2V-1.3B model does not use it"):
            wan.generate_video("a cat", **{name: value}, **TINY)
