// sdcpp-py patch 0009: the core reaches our fused CPU kernels through ggml's backend registry.
//
// ggml-cpu hands them out by name from its get_proc_address, as it does its own extras. A build with
// ggml's runtime-chosen CPU variants (GGML_BACKEND_DL) has no ggml-cpu to link against, and the variant
// that loaded (AVX2 or not) decides whether the kernels exist, so the graph side asks the loaded backend.
#pragma once

#include <cstdlib>
#include <cstring>

#include "ggml-backend.h"
#include "ggml.h"

// The name under which the CPU backend reports bf16 products (Context's cpu_precision="bf16").
#define SDCPP_PY_BF16_PRODUCTS "sdcpp_py_bf16_products"
// ... and where those products take Intel AMX tiles (TDPBF16PS) rather than AVX512_BF16 registers.
#define SDCPP_PY_AMX_BF16_PRODUCTS "sdcpp_py_amx_bf16_products"

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

// sdcpp-py patch 0019: an element-wise step after a fused node (a ResBlock's SiLU after its group norm, its
// adds after a convolution) taken into that node as it is built. A custom node's function and userdata, as
// ggml keeps them at the start of its op_params (ggml-impl.h's ggml_custom_op_params).
struct SdcppPyCustomOp {
    ggml_custom_op_t fun;
    int n_tasks;
    void* userdata;
};
static_assert(sizeof(SdcppPyCustomOp) <= GGML_MAX_OP_PARAMS, "a custom node's parameters fit its op_params");

// Two int32 slots at the end of a custom node's op_params, past the parameters above, that its threads
// share while it runs (ClaimedRanges' counters). ggml zeroes op_params when it makes the node.
constexpr int SDCPP_PY_CLAIM_SLOTS = 2;
static_assert(sizeof(SdcppPyCustomOp) + SDCPP_PY_CLAIM_SLOTS * sizeof(int32_t) <= GGML_MAX_OP_PARAMS,
              "the shared counters lie past the node's parameters");
inline int32_t* sdcpp_py_claim_counters(ggml_tensor* node) {
    return node->op_params + GGML_MAX_OP_PARAMS / sizeof(int32_t) - SDCPP_PY_CLAIM_SLOTS;
}

// The node's op if it is a custom node running `name`'s kernel from the CPU backend (else fun is nullptr).
inline SdcppPyCustomOp sdcpp_py_cpu_custom_op(const ggml_tensor* node, const char* name) {
    SdcppPyCustomOp op{nullptr, 0, nullptr};
    if (node == nullptr || node->op != GGML_OP_CUSTOM) return op;
    std::memcpy(&op, node->op_params, sizeof op);
    const ggml_custom_op_t kernel = sdcpp_py_cpu_kernel(name);
    if (kernel == nullptr || op.fun != kernel) op.fun = nullptr;
    return op;
}

// SDCPP_PY_CPU_EPILOGUES=separate keeps those steps as the core's own nodes (bitwise the same; to test and
// time them), read where a graph is built.
inline bool sdcpp_py_cpu_epilogues() {
    const char* setting = std::getenv("SDCPP_PY_CPU_EPILOGUES");
    return setting == nullptr || std::strcmp(setting, "separate") != 0;
}
