// sdcpp-py: a cache-blocked matrix product for ggml's CPU backend on AVX2 + FMA + F16C (patch 0004).
//
// Computes C[j*ldc + i] = sum_l A[i*lda + l] * B[j*ldb + l] (llamafile_sgemm's contract) for f16 or f32
// A and B, accumulating in f32. tinyBLAS streams whole rows of A and B per 4x3 tile, so a convolution's
// 1280 x 11520 f16 weights are re-read from memory for every tile row; here both operands are packed into
// f32 panels that stay in cache (the BLIS layout: KC-deep panels, a 16x6 register tile), and f32
// activations are read as they are instead of being rounded to f16 first.
// Each C element is summed by one thread in a fixed order, so results do not depend on the thread count.
// AVX-512 builds use it too (issue 20): ggml's AVX-512 tinyBLAS streams rows as its AVX2 one does, and the
// fused nodes that rely on this kernel then run there as well (SD1 UNet, 256x256, Zen 4: 3.29 -> 2.49 s/step);
// there whole pairs of 16-row slivers take zmm tiles (register_tile_512), with the same sums.
// With AVX512_BF16 the products of a context with cpu_precision="bf16" (patch 0014) take the bf16 path below:
// the same blocks, operands rounded to bf16 in pairs of steps, vdpbf16ps into f32 sums (SD1, 256x256: ~1.5
// s/step against 2.3).
#pragma once

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define SDCPP_PY_PACKED_GEMM 1

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <vector>

namespace sdcpp_py_gemm {

constexpr int64_t MR = 16;    // C rows per register tile: two ymm, contiguous in C
constexpr int64_t NR = 6;     // C columns per register tile: broadcast
constexpr int64_t KC = 256;   // depth of a packed panel: a 6-column B sliver (6 KiB) stays in L1
constexpr int64_t MC = 144;   // rows of A packed at once: 144 KiB, in L2
constexpr int64_t NC = 2040;  // columns of B packed at once: 2 MiB, in L3
static_assert(MC % MR == 0 && NC % NR == 0, "a block holds whole slivers: only the matrix's end has a short one");

inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const uint16_t* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
inline float load1(const float* p) { return *p; }
inline float load1(const uint16_t* p) { return _cvtsh_ss(*p); }

inline void transpose8(__m256& r0, __m256& r1, __m256& r2, __m256& r3, __m256& r4, __m256& r5, __m256& r6,
                       __m256& r7) {
    const __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
    const __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
    const __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
    const __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
    const __m256 s0 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0));
    const __m256 s1 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));
    const __m256 s2 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0));
    const __m256 s3 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));
    const __m256 s4 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(1, 0, 1, 0));
    const __m256 s5 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(3, 2, 3, 2));
    const __m256 s6 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(1, 0, 1, 0));
    const __m256 s7 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(3, 2, 3, 2));
    // Lane inserts, not vperm2f128: that one is 8 micro-ops on Zen 1.
    r0 = _mm256_insertf128_ps(s0, _mm256_castps256_ps128(s4), 1);
    r1 = _mm256_insertf128_ps(s1, _mm256_castps256_ps128(s5), 1);
    r2 = _mm256_insertf128_ps(s2, _mm256_castps256_ps128(s6), 1);
    r3 = _mm256_insertf128_ps(s3, _mm256_castps256_ps128(s7), 1);
    r4 = _mm256_insertf128_ps(s4, _mm256_extractf128_ps(s0, 1), 0);
    r5 = _mm256_insertf128_ps(s5, _mm256_extractf128_ps(s1, 1), 0);
    r6 = _mm256_insertf128_ps(s6, _mm256_extractf128_ps(s2, 1), 0);
    r7 = _mm256_insertf128_ps(s7, _mm256_extractf128_ps(s3, 1), 0);
}

// Steps l..l+7 of ROWS source rows (`stride` apart; rows past ROWS read as zero), transposed: dst gets
// 8 vectors of 8 floats, `dst_stride` apart, vector t holding step l+t of each row.
template <int ROWS, typename T>
inline void transpose_8_steps(const T* src, int64_t stride, float* dst, int64_t dst_stride) {
    __m256 r[8];
    for (int i = 0; i < 8; ++i) r[i] = i < ROWS ? load8(src + i * stride) : _mm256_setzero_ps();
    transpose8(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7]);
    for (int t = 0; t < 8; ++t) _mm256_storeu_ps(dst + t * dst_stride, r[t]);
}

// MR rows of A (from row i0, `rows` of them real, the rest zero), depth kc from column pc, as
// panel[l*MR + r]: one register tile's A operand per step l.
template <typename T>
void pack_rows_of_a(const T* A, int64_t lda, int64_t i0, int64_t rows, int64_t pc, int64_t kc, float* panel) {
    int64_t l = 0;
    if (rows == MR) {
        for (; l + 8 <= kc; l += 8) {
            for (int64_t half = 0; half < MR; half += 8) {
                transpose_8_steps<8>(A + (i0 + half) * lda + pc + l, lda, panel + l * MR + half, MR);
            }
        }
    }
    for (; l < kc; ++l) {
        for (int64_t r = 0; r < MR; ++r) {
            panel[l * MR + r] = r < rows ? load1(A + (i0 + r) * lda + pc + l) : 0.0f;
        }
    }
}

// NR columns of B (rows of the B array, from j0, `cols` real, the rest zero) as panel[l*NR + c].
// Full slivers store 8 floats per step l: the 2 beyond NR land where step l+1 (or the next sliver, packed
// after this one, or the PANEL_SLACK) is written next.
constexpr int64_t PANEL_SLACK = 8;
template <typename T>
void pack_cols_of_b(const T* B, int64_t ldb, int64_t j0, int64_t cols, int64_t pc, int64_t kc, float* panel) {
    int64_t l = 0;
    if (cols == NR) {
        const T* src = B + j0 * ldb + pc;
        for (; l + 8 <= kc; l += 8) {
            transpose_8_steps<NR>(src + l, ldb, panel + l * NR, NR);
        }
    }
    for (; l < kc; ++l) {
        for (int64_t c = 0; c < NR; ++c) {
            panel[l * NR + c] = c < cols ? load1(B + (j0 + c) * ldb + pc + l) : 0.0f;
        }
    }
}

// A thread's scratch buffer of at least n elements, never shrunk: resize() value-initializes what a vector
// grows back, so a buffer whose size alternates (a last short block of depth, a last band) was zero-filled
// again on every call (~1% of an SD1 step).
template <typename T>
inline T* scratch(std::vector<T>& buffer, size_t n) {
    if (buffer.size() < n) buffer.resize(n);
    return buffer.data();
}

// A scratch buffer given back once it holds more than 8 MiB: one large call (a VAE's single-head attention
// over 16384 pixels packs 66 MiB per thread) must not stay allocated on every worker thread afterwards.
template <typename T>
inline void release_if_large(std::vector<T>& buffer) {
    if (buffer.capacity() * sizeof(T) > (size_t{8} << 20)) std::vector<T>().swap(buffer);
}

// The cache lines of a weight block that is packed next (rows of runs of bytes), fetched a few at a time
// while the current block's register tiles run. Packing reads a weight once per block at memory speed (an
// SD1 step at 256x256 reads ~1.7 GB of f16 weights, at about the DRAM rate of a Zen 4 pair of cores, 26-33
// GB/s): the tiles hide that wait, and from L2 or L3 the packing is compute.
struct LinePrefetch {
    // Addresses, not pointers: a run's last line may lie past the matrix (prefetches never fault).
    uintptr_t run_start = 0;  // the run of the next line
    int64_t stride = 0, lines_per_row = 0, total = 0, issued = 0;
    int64_t quota = 0;  // lines still to issue during the current call (tile_block(_bf16), a Winograd product)
    // The next line and its place in its run, counted up: a division per line cost more than the prefetch.
    uintptr_t next = 0;
    int64_t next_in_row = 0;
    void start(const void* run0, int64_t row_stride, int64_t run_bytes, int64_t rows) {
        run_start = reinterpret_cast<uintptr_t>(run0);
        stride = row_stride;
        lines_per_row = (run_bytes + 63) / 64 + 1;  // + 1: a run need not start on a line
        total = rows * lines_per_row;
        issued = 0;
        next = run_start;
        next_in_row = 0;
    }
    int64_t left() const { return total - issued; }
    void issue(int64_t n) {
        for (const int64_t end = std::min(total, issued + n); issued < end; ++issued) {
            _mm_prefetch(reinterpret_cast<const char*>(next), _MM_HINT_T1);
            if (++next_in_row == lines_per_row) {
                next_in_row = 0;
                run_start += stride;
                next = run_start;
            } else {
                next += 64;
            }
        }
    }
    // The quota for the next call: one of `parts` equal shares of the lines left.
    void share_over(int64_t parts) { quota = (left() + parts - 1) / parts; }
    // This call's share of the quota, before one of `remaining` equal parts of a tile_block(_bf16) call.
    void issue_part(int64_t remaining) {
        const int64_t n = (quota + remaining - 1) / remaining;
        issue(n);
        quota -= n;
    }
};

