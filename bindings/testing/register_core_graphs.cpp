// Windows on the core's attention (ggml_ext_attention_ext), convolution (ggml_ext_conv_2d) and GEGLU for the
// test suite: patches 0006-0008's fused CPU nodes against the core's own graphs and numpy. Their own file:
// ggml_extend.hpp brings the core's CPU-backend helpers, which clash with ggml-cpu.h.
#include "testing.hpp"

#include <chrono>
#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "ggml-alloc.h"
#include "ggml-backend.h"
#include "ggml.h"
#include "ggml_extend.hpp"
#include "auto_encoder_kl.hpp"
#include "common_block.hpp"
#include "sdcpp_py_geglu.h"

namespace sdcpp::testing {

namespace {

struct GgmlContextDeleter {
    void operator()(ggml_context* ctx) const { ggml_free(ctx); }
};
struct GallocrDeleter {
    void operator()(ggml_gallocr* galloc) const { ggml_gallocr_free(galloc); }
};
struct BackendDeleter {
    void operator()(ggml_backend* backend) const { ggml_backend_free(backend); }
};

// Allocates the graph of `out` on the CPU backend, fills its inputs, computes it with n_threads and returns
// (output, graph node ops, compute buffer bytes).
py::tuple compute_core_graph(ggml_backend_t backend, ggml_context* ctx, ggml_tensor* out,
                             const std::vector<std::pair<ggml_tensor*, const void*>>& inputs, int n_threads,
                             std::vector<py::ssize_t> shape) {
    ggml_set_output(out);
    ggml_cgraph* graph = ggml_new_graph(ctx);
    ggml_build_forward_expand(graph, out);
    std::unique_ptr<ggml_gallocr, GallocrDeleter> galloc(ggml_gallocr_new(ggml_backend_cpu_buffer_type()));
    if (!ggml_gallocr_alloc_graph(galloc.get(), graph)) throw std::runtime_error("ggml_gallocr_alloc_graph failed");
    for (const auto& [tensor, data] : inputs) ggml_backend_tensor_set(tensor, data, 0, ggml_nbytes(tensor));
    ggml_backend_cpu_set_n_threads(backend, n_threads);
    ggml_status status;
    {
        py::gil_scoped_release release;
        const auto start = std::chrono::steady_clock::now();
        status = ggml_backend_graph_compute(backend, graph);
        last_compute_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    }
    if (status != GGML_STATUS_SUCCESS) throw std::runtime_error("ggml_backend_graph_compute failed");
    py::array_t<float> result(shape);
    ggml_backend_tensor_get(out, result.mutable_data(), 0, ggml_nbytes(out));
    std::vector<std::string> ops;
    for (int i = 0; i < ggml_graph_n_nodes(graph); ++i) ops.emplace_back(ggml_op_desc(ggml_graph_node(graph, i)));
    return py::make_tuple(result, ops, ggml_gallocr_get_buffer_size(galloc.get(), 0));
}

// The core's ggml_ext_attention_ext (no mask, no flash attention) on q (L_q, C), k and v (L_k, C), C = n_head
// heads of C / n_head, computed on ggml's CPU backend. With on_cpu_backend false the graph is built as for
// another backend (the core's own four nodes), then computed on the CPU all the same. per_head_inputs hands
// the core q, k and v already split into heads (its skip_reshape path). Returns the (L_q, C) output, the
// graph's node ops and the compute buffer the allocator needed.
py::tuple cpu_attention(const py::array_t<float, py::array::c_style>& q, const py::array_t<float, py::array::c_style>& k,
                        const py::array_t<float, py::array::c_style>& v, int n_head, int n_threads,
                        bool on_cpu_backend, bool per_head_inputs, bool bf16) {
    const BuildPrecision precision(bf16);
    if (q.ndim() != 2 || k.ndim() != 2 || v.ndim() != 2) {
        throw std::invalid_argument("q, k, v: expected 2-D arrays (tokens, channels)");
    }
    const int64_t L_q = q.shape(0), C = q.shape(1), L_k = k.shape(0);
    if (k.shape(1) != C || v.shape(0) != L_k || v.shape(1) != C) {
        throw std::invalid_argument("k, v: expected (L_k, C) with q's C and the same L_k");
    }
    if (n_head < 1 || C % n_head != 0) {
        throw std::invalid_argument("n_head: expected a divisor of C=" + std::to_string(C));
    }
    if (n_threads < 1) throw std::invalid_argument("n_threads: expected at least 1");
    std::unique_ptr<ggml_backend, BackendDeleter> backend(ggml_backend_cpu_init());
    if (!backend) throw std::runtime_error("ggml_backend_cpu_init failed");
    const size_t meta = ggml_graph_overhead() + 64 * ggml_tensor_overhead();
    std::unique_ptr<ggml_context, GgmlContextDeleter> ctx(ggml_init({meta, nullptr, true}));
    if (!ctx) throw std::runtime_error("ggml_init failed");
    ggml_tensor* tq = ggml_new_tensor_3d(ctx.get(), GGML_TYPE_F32, C, L_q, 1);
    ggml_tensor* tk = ggml_new_tensor_3d(ctx.get(), GGML_TYPE_F32, C, L_k, 1);
    ggml_tensor* tv = ggml_new_tensor_3d(ctx.get(), GGML_TYPE_F32, C, L_k, 1);
    for (ggml_tensor* t : {tq, tk, tv}) ggml_set_input(t);
    ggml_tensor *q_in = tq, *k_in = tk, *v_in = tv;
    if (per_head_inputs) {  // the core's skip_reshape layouts: q, k (d, L, heads), v (d, heads, L_k, 1)
        const int64_t d = C / n_head;
        auto split_heads = [&](ggml_tensor* t) {
            ggml_tensor* heads = ggml_permute(ctx.get(), ggml_reshape_4d(ctx.get(), t, d, n_head, t->ne[1], 1), 0, 2, 1, 3);
            return ggml_reshape_3d(ctx.get(), ggml_cont(ctx.get(), heads), d, t->ne[1], n_head);
        };
        q_in = split_heads(tq);
        k_in = split_heads(tk);
        v_in = ggml_reshape_4d(ctx.get(), tv, d, n_head, L_k, 1);
    }
    ggml_tensor* out = ggml_ext_attention_ext(ctx.get(), on_cpu_backend ? backend.get() : nullptr, q_in, k_in,
                                              v_in, n_head, nullptr, per_head_inputs, false);
    return compute_core_graph(backend.get(), ctx.get(), out, {{tq, q.data()}, {tk, k.data()}, {tv, v.data()}},
                              n_threads, {L_q, C});
}

// The core's ggml_ext_conv_2d (not direct; f32 bias optional) of an f32 image (N, IC, H, W) with an f16 kernel
// (OC, IC, KH, KW), given as its bits, on the CPU backend; with on_cpu_backend false, the graph built for
// other backends. Returns (output (N, OC, OH, OW), graph node ops, compute buffer bytes).
py::tuple core_conv_2d(const py::array_t<uint16_t, py::array::c_style>& kernel_f16_bits,
                       const py::array_t<float, py::array::c_style>& image, int stride, int padding, int dilation,
                       int n_threads, bool on_cpu_backend, std::optional<py::array_t<float, py::array::c_style>> bias,
                       bool bf16, bool q8_0) {
    const BuildPrecision precision(bf16);
    const ConvShape shape = checked_conv_shape(kernel_f16_bits, image, stride, padding, dilation, n_threads);
    const int64_t N = shape.N, IC = shape.IC, H = shape.H, W = shape.W, OC = shape.OC, KH = shape.KH, KW = shape.KW,
                  OH = shape.OH, OW = shape.OW;
    if (bias && (bias->ndim() != 1 || bias->shape(0) != OC)) {
        throw std::invalid_argument("bias: expected (OC,) = (" + std::to_string(OC) + ",)");
    }
    std::unique_ptr<ggml_backend, BackendDeleter> backend(ggml_backend_cpu_init());
    if (!backend) throw std::runtime_error("ggml_backend_cpu_init failed");
    const size_t meta = ggml_graph_overhead() + 64 * ggml_tensor_overhead();
    std::unique_ptr<ggml_context, GgmlContextDeleter> ctx(ggml_init({meta, nullptr, true}));
    if (!ctx) throw std::runtime_error("ggml_init failed");
    // q8_0: the kernel as patch 0015's Conv2d holds a quantized one, the (KW*KH*IC, OC) matrix of blocks.
    std::vector<char> q8_0_kernel;
    if (q8_0) {
        if (KW != KH) throw std::invalid_argument("q8_0: expected a square kernel");
        std::vector<float> values(static_cast<size_t>(OC * IC * KH * KW));
        ggml_fp16_to_fp32_row(reinterpret_cast<const ggml_fp16_t*>(kernel_f16_bits.data()), values.data(),
                              static_cast<int64_t>(values.size()));
        q8_0_kernel.resize(ggml_row_size(GGML_TYPE_Q8_0, IC * KH * KW) * OC);
        quantize_q8_0_rows(values.data(), OC, IC * KH * KW, q8_0_kernel.data());
    }
    ggml_tensor* tk = q8_0 ? ggml_new_tensor_2d(ctx.get(), GGML_TYPE_Q8_0, IC * KH * KW, OC)
                           : ggml_new_tensor_4d(ctx.get(), GGML_TYPE_F16, KW, KH, IC, OC);
    ggml_tensor* ti = ggml_new_tensor_4d(ctx.get(), GGML_TYPE_F32, W, H, IC, N);
    ggml_tensor* tb = bias ? ggml_new_tensor_1d(ctx.get(), GGML_TYPE_F32, OC) : nullptr;
    const void* kernel_data = q8_0 ? static_cast<const void*>(q8_0_kernel.data()) : kernel_f16_bits.data();
    std::vector<std::pair<ggml_tensor*, const void*>> inputs = {{tk, kernel_data}, {ti, image.data()}};
    if (tb != nullptr) inputs.emplace_back(tb, bias->data());
    for (const auto& input : inputs) ggml_set_input(input.first);
    ggml_tensor* out = ggml_ext_conv_2d(ctx.get(), ti, tk, tb, stride, stride, padding, padding, dilation, dilation,
                                        false, false, false, 1.f, on_cpu_backend);
    return compute_core_graph(backend.get(), ctx.get(), out, inputs, n_threads, {N, OC, OH, OW});
}

// GEGLU on x (rows, 2D), after the projection's bias (2D,) where one is given (ggml_ext_linear's in-place
// add): the node patch 0008 builds on the CPU backend or, with on_cpu_backend false, the core's
// GEGLU::forward graph (split, cont of the gate, ggml_gelu, ggml_mul). Returns ((rows, D) output, graph node
// ops, compute buffer bytes).
py::tuple core_geglu(const py::array_t<float, py::array::c_style>& x, int n_threads, bool on_cpu_backend,
                     std::optional<py::array_t<float, py::array::c_style>> bias, bool bf16) {
    const BuildPrecision precision(bf16);
    if (x.ndim() != 2 || x.shape(1) % 2 != 0) throw std::invalid_argument("x: expected (rows, 2*D)");
    if (n_threads < 1) throw std::invalid_argument("n_threads: expected at least 1");
    const int64_t rows = x.shape(0), width = x.shape(1);
    if (bias && (bias->ndim() != 1 || bias->shape(0) != width)) {
        throw std::invalid_argument("bias: expected (2*D,) = (" + std::to_string(width) + ",)");
    }
    std::unique_ptr<ggml_backend, BackendDeleter> backend(ggml_backend_cpu_init());
    if (!backend) throw std::runtime_error("ggml_backend_cpu_init failed");
    const size_t meta = ggml_graph_overhead() + 64 * ggml_tensor_overhead();
    std::unique_ptr<ggml_context, GgmlContextDeleter> ctx(ggml_init({meta, nullptr, true}));
    if (!ctx) throw std::runtime_error("ggml_init failed");
    ggml_tensor* tx = ggml_new_tensor_2d(ctx.get(), GGML_TYPE_F32, width, rows);
    ggml_set_input(tx);
    std::vector<std::pair<ggml_tensor*, const void*>> inputs = {{tx, x.data()}};
    ggml_tensor* projected = tx;
    if (bias) {
        ggml_tensor* tb = ggml_new_tensor_1d(ctx.get(), GGML_TYPE_F32, width);
        ggml_set_input(tb);
        inputs.emplace_back(tb, bias->data());
        projected = ggml_add_inplace(ctx.get(), tx, tb);
    }
    ggml_tensor* out = sdcpp_py_cpu_geglu(ctx.get(), on_cpu_backend, projected);
    if (out == nullptr) {  // GEGLU::forward's own graph
        auto halves = ggml_ext_chunk(ctx.get(), projected, 2, 0, false);
        ggml_tensor* gate = ggml_ext_gelu(ctx.get(), ggml_cont(ctx.get(), halves[1]), true);
        out = ggml_mul(ctx.get(), halves[0], gate);
    }
    return compute_core_graph(backend.get(), ctx.get(), out, inputs, n_threads, {rows, width / 2});
}

// The core's GroupNorm block (groups > 0; x (N, C, H, W), weight and bias (C,); its eps is the core's 1e-6,
// not eps) or LayerNorm block (groups 0; x (rows, width), weight (width,), bias (width,) or none) with the
// given weights, run on the CPU backend or, with on_cpu_backend false, built as for another backend. Patch
// 0017 makes either one node on the CPU.
// Returns (output shaped as x, graph node ops, compute buffer bytes).
py::tuple core_norm(const py::array_t<float, py::array::c_style>& x, const py::array_t<float, py::array::c_style>& weight,
                    std::optional<py::array_t<float, py::array::c_style>> bias, int groups, float eps, int n_threads,
                    bool on_cpu_backend) {
    const bool group = groups > 0;
    if (groups < 0) throw std::invalid_argument("groups: expected 0 (a layer norm) or more");
    if (x.ndim() != (group ? 4 : 2)) {
        throw std::invalid_argument(group ? "x: expected (N, C, H, W)" : "x: expected (rows, width)");
    }
    if (n_threads < 1) throw std::invalid_argument("n_threads: expected at least 1");
    const int64_t channels = x.shape(1);
    if (weight.ndim() != 1 || weight.shape(0) != channels) {
        throw std::invalid_argument("weight: expected (" + std::to_string(channels) + ",)");
    }
    if (bias && (bias->ndim() != 1 || bias->shape(0) != channels)) {
        throw std::invalid_argument("bias: expected (" + std::to_string(channels) + ",)");
    }
    if (group && !bias) throw std::invalid_argument("bias: a GroupNorm block has one");
    std::unique_ptr<ggml_backend, BackendDeleter> backend(ggml_backend_cpu_init());
    if (!backend) throw std::runtime_error("ggml_backend_cpu_init failed");
    const size_t meta = ggml_graph_overhead() + 64 * ggml_tensor_overhead();
    std::unique_ptr<ggml_context, GgmlContextDeleter> ctx(ggml_init({meta, nullptr, true}));
    if (!ctx) throw std::runtime_error("ggml_init failed");
    std::unique_ptr<GGMLBlock> block;
    if (group) block = std::make_unique<GroupNorm>(groups, channels);
    else block = std::make_unique<LayerNorm>(channels, eps, true, bias.has_value());
    block->init(ctx.get());
    std::map<std::string, ggml_tensor*> params;
    block->get_param_tensors(params);
    ggml_tensor* tx = group ? ggml_new_tensor_4d(ctx.get(), GGML_TYPE_F32, x.shape(3), x.shape(2), x.shape(1), x.shape(0))
                            : ggml_new_tensor_2d(ctx.get(), GGML_TYPE_F32, x.shape(1), x.shape(0));
    std::vector<std::pair<ggml_tensor*, const void*>> inputs = {{tx, x.data()}, {params.at("weight"), weight.data()}};
    if (bias) inputs.emplace_back(params.at("bias"), bias->data());
    for (const auto& input : inputs) ggml_set_input(input.first);
    GGMLRunnerContext runner;
    runner.backend = on_cpu_backend ? backend.get() : nullptr;
    runner.ggml_ctx = ctx.get();
    ggml_tensor* out = group ? static_cast<GroupNorm*>(block.get())->forward(&runner, tx)
                             : static_cast<LayerNorm*>(block.get())->forward(&runner, tx);
    std::vector<py::ssize_t> shape(x.shape(), x.shape() + x.ndim());
    return compute_core_graph(backend.get(), ctx.get(), out, inputs, n_threads, shape);
}

// The core's UNet ResBlock (given emb (N, emb_channels): its timestep embedding) or, without emb, the VAE's
// ResnetBlock, from in_channels = x's channels to out_channels, with the given parameters (the block's names
// -> f32 arrays, rounded to f16 where the block keeps f16), on x (N, C, H, W), on the CPU backend. Patch 0019
// takes their SiLUs and adds into the fused nodes (SDCPP_PY_CPU_EPILOGUES=separate keeps them apart).
// Returns ((N, out_channels, H, W) output, graph node ops, compute buffer bytes).
py::tuple core_resblock(const py::array_t<float, py::array::c_style>& x,
                        std::optional<py::array_t<float, py::array::c_style>> emb, int64_t out_channels,
                        const py::dict& parameters, int n_threads, bool bf16) {
    const BuildPrecision precision(bf16);
    if (x.ndim() != 4) throw std::invalid_argument("x: expected (N, C, H, W)");
    if (emb && (emb->ndim() != 2 || emb->shape(0) != x.shape(0))) throw std::invalid_argument("emb: expected (N, emb_channels)");
    if (out_channels < 1 || n_threads < 1) throw std::invalid_argument("out_channels, n_threads: expected at least 1");
    std::unique_ptr<ggml_backend, BackendDeleter> backend(ggml_backend_cpu_init());
    if (!backend) throw std::runtime_error("ggml_backend_cpu_init failed");
    const size_t meta = ggml_graph_overhead() + 256 * ggml_tensor_overhead();
    std::unique_ptr<ggml_context, GgmlContextDeleter> ctx(ggml_init({meta, nullptr, true}));
    if (!ctx) throw std::runtime_error("ggml_init failed");
    const int64_t channels = x.shape(1);
    std::unique_ptr<GGMLBlock> block;
    if (emb) block = std::make_unique<ResBlock>(channels, emb->shape(1), out_channels);
    else block = std::make_unique<ResnetBlock>(channels, out_channels);
    block->init(ctx.get());
    std::map<std::string, ggml_tensor*> params;
    block->get_param_tensors(params);
    for (const auto& item : parameters) {
        const std::string name = py::str(item.first);
        if (params.count(name) == 0) throw std::invalid_argument("parameters: the block has no " + name);
    }
    std::vector<std::pair<ggml_tensor*, const void*>> inputs;
    std::vector<py::array_t<float, py::array::c_style | py::array::forcecast>> kept;
    std::vector<std::vector<ggml_fp16_t>> rounded;
    for (const auto& [name, tensor] : params) {
        if (!parameters.contains(name)) throw std::invalid_argument("parameters: missing " + name);
        kept.emplace_back(parameters[py::str(name)]);
        const auto& values = kept.back();
        if (values.size() != ggml_nelements(tensor)) throw std::invalid_argument(name + ": wrong number of values");
        if (tensor->type == GGML_TYPE_F16) {
            rounded.emplace_back(values.size());
            ggml_fp32_to_fp16_row(values.data(), rounded.back().data(), values.size());
            inputs.emplace_back(tensor, rounded.back().data());
        } else if (tensor->type == GGML_TYPE_F32) {
            inputs.emplace_back(tensor, values.data());
        } else {
            throw std::runtime_error(name + ": unexpected parameter type");
        }
    }
    ggml_tensor* tx = ggml_new_tensor_4d(ctx.get(), GGML_TYPE_F32, x.shape(3), x.shape(2), x.shape(1), x.shape(0));
    inputs.emplace_back(tx, x.data());
    ggml_tensor* temb = nullptr;
    if (emb) {
        temb = ggml_new_tensor_2d(ctx.get(), GGML_TYPE_F32, emb->shape(1), emb->shape(0));
        inputs.emplace_back(temb, emb->data());
    }
    for (const auto& input : inputs) ggml_set_input(input.first);
    GGMLRunnerContext runner;
    runner.backend = backend.get();
    runner.ggml_ctx = ctx.get();
    ggml_tensor* out = emb ? static_cast<ResBlock*>(block.get())->forward(&runner, tx, temb)
                           : static_cast<ResnetBlock*>(block.get())->forward(&runner, tx);
    return compute_core_graph(backend.get(), ctx.get(), out, inputs, n_threads,
                              {x.shape(0), out_channels, x.shape(2), x.shape(3)});
}

}  // namespace

thread_local double last_compute_seconds = 0.0;

void register_core_graphs(py::module_& m) {
    m.def("_last_compute_seconds", [] { return last_compute_seconds; },
          "Test hook: seconds this thread's last graph hook (_cpu_attention, _core_conv_2d, _core_norm, "
          "_core_geglu, _cpu_mul_mat, ...) spent computing its graph.");
    m.def("_cpu_attention", &cpu_attention, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("n_head"),
          py::arg("n_threads") = 1, py::arg("on_cpu_backend") = true, py::arg("per_head_inputs") = false,
          py::arg("bf16") = false,
          "Test hook: the core's attention on the CPU; returns (output, graph node ops, compute buffer bytes).");
    m.def("_core_conv_2d", &core_conv_2d, py::arg("kernel_f16_bits"), py::arg("image"), py::arg("stride") = 1,
          py::arg("padding") = 0, py::arg("dilation") = 1, py::arg("n_threads") = 1, py::arg("on_cpu_backend") = true,
          py::arg("bias") = py::none(), py::arg("bf16") = false, py::arg("q8_0") = false,
          "Test hook: the core's Conv2d convolution on the CPU; returns (output, graph node ops, compute buffer bytes). "
          "q8_0: the kernel quantized and flattened as a weight_type='q8_0' diffusion model holds it (patch 0015).");
    m.def("_core_norm", &core_norm, py::arg("x"), py::arg("weight"), py::arg("bias") = py::none(),
          py::arg("groups") = 0, py::arg("eps") = 1e-5f, py::arg("n_threads") = 1, py::arg("on_cpu_backend") = true,
          "Test hook: the core's GroupNorm (groups > 0, x (N, C, H, W); eps fixed at the core's 1e-6) or LayerNorm "
          "(groups 0, x (rows, width)) block on the CPU; returns (output, graph node ops, compute buffer bytes).");
    m.def("_core_resblock", &core_resblock, py::arg("x"), py::arg("emb"), py::arg("out_channels"),
          py::arg("parameters"), py::arg("n_threads") = 1, py::arg("bf16") = false,
          "Test hook: the core's UNet ResBlock (emb given) or VAE ResnetBlock (emb None) on the CPU with the given "
          "parameters; returns (output, graph node ops, compute buffer bytes).");
    m.def("_core_geglu", &core_geglu, py::arg("x"), py::arg("n_threads") = 1, py::arg("on_cpu_backend") = true,
          py::arg("bias") = py::none(), py::arg("bf16") = false,
          "Test hook: the core's GEGLU on the CPU (bf16: built as a cpu_precision='bf16' graph, whose GELU is computed "
          "rather than read from ggml's f16 table); returns (output, graph node ops, compute buffer bytes).");
}

}  // namespace sdcpp::testing

