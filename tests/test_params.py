"""The option tables (sdcpp_py._params): each option named once, matched field for field with the native records,
defaults from the core but for the documented tables, signatures and checks derived from the rows."""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest

import sdcpp_py
from sdcpp_py import _core, _params
from sdcpp_py._params import CONTEXT, IMAGE, PACKAGE_DEFAULTS, SD_CLI_DEFAULTS, VIDEO

# Native fields filled by code, not by a row of the same name.
IMAGE_BY_CODE = {"prompt", "negative_prompt", "loras", "seed", "width", "height", "pm_id_embed_path",
                 "hires_model_path", "pm_style_strength", "vae_tile_size_x", "vae_tile_size_y", "vae_tile_rel_size_x",
                 "vae_tile_rel_size_y"}


def native_fields(record) -> set:
    return {name for name in dir(record) if not name.startswith("_") and not callable(getattr(record, name))}


def row_fields(table) -> set:
    return {row.field or row.name for row in table}


def test_every_native_context_field_has_a_row():
    assert native_fields(_core.ContextParams()) - row_fields(CONTEXT) == set()
    assert (row_fields(CONTEXT) - {"lora_dir"}) - native_fields(_core.ContextParams()) == set()


@pytest.mark.parametrize("table, record", [(IMAGE, _core.ImageGenParams()), (VIDEO, _core.VideoGenParams())],
                         ids=["image", "video"])
def test_every_native_generation_field_has_a_row_or_a_record(table, record):
    by_records = {name for name in native_fields(record) if name.startswith(("cache_", "hires_"))}
    missing = native_fields(record) - row_fields(table) - by_records - IMAGE_BY_CODE
    assert missing == set()
    scalar_rows = {row.field or row.name for row in table if row.kind in ("bool", "int", "float", "enum", "ints",
                                                                           "floats")}
    assert scalar_rows - {"preview_mode", "preview_interval", "preview_noisy"} <= native_fields(record)


@pytest.mark.parametrize("table, record", [(CONTEXT, _core.ContextParams()), (IMAGE, _core.ImageGenParams()),
                                           (VIDEO, _core.VideoGenParams())], ids=["context", "image", "video"])
def test_defaults_are_the_cores_but_for_the_documented_tables(table, record):
    documented = set(SD_CLI_DEFAULTS) | set(PACKAGE_DEFAULTS) | {"high_noise_steps"}
    checked = 0
    for row in table:
        field = row.field or row.name
        from_core = row.default is _params._FROM_CORE  # width/height say their own (None: the image's, else 512)
        if row.name in documented or not from_core or row.kind not in ("bool", "int", "float", "enum"):
            continue
        core = getattr(record, field)
        ours = table.defaults[row.name]
        if ours is None:  # "the core chooses": the core's own sentinel
            assert row.auto is not None and (core == row.auto or (math.isinf(core) and math.isinf(row.auto)))
        elif row.kind == "float":
            assert np.float32(ours) == np.float32(core), row.name
        else:
            assert ours == core, row.name
        checked += 1
    assert checked >= 10


def test_signatures_come_from_the_tables():
    context = inspect.signature(sdcpp_py.Context)
    assert list(context.parameters) == list(CONTEXT.rows)
    assert context.parameters["chroma_use_dit_mask"].default is True
    generate = inspect.signature(sdcpp_py.Context.generate)
    assert list(generate.parameters)[:2] == ["self", "prompt"]
    assert list(generate.parameters)[2:] == list(IMAGE.rows)
    assert generate.parameters["seed"].default == 42 and generate.parameters["steps"].default == 20
    video = inspect.signature(sdcpp_py.Context.generate_video).parameters
    sampling = [name for name in video if name in _params.SAMPLING]
    assert [f"high_noise_{name}" for name in sampling] == [name for name in video if name.startswith("high_noise_")]


def test_an_unknown_keyword_names_close_matches(flux):
    with pytest.raises(TypeError, match=r"generate\(\) got an unexpected keyword argument 'stpes'; did you mean steps"):
        flux.generate("a red cube", stpes=2)
    with pytest.raises(TypeError, match=r"Context\(\) got an unexpected keyword argument 'clip'; did you mean"):
        sdcpp_py.Context(diffusion_model="x", clip="y")


def test_the_high_noise_copy_reaches_the_native_record():
    from sdcpp_py._request import sampling

    request = _core.VideoGenParams()
    values = VIDEO.bind({"high_noise_guidance": 2.5, "high_noise_skip_layers": [3], "high_noise_sampler": "euler"},
                        "generate_video")
    sampling(VIDEO, request, values, "high_noise_")
    assert request.high_noise_guidance == 2.5 and request.high_noise_skip_layers == [3]
    assert request.high_noise_sampler == int(sdcpp_py.Sampler.EULER) and request.high_noise_steps == -1
    with pytest.raises(ValueError, match=r"^high_noise_slg_start=2 is out of range"):
        sampling(VIDEO, request, VIDEO.bind({"high_noise_slg_start": 2}, "generate_video"), "high_noise_")