// A q8_0 block (ggml's block_q8_0): 32 int8 values and their f16 scale. Patch 0015's quantized conv kernels
// are rows of them; a B operand of this type has ldb counted in blocks.
constexpr int64_t Q8_VALUES = 32;
struct Q8Block {
    uint16_t scale;
    int8_t values[Q8_VALUES];
};
static_assert(sizeof(Q8Block) == 34, "ggml's block_q8_0");

// Where a matrix's run of steps starts and its bytes (a q8_0 row's unit is a block of 32 steps, ld in blocks).
template <typename T>
constexpr int64_t steps_per_unit() {
    return std::is_same<T, Q8Block>::value ? Q8_VALUES : 1;
}
template <typename T>
inline int64_t run_bytes(int64_t kc) {
    return (kc + steps_per_unit<T>() - 1) / steps_per_unit<T>() * int64_t{sizeof(T)};
}
template <typename T>
inline const void* matrix_run(const T* M, int64_t ld, int64_t row, int64_t step) {
    return M + row * ld + step / steps_per_unit<T>();
}

// Values pc..pc+n of a row of blocks as f32, value * scale as ggml's dequantize_row_q8_0 computes them. pc is
// a multiple of 32 (KC and KC_BF16 are) and so is n (a row fills whole blocks).
inline void dequantize_q8(const Q8Block* row, int64_t pc, int64_t n, float* out) {
    for (int64_t b = 0; b < n; b += Q8_VALUES) {
        const Q8Block& block = row[(pc + b) / Q8_VALUES];
        const __m256 scale = _mm256_set1_ps(_cvtsh_ss(block.scale));
        for (int64_t v = 0; v < Q8_VALUES; v += 8) {
            const __m256i q = _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(block.values + v)));
            _mm256_storeu_ps(out + b + v, _mm256_mul_ps(_mm256_cvtepi32_ps(q), scale));
        }
    }
}

// Steps pc..pc+kc of NR columns of a q8_0 B (`cols` real) as f32 rows, kc apart, in a per-thread buffer.
inline const float* dequantized_cols(const Q8Block* B, int64_t ldb, int64_t j0, int64_t cols, int64_t pc,
                                     int64_t kc) {
    thread_local std::vector<float> rows;
    scratch(rows, NR * kc);
    for (int64_t c = 0; c < cols; ++c) dequantize_q8(B + (j0 + c) * ldb, pc, kc, rows.data() + c * kc);
    return rows.data();
}

// Steps l..l+7 (within one block) of ROWS q8_0 rows (ld blocks apart) dequantized as dequantize_q8 does
// and transposed as transpose_8_steps transposes f16 or f32 rows: one pass, no f32 copy of the rows first.
// Where few A slivers use each packed weight (a 1280-channel layer's 64 tokens or pixels at 256x256) the
// packing is a large part of the product.
template <int ROWS>
inline void transpose_8_q8_steps(const Q8Block* row, int64_t ld, int64_t l, float* dst, int64_t dst_stride) {
    const int64_t block = l / Q8_VALUES, offset = l % Q8_VALUES;
    __m256 r[8];
    for (int i = 0; i < 8; ++i) {
        if (i >= ROWS) {
            r[i] = _mm256_setzero_ps();
            continue;
        }
        const Q8Block& b = row[i * ld + block];
        const __m256i q = _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(b.values + offset)));
        r[i] = _mm256_mul_ps(_mm256_cvtepi32_ps(q), _mm256_set1_ps(_cvtsh_ss(b.scale)));
    }
    transpose8(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7]);
    for (int t = 0; t < 8; ++t) _mm256_storeu_ps(dst + t * dst_stride, r[t]);
}

// NR columns of a q8_0 B: full slivers dequantized straight into the panel (kc is a multiple of 32), a last
// short one dequantized first, then packed as f32 rows are.
inline void pack_cols_of_b(const Q8Block* B, int64_t ldb, int64_t j0, int64_t cols, int64_t pc, int64_t kc,
                           float* panel) {
    if (cols == NR) {
        for (int64_t l = 0; l < kc; l += 8) transpose_8_q8_steps<NR>(B + j0 * ldb, ldb, pc + l, panel + l * NR, NR);
        return;
    }
    pack_cols_of_b(dequantized_cols(B, ldb, j0, cols, pc, kc), kc, 0, cols, 0, kc, panel);
}

// One 16x6 register tile over depth kc: C (column stride ldc) = or += a packed A panel times 6 columns of B:
// a packed B panel, or (B_ROWS) 6 f32 rows of B in place, ldb apart.
template <bool B_ROWS>
inline void register_tile(int64_t kc, const float* a, const float* b, int64_t ldb, float* C, int64_t ldc,
                          bool accumulate) {
    const int64_t b_col = B_ROWS ? ldb : 1, b_step = B_ROWS ? 1 : NR;
    const float *b0 = b, *b1 = b + b_col, *b2 = b + 2 * b_col, *b3 = b + 3 * b_col, *b4 = b + 4 * b_col,
                *b5 = b + 5 * b_col;
    __m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps(), c10 = _mm256_setzero_ps(),
           c11 = _mm256_setzero_ps(), c20 = _mm256_setzero_ps(), c21 = _mm256_setzero_ps(),
           c30 = _mm256_setzero_ps(), c31 = _mm256_setzero_ps(), c40 = _mm256_setzero_ps(),
           c41 = _mm256_setzero_ps(), c50 = _mm256_setzero_ps(), c51 = _mm256_setzero_ps();
    for (int64_t l = 0; l < kc; ++l, a += MR) {
        const int64_t o = l * b_step;
        const __m256 a0 = _mm256_loadu_ps(a), a1 = _mm256_loadu_ps(a + 8);
        __m256 bv = _mm256_broadcast_ss(b0 + o);
        c00 = _mm256_fmadd_ps(a0, bv, c00);
        c01 = _mm256_fmadd_ps(a1, bv, c01);
        bv = _mm256_broadcast_ss(b1 + o);
        c10 = _mm256_fmadd_ps(a0, bv, c10);
        c11 = _mm256_fmadd_ps(a1, bv, c11);
        bv = _mm256_broadcast_ss(b2 + o);
        c20 = _mm256_fmadd_ps(a0, bv, c20);
        c21 = _mm256_fmadd_ps(a1, bv, c21);
        bv = _mm256_broadcast_ss(b3 + o);
        c30 = _mm256_fmadd_ps(a0, bv, c30);
        c31 = _mm256_fmadd_ps(a1, bv, c31);
        bv = _mm256_broadcast_ss(b4 + o);
        c40 = _mm256_fmadd_ps(a0, bv, c40);
        c41 = _mm256_fmadd_ps(a1, bv, c41);
        bv = _mm256_broadcast_ss(b5 + o);
        c50 = _mm256_fmadd_ps(a0, bv, c50);
        c51 = _mm256_fmadd_ps(a1, bv, c51);
    }
    const __m256 lo[NR] = {c00, c10, c20, c30, c40, c50};
    const __m256 hi[NR] = {c01, c11, c21, c31, c41, c51};
    for (int64_t j = 0; j < NR; ++j) {
        float* col = C + j * ldc;
        if (accumulate) {
            _mm256_storeu_ps(col, _mm256_add_ps(_mm256_loadu_ps(col), lo[j]));
            _mm256_storeu_ps(col + 8, _mm256_add_ps(_mm256_loadu_ps(col + 8), hi[j]));
        } else {
            _mm256_storeu_ps(col, lo[j]);
            _mm256_storeu_ps(col + 8, hi[j]);
        }
    }
}

