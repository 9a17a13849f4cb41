#!/usr/bin/env python3
"""Per-step time and peak RSS of an SD1.5 UNet: diffusers (PyTorch, CPU; float32 and bfloat16) and OpenVINO
(the same UNet converted; f32 and its default precision for the CPU, bf16 where the CPU has it) against
sdcpp-py, in one run. Ratios divide by OpenVINO f32 when it is measured (``--reference``).

A harness, not a test. Every measurement is a fresh child process, so its peak RSS (``os.wait4``'s
ru_maxrss) is that measurement's alone; tools are interleaved within each ``--runs`` round.

- diffusers: ``UNet2DConditionModel`` with the SD1.5 config, random init (``torch.manual_seed``), float32,
  ``torch.set_num_threads(threads)``, under ``torch.inference_mode()``. One step is one classifier-free
  guidance step: a batch-2 forward (latents (2, 4, H/8, W/8), encoder states (2, 77, 768), a timestep), as
  diffusers' pipeline does. One warm-up forward, then the median of ``--repeats`` timed forwards (default 3).
- sdcpp-py: the project's synthetic SD1 all-in-one checkpoint (full-size UNet, F16 weights with F32
  norms and biases, as a real SD1.5 checkpoint in half precision), txt2img with euler, cfg 7 and
  ``--sdcpp-repeats`` + 1 steps. The core runs the conditional and the unconditional UNet pass of a step as two
  batch-1 computes; their sum is the step. Step times are the gaps between consecutive progress
  callbacks: the core calls ``progress(0, steps, 0)`` as step 1 starts (text encoding done) and
  ``progress(k, steps, avg)`` when step k ends, before the VAE decode. Step 1 (graph allocation, first
  touch of the weights) is the warm-up and is left out; the median of steps 2..S is reported. The default
  ``--sdcpp-repeats`` is 1 (S = 2): with 2 threads a 512 step of the core takes minutes. The core's
  own figures go to the JSON: its average at the last callback (``(t_S - t_start) / S``, warm-up
  included) and its "sampling completed" log line.

sdcpp-py configurations (``--tools``): ``default`` (core defaults), ``fa`` (diffusion_flash_attn),
``fa+conv`` (diffusion_flash_attn + diffusion_conv_direct), ``f32`` (weight_type="f32") and, not in the
default list, ``fa+f16`` (diffusion_flash_attn, weight_type="f16"), ``q8_0`` and ``bf16`` (weight_type);
``cpu-bf16`` is ``cpu_precision="bf16"`` (products on bf16 operands, AVX512_BF16), ``q8_0-cpu-bf16`` both
q8_0 weights and bf16 products; ``direct-conv`` and ``cpu-bf16-direct-conv`` set SDCPP_PY_CPU_CONV=direct
(every convolution on the direct node, none as Winograd). Each sdcpp-py
configuration's decoded image is compared with ``default``'s (same seed and steps): PSNR in dB.

- OpenVINO: ``openvino.convert_model`` of that UNet, compiled for the CPU with ``INFERENCE_NUM_THREADS`` and
  the latency hint; one warm-up inference, then the median of ``--repeats`` timed ones.

diffusers and OpenVINO are installed on first use into their own virtual environment (``--diffusers-venv``),
with torch pinned to the CPU build that lies on this machine's disk.

    python benchmarks/vs_diffusers.py --sizes 256,512 --threads 2 --json /tmp/vs_diffusers.json \\
        --markdown /tmp/vs_diffusers.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from harness import CACHE, run_measured, runner, say

PEER_SPECS = ("torch==2.13.0", "diffusers==0.42.1", "openvino==2026.4.1")
# The peers: tool -> (runner, its job fields). Both runners build the same UNet (diffusers_unet.sd15_unet).
PEERS = {
    "diffusers": ("diffusers_unet", {"dtype": "float32"}),
    "diffusers-bf16": ("diffusers_unet", {"dtype": "bfloat16"}),
    "openvino-f32": ("openvino_unet", {"precision": "f32"}),
    "openvino": ("openvino_unet", {"precision": "default"}),  # its choice for the CPU: bf16 where it has it
}
PROMPT = "a lighthouse at dusk"

# sdcpp-py configurations: name -> Context keywords.
SDCPP_CONFIGS = {
    "default": {},
    "fa": {"diffusion_flash_attn": True},
    "fa+conv": {"diffusion_flash_attn": True, "diffusion_conv_direct": True},
    "f32": {"weight_type": "f32"},
    "fa+f16": {"diffusion_flash_attn": True, "weight_type": "f16"},
    "q8_0": {"weight_type": "q8_0"},
    "bf16": {"weight_type": "bf16"},
    "cpu-bf16": {"cpu_precision": "bf16"},  # bf16 products (AVX512_BF16), f16 weights rounded as packed
    "q8_0-cpu-bf16": {"weight_type": "q8_0", "cpu_precision": "bf16"},  # half the weights' memory, bf16 products
}
# Configurations run with environment variables: the direct convolution node instead of Winograd's.
SDCPP_ENV = {"direct-conv": ({}, {"SDCPP_PY_CPU_CONV": "direct"}),
             "cpu-bf16-direct-conv": ({"cpu_precision": "bf16"}, {"SDCPP_PY_CPU_CONV": "direct"})}
SDCPP_CONFIGS.update({name: options for name, (options, _) in SDCPP_ENV.items()})
DEFAULT_TOOLS = ("diffusers", "diffusers-bf16", "openvino-f32", "openvino", "default", "cpu-bf16", "q8_0",
                 "q8_0-cpu-bf16", "direct-conv")

CORE_LINES = {
    "core_sampling_s": re.compile(r"sampling completed, taking ([0-9.]+)s"),
    "core_text_s": re.compile(r"get_learned_condition completed, taking ([0-9.]+)s"),
    "core_vae_decode_s": re.compile(r"decode_first_stage completed, taking ([0-9.]+)s"),
}


def ensure_peers(venv: Path) -> Path:
    """The venv's interpreter, creating the venv and installing torch, diffusers and OpenVINO on first use."""
    python = venv / "bin" / "python"
    probe = [str(python), "-c", "import torch, diffusers, openvino; from diffusers import UNet2DConditionModel"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    say(f"installing {' '.join(PEER_SPECS)} into {venv}", "vs_diffusers")
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *PEER_SPECS], check=True)
    probe_run = subprocess.run(probe, capture_output=True, text=True)
    if probe_run.returncode != 0:
        raise RuntimeError(f"diffusers does not import in {venv}:\n{probe_run.stderr[-2000:]}")
    return python


