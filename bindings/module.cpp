#include "common.hpp"

PYBIND11_MODULE(_core, m) {
    m.doc() = "Native part of sdcpp_py: the pinned stable-diffusion.cpp core. Use the sdcpp_py package.";
    sdcpp::register_runtime(m);
    sdcpp::register_info(m);
    sdcpp::register_params(m);
    sdcpp::register_context(m);
    sdcpp::register_tools(m);
}
