"""What the benchmark scripts share: paths, the sd-cli build, the measured child process, the job table and
the report writer. Not a benchmark itself.

The scripts import it as a sibling (``python benchmarks/<script>.py`` puts this folder first on
``sys.path``). Each measured run is one of the programs in ``runners/``, started in a fresh process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("SDCPP_PY_CACHE_DIR", Path.home() / ".cache" / "sdcpp-py"))
RUNNERS = Path(__file__).resolve().parent / "runners"


def runner(name: str) -> str:
    """The path of ``runners/<name>.py``, to start as ``[python, runner(name), json_job]``."""
    path = RUNNERS / f"{name}.py"
    if not path.is_file():
        raise FileNotFoundError(f"no benchmark runner {path}")
    return str(path)


def say(message: str, tag: str = "bench") -> None:
    print(f"[{tag}] {message}", file=sys.stderr, flush=True)


def ensure_sd_cli() -> Path:
    """The vendored sd-cli, built by our CMake from the same sources into build/sd-cli."""
    build = REPO / "build" / "sd-cli"
    configure = ["cmake", "-S", str(REPO), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
                 "-DSDCPP_PY_BUILD_SD_CLI=ON", f"-DPython_EXECUTABLE={sys.executable}"]
    if shutil.which("ninja") and not (build / "CMakeCache.txt").exists():
        configure += ["-G", "Ninja"]
    for command in (configure, ["cmake", "--build", str(build), "--target", "sd-cli"]):
        subprocess.run(command, check=True, capture_output=True)
    return build / "bin" / "sd-cli"


def run_measured(command: list, env=None, marker: str | None = None,
                 stop_at_marker: bool = False) -> tuple[float, float, str, str, float]:
    """(wall seconds, peak RSS MiB, stdout, stderr, seconds until a stdout line holding ``marker``); with
    ``stop_at_marker`` the child is killed at that line."""
    started = time.perf_counter()
    marked = float("nan")
    lines = []
    with tempfile.TemporaryFile("w+") as err:
        child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err, env=env, text=True, errors="replace")
        for line in child.stdout:  # sd-cli flushes every log line, so the stamp is when it was written
            if marker is not None and marked != marked and marker in line and "completed" not in line:
                marked = time.perf_counter() - started
                if stop_at_marker:
                    child.kill()
            lines.append(line)
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - started
        child.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        stdout, stderr = "".join(lines), err.read()
    if child.returncode != 0 and not (stop_at_marker and marked == marked):
        raise RuntimeError(f"{command[0]} failed ({child.returncode}):\n{stdout[-2000:]}\n{stderr[-2000:]}")
    return wall, usage.ru_maxrss / 1024, stdout, stderr, marked


def default_diffusion_fa() -> bool:
    """sdcpp-py's own default for diffusion flash attention (the core's), so every tool runs the same."""
    import inspect

    import sdcpp_py

    return inspect.signature(sdcpp_py.Context).parameters["diffusion_flash_attn"].default


def jobs(selected: list[str], diffusion_fa: bool, load_only: bool = False) -> dict:
    """compare.py's jobs (portable_vs_native.py runs them too): synthetic files, prompt, size, steps, seed."""
    from sdcpp_py.testing import flux1, sd

    base = CACHE / "synthetic"
    made = {}
    if "tiny-flux" in selected:
        parts = flux1.flux_components(base / "flux")
        made["tiny-flux"] = dict(components={k: str(v) for k, v in parts.items()}, size=256, steps=4, cfg=1.0,
                                 sampler="euler")
    if "sd1-256" in selected:
        made["sd1-256"] = dict(components={"model": str(sd.sd1_checkpoint(base / "sd1"))}, size=256,
                               steps=2, cfg=7.0, sampler="euler")
    if "flux-t5" in selected:
        parts = flux1.flux_components(base / "flux", t5xxl=True)
        made["flux-t5"] = dict(components={k: str(v) for k, v in parts.items()}, size=64, steps=1, cfg=1.0,
                               sampler="euler")
    if "load" in selected:  # the tiny Flux parts with a trivial generation: many cheap runs for load times
        parts = flux1.flux_components(base / "flux")
        made["load"] = dict(components={k: str(v) for k, v in parts.items()}, size=64, steps=1, cfg=1.0,
                            sampler="euler")
    if "flux-1024" in selected:  # what result conversion costs on a large image
        parts = flux1.flux_components(base / "flux")
        made["flux-1024"] = dict(components={k: str(v) for k, v in parts.items()}, size=1024, steps=1, cfg=1.0,
                                 sampler="euler")
    for job in made.values():
        job.update(prompt="a lighthouse at dusk", seed=7, threads=2, diffusion_fa=diffusion_fa, load_only=load_only)
    return made


def sdcpp_job(job: dict, out: Path, one_shot: bool) -> dict:
    """A compare.py job as runners/sdcpp_txt2img.py takes it: the Context keywords spelled out."""
    context = {"n_threads": job["threads"], "free_params_immediately": one_shot,
               "diffusion_flash_attn": job["diffusion_fa"]}
    return {"components": job["components"], "context": context, "prompt": job["prompt"], "size": job["size"],
            "steps": job["steps"], "cfg": job["cfg"], "seed": job["seed"], "sampler": job["sampler"],
            "load_only": job["load_only"], "core_log": True, "out": str(out)}


def write_report(lines: list, results: dict, markdown: Path | None, json_path: Path | None) -> None:
    """Print the markdown table; also write it and the raw results where asked."""
    table = "\n".join(lines)
    print(table)
    if markdown:
        markdown.write_text(table + "\n")
    if json_path:
        json_path.write_text(json.dumps(results, indent=2) + "\n")