// Whether the products of the op this thread runs now round their operands to bf16 (Context's
// cpu_precision="bf16"): set at the start of each op by its caller, from the node's mark (ggml's mul_mat:
// sdcpp_py_gemm_set_bf16) or its userdata (the fused nodes). Only acted on where SDCPP_PY_BF16_GEMM is.
inline thread_local bool bf16_products = false;

// SDCPP_PY_CPU_KERNELS=avx2 keeps our kernels to their AVX2 code on a CPU that has wider units (the
// AVX-512 f32 tiles and the bf16 products off), so that path can be tested and timed there (issue 20);
// ggml's own code in the loaded backend is not affected. Read once: products must not change mid-run.
inline bool wider_kernels_allowed() {
    static const bool allowed = [] {
        const char* restrict_to = std::getenv("SDCPP_PY_CPU_KERNELS");
        return restrict_to == nullptr || std::strcmp(restrict_to, "avx2") != 0;
    }();
    return allowed;
}

#if defined(__AVX512F__)
// 2^y for y within +-126 (the callers clamp it), to ~2e-7 like ggml's e^y: y = n + r (n = round(y), r exact,
// |r| <= 1/2), 2^r from a degree-5 polynomial fitted to it on that range (relative error 2.4e-7), times 2^n. A
// NaN y stays NaN. For the bf16 softmax's weights and the bf16 GEGLU's GELU.
inline __m512 exp2_512(__m512 y) {
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

// A zmm register tile's sums into C (column stride ldc): SLIVERS slivers of 16 rows by COLS columns, stored or
// added to what C holds (the f32 and bf16 tiles alike).
template <int SLIVERS, int COLS = NR>
inline void store_tile_512(const __m512 (&c)[COLS][SLIVERS], float* C, int64_t ldc, bool accumulate) {
#pragma GCC unroll 8
    for (int j = 0; j < COLS; ++j) {
#pragma GCC unroll 2
        for (int s = 0; s < SLIVERS; ++s) {
            float* col = C + j * ldc + s * MR;
            _mm512_storeu_ps(col, accumulate ? _mm512_add_ps(_mm512_loadu_ps(col), c[j][s]) : c[j][s]);
        }
    }
}
#endif

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512BF16__)
#define SDCPP_PY_BF16_GEMM 1

// The bf16 panels hold pairs of steps as one dword (step 2q in its low half, 2q+1 in its high half, rounded
// to nearest even as OpenVINO and PyTorch round to bf16), which vdpbf16ps multiplies and adds in f32: twice
// the f32 FMA rate on Zen 4. A sliver: a_pairs[q*MR + r] (one zmm per pair step); B's NR columns: each its
// own run b_pairs[c*kc2 + q], converted straight from B's rows (no transpose: a weight's or a token's steps
// are contiguous there), read by broadcasts. An odd last step pairs with zero.

// A bf16 value's bits (ggml_bf16_t's), as a type of its own for the overloads below.
struct Bf16 {
    uint16_t bits;
};

inline __mmask16 first_lanes(int64_t n) {
    return n >= 16 ? __mmask16(0xffff) : n <= 0 ? __mmask16(0) : __mmask16((1u << n) - 1);
}

// Values l..l+31 of a row (n of them real, the rest zero) as 16 pairs.
inline __m512i row_pairs(const float* p, int64_t n) {
    const __m512 lo = _mm512_maskz_loadu_ps(first_lanes(n), p);
    const __m512 hi = _mm512_maskz_loadu_ps(first_lanes(n - 16), p + 16);
    return reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(hi, lo));
}
inline __m512i row_pairs(const uint16_t* p, int64_t n) {
    const __m512 lo = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(first_lanes(n), p));
    const __m512 hi = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(first_lanes(n - 16), p + 16));
    return reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(hi, lo));
}

inline __m512i row_pairs(const Bf16* p, int64_t n) {  // already bf16: the pairs are the row's dwords
    const __mmask32 words = n >= 32 ? __mmask32(0xffffffffu) : __mmask32((1u << n) - 1);
    return _mm512_maskz_loadu_epi16(words, p);
}

// NR columns of B (rows j0.. of the B array, `cols` real, the rest zero), steps pc..pc+kc, as pair runs.
template <typename T>
void pair_cols_of_b(const T* B, int64_t ldb, int64_t j0, int64_t cols, int64_t pc, int64_t kc, uint32_t* out) {
    const int64_t kc2 = (kc + 1) / 2;
    for (int64_t c = 0; c < NR; ++c, out += kc2) {
        for (int64_t l = 0; l < kc; l += 32) {
            const int64_t n = std::min<int64_t>(32, kc - l);
            const __m512i pairs = c < cols ? row_pairs(B + (j0 + c) * ldb + pc + l, n) : _mm512_setzero_si512();
            _mm512_mask_storeu_epi32(out + l / 2, first_lanes((n + 1) / 2), pairs);
        }
    }
}

// One q8_0 block's 32 values as 16 pairs: dequantized as dequantize_q8 does (int8 -> f32 times the f16
// scale), rounded as row_pairs rounds f32 values. q8_0 slivers are paired from their blocks in one pass.
inline __m512i block_pairs(const Q8Block& block) {
    const __m512 scale = _mm512_set1_ps(_cvtsh_ss(block.scale));
    const auto values = [&](int v) {
        const __m512i q = _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(block.values + v)));
        return _mm512_mul_ps(_mm512_cvtepi32_ps(q), scale);
    };
    return reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(values(16), values(0)));
}

// The same for a q8_0 B (ldb counted in blocks; pc and kc multiples of 32).
inline void pair_cols_of_b(const Q8Block* B, int64_t ldb, int64_t j0, int64_t cols, int64_t pc, int64_t kc,
                           uint32_t* out) {
    const int64_t kc2 = kc / 2;
    for (int64_t c = 0; c < NR; ++c, out += kc2) {
        for (int64_t l = 0; l < kc; l += Q8_VALUES) {
            _mm512_storeu_si512(out + l / 2, c < cols ? block_pairs(B[(j0 + c) * ldb + (pc + l) / Q8_VALUES])
                                                      : _mm512_setzero_si512());
        }
    }
}

// t[i] = dword i of 16 rows -> t[c] = dword c of each row, in row order.
inline void transpose16(__m512i t[16]) {
    __m512i a[16], b[16];
    for (int k = 0; k < 16; k += 4) {
        a[k + 0] = _mm512_unpacklo_epi32(t[k], t[k + 1]);
        a[k + 1] = _mm512_unpackhi_epi32(t[k], t[k + 1]);
        a[k + 2] = _mm512_unpacklo_epi32(t[k + 2], t[k + 3]);
        a[k + 3] = _mm512_unpackhi_epi32(t[k + 2], t[k + 3]);
        // Lane L of b[k + j]: rows k..k+3 of dword 4L + j.
        b[k + 0] = _mm512_unpacklo_epi64(a[k], a[k + 2]);
        b[k + 1] = _mm512_unpackhi_epi64(a[k], a[k + 2]);
        b[k + 2] = _mm512_unpacklo_epi64(a[k + 1], a[k + 3]);
        b[k + 3] = _mm512_unpackhi_epi64(a[k + 1], a[k + 3]);
    }
    for (int j = 0; j < 4; ++j) {
        const __m512i even0 = _mm512_shuffle_i32x4(b[j], b[4 + j], 0x88), odd0 = _mm512_shuffle_i32x4(b[j], b[4 + j], 0xdd);
        const __m512i even1 = _mm512_shuffle_i32x4(b[8 + j], b[12 + j], 0x88),
                      odd1 = _mm512_shuffle_i32x4(b[8 + j], b[12 + j], 0xdd);
        t[j] = _mm512_shuffle_i32x4(even0, even1, 0x88);
        t[8 + j] = _mm512_shuffle_i32x4(even0, even1, 0xdd);
        t[4 + j] = _mm512_shuffle_i32x4(odd0, odd1, 0x88);
        t[12 + j] = _mm512_shuffle_i32x4(odd0, odd1, 0xdd);
    }
}

