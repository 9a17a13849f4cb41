#!/usr/bin/env python3
"""sdcpp-py against the vendored sd-cli and stable-diffusion-cpp-python 0.4.7, side by side in one run.

Every run is a fresh process doing one job end to end: the same synthetic component files, prompt, size,
steps, seed, sampler and thread count for all. sdcpp-py runs one-shot as sd-cli does
(``free_params_immediately=True``: each part's weights are freed once the call is done with them);
sdcpp-py-keep keeps them for a next call, as a service would and as the peer always does. Runs are interleaved (A B C A B C ...) and each figure
is the median over ``--runs``, after one untimed warm-up run; each round starts with the next tool.
Figures per tool:

- load: building the context (for sd-cli, which prints no load time: from its start to its
  "generate_image WxH" log line, stamped as it is written);
- generation: the txt2img call as the caller sees it (sd-cli: the core's own "generate_image" time);
- core generation: the core's "generate_image completed in" figure, so that generation - core is what the
  binding adds (result conversion included);
- total: the process's wall time, interpreter start and imports included; peak RSS of the process.

The peer is installed from PyPI into its own virtual environment (``--peer-venv``, built once; building it
compiles the core: minutes). sd-cli is built from the same sources by our CMake into build/sd-cli.

    python benchmarks/compare.py --runs 3 --json benchmarks/results.json --markdown benchmarks/results.md
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from harness import (CACHE, default_diffusion_fa, ensure_sd_cli, jobs, run_measured, runner, say, sdcpp_job,
                     write_report)

PEER_SPEC = "stable-diffusion-cpp-python==0.4.7"
CORE_TIME = re.compile(r"generate_image completed in ([0-9.]+)s")
# sdcpp-py runs one-shot like sd-cli (free_params_immediately=True); sdcpp-py-keep keeps its weights for a
# next call, as a service would (the peer cannot free them).
TOOLS = ("sdcpp-py", "sd-cli", "peer", "sdcpp-py-keep")
SD_CLI_GENERATION_START = "generate_image "


def ensure_peer(venv: Path) -> Path:
    """The peer's interpreter, installing it into its own venv on first use (with ccache when present)."""
    python = venv / "bin" / "python"
    probe = [str(python), "-c", "import stable_diffusion_cpp, numpy"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    say(f"installing {PEER_SPEC} into {venv} (compiles the core: several minutes)")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = dict(os.environ)
    if shutil.which("ccache"):
        env["CMAKE_ARGS"] = "-DCMAKE_C_COMPILER_LAUNCHER=ccache -DCMAKE_CXX_COMPILER_LAUNCHER=ccache"
    subprocess.run([str(python), "-m", "pip", "install", "-q", PEER_SPEC, "numpy"], check=True, env=env)
    return python


def core_seconds(text: str) -> float:
    found = CORE_TIME.findall(text)
    return float(found[-1]) if found else float("nan")


def run_tool(tool: str, job: dict, sd_cli: Path, peer_python: Path, workdir: Path) -> dict:
    out = workdir / f"{tool}.npy"
    if tool == "sd-cli":
        flags = {"model": "-m", "diffusion_model": "--diffusion-model", "clip_l": "--clip_l", "t5xxl": "--t5xxl",
                 "vae": "--vae"}
        png = workdir / "sd-cli.png"
        command = [str(sd_cli), "-o", str(png), "-p", job["prompt"], "-W", str(job["size"]), "-H", str(job["size"]),
                   "--steps", str(job["steps"]), "--cfg-scale", str(job["cfg"]), "-s", str(job["seed"]),
                   "-t", str(job["threads"]), "--sampling-method", job["sampler"]]
        for name, path in job["components"].items():
            command += [flags[name], path]
        if job["diffusion_fa"]:
            command.append("--diffusion-fa")
        wall, rss, stdout, stderr, load = run_measured(command, marker=SD_CLI_GENERATION_START,
                                                       stop_at_marker=job["load_only"])
        if job["load_only"]:
            return {"total_s": wall, "rss_mib": rss, "gen_s": float("nan"), "core_gen_s": float("nan"),
                    "load_s": load}
        core = core_seconds(stdout + stderr)
        from PIL import Image  # only the harness needs pillow

        with Image.open(png) as image:
            import numpy as np

            np.save(out, np.asarray(image.convert("RGB")))
        return {"total_s": wall, "rss_mib": rss, "gen_s": core, "core_gen_s": core, "load_s": load}
    if tool.startswith("sdcpp-py"):
        command = [sys.executable, runner("sdcpp_txt2img"), json.dumps(sdcpp_job(job, out, tool == "sdcpp-py"))]
    else:
        command = [str(peer_python), runner("peer_txt2img"), json.dumps(dict(job, out=str(out)))]
    env = dict(os.environ)
    if tool == "peer":
        env.pop("PYTHONPATH", None)
    wall, rss, stdout, stderr, _ = run_measured(command, env=env)
    figures = json.loads(stdout.strip().splitlines()[-1])
    if job["load_only"]:
        return {"total_s": wall, "rss_mib": rss, "gen_s": float("nan"), "load_s": figures["load_s"],
                "core_gen_s": float("nan")}
    return {"total_s": wall, "rss_mib": rss, "gen_s": figures["gen_s"], "load_s": figures["load_s"],
            "core_gen_s": core_seconds(stdout + stderr)}


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--jobs", default="tiny-flux,sd1-256,flux-1024",
                        help="comma-separated: tiny-flux, sd1-256, flux-1024, load (64x64, 1 step), "
                             "flux-t5 (full-size T5-XXL, ~10 GB)")
    parser.add_argument("--tools", default=",".join(TOOLS), help="comma-separated, of " + ", ".join(TOOLS))
    parser.add_argument("--diffusion-fa", action=argparse.BooleanOptionalAction, default=None,
                        help="flash attention in the diffusion model, for all tools (default: sdcpp-py's default)")
    parser.add_argument("--load-only", action="store_true",
                        help="stop each run once its context is built (sd-cli: at its generate_image line): "
                             "load time and load-time RSS only, so that many runs are cheap")
    parser.add_argument("--peer-venv", type=Path, default=CACHE / "peer-venv")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()

    tools = [t for t in args.tools.split(",") if t]
    peer_python = ensure_peer(args.peer_venv) if "peer" in tools else None
    sd_cli = ensure_sd_cli() if "sd-cli" in tools else None
    import numpy as np

    results = {}
    if args.diffusion_fa is None:
        args.diffusion_fa = default_diffusion_fa()
    for name, job in jobs(args.jobs.split(","), args.diffusion_fa, args.load_only).items():
        samples = {tool: [] for tool in tools}
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            # Per tool: did every run give the first tool's pixels (sdcpp-py's, normally)?
            identical = {tool: True for tool in tools}
            # One untimed run first: the first process of a job pays for the page cache and for memory the
            # previous job's processes left to reclaim.
            say(f"{name}: warm-up run, {tools[0]} (not counted)")
            run_tool(tools[0], job, sd_cli, peer_python, workdir)
            for run in range(args.runs):
                # Rotate the order each round: a run right after a big process exits pays for the kernel
                # reclaiming its memory (seen: +3 s on a 9 GB load), so no tool may always go first.
                for tool in tools[run % len(tools):] + tools[:run % len(tools)]:
                    say(f"{name}: run {run + 1}/{args.runs}, {tool}")
                    samples[tool].append(run_tool(tool, job, sd_cli, peer_python, workdir))
                if job["load_only"]:
                    continue
                pixels = {tool: np.load(workdir / f"{tool}.npy") for tool in tools}
                for tool in tools:
                    identical[tool] = identical[tool] and np.array_equal(pixels[tools[0]], pixels[tool])
        medians = {tool: {key: statistics.median(s[key] for s in samples[tool]) for key in samples[tool][0]}
                   for tool in tools}
        results[name] = {"job": {k: v for k, v in job.items() if k != "components"}, "runs": args.runs,
                         "identical_pixels": identical, "median": medians, "samples": samples}

    lines = []
    for name, result in results.items():
        job = result["job"]
        lines.append(f"\n**{name}** ({job['size']}x{job['size']}, {job['steps']} steps, cfg {job['cfg']}, "
                     f"{job['threads']} threads, diffusion flash attention {'on' if job['diffusion_fa'] else 'off'}; "
                     f"median of {result['runs']}; "
                     + ("load only)\n" if job["load_only"] else
                        f"pixels identical to {next(iter(result['identical_pixels']))}'s: "
                        + ", ".join(f"{tool} {'yes' if same else 'NO'}"
                                    for tool, same in list(result['identical_pixels'].items())[1:]) + ")\n"))
        lines.append("| figure | sdcpp-py | sd-cli | peer | sdcpp-py-keep | sdcpp-py / sd-cli | sdcpp-py / peer "
                     "| keep / peer |")
        lines.append("|---|---|---|---|---|---|---|---|")
        med = result["median"]
        for key, label, unit in (("load_s", "load", "s"), ("gen_s", "generation", "s"),
                                 ("core_gen_s", "core generation", "s"), ("total_s", "end to end", "s"),
                                 ("rss_mib", "peak RSS", "MiB")):
            values = [med.get(tool, {}).get(key, float("nan")) for tool in TOOLS]
            ours, cli, peer, keep = values
            lines.append(f"| {label} ({unit}) | " + " | ".join(f"{v:.3f}" if unit == "s" else f"{v:.0f}"
                                                               for v in values)
                         + f" | {ratio(ours, cli):.3f} | {ratio(ours, peer):.3f} | {ratio(keep, peer):.3f} |")
        ours, peer = med.get("sdcpp-py", {}), med.get("peer", {})
        if ours and peer:
            lines.append(f"| binding overhead: generation - core (s) | {ours['gen_s'] - ours['core_gen_s']:.3f} | "
                         f"- | {peer['gen_s'] - peer['core_gen_s']:.3f} | | | | |")
    write_report(lines, results, args.markdown, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
