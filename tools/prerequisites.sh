#!/usr/bin/env bash
# What building sdcpp-py needs from the system, on Debian or Ubuntu: a C/C++ compiler, Python's headers and
# venv module, git (the core is a submodule) and ccache (faster rebuilds). Installs only the packages that are
# missing, so it costs nothing on a machine that has them; elsewhere (no apt-get) it says what to install.
# pip brings the rest (CMake, Ninja, pybind11, scikit-build-core) into the virtual environment.
set -euo pipefail

packages=(build-essential python3-dev python3-venv git ccache)

if ! command -v apt-get >/dev/null 2>&1; then
  echo "prerequisites.sh: no apt-get here; install a C++17 compiler, Python 3.9+ with its headers and venv, and git"
  exit 0
fi
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [[ ${#missing[@]} -eq 0 ]]; then
  exit 0
fi
sudo=()
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null 2>&1 || { echo "prerequisites.sh: run as root to install: ${missing[*]}" >&2; exit 1; }
  sudo=(sudo)
fi
echo "prerequisites.sh: installing ${missing[*]}"
"${sudo[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
