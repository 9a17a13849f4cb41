// sdcpp-py patch 0017: the graph side of fused group and layer norms for ggml's CPU backend.
//
// The core's GroupNorm and LayerNorm blocks are three nodes each: ggml_group_norm / ggml_norm, then
// ggml_mul by the weight and ggml_add of the bias, two more passes over the tensor (in an SD1 UNet: every
// ResBlock twice, every transformer block four times). sdcpp_py_cpu_group_norm() and
// sdcpp_py_cpu_layer_norm() return one custom node instead (sdcpp_py_norm.cpp, compiled into ggml-cpu) that
// does ggml's own arithmetic in ggml's order and applies the weight and bias while the values are in cache:
// bitwise the same. nullptr where they do not apply.
#pragma once

#include <cstdint>
#include <cstring>

#include "ggml.h"
#include "sdcpp_py_kernels.h"

#define SDCPP_PY_CPU_GROUP_NORM "sdcpp_py_cpu_group_norm"
#define SDCPP_PY_CPU_LAYER_NORM "sdcpp_py_cpu_layer_norm"

extern "C" {
// The custom ops (in ggml-cpu, found by the names above). userdata: the eps's bits, and for the group norm
// the number of groups in the upper 32 bits. dst = norm(src[0]) * src[1] + src[2]; the group norm's weight
// and bias run along src[0]'s ne[2] (channels), the layer norm's along its rows (ne[0]), and a layer norm
// without a bias has two sources.
void sdcpp_py_cpu_group_norm_compute(struct ggml_tensor* dst, int ith, int nth, void* userdata);
void sdcpp_py_cpu_layer_norm_compute(struct ggml_tensor* dst, int ith, int nth, void* userdata);
}

inline bool sdcpp_py_norm_vector(const ggml_tensor* v, int64_t length) {
    return v->type == GGML_TYPE_F32 && ggml_is_contiguous(v) && v->ne[0] == length && ggml_nelements(v) == length;
}

inline void* sdcpp_py_norm_params(float eps, uint32_t groups) {
    uint32_t eps_bits;
    std::memcpy(&eps_bits, &eps, sizeof eps_bits);
    // 64-bit only (the builders check): on a 32-bit target the groups are cut off.
    return reinterpret_cast<void*>(static_cast<uintptr_t>((static_cast<uint64_t>(groups) << 32) | eps_bits));
}

// ggml_ext_group_norm(x, w, b, groups) on an (W, H, C, N) x: ggml_group_norm(x, groups, eps), then the
// weight and bias per channel.
inline ggml_tensor* sdcpp_py_cpu_group_norm(ggml_context* ctx, bool backend_is_cpu, ggml_tensor* x, ggml_tensor* w,
                                            ggml_tensor* b, int groups, float eps) {
    if (!backend_is_cpu || w == nullptr || b == nullptr || groups < 1 || sizeof(uintptr_t) < 8) return nullptr;
    const ggml_custom_op_t op = sdcpp_py_cpu_kernel(SDCPP_PY_CPU_GROUP_NORM);
    if (op == nullptr) return nullptr;
    if (x->type != GGML_TYPE_F32 || !ggml_is_contiguous(x) || ggml_n_dims(x) < 3) return nullptr;
    if (!sdcpp_py_norm_vector(w, x->ne[2]) || !sdcpp_py_norm_vector(b, x->ne[2])) return nullptr;
    ggml_tensor* args[3] = {x, w, b};
    return ggml_custom_4d(ctx, GGML_TYPE_F32, x->ne[0], x->ne[1], x->ne[2], x->ne[3], args, 3, op,
                          GGML_N_TASKS_MAX, sdcpp_py_norm_params(eps, static_cast<uint32_t>(groups)));
}

// sdcpp-py patch 0019: ggml_silu_inplace(h) where h is a fused group norm's node just built for it (its only
// use, as in a ResBlock): the SiLU taken into that node (userdata bit 63), which then runs ggml's own vector
// SiLU on each row of W values as ggml's SiLU node would, while the rows are in cache. Bitwise the same, one
// pass over the tensor and one node fewer. Returns h, or nullptr where it does not apply.
constexpr int SDCPP_PY_NORM_SILU_BIT = 63;
inline ggml_tensor* sdcpp_py_cpu_group_norm_silu(ggml_tensor* h) {
    if (!sdcpp_py_cpu_epilogues()) return nullptr;
    SdcppPyCustomOp op = sdcpp_py_cpu_custom_op(h, SDCPP_PY_CPU_GROUP_NORM);
    if (op.fun == nullptr) return nullptr;
    uintptr_t params = reinterpret_cast<uintptr_t>(op.userdata);
    if ((params >> SDCPP_PY_NORM_SILU_BIT) & 1) return nullptr;  // already has one: a second SiLU stays a node
    op.userdata = reinterpret_cast<void*>(params | (uintptr_t{1} << SDCPP_PY_NORM_SILU_BIT));
    std::memcpy(h->op_params, &op, sizeof op);
    return h;
}

// The core's ggml_silu_inplace(h) after a group norm, as one node where the CPU backend can (patch 0019).
inline ggml_tensor* sdcpp_py_silu_after_group_norm(ggml_context* ctx, ggml_tensor* h) {
    ggml_tensor* fused = sdcpp_py_cpu_group_norm_silu(h);
    return fused != nullptr ? fused : ggml_silu_inplace(ctx, h);
}

// ggml_ext_layer_norm(x, w, b, eps) with a weight (b may be nullptr): ggml_norm of each row, then the weight
// (and bias) along it.
inline ggml_tensor* sdcpp_py_cpu_layer_norm(ggml_context* ctx, bool backend_is_cpu, ggml_tensor* x, ggml_tensor* w,
                                            ggml_tensor* b, float eps) {
    if (!backend_is_cpu || w == nullptr || sizeof(uintptr_t) < 8) return nullptr;
    const ggml_custom_op_t op = sdcpp_py_cpu_kernel(SDCPP_PY_CPU_LAYER_NORM);
    if (op == nullptr) return nullptr;
    if (x->type != GGML_TYPE_F32 || !ggml_is_contiguous(x)) return nullptr;
    if (!sdcpp_py_norm_vector(w, x->ne[0]) || (b != nullptr && !sdcpp_py_norm_vector(b, x->ne[0]))) return nullptr;
    ggml_tensor* args[3] = {x, w, b};
    return ggml_custom_4d(ctx, GGML_TYPE_F32, x->ne[0], x->ne[1], x->ne[2], x->ne[3], args, b != nullptr ? 3 : 2,
                          op, GGML_N_TASKS_MAX, sdcpp_py_norm_params(eps, 0));
}
