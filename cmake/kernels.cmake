# Our kernels (kernels/): patch 0004's packed products (a header ggml-cpu's sgemm.cpp includes) and patches
# 0006-0008 and 0017's fused attention, convolution, GEGLU and norms, and the Winograd convolution (sources
# compiled into every CPU backend target, handed to the core by name through the backend registry: patch
# 0009), and patch 0020's copies (a header ggml-cpu's ops.cpp includes). Sets SDCPP_CPU_TARGETS.
set(SDCPP_KERNELS_DIR "${PROJECT_SOURCE_DIR}/kernels")
set(SDCPP_CPU_TARGETS "")
foreach(backend IN LISTS GGML_AVAILABLE_BACKENDS)
  if(backend MATCHES "^ggml-cpu" AND TARGET ${backend})
    list(APPEND SDCPP_CPU_TARGETS ${backend})
  endif()
endforeach()
if(NOT SDCPP_CPU_TARGETS)
  message(FATAL_ERROR "ggml configured no CPU backend target (ggml-cpu or ggml-cpu-<variant>)")
endif()
foreach(cpu_target IN LISTS SDCPP_CPU_TARGETS)
  target_include_directories(${cpu_target} PRIVATE "${SDCPP_KERNELS_DIR}")
  target_sources(${cpu_target} PRIVATE
    "${SDCPP_KERNELS_DIR}/sdcpp_py_attention.cpp" "${SDCPP_KERNELS_DIR}/sdcpp_py_conv.cpp"
    "${SDCPP_KERNELS_DIR}/sdcpp_py_geglu.cpp" "${SDCPP_KERNELS_DIR}/sdcpp_py_kernels.cpp"
    "${SDCPP_KERNELS_DIR}/sdcpp_py_norm.cpp" "${SDCPP_KERNELS_DIR}/sdcpp_py_winograd.cpp")
endforeach()
target_include_directories(stable-diffusion PUBLIC "${SDCPP_KERNELS_DIR}")
# ggml.c marks bf16 products (patch 0014: sdcpp_py_precision.h).
target_include_directories(ggml-base PRIVATE "${SDCPP_KERNELS_DIR}")
