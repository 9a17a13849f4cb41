"""Misuse is a clear Python exception naming the argument, raised before the native context is touched
(issue 17): TypeError for a wrong type, ValueError for a bad value.

Anything that could block (a FIFO opened, a prompt reaching outside lora_dir) runs in a child process with a
deadline, so a regression fails the test instead of hanging the run.
"""

import json
import math
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import sdcpp_py
from sdcpp_py import _core
from sdcpp_py._checks import MAX_SEED, MAX_SIDE
from sdcpp_py._model import ModelFacts
from sdcpp_py.testing import extras

SMALL = dict(width=64, height=64, steps=1, cfg_scale=1.0)
LIMIT = _core.max_prompt_bytes()
NON_UTF8 = b"dit-\xff.safetensors"  # a legal Linux file name that is not UTF-8
# Windows and APFS (macOS) refuse such names; FIFOs are POSIX.
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="non-UTF-8 file names and FIFOs")


@pytest.fixture(scope="module")
def parts(flux_parts) -> dict:
    """The files of this module's `ctx`: the tiny Flux.1 parts."""
    return flux_parts


@pytest.fixture(scope="module")
def lora(flux_parts, tmp_path_factory):
    return extras.flux_lora(flux_parts["diffusion_model"], tmp_path_factory.mktemp("lora") / "style.safetensors")


# -- item 3: prompt length ------------------------------------------------------------------------------
@pytest.mark.parametrize("argument", ["prompt", "negative_prompt"])
@pytest.mark.parametrize("method", ["generate", "generate_video"])
def test_prompts_over_the_limit_name_the_argument_and_the_limit(ctx, argument, method):
    assert LIMIT == 100_000
    text = "é" * (LIMIT // 2 + 1)  # 2 bytes of UTF-8 each: over the limit in bytes, under it in characters
    args = {"prompt": "a red cube", argument: text}
    with pytest.raises(ValueError, match=rf"^{argument} is {LIMIT + 2} bytes of UTF-8; the limit is {LIMIT}$"):
        getattr(ctx, method)(args.pop("prompt"), **args, **SMALL)


def test_a_prompt_at_the_limit_is_accepted(ctx):
    assert ctx.txt2img("a" * LIMIT, **SMALL)[0].shape == (64, 64, 3)


# -- item 4: tensor_type_rules --------------------------------------------------------------------------
BAD_RULES = [
    ("attn", r"'attn' is not pattern=type"),
    (r"blocks\.\d{1,3}=q8_0", r"'blocks\\\\.\\\\d\{1' is not pattern=type .*',' separates rules"),
    ("attn=q9_9", r"'attn=q9_9' names the unknown type 'q9_9'"),
    ("attn= q8_0", r"'attn= q8_0' names the unknown type ' q8_0'"),
    ("img_in=q8_0,(=q4_0", r"'\(' is not a regular expression the core can compile"),
    ("(a+)+=q8_0", r"'\(a\+\)\+': a repeated group"),
    ("(a|aa)*=q8_0", r"'\(a\|aa\)\*': a repeated group"),
    ("(?:blocks\\.\\d+)*x=q8_0", r"a repeated group"),
    ("a**=q8_0", r"'a\*\*': a quantified group or a quantified quantifier"),
    ("[](a+)+]=q8_0", r"a quantified group or a quantified quantifier"),
    ("x" * 4097, r"is 4097 characters; the limit is 4096"),
    ("a\0=q8_0", r"NUL"),
]


@pytest.mark.parametrize("rules, message", BAD_RULES)
def test_bad_tensor_type_rules_are_refused_by_context(flux_parts, rules, message):
    with pytest.raises(ValueError, match="^tensor_type_rules") as info:
        sdcpp_py.Context(**flux_parts, n_threads=2, tensor_type_rules=rules)
    assert info.match(message)


@pytest.mark.parametrize("rules, message", BAD_RULES)
def test_bad_tensor_type_rules_are_refused_by_convert(flux_parts, tmp_path, rules, message):
    target = tmp_path / "out.gguf"
    with pytest.raises(ValueError, match="^tensor_type_rules") as info:
        sdcpp_py.convert(flux_parts["diffusion_model"], target, tensor_type_rules=rules)
    assert info.match(message)
    assert not target.exists()


def test_tensor_type_rules_of_the_wrong_type_are_a_type_error(flux_parts, tmp_path):
    with pytest.raises(TypeError, match="tensor_type_rules must be a str"):
        sdcpp_py.Context(**flux_parts, tensor_type_rules=["attn=q8_0"])
    with pytest.raises(TypeError, match="tensor_type_rules must be a str"):
        sdcpp_py.convert(flux_parts["diffusion_model"], tmp_path / "x.gguf", tensor_type_rules=5)


def test_good_tensor_type_rules_still_convert(flux_parts, tmp_path):
    target = tmp_path / "out.gguf"
    sdcpp_py.convert(flux_parts["diffusion_model"], target,
                     tensor_type_rules=r"double_blocks\.\d+\.img_mlp=q8_0,,(blocks\.\d+\.)?txt=f16")
    assert "q8_0" in {t.lower() for t in sdcpp_py.inspect(target).weight_types}


# -- item 8: non-finite floats --------------------------------------------------------------------------
@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan, np.float32("inf"), 1e39])
@pytest.mark.parametrize("argument", ["cfg_scale", "guidance", "flow_shift", "eta", "slg_scale", "strength",
                                      "control_strength", "vae_tile_overlap"])
