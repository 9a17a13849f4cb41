// sdcpp-py patch 0007: the compute side of the fused CPU convolution (see sdcpp_py_conv.h).
//
// The packed kernel's A operand is im2col's matrix without the matrix: an A sliver is 16 consecutive output
// pixels, its step l one (input channel, kernel row, kernel column) in im2col's order, and its values the
// input pixels under that kernel tap, rounded to f16 as im2col rounds them. Where the 16 pixels lie in one
// output row and the stride is 1, that is two (masked at the image's edges) vector loads per step.
#include "sdcpp_py_conv.h"

#include "ggml-cpu-impl.h"
#include "sdcpp_py_packed_gemm.h"
#include "sdcpp_py_precision.h"

#if defined(SDCPP_PY_CPU_KERNELS)

namespace sdcpp_py_gemm {
namespace {

// Round to f16 and back: the value im2col stores and the product reads.
inline __m256 through_f16(__m256 v) { return _mm256_cvtph_ps(_mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT)); }
inline __m128 through_f16(__m128 v) { return _mm_cvtph_ps(_mm_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT)); }
inline float through_f16(float v) { return _cvtsh_ss(_cvtss_sh(v, _MM_FROUND_TO_NEAREST_INT)); }

// One image (IC, IH, IW) seen as im2col's (OH*OW) x (IC*KH*KW) matrix. With bf16 products the values go
// to the kernel as they are (it rounds them to bf16 itself), not through f16 first.
struct ImageColumns {
    const float* x;
    int64_t IW, IH, KW, KH, OW, s0, s1, p0, p1, d0, d1;
    bool f16_values;

    __m256 value(__m256 v) const { return f16_values ? through_f16(v) : v; }
    __m128 value(__m128 v) const { return f16_values ? through_f16(v) : v; }
    float value(float v) const { return f16_values ? through_f16(v) : v; }

    void pack(int64_t i0, int64_t rows, int64_t pc, int64_t kc, float* panel) const {
        const int64_t oh0 = i0 / OW, ow0 = i0 % OW;
        const bool one_row = rows == MR && ow0 + MR <= OW && s0 == 1;
        // Images 8 or 4 pixels wide at stride 1 (an SD1 UNet's 8x8 and 4x4 levels at 256x256): a sliver is
        // 16 / OW whole output rows, each step a masked run of OW input pixels per row.
        const bool whole_rows = !one_row && rows == MR && s0 == 1 && (OW == 8 || OW == 4) && ow0 == 0;
        // Elsewhere (a sliver crossing a row's end, strides, other narrow images) each step gathers its 16
        // pixels: their input positions at tap (0, 0), kept as vectors; a pixel past `rows` sits far outside
        // the image and reads as zero.
        __m256i y0[2] = {}, x0[2] = {};
        if (!one_row && !whole_rows) {
            alignas(32) int32_t ys[MR], xs[MR];
            for (int64_t r = 0; r < MR; ++r) {
                const int64_t i = i0 + r;
                ys[r] = r < rows ? static_cast<int32_t>(i / OW * s1 - p1) : -(1 << 30);
                xs[r] = r < rows ? static_cast<int32_t>(i % OW * s0 - p0) : -(1 << 30);
            }
            for (int half = 0; half < 2; ++half) {
                y0[half] = _mm256_load_si256(reinterpret_cast<const __m256i*>(ys + 8 * half));
                x0[half] = _mm256_load_si256(reinterpret_cast<const __m256i*>(xs + 8 * half));
            }
        }
        // Step pc as (channel, kernel row, kernel column), then counted up: no division per step.
        int64_t ic = pc / (KH * KW), kh = pc / KW % KH, kw = pc % KW;
        for (int64_t l = 0; l < kc; ++l, panel += MR) {
            if (one_row) {
                pack_run(ic, oh0 * s1 + kh * d1 - p1, ow0 + kw * d0 - p0, panel);
            } else if (whole_rows) {
                const int64_t ih = oh0 * s1 + kh * d1 - p1, iw = kw * d0 - p0;
                if (OW == 8) pack_rows<8>(ic, ih, iw, panel);
                else pack_rows<4>(ic, ih, iw, panel);
            } else {
                pack_gathered(ic, kh, kw, y0, x0, panel);
            }
            if (++kw == KW) {
                kw = 0;
                if (++kh == KH) {
                    kh = 0;
                    ++ic;
                }
            }
        }
    }

#if defined(SDCPP_PY_BF16_GEMM)
    void pack_pairs(int64_t i0, int64_t rows, int64_t pc, int64_t kc, uint32_t* panel) const {
        thread_local std::vector<float> values;
        scratch(values, MR * kc);
        pack(i0, rows, pc, kc, values.data());
        pair_steps_bf16(values.data(), kc, MR, panel);
    }
#endif

