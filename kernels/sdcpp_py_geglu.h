// sdcpp-py patch 0008: the graph side of a fused GEGLU for ggml's CPU backend.
//
// The core's GEGLU (SD1/SD2/SDXL feed-forward) splits the projection's output into x and a gate, copies the
// gate out (ggml_cont), runs ggml_gelu over it and multiplies with the strided x: three passes and a copy
// of a (tokens x 1280) tensor per block. sdcpp_py_cpu_geglu() returns one custom node instead
// (sdcpp_py_geglu.cpp, compiled into ggml-cpu) that does it per row in cache, with ggml's own GELU, so the
// result is bitwise the same (in bf16 graphs, cpu_precision="bf16", the GELU is computed instead: ~1e-6). The projection's bias add before it is folded in (one pass over the tensor
// less). nullptr where it does not apply.
#pragma once

#include "ggml.h"
#include "sdcpp_py_kernels.h"
#include "sdcpp_py_precision.h"

#define SDCPP_PY_CPU_GEGLU "sdcpp_py_cpu_geglu"

extern "C" {
// The custom op (in ggml-cpu, found by the name above): dst (D, rows...) = x[:D] * gelu(x[D:]) per row of
// x = src[0] (2D, rows...), or of x = src[0] + src[1] (a (2D) bias) where the node has two sources.
void sdcpp_py_cpu_geglu_compute(struct ggml_tensor* dst, int ith, int nth, void* userdata);
}

// The projection's bias add (ggml_ext_linear's ggml_add_inplace of a 1-D f32 bias): its operands, so that
// the node adds the bias in the same pass. Only for an add nothing else reads (GEGLU::forward's own
// projection): skipped, it is left out of the graph, and its in-place write never happens.
inline bool sdcpp_py_geglu_bias_add(const ggml_tensor* x) {
    if (x->op != GGML_OP_ADD || x->src[0] == nullptr || x->src[1] == nullptr) return false;
    const ggml_tensor *a = x->src[0], *b = x->src[1];
    return a->type == GGML_TYPE_F32 && ggml_is_contiguous(a) && ggml_are_same_shape(a, x) &&
           b->type == GGML_TYPE_F32 && ggml_is_contiguous(b) && ggml_nelements(b) == b->ne[0] &&
           b->ne[0] == x->ne[0];
}

// x: the projection's (2D, tokens, ...) f32 output, contiguous, read by nothing but this GEGLU.
inline ggml_tensor* sdcpp_py_cpu_geglu(ggml_context* ctx, bool backend_is_cpu, ggml_tensor* x) {
    if (!backend_is_cpu) return nullptr;
    const ggml_custom_op_t op = sdcpp_py_cpu_kernel(SDCPP_PY_CPU_GEGLU);
    if (op == nullptr) return nullptr;
    if (x->type != GGML_TYPE_F32 || !ggml_is_contiguous(x) || x->ne[0] % 2 != 0) return nullptr;
    ggml_tensor* args[2] = {x, nullptr};
    int n_args = 1;
    if (sdcpp_py_geglu_bias_add(x)) {
        args[0] = x->src[0];
        args[1] = x->src[1];
        n_args = 2;
    }
    // userdata: 1 for a bf16 graph (Context's cpu_precision="bf16", patch 0014): there the GELU is computed
    // rather than read from ggml's f16 table.
    const uintptr_t bf16 = sdcpp_py_graph_bf16() != 0 && sdcpp_py_cpu_kernel(SDCPP_PY_BF16_PRODUCTS) != nullptr;
    return ggml_custom_4d(ctx, GGML_TYPE_F32, x->ne[0] / 2, x->ne[1], x->ne[2], x->ne[3], args, n_args, op,
                          GGML_N_TASKS_MAX, reinterpret_cast<void*>(bf16));
}