def test_non_finite_sampling_floats_are_refused(ctx, argument, value):
    with pytest.raises(ValueError, match=rf"^{argument}=\S+ is not (a )?finite"):
        ctx.txt2img("a red cube", **{**SMALL, argument: value})


@pytest.mark.parametrize("sigmas", [[1.0], [], iter([0.5])])
def test_custom_sigmas_of_fewer_than_two_values_are_refused(ctx, sigmas):
    # One value ran zero steps (a flat image); none silently meant the scheduler's.
    with pytest.raises(ValueError, match=r"^custom_sigmas: need at least 2 values \(one step\), got [01]"):
        ctx.txt2img("a red cube", **{**SMALL, "custom_sigmas": sigmas})


def test_custom_sigmas_may_be_an_iterator(ctx):
    as_list = ctx.txt2img("a red cube", **{**SMALL, "custom_sigmas": [1.0, 0.5, 0.0]})[0]
    as_iterator = ctx.txt2img("a red cube", **{**SMALL, "custom_sigmas": iter([1.0, 0.5, 0.0])})[0]
    np.testing.assert_array_equal(as_list, as_iterator)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(custom_sigmas=[1.0, math.inf, 0.0]), r"^custom_sigmas\[1\]=inf is not a finite number"),
        (dict(hires=sdcpp_py.Hires(scale=math.nan)), r"^hires\.scale=nan is not a finite number"),
        (dict(hires=sdcpp_py.Hires(denoising_strength=math.inf)), r"^hires\.denoising_strength=inf"),
        (dict(cache=sdcpp_py.Cache(start_percent=math.inf)), r"^cache\.start_percent=inf is not a finite"),
        (dict(cache=sdcpp_py.Cache(reuse_threshold=-math.inf)), r"^cache\.reuse_threshold=-inf"),
        (dict(cache=sdcpp_py.Cache(spectrum_w=1e39)), r"^cache\.spectrum_w=1e\+39 is not finite as the core's"),
    ],
)
def test_non_finite_option_fields_are_refused(ctx, kwargs, message):
    with pytest.raises(ValueError, match=message):
        ctx.txt2img("a red cube", **{**SMALL, **kwargs})


def test_non_finite_lora_multipliers_are_refused(ctx, lora):
    for value in (math.inf, math.nan):
        with pytest.raises(ValueError, match=r"^loras\[0\]\.multiplier=\w+ is not a finite number"):
            ctx.txt2img("a red cube", loras=[sdcpp_py.Lora(lora, value)], **SMALL)
    with sdcpp_py.Context(**ctx_parts(ctx), n_threads=2, lora_dir=lora.parent) as tagged:
        for tag in ("<lora:style:inf>", "<lora:style:nan>", "<lora:style:1e39>"):
            with pytest.raises(ValueError, match=rf"^prompt: '{tag}' has a multiplier that is not a finite number"):
                tagged.txt2img("a red cube" + tag, **SMALL)
        with pytest.raises(ValueError, match=r"^prompt: the multipliers of the LoRA 'style.safetensors' add up"):
            tagged.txt2img("a red cube<lora:style:3e38><lora:style:3e38>", **SMALL)


