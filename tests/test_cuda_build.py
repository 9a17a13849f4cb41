"""The CUDA variant: its CMake configure (wherever nvcc is installed) and, with a CUDA build on a machine with an
NVIDIA GPU, generation on the GPU. Everything here skips, with the reason, where it cannot run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import sdcpp_py

REPO_ROOT = Path(__file__).resolve().parent.parent
CUDA_BUILD = REPO_ROOT / "tools" / "cuda_build.sh"


def _nvcc() -> str | None:
    for candidate in (os.environ.get("CUDACXX"), os.environ.get("CUDA_HOME") and f"{os.environ['CUDA_HOME']}/bin/nvcc",
                      "/usr/local/cuda/bin/nvcc", shutil.which("nvcc")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


@pytest.mark.skipif(_nvcc() is None, reason="nvcc is not installed (no CUDA toolkit)")
@pytest.mark.skipif(shutil.which("bash") is None, reason="tools/cuda_build.sh needs bash")
def test_cuda_configure_finds_cublas_and_includes_the_cuda_backend(tmp_path):
    """Configure only (seconds): the toolkit's cuBLAS, or NVIDIA's cuBLAS wheel fetched once into a cache folder
    when the toolkit has none, gives FindCUDAToolkit its CUDA::cublas target."""
    build = tmp_path / "cuda"
    result = subprocess.run(["bash", str(CUDA_BUILD), "--configure-only", str(build), "--arch", "90",
                             "--python", sys.executable], capture_output=True, text=True)
    if result.returncode == 3:
        pytest.skip(f"cuBLAS is needed from pip and pip could not fetch it: {result.stderr.strip()[-300:]}")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Including CUDA backend" in result.stdout
    assert "sdcpp-py backend: cuda" in result.stdout
    assert "Using CMAKE_CUDA_ARCHITECTURES=90 " in result.stdout
    cache = (build / "CMakeCache.txt").read_text()
    cublas = [line.split("=", 1)[1] for line in cache.splitlines() if line.startswith("CUDA_cublas_LIBRARY:")]
    assert cublas and Path(cublas[0]).is_file(), cublas
    # The installed extension finds the CUDA libraries it was linked against.
    install_script = (build / "cmake_install.cmake").read_text()
    assert str(Path(cublas[0]).parent) in install_script


def _cuda_devices() -> list:
    return [device for device in sdcpp_py.devices() if device.type == "gpu" and "cuda" in device.backend.lower()]


def _skip_without_cuda_device() -> None:
    if sdcpp_py.BACKEND != "cuda":
        pytest.skip(f"this sdcpp_py is the {sdcpp_py.BACKEND} build (tools/cuda_build.sh builds the CUDA one)")
    if not _cuda_devices():
        pytest.skip("the CUDA build sees no CUDA device (no NVIDIA GPU or driver here)")


@pytest.fixture
def cuda_device():
    _skip_without_cuda_device()
    return _cuda_devices()[0]


def test_cuda_build_picks_the_gpu(cuda_device):
    report = sdcpp_py.backends()
    assert report["built_with"] == "cuda"
    assert report["default_device"].name == cuda_device.name  # memory_free changes between calls
    assert cuda_device.memory_total > 0
    assert not sdcpp_py.accelerator_missing()


def test_flux_on_the_gpu_is_deterministic_and_seed_dependent(cuda_device, flux_parts):
    options = dict(width=256, height=256, steps=4, cfg_scale=1.0)
    with sdcpp_py.Context(**flux_parts) as ctx:
        first = ctx.txt2img("a red cube", seed=7, **options)[0]
        again = ctx.txt2img("a red cube", seed=7, **options)[0]
        other = ctx.txt2img("a red cube", seed=8, **options)[0]
    assert first.shape == (256, 256, 3) and first.dtype == np.uint8
    assert first.std() > 1.0, "a constant image means the pipeline produced nothing"
    np.testing.assert_array_equal(first, again)
    assert np.abs(first.astype(int) - other.astype(int)).mean() > 1.0
