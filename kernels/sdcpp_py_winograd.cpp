// sdcpp-py (issue 20): 3x3 stride-1 convolutions on the CPU as Winograd F(2x2, 3x3) or F(4x4, 3x3), the
// graph side in sdcpp_py_conv.h (which picks one; the transformed image's 16 or 36 positions say which).
//
// F(4x4, 3x3) (Lavin's points 0, +-1, +-2): 6x6 patches, 36 products per tile of 16 pixels (F(2x2): 64),
// kernel factors 1/4, 1/6, 1/12, 1/24 (rounded, unlike F(2x2)'s halves), so sums differ a little more from
// the direct convolution's. The rest of this comment describes F(2x2); F(4x4) runs the same way.
//
// Each 2x2 block of output pixels (a tile) is computed from its 4x4 input patch d and the 3x3 kernel g as
// Y = A' [(G g G') . (B' d B)] A: 16 products per tile and channel pair instead of 36, so 2.25x fewer
// multiplies. Per position xi of the 4x4 transformed tile it is one matrix product,
// M_xi (tiles x OC) = V_xi (tiles x IC) U_xi (IC x OC), run on the packed kernel (f32 or bf16 products).
// Two nodes: the input transform V of the whole image (shared by every output channel: a node of its own so
// that each thread transforms only its part), then rounds of output channels, each taken by whichever thread
// is free: their kernels transformed (U), the 16 products and the output transform, with the bias added.
// Sums differ from the direct convolution's in rounding only (f32 throughout; the kernel's 1/2 factors and
// the transforms' additions are exact up to one f32 rounding each).
#include "ggml-cpu-impl.h"
#include "sdcpp_py_conv.h"
#include "sdcpp_py_claims.h"
#include "sdcpp_py_packed_gemm.h"

#if defined(SDCPP_PY_CPU_KERNELS)

#include <algorithm>
#include <cstring>
#include <vector>

