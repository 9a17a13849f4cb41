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
# The native build's CPU code as the portable wheel's variants compile it (generic tuning, no AVX512_FP16), so
# that both give the same pixels, and sd-cli's (built by this project too). Where -march=native enables
# AVX512_FP16 (Intel Sapphire Rapids and later) ggml's f16 vector code computes in half precision
# (simd-mappings.h: ggml_vec_dot_f16's sums in fp16), and its tuning (rocketlake, on a 2-core Xeon VM) changed
# some of GCC's FMA contractions in ggml's own loops: pixels 4 levels apart, then 1, then none.
include(CheckCXXCompilerFlag)
if(CMAKE_SYSTEM_PROCESSOR MATCHES "x86_64|AMD64|amd64" AND NOT MSVC)
  check_cxx_compiler_flag("-mno-avx512fp16" SDCPP_HAS_NO_AVX512FP16)
  foreach(cpu_target IN LISTS SDCPP_CPU_TARGETS)
    target_compile_options(${cpu_target} PRIVATE -mtune=generic)
    if(SDCPP_HAS_NO_AVX512FP16)
      target_compile_options(${cpu_target} PRIVATE -mno-avx512fp16)
    endif()
  endforeach()
endif()
target_include_directories(stable-diffusion PUBLIC "${SDCPP_KERNELS_DIR}")
# ggml.c marks bf16 products (patch 0014: sdcpp_py_precision.h).
target_include_directories(ggml-base PRIVATE "${SDCPP_KERNELS_DIR}")
