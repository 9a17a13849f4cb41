// sdcpp-py patch 0006: the compute side of the fused CPU attention (see sdcpp_py_attention.h).
//
// Per head, K and V are packed once; then each block of QB queries gets its L_k x QB scores from the packed
// kernel's register tiles, ggml's scale and softmax steps on each score row while it is in cache, and its
// outputs from the tiles again with the scores read in place. Every score and output element is summed in
// the order the unfused mul_mat nodes use (one tile's FMA chain per KC-deep block, blocks added in order),
// and the softmax calls ggml's own vector functions, so the result is bitwise that of the four nodes. With
// bf16 products (cpu_precision="bf16") there is no such reference: the softmax's weights are written once as
// the second product's bf16 operand, and the output normalized after it (softmax_weights_bf16).
#include "sdcpp_py_attention.h"

#include "ggml-cpu-impl.h"
#include "sdcpp_py_packed_gemm.h"
#include "sdcpp_py_precision.h"
#include "vec.h"

#include <cmath>

#if defined(SDCPP_PY_CPU_KERNELS)

namespace sdcpp_py_gemm {
namespace {

constexpr int64_t QB = 4 * NR;  // queries per block: 4096 keys' scores for them (384 KiB) stay in L2

// Every KC-deep block of an m x depth matrix as packed A slivers (block pc starts at panels + m_padded * pc),
// each sliver made by pack_sliver(i0, rows, pc, kc, panel).
template <typename PackSliver>
void pack_all(int64_t m, int64_t depth, std::vector<float>& panels, PackSliver pack_sliver) {
    const int64_t m_slivers = (m + MR - 1) / MR;
    scratch(panels, m_slivers * MR * depth);
    for (int64_t pc = 0; pc < depth; pc += KC) {
        const int64_t kc = std::min(KC, depth - pc);
        float* block = panels.data() + m_slivers * MR * pc;
        for (int64_t s = 0; s < m_slivers; ++s) {
            pack_sliver(s * MR, std::min(MR, m - s * MR), pc, kc, block + s * MR * kc);
        }
    }
}

// From the matrix's rows, lda apart.
void pack_all_rows(const float* A, int64_t lda, int64_t m, int64_t depth, std::vector<float>& panels) {
    pack_all(m, depth, panels, [&](int64_t i0, int64_t rows, int64_t pc, int64_t kc, float* panel) {
        pack_rows_of_a(A, lda, i0, rows, pc, kc, panel);
    });
}

// From the matrix's transpose: element (i, l) at T[l * ldt + i], so a sliver's step is 16 contiguous floats.
void pack_all_transposed(const float* T, int64_t ldt, int64_t m, int64_t depth, std::vector<float>& panels) {
    pack_all(m, depth, panels, [&](int64_t i0, int64_t rows, int64_t pc, int64_t kc, float* panel) {
        for (int64_t l = 0; l < kc; ++l) {
            const float* src = T + (pc + l) * ldt + i0;
            for (int64_t r = 0; r < MR; ++r) panel[l * MR + r] = r < rows ? src[r] : 0.0f;
        }
    });
}

// C (rows x cols, column stride ldc) = A B^T from A's packed blocks (pack_all_rows) over the given depth,
// B's KC-deep blocks packed into b_panels or, with b_in_place, whole slivers read as f32 rows.
void product(int64_t rows, int64_t cols, int64_t depth, const std::vector<float>& a_packed, const float* B,
             int64_t ldb, bool b_in_place, std::vector<float>& b_panels, float* C, int64_t ldc) {
    const int64_t m_padded = (rows + MR - 1) / MR * MR, n_slivers = (cols + NR - 1) / NR;
    for (int64_t pc = 0; pc < depth; pc += KC) {
        const int64_t kc = std::min(KC, depth - pc);
        scratch(b_panels, n_slivers * NR * kc + PANEL_SLACK);
        for (int64_t s = 0; s < n_slivers; ++s) {
            const int64_t sliver_cols = std::min(NR, cols - s * NR);
            if (!b_in_place || sliver_cols < NR) {
                pack_cols_of_b(B, ldb, s * NR, sliver_cols, pc, kc, b_panels.data() + s * NR * kc);
            }
        }
        const float* a_block = a_packed.data() + m_padded * pc;
        for (int64_t ic = 0; ic < rows; ic += MC) {
            tile_block(std::min(MC, rows - ic), cols, kc, a_block + ic * kc, b_panels.data(),
                       b_in_place ? B + pc : nullptr, ldb, C + ic, ldc, pc > 0);
        }
    }
}

#if defined(SDCPP_PY_BF16_GEMM)
// An m x depth matrix's packed blocks (pack_all) as bf16 pairs: block pc at pairs + m_padded * pc / 2.
void pair_all(int64_t m, int64_t depth, const std::vector<float>& panels, std::vector<uint32_t>& pairs) {
    const int64_t m_padded = (m + MR - 1) / MR * MR;
    scratch(pairs, m_padded * ((depth + 1) / 2 + 1));
    for (int64_t pc = 0; pc < depth; pc += KC) {
        const int64_t kc = std::min(KC, depth - pc), kc2 = (kc + 1) / 2;
        for (int64_t s = 0; s < m_padded / MR; ++s) {
            pair_steps_bf16(panels.data() + m_padded * pc + s * MR * kc, kc, MR,
                            pairs.data() + m_padded * pc / 2 + s * MR * kc2);
        }
    }
}

// product() with bf16 products: A's blocks paired (pair_all), B's rows (f32, or bf16 already) paired per block.
template <typename TB>
void product_bf16(int64_t rows, int64_t cols, int64_t depth, const std::vector<uint32_t>& a_pairs, const TB* B,
                  int64_t ldb, float* C, int64_t ldc) {
    thread_local std::vector<uint32_t> b_pairs;
    const int64_t m_padded = (rows + MR - 1) / MR * MR, n_slivers = (cols + NR - 1) / NR;
    for (int64_t pc = 0; pc < depth; pc += KC) {
        const int64_t kc = std::min(KC, depth - pc), kc2 = (kc + 1) / 2;
        scratch(b_pairs, n_slivers * NR * kc2);
        for (int64_t s = 0; s < n_slivers; ++s) {
            pair_cols_of_b(B, ldb, s * NR, std::min(NR, cols - s * NR), pc, kc, b_pairs.data() + s * NR * kc2);
        }
        const uint32_t* a_block = a_pairs.data() + m_padded * pc / 2;
        for (int64_t ic = 0; ic < rows; ic += MC) {
            tile_block_bf16(std::min(MC, rows - ic), cols, kc2, a_block + ic * kc2, b_pairs.data(), C + ic, ldc,
                            pc > 0);
        }
    }
}

// 2^y for y <= 0 (a softmax's shifted scores in base 2), to ~2e-7 like ggml's e^y: y = n + r (n = round(y),
// r exact, |r| <= 1/2), 2^r from a degree-5 polynomial fitted to it on that range (relative error 2.4e-7),
// times 2^n. Base 2 saves e^y's two-part ln 2 reduction: 10 instructions per 16 values instead of 13. Rounded to
// bf16 next, but an exp off by more ulps moves more weights across a bf16 rounding boundary.
inline __m512 exp2_nonpositive(__m512 y) {
    // Below -126 2^y is under the smallest normal float: 2^-126 there instead of denormals, 0 or (from -inf or a
    // huge gap, through inf - inf) NaN. A NaN y stays NaN (max_ps returns its second operand).
    y = _mm512_max_ps(_mm512_set1_ps(-126.0f), y);
    const __m512 n = _mm512_roundscale_ps(y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512 r = _mm512_sub_ps(y, n);
    __m512 p = _mm512_set1_ps(1.32764713e-3f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(9.67554189e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.55071346e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(2.40221202e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(6.93146944e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.00000012f));
    return _mm512_scalef_ps(p, n);
}

// With bf16 products the softmax's weights are rounded to bf16 anyway: one pass writes e^(scale x - scale max)
// as the product's bf16 operand (weights[i]), and the normalization moves to the output (returned: 1 / the
// f32 sum), instead of ggml's scale, softmax and normalization passes over f32 scores and a pairing pass.
float softmax_weights_bf16(const float* x, int64_t n, float scale, Bf16* weights) {
    // scale * max x is the scaled scores' maximum for scale > 0 (the core's 1 / sqrt(d_head); asserted by the
    // caller).
    __m512 vmax = _mm512_set1_ps(-INFINITY), vmax2 = vmax;  // two chains: max's latency, not its throughput
    int64_t m = 0;
    for (; m + 32 <= n; m += 32) {
        vmax = _mm512_max_ps(vmax, _mm512_loadu_ps(x + m));
        vmax2 = _mm512_max_ps(vmax2, _mm512_loadu_ps(x + m + 16));
    }
    for (; m < n; m += 16) vmax = _mm512_max_ps(vmax, _mm512_mask_loadu_ps(vmax, first_lanes(n - m), x + m));
    vmax = _mm512_max_ps(vmax, vmax2);
    // e^(scale (x - max)) = 2^(scale2 (x - max)), scale2 = scale log2(e). x - max first: 0 at the maximum however
    // large the scores (scale2 x - scale2 max would be the rounding of a ~1e16 product there, ~1e9 either way).
    const __m512 vscale = _mm512_set1_ps(scale * 1.44269504f), shift = _mm512_set1_ps(_mm512_reduce_max_ps(vmax));
    __m512 sum = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        const __m512 lo = exp2_nonpositive(_mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(x + i), shift), vscale));
        const __m512 hi = exp2_nonpositive(_mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(x + i + 16), shift), vscale));
        sum = _mm512_add_ps(sum, _mm512_add_ps(lo, hi));
        _mm512_storeu_si512(weights + i, reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(hi, lo)));
    }
    if (i < n) {  // the last 1-31 values: lanes past n are 0, not written
        const __mmask16 lo_lanes = first_lanes(n - i), hi_lanes = first_lanes(n - i - 16);
        const __m512 lo = _mm512_maskz_mov_ps(
            lo_lanes, exp2_nonpositive(_mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(lo_lanes, x + i), shift), vscale)));
        const __m512 hi = _mm512_maskz_mov_ps(
            hi_lanes, exp2_nonpositive(_mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(hi_lanes, x + i + 16), shift), vscale)));
        sum = _mm512_add_ps(sum, _mm512_add_ps(lo, hi));
        _mm512_mask_storeu_epi16(weights + i, __mmask32((1u << (n - i)) - 1),
                                 reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(hi, lo)));
    }
    return 1.0f / _mm512_reduce_add_ps(sum);
}
#endif

