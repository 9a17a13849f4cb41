# How the core and ggml are built: static, without their examples, and for which backend (CPU, CUDA, Vulkan,
# Metal; or the portable CPU build's variants). Sets the core's and ggml's cache options before they are added.

# The core is linked statically into the Python extension modules.
set(CMAKE_POSITION_INDEPENDENT_CODE ON)
set(SD_BUILD_SHARED_LIBS OFF CACHE BOOL "" FORCE)
set(SD_BUILD_EXAMPLES OFF CACHE BOOL "" FORCE)
set(SD_WEBP OFF CACHE BOOL "" FORCE)
set(SD_WEBM OFF CACHE BOOL "" FORCE)
set(GGML_BUILD_TESTS OFF CACHE BOOL "" FORCE)
set(GGML_BUILD_EXAMPLES OFF CACHE BOOL "" FORCE)
# ggml's tiled f16/f32 matrix kernels (llamafile's tinyBLAS): llama.cpp turns them on, the core's build does
# not. Convolutions (im2col) and linear layers go through them: measured in benchmarks/vs_diffusers.py.
# -DGGML_LLAMAFILE=OFF restores the core's default build.
set(GGML_LLAMAFILE_DEFAULT ON)
# Backend switches: -DSD_CUDA=ON (via CMAKE_ARGS or -Ccmake.define.SD_CUDA=ON), or the short
# SDCPP_BACKEND=cpu|cuda|vulkan|metal in the environment, which also turns the other backends off.
if(NOT "$ENV{SDCPP_BACKEND}" STREQUAL "")
  string(TOLOWER "$ENV{SDCPP_BACKEND}" requested_backend)
  if(NOT requested_backend MATCHES "^(cpu|cuda|vulkan|metal)$")
    message(FATAL_ERROR "SDCPP_BACKEND=$ENV{SDCPP_BACKEND}: expected cpu, cuda, vulkan or metal")
  endif()
  foreach(backend CUDA VULKAN METAL)
    string(TOLOWER "${backend}" name)
    if(name STREQUAL requested_backend)
      set(SD_${backend} ON CACHE BOOL "" FORCE)
    else()
      set(SD_${backend} OFF CACHE BOOL "" FORCE)
    endif()
  endforeach()
endif()
# Apple Silicon users expect the GPU (as with llama.cpp's Python wheels): Metal unless a backend was chosen.
if("$ENV{SDCPP_BACKEND}" STREQUAL "" AND APPLE AND CMAKE_SYSTEM_PROCESSOR MATCHES "^(arm64|aarch64)$"
   AND NOT DEFINED SD_METAL AND NOT SD_CUDA AND NOT SD_VULKAN)
  set(SD_METAL ON CACHE BOOL "" FORCE)
endif()
if(SDCPP_PORTABLE_CPU)
  if(SD_CUDA OR SD_VULKAN OR SD_METAL)
    message(FATAL_ERROR "SDCPP_PORTABLE_CPU builds the CPU wheel: turn the GPU backends off")
  endif()
  set(GGML_BACKEND_DL ON CACHE BOOL "" FORCE)
  set(GGML_CPU_ALL_VARIANTS ON CACHE BOOL "" FORCE)
  set(GGML_NATIVE OFF CACHE BOOL "" FORCE)
  # ggml's dynamic backends need ggml and ggml-base as shared libraries (the core itself stays static).
  set(SD_BUILD_SHARED_GGML_LIB ON CACHE BOOL "" FORCE)
  set(BUILD_SHARED_LIBS ON)
endif()

# The backend's name, compiled into _core as sdcpp_py.BACKEND.
set(SDCPP_BACKEND "cpu")
foreach(backend CUDA VULKAN METAL)
  if(SD_${backend})
    string(TOLOWER "${backend}" SDCPP_BACKEND)
  endif()
endforeach()
message(STATUS "sdcpp-py backend: ${SDCPP_BACKEND}")
