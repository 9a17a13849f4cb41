// sdcpp-py patch 0006: the compute side of the fused CPU attention (see sdcpp_py_attention.h).
//
// Per head, K and V are packed (again where a run of blocks a thread claims starts a head); then each block of
// QB queries gets its L_k x QB scores from the packed kernel's register tiles, ggml's scale and softmax steps
// on each score row while it is in cache, and its outputs from the tiles again with the scores read in place.
// Every score and output element is summed in the order the unfused mul_mat nodes use (one tile's FMA chain
// per KC-deep block, blocks added in order), and the softmax calls ggml's own vector functions, so the result
// is bitwise that of the four nodes. With bf16 products (cpu_precision="bf16") there is no such reference:
// blocks of 32 queries, the scores a key at a time with the queries side by side, the softmax's weights written
// once as the second product's bf16 operand and the output normalized after it (softmax_columns_bf16), the
// channels that product's columns.
#include "sdcpp_py_attention.h"

#include "ggml-cpu-impl.h"
#include "sdcpp_py_claims.h"
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
// With bf16 products a block is QB_BF16 queries, the rows of one two-sliver register tile: the scores come out
// a key at a time with the block's queries side by side (two vectors), the softmax runs down those columns and
// writes its weights as the output product's A slivers, and that product's columns are the head's channels
// (d_head 40: 5 tiles of 8 columns, where as rows they took 3 slivers of 16).
constexpr int64_t QB_BF16 = 2 * MR;

// The head's operands as the two products' B: K's rows are the score product's columns (each key's d_head
// values as pairs, NR keys per sliver); V's channels the output product's, paired along the keys per KC_BF16
// block (block pc at v + v_cols * pc / 2), channels padded to whole slivers (v_cols) with zeros.
struct HeadPairs {
    std::vector<uint32_t> k, v;
    std::vector<float> v_t;
    int64_t v_cols = 0;
};

// V: element (key, c) at V[key * v_key_stride + c * v_channel_stride].
void pair_head(const float* K, int64_t k_stride, const float* V, int64_t v_key_stride, int64_t v_channel_stride,
               int64_t L_k, int64_t d_head, HeadPairs& head) {
    const int64_t d2 = (d_head + 1) / 2, key_slivers = (L_k + NR - 1) / NR;
    scratch(head.k, key_slivers * NR * d2);
    for (int64_t s = 0; s < key_slivers; ++s) {
        pair_cols_of_b(K, k_stride, s * NR, std::min(NR, L_k - s * NR), 0, d_head, head.k.data() + s * NR * d2);
    }
    // V^T's rows (keys contiguous): V's own where its keys are contiguous, else a transposed copy.
    const float* vt = V;
    int64_t vt_stride = v_channel_stride;
    if (v_key_stride != 1) {
        GGML_ASSERT(v_channel_stride == 1);  // the node takes no other layout (sdcpp_py_cpu_attention)
        float* t = scratch(head.v_t, d_head * L_k);
        for (int64_t key0 = 0; key0 < L_k; key0 += 16) {  // 16 keys x 16 channels at a time, transposed
            for (int64_t c0 = 0; c0 < d_head; c0 += 16) {
                __m512i rows[16];
                const __mmask16 channels = first_lanes(d_head - c0), keys = first_lanes(L_k - key0);
                for (int64_t r = 0; r < 16; ++r) {
                    rows[r] = key0 + r < L_k ? _mm512_maskz_loadu_epi32(channels, V + (key0 + r) * v_key_stride + c0)
                                             : _mm512_setzero_si512();
                }
                transpose16(rows);
                for (int64_t c = 0; c < std::min<int64_t>(16, d_head - c0); ++c) {
                    _mm512_mask_storeu_epi32(t + (c0 + c) * L_k + key0, keys, rows[c]);
                }
            }
        }
        vt = t;
        vt_stride = L_k;
    }
    const int64_t channel_slivers = (d_head + NR - 1) / NR;
    head.v_cols = channel_slivers * NR;
    scratch(head.v, head.v_cols * ((L_k + 1) / 2));
    for (int64_t pc = 0; pc < L_k; pc += KC_BF16) {
        const int64_t kc = std::min(KC_BF16, L_k - pc), kc2 = (kc + 1) / 2;
        uint32_t* block = head.v.data() + head.v_cols * pc / 2;
        for (int64_t s = 0; s < channel_slivers; ++s) {
            pair_cols_of_b(vt, vt_stride, s * NR, std::min(NR, d_head - s * NR), pc, kc, block + s * NR * kc2);
        }
    }
}

