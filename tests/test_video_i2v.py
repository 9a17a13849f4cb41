"""Image-to-video on a synthetic Wan2.1-I2V-1.3B (first and last frame, CLIP-vision-H features), checked against
sd-cli. Slow for the same reasons as test_video_vace.py."""

import numpy as np
import pytest
from PIL import Image

from sdcpp_py.testing import video

pytestmark = pytest.mark.slow

SIZE, FRAMES, SEED = 32, 5, 5
OURS = dict(frames=FRAMES, steps=2, cfg_scale=1.0, seed=SEED)
CLI = ["-p", "a cat", "-W", str(SIZE), "-H", str(SIZE), "--video-frames", str(FRAMES), "--steps", "2",
       "--cfg-scale", "1", "-s", str(SEED), "--type", "q8_0", "-t", "2"]


@pytest.fixture(scope="module")
def parts(synthetic_dir) -> dict:
    return video.wan_components(synthetic_dir / "wan", variant="i2v")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("i2v-inputs")
    rng = np.random.default_rng(12)
    first, last = (rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8) for _ in range(2))
    Image.fromarray(first).save(folder / "first.png")
    Image.fromarray(last).save(folder / "last.png")
    return {"first": first, "last": last, "first_png": folder / "first.png", "last_png": folder / "last.png"}


@pytest.fixture(scope="module")
def cli_video(run_sd_cli_video, parts, images, tmp_path_factory) -> np.ndarray:
    return run_sd_cli_video(tmp_path_factory.mktemp("i2v-cli"), parts, *CLI,
                            "-i", str(images["first_png"]), "--end-img", str(images["last_png"]))


@pytest.fixture(scope="module")
def first_and_last(wan_ctx, images) -> np.ndarray:
    # Size from the init image (no width/height given), as img2img does.
    return wan_ctx.generate_video("a cat", init_image=images["first"], end_image=images["last"], **OURS)


def test_first_last_frame_video_matches_sd_cli(wan_ctx, first_and_last, cli_video):
    assert wan_ctx.architecture == "Wan2.1-I2V-1.3B"
    assert first_and_last.shape == (FRAMES, SIZE, SIZE, 3) and first_and_last.dtype == np.uint8
    assert first_and_last.std() > 1.0
    np.testing.assert_array_equal(first_and_last, cli_video)


def test_end_image_changes_the_video(wan_ctx, images, first_and_last):
    first_only = wan_ctx.generate_video("a cat", init_image=images["first"], **OURS)
    assert first_only.shape == first_and_last.shape
    # Same seed, same everything else, and generation is deterministic (test_video.py): any pixel that moves
    # was moved by the end image. Random weights of std 0.02 make the move small (mean 0.03 levels here).
    assert (first_only != first_and_last).any()


def test_control_frames_are_refused(wan_ctx, images):
    with pytest.raises(ValueError, match=r"control_frames: the Wan2.1-I2V-1.3B model does not use it"):
        wan_ctx.generate_video("a cat", init_image=images["first"], control_frames=[images["last"]], **OURS)
