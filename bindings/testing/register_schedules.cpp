// The core's sigma schedules (denoiser.hpp) for the test suite: patch 0031's one-step schedules and long
// interpolations, which a generation reaches only through thousands of steps, and patch 0032's discrete timesteps.
#include "testing.hpp"

#include <memory>
#include <string>
#include <vector>

#include "denoiser.hpp"

namespace sdcpp::testing {

void register_schedules(py::module_& m) {
    // The schedulers that use only sigma_min and sigma_max (not the denoiser's t_to_sigma), and the discrete one,
    // whose values here are its timesteps (t_to_sigma is the identity).
    m.def(
        "_scheduler_sigmas",
        [](const std::string& name, uint32_t n, float sigma_min, float sigma_max) {
            std::unique_ptr<SigmaScheduler> scheduler;
            if (name == "karras") {
                scheduler = std::make_unique<KarrasScheduler>();
            } else if (name == "exponential") {
                scheduler = std::make_unique<ExponentialScheduler>();
            } else if (name == "gits") {
                scheduler = std::make_unique<GITSScheduler>();
            } else if (name == "discrete") {
                scheduler = std::make_unique<DiscreteScheduler>();
            } else {
                throw std::invalid_argument("no such scheduler here: " + name);
            }
            if (n == 0) {
                throw std::invalid_argument("n must be at least 1");
            }
            py::gil_scoped_release release;
            return scheduler->get_sigmas(n, sigma_min, sigma_max, [](float t) { return t; });
        },
        py::arg("name"), py::arg("n"), py::arg("sigma_min"), py::arg("sigma_max"));
    // AYS and GITS past 20 steps stretch a reference schedule to new_len points with it.
    m.def(
        "_log_linear_interpolation",
        [](std::vector<float> reference, size_t new_len) {
            if (reference.size() < 2 || new_len < 2) {
                throw std::invalid_argument("need at least 2 reference and 2 new points");
            }
            py::gil_scoped_release release;
            return log_linear_interpolation(std::move(reference), new_len);
        },
        py::arg("reference"), py::arg("new_len"));
}

}  // namespace sdcpp::testing
