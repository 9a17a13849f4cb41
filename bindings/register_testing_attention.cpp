// A window on the core's attention (ggml_ext_attention_ext) for the test suite: patch 0006's fused CPU node
// against the core's own four nodes and numpy. Its own file: ggml_extend.hpp brings the core's CPU-backend
// helpers, which clash with ggml-cpu.h.
#include "common.hpp"

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "ggml-alloc.h"
#include "ggml-backend.h"
#include "ggml.h"
#include "ggml_extend.hpp"

namespace sdcpp {

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

// The core's ggml_ext_attention_ext (no mask, no flash attention) on q (L_q, C), k and v (L_k, C), C = n_head
// heads of C / n_head, computed on ggml's CPU backend. With on_cpu_backend false the graph is built as for
// another backend (the core's own four nodes), then computed on the CPU all the same. Returns the (L_q, C)
// output, the graph's node ops and the compute buffer the allocator needed.
py::tuple cpu_attention(const py::array_t<float, py::array::c_style>& q, const py::array_t<float, py::array::c_style>& k,
                        const py::array_t<float, py::array::c_style>& v, int n_head, int n_threads,
                        bool on_cpu_backend) {
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
    ggml_backend_cpu_set_n_threads(backend.get(), n_threads);
    const size_t meta = ggml_graph_overhead() + 64 * ggml_tensor_overhead();
    std::unique_ptr<ggml_context, GgmlContextDeleter> ctx(ggml_init({meta, nullptr, true}));
    if (!ctx) throw std::runtime_error("ggml_init failed");
    ggml_tensor* tq = ggml_new_tensor_3d(ctx.get(), GGML_TYPE_F32, C, L_q, 1);
    ggml_tensor* tk = ggml_new_tensor_3d(ctx.get(), GGML_TYPE_F32, C, L_k, 1);
    ggml_tensor* tv = ggml_new_tensor_3d(ctx.get(), GGML_TYPE_F32, C, L_k, 1);
    for (ggml_tensor* t : {tq, tk, tv}) ggml_set_input(t);
    ggml_tensor* out = ggml_ext_attention_ext(ctx.get(), on_cpu_backend ? backend.get() : nullptr, tq, tk, tv,
                                              n_head, nullptr, false, false);
    ggml_set_output(out);
    ggml_cgraph* graph = ggml_new_graph(ctx.get());
    ggml_build_forward_expand(graph, out);
    std::unique_ptr<ggml_gallocr, GallocrDeleter> galloc(ggml_gallocr_new(ggml_backend_cpu_buffer_type()));
    if (!ggml_gallocr_alloc_graph(galloc.get(), graph)) throw std::runtime_error("ggml_gallocr_alloc_graph failed");
    ggml_backend_tensor_set(tq, q.data(), 0, q.nbytes());
    ggml_backend_tensor_set(tk, k.data(), 0, k.nbytes());
    ggml_backend_tensor_set(tv, v.data(), 0, v.nbytes());
    ggml_status status;
    {
        py::gil_scoped_release release;
        status = ggml_backend_graph_compute(backend.get(), graph);
    }
    if (status != GGML_STATUS_SUCCESS) throw std::runtime_error("ggml_backend_graph_compute failed");
    py::array_t<float> result({L_q, C});
    ggml_backend_tensor_get(out, result.mutable_data(), 0, static_cast<size_t>(L_q * C) * sizeof(float));
    std::vector<std::string> ops;
    for (int i = 0; i < ggml_graph_n_nodes(graph); ++i) ops.emplace_back(ggml_op_desc(ggml_graph_node(graph, i)));
    return py::make_tuple(result, ops, ggml_gallocr_get_buffer_size(galloc.get(), 0));
}

}  // namespace

void register_testing_attention(py::module_& m) {
    m.def("_cpu_attention", &cpu_attention, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("n_head"),
          py::arg("n_threads") = 1, py::arg("on_cpu_backend") = true,
          "Test hook: the core's attention on the CPU; returns (output, graph node ops, compute buffer bytes).");
}

}  // namespace sdcpp
