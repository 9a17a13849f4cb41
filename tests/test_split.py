"""split(): an all-in-one SD1 checkpoint as separate parts that load through diffusion_model=/clip_l=/vae= and give
the checkpoint's pixels (needs patches/0002: the pinned core cannot tell a UNet's family from the UNet alone)."""

import subprocess
import sys

import numpy as np
import pytest

import sdcpp_py

SMALL = dict(width=64, height=64, steps=2, cfg_scale=3.0, seed=21)


@pytest.fixture(scope="module")
def parts(sd1_checkpoint, tmp_path_factory):
    return sdcpp_py.split(sd1_checkpoint, tmp_path_factory.mktemp("split"))


def test_split_writes_one_file_per_part_named_for_sharing(parts, sd1_checkpoint):
    assert parts.architecture == "SD1" and set(parts.parts) == {"diffusion_model", "clip_l", "vae"}
    assert parts.options == {}
    found = {name: (sdcpp_py.inspect(path).role, sdcpp_py.inspect(path).architecture)
             for name, path in parts.parts.items()}
    assert found == {"diffusion_model": ("diffusion_model", "SD1"), "clip_l": ("clip_l", "CLIP-L"),
                     "vae": ("vae", "SD VAE")}
    assert parts.parts["diffusion_model"].name.startswith(sd1_checkpoint.stem)
    assert parts.parts["clip_l"].name.startswith("clip_l-SD1-")  # named by content
    # Every tensor lands in exactly one part, none is lost or renamed beyond its prefix.
    source = sdcpp_py.inspect(sd1_checkpoint).tensor_count
    assert sum(sdcpp_py.inspect(path).tensor_count for path in parts.parts.values()) + len(parts.dropped) == source
    assert parts.bytes_after == sum(path.stat().st_size for path in parts.parts.values())


def test_split_parts_give_the_checkpoints_pixels(parts, sd1_checkpoint):
    with sdcpp_py.Context(model=sd1_checkpoint, n_threads=2) as whole:
        expected = whole.txt2img("a lighthouse", **SMALL)[0]
    with sdcpp_py.Context(**parts.parts, n_threads=2) as split_ctx:
        assert split_ctx.architecture == "SD1"
        got = split_ctx.txt2img("a lighthouse", **SMALL)[0]
    assert expected.std() > 1.0
    np.testing.assert_array_equal(got, expected)


def test_a_second_split_reuses_the_shared_parts(parts, sd1_checkpoint):
    again = sdcpp_py.split(sd1_checkpoint, parts.parts["vae"].parent)
    assert set(again.reused) == {"clip_l", "vae"}
    assert again.parts == parts.parts
    # N models sharing one encoder set: N checkpoints against N diffusion models plus one clip_l and VAE.
    shared = again.part_bytes["clip_l"] + again.part_bytes["vae"]
    for models in (1, 3):
        assert again.bytes_saved(models) == (models * again.bytes_before
                                             - models * again.part_bytes["diffusion_model"] - shared)
    with pytest.raises(ValueError, match="models must be at least 1"):
        again.bytes_saved(0)


def test_split_with_a_weight_type_writes_gguf_of_that_type(parts, sd1_checkpoint, tmp_path):
    typed = sdcpp_py.split(sd1_checkpoint, tmp_path, weight_types={"vae": "q8_0"})
    vae = typed.parts["vae"]
    assert vae.suffix == ".gguf" and ".q8_0" in vae.name
    info = sdcpp_py.inspect(vae)
    assert info.role == "vae" and "q8_0" in info.weight_types
    assert typed.parts["clip_l"].read_bytes()[:4096] == parts.parts["clip_l"].read_bytes()[:4096]
    assert not list(tmp_path.glob("*.tmp.*")) and not list(tmp_path.glob("*.partial"))


def test_split_refuses_what_it_cannot_split(flux_parts, sd1_checkpoint, tmp_path):
    with pytest.raises(ValueError, match="all-in-one SD1 or SDXL checkpoint; this file is Flux.1 diffusion_model"):
        sdcpp_py.split(flux_parts["diffusion_model"], tmp_path)
    with pytest.raises(ValueError, match=r"weight_types: SD1 has no part 'clip_g'"):
        sdcpp_py.split(sd1_checkpoint, tmp_path, weight_types={"clip_g": "q8_0"})
    with pytest.raises(ValueError, match=r"weight_types\['vae'\]"):
        sdcpp_py.split(sd1_checkpoint, tmp_path, weight_types={"vae": "q9_9"})
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        sdcpp_py.split(tmp_path / "missing.safetensors", tmp_path)


def test_split_command_line(sd1_checkpoint, parts, tmp_path):
    result = subprocess.run([sys.executable, "-m", "sdcpp_py.cli", "split", str(sd1_checkpoint),
                             str(parts.parts["vae"].parent), "--models", "3"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "clip_l: " in result.stdout and "(already there: shared)" in result.stdout
    assert "3 such models sharing these encoders and VAE save" in result.stdout
    bad = subprocess.run([sys.executable, "-m", "sdcpp_py.cli", "split", str(sd1_checkpoint), str(tmp_path),
                          "--type", "vae"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("sdcpp: error: --type: expected PART=TYPE")


@pytest.mark.slow
def test_sdxl_split_parts_give_the_checkpoints_pixels(tmp_path, synthetic_dir):
    """SDXL: two text encoders, the second renamed from OpenCLIP to the names a separate clip_g file has."""
    from sdcpp_py.testing import sd

    checkpoint = sd.sdxl_checkpoint(synthetic_dir / "sdxl")
    result = sdcpp_py.split(checkpoint, tmp_path)
    assert set(result.parts) == {"diffusion_model", "clip_l", "clip_g", "vae"}
    found = {name: sdcpp_py.inspect(path).architecture for name, path in result.parts.items()}
    assert found == {"diffusion_model": "SDXL", "clip_l": "CLIP-L", "clip_g": "CLIP-G", "vae": "SD VAE"}
    with sdcpp_py.Context(model=checkpoint, n_threads=2) as whole:
        expected = whole.txt2img("a lighthouse", **SMALL)[0]
    # The core scales a checkpoint's own SDXL VAE (fp16 overflow guard) but not a separate VAE file: options
    # carries force_sdxl_vae_conv_scale=True (without it 3% of the pixels are one level off).
    assert result.options == {"force_sdxl_vae_conv_scale": True}
    with sdcpp_py.Context(**result.parts, **result.options, n_threads=2) as split_ctx:
        got = split_ctx.txt2img("a lighthouse", **SMALL)[0]
    assert expected.std() > 1.0
    np.testing.assert_array_equal(got, expected)