namespace sdcpp_py_gemm {
namespace {

constexpr int64_t POSITIONS = 16;          // a transformed F(2x2) tile: 4x4
constexpr int64_t POSITIONS_4X4 = 36;      // F(4x4): 6x6
inline int64_t tile_side(int64_t positions) { return positions == POSITIONS_4X4 ? 4 : 2; }

// Stride (1), padding and dilation (1) from the node's userdata (sdcpp_py_conv_2d_params' packing).
struct Padding {
    int64_t left, top;
};
Padding padding_of(uintptr_t params) {
    return {static_cast<int64_t>((params >> 24) & 0xff), static_cast<int64_t>((params >> 16) & 0xff)};
}

// The transformed images: per position xi, each image's tiles in slivers of MR (the packed kernel's A
// slivers), each sliver step by step: v[(((xi * N + n) * slivers + s) * steps + step) * MR + r] for tile
// s * MR + r of image n, a step being a channel (f32) or a pair of channels (bf16 products). A sliver's steps
// are then contiguous, as a packed A panel is, and a position's slivers of all images are one A operand: a
// batch's images share each product (weights packed once).
inline int64_t sliver_count(int64_t tiles) { return (tiles + MR - 1) / MR; }

// Position xi's block of that as the f32 product's A operand.
struct TileSlivers {
    const float* v;
    int64_t IC;
};

// The f32 product for one position: C (tiles x cols, column-major) = A x B', A's slivers multiplied where the
// input node wrote them (no packing), B (cols rows of IC) read in place (a last short sliver packed).
void position_product(const TileSlivers& a, int64_t tiles, int64_t cols, const float* b, float* c,
                      LinePrefetch* next_kernels) {
    thread_local std::vector<float> b_panels;
    const int64_t IC = a.IC, n_slivers = (cols + NR - 1) / NR;
    // B is read in place: its rows (an output channel's IC steps, contiguous) are already what the register
    // tile broadcasts from, 6 rows of one KC block staying in L1; only a last short sliver is packed.
    constexpr bool b_rows = true;
    for (int64_t pc = 0; pc < IC; pc += KC) {
        const int64_t kc = std::min(KC, IC - pc);
        scratch(b_panels, n_slivers * NR * kc + PANEL_SLACK);
        for (int64_t s = 0; s < n_slivers; ++s) {
            const int64_t sliver_cols = std::min(NR, cols - s * NR);
            if (!b_rows || sliver_cols < NR) pack_cols_of_b(b, IC, s * NR, sliver_cols, pc, kc, b_panels.data() + s * NR * kc);
        }
        for (int64_t i = 0; i < tiles; i += MC) {  // MC rows of A (L2) against all of this block of B
            tile_block(std::min(MC, tiles - i), cols, kc, a.v + (i / MR * IC + pc) * MR, b_panels.data(),
                       b_rows ? b + pc : nullptr, IC, c + i, tiles, pc > 0, IC * MR, nullptr, next_kernels);
        }
    }
}

#if defined(SDCPP_PY_BF16_GEMM)
// The bf16 product for one position: C (rows x cols, column-major) = A x B', both operands paired where
// they were written: A, the input node's slivers of channel pairs (pairs[(s * IC2 + q) * MR + r] for sliver
// s, channel pair q: the layout of the product's packed A slivers, so read in place), B the kernels'
// transform paired as pair_cols_of_b pairs it (PairedKernels). The sums of gemm_block_bf16's blocks, in its
// order: bitwise its result.
// next_kernels: the next channels' kernels, prefetched during the first tiles (its quota is this call's share).
void position_product_bf16(const uint32_t* a, int64_t IC, int64_t rows, int64_t cols, const uint32_t* b,
                           int64_t padded_cols, float* c, LinePrefetch* next_kernels) {
    const int64_t IC2 = (IC + 1) / 2;
    for (int64_t pc = 0; pc < IC; pc += KC_BF16) {
        const int64_t kc2 = (std::min(KC_BF16, IC - pc) + 1) / 2;
        for (int64_t i = 0; i < rows; i += MC) {
            tile_block_bf16(std::min(MC, rows - i), cols, kc2, a + (i / MR * IC2 + pc / 2) * MR,
                            b + padded_cols * (pc / 2), c + i, rows, pc > 0, IC2 * MR, nullptr, next_kernels);
        }
    }
}
#endif

// The kernel of output channel oc as f32 values in (ic, kh, kw) order: an f16 (3, 3, IC, OC) tensor or
// patch 0015's flattened q8_0 (9*IC, OC) matrix, whose rows hold the same values in the same order.
void kernel_values(const ggml_tensor* w, int64_t oc, int64_t depth, float* out) {
    if (w->type == GGML_TYPE_Q8_0) {
        GGML_ASSERT(depth % Q8_VALUES == 0);  // patch 0015 flattens only kernels whose rows fill whole blocks
        dequantize_q8(static_cast<const Q8Block*>(w->data) + oc * (depth / Q8_VALUES), 0, depth, out);
        return;
    }
    const uint16_t* row = static_cast<const uint16_t*>(w->data) + oc * depth;
    int64_t i = 0;
    for (; i + 8 <= depth; i += 8) _mm256_storeu_ps(out + i, load8(row + i));
    for (; i < depth; ++i) out[i] = load1(row + i);
}

// U = G g G' of the 9 taps g (rows of 3) of input channels: 16 outputs, each a vector of lanes.
template <typename V, typename Add, typename Sub, typename Half>
inline void kernel_transform(const V g[9], V out[16], Add add, Sub sub, Half half) {
    V gg[4][3];  // G g: the kernel's rows combined
    for (int j = 0; j < 3; ++j) {
        gg[0][j] = g[j];
        gg[1][j] = half(add(add(g[j], g[3 + j]), g[6 + j]));
        gg[2][j] = half(add(sub(g[j], g[3 + j]), g[6 + j]));
        gg[3][j] = g[6 + j];
    }
    for (int i = 0; i < 4; ++i) {  // (G g) G': its columns combined the same way
        out[4 * i + 0] = gg[i][0];
        out[4 * i + 1] = half(add(add(gg[i][0], gg[i][1]), gg[i][2]));
        out[4 * i + 2] = half(add(sub(gg[i][0], gg[i][1]), gg[i][2]));
        out[4 * i + 3] = gg[i][2];
    }
}

// F(4x4, 3x3)'s three transforms on 6 (or 3) values of a row or column; V a vector of lanes.
// B' d: d0..d5 -> t0..t5.
inline void input_rows_4x4(const __m256 d[6], __m256 t[6]) {
    const __m256 two = _mm256_set1_ps(2.0f), four = _mm256_set1_ps(4.0f), five = _mm256_set1_ps(5.0f);
    t[0] = _mm256_add_ps(_mm256_fnmadd_ps(five, d[2], _mm256_mul_ps(four, d[0])), d[4]);
    t[1] = _mm256_fnmadd_ps(four, _mm256_add_ps(d[1], d[2]), _mm256_add_ps(d[3], d[4]));
    t[2] = _mm256_fmadd_ps(four, _mm256_sub_ps(d[1], d[2]), _mm256_sub_ps(d[4], d[3]));
    t[3] = _mm256_fmadd_ps(two, _mm256_sub_ps(d[3], d[1]), _mm256_sub_ps(d[4], d[2]));
    t[4] = _mm256_fnmadd_ps(two, _mm256_sub_ps(d[3], d[1]), _mm256_sub_ps(d[4], d[2]));
    t[5] = _mm256_add_ps(_mm256_fnmadd_ps(five, d[3], _mm256_mul_ps(four, d[1])), d[5]);
}

// G g: 3 taps -> 6.
template <typename V, typename Add, typename Sub, typename Mul>
inline void kernel_rows_4x4(const V g[3], V out[6], Add add, Sub sub, Mul mul) {
    const V outer = add(g[0], g[2]);
    out[0] = mul(g[0], 0.25f);
    out[1] = mul(add(outer, g[1]), -1.0f / 6);
    out[2] = mul(sub(outer, g[1]), -1.0f / 6);
    const V even = add(mul(g[0], 1.0f / 24), mul(g[2], 1.0f / 6)), odd = mul(g[1], 1.0f / 12);
    out[3] = add(even, odd);
    out[4] = sub(even, odd);
    out[5] = g[2];
}

// U = G g G' for F(4x4): the 9 taps (rows of 3) -> 36 values (rows of 6).
template <typename V, typename Add, typename Sub, typename Mul>
inline void kernel_transform_4x4(const V g[9], V out[36], Add add, Sub sub, Mul mul) {
    V gg[6][3];  // G g: the kernel's rows combined, per column
    for (int j = 0; j < 3; ++j) {
        const V column[3] = {g[j], g[3 + j], g[6 + j]};
        V rows[6];
        kernel_rows_4x4(column, rows, add, sub, mul);
        for (int i = 0; i < 6; ++i) gg[i][j] = rows[i];
    }
    for (int i = 0; i < 6; ++i) kernel_rows_4x4(gg[i], out + 6 * i, add, sub, mul);  // (G g) G'
}

// A' m: 6 -> 4.
template <typename V, typename Add, typename Sub, typename Mul>
inline void output_rows_4x4(const V m[6], V y[4], Add add, Sub sub, Mul mul) {
    const V sum12 = add(m[1], m[2]), diff12 = sub(m[1], m[2]), sum34 = add(m[3], m[4]), diff34 = sub(m[3], m[4]);
    y[0] = add(add(m[0], sum12), sum34);
    y[1] = add(diff12, mul(diff34, 2.0f));
    y[2] = add(sum12, mul(sum34, 4.0f));
    y[3] = add(add(diff12, mul(diff34, 8.0f)), m[5]);
}

// Y = A' M A for F(4x4): 36 products -> 4x4 pixels.
template <typename V, typename Add, typename Sub, typename Mul>
inline void output_transform_4x4(const V m[36], V y[4][4], Add add, Sub sub, Mul mul) {
    V s[4][6];  // A' M: rows combined, per column
    for (int j = 0; j < 6; ++j) {
        const V column[6] = {m[j], m[6 + j], m[12 + j], m[18 + j], m[24 + j], m[30 + j]};
        V rows[4];
        output_rows_4x4(column, rows, add, sub, mul);
        for (int i = 0; i < 4; ++i) s[i][j] = rows[i];
    }
    for (int i = 0; i < 4; ++i) output_rows_4x4(s[i], y[i], add, sub, mul);  // (A' M) A
}

#if defined(SDCPP_PY_BF16_GEMM)
// U for bf16 products, paired once as it is transformed (not per product from an f32 copy): per position, per
// KC_BF16 block of input channels, a run of pairs per output channel (pair_cols_of_b's panel: columns
// `padded_cols` apart from cols up to whole slivers, the extra ones zero), rounded as pair_cols_of_b rounds:
// pairs[xi * padded_cols * IC2 + padded_cols * (pc / 2) + c * kc2 + q] for block pc of kc2 pairs.
struct PairedKernels {
    uint32_t* pairs;
    int64_t IC, padded_cols;
    int64_t position_stride() const { return padded_cols * ((IC + 1) / 2); }
    uint32_t* position(int64_t xi) const { return pairs + xi * position_stride(); }
    // Where channel ic (even) of column c goes in position xi's block: its pair's dword.
    uint32_t* pair_of(int64_t xi, int64_t c, int64_t ic) const {
        const int64_t pc = ic / KC_BF16 * KC_BF16, kc2 = (std::min(KC_BF16, IC - pc) + 1) / 2;
        return position(xi) + padded_cols * (pc / 2) + c * kc2 + (ic - pc) / 2;
    }
};
#endif

// U for output channels c0..c0+cols, all input channels: u[(xi * cols + c) * IC + ic], the f32 product's B
// operand per position (rows of IC steps), or for bf16 products paired (u_pairs.pairs set, u null); P = 16
// (F(2x2)) or 36 (F(4x4)) positions. Input channels 16 at a time on AVX-512, then 8, then one: their taps
// gathered 9 apart (picked by word permutes from an f16 row on AVX-512).
template <int P>
void transform_kernels(const ggml_tensor* w, int64_t c0, int64_t cols, int64_t IC, float* u
#if defined(SDCPP_PY_BF16_GEMM)
                       , const PairedKernels& u_pairs = {nullptr, 0, 0}
#endif
) {
    thread_local std::vector<float> values;
    scratch(values, 9 * IC);
    const auto add = [](auto a, auto b) { return a + b; };
    const auto sub = [](auto a, auto b) { return a - b; };
    const auto half = [](auto a) { return a * 0.5f; };
    const auto mul = [](float a, float b) { return a * b; };
    const auto add8 = [](__m256 a, __m256 b) { return _mm256_add_ps(a, b); };
    const auto sub8 = [](__m256 a, __m256 b) { return _mm256_sub_ps(a, b); };
    const auto half8 = [](__m256 a) { return _mm256_mul_ps(a, _mm256_set1_ps(0.5f)); };
    const auto mul8 = [](__m256 a, float b) { return _mm256_mul_ps(a, _mm256_set1_ps(b)); };
    const __m256i taps_apart = _mm256_setr_epi32(0, 9, 18, 27, 36, 45, 54, 63);
#if defined(__AVX512BW__)
    // f16 kernels on AVX-512: a tap of 8 channels picked from the f16 row by one word permute (its 8 values lie
    // within 64 words) and converted, instead of the whole row converted first and gathered from 9 apart
    // (9 gathers per 8 channels were most of the transform). The same values, exactly.
    const bool f16_rows = w->type == GGML_TYPE_F16 && wider_kernels_allowed();
    alignas(64) static constexpr uint16_t word_index[32] = {0, 9, 18, 27, 36, 45, 54, 63};
    const __m512i words_apart = _mm512_load_si512(word_index);
    const __m512i taps_apart_16 =
        _mm512_setr_epi32(0, 9, 18, 27, 36, 45, 54, 63, 72, 81, 90, 99, 108, 117, 126, 135);
#endif
    for (int64_t c = 0; c < cols; ++c) {
#if defined(__AVX512BW__)
        const uint16_t* f16_row = static_cast<const uint16_t*>(w->data) + (c0 + c) * 9 * IC;
        if (!f16_rows)
#endif
            kernel_values(w, c0 + c, 9 * IC, values.data());
        float* out = u != nullptr ? u + c * IC : nullptr;  // f32 output (u_pairs unset)
        const int64_t position_stride = cols * IC;
#if defined(SDCPP_PY_BF16_GEMM)
        const int64_t pair_position_stride = u_pairs.position_stride();
#endif
        int64_t ic = 0;
#if defined(__AVX512BW__)
        if (f16_rows) {  // the scalar tail below reads values[]: convert the channels past the last 8 only
            const int64_t whole = IC / 8 * 8;
            for (int64_t i = 9 * whole; i < 9 * IC; ++i) values[i] = _cvtsh_ss(f16_row[i]);
        }
#endif
#if defined(__AVX512BW__)
        // 16 channels at a time: f16 taps in two runs of 8 picked as above, q8_0 ones gathered from the
        // dequantized row 16 at once; the transform in zmm registers (the same operations lane for lane: the
        // same values) and whole-line stores (with 8: half-line stores and a spilled transform).
#if defined(SDCPP_PY_BF16_GEMM)
        static_assert(KC_BF16 % 16 == 0, "a group of 16 channels lies within one bf16 block");
#endif
        if (wider_kernels_allowed()) {
            const auto add16 = [](__m512 a, __m512 b) { return _mm512_add_ps(a, b); };
            const auto sub16 = [](__m512 a, __m512 b) { return _mm512_sub_ps(a, b); };
            const auto half16 = [](__m512 a) { return _mm512_mul_ps(a, _mm512_set1_ps(0.5f)); };
            const auto mul16 = [](__m512 a, float b) { return _mm512_mul_ps(a, _mm512_set1_ps(b)); };
            for (; ic + 16 <= IC; ic += 16) {
                __m512 g[9], t[P];
                for (int k = 0; k < 9; ++k) {  // taps 9 ic + k .. 9 ic + k + 135: within the row (< 9 * 16)
                    if (!f16_rows) {
                        g[k] = _mm512_i32gather_ps(taps_apart_16, values.data() + ic * 9 + k, 4);
                        continue;
                    }
                    const uint16_t* first = f16_row + ic * 9 + k;
                    const __m512i low = _mm512_permutex2var_epi16(_mm512_loadu_si512(first), words_apart,
                                                                  _mm512_loadu_si512(first + 32));
                    const __m512i high = _mm512_permutex2var_epi16(_mm512_loadu_si512(first + 72), words_apart,
                                                                   _mm512_loadu_si512(first + 104));
                    g[k] = _mm512_cvtph_ps(
                        _mm256_inserti128_si256(_mm512_castsi512_si256(low), _mm512_castsi512_si128(high), 1));
                }
                if constexpr (P == POSITIONS) kernel_transform(g, t, add16, sub16, half16);
                else kernel_transform_4x4(g, t, add16, sub16, mul16);
#if defined(SDCPP_PY_BF16_GEMM)
                if (u_pairs.pairs != nullptr) {  // 16 channels: 8 pairs, within one KC_BF16 block
                    uint32_t* first = u_pairs.pair_of(0, c, ic);
                    for (int xi = 0; xi < P; ++xi, first += pair_position_stride) {
                        _mm256_storeu_si256(reinterpret_cast<__m256i*>(first),
                                            reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(t[xi])));
                    }
                    continue;
                }
#endif
                for (int xi = 0; xi < P; ++xi) _mm512_storeu_ps(out + xi * position_stride + ic, t[xi]);
            }
        }
#endif
        for (; ic + 8 <= IC; ic += 8) {
            __m256 g[9], t[P];
#if defined(__AVX512BW__)
            if (f16_rows) {  // words 9 ic + k .. 9 ic + k + 63: within the row (k + 63 < 72 = 9 * 8)
                for (int k = 0; k < 9; ++k) {
                    const uint16_t* first = f16_row + ic * 9 + k;
                    const __m512i taps = _mm512_permutex2var_epi16(_mm512_loadu_si512(first), words_apart,
                                                                   _mm512_loadu_si512(first + 32));
                    g[k] = _mm256_cvtph_ps(_mm512_castsi512_si128(taps));
                }
            } else
#endif
            for (int k = 0; k < 9; ++k) g[k] = _mm256_i32gather_ps(values.data() + ic * 9 + k, taps_apart, 4);
            if constexpr (P == POSITIONS) kernel_transform(g, t, add8, sub8, half8);
            else kernel_transform_4x4(g, t, add8, sub8, mul8);
#if defined(SDCPP_PY_BF16_GEMM)
            if (u_pairs.pairs != nullptr) {  // 8 channels: 4 pairs (KC_BF16 blocks hold whole groups of 8)
                // One address per 8 channels: the positions lie a fixed stride apart (pair_of per position
                // was most of the transform's instructions).
                uint32_t* first = u_pairs.pair_of(0, c, ic);
                for (int xi = 0; xi < P; ++xi, first += pair_position_stride) {
                    _mm_storeu_si128(reinterpret_cast<__m128i*>(first),
                                     reinterpret_cast<__m128i>(_mm256_cvtneps_pbh(t[xi])));
                }
                continue;
            }
#endif
            for (int xi = 0; xi < P; ++xi) _mm256_storeu_ps(out + xi * position_stride + ic, t[xi]);
        }
        for (; ic < IC; ++ic) {
            float g[9], t[P];
            for (int k = 0; k < 9; ++k) g[k] = values[ic * 9 + k];
            if constexpr (P == POSITIONS) kernel_transform(g, t, add, sub, half);
            else kernel_transform_4x4(g, t, add, sub, mul);
#if defined(SDCPP_PY_BF16_GEMM)
            if (u_pairs.pairs != nullptr) {  // one half of a pair; an odd last channel's partner is zero
                for (int xi = 0; xi < P; ++xi) {
                    const __m128bh rounded = _mm_cvtneps_pbh(_mm_set_ss(t[xi]));  // as row_pairs rounds
                    const uint32_t half =
                        static_cast<uint16_t>(_mm_extract_epi16(reinterpret_cast<__m128i>(rounded), 0));
                    uint32_t* pair = u_pairs.pair_of(xi, c, ic & ~int64_t{1});
                    *pair = ic % 2 == 0 ? half : (*pair & 0xffffu) | (half << 16);
                }
                continue;
            }
#endif
            for (int xi = 0; xi < P; ++xi) out[xi * position_stride + ic] = t[xi];
        }
    }
#if defined(SDCPP_PY_BF16_GEMM)
    if (u_pairs.pairs != nullptr && cols < u_pairs.padded_cols) {  // a last short sliver's missing columns
        for (int xi = 0; xi < P; ++xi) {
            for (int64_t pc = 0; pc < IC; pc += KC_BF16) {
                const int64_t kc2 = (std::min(KC_BF16, IC - pc) + 1) / 2;
                uint32_t* block = u_pairs.position(xi) + u_pairs.padded_cols * (pc / 2);
                std::fill(block + cols * kc2, block + u_pairs.padded_cols * kc2, 0u);
            }
        }
    }
#endif
}

// Y = A' M A: a tile's 2x2 output pixels from its 16 products; lanes of V are tiles.
template <typename V, typename Add, typename Sub>
inline void output_transform(const V m[16], V y[2][2], Add add, Sub sub) {
    V s[2][4];  // A' M: rows combined
    for (int j = 0; j < 4; ++j) {
        s[0][j] = add(add(m[j], m[4 + j]), m[8 + j]);
        s[1][j] = sub(sub(m[4 + j], m[8 + j]), m[12 + j]);
    }
    for (int i = 0; i < 2; ++i) {  // (A' M) A: columns combined
        y[i][0] = add(add(s[i][0], s[i][1]), s[i][2]);
        y[i][1] = sub(sub(s[i][1], s[i][2]), s[i][3]);
    }
}

// One output row of 8 side x side tiles, c[j] their column j (lanes: tiles): 8 * side pixels stored in order.
inline void store_tile_row(float* row, const __m256* c, int side) {
    if (side == 2) {  // the two columns interleaved
        const __m256 lo = _mm256_unpacklo_ps(c[0], c[1]), hi = _mm256_unpackhi_ps(c[0], c[1]);
        _mm256_storeu_ps(row, _mm256_insertf128_ps(lo, _mm256_castps256_ps128(hi), 1));
        _mm256_storeu_ps(row + 8, _mm256_insertf128_ps(hi, _mm256_extractf128_ps(lo, 1), 0));
        return;
    }
    // 4x8 lanes transposed: tiles 0 and 4, 1 and 5, ... in the halves of t04, t15, ...
    const __m256 a = _mm256_unpacklo_ps(c[0], c[1]), b = _mm256_unpackhi_ps(c[0], c[1]);
    const __m256 e = _mm256_unpacklo_ps(c[2], c[3]), f = _mm256_unpackhi_ps(c[2], c[3]);
    const __m256 t04 = _mm256_shuffle_ps(a, e, 0x44), t15 = _mm256_shuffle_ps(a, e, 0xee);
    const __m256 t26 = _mm256_shuffle_ps(b, f, 0x44), t37 = _mm256_shuffle_ps(b, f, 0xee);
    _mm256_storeu_ps(row, _mm256_permute2f128_ps(t04, t15, 0x20));
    _mm256_storeu_ps(row + 8, _mm256_permute2f128_ps(t26, t37, 0x20));
    _mm256_storeu_ps(row + 16, _mm256_permute2f128_ps(t04, t15, 0x31));
    _mm256_storeu_ps(row + 24, _mm256_permute2f128_ps(t26, t37, 0x31));
}

// Tiles t0..t1 of one output channel (OH x OW, plus its bias) from their P = (SIDE + 2)^2 products
// mm[xi * position_stride + tile - t0]; the pixels of a last part tile past an edge are dropped.
// value / plane: patch 0019's addend for this channel (one value, or a plane like out), else nullptr.
template <int SIDE>
void write_channel(const float* mm, int64_t position_stride, int64_t t0, int64_t t1, int64_t tiles_w, int64_t OW,
                   int64_t OH, float bias, const float* value, const float* plane, float* out) {
    constexpr int P = (SIDE + 2) * (SIDE + 2);
    const auto add = [](auto a, auto b) { return a + b; };
    const auto sub = [](auto a, auto b) { return a - b; };
    const auto mul = [](float a, float b) { return a * b; };
    const auto add8 = [](__m256 a, __m256 b) { return _mm256_add_ps(a, b); };
    const auto sub8 = [](__m256 a, __m256 b) { return _mm256_sub_ps(a, b); };
    const auto mul8 = [](__m256 a, float b) { return _mm256_mul_ps(a, _mm256_set1_ps(b)); };
    const auto transform = [&](const auto* m, auto y[SIDE][SIDE], auto add_op, auto sub_op, auto mul_op) {
        if constexpr (SIDE == 2) output_transform(m, y, add_op, sub_op);
        else output_transform_4x4(m, y, add_op, sub_op, mul_op);
    };
    const __m256 bias8 = _mm256_set1_ps(bias);
    for (int64_t ty = t0 / tiles_w; ty * tiles_w < t1; ++ty) {
        const int64_t oy = SIDE * ty, row_start = ty * tiles_w;
        int64_t tx = std::max<int64_t>(0, t0 - row_start);
        const int64_t end = std::min(tiles_w, t1 - row_start);
        const float* row_products = mm + row_start - t0;
#if defined(__AVX512F__)
        // F(2x2): 16 tiles at a time in zmm registers where their 32 pixels of a row are all in the image, the
        // 8-tile code's arithmetic lane for lane.
        if constexpr (SIDE == 2) {
            if (wider_kernels_allowed()) {
                const auto add16 = [](__m512 a, __m512 b) { return _mm512_add_ps(a, b); };
                const auto sub16 = [](__m512 a, __m512 b) { return _mm512_sub_ps(a, b); };
                const __m512 bias16 = _mm512_set1_ps(bias);
                const __m512i first_half = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
                const __m512i second_half = _mm512_add_epi32(first_half, _mm512_set1_epi32(8));
                for (; tx + 16 <= end && SIDE * (tx + 16) <= OW; tx += 16) {
                    __m512 m[P], y[SIDE][SIDE];
                    for (int xi = 0; xi < P; ++xi) m[xi] = _mm512_loadu_ps(row_products + xi * position_stride + tx);
                    output_transform(m, y, add16, sub16);
                    for (int i = 0; i < SIDE && oy + i < OH; ++i) {
                        __m512 left = _mm512_add_ps(y[i][0], bias16), right = _mm512_add_ps(y[i][1], bias16);
                        if (value != nullptr) {
                            left = _mm512_add_ps(left, _mm512_set1_ps(*value));
                            right = _mm512_add_ps(right, _mm512_set1_ps(*value));
                        }
                        // The two columns interleaved: pixels in order.
                        __m512 lo = _mm512_permutex2var_ps(left, first_half, right);
                        __m512 hi = _mm512_permutex2var_ps(left, second_half, right);
                        float* row = out + (oy + i) * OW + SIDE * tx;
                        if (plane != nullptr) {
                            const float* addend = plane + (oy + i) * OW + SIDE * tx;
                            lo = _mm512_add_ps(lo, _mm512_loadu_ps(addend));
                            hi = _mm512_add_ps(hi, _mm512_loadu_ps(addend + 16));
                        }
                        _mm512_storeu_ps(row, lo);
                        _mm512_storeu_ps(row + 16, hi);
                    }
                }
            }
        }
#endif
        // 8 tiles at a time where their 8 * SIDE pixels of a row are all in the image.
        for (; tx + 8 <= end && SIDE * (tx + 8) <= OW; tx += 8) {
            __m256 m[P], y[SIDE][SIDE];
            for (int xi = 0; xi < P; ++xi) m[xi] = _mm256_loadu_ps(row_products + xi * position_stride + tx);
            transform(m, y, add8, sub8, mul8);
            for (int i = 0; i < SIDE && oy + i < OH; ++i) {
                __m256 columns[SIDE];
                for (int j = 0; j < SIDE; ++j) columns[j] = _mm256_add_ps(y[i][j], bias8);
                if (value != nullptr) {
                    for (int j = 0; j < SIDE; ++j) columns[j] = _mm256_add_ps(columns[j], _mm256_set1_ps(*value));
                }
                float* row = out + (oy + i) * OW + SIDE * tx;
                store_tile_row(row, columns, SIDE);
                if (plane != nullptr) {  // added in pixel order, after the tiles' columns are interleaved
                    const float* addend = plane + (oy + i) * OW + SIDE * tx;
                    for (int k = 0; k < 8 * SIDE; k += 8) {
                        _mm256_storeu_ps(row + k, _mm256_add_ps(_mm256_loadu_ps(row + k), _mm256_loadu_ps(addend + k)));
                    }
                }
            }
        }
        for (; tx < end; ++tx) {
            float m[P], y[SIDE][SIDE];
            for (int xi = 0; xi < P; ++xi) m[xi] = row_products[xi * position_stride + tx];
            transform(m, y, add, sub, mul);
            const int64_t ox = SIDE * tx;
            for (int i = 0; i < SIDE && oy + i < OH; ++i) {
                for (int j = 0; j < SIDE && ox + j < OW; ++j) {
                    const int64_t at = (oy + i) * OW + ox + j;
                    float sum = y[i][j] + bias;
                    if (value != nullptr) sum = sum + *value;
                    if (plane != nullptr) sum = sum + plane[at];
                    out[at] = sum;
                }
            }
        }
    }
}

// Columns 2t..2t+3 of a row for 8 tiles t = t0..t0+7 (row points at column 2 t0): even and odd columns.
inline void tile_columns(const float* row, __m256 col[4]) {
    for (int shift = 0; shift < 2; ++shift) {
        const __m256 a = _mm256_loadu_ps(row + 2 * shift), b = _mm256_loadu_ps(row + 2 * shift + 8);
        const __m256 even = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0));
        const __m256 odd = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1));
        col[2 * shift] = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(even), 0xd8));
        col[2 * shift + 1] = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(odd), 0xd8));
    }
}

