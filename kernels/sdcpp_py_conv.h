// sdcpp-py patch 0007: the graph side of a fused 2-D convolution for ggml's CPU backend.
//
// ggml_conv_2d is im2col (every input value copied KH*KW times, rounded to f16, into an
// (N*OH*OW) x (IC*KH*KW) matrix), a matrix product, and a permuted copy of the result. On the CPU backend
// sdcpp_py_cpu_conv_2d() returns one custom node instead (sdcpp_py_conv.cpp, compiled into ggml-cpu) whose
// product packs its operand straight from the image, rounded to f16 the same way, and writes the result
// in place: the same values in the same sums, so bitwise the same output. nullptr where it does not apply.
// A q8_0 kernel (patch 0015) is dequantized as it is packed and meets the image's f32 values (not rounded to
// f16: the unfused graph's im2col is f32 for it), where ggml's product would round them to q8_0.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <initializer_list>

#include "ggml.h"
#include "sdcpp_py_kernels.h"
#include "sdcpp_py_precision.h"

#define SDCPP_PY_CPU_CONV_2D "sdcpp_py_cpu_conv_2d"
// Winograd F(2x2, 3x3) or F(4x4, 3x3) (sdcpp_py_winograd.cpp): the input transform, then the products and
// the output.
#define SDCPP_PY_CPU_WINOGRAD_INPUT "sdcpp_py_cpu_winograd_input"
#define SDCPP_PY_CPU_WINOGRAD_CONV "sdcpp_py_cpu_winograd_conv"

extern "C" {
// The custom op (in ggml-cpu, found by the name above): dst (OW, OH, OC, N) = conv(src[0] kernel f16
// (KW, KH, IC, OC), src[1] image f32 (IW, IH, IC, N)) [+ src[2] bias f32 (OC)]; stride, padding, dilation in
// userdata (see below).
void sdcpp_py_cpu_conv_2d_compute(struct ggml_tensor* dst, int ith, int nth, void* userdata);
void sdcpp_py_cpu_winograd_input_compute(struct ggml_tensor* dst, int ith, int nth, void* userdata);
void sdcpp_py_cpu_winograd_conv_compute(struct ggml_tensor* dst, int ith, int nth, void* userdata);
}

// Winograd takes 3x3 stride-1 convolutions with at least this many 2x2 output tiles per image and input
// channels: below them the per-call kernel transform costs more than the products save, and products 16
// channels deep run slowly (an image-in layer keeps the direct node). f32 products: from 16 tiles (8x8
// outputs: SD1's 1280-channel level at 256x256; a batch's images share each product, so a guidance batch of
// two has 32 rows: 1280->1280 at 8x8 in 17 ms against 25 direct, alone the same as direct; 4x4 images, 4
// tiles, stay direct: 15 ms against 7). bf16 products too, since the transformed kernels stay in L2 between
// their transform and their products (1280->1280 at 8x8, batch of two: 8.1 ms against 10.8 direct; alone the
// same as direct; before, their round trip through memory made it 20 ms against 13). With at least 16 4x4 tiles
// (16x16 outputs) and f32 products it runs as F(4x4, 3x3): 36 products per 16 pixels instead of 64 (640
// channels at 16x16, batch of two: 10 ms against F(2x2)'s 11.5). Its transformed image (4x the image's f32
// bytes for F(2x2), 2.25x for F(4x4)) is held only up to the size below per image; larger images (a VAE's
// full-resolution layers at 512x512, SDXL's 128x128 latents with 640 channels and more) keep the direct
// node's memory. Per image, so that an image's convolution does not depend on the batch it is in (a UNet's
// two guidance passes run as one).
constexpr int64_t SDCPP_PY_WINOGRAD_MIN_TILES = 16;
constexpr int64_t SDCPP_PY_WINOGRAD_MIN_4X4_TILES = 16, SDCPP_PY_WINOGRAD_MIN_CHANNELS = 16;
constexpr int64_t SDCPP_PY_WINOGRAD_MAX_BYTES = int64_t{64} << 20;
// SDCPP_PY_CPU_CONV=direct keeps every convolution on the direct fused node (bitwise the core's graph),
// =winograd2x2 keeps Winograd to F(2x2, 3x3), to test and time those paths (any other value: the default);
// read per graph build. Returns the largest Winograd output tile allowed: 0 (none), 2 or 4.
inline int sdcpp_py_winograd_tile_limit() {
    const char* conv = std::getenv("SDCPP_PY_CPU_CONV");
    if (conv == nullptr) return 4;
    if (std::strcmp(conv, "direct") == 0) return 0;
    return std::strcmp(conv, "winograd2x2") == 0 ? 2 : 4;
}

