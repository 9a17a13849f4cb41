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

#if defined(__AVX512F__)
// e^y, to ~2e-7 relative, 16 values at a time: 2^(y log2 e), the exponent kept within +-126 (no denormals, no
// infinities).
inline __m512 exp_512(__m512 y) {
    const __m512 t = _mm512_mul_ps(y, _mm512_set1_ps(1.44269504f));
    return sdcpp_py_gemm::exp2_512(_mm512_min_ps(_mm512_set1_ps(126.0f), _mm512_max_ps(_mm512_set1_ps(-126.0f), t)));
}

// The bf16 mode's GELU: ggml_gelu_f32's tanh form computed, not read from ggml's f16 table (which rounds x and
// the result to f16, ~1e-3): 0.5 x (1 + tanh(u)) = x / (1 + e^(-2u)), u = sqrt(2/pi) (x + 0.044715 x^3), to
// ~1e-6 relative (~5e-6 near the -10 cut-off, where the values are tiny), 16 values at a time (the table's gather, 8 at a time, was most of the node). 0 at or below
// -10 as the table's; y may be x.
void gelu_row_computed(int64_t n, float* y, const float* x) {
    const __m512 low = _mm512_set1_ps(-10.0f), one = _mm512_set1_ps(1.0f);
    const __m512 minus_2_sqrt_2_over_pi = _mm512_set1_ps(-2.0f * 0.7978845608f), coef = _mm512_set1_ps(0.044715f);
    int64_t i = 0;
    const auto gelu = [&](__m512 v) {
        const __m512 u2 = _mm512_mul_ps(_mm512_mul_ps(minus_2_sqrt_2_over_pi, v),
                                        _mm512_fmadd_ps(_mm512_mul_ps(coef, v), v, one));
        const __m512 g = _mm512_div_ps(v, _mm512_add_ps(one, exp_512(u2)));
        return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(v, low, _CMP_LE_OQ), g, _mm512_setzero_ps());
    };
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, gelu(_mm512_loadu_ps(x + i)));
    if (i < n) {
        const __mmask16 rest = static_cast<__mmask16>((1u << (n - i)) - 1);
        _mm512_mask_storeu_ps(y + i, rest, gelu(_mm512_maskz_loadu_ps(rest, x + i)));
    }
}
#endif

// The node's GELU: ggml's (its f16 table, bitwise) or, for a bf16 graph (userdata 1), computed.
using GeluRow = void (*)(int64_t, float*, const float*);
inline GeluRow gelu_of(void* userdata) {
#if defined(__AVX512F__)
    if ((reinterpret_cast<uintptr_t>(userdata) & 1) != 0 && sdcpp_py_gemm::wider_kernels_allowed()) {
        return gelu_row_computed;
    }
#else
    (void)userdata;
#endif
    return gelu_row;
}

}  // namespace

extern "C" void sdcpp_py_cpu_geglu_compute(struct ggml_tensor* dst, int ith, int nth, void* userdata) {
    const GeluRow gelu = gelu_of(userdata);
    const ggml_tensor *x = dst->src[0], *bias = dst->src[1];
    const int64_t width = dst->ne[0], rows = ggml_nrows(dst);
    const int64_t r0 = rows * ith / nth, r1 = rows * (ith + 1) / nth;
    const float* b = bias != nullptr ? static_cast<const float*>(bias->data) : nullptr;
    for (int64_t r = r0; r < r1; ++r) {
        const float* in = static_cast<const float*>(x->data) + r * 2 * width;
        float* out = static_cast<float*>(dst->data) + r * width;
        if (b == nullptr) {
            // ggml_gelu of the gate (the graph's contiguous copy of it), then ggml_mul by x: the same values.
            gelu(width, out, in + width);
            for (int64_t i = 0; i < width; ++i) out[i] = in[i] * out[i];
            continue;
        }
        // The skipped ggml_add's sums first (f32, as it rounds them), then the GELU in place.
        for (int64_t i = 0; i < width; ++i) out[i] = in[width + i] + b[width + i];
        gelu(width, out, out);
        for (int64_t i = 0; i < width; ++i) out[i] = (in[i] + b[i]) * out[i];
    }
}

#endif
