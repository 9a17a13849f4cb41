// sdcpp-py patch 0008: the graph side of a fused GEGLU for ggml's CPU backend.
//
// The core's GEGLU (SD1/SD2/SDXL feed-forward) splits the projection's output into x and a gate, copies the
// gate out (ggml_cont), runs ggml_gelu over it and multiplies with the strided x: three passes and a copy
// of a (tokens x 1280) tensor per block. sdcpp_py_cpu_geglu() returns one custom node instead
// (sdcpp_py_geglu.cpp, compiled into ggml-cpu) that does it per row in cache, with ggml's own GELU, so the
// result is bitwise the same. nullptr where it does not apply.
#pragma once

#include "ggml.h"
#include "sdcpp_py_kernels.h"

#define SDCPP_PY_CPU_GEGLU "sdcpp_py_cpu_geglu"

extern "C" {
// The custom op (in ggml-cpu, found by the name above): dst (D, rows...) = src[0][:D] * gelu(src[0][D:])
// per row of src[0] (2D, rows...).
void sdcpp_py_cpu_geglu_compute(struct ggml_tensor* dst, int ith, int nth, void* userdata);
}

// x: the projection's (2D, tokens, ...) f32 output, contiguous.
inline ggml_tensor* sdcpp_py_cpu_geglu(ggml_context* ctx, bool backend_is_cpu, ggml_tensor* x) {
    if (!backend_is_cpu) return nullptr;
    const ggml_custom_op_t op = sdcpp_py_cpu_kernel(SDCPP_PY_CPU_GEGLU);
    if (op == nullptr) return nullptr;
    if (x->type != GGML_TYPE_F32 || !ggml_is_contiguous(x) || x->ne[0] % 2 != 0) return nullptr;
    ggml_tensor* args[1] = {x};
    return ggml_custom_4d(ctx, GGML_TYPE_F32, x->ne[0] / 2, x->ne[1], x->ne[2], x->ne[3], args, 1, op,
                          GGML_N_TASKS_MAX, nullptr);
}