// Stride, padding and dilation, 8 bits each (width then height), packed into the custom op's userdata;
// above them (bit 48) the graph's precision: bf16 products (patch 0014).
constexpr int SDCPP_PY_CONV_BF16_BIT = 48;
inline uintptr_t sdcpp_py_conv_2d_params(int s0, int s1, int p0, int p1, int d0, int d1, bool bf16) {
    uintptr_t packed = 0;
    for (int value : {s0, s1, p0, p1, d0, d1}) packed = (packed << 8) | static_cast<uintptr_t>(value);
    return packed | (static_cast<uintptr_t>(bf16) << SDCPP_PY_CONV_BF16_BIT);
}

// A kernel's sizes: an f16 (KW, KH, IC, OC) tensor, or a q8_0 (KW*KH*IC, OC) matrix of a square kernel for
// an image of in_channels channels (side_w 0: not such a matrix).
struct SdcppPyConvKernel {
    int64_t side_w, side_h, in_channels, out_channels;
};
inline SdcppPyConvKernel sdcpp_py_conv_kernel(const ggml_tensor* w, int64_t in_channels) {
    if (w->type != GGML_TYPE_Q8_0) return {w->ne[0], w->ne[1], w->ne[2], w->ne[3]};
    if (in_channels < 1 || w->ne[0] % in_channels != 0) return {0, 0, 0, 0};
    const int64_t taps = w->ne[0] / in_channels;
    int64_t side = 1;
    while (side * side < taps) ++side;
    if (side * side != taps) return {0, 0, 0, 0};
    return {side, side, in_channels, w->ne[1]};
}

