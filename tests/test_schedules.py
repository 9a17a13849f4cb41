"""Sigma schedules at the edges of the step count (patch 0031, found by tools/fuzz.py params), the discrete
schedule's timesteps (patch 0032) and the schedulers a model has no schedule for (refused before the core runs)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import numpy as np
import pytest

import sdcpp_py
from native_hooks import hooks

ONE_STEP = dict(width=32, height=32, steps=1, sampler="euler", seed=11)


def test_one_step_of_karras_exponential_or_bong_tangent_is_the_discrete_step(flux_parts):
    # Each formula divided by steps - 1: a NaN first sigma, and the call returned an all-white image. One step
    # is sigma_max then 0, which is the discrete scheduler's one step (t_to_sigma(999) is sigma_max).
    with sdcpp_py.Context(**flux_parts, n_threads=2) as ctx:
        images = {name: ctx.txt2img("a cube", scheduler=name, **ONE_STEP)[0]
                  for name in ("discrete", "karras", "exponential", "bong_tangent")}
    assert images["discrete"].min() < 250  # a picture, not the blank a NaN sigma gives
    # bong_tangent's one step started from the middle sigma: half denoised
    for name in ("karras", "exponential", "bong_tangent"):
        assert np.array_equal(images[name], images["discrete"]), name


GITS_CHILD = """
    import json, sys
    import numpy as np
    import sdcpp_py
    from sdcpp_py import _test_hooks
    parts, call = json.loads(sys.argv[1]), json.loads(sys.argv[2])
    first = _test_hooks._scheduler_sigmas("gits", 2, 0.0, 1.0)[0]  # the 2-step table's first sigma
    # GITS's sigmas are SD's (flow models refuse it): the tiny Flux parts sampled as eps prediction
    with sdcpp_py.Context(**parts, n_threads=2, prediction="eps") as ctx:
        one_step = ctx.txt2img("a cube", scheduler="gits", **call)[0]
        custom = ctx.txt2img("a cube", custom_sigmas=[first, 0.0], **call)[0]
    print(json.dumps({"same": bool(np.array_equal(one_step, custom)), "min": int(one_step.min()),
                      "hook": _test_hooks._scheduler_sigmas("gits", 1, 0.0, 1.0), "first": first}))
"""


def test_one_step_of_gits_is_its_first_sigma_not_a_crash(flux_parts):
    hooks()
    # GITS read its tables at index steps - 2 = -1: SIGSEGV. In a child process, which such a read kills.
    call = ONE_STEP
    try:
        result = subprocess.run([sys.executable, "-c", textwrap.dedent(GITS_CHILD),
                                 json.dumps({k: str(v) for k, v in flux_parts.items()}), json.dumps(call)],
                                capture_output=True, text=True, timeout=240)
    except subprocess.TimeoutExpired:
        pytest.fail("the child hung")
    assert result.returncode == 0, f"exit status {result.returncode}\n{result.stderr[-3000:]}"
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["hook"] == [outcome["first"], 0.0]
    assert outcome["same"], "one GITS step is not the step from its first sigma to 0"
    assert outcome["min"] < 250


@pytest.mark.parametrize("name", ["karras", "exponential"])
def test_one_step_schedules_of_the_sigma_range_schedulers(name):
    sigmas = hooks()._scheduler_sigmas(name, 1, 0.0292, 14.6146)
    assert sigmas == [np.float32(14.6146), 0.0]
    longer = hooks()._scheduler_sigmas(name, 4, 0.0292, 14.6146)
    assert len(longer) == 5 and all(map(math.isfinite, longer)) and longer[0] == pytest.approx(14.6146, rel=1e-6)


def test_discrete_timesteps_stay_in_the_table():
    # The hook's t_to_sigma is the identity, so these are the timesteps CompVisDenoiser::t_to_sigma interpolates
    # its 1000-entry table at. Without patch 0032 the last was -6.1e-5 at 22 steps (and 1274 other counts):
    # floor(t) = -1, a read before the table.
    below, above = [], []
    for n in range(2, 2049):
        timesteps = hooks()._scheduler_sigmas("discrete", n, 0.0292, 14.6146)
        assert len(timesteps) == n + 1 and timesteps[0] == 999.0 and timesteps[-1] == 0.0
        below += [n for t in timesteps[:-1] if t < 0.0]
        above += [n for t in timesteps[:-1] if t > 999.0]
    assert below == [] and above == []
    assert hooks()._scheduler_sigmas("discrete", 22, 0.0292, 14.6146)[-2] == 0.0


def reference_curve(levels: np.ndarray, n: int) -> np.ndarray:
    """The log-linear interpolation in doubles: levels (descending) stretched to n points."""
    x_ref = np.linspace(0.0, 1.0, len(levels))
    return np.exp(np.interp(np.linspace(0.0, 1.0, n), x_ref, np.log(levels[::-1].astype(np.float64))))[::-1]


INTERPOLATION_CHILD = """
    import json, sys
    from sdcpp_py import _test_hooks
    levels, n = json.loads(sys.argv[1]), json.loads(sys.argv[2])
    print(json.dumps(_test_hooks._log_linear_interpolation(levels, n)))