// 2^y for y <= 0 (a softmax's shifted scores in base 2; exp2_512's fit). Base 2 saves e^y's two-part ln 2
// reduction: 10 instructions per 16 values instead of 13. Rounded to bf16 next, but an exp off by more ulps
// moves more weights across a bf16 rounding boundary.
inline __m512 exp2_nonpositive(__m512 y) {
    // Below -126 2^y is under the smallest normal float: 2^-126 there instead of denormals, 0 or (from -inf or a
    // huge gap, through inf - inf) NaN. A NaN y stays NaN (max_ps returns its second operand).
    return exp2_512(_mm512_max_ps(_mm512_set1_ps(-126.0f), y));
}

// The scores of a block's QB_BF16 queries (two slivers of their channel pairs) against every key, key by key
// (scores[key * QB_BF16 + query]), and each query's maximum over them (max_of[0]: queries 0-15, [1]: 16-31),
// taken from the tiles' registers as they are stored: no pass over the scores for it.
void scores_and_maxima(const uint32_t* q_pairs, int64_t d2, const uint32_t* k_pairs, int64_t L_k, float* scores,
                       __m512 max_of[2]) {
    max_of[0] = max_of[1] = _mm512_set1_ps(-INFINITY);
    const int64_t whole = L_k / NR;
    for (int64_t s = 0; s < whole; ++s) {
        register_tile_bf16<2>(d2, q_pairs, MR * d2, k_pairs + s * NR * d2, scores + s * NR * QB_BF16, QB_BF16, false,
                              max_of);
    }
    if (whole * NR == L_k) return;
    // A last part sliver: its padding keys (zero pairs, score 0) kept out of the scores and the maxima.
    alignas(64) float edge[NR * QB_BF16];
    register_tile_bf16<2>(d2, q_pairs, MR * d2, k_pairs + whole * NR * d2, edge, QB_BF16, false);
    for (int64_t key = whole * NR; key < L_k; ++key) {
        const float* column = edge + (key - whole * NR) * QB_BF16;
        for (int half = 0; half < 2; ++half) {
            const __m512 v = _mm512_load_ps(column + 16 * half);
            _mm512_storeu_ps(scores + key * QB_BF16 + 16 * half, v);
            max_of[half] = _mm512_max_ps(max_of[half], v);
        }
    }
}

// Each query's maximum over a block's scores (scores[key * QB_BF16 + query]; lanes are queries), where the tiles
// that summed them (AMX's) could not take it on the way: max_ps(maximum, score), as scores_and_maxima takes it.
void maxima_of_scores(const float* scores, int64_t L_k, __m512 max_of[2]) {
    __m512 lo = _mm512_set1_ps(-INFINITY), hi = lo;
    for (int64_t key = 0; key < L_k; ++key, scores += QB_BF16) {
        lo = _mm512_max_ps(lo, _mm512_loadu_ps(scores));
        hi = _mm512_max_ps(hi, _mm512_loadu_ps(scores + 16));
    }
    max_of[0] = lo;
    max_of[1] = hi;
}