// The graph's ggml_conv_2d(w, x, ...) as one node, for sizes where its product would run on the packed
// kernel (it declines m < 16, n < 6, k < 8: only there are the sums the same). Batches with fewer than 16
// output pixels in all (m) are fused too: their sums are then the packed kernel's rather than tinyBLAS's,
// and an image's convolution is the same alone or in a batch (a UNet's two guidance passes run as one).
// Given a bias the node can add (f32, one per output channel: the same x + b as ggml_add), it takes it and
// sets *bias to nullptr.
inline ggml_tensor* sdcpp_py_cpu_conv_2d(ggml_context* ctx, bool backend_is_cpu, ggml_tensor* w, ggml_tensor* x,
                                         ggml_tensor** bias, int s0, int s1, int p0, int p1, int d0, int d1) {
    if (!backend_is_cpu) return nullptr;
    // Present when the loaded CPU backend has the packed kernel (patch 0004) the unfused product would use.
    const ggml_custom_op_t op = sdcpp_py_cpu_kernel(SDCPP_PY_CPU_CONV_2D);
    if (op == nullptr) return nullptr;
    // The core's Conv2d keeps its kernels in f16, or (patch 0015) quantized to q8_0 as the flattened
    // (KW*KH*IC, OC) matrix of a square kernel; a bf16 graph rounds them as it packs.
    // bf16 only where the products can run so (a bf16 graph's Winograd nodes store the transformed image as
    // bf16 pairs: under SDCPP_PY_CPU_KERNELS=avx2 they would meet an f32 product).
    const bool bf16 = sdcpp_py_graph_bf16() != 0 && sdcpp_py_cpu_kernel(SDCPP_PY_BF16_PRODUCTS) != nullptr;
    const bool flat_q8 = w->type == GGML_TYPE_Q8_0 && ggml_n_dims(w) <= 2;
    if ((w->type != GGML_TYPE_F16 && !flat_q8) || x->type != GGML_TYPE_F32 || !ggml_is_contiguous(w) ||
        !ggml_is_contiguous(x)) {
        return nullptr;
    }
    for (int value : {s0, s1, d0, d1}) {
        if (value < 1 || value > 255) return nullptr;
    }
    for (int value : {p0, p1}) {
        if (value < 0 || value > 255) return nullptr;
    }
    const SdcppPyConvKernel kernel = sdcpp_py_conv_kernel(w, x->ne[2]);
    const int64_t KW = kernel.side_w, KH = kernel.side_h, IC = kernel.in_channels, OC = kernel.out_channels;
    const int64_t IW = x->ne[0], IH = x->ne[1], N = x->ne[3];
    if (KW < 1 || x->ne[2] != IC) return nullptr;
    const int64_t OW = (IW + 2 * p0 - d0 * (KW - 1) - 1) / s0 + 1, OH = (IH + 2 * p1 - d1 * (KH - 1) - 1) / s1 + 1;
    if (OW < 1 || OH < 1 || OC < 6 || IC * KH * KW < 8) return nullptr;
    ggml_tensor* args[3] = {w, x, nullptr};
    int n_args = 2;
    if (bias != nullptr && *bias != nullptr && (*bias)->type == GGML_TYPE_F32 && ggml_is_contiguous(*bias) &&
        ggml_nelements(*bias) == OC) {
        args[n_args++] = *bias;
        *bias = nullptr;
    }
    void* params = reinterpret_cast<void*>(sdcpp_py_conv_2d_params(s0, s1, p0, p1, d0, d1, bf16));
    // Winograd's transformed image: 16 (36) values per tile of 2x2 (4x4) output pixels and input channel,
    // tiles in whole slivers of 16 (the packed kernel's MR); f32 (bf16 products: bf16 pairs of channels),
    // freed after the product.
    const int limit = sdcpp_py_winograd_tile_limit();
    const auto tile_count = [&](int64_t side) { return (OW + side - 1) / side * ((OH + side - 1) / side); };
    // F(4x4)'s transformed operands span more magnitudes: rounded to bf16 they cost a picture 13 dB (30 dB
    // from f32 instead of 40), so bf16 products keep F(2x2).
    const int64_t side = limit >= 4 && !bf16 && tile_count(4) >= SDCPP_PY_WINOGRAD_MIN_4X4_TILES ? 4 : 2;
    const int64_t positions = (side + 2) * (side + 2), tile_rows = (tile_count(side) + 15) / 16 * 16;
    if (limit > 0 && KW == 3 && KH == 3 && s0 == 1 && s1 == 1 && d0 == 1 && d1 == 1 && p0 <= 2 && p1 <= 2 &&
        tile_count(2) >= SDCPP_PY_WINOGRAD_MIN_TILES && IC >= SDCPP_PY_WINOGRAD_MIN_CHANNELS &&
        tile_rows * IC * positions * int64_t{sizeof(float)} <= SDCPP_PY_WINOGRAD_MAX_BYTES) {
        const ggml_custom_op_t input = sdcpp_py_cpu_kernel(SDCPP_PY_CPU_WINOGRAD_INPUT);
        const ggml_custom_op_t products = sdcpp_py_cpu_kernel(SDCPP_PY_CPU_WINOGRAD_CONV);
        if (input != nullptr && products != nullptr) {
            // bf16 products: channels stored in pairs, as the product reads them (half the f32 bytes; the
            // cap above counts f32: a bf16 graph holds no larger transformed image than an f32 one).
            const int64_t steps = bf16 ? (IC + 1) / 2 : IC;
            ggml_tensor* transformed = ggml_custom_4d(ctx, GGML_TYPE_F32, tile_rows, steps, positions, N, &args[1],
                                                      1, input, GGML_N_TASKS_MAX, params);
            args[1] = transformed;
            return ggml_custom_4d(ctx, GGML_TYPE_F32, OW, OH, OC, N, args, n_args, products, GGML_N_TASKS_MAX,
                                  params);
        }
    }
    return ggml_custom_4d(ctx, GGML_TYPE_F32, OW, OH, OC, N, args, n_args, op, GGML_N_TASKS_MAX, params);
}