// The graph's ggml_scale, then ggml_soft_max (scale 1, no mask) on one row of scores, in place.
void scaled_softmax(float* row, int64_t n, float scale) {
    // x * scale and the maximum are exact, so lanes in any order give ggml's values.
    const __m256 vscale = _mm256_set1_ps(scale);
    __m256 vmax = _mm256_set1_ps(-INFINITY);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 x = _mm256_mul_ps(_mm256_loadu_ps(row + i), vscale);
        _mm256_storeu_ps(row + i, x);
        vmax = _mm256_max_ps(vmax, x);
    }
    alignas(32) float lanes[8];
    _mm256_store_ps(lanes, vmax);
    float max = -INFINITY;
    for (float lane : lanes) max = std::max(max, lane);
    for (; i < n; ++i) {
        row[i] *= scale;
        max = std::max(max, row[i]);
    }
    ggml_float sum = ggml_vec_soft_max_f32(static_cast<int>(n), row, row, max);
    sum = 1.0 / sum;
    ggml_vec_scale_f32(static_cast<int>(n), row, sum);
}

}  // namespace
}  // namespace sdcpp_py_gemm

// Row j of head h of batch n of a (d_head, L, heads, N) view.
inline const float* head_row(const ggml_tensor* t, int64_t j, int64_t h, int64_t n) {
    return reinterpret_cast<const float*>(static_cast<const char*>(t->data) + j * t->nb[1] + h * t->nb[2] +
                                          n * t->nb[3]);
}