def run_child(python: str, program: str, job: dict, env_vars: dict | None = None) -> dict:
    """Run one measurement (``runners/<program>.py``) in a fresh process: its JSON figures plus wall time and
    peak RSS."""
    env = {**os.environ, **env_vars} if env_vars else None
    wall, rss, stdout, stderr, _ = run_measured([python, runner(program), json.dumps(job)], env=env)
    figures = json.loads(stdout.strip().splitlines()[-1])
    figures["wall_s"] = wall
    figures["peak_rss_mib"] = rss
    for key, pattern in CORE_LINES.items():
        found = pattern.findall(stderr)
        if found:
            figures[key] = float(found[-1])
    return figures


def measure(tool: str, size: int, args, peer_python: str | None, image_dir: Path) -> dict:
    if tool in PEERS:
        program, fields = PEERS[tool]
        return run_child(peer_python, program, {"size": size, "threads": args.threads, "repeats": args.repeats,
                                                **fields})
    image_dir.mkdir(parents=True, exist_ok=True)
    image = image_dir / f"{tool}-{size}.npy"
    job = {"size": size, "threads": args.threads, "steps": args.sdcpp_repeats + 1, "prompt": PROMPT,
           "model_dir": str(args.model_dir), "options": SDCPP_CONFIGS[tool], "image_out": str(image)}
    figures = run_child(sys.executable, "sdcpp_unet_steps", job, SDCPP_ENV.get(tool, (None, None))[1])
    figures["image"] = str(image)
    return figures


