// sdcpp-py patch 0020: ggml-cpu's transposing copies and concatenations without work per element.
//
// ggml_cont of a view whose first dimension is strided and whose second is contiguous (ggml_permute swapping
// them: the NCHW <-> token-major permutes around every SD UNet transformer, DiT patchify) falls to
// dup_bytes' last branch, one memcpy call per element (~1.6 ns: 2% of a bf16 SD1 step at 512x512 on 2 Zen
// 4 cores); here the same bytes move in 16 x 16 tiles (5-7x faster). ggml's f32 concat decides per element
// which input it reads; along any dimension but the first a whole row comes from one input, so rows are
// copied whole. Plain C++: compiled into every CPU variant, x86 or not. Copies only: the same bytes.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>

namespace sdcpp_py_copy {

// SDCPP_PY_CPU_COPIES=ggml keeps ggml's own loops (the same bytes; to compare and time them). Read once, at
// first use: the threads of one copy must split it the same way.
inline bool enabled() {
    static const bool ours = [] {
        const char* setting = std::getenv("SDCPP_PY_CPU_COPIES");
        return setting == nullptr || std::strcmp(setting, "ggml") != 0;
    }();
    return ours;
}

// One tile: dst[r * ne00 + c] = src[c * column_stride + r] for r < rows, c < cols (elements of T, src and
// dst at the tile's corner). Whole tiles take fixed-size copies, which compile to vector moves.
template <typename T, int64_t TILE>
inline void transpose_tile(const char* src, int64_t column_stride, int64_t ne00, int64_t rows, int64_t cols,
                           char* dst) {
    T tile[TILE][TILE];
    if (rows == TILE && cols == TILE) {
        for (int64_t c = 0; c < TILE; ++c) std::memcpy(tile[c], src + c * column_stride * sizeof(T), sizeof tile[c]);
        for (int64_t r = 0; r < TILE; ++r) {
            T row[TILE];
            for (int64_t c = 0; c < TILE; ++c) row[c] = tile[c][r];
            std::memcpy(dst + r * ne00 * sizeof(T), row, sizeof row);
        }
        return;
    }
    for (int64_t c = 0; c < cols; ++c) {
        for (int64_t r = 0; r < rows; ++r) {
            std::memcpy(&tile[c][r], src + (c * column_stride + r) * sizeof(T), sizeof(T));
        }
    }
    for (int64_t r = 0; r < rows; ++r) {
        for (int64_t c = 0; c < cols; ++c) std::memcpy(dst + (r * ne00 + c) * sizeof(T), &tile[c][r], sizeof(T));
    }
}

// ggml_compute_forward_dup_bytes' case of a contiguous dst from a src with nb[0] != type_size, where
// dimension 1 is the contiguous one (nb[1] == type_size): each (i2, i3) slab of dst, (ne[1] x ne[0]), is the
// transpose of src's, dst[r * ne[0] + c] = slab[c * column_stride + r]. Thread ith of nth copies its run of
// (slab, 16 rows) units, whole tiles wherever ne[1] allows (ggml's own split, by rows, would cut a 16-row
// slab into part tiles); units of fewer rows where there would be fewer units than threads. False (nothing
// copied) for other strides, elements of other than 2 or 4 bytes, and SDCPP_PY_CPU_COPIES=ggml.
inline bool transposed_copy(const char* src, const int64_t ne[4], const size_t nb[4], size_t type_size, int ith,
                            int nth, char* dst) {
    if ((type_size != 2 && type_size != 4) || nb[1] != type_size || nb[0] % type_size != 0 || !enabled()) {
        return false;
    }
    constexpr int64_t TILE = 16;
    const int64_t column_stride = static_cast<int64_t>(nb[0] / type_size), slabs = ne[2] * ne[3];
    int64_t unit_rows = TILE;
    while (unit_rows > 1 && slabs * ((ne[1] + unit_rows - 1) / unit_rows) < nth) unit_rows /= 2;
    const int64_t row_tiles = (ne[1] + unit_rows - 1) / unit_rows, units = slabs * row_tiles;
    const int64_t u0 = units * ith / nth, u1 = units * (ith + 1) / nth;
    // Slab by slab, columns outside the rows: src's 16 columns are read as runs along their rows and dst's
    // part stays in L2 (a unit's columns all at once read a line from each of ne[0] pages: 1.4-2x slower).
    for (int64_t u = u0; u < u1;) {
        const int64_t slab = u / row_tiles, slab_end = std::min(u1, (slab + 1) * row_tiles);
        const char* slab_src = src + (slab % ne[2]) * nb[2] + (slab / ne[2]) * nb[3];
        for (int64_t c0 = 0; c0 < ne[0]; c0 += TILE) {
            const int64_t cols = std::min(TILE, ne[0] - c0);
            for (int64_t v = u; v < slab_end; ++v) {
                const int64_t r0 = (v % row_tiles) * unit_rows, rows = std::min(unit_rows, ne[1] - r0);
                const char* from = slab_src + (c0 * column_stride + r0) * type_size;
                char* to = dst + ((slab * ne[1] + r0) * ne[0] + c0) * type_size;
                if (type_size == 4) transpose_tile<uint32_t, TILE>(from, column_stride, ne[0], rows, cols, to);
                else transpose_tile<uint16_t, TILE>(from, column_stride, ne[0], rows, cols, to);
            }
        }
        u = slab_end;
    }
    return true;
}

// ggml_compute_forward_concat_f32 along `dim` > 0 where dst's and both inputs' rows are contiguous: every
// row of dst that thread ith of nth copies in ggml's split (i2 = ith, ith + nth, ...), whole. False (nothing
// copied) elsewhere. Rows before src0's end along dim are src0's, the rest src1's.
inline bool concat_rows(int dim, const char* src0, const int64_t src0_ne[4], const size_t src0_nb[4],
                        const char* src1, const size_t src1_nb[4], char* dst, const int64_t ne[4], const size_t nb[4],
                        int ith, int nth) {
    if (dim <= 0 || nb[0] != sizeof(float) || src0_nb[0] != sizeof(float) || src1_nb[0] != sizeof(float) ||
        !enabled()) {
        return false;
    }
    int64_t offset[4] = {0, 0, 0, 0};
    offset[dim] = src0_ne[dim];
    const size_t row_bytes = static_cast<size_t>(ne[0]) * sizeof(float);
    for (int64_t i3 = 0; i3 < ne[3]; ++i3) {
        for (int64_t i2 = ith; i2 < ne[2]; i2 += nth) {
            // Along dims 2 and 3 a plane (ne[1] rows) comes from one input: where its rows and dst's lie back
            // to back, one copy (a UNet skip connection at 4x4 was 4 calls of 16 bytes per channel).
            if (dim >= 2 && nb[1] == row_bytes) {
                const bool first = i2 < src0_ne[2] && i3 < src0_ne[3];
                const size_t from_row = first ? src0_nb[1] : src1_nb[1];
                if (from_row == row_bytes) {
                    const char* from = first ? src0 + i2 * src0_nb[2] + i3 * src0_nb[3]
                                             : src1 + (i2 - offset[2]) * src1_nb[2] + (i3 - offset[3]) * src1_nb[3];
                    std::memcpy(dst + i2 * nb[2] + i3 * nb[3], from, row_bytes * static_cast<size_t>(ne[1]));
                    continue;
                }
            }
            for (int64_t i1 = 0; i1 < ne[1]; ++i1) {
                const char* from = i1 < src0_ne[1] && i2 < src0_ne[2] && i3 < src0_ne[3]
                                       ? src0 + i1 * src0_nb[1] + i2 * src0_nb[2] + i3 * src0_nb[3]
                                       : src1 + (i1 - offset[1]) * src1_nb[1] + (i2 - offset[2]) * src1_nb[2] +
                                             (i3 - offset[3]) * src1_nb[3];
                std::memcpy(dst + i1 * nb[1] + i2 * nb[2] + i3 * nb[3], from, row_bytes);
            }
        }
    }
    return true;
}

}  // namespace sdcpp_py_copy