// MR rows of A (from i0, `rows` real, the rest zero), steps pc..pc+kc, as an A sliver of pairs.
template <typename T>
void pair_rows_of_a(const T* A, int64_t lda, int64_t i0, int64_t rows, int64_t pc, int64_t kc, uint32_t* panel) {
    __m512i t[16];
    for (int64_t l = 0; l < kc; l += 32) {
        const int64_t n = std::min<int64_t>(32, kc - l);
        for (int64_t r = 0; r < MR; ++r) {
            t[r] = r < rows ? row_pairs(A + (i0 + r) * lda + pc + l, n) : _mm512_setzero_si512();
        }
        transpose16(t);
        const int64_t pairs = (n + 1) / 2;
        if (pairs == 16) {  // a constant count: unrolled, 16 stores (a variable one became a memcpy of t, spilled)
            for (int64_t q = 0; q < 16; ++q) _mm512_storeu_si512(panel + (l / 2 + q) * MR, t[q]);
        } else {
            for (int64_t q = 0; q < pairs; ++q) _mm512_storeu_si512(panel + (l / 2 + q) * MR, t[q]);
        }
    }
}

// The same for q8_0 rows (lda counted in blocks; pc and kc multiples of 32: a block per row and 32 steps).
inline void pair_rows_of_a(const Q8Block* A, int64_t lda, int64_t i0, int64_t rows, int64_t pc, int64_t kc,
                           uint32_t* panel) {
    __m512i t[16];
    for (int64_t l = 0; l < kc; l += Q8_VALUES) {
        for (int64_t r = 0; r < MR; ++r) {
            t[r] = r < rows ? block_pairs(A[(i0 + r) * lda + (pc + l) / Q8_VALUES]) : _mm512_setzero_si512();
        }
        transpose16(t);
        for (int64_t q = 0; q < Q8_VALUES / 2; ++q) _mm512_storeu_si512(panel + (l / 2 + q) * MR, t[q]);
    }
}

// Two steps of 16 lanes as 16 bf16 pairs, lane by lane (the even step's value in the low half), rounded to
// nearest even: the low 16 words of the conversion are the even step's lanes, the high 16 the odd step's.
inline __m512i lane_pairs(__m512 even, __m512 odd) {
    alignas(64) static const uint16_t interleave[32] = {0, 16, 1, 17, 2,  18, 3,  19, 4,  20, 5,  21, 6,  22, 7,  23,
                                                        8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
    return _mm512_permutexvar_epi16(_mm512_load_si512(interleave),
                                    reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(odd, even)));
}

// A packed f32 panel (steps x width, panel[l*width + w]) as pairs: out[(l/2)*width + w]. For A operands that
// pack f32 slivers of their own (the convolution's image columns).
inline void pair_steps_bf16(const float* panel, int64_t steps, int64_t width, uint32_t* out) {
    for (int64_t l = 0; l < steps; l += 2, out += width) {
        const float* even = panel + l * width;
        for (int64_t w = 0; w < width; w += 16) {
            const __mmask16 lanes = first_lanes(width - w);
            const __m512 e = _mm512_maskz_loadu_ps(lanes, even + w);
            const __m512 o = l + 1 < steps ? _mm512_maskz_loadu_ps(lanes, even + width + w) : _mm512_setzero_ps();
            _mm512_mask_storeu_epi32(out + w, lanes, lane_pairs(e, o));
        }
    }
}

// SLIVERS x 16 rows x COLS columns (NR, or 8 where a product's columns come in eights: attention's channels)
// over kc2 pair steps into C (column stride ldc); B's columns are runs of kc2 pairs, one after another. row_max
// (if given): each sliver's running maximum over the columns (its rows' lanes) of this call's sums, from the
// registers (not of what C holds: meant for accumulate false).
template <int SLIVERS, int COLS = NR>
inline void register_tile_bf16(int64_t kc2, const uint32_t* a, int64_t a_sliver_stride, const uint32_t* b,
                               float* C, int64_t ldc, bool accumulate, __m512* row_max = nullptr) {
    __m512 c[COLS][SLIVERS];
#pragma GCC unroll 8
    for (int j = 0; j < COLS; ++j) {
#pragma GCC unroll 2
        for (int s = 0; s < SLIVERS; ++s) c[j][s] = _mm512_setzero_ps();
    }
    const uint32_t* columns[COLS];
#pragma GCC unroll 8
    for (int j = 0; j < COLS; ++j) columns[j] = b + j * kc2;
    for (int64_t q = 0; q < kc2; ++q, a += MR) {
        __m512bh av[SLIVERS];
#pragma GCC unroll 2
        for (int s = 0; s < SLIVERS; ++s) {
            av[s] = reinterpret_cast<__m512bh>(_mm512_loadu_si512(a + s * a_sliver_stride));
        }
#pragma GCC unroll 8
        for (int j = 0; j < COLS; ++j) {
            const __m512bh bv = reinterpret_cast<__m512bh>(_mm512_set1_epi32(static_cast<int>(columns[j][q])));
#pragma GCC unroll 2
            for (int s = 0; s < SLIVERS; ++s) c[j][s] = _mm512_dpbf16_ps(c[j][s], av[s], bv);
        }
    }
    store_tile_512<SLIVERS, COLS>(c, C, ldc, accumulate);
    if (row_max != nullptr) {
        for (int s = 0; s < SLIVERS; ++s) {
            __m512 m = row_max[s];
#pragma GCC unroll 8
            for (int j = 0; j < COLS; ++j) m = _mm512_max_ps(m, c[j][s]);
            row_max[s] = m;
        }
    }
}

#if defined(__AMX_TILE__) && defined(__linux__)
// Intel AMX (Sapphire Rapids and later; issue 20): TDPBF16PS multiplies a tile of 16 rows x 32 bf16 values by a
// tile of 16 rows x 16 bf16 pairs into 16 x 16 f32 sums, 16 times vdpbf16ps's work per instruction (measured on
// a 2-core Xeon VM, runners/fma_peak.c: 6.0-6.8 TFLOP/s against AVX512_BF16's 0.21-0.23). The operands are our
// panels as they are: B's paired columns are rows of a tile (column j's pairs are b_pairs + j*kc2, slivers back
// to back), an A sliver's pairs (a_pairs[q*MR + r]) are the second operand's pair rows, and C's columns are the
// sums' rows.
// The portable wheel's sapphirerapids variant is built without -mamx-bf16: the functions name their target.
#define SDCPP_PY_AMX_BF16 1
#define SDCPP_PY_AMX_TARGET __attribute__((target("amx-tile,amx-bf16")))
}  // namespace sdcpp_py_gemm
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
namespace sdcpp_py_gemm {

// Whether the bf16 products take AMX tiles: the CPU has AMX-TILE and AMX-BF16, the kernel enabled their state
// (XCR0 bits 17-18) and granted it to this process (arch_prctl ARCH_REQ_XCOMP_PERM: Linux refuses it where a
// thread's signal stack is too small for the larger frame, and then the products stay on AVX512_BF16).
// SDCPP_PY_CPU_KERNELS=avx512 keeps them on AVX512_BF16 (to test and time that path here), =avx2 as before.
inline bool amx_bf16_usable() {
    static const bool usable = [] {
        const char* restrict_to = std::getenv("SDCPP_PY_CPU_KERNELS");
        if (!wider_kernels_allowed() || (restrict_to != nullptr && std::strcmp(restrict_to, "avx512") == 0)) return false;
        unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
        if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return false;
        constexpr unsigned AMX_BF16 = 1u << 22, AMX_TILE = 1u << 24;
        if ((edx & AMX_BF16) == 0 || (edx & AMX_TILE) == 0) return false;
        if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx) || (ecx & (1u << 27)) == 0) return false;  // OSXSAVE
        uint32_t xcr0_low = 0, xcr0_high = 0;
        __asm__ volatile("xgetbv" : "=a"(xcr0_low), "=d"(xcr0_high) : "c"(0));
        constexpr uint32_t TILE_STATE = (1u << 17) | (1u << 18);  // XTILECFG, XTILEDATA
        if ((xcr0_low & TILE_STATE) != TILE_STATE) return false;
        constexpr long ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18;
        return syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
    }();
    return usable;
}