extern "C" void sdcpp_py_cpu_attention_compute(struct ggml_tensor* dst, int ith, int nth, void* userdata) {
    using namespace sdcpp_py_gemm;
    const ggml_tensor *q = dst->src[0], *k = dst->src[1], *v = dst->src[2];
    const int64_t d_head = q->ne[0], L_q = q->ne[1], L_k = k->ne[1], heads = q->ne[2], batches = q->ne[3];
    const int64_t q_stride = q->nb[1] / sizeof(float), k_stride = k->nb[1] / sizeof(float);
    const int64_t out_stride = heads * d_head;  // dst is (d_head, heads, L_q, N)
    float scale;
    const uint32_t scale_bits = static_cast<uint32_t>(reinterpret_cast<uintptr_t>(userdata));
    std::memcpy(&scale, &scale_bits, sizeof scale);
    sdcpp_py_gemm_set_bf16(static_cast<int>((reinterpret_cast<uintptr_t>(userdata) >> 32) & 1));

    // Units are (batch, head, query block); each thread takes a contiguous run, so it packs each head's K
    // and V once. No barrier: units write disjoint outputs.
    const int64_t blocks_per_head = (L_q + QB - 1) / QB, units = batches * heads * blocks_per_head;
    const int64_t u0 = units * ith / nth, u1 = units * (ith + 1) / nth;
    // Kept by ggml's threads from call to call, as the packed product's buffers are.
    thread_local std::vector<float> k_packed, v_packed, b_panels, score_rows;
    thread_local std::vector<uint32_t> k_pairs, v_pairs;
    float* const scores = scratch(score_rows, L_k * QB);
#if defined(SDCPP_PY_BF16_GEMM)
    thread_local std::vector<Bf16> weight_rows;
    Bf16* const weights = bf16_products ? scratch(weight_rows, L_k * QB) : nullptr;
    GGML_ASSERT(!bf16_products || scale > 0.0f);  // softmax_weights_bf16 scales the maximum
#endif
    int64_t packed_head = -1;
    for (int64_t u = u0; u < u1; ++u) {
        const int64_t head_index = u / blocks_per_head, h = head_index % heads, n = head_index / heads;
        const int64_t j0 = (u % blocks_per_head) * QB, nq = std::min(QB, L_q - j0);
        if (head_index != packed_head) {
            pack_all_rows(head_row(k, 0, h, n), k_stride, L_k, d_head, k_packed);
            if (v->nb[0] == sizeof(float)) {  // channels contiguous: V^T's columns
                pack_all_transposed(head_row(v, 0, h, n), v->nb[1] / sizeof(float), d_head, L_k, v_packed);
            } else {  // keys contiguous: V^T's rows
                pack_all_rows(head_row(v, 0, h, n), v->nb[0] / sizeof(float), d_head, L_k, v_packed);
            }
            packed_head = head_index;
#if defined(SDCPP_PY_BF16_GEMM)
            if (bf16_products) {
                pair_all(L_k, d_head, k_packed, k_pairs);
                pair_all(d_head, L_k, v_packed, v_pairs);
            }
#endif
        }
        float* out = static_cast<float*>(dst->data) + ((n * L_q + j0) * heads + h) * d_head;
#if defined(SDCPP_PY_BF16_GEMM)
        if (bf16_products) {  // the same steps, both products on bf16 operands
            product_bf16(L_k, nq, d_head, k_pairs, head_row(q, j0, h, n), q_stride, scores, L_k);
            float normalize[QB];
            for (int64_t j = 0; j < nq; ++j) {
                normalize[j] = softmax_weights_bf16(scores + j * L_k, L_k, scale, weights + j * L_k);
            }
            product_bf16(d_head, nq, L_k, v_pairs, weights, L_k, out, out_stride);
            for (int64_t j = 0; j < nq; ++j) {
                for (int64_t i = 0; i < d_head; ++i) out[j * out_stride + i] *= normalize[j];
            }
            continue;
        }
#endif
        // scores[j * L_k + i] = K_i . Q_j, as mul_mat(k, q) lays them out.
        product(L_k, nq, d_head, k_packed, head_row(q, j0, h, n), q_stride, false, b_panels, scores, L_k);
        for (int64_t j = 0; j < nq; ++j) scaled_softmax(scores + j * L_k, L_k, scale);
        // out[j, h, i] = V^T_i . P_j, the values mul_mat(v, softmax) computes.
        product(d_head, nq, L_k, v_packed, scores, L_k, true, b_panels, out, out_stride);
    }
    for (auto* buffer : {&k_packed, &v_packed, &b_panels, &score_rows}) release_if_large(*buffer);
    for (auto* buffer : {&k_pairs, &v_pairs}) release_if_large(*buffer);
#if defined(SDCPP_PY_BF16_GEMM)
    release_if_large(weight_rows);
#endif
}

#endif
