// sdcpp-py patch 0008: the compute side of the fused GEGLU (see sdcpp_py_geglu.h).
#include "sdcpp_py_geglu.h"

#include "ggml-cpu-impl.h"
#include "sdcpp_py_packed_gemm.h"
#include "vec.h"

#if defined(SDCPP_PY_CPU_KERNELS)

extern "C" void sdcpp_py_cpu_geglu_compute(struct ggml_tensor* dst, int ith, int nth, void*) {
    const ggml_tensor *x = dst->src[0], *bias = dst->src[1];
    const int64_t width = dst->ne[0], rows = ggml_nrows(dst);
    const int64_t r0 = rows * ith / nth, r1 = rows * (ith + 1) / nth;
    const float* b = bias != nullptr ? static_cast<const float*>(bias->data) : nullptr;
    for (int64_t r = r0; r < r1; ++r) {
        const float* in = static_cast<const float*>(x->data) + r * 2 * width;
        float* out = static_cast<float*>(dst->data) + r * width;
        if (b == nullptr) {
            // ggml_gelu of the gate (the graph's contiguous copy of it), then ggml_mul by x: the same values.
            ggml_vec_gelu_f32(static_cast<int>(width), out, in + width);
            for (int64_t i = 0; i < width; ++i) out[i] = in[i] * out[i];
            continue;
        }
        // The skipped ggml_add's sums first (f32, as it rounds them); ggml's GELU works element by element,
        // so in place.
        for (int64_t i = 0; i < width; ++i) out[i] = in[width + i] + b[width + i];
        ggml_vec_gelu_f32(static_cast<int>(width), out, out);
        for (int64_t i = 0; i < width; ++i) out[i] = (in[i] + b[i]) * out[i];
    }
}

#endif