// The tile shapes (LDTILECFG's 64-byte block, palette 1). Tiles 0-3: C, two groups of columns x two slivers of
// rows (tile 2g + s), each `cols` columns of C (its rows) by `rows` rows of C (4-byte elements); 4-5: B's
// columns of group g, `pairs` pairs each; 6-7: A's sliver s, `pairs` pair rows of `rows` dwords.
struct alignas(64) TileShapes {
    uint8_t palette = 1, start_row = 0, reserved[14] = {};
    uint16_t bytes_per_row[16] = {};
    uint8_t rows[16] = {};
};
static_assert(sizeof(TileShapes) == 64, "LDTILECFG reads 64 bytes");
SDCPP_PY_AMX_TARGET inline void configure_tiles(int64_t cols, int64_t rows, int64_t pairs) {
    TileShapes shapes;
    for (int t = 0; t < 8; ++t) {
        const bool sums = t < 4, b_columns = t == 4 || t == 5;
        shapes.rows[t] = static_cast<uint8_t>(sums || b_columns ? cols : pairs);
        shapes.bytes_per_row[t] = static_cast<uint16_t>(4 * (b_columns ? pairs : rows));
    }
    _tile_loadconfig(&shapes);
}

// GROUPS x SLIVERS C tiles (column groups 16 apart, slivers MR rows apart) over `steps` steps of `pairs` pairs
// (the shapes configured): A slivers a_stride apart, B's columns b_stride pairs apart. Adds to C or stores.
template <int GROUPS, int SLIVERS>
SDCPP_PY_AMX_TARGET void amx_tiles(int64_t steps, int64_t pairs, const uint32_t* a, int64_t a_stride,
                                   const uint32_t* b, int64_t b_stride, float* C, int64_t ldc, bool accumulate) {
    const int64_t c_bytes = ldc * 4, b_bytes = b_stride * 4;
    // Group 0 sliver 1, group 1 slivers 0 and 1, group 1's columns: formed only where they exist.
    float* const c1 = SLIVERS == 2 ? C + MR : C;
    float* const c2 = GROUPS == 2 ? C + 16 * ldc : C;
    float* const c3 = GROUPS == 2 && SLIVERS == 2 ? C + 16 * ldc + MR : C;
    const uint32_t* const b1 = GROUPS == 2 ? b + 16 * b_stride : b;
    if (accumulate) {
        _tile_loadd(0, C, c_bytes);
        if constexpr (SLIVERS == 2) _tile_loadd(1, c1, c_bytes);
        if constexpr (GROUPS == 2) _tile_loadd(2, c2, c_bytes);
        if constexpr (GROUPS == 2 && SLIVERS == 2) _tile_loadd(3, c3, c_bytes);
    } else {
        _tile_zero(0);
        if constexpr (SLIVERS == 2) _tile_zero(1);
        if constexpr (GROUPS == 2) _tile_zero(2);
        if constexpr (GROUPS == 2 && SLIVERS == 2) _tile_zero(3);
    }
    for (int64_t q = 0; q < steps; ++q) {
        const int64_t pair = q * pairs;
        _tile_loadd(4, b + pair, b_bytes);
        _tile_loadd(6, a + pair * MR, 64);
        if constexpr (SLIVERS == 2) _tile_loadd(7, a + a_stride + pair * MR, 64);
        _tile_dpbf16ps(0, 4, 6);
        if constexpr (SLIVERS == 2) _tile_dpbf16ps(1, 4, 7);
        if constexpr (GROUPS == 2) {
            _tile_loadd(5, b1 + pair, b_bytes);
            _tile_dpbf16ps(2, 5, 6);
            if constexpr (SLIVERS == 2) _tile_dpbf16ps(3, 5, 7);
        }
    }
    _tile_stored(0, C, c_bytes);
    if constexpr (SLIVERS == 2) _tile_stored(1, c1, c_bytes);
    if constexpr (GROUPS == 2) _tile_stored(2, c2, c_bytes);
    if constexpr (GROUPS == 2 && SLIVERS == 2) _tile_stored(3, c3, c_bytes);
}

// tile_block_bf16 on AMX: the same operands and C. Whole groups of 16 columns by whole slivers first, then the
// last columns and the last short sliver as tiles of fewer rows or elements (no read past the panels: a short
// sliver's padding rows are not multiplied); the depth in equal steps of up to 16 pairs where they divide it (a
// head of 40 channels: 2 x 10 pairs), else steps of 16 and one of the rest. The tiles are released at the end:
// ggml's own AMX kernels (int8, for its extra buffer types, which the core does not use) keep their tile
// configuration from call to call and would find it gone.
SDCPP_PY_AMX_TARGET inline void tile_block_amx(int64_t rows, int64_t cols, int64_t kc2, const uint32_t* a_pairs,
                                               const uint32_t* b_pairs, float* C, int64_t ldc, bool accumulate,
                                               int64_t a_stride, LinePrefetch* prefetch_a, LinePrefetch* prefetch_b) {
    // GCC's tile loads are asm without a memory operand: the panels written just before must reach memory first.
    __asm__ __volatile__("" ::: "memory");
    const int64_t whole_cols = cols / 16 * 16, whole_rows = rows / MR * MR;
    const int64_t equal_steps = (kc2 + 15) / 16, step_pairs = kc2 % equal_steps == 0 ? kc2 / equal_steps : 16;
    const int64_t full_steps = kc2 / step_pairs, rest = kc2 % step_pairs;
    struct Part {
        int64_t j0, j1, i0, i1;
    };
    const Part parts[4] = {{0, whole_cols, 0, whole_rows},
                           {whole_cols, cols, 0, whole_rows},
                           {0, whole_cols, whole_rows, rows},
                           {whole_cols, cols, whole_rows, rows}};
    // The prefetches' quotas spread over the first pass's column groups.
    int64_t groups_left = (whole_cols + 31) / 32 + (cols > whole_cols ? 1 : 0);
    for (const Part& part : parts) {
        if (part.j0 == part.j1 || part.i0 == part.i1) continue;
        const int64_t tile_cols = std::min<int64_t>(16, part.j1 - part.j0), tile_rows = std::min(MR, part.i1 - part.i0);
        const bool first_pass_part = part.i0 == 0;
        for (int pass = 0; pass < 2; ++pass) {
            const int64_t steps = pass == 0 ? full_steps : (rest > 0 ? 1 : 0);
            if (steps == 0) continue;
            const int64_t pairs = pass == 0 ? step_pairs : rest, pair0 = pass == 0 ? 0 : full_steps * step_pairs;
            const bool add = accumulate || (pass == 1 && full_steps > 0);
            configure_tiles(tile_cols, tile_rows, pairs);
            for (int64_t j = part.j0; j < part.j1;) {
                const bool two_groups = j + 32 <= part.j1;
                if (pass == 0 && first_pass_part && groups_left > 0) {
                    if (prefetch_a != nullptr) prefetch_a->issue_part(groups_left);
                    if (prefetch_b != nullptr) prefetch_b->issue_part(groups_left);
                    --groups_left;
                }
                const uint32_t* b = b_pairs + j * kc2 + pair0;
                for (int64_t i = part.i0; i < part.i1;) {
                    const bool two_slivers = i + 2 * MR <= part.i1;
                    const uint32_t* a = a_pairs + i / MR * a_stride + pair0 * MR;
                    float* c = C + j * ldc + i;
                    if (two_groups && two_slivers) amx_tiles<2, 2>(steps, pairs, a, a_stride, b, kc2, c, ldc, add);
                    else if (two_groups) amx_tiles<2, 1>(steps, pairs, a, a_stride, b, kc2, c, ldc, add);
                    else if (two_slivers) amx_tiles<1, 2>(steps, pairs, a, a_stride, b, kc2, c, ldc, add);
                    else amx_tiles<1, 1>(steps, pairs, a, a_stride, b, kc2, c, ldc, add);
                    i += two_slivers ? 2 * MR : MR;
                }
                j += two_groups ? 32 : 16;
            }
        }
    }
    if (prefetch_a != nullptr) prefetch_a->issue_part(1);  // what is left of the quotas
    if (prefetch_b != nullptr) prefetch_b->issue_part(1);
    _tile_release();  // the tiles' state back to its initial one: cheaper to save at a context switch
}
#endif