    // Tap (kh, kw) of channel ic for the 16 pixels whose tap-(0, 0) input positions are y0, x0.
    void pack_gathered(int64_t ic, int64_t kh, int64_t kw, const __m256i y0[2], const __m256i x0[2],
                       float* panel) const {
        const float* channel = x + ic * IH * IW;
        const __m256i dy = _mm256_set1_epi32(static_cast<int>(kh * d1)), dx = _mm256_set1_epi32(static_cast<int>(kw * d0));
        const __m256i height = _mm256_set1_epi32(static_cast<int>(IH)), width = _mm256_set1_epi32(static_cast<int>(IW));
        const __m256i minus_one = _mm256_set1_epi32(-1);
        for (int half = 0; half < 2; ++half) {
            const __m256i y = _mm256_add_epi32(y0[half], dy), xx = _mm256_add_epi32(x0[half], dx);
            const __m256i inside = _mm256_and_si256(
                _mm256_and_si256(_mm256_cmpgt_epi32(y, minus_one), _mm256_cmpgt_epi32(height, y)),
                _mm256_and_si256(_mm256_cmpgt_epi32(xx, minus_one), _mm256_cmpgt_epi32(width, xx)));
            const __m256i index = _mm256_add_epi32(_mm256_mullo_epi32(y, width), xx);
            // Lanes outside the image are not read (masked) and come back zero.
            const __m256 v = _mm256_mask_i32gather_ps(_mm256_setzero_ps(), channel, index,
                                                      _mm256_castsi256_ps(inside), 4);
            _mm256_storeu_ps(panel + 8 * half, value(v));
        }
    }

    // 16 / WIDTH output rows (OW = WIDTH: 8 or 4, stride 1) at one tap: from input row ih0 on (rows s1 apart), columns
    // iw..iw+OW-1 of each (zero outside the image), into panel[0..15]. Lanes outside a row are masked (never
    // read), not gathered.
    template <int64_t WIDTH>
    void pack_rows(int64_t ic, int64_t ih0, int64_t iw, float* panel) const {
        const float* channel = x + ic * IH * IW;
        const __m256i inside = columns_inside(iw);
        for (int64_t r = 0; r < MR / WIDTH; ++r, panel += WIDTH) {
            const int64_t ih = ih0 + r * s1;
            const bool row_inside = ih >= 0 && ih < IH;
            const float* start = reinterpret_cast<const float*>(
                reinterpret_cast<uintptr_t>(channel) + ((row_inside ? ih : 0) * IW + iw) * 4);
            if constexpr (WIDTH == 8) {
                _mm256_storeu_ps(panel, row_inside ? value(_mm256_maskload_ps(start, inside)) : _mm256_setzero_ps());
            } else {
                _mm_storeu_ps(panel, row_inside ? value(_mm_maskload_ps(start, _mm256_castsi256_si128(inside)))
                                                : _mm_setzero_ps());
            }
        }
    }

