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

// One per concept, called by module.cpp in this order (a class is registered before the signatures naming it).
void register_runtime(py::module_& m);  // runtime.cpp: errors, the core thread, log and result ownership
void register_info(py::module_& m);     // register_info.cpp: versions, devices, the core's name tables
void register_params(py::module_& m);   // register_params.cpp: the parameter structs of params.hpp
void register_context(py::module_& m);  // register_context.cpp: NativeContext
void register_tools(py::module_& m);    // register_tools.cpp: upscaler, Canny, converter, rule checks

}  // namespace sdcpp
