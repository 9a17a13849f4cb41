// sdcpp-py patch 0017: the compute side of the fused group and layer norms (see sdcpp_py_norm.h).
//
// Each value goes through ggml's steps with ggml's roundings: the sums in double in ggml's order, the
// centred value, the scale, then the weight's product and the bias's sum as the separate ggml_mul and
// ggml_add nodes round them (kept apart from a fused multiply-add).
#include "sdcpp_py_norm.h"

#include "ggml-cpu-impl.h"
#include "sdcpp_py_packed_gemm.h"
#include "vec.h"

#include <algorithm>
#include <cmath>

#if defined(SDCPP_PY_CPU_KERNELS)

namespace {

struct NormParams {
    float eps;
    int64_t groups;
    bool silu;  // patch 0019: the ResBlock's SiLU after it
};
NormParams norm_params(void* userdata) {
    const uint64_t bits = reinterpret_cast<uintptr_t>(userdata);
    const uint32_t eps_bits = static_cast<uint32_t>(bits & 0xffffffffu);
    NormParams params;
    std::memcpy(&params.eps, &eps_bits, sizeof params.eps);
    params.groups = static_cast<int64_t>((bits >> 32) & 0x7fffffffu);
    params.silu = (bits >> SDCPP_PY_NORM_SILU_BIT) & 1;
    return params;
}

// An empty asm on the product stops GCC and clang contracting it and the bias's sum into one FMA (other
// compilers do not contract by default).
template <typename V>
inline V rounded(V v) {
#if defined(__GNUC__)
    asm("" : "+x"(v));
#endif
    return v;
}

// y = (y * scale) * w + b over n values, w and b one value each (w_step/b_step 0) or one per value (1).
void scale_and_affine(float* y, int64_t n, float scale, const float* w, int64_t w_step, const float* b,
                      int64_t b_step) {
    const __m256 scale8 = _mm256_set1_ps(scale);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 weight = w_step != 0 ? _mm256_loadu_ps(w + i) : _mm256_set1_ps(*w);
        __m256 v = rounded(_mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(y + i), scale8), weight));
        if (b != nullptr) v = _mm256_add_ps(v, b_step != 0 ? _mm256_loadu_ps(b + i) : _mm256_set1_ps(*b));
        _mm256_storeu_ps(y + i, v);
    }
    for (; i < n; ++i) {
        float v = rounded((y[i] * scale) * w[i * w_step]);
        if (b != nullptr) v = v + b[i * b_step];
        y[i] = v;
    }
}

// The per-row double sums of 8 * GROUPS rows (width a multiple of 8) side by side, a row per double lane: each
// row's chain still adds its values in order from 0.0, so the sums are the scalar loop's; GROUPS independent
// chains per lane overlap their latency. The values of 8 rows are transposed 8 steps at a time. centre: as in
// group_sum. row_sums gets the rows' sums in row order.
template <int GROUPS>
void row_sums_side_by_side(const float* x, float* y, int64_t width, bool centre, float mean, double* row_sums) {
    __m256d low[GROUPS], high[GROUPS];  // rows 0-3 and 4-7 of each group of 8
    for (int g = 0; g < GROUPS; ++g) low[g] = high[g] = _mm256_setzero_pd();
    const __m256 vmean = _mm256_set1_ps(mean);
    for (int64_t i = 0; i < width; i += 8) {
        for (int g = 0; g < GROUPS; ++g) {
            __m256 v[8];
            for (int k = 0; k < 8; ++k) {
                const int64_t at = (g * 8 + k) * width + i;
                v[k] = _mm256_loadu_ps(x + at);
                if (centre) {
                    v[k] = _mm256_sub_ps(v[k], vmean);
                    _mm256_storeu_ps(y + at, v[k]);
                    v[k] = _mm256_mul_ps(v[k], v[k]);
                }
            }
            sdcpp_py_gemm::transpose8(v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]);  // v[t]: step i + t of each row
            for (int t = 0; t < 8; ++t) {
                low[g] = _mm256_add_pd(low[g], _mm256_cvtps_pd(_mm256_castps256_ps128(v[t])));
                high[g] = _mm256_add_pd(high[g], _mm256_cvtps_pd(_mm256_extractf128_ps(v[t], 1)));
            }
        }
    }
    for (int g = 0; g < GROUPS; ++g) {
        _mm256_storeu_pd(row_sums + 8 * g, low[g]);
        _mm256_storeu_pd(row_sums + 8 * g + 4, high[g]);
    }
}