// Register tiles over a rows x cols block of C at kc2 pair steps: A slivers at a_pairs + si*a_stride
// (default MR*kc2: back to back), B's column slivers at b_pairs + sj*NR*kc2 (column j at b_pairs + j*kc2). Two
// A slivers per tile where there are: 12 accumulators hide the dot product's latency. Each prefetch given issues
// its quota of lines spread over the B slivers. Where AMX tiles are usable they take the block (tile_block_amx;
// the prefetches spread over its groups of 16 columns).
inline void tile_block_bf16(int64_t rows, int64_t cols, int64_t kc2, const uint32_t* a_pairs, const uint32_t* b_pairs,
                            float* C, int64_t ldc, bool accumulate, int64_t a_stride = 0,
                            LinePrefetch* prefetch_a = nullptr, LinePrefetch* prefetch_b = nullptr) {
    if (a_stride == 0) a_stride = MR * kc2;
#if defined(SDCPP_PY_AMX_BF16)
    if (amx_bf16_usable()) {
        tile_block_amx(rows, cols, kc2, a_pairs, b_pairs, C, ldc, accumulate, a_stride, prefetch_a, prefetch_b);
        return;
    }
#endif
    const int64_t m_slivers = (rows + MR - 1) / MR, n_slivers = (cols + NR - 1) / NR;
    alignas(64) float edge[NR * MR];
    for (int64_t sj = 0; sj < n_slivers; ++sj) {
        if (prefetch_a != nullptr) prefetch_a->issue_part(n_slivers - sj);
        if (prefetch_b != nullptr) prefetch_b->issue_part(n_slivers - sj);
        const int64_t j = sj * NR, sliver_cols = std::min(NR, cols - j);
        const uint32_t* b = b_pairs + sj * NR * kc2;
        for (int64_t si = 0; si < m_slivers;) {
            const int64_t i = si * MR;
            const uint32_t* a = a_pairs + si * a_stride;
            float* c = C + j * ldc + i;
            if (sliver_cols == NR && i + 2 * MR <= rows) {
                register_tile_bf16<2>(kc2, a, a_stride, b, c, ldc, accumulate);
                si += 2;
                continue;
            }
            const int64_t sliver_rows = std::min(MR, rows - i);
            if (sliver_cols == NR && sliver_rows == MR) {
                register_tile_bf16<1>(kc2, a, a_stride, b, c, ldc, accumulate);
            } else {
                register_tile_bf16<1>(kc2, a, a_stride, b, edge, MR, false);
                for (int64_t jj = 0; jj < sliver_cols; ++jj) {
                    for (int64_t ii = 0; ii < sliver_rows; ++ii) {
                        const float v = edge[jj * MR + ii];
                        c[jj * ldc + ii] = accumulate ? c[jj * ldc + ii] + v : v;
                    }
                }
            }
            ++si;
        }
    }
}
#endif

#if defined(__AVX512F__)
// register_tile on AVX-512: SLIVERS A slivers (a_sliver_stride apart) x NR columns, a zmm per sliver and
// step: two slivers' 12 accumulators do the 16x6 tile's work twice per step with half the loads and
// instructions per FMA. Each lane's FMA chain is the 16x6 tile's, so the sums are bitwise the same.
template <bool B_ROWS, int SLIVERS>
inline void register_tile_512(int64_t kc, const float* a, int64_t a_sliver_stride, const float* b, int64_t ldb,
                              float* C, int64_t ldc, bool accumulate) {
    const int64_t b_col = B_ROWS ? ldb : 1, b_step = B_ROWS ? 1 : NR;
    const float* const columns[NR] = {b, b + b_col, b + 2 * b_col, b + 3 * b_col, b + 4 * b_col, b + 5 * b_col};
    __m512 c[NR][SLIVERS];
#pragma GCC unroll 6
    for (int j = 0; j < NR; ++j) {
#pragma GCC unroll 2
        for (int s = 0; s < SLIVERS; ++s) c[j][s] = _mm512_setzero_ps();
    }
    for (int64_t l = 0; l < kc; ++l, a += MR) {
        const int64_t o = l * b_step;
        __m512 av[SLIVERS];
#pragma GCC unroll 2
        for (int s = 0; s < SLIVERS; ++s) av[s] = _mm512_loadu_ps(a + s * a_sliver_stride);
#pragma GCC unroll 6
        for (int j = 0; j < NR; ++j) {
            const __m512 bv = _mm512_set1_ps(columns[j][o]);
#pragma GCC unroll 2
            for (int s = 0; s < SLIVERS; ++s) c[j][s] = _mm512_fmadd_ps(av[s], bv, c[j][s]);
        }
    }
    store_tile_512<SLIVERS>(c, C, ldc, accumulate);
}
#endif

// Register tiles over a rows x cols block of C (C points at its first element) at depth kc. A: packed
// slivers, sliver si at a_panels + si*a_stride (default MR*kc: back to back). B: packed slivers at
// b_panels + sj*NR*kc or, where b_rows is given, whole slivers read in place as f32 rows (b_rows + j*ldb); a
// last short sliver is always packed.
inline void tile_block(int64_t rows, int64_t cols, int64_t kc, const float* a_panels, const float* b_panels,
                       const float* b_rows, int64_t ldb, float* C, int64_t ldc, bool accumulate,
                       int64_t a_stride = 0, LinePrefetch* prefetch_a = nullptr,
                       LinePrefetch* prefetch_b = nullptr) {
    if (a_stride == 0) a_stride = MR * kc;
    alignas(32) float edge[NR * MR];
    const int64_t m_slivers = (rows + MR - 1) / MR, n_slivers = (cols + NR - 1) / NR;
#if defined(__AVX512F__)
    const bool zmm = wider_kernels_allowed();
#endif
    for (int64_t sj = 0; sj < n_slivers; ++sj) {
        if (prefetch_a != nullptr) prefetch_a->issue_part(n_slivers - sj);
        if (prefetch_b != nullptr) prefetch_b->issue_part(n_slivers - sj);
        const int64_t j = sj * NR, sliver_cols = std::min(NR, cols - j);
        const bool in_place = b_rows != nullptr && sliver_cols == NR;
        const float* b = in_place ? b_rows + j * ldb : b_panels + sj * NR * kc;
        for (int64_t si = 0; si < m_slivers; ++si) {
            const int64_t i = si * MR, sliver_rows = std::min(MR, rows - i);
            const float* a = a_panels + si * a_stride;
            float* c = C + j * ldc + i;
#if defined(__AVX512F__)
            if (zmm && sliver_cols == NR && sliver_rows == MR) {
                if (i + 2 * MR <= rows) {  // two whole slivers
                    if (in_place) register_tile_512<true, 2>(kc, a, a_stride, b, ldb, c, ldc, accumulate);
                    else register_tile_512<false, 2>(kc, a, a_stride, b, ldb, c, ldc, accumulate);
                    ++si;
                } else if (in_place) {
                    register_tile_512<true, 1>(kc, a, a_stride, b, ldb, c, ldc, accumulate);
                } else {
                    register_tile_512<false, 1>(kc, a, a_stride, b, ldb, c, ldc, accumulate);
                }
                continue;
            }
#endif
            if (sliver_rows == MR && sliver_cols == NR) {
                if (in_place) register_tile<true>(kc, a, b, ldb, c, ldc, accumulate);
                else register_tile<false>(kc, a, b, ldb, c, ldc, accumulate);
                continue;
            }
            if (in_place) register_tile<true>(kc, a, b, ldb, edge, MR, false);
            else register_tile<false>(kc, a, b, ldb, edge, MR, false);
            for (int64_t jj = 0; jj < sliver_cols; ++jj) {
                for (int64_t ii = 0; ii < sliver_rows; ++ii) {
                    const float v = edge[jj * MR + ii];
                    c[jj * ldc + ii] = accumulate ? c[jj * ldc + ii] + v : v;
                }
            }
        }
    }
}