#if defined(__AVX512F__)
// tile_columns for 16 tiles: two loads and a permute per column instead of shuffles per 8 tiles.
inline void tile_columns_16(const float* row, __m512 col[4]) {
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
    for (int shift = 0; shift < 2; ++shift) {
        const __m512 a = _mm512_loadu_ps(row + 2 * shift), b = _mm512_loadu_ps(row + 2 * shift + 16);
        col[2 * shift] = _mm512_permutex2var_ps(a, even, b);
        col[2 * shift + 1] = _mm512_permutex2var_ps(a, odd, b);
    }
}

// F(2x2)'s V = B' d B of 16 tiles side by side (a row of tiles at 32x32, half of one at 64x64): the 8-tile
// lambda's arithmetic lane for lane, so the same values.
inline void transform_16_tiles(const float* r0, int64_t PW, int64_t tx, __m512 values[POSITIONS]) {
    __m512 d[4][4], t[4][4];
    for (int i = 0; i < 4; ++i) tile_columns_16(r0 + i * PW + 2 * tx, d[i]);
    for (int j = 0; j < 4; ++j) {
        t[0][j] = _mm512_sub_ps(d[0][j], d[2][j]);
        t[1][j] = _mm512_add_ps(d[1][j], d[2][j]);
        t[2][j] = _mm512_sub_ps(d[2][j], d[1][j]);
        t[3][j] = _mm512_sub_ps(d[1][j], d[3][j]);
    }
    for (int i = 0; i < 4; ++i) {
        values[4 * i + 0] = _mm512_sub_ps(t[i][0], t[i][2]);
        values[4 * i + 1] = _mm512_add_ps(t[i][1], t[i][2]);
        values[4 * i + 2] = _mm512_sub_ps(t[i][2], t[i][1]);
        values[4 * i + 3] = _mm512_sub_ps(t[i][1], t[i][3]);
    }
}
#endif

}  // namespace
}  // namespace sdcpp_py_gemm

