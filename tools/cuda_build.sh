#!/usr/bin/env bash
# Build the CUDA variant of sdcpp-py for the given GPU architectures only (a few minutes per architecture on
# 16 cores; all of ggml-cuda's default architectures would take many times longer).
#
#   tools/cuda_build.sh [--arch 90[;89...]] [--python PY] [--wheel-dir DIR] [--install]
#   tools/cuda_build.sh --configure-only BUILD_DIR [--arch 90]    # CMake configure only (the tests use this)
#
# --arch       CMAKE_CUDA_ARCHITECTURES; default: the compute capability of the GPUs nvidia-smi lists.
# --python     the interpreter to build for (default: python3); --install also installs the wheel into it.
# --wheel-dir  where the wheel goes (default: build/cuda-wheels).
#
# cuBLAS: used from the CUDA toolkit when it has it; otherwise (e.g. a toolkit assembled from NVIDIA's pip
# wheels) the matching nvidia-cublas wheel is installed once with pip into a cache folder
# (SDCPP_CUBLAS_CACHE, default ~/.cache/sdcpp-py) and handed to CMake's FindCUDAToolkit as
# CUDA_cublas_LIBRARY / CUDA_cublasLt_LIBRARY plus its include folder. SDCPP_CUBLAS_SPEC overrides the pip
# requirement (default: nvidia-cublas==<toolkit major>.*); SDCPP_CUBLAS_DIR points at an unpacked one instead.
# The extension's RPATH names the CUDA libraries' folders (a wheel for this machine, not for redistribution).
# ccache, when installed, caches the nvcc compiles too (CMakeLists.txt sets the CUDA compiler launcher).
# Exit status 3: cuBLAS was needed from pip and pip could not fetch it.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
arch=""
python="python3"
wheel_dir="$repo_root/build/cuda-wheels"
configure_only=""
install=0

die() { echo "cuda_build.sh: $*" >&2; exit 1; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --arch) arch="${2:?--arch needs a value}"; shift 2 ;;
    --python) python="${2:?--python needs a value}"; shift 2 ;;
    --wheel-dir) wheel_dir="${2:?--wheel-dir needs a value}"; shift 2 ;;
    --configure-only) configure_only="${2:?--configure-only needs a build folder}"; shift 2 ;;
    --install) install=1; shift ;;
    -h|--help) sed -n '2,19p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done

# --- nvcc and the toolkit root --------------------------------------------------------------------------
nvcc=""
for candidate in "${CUDACXX:-}" "${CUDA_HOME:+$CUDA_HOME/bin/nvcc}" "${CUDA_PATH:+$CUDA_PATH/bin/nvcc}" \
                 /usr/local/cuda/bin/nvcc "$(command -v nvcc || true)"; do
  if [[ -n "$candidate" && -x "$candidate" ]]; then nvcc="$candidate"; break; fi
done
[[ -n "$nvcc" ]] || die "nvcc not found: install the CUDA toolkit or set CUDA_HOME"
cuda_home="$(cd "$(dirname "$nvcc")/.." && pwd)"
cuda_version="$("$nvcc" --version | sed -n 's/.*release \([0-9][0-9]*\.[0-9][0-9]*\).*/\1/p')"
cuda_major="${cuda_version%%.*}"
[[ -n "$cuda_major" ]] || die "could not read the CUDA version from $nvcc --version"
echo "nvcc: $nvcc (CUDA $cuda_version, toolkit $cuda_home)"

# --- architectures --------------------------------------------------------------------------------------
if [[ -z "$arch" ]]; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    arch="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | tr -d ' .' | sort -u | paste -sd';' -)"
  fi
  [[ -n "$arch" ]] || die "no GPU seen by nvidia-smi: pass --arch (e.g. --arch 90 for H100/H200, 89 for L4/RTX 4090)"
fi
echo "CUDA architectures: $arch"

defines=(
  "SD_CUDA=ON"
  "CMAKE_BUILD_TYPE=Release"
  "CMAKE_CUDA_COMPILER=$nvcc"
  "CUDAToolkit_ROOT=$cuda_home"
  "CMAKE_CUDA_ARCHITECTURES=$arch"
  # Installed extension finds libcudart/libcublas where it was linked against them.
  "CMAKE_INSTALL_RPATH_USE_LINK_PATH=ON"
)

