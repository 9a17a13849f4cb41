"""Stopping a generation: Context.cancel(), Ctrl-C and a raising callback; the context stays usable.

The pinned core cannot stop a generation; patches/0001-abort-diffusion-compute.patch adds the abort hook.
Without it these tests fail: the steps after the cancel still run.
"""

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import traceback

import numpy as np
import pytest

import sdcpp_py

FLUX_CALL = dict(width=64, height=64, steps=6, cfg_scale=1.0, seed=11)
# One SD1 step at 256x256 takes many seconds on two cores: long enough to cancel inside it.
SLOW_STEP = dict(width=256, height=256, steps=1, cfg_scale=1.0, seed=3)
SD1_SMALL = dict(width=64, height=64, steps=1, cfg_scale=1.0, seed=3)


@pytest.fixture(scope="module")
def flux_reference(flux_parts):
    """What a fresh context makes of FLUX_CALL."""
    with sdcpp_py.Context(**flux_parts, n_threads=2) as ctx:
        return ctx.txt2img("a red cube", **FLUX_CALL)[0]


def test_the_abort_patch_is_compiled_in():
    assert "0001-abort-diffusion-compute" in sdcpp_py.core_patches()


def test_cancel_stops_before_the_next_step_and_the_context_still_matches_a_fresh_one(flux, flux_reference):
    steps_seen = []

    def progress(step, steps, seconds):
        if steps == FLUX_CALL["steps"]:
            steps_seen.append(step)
            if step == 2:
                flux.cancel()

    with pytest.raises(sdcpp_py.Cancelled) as caught:
        flux.txt2img("a red cube", progress=progress, **FLUX_CALL)
    assert isinstance(caught.value, sdcpp_py.SdcppError)
    assert max(steps_seen) == 2, f"steps after the cancel still ran: {steps_seen}"
    np.testing.assert_array_equal(flux.txt2img("a red cube", **FLUX_CALL)[0], flux_reference)


def test_cancel_with_nothing_in_flight_does_not_touch_later_calls(flux, flux_reference):
    flux.cancel()
    np.testing.assert_array_equal(flux.txt2img("a red cube", **FLUX_CALL)[0], flux_reference)


def test_cancel_during_text_encoding_stops_before_any_sampling(flux):
    class CancelWhenSamplingIsPlanned(logging.Handler):
        def emit(self, record):
            if "sampling using" in record.getMessage():  # logged before the prompt is encoded
                flux.cancel()

    logger = logging.getLogger("sdcpp_py")
    handler = CancelWhenSamplingIsPlanned(level=logging.INFO)
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    steps_seen = []
    try:
        with pytest.raises(sdcpp_py.Cancelled):
            flux.txt2img("a red cube", progress=lambda step, steps, s: steps_seen.append(step), **FLUX_CALL)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    assert max(steps_seen, default=0) == 0, f"sampling steps ran after the cancel: {steps_seen}"


def test_raising_progress_stops_the_generation_and_its_exception_arrives_unchanged(flux, flux_reference, caplog):
    class Stop(Exception):
        pass

    raised = []
    steps_seen = []

    def progress(step, steps, seconds):
        if steps == FLUX_CALL["steps"]:
            steps_seen.append(step)
            if step == 1:
                raised.append(Stop("enough"))
                raise raised[0]

    caplog.set_level(logging.DEBUG, logger="sdcpp_py")
    with pytest.raises(Stop) as caught:
        flux.txt2img("a red cube", progress=progress, **FLUX_CALL)
    assert caught.value is raised[0]
    assert not any("generate_image completed" in r.getMessage() for r in caplog.records), "the generation ran on"
    assert "raise raised[0]" in "".join(traceback.format_tb(caught.value.__traceback__))
    assert max(steps_seen) == 1, f"steps after the exception still ran: {steps_seen}"
    np.testing.assert_array_equal(flux.txt2img("a red cube", **FLUX_CALL)[0], flux_reference)


@pytest.mark.parametrize("cfg_scale", [1.0, 7.0])  # 7.0: both guidance passes in one compute (patch 0018)
def test_cancel_from_another_thread_stops_inside_a_long_step(sd1_checkpoint, cfg_scale):
    with sdcpp_py.Context(model=sd1_checkpoint, n_threads=2) as ctx:
        steps_seen = []
        timers = []

        def progress(step, steps, seconds):
            steps_seen.append(step)
            if step == 0:
                timers.append(threading.Timer(0.3, ctx.cancel))
                timers[0].start()

        with pytest.raises(sdcpp_py.Cancelled):
            ctx.txt2img("a red cube", progress=progress, **{**SLOW_STEP, "cfg_scale": cfg_scale})
        timers[0].join()
        assert steps_seen == [0], f"the step was not interrupted: {steps_seen}"
        after = ctx.txt2img("a red cube", **SD1_SMALL)[0]
    with sdcpp_py.Context(model=sd1_checkpoint, n_threads=2) as fresh:
        np.testing.assert_array_equal(after, fresh.txt2img("a red cube", **SD1_SMALL)[0])