// dst: V = B' d B of every tile of every channel in TileSlivers' layout, images side by side per position
// (the tensor's shape only sizes it: (slivers * MR, steps, P, N), P = 16 for F(2x2) or 36 for F(4x4));
// src[0] the image (IW, IH, IC, N). Tiles are 2x2 (4x4) output pixels, row by row; their 4x4 (6x6) input
// patches overlap by 2 and read zeros outside the image (padding). For bf16 products (the params' bf16 bit) V
// is stored as the product's A operand pairs it, channels 2q and 2q+1 of a tile in one dword ((IC + 1) / 2
// steps in place of IC channels): half the bytes, read in place by the product.
extern "C" void sdcpp_py_cpu_winograd_input_compute(struct ggml_tensor* dst, int ith, int nth, void* userdata) {
    using namespace sdcpp_py_gemm;
    const ggml_tensor* x = dst->src[0];
    const uintptr_t params = reinterpret_cast<uintptr_t>(userdata);
    const Padding pad = padding_of(params);
    const bool pairs = (params >> SDCPP_PY_CONV_BF16_BIT) & 1;
    const int64_t IW = x->ne[0], IH = x->ne[1], IC = x->ne[2], N = x->ne[3];
    const int64_t P = dst->ne[2], side = tile_side(P);
    GGML_ASSERT(P == POSITIONS || P == POSITIONS_4X4);
    const int64_t tiles_w = (IW + 2 * pad.left - 2 + side - 1) / side;
    const int64_t tiles_h = (IH + 2 * pad.top - 2 + side - 1) / side;
    const int64_t tiles = tiles_w * tiles_h, slivers = sliver_count(tiles);
    // Rows of a sliver's step: channels, or pairs of them.
    const int64_t steps = pairs ? (IC + 1) / 2 : IC;
    GGML_ASSERT(dst->ne[0] == slivers * MR && dst->ne[1] == steps && dst->ne[3] == N);
#if !defined(SDCPP_PY_BF16_GEMM)
    GGML_ASSERT(!pairs);  // bf16 graphs are built only where the bf16 product is compiled
#endif
    // The plane with its padding (and zeros past a last part tile, and room for 8-tile vectors) around it:
    // no bounds checks below.
    const int64_t PW = side * ((tiles_w + 7) / 8 * 8) + 8, PH = side * tiles_h + 2;
    thread_local std::vector<float> padded;
    scratch(padded, (pairs ? 2 : 1) * PW * PH);  // bf16 pairs: both channels' planes
    const __m256i every_fourth = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
#if defined(__AVX512F__)
    // On AVX-512 F(4x4)'s columns come from two loads and a permute instead of a gather (the plane's PW
    // leaves room for the second load); SDCPP_PY_CPU_KERNELS=avx2 keeps the gathers. The same values.
    const bool permute_columns = wider_kernels_allowed();
    const __m512i every_fourth_512 = _mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 0, 0, 0, 0, 0, 0, 0, 0);
