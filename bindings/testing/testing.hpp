// Included first by every file of the sdcpp_py._test_hooks module (the test suite's windows on ggml and the
// core; built with -DSDCPP_PY_TESTING=ON, never in release wheels): pybind11 and what the hooks share.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "sdcpp_py_precision.h"

namespace py = pybind11;

namespace sdcpp::testing {

// Graphs built while it lives have bf16 products, as a Context's with cpu_precision="bf16" (patch 0014).
struct BuildPrecision {
    explicit BuildPrecision(bool bf16) { sdcpp_py_set_graph_bf16(bf16); }
    ~BuildPrecision() { sdcpp_py_set_graph_bf16(0); }
    BuildPrecision(const BuildPrecision&)            = delete;
    BuildPrecision& operator=(const BuildPrecision&) = delete;
};

void register_cpu_ops(py::module_& m);
void register_core_graphs(py::module_& m);
void register_prompt(py::module_& m);
void register_schedules(py::module_& m);

// The convolution hooks' arguments, checked: f16 kernel bits (OC, IC, KH, KW), f32 image (N, IC, H, W).
struct ConvShape {
    int64_t N, IC, H, W, OC, KH, KW, OH, OW;
};
// rows x n float32 values quantized to q8_0 (ggml_quantize_chunk, as the loader does) into out.
void quantize_q8_0_rows(const float* values, int64_t rows, int64_t n, void* out);

// Seconds this thread's last hook spent in ggml_backend_graph_compute: benchmarks time the kernels without
// the graph's set-up, allocation and input copies around them.
extern thread_local double last_compute_seconds;

ConvShape checked_conv_shape(const py::array& kernel_f16_bits, const py::array& image, int stride, int padding,
                             int dilation, int n_threads);

}  // namespace sdcpp::testing
