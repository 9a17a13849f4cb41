// Included first by every binding file: pybind11, the core's C API and our shared helpers.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <atomic>
#include <cstdint>
#include <exception>
#include <mutex>
#include <stdexcept>
#include <string>

#include "runtime.hpp"
#include "stable-diffusion.h"

namespace py = pybind11;

namespace sdcpp {

void register_runtime(py::module_& m);
void register_info(py::module_& m);
void register_context(py::module_& m);
void register_tools(py::module_& m);
void register_testing(py::module_& m);
void register_testing_core(py::module_& m);

// The test hooks' convolution arguments, checked: f16 kernel bits (OC, IC, KH, KW), f32 image (N, IC, H, W).
struct ConvShape {
    int64_t N, IC, H, W, OC, KH, KW, OH, OW;
};
ConvShape checked_conv_shape(const py::array& kernel_f16_bits, const py::array& image, int stride, int padding,
                             int dilation, int n_threads);

}  // namespace sdcpp
