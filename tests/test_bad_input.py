"""Malformed component files raise a clear Python exception and never take the interpreter down.

Every load runs in a child process, so a crash in the core is reported as a test failure (with the
signal) instead of killing pytest.
"""

import json
import logging
import os
import random
import re
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sdcpp_py
from sdcpp_py import _formats, _headers

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def split_safetensors(path: Path):
    raw = path.read_bytes()
    size = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + size]), raw[8 + size:]


def write_safetensors_header(path: Path, header: dict, data: bytes) -> Path:
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    return path


@pytest.fixture(scope="module")
def gguf_dit(flux_gguf_dit):
    return flux_gguf_dit


def make_cases(tmp: Path, dit: Path, gguf: Path) -> dict:
    header, data = split_safetensors(dit)
    first = next(name for name in header if name != "__metadata__")
    cases = {}

    def variant(name, change):
        h = json.loads(json.dumps(header))
        change(h)
        cases[name] = write_safetensors_header(tmp / f"{name}.safetensors", h, data)

    variant("shape_size_mismatch", lambda h: h[first].__setitem__("shape", [7] + h[first]["shape"][1:]))
    variant("offset_past_end", lambda h: h[first].__setitem__("data_offsets", [10**12, 10**12 + 4]))
    variant("unknown_dtype", lambda h: h[first].__setitem__("dtype", "Q9"))
    variant("negative_dim", lambda h: h[first].__setitem__("shape", [-1, 4]))
    variant("reversed_offsets", lambda h: h[first].__setitem__("data_offsets", [8, 4]))
    variant("tensor_not_object", lambda h: h.__setitem__(first, 5))
    variant("no_tensors", lambda h: [h.pop(k) for k in list(h) if k != "__metadata__"])
    cases["truncated_safetensors"] = tmp / "truncated.safetensors"
    cases["truncated_safetensors"].write_bytes(dit.read_bytes()[: dit.stat().st_size // 2])
    cases["header_size_too_big"] = tmp / "huge_header.safetensors"
    cases["header_size_too_big"].write_bytes(struct.pack("<Q", 2**63) + b"{}")
    cases["header_not_json"] = tmp / "not_json.safetensors"
    cases["header_not_json"].write_bytes(struct.pack("<Q", 10) + b"not json!!" + b"x" * 100)
    cases["random_bytes"] = tmp / "random.safetensors"
    cases["random_bytes"].write_bytes(random.Random(0).randbytes(4096))
    cases["empty_file"] = tmp / "empty.safetensors"
    cases["empty_file"].write_bytes(b"")
    raw = gguf.read_bytes()
    cases["truncated_gguf"] = tmp / "truncated.gguf"
    cases["truncated_gguf"].write_bytes(raw[: len(raw) // 2])
    cases["gguf_bad_version"] = tmp / "version.gguf"
    cases["gguf_bad_version"].write_bytes(b"GGUF" + struct.pack("<I", 99) + raw[8:])
    cases["gguf_random"] = tmp / "random.gguf"
    cases["gguf_random"].write_bytes(b"GGUF" + random.Random(1).randbytes(5000))
    cases["gguf_huge_counts"] = tmp / "counts.gguf"
    cases["gguf_huge_counts"].write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 2**62, 2**62))
    return cases


CHILD = textwrap.dedent("""
    import json, sys
    import sdcpp_py
    cases, parts = json.loads(sys.argv[1]), json.loads(sys.argv[2])
    for name, path in cases.items():
        print("CASE", name, flush=True)
        try:
            sdcpp_py.Context(diffusion_model=path, clip_l=parts["clip_l"], vae=parts["vae"], n_threads=1)
            print("RESULT", name, "loaded", flush=True)
        except Exception as exc:
            print("RESULT", name, type(exc).__name__, str(exc).replace("\\n", " | ")[:300], flush=True)
""")


def run_child(cases: dict, parts: dict) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps({k: str(v) for k, v in cases.items()}),
         json.dumps({k: str(v) for k, v in parts.items()})],
        capture_output=True, text=True, timeout=900)
    results = {}
    last_case = None
    for line in proc.stdout.splitlines():
        if line.startswith("CASE "):
            last_case = line.split()[1]
        elif line.startswith("RESULT "):
            _, name, rest = line.split(" ", 2)
            results[name] = rest
    assert proc.returncode == 0, (f"the interpreter died (exit {proc.returncode}) on case {last_case!r}:\n"
                                  f"{proc.stderr[-2000:]}")
    return results


