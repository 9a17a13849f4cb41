"""The `sdcpp` command line: generate (pixels equal to the API, parameters in the PNG), inspect, convert, info,
and one-line errors with exit status 2 on bad input."""

import importlib.util
import json
import os
import re
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pytest
from PIL import ExifTags, Image

import sdcpp_py
from sdcpp_py import cli
from sdcpp_py._png import encode_png
from sdcpp_py._sdcli import plan


def sdcpp(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sdcpp_py.cli", *args], capture_output=True, text=True,
                          timeout=timeout, check=False)


def test_console_script_is_installed():
    scripts = {ep.name: ep.value for ep in entry_points(group="console_scripts")}
    assert scripts.get("sdcpp") == "sdcpp_py.cli:main"


def flux_args(flux_parts, prompt: str = "a red cube") -> list:
    return ["generate", "--diffusion-model", str(flux_parts["diffusion_model"]), "--clip_l", str(flux_parts["clip_l"]),
            "--vae", str(flux_parts["vae"]), "-p", prompt, "-W", "64", "-H", "64", "--steps", "1", "--cfg-scale", "1",
            "-t", "2"]


def test_generate_writes_the_api_pixels_with_parameters(flux_parts, tmp_path):
    out = tmp_path / "out.png"
    result = sdcpp("generate", "--diffusion-model", str(flux_parts["diffusion_model"]), "--clip_l",
                   str(flux_parts["clip_l"]), "--vae", str(flux_parts["vae"]), "-p", "a red cube", "-W", "64",
                   "-H", "64", "--steps", "2", "--cfg-scale", "1", "-s", "9", "-t", "2", "-o", str(out))
    assert result.returncode == 0, result.stderr
    with Image.open(out) as image:
        pixels = np.asarray(image.convert("RGB"))
        parameters = image.info["parameters"]
    with sdcpp_py.Context(**flux_parts, n_threads=2) as ctx:
        expected = ctx.txt2img("a red cube", width=64, height=64, steps=2, cfg_scale=1.0, seed=9)[0]
    np.testing.assert_array_equal(pixels, expected)
    assert parameters.startswith("a red cube\n") and "Seed: 9" in parameters and "Steps: 2" in parameters


def test_inspect_reports_role_and_architecture(flux_parts):
    result = sdcpp("inspect", "--json", str(flux_parts["diffusion_model"]), str(flux_parts["vae"]))
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["role"], r["architecture"]) for r in records][0] == ("diffusion_model", "Flux.1")
    assert records[1]["role"] == "vae"


def test_convert_and_info(flux_parts, tmp_path):
    target = tmp_path / "dit.gguf"
    result = sdcpp("convert", str(flux_parts["diffusion_model"]), str(target), "--type", "q8_0")
    assert result.returncode == 0, result.stderr
    assert target.exists() and "MiB ->" in result.stdout
    info = sdcpp("info")
    assert info.returncode == 0 and sdcpp_py.core_version() in info.stdout and "CPU" in info.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["generate", "-p", "x"], "no model"),
        (["generate", "-m", "/no/such/model.safetensors", "-p", "x"], "model: no such file"),
        (["convert", "/no/such.safetensors", "/tmp/x.gguf"], "src: no such file"),
        (["inspect", "/no/such.gguf"], "no such file"),
    ],
)
def test_bad_input_is_one_line_and_exit_status_2(args, message):
    result = sdcpp(*args)
    assert result.returncode == 2, result
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_a_non_latin1_prompt_round_trips_through_the_parameters_chunk(flux_parts, tmp_path):
    prompt = "灯台 at dusk — café"
    out = tmp_path / "out.png"
    result = sdcpp(*flux_args(flux_parts, prompt), "-o", str(out))
    assert result.returncode == 0, result.stderr
    with Image.open(out) as image:
        assert image.info["parameters"].startswith(prompt + "\n")