// A as rows in memory, f16 or f32. An A operand is anything with this pack(): patch 0007's convolution
// packs its rows straight from the image instead.
template <typename T>
struct RowsOfA {
    const T* A;
    int64_t lda;
    void pack(int64_t i0, int64_t rows, int64_t pc, int64_t kc, float* panel) const {
        pack_rows_of_a(A, lda, i0, rows, pc, kc, panel);
    }
#if defined(SDCPP_PY_BF16_GEMM)
    void pack_pairs(int64_t i0, int64_t rows, int64_t pc, int64_t kc, uint32_t* panel) const {
        pair_rows_of_a(A, lda, i0, rows, pc, kc, panel);
    }
#endif
};

// A q8_0 weight's rows (patch 0015: linear layers of a weight_type="q8_0" model), lda counted in blocks:
// dequantized as ggml does, then packed as f32 rows, so that activations stay f32 (ggml's own q8_0 product
// rounds them to q8_0 too).
template <>
struct RowsOfA<Q8Block> {
    const Q8Block* A;
    int64_t lda;
    const float* dequantized(int64_t i0, int64_t rows, int64_t pc, int64_t kc) const {
        thread_local std::vector<float> values;
        scratch(values, MR * kc);
        for (int64_t r = 0; r < rows; ++r) dequantize_q8(A + (i0 + r) * lda, pc, kc, values.data() + r * kc);
        return values.data();
    }
    void pack(int64_t i0, int64_t rows, int64_t pc, int64_t kc, float* panel) const {
        if (rows == MR) {  // straight into the panel, 8 rows by 8 steps at a time (kc is a multiple of 32)
            for (int64_t l = 0; l < kc; l += 8) {
                for (int64_t half = 0; half < MR; half += 8) {
                    transpose_8_q8_steps<8>(A + (i0 + half) * lda, lda, pc + l, panel + l * MR + half, MR);
                }
            }
            return;
        }
        pack_rows_of_a(dequantized(i0, rows, pc, kc), kc, 0, rows, 0, kc, panel);
    }
#if defined(SDCPP_PY_BF16_GEMM)
    void pack_pairs(int64_t i0, int64_t rows, int64_t pc, int64_t kc, uint32_t* panel) const {
        pair_rows_of_a(A, lda, i0, rows, pc, kc, panel);
    }
#endif
};

// A operands read from rows in memory (RowsOfA: ggml's mul_mat src0, mostly weights), whose next blocks are
// prefetched, and the lines of such a block (rows i0.., steps pc..pc+kc) as `next`.
template <typename APack>
struct RowsInMemory : std::false_type {};
template <typename T>
struct RowsInMemory<RowsOfA<T>> : std::true_type {};

template <typename APack>
void prefetch_rows(const APack& A, int64_t i0, int64_t rows, int64_t pc, int64_t kc, LinePrefetch& next) {
    next = LinePrefetch{};
    if constexpr (RowsInMemory<APack>::value) {
        using T = std::remove_cv_t<std::remove_pointer_t<decltype(A.A)>>;
        next.start(matrix_run(A.A, A.lda, i0, pc), A.lda * int64_t{sizeof(T)}, run_bytes<T>(kc), rows);
        next.share_over(1);
    }
}

// The blocks packed after A's block (ic, pc) and B's block (jc, pc) in gemm_block's loop order (blocks `depth`
// steps deep): A's next rows at these steps, else its first rows at the next steps; B's next steps of these
// columns, else the next columns' first steps. B only where it is not f32 (the convolution's f16 or q8_0
// kernel; an f16 or bf16 src1 of mul_mat too, harmlessly; f32 activations are mostly in cache already).
template <typename APack>
void prefetch_next_rows(const APack& A, int64_t ic, int64_t pc, int64_t m0, int64_t m1, int64_t k, int64_t depth,
                        LinePrefetch& next) {
    if (ic + MC < m1) prefetch_rows(A, ic + MC, std::min(MC, m1 - ic - MC), pc, std::min(depth, k - pc), next);
    else if (pc + depth < k) prefetch_rows(A, m0, std::min(MC, m1 - m0), pc + depth, std::min(depth, k - pc - depth), next);
    else next = LinePrefetch{};
}
template <typename TB>
void prefetch_next_cols(const TB* B, int64_t ldb, int64_t jc, int64_t pc, int64_t n1, int64_t k, int64_t depth,
                        LinePrefetch& next) {
    next = LinePrefetch{};
    const int64_t next_pc = pc + depth < k ? pc + depth : 0, next_jc = next_pc > 0 ? jc : jc + NC;
    if (!std::is_same<TB, float>::value && next_jc < n1) {
        next.start(matrix_run(B, ldb, next_jc, next_pc), ldb * int64_t{sizeof(TB)},
                   run_bytes<TB>(std::min(depth, k - next_pc)), std::min(NC, n1 - next_jc));
    }
}

#if defined(SDCPP_PY_BF16_GEMM)
// Depth of a bf16 block: twice the f32 one, so that its paired panels hold the f32 panels' bytes (a B sliver
// in L1, A slivers in L2), and a weight's rows are read in 1 KiB runs (f16) rather than 512 bytes.
constexpr int64_t KC_BF16 = 2 * KC;

// gemm_block with bf16 products: the same blocks, KC_BF16 deep, B's columns paired once per block, A's
// slivers per MC block.
template <typename APack, typename TB>
void gemm_block_bf16(int64_t m0, int64_t m1, int64_t n0, int64_t n1, int64_t k, const APack& A, const TB* B,
                     int64_t ldb, float* C, int64_t ldc) {
    thread_local std::vector<uint32_t> a_pairs, b_pairs;
    // The next blocks of A where it is read as rows (ggml's mul_mat: src0, mostly weights) and of B.
    LinePrefetch next_a, next_b;
    for (int64_t jc = n0; jc < n1; jc += NC) {
        const int64_t nc = std::min(NC, n1 - jc);
        const int64_t n_slivers = (nc + NR - 1) / NR;
        for (int64_t pc = 0; pc < k; pc += KC_BF16) {
            const int64_t kc = std::min(KC_BF16, k - pc), kc2 = (kc + 1) / 2;
            scratch(b_pairs, n_slivers * NR * kc2);
            for (int64_t s = 0; s < n_slivers; ++s) {
                pair_cols_of_b(B, ldb, jc + s * NR, std::min(NR, nc - s * NR), pc, kc, b_pairs.data() + s * NR * kc2);
            }
            prefetch_next_cols(B, ldb, jc, pc, n1, k, KC_BF16, next_b);
            const int64_t ic_blocks = (m1 - m0 + MC - 1) / MC;
            for (int64_t ic = m0, block = 0; ic < m1; ic += MC, ++block) {
                const int64_t mc = std::min(MC, m1 - ic);
                const int64_t m_slivers = (mc + MR - 1) / MR;
                scratch(a_pairs, m_slivers * MR * kc2);
                for (int64_t s = 0; s < m_slivers; ++s) {
                    A.pack_pairs(ic + s * MR, std::min(MR, mc - s * MR), pc, kc, a_pairs.data() + s * MR * kc2);
                }
                prefetch_next_rows(A, ic, pc, m0, m1, k, KC_BF16, next_a);
                next_b.share_over(ic_blocks - block);
                tile_block_bf16(mc, nc, kc2, a_pairs.data(), b_pairs.data(), C + jc * ldc + ic, ldc, pc > 0, 0, &next_a,
                                &next_b);
            }
        }
    }
}
#endif