def test_malformed_files_raise_named_errors_in_a_child_process(tmp_path, flux_parts, gguf_dit):
    cases = make_cases(tmp_path, flux_parts["diffusion_model"], gguf_dit)
    results = run_child(cases, flux_parts)
    assert set(results) == set(cases)
    for name, outcome in results.items():
        assert outcome.startswith("InvalidComponentError diffusion_model:"), f"{name}: {outcome}"


def test_every_case_is_caught_by_the_header_check_in_process(tmp_path, flux_parts, gguf_dit):
    for name, path in make_cases(tmp_path, flux_parts["diffusion_model"], gguf_dit).items():
        with pytest.raises(sdcpp_py.InvalidComponentError, match="vae"):
            _headers.check_component("vae", str(path))


def test_valid_synthetic_files_pass_the_check(flux_parts, gguf_dit, sd1_checkpoint):
    for name, path in {**flux_parts, "gguf": gguf_dit, "sd1": sd1_checkpoint}.items():
        header = _headers.check_component(name, str(path))
        assert header is not None and header.tensors, name
    assert _headers.read_header(str(gguf_dit)).format == "gguf"


def _write_mutant(source: Path, target: Path, rng: random.Random) -> Path:
    """Copy source to target with a few random bytes of its header changed, sometimes truncated."""
    raw = source.read_bytes()
    header_end = 8 + struct.unpack("<Q", raw[:8])[0] if source.suffix == ".safetensors" else min(len(raw), 4096)
    target.write_bytes(_mutate(raw, rng, header_end))
    return target


def _mutate(raw: bytes, rng: random.Random, header_end: int) -> bytes:
    data = bytearray(raw)
    for _ in range(rng.randint(1, 8)):
        position = rng.randrange(0, header_end)
        data[position] = rng.randrange(256)
    if rng.random() < 0.2:
        data = data[: rng.randrange(1, len(data))]
    return bytes(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1))
def test_fuzzed_headers_only_ever_raise_invalid_component(seed, flux_parts, gguf_dit, tmp_path):
    rng = random.Random(seed)
    source = rng.choice([flux_parts["diffusion_model"], gguf_dit])
    target = _write_mutant(source, tmp_path / f"fuzz{source.suffix}", rng)
    try:
        _headers.check_component("diffusion_model", str(target))
    except sdcpp_py.InvalidComponentError:
        pass


def test_fuzzed_headers_never_crash_the_core(tmp_path, flux_parts, gguf_dit):
    """Mutants that pass our header check go to the core in a child process: it must not die."""
    rng = random.Random(1234)
    cases, tried = {}, 0
    sources = [flux_parts["diffusion_model"], gguf_dit]
    while len(cases) < 12 and tried < 400:
        tried += 1
        source = sources[tried % 2]
        target = _write_mutant(source, tmp_path / f"mutant{tried}{source.suffix}", rng)
        try:
            _headers.check_component("diffusion_model", str(target))
        except sdcpp_py.InvalidComponentError:
            target.unlink()
            continue
        cases[f"mutant{tried}"] = target
    results = run_child(cases, flux_parts)
    print(f"fuzz: {tried} mutants, {len(cases)} passed the header check and went to the core, 0 crashes")
    assert set(results) == set(cases)


# -- textual-inversion embeddings: what the core would read out of bounds is refused ------------------------------

def _embedding_file(path: Path, tensors: dict) -> Path:
    """A safetensors file of zero-filled tensors {name: (dtype, shape)}, its data a sparse tail (fast when large)."""
    sizes = {"F32": 4, "F16": 2}
    header, offset = {}, 0
    for name, (dtype, shape) in tensors.items():
        nbytes = sizes[dtype] * int(np.prod(shape))
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    text = json.dumps(header).encode()
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(text)) + text)
        handle.truncate(8 + len(text) + offset)
    return path


