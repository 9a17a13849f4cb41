#!/usr/bin/env bash
# What building sdcpp-py needs from the system: a C/C++ compiler and make, Python's headers and venv module
# (for the python3 that runs the build), git (the core is a submodule), and ccache if it can be had (faster
# rebuilds; optional). Each is probed, not assumed from package names, so nothing is installed on a machine that
# has them (any distribution, a pyenv or conda Python). What is missing is installed with apt where there is
# apt-get (as root, or through sudo); elsewhere the missing pieces are named. pip brings CMake, Ninja, pybind11
# and scikit-build-core into the virtual environment.
set -euo pipefail

python="${PYTHON:-python3}"
required=()
command -v cc >/dev/null 2>&1 && command -v c++ >/dev/null 2>&1 && command -v make >/dev/null 2>&1 \
  || required+=(build-essential)
"$python" -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
  2>/dev/null || required+=(python3-dev)
"$python" -c 'import ensurepip, venv' 2>/dev/null || required+=(python3-venv)
command -v git >/dev/null 2>&1 || required+=(git)
optional=()
command -v ccache >/dev/null 2>&1 || optional+=(ccache)

if [[ ${#required[@]} -eq 0 && ${#optional[@]} -eq 0 ]]; then
  exit 0
fi
sudo=()
if [[ $(id -u) -ne 0 ]] && command -v sudo >/dev/null 2>&1; then
  sudo=(sudo)
fi
if ! command -v apt-get >/dev/null 2>&1 || [[ $(id -u) -ne 0 && ${#sudo[@]} -eq 0 ]]; then
  if [[ ${#required[@]} -gt 0 ]]; then
    echo "prerequisites.sh: install these first (Debian/Ubuntu package names): ${required[*]}" >&2
    exit 1
  fi
  echo "prerequisites.sh: ccache not found; building without it (slower rebuilds)"
  exit 0
fi
echo "prerequisites.sh: installing ${required[*]} ${optional[*]}"
"${sudo[@]}" apt-get update -qq
if [[ ${#required[@]} -gt 0 ]]; then
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${required[@]}" >/dev/null
fi
if [[ ${#optional[@]} -gt 0 ]]; then
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${optional[@]}" >/dev/null \
    || echo "prerequisites.sh: ccache could not be installed; building without it"
fi
