#!/usr/bin/env bash
# Build the portable CPU wheel (what the CPU wheels in CI are) and install it into its own virtual
# environment, beside the -march=native build of `pip install .`.
#
#   tools/portable_build.sh [--venv DIR] [--dist DIR]
#
# --venv  where the wheel is installed (default: build/portable-venv)
# --dist  where the wheel is written (default: build/portable-dist)
#
# The wheel holds ggml's CPU backend once per instruction-set level (x86-64: baseline, SSE4.2, AVX, AVX2,
# AVX-512 and its extensions, ...; GGML_BACKEND_DL + GGML_CPU_ALL_VARIANTS, GGML_NATIVE off) and loads the best
# for the machine when sdcpp_py is imported. tests/test_portable.py and benchmarks/portable_vs_native.py use
# the environment it makes.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$repo_root/build/portable-venv"
dist="$repo_root/build/portable-dist"

die() { echo "portable_build.sh: $*" >&2; exit 1; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --venv) venv="${2:?--venv needs a folder}"; shift 2 ;;
    --dist) dist="${2:?--dist needs a folder}"; shift 2 ;;
    -h|--help) sed -n '2,13p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done

python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q "scikit-build-core>=0.10" "pybind11>=3" "cmake>=3.21" ninja numpy pillow pytest
started=$SECONDS
rm -rf "$dist"
# Its own build folder, so the native build's stays warm.
"$venv/bin/python" -m pip wheel -q --no-deps --no-build-isolation -w "$dist" \
  -Cbuild-dir="$repo_root/build/portable" -Ccmake.define.SDCPP_PORTABLE_CPU=ON "$repo_root"
wheel="$(ls "$dist"/sdcpp_py-*.whl)"
"$venv/bin/python" -m pip install -q --force-reinstall --no-deps "$wheel"
echo "portable_build.sh: built $(basename "$wheel") ($(du -k "$wheel" | cut -f1) KiB)" \
  "in $((SECONDS - started)) s, installed into $venv"
# Run from elsewhere, so the import is the installed wheel's and not the source tree's.
(cd / && "$venv/bin/python" -c "import sdcpp_py; r = sdcpp_py.backends(); \
print('cpu features', r['cpu_features']); print('fused cpu kernels', r['fused_cpu_kernels'])")
