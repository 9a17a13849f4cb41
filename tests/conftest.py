"""Shared fixtures: synthetic component files (made by sdcpp_py.testing), the sd-cli oracle and the callers
that run it, and the contexts several modules use. Test modules ask for these by name; none imports a name
from here or from another test module."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import sdcpp_py
from sdcpp_py.testing import extras, flux1, sd

REPO_ROOT = Path(__file__).resolve().parent.parent

# The tools pip installed beside this interpreter (cmake, ninja) come first, whether or not its virtual
# environment is activated (README's `.venv/bin/python -m pytest` does not activate it).
os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])


def _synthetic_dir() -> Path:
    # Cached across runs: generation is cheap, but rewriting ~100 MB of sparse files each session is not.
    base = os.environ.get("SDCPP_PY_SYNTHETIC_DIR")
    return Path(base) if base else Path.home() / ".cache" / "sdcpp-py" / "synthetic"


@pytest.fixture(scope="session")
def synthetic_dir() -> Path:
    """The cache folder of the synthetic component files (SDCPP_PY_SYNTHETIC_DIR, else ~/.cache)."""
    return _synthetic_dir()


@pytest.fixture(scope="session")
def flux_parts() -> dict:
    """Tiny Flux.1 DiT + CLIP-L + VAE, each a separate file."""
    return flux1.flux_components(_synthetic_dir() / "flux")


@pytest.fixture(scope="session")
def flux_gguf_dit(flux_parts) -> Path:
    """The same tiny Flux DiT as a Q8_0 GGUF file (a differently quantized part)."""
    return flux1.flux_components(flux_parts["diffusion_model"].parent, diffusion_format="gguf",
                                 diffusion_type="Q8_0")["diffusion_model"]


@pytest.fixture(scope="session")
def flux_parts_with_encoder() -> dict:
    """The tiny Flux.1 parts with a VAE encoder (img2img, edits): what the server tests serve."""
    return flux1.flux_components(_synthetic_dir() / "flux", vae_encoder=True)


@pytest.fixture(scope="session")
def flux_parts_with_t5() -> dict:
    return flux1.flux_components(_synthetic_dir() / "flux", t5xxl=True)


@pytest.fixture(scope="session")
def sd1_checkpoint() -> Path:
    """An all-in-one SD1.x-style checkpoint (full-size UNet, aliased weights)."""
    return sd.sd1_checkpoint(_synthetic_dir() / "sd1")


@pytest.fixture(scope="session")
def sd1_controlnet(sd1_checkpoint) -> Path:
    """A full-size SD1 ControlNet for sd1_checkpoint (random zero convs, so the control image matters)."""
    return sd.sd1_controlnet(_synthetic_dir() / "sd1" / "sd1-controlnet.safetensors")


@pytest.fixture(scope="session")
def sd_cli() -> Path:
    """The vendored sd-cli, built from the same core sources and flags as the extension."""
    override = os.environ.get("SDCPP_PY_SD_CLI")
    if override:
        return Path(override)
    build_dir = REPO_ROOT / "build" / "sd-cli"
    binary = build_dir / "bin" / "sd-cli"
    configure = ["cmake", "-S", str(REPO_ROOT), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Release",
                 "-DSDCPP_PY_BUILD_SD_CLI=ON", f"-DPython_EXECUTABLE={sys.executable}"]
    if shutil.which("ninja"):
        configure += ["-G", "Ninja"] if not (build_dir / "CMakeCache.txt").exists() else []
    for command in (configure, ["cmake", "--build", str(build_dir), "--target", "sd-cli"]):
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            pytest.fail(f"building sd-cli failed: {' '.join(command)}\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
    return binary


@pytest.fixture(scope="session")
def run_sd_cli(sd_cli):
    """`run_sd_cli(out_png, components, *args)`: sd-cli's image for those component files and flags, (H, W, 3)."""
    from PIL import Image

    def run(out_png: Path, components: dict, *args: str) -> np.ndarray:
        _run_sd_cli(sd_cli, out_png, components, *args)
        with Image.open(out_png) as image:
            return np.asarray(image.convert("RGB"))

    return run


SD_CLI_COMPONENT_FLAGS = {
    "model": "-m", "diffusion_model": "--diffusion-model", "clip_l": "--clip_l", "t5xxl": "--t5xxl", "vae": "--vae",
    "clip_g": "--clip_g", "llm": "--llm", "taesd": "--taesd", "control_net": "--control-net",
    "clip_vision": "--clip_vision", "high_noise_diffusion_model": "--high-noise-diffusion-model",
}


def _run_sd_cli(sd_cli: Path, output: Path, components: dict, *args: str) -> None:
    command = [str(sd_cli), "-o", str(output), *args]
    for name, path in components.items():
        command += [SD_CLI_COMPONENT_FLAGS[name], str(path)]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, f"sd-cli failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"


@pytest.fixture(scope="session")
def run_sd_cli_video(sd_cli):
    """`run_sd_cli_video(out_dir, components, *args)`: sd-cli in video mode, its frames as (F, H, W, 3).
    Frames are written as numbered PNGs: its .avi/.webm outputs are lossy."""
    from PIL import Image

    def run(out_dir: Path, components: dict, *args: str) -> np.ndarray:
        out_dir.mkdir(parents=True, exist_ok=True)
        _run_sd_cli(sd_cli, out_dir / "frame_%03d.png", components, "-M", "vid_gen", *args)
        frames = []
        for path in sorted(out_dir.glob("frame_*.png")):
            with Image.open(path) as image:
                frames.append(np.asarray(image.convert("RGB")))
        assert frames, f"sd-cli wrote no frames to {out_dir}"
        return np.stack(frames)

    return run


# Contexts. Module scope, as each module had them: a module's contexts are freed when it is done.
@pytest.fixture(scope="module")
def flux(flux_parts):
    """A Context over the tiny Flux.1 parts."""
    with sdcpp_py.Context(**flux_parts, n_threads=2) as context:
        yield context


@pytest.fixture(scope="module")
def ctx(parts):
    """A Context over the requesting module's own `parts` fixture (each module says which files)."""
    with sdcpp_py.Context(**parts, n_threads=2) as context:
        yield context


@pytest.fixture(scope="module")
def wan_ctx(parts, cli_video):
    """The module's Wan parts at q8_0 (sd-cli's `--type q8_0`), made after the module's sd-cli video
    (`cli_video`): sd-cli and this Context would not fit in RAM together."""
    with sdcpp_py.Context(**parts, n_threads=2, weight_type="q8_0") as context:
        yield context


@pytest.fixture(scope="module")
def esrgan() -> Path:
    """A small x2 ESRGAN upscaler."""
    return extras.esrgan_upscaler(_synthetic_dir() / "esrgan" / "esrgan-x2.safetensors", scale=2)
