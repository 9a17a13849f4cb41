// sdcpp-py patch 0009: ggml-cpu's table of our fused kernels (see sdcpp_py_kernels.h).
#include "sdcpp_py_kernels.h"

#include "sdcpp_py_attention.h"
#include "sdcpp_py_conv.h"
#include "sdcpp_py_geglu.h"
#include "sdcpp_py_norm.h"
#include "sdcpp_py_packed_gemm.h"
#include "sdcpp_py_precision.h"

#include <cstdlib>
#include <cstring>

#if defined(SDCPP_PY_PACKED_GEMM)
using sdcpp_py_gemm::wider_kernels_allowed;  // SDCPP_PY_CPU_KERNELS=avx2 (sdcpp_py_packed_gemm.h)
#endif

extern "C" void sdcpp_py_gemm_set_bf16(int bf16) {
#if defined(SDCPP_PY_BF16_GEMM)
    sdcpp_py_gemm::bf16_products = bf16 != 0 && wider_kernels_allowed();
#else
    (void)bf16;
#endif
}

extern "C" void* sdcpp_py_cpu_kernel_by_name(const char* name) {
#if defined(SDCPP_PY_CPU_KERNELS)
    struct Kernel {
        const char* name;
        ggml_custom_op_t op;
    };
    static const Kernel kernels[] = {
        {SDCPP_PY_CPU_ATTENTION, sdcpp_py_cpu_attention_compute},
        {SDCPP_PY_CPU_CONV_2D, sdcpp_py_cpu_conv_2d_compute},
        {SDCPP_PY_CPU_GEGLU, sdcpp_py_cpu_geglu_compute},
        {SDCPP_PY_CPU_GROUP_NORM, sdcpp_py_cpu_group_norm_compute},
#if !defined(GGML_USE_ACCELERATE)  // there ggml_norm centres with vDSP, which the node does not
        {SDCPP_PY_CPU_LAYER_NORM, sdcpp_py_cpu_layer_norm_compute},
#endif
        {SDCPP_PY_CPU_WINOGRAD_INPUT, sdcpp_py_cpu_winograd_input_compute},
        {SDCPP_PY_CPU_WINOGRAD_CONV, sdcpp_py_cpu_winograd_conv_compute},
    };
    for (const Kernel& kernel : kernels) {
        if (std::strcmp(name, kernel.name) == 0) return reinterpret_cast<void*>(kernel.op);
    }
#if defined(SDCPP_PY_BF16_GEMM)
    // Not an op: its presence says the products can run in bf16 (AVX512_BF16 here, not restricted away).
    if (std::strcmp(name, SDCPP_PY_BF16_PRODUCTS) == 0 && wider_kernels_allowed()) {
        return reinterpret_cast<void*>(&sdcpp_py_gemm_set_bf16);
    }
#endif
#if defined(SDCPP_PY_AMX_BF16)
    // Nor this one: the bf16 products take AMX tiles (the CPU has them, Linux granted this process their state,
    // SDCPP_PY_CPU_KERNELS does not restrict them).
    if (std::strcmp(name, SDCPP_PY_AMX_BF16_PRODUCTS) == 0 && sdcpp_py_gemm::amx_bf16_usable()) {
        return reinterpret_cast<void*>(&sdcpp_py_gemm_set_bf16);
    }
#endif
#else
    (void)name;
#endif
    return nullptr;
}
