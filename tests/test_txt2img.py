import ctypes
import sys
import threading

import numpy as np
import pytest

import sdcpp_py
from sdcpp_py import _core

SMALL = dict(width=64, height=64, steps=2, cfg_scale=1.0)


def test_separate_components_give_an_rgb_uint8_image(flux):
    images = flux.txt2img("a red cube", seed=42, **SMALL)
    assert isinstance(images, list) and len(images) == 1
    image = images[0]
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    assert image.std() > 1.0, "a constant image means the pipeline produced nothing"


def test_same_seed_same_pixels_other_seed_other_pixels(flux):
    first = flux.txt2img("a red cube", seed=7, **SMALL)[0]
    again = flux.txt2img("a red cube", seed=7, **SMALL)[0]
    other = flux.txt2img("a red cube", seed=8, **SMALL)[0]
    np.testing.assert_array_equal(first, again)
    assert np.abs(first.astype(int) - other.astype(int)).mean() > 1.0


def test_prompt_changes_the_image(flux):
    red = flux.txt2img("a red cube", seed=3, **SMALL)[0]
    tree = flux.txt2img("a green tree by a lake", seed=3, **SMALL)[0]
    assert not np.array_equal(red, tree)


def test_batch_uses_consecutive_seeds(flux):
    batch = flux.txt2img("a red cube", seed=100, batch_count=2, **SMALL)
    assert len(batch) == 2 and batch.seed == 100
    single = flux.txt2img("a red cube", seed=100, **SMALL)[0]
    np.testing.assert_array_equal(batch[0], single)
    assert not np.array_equal(batch[0], batch[1])


def test_random_seed_is_63_bit_and_reported(flux):
    result = flux.txt2img("a red cube", seed=-1, **SMALL)
    assert 0 <= result.seed < 2**63
    replay = flux.txt2img("a red cube", seed=result.seed, **SMALL)
    np.testing.assert_array_equal(result[0], replay[0])
    assert flux.txt2img("a red cube", seed=-1, **SMALL).seed != result.seed


def test_result_shares_the_core_buffer_and_frees_it(flux):
    before = _core._live_image_buffers()
    image = flux.txt2img("a red cube", seed=1, **SMALL)[0]
    assert _core._live_image_buffers() == before + 1
    assert not image.flags.owndata
    capsule = image.base
    assert type(capsule).__name__ == "PyCapsule"
    get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
    get_pointer.restype, get_pointer.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    assert get_pointer(capsule, None) == image.__array_interface__["data"][0]
    view = image[10:20]
    del image, capsule
    assert _core._live_image_buffers() == before + 1, "a view must keep the buffer alive"
    del view
    assert _core._live_image_buffers() == before


def test_progress_receives_each_step(flux):
    calls = []
    flux.txt2img("a red cube", seed=1, progress=lambda *args: calls.append(args), **SMALL)
    sampling = [c for c in calls if c[1] == SMALL["steps"]]
    assert [c[0] for c in sampling][-SMALL["steps"]:] == [1, 2]
    assert all(isinstance(c[2], float) and c[2] >= 0 for c in calls)


def test_progress_exception_reaches_the_caller_and_context_still_works(flux):
    class Stop(Exception):
        pass

    def progress(step, steps, seconds):
        raise Stop(f"step {step}")

    with pytest.raises(Stop):
        flux.txt2img("a red cube", seed=5, progress=progress, **SMALL)
    assert flux.txt2img("a red cube", seed=5, **SMALL)[0].shape == (64, 64, 3)


def test_gil_is_released_during_load_and_generation(flux_parts):
    ticks = []
    stop = threading.Event()

    def heartbeat():
        while not stop.is_set():
            ticks.append(1)
            stop.wait(0.001)

    thread = threading.Thread(target=heartbeat)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1.0)  # with the GIL held, the heartbeat would starve for the whole call
    try:
        thread.start()
        ctx = sdcpp_py.Context(**flux_parts, n_threads=2)
        after_load = len(ticks)
        ctx.txt2img("a red cube", seed=1, **SMALL)
        after_generation = len(ticks)
        ctx.close()
    finally:
        stop.set()
        thread.join()
        sys.setswitchinterval(interval)
    assert after_load >= 5
    assert after_generation - after_load >= 5


def test_core_logs_reach_the_logger(flux_parts, caplog):
    caplog.set_level("DEBUG", logger="sdcpp_py")
    with sdcpp_py.Context(**flux_parts, n_threads=2) as ctx:
        ctx.txt2img("a red cube", seed=1, **SMALL)
    records = [r for r in caplog.records if r.name == "sdcpp_py"]
    levels = {r.levelname for r in records}
    assert {"DEBUG", "INFO", "WARNING"} <= levels
    assert any("t5xxl" in r.getMessage() and r.levelname == "WARNING" for r in records)
    assert not any(r.getMessage().endswith("\n") for r in records)


