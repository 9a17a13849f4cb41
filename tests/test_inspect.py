import numpy as np
import pytest

import sdcpp_py


def test_synthetic_components_are_recognised(flux_parts, sd1_checkpoint):
    expected = {"diffusion_model": ("diffusion_model", "Flux.1"), "clip_l": ("clip_l", "CLIP-L"),
                "vae": ("vae", "Flux/SD3 VAE")}
    for name, path in flux_parts.items():
        info = sdcpp_py.inspect(path)
        assert (info.role, info.architecture) == expected[name], name
        assert info.format == "safetensors" and info.tensor_count > 0 and info.parameter_count > 0
        assert info.file_size == path.stat().st_size
        assert abs(sum(info.weight_types.values()) - 1.0) < 1e-9
    whole = sdcpp_py.inspect(sd1_checkpoint)
    assert (whole.role, whole.architecture) == ("all_in_one", "SD1")
    assert whole.parameter_count > 800_000_000  # full-size UNet + CLIP-L + VAE, though small on disk


def test_gguf_weight_types_are_reported(flux_gguf_dit):
    info = sdcpp_py.inspect(flux_gguf_dit)
    assert info.format == "gguf" and info.role == "diffusion_model"
    assert "q8_0" in info.weight_types and info.weight_types["q8_0"] > 0.5


def test_unknown_and_missing_files(tmp_path):
    other = tmp_path / "model.ckpt"
    other.write_bytes(b"PK\x03\x04 not ours")
    with pytest.raises(ValueError, match="starts like a zip archive but has no readable central directory"):
        sdcpp_py.inspect(other)
    other.write_bytes(b"neither")
    with pytest.raises(ValueError, match="not GGUF, safetensors or a PyTorch file"):
        sdcpp_py.inspect(other)
    with pytest.raises(FileNotFoundError, match="path"):
        sdcpp_py.inspect(tmp_path / "missing.gguf")


def test_marker_tensors_without_a_width_are_not_an_error(tmp_path):
    # A scalar or empty tensor where a family's marker is raised a bare ZeroDivisionError or ValueError (max() of
    # an empty sequence) from inspect() and Context().
    from sdcpp_py._formats import write_safetensors
    wan = {f"blocks.{i}.ffn.0.bias": np.zeros(1, np.float32) for i in range(30)}
    wan.update({"blocks.0.cross_attn.norm_k.weight": np.zeros(4, np.float32),
                "patch_embedding.weight": np.zeros((4, 4), np.float32)})
    cases = {
        "wan-scalar-q": {**wan, "blocks.0.self_attn.q.weight": np.zeros((), np.float32)},
        "wan-empty-q": {**wan, "blocks.0.self_attn.q.weight": np.zeros((0, 0), np.float32)},
        "clip-vision-scalar-q": {"vision_model.encoder.layers.0.self_attn.q_proj.weight": np.zeros((), np.float32)},
        "clip-text-scalar-q": {"text_model.encoder.layers.0.self_attn.q_proj.weight": np.zeros((), np.float32),
                               "text_model.embeddings.token_embedding.weight": np.zeros((2, 2), np.float32)},
        "t5-scalar-shared": {"encoder.block.0.layer.0.SelfAttention.q.weight": np.zeros((2, 2), np.float32),
                             "shared.weight": np.zeros((), np.float32)},
    }
    for name, tensors in cases.items():
        info = sdcpp_py.inspect(write_safetensors(tmp_path / f"{name}.safetensors", tensors))
        assert info.tensor_count == len(tensors), name


