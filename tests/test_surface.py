"""The generation surface beyond txt2img: img2img, inpainting, reference images, hires fix, caches, LoRAs,
the upscaler, Canny and conversion; pixel parity with the vendored sd-cli wherever it has the feature."""

import numpy as np
import pytest
from PIL import Image

import sdcpp_py
from sdcpp_py.testing import extras, flux1

PROMPT = "a red cube"
BASE = dict(width=64, height=64, cfg_scale=1.0, seed=5)
CLI_BASE = ["-p", PROMPT, "-W", "64", "-H", "64", "--cfg-scale", "1", "-s", "5"]


@pytest.fixture(scope="module")
def parts(synthetic_dir):
    """Tiny Flux.1 parts whose VAE has its encoder (img2img and friends encode images)."""
    return flux1.flux_components(synthetic_dir / "flux", vae_encoder=True)


def picture(seed: int, size: int = 64) -> np.ndarray:
    """A smooth colour gradient plus noise: content a VAE can encode."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    base = np.stack([x, y, 1 - x * y], axis=-1) * 200
    return np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)


def save(array: np.ndarray, path) -> str:
    Image.fromarray(array).save(path)
    return str(path)


def test_img2img_matches_sd_cli(ctx, parts, run_sd_cli, tmp_path):
    init = picture(1)
    ours = ctx.img2img(PROMPT, init, strength=0.6, steps=8, **BASE)[0]
    theirs = run_sd_cli(tmp_path / "out.png", parts, *CLI_BASE, "--steps", "8",
                        "-i", save(init, tmp_path / "init.png"), "--strength", "0.6")
    np.testing.assert_array_equal(ours, theirs)


def test_the_init_image_steers_the_result(ctx):
    # Enough steps and a low enough strength for the init image to matter.
    first = ctx.img2img(PROMPT, picture(1), strength=0.5, steps=10, **BASE)[0]
    second = ctx.img2img(PROMPT, picture(2), strength=0.5, steps=10, **BASE)[0]
    plain = ctx.txt2img(PROMPT, steps=10, **BASE)[0]
    assert np.abs(first.astype(int) - second.astype(int)).mean() > 2
    assert np.abs(first.astype(int) - plain.astype(int)).mean() > 2


def test_image_inputs_accept_numpy_pil_and_paths(ctx, tmp_path):
    init = picture(3)
    path = save(init, tmp_path / "init.png")
    results = [ctx.img2img(PROMPT, source, strength=0.6, steps=4, **BASE)[0]
               for source in (init, Image.open(path), path, init[:, :, ::-1][:, :, ::-1].copy())]
    for result in results[1:]:
        np.testing.assert_array_equal(result, results[0])


def test_inpaint_matches_sd_cli(ctx, parts, run_sd_cli, tmp_path):
    init = picture(4)
    mask = np.zeros((64, 64), np.uint8)
    mask[:, 32:] = 255
    ours = ctx.inpaint(PROMPT, init, mask, strength=0.8, steps=6, **BASE)[0]
    theirs = run_sd_cli(tmp_path / "out.png", parts, *CLI_BASE, "--steps", "6", "--strength", "0.8",
                        "-i", save(init, tmp_path / "init.png"), "--mask", save(mask, tmp_path / "mask.png"))
    np.testing.assert_array_equal(ours, theirs)
    unmasked = ctx.img2img(PROMPT, init, strength=0.8, steps=6, **BASE)[0]
    assert not np.array_equal(ours, unmasked), "the mask changed nothing"


def test_reference_images_match_sd_cli(ctx, parts, run_sd_cli, tmp_path):
    ref = picture(5, size=48)
    ours = ctx.edit(PROMPT, [ref], steps=4, **BASE)[0]
    theirs = run_sd_cli(tmp_path / "out.png", parts, *CLI_BASE, "--steps", "4",
                        "-r", save(ref, tmp_path / "ref.png"))
    np.testing.assert_array_equal(ours, theirs)
    assert not np.array_equal(ours, ctx.txt2img(PROMPT, steps=4, **BASE)[0])


@pytest.mark.parametrize("upscaler", ["latent", "lanczos"])
def test_hires_fix_matches_sd_cli(ctx, parts, run_sd_cli, tmp_path, upscaler):
    hires = sdcpp_py.Hires(upscaler=upscaler, scale=2.0, steps=3, denoising_strength=0.5)
    ours = ctx.txt2img(PROMPT, steps=3, hires=hires, **BASE)[0]
    assert ours.shape == (128, 128, 3)
    theirs = run_sd_cli(tmp_path / "out.png", parts, *CLI_BASE, "--steps", "3", "--hires",
                        "--hires-upscaler", sdcpp_py.HiresUpscaler.coerce(upscaler, "upscaler").core_name,
                        "--hires-scale", "2", "--hires-steps", "3",
                        "--hires-denoising-strength", "0.5")
    np.testing.assert_array_equal(ours, theirs)


def test_cache_mode_matches_sd_cli(ctx, parts, run_sd_cli, tmp_path):
    ours = ctx.txt2img(PROMPT, steps=10, cache=sdcpp_py.Cache("easycache"), **BASE)[0]
    theirs = run_sd_cli(tmp_path / "out.png", parts, *CLI_BASE, "--steps", "10",
                        "--cache-mode", "easycache")
    np.testing.assert_array_equal(ours, theirs)


def test_vae_tiling_matches_sd_cli(ctx, parts, run_sd_cli, tmp_path):
    ours = ctx.txt2img(PROMPT, steps=2, vae_tiling=True, vae_tile_size=32, **{**BASE, "width": 96, "height": 96})[0]
    theirs = run_sd_cli(tmp_path / "out.png", parts, "-p", PROMPT, "-W", "96", "-H", "96", "--cfg-scale",
                        "1", "-s", "5", "--steps", "2", "--vae-tiling", "--vae-tile-size", "32x32")
    np.testing.assert_array_equal(ours, theirs)


@pytest.fixture(scope="module")
def lora_dir(parts, tmp_path_factory):
    directory = tmp_path_factory.mktemp("loras")
    extras.flux_lora(parts["diffusion_model"], directory / "style.safetensors")
    return directory


def test_lora_list_matches_sd_cli_prompt_syntax(ctx, parts, run_sd_cli, lora_dir, tmp_path):
    lora = sdcpp_py.Lora(lora_dir / "style.safetensors", 0.8)
    ours = ctx.txt2img(PROMPT, steps=3, loras=[lora], **BASE)[0]
    theirs = run_sd_cli(tmp_path / "out.png", parts, "-p", PROMPT + "<lora:style:0.8>", "-W", "64", "-H",
                        "64", "--cfg-scale", "1", "-s", "5", "--steps", "3", "--lora-model-dir", str(lora_dir),
                        "--lora-apply-mode", "at_runtime")
    np.testing.assert_array_equal(ours, theirs)
    after = ctx.txt2img(PROMPT, steps=3, **BASE)[0]
    with sdcpp_py.Context(**parts, n_threads=2) as fresh:
        never_had_it = fresh.txt2img(PROMPT, steps=3, **BASE)[0]
    assert np.abs(ours.astype(int) - never_had_it.astype(int)).mean() > 1, "the LoRA changed nothing"
    # Applied for that call only: the next call is exactly what a context that never saw the LoRA makes.
    np.testing.assert_array_equal(after, never_had_it)


def test_prompt_lora_syntax_with_a_lora_dir(parts, lora_dir):
    with sdcpp_py.Context(**parts, n_threads=2, lora_dir=lora_dir) as context:
        tagged = context.txt2img(PROMPT + "<lora:style:0.8>", steps=3, **BASE)[0]
        listed = context.txt2img(PROMPT, steps=3, loras=[sdcpp_py.Lora(lora_dir / "style.safetensors", 0.8)],
                                 **BASE)[0]
        np.testing.assert_array_equal(tagged, listed)
        with pytest.raises(FileNotFoundError, match="nothere"):
            context.txt2img(PROMPT + "<lora:nothere:1>", steps=1, **BASE)


def test_a_high_noise_lora_without_a_high_noise_model_is_refused(parts, lora_dir):
    # The core loads it under the high-noise model's prefix, matches no weight and changes nothing.
    with sdcpp_py.Context(**parts, n_threads=2, lora_dir=lora_dir) as context:
        with pytest.raises(ValueError, match=r"loras\[0\]\.high_noise=True .* this call has none"):
            context.txt2img(PROMPT, steps=1, loras=[sdcpp_py.Lora(lora_dir / "style.safetensors", 0.8,
                                                                  high_noise=True)], **BASE)
        with pytest.raises(ValueError, match=r"prompt <lora:style\.safetensors>\.high_noise=True"):
            context.txt2img(PROMPT + "<lora:|high_noise|style:0.8>", steps=1, **BASE)


def test_upscaler_matches_sd_cli(esrgan, run_sd_cli, tmp_path):
    image = picture(6, size=32)
    with sdcpp_py.Upscaler(esrgan, n_threads=2) as upscaler:
        assert upscaler.factor == 2
        ours = upscaler.upscale(image)
    assert ours.shape == (64, 64, 3) and ours.dtype == np.uint8
    theirs = run_sd_cli(tmp_path / "out.png", {}, "-M", "upscale", "--upscale-model", str(esrgan),
                        "-i", save(image, tmp_path / "in.png"))
    np.testing.assert_array_equal(ours, theirs)


def test_upscaler_refuses_a_factor_it_would_ignore_and_an_output_past_max_side(esrgan):
    # The core always scales by the model's factor (it ignores the one passed), and counts the output's
    # bytes in an int: a 16-bit-wide request must not reach it.
    with sdcpp_py.Upscaler(esrgan, n_threads=1) as upscaler:
        assert upscaler.upscale(picture(1, size=8), factor=2).shape == (16, 16, 3)
        with pytest.raises(ValueError, match=r"factor=4: this model upscales by 2"):
            upscaler.upscale(picture(1, size=8), factor=4)
        wide = np.zeros((1, 8193, 3), np.uint8)  # MAX_SIDE is 16384
        with pytest.raises(ValueError, match=r"image: 8193x1 upscaled by 2 is 16386x2"):
            upscaler.upscale(wide)


def test_canny_gives_edges_and_leaves_the_input_alone():
    image = np.zeros((64, 64, 3), np.uint8)
    image[16:48, 16:48] = 255
    before = image.copy()
    edges = sdcpp_py.preprocess_canny(image)
    np.testing.assert_array_equal(image, before)
    assert edges.shape == image.shape and edges.dtype == np.uint8
    assert edges[32, 32].max() == 0 and edges[0, 0].max() == 0, "flat regions have no edges"
    assert edges[14:19, 14:50].max() > 0, "the square's border is an edge"


def test_convert_to_gguf_q8_0_loads_and_stays_close(ctx, parts, tmp_path):
    target = tmp_path / "dit-q8_0.gguf"
    sdcpp_py.convert(parts["diffusion_model"], target, weight_type="q8_0")
    info = sdcpp_py.inspect(target)
    assert info.format == "gguf" and "q8_0" in {t.lower() for t in info.weight_types}
    with sdcpp_py.Context(**{**parts, "diffusion_model": target}, n_threads=2) as quantized:
        converted = quantized.txt2img(PROMPT, steps=2, **BASE)[0]
    original = ctx.txt2img(PROMPT, steps=2, **BASE)[0]
    assert np.abs(converted.astype(int) - original.astype(int)).mean() < 3


def test_convert_failure_raises():
    with pytest.raises(FileNotFoundError, match="src"):
        sdcpp_py.convert("/nonexistent.safetensors", "/tmp/x.gguf")


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda c: c.img2img(PROMPT, np.zeros((64, 64, 3), np.float32), **BASE), "init_image must be uint8"),
        (lambda c: c.img2img(PROMPT, np.zeros((64, 64, 2), np.uint8), **BASE), r"init_image must have shape"),
        (lambda c: c.img2img(PROMPT, np.zeros((32, 64, 3), np.uint8), **BASE), r"init_image is 64x32"),
        (lambda c: c.inpaint(PROMPT, picture(1), np.zeros((64, 64, 3), np.uint8), **BASE), r"mask must have shape"),
        (lambda c: c.generate(PROMPT, mask=np.zeros((64, 64), np.uint8), **BASE), "mask needs init_image"),
        (lambda c: c.img2img(PROMPT, picture(1), strength=1.5, **BASE), r"strength=1.5"),
        (lambda c: c.txt2img(PROMPT, control_image=picture(1), **BASE), "control_net="),
        (lambda c: c.txt2img(PROMPT, hires=sdcpp_py.Hires(upscaler="bogus"), **BASE), "hires.upscaler='bogus'"),
        (lambda c: c.txt2img(PROMPT, hires=sdcpp_py.Hires(upscaler="model"), **BASE), "hires.model_path"),
        (lambda c: c.txt2img(PROMPT, cache=sdcpp_py.Cache("warp"), **BASE), "cache.mode='warp'"),
        (lambda c: c.txt2img(PROMPT, loras=["/no/such.safetensors"], **BASE), r"loras\[0\].path"),
        (lambda c: c.txt2img(PROMPT, photo_maker=sdcpp_py.PhotoMaker(id_images=[picture(1)]), **BASE),
         "photo_maker="),
        (lambda c: c.generate_video(PROMPT, **BASE), "does not generate video"),
        (lambda c: c.img2img(PROMPT, "/no/such.png", **BASE), "init_image: no such image file"),
    ],
)
def test_bad_surface_arguments_name_the_argument(ctx, call, message):
    with pytest.raises((ValueError, TypeError, FileNotFoundError), match=message):
        call(ctx)


def test_decoder_only_vae_refuses_img2img_up_front(tmp_path, synthetic_dir):
    decode_only = flux1.flux_components(synthetic_dir / "flux")  # VAE without encoder
    with sdcpp_py.Context(**decode_only, n_threads=2) as context:
        assert context.vae_decode_only
        with pytest.raises(ValueError, match="needs the VAE encoder"):
            context.img2img(PROMPT, picture(1), **BASE)


@pytest.mark.parametrize(
    "options, flags",
    [
        (dict(sampler="dpm++2m", scheduler="karras"), ["--sampling-method", "dpm++2m", "--scheduler", "karras"]),
        (dict(sampler="euler_a", eta=0.5), ["--sampling-method", "euler_a", "--eta", "0.5"]),
        (dict(flow_shift=2.0), ["--flow-shift", "2"]),
        (dict(guidance=5.0), ["--guidance", "5"]),
        (dict(custom_sigmas=[1.0, 0.7, 0.4, 0.0]), ["--sigmas", "1.0,0.7,0.4,0.0"]),
        (dict(skip_layers=[0], slg_scale=2.5, slg_start=0.0, slg_end=1.0),
         ["--skip-layers", "[0]", "--slg-scale", "2.5", "--skip-layer-start", "0", "--skip-layer-end", "1"]),
    ],
    ids=["scheduler", "eta", "flow_shift", "guidance", "sigmas", "slg"],
)
def test_sampling_options_match_sd_cli(ctx, parts, run_sd_cli, tmp_path, options, flags):
    ours = ctx.txt2img(PROMPT, steps=3, **{**BASE, **options})
    theirs = run_sd_cli(tmp_path / "out.png", parts, *CLI_BASE, "--steps", "3", *flags)
    np.testing.assert_array_equal(ours[0], theirs)


def test_batch_matches_sd_cli(ctx, parts, sd_cli, tmp_path):
    import subprocess

    ours = ctx.txt2img(PROMPT, steps=2, batch_count=2, **BASE)
    command = [str(sd_cli), "-o", str(tmp_path / "out.png"), *CLI_BASE, "--steps", "2", "--batch-count", "2",
               "--diffusion-model", str(parts["diffusion_model"]), "--clip_l", str(parts["clip_l"]),
               "--vae", str(parts["vae"])]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    for index in range(2):  # sd-cli writes image i of a batch as out_i.png
        with Image.open(tmp_path / f"out_{index}.png") as theirs:
            np.testing.assert_array_equal(ours[index], np.asarray(theirs.convert("RGB")))


def test_convert_matches_sd_cli_tensor_for_tensor(parts, sd_cli, tmp_path):
    import subprocess

    ours = tmp_path / "ours.gguf"
    sdcpp_py.convert(parts["diffusion_model"], ours, weight_type="q8_0")
    theirs = tmp_path / "theirs.gguf"
    result = subprocess.run([str(sd_cli), "-M", "convert", "-m", str(parts["diffusion_model"]), "-o", str(theirs),
                             "--type", "q8_0"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    # Same tensors, types, shapes, bytes and metadata. Not the same file order: the core's loader threads add
    # tensors to the output as they finish, so even two sd-cli runs can order them differently under load.
    from sdcpp_py._headers import read_header

    mine, cli = read_header(str(ours)), read_header(str(theirs))
    assert mine.metadata == cli.metadata
    assert {n: (t.dtype, t.shape) for n, t in mine.tensors.items()} == {n: (t.dtype, t.shape)
                                                                         for n, t in cli.tensors.items()}
    with open(ours, "rb") as a, open(theirs, "rb") as b:
        for name, tensor in mine.tensors.items():
            a.seek(tensor.offset)
            b.seek(cli.tensors[name].offset)
            assert a.read(tensor.nbytes) == b.read(tensor.nbytes), name


def test_convert_reports_progress_and_raises_what_the_callback_raised(parts, tmp_path):
    seen = []
    sdcpp_py.convert(parts["diffusion_model"], tmp_path / "a.gguf", weight_type="q8_0",
                     progress=lambda done, total, seconds: seen.append((done, total)))
    total = sdcpp_py.inspect(parts["diffusion_model"]).tensor_count
    assert seen and seen[-1] == (total, total)
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)

    class Stop(Exception):
        pass

    def stop(done, total, seconds):
        raise Stop("enough")

    with pytest.raises(Stop, match="enough"):
        sdcpp_py.convert(parts["diffusion_model"], tmp_path / "b.gguf", weight_type="q8_0", progress=stop)
    with pytest.raises(TypeError, match="progress must be callable"):
        sdcpp_py.convert(parts["diffusion_model"], tmp_path / "c.gguf", progress="yes")


def test_controlnet_with_canny_matches_sd_cli(sd1_checkpoint, sd1_controlnet, run_sd_cli, tmp_path):
    square = np.zeros((64, 64, 3), np.uint8)
    square[16:48, 16:48] = 255
    options = dict(width=64, height=64, steps=1, cfg_scale=1.0, seed=5)
    with sdcpp_py.Context(model=sd1_checkpoint, control_net=sd1_controlnet, n_threads=2) as context:
        ours = context.txt2img(PROMPT, control_image=sdcpp_py.preprocess_canny(square), control_strength=0.8,
                               **options)[0]
        uncontrolled = context.txt2img(PROMPT, **options)[0]
    assert np.abs(ours.astype(int) - uncontrolled.astype(int)).mean() > 1, "the control image changed nothing"
    theirs = run_sd_cli(tmp_path / "out.png", {"model": sd1_checkpoint, "control_net": sd1_controlnet},
                        "-p", PROMPT, "-W", "64", "-H", "64", "--steps", "1", "--cfg-scale", "1", "-s", "5",
                        "--control-image", save(square, tmp_path / "control.png"), "--canny",
                        "--control-strength", "0.8")
    np.testing.assert_array_equal(ours, theirs)