def ctx_parts(ctx) -> dict:
    return dict(ctx.components)


def test_cache_fields_type_errors_and_the_inf_default(ctx):
    sdcpp_py.Cache().apply(_core.ImageGenParams())  # reuse_threshold's default inf is the core's "auto"
    for kwargs, argument in ((dict(start_percent="0.2"), "start_percent"), (dict(Fn_compute_blocks=1.5),
                             "Fn_compute_blocks"), (dict(use_relative_threshold=1), "use_relative_threshold"),
                             (dict(scm_mask=[1, 0]), "scm_mask")):
        with pytest.raises(TypeError, match=rf"^cache\.{argument} must be"):
            ctx.txt2img("a red cube", cache=sdcpp_py.Cache(**kwargs), **SMALL)


def test_non_finite_context_and_tool_floats_are_refused(flux_parts):
    with pytest.raises(ValueError, match=r"^max_vram=inf is not a finite number"):
        sdcpp_py.Context(**flux_parts, max_vram=math.inf)
    with pytest.raises(ValueError, match=r"^high_threshold=nan is not a finite number"):
        sdcpp_py.preprocess_canny(np.zeros((8, 8, 3), np.uint8), high_threshold=math.nan)


# -- item 9: NUL, lone surrogates, file names that are not UTF-8 -----------------------------------------
@pytest.mark.parametrize("argument", ["prompt", "negative_prompt"])
def test_nul_and_lone_surrogates_in_prompts_name_the_argument(ctx, argument):
    for text, message in (("a red\0cube", rf"^{argument} contains a NUL character \(at index 5\)"),
                          ("a red \ud800cube", rf"^{argument} is not valid text: a lone surrogate")):
        args = {"prompt": "a red cube", argument: text}
        with pytest.raises(ValueError, match=message):
            ctx.txt2img(args.pop("prompt"), **args, **SMALL)


def test_an_image_path_without_pillow_is_a_value_error(ctx, tmp_path, monkeypatch):
    # Pillow is optional (the pil extra): a path raised a bare ModuleNotFoundError from deep inside the call.
    picture = tmp_path / "in.png"
    picture.write_bytes(b"not read")
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(ValueError, match=r"^init_image: reading the image file .* needs Pillow"):
        ctx.img2img("a red cube", picture, **SMALL)


def test_nul_in_paths_names_the_argument(flux_parts, ctx, tmp_path):
    with pytest.raises(ValueError, match=r"^diffusion_model contains a NUL character"):
        sdcpp_py.Context(**{**flux_parts, "diffusion_model": "dit\0.safetensors"})
    with pytest.raises(ValueError, match=r"^lora_dir contains a NUL character"):
        sdcpp_py.Context(**flux_parts, lora_dir=b"lo\0ras")
    with pytest.raises(ValueError, match=r"^loras\[0\]\.path contains a NUL character"):
        ctx.txt2img("a red cube", loras=["x\0.safetensors"], **SMALL)
    with pytest.raises(ValueError, match=r"^init_image contains a NUL character"):
        ctx.img2img("a red cube", "x\0.png", **SMALL)
    with pytest.raises(ValueError, match=r"^dst contains a NUL character"):
        sdcpp_py.convert(flux_parts["diffusion_model"], str(tmp_path / "x\0.gguf"))
    with pytest.raises(TypeError, match=r"^vae must be a str, bytes or os.PathLike, not int"):
        sdcpp_py.Context(**{**flux_parts, "vae": 5})