def test_embeddings_the_core_cannot_read_are_refused(sd1_checkpoint, tmp_path):
    # Before: F16 vectors were read as F32 past their end (a white image, or heap corruption with a second
    # embedding), a third dimension failed a check on a loader thread (SIGABRT), and over 100 MiB the core's
    # ggml context aborted.
    cases = {
        "half": ({"emb_params": ("F16", (2, 768))}, "is F16; the core reads textual-inversion embeddings as F32"),
        "rank3": ({"emb_params": ("F32", (2, 2, 768))}, r"shape \[2, 2, 768\]"),
        "huge": ({"emb_params": ("F32", (40000, 768))}, "at most 100 MiB"),
    }
    for name, (tensors, message) in cases.items():
        path = _embedding_file(tmp_path / f"{name}.safetensors", tensors)
        with pytest.raises(ValueError, match=rf"embeddings\['{name}'\]: .*{message}"):
            sdcpp_py.Context(model=sd1_checkpoint, embeddings={name: path})


def test_an_f32_embedding_is_used(sd1_checkpoint, tmp_path):
    rng = np.random.default_rng(3)
    path = tmp_path / "shiny.safetensors"
    _formats.write_safetensors(path, {"emb_params": rng.standard_normal((2, 768)).astype(np.float32)})
    call = dict(width=64, height=64, steps=1, seed=4)
    with sdcpp_py.Context(model=sd1_checkpoint, embeddings=[path], n_threads=2) as ctx:
        with_embedding = ctx.txt2img("a shiny cube", **call)[0]
    with sdcpp_py.Context(model=sd1_checkpoint, n_threads=2) as ctx:
        as_words = ctx.txt2img("a shiny cube", **call)[0]  # "shiny" as a word
    assert np.abs(with_embedding.astype(int) - as_words.astype(int)).mean() > 0.5


# -- LoRA files: what the core's LoRA code would fail inside (disabling the Context) or read wrongly -----------------

def test_lora_files_the_core_would_fail_on_are_refused_before_the_call(flux_parts, tmp_path):
    # Each failed a check inside the core at the call (the Context then refused every later call) or read
    # uninitialised memory (an integer alpha).
    from sdcpp_py.testing import extras
    layer = "diffusion_model.double_blocks.0.img_mlp.0"
    half = lambda *shape: np.full(shape, 0.1, np.float16)  # noqa: E731
    good = {f"{layer}.lora_down.weight": half(4, 128), f"{layer}.lora_up.weight": half(512, 4),
            f"{layer}.alpha": np.array(4.0, np.float32)}
    cases = {
        "ranks": ({f"{layer}.lora_up.weight": half(512, 8)}, "do not share a rank above 0"),
        "rank0": ({f"{layer}.lora_down.weight": half(0, 128), f"{layer}.lora_up.weight": half(512, 0)},
                  "do not share a rank above 0"),
        "up1d": ({f"{layer}.lora_up.weight": half(512)}, "LoRA matrices are 2-D"),
        "int-matrix": ({f"{layer}.lora_up.weight": np.ones((512, 4), np.int32)}, "stored as I32"),
        "empty-alpha": ({f"{layer}.alpha": np.zeros(0, np.float32)}, "holds no value"),
        "nan-alpha": ({f"{layer}.alpha": np.array(np.nan, np.float32)}, "not a finite number"),
    }
    fine = extras.flux_lora(flux_parts["diffusion_model"], tmp_path / "fine.safetensors")
    with sdcpp_py.Context(**flux_parts, n_threads=2) as ctx:
        for name, (change, message) in cases.items():
            path = _formats.write_safetensors(tmp_path / f"{name}.safetensors", {**good, **change})
            with pytest.raises(ValueError, match=rf"loras\[0\]\.path: .*{message}"):
                ctx.txt2img("a cube", loras=[path], width=64, height=64, steps=1)
        assert ctx.usable
        call = dict(width=64, height=64, steps=1, seed=2)
        # One integer alpha is a number (diffusers' kohya export writes int64 ones): read as the float one.
        by_alpha = [ctx.txt2img("a cube", loras=[_formats.write_safetensors(
            tmp_path / f"alpha-{alpha.dtype}.safetensors", {**good, f"{layer}.alpha": alpha})], **call)[0]
            for alpha in (np.array(4.0, np.float32), np.array(4, np.int32), np.array(4, np.int64))]
        np.testing.assert_array_equal(by_alpha[1], by_alpha[0])
        np.testing.assert_array_equal(by_alpha[2], by_alpha[0])
        # The same file twice adds its multipliers (the core kept the last one only).
        twice = ctx.txt2img("a cube", loras=[sdcpp_py.Lora(fine, 0.5), sdcpp_py.Lora(fine, 0.5)], **call)[0]
        once = ctx.txt2img("a cube", loras=[sdcpp_py.Lora(fine, 1.0)], **call)[0]
        half_once = ctx.txt2img("a cube", loras=[sdcpp_py.Lora(fine, 0.5)], **call)[0]
    np.testing.assert_array_equal(twice, once)
    assert not np.array_equal(once, half_once)


