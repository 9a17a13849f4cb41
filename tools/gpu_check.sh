#!/usr/bin/env bash
# On a Linux machine with an NVIDIA GPU, CUDA toolkit (nvcc) and driver: build the CUDA variant for this GPU
# only and the CPU variant (each into its own virtual environment), run the GPU tests on the CUDA build, and
# time a small generation (the synthetic tiny Flux, 256x256, 4 steps) on both. Prints the figures.
# About 10 minutes on a 16-core machine, most of it the CUDA compile; a second run reuses ccache.
#
#   tools/gpu_check.sh [--arch 90]      # from the repository root (or anywhere: it finds the root)
#
# Needs python3 (3.9+) with venv, and pip access to PyPI for what the environments lack (the venvs see the
# system's site-packages, so an offline machine with numpy, pytest, pillow, scikit-build-core, pybind11,
# cmake and ninja installed needs nothing; cuBLAS: see tools/cuda_build.sh).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

arch_args=()
if [[ "${1:-}" == "--arch" ]]; then arch_args=(--arch "${2:?--arch needs a value}"); fi
command -v nvidia-smi >/dev/null 2>&1 || { echo "gpu_check.sh: nvidia-smi not found: no NVIDIA driver here" >&2; exit 1; }
gpu="$(nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv,noheader | head -n1)"
[[ -n "$gpu" ]] || { echo "gpu_check.sh: nvidia-smi lists no GPU" >&2; exit 1; }
echo "GPU: $gpu; CPU: $(nproc) cores"

work=build/gpu-check
mkdir -p "$work"
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
figures="$work/figures.txt"
: > "$figures"
check_start=$(date +%s)
phase() { echo; echo "=== $* ($(( $(date +%s) - check_start ))s in)"; }
record() { echo "$*" | tee -a "$figures"; }

make_venv() {  # make_venv DIR: an environment with the build and test requirements
  [[ -x "$1/bin/python" ]] || python3 -m venv --system-site-packages "$1"
  "$1/bin/python" -m pip install -q numpy pillow pytest hypothesis "scikit-build-core>=0.10" "pybind11>=3" \
    "cmake>=3.21" ninja
}

phase "CPU build"
make_venv .venv-gpu-cpu
start=$(date +%s)
SDCPP_BACKEND=cpu .venv-gpu-cpu/bin/python -m pip install -q --no-deps --no-build-isolation --force-reinstall \
  "-Cbuild-dir=build/gpu-check-cpu/{wheel_tag}" .
record "CPU build: $(( $(date +%s) - start ))s"

phase "CUDA build"
make_venv .venv-gpu-cuda
start=$(date +%s)
tools/cuda_build.sh "${arch_args[@]}" --python .venv-gpu-cuda/bin/python --wheel-dir "$work/wheels" --install
record "CUDA build: $(( $(date +%s) - start ))s ($CMAKE_BUILD_PARALLEL_LEVEL jobs; ccache $(command -v ccache >/dev/null && echo on || echo off))"

phase "GPU tests"
.venv-gpu-cuda/bin/python - <<'EOF'
import sys

import sdcpp_py

report = sdcpp_py.backends()
print("CUDA build:", report["built_with"], "| devices:", [f"{d.name} ({d.description})" for d in report["devices"]])
if report["built_with"] != "cuda" or report["default_device"].type != "gpu":
    sys.exit("the CUDA build does not see the GPU: the GPU tests would only skip")
EOF
export SDCPP_PY_SYNTHETIC_DIR="$PWD/$work/synthetic"
tests_status=0
start=$(date +%s)
# The GPU tests, then the basic generation and Context tests run on the GPU too.
.venv-gpu-cuda/bin/python -m pytest -q -p no:cacheprovider tests/test_cuda_build.py tests/test_txt2img.py \
  tests/test_context.py || tests_status=$?
record "GPU tests: exit status $tests_status, $(( $(date +%s) - start ))s"

phase "Timing: synthetic tiny Flux, 256x256, 4 steps"
time_generation() {  # time_generation PYTHON LABEL
  "$1" - "$2" "$work" <<'EOF'
import statistics
import sys
import time

import numpy as np

import sdcpp_py
from sdcpp_py.testing import flux1

label, work = sys.argv[1], sys.argv[2]
parts = flux1.flux_components(f"{work}/synthetic/flux")
start = time.perf_counter()
ctx = sdcpp_py.Context(**parts)
load = time.perf_counter() - start
options = dict(width=256, height=256, steps=4, cfg_scale=1.0)
ctx.txt2img("a red cube", seed=1, **options)  # warm-up: first-use allocations and kernel loads
times = []
for _ in range(3):
    start = time.perf_counter()
    image = ctx.txt2img("a red cube", seed=42, **options)[0]
    times.append(time.perf_counter() - start)
ctx.close()
np.save(f"{work}/image-{label}.npy", image)
device = sdcpp_py.default_device()
print(f"{label}: {statistics.median(times):.3f}s per image (median of 3: {', '.join(f'{t:.3f}' for t in times)}); "
      f"load {load:.2f}s; device {device.name} ({device.description})")
EOF
}
cpu_line="$(time_generation .venv-gpu-cpu/bin/python cpu | tail -n1)"
record "$cpu_line"
cuda_line="$(time_generation .venv-gpu-cuda/bin/python cuda | tail -n1)"
record "$cuda_line"
.venv-gpu-cuda/bin/python - "$work" <<'EOF' | tee -a "$figures"
import re
import sys

import numpy as np

work = sys.argv[1]
lines = open(f"{work}/figures.txt").read()
cpu, cuda = (float(re.search(rf"^{label}: ([0-9.]+)s", lines, re.M).group(1)) for label in ("cpu", "cuda"))
a, b = (np.load(f"{work}/image-{label}.npy").astype(int) for label in ("cpu", "cuda"))
print(f"speed-up CUDA vs CPU: {cpu / cuda:.1f}x; CPU vs CUDA image: mean |difference| {np.abs(a - b).mean():.2f} "
      f"of 255 (max {np.abs(a - b).max()})")
EOF

echo
echo "=== Figures (also in $figures); total $(( $(date +%s) - check_start ))s"
echo "GPU: $gpu"
cat "$figures"
exit "$tests_status"