def test_model_dependent_defaults_come_from_the_core(flux):
    assert flux.default_sampler == sdcpp_py.Sampler.EULER  # a DiT model
    assert flux.default_scheduler() == sdcpp_py.Scheduler.DISCRETE
    assert flux.default_scheduler("lcm") == sdcpp_py.Scheduler.LCM


def test_sampler_and_scheduler_accept_enum_and_core_names(flux):
    by_enum = flux.txt2img("x", seed=2, sampler=sdcpp_py.Sampler.DPMPP2M, scheduler=sdcpp_py.Scheduler.KARRAS, **SMALL)
    by_name = flux.txt2img("x", seed=2, sampler="dpm++2m", scheduler="karras", **SMALL)
    np.testing.assert_array_equal(by_enum[0], by_name[0])


@pytest.mark.slow
def test_flux_with_full_size_t5xxl(flux_parts_with_t5, flux_parts):
    with sdcpp_py.Context(**flux_parts_with_t5, n_threads=2) as ctx:
        with_t5 = ctx.txt2img("a red cube", seed=42, **SMALL)[0]
    with sdcpp_py.Context(**flux_parts, n_threads=2) as ctx:
        without_t5 = ctx.txt2img("a red cube", seed=42, **SMALL)[0]
    assert with_t5.shape == (64, 64, 3) and with_t5.std() > 1.0
    assert np.abs(with_t5.astype(int) - without_t5.astype(int)).mean() > 1.0


def test_quantized_gguf_diffusion_model_with_safetensors_parts(flux_parts, flux_gguf_dit):
    gguf_parts = dict(flux_parts, diffusion_model=flux_gguf_dit)
    assert flux_gguf_dit.suffix == ".gguf"
    with sdcpp_py.Context(**gguf_parts, n_threads=2) as ctx:
        quantized = ctx.txt2img("a red cube", seed=42, **SMALL)[0]
    with sdcpp_py.Context(**flux_parts, n_threads=2) as ctx:
        full = ctx.txt2img("a red cube", seed=42, **SMALL)[0]
    assert quantized.shape == full.shape
    assert np.abs(quantized.astype(int) - full.astype(int)).mean() < 2.0  # q8_0 ~ f16


def test_two_contexts_on_two_threads_get_only_their_own_progress(flux_parts):
    contexts = [sdcpp_py.Context(**flux_parts, n_threads=1) for _ in range(2)]
    seen = {0: [], 1: []}
    errors = []

    def work(index):
        try:
            for _ in range(2):
                contexts[index].txt2img("a red cube", seed=index, width=64, height=64, steps=2 + index,
                                        cfg_scale=1.0, progress=lambda s, n, t: seen[index].append(n))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for ctx in contexts:
        ctx.close()
    assert not errors
    # Sampling reports steps=2 on thread 0 and steps=3 on thread 1: neither sees the other's.
    assert 2 in seen[0] and 3 not in seen[0]
    assert 3 in seen[1] and 2 not in seen[1]


@pytest.mark.parametrize("mode", ["proj", "vae"])
def test_preview_frames_arrive_as_arrays_and_do_not_change_the_result(flux, mode):
    frames = []
    result = flux.txt2img("a red cube", seed=9, width=64, height=64, steps=3, cfg_scale=1.0, preview_mode=mode,
                          preview=lambda step, images, noisy: frames.append((step, images.copy(), noisy)))
    plain = flux.txt2img("a red cube", seed=9, width=64, height=64, steps=3, cfg_scale=1.0)
    np.testing.assert_array_equal(result[0], plain[0])
    assert len(frames) == 3
    step, images, noisy = frames[-1]
    assert images.ndim == 4 and images.shape[0] == 1 and images.shape[-1] == 3 and images.dtype == np.uint8
    assert noisy is False
    if mode == "vae":
        assert images.shape[1:] == (64, 64, 3)


def test_preview_exception_reaches_the_caller(flux):
    def preview(step, images, noisy):
        raise LookupError("stop")

    with pytest.raises(LookupError):
        flux.txt2img("a red cube", seed=1, preview=preview, **SMALL)


def test_threads_sharing_one_context_get_the_serial_results(flux):
    seeds = list(range(20, 28))
    serial = {seed: flux.txt2img("a red cube", seed=seed, **SMALL)[0] for seed in seeds}
    shared = {}
    errors = []

    def work(my_seeds):
        try:
            for seed in my_seeds:
                shared[seed] = flux.txt2img("a red cube", seed=seed, **SMALL)[0]
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(seeds[i::4],)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert sorted(shared) == seeds
    for seed in seeds:
        np.testing.assert_array_equal(shared[seed], serial[seed])
