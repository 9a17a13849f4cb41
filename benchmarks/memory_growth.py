#!/usr/bin/env python3
"""Process memory per call, and how fast a cancel lands, on synthetic components.

Reports, after a warm-up, the RSS growth per generation, per context create/close cycle and per cancelled
generation (tiny Flux.1 parts), and the time from `cancel()` to the `Cancelled` exception inside one long
SD1 step. Not a test: nothing here asserts; the figures go in the README and the issue notes.

    python benchmarks/memory_growth.py [--json out.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import threading
import time
from pathlib import Path

import sdcpp_py
from sdcpp_py.testing import flux1, sd

SMALL = dict(width=64, height=64, steps=1, cfg_scale=1.0)


def rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def growth_per_call(run_once, calls: int, warmup: int) -> dict:
    for i in range(warmup):
        run_once(i)
    gc.collect()
    before = rss_kib()
    for i in range(calls):
        run_once(i)
    gc.collect()
    after = rss_kib()
    return {"calls": calls, "rss_before_mib": round(before / 1024, 1), "rss_after_mib": round(after / 1024, 1),
            "growth_kib_per_call": round((after - before) / calls, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "sdcpp-py" / "synthetic")
    args = parser.parse_args()

    parts = flux1.flux_components(args.cache / "flux")
    results = {"core": sdcpp_py.core_version(), "patches": sdcpp_py.core_patches()}

    ctx = sdcpp_py.Context(**parts, n_threads=2)
    results["generation"] = growth_per_call(
        lambda i: ctx.txt2img("a red cube", seed=i, progress=lambda *a: None, **SMALL), calls=50, warmup=5)

    def cancelled(i):
        def progress(step, steps, seconds):
            if step == 1:
                ctx.cancel()
        try:
            ctx.txt2img("a red cube", seed=i, width=64, height=64, steps=4, cfg_scale=1.0, progress=progress)
        except sdcpp_py.Cancelled:
            return
        raise RuntimeError("the cancel did not land")

    results["cancelled_generation"] = growth_per_call(cancelled, calls=20, warmup=3)
    ctx.close()

    def context_cycle(i):
        with sdcpp_py.Context(**parts, n_threads=2):
            pass

    results["context_create_close"] = growth_per_call(context_cycle, calls=10, warmup=2)

    # Cancel latency inside one long diffusion step (SD1 UNet at 256x256 on this machine: many seconds).
    checkpoint = sd.sd1_checkpoint(args.cache / "sd1")
    latencies = []
    with sdcpp_py.Context(model=checkpoint, n_threads=2) as sd1:
        for _ in range(3):
            marks = {}

            def progress(step, steps, seconds):
                if step == 0:
                    timer = threading.Timer(0.3, lambda: (marks.setdefault("cancel", time.perf_counter()),
                                                          sd1.cancel()))
                    timer.start()

            try:
                sd1.txt2img("a red cube", width=256, height=256, steps=1, cfg_scale=1.0, progress=progress)
            except sdcpp_py.Cancelled:
                latencies.append(time.perf_counter() - marks["cancel"])
        started = time.perf_counter()
        sd1.txt2img("a red cube", width=256, height=256, steps=1, cfg_scale=1.0)
        full_call = time.perf_counter() - started
    results["cancel_latency_s"] = {"median": round(statistics.median(latencies), 3),
                                   "max": round(max(latencies), 3), "runs": len(latencies),
                                   "uncancelled_call_s": round(full_call, 2)}

    print("| what | calls | RSS before (MiB) | RSS after (MiB) | growth per call (KiB) |")
    print("|---|---|---|---|---|")
    for key in ("generation", "cancelled_generation", "context_create_close"):
        row = results[key]
        print(f"| {key.replace('_', ' ')} | {row['calls']} | {row['rss_before_mib']} | {row['rss_after_mib']} | "
              f"{row['growth_kib_per_call']} |")
    latency = results["cancel_latency_s"]
    print(f"\ncancel() to Cancelled inside one SD1 256x256 step: median {latency['median']} s, "
          f"max {latency['max']} s ({latency['runs']} runs; the whole call takes {latency['uncancelled_call_s']} s)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