// ggml_group_norm's per-row double sums (sumr, rows in order into the total): rows side by side where the
// width is a multiple of 8 (SD's planes of 8 to 64 pixels), else four rows at a time so that their independent
// chains overlap. centre: the second pass (y = x - mean, sums of y*y) instead of x's.
double group_sum(const float* x, float* y, int64_t rows, int64_t width, bool centre, float mean) {
    double total = 0.0;
    int64_t r = 0;
    if (width % 8 == 0) {
        double row_sums[32];
        for (; r + 32 <= rows; r += 32) {
            row_sums_side_by_side<4>(x + r * width, centre ? y + r * width : nullptr, width, centre, mean, row_sums);
            for (double row_sum : row_sums) total += row_sum;
        }
        for (; r + 8 <= rows; r += 8) {
            row_sums_side_by_side<1>(x + r * width, centre ? y + r * width : nullptr, width, centre, mean, row_sums);
            for (int k = 0; k < 8; ++k) total += row_sums[k];
        }
    }
    for (; r + 4 <= rows; r += 4) {
        double s[4] = {0.0, 0.0, 0.0, 0.0};
        for (int64_t i = 0; i < width; ++i) {
            for (int k = 0; k < 4; ++k) {
                const int64_t at = (r + k) * width + i;
                if (centre) {
                    const float v = x[at] - mean;
                    y[at] = v;
                    s[k] += static_cast<double>(v * v);
                } else {
                    s[k] += static_cast<double>(x[at]);
                }
            }
        }
        for (double row_sum : s) total += row_sum;
    }
    for (; r < rows; ++r) {
        double s = 0.0;
        for (int64_t i = 0; i < width; ++i) {
            const int64_t at = r * width + i;
            if (centre) {
                const float v = x[at] - mean;
                y[at] = v;
                s += static_cast<double>(v * v);
            } else {
                s += static_cast<double>(x[at]);
            }
        }
        total += s;
    }
    return total;
}

}  // namespace

// As ggml_compute_forward_group_norm_f32, a unit being one group of one image, then ggml_mul / ggml_add of the
// per-channel weight and bias.
extern "C" void sdcpp_py_cpu_group_norm_compute(struct ggml_tensor* dst, int ith, int nth, void* userdata) {
    const ggml_tensor *x = dst->src[0], *w = dst->src[1], *b = dst->src[2];
    const NormParams params = norm_params(userdata);
    const int64_t W = x->ne[0], H = x->ne[1], C = x->ne[2], N = x->ne[3];
    const int64_t per_group = (C + params.groups - 1) / params.groups;
    const int64_t units = N * params.groups, u0 = units * ith / nth, u1 = units * (ith + 1) / nth;
    const float *weight = static_cast<const float*>(w->data), *bias = static_cast<const float*>(b->data);
    for (int64_t u = u0; u < u1; ++u) {
        const int64_t n = u / params.groups, group = u % params.groups;
        const int64_t start = group * per_group, end = std::min(C, start + per_group);
        if (start >= end) continue;  // ggml's loop runs no channel for such a group either
        const int64_t step = end - start, plane = W * H;
        const float* in = static_cast<const float*>(x->data) + (n * C + start) * plane;
        float* out = static_cast<float*>(dst->data) + (n * C + start) * plane;
        const double sum = group_sum(in, nullptr, step * H, W, false, 0.0f);
        const float mean = sum / (W * H * step);
        const double sum2 = group_sum(in, out, step * H, W, true, mean);
        const float variance = sum2 / (W * H * step);
        const float scale = 1.0f / sqrtf(variance + params.eps);
        for (int64_t c = 0; c < step; ++c) {
            float* channel = out + c * plane;
            scale_and_affine(channel, plane, scale, weight + start + c, 0, bias + start + c, 0);
            if (!params.silu) continue;
            // As ggml's SiLU node: ggml_vec_silu_f32 row by row (its vector loop and scalar tail may round a
            // value differently, so the rows must be the same ones).
            for (int64_t row = 0; row < H; ++row) ggml_vec_silu_f32(static_cast<int>(W), channel + row * W, channel + row * W);
        }
    }
}

// As ggml_compute_forward_norm_f32 row by row, then ggml_mul / ggml_add of the weight and bias along the row.
extern "C" void sdcpp_py_cpu_layer_norm_compute(struct ggml_tensor* dst, int ith, int nth, void* userdata) {
    const ggml_tensor *x = dst->src[0], *w = dst->src[1], *b = dst->src[2];
    const float eps = norm_params(userdata).eps;
    const int64_t width = x->ne[0], rows = ggml_nrows(x);
    const int64_t r0 = rows * ith / nth, r1 = rows * (ith + 1) / nth;
    const float* weight = static_cast<const float*>(w->data);
    const float* bias = b != nullptr ? static_cast<const float*>(b->data) : nullptr;
    // ggml_vec_sum_f32's double chains (a latency of 3-4 cycles per value) for 32 or 8 rows side by side where
    // rows are a multiple of 8 wide: the same sums.
    double row_sums[32];
    int64_t block_start = r0, block_end = r0;  // rows whose sums row_sums holds
    for (int64_t r = r0; r < r1; ++r) {
        const float* in = static_cast<const float*>(x->data) + r * width;
        float* out = static_cast<float*>(dst->data) + r * width;
        if (r == block_end && width % 8 == 0 && r + 8 <= r1) {
            block_start = r;
            if (r + 32 <= r1) {
                row_sums_side_by_side<4>(in, nullptr, width, false, 0.0f, row_sums);
                block_end = r + 32;
            } else {
                row_sums_side_by_side<1>(in, nullptr, width, false, 0.0f, row_sums);
                block_end = r + 8;
            }
        }
        float sum = 0.0;
        if (r < block_end) sum = static_cast<float>(row_sums[r - block_start]);
        else ggml_vec_sum_f32(static_cast<int>(width), &sum, in);
        const float mean = sum / width;
        const float variance = ggml_vec_cvar_f32(static_cast<int>(width), out, in, mean);
        const float scale = 1.0f / sqrtf(variance + eps);
        scale_and_affine(out, width, scale, weight, 1, bias, 1);
    }
}

#endif
