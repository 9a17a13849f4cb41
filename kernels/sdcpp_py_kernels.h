// sdcpp-py patch 0009: the core reaches our fused CPU kernels through ggml's backend registry.
//
// ggml-cpu hands them out by name from its get_proc_address, as it does its own extras. A build with
// ggml's runtime-chosen CPU variants (GGML_BACKEND_DL) has no ggml-cpu to link against, and the variant
// that loaded (AVX2 or not) decides whether the kernels exist, so the graph side asks the loaded backend.
#pragma once

#include "ggml-backend.h"
#include "ggml.h"

// The name under which the CPU backend reports bf16 products (Context's cpu_precision="bf16").
#define SDCPP_PY_BF16_PRODUCTS "sdcpp_py_bf16_products"

extern "C" {
// Compiled into ggml-cpu: the custom op called `name`, or nullptr (unknown name, or no packed kernel).
void* sdcpp_py_cpu_kernel_by_name(const char* name);
}

// The op from the CPU backend in the registry, or nullptr where there is none or it lacks the kernel.
inline ggml_custom_op_t sdcpp_py_cpu_kernel(const char* name) {
    ggml_backend_reg_t cpu = ggml_backend_reg_by_name("CPU");
    if (cpu == nullptr) return nullptr;
    return reinterpret_cast<ggml_custom_op_t>(ggml_backend_reg_get_proc_address(cpu, name));
}