def test_a_loha_tucker_kernel_without_its_matrix_is_refused_in_a_child_process(flux_parts, tmp_path):
    # Found by `tools/fuzz.py loras`: the core transposes the kernel's w1_a matrix without looking for it, a null
    # pointer (SIGSEGV) in the LoRA check and in applying the LoRA alike. In a child: the bug killed the process.
    layer = "lora_unet_double_blocks_0_img_attn_qkv"
    lora = _formats.write_safetensors(tmp_path / "tucker-alone.safetensors", {
        f"{layer}.hada_t1": np.full((4, 4, 1, 1), 0.1, np.float16),
        f"{layer}.hada_w1_b": np.full((4, 128), 0.1, np.float16)})
    child = textwrap.dedent("""
        import json, sys
        import sdcpp_py
        parts, lora = json.loads(sys.argv[1]), sys.argv[2]
        with sdcpp_py.Context(**parts, n_threads=1) as ctx:
            try:
                ctx.txt2img("a cube", loras=[lora], width=32, height=32, steps=1)
                print("RESULT generated")
            except Exception as exc:
                print("RESULT", type(exc).__name__, exc)
            ctx.txt2img("a cube", width=32, height=32, steps=1)
            print("PLAIN ok")
    """)
    proc = subprocess.run([sys.executable, "-c", child, json.dumps({k: str(v) for k, v in flux_parts.items()}),
                           str(lora)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"the interpreter died (exit {proc.returncode}):\n{proc.stderr[-2000:]}"
    assert re.search(r"RESULT InvalidComponentError loras\[0\]\.path: .*LoHa Tucker kernel without its "
                     r"'lora_unet_double_blocks_0_img_attn_qkv\.hada_w1_a'", proc.stdout), proc.stdout
    assert "PLAIN ok" in proc.stdout


@pytest.mark.parametrize("mode", ["at_runtime", "immediately"])
def test_loras_that_do_not_fit_the_model_are_refused_and_the_context_kept(flux_parts, tmp_path, mode, caplog):
    # Patch 0024. Each failed one of ggml's checks inside the core half way through the call (merging, or building
    # the sampling graph), after which the Context refused every later call; a LoRA for another model was
    # applied as nothing, silently.
    layer = "diffusion_model.double_blocks.0.img_mlp.0"  # the model's 512x128 (out x in) matrix
    half = lambda *shape: np.full(shape, 0.1, np.float16)  # noqa: E731
    good = {f"{layer}.lora_down.weight": half(4, 128), f"{layer}.lora_up.weight": half(512, 4),
            f"{layer}.alpha": np.array(4.0, np.float32)}
    cases = {
        "narrow-input": ({**good, f"{layer}.lora_down.weight": half(4, 64)}, r"img_mlp\.0\.weight \(512x128\)"),
        "diff-size": ({f"{layer}.diff": half(10, 10)}, r"img_mlp\.0\.weight \(512x128\)"),
        "other-model": ({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": half(4, 320),
                         "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": half(320, 4)},
                        "is for no weight of this model: none of its 2 LoRA tensors names one"),
    }
    call = dict(width=64, height=64, steps=1, seed=2)
    with sdcpp_py.Context(**flux_parts, n_threads=2, lora_apply_mode=mode) as ctx:
        plain = ctx.txt2img("a cube", **call)[0]
        for name, (tensors, message) in cases.items():
            path = _formats.write_safetensors(tmp_path / f"{name}.safetensors", tensors)
            with pytest.raises(ValueError, match=rf"loras: the LoRA file '.*{name}\.safetensors' .*{message}"):
                ctx.txt2img("a cube", loras=[path], **call)
            assert ctx.usable
        fitting = _formats.write_safetensors(tmp_path / "fitting.safetensors", good)
        with_lora = ctx.txt2img("a cube", loras=[fitting], **call)[0]
        # Tensors for a part this model lacks beside ones it has: applied, with a warning naming one of them.
        partial = _formats.write_safetensors(tmp_path / "partial.safetensors", {
            **good, "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": half(4, 1280),
            "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": half(5120, 4)})
        with caplog.at_level(logging.WARNING, logger="sdcpp_py"):
            np.testing.assert_array_equal(ctx.txt2img("a cube", loras=[partial], **call)[0], with_lora)
        assert re.search(r"only 3 of the 5 LoRA tensors of '.*partial\.safetensors' are applied", caplog.text)
        # A refused LoRA beside a fitting one: neither is applied (with merged LoRAs the fitting one would have
        # been merged before the other failed).
        with pytest.raises(ValueError, match="narrow-input"):
            ctx.txt2img("a cube", loras=[fitting, tmp_path / "narrow-input.safetensors"], **call)
        np.testing.assert_array_equal(ctx.txt2img("a cube", loras=[fitting], **call)[0], with_lora)
        if mode == "at_runtime":  # merging and taking out again rounds f16 weights
            np.testing.assert_array_equal(ctx.txt2img("a cube", **call)[0], plain)
    assert not np.array_equal(with_lora, plain)


def test_convolution_loras_are_checked_on_the_run_time_path(sd1_checkpoint, tmp_path):
    # Patch 0024 on a UNet's convolutions at run time: LoCon pairs (3x3 down, 1x1 up), a 1x1 pair and a whole
    # .diff are applied, not refused; a pair made for 160 input channels is refused naming the layer.
    rng = np.random.default_rng(0)
    tensors = {}
    for layer, k in (("input_blocks.1.0.in_layers.2", 3), ("input_blocks.1.1.proj_in", 1)):
        tensors[f"diffusion_model.{layer}.lora_down.weight"] = (rng.standard_normal((4, 320, k, k)) * 0.5).astype(
            np.float16)
        tensors[f"diffusion_model.{layer}.lora_up.weight"] = (rng.standard_normal((320, 4, 1, 1)) * 0.5).astype(
            np.float16)
        tensors[f"diffusion_model.{layer}.alpha"] = np.array(4.0, np.float32)
    tensors["diffusion_model.input_blocks.2.0.in_layers.2.diff"] = (
        rng.standard_normal((320, 320, 3, 3)) * 0.2).astype(np.float16)
    fitting = _formats.write_safetensors(tmp_path / "locon.safetensors", tensors)
    narrow = _formats.write_safetensors(tmp_path / "narrow.safetensors", {
        **tensors, "diffusion_model.input_blocks.1.0.in_layers.2.lora_down.weight": np.full((4, 160, 3, 3), 0.1,
                                                                                             np.float16)})
    call = dict(width=64, height=64, steps=1, cfg_scale=1.0, seed=1)
    with sdcpp_py.Context(model=sd1_checkpoint, n_threads=2, lora_apply_mode="at_runtime") as ctx:
        plain = ctx.txt2img("a cube", **call)[0]
        with pytest.raises(ValueError, match=r"narrow\.safetensors' does not fit this model: its tensors for the "
                                             r"model's model\.diffusion_model\.input_blocks\.1\.0\.in_layers\.2"
                                             r"\.weight \(320x320x3x3\) do not fit it"):
            ctx.txt2img("a cube", loras=[narrow], **call)
        with_lora = ctx.txt2img("a cube", loras=[fitting], **call)[0]
    assert np.abs(with_lora.astype(int) - plain).mean() > 1.0


def test_a_refused_lora_does_not_count_as_the_one_generation_of_a_freeing_context(flux_parts, tmp_path):
    # A Context with free_params_immediately=True allows one generation; a call refused before it touched the
    # weights is not that generation.
    other = _formats.write_safetensors(tmp_path / "other.safetensors", {
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": np.full((4, 320), 0.1, np.float16),
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": np.full((320, 4), 0.1, np.float16)})
    call = dict(width=64, height=64, steps=1, seed=2)
    with sdcpp_py.Context(**flux_parts, n_threads=2, free_params_immediately=True) as ctx:
        with pytest.raises(ValueError, match="is for no weight of this model"):
            ctx.txt2img("a cube", loras=[other], **call)
        assert ctx.txt2img("a cube", **call)[0].shape == (64, 64, 3)


def test_a_merged_lora_file_that_changed_is_not_taken_out_as_its_new_contents(flux_parts, tmp_path):
    # Patch 0024. Merged LoRAs are taken out of the weights by reading their files again: a file rewritten in
    # between (a LoRA trained further, under the same name) left every later image of the Context wrong.
    from sdcpp_py.testing import extras
    lora = extras.flux_lora(flux_parts["diffusion_model"], tmp_path / "style.safetensors")
    call = dict(width=64, height=64, steps=1, seed=2)
    with sdcpp_py.Context(**flux_parts, n_threads=2, lora_apply_mode="immediately") as ctx:
        merged = ctx.txt2img("a cube", loras=[lora], **call)[0]
        extras.flux_lora(flux_parts["diffusion_model"], lora, seed=5)  # same size, new values
        os.utime(lora, ns=(0, 0))  # a different time even where the file system's clock is coarse
        for loras in ([], [sdcpp_py.Lora(lora, 0.5)]):
            with pytest.raises(ValueError, match=r"style\.safetensors' changed or went away since it was merged .* "
                                                 r"ask for it at multiplier 1 as before"):
                ctx.txt2img("a cube", loras=loras, **call)
        assert ctx.usable
        np.testing.assert_array_equal(ctx.txt2img("a cube", loras=[lora], **call)[0], merged)


def test_a_lora_first_asked_for_at_multiplier_0_merges_later(flux_parts, tmp_path):
    # Found by `tools/fuzz.py loras`: with merged LoRAs a first call with a LoRA at multiplier 0 (nothing merged,
    # so no file stamp kept) made every later call asking for it refused as a file that "changed or went away".
    from sdcpp_py.testing import extras
    lora = extras.flux_lora(flux_parts["diffusion_model"], tmp_path / "style.safetensors")
    call = dict(width=64, height=64, steps=1, seed=2)
    with sdcpp_py.Context(**flux_parts, n_threads=2, lora_apply_mode="immediately") as ctx:
        off = ctx.txt2img("a cube", loras=[sdcpp_py.Lora(lora, 0.0)], **call)[0]
        on = ctx.txt2img("a cube", loras=[lora], **call)[0]
    with sdcpp_py.Context(**flux_parts, n_threads=2, lora_apply_mode="immediately") as fresh:
        reference = fresh.txt2img("a cube", loras=[lora], **call)[0]
    np.testing.assert_array_equal(on, reference)  # merged into weights the call at 0 left as they were
    assert not np.array_equal(on, off)


def test_lora_multipliers_past_100_are_refused(flux_parts, tmp_path):
    # Merged into f16 weights (lora_apply_mode "immediately", or "auto" on f16 models) 1e30 overflowed them, and
    # every later image of the Context came out white.
    from sdcpp_py.testing import extras
    lora = extras.flux_lora(flux_parts["diffusion_model"], tmp_path / "style.safetensors")
    with sdcpp_py.Context(**flux_parts, n_threads=2, lora_apply_mode="immediately") as ctx:
        for loras in ([sdcpp_py.Lora(lora, 1e30)], [sdcpp_py.Lora(lora, -101)], [sdcpp_py.Lora(lora, 60)] * 2):
            with pytest.raises(ValueError, match=r"loras\[\d\]: a LoRA multiplier of .* the largest is 100"):
                ctx.txt2img("a cube", loras=loras, width=64, height=64, steps=1)
