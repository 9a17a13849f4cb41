"""Same files, prompt, size, steps, cfg and seed: our pixels must equal the vendored sd-cli's PNG."""

import numpy as np
import pytest

import sdcpp_py


@pytest.mark.parametrize("sampler", [None, "euler_a"])
def test_flux_parts_match_sd_cli(run_sd_cli, flux_parts, tmp_path, sampler):
    extra = [] if sampler is None else ["--sampling-method", sampler]
    expected = run_sd_cli(tmp_path / "cli.png", flux_parts, "-p", "a red cube", "-W", "64", "-H", "64",
                          "--steps", "2", "--cfg-scale", "1.0", "-s", "42", "-t", "2", *extra)
    with sdcpp_py.Context(**flux_parts, n_threads=2) as ctx:
        ours = ctx.txt2img("a red cube", width=64, height=64, steps=2, cfg_scale=1.0, seed=42, sampler=sampler)[0]
    np.testing.assert_array_equal(ours, expected)


def test_all_in_one_checkpoint_matches_sd_cli(run_sd_cli, sd1_checkpoint, tmp_path):
    args = dict(width=64, height=64, steps=2, cfg_scale=7.0, seed=11)
    expected = run_sd_cli(tmp_path / "cli.png", {"model": sd1_checkpoint}, "-p", "a red cube",
                          "-n", "blurry", "-W", "64", "-H", "64", "--steps", "2", "--cfg-scale", "7.0", "-s", "11",
                          "-t", "2")
    with sdcpp_py.Context(model=sd1_checkpoint, n_threads=2) as ctx:
        assert ctx.default_sampler == sdcpp_py.Sampler.EULER_A  # a UNet model
        ours = ctx.txt2img("a red cube", negative_prompt="blurry", **args)[0]
    assert ours.shape == (64, 64, 3) and ours.std() > 1.0
    np.testing.assert_array_equal(ours, expected)


def test_free_params_immediately_matches_sd_cli_and_refuses_a_second_call(run_sd_cli, flux_parts, tmp_path):
    # sd-cli always frees each part's weights once it is done with them: this is its memory profile.
    expected = run_sd_cli(tmp_path / "cli.png", flux_parts, "-p", "a red cube", "-W", "64", "-H", "64",
                          "--steps", "2", "--cfg-scale", "1.0", "-s", "42", "-t", "2")
    with sdcpp_py.Context(**flux_parts, n_threads=2, free_params_immediately=True) as ctx:
        ours = ctx.txt2img("a red cube", width=64, height=64, steps=2, cfg_scale=1.0, seed=42)[0]
        with pytest.raises(RuntimeError, match="free_params_immediately=True"):
            ctx.txt2img("a red cube", width=64, height=64, steps=2, cfg_scale=1.0, seed=42)
    np.testing.assert_array_equal(ours, expected)
    # A bad argument is refused before the core runs: the context is still unspent.
    with sdcpp_py.Context(**flux_parts, n_threads=2, free_params_immediately=True) as ctx:
        with pytest.raises(ValueError, match="width=0"):
            ctx.txt2img("a red cube", width=0)
        again = ctx.txt2img("a red cube", width=64, height=64, steps=2, cfg_scale=1.0, seed=42)[0]
    np.testing.assert_array_equal(again, expected)