// The softmax of a block's scores (scores[key * QB_BF16 + query], the score product's C) given each query's
// maximum (lanes are queries): one pass writes e^(scale (x - max)), rounded to bf16, as the output product's
// A slivers (weights[(s * L_k2 + p) * MR + r]: keys 2p and 2p + 1 for query s * MR + r; a last odd key's partner
// 0), and the normalization moves to the output: inverse_sums[query] = 1 / the f32 sum.
void softmax_columns_bf16(const float* scores, int64_t L_k, float scale, const __m512 max_of[2], uint32_t* weights,
                          float* inverse_sums) {
    const __m512 max_lo = max_of[0], max_hi = max_of[1];
    // e^(scale (x - max)) = 2^(scale2 (x - max)), scale2 = scale log2(e). x - max first: 0 at the maximum however
    // large the scores (scale2 x - scale2 max would be the rounding of a ~1e16 product there, ~1e9 either way).
    const __m512 vscale = _mm512_set1_ps(scale * 1.44269504f);
    const auto weight = [&](const float* x, __m512 max) {
        return exp2_nonpositive(_mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(x), max), vscale));
    };
    const int64_t L_k2 = (L_k + 1) / 2;
    uint32_t *lo_sliver = weights, *hi_sliver = weights + L_k2 * MR;
    __m512 sum_lo = _mm512_setzero_ps(), sum_hi = _mm512_setzero_ps();
    for (int64_t p = 0; p < L_k2; ++p) {
        const float* even = scores + 2 * p * QB_BF16;
        const bool odd_exists = 2 * p + 1 < L_k;
        const __m512 even_lo = weight(even, max_lo), even_hi = weight(even + 16, max_hi);
        const __m512 odd_lo = odd_exists ? weight(even + QB_BF16, max_lo) : _mm512_setzero_ps();
        const __m512 odd_hi = odd_exists ? weight(even + QB_BF16 + 16, max_hi) : _mm512_setzero_ps();
        sum_lo = _mm512_add_ps(sum_lo, _mm512_add_ps(even_lo, odd_lo));
        sum_hi = _mm512_add_ps(sum_hi, _mm512_add_ps(even_hi, odd_hi));
        _mm512_storeu_si512(lo_sliver + p * MR, lane_pairs(even_lo, odd_lo));
        _mm512_storeu_si512(hi_sliver + p * MR, lane_pairs(even_hi, odd_hi));
    }
    _mm512_storeu_ps(inverse_sums, _mm512_div_ps(_mm512_set1_ps(1.0f), sum_lo));
    _mm512_storeu_ps(inverse_sums + 16, _mm512_div_ps(_mm512_set1_ps(1.0f), sum_hi));
}

// A block's buffers, kept by the thread from block to block.
struct BlockBuffers {
    std::vector<uint32_t> query_pairs, weight_slivers;
    std::vector<float> score_columns, outputs;
};

// nq <= QB_BF16 queries (q_stride apart) of one head against its paired K and V: their outputs, out_stride apart.
void attention_block_bf16(const float* Q, int64_t q_stride, int64_t nq, const HeadPairs& head, int64_t L_k,
                          int64_t d_head, float scale, float* out, int64_t out_stride, BlockBuffers& buffers) {
    auto& [query_pairs, weight_slivers, score_columns, outputs] = buffers;
    const int64_t d2 = (d_head + 1) / 2, L_k2 = (L_k + 1) / 2;
    uint32_t* const q_pairs = scratch(query_pairs, QB_BF16 * d2);
    for (int64_t s = 0; s < QB_BF16 / MR; ++s) {  // queries past nq: zero rows, their outputs dropped
        pair_rows_of_a(Q, q_stride, s * MR, std::clamp<int64_t>(nq - s * MR, 0, MR), 0, d_head, q_pairs + s * MR * d2);
    }
    float* const scores = scratch(score_columns, L_k * QB_BF16);
    __m512 max_of[2];
#if defined(SDCPP_PY_AMX_BF16)
    const bool amx = amx_bf16_usable();
#else
    const bool amx = false;
#endif
    if (amx) {  // AMX tiles for both products (tile_block_bf16 takes them); the maxima in a pass of their own
        tile_block_bf16(QB_BF16, L_k, d2, q_pairs, head.k.data(), scores, QB_BF16, false, MR * d2);
        maxima_of_scores(scores, L_k, max_of);
    } else {
        scores_and_maxima(q_pairs, d2, head.k.data(), L_k, scores, max_of);
    }
    uint32_t* const weights = scratch(weight_slivers, QB_BF16 * L_k2);
    alignas(64) float inverse_sums[QB_BF16];
    softmax_columns_bf16(scores, L_k, scale, max_of, weights, inverse_sums);
    // o[c * QB_BF16 + query], rows to a multiple of 16 for the transposes below (rows past d_head are
    // transposed too, but their lanes are not stored).
    float* const o = scratch(outputs, std::max(head.v_cols, (d_head + 15) / 16 * 16) * QB_BF16);
    for (int64_t pc = 0; pc < L_k; pc += KC_BF16) {
        const int64_t kc2 = (std::min(KC_BF16, L_k - pc) + 1) / 2;
        const uint32_t *a = weights + pc / 2 * MR, *v = head.v.data() + head.v_cols * pc / 2;
        if (amx) {  // the head's channels as the columns: AMX tiles of 16, then one of the rest
            tile_block_bf16(QB_BF16, d_head, kc2, a, v, o, QB_BF16, pc > 0, L_k2 * MR);
            continue;
        }
        if (d_head % 8 == 0) {  // SD's heads of 40, 80, 160: tiles 8 wide (6 wide, 40 took 42 columns)
            for (int64_t c = 0; c < d_head; c += 8) {
                register_tile_bf16<2, 8>(kc2, a, L_k2 * MR, v + c * kc2, o + c * QB_BF16, QB_BF16, pc > 0);
            }
            continue;
        }
        tile_block_bf16(QB_BF16, head.v_cols, kc2, a, v, o, QB_BF16, pc > 0, L_k2 * MR);
    }
    // Normalized and transposed, 16 channels x 16 queries at a time.
    for (int64_t j0 = 0; j0 < nq; j0 += 16) {
        for (int64_t c0 = 0; c0 < d_head; c0 += 16) {
            __m512i rows[16];
            for (int64_t c = 0; c < 16; ++c) rows[c] = _mm512_loadu_si512(o + (c0 + c) * QB_BF16 + j0);
            transpose16(rows);
            const __mmask16 channels = first_lanes(d_head - c0);
            for (int64_t j = 0; j < std::min<int64_t>(16, nq - j0); ++j) {
                const __m512 normalized = _mm512_mul_ps(reinterpret_cast<__m512>(rows[j]), _mm512_set1_ps(inverse_sums[j0 + j]));
                _mm512_mask_storeu_ps(out + (j0 + j) * out_stride + c0, channels, normalized);
            }
        }
    }
}
#endif

