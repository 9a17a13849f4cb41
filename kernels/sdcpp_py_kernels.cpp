// sdcpp-py patch 0009: ggml-cpu's table of our fused kernels (see sdcpp_py_kernels.h).
#include "sdcpp_py_kernels.h"

#include "sdcpp_py_attention.h"
#include "sdcpp_py_conv.h"
#include "sdcpp_py_geglu.h"
#include "sdcpp_py_packed_gemm.h"

#include <cstring>

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
    };
    for (const Kernel& kernel : kernels) {
        if (std::strcmp(name, kernel.name) == 0) return reinterpret_cast<void*>(kernel.op);
    }
#else
    (void)name;
#endif
    return nullptr;
}