"""


# 8284 and 9004 points: both grids are float sums of their steps, and at these lengths a point just before the
# last lies past the reference grid's last (a float simulation of the core's loops finds 99 such lengths up to
# 10001, the first 8284); 21 reference points are GITS's longest table, 11 AYS's.
@pytest.mark.parametrize("reference_points, n", [(11, 8284), (21, 9004), (11, 50)])
def test_long_interpolations_stay_on_the_reference_curve(reference_points, n):
    hooks()
    levels = np.geomspace(14.6146, 0.0292, reference_points).astype(np.float32)
    # In a child: without patch 0031 the search runs off the end of the reference vector.
    try:
        result = subprocess.run([sys.executable, "-c", textwrap.dedent(INTERPOLATION_CHILD),
                                 json.dumps(levels.tolist()), json.dumps(n)], capture_output=True, text=True,
                                timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("the child hung")
    assert result.returncode == 0, f"exit status {result.returncode}\n{result.stderr[-3000:]}"
    values = np.array(json.loads(result.stdout))
    assert values.shape == (n,)
    np.testing.assert_allclose(values, reference_curve(levels, n), rtol=2e-3)
    assert np.all(np.diff(values) <= 0)


def test_ays_and_gits_are_refused_for_a_flow_model(flux_parts):
    # For Flux the core logged an error and sampled AYS with every sigma 0 (a white image); GITS gave its SD-scale
    # sigmas (up to 14.6) to the flow denoiser, whose sigmas run from 1 to 0.
    with sdcpp_py.Context(**flux_parts, n_threads=1) as ctx:
        for name in ("ays", "gits"):
            with pytest.raises(ValueError, match=rf"scheduler='{name}'.*a Flux\.1 model is sampled by flow"):
                ctx.txt2img("a cube", scheduler=name, **ONE_STEP)
        assert ctx.txt2img("a cube", scheduler="simple", **ONE_STEP)[0].shape == (32, 32, 3)


@pytest.mark.parametrize("architecture, prediction, refused", [
    ("SD1", None, ()), ("SDXL", None, ()), ("SD2", None, ("ays",)), ("Wan", None, ("ays", "gits")),
    ("Flux.1", None, ("ays", "gits")), (None, None, ()), ("SD1", "flux_flow", ("ays", "gits")),
    ("SDXL", "v", ()), ("Flux.1", "eps", ("ays",)), (None, "sd3_flow", ("ays", "gits"))])
def test_ays_and_gits_follow_the_models_they_have_sigmas_for(architecture, prediction, refused):
    # Both are tables of SD-scale sigmas: a flow denoiser's run from 1 to 0 (AYS made a white image).
    # AYS has levels for SD1.x and SDXL only: SD2 made the core interpolate from none (SIGSEGV). An unknown
    # model is left to the core.
    from sdcpp_py._enums import Prediction
    from sdcpp_py._request import _check_scheduler

    facts = SimpleNamespace(architecture=architecture,
                            prediction=None if prediction is None else int(Prediction.coerce(prediction, "p")))
    for value in ("ays", "gits", "discrete", None):
        if value in refused:
            with pytest.raises(ValueError, match=rf"scheduler='{value}'"):
                _check_scheduler({"scheduler": value}, facts, ("scheduler",))
        else:
            _check_scheduler({"scheduler": value}, facts, ("scheduler",))


def test_a_hires_schedule_of_over_ten_thousand_steps_is_refused(flux_parts_with_encoder):
    # The hires pass schedules steps / denoising_strength steps: up to 10000 / 1e-4 (the core raises a smaller
    # strength to 1e-4) = 1e8 sigmas, past where the schedulers' float grids stay on their tables.
    call = dict(width=32, height=32, steps=1, seed=2)
    with sdcpp_py.Context(**flux_parts_with_encoder, n_threads=2) as ctx:
        with pytest.raises(ValueError, match=r"hires: 2 steps at denoising_strength=0.0001 schedule 20000 steps"):
            ctx.txt2img("a cube", hires=sdcpp_py.Hires("latent", scale=1.5, steps=2, denoising_strength=1e-4), **call)
        with pytest.raises(ValueError, match=r"hires.denoising_strength=5e-05 is below the core's smallest"):
            ctx.txt2img("a cube", hires=sdcpp_py.Hires("latent", scale=1.5, steps=1, denoising_strength=5e-5), **call)
        edge = ctx.txt2img("a cube", hires=sdcpp_py.Hires("latent", scale=1.5, steps=1, denoising_strength=1e-4),
                           **call)  # 10000 scheduled, one run
        assert edge[0].shape == (48, 48, 3)


@pytest.mark.parametrize("prediction", [None, "flux_flow"])
def test_a_flux_flow_shift_past_the_float_exponent_is_refused(flux_parts, prediction):
    # A Flux flow denoiser's sigma is e^shift / (e^shift + 1/t - 1) in floats: flow_shift=100 made every sigma
    # inf / inf and the image all white. 88 still fits (e^88.7 is the largest float).
    with sdcpp_py.Context(**flux_parts, n_threads=2, prediction=prediction) as ctx:
        with pytest.raises(ValueError, match=r"flow_shift=100: with (the Flux\.1 model|prediction='flux_flow') the "
                                             r"shift is an exponent"):
            ctx.txt2img("a cube", flow_shift=100.0, **ONE_STEP)
        image = ctx.txt2img("a cube", flow_shift=88.0, **ONE_STEP)[0]
        assert image.min() < image.max()  # finite sigmas: a picture


def test_an_overridden_flow_prediction_needs_its_shift(flux_parts):
    # The core sets its default shift only where it picks the prediction itself: prediction='flux_flow' without
    # flow_shift sampled with an infinite shift, every sigma NaN, a white image.
    with sdcpp_py.Context(**flux_parts, n_threads=2, prediction="flux_flow") as ctx:
        with pytest.raises(ValueError, match=r"prediction='flux_flow' needs flow_shift="):
            ctx.txt2img("a cube", **ONE_STEP)
        assert ctx.txt2img("a cube", flow_shift=1.15, **ONE_STEP)[0].min() < 250


def test_a_flow_shift_the_denoiser_never_reads_is_refused(flux_parts):
    # With prediction='eps' the core gives the model an eps denoiser, which has no shift: the value was dropped
    # without a word. Refused before the core runs; without it the call samples.
    with sdcpp_py.Context(**flux_parts, n_threads=2, prediction="eps") as ctx:
        with pytest.raises(ValueError, match=r"^flow_shift=3: prediction='eps' is not sampled by flow"):
            ctx.txt2img("a cube", flow_shift=3.0, **ONE_STEP)
        assert ctx.txt2img("a cube", **ONE_STEP)[0].shape == (32, 32, 3)


def image_record(**fields):
    from sdcpp_py import _core

    record = _core.ImageGenParams()
    for name, value in fields.items():
        setattr(record, name, value)
    return record


@pytest.mark.parametrize("architecture, prediction, shift, refused", [
    ("Flux.1", "sd3_flow", 0.0, True), ("Flux.1", "sd3_flow", 1e-9, True), ("Flux.1", "sd3_flow", 2.0**-25, True),
    ("Flux.1", "sd3_flow", 3.1e-8, False), ("Flux.1", "sd3_flow", 3.0, False), ("Flux.1", "flux_flow", 88.72, False),
    ("Flux.1", "flux_flow", 88.73, True), ("Flux.1", "flux_flow", 0.0, False), ("SD3", None, 0.0, True),
    ("Wan2.1-T2V-1.3B", None, 1e-9, True), ("SD3", None, 3.0, False), ("Flux.2", None, 1000.0, True),
    ("Flux.2", None, 2.0, True), ("Flux.1", "flux2_flow", 2.0, True), (None, None, 0.0, False),
    ("Flux.1", None, 100.0, True), ("SD1", None, 0.0, True), ("SD1", None, 3.0, True), ("SDXL", "v", 3.0, True),
    ("SD3", "eps", 3.0, True), ("SD1", "sd3_flow", 3.0, False),
    ("Flux.1", "sd3_flow", math.inf, True), ("Flux.1", "flux_flow", math.inf, True),
    ("Flux.1", "flux2_flow", math.inf, False), ("SD1", "eps", math.inf, False), ("SD3", None, math.inf, False)])
def test_flow_shifts_that_make_a_nan_sigma_are_refused(architecture, prediction, shift, refused):
    # A Flux flow shift is an exponent (e^88.73 overflows a float); an SD3-style one divides by 1 + (shift - 1)
    # at t = 1 (0 up to 2^-25); an overridden flow prediction has no default shift (inf: NaN sigmas). Flux.2
    # computes its own shift over a given one, and eps / v models have none: a given shift would be ignored.
    from sdcpp_py._enums import Prediction
    from sdcpp_py._request import _check_flow_shift

    facts = SimpleNamespace(architecture=architecture,
                            prediction=None if prediction is None else int(Prediction.coerce(prediction, "p")))
    if refused:
        with pytest.raises(ValueError, match="flow_shift"):
            _check_flow_shift(image_record(flow_shift=shift), facts)
    else:
        _check_flow_shift(image_record(flow_shift=shift), facts)


def test_a_flow_shift_is_checked_only_where_the_core_reads_it():
    # With custom sigmas the core makes no schedule: the shift is read only by a hires pass and by the
    # easycache / ucache step ranges.
    from sdcpp_py._enums import CacheMode, Prediction
    from sdcpp_py._request import _check_flow_shift

    facts = SimpleNamespace(architecture="Flux.1", prediction=int(Prediction.FLUX_FLOW))
    _check_flow_shift(image_record(custom_sigmas=[1.0, 0.0]), facts)  # no shift, none needed
    with pytest.raises(ValueError, match="needs flow_shift"):
        _check_flow_shift(image_record(custom_sigmas=[1.0, 0.0]), facts, hires=True)
    with pytest.raises(ValueError, match="needs flow_shift"):
        _check_flow_shift(image_record(custom_sigmas=[1.0, 0.0], cache_mode=int(CacheMode.EASYCACHE)), facts)
    _check_flow_shift(image_record(custom_sigmas=[1.0, 0.0], cache_mode=int(CacheMode.DBCACHE)), facts)
    # Flux.2 sets its own shift where it makes sigmas; with custom sigmas the cache step ranges read a given one.
    flux2 = SimpleNamespace(architecture="Flux.2", prediction=None)
    _check_flow_shift(image_record(custom_sigmas=[1.0, 0.0], cache_mode=int(CacheMode.EASYCACHE), flow_shift=2.0),
                      flux2)
    with pytest.raises(ValueError, match="computes its own shift"):
        _check_flow_shift(image_record(cache_mode=int(CacheMode.EASYCACHE), flow_shift=2.0), flux2)


def test_the_hires_schedule_counts_the_steps_the_first_pass_ran():
    # The core scales the first pass's steps after its cuts: custom sigmas run len - 1 of them, img2img at
    # strength < 1 runs t_enc + 1. Requests valid by that count must not be refused, others must be.
    from sdcpp_py._request import _check_hires_schedule, _hires_base_steps

    request = image_record
    img2img = request(steps=20, strength=0.75, hires_steps=0, hires_denoising_strength=0.0019)
    assert _hires_base_steps(img2img, img2img=True) == 16  # int(20 * 0.75) + 1
    _check_hires_schedule(img2img, 16)  # 16 / 0.0019 = 8421
    with pytest.raises(ValueError, match="hires: 20 steps"):
        _check_hires_schedule(img2img, _hires_base_steps(img2img, img2img=False))  # txt2img: 10526
    custom = request(steps=20, custom_sigmas=[1.0, 0.0], hires_steps=0, hires_denoising_strength=0.001)
    assert _hires_base_steps(custom, img2img=False) == 1
    _check_hires_schedule(custom, 1)
    # More custom sigmas than steps: all are kept, and the img2img cut keeps those from steps - t_enc - 1 on.
    both = request(steps=4, custom_sigmas=[float(10 - i) for i in range(11)], strength=0.5, hires_steps=0,
                   hires_denoising_strength=0.0005)
    assert _hires_base_steps(both, img2img=True) == 9  # 11 - 4 + int(4 * 0.5)
    with pytest.raises(ValueError, match="hires: 9 steps"):
        _check_hires_schedule(both, 9)  # 18000