# A runner started as a background job without job control (`cmd &` in a script) hands its children SIGINT
# ignored; these children stand for an interactive program, so they put Python's default handler back.
RESTORE_CTRL_C = "import signal; signal.signal(signal.SIGINT, signal.default_int_handler)\n"

CTRL_C_CHILD = RESTORE_CTRL_C + textwrap.dedent("""
    import json, sys
    import numpy as np
    import sdcpp_py
    checkpoint, slow, small = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
    ctx = sdcpp_py.Context(model=checkpoint, n_threads=2)
    steps_seen = []
    def progress(step, steps, seconds):
        steps_seen.append(step)
        if step == 0:
            print("sampling", flush=True)
    try:
        ctx.txt2img("a red cube", progress=progress, **slow)
        outcome = "finished"
    except KeyboardInterrupt:
        outcome = "KeyboardInterrupt"
    after = ctx.txt2img("a red cube", **small)[0]
    fresh = sdcpp_py.Context(model=checkpoint, n_threads=2).txt2img("a red cube", **small)[0]
    print(json.dumps({"outcome": outcome, "steps_seen": steps_seen,
                      "identical_after": bool(np.array_equal(after, fresh))}), flush=True)
""")


@pytest.mark.skipif(sys.platform == "win32", reason="sends SIGINT")
def test_ctrl_c_stops_a_long_step_and_raises_keyboard_interrupt(sd1_checkpoint):
    child = subprocess.Popen(
        [sys.executable, "-c", CTRL_C_CHILD, str(sd1_checkpoint), json.dumps(SLOW_STEP), json.dumps(SD1_SMALL)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in child.stdout:
            if line.strip() == "sampling":
                os.kill(child.pid, signal.SIGINT)
                break
        out, err = child.communicate(timeout=300)
    finally:
        child.kill()
    assert child.returncode == 0, err[-3000:]
    report = json.loads(out.strip().splitlines()[-1])
    assert report == {"outcome": "KeyboardInterrupt", "steps_seen": [0], "identical_after": True}, report


def test_calls_waiting_on_the_context_are_cancelled_too(flux):
    started = threading.Event()
    outcomes = {}

    def progress(step, steps, seconds):
        started.set()
        threading.Event().wait(0.2)  # keep the first call in flight while the second queues

    def run(name, **extra):
        try:
            flux.txt2img("a red cube", **FLUX_CALL, **extra)
            outcomes[name] = "finished"
        except sdcpp_py.Cancelled:
            outcomes[name] = "cancelled"

    first = threading.Thread(target=run, args=("first",), kwargs={"progress": progress})
    first.start()
    started.wait(60)
    second = threading.Thread(target=run, args=("second",))
    second.start()
    threading.Event().wait(0.2)  # let the second call reach the context lock
    flux.cancel()
    first.join()
    second.join()
    assert outcomes == {"first": "cancelled", "second": "cancelled"}


CTRL_C_WHILE_WAITING_CHILD = RESTORE_CTRL_C + textwrap.dedent("""
    import json, os, signal, sys, threading, time
    import sdcpp_py
    parts = json.loads(sys.argv[1])
    ctx = sdcpp_py.Context(**parts, n_threads=2)
    started, worker_steps, outcome = threading.Event(), [], {}
    def progress(step, steps, seconds):
        worker_steps.append(step)
        started.set()
        time.sleep(0.1)  # the worker's call must outlast the 1 s timer however fast the steps are
    def worker():
        try:
            ctx.txt2img("a red cube", width=64, height=64, steps=30, cfg_scale=1.0, progress=progress)
            outcome["worker"] = "finished"
        except BaseException as error:
            outcome["worker"] = type(error).__name__
    thread = threading.Thread(target=worker)
    thread.start()
    started.wait(120)
    threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT)).start()
    try:
        ctx.txt2img("a red cube", width=64, height=64, steps=2, cfg_scale=1.0)  # waits for the worker's call
        outcome["main"] = "finished"
    except KeyboardInterrupt:
        outcome["main"] = "KeyboardInterrupt"
    thread.join()
    outcome["worker_last_step"] = max(worker_steps)
    print(json.dumps(outcome), flush=True)
""")


@pytest.mark.skipif(sys.platform == "win32", reason="sends SIGINT")
def test_ctrl_c_stops_the_main_threads_call_not_another_threads(flux_parts):
    parts = {name: str(path) for name, path in flux_parts.items()}
    result = subprocess.run([sys.executable, "-c", CTRL_C_WHILE_WAITING_CHILD, json.dumps(parts)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"worker": "finished", "main": "KeyboardInterrupt", "worker_last_step": 30}, report
