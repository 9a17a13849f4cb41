#!/usr/bin/env bash
# Build the Vulkan variant of sdcpp-py on Debian 12 and install it into its own virtual environment, so it
# can be tested beside the CPU build (one distribution name: the two cannot share an environment).
#
#   tools/vulkan_build.sh [--venv DIR] [--prereqs-only] [--no-apt]
#
# --venv          where the Vulkan build is installed (default: build/vulkan-venv)
# --prereqs-only  install/fetch what the build needs, then stop
# --no-apt        do not run apt: the packages below must already be there
#
# What Debian 12 lacks, measured with the pinned core:
# - its Vulkan headers (1.3.239) are too old for this ggml (vk::LayerSettingEXT is missing). Debian 13's
#   libvulkan-dev (1.4.x) headers compile it: that .deb is fetched with apt (never installed) and unpacked
#   into a cache folder; the build links Debian 12's own loader and uses its glslc.
# - its Mesa (22.3) llvmpipe Vulkan driver corrupts the heap on ggml's shaders; bookworm-backports' Mesa
#   (25.x) runs them. llvmpipe is a CPU "GPU": ggml lists it only when GGML_VK_VISIBLE_DEVICES names it.
# The two suites are added to apt beside the machine's own Debian source (same archive, read from it), with
# the newer one pinned so that nothing is ever installed from it.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$repo_root/build/vulkan-venv"
prereqs_only=0
use_apt=1
cache="${SDCPP_PY_CACHE_DIR:-$HOME/.cache/sdcpp-py}/vulkan"

die() { echo "vulkan_build.sh: $*" >&2; exit 1; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --venv) venv="${2:?--venv needs a folder}"; shift 2 ;;
    --prereqs-only) prereqs_only=1; shift ;;
    --no-apt) use_apt=0; shift ;;
    -h|--help) sed -n '2,18p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done

sudo_if_needed() { if [[ "$(id -u)" == 0 ]]; then "$@"; else sudo "$@"; fi; }

# The archive URI of the machine's own Debian source (deb822 or one-line format).
debian_archive() {
  local uri
  uri="$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)"
  if [[ -z "$uri" ]]; then
    uri="$(awk '$1 == "deb" && $3 ~ /^bookworm$/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)"
  fi
  [[ -n "$uri" ]] || die "no Debian bookworm source found in /etc/apt to add bookworm-backports and trixie beside"
  echo "$uri"
}

add_suites() {
  local list=/etc/apt/sources.list.d/sdcpp-py-vulkan.sources pin=/etc/apt/preferences.d/sdcpp-py-vulkan
  [[ -f "$list" ]] && return 0
  local archive
  archive="$(debian_archive)"
  echo "vulkan_build.sh: adding bookworm-backports and trixie (download only) from $archive"
  sudo_if_needed tee "$list" >/dev/null <<EOF
Types: deb
URIs: $archive
Suites: bookworm-backports trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  # trixie: headers are fetched from it, nothing is installed from it.
  sudo_if_needed tee "$pin" >/dev/null <<EOF
Package: *
Pin: release n=trixie
Pin-Priority: -1
EOF
}

if [[ "$use_apt" == 1 ]]; then
  add_suites
  sudo_if_needed apt-get update -qq
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq glslc libvulkan-dev >/dev/null
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -t bookworm-backports \
    mesa-vulkan-drivers >/dev/null
fi
command -v glslc >/dev/null || die "glslc is missing (apt-get install glslc)"

headers="$cache/headers"
if [[ ! -f "$headers/usr/include/vulkan/vulkan.hpp" ]]; then
  [[ "$use_apt" == 1 ]] || die "no Vulkan 1.4 headers in $headers and --no-apt given"
  mkdir -p "$cache/deb" && rm -rf "$headers"
  (cd "$cache/deb" && rm -f libvulkan-dev_*.deb && apt-get download -qq libvulkan-dev/trixie)
  dpkg -x "$cache"/deb/libvulkan-dev_*.deb "$headers"
fi
grep -q "LayerSettingEXT" -r "$headers/usr/include/vulkan/" || die "the headers in $headers lack vk::LayerSettingEXT"
echo "vulkan_build.sh: headers $(basename "$cache"/deb/libvulkan-dev_*.deb 2>/dev/null || echo present) in $headers"
[[ "$prereqs_only" == 1 ]] && exit 0

# --- build and install into its own venv ----------------------------------------------------------------
python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q "scikit-build-core>=0.10" "pybind11>=3" "cmake>=3.21" ninja numpy pillow pytest
started=$SECONDS
# Its own build folder, so the CPU build's stays warm; ccache still shares the compiled CPU sources.
SDCPP_BACKEND=vulkan CMAKE_ARGS="-DVulkan_INCLUDE_DIR=$headers/usr/include" \
  "$venv/bin/python" -m pip install -q --no-build-isolation \
  -Cbuild-dir="$repo_root/build/vulkan" "$repo_root"
echo "vulkan_build.sh: built and installed in $((SECONDS - started)) s into $venv"
GGML_VK_VISIBLE_DEVICES="${GGML_VK_VISIBLE_DEVICES:-0}" "$venv/bin/python" -c \
  "import sdcpp_py; print('backend', sdcpp_py.BACKEND); print(sdcpp_py.backends())"