def test_wan_parts_are_recognised_from_headers_alone(synthetic_dir):
    from sdcpp_py.testing import video

    parts = video.wan_components(synthetic_dir / "wan")  # sparse files: written in a second
    found = {name: (sdcpp_py.inspect(path).role, sdcpp_py.inspect(path).architecture) for name, path in parts.items()}
    assert found == {"diffusion_model": ("diffusion_model", "Wan2.1-T2V-1.3B"), "t5xxl": ("t5xxl", "UMT5-XXL"),
                     "vae": ("vae", "Wan VAE")}
    # The variants the core tells apart by the same tensors (wan.hpp WanRunner).
    for variant, name in (("i2v", "Wan2.1-I2V-1.3B"), ("vace", "Wan2.1-VACE-1.3B")):
        assert sdcpp_py.inspect(video.wan_components(synthetic_dir / "wan", variant=variant)
                                ["diffusion_model"]).architecture == name
    vision = video.wan_components(synthetic_dir / "wan", variant="i2v")["clip_vision"]
    assert (sdcpp_py.inspect(vision).role, sdcpp_py.inspect(vision).architecture) == ("clip_vision", "CLIP-ViT-H/14")


def test_every_other_synthetic_part_is_recognised(sd1_controlnet, esrgan, synthetic_dir, tmp_path):
    from sdcpp_py import _formats
    from sdcpp_py.testing import extras, sd

    embedding = _formats.write_safetensors(tmp_path / "style.safetensors",
                                           {"emb_params": np.zeros((2, 768), np.float16)})
    cases = {
        sd1_controlnet: ("control_net", "SD1 ControlNet"),
        esrgan: ("upscaler", "ESRGAN"),
        extras.photomaker_v1(synthetic_dir / "sdxl"): ("photo_maker", "PhotoMaker v1"),
        sd.sdxl_checkpoint(synthetic_dir / "sdxl"): ("all_in_one", "SDXL"),
        embedding: ("embedding", "textual inversion"),
        # Names only: the role comes from the header, so tiny stand-ins with the core's names are enough.
        _formats.write_safetensors(tmp_path / "taesd.safetensors", {
            f"{side}.layers.{i}.conv.{k}.weight": np.zeros((4, 4, 3, 3), np.float16)
            for side in ("encoder", "decoder") for i in (2, 3) for k in (0, 2, 4)}): ("taesd", "TAESD"),
        _formats.write_safetensors(tmp_path / "mmproj.safetensors", {
            "visual.blocks.0.attn.qkv.weight": np.zeros((12, 4), np.float16),
            "visual.patch_embed.proj.weight": np.zeros((4, 3, 2, 14, 14), np.float16)}):
            ("llm_vision", "Qwen2.5-VL vision"),
    }
    for path, expected in cases.items():
        info = sdcpp_py.inspect(path)
        assert (info.role, info.architecture) == expected, path


def test_files_holding_more_than_their_part_are_recognised(tmp_path):
    # A whole Qwen2.5-VL (ComfyUI's qwen_2.5_vl_7b, passed as llm= in the core's docs) was taken for its vision
    # tower alone, and lllyasviel's ControlNet 1.0 .pth (a whole SD1 model beside it) for an all-in-one model.
    from sdcpp_py._formats import write_safetensors
    qwen_vl = {"model.embed_tokens.weight": np.zeros((8, 4), np.float16),
               "model.layers.0.self_attn.q_proj.weight": np.zeros((4, 4), np.float16),
               "visual.blocks.0.attn.qkv.weight": np.zeros((12, 4), np.float16)}
    info = sdcpp_py.inspect(write_safetensors(tmp_path / "qwen_2.5_vl.safetensors", qwen_vl))
    assert (info.role, info.architecture) == ("llm", "Qwen2.5-VL")
    control = {"control_model.input_hint_block.0.weight": np.zeros((16, 3, 3, 3), np.float16),
               "control_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": np.zeros((320, 768),
                                                                                                   np.float16),
               "model.diffusion_model.out.2.weight": np.zeros((4, 320, 3, 3), np.float16),
               "cond_stage_model.transformer.text_model.final_layer_norm.weight": np.zeros(768, np.float16),
               "first_stage_model.decoder.conv_in.weight": np.zeros((512, 4, 3, 3), np.float16)}
    info = sdcpp_py.inspect(write_safetensors(tmp_path / "control_sd15_canny.safetensors", control))
    assert (info.role, info.architecture) == ("control_net", "SD1 ControlNet")
