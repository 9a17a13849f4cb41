/* sdcpp-py patch 0014: products in bf16 on the CPU (Context's cpu_precision="bf16"), chosen per graph.
 *
 * A context's graphs are built on the thread that calls into the core, with that context's precision set
 * here for the call (the binding's scope). ggml_mul_mat marks its node then, and our fused nodes put the
 * same bit in their userdata; the CPU backend's products (kernels/sdcpp_py_packed_gemm.h) read the mark
 * when they run, on whichever worker thread. So two contexts of different precisions can share a process.
 * C and C++: ggml.c and ggml-cpu.c include it. */
#pragma once

#include "ggml.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ggml_mul_mat's op_params slot for the mark (slot 0 is ggml_mul_mat_set_prec's) and its value: "bf16". */
#define SDCPP_PY_BF16_PARAM 1
#define SDCPP_PY_BF16_MARK 0x62663136

/* In ggml-base (ggml.c): this thread's precision for the graphs it builds now (0: f32, 1: bf16). */
GGML_API void sdcpp_py_set_graph_bf16(int bf16);
GGML_API int sdcpp_py_graph_bf16(void);

/* In ggml-cpu (sdcpp_py_kernels.cpp): the products this thread runs next take bf16 operands (where the
 * backend has the bf16 kernel and SDCPP_PY_CPU_KERNELS does not restrict it). */
void sdcpp_py_gemm_set_bf16(int bf16);

#ifdef __cplusplus
}
#endif