#endif
    // V of 8 tiles from their padded plane: one vector per position, lanes the tiles.
    const auto transform_tiles = [&](const float* r0, int64_t tx, __m256 values[POSITIONS_4X4]) {
        if (P == POSITIONS) {
            __m256 d[4][4], t[4][4];
            for (int i = 0; i < 4; ++i) tile_columns(r0 + i * PW + 2 * tx, d[i]);
            for (int j = 0; j < 4; ++j) {  // B' d: rows combined
                t[0][j] = _mm256_sub_ps(d[0][j], d[2][j]);
                t[1][j] = _mm256_add_ps(d[1][j], d[2][j]);
                t[2][j] = _mm256_sub_ps(d[2][j], d[1][j]);
                t[3][j] = _mm256_sub_ps(d[1][j], d[3][j]);
            }
            for (int i = 0; i < 4; ++i) {  // (B' d) B: columns combined
                values[4 * i + 0] = _mm256_sub_ps(t[i][0], t[i][2]);
                values[4 * i + 1] = _mm256_add_ps(t[i][1], t[i][2]);
                values[4 * i + 2] = _mm256_sub_ps(t[i][2], t[i][1]);
                values[4 * i + 3] = _mm256_sub_ps(t[i][1], t[i][3]);
            }
            return;
        }
        __m256 t[6][6];  // B' d, column by column: each column's 6 rows gathered 4 apart per tile
        for (int j = 0; j < 6; ++j) {
            __m256 column[6], rows[6];
#if defined(__AVX512F__)
            if (permute_columns) {  // floats j .. j + 31 of the row hold the 8 tiles' column j, 4 apart
                for (int i = 0; i < 6; ++i) {
                    const float* row = r0 + i * PW + 4 * tx + j;
                    column[i] = _mm512_castps512_ps256(
                        _mm512_permutex2var_ps(_mm512_loadu_ps(row), every_fourth_512, _mm512_loadu_ps(row + 16)));
                }
            } else
#endif
            for (int i = 0; i < 6; ++i) column[i] = _mm256_i32gather_ps(r0 + i * PW + 4 * tx + j, every_fourth, 4);
            input_rows_4x4(column, rows);
            for (int i = 0; i < 6; ++i) t[i][j] = rows[i];
        }
        for (int i = 0; i < 6; ++i) input_rows_4x4(t[i], values + 6 * i);  // (B' d) B
    };
    // Channel ic of image n with its padding into plane (zeros where the channel does not exist).
    const auto pad_plane = [&](int64_t n, int64_t ic, float* plane) {
        std::fill(plane, plane + PW * PH, 0.0f);
        if (ic >= IC) return;
        const float* src = static_cast<const float*>(x->data) + (n * IC + ic) * IH * IW;
        for (int64_t y = 0; y < IH && y + pad.top < PH; ++y) {
            const int64_t width = std::min(IW, PW - pad.left);
            std::copy(src + y * IW, src + y * IW + width, plane + (y + pad.top) * PW + pad.left);
        }
    };
    // Units: one channel (f32) or one pair of channels (bf16) of one image.
    const int64_t units = N * steps, first = units * ith / nth, last = units * (ith + 1) / nth;
    const int64_t position_stride = N * slivers * steps * MR;
    for (int64_t unit = first; unit < last; ++unit) {
        const int64_t n = unit / steps, step = unit % steps;
        float* plane0 = padded.data();
        float* plane1 = padded.data() + PW * PH;
        pad_plane(n, pairs ? 2 * step : step, plane0);
        if (pairs) pad_plane(n, 2 * step + 1, plane1);
        // 32-bit words: f32 values, or bf16 pairs.
        uint32_t* v = static_cast<uint32_t*>(dst->data) + (n * slivers * steps + step) * MR;
        for (int64_t ty = 0; ty < tiles_h; ++ty) {
            for (int64_t tx = 0; tx < tiles_w; tx += 8) {
#if defined(__AVX512F__)
                // 16 whole tiles that fill one sliver row: zmm-wide, one store per position.
                if (permute_columns && P == POSITIONS && tx + 16 <= tiles_w && (ty * tiles_w + tx) % MR == 0) {
                    __m512 wide[POSITIONS];
                    transform_16_tiles(plane0 + side * ty * PW, PW, tx, wide);
                    uint32_t* out = v + (ty * tiles_w + tx) / MR * steps * MR;
#if defined(SDCPP_PY_BF16_GEMM)
                    if (pairs) {
                        __m512 odd[POSITIONS];
                        transform_16_tiles(plane1 + side * ty * PW, PW, tx, odd);
                        // Words: lane t's even channel, then its odd one (cvtne2ps puts the even's 16 first).
                        const __m512i interleave = _mm512_setr_epi32(
                            0x00100000, 0x00110001, 0x00120002, 0x00130003, 0x00140004, 0x00150005, 0x00160006,
                            0x00170007, 0x00180008, 0x00190009, 0x001a000a, 0x001b000b, 0x001c000c, 0x001d000d,
                            0x001e000e, 0x001f000f);
                        for (int64_t xi = 0; xi < P; ++xi) {
                            const __m512i both = reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(odd[xi], wide[xi]));
                            _mm512_storeu_si512(out + xi * position_stride, _mm512_permutexvar_epi16(interleave, both));
                        }
                        tx += 8;
                        continue;
                    }
#endif
                    for (int64_t xi = 0; xi < P; ++xi) _mm512_storeu_ps(reinterpret_cast<float*>(out + xi * position_stride), wide[xi]);
                    tx += 8;
                    continue;
                }
#endif
                __m256 values[POSITIONS_4X4];
                transform_tiles(plane0 + side * ty * PW, tx, values);
#if defined(SDCPP_PY_BF16_GEMM)
                if (pairs) {
                    __m256 odd[POSITIONS_4X4];
                    transform_tiles(plane1 + side * ty * PW, tx, odd);
                    // bf16 of each lane, nearest even as pair_steps_bf16 rounds; channel 2q in the low half.
                    for (int64_t xi = 0; xi < P; ++xi) {
                        const __m128i e = reinterpret_cast<__m128i>(_mm256_cvtneps_pbh(values[xi]));
                        const __m128i o = reinterpret_cast<__m128i>(_mm256_cvtneps_pbh(odd[xi]));
                        values[xi] = _mm256_castsi256_ps(_mm256_set_m128i(_mm_unpackhi_epi16(e, o), _mm_unpacklo_epi16(e, o)));
                    }
                }
#endif
                // Into the tiles' sliver: one store per position where the 8 tiles are real and share one.
                const int64_t tile = ty * tiles_w + tx, lanes = std::min<int64_t>(8, tiles_w - tx);
                uint32_t* out = v + tile / MR * steps * MR + tile % MR;
                if (lanes == 8 && tile % MR + 8 <= MR) {
                    for (int64_t xi = 0; xi < P; ++xi) _mm256_storeu_ps(reinterpret_cast<float*>(out + xi * position_stride), values[xi]);
                    continue;
                }
                // Rows of 4 tiles (8x8 outputs in F(2x2), 16x16 in F(4x4)): the low half in one store (a lane
                // by lane copy was most of the node there).
                if (lanes == 4 && tile % MR + 4 <= MR) {
                    for (int64_t xi = 0; xi < P; ++xi) {
                        _mm_storeu_ps(reinterpret_cast<float*>(out + xi * position_stride), _mm256_castps256_ps128(values[xi]));
                    }
                    continue;
                }
                alignas(32) uint32_t lane_words[8];
                for (int64_t xi = 0; xi < P; ++xi) {
                    _mm256_store_ps(reinterpret_cast<float*>(lane_words), values[xi]);
                    for (int64_t lane = 0; lane < lanes; ++lane) {
                        const int64_t t_lane = tile + lane;
                        v[xi * position_stride + t_lane / MR * steps * MR + t_lane % MR] = lane_words[lane];
                    }
                }
            }
        }
        // The last sliver's rows past the image's tiles: zeros (f32 0 and a pair of bf16 0 are both all-zero
        // bits), as the product's packed edge expects.
        if (tiles % MR != 0) {
            for (int64_t xi = 0; xi < P; ++xi) {
                uint32_t* last_sliver = v + xi * position_stride + (slivers - 1) * steps * MR;
                std::fill(last_sliver + tiles % MR, last_sliver + MR, 0u);
            }
        }
    }
}

