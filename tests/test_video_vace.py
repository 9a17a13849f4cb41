"""Video inputs on a synthetic Wan2.1-VACE-1.3B with a second (high-noise) expert: control frames, vace strength,
the init image as VACE reference, and the two-expert switch at ``moe_boundary``, checked against sd-cli.

Slow: the core hard-codes Wan's sizes (full 1.3B DiTs, full umt5-xxl, which encodes 512 tokens per call), so each
generation takes minutes and about 15 GiB. sd-cli runs before our Context exists, so the two never share RAM."""

import numpy as np
import pytest
from PIL import Image

from sdcpp_py.testing import video

pytestmark = pytest.mark.slow

SIZE, FRAMES, SEED = 32, 5, 3
# No fixed high_noise_steps: the core switches experts where the sigmas fall below moe_boundary.
OURS = dict(width=SIZE, height=SIZE, frames=FRAMES, steps=3, cfg_scale=1.0, high_noise_cfg_scale=1.0,
            moe_boundary=0.95, vace_strength=0.7, seed=SEED)
CLI = ["-p", "a cat", "-W", str(SIZE), "-H", str(SIZE), "--video-frames", str(FRAMES), "--steps", "3",
       "--cfg-scale", "1", "--high-noise-cfg-scale", "1", "--moe-boundary", "0.95", "--vace-strength", "0.7",
       "--high-noise-steps", "-1",  # sd-cli's default is 20 fixed high-noise steps; -1 is the core's: the boundary
       "-s", str(SEED), "--type", "q8_0", "-t", "2"]


@pytest.fixture(scope="module")
def parts(synthetic_dir) -> dict:
    return video.wan_components(synthetic_dir / "wan", variant="vace", high_noise=True)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict:
    """Random control frames and a reference image, as arrays and as PNG files at the exact size (no resize)."""
    folder = tmp_path_factory.mktemp("vace-inputs")
    rng = np.random.default_rng(11)
    frames = [rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8) for _ in range(FRAMES)]
    (folder / "control").mkdir()
    for index, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / "control" / f"{index:03d}.png")
    reference = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    Image.fromarray(reference).save(folder / "reference.png")
    return {"frames": frames, "reference": reference, "control_dir": folder / "control",
            "reference_png": folder / "reference.png"}


@pytest.fixture(scope="module")
def cli_video(run_sd_cli_video, parts, inputs, tmp_path_factory) -> np.ndarray:
    return run_sd_cli_video(tmp_path_factory.mktemp("vace-cli"), parts, *CLI,
                            "--control-video", str(inputs["control_dir"]), "-i", str(inputs["reference_png"]))


@pytest.fixture(scope="module")
def ours(wan_ctx, inputs) -> tuple[np.ndarray, list]:
    steps: list = []
    video = wan_ctx.generate_video("a cat", control_frames=inputs["frames"], init_image=inputs["reference"],
                               progress=lambda step, total, seconds: steps.append((step, total)), **OURS)
    return video, steps


def test_vace_video_matches_sd_cli(wan_ctx, ours, cli_video):
    assert wan_ctx.architecture == "Wan2.1-VACE-1.3B"
    video, _ = ours
    # The reference image adds a latent frame that the core drops again: the caller gets the frames asked for.
    assert video.shape == (FRAMES, SIZE, SIZE, 3) and video.dtype == np.uint8
    assert video.std() > 1.0
    np.testing.assert_array_equal(video, cli_video)


def test_both_experts_sample(ours):
    """High-noise steps, then the low-noise model's: the progress count starts over at the switch."""
    _, steps = ours
    restarts = sum(1 for before, after in zip(steps, steps[1:]) if after[0] < before[0])
    assert restarts == 1, steps


def test_control_frames_steer_the_video(wan_ctx, ours, inputs):
    without = wan_ctx.generate_video("a cat", init_image=inputs["reference"], **OURS)
    assert (without != ours[0]).any()  # deterministic otherwise (test_video.py), so the frames did this


def test_inputs_the_model_ignores_are_refused(wan_ctx, inputs):
    with pytest.raises(ValueError, match=r"end_image: the Wan2.1-VACE-1.3B model does not use it"):
        wan_ctx.generate_video("a cat", end_image=inputs["reference"], **OURS)
    with pytest.raises(ValueError, match=r"control_frames\[1\]"):
        wan_ctx.generate_video("a cat", control_frames=[inputs["frames"][0], np.zeros((8, 8, 3), np.uint8)], **OURS)
