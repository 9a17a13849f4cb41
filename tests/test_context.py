import inspect
import os
import re
import pathlib

import numpy as np
import pytest

import sdcpp_py
from sdcpp_py import _formats
from sdcpp_py.testing import extras, video
from sdcpp_py import _core

SMALL = dict(width=64, height=64, steps=2, cfg_scale=1.0)


def test_versions_report_the_pinned_core():
    assert sdcpp_py.core_commit() == "90e87bc"
    assert sdcpp_py.core_version() == "master-596-90e87bc"
    assert sdcpp_py.__version__
    assert sdcpp_py.BACKEND in {"cpu", "cuda", "vulkan", "metal"}
    assert "AVX" in sdcpp_py.system_info() or "NEON" in sdcpp_py.system_info()


def test_constructor_defaults_match_sd_ctx_params_init():
    core = _core.ContextParams()  # filled by the core's sd_ctx_params_init
    signature = inspect.signature(sdcpp_py.Context)
    for name in ("offload_params_to_cpu", "mmap", "keep_clip_on_cpu", "keep_vae_on_cpu", "keep_control_net_on_cpu",
                 "flash_attn", "diffusion_flash_attn", "diffusion_conv_direct", "vae_conv_direct",
                 "tae_preview_only", "circular_x", "circular_y", "force_sdxl_vae_conv_scale",
                 "chroma_use_dit_mask", "chroma_use_t5_mask", "chroma_t5_mask_pad", "qwen_image_zero_cond_t",
                 "max_vram"):
        assert signature.parameters[name].default == getattr(core, name), name
    assert int(signature.parameters["rng"].default) == core.rng
    # Per-call LoRAs must not drift the weights: applied at runtime, not merged (the core's "auto").
    assert core.lora_apply_mode == int(sdcpp_py.LoraApplyMode.AUTO)
    assert signature.parameters["lora_apply_mode"].default == sdcpp_py.LoraApplyMode.AT_RUNTIME
    assert core.n_threads == sdcpp_py.physical_cores()
    # Deliberate differences: by default the VAE encoder is loaded when the file has one, and a context keeps
    # its weights for the next call.
    assert core.vae_decode_only is True and signature.parameters["vae_decode_only"].default is None
    assert core.free_params_immediately is False  # set by our ContextParams, over the core's True
    assert signature.parameters["free_params_immediately"].default is False


def test_every_sd_ctx_params_field_has_a_keyword():
    params = set(inspect.signature(sdcpp_py.Context).parameters)
    exposed = {name for name in dir(_core.ContextParams) if not name.startswith("_")}
    assert exposed <= params, exposed - params
    parameters = inspect.signature(sdcpp_py.Context).parameters.values()
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in parameters)


def test_paths_accept_pathlike_and_repr_names_components(flux_parts):
    parts = {name: pathlib.Path(path) for name, path in flux_parts.items()}
    ctx = sdcpp_py.Context(**parts, n_threads=2)
    text = repr(ctx)
    for path in parts.values():
        assert path.name in text
    assert f"device={sdcpp_py.default_device().name!r}" in text
    ctx.close()
    ctx.close()  # idempotent
    assert ctx.closed and "closed" in repr(ctx)
    with pytest.raises(ValueError, match="closed"):
        ctx.txt2img("a red cube", **SMALL)


def test_context_manager_closes(flux_parts):
    with sdcpp_py.Context(**flux_parts, n_threads=2) as ctx:
        assert not ctx.closed
    assert ctx.closed


@pytest.mark.parametrize("argument", ["diffusion_model", "clip_l", "vae"])
def test_missing_file_names_the_argument(flux_parts, tmp_path, argument):
    parts = dict(flux_parts)
    parts[argument] = tmp_path / "nope.safetensors"
    with pytest.raises(FileNotFoundError, match=argument):
        sdcpp_py.Context(**parts)


def test_no_model_is_a_value_error(flux_parts):
    with pytest.raises(ValueError, match="no model"):
        sdcpp_py.Context(clip_l=flux_parts["clip_l"], vae=flux_parts["vae"])


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(IsADirectoryError, match="diffusion_model"):
        sdcpp_py.Context(diffusion_model=tmp_path)


def test_core_failure_carries_the_core_error_lines(flux_parts, tmp_path):
    # A well-formed file of no known component: our checks let it through, the core cannot use it.
    unknown = _formats.write_safetensors(tmp_path / "unknown.safetensors",
                                          {"some.layer.weight": np.zeros((4, 4), np.float16)})
    with pytest.raises(sdcpp_py.SdcppError, match="get sd version from file failed") as info:
        sdcpp_py.Context(diffusion_model=unknown, clip_l=flux_parts["clip_l"])
    assert isinstance(info.value, RuntimeError)


