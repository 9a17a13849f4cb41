#!/usr/bin/env python3
"""Which Context options are fastest here: each speed knob against the defaults, one fresh process per run.

For each job (the tiny Flux parts; the SD1 all-in-one checkpoint) and each configuration, runs interleaved
(config A, B, C, ... then again) and reports the median load time, generation time and peak RSS, the ratio to
the defaults, and the largest pixel difference from the defaults' image (0: the knob is only a speed choice).

    python benchmarks/defaults.py --runs 2 --json /tmp/defaults.json --markdown /tmp/defaults.md
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

from harness import CACHE, run_measured, runner, say, write_report

# Each knob alone, against the Context defaults (n_threads = physical cores).
CONFIGS = {
    "defaults": {},
    "n_threads=1": {"n_threads": 1},
    "mmap": {"mmap": True},
    "diffusion_flash_attn": {"diffusion_flash_attn": True},
    "flash_attn (all models)": {"flash_attn": True},
    "diffusion_conv_direct": {"diffusion_conv_direct": True},
    "vae_conv_direct": {"vae_conv_direct": True},
}


def jobs(selected: list[str]) -> dict:
    from sdcpp_py.testing import flux1, sd

    base = CACHE / "synthetic"
    made = {}
    if "tiny-flux" in selected:
        parts = flux1.flux_components(base / "flux")
        made["tiny-flux"] = dict(components={k: str(v) for k, v in parts.items()}, size=256, steps=4, cfg=1.0)
    if "sd1-256" in selected:
        made["sd1-256"] = dict(components={"model": str(sd.sd1_checkpoint(base / "sd1"))}, size=256,
                               steps=1, cfg=7.0)
    for job in made.values():
        job["prompt"] = "a lighthouse at dusk"
    return made


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--jobs", default="tiny-flux,sd1-256")
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated, of: " + ", ".join(CONFIGS))
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()
    configs = {name: CONFIGS[name] for name in args.configs.split(",")}

    results, lines = {}, []
    for job_name, job in jobs(args.jobs.split(",")).items():
        samples = {name: [] for name in configs}
        with tempfile.TemporaryDirectory() as tmp:
            pixels = {}
            for run in range(args.runs):
                for name, options in configs.items():
                    say(f"{job_name}: run {run + 1}/{args.runs}, {name}", "defaults")
                    out = Path(tmp) / "out.npy"
                    spec = dict(job, context=options, seed=7, sampler="euler", out=str(out))
                    _, rss, stdout, _, _ = run_measured([sys.executable, runner("sdcpp_txt2img"), json.dumps(spec)])
                    figures = json.loads(stdout.strip().splitlines()[-1])
                    samples[name].append(dict(figures, rss_mib=rss))
                    pixels[name] = np.load(out).astype(np.int16)
        medians = {name: {key: statistics.median(s[key] for s in runs) for key in runs[0]}
                   for name, runs in samples.items()}
        base = medians.get("defaults")
        reference = pixels.get("defaults")
        results[job_name] = {"job": {k: v for k, v in job.items() if k != "components"}, "runs": args.runs,
                             "median": medians, "samples": samples,
                             "max_pixel_diff": {name: (int(np.abs(p - reference).max()) if reference is not None
                                                       else None) for name, p in pixels.items()}}
        lines.append(f"\n**{job_name}** ({job['size']}x{job['size']}, {job['steps']} steps, cfg {job['cfg']}; "
                     f"median of {args.runs})\n")
        lines.append("| configuration | load (s) | generation (s) | peak RSS (MiB) | generation / defaults "
                     "| RSS / defaults | max pixel diff |")
        lines.append("|---|---|---|---|---|---|---|")
        for name, med in medians.items():
            gen_ratio = med["gen_s"] / base["gen_s"] if base else float("nan")
            rss_ratio = med["rss_mib"] / base["rss_mib"] if base else float("nan")
            lines.append(f"| {name} | {med['load_s']:.3f} | {med['gen_s']:.2f} | {med['rss_mib']:.0f} | "
                         f"{gen_ratio:.3f} | {rss_ratio:.3f} | {results[job_name]['max_pixel_diff'][name]} |")
    write_report(lines, results, args.markdown, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