// The graph's ggml_scale, then ggml_soft_max (scale 1, no mask) on one row of scores, in place.
void scaled_softmax(float* row, int64_t n, float scale) {
    // x * scale and the maximum are exact, so lanes in any order give ggml's values (NaN aside: such a row's
    // softmax is NaN throughout either way).
    int64_t i = 0;
    float max = -INFINITY;
#if defined(__AVX512F__)
    if (wider_kernels_allowed()) {  // 16 lanes: half the instructions of this pass over L_k scores
        const __m512 vscale = _mm512_set1_ps(scale);
        __m512 vmax = _mm512_set1_ps(-INFINITY);
        for (; i + 16 <= n; i += 16) {
            const __m512 x = _mm512_mul_ps(_mm512_loadu_ps(row + i), vscale);
            _mm512_storeu_ps(row + i, x);
            vmax = _mm512_max_ps(vmax, x);
        }
        max = _mm512_reduce_max_ps(vmax);
    }
#endif
    const __m256 vscale = _mm256_set1_ps(scale);
    __m256 vmax = _mm256_set1_ps(max);
    for (; i + 8 <= n; i += 8) {
        const __m256 x = _mm256_mul_ps(_mm256_loadu_ps(row + i), vscale);
        _mm256_storeu_ps(row + i, x);
        vmax = _mm256_max_ps(vmax, x);
    }
    alignas(32) float lanes[8];
    _mm256_store_ps(lanes, vmax);
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

// Calls block(n, h, j0, nq) for each unit (batch n, head h, the nq <= block_queries queries from j0) this
// thread claims: units are handed to the node's threads as they come free (ClaimedRanges), in runs that shrink
// towards the end, so that a thread slowed by something else on its core takes fewer instead of holding the
// node's barrier. Units write disjoint outputs, each the same whichever thread computes it; a run goes through
// the heads in order, so a thread prepares a head's K and V again only where a run starts one.
template <typename Block>
static void for_claimed_blocks(ggml_tensor* dst, int ith, int nth, int64_t block_queries, Block block) {
    using sdcpp_py_gemm::ClaimedRanges;
    const ggml_tensor* q = dst->src[0];
    const int64_t L_q = q->ne[1], heads = q->ne[2], blocks_per_head = (L_q + block_queries - 1) / block_queries;
    const int64_t units = q->ne[3] * heads * blocks_per_head;
    ClaimedRanges claims(sdcpp_py_claim_counters(dst), ith, nth, units, units, 1);
    for (ClaimedRanges::Range range = claims.next(); !range.empty(); range = claims.next()) {
        for (int64_t u = range.u0; u < range.u1; ++u) {
            const int64_t head_index = u / blocks_per_head, j0 = (u % blocks_per_head) * block_queries;
            block(head_index / heads, head_index % heads, j0, std::min(block_queries, L_q - j0));
        }
    }
    claims.finish();
}

#if defined(SDCPP_PY_BF16_GEMM)
// The node with bf16 products: units of (batch, head, QB_BF16 queries), pairing a head's K and V where a
// claimed run starts it.
static void attention_bf16(ggml_tensor* dst, int ith, int nth, float scale) {
    using namespace sdcpp_py_gemm;
    const ggml_tensor *q = dst->src[0], *k = dst->src[1], *v = dst->src[2];
    const int64_t d_head = q->ne[0], L_q = q->ne[1], L_k = k->ne[1], heads = q->ne[2];
    GGML_ASSERT(scale > 0.0f);  // the softmax's weights are 2^(scale log2(e) (x - max))
    thread_local HeadPairs head;
    thread_local BlockBuffers buffers;
    int64_t paired_head = -1;
    for_claimed_blocks(dst, ith, nth, QB_BF16, [&](int64_t n, int64_t h, int64_t j0, int64_t nq) {
        if (n * heads + h != paired_head) {
            pair_head(head_row(k, 0, h, n), k->nb[1] / sizeof(float), head_row(v, 0, h, n), v->nb[1] / sizeof(float),
                      v->nb[0] / sizeof(float), L_k, d_head, head);
            paired_head = n * heads + h;
        }
        float* const out = static_cast<float*>(dst->data) + ((n * L_q + j0) * heads + h) * d_head;
        attention_block_bf16(head_row(q, j0, h, n), q->nb[1] / sizeof(float), nq, head, L_k, d_head, scale, out,
                             heads * d_head, buffers);
    });
    for (auto* buffer : {&head.k, &head.v, &buffers.query_pairs, &buffers.weight_slivers}) release_if_large(*buffer);
    for (auto* buffer : {&head.v_t, &buffers.score_columns, &buffers.outputs}) release_if_large(*buffer);
}
#endif

extern "C" void sdcpp_py_cpu_attention_compute(struct ggml_tensor* dst, int ith, int nth, void* userdata) {
    using namespace sdcpp_py_gemm;
    const ggml_tensor *q = dst->src[0], *k = dst->src[1], *v = dst->src[2];
    const int64_t d_head = q->ne[0], L_q = q->ne[1], L_k = k->ne[1], heads = q->ne[2];
    const int64_t q_stride = q->nb[1] / sizeof(float), k_stride = k->nb[1] / sizeof(float);
    const int64_t out_stride = heads * d_head;  // dst is (d_head, heads, L_q, N)
    float scale;
    const uint32_t scale_bits = static_cast<uint32_t>(reinterpret_cast<uintptr_t>(userdata));
    std::memcpy(&scale, &scale_bits, sizeof scale);
    sdcpp_py_gemm_set_bf16(static_cast<int>((reinterpret_cast<uintptr_t>(userdata) >> 32) & 1));

#if defined(SDCPP_PY_BF16_GEMM)
    if (bf16_products) {
        attention_bf16(dst, ith, nth, scale);
        return;
    }
#endif
    // Units are (batch, head, query block) (for_claimed_blocks). No barrier: units write disjoint outputs.
    // Kept by ggml's threads from call to call, as the packed product's buffers are.
    thread_local std::vector<float> k_packed, v_packed, b_panels, score_rows;
    float* const scores = scratch(score_rows, L_k * QB);
    int64_t packed_head = -1;
    for_claimed_blocks(dst, ith, nth, QB, [&](int64_t n, int64_t h, int64_t j0, int64_t nq) {
        if (n * heads + h != packed_head) {
            pack_all_rows(head_row(k, 0, h, n), k_stride, L_k, d_head, k_packed);
            if (v->nb[0] == sizeof(float)) {  // channels contiguous: V^T's columns
                pack_all_transposed(head_row(v, 0, h, n), v->nb[1] / sizeof(float), d_head, L_k, v_packed);
            } else {  // keys contiguous: V^T's rows
                pack_all_rows(head_row(v, 0, h, n), v->nb[0] / sizeof(float), d_head, L_k, v_packed);
            }
            packed_head = n * heads + h;
        }
        float* out = static_cast<float*>(dst->data) + ((n * L_q + j0) * heads + h) * d_head;
        // scores[j * L_k + i] = K_i . Q_j, as mul_mat(k, q) lays them out.
        product(L_k, nq, d_head, k_packed, head_row(q, j0, h, n), q_stride, false, b_panels, scores, L_k);
        for (int64_t j = 0; j < nq; ++j) scaled_softmax(scores + j * L_k, L_k, scale);
        // out[j, h, i] = V^T_i . P_j, the values mul_mat(v, softmax) computes.
        product(d_head, nq, L_k, v_packed, scores, L_k, true, b_panels, out, out_stride);
    });
    for (auto* buffer : {&k_packed, &v_packed, &b_panels, &score_rows}) release_if_large(*buffer);
}

#endif
