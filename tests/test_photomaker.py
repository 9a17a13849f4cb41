"""PhotoMaker v1 (the core's stacked id embedding, SDXL only) on a synthetic full-size SDXL checkpoint.

Each SDXL context holds ~7 GB and each PhotoMaker call takes about a minute on 2 cores, so the module
makes three images in all: sd-cli's and ours with id images, ours without.  The fixtures run the
plain context and sd-cli before the PhotoMaker context exists, so no two models are in memory at once.
"""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import sdcpp_py
from sdcpp_py.testing import extras, sd

pytestmark = pytest.mark.slow

PROMPT = "a photo of a man img, smiling"
ARGS = dict(width=64, height=64, steps=2, cfg_scale=1.0, seed=5)
CLI_ARGS = ["-p", PROMPT, "-W", "64", "-H", "64", "--steps", "2", "--cfg-scale", "1.0", "-s", "5", "-t", "2"]


@pytest.fixture(scope="module")
def sdxl(synthetic_dir) -> dict:
    folder = synthetic_dir / "sdxl"
    return {"model": sd.sdxl_checkpoint(folder), "photo_maker": extras.photomaker_v1(folder)}


@pytest.fixture(scope="module")
def id_dir(tmp_path_factory) -> Path:
    """Two id images of different, odd sizes (the core resizes both to 224 itself; sd-cli keeps sizes)."""
    folder = tmp_path_factory.mktemp("ids")
    rng = np.random.default_rng(7)
    for i, (h, w) in enumerate([(96, 80), (70, 90)]):
        yy, xx = np.mgrid[0:h, 0:w]
        pixels = np.stack([xx * 255 // w, yy * 255 // h, rng.integers(0, 256, (h, w))], axis=-1)
        Image.fromarray(pixels.astype(np.uint8)).save(folder / f"id{i}.png")
    return folder


def id_images(folder: Path) -> list:
    return [np.asarray(Image.open(path).convert("RGB")) for path in sorted(folder.glob("*.png"))]


@pytest.fixture(scope="module")
def plain_image(sdxl) -> np.ndarray:
    with sdcpp_py.Context(model=sdxl["model"], n_threads=2) as ctx:
        return ctx.txt2img(PROMPT, **ARGS)[0]


@pytest.fixture(scope="module")
def cli_image(run_sd_cli, sdxl, id_dir, tmp_path_factory) -> np.ndarray:
    out = tmp_path_factory.mktemp("cli") / "cli.png"
    return run_sd_cli(out, {"model": sdxl["model"]}, "--photo-maker", str(sdxl["photo_maker"]),
                      "--pm-id-images-dir", str(id_dir), *CLI_ARGS)


@pytest.fixture(scope="module")
def pm_ctx(sdxl, plain_image, cli_image):
    with sdcpp_py.Context(model=sdxl["model"], photo_maker=sdxl["photo_maker"], n_threads=2) as ctx:
        yield ctx


@pytest.fixture(scope="module")
def pm_image(pm_ctx, id_dir) -> np.ndarray:
    return pm_ctx.txt2img(PROMPT, photo_maker=sdcpp_py.PhotoMaker(id_images=id_images(id_dir)), **ARGS)[0]


def test_photo_maker_matches_sd_cli(pm_image, cli_image):
    assert pm_image.shape == (64, 64, 3) and pm_image.std() > 1.0
    np.testing.assert_array_equal(pm_image, cli_image)


def test_id_images_change_the_image(pm_image, plain_image):
    changed = np.any(pm_image != plain_image, axis=-1).mean()
    assert changed > 0.5, f"only {changed:.0%} of the pixels changed"


@pytest.mark.parametrize("prompt, why", [
    ("a photo of a man, smiling", "lacks the trigger word 'img'"),
    ("a photo of a man imgs", "lacks the trigger word 'img'"),
    ("img of a man", "no class word before it"),
    ("a photo of a (man:1.2) img", "no class word before it"),
    ("a man img and a woman img", "2 times"),
])
def test_prompt_the_core_would_abort_on_is_refused(pm_ctx, pm_image, id_dir, prompt, why):
    # Without the check the core aborts the interpreter (GGML_ASSERT in remove_trigger_from_prompt, or
    # an index before the token list); reaching the asserts below proves the process survived.
    with pytest.raises(ValueError, match=rf"photo_maker: .*{why}") as error:
        pm_ctx.txt2img(prompt, photo_maker=sdcpp_py.PhotoMaker(id_images=id_images(id_dir)), **ARGS)
    assert repr(prompt) in str(error.value)
    assert pm_image.std() > 1.0  # the fixture's earlier image is intact


def test_trigger_word_is_a_clip_word():
    from sdcpp_py._options import photo_maker_prompt_problem

    for prompt in ("a man img", "a man IMG", "a man img_2", "(a man img:1.2)", "a man img BREAK a hat", "a man \\(img"):
        assert photo_maker_prompt_problem(prompt) is None, prompt
    for prompt in ("a man imgs", "a man BREAK img", "a man (img)", "a man img img", ""):
        assert photo_maker_prompt_problem(prompt) is not None, prompt


def test_photo_maker_context_refuses_a_call_without_id_images(pm_ctx, pm_image, id_dir):
    # The core plans the id-conditioned steps before it sees there are none, then aborts on them.
    with pytest.raises(ValueError, match="every call needs photo_maker="):
        pm_ctx.txt2img(PROMPT, **ARGS)
    with pytest.raises(ValueError, match="photo_maker.id_images is empty"):
        pm_ctx.txt2img(PROMPT, photo_maker=sdcpp_py.PhotoMaker(id_images=[]), **ARGS)
    # (photo_maker= on a Context without a PhotoMaker model: test_surface.py)


def test_style_strength_applies_to_its_own_call(pm_ctx, pm_image, id_dir):
    """Needs patches/0003: the pinned core planned the merge step from the previous call's strength. At 100 the
    id never merges within the 2 steps (start step 2), at the default 20 it merges from step 0."""
    ids = id_images(id_dir)
    default = pm_ctx.txt2img(PROMPT, photo_maker=sdcpp_py.PhotoMaker(id_images=ids), **ARGS)[0]
    np.testing.assert_array_equal(default, pm_image)  # 20 again: same as the first call
    late = pm_ctx.txt2img(PROMPT, photo_maker=sdcpp_py.PhotoMaker(id_images=ids, style_strength=100.0), **ARGS)[0]
    assert (late != default).any(), "style_strength=100 gave the image of the previous call's 20"