def psnr_db(image, reference) -> float:
    """PSNR of a decoded uint8 image against the reference image (inf: the same pixels)."""
    import numpy as np
    mse = float(np.mean((np.load(image).astype(np.float64) - np.load(reference).astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * float(np.log10(255.0**2 / mse))


def summarize(results: dict, sizes, tools, reference: str) -> list:
    rows = []
    for size in sizes:
        base = results.get((size, reference))
        base_step = statistics.median(t for r in base for t in r["step_times"]) if base else None
        base_rss = statistics.median(r["peak_rss_mib"] for r in base) if base else None
        for tool in tools:
            runs = results.get((size, tool))
            if not runs:
                continue
            steps = [t for r in runs for t in r["step_times"]]
            step = statistics.median(steps)
            rss = statistics.median(r["peak_rss_mib"] for r in runs)
            row = {"size": size, "tool": tool, "s_per_step": step, "timed_steps": len(steps),
                   "min_s": min(steps), "max_s": max(steps), "warmup_s": statistics.median(r["warmup_s"] for r in runs),
                   "peak_rss_mib": rss, "load_rss_mib": statistics.median(r["rss_model_mib"] for r in runs)}
            if tool not in PEERS:
                row["core_avg_s_per_step"] = statistics.median(r["core_avg_s_per_step"] for r in runs)
                f32 = results.get((size, "default"))
                if f32 and tool != "default":  # image quality against the default (f32 products) image
                    row["psnr_vs_default_db"] = psnr_db(runs[0]["image"], f32[0]["image"])
            if base_step and tool != reference:
                row["time_ratio"] = step / base_step
                row["rss_ratio"] = rss / base_rss
            rows.append(row)
    return rows


def markdown(rows: list, args, meta: dict) -> str:
    lines = [
        f"SD1.5 UNet, one CFG step (batch 2), {args.threads} threads, {args.runs} run(s) x {args.repeats} timed "
        f"forwards (diffusers) / {args.sdcpp_repeats} timed step(s) after a warm-up step (sdcpp-py); {meta['cpu']}; "
        f"torch {meta.get('torch', '?')}, diffusers {meta.get('diffusers', '?')}.",
        f"Ratios: tool / {meta['reference']} at the same resolution (above 1: slower / larger).",
        "",
        "| resolution | tool / config | s/step (median) | min-max | 1st step s | core avg s/step | peak RSS MiB "
        "| RSS after load MiB | time ratio | RSS ratio | PSNR vs default dB |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        tool = row["tool"] if row["tool"] in PEERS else f"sdcpp-py {row['tool']}"
        core = f"{row['core_avg_s_per_step']:.2f}" if "core_avg_s_per_step" in row else ""
        ratio = f"{row['time_ratio']:.2f}" if "time_ratio" in row else ""
        rss_ratio = f"{row['rss_ratio']:.2f}" if "rss_ratio" in row else ""
        psnr = f"{row['psnr_vs_default_db']:.1f}" if "psnr_vs_default_db" in row else ""
        lines.append(
            f"| {row['size']}x{row['size']} | {tool} | {row['s_per_step']:.2f} | {row['min_s']:.2f}-{row['max_s']:.2f} "
            f"| {row['warmup_s']:.2f} | {core} | {row['peak_rss_mib']:.0f} | {row['load_rss_mib']:.0f} | {ratio} "
            f"| {rss_ratio} | {psnr} |")
    return "\n".join(lines) + "\n"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="256,512", help="comma-separated square resolutions (default 256,512)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed forwards (diffusers), after one warm-up forward")
    parser.add_argument("--sdcpp-repeats", type=int, default=1,
                        help="timed steps (sdcpp-py), after one warm-up step: txt2img runs this + 1 steps. Default "
                             "1: a 512 step of the core takes minutes on 2 threads, and step times vary by <1%%")
    parser.add_argument("--runs", type=int, default=1, help="rounds of fresh processes, tools interleaved")
    parser.add_argument("--tools", default=",".join(DEFAULT_TOOLS),
                        help=f"comma-separated, from {','.join(PEERS)},{','.join(SDCPP_CONFIGS)}")
    parser.add_argument("--reference", default=None, help="the tool the ratios divide by (default: openvino-f32 "
                                                           "when measured, else diffusers)")
    parser.add_argument("--diffusers-venv", type=Path, default=CACHE / "diffusers-venv")
    parser.add_argument("--model-dir", type=Path, default=CACHE / "synthetic" / "sd1")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    unknown = [t for t in tools if t not in PEERS and t not in SDCPP_CONFIGS]
    if unknown:
        parser.error(f"unknown tools: {unknown}")
    if args.repeats < 1 or args.sdcpp_repeats < 1:
        parser.error("--repeats and --sdcpp-repeats must be at least 1")

    reference = args.reference or ("openvino-f32" if "openvino-f32" in tools else "diffusers")
    peer_python = str(ensure_peers(args.diffusers_venv)) if any(t in PEERS for t in tools) else None
    if any(t not in PEERS for t in tools):
        # Build the cached synthetic checkpoint once, outside the timed children.
        from sdcpp_py.testing import sd
        sd.sd1_checkpoint(args.model_dir)

    meta = {"cpu": cpu_name(), "threads": args.threads, "repeats": args.repeats,
            "sdcpp_repeats": args.sdcpp_repeats, "runs": args.runs,
            "sizes": sizes, "tools": tools, "prompt": PROMPT, "sampler": "euler", "cfg_scale": 7.0,
            "reference": reference}
    results: dict = {}
    raw = []
    image_dir = Path(tempfile.mkdtemp(prefix="vs_diffusers-"))
    for run in range(args.runs):
        for size in sizes:
            for tool in tools:
                say(f"run {run + 1}/{args.runs}: {tool} at {size}x{size}", "vs_diffusers")
                figures = measure(tool, size, args, peer_python, image_dir / f"run{run}")
                say(f"  s/step {statistics.median(figures['step_times']):.2f} (steps {figures['step_times']}), "
                    f"peak RSS {figures['peak_rss_mib']:.0f} MiB, wall {figures['wall_s']:.1f}s", "vs_diffusers")
                results.setdefault((size, tool), []).append(figures)
                raw.append({"run": run, "size": size, "tool": tool, **figures})
                for key in ("torch", "diffusers", "openvino"):
                    if key in figures:
                        meta[key] = figures[key]
    rows = summarize(results, sizes, tools, reference)
    table = markdown(rows, args, meta)
    print(table)
    if args.markdown:
        args.markdown.write_text(table)
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "rows": rows, "raw": raw}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