@linux_only
def test_a_file_name_that_is_not_utf8_loads_and_generates(flux_parts, ctx, lora, tmp_path):
    folder = os.fsencode(tmp_path)
    odd = os.path.join(folder, NON_UTF8)
    shutil.copyfile(os.fsencode(flux_parts["diffusion_model"]), odd)
    odd_lora = os.path.join(folder, b"lora-\xfe.safetensors")
    shutil.copyfile(os.fsencode(lora), odd_lora)
    expected = ctx.txt2img("a red cube", **SMALL)[0]
    with_lora = ctx.txt2img("a red cube", loras=[sdcpp_py.Lora(lora, 0.8)], **SMALL)[0]
    for given in (odd, os.fsdecode(odd)):  # bytes, and the str os.fsdecode makes of them (surrogate escapes)
        with sdcpp_py.Context(**{**flux_parts, "diffusion_model": given}, n_threads=2) as context:
            name = context.components["diffusion_model"]
            assert isinstance(name, str) and os.fsencode(name) == odd
            assert "dit-\\udcff.safetensors" in repr(context)
            np.testing.assert_array_equal(context.txt2img("a red cube", **SMALL)[0], expected)
    ours = ctx.txt2img("a red cube", loras=[sdcpp_py.Lora(odd_lora, 0.8)], **SMALL)[0]
    np.testing.assert_array_equal(ours, with_lora)
    assert np.abs(ours.astype(int) - expected.astype(int)).mean() > 1, "the LoRA changed nothing"


@linux_only
def test_tools_take_file_names_that_are_not_utf8(flux_parts, esrgan, tmp_path):
    folder = os.fsencode(tmp_path)
    source = os.path.join(folder, NON_UTF8)
    shutil.copyfile(os.fsencode(flux_parts["diffusion_model"]), source)
    target = os.path.join(folder, b"out-\xff.gguf")
    sdcpp_py.convert(source, target, weight_type="q8_0")
    assert os.path.getsize(target) > 0
    odd = os.path.join(folder, b"esrgan-\xff.safetensors")
    shutil.copyfile(os.fsencode(esrgan), odd)
    with sdcpp_py.Upscaler(odd, n_threads=2) as upscaler:
        assert upscaler.upscale(np.zeros((16, 16, 3), np.uint8)).shape == (32, 32, 3)


# -- item 10: a refused call leaves a free_params_immediately context usable -----------------------------
def test_a_refused_call_does_not_spend_a_one_shot_context(flux_parts):
    with sdcpp_py.Context(**flux_parts, n_threads=2, free_params_immediately=True) as context:
        refused = [
            (dict(preview_interval=0), ValueError, "preview_interval=0"),
            (dict(preview=lambda *a: None, preview_mode="none"), ValueError, "preview_mode='none'"),
            (dict(preview_noisy="yes"), TypeError, "preview_noisy must be a bool"),
            (dict(seed=MAX_SEED, batch_count=2), ValueError, "seed=.* with batch_count=2"),
            (dict(clip_skip=99), ValueError, "clip_skip=99"),
            (dict(vae_tile_overlap=0.95), ValueError, "vae_tile_overlap=0.95"),
        ]
        for kwargs, error, message in refused:
            with pytest.raises(error, match=message):
                context.txt2img("a red cube", **{**SMALL, **kwargs})
        assert context.txt2img("a red cube", **SMALL)[0].shape == (64, 64, 3)
        with pytest.raises(RuntimeError, match="free_params_immediately"):
            context.txt2img("a red cube", **SMALL)


# -- item 15: prompt LoRA tags stay inside lora_dir; nothing opens a FIFO --------------------------------
CHILD = textwrap.dedent("""
    import json, os, sys
    import numpy as np
    import sdcpp_py
    from sdcpp_py._options import prompt_loras
    parts, lora_dir, outside = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
    results = {}

    def attempt(name, call):
        print("CASE", name, flush=True)
        try:
            value = call()
            results[name] = ["ok", repr(value)[:300]]
        except Exception as exc:
            results[name] = [type(exc).__name__, str(exc)]

    small = dict(width=64, height=64, steps=1, cfg_scale=1.0)
    fifo = os.path.join(lora_dir, "fifo.safetensors")
    with sdcpp_py.Context(**parts, n_threads=2, lora_dir=lora_dir) as ctx:
        for tag in ("<lora:fifo:1>", "<lora:../outside:1>", "<lora:sub/../../outside:1>", "<lora:/etc/passwd:1>",
                    "<lora:" + outside + ":1>", "<lora:..:1>", "<lora:sub:1>"):
            attempt(tag, lambda: ctx.txt2img("a red cube" + tag, **small))
        attempt("loras=[fifo]", lambda: ctx.txt2img("a red cube", loras=[fifo], **small))
        attempt("init_image=fifo", lambda: ctx.img2img("a red cube", fifo, **small))
        attempt("symlink", lambda: prompt_loras("a<lora:linked:0.5>", lora_dir)[1])
        attempt("symlink generates", lambda: ctx.txt2img("a red cube<lora:linked:0.5>", **small)[0].shape)
    attempt("diffusion_model=fifo", lambda: sdcpp_py.Context(**{**parts, "diffusion_model": fifo}))
    attempt("convert dst=fifo", lambda: sdcpp_py.convert(parts["diffusion_model"], fifo))
    print("RESULTS", json.dumps(results), flush=True)
""")


