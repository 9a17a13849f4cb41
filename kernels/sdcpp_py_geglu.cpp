// sdcpp-py patch 0008: the compute side of the fused GEGLU (see sdcpp_py_geglu.h).
#include "sdcpp_py_geglu.h"

#include "ggml-cpu-impl.h"
#include "sdcpp_py_packed_gemm.h"
#include "vec.h"

#if defined(SDCPP_PY_CPU_KERNELS)

namespace {

// ggml_vec_gelu_f32 (GGML_GELU_FP16: 0 at or below -10, x at or above 10, else its f16 table at x rounded to
// f16 to nearest even, as _cvtss_sh(x, 0)), 8 values at a time: the same values. y may be x.
void gelu_row(int64_t n, float* y, const float* x) {
    const __m256 low = _mm256_set1_ps(-10.0f), high = _mm256_set1_ps(10.0f);
    const __m256i one = _mm256_set1_epi32(1), halfword = _mm256_set1_epi32(0xffff);
    const int* table = reinterpret_cast<const int*>(ggml_table_gelu_f16);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 v = _mm256_loadu_ps(x + i);
        const __m256i index = _mm256_cvtepu16_epi32(_mm256_cvtps_ph(v, 0));
        // 32-bit reads at even entries stay inside the table; an odd entry is the upper half of its pair's read.
        const __m256i pairs = _mm256_i32gather_epi32(table, _mm256_andnot_si256(one, index), 2);
        const __m256i entry = _mm256_and_si256(
            _mm256_srlv_epi32(pairs, _mm256_slli_epi32(_mm256_and_si256(index, one), 4)), halfword);
        const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(entry, entry), 0x08);
        __m256 g = _mm256_cvtph_ps(_mm256_castsi256_si128(packed));
        g = _mm256_blendv_ps(g, v, _mm256_cmp_ps(v, high, _CMP_GE_OQ));
        g = _mm256_blendv_ps(g, _mm256_setzero_ps(), _mm256_cmp_ps(v, low, _CMP_LE_OQ));
        _mm256_storeu_ps(y + i, g);
    }
    if (i < n) ggml_vec_gelu_f32(static_cast<int>(n - i), y + i, x + i);
}

}  // namespace

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
            gelu_row(width, out, in + width);
            for (int64_t i = 0; i < width; ++i) out[i] = in[i] * out[i];
            continue;
        }
        // The skipped ggml_add's sums first (f32, as it rounds them), then the GELU in place.
        for (int64_t i = 0; i < width; ++i) out[i] = in[width + i] + b[width + i];
        gelu_row(width, out, out);
        for (int64_t i = 0; i < width; ++i) out[i] = (in[i] + b[i]) * out[i];
    }
}

#endif
