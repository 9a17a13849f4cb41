// sdcpp-py patch 0006: the graph side of a fused attention for ggml's CPU backend.
//
// The core's attention (ggml_ext_attention_ext without flash attention) builds K^T Q, a scale, a softmax and
// a product with V as four graph nodes, so every head's L_q x L_k score matrix goes to memory and back four
// times (SD1.5 at 512x512: 8 x 4096 x 4096 floats, 512 MiB, per attention). sdcpp_py_cpu_attention()
// returns one custom node instead that works through blocks of queries whose scores stay in cache
// (sdcpp_py_attention.cpp, compiled into ggml-cpu), reading the heads straight from the core's inputs and
// writing the (N, L_q, C) result, so the per-head copies before and after go too. Its arithmetic is the four
// nodes' own, step for step, so the result is bitwise the same; it returns nullptr where it does not apply
// and the core builds its own graph.
#pragma once

#include <cstdint>
#include <cstring>
#include <initializer_list>

#include "ggml.h"
#include "sdcpp_py_kernels.h"
#include "sdcpp_py_precision.h"

#define SDCPP_PY_CPU_ATTENTION "sdcpp_py_cpu_attention"

extern "C" {
// The custom op (in ggml-cpu, found by the name above): dst = V softmax(scale K^T Q) per head, for q, k, v
// as below.
void sdcpp_py_cpu_attention_compute(struct ggml_tensor* dst, int ith, int nth, void* userdata);
}

// True when the loaded CPU backend has the packed kernel (patch 0004) that both products would use.
inline bool sdcpp_py_cpu_attention_available() { return sdcpp_py_cpu_kernel(SDCPP_PY_CPU_ATTENTION) != nullptr; }

// q (d_head, L_q, heads, N), k and v (d_head, L_k, heads, N): f32 views in any layout where q's and k's
// channels are contiguous and v's channels or keys are (the core's (N, L, C) inputs, or its per-head
// copies). The node is (d_head, heads, L_q, N), contiguous: the (N, L_q, C) result. The sizes are those where
// the unfused products run on the packed kernel (it declines m < 16, n < 6, k < 8): only there are the sums
// the same.
inline ggml_tensor* sdcpp_py_cpu_attention(ggml_context* ctx, bool backend_is_cpu, ggml_tensor* q,
                                           ggml_tensor* k, ggml_tensor* v, ggml_tensor* mask, float scale) {
    if (!backend_is_cpu || mask != nullptr) return nullptr;
    const ggml_custom_op_t op = sdcpp_py_cpu_kernel(SDCPP_PY_CPU_ATTENTION);
    if (op == nullptr) return nullptr;
    for (const ggml_tensor* t : {q, k, v}) {
        if (t->type != GGML_TYPE_F32) return nullptr;
    }
    if (q->nb[0] != sizeof(float) || k->nb[0] != sizeof(float) ||
        (v->nb[0] != sizeof(float) && v->nb[1] != sizeof(float))) {
        return nullptr;
    }
    const int64_t d_head = q->ne[0], L_q = q->ne[1], L_k = k->ne[1];
    if (k->ne[0] != d_head || v->ne[0] != d_head || v->ne[1] != L_k) return nullptr;
    for (int dim = 2; dim < 4; ++dim) {
        if (k->ne[dim] != q->ne[dim] || v->ne[dim] != q->ne[dim]) return nullptr;
    }
    if (L_k < 16 || L_q < 6 || d_head < 16) return nullptr;
    uint32_t scale_bits;
    std::memcpy(&scale_bits, &scale, sizeof scale_bits);
    ggml_tensor* args[3] = {q, k, v};
    // The scale's bits, and above them (bit 32) the graph's precision: bf16 products (patch 0014).
    const uintptr_t bf16 = sdcpp_py_graph_bf16() != 0;
    return ggml_custom_4d(ctx, GGML_TYPE_F32, d_head, q->ne[2], L_q, q->ne[3], args, 3, op, GGML_N_TASKS_MAX,
                          reinterpret_cast<void*>(static_cast<uintptr_t>(scale_bits) | (bf16 << 32)));
}
