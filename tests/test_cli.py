"""The `sdcpp` command line: generate (pixels equal to the API, parameters in the PNG), inspect, convert, info,
and one-line errors with exit status 2 on bad input."""

import json
import subprocess
import sys
from importlib.metadata import entry_points

import numpy as np
import pytest
from PIL import Image

import sdcpp_py


def sdcpp(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sdcpp_py.cli", *args], capture_output=True, text=True)


def test_console_script_is_installed():
    scripts = {ep.name: ep.value for ep in entry_points(group="console_scripts")}
    assert scripts.get("sdcpp") == "sdcpp_py.cli:main"


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