@pytest.mark.parametrize("slot", ["llm", "clip_g", "clip_vision"])
def test_a_part_the_model_does_not_use_is_refused(flux_parts, flux_parts_with_encoder, tmp_path, slot):
    # Patch 0026. Flux.1 has no LLM, CLIP-G or CLIP vision encoder: the core loaded such a file beside it, used
    # none of its tensors and generated without a word.
    unused = _formats.write_safetensors(tmp_path / "part.safetensors",
                                        {"some.layer.weight": np.zeros((4, 4), np.float16)})
    with pytest.raises(ValueError, match=rf"^{slot}: this Flux\.1 model uses none of this file's tensors .* "
                                         rf"leave {slot}= out"):
        sdcpp_py.Context(**flux_parts, **{slot: unused}, n_threads=2)
    if slot == "llm":  # a file name that is not UTF-8 (the core's log line has U+FFFD for its byte)
        odd = os.fsencode(tmp_path) + b"/part-\xff.safetensors"
        os.link(unused, odd)
        with pytest.raises(ValueError, match="^llm: this Flux"):
            sdcpp_py.Context(**flux_parts, llm=odd, n_threads=2)
    # A VAE whose encoder the context leaves out (it only decodes) still loads.
    with sdcpp_py.Context(**flux_parts_with_encoder, vae_decode_only=True, n_threads=2) as ctx:
        assert ctx.usable


def test_diffusion_model_without_any_text_encoder_is_refused(flux_parts):
    # Without this check the core loads, then segfaults at the first prompt.
    with pytest.raises(ValueError, match="text encoder"):
        sdcpp_py.Context(diffusion_model=flux_parts["diffusion_model"], vae=flux_parts["vae"])


def test_dit_model_without_its_separate_vae_is_refused_up_front(flux_parts):
    parts = {name: path for name, path in flux_parts.items() if name != "vae"}
    with pytest.raises(ValueError, match=r"Flux\.1 model, whose VAE is a separate file: pass vae="):
        sdcpp_py.Context(**parts)


@pytest.mark.parametrize(
    "swap, message",
    [
        (dict(t5xxl="vae"), "t5xxl: this file looks like a Flux/SD3 VAE vae component; pass it as vae="),
        (dict(vae="clip_l"), "vae: this file looks like a CLIP-L clip_l component; pass it as clip_l="),
        (dict(clip_l="diffusion_model"), "clip_l: this file is a Flux.1 diffusion model; pass it as diffusion_model="),
        (dict(clip_g="clip_l"), "clip_g: this file looks like a CLIP-L clip_l component; pass it as clip_l="),
    ],
)
def test_a_file_in_the_wrong_slot_is_refused_saying_where_it_belongs(flux_parts, swap, message):
    parts = dict(flux_parts)
    for slot, source in swap.items():
        parts[slot] = flux_parts[source]
    with pytest.raises(ValueError, match=re.escape(message)):
        sdcpp_py.Context(**parts)


def test_other_kinds_of_file_in_a_model_slot_are_refused(flux_parts, esrgan, sd1_controlnet, tmp_path):
    # Before, the core loaded these beside the model, used none of their tensors and generated without a word.
    taesd = extras.taesd(tmp_path)
    embedding = tmp_path / "shiny.safetensors"
    _formats.write_safetensors(embedding, {"emb_params": np.zeros((2, 768), np.float32)})
    cases = [
        ("clip_g", esrgan, "clip_g: this file is an ESRGAN upscaler; load it with sdcpp_py.Upscaler"),
        ("llm", sd1_controlnet, "llm: this file is a SD1 ControlNet control_net component; pass it as control_net="),
        ("vae", taesd, "vae: this file is a TAESD taesd component; pass it as taesd="),
        ("clip_vision", embedding, "clip_vision: this file is a textual-inversion embedding; pass it in embeddings="),
    ]
    for slot, path, message in cases:
        with pytest.raises(ValueError, match=re.escape(message)):
            sdcpp_py.Context(**{**flux_parts, slot: path})
    with pytest.raises(ValueError, match=re.escape("high_noise_diffusion_model: the Flux.1 model does not use one")):
        sdcpp_py.Context(**flux_parts, high_noise_diffusion_model=flux_parts["diffusion_model"])


@pytest.fixture(scope="module")
def wan_dir(synthetic_dir):
    return synthetic_dir / "wan"  # sparse files, a second to write; nothing here loads them


def test_wan_video_models_refuse_missing_parts_before_loading(wan_dir):
    vace = video.wan_components(wan_dir, variant="vace")
    decoder_only = video.wan_components(wan_dir)["vae"]
    with pytest.raises(ValueError, match="Wan2.1-VACE-1.3B model, which runs the VAE encoder on every call, but "
                                         "the VAE file has no encoder"):
        sdcpp_py.Context(**{**vace, "vae": decoder_only})
    with pytest.raises(ValueError, match=r"but vae_decode_only=True"):
        sdcpp_py.Context(**vace, vae_decode_only=True)
    i2v = video.wan_components(wan_dir, variant="i2v")
    without_vision = {name: path for name, path in i2v.items() if name != "clip_vision"}
    with pytest.raises(ValueError,
                       match="Wan2.1-I2V-1.3B model, which needs the CLIP vision encoder: pass clip_vision="):
        sdcpp_py.Context(**without_vision)
    with pytest.raises(ValueError, match="clip_l: this file looks like a CLIP-ViT-H/14 clip_vision component"):
        sdcpp_py.Context(**{**i2v, "clip_l": i2v["clip_vision"]})