// dst (OW, OH, OC, N) = the convolution of src[0] (the 3x3 kernel: f16, or flattened q8_0) with the image
// whose transform is src[1] (the node above) [+ src[2] bias f32 (OC)].
extern "C" void sdcpp_py_cpu_winograd_conv_compute(struct ggml_tensor* dst, int ith, int nth, void* userdata) {
    using namespace sdcpp_py_gemm;
    const ggml_tensor *w = dst->src[0], *transformed = dst->src[1];
    const uintptr_t params = reinterpret_cast<uintptr_t>(userdata);
    sdcpp_py_gemm_set_bf16((params >> SDCPP_PY_CONV_BF16_BIT) & 1);
    const float* bias = dst->src[2] != nullptr ? static_cast<const float*>(dst->src[2]->data) : nullptr;
    const SdcppPyConvAddend addend(dst);
    // Input channels: from the kernel (an f16 (3, 3, IC, OC) tensor or a q8_0 (9 * IC, OC) matrix), since
    // a bf16 graph's transformed image holds pairs of them.
    const int64_t IC = w->type == GGML_TYPE_Q8_0 ? w->ne[0] / 9 : w->ne[2];
    // The input node's layout: bf16 pairs exactly where the bit is set (the graph sets it only where the
    // bf16 products run).
    const bool pairs = (params >> SDCPP_PY_CONV_BF16_BIT) & 1;
    const int64_t steps = pairs ? (IC + 1) / 2 : IC;
    GGML_ASSERT(transformed->ne[1] == steps);
    const int64_t OW = dst->ne[0], OH = dst->ne[1], OC = dst->ne[2], N = dst->ne[3];
    const int64_t P = transformed->ne[2], side = tile_side(P);
    GGML_ASSERT(P == POSITIONS || P == POSITIONS_4X4);
    const int64_t tiles_w = (OW + side - 1) / side, tiles = tiles_w * ((OH + side - 1) / side);
    const int64_t slivers = sliver_count(tiles);
    GGML_ASSERT(transformed->ne[0] == slivers * MR && transformed->ne[3] == N);
    // Channels per round: their P transformed kernels (P * IC values each: f32, or bf16 halves of pairs)
    // within 512 KiB, so that they stay in L2 (1 MiB on Zen 4, shared with the image's and the products'
    // lines) from their transform to their products, where the transformed image (the whole batch's) is at
    // most 16 MiB: it is then read again each round, from L3, which costs less than the kernels' round trip
    // through memory (their stores were most of the transform: 640 channels at 16x16 9.1 -> 6.6 ms, 1280 at
    // 16x16 31 -> 27; f32 1280 at 8x8, 1 MiB rounds against 512 KiB: 12.9 -> 11.0). A larger image is read
    // once per round of up to 2^21 kernel values (320 channels at 64x64, 24 MB: 30 ms, 35 in 1 MiB rounds).
    // Tiles per band: their P products for those channels within 4 MiB (thread-local buffers, kept by ggml's
    // threads).
    const bool image_in_cache = ggml_nbytes(transformed) <= (int64_t{16} << 20);
    const int64_t kernel_values = image_in_cache ? (int64_t{512} << 10) / (pairs ? 2 : 4) : int64_t{1} << 21;
    const int64_t chunk = std::clamp<int64_t>(kernel_values / (P * IC) / NR * NR, NR, 192);
    const int64_t band = std::max<int64_t>(MR, (int64_t{1} << 20) / (P * chunk) / MR * MR);
    thread_local std::vector<float> u, m;
#if defined(SDCPP_PY_BF16_GEMM)
    thread_local std::vector<uint32_t> paired_kernels;
#endif
    // Rows of each product: the batch's images one after another, each in whole slivers (a last sliver's
    // rows past an image's tiles are the input node's zeros: computed, then dropped).
    const int64_t image_rows = slivers * MR, all_rows = N * image_rows;
    const float* v = static_cast<const float*>(transformed->data);
    // Each output channel's kernel is a row of w (f16 (3, 3, IC, OC) or q8_0 (9 * IC, OC)).
    const int64_t kernel_stride = w->type == GGML_TYPE_Q8_0 ? w->nb[1] : w->nb[3];
    const int64_t bands = (all_rows + band - 1) / band;
    // Rounds of output channels (whole register-tile columns) taken by the threads as they come free, not by
    // their index; two columns at least where a round holds two, as each round reads the transformed image
    // again. The next round is taken before this one's products, so that its kernels can be fetched during
    // them (a slowed thread holds one round more: the last rounds are one or two columns). An image too large
    // for the cache is read from memory by each round: there each thread takes its fixed share, in as few
    // rounds as before (shrinking rounds cost a 512x512 bf16 step 6-10%).
    ClaimedRanges rounds(image_in_cache ? sdcpp_py_claim_counters(dst) : nullptr, ith, nth, (OC + NR - 1) / NR,
                         chunk / NR, 2);
    for (ClaimedRanges::Range round = rounds.next(); !round.empty();) {
        const ClaimedRanges::Range following = rounds.next();
        const int64_t c0 = round.u0 * NR, cols = std::min(OC, round.u1 * NR) - c0;
        round = following;
        // The next round's kernels (contiguous rows: one run), fetched while this round's products run, a share
        // at the start of each product (their transform otherwise waits on memory: they are read once a step).
        LinePrefetch next_kernels;
        if (!following.empty()) {
            const int64_t f0 = following.u0 * NR;
            next_kernels.start(static_cast<const char*>(w->data) + f0 * kernel_stride, 0,
                               (std::min(OC, following.u1 * NR) - f0) * kernel_stride, 1);
        }
        int64_t products_left = bands * P;
        float* const u_f32 = pairs ? nullptr : scratch(u, P * cols * IC);
        const auto transform = P == POSITIONS ? transform_kernels<POSITIONS> : transform_kernels<POSITIONS_4X4>;
#if defined(SDCPP_PY_BF16_GEMM)
        const int64_t padded_cols = (cols + NR - 1) / NR * NR;
        const PairedKernels u_pairs{pairs ? scratch(paired_kernels, P * padded_cols * steps) : nullptr, IC,
                                    padded_cols};
        transform(w, c0, cols, IC, u_f32, u_pairs);
#else
        transform(w, c0, cols, IC, u_f32);
#endif
        for (int64_t r0 = 0; r0 < all_rows; r0 += band) {  // r0: a multiple of MR, the start of a sliver
            const int64_t rows = std::min(band, all_rows - r0);
            scratch(m, P * cols * rows);
            for (int64_t xi = 0; xi < P; ++xi) {
                float* c = m.data() + xi * cols * rows;
                const int64_t first_sliver = xi * N * slivers + r0 / MR;
                next_kernels.share_over(products_left--);
#if defined(SDCPP_PY_BF16_GEMM)
                if (pairs) {
                    position_product_bf16(reinterpret_cast<const uint32_t*>(v) + first_sliver * steps * MR, IC, rows,
                                          cols, u_pairs.position(xi), padded_cols, c, &next_kernels);
                    continue;
                }
#endif
                position_product(TileSlivers{v + first_sliver * IC * MR, IC}, rows, cols, u_f32 + xi * cols * IC, c,
                                 &next_kernels);
            }
            // Each image's tiles within these rows, written into its channels.
            for (int64_t n = r0 / image_rows; n < N && n * image_rows < r0 + rows; ++n) {
                const int64_t lo = std::max(r0, n * image_rows), hi = std::min(r0 + rows, n * image_rows + tiles);
                if (lo >= hi) continue;
                for (int64_t col = 0; col < cols; ++col) {
                    const int64_t oc = c0 + col;
                    const float channel_bias = bias != nullptr ? bias[oc] : 0.0f;
                    float* channel = static_cast<float*>(dst->data) + (n * OC + oc) * OH * OW;
                    const auto write = P == POSITIONS ? write_channel<2> : write_channel<4>;
                    write(m.data() + col * rows + (lo - r0), cols * rows, lo - n * image_rows, hi - n * image_rows,
                          tiles_w, OW, OH, channel_bias, addend.value(n, oc), addend.plane(n, oc), channel);
                }
            }
        }
    }
    rounds.finish();
}

#endif