    // Input row ih of channel ic, columns iw..iw+15 (zero outside the image), into panel[0..15].
    void pack_run(int64_t ic, int64_t ih, int64_t iw, float* panel) const {
        if (ih < 0 || ih >= IH) {
            _mm256_storeu_ps(panel, _mm256_setzero_ps());
            _mm256_storeu_ps(panel + 8, _mm256_setzero_ps());
            return;
        }
        const float* row = x + (ic * IH + ih) * IW;
        // The next sliver's pixels of this row: each step reads another channel's plane (a 1x1 convolution's
        // A is the image's channels, planes apart), too far apart for the hardware's prefetch.
        _mm_prefetch(reinterpret_cast<const char*>(row + iw + 2 * MR - 1), _MM_HINT_T0);
        if (iw >= 0 && iw + MR <= IW) {
            _mm256_storeu_ps(panel, value(_mm256_loadu_ps(row + iw)));
            _mm256_storeu_ps(panel + 8, value(_mm256_loadu_ps(row + iw + 8)));
            return;
        }
        // At the image's edges: lanes outside the row are masked (never read) and come back zero.
        for (int half = 0; half < 2; ++half) {
            const int64_t start = iw + 8 * half;
            const float* base = reinterpret_cast<const float*>(reinterpret_cast<uintptr_t>(row) + start * 4);
            _mm256_storeu_ps(panel + 8 * half, value(_mm256_maskload_ps(base, columns_inside(start))));
        }
    }

    // Lanes of columns start..start+7 that lie in a row (0..IW-1): a mask for _mm256_maskload_ps.
    __m256i columns_inside(int64_t start) const {
        const __m256i column = _mm256_add_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
                                                _mm256_set1_epi32(static_cast<int>(start)));
        return _mm256_andnot_si256(_mm256_cmpgt_epi32(_mm256_setzero_si256(), column),
                                   _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(IW)), column));
    }
};

// A batch's images one after another as one A operand (rows n * pixels + i: image n's pixel i), so that the
// kernel's weights are packed once for all of them. pixels is a multiple of MR and a share starts at a
// whole sliver, so no sliver crosses an image; `first` is the share's first row.
struct StackedImages {
    ImageColumns image;  // image 0; image n starts image_size floats further on
    int64_t image_size, pixels, first;

    ImageColumns at(int64_t row) const {
        ImageColumns columns = image;
        columns.x += row / pixels * image_size;
        return columns;
    }
    void pack(int64_t i0, int64_t rows, int64_t pc, int64_t kc, float* panel) const {
        at(first + i0).pack((first + i0) % pixels, rows, pc, kc, panel);
    }
#if defined(SDCPP_PY_BF16_GEMM)
    void pack_pairs(int64_t i0, int64_t rows, int64_t pc, int64_t kc, uint32_t* panel) const {
        at(first + i0).pack_pairs((first + i0) % pixels, rows, pc, kc, panel);
    }
#endif
};

// Stacked images' products up to this many pixels per image: above it each image alone reuses the packed
// weights enough, and the stacked result's per-thread buffer would grow with the image.
constexpr int64_t STACKED_MAX_PIXELS = 1024;

// This thread's share of the N stacked images' products (rows n * pixels + i, columns the output channels)
// into a per-thread buffer, then into out's (N, OC, pixels) layout with the bias added as the unstacked
// path adds it.
template <typename TB>
void stacked_conv_share(int ith, int nth, const ImageColumns& image, int64_t N, int64_t pixels, int64_t OC,
                        int64_t depth, const TB* w, int64_t ldw, const float* bias,
                        const SdcppPyConvAddend& addend, float* out) {
    const Share share = share_of(ith, nth, N * pixels, OC);
    if (share.m0 >= share.m1) return;
    const int64_t rows = share.m1 - share.m0, cols = share.n1 - share.n0;
    const StackedImages A{image, image.IW * image.IH * (depth / (image.KW * image.KH)), pixels, share.m0};
    thread_local std::vector<float> result;
    scratch(result, rows * cols);
    const TB* weights = w + share.n0 * ldw;
#if defined(SDCPP_PY_BF16_GEMM)
    if (bf16_products) {
        gemm_block_bf16(0, rows, 0, cols, depth, A, weights, ldw, result.data(), rows);
    } else
#endif
    {
        gemm_block(0, rows, 0, cols, depth, A, weights, ldw, result.data(), rows);
    }
    for (int64_t j = 0; j < cols; ++j) {
        const float* column = result.data() + j * rows;
        for (int64_t i = share.m0; i < share.m1;) {
            const int64_t n = i / pixels, p = i % pixels, run = std::min(pixels - p, share.m1 - i);
            float* channel = out + (n * OC + share.n0 + j) * pixels + p;
            const float* values = column + (i - share.m0);
            if (bias == nullptr) {
                std::memcpy(channel, values, run * sizeof(float));
            } else {
                const float b = bias[share.n0 + j];
                for (int64_t r = 0; r < run; ++r) channel[r] = values[r] + b;
            }
            addend.add(n, share.n0 + j, channel - p, p, p + run);
            i += run;
        }
    }
    release_if_large(result);
}

}  // namespace
}  // namespace sdcpp_py_gemm

