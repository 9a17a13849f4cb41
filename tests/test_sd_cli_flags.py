"""`sdcpp` takes sd-cli's command line: every flag of the vendored sd-cli's --help (or a refusal with its reason),
every sd-cli command of the pinned core's docs/*.md, and a handful of those end to end on synthetic parts with
the pixels (or bytes) of sd-cli itself."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sdcpp_py import cli
from sdcpp_py._sdcli import REFUSED, plan
from sdcpp_py.testing import extras

DOCS = Path(__file__).resolve().parent.parent / "vendor" / "stable-diffusion.cpp" / "docs"
_SD_CLI = re.compile(r"(^|[\s/\\.])sd-cli(\.exe)?(\s|$)")


def doc_commands() -> list:
    """(file, argv after sd-cli) of every sd-cli command in the docs, continuation lines joined; commented
    ones (``# ./bin/sd-cli ...``) too."""
    commands = []
    for path in sorted(DOCS.glob("*.md")):
        lines = path.read_text(encoding="utf-8").splitlines()
        index = 0
        while index < len(lines):
            text = lines[index]
            if _SD_CLI.search(text):
                while text.rstrip().endswith("\\") and index + 1 < len(lines):
                    index += 1
                    text = text.rstrip()[:-1] + " " + lines[index]
                tokens = shlex.split(text.replace("\\", "/"))  # Windows paths: separators do not matter here
                start = next(i for i, token in enumerate(tokens) if re.search(r"sd-cli(\.exe)?$", token))
                commands.append((path.name, tokens[start + 1:]))
            index += 1
    return commands


def sdcpp(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sdcpp_py.cli", *args], capture_output=True, text=True,
                          timeout=timeout, check=False)


def test_every_flag_of_sd_clis_help_is_taken_or_refused_with_a_reason(sd_cli):
    help_text = subprocess.run([str(sd_cli), "--help"], capture_output=True, text=True, check=False).stdout
    flags = set(re.findall(r"^\s+(?:-\w, )?(--[\w-]+)", help_text, re.MULTILINE)) - {"--help"}
    assert len(flags) >= 120, help_text  # the pinned sd-cli lists 126 long flags
    parser = cli.build_parser()
    generate = parser._subparsers._group_actions[0].choices["generate"]
    ours = {flag for action in generate._actions for flag in action.option_strings}
    assert sorted(flags - ours) == []
    assert set(REFUSED) <= flags


def test_the_doc_commands_are_found():
    commands = doc_commands()
    assert len(commands) >= 51, commands  # the pinned core's docs hold 51 runnable ones and 9 more variants
    assert {"flux.md", "wan.md", "sd.md", "photo_maker.md", "caching.md"} <= {name for name, _ in commands}


@pytest.mark.parametrize("name, argv", doc_commands(), ids=lambda value: value if isinstance(value, str) else "")
def test_every_sd_cli_command_of_the_docs_parses_and_plans(name, argv):
    args = cli.build_parser().parse_args(cli._sd_cli_argv(argv))
    result = plan(args)
    assert result.mode in ("img_gen", "vid_gen", "convert", "upscale")
    if result.mode in ("img_gen", "vid_gen"):
        assert result.prompt and any(result.context.get(slot) for slot in ("model", "diffusion_model"))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["-p", "x", "--video-frames", "3", "-m", "m.safetensors"], "--video-frames: not used in img_gen mode"),
        (["-m", "m.safetensors"], "-p/--prompt is required in img_gen mode"),
        (["-p", "x", "-m", "m", "--hires-scale", "2"], "need --hires"),
        (["-p", "x", "-m", "m", "--cache-option", "threshold=1"], "need --cache-mode"),
        (["-p", "x", "-m", "m", "--cache-mode", "ucache", "--cache-option", "bogus=1"], "unknown key 'bogus'"),
        (["-M", "metadata", "--image", "x.png", "--metadata-raw"], "--metadata-raw: not supported"),
    ],
)
def test_what_cannot_be_done_is_a_clear_error(argv, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        plan(cli.build_parser().parse_args(cli._sd_cli_argv(argv)))


def test_cache_options_map_to_the_cores_fields_by_mode():
    def cache(*argv):
        return plan(cli.build_parser().parse_args(cli._sd_cli_argv(["-p", "x", "-m", "m", *argv]))).cache

    assert cache("--cache-mode", "ucache", "--cache-option", "threshold=1.5,reset=0") == {
        "mode": "ucache", "reuse_threshold": 1.5, "reset_error_on_compute": False}
    assert cache("--cache-mode", "dbcache", "--cache-option", "threshold=0.2,warmup=3,Fn=2",
                 "--scm-policy", "static") == {"mode": "dbcache", "residual_diff_threshold": 0.2,
                                               "max_warmup_steps": 3, "Fn_compute_blocks": 2,
                                               "scm_policy_dynamic": False}
    assert cache("--cache-mode", "spectrum", "--cache-option", "warmup=4")["spectrum_warmup_steps"] == 4


# -- end to end: the docs' commands with synthetic parts in place of the real files, at a small size --------
SMALL = ["-W", "64", "-H", "64", "--steps", "2", "-t", "2", "-s", "5"]


def _doc_command(name: str, contains: str) -> list:
    [argv] = [argv for file, argv in doc_commands() if file == name and contains in " ".join(argv)]
    return argv


def _with(argv: list, replace: dict, drop: tuple = ()) -> list:
    """The command with the values of ``replace``'s flags swapped and ``drop``'s flags (and values) left out."""
    result, index = [], 0
    while index < len(argv):
        token = argv[index]
        if token in drop:
            index += 2
            continue
        result.append(token)
        if token in replace:
            result.append(str(replace[token]))
            index += 1
        index += 1
    return result


def _both(sd_cli, argv: list, tmp_path: Path) -> tuple:
    """(sd-cli's image, sdcpp's image) for the same command line, each writing its own -o."""
    theirs, ours = tmp_path / "sd-cli.png", tmp_path / "sdcpp.png"
    result = subprocess.run([str(sd_cli), *argv, "-o", str(theirs)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    result = sdcpp(*argv, "-o", str(ours))
    assert result.returncode == 0, result.stderr
    with Image.open(theirs) as a, Image.open(ours) as b:
        return np.asarray(a.convert("RGB")), np.asarray(b.convert("RGB"))


@pytest.mark.parametrize("doc, contains", [("sd.md", "sd-v1-4.ckpt -p a lovely cat"), ("caching.md", "ucache"),
                                            ("sd.md", "cat with blue eyes -i")])
def test_an_all_in_one_doc_command_gives_sd_clis_pixels(sd_cli, sd1_checkpoint, tmp_path, doc, contains):
    init = tmp_path / "init.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(init)
    argv = _with(_doc_command(doc, contains), {"-m": sd1_checkpoint, "-i": init}, drop=("-o",)) + SMALL
    theirs, ours = _both(sd_cli, argv, tmp_path)
    assert ours.shape == (64, 64, 3) and ours.std() > 1.0
    np.testing.assert_array_equal(ours, theirs)


def test_the_taesd_doc_command_gives_sd_clis_pixels(sd_cli, sd1_checkpoint, synthetic_dir, tmp_path):
    taesd = extras.taesd(synthetic_dir / "taesd-sd1", latent_channels=4)
    argv = _with(_doc_command("taesd.md", "--taesd"), {"-m": sd1_checkpoint, "--taesd": taesd}) + SMALL
    theirs, ours = _both(sd_cli, argv, tmp_path)
    np.testing.assert_array_equal(ours, theirs)


def test_the_esrgan_doc_command_upscales_as_sd_cli(sd_cli, sd1_checkpoint, esrgan, tmp_path):
    argv = _with(_doc_command("esrgan.md", "--upscale-model"), {"-m": sd1_checkpoint, "--upscale-model": esrgan})
    theirs, ours = _both(sd_cli, argv + SMALL, tmp_path)
    assert ours.shape == (128, 128, 3)
    np.testing.assert_array_equal(ours, theirs)


def test_a_flux_doc_command_gives_sd_clis_pixels(sd_cli, flux_parts, tmp_path):
    argv = _doc_command("flux.md", "flux1-schnell")
    argv = _with(argv, {"--diffusion-model": flux_parts["diffusion_model"], "--vae": flux_parts["vae"],
                        "--clip_l": flux_parts["clip_l"]}, drop=("--t5xxl",))
    theirs, ours = _both(sd_cli, argv + SMALL, tmp_path)
    np.testing.assert_array_equal(ours, theirs)


def _gguf_tensors(path) -> dict:
    """Each tensor's (type, shape, data bytes) by name, and the metadata: a GGUF's content, whatever the order
    of its tensors."""
    from sdcpp_py._formats import read_header

    header = read_header(str(path))
    data = path.read_bytes()
    tensors = {name: (info.dtype, info.shape, data[info.offset:info.offset + info.nbytes])
               for name, info in header.tensors.items()}
    return {"tensors": tensors, "metadata": header.metadata}


def test_the_convert_doc_command_writes_sd_clis_tensors(sd_cli, flux_parts, tmp_path):
    argv = _with(_doc_command("quantization_and_gguf.md", "-M convert"), {"-m": flux_parts["diffusion_model"]},
                 drop=("-o",))
    theirs, ours = tmp_path / "sd-cli.gguf", tmp_path / "sdcpp.gguf"
    result = subprocess.run([str(sd_cli), *argv, "-o", str(theirs)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    result = sdcpp(*argv, "-o", str(ours))
    assert result.returncode == 0, result.stderr
    # The same tensors, types and bytes. Not the same file: the core's convert adds tensors to the GGUF as its
    # loader threads finish them, so their order (and offsets) differ between two runs of sd-cli itself.
    assert ours.stat().st_size == theirs.stat().st_size
    assert _gguf_tensors(ours) == _gguf_tensors(theirs)


def test_the_flux_lora_doc_command_gives_sd_clis_pixels(sd_cli, flux_parts, tmp_path):
    """sd-cli's LoRA defaults: tags resolved in --lora-model-dir, applied in its "auto" mode (the API's default,
    at_runtime, would round differently)."""
    loras = tmp_path / "loras"
    loras.mkdir()
    extras.flux_lora(flux_parts["diffusion_model"], loras / "realism_lora_comfy_converted.safetensors")
    argv = _with(_doc_command("flux.md", "<lora:"), {"--diffusion-model": flux_parts["diffusion_model"],
                                                     "--vae": flux_parts["vae"], "--clip_l": flux_parts["clip_l"],
                                                     "--lora-model-dir": loras}, drop=("--t5xxl",))
    theirs, ours = _both(sd_cli, argv + SMALL, tmp_path)
    np.testing.assert_array_equal(ours, theirs)
    without = sdcpp(*_with(argv, {}, drop=("--lora-model-dir",)), *SMALL, "-o", str(tmp_path / "plain.png"))
    assert without.returncode == 2 and "realism_lora_comfy_converted" in without.stderr  # "." has no such file


def _plan(*argv):
    return plan(cli.build_parser().parse_args(cli._sd_cli_argv(list(argv))))


def test_sd_clis_own_defaults_and_value_forms():
    result = _plan("-M", "vid_gen", "--diffusion-model", "w", "-p", "x", "--clip-skip", "-2", "--skip-layers",
                   "[7 8 9]")
    assert result.call["frames"] == 1 and result.call["clip_skip"] == -1 and result.call["skip_layers"] == [7, 8, 9]
    assert result.context["lora_apply_mode"] == "auto" and result.context["lora_dir"] == "."
    assert _plan("-m", "m", "-p", "x", "--lora-apply-mode", "at_runtime").context["lora_apply_mode"] == "at_runtime"
    assert _plan("-m", "m", "-p", "x", "--hires", "--hires-upscaler", "None").hires is None


@pytest.mark.parametrize(
    "argv, message",
    [
        (["-M", "upscale", "--upscale-model", "e", "-i", "x.png", "--steps", "30"], "--steps: not used in upscale"),
        (["-M", "convert", "-m", "m", "--cfg-scale", "2"], "--cfg-scale: not used in convert mode"),
    ],
)
def test_flags_a_mode_does_not_use_are_refused(argv, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        _plan(*argv)


def test_usage_errors_are_one_line_and_abbreviations_are_refused():
    for argv in (["-m", "m", "-p", "x", "--preview"], ["-m", "m", "-p", "x", "--cfg", "3"]):
        result = sdcpp(*argv)
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_convert_writes_output_gguf_by_default(flux_parts, tmp_path):
    result = subprocess.run([sys.executable, "-m", "sdcpp_py.cli", "-M", "convert", "-m", str(flux_parts["vae"]),
                             "--type", "f16"], capture_output=True, text=True, cwd=tmp_path, check=False)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "output.gguf").read_bytes()[:4] == b"GGUF"


@pytest.mark.skipif(not hasattr(__import__("os"), "mkfifo"), reason="FIFOs are POSIX")
def test_a_fifo_as_preview_path_or_metadata_image_is_refused_not_waited_on(tmp_path):
    import os

    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    for argv in (["-m", "/no/such.safetensors", "-p", "x", "--preview", "proj", "--preview-path", str(fifo)],
                 ["-M", "metadata", "--image", str(fifo)]):
        result = sdcpp(*argv, timeout=60)
        assert result.returncode == 2 and "not a regular file" in result.stderr, result.stderr