def test_png_text_is_text_when_latin1_and_international_text_otherwise(tmp_path):
    pixels = np.zeros((2, 3, 3), np.uint8)
    data = encode_png(pixels, {"latin": "café", "wide": "灯台\nx"})
    assert b"tEXtlatin\0caf\xe9" in data and b"iTXtwide\0\0\0\0\0" + "灯台".encode() in data
    (tmp_path / "t.png").write_bytes(data)
    with Image.open(tmp_path / "t.png") as image:
        assert image.info["latin"] == "café" and image.info["wide"] == "灯台\nx"
        np.testing.assert_array_equal(np.asarray(image), pixels)
    for key in ("", "k" * 80, "a\0b", "灯"):
        with pytest.raises(ValueError, match="key"):
            encode_png(pixels, {key: "v"})


def test_jpeg_output_is_jpeg_with_the_parameters_in_exif(flux_parts, tmp_path):
    out = tmp_path / "out.jpg"
    result = sdcpp(*flux_args(flux_parts, "灯台 at dusk"), "-b", "2", "-o", str(out))
    assert result.returncode == 0, result.stderr
    for index in range(2):
        with Image.open(tmp_path / f"out_{index}.jpg") as image:
            assert image.format == "JPEG" and image.size == (64, 64)
            comment = image.getexif().get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.UserComment]
        assert comment.startswith(b"UNICODE\0")
        assert comment[8:].decode("utf-16-be").startswith("灯台 at dusk\n")


@pytest.mark.parametrize(
    "output, message",
    [
        ("/nonexistent/dir/x.png", "does not exist"),
        ("out.gif", "unsupported extension '.gif'; use one of .png, .jpg, .jpeg, .webp, .bmp"),
        ("out", "unsupported extension '(none)'"),
        (".", "unsupported extension"),
    ],
)
def test_a_bad_output_fails_before_any_model_is_read(output, message, tmp_path):
    # The model does not exist either: the output's error shows the output is checked first.
    result = sdcpp("generate", "-m", "/no/such/model.safetensors", "-p", "x", "-o", output)
    assert result.returncode == 2, result
    assert "-o/--output" in result.stderr and message in result.stderr and "model" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_an_output_folder_that_is_a_file_or_an_output_that_is_a_folder(tmp_path):
    (tmp_path / "file").write_bytes(b"")
    (tmp_path / "folder.png").mkdir()
    for output, message in ((tmp_path / "file" / "x.png", "is not a folder"), (tmp_path / "folder.png", "is a folder")):
        result = sdcpp("generate", "-m", "/no/such/model.safetensors", "-p", "x", "-o", str(output))
        assert result.returncode == 2 and "-o/--output" in result.stderr and message in result.stderr, result


def test_pillow_formats_without_pillow_say_to_install_it(tmp_path):
    argv = ["generate", "-m", "/no/such/model.safetensors", "-p", "x", "-o", str(tmp_path / "x.webp")]
    code = f"import sys; sys.modules['PIL'] = None; from sdcpp_py.cli import main; sys.exit(main({argv!r}))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 2, result
    assert "pip install pillow" in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are POSIX")
def test_inspect_refuses_a_directory_and_files_that_are_not_regular(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # opening it for reading would block: inspect must only stat it
    cases = [(tmp_path, "is a directory"), ("/dev/null", "is not a regular file"), (fifo, "is not a regular file")]
    for path, message in cases:
        result = sdcpp("inspect", str(path), timeout=60)  # a blocked open of the FIFO fails here, not hangs
        assert result.returncode == 2 and message in result.stderr, result
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    with pytest.raises(IsADirectoryError):
        sdcpp_py.inspect(tmp_path)
    for path in ("/dev/null", fifo):
        with pytest.raises(ValueError, match="is not a regular file"):
            sdcpp_py.inspect(path)


def planned(*argv: str):
    """The plan of a command line (no file is opened): the checks made before any model is read."""
    return plan(cli.build_parser().parse_args(cli._sd_cli_argv(list(argv))))


def one_line_error(result: subprocess.CompletedProcess, message: str) -> None:
    assert result.returncode == 2, result
    assert message in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def stubbed(argv: list, stubs: str, **kwargs) -> subprocess.CompletedProcess:
    """`sdcpp argv` in a process where ``stubs`` (Python run after importing sdcpp_py) replaced parts of it."""
    code = f"import sys, sdcpp_py\n{stubs}\nfrom sdcpp_py.cli import main\nsys.exit(main({argv!r}))\n"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=120,
                          **kwargs)