@linux_only
def test_prompt_lora_tags_are_confined_to_lora_dir_and_fifos_are_refused(flux_parts, lora, tmp_path):
    lora_dir = tmp_path / "loras"
    (lora_dir / "sub").mkdir(parents=True)
    os.mkfifo(lora_dir / "fifo.safetensors")
    outside = tmp_path / "outside.safetensors"  # a real LoRA, but not in lora_dir
    shutil.copyfile(lora, outside)
    os.symlink(outside, lora_dir / "linked.safetensors")  # the administrator's link: allowed
    parts = {name: str(path) for name, path in flux_parts.items()}
    try:
        proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(parts), str(lora_dir), str(outside)],
                              capture_output=True, text=True, timeout=60, check=False)
    except subprocess.TimeoutExpired as timeout:
        cases = [line for line in (timeout.stdout or b"").decode().splitlines() if line.startswith("CASE")]
        pytest.fail(f"blocked (a FIFO opened?) at {cases[-1:]}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.split("RESULTS ", 1)[1])
    inside_only = "a LoRA tag names a file inside lora_dir (no absolute path, no '..')"
    for tag in ("<lora:../outside:1>", "<lora:sub/../../outside:1>", "<lora:/etc/passwd:1>",
                f"<lora:{outside}:1>", "<lora:..:1>"):
        assert results[tag] == ["ValueError", f"prompt: {tag!r}: {inside_only}"], tag
    assert results["<lora:fifo:1>"][0] == "ValueError"
    assert results["<lora:fifo:1>"][1].endswith("fifo.safetensors' is not a regular file")
    assert results["<lora:sub:1>"][0] == "ValueError" and "is not a regular file" in results["<lora:sub:1>"][1]
    for case, argument in (("loras=[fifo]", "loras[0].path"), ("init_image=fifo", "init_image"),
                           ("diffusion_model=fifo", "diffusion_model")):
        kind, message = results[case]
        assert kind == "ValueError" and message.startswith(f"{argument}: ") and "is not a regular file" in message
    assert results["convert dst=fifo"][0] == "ValueError" and results["convert dst=fifo"][1].startswith("dst: ")
    assert results["symlink"][0] == "ok" and "linked.safetensors" in results["symlink"][1]
    assert results["symlink generates"] == ["ok", "(64, 64, 3)"]


# -- item 16: seed + batch overflow, hires output size ---------------------------------------------------
def test_seed_plus_batch_must_stay_an_int64(ctx):
    with pytest.raises(ValueError, match=r"^seed=9223372036854775807 with batch_count=2: .* the largest seed for "
                                         r"this batch is 9223372036854775806"):
        ctx.txt2img("a red cube", seed=MAX_SEED, batch_count=2, **SMALL)
    with pytest.raises(ValueError, match=r"^seed=9223372036854775800 with batch_count=9"):
        ctx.txt2img("a red cube", seed=MAX_SEED - 7, batch_count=9, **SMALL)
    assert ctx.txt2img("a red cube", seed=MAX_SEED, **SMALL).seed == MAX_SEED


def test_hires_output_is_capped_as_the_core_computes_it(ctx):
    with pytest.raises(ValueError, match=r"^hires\.scale: the hires output would be 32768x32768 pixels; the "
                                         rf"largest side is {MAX_SIDE}"):
        ctx.txt2img("a red cube", hires=sdcpp_py.Hires(scale=16.0), **{**SMALL, "width": 2048, "height": 2048})
    # 2049 is aligned up to Flux's multiple of 8 (2056) before scaling: 2056 * 8 = 16448.
    with pytest.raises(ValueError, match=r"^hires\.scale: the hires output would be 16448x16384"):
        ctx.txt2img("a red cube", hires=sdcpp_py.Hires(scale=8.0), **{**SMALL, "width": 2049, "height": 2048})
    with pytest.raises(ValueError, match=r"^hires\.width=20000 is out of range"):
        ctx.txt2img("a red cube", hires=sdcpp_py.Hires(width=20000), **SMALL)
    with pytest.raises(ValueError, match=r"^hires\.scale=0\.001 of 64x64 gives no pixels"):
        ctx.txt2img("a red cube", hires=sdcpp_py.Hires(scale=0.001), **SMALL)


@pytest.mark.parametrize(
    "architecture, width, scale, allowed",
    [
        ("Flux.1", 2048, 8.0, True),      # 16384 exactly
        ("Flux.1", 2049, 8.0, False),     # 2056 * 8
        ("SD1", 2000, 8.0, True),         # aligned to 2048 first (multiple 64): 16384
        ("SD1", 2049, 8.0, False),        # 2112 * 8
        ("Wan2.1-T2V-1.3B", 5461, 3.0, False),  # multiple 16: 5472 * 3 = 16416
        ("Wan2.1-T2V-1.3B", 5456, 3.0, True),   # 5456 * 3 = 16368, aligned to 16368
        (None, 1025, 16.0, False),        # unknown model: multiple 64, 1088 * 16
        ("Flux.1", 1360, 12.04, True),    # float32 1360 * 12.04 = 16374.4: 16374, aligned to 16376
    ],
)
def test_hires_size_follows_the_cores_arithmetic(architecture, width, scale, allowed):
    request = _core.ImageGenParams()
    request.width, request.height = width, 64
    request.hires_scale = scale
    request.hires_target_width = request.hires_target_height = 0

    model = ModelFacts(components={}, architecture=architecture, vae_decode_only=False, video_inputs=None)
    if allowed:
        model.check_hires_size(request)
    else:
        with pytest.raises(ValueError, match=r"^hires\.scale: the hires output would be"):
            model.check_hires_size(request)


# -- reference images the core's auto-resize would bring to nothing ----------------------------------------
@pytest.fixture(scope="module")
def edit_ctx(flux_parts_with_encoder):
    """A Context over the tiny Flux.1 parts with a VAE encoder, which reference images need."""
    with sdcpp_py.Context(**flux_parts_with_encoder, n_threads=2) as context:
        yield context


def grey_ref(height: int, width: int) -> np.ndarray:
    return np.full((height, width, 3), 128, np.uint8)


@pytest.mark.parametrize(
    "height, width, size",
    [
        (1, 5000, 512),   # 36208x0: the reviewer's case
        (1, 4096, 64),
        (4096, 1, 64),
        (300, 2, 64),
        (1, 65, 64),      # sqrt(4096 * 65) = 515.9 wide, 7.9 high: rounds to 0 sixteens
        (65, 1, 64),
    ],
)
def test_a_ref_image_auto_resized_to_nothing_is_refused_and_the_context_lives(edit_ctx, height, width, size):
    # The core's interpolate threw on a side of 0, which marked the Context unusable.
    with pytest.raises(ValueError, match=rf"^ref_images\[0\] is {width}x{height} \(WxH\): auto-resizing it .* "
                                         r"a side of 0 pixels; .*auto_resize_ref_images=False"):
        edit_ctx.generate("a red cube", ref_images=[grey_ref(height, width)],
                          **{**SMALL, "width": size, "height": size})
    assert edit_ctx.txt2img("a red cube", **SMALL)[0].shape == (64, 64, 3)


def test_ref_images_the_core_can_resize_or_take_as_they_are_still_work(edit_ctx):
    # 64x1 at 64x64: 8 pixels high, exactly half of 16, which std::round takes up (Python's round would not).
    for ref in (grey_ref(48, 80), grey_ref(1, 64), grey_ref(64, 1)):
        assert edit_ctx.generate("a red cube", ref_images=[ref], **SMALL)[0].shape == (64, 64, 3)
    # Without auto-resize the core encodes the image as it is, whatever its aspect.
    result = edit_ctx.generate("a red cube", ref_images=[grey_ref(1, 4096)], auto_resize_ref_images=False, **SMALL)
    assert result[0].shape == (64, 64, 3)


@pytest.mark.parametrize("architecture, allowed", [("Flux.1", True), ("Qwen-Image", False), (None, False)])
def test_the_ref_image_resize_check_follows_the_models_rounding(architecture, allowed):
    from sdcpp_py._request import _check_ref_image_resize

    # 64x1 at 64x64 resizes to 512x8 before rounding: one sixteen high (Flux), none of 32 (Qwen-Image); a model
    # not recognised is refused for what any model would do.
    if allowed:
        _check_ref_image_resize([grey_ref(1, 64)], 64, 64, architecture)
    else:
        with pytest.raises(ValueError, match=r"^ref_images\[0\] is 64x1 \(WxH\): .* would make it 512x0"):
            _check_ref_image_resize([grey_ref(1, 64)], 64, 64, architecture)


# -- PIL images of more than 8 bits a channel, and modes PIL cannot convert ----------------------------------
def test_a_16_bit_png_keeps_its_gradient(ctx, tmp_path):
    Image = pytest.importorskip("PIL.Image")
    from sdcpp_py._images import as_mask, as_rgb

    levels = np.arange(256)
    picture = tmp_path / "depth16.png"
    # 0..65535: PIL's convert clipped everything above 255 to white.
    Image.fromarray((levels * 257).astype(np.uint16).reshape(16, 16)).save(picture)
    with Image.open(picture) as opened:
        assert opened.mode in ("I;16", "I")  # which one depends on the Pillow version
    rgb = as_rgb(picture, "control_image")
    assert rgb.shape == (16, 16, 3)
    assert rgb[0, 0].tolist() == [0, 0, 0] and rgb[0, 1].tolist() == [1, 1, 1]
    assert rgb[8, 0].tolist() == [128, 128, 128] and rgb[15, 15].tolist() == [255, 255, 255]
    assert np.array_equal(as_mask(picture, "mask")[:, :, 0].ravel(), levels)
    # A mode "I" image (32-bit ints) is read as 16-bit when its values fit.
    as_int32 = Image.fromarray((levels * 257).astype(np.int32).reshape(16, 16))
    assert as_int32.mode == "I"
    assert np.array_equal(as_rgb(as_int32, "init_image")[:, :, 0].ravel(), levels)
    eight_bit = Image.fromarray(levels.astype(np.uint8).reshape(16, 16)).convert("I")  # values 0..255 kept
    assert np.array_equal(as_rgb(eight_bit, "init_image")[:, :, 0].ravel(), levels)
    with pytest.raises(ValueError, match=r"^init_image: a PIL image of mode 'I' .* values span 0\.\.70000"):
        ctx.img2img("a red cube", Image.fromarray(np.array([[0, 70000]], np.int32)), **SMALL)


def test_pil_images_that_cannot_be_read_as_pixels_name_the_argument(ctx, tmp_path):
    Image = pytest.importorskip("PIL.Image")
    init = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(ValueError, match=r"^init_image: a PIL image of mode 'F' .* no agreed range"):
        ctx.img2img("a red cube", Image.new("F", (64, 64), 0.5), **SMALL)
    with pytest.raises(ValueError, match=r"^init_image: a PIL image of mode 'La' cannot be converted to 'RGB'"):
        ctx.img2img("a red cube", Image.new("La", (64, 64)), **SMALL)
    with pytest.raises(ValueError, match=r"^mask: a PIL image of mode 'LAB' cannot be converted to 'L'"):
        ctx.generate("a red cube", init_image=init, mask=Image.new("LAB", (64, 64)), **SMALL)
    # Image.open reads the pixels only when they are used: a truncated file failed then with a bare OSError.
    picture = tmp_path / "truncated.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)).save(picture)
    picture.write_bytes(picture.read_bytes()[:2000])
    with Image.open(picture) as lazy:
        with pytest.raises(ValueError, match=r"^init_image: the PIL image \(mode 'RGB'\) could not be loaded"):
            ctx.img2img("a red cube", lazy, **SMALL)
