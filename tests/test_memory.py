"""Native memory is freed: results, contexts and callbacks keep the process RSS flat."""

import gc
import sys

import pytest

import sdcpp_py
from sdcpp_py import _core

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")

SMALL = dict(width=64, height=64, steps=1, cfg_scale=1.0)


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def test_generations_and_contexts_do_not_leak(flux_parts):
    ctx = sdcpp_py.Context(**flux_parts, n_threads=2)
    for seed in range(5):  # warm-up: allocator pools, graph caches
        ctx.txt2img("a red cube", seed=seed, **SMALL)
    gc.collect()
    before = rss_mb()
    for seed in range(50):
        images = ctx.txt2img("a red cube", seed=seed, progress=lambda *args: None, **SMALL)
        del images
    gc.collect()
    after_generations = rss_mb()
    ctx.close()
    assert _core._live_image_buffers() == 0

    for _ in range(2):
        sdcpp_py.Context(**flux_parts, n_threads=2).close()
    gc.collect()
    before_contexts = rss_mb()
    for _ in range(10):
        with sdcpp_py.Context(**flux_parts, n_threads=2):
            pass
    gc.collect()
    after_contexts = rss_mb()
    # Generous bounds: a leaked 64x64 result alone would be 12 KB per call, a leaked context tens of MB.
    assert after_generations - before < 20, f"50 generations grew RSS by {after_generations - before:.1f} MB"
    assert after_contexts - before_contexts < 40, f"10 contexts grew RSS by {after_contexts - before_contexts:.1f} MB"


def test_cancelled_generations_do_not_leak(flux_parts):
    ctx = sdcpp_py.Context(**flux_parts, n_threads=2)

    def cancel_at_step_one(step, steps, seconds):
        if step == 1:
            ctx.cancel()

    def cancelled_call(seed):
        with pytest.raises(sdcpp_py.Cancelled):
            ctx.txt2img("a red cube", seed=seed, width=64, height=64, steps=4, cfg_scale=1.0,
                        progress=cancel_at_step_one)

    for seed in range(3):  # warm-up, as above
        ctx.txt2img("a red cube", seed=seed, **SMALL)
        cancelled_call(seed)
    gc.collect()
    after_one = rss_mb()
    for seed in range(20):
        cancelled_call(seed)
    gc.collect()
    after_twenty = rss_mb()
    ctx.close()
    assert after_twenty - after_one < 20, f"20 cancels grew RSS by {after_twenty - after_one:.1f} MB"


def test_failed_loads_free_what_they_built(flux_parts, tmp_path):
    # One Wan tensor name makes the core take the Flux file for Wan, whose constructor fails a check during
    # init: an exception that used to unwind past new_sd_ctx's cleanup (patch 0021).
    import numpy as np
    from sdcpp_py import _formats
    from sdcpp_py.testing.extras import read_tensors

    tensors = read_tensors(flux_parts["diffusion_model"])
    wan_like = _formats.write_safetensors(tmp_path / "wan-like.safetensors",
                                          {**tensors, "blocks.0.cross_attn.norm_k.weight": np.ones(4, np.float32)})
    parts = {**flux_parts, "diffusion_model": wan_like}

    def failed_load():
        with pytest.raises(sdcpp_py.SdcppError, match="wan"):
            sdcpp_py.Context(**parts, n_threads=1)
        gc.collect()

    for _ in range(3):  # warm-up: allocator pools
        failed_load()
    before = rss_mb()
    for _ in range(15):
        failed_load()
    grown = rss_mb() - before
    # Each failed load leaked ~14 MB (200 MB over 15); what is left is allocator noise.
    assert grown < 60, f"15 failed loads grew RSS by {grown:.1f} MB"