FAKE_CONTEXT = """
import logging
import numpy as np

class Result(list):
    seed = 1

class Fake:
    def __init__(self, **options):
        pass
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        pass
    def generate(self, prompt, progress=None, **options):
        logging.getLogger("sdcpp_py").warning("align generation request up 65x64 to 72x64")
        logging.getLogger("sdcpp_py").info("an info line")
        return Result([np.zeros((64, 72, 3), np.uint8)])

sdcpp_py.Context = Fake
"""


@pytest.mark.parametrize("fps", ["0", "-3"])
def test_fps_below_1_is_refused_before_any_model_is_read(fps, tmp_path):
    result = sdcpp("-M", "vid_gen", "-m", "/no/such/model.safetensors", "-p", "x", "--fps", fps, "-o",
                   str(tmp_path / "v.webp"))
    one_line_error(result, f"--fps {fps}: must be at least 1")


def test_the_cores_warnings_reach_stderr_without_verbose(tmp_path):
    out = tmp_path / "out.png"
    quiet = stubbed(["generate", "-m", "m", "-p", "x", "-W", "65", "-H", "64", "-o", str(out)], FAKE_CONTEXT)
    assert quiet.returncode == 0, quiet.stderr
    assert "WARNING align generation request up 65x64 to 72x64" in quiet.stderr and "info line" not in quiet.stderr
    verbose = stubbed(["generate", "-m", "m", "-p", "x", "-v", "-o", str(out)], FAKE_CONTEXT)
    assert verbose.returncode == 0 and "align generation" in verbose.stderr and "an info line" in verbose.stderr