def test_lora_all_in_one_and_bare_dit_slots(flux_parts, sd1_checkpoint, tmp_path):
    lora = extras.flux_lora(flux_parts["diffusion_model"], tmp_path / "lora.safetensors")
    with pytest.raises(ValueError, match="diffusion_model: this file is a LoRA; pass it in loras="):
        sdcpp_py.Context(**{**flux_parts, "diffusion_model": lora})
    with pytest.raises(ValueError, match="all-in-one SD1 checkpoint; pass it as model="):
        sdcpp_py.Context(**{**flux_parts, "diffusion_model": sd1_checkpoint})
    with pytest.raises(ValueError, match="model: this file is a bare Flux.1 diffusion model"):
        sdcpp_py.Context(model=flux_parts["diffusion_model"], clip_l=flux_parts["clip_l"])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(weight_type="q9_9"), "weight_type='q9_9'"),
        (dict(weight_type="q8_K"), "weight_type='q8_K'"),  # ggml has no quantizer for it: SIGABRT
        (dict(weight_type=31), "weight_type=31"),  # a removed repacking type: a division by zero
        (dict(rng="mersenne"), "rng='mersenne'"),
        (dict(prediction="x0"), "prediction='x0'"),
        (dict(n_threads=0), "n_threads=0"),
        (dict(max_vram=-1.0), "max_vram=-1.0"),
    ],
)
def test_bad_context_options_raise_value_error(flux_parts, kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        sdcpp_py.Context(**flux_parts, **kwargs)


def test_tools_refuse_weight_types_nothing_converts_to(flux_parts, sd1_checkpoint, tmp_path):
    for bad in ("q8_1", "i32", "f64"):
        with pytest.raises(ValueError, match=f"weight_type='{bad}'"):
            sdcpp_py.convert(flux_parts["vae"], tmp_path / "out.gguf", weight_type=bad)
        with pytest.raises(ValueError, match=f"weight_types\\['vae'\\]='{bad}'"):
            sdcpp_py.split(sd1_checkpoint, tmp_path, weight_types={"vae": bad})
    assert not list(tmp_path.iterdir())


def test_bad_bool_option_is_a_type_error(flux_parts):
    with pytest.raises(TypeError, match="mmap"):
        sdcpp_py.Context(**flux_parts, mmap="yes")


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(width=0), ValueError, "width=0"),
        (dict(height=100000), ValueError, "height=100000"),
        (dict(steps=0), ValueError, "steps=0"),
        (dict(cfg_scale=-1.0), ValueError, "cfg_scale=-1.0"),
        (dict(cfg_scale=float("nan")), ValueError, "cfg_scale=nan"),
        (dict(batch_count=0), ValueError, "batch_count=0"),
        (dict(seed=-2), ValueError, "seed=-2"),
        (dict(sampler="warp_drive"), ValueError, "euler_a"),
        (dict(scheduler=99), ValueError, "scheduler=99"),
        (dict(width=64.0), TypeError, "width"),
        (dict(progress=5), TypeError, "progress"),
    ],
)
def test_bad_generation_arguments_name_the_argument(flux, kwargs, error, message):
    args = dict(SMALL, **kwargs)
    with pytest.raises(error, match=message):
        flux.txt2img("a red cube", **args)


def test_enums_come_from_the_core_name_tables():
    assert [s.core_name for s in sdcpp_py.Sampler] == list(_core.NAME_TABLES["sample_method"])
    assert sdcpp_py.Sampler.coerce("dpm++2m", "sampler") is sdcpp_py.Sampler.DPMPP2M
    assert sdcpp_py.Scheduler.coerce("KARRAS", "scheduler") is sdcpp_py.Scheduler.KARRAS
    assert sdcpp_py.WeightType.coerce("q8_0", "weight_type") == 8
    # Only what weights can be converted to: no activation-only, integer or removed types.
    assert {str(t) for t in sdcpp_py.WeightType} == set(_core.TENSOR_RULE_TYPES)
    assert str(sdcpp_py.Sampler.EULER_A) == "euler_a"


def test_devices_come_from_ggml_and_the_default_is_the_cores_pick():
    found = sdcpp_py.devices()
    assert any(device.type == "cpu" for device in found), found
    assert all(device.name and device.description and device.backend for device in found)
    report = sdcpp_py.backends()
    assert report["built_with"] == sdcpp_py.BACKEND
    default = report["default_device"]
    if sdcpp_py.BACKEND == "cpu":
        assert default.type == "cpu"
    else:  # a GPU build picks its GPU when one is there, as the core does
        assert default.type in ("gpu", "igpu") or not any(d.type in ("gpu", "igpu") for d in found)