extern "C" void sdcpp_py_cpu_conv_2d_compute(struct ggml_tensor* dst, int ith, int nth, void* userdata) {
    using namespace sdcpp_py_gemm;
    const ggml_tensor *w = dst->src[0], *x = dst->src[1];
    uintptr_t params = reinterpret_cast<uintptr_t>(userdata);
    const bool bf16 = (params >> SDCPP_PY_CONV_BF16_BIT) & 1;
    sdcpp_py_gemm_set_bf16(bf16);
    int64_t unpacked[6];
    for (int i = 5; i >= 0; --i, params >>= 8) unpacked[i] = static_cast<int64_t>(params & 0xff);
    const int64_t s0 = unpacked[0], s1 = unpacked[1], p0 = unpacked[2], p1 = unpacked[3], d0 = unpacked[4],
                  d1 = unpacked[5];
    const SdcppPyConvKernel sizes = sdcpp_py_conv_kernel(w, x->ne[2]);
    const int64_t KW = sizes.side_w, KH = sizes.side_h, IC = sizes.in_channels, OC = sizes.out_channels;
    const int64_t IW = x->ne[0], IH = x->ne[1], N = x->ne[3];
    const int64_t OW = dst->ne[0], OH = dst->ne[1];
    const bool q8_kernel = w->type == GGML_TYPE_Q8_0;  // patch 0015's flattened kernel: rows of 32-value blocks
    const int64_t depth = IC * KH * KW;
    const float* bias = dst->src[2] != nullptr ? static_cast<const float*>(dst->src[2]->data) : nullptr;
    const SdcppPyConvAddend addend(dst);
    // Per image: C (OH*OW) x OC with column stride OH*OW is the image's (OC, OH, OW) output. The unfused
    // product takes all images as one matrix; per element the sums are the same.
    const int64_t pixels = OH * OW;
    if (N > 1 && pixels % MR == 0 && pixels <= STACKED_MAX_PIXELS) {
        const ImageColumns image{static_cast<const float*>(x->data), IW, IH, KW, KH, OW, s0, s1, p0, p1, d0, d1,
                                 !bf16_products && !q8_kernel};
        float* out = static_cast<float*>(dst->data);
        if (q8_kernel) {
            stacked_conv_share(ith, nth, image, N, pixels, OC, depth, static_cast<const Q8Block*>(w->data),
                               depth / Q8_VALUES, bias, addend, out);
        } else {
            stacked_conv_share(ith, nth, image, N, pixels, OC, depth, static_cast<const uint16_t*>(w->data), depth,
                               bias, addend, out);
        }
        return;
    }
    for (int64_t n = 0; n < N; ++n) {
        const ImageColumns image{static_cast<const float*>(x->data) + n * IC * IH * IW,
                                 IW, IH, KW, KH, OW, s0, s1, p0, p1, d0, d1, !bf16_products && !q8_kernel};
        float* out = static_cast<float*>(dst->data) + n * OC * pixels;
        const Share share =
            q8_kernel ? gemm_share(ith, nth, pixels, OC, depth, image, static_cast<const Q8Block*>(w->data),
                                   depth / Q8_VALUES, out, pixels)
                      : gemm_share(ith, nth, pixels, OC, depth, image, static_cast<const uint16_t*>(w->data), depth,
                                   out, pixels);
        // The graph's ggml_add of the bias, then patch 0019's addend, on this thread's finished share.
        for (int64_t j = share.n0; j < share.n1 && share.m0 < share.m1; ++j) {
            float* channel = out + j * pixels;
            if (bias != nullptr) {
                for (int64_t i = share.m0; i < share.m1; ++i) channel[i] += bias[j];
            }
            addend.add(n, j, channel, share.m0, share.m1);
        }
    }
}

#endif