def test_split_checks_models_before_writing_parts(tmp_path):
    out_dir = tmp_path / "parts"
    for models in ("0", "-2"):
        one_line_error(sdcpp("split", "/no/such/checkpoint.safetensors", str(out_dir), "--models", models),
                       f"--models {models}: must be at least 1")
    assert not out_dir.exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["-M", "upscale", "--upscale-model", "e", "-i", "x.png", "--upscale-repeats", "0"],
         "--upscale-repeats 0: must be at least 1"),
        (["-M", "upscale", "--upscale-model", "e", "-i", "x.png", "--upscale-repeats", "-1"],
         "--upscale-repeats -1: must be at least 1"),
        (["-M", "upscale", "--upscale-model", "e", "-i", "x.png", "--upscale-tile-size", "0"],
         "--upscale-tile-size 0: must be at least 1"),
        (["-m", "m", "-p", "x", "--upscale-repeats", "2"], "--upscale-repeats needs --upscale-model"),
        (["-m", "m", "-p", "x", "--cache-mode", "easycache", "--cache-option", "start=0.9,end=0.1"],
         "start and end must satisfy 0 <= start < end <= 1"),
        (["-m", "m", "-p", "x", "--cache-mode", "ucache", "--cache-option", "start=0.5,end=0.5"],
         "start and end must satisfy"),
        (["-m", "m", "-p", "x", "--cache-mode", "ucache", "--cache-option", "start=0.97"], "start and end"),
        (["-m", "m", "-p", "x", "--cache-mode", "easycache", "--cache-option", "end=1.5"], "start and end"),
        (["-m", "m", "-p", "x", "--cache-mode", "easycache", "--cache-option", "threshold=-0.1"],
         "threshold must be at least 0"),
        (["-m", "m", "-p", "x", "--cache-mode", "dbcache", "--cache-option", "threshold=nan"],
         "threshold must be at least 0"),
    ],
)
def test_values_sd_cli_refuses_are_refused_up_front(argv, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        planned(*argv)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["-M", "upscale", "--upscale-model", "e", "-i", "x.png", "--lora", "l.safetensors"],
         "--lora: not used in upscale mode"),
        (["-M", "upscale", "--upscale-model", "e", "-i", "x.png", "--hires"], "--hires: not used in upscale mode"),
        (["-M", "upscale", "--upscale-model", "e", "-i", "x.png", "-p", "x"], "-p/--prompt: not used in upscale"),
        (["-M", "upscale", "--upscale-model", "e", "-i", "x.png", "--fps", "8"], "--fps: not used in upscale mode"),
        (["-M", "upscale", "--upscale-model", "e", "-i", "x.png", "--canny"], "--canny: not used in upscale mode"),
        (["-M", "convert", "-m", "m", "--cache-mode", "ucache"], "--cache-mode: not used in convert mode"),
        (["-M", "convert", "-m", "m", "--embd-dir", "."], "--embd-dir: not used in convert mode"),
        (["-M", "convert", "-m", "m", "-p", "x"], "-p/--prompt: not used in convert mode"),
        (["-M", "convert", "-m", "m", "--upscale-model", "e"], "--upscale-model: not used in convert mode"),
        (["-M", "upscale", "--upscale-model", "e", "-i", "x.png", "--convert-name"],
         "--convert-name: not used in upscale mode"),
        (["-m", "m", "-p", "x", "--convert-name"], "--convert-name: not used in img_gen mode"),
        (["-m", "m", "-p", "x", "--fps", "8"], "--fps: not used in img_gen mode"),
        (["-m", "m", "-p", "x", "--metadata-format", "json"], "--metadata-format: not used in img_gen mode"),
        (["-M", "vid_gen", "-m", "m", "-p", "x", "--hires"], "--hires: not used in vid_gen mode"),
        (["-M", "metadata", "--image", "x.png", "-o", "y.png"], "-o/--output: not used in metadata mode"),
        (["-m", "m", "-p", "x", "--hires-upscaler", "Lanczos"], "--hires-upscaler: the --hires-* options need --hires"),
        (["-m", "m", "-p", "x", "--hires-upscalers-dir", "."], "--hires-upscalers-dir: the --hires-* options need"),
        (["-m", "m", "-p", "x", "--canny"], "--canny needs --control-image"),
        (["-m", "m", "-p", "x", "--preview-path", "p.png"], "--preview-path needs --preview"),
        (["-M", "convert", "-m", "a", "--diffusion-model", "b"], "give -m/--model or --diffusion-model, not both"),
    ],
)
def test_flags_the_mode_does_not_use_are_refused_naming_flag_and_mode(argv, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        planned(*argv)


def test_own_flags_defaults_do_not_count_as_given():
    upscale = cli.build_parser().parse_args(["generate", "-M", "upscale", "--upscale-model", "e", "-i", "x.png"])
    assert plan(upscale).mode == "upscale"
    assert (upscale.fps, upscale.upscale_repeats, upscale.upscale_tile_size, upscale.preview_path) == (
        16, 1, 128, "preview.png")
    assert planned("-M", "convert", "-m", "m", "--convert-name", "-o", "x.gguf").mode == "convert"
    assert planned("-M", "vid_gen", "-m", "m", "-p", "x", "--fps", "8").mode == "vid_gen"
    assert planned("-m", "m", "-p", "x", "--hires", "--hires-upscaler", "Lanczos").hires["upscaler"] == "Lanczos"
    assert planned("-m", "m", "-p", "x", "--hires").hires["upscaler"] == "Latent"


@pytest.mark.parametrize(
    "argv, taken",
    [(["-b", "2", "-o", "out.png"], "out_1.png"), (["-b", "3", "-o", "f%03d.png"], "f002.png"),
     (["-M", "vid_gen", "--video-frames", "3", "-o", "frame.png"], "frame_2.png")],
)
def test_every_output_name_is_checked_before_any_model_is_read(argv, taken, tmp_path):
    (tmp_path / taken).mkdir()
    argv = [str(tmp_path / arg) if arg.endswith(".png") else arg for arg in argv]
    result = sdcpp("-m", "/no/such/model.safetensors", "-p", "x", *argv)
    one_line_error(result, f"{str(tmp_path / taken)!r}): is a folder")


def test_convert_refuses_to_write_over_its_source(tmp_path):
    source = tmp_path / "a.gguf"
    source.write_bytes(b"GGUF not really")
    os.link(source, tmp_path / "hard.gguf")
    os.symlink(source, tmp_path / "link.gguf")
    for target in (source, f"{tmp_path}/./a.gguf", tmp_path / "hard.gguf", tmp_path / "link.gguf"):
        one_line_error(sdcpp("convert", str(source), str(target), "--type", "q8_0"), "is the same file as src")
    one_line_error(sdcpp("-M", "convert", "-m", str(source), "-o", str(tmp_path / "hard.gguf")),
                   "-o/--output")
    assert source.read_bytes() == b"GGUF not really"


FAKE_CONVERT = """
import os

def convert(src, dst, progress=None, **options):
    print("converting into", dst)
    with open(dst, "wb") as file:
        file.write(b"GGUF done")
    if os.environ.get("CONVERT_FAILS"):
        raise KeyboardInterrupt

sdcpp_py.convert = convert
"""


def test_convert_writes_a_temporary_file_renamed_when_done_and_an_interrupt_leaves_none(tmp_path):
    source, target = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    source.write_bytes(b"source")
    target.write_bytes(b"old")
    interrupted = stubbed(["convert", str(source), str(target)], FAKE_CONVERT,
                          env=dict(os.environ, CONVERT_FAILS="1"))
    assert interrupted.returncode == 130 and "interrupted" in interrupted.stderr, interrupted
    assert sorted(os.listdir(tmp_path)) == ["a.safetensors", "b.safetensors"] and target.read_bytes() == b"old"
    done = stubbed(["convert", str(source), str(target)], FAKE_CONVERT)
    assert done.returncode == 0, done.stderr
    written = done.stdout.split("converting into ")[1].split()[0]
    assert os.path.dirname(written) == str(tmp_path) and written.endswith(".safetensors") and written != str(target)
    assert sorted(os.listdir(tmp_path)) == ["a.safetensors", "b.safetensors"] and target.read_bytes() == b"GGUF done"


@pytest.mark.parametrize(
    "out, message",
    [("/nonexistent/x.png", "folder '/nonexistent' does not exist"), (".", "give a .png name"),
     ("x.jpg", "the check writes a PNG; give a .png name"), ("folder.png", "is a folder")],
)
def test_the_install_check_checks_out_before_generating(out, message, tmp_path):
    (tmp_path / "folder.png").mkdir()
    result = sdcpp("check", "--out", os.path.join(tmp_path, out), timeout=120)
    one_line_error(result, message)
    assert "INSTALL CHECK" not in result.stdout


def test_the_txt2img_example_keeps_the_suffix_of_a_batch_and_refuses_bad_values(tmp_path):
    example = Path(__file__).resolve().parent.parent / "examples" / "txt2img.py"
    spec = importlib.util.spec_from_file_location("txt2img_example", example)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module._output_paths(Path("d/out.JPG"), 2) == [Path("d/out_0.JPG"), Path("d/out_1.JPG")]
    assert module._output_paths(Path("out.webp"), 1) == [Path("out.webp")]
    for argv, message in ((["-W", "0"], "must be at least 1"), (["-b", "0"], "must be at least 1"),
                          (["-o", "x.gif"], "use one of"), (["-o", "/nonexistent/x.png"], "does not exist")):
        result = subprocess.run([sys.executable, str(example), "-m", "m", "-p", "x", *argv], capture_output=True,
                                text=True, check=False, timeout=120)
        assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr, result


def test_embd_dir_skips_files_the_core_cannot_read_as_embeddings(tmp_path, caplog):
    # sd-cli reads only the embeddings a prompt names: one unusable file in the folder must not stop the run.
    import numpy as np
    from sdcpp_py import _formats
    from sdcpp_py.cli import _usable_embeddings

    good = _formats.write_safetensors(tmp_path / "good.safetensors", {"emb_params": np.zeros((2, 768), np.float32)})
    half = _formats.write_safetensors(tmp_path / "half.safetensors", {"emb_params": np.zeros((2, 768), np.float16)})
    with caplog.at_level("WARNING", logger="sdcpp_py"):
        assert _usable_embeddings([str(good), str(half)]) == [str(good)]
    assert "half.safetensors" in caplog.text and "F16" in caplog.text