# --- cuBLAS ---------------------------------------------------------------------------------------------
toolkit_has_cublas() {
  local lib_dir include_dir
  local lib_dirs=("$cuda_home"/lib64 "$cuda_home"/lib "$cuda_home"/targets/*/lib)
  # A distribution's toolkit (nvcc in /usr/bin) keeps its libraries in the multiarch folder.
  if [[ "$cuda_home" == /usr ]]; then lib_dirs+=(/usr/lib/x86_64-linux-gnu /usr/lib/aarch64-linux-gnu); fi
  for lib_dir in "${lib_dirs[@]}"; do
    if compgen -G "$lib_dir/libcublas.so*" >/dev/null; then
      for include_dir in "$cuda_home"/include "$cuda_home"/targets/*/include; do
        [[ -f "$include_dir/cublas_v2.h" ]] && return 0
      done
    fi
  done
  return 1
}

cublas_dir="${SDCPP_CUBLAS_DIR:-}"
if [[ -z "$cublas_dir" ]] && ! toolkit_has_cublas; then
  spec="${SDCPP_CUBLAS_SPEC:-nvidia-cublas==$cuda_major.*}"
  if [[ "$cuda_major" -le 12 && -z "${SDCPP_CUBLAS_SPEC:-}" ]]; then spec="nvidia-cublas-cu$cuda_major"; fi
  cublas_dir="${SDCPP_CUBLAS_CACHE:-$HOME/.cache/sdcpp-py}/$(echo "$spec" | tr -c 'A-Za-z0-9.\n-' '_')"
  if [[ ! -d "$cublas_dir" ]]; then
    echo "The CUDA toolkit has no cuBLAS: installing $spec into $cublas_dir"
    rm -rf "$cublas_dir.partial"
    if ! "$python" -m pip install -q --no-deps --target "$cublas_dir.partial" "$spec"; then
      echo "cuda_build.sh: could not fetch $spec with pip (offline?); set SDCPP_CUBLAS_DIR to an unpacked one" >&2
      exit 3
    fi
    mv "$cublas_dir.partial" "$cublas_dir"
  fi
fi
if [[ -n "$cublas_dir" ]]; then
  cublas_lib="$(find "$cublas_dir" -name 'libcublas.so*' -type f | sort | head -n1)"
  cublaslt_lib="$(find "$cublas_dir" -name 'libcublasLt.so*' -type f | sort | head -n1)"
  cublas_header="$(find "$cublas_dir" -name cublas_v2.h -type f | head -n1)"
  [[ -n "$cublas_lib" && -n "$cublaslt_lib" && -n "$cublas_header" ]] \
    || die "$cublas_dir lacks libcublas.so*, libcublasLt.so* or cublas_v2.h"
  echo "cuBLAS: $cublas_lib"
  defines+=(
    "CUDA_cublas_LIBRARY=$cublas_lib"
    "CUDA_cublasLt_LIBRARY=$cublaslt_lib"
    "CMAKE_CUDA_STANDARD_INCLUDE_DIRECTORIES=$(dirname "$cublas_header")"
  )
else
  echo "cuBLAS: from the CUDA toolkit"
fi

# --- the driver library (ggml-cuda's virtual-memory pool calls the driver API) --------------------------
if ! compgen -G "$cuda_home/lib64/stubs/libcuda.so" >/dev/null && ! compgen -G "$cuda_home/targets/*/lib/stubs/libcuda.so" >/dev/null; then
  driver="$( (ldconfig -p 2>/dev/null || true) | sed -n 's/.*libcuda\.so\.1 (.*) => //p' | head -n1)"
  if [[ -n "$driver" ]]; then
    defines+=("CUDA_cuda_driver_LIBRARY=$driver")
  else
    echo "No libcuda (driver or toolkit stub): building with GGML_CUDA_NO_VMM=ON (ggml's plain memory pool)"
    defines+=("GGML_CUDA_NO_VMM=ON")
  fi
fi

export SDCPP_BACKEND=cuda
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
if command -v ccache >/dev/null 2>&1; then echo "ccache: $(command -v ccache)"; else echo "ccache: not installed"; fi
start=$(date +%s)

if [[ -n "$configure_only" ]]; then
  args=(-S "$repo_root" -B "$configure_only" "-DPython_EXECUTABLE=$(command -v "$python")")
  if pybind11_dir="$("$python" -c 'import pybind11; print(pybind11.get_cmake_dir())' 2>/dev/null)"; then
    args+=("-Dpybind11_DIR=$pybind11_dir")
  fi
  if command -v ninja >/dev/null 2>&1 && [[ ! -f "$configure_only/CMakeCache.txt" ]]; then args+=(-G Ninja); fi
  for define in "${defines[@]}"; do args+=("-D$define"); done
  cmake "${args[@]}"
  echo "CUDA configure time: $(( $(date +%s) - start ))s"
  exit 0
fi

settings=("-Cbuild-dir=build/cuda-{wheel_tag}")
for define in "${defines[@]}"; do settings+=("-Ccmake.define.$define"); done
pip_args=()
# Offline-friendly: reuse the interpreter's build backend when it has one (pip fetches it otherwise).
if "$python" -c 'import scikit_build_core, pybind11' 2>/dev/null; then pip_args+=(--no-build-isolation); fi
mkdir -p "$wheel_dir"
rm -f "$wheel_dir"/sdcpp_py-*.whl
(cd "$repo_root" && "$python" -m pip wheel -v --no-deps "${pip_args[@]}" "${settings[@]}" -w "$wheel_dir" .)
wheel="$(ls "$wheel_dir"/sdcpp_py-*.whl)"
echo "CUDA build time (arch $arch, $CMAKE_BUILD_PARALLEL_LEVEL jobs): $(( $(date +%s) - start ))s -> $wheel"
if [[ "$install" == 1 ]]; then
  "$python" -m pip install -q --no-deps --force-reinstall "$wheel"
  echo "installed into $("$python" -c 'import sys; print(sys.prefix)')"
fi
