#include "testing.hpp"

PYBIND11_MODULE(_test_hooks, m) {
    m.doc() = "Test hooks of sdcpp_py (source builds only): ggml's and the core's CPU compute and prompt parser.";
    sdcpp::testing::register_cpu_ops(m);
    sdcpp::testing::register_core_graphs(m);
    sdcpp::testing::register_prompt(m);
    sdcpp::testing::register_schedules(m);
}