// C rows [m0, m1) x columns [n0, n1), all of depth k.
template <typename APack, typename TB>
void gemm_block(int64_t m0, int64_t m1, int64_t n0, int64_t n1, int64_t k, const APack& A, const TB* B,
                int64_t ldb, float* C, int64_t ldc) {
    // Reused across calls on ggml's worker threads; freed when they end.
    thread_local std::vector<float> a_panels, b_panels;
    LinePrefetch next_a, next_b;
    for (int64_t jc = n0; jc < n1; jc += NC) {
        const int64_t nc = std::min(NC, n1 - jc);
        const int64_t n_slivers = (nc + NR - 1) / NR;
        for (int64_t pc = 0; pc < k; pc += KC) {
            const int64_t kc = std::min(KC, k - pc);
            const bool accumulate = pc > 0;
            // Packing B pays off when many A slivers reuse it. Against few (attention's V x softmax: 40 rows
            // by 4096 x 4096) f32 B is read in place, its rows being the broadcast streams; only a last sliver
            // of fewer than NR columns is packed then.
            const bool b_rows = std::is_same<TB, float>::value && m1 - m0 <= 4 * MR;
            scratch(b_panels, n_slivers * NR * kc + PANEL_SLACK);
            for (int64_t s = 0; s < n_slivers; ++s) {
                const int64_t cols = std::min(NR, nc - s * NR);
                if (!b_rows || cols < NR) {
                    pack_cols_of_b(B, ldb, jc + s * NR, cols, pc, kc, b_panels.data() + s * NR * kc);
                }
            }
            const float* b_in_place = b_rows ? reinterpret_cast<const float*>(B) + jc * ldb + pc : nullptr;
            // The weights' next blocks, fetched during this block's tiles.
            prefetch_next_cols(B, ldb, jc, pc, n1, k, KC, next_b);
            const int64_t ic_blocks = (m1 - m0 + MC - 1) / MC;
            for (int64_t ic = m0, block = 0; ic < m1; ic += MC, ++block) {
                const int64_t mc = std::min(MC, m1 - ic);
                const int64_t m_slivers = (mc + MR - 1) / MR;
                scratch(a_panels, m_slivers * MR * kc);
                for (int64_t s = 0; s < m_slivers; ++s) {
                    A.pack(ic + s * MR, std::min(MR, mc - s * MR), pc, kc, a_panels.data() + s * MR * kc);
                }
                prefetch_next_rows(A, ic, pc, m0, m1, k, KC, next_a);
                next_b.share_over(ic_blocks - block);
                tile_block(mc, nc, kc, a_panels.data(), b_panels.data(), b_in_place, ldb, C + jc * ldc + ic, ldc,
                           accumulate, 0, &next_a, &next_b);
            }
        }
    }
}

// This thread's share of C: whole register tiles along the longer side, so that each thread packs half of
// the larger operand and all of the smaller one. No barrier: shares do not overlap. Empty: m0 == m1.
struct Share {
    int64_t m0, m1, n0, n1;
};
inline Share share_of(int ith, int nth, int64_t m, int64_t n) {
    const int64_t m_tiles = (m + MR - 1) / MR, n_tiles = (n + NR - 1) / NR;
    if (m >= n && m_tiles >= nth) {
        const int64_t t0 = m_tiles * ith / nth, t1 = m_tiles * (ith + 1) / nth;
        return t0 < t1 ? Share{t0 * MR, std::min(m, t1 * MR), 0, n} : Share{0, 0, 0, 0};
    }
    const int64_t t0 = n_tiles * ith / nth, t1 = n_tiles * (ith + 1) / nth;
    return t0 < t1 ? Share{0, m, t0 * NR, std::min(n, t1 * NR)} : Share{0, 0, 0, 0};
}

#if defined(SDCPP_PY_BF16_GEMM)
// This thread's share on the bf16 path only (bf16 weights have no f32 path here).
template <typename APack, typename TB>
Share gemm_share_bf16(int ith, int nth, int64_t m, int64_t n, int64_t k, const APack& A, const TB* B, int64_t ldb,
                      float* C, int64_t ldc) {
    const Share share = share_of(ith, nth, m, n);
    if (share.m0 < share.m1) gemm_block_bf16(share.m0, share.m1, share.n0, share.n1, k, A, B, ldb, C, ldc);
    return share;
}
#endif

template <typename APack, typename TB>
Share gemm_share(int ith, int nth, int64_t m, int64_t n, int64_t k, const APack& A, const TB* B, int64_t ldb,
                 float* C, int64_t ldc) {
#if defined(SDCPP_PY_BF16_GEMM)
    if (bf16_products) return gemm_share_bf16(ith, nth, m, n, k, A, B, ldb, C, ldc);
#endif
    const Share share = share_of(ith, nth, m, n);
    if (share.m0 < share.m1) gemm_block(share.m0, share.m1, share.n0, share.n1, k, A, B, ldb, C, ldc);
    return share;
}

// Types are ggml_type values (0 = F32, 1 = F16, 8 = Q8_0, 30 = BF16). False: not handled here, the caller
// falls back. For a q8_0 A, k and lda count blocks of 32 (llamafile_sgemm's contract).
inline bool packed_gemm(int ith, int nth, int64_t m, int64_t n, int64_t k, const void* A, int64_t lda,
                        const void* B, int64_t ldb, float* C, int64_t ldc, int Atype, int Btype) {
    constexpr int F32 = 0, F16 = 1, Q8_0 = 8;
    if (Atype == Q8_0) {  // f32 activations only: after ggml has rounded them to q8_0 it is its own product
        if (Btype != F32 || m < MR || n < NR) return false;
        const RowsOfA<Q8Block> rows{static_cast<const Q8Block*>(A), lda};
        gemm_share(ith, nth, m, n, k * Q8_VALUES, rows, static_cast<const float*>(B), ldb, C, ldc);
        return true;
    }
#if defined(SDCPP_PY_BF16_GEMM)
    if (bf16_products) {  // f32, f16 or bf16 operands (bf16 weights: weight_type="bf16")
        constexpr int BF16 = 30;
        const auto known = [](int type) { return type == F32 || type == F16 || type == BF16; };
        if (!known(Atype) || !known(Btype) || m < MR || n < NR || k < 8) return false;
        const auto with_a = [&](const auto* a) {
            using T = std::remove_cv_t<std::remove_pointer_t<decltype(a)>>;
            const RowsOfA<T> rows{a, lda};
            if (Btype == F32) gemm_share_bf16(ith, nth, m, n, k, rows, static_cast<const float*>(B), ldb, C, ldc);
            else if (Btype == F16) gemm_share_bf16(ith, nth, m, n, k, rows, static_cast<const uint16_t*>(B), ldb, C, ldc);
            else gemm_share_bf16(ith, nth, m, n, k, rows, static_cast<const Bf16*>(B), ldb, C, ldc);
        };
        if (Atype == F32) with_a(static_cast<const float*>(A));
        else if (Atype == F16) with_a(static_cast<const uint16_t*>(A));
        else with_a(static_cast<const Bf16*>(A));
        return true;
    }
#endif
    if ((Atype != F32 && Atype != F16) || (Btype != F32 && Btype != F16)) return false;
    // Tiny products are not worth packing.
    if (m < MR || n < NR || k < 8) return false;
    const RowsOfA<uint16_t> a16{static_cast<const uint16_t*>(A), lda};
    const RowsOfA<float> a32{static_cast<const float*>(A), lda};
    const auto* b16 = static_cast<const uint16_t*>(B);
    const auto* b32 = static_cast<const float*>(B);
    if (Atype == F16 && Btype == F16) gemm_share(ith, nth, m, n, k, a16, b16, ldb, C, ldc);
    else if (Atype == F16) gemm_share(ith, nth, m, n, k, a16, b32, ldb, C, ldc);
    else if (Btype == F16) gemm_share(ith, nth, m, n, k, a32, b16, ldb, C, ldc);
    else gemm_share(ith, nth, m, n, k, a32, b32, ldb, C, ldc);
    return true;
}

}  // namespace sdcpp_py_gemm

#endif

// The fused nodes (patches 0006-0008) are exactly their graphs only where those graphs' products run on the
// packed kernel, which llamafile_sgemm offers them; elsewhere ggml-cpu hands out no fused kernels.
#if defined(SDCPP_PY_PACKED_GEMM) && defined(GGML_USE_LLAMAFILE)
#define SDCPP_PY_CPU_KERNELS 1
#endif
