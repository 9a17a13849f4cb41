#!/usr/bin/env python3
"""The portable CPU wheel against the -march=native build, same jobs, same run.

The portable wheel (tools/portable_build.sh; what CI ships as the CPU wheel) carries ggml's CPU backend for
every instruction-set level and loads the best for the machine at import; the native build (`pip install .`,
GGML_NATIVE) compiles one for this CPU. Both run compare.py's jobs (synthetic components, same prompt, seed,
size, steps, 2 threads), one fresh process per run, interleaved with the order rotating each round, after one
untimed warm-up; figures are medians. Reported per job: generation time and its portable / native ratio (the
target is within 5%), peak RSS, and whether the pixels are identical.

    python benchmarks/portable_vs_native.py --runs 3 --jobs sd1-256,tiny-flux
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

from harness import REPO, default_diffusion_fa, jobs, run_measured, runner, say, sdcpp_job, write_report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--jobs", default="sd1-256,tiny-flux", help="comma-separated compare.py jobs")
    parser.add_argument("--portable-python", type=Path, default=REPO / "build" / "portable-venv" / "bin" / "python",
                        help="the environment tools/portable_build.sh made")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()
    if not args.portable_python.exists():
        sys.exit(f"no portable build at {args.portable_python}: run tools/portable_build.sh")
    pythons = {"native": Path(sys.executable), "portable": args.portable_python}

    builds = {}
    for name, python in pythons.items():
        _, _, stdout, _, _ = run_measured([str(python), runner("backend_features")])
        portable, features, kernels = json.loads(stdout.strip().splitlines()[-1])
        builds[name] = {"portable_cpu": portable, "cpu_features": features, "fused_cpu_kernels": kernels}
    if builds["native"]["portable_cpu"] or not builds["portable"]["portable_cpu"]:
        sys.exit(f"expected a native build here and a portable one at {args.portable_python}: {builds}")

    results, lines = {}, []
    for job_name, job in jobs(args.jobs.split(","), default_diffusion_fa()).items():
        samples = {name: [] for name in pythons}
        identical = True
        with tempfile.TemporaryDirectory() as tmp:
            def run(name: str) -> dict:
                spec = sdcpp_job(job, Path(tmp) / f"{name}.npy", one_shot=True)
                _, rss, stdout, _, _ = run_measured([str(pythons[name]), runner("sdcpp_txt2img"), json.dumps(spec)])
                return dict(json.loads(stdout.strip().splitlines()[-1]), rss_mib=rss)

            say(f"{job_name}: warm-up run (not counted)", "portable")
            run("native")
            order = list(pythons)
            for round_ in range(args.runs):
                for name in order[round_ % 2:] + order[:round_ % 2]:
                    say(f"{job_name}: run {round_ + 1}/{args.runs}, {name}", "portable")
                    samples[name].append(run(name))
                identical = identical and np.array_equal(np.load(Path(tmp) / "native.npy"),
                                                         np.load(Path(tmp) / "portable.npy"))
        medians = {name: {key: statistics.median(s[key] for s in runs) for key in runs[0]}
                   for name, runs in samples.items()}
        results[job_name] = {"job": {k: v for k, v in job.items() if k != "components"}, "runs": args.runs,
                             "median": medians, "samples": samples, "identical_pixels": identical}
        native, portable = medians["native"], medians["portable"]
        lines.append(f"\n**{job_name}** ({job['size']}x{job['size']}, {job['steps']} steps, cfg {job['cfg']}; "
                     f"median of {args.runs}; pixels identical: {'yes' if identical else 'NO'})\n")
        lines.append("| build | load (s) | generation (s) | peak RSS (MiB) |")
        lines.append("|---|---|---|---|")
        for name in pythons:
            med = medians[name]
            lines.append(f"| {name} | {med['load_s']:.3f} | {med['gen_s']:.3f} | {med['rss_mib']:.0f} |")
        lines.append(f"\nportable / native generation: **{portable['gen_s'] / native['gen_s']:.3f}**")
    lines.append("\nLoaded CPU backends: " + "; ".join(
        f"{name}: {' '.join(b['cpu_features'])} (fused kernels: {len(b['fused_cpu_kernels'])})"
        for name, b in builds.items()))
    results["builds"] = builds
    write_report(lines, results, args.markdown, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
