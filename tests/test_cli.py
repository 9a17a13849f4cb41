"""The `sdcpp` command line: generate (pixels equal to the API, parameters in the PNG), inspect, convert, info,
and one-line errors with exit status 2 on bad input."""

import json
import os
import subprocess
import sys
from importlib.metadata import entry_points

import numpy as np
import pytest
from PIL import ExifTags, Image

import sdcpp_py
from sdcpp_py._png import encode_png


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