// sdcpp-py patch 0019: ggml_add(h, addend) where h is a fused convolution's node (direct or Winograd) just
// built for it (its only use, as in a ResBlock): the addend taken into the node as src[3] and added to each
// output value after its bias, the same f32 sum as the separate node's, without a node and pass of its own. The
// addend: f32, contiguous, h's shape or one value per image and channel (a ResBlock's timestep embedding,
// (1, 1, OC, N)). Returns h, or nullptr where it does not apply.
inline ggml_tensor* sdcpp_py_cpu_conv_add(ggml_tensor* h, ggml_tensor* addend) {
    if (!sdcpp_py_cpu_epilogues() || h == nullptr || addend == nullptr || h->src[3] != nullptr) return nullptr;
    if (sdcpp_py_cpu_custom_op(h, SDCPP_PY_CPU_CONV_2D).fun == nullptr &&
        sdcpp_py_cpu_custom_op(h, SDCPP_PY_CPU_WINOGRAD_CONV).fun == nullptr) {
        return nullptr;
    }
    if (h->type != GGML_TYPE_F32 || addend->type != GGML_TYPE_F32 || !ggml_is_contiguous(addend) || addend == h) {
        return nullptr;
    }
    const bool per_channel = addend->ne[0] == 1 && addend->ne[1] == 1 && addend->ne[2] == h->ne[2] &&
                             addend->ne[3] == h->ne[3];
    if (!per_channel && !ggml_are_same_shape(h, addend)) return nullptr;
    h->src[3] = addend;
    return h;
}

// The core's ggml_add(h, addend) after a convolution, as one node where the CPU backend can (patch 0019).
inline ggml_tensor* sdcpp_py_add_after_conv(ggml_context* ctx, ggml_tensor* h, ggml_tensor* addend) {
    ggml_tensor* fused = sdcpp_py_cpu_conv_add(h, addend);
    return fused != nullptr ? fused : ggml_add(ctx, h, addend);
}

// The compute side of that addend (the node's src[3], or none).
struct SdcppPyConvAddend {
    const float* data;
    bool per_channel;
    int64_t channels, pixels;

    explicit SdcppPyConvAddend(const ggml_tensor* dst)
        : data(dst->src[3] != nullptr ? static_cast<const float*>(dst->src[3]->data) : nullptr),
          per_channel(dst->src[3] != nullptr && dst->src[3]->ne[0] * dst->src[3]->ne[1] == 1),
          channels(dst->ne[2]),
          pixels(dst->ne[0] * dst->ne[1]) {}
    // Channel c of image n: its one value (per channel) or its plane of the output's pixels, else nullptr.
    const float* value(int64_t n, int64_t c) const { return data != nullptr && per_channel ? data + n * channels + c : nullptr; }
    const float* plane(int64_t n, int64_t c) const {
        return data != nullptr && !per_channel ? data + (n * channels + c) * pixels : nullptr;
    }
    // Into pixels i0..i1 of that channel's finished output.
    void add(int64_t n, int64_t c, float* channel, int64_t i0, int64_t i1) const {
        if (const float* v = value(n, c)) {
            for (int64_t i = i0; i < i1; ++i) channel[i] += *v;
        } else if (const float* p = plane(n, c)) {
            for (int64_t i = i0; i < i1; ++i) channel[i] += p[i];
        }
    }
};
